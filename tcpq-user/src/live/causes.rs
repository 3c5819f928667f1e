//! Causes from one interval's aggregates: each hook family's evidence handed to its
//! diagnosis (listen, ports, conntrack, accept, sockets), ranked by impact. Shared by
//! `diagnose`, `top` and `export`; snapshots are read in the namespace the events came from.
use std::collections::{BTreeSet, HashMap, HashSet};

use netlink_packet_sock_diag::inet::StateFlags;
use serde_json::{Value, json};

use crate::{
    diagnosis::{Finding, owner::app_of_owners},
    family::{
        accept::diagnose::{AcceptEvidence, diagnose_accept},
        connect::{
            aggregate::failed_by_destination,
            decode::ConnectResult,
            diagnose::{PortsEvidence, dest_label, diagnose_connect_failures, diagnose_ports},
        },
        conntrack::{
            diagnose::{CtEvidence, diagnose_conntrack},
            snapshot::{live_consumers, snapshot_in},
        },
        listen::{
            aggregate::ListenerKey,
            diagnose::{ListenerEvidence, diagnose_listener},
        },
        sockets::{
            aggregate::{CloseWaitSeen, ProcessSockets, analyse, group_stale},
            diagnose::{diagnose_close_wait, diagnose_stale},
        },
    },
    live::{
        cause::Cause,
        session::{Aggregates, sample_acceptors},
        slow::{PortsRead, SlowReads, read_ports},
    },
    render::endpoint,
    snapshot::{counters, listeners::ListenerDirectory, netns, procs, sockdiag},
};

