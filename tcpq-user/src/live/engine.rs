//! The counters-first engine of the live commands (DESIGN.md, "Cost tiers"). Tier 0 reads what
//! the kernel already counts (`snapshot::nswatch`): every listener's `sk_drops`, queue and
//! backlog, the TcpExt/Tcp counters and the conntrack table of every namespace. Those readings
//! give the exact per-listener refusal totals, and say which family has trouble now; a family
//! with trouble is armed (its tier-2 programs attached, `Loaded::arm`) and disarmed after a
//! quiet period. Pure: readings in, totals and arm/disarm decisions out.
use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::snapshot::{
    nswatch::{CtReading, NsReading},
    sockdiag::TCP_LISTEN,
};

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

/// A queue that holds at least max(QUEUED_AT_LEAST, backlog / 8) connections at
/// `QUEUED_READINGS` readings in a row (≥ 0.5 s) means the application does not drain it: its
/// accept waits are worth tracing even far below the backlog (workers all busy, a slow accept
/// loop). A busy healthy server has a few connections queued at any instant (nginx pinned to one
/// CPU under wrk -c200: 2–6 of 4096 at every reading), which is not trouble.
const QUEUED_AT_LEAST: u32 = 16;
const QUEUED_READINGS: u32 = 3;

/// Whether a queue this long counts as not drained.
fn queued(queue: u32, backlog: u32) -> bool {
    queue >= QUEUED_AT_LEAST.max(backlog / 8)
}

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

/// Shares a namespace's `drops` (ListenDrops, exact) among its listeners in proportion to how
/// much each one's `sk_drops` moved (largest remainder: the shares add up to `drops`). A
/// listener's sk_drops counts every tcp_listendrop() and also packets discarded on its request
/// sockets (tcp_v4_rcv()'s discard_and_relse, e.g. a final ACK dropped on overflow is counted
/// twice, a retransmitted SYN for a pending request once): it says which listener refused, the
/// counter says how many. Exact per listener whenever one listener of a namespace refuses in a
/// reading (250 ms). Empty when no listener's sk_drops moved.
pub fn share_drops(drops: u64, moved: &[(ListenerId, u64)]) -> Vec<(ListenerId, u64)> {
    let weight: u64 = moved.iter().map(|(_, d)| d).sum();
    if weight == 0 {
        return Vec::new();
    }
    let mut out: Vec<(ListenerId, u64, u64)> = moved
        .iter()
        .filter(|(_, d)| *d > 0)
        .map(|(id, d)| {
            let exact = drops as u128 * *d as u128;
            (
                *id,
                (exact / weight as u128) as u64,
                (exact % weight as u128) as u64,
            )
        })
        .collect();
    let mut left = drops - out.iter().map(|(_, n, _)| n).sum::<u64>();
    out.sort_by_key(|(_, _, rem)| std::cmp::Reverse(*rem));
    for (_, n, _) in out.iter_mut() {
        if left == 0 {
            break;
        }
        *n += 1;
        left -= 1;
    }
    out.into_iter().map(|(id, n, _)| (id, n)).collect()
}

/// The listeners that closed since the last reading, weighted for the namespace's refusals
/// no present listener's sk_drops accounts for (they were counted after the closed ones' last
/// reading): by their sk_drops movement at that reading (how fast each was refusing when last
/// seen), else by what each refused since tcpq watched it, else alike. `gone`: (listener, last
/// movement, refused in all). The second value is whether the split is a guess: more than one
/// of them carries weight (one closed listener, or one that was refusing among others that were
/// not, takes them all: the rule `share_drops` follows within a reading).
pub fn gone_weights(gone: &[(ListenerId, u64, u64)]) -> (Vec<(ListenerId, u64)>, bool) {
    let by = |f: fn(&(ListenerId, u64, u64)) -> u64| -> Vec<(ListenerId, u64)> {
        gone.iter()
            .map(|g| (g.0, f(g)))
            .filter(|(_, w)| *w > 0)
            .collect()
    };
    let mut w = by(|g| g.1);
    if w.is_empty() {
        w = by(|g| g.2);
    }
    if w.is_empty() {
        w = gone.iter().map(|g| (g.0, 1)).collect();
    }
    let guess = w.len() > 1;
    (w, guess)
}

