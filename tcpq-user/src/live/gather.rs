//! Snapshots read for one frame, in the namespace each event came from: listener queues and
//! owners (sock_diag, /proc), port usage per destination, conntrack tables, kernel counters and
//! the cgroup of every process shown.
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    time::{Duration, Instant},
};

use crate::{
    cmd::conntrack::{live_consumers, snapshot_in},
    connect::ports::group_usage,
    kernel::probe::HookState,
    live::{
        causes::{Cause, NsPorts, ports_snapshot, sample_acceptors},
        frame::{ConntrackRow, Header, ListenerSnap, PortSnap, Snapshots, rate_per_s},
        session::{Aggregates, Session},
    },
    snapshot::{netns, procs, sockdiag},
};

/// Destinations per frame whose port usage is read (the busiest first).
const PORT_SNAPSHOTS: usize = 20;

/// A destination's port usage is re-read this often while its connects succeed, and every frame
/// once any fails: reading it dumps every socket of the namespace, TIME_WAIT included (hundreds
/// of thousands on a busy server: under nginx + wrk that dump and its parsing were the largest
/// part of tcpq's own CPU).
const PORTS_REFRESH: Duration = Duration::from_secs(5);

/// Whether a destination's port usage must be read again now.
fn ports_stale(read_at: Option<Instant>, failures: u64, now: Instant) -> bool {
    match read_at {
        Some(at) => failures > 0 || now.saturating_duration_since(at) >= PORTS_REFRESH,
        None => true,
    }
}

pub fn snapshots(
    session: &mut Session,
    agg: &Aggregates,
    causes: &[Cause],
    secs: f64,
) -> Snapshots {
    let mut s = Snapshots::default();
    let mut pids: HashSet<u32> = causes.iter().filter_map(|c| c.pid).collect();

    // Listeners with refusals (traced, or counted by tier 0 before or without tracing: their
    // owner names them in every output from the first interval on) or accepts.
    let keys: BTreeSet<(u32, std::net::IpAddr, u16)> = agg
        .overflow
        .listeners
        .keys()
        .map(|k| (k.netns, k.laddr, k.lport))
        .chain(agg.accepts.keys().copied())
        .chain(
            agg.tier0_listeners
                .iter()
                .filter(|(_, t)| t.refused_interval > 0)
                .map(|(id, _)| (id.netns, id.laddr, id.lport)),
        )
        .collect();
    let mut dumps: HashMap<u32, Vec<sockdiag::DiagSocket>> = HashMap::new();
    for (ns, laddr, lport) in keys {
        let socks = dumps.entry(ns).or_insert_with(|| {
            netns::run_in(ns, sockdiag::dump_listeners)
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or_default()
        });
        let diag = socks.iter().find(|d| d.lport == lport);
        let sample = sample_acceptors(&mut session.dir, ns, laddr, lport);
        let (holders, idle, owner) = match sample {
            Some(a) => (
                a.holders.len() as u64,
                Some(a.min_idle),
                a.holders.first().cloned(),
            ),
            None => (0, None, None),
        };
        if let Some(o) = &owner {
            pids.insert(o.pid);
        }
        s.listeners.insert(
            (ns, lport),
            ListenerSnap {
                queue: diag.map(|d| d.recv_queue).unwrap_or(0),
                backlog: diag.map(|d| d.send_queue).unwrap_or(0),
                pid: owner.as_ref().map(|o| o.pid),
                process: owner.map(|o| o.comm),
                holders,
                idle,
            },
        );
    }

    // Port usage of the busiest destinations.
    let mut dests: Vec<_> = agg.connects.by_key.iter().collect();
    dests.sort_by_key(|(_, st)| std::cmp::Reverse((st.failures(), st.attempts)));
    let mut ns_socks: HashMap<u32, Option<NsPorts>> = HashMap::new();
    let now = Instant::now();
    for (k, st) in dests.iter().take(PORT_SNAPSHOTS) {
        pids.insert(k.tgid);
        let key = (k.netns, k.daddr, k.dport);
        if s.ports.contains_key(&key) {
            continue;
        }
        let cached = session.port_cache.get(&key);
        if !ports_stale(cached.map(|(at, _)| *at), st.failures(), now) {
            if let Some((_, snap)) = cached {
                s.ports.insert(key, *snap);
            }
            continue;
        }
        let snap = ns_socks
            .entry(k.netns)
            .or_insert_with(|| ports_snapshot(k.netns));
        let Some((socks, range, _)) = snap else {
            continue;
        };
        let groups = group_usage(
            socks,
            range,
            &HashSet::new(),
            &BTreeSet::from([(k.daddr, k.dport)]),
            false,
        );
        let (used, tw) = groups
            .iter()
            .filter(|g| g.daddr == Some(k.daddr) && g.dport == k.dport)
            .fold((0, 0), |(u, t), g| (u + g.used(), t + g.state("TIME_WAIT")));
        let snap = PortSnap {
            used,
            usable: range.usable(),
            time_wait: tw,
        };
        s.ports.insert(key, snap);
        session.port_cache.insert(key, (now, snap));
    }
    session
        .port_cache
        .retain(|_, (at, _)| now.saturating_duration_since(*at) < 6 * PORTS_REFRESH);
    for k in agg.connects.by_key.keys() {
        pids.insert(k.tgid);
    }

    // Conntrack: the host's table and every namespace with drops.
    let mut ct_ns: BTreeSet<u32> = agg.drops.keys().map(|(n, _)| *n).collect();
    ct_ns.insert(session.host);
    for ns in ct_ns {
        let drops: u64 = agg
            .drops
            .iter()
            .filter(|((n, _), _)| *n == ns)
            .map(|(_, v)| v)
            .sum();
        let table_full = agg.drops.get(&(ns, "table_full")).copied().unwrap_or(0);
        let snap = snapshot_in(ns, false);
        // The kernel's own drop rate since this namespace's last reading (none on its first).
        let kernel_drops_per_s = snap.stat.get("drop").copied().and_then(|now| {
            let at = std::time::Instant::now();
            let (prev_at, prev) = session.ct_drop_stat.insert(ns, (at, now))?;
            let secs = at.saturating_duration_since(prev_at).as_secs_f64();
            Some(rate_per_s(now.saturating_sub(prev), secs))
        });
        if !snap.in_use && drops == 0 {
            continue;
        }
        // Who fills the table matters only while it drops (the live modes' sampled, paced read).
        let top = if drops > 0 {
            live_consumers(ns, &snap).top
        } else {
            Default::default()
        };
        s.conntrack.push(ConntrackRow {
            netns: ns,
            count: snap.count,
            max: snap.max,
            drops_per_s: rate_per_s(drops, secs),
            table_full_per_s: rate_per_s(table_full, secs),
            kernel_drops_per_s,
            top_consumer: top
                .by_source
                .first()
                .map(|(a, n)| format!("{a} ({n} entries)")),
        });
    }

    for pid in pids.into_iter().take(1000) {
        if let Some(cg) = procs::cgroup_path(pid) {
            s.cgroups.insert(pid, cg);
        }
    }
    s
}