/// Every cause the interval's evidence supports, highest impact first.
pub fn find_causes(
    agg: &Aggregates,
    dir: &mut ListenerDirectory,
    host: u32,
    duration_s: f64,
    // Some((idle, earlier)): also every process's stale ESTABLISHED (idle that long) and the
    // CLOSE_WAIT sockets `earlier` saw too.
    scan_sockets: Option<(std::time::Duration, &CloseWaitSeen)>,
    // The live modes: port usage and conntrack consumers as last read off the frame thread.
    // None (diagnose): read now.
    slow: Option<&SlowReads>,
) -> Vec<Cause> {
    let mut causes: Vec<Cause> = Vec::new();
    let owner_of = |info: Option<&std::rc::Rc<crate::snapshot::listeners::ListenerInfo>>| {
        info.and_then(|i| i.primary().cloned())
    };

    // Listen path.
    for a in &agg.overflow.by_listener() {
        let ListenerKey {
            netns: ns,
            laddr,
            lport,
            cookie,
        } = a.key;
        let info = dir.lookup(ns, cookie, laddr, lport);
        let now = agg.counters_last.get(&ns).cloned().unwrap_or_default();
        let cookies_sent_recv = agg.counters_first.get(&ns).map(|b| {
            (
                counters::delta(b, &now, "TcpExt:SyncookiesSent"),
                counters::delta(b, &now, "TcpExt:SyncookiesRecv"),
            )
        });
        let acc = agg
            .accepts
            .iter()
            .filter(|((n, _, p), _)| *n == ns && *p == lport)
            .map(|(_, s)| s.accepts)
            .sum::<u64>();
        let ev = ListenerEvidence {
            sysctls: counters::ListenSysctls::read_in(ns),
            accepts: Some(acc),
            cookies_sent_recv,
            ..ListenerEvidence::of_listener(
                a,
                info.as_deref(),
                host,
                netns::enter_prefix(ns, host),
                duration_s,
            )
        };
        let owner = owner_of(info.as_ref());
        for f in diagnose_listener(&ev) {
            causes.push(Cause {
                cgroup: None,
                place: endpoint(laddr, lport),
                process: owner.as_ref().map(|o| o.comm.clone()),
                pid: owner.as_ref().map(|o| o.pid),
                port: Some(lport),
                evidence: json!({"netns": ns, "counts": crate::family::listen::render::counts_json(&a.total), "queue": a.last_queue, "backlog": a.backlog, "listen_arg": ev.listen_arg, "somaxconn": ev.sysctls.somaxconn, "accepts": acc}),
                finding: f,
            });
        }
    }

    // Outbound connects and ports: per namespace × destination with failures, named after the
    // processes whose connects failed (not whoever else connected there).
    let by_dest = failed_by_destination(&agg.connects);
    let mut ns_ports: HashMap<u32, Option<PortsRead>> = HashMap::new();
    for ((ns, daddr, dport), d) in &by_dest {
        let failed = &d.stats;
        let dest = dest_label(Some(*daddr), *dport);
        let place = format!("{} → {dest}", failed.comm);
        let pid = d.pids.first().copied();
        let evidence = |extra: Value| {
            let mut v = json!({"netns": ns, "pids": d.pids, "connects": failed.attempts, "failures": failed.failures(), "EADDRNOTAVAIL": failed.count(ConnectResult::Errno(99))});
            if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            v
        };
        let cause = |finding: Finding, evidence: Value| Cause {
            cgroup: None,
            place: place.clone(),
            process: Some(failed.comm.clone()),
            pid,
            port: Some(*dport),
            evidence,
            finding,
        };
        if let Some(f) = diagnose_connect_failures(failed, &dest) {
            causes.push(cause(f, evidence(json!({}))));
        }
        // The live modes read port usage off the frame thread (the latest read, asked for by
        // `gather::want_ports`); diagnose reads it now, for every failing destination at once.
        let read = ns_ports.entry(*ns).or_insert_with(|| match slow {
            Some(slow) => slow.ports.get(ns).map(|r| r.value),
            None => {
                let dests = by_dest.keys().filter(|(n, _, _)| n == ns);
                read_ports(*ns, &dests.map(|(_, a, p)| (*a, *p)).collect())
            }
        });
        let Some(read) = read
            .as_ref()
            .filter(|r| r.dests.contains(&(*daddr, *dport)))
        else {
            continue;
        };
        let range = &read.range;
        // Port usage is per source address; the port-search failures go with the busiest
        // source (groups come sorted by ports used), the others speak for themselves.
        let dest_groups = read
            .groups
            .iter()
            .filter(|g| g.daddr == Some(*daddr) && g.dport == *dport);
        for (i, g) in dest_groups.enumerate() {
            let ev = PortsEvidence {
                usage: g,
                range,
                tw_reuse: read.tw_reuse,
                traced: (i == 0).then_some(failed),
                duration_s,
                ns_prefix: netns::enter_prefix(*ns, host),
            };
            for f in diagnose_ports(&ev) {
                causes.push(cause(f, evidence(json!({"saddr": g.saddr.map(|a| a.to_string()), "used": g.used(), "usable": range.usable(), "states": g.states}))));
            }
        }
    }

    // Conntrack: where it dropped, and where tier 0 saw a table at least half full — near full
    // is a cause before the first drop, and a long ESTABLISHED timeout holding idle flows is one
    // while the table fills (its entries are read at a bounded pace: `live_consumers`).
    let ct_ns: BTreeSet<u32> = agg
        .drops
        .keys()
        .map(|(n, _)| *n)
        .chain(agg.tier0_conntrack.iter().map(|(n, _)| *n))
        .collect();
    for ns in ct_ns {
        let snap = snapshot_in(ns, false);
        let consumers = match slow {
            Some(slow) => slow
                .consumers(ns, snap.established_timeout)
                .unwrap_or_default(),
            None => live_consumers(ns, &snap),
        };
        let tf = agg.drops.get(&(ns, "table_full")).copied().unwrap_or(0);
        let rule = agg.drops.get(&(ns, "rule")).copied().unwrap_or(0);
        let ev = CtEvidence {
            count: snap.count,
            max: snap.max,
            buckets: snap.buckets,
            established_timeout: snap.established_timeout,
            table_full_drops: tf,
            rule_drops: rule,
            early_drops: 0,
            duration_s,
            top: consumers.top,
            busiest_local_dport: None,
            ns_prefix: netns::enter_prefix(ns, host),
        };
        for f in diagnose_conntrack(&ev) {
            causes.push(Cause { cgroup: None, place: format!("netns {ns}"), process: None, pid: None, port: None, evidence: json!({"netns": ns, "table_full": tf, "rule": rule, "count": snap.count, "max": snap.max, "entries_read": consumers.read, "entries_sampled": consumers.sampled, "entries_age_s": consumers.age.as_secs_f64()}), finding: f });
        }
    }

    // Accept side.
    for ((ns, laddr, lport), s) in &agg.accepts {
        // Sampled while the interval ran (the server may be gone by now), else looked up now.
        let (holders, idle) = match agg.acceptors.get(&(*ns, *laddr, *lport)) {
            Some(sample) => (sample.holders.clone(), Some(sample.min_idle)),
            None => sample_acceptors(dir, *ns, *laddr, *lport)
                .map(|s| (s.holders, Some(s.min_idle)))
                .unwrap_or_default(),
        };
        let ev = AcceptEvidence {
            lport: *lport,
            duration_s,
            accepts: s.accepts,
            wait: s.wait_quantiles(),
            errors: s.errors.clone(),
            holders: holders.clone(),
            idle_acceptors: idle,
            nofile: None,
            app: app_of_owners(&holders),
            slow: s.slow,
            pressure: agg
                .tier0_listeners
                .iter()
                .filter(|(id, _)| {
                    id.netns == *ns
                        && id.lport == *lport
                        && (id.laddr == *laddr || id.laddr.is_unspecified())
                })
                .map(|(_, t)| crate::family::accept::diagnose::QueuePressure {
                    refused: t.refused_interval,
                    queue_peak: t.queue_peak,
                    backlog: t.backlog,
                })
                .next()
                // Tier 0 watches every listener: one it did not list never queued a
                // connection at a reading, under no pressure.
                .or(Some(
                    crate::family::accept::diagnose::QueuePressure::default(),
                )),
        };
        let owner = holders.first().cloned().or_else(|| {
            s.acceptors.iter().next().map(|(p, c)| procs::Owner {
                pid: *p,
                comm: c.clone(),
            })
        });
        for f in diagnose_accept(&ev) {
            causes.push(Cause {
                cgroup: None,
                place: endpoint(*laddr, *lport),
                process: owner.as_ref().map(|o| o.comm.clone()),
                pid: owner.as_ref().map(|o| o.pid),
                port: Some(*lport),
                evidence: json!({"netns": ns, "accepts": s.accepts, "wait_p99_us": s.wait_quantiles().map(|(_, p, _)| p / 1000), "errors": s.errors, "idle_acceptors": idle}),
                finding: f,
            });
        }
    }

    causes.extend(limit_causes(agg, duration_s));

    if let Some((idle, earlier)) = scan_sockets {
        causes.extend(socket_causes(idle, earlier).0);
    }
    causes.sort_by_key(|c| std::cmp::Reverse(c.finding.impact));
    for c in &mut causes {
        c.cgroup = c.pid.and_then(procs::cgroup_path);
    }
    causes
}

