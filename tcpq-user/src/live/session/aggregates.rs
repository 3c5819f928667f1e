//! The data of one interval: what the hooks and tier 0 reported (`Aggregates`), sampled
//! acceptors, and the events lost in the kernel (`Lost`).
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use super::{MAX_CONNECT_KEYS, MAX_LISTENERS};
use crate::{
    family::{
        accept::aggregate::AcceptStats, connect::aggregate::ConnectAggregator,
        listen::aggregate::OverflowAggregator,
    },
    live::engine::{FamilyView, ListenerId, ListenerTotals},
    snapshot::{listeners::ListenerDirectory, procs},
};

/// What the hooks reported over one interval. Pure data: built by `Session::drain`, read by
/// the analysis and renderers (and by unit tests from recorded events).
pub struct Aggregates {
    pub overflow: OverflowAggregator,
    pub connects: ConnectAggregator,
    /// (netns, "table_full" | "rule") → drops.
    pub drops: BTreeMap<(u32, &'static str), u64>,
    pub accepts: BTreeMap<(u32, IpAddr, u16), AcceptStats>,
    /// Holders of each accepting listener and the fewest idle acceptors seen (sampled while the
    /// interval runs: "5 share, 0 idle" must be seen while the workers are busy).
    pub acceptors: BTreeMap<(u32, IpAddr, u16), AcceptorSample>,
    /// Accept keys not recorded because the table was full.
    pub accepts_evicted: u64,
    /// The listen kinds were confirmed by the outcome hooks (else predicted at arrival).
    pub listen_confirmed: bool,
    /// Events decoded (all families).
    pub events: u64,
    /// Listen events the kernel counted per listener without a ring record (line budget).
    pub tallied: u64,
    /// Kernel counters (/proc/net/netstat, snmp) per namespace at the start and at the end of
    /// the interval: tier 0's readings at its boundaries.
    pub counters_first: HashMap<u32, HashMap<String, u64>>,
    pub counters_last: HashMap<u32, HashMap<String, u64>>,
    /// Tier 0: listeners that refused (exact, from `sk_drops`) or queued in the interval.
    pub tier0_listeners: Vec<(ListenerId, ListenerTotals)>,
    /// Tier 0: refusals of the interval no listener could be named for, per namespace
    /// (listeners created and closed between two readings; `Tier0::take_unattributed`).
    pub tier0_unattributed: Vec<(u32, u64)>,
    /// Tier 0: namespaces whose conntrack table is at least half full (count, max) at the end.
    pub tier0_conntrack: Vec<(u32, crate::snapshot::nswatch::CtReading)>,
    /// Tier 0: every namespace with a conntrack table (count, max) at the end (export's gauges).
    pub tier0_conntrack_tables: Vec<(u32, crate::snapshot::nswatch::CtReading)>,
    /// Each family: watching or tracing, since when and why (at the end of the interval).
    pub families: Vec<FamilyView>,
    /// Connections closed with data unread (reset: TCPAbortOnClose) per (namespace, local
    /// port, process) in the interval, exact from the kernel (`limit`).
    pub aborts: BTreeMap<tcpq_common::AbortKey, crate::limit::Tally>,
    /// What each of those processes held on its port at the looks taken while the interval
    /// ran (`Session::sample_limits`).
    pub limit_seen: BTreeMap<tcpq_common::AbortKey, crate::limit::Seen>,
}

impl Default for Aggregates {
    fn default() -> Self {
        Self {
            overflow: OverflowAggregator::new(MAX_LISTENERS),
            connects: ConnectAggregator::new(MAX_CONNECT_KEYS),
            drops: BTreeMap::new(),
            accepts: BTreeMap::new(),
            acceptors: BTreeMap::new(),
            accepts_evicted: 0,
            listen_confirmed: false,
            events: 0,
            tallied: 0,
            counters_first: HashMap::new(),
            counters_last: HashMap::new(),
            tier0_listeners: Vec::new(),
            tier0_unattributed: Vec::new(),
            tier0_conntrack: Vec::new(),
            tier0_conntrack_tables: Vec::new(),
            families: Vec::new(),
            aborts: BTreeMap::new(),
            limit_seen: BTreeMap::new(),
        }
    }
}

impl Aggregates {
    /// An interval in which 127.0.0.1:`lport` of namespace `netns` refused `refused` (of them
    /// `uncertain` guessed) and `unattributed` more were refused there by no listener listed.
    #[cfg(test)]
    pub fn with_refusals(
        netns: u32,
        lport: u16,
        refused: u64,
        uncertain: u64,
        unattributed: u64,
    ) -> Self {
        let id = ListenerId {
            netns,
            laddr: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            lport,
            cookie: 1,
        };
        let mut t = ListenerTotals::default();
        t.refused_interval = refused;
        t.uncertain_interval = uncertain;
        Self {
            tier0_listeners: vec![(id, t)],
            tier0_unattributed: vec![(netns, unattributed)],
            ..Self::default()
        }
    }

    /// Namespaces any event of the interval came from.
    pub fn namespaces(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .overflow
            .listeners
            .keys()
            .map(|k| k.netns)
            .chain(self.connects.by_key.keys().map(|k| k.netns))
            .chain(self.drops.keys().map(|(n, _)| *n))
            .chain(self.accepts.keys().map(|(n, _, _)| *n))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcceptorSample {
    pub holders: Vec<crate::snapshot::procs::Owner>,
    pub min_idle: u64,
}

/// Who holds a listener and how many of their threads sit in accept() right now.
pub fn sample_acceptors(
    dir: &mut ListenerDirectory,
    ns: u32,
    laddr: IpAddr,
    lport: u16,
) -> Option<AcceptorSample> {
    let info = dir.lookup(ns, 0, laddr, lport)?;
    let idle = info
        .owners
        .iter()
        .map(|o| procs::threads_in_accept(o.pid, info.inode))
        .sum();
    Some(AcceptorSample {
        holders: info.owners.clone(),
        min_idle: idle,
    })
}

/// Events lost in the kernel (ring buffer full), per hook family, since the session started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Lost {
    pub listen: u64,
    pub connect: u64,
    pub drop: u64,
    pub accept: u64,
    /// Program runs the kernel skipped (recursion guard: the program was already running on
    /// that CPU), all families together.
    pub missed_runs: u64,
    /// Listen records whose outcome the kernel side never saw (`listen::unresolved_records`).
    pub unresolved: u64,
}

impl Lost {
    pub fn total(&self) -> u64 {
        self.listen + self.connect + self.drop + self.accept + self.missed_runs + self.unresolved
    }
}
