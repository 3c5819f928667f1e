//! Kernel counters (TcpExt/Tcp, and conntrack's /proc/net/stat/nf_conntrack) and sysctls, per network namespace (by inode: tcpq's namespaces are the
//! ones its hooks saw, not named ones). The counters files' parser is tcpq-lab's, shared with
//! the labs, the tests and the bench.
use std::collections::{BTreeMap, HashMap};

use anyhow::Result;
pub use tcpq_lab::counters::{delta, parse_pairs, parse_selected, read_here};

use super::netns;

/// TcpExt and Tcp counters of the namespace with this inode.
pub fn read_in(netns_inum: u32) -> Result<HashMap<String, u64>> {
    netns::run_in(netns_inum, read_here)?
}

/// Sum of the per-CPU columns of /proc/net/stat/nf_conntrack (hex values).
pub fn parse_ct_stat(text: &str) -> BTreeMap<String, u64> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return BTreeMap::new();
    };
    let names: Vec<&str> = header.split_whitespace().collect();
    let mut out: BTreeMap<String, u64> = names.iter().map(|n| (n.to_string(), 0)).collect();
    for line in lines {
        for (name, v) in names.iter().zip(line.split_whitespace()) {
            if let Ok(v) = u64::from_str_radix(v, 16) {
                // `entries` is global (repeated per CPU): keep it once.
                if *name == "entries" {
                    out.insert(name.to_string(), v);
                } else {
                    *out.entry(name.to_string()).or_insert(0) += v;
                }
            }
        }
    }
    out
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

    #[test]
    fn stat_columns_are_summed() {
        let t = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n00000040  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000001 0000000a 00000000 00000000  00000000 00000000 00000000 00000002\n00000040  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000005 00000000 00000000  00000000 00000000 00000000 00000000\n";
        let s = parse_ct_stat(t);
        assert_eq!(s["drop"], 15);
        assert_eq!(s["entries"], 64);
        assert_eq!(s["insert_failed"], 1);
        assert_eq!(s["search_restart"], 2);
        assert!(parse_ct_stat("").is_empty());
    }
}
