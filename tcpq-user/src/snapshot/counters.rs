//! Kernel counters and sysctls, per network namespace (by inode: tcpq's namespaces are the
//! ones its hooks saw, not named ones). The counters files' parser is tcpq-lab's, shared with
//! the labs, the tests and the bench.
use std::collections::HashMap;

use anyhow::Result;
pub use tcpq_lab::counters::{delta, parse_pairs, parse_selected, read_here};

use super::netns;

/// TcpExt and Tcp counters of the namespace with this inode.
pub fn read_in(netns_inum: u32) -> Result<HashMap<String, u64>> {
    netns::run_in(netns_inum, read_here)?
}

/// Sysctls relevant to the listen path, of the calling thread's network namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenSysctls {
    pub somaxconn: Option<u32>,
    pub tcp_max_syn_backlog: Option<u32>,
    pub tcp_syncookies: Option<u32>,
    pub tcp_abort_on_overflow: Option<u32>,
}

/// One numeric sysctl (or /proc value) of the calling thread's namespace; None if absent.
pub fn read_sysctl<T: std::str::FromStr>(path: &str) -> Option<T> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl ListenSysctls {
    pub fn read_here() -> Self {
        Self {
            somaxconn: read_sysctl("/proc/sys/net/core/somaxconn"),
            tcp_max_syn_backlog: read_sysctl("/proc/sys/net/ipv4/tcp_max_syn_backlog"),
            tcp_syncookies: read_sysctl("/proc/sys/net/ipv4/tcp_syncookies"),
            tcp_abort_on_overflow: read_sysctl("/proc/sys/net/ipv4/tcp_abort_on_overflow"),
        }
    }
    pub fn read_in(netns_inum: u32) -> Self {
        netns::run_in(netns_inum, Self::read_here).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_namespace() {
        assert!(ListenSysctls::read_here().somaxconn.is_some());
    }
}
