//! The counters-first engine of the live commands (DESIGN.md, "Cost tiers"). Tier 0 reads what
//! the kernel already counts (`snapshot::nswatch`): every listener's `sk_drops`, queue and
//! backlog, the TcpExt/Tcp counters and the conntrack table of every namespace. Those readings
//! give the exact per-listener refusal totals, and say which family has trouble now; a family
//! with trouble is armed (its tier-2 programs attached, `Loaded::arm`) and disarmed after a
//! quiet period. Pure: readings in, totals and arm/disarm decisions out.
mod arm;
mod share;
#[cfg(test)]
mod tests;
mod update;

use std::{collections::HashMap, net::IpAddr, time::Duration};

pub use arm::{Arm, FamilyView, Step, unix_now};
pub use share::{gone_weights, share_drops};

use crate::snapshot::nswatch::CtReading;

/// Tier 0 is read this often (a LISTEN-only dump and a few /proc reads per namespace).
pub const POLL_EVERY: Duration = Duration::from_millis(250);
/// Tier 0 may take at most 1/TIER0_CPU_SHARE of one CPU: a reading that took `t` is followed by
/// the next after at least TIER0_CPU_SHARE × t (10,000 listeners: ~18 ms a reading here, so
/// every ~1.8 s between the frames' own readings), never more than MAX_POLL_EVERY apart.
pub const TIER0_CPU_SHARE: u32 = 100;
pub const MAX_POLL_EVERY: Duration = Duration::from_secs(5);

/// When the next tier-0 reading is due after one that took `cost`.
pub fn next_poll_after(cost: Duration) -> Duration {
    (cost * TIER0_CPU_SHARE).clamp(POLL_EVERY, MAX_POLL_EVERY)
}

/// A family is disarmed after this long without trouble (`--quiet-period`).
pub const DEFAULT_QUIET: Duration = Duration::from_secs(30);

/// Counters whose movement means the listen path refused or cookied connections.
const LISTEN_COUNTERS: &[&str] = &[
    "TcpExt:ListenDrops",
    "TcpExt:ListenOverflows",
    "TcpExt:TCPReqQFullDrop",
    "TcpExt:TCPReqQFullDoCookies",
    "TcpExt:SyncookiesSent",
];
/// Handshakes that ended in CLOSE (refused, timed out, or no port: tcp_set_state()).
const CONNECT_COUNTERS: &[&str] = &["Tcp:AttemptFails"];

/// Every counter tier 0 keeps: the signals above, the header's (frame::WATCHED_COUNTERS) and
/// the cookie evidence (SyncookiesRecv).
pub const TIER0_COUNTERS: &[&str] = &[
    "TcpExt:ListenOverflows",
    "TcpExt:ListenDrops",
    "TcpExt:SyncookiesSent",
    "TcpExt:SyncookiesRecv",
    "TcpExt:SyncookiesFailed",
    "TcpExt:TCPReqQFullDrop",
    "TcpExt:TCPReqQFullDoCookies",
    "TcpExt:TCPTimeWaitOverflow",
    "TcpExt:TCPAbortOnClose",
    "Tcp:AttemptFails",
    "Tcp:EstabResets",
    "Tcp:ActiveOpens",
    "Tcp:PassiveOpens",
    "Tcp:RetransSegs",
];

/// A listening socket: its namespace, address, port and socket cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId {
    pub netns: u32,
    pub laddr: IpAddr,
    pub lport: u16,
    pub cookie: u64,
}

/// What tier 0 knows of one listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerTotals {
    pub queue: u32,
    pub backlog: u32,
    /// `sk_drops` at the last reading (wraps at 2^32).
    last_drops: u32,
    /// Connections refused since tcpq started watching it (a listener that appeared later:
    /// since it was created).
    pub refused_total: u64,
    /// Refused since the interval began (`take_interval`).
    pub refused_interval: u64,
    /// Of `refused_interval`: refusals counted after its last reading, when it closed in the
    /// same reading as other listeners of its namespace that were refusing too: the namespace's
    /// count is exact, which of them refused how many is a guess from their last rates.
    pub uncertain_interval: u64,
    /// Its `sk_drops` movement at its last reading: how fast it refused when last seen (the
    /// share of its namespace's refusals counted after it closed).
    last_moved: u64,
    /// Highest accept queue seen in the interval.
    pub queue_peak: u32,
    /// Still listed at the last reading, and at the one before.
    present: bool,
    was_present: bool,
    /// Readings in a row with at least QUEUED_AT_LEAST connections waiting.
    queued_readings: u32,
}

