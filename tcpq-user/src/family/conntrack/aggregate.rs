//! Conntrack: the table's entries (/proc/net/nf_conntrack) parsed, and its top consumers (its
//! counters' parser, `parse_ct_stat`, is in snapshot/counters.rs: tier 0 reads them too). Pure
//! and unit-tested.
use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;

/// One line of /proc/net/nf_conntrack (the original direction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtEntry {
    pub proto: String,
    /// Seconds left before the entry expires.
    pub timeout: u64,
    pub state: Option<String>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
}

pub fn parse_entries(text: &str) -> Vec<CtEntry> {
    text.lines().filter_map(parse_entry).collect()
}

pub fn parse_entry(line: &str) -> Option<CtEntry> {
    let f: Vec<&str> = line.split_whitespace().collect();
    // ipv4 2 tcp 6 431999 ESTABLISHED src=… dst=… sport=… dport=… …
    let proto = f.get(2)?.to_string();
    let timeout = f.get(4)?.parse().ok()?;
    let state = f.get(5).filter(|s| !s.contains('=')).map(|s| s.to_string());
    // The original direction's tuple comes first; the reply's repeats the keys.
    let mut tuple = OrigTuple::default();
    for kv in &f[5..] {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        match k {
            "src" if tuple.src.is_none() => tuple.src = v.parse().ok(),
            "dst" if tuple.dst.is_none() => tuple.dst = v.parse().ok(),
            "sport" if tuple.sport.is_none() => tuple.sport = v.parse().ok(),
            "dport" if tuple.dport.is_none() => tuple.dport = v.parse().ok(),
            _ => {}
        }
    }
    tuple.entry(proto, timeout, state)
}

/// An entry's original-direction tuple as a parser (proc file or ctnetlink) collects it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrigTuple {
    /// Both addresses are required: an entry without them is skipped.
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    /// None for a protocol without ports (icmp).
    pub sport: Option<u16>,
    pub dport: Option<u16>,
}

impl OrigTuple {
    /// The entry; None unless both addresses were found.
    pub fn entry(self, proto: String, timeout: u64, state: Option<String>) -> Option<CtEntry> {
        Some(CtEntry {
            proto,
            timeout,
            state,
            src: self.src?,
            dst: self.dst?,
            sport: self.sport,
            dport: self.dport,
        })
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TopConsumers {
    pub by_source: Vec<(String, u64)>,
    /// The same by source network (/24 for IPv4, /64 for IPv6): many addresses of one client
    /// network (a NAT pool, a scanner) hold a share no single address shows.
    pub by_source_net: Vec<(String, u64)>,
    pub by_dport: Vec<(String, u64)>,
    pub by_state: Vec<(String, u64)>,
    /// ESTABLISHED entries idle longer than an hour (timeout refreshed by traffic).
    pub idle_established: u64,
}

/// `addr`'s network as a per-source limit would group it: /24 (IPv4) or /64 (IPv6).
pub fn source_net(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => {
            let o = a.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
            format!("{net}/64")
        }
    }
}

pub fn top_consumers(entries: &[CtEntry], established_timeout: u64, k: usize) -> TopConsumers {
    let mut src: BTreeMap<String, u64> = BTreeMap::new();
    let mut net: BTreeMap<String, u64> = BTreeMap::new();
    let mut dport: BTreeMap<String, u64> = BTreeMap::new();
    let mut state: BTreeMap<String, u64> = BTreeMap::new();
    let mut idle = 0;
    for e in entries {
        *src.entry(e.src.to_string()).or_insert(0) += 1;
        *net.entry(source_net(e.src)).or_insert(0) += 1;
        if let Some(p) = e.dport {
            *dport.entry(format!("{}/{p}", e.proto)).or_insert(0) += 1;
        }
        let st = e.state.clone().unwrap_or_else(|| e.proto.clone());
        if st == "ESTABLISHED" && established_timeout.saturating_sub(e.timeout) > 3600 {
            idle += 1;
        }
        *state.entry(st).or_insert(0) += 1;
    }
    let top = |m: BTreeMap<String, u64>| {
        let mut v: Vec<(String, u64)> = m.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(k);
        v
    };
    TopConsumers {
        by_source: top(src),
        by_source_net: top(net),
        by_dport: top(dport),
        by_state: top(state),
        idle_established: idle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tuple_makes_an_entry_only_with_both_addresses() {
        let tuple = OrigTuple {
            src: "10.0.0.1".parse().ok(),
            dst: "10.0.0.2".parse().ok(),
            sport: None,
            dport: Some(53),
        };
        let e = tuple.clone().entry("udp".into(), 29, None).unwrap();
        assert_eq!(
            (e.proto.as_str(), e.timeout, e.sport, e.dport),
            ("udp", 29, None, Some(53))
        );
        assert_eq!(e.dst.to_string(), "10.0.0.2");
        let no_dst = OrigTuple { dst: None, ..tuple };
        assert!(no_dst.entry("udp".into(), 29, None).is_none());
    }
}
