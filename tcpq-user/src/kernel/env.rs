//! Facts about the running kernel and this process that decide which hooks can work:
//! privileges, BTF, tracefs, cgroup2, kprobes. Paths can be redirected for tests with
//! `TCPQ_MOUNTINFO` (a mountinfo file) and `TCPQ_BTF` (a BTF file).
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use procfs::FromRead as _;

pub const DEFAULT_BTF: &str = "/sys/kernel/btf/vmlinux";
const TRACEFS_DEFAULT: &str = "/sys/kernel/tracing";

/// Capability bits (linux/capability.h).
pub mod cap {
    pub const DAC_READ_SEARCH: u32 = 2;
    pub const NET_ADMIN: u32 = 12;
    pub const SYS_PTRACE: u32 = 19;
    pub const SYS_ADMIN: u32 = 21;
    pub const PERFMON: u32 = 38;
    pub const BPF: u32 = 39;
}

#[derive(Debug, Clone)]
pub struct Privileges {
    pub euid: u32,
    pub effective_caps: u64,
}

impl Privileges {
    pub fn current() -> Self {
        let effective_caps = fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| parse_cap_eff(&s))
            .unwrap_or(0);
        Self {
            euid: nix::unistd::geteuid().as_raw(),
            effective_caps,
        }
    }
    pub fn has(&self, bit: u32) -> bool {
        self.effective_caps & (1u64 << bit) != 0
    }
    /// Enough to load and attach tracing and cgroup programs (CAP_SYS_ADMIN implies the rest on
    /// older kernels).
    pub fn can_load_bpf(&self) -> bool {
        (self.has(cap::BPF) && self.has(cap::PERFMON) && self.has(cap::NET_ADMIN))
            || self.has(cap::SYS_ADMIN)
    }
    pub fn missing_for_bpf(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        for (bit, name) in [
            (cap::BPF, "CAP_BPF"),
            (cap::PERFMON, "CAP_PERFMON"),
            (cap::NET_ADMIN, "CAP_NET_ADMIN"),
        ] {
            if !self.has(bit) {
                v.push(name);
            }
        }
        v
    }
}

/// `CapEff:` from /proc/self/status.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

fn mountinfo_path() -> PathBuf {
    std::env::var_os("TCPQ_MOUNTINFO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/proc/self/mountinfo"))
}

/// Mount points of a filesystem type, from mountinfo.
pub fn mounts_of_type(fs_type: &str) -> Result<Vec<PathBuf>> {
    let path = mountinfo_path();
    let infos = procfs::process::MountInfos::from_file(&path)
        .with_context(|| format!("read mount table {}", path.display()))?;
    Ok(infos
        .into_iter()
        .filter(|m| m.fs_type == fs_type)
        .map(|m| m.mount_point)
        .collect())
}

/// Where tcpq mounts cgroup2 when nothing has (outside /sys/fs/cgroup, which may hold a v1
/// hierarchy).
pub const CGROUP2_PRIVATE: &str = "/run/tcpq/cgroup2";

