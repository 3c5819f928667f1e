//! The image archive of `cargo xtask dist` as tests/tests/image.rs reads it: its OCI layout
//! verified blob by blob, its layer unpacked, and the DaemonSet's pod spec turned into the
//! `podman run` flags that grant the same.
use std::{
    collections::{BTreeSet, HashMap},
    io::Read as _,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use yaml_rust2::Yaml;

use crate::{kubernetes_manifests, kubernetes_object, newest_in_dist, yaml_strings};

/// The newest image archive in target/dist.
pub fn archive(test: &str) -> Option<PathBuf> {
    newest_in_dist(test, "-oci.tar")
}

pub fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The archive's files by path.
pub fn files_of(archive: &Path) -> HashMap<String, Vec<u8>> {
    let bytes = std::fs::read(archive).expect("read the image archive");
    let mut tar = tar::Archive::new(&bytes[..]);
    let mut files = HashMap::new();
    for entry in tar.entries().expect("a tar") {
        let mut entry = entry.expect("a tar entry");
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path().expect("a path").to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("read a tar entry");
        files.insert(path, data);
    }
    files
}

/// The blob a descriptor names, after checking its digest and size.
pub fn blob<'a>(files: &'a HashMap<String, Vec<u8>>, desc: &Value) -> &'a [u8] {
    let digest = desc["digest"].as_str().expect("a digest");
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    let data = files
        .get(&format!("blobs/sha256/{hex}"))
        .unwrap_or_else(|| panic!("blob {digest} missing"));
    assert_eq!(sha256(data), hex, "blob {digest}: content digest");
    assert_eq!(
        desc["size"].as_u64(),
        Some(data.len() as u64),
        "blob {digest}: size"
    );
    data
}

pub struct Image {
    pub reference: String,
    pub config: Value,
    pub layer_tar: Vec<u8>,
}

/// Verifies the layout and returns the image it describes.
pub fn verified(archive: &Path) -> Image {
    let files = files_of(archive);
    let json = |name: &str| -> Value {
        serde_json::from_slice(files.get(name).unwrap_or_else(|| panic!("{name} missing")))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    assert_eq!(json("oci-layout")["imageLayoutVersion"], "1.0.0");
    let index = json("index.json");
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1, "{index}");
    let mdesc = &manifests[0];
    assert_eq!(
        mdesc["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let reference = mdesc["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .expect("ref.name")
        .to_string();
    assert_eq!(
        mdesc["annotations"]["io.containerd.image.name"], reference,
        "containerd's name"
    );
    let manifest: Value = serde_json::from_slice(blob(&files, mdesc)).expect("manifest JSON");
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let config: Value =
        serde_json::from_slice(blob(&files, &manifest["config"])).expect("config JSON");
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "one layer: {manifest}");
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let gz = blob(&files, &layers[0]);
    let mut layer_tar = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut layer_tar)
        .expect("the layer gunzips");
    assert_eq!(config["rootfs"]["type"], "layers");
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!([format!("sha256:{}", sha256(&layer_tar))]),
        "diff_ids: the uncompressed layer's digest"
    );
    assert_eq!(
        mdesc["platform"]["architecture"], config["architecture"],
        "{mdesc}"
    );
    assert_eq!(config["os"], "linux");
    // Docker's manifest.json (docker load before Docker 25): the same config, layer and name.
    let docker = json("manifest.json");
    assert_eq!(
        docker,
        serde_json::json!([{
            "Config": format!("blobs/{}", manifest["config"]["digest"].as_str().unwrap().replace(':', "/")),
            "RepoTags": [reference],
            "Layers": [format!("blobs/{}", layers[0]["digest"].as_str().unwrap().replace(':', "/"))],
        }])
    );
    Image {
        reference,
        config,
        layer_tar,
    }
}

/// The DaemonSet's pod spec.
pub fn daemonset_pod() -> Yaml {
    let docs = kubernetes_manifests();
    kubernetes_object(&docs, "DaemonSet")["spec"]["template"]["spec"].clone()
}