fn moved(before: &HashMap<String, u64>, now: &HashMap<String, u64>, name: &str) -> u64 {
    match (before.get(name), now.get(name)) {
        (Some(b), Some(n)) => n.saturating_sub(*b),
        _ => 0,
    }
}

impl Tier0 {
    /// Folds one reading of every namespace in; returns the families with trouble.
    pub fn update(&mut self, readings: Vec<NsReading>) -> Signals {
        let start = self.readings == 0;
        self.readings += 1;
        let mut sig = Signals::default();
        for l in self.listeners.values_mut() {
            l.was_present = std::mem::replace(&mut l.present, false);
        }
        let seen: std::collections::HashSet<u32> = readings.iter().map(|r| r.inum).collect();
        for r in readings {
            if r.unread {
                // Its dump failed: its listeners are as they were (not closed), its counters
                // and pending refusals wait for the next reading, which continues from here.
                for (_, t) in self
                    .listeners
                    .iter_mut()
                    .filter(|(id, _)| id.netns == r.inum)
                {
                    t.present = t.was_present;
                }
                if start {
                    self.unread_at_start.insert(r.inum);
                }
                continue;
            }
            // Its first reading: what it counted so far is from before tcpq watched (also for a
            // namespace whose dump failed at tcpq's first reading).
            let first = start || self.unread_at_start.remove(&r.inum);
            let mut moved_here: Vec<(ListenerId, u64)> = Vec::new();
            for s in r.listeners.iter().filter(|s| s.state == TCP_LISTEN) {
                let id = ListenerId {
                    netns: r.inum,
                    laddr: s.laddr,
                    lport: s.lport,
                    cookie: s.cookie,
                };
                let drops = s.drops.unwrap_or(0);
                let known = self.listeners.contains_key(&id);
                let t = self.listeners.entry(id).or_default();
                // A listener first seen after the first reading was created since: every drop
                // it has counted happened while tcpq watched (its sk_drops started at 0).
                let delta = match (known, first) {
                    (true, _) => drops.wrapping_sub(t.last_drops) as u64,
                    (false, true) => 0,
                    (false, false) => drops as u64,
                };
                t.last_drops = drops;
                t.last_moved = delta;
                t.queue = s.recv_queue;
                t.backlog = s.send_queue;
                t.queue_peak = t.queue_peak.max(s.recv_queue);
                t.present = true;
                t.queued_readings = if queued(s.recv_queue, s.send_queue) {
                    t.queued_readings + 1
                } else {
                    0
                };
                moved_here.push((id, delta));
                if sig.listen.is_none() {
                    if delta > 0 {
                        sig.listen = Some(format!(
                            "{} refused at {} (netns {})",
                            delta,
                            crate::render::endpoint(s.laddr, s.lport),
                            r.inum
                        ));
                    } else if s.send_queue > 0 && s.recv_queue * 2 > s.send_queue {
                        sig.listen = Some(format!(
                            "accept queue {}/{} at {} (netns {})",
                            s.recv_queue,
                            s.send_queue,
                            crate::render::endpoint(s.laddr, s.lport),
                            r.inum
                        ));
                    } else if t.queued_readings >= QUEUED_READINGS {
                        sig.listen = Some(format!(
                            "accept queue not drained for {} readings ({}/{}) at {} (netns {})",
                            t.queued_readings,
                            s.recv_queue,
                            s.send_queue,
                            crate::render::endpoint(s.laddr, s.lport),
                            r.inum
                        ));
                    }
                }
            }
            // sk_drops movements wait for the namespace's next counters reading (every reading
            // where one moved, see nswatch::COUNTERS_EVERY).
            let pend = self.pending.entry(r.inum).or_default();
            for (id, d) in moved_here.iter().filter(|(_, d)| *d > 0) {
                match pend.weights.iter_mut().find(|(i, _)| i == id) {
                    Some((_, w)) => *w += d,
                    None => pend.weights.push((*id, *d)),
                }
            }
            if let Some(counters) = r.counters.as_ref() {
                // The namespace's ListenDrops since its last reading (all of it for a namespace
                // created since tcpq started), shared among its listeners by their sk_drops;
                // drops whose sk_drops had not moved yet (the two reads are not atomic) wait.
                let listen_drops = counters.get("TcpExt:ListenDrops").copied().unwrap_or(0);
                pend.drops += match self.counters.get(&r.inum) {
                    Some(before) => moved(before, counters, "TcpExt:ListenDrops"),
                    None if first => 0,
                    None => listen_drops,
                };
                let mut shares = share_drops(pend.drops, &pend.weights);
                let mut guess = false;
                if shares.is_empty() && pend.drops > 0 {
                    // No listener's sk_drops moved: the drops were the last ones of listeners
                    // closed since the last reading (a lab or a restart), shared by how fast
                    // each was refusing when last seen, not evenly: a listener closed at the
                    // same time that never refused must not take any.
                    let gone: Vec<(ListenerId, u64, u64)> = self
                        .listeners
                        .iter()
                        .filter(|(id, t)| id.netns == r.inum && t.was_present && !t.present)
                        .map(|(id, t)| (*id, t.last_moved, t.refused_total))
                        .collect();
                    let (weights, g) = gone_weights(&gone);
                    shares = share_drops(pend.drops, &weights);
                    guess = g;
                }
                if !shares.is_empty() {
                    pend.drops = 0;
                    pend.weights.clear();
                    pend.waited = 0;
                } else if pend.drops > 0 {
                    // Counted between the dump and the counters (the two reads are not
                    // atomic): the listener's sk_drops shows them at the next reading. Still
                    // no listener then: ones created and closed between two readings. Counted
                    // for the namespace, not kept waiting (never silently lower).
                    pend.waited += 1;
                    if pend.waited >= 2 {
                        *self.unattributed.entry(r.inum).or_default() += pend.drops;
                        pend.drops = 0;
                        pend.waited = 0;
                    }
                }
                for (id, n) in shares {
                    if let Some(t) = self.listeners.get_mut(&id) {
                        t.refused_total += n;
                        t.refused_interval += n;
                        if guess {
                            t.uncertain_interval += n;
                        }
                    }
                }
                if let Some(before) = self.counters.get(&r.inum) {
                    for (names, slot) in [
                        (LISTEN_COUNTERS, &mut sig.listen),
                        (CONNECT_COUNTERS, &mut sig.connect),
                    ] {
                        if slot.is_some() {
                            continue;
                        }
                        if let Some((name, n)) = names
                            .iter()
                            .map(|n| (n, moved(before, counters, n)))
                            .find(|(_, n)| *n > 0)
                        {
                            *slot = Some(format!("{name} +{n} (netns {})", r.inum));
                        }
                    }
                }
            }
            if let Some(counters) = r.counters {
                self.counters.insert(r.inum, counters);
            }
            if let Some(ct) = r.conntrack {
                let before = self.conntrack.insert(r.inum, ct);
                if sig.conntrack.is_none() {
                    let dropped = before.map(|b| ct.drop.saturating_sub(b.drop)).unwrap_or(0);
                    if dropped > 0 {
                        sig.conntrack = Some(format!(
                            "conntrack dropped {dropped} (netns {}, {}/{})",
                            r.inum, ct.count, ct.max
                        ));
                    } else if ct.max > 0 && ct.count * 10 >= ct.max * 9 {
                        sig.conntrack = Some(format!(
                            "conntrack {}/{} entries (netns {})",
                            ct.count, ct.max, r.inum
                        ));
                    }
                }
            }
        }
        // Namespaces gone: forget their counters.
        self.counters.retain(|ns, _| seen.contains(ns));
        self.pending.retain(|ns, _| seen.contains(ns));
        self.conntrack.retain(|ns, _| seen.contains(ns));
        sig
    }

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

/// Watching (tier 0/1 only) or tracing (tier 2 attached) one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arm {
    pub tracing: bool,
    /// Unix time of the last change.
    pub since_unix: u64,
    pub why: String,
    last_trouble: Option<Instant>,
}

