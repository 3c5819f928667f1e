//! `tcpq ports`: ephemeral ports per (namespace, source, destination) against the usable
//! range, with TIME_WAIT, connect rate, EADDRNOTAVAIL and connect() time when root.
use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::IpAddr,
    time::Instant,
};

use anyhow::Result;
use netlink_packet_sock_diag::inet::StateFlags;
use procfs::process::{FDTarget, Process};
use serde_json::json;

use super::ring::Schedule;
use super::{
    connect_session::ConnectSession,
    filter::{DstFilter, PidFilter},
};
use crate::{
    cli::PortsArgs,
    family::connect::snapshot::{PortSysctls, read_port_sysctls},
    family::connect::{
        aggregate::{ConnectAggregator, ConnectStats},
        diagnose::{
            PortsEvidence, dest_label, diagnose_connect_failures, diagnose_ports, group_usage,
            utilisation,
        },
    },
    kernel::env::Privileges,
    render::endpoint,
    snapshot::{container::Identities, netns, procs, sockdiag},
};

fn socket_inodes(pids: &HashSet<u32>) -> HashSet<u64> {
    let mut out = HashSet::new();
    for pid in pids {
        let Ok(p) = Process::new(*pid as i32) else {
            continue;
        };
        let Ok(fds) = p.fd() else { continue };
        for fd in fds.flatten() {
            if let FDTarget::Socket(inode) = fd.target {
                out.insert(inode);
            }
        }
    }
    out
}

