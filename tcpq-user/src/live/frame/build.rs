//! Building a frame: an interval's aggregates, causes and snapshots merged per listener and
//! destination, with rates per second (`build`).
use std::{collections::BTreeMap, net::IpAddr};

use super::*;
use crate::{
    family::{
        connect::aggregate::ConnectStats,
        listen::{aggregate::KindCounts, decode::OverflowKind},
    },
    live::{cause::Cause, session::Aggregates},
    render::endpoint,
    snapshot::container,
};

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
