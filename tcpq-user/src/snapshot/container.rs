//! Which container, and which Kubernetes pod, a process belongs to — from its cgroup path alone
//! (no API server): the container runtimes name the leaf cgroup after the container id and the
//! kubelet names the pod's cgroup after the pod UID, under either cgroup driver:
//!
//! | runtime, driver | leaf cgroup |
//! |---|---|
//! | containerd, systemd | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope` |
//! | CRI-O, systemd | `…/kubepods-besteffort-pod<uid>.slice/crio-<id>.scope` (`crio-conmon-<id>.scope` is its monitor) |
//! | Docker (dockershim / cri-dockerd), systemd | `…/kubepods-pod<uid>.slice/docker-<id>.scope` |
//! | any runtime, cgroupfs | `/kubepods/burstable/pod<uid>/<id>`, `/kubepods/pod<uid>/<id>` (Guaranteed) |
//! | Docker alone | `/system.slice/docker-<id>.scope`, `/docker/<id>` |
//! | Podman | `/machine.slice/libpod-<id>.scope`, `/user.slice/…/libpod-<id>.scope` |
//!
//! (cgroup v1 hierarchies carry the same paths, sometimes under a `/kubepods` or `/docker`
//! prefix of their own; a kind/k3s node nests the whole tree under its own container's.) The pod's
//! namespace/name and the container's name come from the runtime's own state on the host where it
//! keeps them readable: containerd's task bundle (`config.json` annotations
//! `io.kubernetes.cri.sandbox-namespace` / `-name` / `container-name`), CRI-O's (`io.kubernetes.pod.namespace` /
//! `.name`, `io.kubernetes.container.name`) and Docker's container config (the same labels).
use std::path::{Path, PathBuf};

use serde::Serialize;

/// A container found in a cgroup path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Container {
    /// `containerd`, `crio`, `docker`, `podman`, or `unknown` (a cgroupfs-driver pod, whose leaf
    /// does not say which runtime made it).
    pub runtime: &'static str,
    /// The container id (64 hex digits; the first 12 are what `crictl ps` / `docker ps` show).
    pub id: String,
    /// The Kubernetes pod UID (dashed form), when the process is in a pod.
    pub pod_uid: Option<String>,
}

impl Container {
    /// The id as runtimes abbreviate it.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }
}

/// The container of a cgroup path (from /proc/PID/cgroup), None for a host process.
pub fn from_cgroup(path: &str) -> Option<Container> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let leaf = *parts.last()?;
    let pod_uid = parts.iter().rev().find_map(|p| pod_uid(p));
    // systemd driver: <prefix>-<id>.scope.
    if let Some(scope) = leaf.strip_suffix(".scope") {
        for (prefix, runtime) in [
            ("cri-containerd-", "containerd"),
            ("crio-", "crio"),
            ("docker-", "docker"),
            ("libpod-", "podman"),
        ] {
            if let Some(id) = scope.strip_prefix(prefix)
                && is_container_id(id)
            {
                return Some(Container {
                    runtime,
                    id: id.to_string(),
                    pod_uid,
                });
            }
        }
        return None;
    }
    // cgroupfs driver: the leaf is the bare id, under a pod directory or /docker.
    if is_container_id(leaf) && parts.len() >= 2 {
        let parent = parts[parts.len() - 2];
        let runtime = if pod_uid.is_some() {
            "unknown"
        } else if parent == "docker" {
            "docker"
        } else {
            return None;
        };
        return Some(Container {
            runtime,
            id: leaf.to_string(),
            pod_uid,
        });
    }
    None
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `kubepods-burstable-pod<uid_with_underscores>.slice` or `pod<uid>` → the dashed UID.
fn pod_uid(part: &str) -> Option<String> {
    let s = part.strip_suffix(".slice").unwrap_or(part);
    let uid = s
        .rsplit_once("-pod")
        .map(|(_, u)| u)
        .or_else(|| s.strip_prefix("pod"))?;
    let uid = uid.replace('_', "-");
    let shape = [8, 4, 4, 4, 12];
    let groups: Vec<&str> = uid.split('-').collect();
    (groups.len() == 5
        && groups
            .iter()
            .zip(shape)
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit())))
    .then_some(uid)
}

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
/// container (its name, else the runtime and short id). None, None on the host.
pub fn identify(cgroup: Option<&str>) -> (Option<String>, Option<String>) {
    let Some(c) = cgroup.and_then(from_cgroup) else {
        return (None, None);
    };
    let n = names(Path::new("/"), &c);
    let pod = n
        .pod
        .or_else(|| c.pod_uid.as_ref().map(|u| format!("pod {u}")));
    let container = n
        .container
        .unwrap_or_else(|| format!("{} {}", c.runtime, c.short_id()));
    (pod, Some(container))
}

/// How text outputs name a process's cgroup: `pod NS/NAME, container NAME` for a container,
/// else `cgroup PATH`.
pub fn describe(cgroup: &str) -> String {
    match identify(Some(cgroup)) {
        (Some(pod), Some(c)) => format!("pod {}, container {c}", pod.trim_start_matches("pod ")),
        (None, Some(c)) => format!("container {c}"),
        _ => format!("cgroup {cgroup}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "8c9c8d5b2a7f41e6b3c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9";
    const UID: &str = "0b4c6e8a-1d2f-4a3b-9c5d-7e6f8a9b0c1d";

    fn c(runtime: &'static str, pod: bool) -> Option<Container> {
        Some(Container {
            runtime,
            id: ID.into(),
            pod_uid: pod.then(|| UID.to_string()),
        })
    }

    #[test]
    fn every_runtime_and_driver_shape() {
        let u = UID.replace('-', "_");
        let cases = [
            // containerd, systemd driver, each QoS class.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"
                ),
                c("containerd", true),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope"
                ),
                c("containerd", true),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope"),
                c("containerd", true),
            ),
            // CRI-O, systemd driver; its conmon monitor is no container.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-{ID}.scope"
                ),
                c("crio", true),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-conmon-{ID}.scope"
                ),
                None,
            ),
            // Docker under the kubelet (cri-dockerd), systemd driver.
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/docker-{ID}.scope"
                ),
                c("docker", true),
            ),
            // cgroupfs driver (any runtime): pod directories with the dashed UID.
            (
                format!("/kubepods/burstable/pod{UID}/{ID}"),
                c("unknown", true),
            ),
            (
                format!("/kubepods/besteffort/pod{UID}/{ID}"),
                c("unknown", true),
            ),
            (format!("/kubepods/pod{UID}/{ID}"), c("unknown", true)),
            // A kind / k3s node: the node's own container path first.
            (
                format!(
                    "/docker/{ID}/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"
                ),
                c("containerd", true),
            ),
            // Docker alone, both drivers; Podman.
            (
                format!("/system.slice/docker-{ID}.scope"),
                c("docker", false),
            ),
            (format!("/docker/{ID}"), c("docker", false)),
            (
                format!("/machine.slice/libpod-{ID}.scope"),
                c("podman", false),
            ),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
                ),
                c("podman", false),
            ),
            // Host processes.
            ("/system.slice/nginx.service".to_string(), None),
            ("/user.slice/user-0.slice/session-3.scope".to_string(), None),
            ("/kubepods.slice/kubepods-burstable.slice".to_string(), None),
            ("/".to_string(), None),
        ];
        for (path, want) in cases {
            assert_eq!(from_cgroup(&path), want, "{path}");
        }
    }

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
}