pub fn run(args: PortsArgs) -> Result<i32> {
    let pid_filter = args.pid.as_deref().map(PidFilter::resolve).transpose()?;
    let dst = args.dst.as_deref().map(DstFilter::parse).transpose()?;
    let privileges = Privileges::current();
    let host_ns = netns::current().unwrap_or(0);

    // Trace first (root), then snapshot: TIME_WAIT is at its highest at the end.
    let mut traced: Option<ConnectAggregator> = None;
    let started = Instant::now();
    // Each connecting process's pod and container, resolved while it is alive.
    let mut ids = Identities::new();
    if privileges.can_load_bpf() && !args.duration.is_zero() {
        let session = ConnectSession::open()?;
        let mut agg = ConnectAggregator::new(50_000);
        session.run(
            Schedule::once(args.duration),
            || {
                eprintln!(
                    "tcpq: tracing connects for {:.0} s…",
                    args.duration.as_secs_f64()
                )
            },
            |o| {
                if pid_filter
                    .as_ref()
                    .is_some_and(|f| !f.matches(o.tgid, &o.comm))
                {
                    return;
                }
                if dst.is_some_and(|d| !d.matches(o.daddr, o.dport)) {
                    return;
                }
                agg.record(o);
                ids.get(o.tgid, &o.comm);
            },
            || {},
            |_, _| {},
        );
        traced = Some(agg);
    } else if !privileges.can_load_bpf() {
        eprintln!(
            "tcpq: snapshot only — connect() failures (EADDRNOTAVAIL), rates and connect() time need root: run with sudo"
        );
    }
    let duration_s = if traced.is_some() {
        started.elapsed().as_secs_f64()
    } else {
        0.0
    };

    // Namespaces to look at and the pids living in each.
    let mut by_ns: BTreeMap<u32, HashSet<u32>> = BTreeMap::new();
    let mut pids_seen: BTreeSet<u32> = BTreeSet::new();
    match &pid_filter {
        Some(f) => {
            let mut pids = f.pids.clone();
            if let Some(t) = &traced {
                pids.extend(t.by_key.keys().map(|k| k.tgid));
            }
            for pid in pids {
                if let Some(ns) = netns::of_pid(pid) {
                    by_ns.entry(ns).or_default().insert(pid);
                    pids_seen.insert(pid);
                }
            }
            if let Some(t) = &traced {
                for k in t.by_key.keys() {
                    by_ns.entry(k.netns).or_default();
                }
            }
        }
        None => {
            by_ns.entry(host_ns).or_default();
        }
    }

    let mut rows = Vec::new();
    for (ns, pids) in &by_ns {
        let ns = *ns;
        let snapshot = netns::run_in(
            ns,
            || -> Result<(Vec<sockdiag::DiagSocket>, PortSysctls)> {
                Ok((sockdiag::dump_tcp(StateFlags::all())?, read_port_sysctls()?))
            },
        );
        let (sockets, sysctls) = match snapshot {
            Ok(Ok(v)) => v,
            Ok(Err(e)) | Err(e) => {
                eprintln!(
                    "tcpq: skipping network namespace {ns}: {}",
                    crate::one_line(&e)
                );
                continue;
            }
        };
        let owned = socket_inodes(pids);
        let mut extra: BTreeSet<(IpAddr, u16)> = BTreeSet::new();
        if let Some(t) = &traced {
            for k in t.by_key.keys().filter(|k| k.netns == ns) {
                extra.insert((k.daddr, k.dport));
            }
        }
        let groups = group_usage(
            &sockets,
            &sysctls.range,
            &owned,
            &extra,
            pid_filter.is_none(),
        );
        let ns_prefix = netns::enter_prefix(ns, host_ns);
        // Connect failures are the destination's, whatever the source: on its first row only.
        let mut failures_said: BTreeSet<(Option<IpAddr>, u16)> = BTreeSet::new();
        for g in groups {
            if let (Some(d), Some(daddr)) = (&dst, g.daddr)
                && !d.matches(daddr, g.dport)
            {
                continue;
            }
            let stats: Option<ConnectStats> = traced.as_ref().and_then(|t| {
                let mut merged: Option<ConnectStats> = None;
                for (_, s) in t.by_key.iter().filter(|(k, _)| {
                    k.netns == ns && Some(k.daddr) == g.daddr && k.dport == g.dport
                }) {
                    match &mut merged {
                        Some(m) => m.merge(s),
                        None => merged = Some(s.clone()),
                    }
                }
                merged
            });
            let pid_list: Vec<u32> = traced
                .as_ref()
                .map(|t| {
                    t.by_key
                        .keys()
                        .filter(|k| k.netns == ns && Some(k.daddr) == g.daddr && k.dport == g.dport)
                        .map(|k| k.tgid)
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect()
                })
                .unwrap_or_default();
            let comm = stats.as_ref().map(|s| s.comm.clone());
            // The row's process: the lowest pid that connected there, else the lowest looked at.
            let first = pid_list.first().or(pids_seen.first()).copied();
            let id = first.map(|p| {
                let c = comm.clone().or_else(|| procs::comm(p)).unwrap_or_default();
                ids.get(p, &c)
            });
            let ev = PortsEvidence {
                usage: &g,
                range: &sysctls.range,
                tw_reuse: sysctls.tw_reuse,
                traced: stats.as_ref(),
                duration_s,
                ns_prefix: ns_prefix.clone(),
            };
            let mut findings = diagnose_ports(&ev);
            if let Some(st) = &stats
                && failures_said.insert((g.daddr, g.dport))
            {
                findings.extend(diagnose_connect_failures(st, &dest_label(g.daddr, g.dport)));
            }
            rows.push((ns, g, sysctls.clone(), stats, pid_list, comm, id, findings));
        }
    }

    let usable_of = |s: &PortSysctls| s.range.usable();
    if args.json {
        for (ns, g, sys, stats, pids, comm, id, findings) in &rows {
            let q = |h| {
                ConnectStats::quantiles(h)
                    .map(|(p50, p99, _)| json!({"p50_us": p50 / 1000, "p99_us": p99 / 1000}))
            };
            println!(
                "{}",
                json!({
                    "event": "ports",
                    "netns": ns,
                    "pids": if pids.is_empty() { json!(pids_seen) } else { json!(pids) },
                    "comm": comm,
                    "pod": id.as_ref().and_then(|i| i.pod.as_ref()),
                    "container": id.as_ref().and_then(|i| i.container.as_ref()),
                    "saddr": g.saddr.map(|a| a.to_string()),
                    "daddr": g.daddr.map(|a| a.to_string()),
                    "dport": g.dport,
                    "used": g.used(),
                    "usable": usable_of(sys),
                    "util": (utilisation(g.used(), usable_of(sys)) * 1000.0).round() / 10.0,
                    "states": g.states,
                    "owned": g.owned,
                    "range": [sys.range.lo, sys.range.hi],
                    "tcp_tw_reuse": sys.tw_reuse,
                    "connects": stats.as_ref().map(|s| s.attempts),
                    "connect_rate": stats.as_ref().map(|s| if duration_s > 0.0 { (s.attempts as f64 / duration_s * 10.0).round() / 10.0 } else { 0.0 }),
                    "eaddrnotavail": stats.as_ref().map(|s| s.count(crate::family::connect::decode::ConnectResult::Errno(99))),
                    "syscall": stats.as_ref().and_then(|s| q(&s.syscall_ns)),
                    "causes": findings,
                })
            );
        }
        println!(
            "{}",
            json!({"event": "ports_summary", "traced": traced.is_some(), "duration_s": (duration_s * 10.0).round() / 10.0, "destinations": rows.len()})
        );
    } else {
        println!(
            "NETNS       SOURCE           DESTINATION            USED/USABLE  UTIL   TIME_WAIT  ESTAB  SYN_SENT  CONNECTS/s  EADDRNOTAVAIL  CONNECT p50/p99  PIDS"
        );
        if rows.is_empty() {
            println!(
                "  (no outbound connections{})",
                if pid_filter.is_some() {
                    " from these processes"
                } else {
                    ""
                }
            );
        }
        for (ns, g, sys, stats, pids, comm, id, findings) in &rows {
            let q = stats
                .as_ref()
                .and_then(|s| ConnectStats::quantiles(&s.syscall_ns))
                .map(|(a, b, _)| format!("{:.0}µs/{:.0}µs", a as f64 / 1e3, b as f64 / 1e3))
                .unwrap_or_else(|| "-".into());
            let pid_s = if pids.is_empty() {
                pids_seen
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            } else {
                pids.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            println!(
                "{:<11} {:<16} {:<22} {:<12} {:<6} {:<10} {:<6} {:<9} {:<11} {:<14} {:<16} {}{}{}",
                ns,
                g.saddr.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
                g.daddr.map(|a| endpoint(a, g.dport)).unwrap_or_default(),
                format!("{}/{}", g.used(), usable_of(sys)),
                format!("{:.0}%", utilisation(g.used(), usable_of(sys)) * 100.0),
                g.state("TIME_WAIT"),
                g.state("ESTABLISHED"),
                g.state("SYN_SENT"),
                stats
                    .as_ref()
                    .map(|s| format!(
                        "{:.1}",
                        if duration_s > 0.0 {
                            s.attempts as f64 / duration_s
                        } else {
                            0.0
                        }
                    ))
                    .unwrap_or_else(|| "-".into()),
                stats
                    .as_ref()
                    .map(|s| s
                        .count(crate::family::connect::decode::ConnectResult::Errno(99))
                        .to_string())
                    .unwrap_or_else(|| "-".into()),
                q,
                pid_s,
                comm.as_ref().map(|c| format!(" ({c})")).unwrap_or_default(),
                id.as_ref().map(|i| i.suffix()).unwrap_or_default(),
            );
            println!(
                "    range {}–{} ({} usable) · tcp_tw_reuse {}",
                sys.range.lo,
                sys.range.hi,
                usable_of(sys),
                sys.tw_reuse
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "?".into())
            );
            for f in findings {
                println!("    cause {}: {}", f.cause, f.text);
                for fix in &f.fix {
                    println!("      fix: {fix}");
                }
            }
        }
        if traced.is_none() && privileges.can_load_bpf() {
            println!("(snapshot only: --duration 0)");
        }
    }
    Ok(0)
}
