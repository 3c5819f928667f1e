//! `tcpq diagnose [--duration 10s] [--json] [--fail-on-cause]`: every hook family at once for
//! the duration, then one report: causes ranked by impact, each with its evidence and fix, and
//! what was checked when nothing fired.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    io::IsTerminal as _,
    net::IpAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Result;
use netlink_packet_sock_diag::inet::StateFlags;
use serde_json::{Value, json};
use tcpq_common::{hook, kind, names};

use crate::{
    accept::{AcceptEvidence, AcceptStats, decode_accept, diagnose_accept},
    cmd::conntrack::snapshot_in,
    connect::{
        ConnectResult, decode_connect,
        model::{ConnectAggregator, ConnectStats},
        ports::{PortRange, PortsEvidence, diagnose_ports, group_usage},
    },
    conntrack::{CtEvidence, decode_drop, diagnose_conntrack, drop_kind, top_consumers},
    decode::{ListenRecord, decode_listen},
    kernel::probe::{self, Family, LoadOptions, sum_per_cpu},
    listen::{
        diagnose::{Finding, ListenerEvidence, diagnose_listener},
        resolve::ListenerDirectory,
    },
    model::{ListenerKey, OverflowAggregator},
    output::endpoint,
    snapshot::{counters, netns, procs, sockdiag},
    sockets::{analyse, diagnose_sockets},
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

#[derive(Debug, Clone)]
pub struct DiagnoseArgs {
    pub duration: Duration,
    pub json: bool,
    pub fail_on_cause: bool,
}

/// A namespace's sockets, usable port range and tcp_tw_reuse.
type NsPorts = (Vec<sockdiag::DiagSocket>, PortRange, Option<u32>);

/// One ranked cause of the report.
struct Cause {
    finding: Finding,
    place: String,
    process: Option<String>,
    pid: Option<u32>,
    port: Option<u16>,
    evidence: Value,
}

pub fn run(args: DiagnoseArgs) -> Result<i32> {
    let mut loaded = probe::load(
        &[
            Family::Listen,
            Family::Connect,
            Family::Drop,
            Family::Accept,
        ],
        &LoadOptions::default(),
    )?;
    let mut listen_ring = loaded.take_ring(names::LISTEN_EVENTS)?;
    let mut connect_ring = loaded.take_ring(names::CONNECT_EVENTS)?;
    let mut drop_ring = loaded.take_ring(names::DROP_EVENTS)?;
    let mut accept_ring = loaded.take_ring(names::ACCEPT_EVENTS)?;
    let listen_counts = loaded.take_per_cpu_counters(names::LISTEN_COUNTS)?;
    let listen_lost = loaded.take_per_cpu_counters(names::LOST_EVENTS)?;
    let connect_counts = loaded.take_per_cpu_counters(names::CONNECT_COUNTS)?;
    let drop_counts = loaded.take_per_cpu_counters(names::DROP_COUNTS)?;
    let accept_lost = loaded.take_per_cpu_counters(names::ACCEPT_LOST)?;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    // TCPQ_BPF_STATS=1: have the kernel time every program run (BPF_ENABLE_STATS, released with
    // the fd) and report ns per run; `cargo xtask bench` uses it.
    let stats_fd = (std::env::var("TCPQ_BPF_STATS").as_deref() == Ok("1"))
        .then(|| aya::sys::enable_stats(aya::sys::Stats::RunTime).ok())
        .flatten();
    let host = netns::current().unwrap_or(0);
    let tty = std::io::stderr().is_terminal();
    eprintln!(
        "tcpq: diagnosing for {:.0} s (every hook family attached)…",
        args.duration.as_secs_f64()
    );

    let mut overflow = OverflowAggregator::new(10_000);
    let mut dir = ListenerDirectory::new();
    let mut connects = ConnectAggregator::new(50_000);
    let mut drops: BTreeMap<(u32, &'static str), u64> = BTreeMap::new();
    let ct_active = std::cell::RefCell::new(HashSet::new());
    let mut accepts: BTreeMap<(u32, IpAddr, u16), AcceptStats> = BTreeMap::new();
    let mut counters_first: HashMap<u32, HashMap<String, u64>> = HashMap::new();
    if let Ok(c) = counters::read_in(host) {
        counters_first.insert(host, c);
    }
    let started = Instant::now();
    let mut last_progress = 0;
    while started.elapsed() < args.duration && !STOP.load(Ordering::SeqCst) {
        while let Some(item) = listen_ring.next() {
            match decode_listen(&item) {
                Ok(ListenRecord::Overflow(ev)) => {
                    if !counters_first.contains_key(&ev.netns)
                        && let Ok(c) = counters::read_in(ev.netns)
                    {
                        counters_first.insert(ev.netns, c);
                    }
                    let _ = dir.lookup(ev.netns, ev.cookie, ev.laddr, ev.lport);
                    overflow.record(&ev);
                }
                Ok(ListenRecord::ListenCall(c)) => dir.on_listen_call(&c),
                Err(_) => {}
            }
        }
        while let Some(item) = connect_ring.next() {
            if let Ok(o) = decode_connect(&item) {
                connects.record(&o);
            }
        }
        while let Some(item) = drop_ring.next() {
            if let Ok(d) = decode_drop(&item)
                && d.netfilter
            {
                let in_use = crate::cmd::conntrack::ct_in_use(&ct_active, d.netns, d.has_ct);
                *drops
                    .entry((d.netns, drop_kind(d.has_ct, in_use)))
                    .or_insert(0) += 1;
            }
        }
        while let Some(item) = accept_ring.next() {
            if let Ok(a) = decode_accept(&item) {
                accepts
                    .entry((a.netns, a.laddr, a.lport))
                    .or_default()
                    .record(&a);
            }
        }
        let secs = started.elapsed().as_secs();
        if tty && secs != last_progress {
            last_progress = secs;
            eprint!("\r  collecting… {secs}/{} s", args.duration.as_secs());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if tty {
        eprintln!();
    }
    let duration_s = started.elapsed().as_secs_f64();
    let lost: u64 = (0..hook::SLOTS)
        .map(|i| sum_per_cpu(&listen_lost, i))
        .sum::<u64>()
        + sum_per_cpu(&connect_counts, tcpq_common::connect::COUNT_LOST)
        + sum_per_cpu(&drop_counts, tcpq_common::drop::COUNT_LOST)
        + sum_per_cpu(&accept_lost, 0);
    let _ = sum_per_cpu(&listen_counts, kind::SYN_DROP as u32);

    let mut causes: Vec<Cause> = Vec::new();
    let owner_of = |info: Option<&std::rc::Rc<crate::listen::resolve::ListenerInfo>>| {
        info.and_then(|i| i.primary().cloned())
    };

    // Listen path.
    for a in overflow.ranked() {
        let ListenerKey {
            netns: ns,
            laddr,
            lport,
            cookie,
        } = a.key;
        let info = dir.lookup(ns, cookie, laddr, lport);
        let now = counters::read_in(ns).unwrap_or_default();
        let cookies_sent_recv = counters_first.get(&ns).map(|b| {
            (
                counters::delta(b, &now, "TcpExt:SyncookiesSent"),
                counters::delta(b, &now, "TcpExt:SyncookiesRecv"),
            )
        });
        let acc = accepts
            .iter()
            .filter(|((n, _, p), _)| *n == ns && *p == lport)
            .map(|(_, s)| s.accepts)
            .sum::<u64>();
        let ev = ListenerEvidence {
            netns: ns,
            host_netns: host,
            ns_enter: netns::enter_prefix(ns, host),
            laddr: Some(laddr),
            lport,
            owners: info.as_ref().map(|i| i.owners.clone()).unwrap_or_default(),
            counts: a.total,
            duration_s,
            backlog: a.backlog,
            last_queue: a.last_queue,
            max_synq: a.max_synq,
            listen_arg: info.as_ref().and_then(|i| i.listen_arg),
            sysctls: counters::ListenSysctls::read_in(ns),
            accepts: Some(acc),
            cookies_sent_recv,
            clients: a.clients.len(),
        };
        let owner = owner_of(info.as_ref());
        for f in diagnose_listener(&ev) {
            causes.push(Cause {
                place: endpoint(laddr, lport),
                process: owner.as_ref().map(|o| o.comm.clone()),
                pid: owner.as_ref().map(|o| o.pid),
                port: Some(lport),
                evidence: json!({"netns": ns, "counts": crate::output::counts_json(&a.total), "queue": a.last_queue, "backlog": a.backlog, "listen_arg": ev.listen_arg, "somaxconn": ev.sysctls.somaxconn, "accepts": acc}),
                finding: f,
            });
        }
    }

    // Outbound connects and ports: per namespace × destination with failures.
    let mut by_dest: BTreeMap<(u32, IpAddr, u16), (ConnectStats, BTreeSet<u32>)> = BTreeMap::new();
    for (k, s) in &connects.by_key {
        let e = by_dest
            .entry((k.netns, k.daddr, k.dport))
            .or_insert_with(|| (s.clone(), BTreeSet::new()));
        if !e.1.is_empty() {
            e.0.merge(s);
        }
        e.1.insert(k.tgid);
    }
    let mut ns_sockets: HashMap<u32, Option<NsPorts>> = HashMap::new();
    for ((ns, daddr, dport), (stats, pids)) in &by_dest {
        if stats.failures() == 0 {
            continue;
        }
        let snap = ns_sockets.entry(*ns).or_insert_with(|| {
            netns::run_in(
                *ns,
                || -> Option<(Vec<sockdiag::DiagSocket>, PortRange, Option<u32>)> {
                    let socks = sockdiag::dump_tcp(StateFlags::all()).ok()?;
                    let ports = super::ports::read_port_sysctls().ok()?;
                    Some((socks, ports.range, ports.tw_reuse))
                },
            )
            .ok()
            .flatten()
        });
        let Some((socks, range, tw)) = snap else {
            continue;
        };
        let groups = group_usage(
            socks,
            range,
            &HashSet::new(),
            &BTreeSet::from([(*daddr, *dport)]),
            false,
        );
        for g in groups
            .iter()
            .filter(|g| g.daddr == Some(*daddr) && g.dport == *dport)
        {
            let ev = PortsEvidence {
                usage: g,
                range,
                tw_reuse: *tw,
                traced: Some(stats),
                duration_s,
                ns_prefix: netns::enter_prefix(*ns, host),
            };
            for f in diagnose_ports(&ev) {
                causes.push(Cause {
                    place: format!("{} → {}", stats.comm, endpoint(*daddr, *dport)),
                    process: Some(stats.comm.clone()),
                    pid: pids.iter().next().copied(),
                    port: Some(*dport),
                    evidence: json!({"netns": ns, "pids": pids, "connects": stats.attempts, "EADDRNOTAVAIL": stats.count(ConnectResult::Errno(99)), "used": g.used(), "usable": range.usable(), "states": g.states}),
                    finding: f,
                });
            }
        }
    }

    // Conntrack.
    let ct_ns: BTreeSet<u32> = drops.keys().map(|(n, _)| *n).collect();
    for ns in ct_ns {
        let snap = snapshot_in(ns, true);
        let tf = drops.get(&(ns, "table_full")).copied().unwrap_or(0);
        let rule = drops.get(&(ns, "rule")).copied().unwrap_or(0);
        let ev = CtEvidence {
            count: snap.count,
            max: snap.max,
            buckets: snap.buckets,
            established_timeout: snap.established_timeout,
            table_full_drops: tf,
            rule_drops: rule,
            early_drops: 0,
            duration_s,
            top: top_consumers(&snap.entries, snap.established_timeout, 5),
            busiest_local_dport: None,
            ns_prefix: netns::enter_prefix(ns, host),
        };
        for f in diagnose_conntrack(&ev) {
            causes.push(Cause { place: format!("netns {ns}"), process: None, pid: None, port: None, evidence: json!({"netns": ns, "table_full": tf, "rule": rule, "count": snap.count, "max": snap.max}), finding: f });
        }
    }

    // Accept side.
    for ((ns, laddr, lport), s) in &accepts {
        let info = dir.lookup(*ns, 0, *laddr, *lport);
        let holders = info.as_ref().map(|i| i.owners.clone()).unwrap_or_default();
        let idle = info.as_ref().map(|i| {
            holders
                .iter()
                .map(|o| procs::threads_in_accept(o.pid, i.inode))
                .sum()
        });
        let ev = AcceptEvidence {
            lport: *lport,
            duration_s,
            accepts: s.accepts,
            wait: s.wait_quantiles(),
            errors: s.errors.clone(),
            holders: holders.clone(),
            idle_acceptors: idle,
            nofile: None,
        };
        let owner = holders.first().cloned().or_else(|| {
            s.acceptors.iter().next().map(|(p, c)| procs::Owner {
                pid: *p,
                comm: c.clone(),
            })
        });
        for f in diagnose_accept(&ev) {
            causes.push(Cause {
                place: endpoint(*laddr, *lport),
                process: owner.as_ref().map(|o| o.comm.clone()),
                pid: owner.as_ref().map(|o| o.pid),
                port: Some(*lport),
                evidence: json!({"netns": ns, "accepts": s.accepts, "wait_p99_us": s.wait_quantiles().map(|(_, p, _)| p / 1000), "errors": s.errors, "idle_acceptors": idle}),
                finding: f,
            });
        }
    }

    // Sockets held by processes (stale ESTABLISHED, CLOSE_WAIT), in every namespace their
    // threads use.
    let mut dumps: HashMap<u32, Option<Vec<sockdiag::DiagSocket>>> = HashMap::new();
    if let Ok(all) = procfs::process::all_processes() {
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
                    netns::run_in(ns, || sockdiag::dump_tcp_with_info(StateFlags::all()).ok())
                        .ok()
                        .flatten()
                });
                let Some(socks) = socks else { continue };
                let ps = analyse(pid, &comm, ns, socks, &owned, 60_000);
                for f in diagnose_sockets(&ps, 60.0, None) {
                    causes.push(Cause { place: format!("pid {pid}"), process: Some(comm.clone()), pid: Some(pid), port: None, evidence: json!({"netns": ns, "close_wait": ps.close_wait, "close_wait_fds": ps.close_wait_fds, "idle_established": ps.idle_established.iter().map(|g| g.count).sum::<u64>()}), finding: f });
                }
            }
        }
    }

    causes.sort_by_key(|c| std::cmp::Reverse(c.finding.impact));
    let checked = vec![
        format!(
            "accept queues, SYN queues and syncookies ({} listener(s) with refusals)",
            overflow.listeners.len()
        ),
        format!(
            "outbound connects ({} process→destination pair(s))",
            connects.by_key.len()
        ),
        format!(
            "netfilter drops / conntrack ({} namespace(s) with drops)",
            drops.keys().map(|(n, _)| n).collect::<BTreeSet<_>>().len()
        ),
        format!(
            "accept-queue waits and accept() errors ({} listener(s))",
            accepts.len()
        ),
        "stale ESTABLISHED and CLOSE_WAIT sockets of every process".to_string(),
    ];
    let program_stats: Vec<Value> = if stats_fd.is_some() {
        loaded
            .ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                let runs = info.run_count();
                (runs > 0).then(|| json!({"program": name, "run_count": runs, "ns_per_run": info.run_time().as_nanos() as u64 / runs}))
            })
            .collect()
    } else {
        Vec::new()
    };
    if args.json {
        let list: Vec<Value> = causes
            .iter()
            .map(|c| json!({"cause": c.finding.cause, "where": c.place, "process": c.process, "pid": c.pid, "port": c.port, "impact": c.finding.impact, "text": c.finding.text, "evidence": c.evidence, "fix": c.finding.fix}))
            .collect();
        let mut report = json!({"duration_s": (duration_s * 10.0).round() / 10.0, "causes": list, "checked": checked, "lost_events": lost});
        if !program_stats.is_empty() {
            report["program_stats"] = json!(program_stats);
        }
        println!("{report}");
    } else {
        println!("tcpq diagnose — {duration_s:.1} s, lost events: {lost}");
        if causes.is_empty() {
            println!("no problem found. Checked:");
            for c in &checked {
                println!("  · {c}");
            }
        }
        for (i, c) in causes.iter().enumerate() {
            println!(
                "{}. {} at {}{}: {}",
                i + 1,
                c.finding.cause,
                c.place,
                c.pid
                    .map(|p| format!(
                        " (pid {p}{})",
                        c.process
                            .as_ref()
                            .map(|n| format!(" {n}"))
                            .unwrap_or_default()
                    ))
                    .unwrap_or_default(),
                c.finding.text
            );
            for f in &c.finding.fix {
                println!("     fix: {f}");
            }
        }
    }
    drop(loaded);
    Ok(if args.fail_on_cause && !causes.is_empty() {
        1
    } else {
        0
    })
}
