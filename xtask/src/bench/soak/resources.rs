//! tcpq's resources during the soak: resident memory and open descriptors at one look, and the
//! network namespaces on the machine (tier 0 holds descriptors for each).
use std::collections::BTreeSet;

/// tcpq's resident memory and open descriptors at one look.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Resources {
    pub at_s: f64,
    pub rss_kib: u64,
    pub fds: usize,
}

/// tcpq's fds and the machine's network namespaces with no lab running.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Idle {
    pub fds: usize,
    pub namespaces: usize,
}

/// tcpq's open fds, less its BPF links: a family armed by a lab keeps its tier-2 programs
/// attached (one link each) until `--quiet-period` (30 s) after the trouble, so the links
/// follow the labs and are no leak.
pub(super) fn fd_count(pid: u32) -> Option<usize> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        dir.flatten()
            .filter(|e| {
                std::fs::read_link(e.path())
                    .map(|t| t.to_string_lossy() != "anon_inode:bpf_link")
                    .unwrap_or(true)
            })
            .count(),
    )
}

/// Network namespaces on the machine (every process's and every /run/netns mount), which tier 0
/// all watches: on a shared machine other people's come and go too.
pub(super) fn netns_count() -> usize {
    use std::os::unix::fs::MetadataExt as _;
    let procs = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("ns/net"));
    let named = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    procs
        .chain(named)
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect::<BTreeSet<_>>()
        .len()
}