pub fn header(session: &Session, lost_total: u64, lost_interval: u64) -> Header {
    let hooks = session.hooks();
    Header {
        time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        host: nix::sys::utsname::uname()
            .ok()
            .and_then(|u| u.nodename().to_str().map(str::to_string))
            .unwrap_or_default(),
        kernel: session.loaded.env.kernel.clone(),
        hooks_active: hooks
            .iter()
            .filter(|h| matches!(h.state, HookState::Attached))
            .count(),
        hooks_total: hooks.len(),
        hooks_inactive: hooks
            .iter()
            .filter_map(|h| match &h.state {
                HookState::Attached | HookState::Standby => None,
                HookState::Unavailable(why) => Some(format!("{}: {why}", h.spec.program)),
            })
            .chain(
                session
                    .missing
                    .iter()
                    .map(|(f, why)| format!("{f:?} family: {why}")),
            )
            .collect(),
        lost_total,
        lost_interval,
        namespaces: session.engine.namespaces(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_usage_is_reread_when_old_or_failing() {
        let now = Instant::now();
        let recent = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
        let old = now.checked_sub(PORTS_REFRESH).unwrap_or(now);
        assert!(ports_stale(None, 0, now), "never read");
        assert!(
            !ports_stale(Some(recent), 0, now),
            "recent and no failures: reuse"
        );
        assert!(ports_stale(Some(recent), 3, now), "failing: every frame");
        if old < now {
            assert!(ports_stale(Some(old), 0, now), "older than the refresh");
        }
    }
}
