//! Named network namespaces (/run/netns) for labs, tests and the bench: created here and
//! deleted on drop, threads that live in one, sysctls and nft rules inside one, and its kernel
//! counters. Nothing here touches the caller's own namespace.
use std::{
    collections::HashMap,
    fs::File,
    io::Write as _,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
};

use anyhow::{Context as _, Result, bail};
use nix::sched::{CloneFlags, setns};

use crate::counters;

pub fn run_cmd(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| {
        format!(
            "{what}: cannot run {:?} (is iproute2/nftables installed?)",
            cmd.get_program()
        )
    })?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub fn ip(args: &[&str]) -> Result<()> {
    run_cmd(
        Command::new("ip").args(args),
        &format!("ip {}", args.join(" ")),
    )
}

pub fn nft_in(ns: &str, script: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("run nft (apt-get install nftables)")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())
        .context("write nft script")?;
    let out = child.wait_with_output().context("wait for nft")?;
    if !out.status.success() {
        bail!(
            "nft in namespace {ns} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub fn nft_available() -> bool {
    Command::new("nft")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A named network namespace, deleted on drop when the lab created it.
pub struct NetnsGuard {
    pub name: String,
    created: bool,
}

impl NetnsGuard {
    pub fn create_or_use(name: &str) -> Result<Self> {
        if path_of(name).exists() {
            return Ok(Self {
                name: name.into(),
                created: false,
            });
        }
        ip(&["netns", "add", name])?;
        let g = Self {
            name: name.into(),
            created: true,
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(g)
    }
    /// Names the network namespace of process `pid` `name` (`ip netns attach`), e.g. a
    /// container's, so it can be entered by name; the name (not the namespace) goes on drop.
    pub fn attach(name: &str, pid: u32) -> Result<Self> {
        ip(&["netns", "attach", name, &pid.to_string()])?;
        Ok(Self {
            name: name.into(),
            created: true,
        })
    }
    /// `name` anew: a leftover of an interrupted run (same name) is deleted first.
    pub fn fresh(name: &str) -> Result<Self> {
        delete(name);
        Self::create_or_use(name)
    }
    pub fn path(&self) -> PathBuf {
        path_of(&self.name)
    }
    pub fn inode(&self) -> u32 {
        std::fs::metadata(self.path())
            .map(|m| m.ino() as u32)
            .unwrap_or(0)
    }
    pub fn file(&self) -> Result<File> {
        File::open(self.path()).with_context(|| format!("open network namespace {}", self.name))
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if self.created {
            delete(&self.name);
        }
    }
}

/// Spawns a thread that lives in `ns`.
pub fn spawn_in<T: Send + 'static>(
    ns: &NetnsGuard,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<thread::JoinHandle<Result<T>>> {
    spawn_in_named(&ns.name, f)
}

/// Spawns a thread that lives in the namespace /run/netns/`name` (one this process may not own).
fn spawn_in_named<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<thread::JoinHandle<Result<T>>> {
    let file =
        File::open(path_of(name)).with_context(|| format!("open network namespace {name}"))?;
    let name = name.to_string();
    Ok(thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("enter network namespace {name}"))?;
        Ok(f())
    }))
}

pub fn write_sysctl_in(ns: &NetnsGuard, path: &'static str, value: &str) -> Result<()> {
    let v = value.to_string();
    let h = spawn_in(ns, move || std::fs::write(path, v))?;
    h.join()
        .map_err(|_| anyhow::anyhow!("sysctl thread panicked"))??
        .with_context(|| format!("set {path} in namespace {}", ns.name))
}

/// /run/netns/`name`, where `ip netns add` mounts a named namespace.
fn path_of(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// Deletes the named namespace if it exists (best effort: a missing one is no error).
pub fn delete(name: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}

/// TcpExt and Tcp counters (/proc/net/netstat and /proc/net/snmp, `Prefix:Name` → value) of
/// the named namespace, read from a thread that enters it.
pub fn counters_of(name: &str) -> Result<HashMap<String, u64>> {
    spawn_in_named(name, counters::read_here)?
        .join()
        .map_err(|_| anyhow::anyhow!("counters thread panicked"))??
        .with_context(|| format!("read the counters of network namespace {name}"))
}
