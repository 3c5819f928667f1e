//! Snapshots read for one frame, in the namespace each event came from: listener queues and
//! owners (sock_diag, /proc), port usage per destination, conntrack tables, kernel counters and
//! the cgroup of every process shown.
use std::collections::{BTreeSet, HashMap, HashSet};

use crate::{
    cmd::conntrack::snapshot_in,
    connect::ports::group_usage,
    conntrack::top_consumers,
    kernel::probe::HookState,
    live::{
        causes::{Cause, NsPorts, ports_snapshot, sample_acceptors},
        frame::{ConntrackRow, Header, ListenerSnap, PortSnap, Snapshots, rate_per_s},
        session::{Aggregates, Session},
    },
    snapshot::{counters, netns, procs, sockdiag},
};

/// Destinations per frame whose port usage is read (the busiest first).
const PORT_SNAPSHOTS: usize = 20;

pub fn snapshots(
    session: &mut Session,
    agg: &Aggregates,
    causes: &[Cause],
    secs: f64,
) -> Snapshots {
    let mut s = Snapshots::default();
    let mut pids: HashSet<u32> = causes.iter().filter_map(|c| c.pid).collect();

    // Listeners with refusals or accepts.
    let keys: BTreeSet<(u32, std::net::IpAddr, u16)> = agg
        .overflow
        .listeners
        .keys()
        .map(|k| (k.netns, k.laddr, k.lport))
        .chain(agg.accepts.keys().copied())
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
    for (k, _) in dests.iter().take(PORT_SNAPSHOTS) {
        pids.insert(k.tgid);
        if s.ports.contains_key(&(k.netns, k.daddr, k.dport)) {
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
        s.ports.insert(
            (k.netns, k.daddr, k.dport),
            PortSnap {
                used,
                usable: range.usable(),
                time_wait: tw,
            },
        );
    }
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
        let snap = snapshot_in(ns, drops > 0);
        if !snap.in_use && drops == 0 {
            continue;
        }
        let top = top_consumers(&snap.entries, snap.established_timeout, 1);
        s.conntrack.push(ConntrackRow {
            netns: ns,
            count: snap.count,
            max: snap.max,
            drops_per_s: rate_per_s(drops, secs),
            table_full_per_s: rate_per_s(table_full, secs),
            top_consumer: top
                .by_source
                .first()
                .map(|(a, n)| format!("{a} ({n} entries)")),
        });
    }

    for ns in agg.counters_first.keys() {
        if let Ok(c) = counters::read_in(*ns) {
            s.counters_now.insert(*ns, c);
        }
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
                HookState::Attached => None,
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
    }
}