/// The cgroup v2 mount (hybrid hosts mount it at /sys/fs/cgroup/unified, others at
/// /sys/fs/cgroup). With none, tcpq mounts one itself at CGROUP2_PRIVATE: `ip netns exec`
/// remounts /sys for the namespace in a mount namespace of its own, and cgroup2 is not part of
/// that — a mount made there stays there. Not when the mount table is redirected
/// (TCPQ_MOUNTINFO: a test of the missing case).
pub fn find_cgroup2() -> Result<PathBuf> {
    if let Some(p) = mounts_of_type("cgroup2")?.into_iter().next() {
        return Ok(p);
    }
    let missing = "no cgroup2 filesystem is mounted (needed to attach the cgroup_skb hook): run `mount -t cgroup2 none /sys/fs/cgroup/unified` or boot with systemd.unified_cgroup_hierarchy";
    if std::env::var_os("TCPQ_MOUNTINFO").is_some() {
        bail!(missing);
    }
    let target = Path::new(CGROUP2_PRIVATE);
    fs::create_dir_all(target)
        .map_err(|e| anyhow::anyhow!("{missing} (creating {CGROUP2_PRIVATE} failed: {e})"))?;
    nix::mount::mount(
        Some("cgroup2"),
        target,
        Some("cgroup2"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| anyhow::anyhow!("{missing} (mounting it at {CGROUP2_PRIVATE} failed: {e})"))?;
    Ok(target.to_path_buf())
}

pub fn btf_path() -> PathBuf {
    std::env::var_os("TCPQ_BTF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BTF))
}

/// What happened to tracefs.
#[derive(Debug, Clone)]
pub enum Tracefs {
    /// Already mounted at this path.
    Mounted(PathBuf),
    /// Not mounted: tcpq mounted it here.
    MountedByTcpq(PathBuf),
    /// Not mounted and tcpq could not mount it: why, and what to run.
    Missing(String),
}

impl Tracefs {
    pub fn path(&self) -> Option<&Path> {
        match self {
            Tracefs::Mounted(p) | Tracefs::MountedByTcpq(p) => Some(p),
            Tracefs::Missing(_) => None,
        }
    }
    pub fn describe(&self) -> String {
        match self {
            Tracefs::Mounted(p) => format!("tracefs mounted at {}", p.display()),
            Tracefs::MountedByTcpq(p) => format!(
                "tracefs was not mounted: tcpq mounted it at {} (stays mounted; `umount {}` to undo)",
                p.display(),
                p.display()
            ),
            Tracefs::Missing(why) => why.clone(),
        }
    }
}

/// Finds tracefs, mounting it at /sys/kernel/tracing when missing and we may.
pub fn ensure_tracefs(may_mount: bool) -> Tracefs {
    match mounts_of_type("tracefs") {
        Ok(mounts) => {
            if let Some(p) = mounts
                .iter()
                .find(|p| p.as_path() == Path::new(TRACEFS_DEFAULT))
                .or_else(|| mounts.first())
            {
                return Tracefs::Mounted(p.clone());
            }
        }
        Err(e) => return Tracefs::Missing(format!("cannot read the mount table: {e:#}")),
    }
    if !may_mount {
        return Tracefs::Missing(format!(
            "tracefs is not mounted (syscall tracepoints need it): run `mount -t tracefs tracefs {TRACEFS_DEFAULT}` as root"
        ));
    }
    let target = Path::new(TRACEFS_DEFAULT);
    if let Err(e) = fs::create_dir_all(target) {
        return Tracefs::Missing(format!(
            "tracefs is not mounted and creating {TRACEFS_DEFAULT} failed ({e}): run `mount -t tracefs tracefs {TRACEFS_DEFAULT}`"
        ));
    }
    match nix::mount::mount(
        Some("tracefs"),
        target,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    ) {
        Ok(()) => Tracefs::MountedByTcpq(target.to_path_buf()),
        Err(e) => Tracefs::Missing(format!(
            "tracefs is not mounted and mounting it failed ({e}): run `mount -t tracefs tracefs {TRACEFS_DEFAULT}`"
        )),
    }
}

/// kprobes exist only when CONFIG_KPROBES is set: tracefs then has `kprobe_events`.
pub fn kprobes_available(tracefs: &Tracefs) -> Option<bool> {
    tracefs.path().map(|p| p.join("kprobe_events").exists())
}

pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// (major, minor) of the running kernel.
pub fn kernel_version() -> (u32, u32) {
    parse_release(&kernel_release())
}

pub fn parse_release(release: &str) -> (u32, u32) {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_eff_parsed() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        let caps = parse_cap_eff(s).unwrap();
        let p = Privileges {
            euid: 0,
            effective_caps: caps,
        };
        assert!(p.has(cap::BPF) && p.has(cap::PERFMON) && p.can_load_bpf());
        let none = Privileges {
            euid: 1000,
            effective_caps: 0,
        };
        assert!(!none.can_load_bpf());
        assert_eq!(
            none.missing_for_bpf(),
            ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]
        );
    }

    #[test]
    fn release_parsed() {
        assert_eq!(parse_release("6.18.44-fc-v669"), (6, 18));
        assert_eq!(parse_release("5.4.0"), (5, 4));
        assert_eq!(parse_release("garbage"), (0, 0));
    }
}
