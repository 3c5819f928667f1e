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
//! prefix of their own; a kind/k3s node nests the whole tree under its own container's.) The
//! names behind the ids are `identity`'s; the per-pid cache of the trace commands is
//! `identities`'s.
use serde::Serialize;

mod identities;
mod identity;

pub use identities::{CgroupLookup, Identities, cgroup_lookup};
pub use identity::{Identity, PodNames, describe, identify, label, names};

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

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const ID: &str = "8c9c8d5b2a7f41e6b3c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9";
    pub(super) const UID: &str = "0b4c6e8a-1d2f-4a3b-9c5d-7e6f8a9b0c1d";

    pub(super) fn c(runtime: &'static str, pod: bool) -> Option<Container> {
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
}
