//! Snapshots read for one frame, in the namespace each event came from: listener queues and
//! owners (sock_diag, /proc), port usage per destination, conntrack tables, kernel counters and
//! the cgroup of every process shown.
use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::IpAddr,
};

use crate::{
    family::conntrack::snapshot::snapshot_in,
    kernel::probe::HookState,
    live::{
        cause::Cause,
        frame::{ConntrackRow, Header, ListenerSnap, PortSnap, Snapshots, rate_per_s},
        session::{Aggregates, Session, sample_acceptors},
        slow::SlowReads,
    },
    snapshot::procs,
};

/// Destinations per frame whose port usage is read (the busiest first).
const PORT_SNAPSHOTS: usize = 20;

/// Asks for the port usage the frame and the causes will show: per namespace, the busiest
/// destinations and every one whose connects failed (read off the frame thread: every frame
/// while any fails there, else every `slow::PORTS_REFRESH`).
pub fn want_ports(slow: &SlowReads, agg: &Aggregates) {
    let mut dests: Vec<_> = agg.connects.by_key.iter().collect();
    dests.sort_by_key(|(_, st)| std::cmp::Reverse((st.failures(), st.attempts)));
    let mut wanted: BTreeMap<u32, (BTreeSet<(IpAddr, u16)>, bool)> = BTreeMap::new();
    for (i, (k, st)) in dests.iter().enumerate() {
        if i >= PORT_SNAPSHOTS && st.failures() == 0 {
            continue;
        }
        let w = wanted.entry(k.netns).or_default();
        w.0.insert((k.daddr, k.dport));
        w.1 |= st.failures() > 0;
    }
    for (ns, (dests, failing)) in wanted {
        slow.want_ports(ns, dests, failing);
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
    // owner names them in every output from the first interval on) or accepts; queue and
    // backlog from tier 0's reading at the interval's end (no dump of its own).
    let keys: BTreeSet<(u32, IpAddr, u16)> = agg
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
    for (ns, laddr, lport) in keys {
        let diag = session
            .engine
            .tier0
            .listeners
            .iter()
            .filter(|(id, _)| id.netns == ns && id.lport == lport)
            .max_by_key(|(id, _)| id.laddr == laddr)
            .map(|(_, t)| (t.queue, t.backlog));
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
                queue: diag.map(|d| d.0).unwrap_or(0),
                backlog: diag.map(|d| d.1).unwrap_or(0),
                pid: owner.as_ref().map(|o| o.pid),
                process: owner.map(|o| o.comm),
                holders,
                idle,
            },
        );
    }

    // Port usage of the busiest destinations, as last read (`want_ports`).
    for k in agg.connects.by_key.keys() {
        pids.insert(k.tgid);
        let key = (k.netns, k.daddr, k.dport);
        if s.ports.contains_key(&key) {
            continue;
        }
        let Some(read) = session.slow.ports.get(&k.netns) else {
            continue;
        };
        if !read.value.dests.contains(&(k.daddr, k.dport)) {
            continue;
        }
        let (used, time_wait) = read.value.usage(k.daddr, k.dport);
        s.ports.insert(
            key,
            PortSnap {
                used,
                usable: read.value.range.usable(),
                time_wait,
            },
        );
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
            session
                .slow
                .consumers(ns, snap.established_timeout)
                .map(|c| c.top)
                .unwrap_or_default()
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
