//! The names of a process's pod and container and how outputs show them: the pod's
//! namespace/name and the container's name come from the runtime's own state on the host where it
//! keeps them readable: containerd's task bundle (`config.json` annotations
//! `io.kubernetes.cri.sandbox-namespace` / `-name` / `container-name`), CRI-O's (`io.kubernetes.pod.namespace` /
//! `.name`, `io.kubernetes.container.name`) and Docker's container config (the same labels).
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{Container, from_cgroup};

/// The Kubernetes names of a container, as its runtime recorded them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PodNames {
    /// `namespace/name`.
    pub pod: Option<String>,
    pub container: Option<String>,
}

/// Where each runtime keeps a container's config, under `root` (`/` on a node; a directory of
/// fixtures in tests).
fn config_files(root: &Path, c: &Container) -> Vec<PathBuf> {
    let id = &c.id;
    vec![
        root.join(format!(
            "run/containerd/io.containerd.runtime.v2.task/k8s.io/{id}/config.json"
        )),
        root.join(format!(
            "run/containers/storage/overlay-containers/{id}/userdata/config.json"
        )),
        root.join(format!(
            "var/lib/containers/storage/overlay-containers/{id}/userdata/config.json"
        )),
        root.join(format!("var/lib/docker/containers/{id}/config.v2.json")),
    ]
}

/// The pod's namespace/name and the container's name from the runtime's state under `root`.
pub fn names(root: &Path, c: &Container) -> PodNames {
    for file in config_files(root, c) {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        // OCI bundles: annotations; Docker: Config.Labels.
        let maps = [&v["annotations"], &v["Config"]["Labels"]];
        let get = |keys: &[&str]| {
            maps.iter()
                .find_map(|m| keys.iter().find_map(|k| m[*k].as_str()))
                .map(String::from)
        };
        let ns = get(&[
            "io.kubernetes.cri.sandbox-namespace",
            "io.kubernetes.pod.namespace",
        ]);
        let pod = get(&["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"]);
        let container = get(&[
            "io.kubernetes.cri.container-name",
            "io.kubernetes.container.name",
        ]);
        if pod.is_some() || container.is_some() {
            return PodNames {
                pod: match (ns, pod) {
                    (Some(ns), Some(p)) => Some(format!("{ns}/{p}")),
                    (None, p) => p,
                    (Some(_), None) => None,
                },
                container,
            };
        }
    }
    PodNames::default()
}

/// What outputs show for a process's cgroup: the pod (namespace/name, else `pod <uid>`) and the
/// container (its name, else the runtime and short id). None, None on the host. The live modes
/// ask for every row of every frame: a container's answer (up to four runtime files read) is
/// kept per cgroup path for `NAMES_RECHECK` — a path names one container for its whole life,
/// only its names may appear after its cgroup does.
pub fn identify(cgroup: Option<&str>) -> (Option<String>, Option<String>) {
    type Answer = (Option<String>, Option<String>);
    static KNOWN: std::sync::LazyLock<std::sync::Mutex<HashMap<String, (Instant, Answer)>>> =
        std::sync::LazyLock::new(Default::default);
    let Some((path, c)) = cgroup.and_then(|p| from_cgroup(p).map(|c| (p, c))) else {
        return (None, None);
    };
    let now = Instant::now();
    if let Ok(known) = KNOWN.lock()
        && let Some((at, answer)) = known.get(path)
        && now.duration_since(*at) < NAMES_RECHECK
    {
        return answer.clone();
    }
    let answer = identify_container(&c);
    if let Ok(mut known) = KNOWN.lock() {
        if known.len() >= NAMES_KEPT {
            known.clear(); // bounded: a node churning containers starts over
        }
        known.insert(path.to_string(), (now, answer.clone()));
    }
    answer
}

/// How long `identify` keeps a container's names before reading the runtime's files again.
const NAMES_RECHECK: Duration = Duration::from_secs(30);
/// Cgroup paths `identify` keeps at most.
const NAMES_KEPT: usize = 4096;

fn identify_container(c: &Container) -> (Option<String>, Option<String>) {
    let n = names(Path::new("/"), c);
    let pod = n
        .pod
        .or_else(|| c.pod_uid.as_ref().map(|u| format!("pod {u}")));
    let container = n
        .container
        .unwrap_or_else(|| format!("{} {}", c.runtime, c.short_id()));
    (pod, Some(container))
}

/// How text outputs name a pod and container: `pod NS/NAME, container NAME` (`container NAME`
/// outside a pod); None on the host. Pure.
pub fn label(pod: Option<&str>, container: Option<&str>) -> Option<String> {
    match (pod, container) {
        (Some(pod), Some(c)) => Some(format!(
            "pod {}, container {c}",
            pod.trim_start_matches("pod ")
        )),
        (None, Some(c)) => Some(format!("container {c}")),
        (Some(pod), None) => Some(format!("pod {}", pod.trim_start_matches("pod "))),
        (None, None) => None,
    }
}