/// Unpacks the layer into a fresh directory; returns it and the regular files' paths.
pub fn unpack(layer_tar: &[u8]) -> (PathBuf, BTreeSet<String>) {
    let dir = std::env::temp_dir().join(format!("tcpq-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = BTreeSet::new();
    let mut tar = tar::Archive::new(layer_tar);
    for entry in tar.entries().expect("the layer is a tar") {
        let entry = entry.expect("a layer entry");
        let h = entry.header();
        assert_eq!(
            (h.uid().unwrap(), h.gid().unwrap()),
            (0, 0),
            "root-owned: {:?}",
            entry.path()
        );
        if h.entry_type() == tar::EntryType::Regular {
            files.insert(format!("/{}", entry.path().unwrap().display()));
        }
    }
    tar::Archive::new(layer_tar)
        .unpack(&dir)
        .expect("unpack the layer");
    (dir, files)
}

/// `podman ARGS…`: (success, stdout, stderr).
pub fn podman(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("podman")
        .args(args)
        .output()
        .expect("spawn podman");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// Removes the container, the image and the host directories the test created, also when it
/// panics.
pub struct Cleanup {
    pub container: String,
    pub image: String,
    pub created: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "0", &self.container]);
        let _ = podman(&["rmi", &self.image]);
        for d in self.created.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

pub fn hard_limit(resource: libc::__rlimit_resource_t) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    assert_eq!(unsafe { libc::getrlimit(resource, &mut r) }, 0);
    r.rlim_max
}

/// The `podman run` flags that grant what the DaemonSet's pod spec grants (and fail on a
/// setting this test does not know how to give).
pub fn daemonset_flags(pod: &Yaml, created: &mut Vec<PathBuf>) -> Vec<String> {
    let mut f: Vec<String> = Vec::new();
    assert_eq!(pod["hostPID"].as_bool(), Some(true));
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
    f.extend(["--pid=host", "--network=host"].map(String::from));
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"].as_bool(), Some(false));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    f.push("--security-opt=no-new-privileges".into());
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    f.push("--read-only".into());
    f.push(format!(
        "--user={}:{}",
        sc["runAsUser"].as_i64().expect("runAsUser"),
        sc["runAsGroup"].as_i64().expect("runAsGroup")
    ));
    // RuntimeDefault: the runtime's default seccomp profile, which podman applies unless told.
    assert_eq!(
        sc["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    assert_eq!(yaml_strings(&sc["capabilities"]["drop"]), ["ALL"]);
    f.push("--cap-drop=all".into());
    let add = yaml_strings(&sc["capabilities"]["add"]);
    assert!(!add.is_empty());
    f.push(format!("--cap-add={}", add.join(",")));
    let limits = &c["resources"]["limits"];
    let cpu = limits["cpu"].as_str().expect("a CPU limit");
    let millis: f64 = cpu
        .strip_suffix('m')
        .map(|m| m.parse::<f64>().unwrap() / 1000.0)
        .unwrap_or_else(|| cpu.parse().unwrap());
    f.push(format!("--cpus={millis}"));
    let mem = limits["memory"].as_str().expect("a memory limit");
    let mib: u64 = mem
        .strip_suffix("Mi")
        .expect("memory in Mi")
        .parse()
        .unwrap();
    f.push(format!("--memory={mib}m"));
    // The host paths, read-only where the pod mounts them read-only.
    let volumes = pod["volumes"].as_vec().expect("volumes");
    for m in c["volumeMounts"].as_vec().expect("volumeMounts") {
        let name = m["name"].as_str().unwrap();
        let v = volumes
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("volume {name}"));
        let host = PathBuf::from(v["hostPath"]["path"].as_str().expect("a hostPath"));
        match v["hostPath"]["type"].as_str() {
            Some("Directory") => assert!(host.is_dir(), "{} on this host", host.display()),
            Some("DirectoryOrCreate") => {
                // What kubelet does; removed afterwards when this test made them.
                let missing: Vec<PathBuf> = host
                    .ancestors()
                    .filter(|a| !a.exists())
                    .map(Path::to_path_buf)
                    .collect();
                std::fs::create_dir_all(&host).unwrap();
                created.extend(missing.into_iter().rev());
            }
            t => panic!("hostPath type {t:?} of {name}: teach this test"),
        }
        let mut options = Vec::new();
        if m["readOnly"].as_bool() == Some(true) {
            options.push("ro");
        }
        match m["mountPropagation"].as_str() {
            None => {}
            // Mounts made on the host later appear inside (Kubernetes' name for rslave).
            Some("HostToContainer") => options.push("rslave"),
            Some(p) => panic!("mountPropagation {p} of {name}: teach this test"),
        }
        let options = if options.is_empty() {
            String::new()
        } else {
            format!(":{}", options.join(","))
        };
        f.push(format!(
            "--volume={}:{}{options}",
            host.display(),
            m["mountPath"].as_str().unwrap()
        ));
    }
    // Env: NODE_IP is the node's address (status.hostIP): loopback here.
    for e in c["env"].as_vec().into_iter().flatten() {
        let name = e["name"].as_str().unwrap();
        assert_eq!(name, "NODE_IP", "teach this test the env var {name}");
        f.push("--env=NODE_IP=127.0.0.1".into());
    }
    // podman's default rlimits (1048576 open files) exceed this machine's hard limits, and
    // raising one needs CAP_SYS_RESOURCE, which this sandbox withholds even from root: the
    // runtime then fails with `error setting rlimits … operation not permitted`. Kubernetes
    // sets none; these are at most the test's own.
    f.push(format!(
        "--ulimit=nofile={0}:{0}",
        hard_limit(libc::RLIMIT_NOFILE).min(65_536)
    ));
    f.push(format!(
        "--ulimit=nproc={0}:{0}",
        hard_limit(libc::RLIMIT_NPROC).min(4096)
    ));
    f
}
