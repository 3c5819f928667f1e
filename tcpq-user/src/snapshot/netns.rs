//! Network namespaces by inode: find one, and run a closure inside it (on a scoped thread, so
//! the rest of tcpq stays where it is). sock_diag sockets, /proc/thread-self/net and
//! /proc/sys/net opened inside belong to that namespace.
use std::{
    fs::File,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow};
use nix::sched::{CloneFlags, setns};

/// Inode of a `/proc/<pid>/ns/net`-like file.
pub fn inode_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.ino() as u32)
}

pub fn current() -> Option<u32> {
    inode_of(Path::new("/proc/thread-self/ns/net"))
}

pub fn of_pid(pid: u32) -> Option<u32> {
    inode_of(Path::new(&format!("/proc/{pid}/ns/net")))
}

/// A path whose open() yields the netns with this inode: a bind mount under /run/netns, or
/// some process living in it.
pub fn find(inum: u32) -> Option<PathBuf> {
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        for e in dir.flatten() {
            if inode_of(&e.path()) == Some(inum) {
                return Some(e.path());
            }
        }
    }
    let procs = std::fs::read_dir("/proc").ok()?;
    for e in procs.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let p = PathBuf::from(format!("/proc/{pid}/ns/net"));
        if inode_of(&p) == Some(inum) {
            return Some(p);
        }
    }
    None
}

/// Runs `f` with the calling thread's network namespace switched to `inum` (or here, if it is
/// ours already).
pub fn run_in<T: Send>(inum: u32, f: impl FnOnce() -> T + Send) -> Result<T> {
    if current() == Some(inum) {
        return Ok(f());
    }
    let path = find(inum).ok_or_else(|| {
        anyhow!(
            "network namespace {inum} not found (no process or /run/netns entry holds it any more)"
        )
    })?;
    run_in_path(&path, f)
}

pub fn run_in_path<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let file =
        File::open(path).with_context(|| format!("open network namespace {}", path.display()))?;
    std::thread::scope(|s| {
        s.spawn(move || -> Result<T> {
            setns(&file, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("enter network namespace {}", path.display()))?;
            Ok(f())
        })
        .join()
        .map_err(|_| {
            anyhow!(
                "thread inside network namespace {} panicked",
                path.display()
            )
        })?
    })
}

/// Shell prefix that runs a command inside network namespace `inum` when it is not tcpq's own
/// (`nsenter --net=/run/netns/NAME ` or `/proc/PID/ns/net`), empty otherwise.
pub fn enter_prefix(inum: u32, host: u32) -> String {
    if inum == 0 || inum == host {
        return String::new();
    }
    match find(inum) {
        Some(path) => format!("nsenter --net={} ", path.display()),
        None => format!("(in network namespace {inum}) "),
    }
}

/// Every network namespace the threads of `pid` live in (a process may move single threads
/// with setns(), as `tcpq lab` does): the main thread's first.
pub fn of_pid_threads(pid: u32) -> Vec<u32> {
    let mut out: Vec<u32> = of_pid(pid).into_iter().collect();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Some(ns) = inode_of(&t.path().join("ns/net"))
                && !out.contains(&ns)
            {
                out.push(ns);
            }
        }
    }
    out
}