/// Which families have trouble now, and why (one line each).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signals {
    pub listen: Option<String>,
    pub connect: Option<String>,
    pub conntrack: Option<String>,
}

/// A namespace's refusals waiting to be shared out: sk_drops movements per listener since its
/// counters were last read, and ListenDrops no listener's sk_drops accounted for yet.
#[derive(Debug, Default)]
struct Pending {
    weights: Vec<(ListenerId, u64)>,
    drops: u64,
    /// Counters readings `drops` waited through with no listener to give them to.
    waited: u32,
}

/// Tier-0 state across readings.
#[derive(Debug, Default)]
pub struct Tier0 {
    pub listeners: HashMap<ListenerId, ListenerTotals>,
    counters: HashMap<u32, HashMap<String, u64>>,
    conntrack: HashMap<u32, CtReading>,
    /// Per namespace: sk_drops movements and ListenDrops not yet shared out (see `update`).
    pending: HashMap<u32, Pending>,
    /// Per namespace, this interval: refusals no listener could be named for (listeners
    /// created and closed between two readings): counted, never dropped (`take_unattributed`).
    unattributed: HashMap<u32, u64>,
    /// Namespaces whose dump failed at the first reading: their first reading is still to come.
    unread_at_start: std::collections::HashSet<u32>,
    readings: u64,
}

impl Tier0 {
    /// Ends an interval: the listeners that refused or queued in it, with their counts, and a
    /// fresh interval. Listeners gone since are dropped after their last interval is reported.
    pub fn take_interval(&mut self) -> Vec<(ListenerId, ListenerTotals)> {
        let out = self
            .listeners
            .iter()
            .filter(|(_, t)| t.refused_interval > 0 || t.queue_peak > 0)
            .map(|(id, t)| (*id, *t))
            .collect();
        self.listeners.retain(|_, t| t.present);
        for t in self.listeners.values_mut() {
            t.refused_interval = 0;
            t.uncertain_interval = 0;
            t.queue_peak = t.queue;
        }
        out
    }

    /// Ends the interval of the refusals no listener could be named for: (namespace, count),
    /// by namespace.
    pub fn take_unattributed(&mut self) -> Vec<(u32, u64)> {
        let mut v: Vec<(u32, u64)> = self.unattributed.drain().filter(|(_, n)| *n > 0).collect();
        v.sort_by_key(|(ns, _)| *ns);
        v
    }

    /// The last counters read in every namespace.
    pub fn counters(&self) -> &HashMap<u32, HashMap<String, u64>> {
        &self.counters
    }

    /// Every namespace with a conntrack table (max > 0) at the last reading: the exporter's
    /// count/max gauges.
    pub fn conntrack_tables(&self) -> Vec<(u32, CtReading)> {
        let mut v: Vec<(u32, CtReading)> = self
            .conntrack
            .iter()
            .filter(|(_, c)| c.max > 0)
            .map(|(ns, c)| (*ns, *c))
            .collect();
        v.sort_by_key(|(ns, _)| *ns);
        v
    }

    /// Namespaces whose conntrack table is at least half full at the last reading, with it:
    /// where a table fills before it drops (its entries worth a look, see `live::causes`).
    pub fn conntrack_filling(&self) -> Vec<(u32, CtReading)> {
        let mut v: Vec<(u32, CtReading)> = self
            .conntrack
            .iter()
            .filter(|(_, c)| c.max > 0 && c.count * 2 >= c.max)
            .map(|(ns, c)| (*ns, *c))
            .collect();
        v.sort_by_key(|(ns, _)| *ns);
        v
    }
}
