//! A cgroup v2 child of the root owned by a test (a stand-in for a container's, also a
//! containerd pod's as the kubelet names it), removed on drop.
use std::{sync::atomic::Ordering, time::Duration};

use serde_json::Value;

use crate::SEQ;

/// A cgroup v2 child of the root for the test (a stand-in for a container's cgroup), possibly
/// nested: every directory it created is removed on drop, deepest first.
pub struct TestCgroup {
    pub path: std::path::PathBuf,
    pub name: String,
    created: Vec<std::path::PathBuf>,
    /// The pod UID and container id of a `containerd_pod` cgroup.
    pod: Option<(String, String)>,
}

/// Where cgroup2 is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts).
pub fn cgroup2_root() -> std::path::PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| std::path::PathBuf::from(f[1]))
        })
        .expect("cgroup2 mounted")
}

impl TestCgroup {
    pub fn new(tag: &str) -> Self {
        let name = format!("tcpq-test-{tag}-{}", std::process::id());
        let path = cgroup2_root().join(&name);
        std::fs::create_dir(&path).expect("create a cgroup2 child");
        Self {
            created: vec![path.clone()],
            path,
            name,
            pod: None,
        }
    }
    /// `parts` nested under the root (the leaf is the last).
    pub fn nested(parts: &[String]) -> Self {
        let mut path = cgroup2_root();
        let mut created = Vec::new();
        for p in parts {
            path = path.join(p);
            std::fs::create_dir(&path).expect("create a cgroup2 child");
            created.push(path.clone());
        }
        Self {
            path,
            name: parts.join("/"),
            created,
            pod: None,
        }
    }
    /// A containerd container of a Kubernetes pod as the kubelet's systemd driver names it
    /// (`…/kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope`), under a slice of the
    /// test's own: every test gets its own pod UID and container id.
    pub fn containerd_pod(tag: &str) -> Self {
        let me = std::process::id();
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let uid = format!("{me:08x}-{:04x}-4000-8000-{me:012x}", n & 0xffff);
        let id = format!("{me:08x}{n:08x}{}", &"c0ffee".repeat(8)[..48]);
        let mut cg = Self::nested(&[
            format!("tcpq-test-kubepods-{tag}-{me}-{n}.slice"),
            format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_")),
            format!("cri-containerd-{id}.scope"),
        ]);
        cg.pod = Some((uid, id));
        cg
    }
    /// What tcpq names a `containerd_pod` process's pod with no runtime state to read: `pod <uid>`.
    pub fn pod(&self) -> String {
        let (uid, _) = self.pod.as_ref().expect("a containerd_pod cgroup");
        format!("pod {uid}")
    }
    /// … and its container: `containerd <short id>`.
    pub fn container(&self) -> String {
        let (_, id) = self.pod.as_ref().expect("a containerd_pod cgroup");
        format!("containerd {}", &id[..12])
    }
    /// Asserts that a JSON line names this pod and container.
    pub fn assert_named_in(&self, v: &Value) {
        assert_eq!(v["pod"].as_str(), Some(self.pod().as_str()), "{v}");
        assert_eq!(
            v["container"].as_str(),
            Some(self.container().as_str()),
            "{v}"
        );
    }
    pub fn adopt(&self, pid: u64) {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .expect("move the lab into the cgroup");
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Move anything left back to the root, then remove what was created, deepest first.
        let root = cgroup2_root().join("cgroup.procs");
        if let Ok(procs) = std::fs::read_to_string(self.path.join("cgroup.procs")) {
            for p in procs.lines() {
                let _ = std::fs::write(&root, p);
            }
        }
        for dir in self.created.iter().rev() {
            for _ in 0..20 {
                if std::fs::remove_dir(dir).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
