//! One refresh of `tcpq top`: the model every renderer (TUI, `-b` text, `--json` NDJSON) draws.
//! Built purely from an interval's aggregates, its causes and the snapshots read for it.
mod build;
mod text;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::IpAddr,
};

use serde::Serialize;

pub use build::{build, rate_per_s};
pub use text::{
    counters_text, families_text, opt, owner_text, pct, rates_text, render_text, tallied_note,
};

/// Kernel counters worth a line in the header when they move (/proc/net/netstat and snmp).
pub const WATCHED_COUNTERS: &[&str] = &[
    "TcpExt:ListenOverflows",
    "TcpExt:ListenDrops",
    "TcpExt:SyncookiesSent",
    "TcpExt:SyncookiesFailed",
    "TcpExt:TCPReqQFullDrop",
    "TcpExt:TCPReqQFullDoCookies",
    "TcpExt:TCPTimeWaitOverflow",
    "Tcp:AttemptFails",
    "Tcp:EstabResets",
    "Tcp:ActiveOpens",
    "Tcp:PassiveOpens",
    "Tcp:RetransSegs",
];

/// Samples kept for the sparklines.
pub const HISTORY: usize = 120;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CounterRate {
    pub name: String,
    pub per_s: f64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CauseRow {
    pub cause: String,
    #[serde(rename = "where")]
    pub place: String,
    pub pid: Option<u32>,
    pub process: Option<String>,
    pub cgroup: Option<String>,
    /// Kubernetes pod (`namespace/name`, else `pod <uid>`) and container of the process, from its
    /// cgroup (snapshot::container); null on the host.
    pub pod: Option<String>,
    pub container: Option<String>,
    /// Refused connections or failures per second.
    pub impact_per_s: f64,
    pub evidence: String,
    pub fix: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ListenerRow {
    pub netns: u32,
    pub listener: String,
    pub pid: Option<u32>,
    pub process: Option<String>,
    pub cgroup: Option<String>,
    /// Kubernetes pod (`namespace/name`, else `pod <uid>`) and container of the process, from its
    /// cgroup (snapshot::container); null on the host.
    pub pod: Option<String>,
    pub container: Option<String>,
    pub queue: Option<u32>,
    pub backlog: Option<u32>,
    /// Per kind id ("syn", "ack", "synq", "cookie", …) per second.
    pub per_s: BTreeMap<&'static str, f64>,
    /// Exact counts per kind over the interval (the rates above are rounded), from the
    /// tier-2 programs: only while the listen family is tracing.
    pub counts: BTreeMap<&'static str, u64>,
    /// Connections refused over the interval, exact: the listener's `sk_drops` (tier 0, read
    /// whether or not anything is traced). None when sock_diag did not list the listener.
    pub refused: Option<u64>,
    /// Of `refused`, those no tier-2 program detailed (before tracing started).
    pub untraced: Option<u64>,
    /// Of `refused`, those counted after its last reading when it closed together with other
    /// listeners of its namespace that were refusing too: which of them refused how many is
    /// shared by their last rates (the namespace's total stays exact).
    pub uncertain: Option<u64>,
    pub refused_per_s: f64,
    pub accepts_per_s: f64,
    pub accept_wait_p99_us: Option<u64>,
    pub idle_acceptors: Option<u64>,
    pub acceptors: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct OutboundRow {
    pub netns: u32,
    pub pid: u32,
    pub process: String,
    pub cgroup: Option<String>,
    /// Kubernetes pod (`namespace/name`, else `pod <uid>`) and container of the process, from its
    /// cgroup (snapshot::container); null on the host.
    pub pod: Option<String>,
    pub container: Option<String>,
    pub destination: String,
    pub connects_per_s: f64,
    pub failures_per_s: f64,
    /// Failures per second by result ("EADDRNOTAVAIL", "refused", "timeout", …).
    pub failures_by_result: BTreeMap<String, f64>,
    pub ports_used: Option<u64>,
    pub ports_usable: Option<u32>,
    pub time_wait: Option<u64>,
    pub connect_p99_us: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ConntrackRow {
    pub netns: u32,
    pub count: u64,
    pub max: u64,
    pub drops_per_s: f64,
    pub table_full_per_s: f64,
    /// The kernel's conntrack `drop` stat per second (`None` on a namespace's first reading):
    /// equal to `table_full_per_s` unless the kernel counted drops no tracepoint reported.
    pub kernel_drops_per_s: Option<f64>,
    pub top_consumer: Option<String>,
}

impl ConntrackRow {
    pub fn describe(&self) -> String {
        format!(
            "netns {}: {}/{} entries ({:.0} %), drops {:.1}/s (table full {:.1}/s, kernel stat {}), top consumer {}",
            self.netns,
            self.count,
            self.max,
            pct(self.count, self.max),
            self.drops_per_s,
            self.table_full_per_s,
            self.kernel_rate(),
            self.top_consumer.as_deref().unwrap_or("-")
        )
    }

    /// The kernel's drop rate as shown: `12.0/s`, or `-` before there are two readings.
    pub fn kernel_rate(&self) -> String {
        opt(self.kernel_drops_per_s.map(|r| format!("{r:.1}/s")))
    }
}

/// The rates drawn as sparklines, one sample per frame.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct History {
    pub refused_per_s: VecDeque<u64>,
    pub failures_per_s: VecDeque<u64>,
    pub ct_drops_per_s: VecDeque<u64>,
    pub events_per_s: VecDeque<u64>,
}

impl History {
    fn push(q: &mut VecDeque<u64>, v: f64) {
        if q.len() == HISTORY {
            q.pop_front();
        }
        q.push_back(v.round().max(0.0) as u64);
    }

    pub fn record(&mut self, f: &Frame) {
        Self::push(
            &mut self.refused_per_s,
            f.listeners.iter().map(|l| l.refused_per_s).sum(),
        );
        Self::push(
            &mut self.failures_per_s,
            f.outbound.iter().map(|o| o.failures_per_s).sum(),
        );
        Self::push(
            &mut self.ct_drops_per_s,
            f.conntrack.iter().map(|c| c.drops_per_s).sum(),
        );
        Self::push(&mut self.events_per_s, f.events_per_s);
    }
}

/// A namespace's refusals that no listener could be named for.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Unattributed {
    pub netns: u32,
    pub refused: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Frame {
    /// Unix time of the frame, seconds.
    pub time: u64,
    pub host: String,
    pub kernel: String,
    pub interval_s: f64,
    pub hooks_active: usize,
    pub hooks_total: usize,
    /// Hooks not attached, with the reason.
    pub hooks_inactive: Vec<String>,
    /// Ring records read per second.
    pub events_per_s: f64,
    /// Listen refusals per second counted per listener in the kernel, without a ring record
    /// (over the line budget; in the listener counts all the same).
    pub tallied_per_s: f64,
    /// Events lost (ring buffer full) since start, and in this interval.
    pub lost_total: u64,
    pub lost_interval: u64,
    pub counters: Vec<CounterRate>,
    /// Per family: watching (kernel counters only) or tracing (tier 2 attached), since, why.
    pub families: Vec<crate::live::engine::FamilyView>,
    /// Network namespaces tier 0 reads (listeners, counters, conntrack).
    pub namespaces: usize,
    pub causes: Vec<CauseRow>,
    pub listeners: Vec<ListenerRow>,
    /// Refusals of the interval no listener could be named for (created and closed between two
    /// tier-0 readings), per namespace: with `listeners[].refused` they add up to ListenDrops.
    pub refused_unattributed: Vec<Unattributed>,
    pub outbound: Vec<OutboundRow>,
    pub conntrack: Vec<ConntrackRow>,
    /// Table entries not recorded because a userspace table was full (bounded memory).
    pub evicted: u64,
    /// How the listeners' `counts` by kind were told: "confirmed" from what the kernel did with
    /// each packet (`--hooks all`), or "predicted" from the queues when it arrived and capped at
    /// the exact `refused` (counters first: the outcome hooks cost more than the rest together).
    pub listen_kinds: &'static str,
    /// Frames not written since the one before this because the output did not take them (a
    /// reader that stopped reading: `outbox`), and since start. Collection went on meanwhile.
    pub frames_dropped: u64,
    pub frames_dropped_total: u64,
}

/// What was read from the system for one frame (sock_diag, /proc, conntrack), keyed the way
/// the aggregates are.
#[derive(Debug, Clone, Default)]
pub struct Snapshots {
    /// (netns, port) → listener state.
    pub listeners: HashMap<(u32, u16), ListenerSnap>,
    /// (netns, destination, port) → port usage.
    pub ports: HashMap<(u32, IpAddr, u16), PortSnap>,
    pub conntrack: Vec<ConntrackRow>,
    /// pid → cgroup path (not root).
    pub cgroups: HashMap<u32, String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListenerSnap {
    pub queue: u32,
    pub backlog: u32,
    pub pid: Option<u32>,
    pub process: Option<String>,
    pub holders: u64,
    pub idle: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PortSnap {
    pub used: u64,
    pub usable: u32,
    pub time_wait: u64,
}

/// Static facts of the frame header.
#[derive(Debug, Clone, Default)]
pub struct Header {
    pub time: u64,
    pub host: String,
    pub kernel: String,
    pub hooks_active: usize,
    pub hooks_total: usize,
    pub hooks_inactive: Vec<String>,
    pub lost_total: u64,
    pub lost_interval: u64,
    pub namespaces: usize,
}