/// How text outputs name a process's cgroup: `pod NS/NAME, container NAME` for a container,
/// else `cgroup PATH`.
pub fn describe(cgroup: &str) -> String {
    let (pod, container) = identify(Some(cgroup));
    label(pod.as_deref(), container.as_deref()).unwrap_or_else(|| format!("cgroup {cgroup}"))
}

/// A process's pod and container as every output names it (both None on the host), with the
/// text form computed once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub pod: Option<String>,
    pub container: Option<String>,
    /// `label(pod, container)`.
    text: Option<String>,
}

impl Identity {
    pub fn new(pod: Option<String>, container: Option<String>) -> Self {
        let text = label(pod.as_deref(), container.as_deref());
        Self {
            pod,
            container,
            text,
        }
    }

    /// The identity of a cgroup path (reads the runtime's state on this host).
    pub fn of_cgroup(cgroup: Option<&str>) -> Self {
        let (pod, container) = identify(cgroup);
        Self::new(pod, container)
    }

    /// `pod NS/NAME, container NAME`; None on the host.
    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    /// What a text line appends after the process: `  pod NS/NAME, container NAME`, nothing on
    /// the host.
    pub fn suffix(&self) -> String {
        self.text
            .as_deref()
            .map(|t| format!("  {t}"))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::container::tests::{ID, UID, c};

    #[test]
    fn names_from_each_runtime_state() {
        let root = std::env::temp_dir().join(format!("tcpq-container-{}", std::process::id()));
        let put = |rel: &str, json: &str| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, json).unwrap();
        };
        let want = PodNames {
            pod: Some("shop/checkout-7d9f".into()),
            container: Some("php-fpm".into()),
        };
        put(
            &format!("run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}/config.json"),
            r#"{"annotations":{"io.kubernetes.cri.sandbox-namespace":"shop","io.kubernetes.cri.sandbox-name":"checkout-7d9f","io.kubernetes.cri.container-name":"php-fpm"}}"#,
        );
        assert_eq!(names(&root, &c("containerd", true).unwrap()), want);
        let _ = std::fs::remove_dir_all(&root);
        put(
            &format!("run/containers/storage/overlay-containers/{ID}/userdata/config.json"),
            r#"{"annotations":{"io.kubernetes.pod.namespace":"shop","io.kubernetes.pod.name":"checkout-7d9f","io.kubernetes.container.name":"php-fpm"}}"#,
        );
        assert_eq!(names(&root, &c("crio", true).unwrap()), want);
        let _ = std::fs::remove_dir_all(&root);
        put(
            &format!("var/lib/docker/containers/{ID}/config.v2.json"),
            r#"{"Config":{"Labels":{"io.kubernetes.pod.namespace":"shop","io.kubernetes.pod.name":"checkout-7d9f","io.kubernetes.container.name":"php-fpm"}}}"#,
        );
        assert_eq!(names(&root, &c("docker", true).unwrap()), want);
        let _ = std::fs::remove_dir_all(&root);
        // Nothing readable: no names (outputs fall back to the pod UID and the short id).
        assert_eq!(
            names(&root, &c("containerd", true).unwrap()),
            PodNames::default()
        );
    }

    #[test]
    fn host_processes_have_no_identity() {
        assert_eq!(identify(None), (None, None));
        assert_eq!(identify(Some("/system.slice/sshd.service")), (None, None));
        let (pod, container) = identify(Some(&format!("/kubepods/pod{UID}/{ID}")));
        assert_eq!(pod, Some(format!("pod {UID}")));
        assert_eq!(container, Some(format!("unknown {}", &ID[..12])));
    }
    #[test]
    fn text_label_of_pod_and_container() {
        assert_eq!(
            label(Some("shop/checkout-7d9f"), Some("php-fpm")).as_deref(),
            Some("pod shop/checkout-7d9f, container php-fpm")
        );
        // The pod UID when the runtime's state is not readable: `pod` said once.
        assert_eq!(
            label(Some(&format!("pod {UID}")), Some("containerd 8c9c8d5b2a7f")),
            Some(format!("pod {UID}, container containerd 8c9c8d5b2a7f"))
        );
        assert_eq!(
            label(None, Some("docker 8c9c8d5b2a7f")).as_deref(),
            Some("container docker 8c9c8d5b2a7f")
        );
        assert_eq!(label(None, None), None);
        let id = Identity::new(Some("shop/web-1".into()), Some("nginx".into()));
        assert_eq!(id.text(), Some("pod shop/web-1, container nginx"));
        assert_eq!(id.suffix(), "  pod shop/web-1, container nginx");
        assert_eq!(Identity::default().suffix(), "");
        assert_eq!(
            describe("/system.slice/sshd.service"),
            "cgroup /system.slice/sshd.service"
        );
        assert_eq!(
            describe(&format!("/kubepods/pod{UID}/{ID}")),
            format!("pod {UID}, container unknown {}", &ID[..12])
        );
    }
}
