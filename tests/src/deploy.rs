//! The repository's deploy/ files as the tests read them: the Kubernetes manifests, systemd unit
//! settings, and the /proc status fields a deployed process is checked by.
use std::path::PathBuf;

/// The repository's deploy/ directory.
pub fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// deploy/kubernetes/tcpq.yaml's objects.
pub fn kubernetes_manifests() -> Vec<yaml_rust2::Yaml> {
    let text = std::fs::read_to_string(deploy_dir().join("kubernetes/tcpq.yaml")).unwrap();
    yaml_rust2::YamlLoader::load_from_str(&text).expect("deploy/kubernetes/tcpq.yaml parses")
}

/// The object of this kind among `docs`.
pub fn kubernetes_object<'a>(docs: &'a [yaml_rust2::Yaml], kind: &str) -> &'a yaml_rust2::Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes/tcpq.yaml"))
}

/// The strings of a YAML list (nothing when it is not one).
pub fn yaml_strings(y: &yaml_rust2::Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// `Key=value` lines of a systemd unit or an environment file (last one wins).
pub fn unit_setting(text: &str, key: &str) -> Option<String> {
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .map(|v| v.trim().trim_matches('"').to_string())
}

/// `Cap…`/`NoNewPrivs`/`Seccomp` fields of one /proc status file (the capability sets as masks).
pub fn status_field(status: &str, name: &str) -> u64 {
    let v = status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim();
    if name.starts_with("Cap") {
        u64::from_str_radix(v, 16).expect("hex capability mask")
    } else {
        v.parse().expect("a number")
    }
}
