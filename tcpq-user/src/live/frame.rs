//! One refresh of `tcpq top`: the model every renderer (TUI, `-b` text, `--json` NDJSON) draws.
//! Built purely from an interval's aggregates, its causes and the snapshots read for it.
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fmt::Write as _,
    net::IpAddr,
};

use serde::Serialize;

use crate::{
    family::{
        connect::aggregate::ConnectStats,
        listen::{aggregate::KindCounts, decode::OverflowKind},
    },
    live::{cause::Cause, session::Aggregates},
    render::endpoint,
    snapshot::container,
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

/// (netns, address, port) of a listener.
type ListenerAt = (u32, IpAddr, u16);
/// (accept queue, backlog) last seen.
type QueueBacklog = (u32, u32);

/// One listener's row before rendering: tier-2 kinds, tier-0 refusals, queue.
#[derive(Default)]
struct ListenerMerge {
    counts: KindCounts,
    refused: Option<u64>,
    uncertain: u64,
    queue_backlog: Option<QueueBacklog>,
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// `n` events over `secs` as a per-second rate with one decimal.
pub fn rate_per_s(n: u64, secs: f64) -> f64 {
    round1(rate(n, secs))
}

/// (pod, container) of a cgroup path.
fn identity(cgroup: Option<&str>) -> (Option<String>, Option<String>) {
    container::identify(cgroup)
}

/// Impact of a cause per second: its evidence count over the interval.
fn cause_row(c: &Cause, secs: f64) -> CauseRow {
    CauseRow {
        cause: c.finding.cause.to_string(),
        place: c.place.clone(),
        pid: c.pid,
        process: c.process.clone(),
        cgroup: c.cgroup.clone(),
        pod: identity(c.cgroup.as_deref()).0,
        container: identity(c.cgroup.as_deref()).1,
        impact_per_s: rate_per_s(c.finding.impact, secs),
        evidence: c.finding.text.clone(),
        fix: c.finding.fix.clone(),
    }
}

/// Builds one frame. Pure: every input is data.
pub fn build(
    header: Header,
    agg: &Aggregates,
    causes: &[Cause],
    snaps: &Snapshots,
    secs: f64,
) -> Frame {
    let cgroup_of = |pid: Option<u32>| pid.and_then(|p| snaps.cgroups.get(&p).cloned());

    // Counters that moved, summed over the namespaces seen.
    let mut counters: Vec<CounterRate> = Vec::new();
    for name in WATCHED_COUNTERS {
        let moved: u64 = agg
            .counters_first
            .iter()
            .filter_map(|(ns, first)| {
                let now = agg.counters_last.get(ns)?;
                Some(crate::snapshot::counters::delta(first, now, name))
            })
            .sum();
        if moved > 0 {
            counters.push(CounterRate {
                name: name.split(':').nth(1).unwrap_or(name).to_string(),
                per_s: rate_per_s(moved, secs),
            });
        }
    }

    // Listeners: every one with refusals, a queue or accepts this interval, merged by (netns,
    // address, port); tier 0's exact refusal count next to tier 2's kinds.
    let mut listeners: BTreeMap<ListenerAt, ListenerMerge> = BTreeMap::new();
    for a in agg.overflow.listeners.values() {
        let e = listeners
            .entry((a.key.netns, a.key.laddr, a.key.lport))
            .or_default();
        e.counts.merge(&a.total);
        e.queue_backlog = Some((a.last_queue, a.backlog));
    }
    for (ns, laddr, lport) in agg.accepts.keys() {
        listeners.entry((*ns, *laddr, *lport)).or_default();
    }
    for (id, t) in &agg.tier0_listeners {
        let e = listeners.entry((id.netns, id.laddr, id.lport)).or_default();
        *e.refused.get_or_insert(0) += t.refused_interval;
        e.uncertain += t.uncertain_interval;
        e.queue_backlog = Some((t.queue, t.backlog));
    }
    let mut listener_rows: Vec<ListenerRow> = listeners
        .into_iter()
        .map(|((ns, laddr, lport), m)| {
            let (mut counts, qb) = (m.counts, m.queue_backlog);
            if !agg.listen_confirmed
                && let Some(exact) = m.refused
            {
                counts.cap_refusals(exact);
            }
            let snap = snaps.listeners.get(&(ns, lport));
            let acc = agg.accepts.get(&(ns, laddr, lport));
            let per_s = OverflowKind::ALL
                .iter()
                .filter(|k| counts.get(**k) > 0)
                .map(|k| (k.id(), rate_per_s(counts.get(*k), secs)))
                .collect();
            let exact = OverflowKind::ALL
                .iter()
                .filter(|k| counts.get(**k) > 0)
                .map(|k| (k.id(), counts.get(*k)))
                .collect();
            let pid = snap
                .and_then(|s| s.pid)
                .or_else(|| acc.and_then(|a| a.acceptors.keys().next().copied()));
            ListenerRow {
                netns: ns,
                listener: endpoint(laddr, lport),
                pid,
                process: snap
                    .and_then(|s| s.process.clone())
                    .or_else(|| acc.and_then(|a| a.acceptors.values().next().cloned())),
                cgroup: cgroup_of(pid),
                pod: identity(cgroup_of(pid).as_deref()).0,
                container: identity(cgroup_of(pid).as_deref()).1,
                queue: snap.map(|s| s.queue).or(qb.map(|q| q.0)),
                backlog: snap.map(|s| s.backlog).or(qb.map(|q| q.1)),
                per_s,
                counts: exact,
                refused: m.refused,
                untraced: m.refused.map(|r| r.saturating_sub(counts.refused())),
                uncertain: m.refused.map(|_| m.uncertain),
                refused_per_s: rate_per_s(m.refused.unwrap_or(counts.refused()), secs),
                accepts_per_s: rate_per_s(acc.map(|a| a.accepts).unwrap_or(0), secs),
                accept_wait_p99_us: acc
                    .and_then(|a| a.wait_quantiles())
                    .map(|(_, p, _)| p / 1000),
                idle_acceptors: snap.and_then(|s| s.idle),
                acceptors: snap.map(|s| s.holders),
            }
        })
        .collect();
    listener_rows.sort_by(|a, b| {
        b.refused_per_s
            .total_cmp(&a.refused_per_s)
            .then(b.accepts_per_s.total_cmp(&a.accepts_per_s))
    });

    // Outbound: per process → destination.
    let mut outbound: Vec<OutboundRow> = agg
        .connects
        .by_key
        .iter()
        .map(|(k, s): (_, &ConnectStats)| {
            let port = snaps.ports.get(&(k.netns, k.daddr, k.dport));
            let failures_by_result = s
                .results
                .iter()
                .filter(|(r, _)| r.is_failure())
                .map(|(r, n)| (r.id(), rate_per_s(*n, secs)))
                .collect();
            OutboundRow {
                netns: k.netns,
                pid: k.tgid,
                process: s.comm.clone(),
                cgroup: cgroup_of(Some(k.tgid)),
                pod: identity(cgroup_of(Some(k.tgid)).as_deref()).0,
                container: identity(cgroup_of(Some(k.tgid)).as_deref()).1,
                destination: endpoint(k.daddr, k.dport),
                connects_per_s: rate_per_s(s.attempts, secs),
                failures_per_s: rate_per_s(s.failures(), secs),
                failures_by_result,
                ports_used: port.map(|p| p.used),
                ports_usable: port.map(|p| p.usable),
                time_wait: port.map(|p| p.time_wait),
                connect_p99_us: ConnectStats::quantiles(&s.handshake_ns).map(|(_, p, _)| p / 1000),
            }
        })
        .collect();
    outbound.sort_by(|a, b| {
        b.failures_per_s
            .total_cmp(&a.failures_per_s)
            .then(b.connects_per_s.total_cmp(&a.connects_per_s))
    });

    Frame {
        time: header.time,
        host: header.host,
        kernel: header.kernel,
        interval_s: round1(secs),
        hooks_active: header.hooks_active,
        hooks_total: header.hooks_total,
        hooks_inactive: header.hooks_inactive,
        events_per_s: rate_per_s(agg.events, secs),
        tallied_per_s: rate_per_s(agg.tallied, secs),
        lost_total: header.lost_total,
        lost_interval: header.lost_interval,
        counters,
        families: agg.families.clone(),
        namespaces: header.namespaces,
        causes: causes.iter().map(|c| cause_row(c, secs)).collect(),
        listeners: listener_rows,
        refused_unattributed: agg
            .tier0_unattributed
            .iter()
            .map(|(netns, refused)| Unattributed {
                netns: *netns,
                refused: *refused,
            })
            .collect(),
        outbound,
        conntrack: snaps.conntrack.clone(),
        evicted: agg.overflow.evicted + agg.connects.evicted + agg.accepts_evicted,
        listen_kinds: if agg.listen_confirmed {
            "confirmed"
        } else {
            "predicted"
        },
        frames_dropped: 0,
        frames_dropped_total: 0,
    }
}

/// A value, or "-" when unknown.
pub fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

pub fn kinds_text(per_s: &BTreeMap<&'static str, f64>) -> String {
    if per_s.is_empty() {
        return "-".into();
    }
    per_s
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn owner_text(pid: Option<u32>, process: Option<&str>) -> String {
    match (pid, process) {
        (Some(p), Some(c)) => format!("{c}[{p}]"),
        (Some(p), None) => format!("[{p}]"),
        (None, Some(c)) => c.to_string(),
        (None, None) => "-".into(),
    }
}

/// " (+N/s counted in the kernel)" when refusals went over the line budget, else "".
pub fn tallied_note(per_s: f64) -> String {
    if per_s > 0.0 {
        format!(" (+{per_s:.0}/s counted in the kernel)")
    } else {
        String::new()
    }
}

/// `top -b`: one plain-text frame.
/// "listen: tracing for 12 s (12 refused at …) · connect: watching · …": what each family
/// attaches now and why.
pub fn families_text(f: &Frame) -> String {
    if f.families.is_empty() {
        return "-".into();
    }
    f.families
        .iter()
        .map(|fam| match fam.state {
            "tracing" if fam.since > 0 => format!(
                "{}: tracing for {} s ({})",
                fam.family,
                f.time.saturating_sub(fam.since),
                fam.why
            ),
            "watching" => format!("{}: watching counters", fam.family),
            other => format!("{}: {other} ({})", fam.family, fam.why),
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

pub fn render_text(f: &Frame) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "tcpq top — {} — kernel {} — hooks {}/{} — {:.0} events/s{} — lost {} ({} this interval) — interval {:.1} s",
        f.host,
        f.kernel,
        f.hooks_active,
        f.hooks_total,
        f.events_per_s,
        tallied_note(f.tallied_per_s),
        f.lost_total,
        f.lost_interval,
        f.interval_s
    );
    let _ = writeln!(
        s,
        "families: {} — {} namespaces watched",
        families_text(f),
        f.namespaces
    );
    if !f.hooks_inactive.is_empty() {
        let _ = writeln!(s, "inactive hooks: {}", f.hooks_inactive.join("; "));
    }
    if f.evicted > 0 {
        let _ = writeln!(s, "table entries not recorded (tables full): {}", f.evicted);
    }
    if f.frames_dropped > 0 {
        let _ = writeln!(
            s,
            "frames dropped: output stalled: {} since the last frame written ({} in all)",
            f.frames_dropped, f.frames_dropped_total
        );
    }
    let counters = f
        .counters
        .iter()
        .map(|c| format!("{} {}/s", c.name, c.per_s))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        s,
        "kernel counters: {}",
        if counters.is_empty() {
            "no change".into()
        } else {
            counters
        }
    );
    let _ = writeln!(s, "CAUSES NOW");
    if f.causes.is_empty() {
        let _ = writeln!(s, "  none");
    }
    for (i, c) in f.causes.iter().enumerate() {
        let _ = writeln!(
            s,
            "  {}. {:<28} {:<32} {:>9.1}/s  {} — {}",
            i + 1,
            c.cause,
            format!("{} {}", c.place, owner_text(c.pid, c.process.as_deref())),
            c.impact_per_s,
            c.evidence,
            c.fix.first().map(String::as_str).unwrap_or("")
        );
    }
    let _ = writeln!(
        s,
        "LISTENERS{}",
        if f.listen_kinds == "predicted" {
            " (kinds predicted at arrival, capped at the exact REFUSED)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "  {:<10} {:<24} {:<20} {:>11} {:>9} {:<28} {:>9} {:>9} {:>9}",
        "NETNS",
        "LISTENER",
        "PROCESS",
        "QUEUE",
        "REFUSED/s",
        "BY KIND/s",
        "ACCEPT/s",
        "WAITp99us",
        "IDLE/ALL"
    );
    for l in &f.listeners {
        let _ = writeln!(
            s,
            "  {:<10} {:<24} {:<20} {:>11} {:>9.1} {:<28} {:>9.1} {:>9} {:>9}",
            l.netns,
            l.listener,
            owner_text(l.pid, l.process.as_deref()),
            format!("{}/{}", opt(l.queue), opt(l.backlog)),
            l.refused_per_s,
            {
                let mut k = kinds_text(&l.per_s);
                if let Some(n) = l.untraced.filter(|n| *n > 0) {
                    k.push_str(&format!(" +{n} untraced"));
                }
                if let Some(n) = l.uncertain.filter(|n| *n > 0) {
                    k.push_str(&format!(" ({n} uncertain)"));
                }
                k
            },
            l.accepts_per_s,
            opt(l.accept_wait_p99_us),
            format!("{}/{}", opt(l.idle_acceptors), opt(l.acceptors)),
        );
        if let Some(cg) = &l.cgroup {
            let _ = writeln!(s, "             {}", container::describe(cg));
        }
    }
    for u in &f.refused_unattributed {
        let _ = writeln!(
            s,
            "  {:<10} {:<24} refused {} (listeners created and closed between two readings)",
            u.netns, "(unlisted)", u.refused
        );
    }
    let _ = writeln!(s, "OUTBOUND");
    let _ = writeln!(
        s,
        "  {:<10} {:<20} {:<24} {:>10} {:>10} {:<24} {:>12} {:>9} {:>10}",
        "NETNS",
        "PROCESS",
        "DESTINATION",
        "CONNECT/s",
        "FAILED/s",
        "BY RESULT/s",
        "PORTS",
        "TIME_WAIT",
        "CONNp99us"
    );
    for o in f.outbound.iter().take(20) {
        let by = o
            .failures_by_result
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            s,
            "  {:<10} {:<20} {:<24} {:>10.1} {:>10.1} {:<24} {:>12} {:>9} {:>10}",
            o.netns,
            owner_text(Some(o.pid), Some(&o.process)),
            o.destination,
            o.connects_per_s,
            o.failures_per_s,
            if by.is_empty() { "-".into() } else { by },
            format!("{}/{}", opt(o.ports_used), opt(o.ports_usable)),
            opt(o.time_wait),
            opt(o.connect_p99_us),
        );
    }
    let _ = writeln!(s, "CONNTRACK");
    for c in &f.conntrack {
        let _ = writeln!(s, "  {}", c.describe());
    }
    s
}

pub fn pct(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 * 100.0 / of as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener's guessed share and a namespace's unlisted refusals reach the frame, and
    /// the listener's `refused` with `refused_unattributed` is the namespace's whole count.
    #[test]
    fn uncertain_and_unattributed_refusals_are_shown() {
        let agg = Aggregates::with_refusals(7, 8080, 10, 4, 3);
        let f = build(Header::default(), &agg, &[], &Snapshots::default(), 1.0);
        assert_eq!(f.listeners[0].refused, Some(10));
        assert_eq!(f.listeners[0].uncertain, Some(4));
        assert_eq!(
            f.refused_unattributed,
            vec![Unattributed {
                netns: 7,
                refused: 3
            }]
        );
        let text = render_text(&f);
        assert!(text.contains("(4 uncertain)"), "{text}");
        assert!(
            text.contains("(unlisted)") && text.contains("refused 3"),
            "{text}"
        );
    }
}
