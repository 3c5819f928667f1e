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
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    rc::Rc,
    time::{Duration, Instant},
};

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

/// What a look at /proc found for a pid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLookup {
    /// The process is gone (its last identity stays valid: the pid is not reused yet).
    Gone,
    /// Its cgroup path, None for the root.
    Path(Option<String>),
}

/// The cgroup of a live process, or that it is gone.
pub fn cgroup_lookup(pid: u32) -> CgroupLookup {
    match crate::snapshot::procs::cgroup_path(pid) {
        Some(p) => CgroupLookup::Path(Some(p)),
        None if std::path::Path::new(&format!("/proc/{pid}")).exists() => CgroupLookup::Path(None),
        None => CgroupLookup::Gone,
    }
}

/// Host identities share one allocation.
fn shared(host: &Rc<Identity>, id: Identity) -> Rc<Identity> {
    if id == **host {
        Rc::clone(host)
    } else {
        Rc::new(id)
    }
}

#[derive(Debug)]
struct Known {
    comm: String,
    cgroup: Option<String>,
    checked: Instant,
    id: Rc<Identity>,
}

/// The identity of every pid an output names, resolved at the pid's first sighting (while the
/// process is alive) and kept for later lines and summaries, when it may be gone. Looked at
/// again when the pid shows another comm (reused, or exec'd) or once `recheck` has passed (a
/// pid reused under the same comm; the cgroup path is read again and the runtime's state only
/// when it changed). Bounded: past `max` pids the older half is forgotten.
#[derive(Debug)]
pub struct Identities {
    by_pid: HashMap<u32, Known>,
    host: Rc<Identity>,
    max: usize,
    recheck: Duration,
}

impl Default for Identities {
    fn default() -> Self {
        Self::new()
    }
}

impl Identities {
    pub const MAX_PIDS: usize = 8192;
    pub const RECHECK: Duration = Duration::from_secs(10);

    pub fn new() -> Self {
        Self::with_limits(Self::MAX_PIDS, Self::RECHECK)
    }

    pub fn with_limits(max: usize, recheck: Duration) -> Self {
        Self {
            by_pid: HashMap::new(),
            host: Rc::new(Identity::default()),
            max: max.max(2),
            recheck,
        }
    }

    /// The identity of `pid` (0: unknown, the host's), which showed `comm`.
    pub fn get(&mut self, pid: u32, comm: &str) -> Rc<Identity> {
        self.get_with(
            pid,
            comm,
            Instant::now(),
            cgroup_lookup,
            Identity::of_cgroup,
        )
    }

    /// `get` with the clock and the two reads given (unit tests).
    pub fn get_with(
        &mut self,
        pid: u32,
        comm: &str,
        now: Instant,
        lookup: impl FnOnce(u32) -> CgroupLookup,
        resolve: impl FnOnce(Option<&str>) -> Identity,
    ) -> Rc<Identity> {
        if pid == 0 {
            return Rc::clone(&self.host);
        }
        if let Some(k) = self.by_pid.get_mut(&pid) {
            let same = k.comm == comm;
            if same && now.saturating_duration_since(k.checked) < self.recheck {
                return Rc::clone(&k.id);
            }
            match lookup(pid) {
                CgroupLookup::Gone => {}
                CgroupLookup::Path(cg) if cg == k.cgroup => {}
                CgroupLookup::Path(cg) => {
                    k.id = shared(&self.host, resolve(cg.as_deref()));
                    k.cgroup = cg;
                }
            }
            if !same {
                k.comm.clear();
                k.comm.push_str(comm);
            }
            k.checked = now;
            return Rc::clone(&k.id);
        }
        let cgroup = match lookup(pid) {
            CgroupLookup::Path(cg) => cg,
            CgroupLookup::Gone => None,
        };
        let id = shared(&self.host, resolve(cgroup.as_deref()));
        if self.by_pid.len() >= self.max {
            self.forget_older_half();
        }
        self.by_pid.insert(
            pid,
            Known {
                comm: comm.to_string(),
                cgroup,
                checked: now,
                id: Rc::clone(&id),
            },
        );
        id
    }

    fn forget_older_half(&mut self) {
        let mut ages: Vec<Instant> = self.by_pid.values().map(|k| k.checked).collect();
        let mid = ages.len() / 2;
        let (_, cut, _) = ages.select_nth_unstable(mid);
        let cut = *cut;
        self.by_pid.retain(|_, k| k.checked > cut);
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
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

    #[test]
    fn identities_are_resolved_once_per_pid_and_again_when_it_is_reused() {
        let t0 = Instant::now();
        let pod = format!("/kubepods/pod{UID}/{ID}");
        let mut ids = Identities::with_limits(4, Duration::from_secs(10));
        let reads = std::cell::Cell::new(0);
        let resolve = |cg: Option<&str>| {
            reads.set(reads.get() + 1);
            Identity::of_cgroup(cg)
        };
        let path = |p: &str| {
            let p = p.to_string();
            move |_| CgroupLookup::Path(Some(p))
        };
        let a = ids.get_with(7, "php-fpm", t0, path(&pod), resolve);
        assert_eq!(a.pod, Some(format!("pod {UID}")));
        assert_eq!(reads.get(), 1);
        // Same pid and comm within the recheck interval: no /proc read at all.
        let again = ids.get_with(7, "php-fpm", t0, |_| unreachable!(), resolve);
        assert!(Rc::ptr_eq(&a, &again));
        // Gone later: the identity it had stays (its lines and summaries still name the pod).
        let gone = ids.get_with(
            7,
            "php-fpm",
            t0 + Duration::from_secs(11),
            |_| CgroupLookup::Gone,
            resolve,
        );
        assert!(Rc::ptr_eq(&a, &gone));
        assert_eq!(reads.get(), 1);
        // Reused by a host process (another comm): looked at again.
        let host = ids.get_with(7, "bash", t0, |_| CgroupLookup::Path(None), resolve);
        assert_eq!(*host, Identity::default());
        // Checked again after the interval, same cgroup: the runtime's state is not reread.
        let b = ids.get_with(8, "nginx", t0, path(&pod), resolve);
        let n = reads.get();
        let b2 = ids.get_with(
            8,
            "nginx",
            t0 + Duration::from_secs(30),
            path(&pod),
            resolve,
        );
        assert!(Rc::ptr_eq(&b, &b2));
        assert_eq!(reads.get(), n);
        // pid 0 (unknown) is the host's, without a look.
        assert_eq!(
            *ids.get_with(0, "", t0, |_| unreachable!(), resolve),
            Identity::default()
        );
        // Bounded: past 4 pids the older half goes.
        for (i, pid) in (100..110).enumerate() {
            ids.get_with(
                pid,
                "x",
                t0 + Duration::from_secs(60 + i as u64),
                |_| CgroupLookup::Path(None),
                resolve,
            );
            assert!(ids.len() <= 4, "{}", ids.len());
        }
        assert!(!ids.is_empty());
    }
}
