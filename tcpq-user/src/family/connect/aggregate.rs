//! Aggregation of connect outcomes per process → destination, with latency histograms. Pure
//! and unit-tested.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use hdrhistogram::Histogram;

use super::decode::{ConnectOutcome, ConnectResult};
use crate::aggregate::histogram;

/// A process's connections to one destination, in one network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectKey {
    pub netns: u32,
    pub tgid: u32,
    pub daddr: IpAddr,
    pub dport: u16,
}

impl ConnectKey {
    pub fn of(o: &ConnectOutcome) -> Self {
        Self {
            netns: o.netns,
            tgid: o.tgid,
            daddr: o.daddr,
            dport: o.dport,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConnectStats {
    pub comm: String,
    pub attempts: u64,
    pub results: BTreeMap<ConnectResult, u64>,
    pub syscall_ns: Histogram<u64>,
    pub handshake_ns: Histogram<u64>,
    pub syn_retrans: u64,
    /// Source addresses seen (for grouping by source in `ports`).
    pub saddrs: BTreeMap<IpAddr, u64>,
}

impl ConnectStats {
    fn new(comm: &str) -> Self {
        Self {
            comm: comm.to_string(),
            attempts: 0,
            results: BTreeMap::new(),
            syscall_ns: histogram(),
            handshake_ns: histogram(),
            syn_retrans: 0,
            saddrs: BTreeMap::new(),
        }
    }

    pub fn record(&mut self, o: &ConnectOutcome) {
        self.attempts += 1;
        *self.results.entry(o.result).or_insert(0) += 1;
        if let Some(ns) = o.syscall_ns {
            let _ = self.syscall_ns.record(ns.clamp(1_000, 3_600_000_000_000));
        }
        if let Some(ns) = o.handshake_ns {
            let _ = self.handshake_ns.record(ns.clamp(1_000, 3_600_000_000_000));
        }
        self.syn_retrans += o.syn_retrans as u64;
        if !o.saddr.is_unspecified() {
            *self.saddrs.entry(o.saddr).or_insert(0) += 1;
        }
    }

    pub fn merge(&mut self, other: &ConnectStats) {
        self.attempts += other.attempts;
        for (k, v) in &other.results {
            *self.results.entry(*k).or_insert(0) += v;
        }
        let _ = self.syscall_ns.add(&other.syscall_ns);
        let _ = self.handshake_ns.add(&other.handshake_ns);
        self.syn_retrans += other.syn_retrans;
        for (k, v) in &other.saddrs {
            *self.saddrs.entry(*k).or_insert(0) += v;
        }
    }

    pub fn count(&self, r: ConnectResult) -> u64 {
        self.results.get(&r).copied().unwrap_or(0)
    }

    pub fn failures(&self) -> u64 {
        self.results
            .iter()
            .filter(|(r, _)| r.is_failure())
            .map(|(_, n)| n)
            .sum()
    }

    /// (p50, p99, max) in ns, None when nothing was recorded.
    pub fn quantiles(h: &Histogram<u64>) -> Option<(u64, u64, u64)> {
        (!h.is_empty()).then(|| (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max()))
    }
}

/// Per process → destination stats, bounded (overflow folded into `evicted`).
#[derive(Debug)]
pub struct ConnectAggregator {
    pub by_key: HashMap<ConnectKey, ConnectStats>,
    pub evicted: u64,
    max_keys: usize,
}

impl ConnectAggregator {
    pub fn new(max_keys: usize) -> Self {
        Self {
            by_key: HashMap::new(),
            evicted: 0,
            max_keys,
        }
    }

    pub fn record(&mut self, o: &ConnectOutcome) {
        let key = ConnectKey::of(o);
        if !self.by_key.contains_key(&key) && self.by_key.len() >= self.max_keys {
            self.evicted += 1;
            return;
        }
        self.by_key
            .entry(key)
            .or_insert_with(|| ConnectStats::new(&o.comm))
            .record(o);
    }

    /// Keys ranked by failures, then attempts.
    pub fn ranked(&self) -> Vec<(&ConnectKey, &ConnectStats)> {
        let mut v: Vec<_> = self.by_key.iter().collect();
        v.sort_by(|a, b| {
            b.1.failures()
                .cmp(&a.1.failures())
                .then(b.1.attempts.cmp(&a.1.attempts))
                .then(a.0.cmp(b.0))
        });
        v
    }

    pub fn clear(&mut self) {
        self.by_key.clear();
    }
}

/// The connects of one namespace to one destination that failed: the merged stats of the
/// processes whose connects failed, and their pids.
#[derive(Debug, Clone)]
pub struct FailedConnects {
    pub stats: ConnectStats,
    pub pids: BTreeSet<u32>,
}

/// Per (namespace, destination) with a failure, whatever source addresses the connects used:
/// one failing destination is one thing, named after the processes that failed there.
pub fn failed_by_destination(
    agg: &ConnectAggregator,
) -> BTreeMap<(u32, IpAddr, u16), FailedConnects> {
    let mut out: BTreeMap<(u32, IpAddr, u16), FailedConnects> = BTreeMap::new();
    for (k, s) in agg.by_key.iter().filter(|(_, s)| s.failures() > 0) {
        match out.entry((k.netns, k.daddr, k.dport)) {
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(FailedConnects {
                    stats: s.clone(),
                    pids: BTreeSet::from([k.tgid]),
                });
            }
            std::collections::btree_map::Entry::Occupied(mut e) => {
                let f = e.get_mut();
                f.stats.merge(s);
                f.pids.insert(k.tgid);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn o(result: ConnectResult, tgid: u32, syscall: u64) -> ConnectOutcome {
        ConnectOutcome {
            ts_ns: 0,
            netns: 1,
            tgid,
            comm: "nginx".into(),
            saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sport: 40000,
            daddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            dport: 9000,
            result,
            syscall_ns: Some(syscall),
            handshake_ns: (result == ConnectResult::Ok).then_some(50_000),
            syn_retrans: 0,
        }
    }

    #[test]
    fn failures_grouped_by_destination_name_who_failed() {
        let mut a = ConnectAggregator::new(100);
        // pid 1 connects fine; pid 7 is refused (from 39 source addresses: they fold into its
        // key, and the causes no longer multiply by source either, see live::causes).
        a.record(&o(ConnectResult::Ok, 1, 10_000));
        for i in 0..39u8 {
            let mut f = o(ConnectResult::Refused, 7, 10_000);
            f.saddr = IpAddr::V4(Ipv4Addr::new(127, 0, 1, i + 2));
            f.comm = "curl".into();
            a.record(&f);
        }
        let by = failed_by_destination(&a);
        assert_eq!(by.len(), 1);
        let f = &by[&(1, IpAddr::V4(Ipv4Addr::LOCALHOST), 9000)];
        assert_eq!(f.pids, BTreeSet::from([7]));
        assert_eq!((f.stats.comm.as_str(), f.stats.attempts), ("curl", 39));
        assert_eq!(f.stats.count(ConnectResult::Refused), 39);
    }

    #[test]
    fn aggregates_and_ranks() {
        let mut a = ConnectAggregator::new(10);
        for _ in 0..10 {
            a.record(&o(ConnectResult::Ok, 1, 10_000));
        }
        for _ in 0..3 {
            a.record(&o(ConnectResult::Errno(99), 2, 2_000_000));
        }
        let r = a.ranked();
        assert_eq!(r[0].0.tgid, 2, "failing process first");
        assert_eq!(r[0].1.count(ConnectResult::Errno(99)), 3);
        assert_eq!(r[1].1.attempts, 10);
        let (p50, p99, _) = ConnectStats::quantiles(&r[0].1.syscall_ns).unwrap();
        assert!((1_900_000..=2_100_000).contains(&p50) && p99 >= p50);
        assert!(ConnectStats::quantiles(&r[0].1.handshake_ns).is_none());
        let mut merged = r[0].1.clone();
        merged.merge(r[1].1);
        assert_eq!(merged.attempts, 13);
        assert_eq!(merged.failures(), 3);
    }

    #[test]
    fn bounded() {
        let mut a = ConnectAggregator::new(1);
        a.record(&o(ConnectResult::Ok, 1, 1));
        a.record(&o(ConnectResult::Ok, 2, 1));
        assert_eq!((a.by_key.len(), a.evicted), (1, 1));
    }
}