impl Default for Arm {
    fn default() -> Self {
        Self {
            tracing: false,
            since_unix: unix_now(),
            why: "no trouble seen".into(),
            last_trouble: None,
        }
    }
}

/// What a family should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Arm,
    Disarm,
    Stay,
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Arm {
    /// One reading's verdict: trouble arms at once; `quiet` without trouble disarms.
    pub fn step(&mut self, now: Instant, trouble: Option<&str>, quiet: Duration) -> Step {
        if let Some(why) = trouble {
            self.last_trouble = Some(now);
            if !self.tracing {
                self.tracing = true;
                self.since_unix = unix_now();
                self.why = why.to_string();
                return Step::Arm;
            }
            return Step::Stay;
        }
        if self.tracing
            && self
                .last_trouble
                .is_none_or(|t| now.saturating_duration_since(t) >= quiet)
        {
            self.tracing = false;
            self.since_unix = unix_now();
            self.why = format!("quiet for {:.0} s", quiet.as_secs_f64());
            return Step::Disarm;
        }
        Step::Stay
    }
}

/// A family's state as the renderers show it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct FamilyView {
    pub family: &'static str,
    /// "watching" (counters only), "tracing" (tier 2 attached) or "always" (`--hooks all`).
    pub state: &'static str,
    pub since: u64,
    pub why: String,
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::snapshot::sockdiag::DiagSocket;

    fn listener(port: u16, queue: u32, backlog: u32, drops: u32) -> DiagSocket {
        DiagSocket {
            state: TCP_LISTEN,
            laddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            lport: port,
            raddr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            rport: 0,
            recv_queue: queue,
            send_queue: backlog,
            uid: 0,
            inode: 1,
            cookie: port as u64,
            info: None,
            drops: Some(drops),
        }
    }

    fn reading(ns: u32, listeners: Vec<DiagSocket>, counters: &[(&str, u64)]) -> NsReading {
        NsReading {
            inum: ns,
            listeners,
            counters: Some(counters.iter().map(|(k, v)| (k.to_string(), *v)).collect()),
            conntrack: None,
            unread: false,
        }
    }

    const LD: &str = "TcpExt:ListenDrops";

    #[test]
    fn drops_before_the_first_reading_are_not_counted_later_ones_are() {
        let mut t = Tier0::default();
        let s = t.update(vec![reading(
            1,
            vec![listener(80, 0, 10, 500)],
            &[(LD, 480)],
        )]);
        assert_eq!(s.listen, None);
        // sk_drops moved by 14 (two ACK drops counted twice), ListenDrops by 12.
        let s = t.update(vec![reading(
            1,
            vec![listener(80, 10, 10, 514)],
            &[(LD, 492)],
        )]);
        assert!(s.listen.as_deref().unwrap().starts_with("14 refused"));
        let out = t.take_interval();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.refused_interval, 12);
        assert_eq!(out[0].1.refused_total, 12);
        assert_eq!(out[0].1.queue_peak, 10);
        // Next interval starts at 0; sk_drops wraps.
        let mut l = listener(80, 0, 10, 3);
        l.drops = Some(3);
        t.listeners
            .values_mut()
            .for_each(|v| v.last_drops = u32::MAX - 1);
        t.update(vec![reading(1, vec![l], &[(LD, 497)])]);
        let out = t.take_interval();
        assert_eq!(
            out[0].1.refused_interval, 5,
            "u32::MAX-1 → 3 moved: 5 shared"
        );
    }

    #[test]
    fn the_namespace_total_is_shared_by_sk_drops_and_adds_up() {
        let id = |p| ListenerId {
            netns: 1,
            laddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            lport: p,
            cookie: 0,
        };
        let s = share_drops(10, &[(id(80), 3), (id(9000), 8), (id(22), 0)]);
        assert_eq!(s.iter().map(|(_, n)| n).sum::<u64>(), 10);
        assert_eq!(s.iter().find(|(i, _)| i.lport == 9000).unwrap().1, 7);
        assert_eq!(s.iter().find(|(i, _)| i.lport == 80).unwrap().1, 3);
        assert!(share_drops(5, &[(id(80), 0)]).is_empty());
        assert_eq!(share_drops(0, &[(id(80), 4)]), vec![(id(80), 0)]);
    }

    #[test]
    fn drops_counted_before_the_listener_moved_wait_one_reading() {
        let mut t = Tier0::default();
        t.update(vec![reading(1, vec![listener(80, 0, 10, 0)], &[(LD, 0)])]);
        t.update(vec![reading(1, vec![listener(80, 4, 10, 0)], &[(LD, 3)])]);
        t.update(vec![reading(1, vec![listener(80, 4, 10, 3)], &[(LD, 3)])]);
        assert_eq!(t.take_interval()[0].1.refused_interval, 3);
    }

    #[test]
    fn a_listener_created_after_start_counts_all_its_drops() {
        let mut t = Tier0::default();
        t.update(vec![reading(1, vec![], &[])]);
        let s = t.update(vec![reading(2, vec![listener(9000, 4, 4, 7)], &[(LD, 7)])]);
        assert!(s.listen.is_some());
        assert_eq!(t.take_interval()[0].1.refused_interval, 7);
    }

    #[test]
    fn a_queue_over_half_its_backlog_is_trouble_without_drops() {
        let mut t = Tier0::default();
        let s = t.update(vec![reading(1, vec![listener(80, 6, 10, 0)], &[])]);
        assert!(
            s.listen
                .as_deref()
                .unwrap()
                .starts_with("accept queue 6/10")
        );
        let s = t.update(vec![reading(1, vec![listener(80, 5, 10, 0)], &[])]);
        assert_eq!(s.listen, None, "half is not over half");
    }

    #[test]
    fn big_tables_are_read_less_often() {
        assert_eq!(next_poll_after(Duration::from_micros(300)), POLL_EVERY);
        assert_eq!(
            next_poll_after(Duration::from_millis(18)),
            Duration::from_millis(1800)
        );
        assert_eq!(next_poll_after(Duration::from_secs(1)), MAX_POLL_EVERY);
    }

    #[test]
    fn tier0_keeps_every_counter_it_reads() {
        for c in LISTEN_COUNTERS
            .iter()
            .chain(CONNECT_COUNTERS)
            .chain(crate::live::frame::WATCHED_COUNTERS)
        {
            assert!(TIER0_COUNTERS.contains(c), "{c}");
        }
    }

    #[test]
    fn the_last_drops_of_a_closed_listener_are_its_own() {
        let mut t = Tier0::default();
        t.update(vec![reading(1, vec![listener(80, 0, 10, 0)], &[(LD, 0)])]);
        t.update(vec![reading(
            1,
            vec![listener(80, 10, 10, 100)],
            &[(LD, 100)],
        )]);
        // Closed after 40 more drops, before the next reading could see its sk_drops.
        t.update(vec![reading(1, vec![], &[(LD, 140)])]);
        assert_eq!(t.take_interval()[0].1.refused_interval, 140);
    }

    /// Seen under load (tier 0 read less often): the lab's listener and a healthy one of the
    /// same namespace closed between two readings; the refusals after the lab's last reading
    /// went half to the healthy one (38 and 37 of 75), which never refused.
    #[test]
    fn listeners_closing_together_leave_the_last_drops_to_the_one_refusing() {
        let mut t = Tier0::default();
        let both = |lab_drops| vec![listener(9099, 0, 128, 0), listener(8080, 10, 10, lab_drops)];
        t.update(vec![reading(1, both(0), &[(LD, 0)])]);
        t.update(vec![reading(1, both(600), &[(LD, 580)])]);
        t.update(vec![reading(1, both(803), &[(LD, 788)])]);
        // A frame between: the interval's counts start again at 0.
        let out = t.take_interval();
        let lab = |out: &[(ListenerId, ListenerTotals)]| {
            out.iter().find(|(id, _)| id.lport == 8080).map(|(_, t)| *t)
        };
        assert_eq!(lab(&out).unwrap().refused_interval, 788);
        t.update(vec![reading(1, vec![], &[(LD, 863)])]);
        let out = t.take_interval();
        assert_eq!(lab(&out).unwrap().refused_interval, 75);
        assert_eq!(
            lab(&out).unwrap().uncertain_interval,
            0,
            "only one was refusing"
        );
        assert!(
            out.iter()
                .all(|(id, t)| id.lport != 9099 || t.refused_interval == 0),
            "the healthy listener refused nothing: {out:?}"
        );
        assert!(t.take_unattributed().is_empty());
    }

    /// Two listeners that both refused when last seen and closed together: the namespace's
    /// count stays whole, split by their last rates, and the split is reported as a guess.
    #[test]
    fn a_split_between_closed_listeners_that_both_refused_is_uncertain() {
        let mut t = Tier0::default();
        let both = |a, b| vec![listener(80, 10, 10, a), listener(81, 10, 10, b)];
        t.update(vec![reading(1, both(0, 0), &[(LD, 0)])]);
        t.update(vec![reading(1, both(30, 10), &[(LD, 40)])]);
        t.take_interval();
        t.update(vec![reading(1, vec![], &[(LD, 80)])]);
        let out = t.take_interval();
        assert_eq!(out.iter().map(|(_, t)| t.refused_interval).sum::<u64>(), 40);
        assert_eq!(
            out.iter().map(|(_, t)| t.uncertain_interval).sum::<u64>(),
            40
        );
        let p80 = out.iter().find(|(id, _)| id.lport == 80).unwrap().1;
        assert_eq!(
            p80.refused_interval, 30,
            "by their rates when last seen (3:1)"
        );
    }

    /// A listener created and closed between two readings was never listed: its refusals are
    /// counted for its namespace (after waiting one reading for a late sk_drops), not kept
    /// waiting for a listener that will never move.
    #[test]
    fn refusals_of_a_listener_never_listed_are_counted_for_the_namespace() {
        let mut t = Tier0::default();
        t.update(vec![reading(1, vec![listener(22, 0, 128, 0)], &[(LD, 0)])]);
        t.update(vec![reading(1, vec![listener(22, 0, 128, 0)], &[(LD, 9)])]);
        assert!(
            t.take_unattributed().is_empty(),
            "may still show on a listener"
        );
        t.update(vec![reading(1, vec![listener(22, 0, 128, 0)], &[(LD, 9)])]);
        assert_eq!(t.take_unattributed(), vec![(1, 9)]);
        assert!(
            t.take_interval()
                .iter()
                .all(|(_, l)| l.refused_interval == 0)
        );
        assert!(t.take_unattributed().is_empty(), "per interval");
    }

    /// A namespace whose dump failed once (nswatch opens its socket again): its listener is
    /// not closed and its counters are not forgotten — read again from 0, its ListenDrops so
    /// far would be counted twice.
    #[test]
    fn a_namespace_unread_once_is_counted_on_not_again() {
        let mut t = Tier0::default();
        t.update(vec![reading(1, vec![listener(80, 0, 10, 0)], &[(LD, 0)])]);
        t.update(vec![reading(
            1,
            vec![listener(80, 10, 10, 50)],
            &[(LD, 50)],
        )]);
        let unread = NsReading {
            inum: 1,
            unread: true,
            ..NsReading::default()
        };
        t.update(vec![unread]);
        assert_eq!(t.take_interval()[0].1.refused_interval, 50);
        t.update(vec![reading(
            1,
            vec![listener(80, 10, 10, 80)],
            &[(LD, 80)],
        )]);
        let out = t.take_interval();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.refused_interval, 30);
        assert_eq!(out[0].1.refused_total, 80);
        assert!(t.take_unattributed().is_empty());
    }

    /// A namespace unread at tcpq's first reading: its first good reading is the baseline,
    /// not refusals of the interval.
    #[test]
    fn a_namespace_unread_at_start_counts_from_its_first_reading() {
        let mut t = Tier0::default();
        t.update(vec![NsReading {
            inum: 1,
            unread: true,
            ..NsReading::default()
        }]);
        t.update(vec![reading(
            1,
            vec![listener(80, 0, 10, 500)],
            &[(LD, 480)],
        )]);
        assert!(
            t.take_interval()
                .iter()
                .all(|(_, l)| l.refused_interval == 0)
        );
        t.update(vec![reading(
            1,
            vec![listener(80, 0, 10, 504)],
            &[(LD, 484)],
        )]);
        assert_eq!(t.take_interval()[0].1.refused_interval, 4);
    }

    #[test]
    fn movements_wait_for_the_next_counters_reading() {
        let mut t = Tier0::default();
        t.update(vec![reading(1, vec![listener(80, 0, 10, 0)], &[(LD, 0)])]);
        let mut r = reading(1, vec![listener(80, 4, 10, 5)], &[]);
        r.counters = None; // not read this time
        t.update(vec![r]);
        assert_eq!(t.listeners.values().next().unwrap().refused_interval, 0);
        t.update(vec![reading(1, vec![listener(80, 4, 10, 5)], &[(LD, 5)])]);
        assert_eq!(t.take_interval()[0].1.refused_interval, 5);
    }

    #[test]
    fn a_queue_that_is_never_drained_is_trouble_a_passing_one_is_not() {
        let mut t = Tier0::default();
        let q = |n| reading(1, vec![listener(80, n, 256, 0)], &[]);
        assert_eq!(t.update(vec![q(90)]).listen, None);
        assert_eq!(t.update(vec![q(1)]).listen, None, "drained in between");
        assert_eq!(t.update(vec![q(90)]).listen, None);
        assert_eq!(t.update(vec![q(95)]).listen, None);
        let s = t.update(vec![q(95)]).listen.unwrap();
        assert!(
            s.starts_with("accept queue not drained for 3 readings (95/256)"),
            "{s}"
        );
    }

    #[test]
    fn counters_that_move_arm_their_family() {
        let mut t = Tier0::default();
        t.update(vec![reading(
            1,
            vec![],
            &[("TcpExt:SyncookiesSent", 5), ("Tcp:AttemptFails", 1)],
        )]);
        let s = t.update(vec![reading(
            1,
            vec![],
            &[("TcpExt:SyncookiesSent", 9), ("Tcp:AttemptFails", 1)],
        )]);
        assert_eq!(
            s.listen.as_deref(),
            Some("TcpExt:SyncookiesSent +4 (netns 1)")
        );
        assert_eq!(s.connect, None);
        let s = t.update(vec![reading(
            1,
            vec![],
            &[("TcpExt:SyncookiesSent", 9), ("Tcp:AttemptFails", 3)],
        )]);
        assert_eq!(s.listen, None);
        assert_eq!(s.connect.as_deref(), Some("Tcp:AttemptFails +2 (netns 1)"));
    }

    #[test]
    fn conntrack_near_full_or_dropping_is_trouble() {
        let mut t = Tier0::default();
        let mut r = reading(1, vec![], &[]);
        r.conntrack = Some(CtReading {
            count: 10,
            max: 100,
            drop: 0,
        });
        assert_eq!(t.update(vec![r.clone()]).conntrack, None);
        r.conntrack = Some(CtReading {
            count: 90,
            max: 100,
            drop: 0,
        });
        assert!(t.update(vec![r.clone()]).conntrack.is_some());
        r.conntrack = Some(CtReading {
            count: 10,
            max: 100,
            drop: 4,
        });
        let s = t.update(vec![r.clone()]).conntrack.unwrap();
        assert!(s.starts_with("conntrack dropped 4"), "{s}");
    }

    #[test]
    fn gone_listeners_report_their_last_interval_then_leave() {
        let mut t = Tier0::default();
        t.update(vec![reading(1, vec![listener(80, 0, 10, 0)], &[(LD, 0)])]);
        t.update(vec![reading(1, vec![listener(80, 0, 10, 4)], &[(LD, 4)])]);
        t.update(vec![reading(1, vec![], &[(LD, 4)])]);
        assert_eq!(t.take_interval()[0].1.refused_interval, 4);
        assert!(t.listeners.is_empty());
        assert!(t.take_interval().is_empty());
    }

    #[test]
    fn trouble_arms_at_once_and_quiet_disarms() {
        let quiet = Duration::from_secs(30);
        let t0 = Instant::now();
        let mut a = Arm::default();
        assert_eq!(a.step(t0, None, quiet), Step::Stay);
        assert_eq!(a.step(t0, Some("12 refused"), quiet), Step::Arm);
        assert!(a.tracing);
        assert_eq!(a.why, "12 refused");
        assert_eq!(
            a.step(t0 + Duration::from_secs(1), Some("more"), quiet),
            Step::Stay
        );
        assert_eq!(a.why, "12 refused", "the reason it was armed stays");
        assert_eq!(
            a.step(t0 + Duration::from_secs(30), None, quiet),
            Step::Stay
        );
        assert_eq!(
            a.step(t0 + Duration::from_secs(31), None, quiet),
            Step::Disarm
        );
        assert!(!a.tracing);
        assert_eq!(
            a.step(t0 + Duration::from_secs(40), None, quiet),
            Step::Stay
        );
    }
}