/// `connection_limit`: one cause per (namespace, port, program) whose processes accepted and
/// reset connections unread, with the plateau they held and the namespace's TCPAbortOnClose.
fn limit_causes(agg: &Aggregates, duration_s: f64) -> Vec<Cause> {
    let ns_resets = crate::limit::per_namespace(&agg.aborts);
    let mut out = Vec::new();
    for ((ns, lport, comm), keys) in crate::limit::group(&agg.aborts) {
        let mut seen = crate::limit::Seen::default();
        for (k, _) in &keys {
            // Sampled while the interval ran; else now (export and top frames sample too).
            match agg.limit_seen.get(k).copied() {
                Some(s) => seen.merge(s),
                None => {
                    if let Some(s) = crate::limit::sample(k) {
                        seen.merge(s);
                    }
                }
            }
        }
        let pids: Vec<u32> = keys.iter().map(|(k, _)| k.tgid).collect();
        let resets: u64 = keys.iter().map(|(_, n)| n).sum();
        let kernel = match (agg.counters_first.get(&ns), agg.counters_last.get(&ns)) {
            (Some(a), Some(b)) => Some(counters::delta(a, b, "TcpExt:TCPAbortOnClose")),
            _ => None,
        };
        let owners: Vec<procs::Owner> = pids
            .iter()
            .map(|&pid| procs::Owner {
                pid,
                comm: comm.clone(),
            })
            .collect();
        let ev = crate::limit::LimitEvidence {
            lport,
            comm: &comm,
            pids: pids.clone(),
            resets,
            duration_s,
            seen,
            kernel_abort_on_close: kernel,
            app: app_of_owners(&owners),
        };
        let Some(f) = crate::limit::diagnose_connection_limit(&ev) else {
            log::debug!("resets on close, not a connection limit: {ev:?}");
            continue;
        };
        out.push(Cause {
            cgroup: None,
            place: format!(":{lport} ({comm})"),
            process: Some(comm.clone()),
            pid: pids.first().copied(),
            port: Some(lport),
            evidence: json!({"netns": ns, "pids": pids, "resets_on_close": resets,
                "namespace_resets_on_close": ns_resets.get(&ns).copied().unwrap_or(0),
                "TcpExt:TCPAbortOnClose": kernel, "established_peak": seen.established_peak,
                "nofile_limit": seen.nofile}),
            finding: f,
        });
    }
    out
}

