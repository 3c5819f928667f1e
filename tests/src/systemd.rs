//! The booted systemd-nspawn container of tests/tests/systemd.rs and what it leaves behind: its
//! scratch directory, nspawn's cgroups and /run directories, host processes and namespaces, and
//! the exporter scraped inside the container's network namespace.
use std::{
    fs::File,
    os::unix::fs::MetadataExt as _,
    os::unix::io::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{cgroup2_root, scrape};

pub const UNIT: &str = "tcpq-export.service";
pub const LAB_PORT: u16 = 8080;

/// A directory of the test's own, removed on drop.
pub struct Scratch(pub PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Mount points of every cgroup hierarchy nspawn creates cgroups in: cgroup2, and on hybrid
/// hosts the `name=systemd` v1 hierarchy (systemd's primary one there).
pub fn nspawn_hierarchies() -> Vec<PathBuf> {
    let mut roots = vec![cgroup2_root()];
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    roots.extend(mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let post: Vec<&str> = post.split(' ').collect();
        let named = post.first() == Some(&"cgroup")
            && post
                .get(2)
                .is_some_and(|o| o.split(',').any(|o| o == "name=systemd"));
        named.then(|| pre.split(' ').nth(4).map(PathBuf::from))?
    }));
    roots
}

/// The cgroups nspawn runs in, one per hierarchy. With --keep-unit (no systemd on the host to
/// ask for a scope) nspawn makes `payload/` (the container) and `supervisor/` (itself) under its
/// own cgroup and never removes them; here they are under these, which are removed with
/// everything below them.
pub struct NspawnCgroups(pub Vec<PathBuf>);

impl NspawnCgroups {
    // Not a `Default`: it creates cgroups on the host, which a default value should not.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let name = format!("tcpq-test-systemd-{}", std::process::id());
        Self(
            nspawn_hierarchies()
                .into_iter()
                .map(|root| {
                    let p = root.join(&name);
                    std::fs::create_dir(&p)
                        .unwrap_or_else(|e| panic!("create cgroup {}: {e}", p.display()));
                    p
                })
                .collect(),
        )
    }
    /// Every directory under (and including) the cgroups, deepest first.
    pub fn tree(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.filter_map(Result::ok) {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        walk(&e.path(), out);
                    }
                }
            }
            out.push(dir.to_path_buf());
        }
        let mut out = Vec::new();
        for c in &self.0 {
            walk(c, &mut out);
        }
        out
    }
    /// The processes still in any of them.
    pub fn procs(&self) -> Vec<String> {
        self.tree()
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|p| p.lines().map(String::from).collect::<Vec<_>>())
            .collect()
    }
    pub fn remove(&self) {
        for _ in 0..50 {
            for d in self.tree() {
                let _ = std::fs::remove_dir(d);
            }
            if self.0.iter().all(|c| !c.exists()) {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for NspawnCgroups {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The directories nspawn leaves in /run/systemd: `nspawn/propagate/MACHINE` when it is killed
/// (removed: the machine name is the test's), and `nspawn/propagate/`, `nspawn-root/` (removed
/// when empty, if they were not there before the test).
pub struct RunDirs {
    machine: PathBuf,
    created: Vec<PathBuf>,
}

impl RunDirs {
    pub fn new(machine: &str) -> Self {
        Self {
            machine: PathBuf::from(format!("/run/systemd/nspawn/propagate/{machine}")),
            created: [
                "/run/systemd/nspawn/propagate",
                "/run/systemd/nspawn",
                "/run/systemd/nspawn-root",
                "/run/systemd",
            ]
            .iter()
            .map(PathBuf::from)
            .filter(|p| !p.exists())
            .collect(),
        }
    }
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.machine);
        for d in &self.created {
            let _ = std::fs::remove_dir(d);
        }
    }
    pub fn left(&self) -> Vec<&PathBuf> {
        std::iter::once(&self.machine)
            .chain(&self.created)
            .filter(|d| d.exists())
            .collect()
    }
}

impl Drop for RunDirs {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The booted container: nspawn and the container's PID 1 (host pid). Killed on drop if the
/// test did not power it off.
pub struct Container {
    pub nspawn: Child,
    pub leader: u32,
}

impl Container {
    /// A command run inside every namespace of the container (mount, pid, network, cgroup…).
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.leader.to_string(), "-a", "--"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }
    /// … its stdout, asserting it succeeded.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "{args:?} in the container: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
    /// `systemctl show -p NAME --value` of the unit.
    pub fn property(&self, name: &str) -> String {
        self.ok(&["systemctl", "show", "-p", name, "--value", UNIT])
    }
    pub fn journal(&self) -> String {
        let out = self.exec(&["journalctl", "-u", UNIT, "-o", "cat", "--no-pager"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.nspawn.try_wait().ok().flatten().is_none() && self.leader != 0 {
            // SAFETY: kill(2); killing a PID namespace's init kills everything in it, and
            // nspawn, its parent, reaps it and exits.
            unsafe { libc::kill(self.leader as i32, libc::SIGKILL) };
            let t = Instant::now();
            while self.nspawn.try_wait().ok().flatten().is_none()
                && t.elapsed() < Duration::from_secs(10)
            {
                thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

/// Host pids whose /proc/PID/status satisfies `keep`.
pub fn host_pids(keep: impl Fn(&str) -> bool) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| keep(&s))
        })
        .collect()
}

/// The last pid of a status file's `NSpid:` line (the pid in the innermost namespace).
pub fn inner_pid(status: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()
        .map(String::from)
}

pub fn ns_inode(pid: u32, ns: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/{ns}"))
        .ok()
        .map(|m| m.ino())
}

/// Processes (host pids) whose `ns` namespace has this inode.
pub fn in_namespace(ns: &str, inode: u64) -> Vec<u32> {
    host_pids(|_| true)
        .into_iter()
        .filter(|p| ns_inode(*p, ns) == Some(inode))
        .collect()
}

/// `GET /metrics` at `addr` from inside the network namespace `netns` (a thread that enters it).
pub fn scrape_in(netns: &Path, addr: &str) -> Option<String> {
    let file = File::open(netns).expect("the container's network namespace");
    let addr = addr.to_string();
    thread::spawn(move || {
        // SAFETY: setns(2) on this thread only, with a namespace fd we hold.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return None;
        }
        scrape(&addr)
    })
    .join()
    .expect("scrape thread")
}

/// The capability mask of the unit's capability names (the kernel's numbering).
pub fn cap_mask<'a>(names: impl IntoIterator<Item = &'a str>) -> u64 {
    names
        .into_iter()
        .map(|n| match n {
            "CAP_DAC_READ_SEARCH" => 1u64 << 2,
            "CAP_NET_ADMIN" => 1 << 12,
            "CAP_SYS_PTRACE" => 1 << 19,
            "CAP_SYS_ADMIN" => 1 << 21,
            "CAP_PERFMON" => 1 << 38,
            "CAP_BPF" => 1 << 39,
            other => panic!("{other}: add its number to cap_mask"),
        })
        .fold(0, |m, b| m | b)
}

/// Retries `f` every 200 ms until it gives Some, or panics with `what` after `limit`.
pub fn wait_for<T>(
    limit: Duration,
    what: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t.elapsed() < limit, "{}", what());
        thread::sleep(Duration::from_millis(200));
    }
}