/// Every process's sockets, in every namespace its threads use: a walk of every process's
/// descriptors, so callers choose how often.
pub fn scan_sockets(idle: std::time::Duration) -> Vec<ProcessSockets> {
    let idle_ms = idle.as_millis().min(u32::MAX as u128) as u32;
    let mut out = Vec::new();
    let mut dumps: HashMap<u32, Option<Vec<sockdiag::DiagSocket>>> = HashMap::new();
    let Ok(all) = procfs::process::all_processes() else {
        return out;
    };
    for p in all.flatten() {
        let pid = p.pid as u32;
        let Ok(fds) = p.fd() else { continue };
        let mut owned: HashMap<u64, Vec<u32>> = HashMap::new();
        for fd in fds.flatten() {
            if let procfs::process::FDTarget::Socket(inode) = fd.target {
                owned.entry(inode).or_default().push(fd.fd as u32);
            }
        }
        if owned.is_empty() {
            continue;
        }
        let comm = procs::comm(pid).unwrap_or_default();
        for ns in netns::of_pid_threads(pid) {
            let socks = dumps.entry(ns).or_insert_with(|| {
                // TIME_WAIT sockets belong to no process (inode 0), and a busy server has
                // hundreds of thousands: leave them out of the dump.
                let owned_states = StateFlags::all().difference(StateFlags::TIME_WAIT);
                netns::run_in(ns, || sockdiag::dump_tcp_with_info(owned_states).ok())
                    .ok()
                    .flatten()
            });
            let Some(socks) = socks else { continue };
            out.push(analyse(pid, &comm, ns, socks, &owned, idle_ms));
        }
    }
    out
}

/// Stale upstreams (one cause per program and remote, over all its processes) and CLOSE_WAIT
/// sockets that `earlier` saw too (per process) of every process; and the CLOSE_WAIT sockets
/// this scan saw, for the next.
pub fn socket_causes(
    idle: std::time::Duration,
    earlier: &CloseWaitSeen,
) -> (Vec<Cause>, HashSet<u64>) {
    let scan = scan_sockets(idle);
    let mut causes = Vec::new();
    for g in group_stale(&scan) {
        let Some(&pid) = g.pids.first() else { continue };
        let app = app_of_owners(&[procs::Owner {
            pid,
            comm: g.comm.clone(),
        }]);
        let Some(f) = diagnose_stale(&g, idle.as_secs_f64(), app.client_timeout_setting()) else {
            continue;
        };
        let remote = g
            .raddr
            .parse()
            .map(|a| endpoint(a, g.rport))
            .unwrap_or_else(|_| g.raddr.clone());
        causes.push(Cause {
            cgroup: None,
            place: format!("{} → {remote}", g.comm),
            process: Some(g.comm.clone()),
            pid: Some(pid),
            port: Some(g.rport),
            evidence: json!({"netns": g.netns, "pids": g.pids, "processes": g.pids.len(),
                "awaiting_reply": g.awaiting_reply, "unacknowledged": g.unacknowledged,
                "idle_pooled": g.idle, "max_idle_s": g.max_idle_s,
                "idle_established": g.awaiting_reply + g.idle}),
            finding: f,
        });
    }
    for ps in &scan {
        if let Some(f) = diagnose_close_wait(ps, None, earlier) {
            let lasting = earlier.lasting(ps);
            let fds: BTreeSet<u32> = lasting
                .iter()
                .flat_map(|(_, f)| f.iter().copied())
                .collect();
            causes.push(Cause { cgroup: None, place: format!("pid {}", ps.pid), process: Some(ps.comm.clone()), pid: Some(ps.pid), port: None, evidence: json!({"netns": ps.netns, "close_wait": lasting.len(), "close_wait_fds": fds, "close_wait_newer": ps.close_wait - lasting.len() as u64, "lasted_s": earlier.ago_s.round()}), finding: f });
        }
    }
    for c in &mut causes {
        c.cgroup = c.pid.and_then(procs::cgroup_path);
    }
    (causes, CloseWaitSeen::of(&scan, 0.0).cookies)
}
