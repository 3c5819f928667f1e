//! `tcpq sockets [--pid PID|NAME] [--idle S] [--json]`: per process states, stale ESTABLISHED,
//! CLOSE_WAIT with their descriptors, TIME_WAIT by remote. sock_diag + /proc, no eBPF: works
//! without root for the processes the user may inspect.
use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use anyhow::Result;
use netlink_packet_sock_diag::inet::StateFlags;
use procfs::process::{FDTarget, Process};
use serde_json::json;

use crate::{
    cli::SocketsArgs,
    diagnosis::owner::app_of_owners,
    family::sockets::{
        aggregate::{CloseWaitSeen, analyse, time_wait_by_remote},
        diagnose::diagnose_sockets,
    },
    snapshot::{container::Identities, netns, procs, sockdiag},
};

/// How long `sockets` waits before looking again at the CLOSE_WAIT sockets it found.
const CLOSE_WAIT_RECHECK: Duration = Duration::from_secs(2);

/// A process and its socket inodes → descriptor numbers.
type ProcessFds = (procs::Owner, HashMap<u64, Vec<u32>>);

pub fn run(args: SocketsArgs) -> Result<i32> {
    let idle = args.idle.idle;
    let targets: Vec<procs::Owner> = match &args.pid {
        Some(p) => procs::resolve_pid_arg(p)?,
        None => procfs::process::all_processes()
            .map(|it| {
                it.flatten()
                    .map(|p| procs::Owner {
                        pid: p.pid as u32,
                        comm: procs::comm(p.pid as u32).unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    };
    let idle_ms = idle.as_millis().min(u32::MAX as u128) as u32;
    // inode → fds, per process; processes grouped by network namespace.
    let mut by_ns: BTreeMap<u32, Vec<ProcessFds>> = BTreeMap::new();
    let mut skipped = 0;
    for t in targets {
        let Ok(p) = Process::new(t.pid as i32) else {
            continue;
        };
        let Ok(fds) = p.fd() else {
            skipped += 1;
            continue;
        };
        let mut owned: HashMap<u64, Vec<u32>> = HashMap::new();
        for fd in fds.flatten() {
            if let FDTarget::Socket(inode) = fd.target {
                owned.entry(inode).or_default().push(fd.fd as u32);
            }
        }
        if owned.is_empty() {
            continue;
        }
        // Sockets live in the namespace they were created in: look in every namespace the
        // process's threads use.
        for ns in netns::of_pid_threads(t.pid) {
            by_ns
                .entry(ns)
                .or_default()
                .push((t.clone(), owned.clone()));
        }
    }
    if skipped > 0 && args.pid.is_some() {
        eprintln!(
            "tcpq: {skipped} process(es) could not be inspected (not yours): run with sudo to see them"
        );
    }
    let dump_all = || -> BTreeMap<u32, Vec<sockdiag::DiagSocket>> {
        by_ns
            .keys()
            .filter_map(|&ns| {
                match netns::run_in(ns, || sockdiag::dump_tcp_with_info(StateFlags::all())) {
                    Ok(Ok(s)) => Some((ns, s)),
                    _ => None,
                }
            })
            .collect()
    };
    // A CLOSE_WAIT seen once may be a worker about to close it: look again after a while, and
    // only those still there are leaks.
    let mut dumps = dump_all();
    let first_cw: std::collections::HashSet<u64> = dumps
        .values()
        .flatten()
        .filter(|s| s.state == 8)
        .map(|s| s.cookie)
        .collect();
    let earlier = CloseWaitSeen {
        cookies: first_cw,
        ago_s: CLOSE_WAIT_RECHECK.as_secs_f64(),
    };
    if !earlier.cookies.is_empty() {
        std::thread::sleep(CLOSE_WAIT_RECHECK);
        dumps = dump_all();
    }
    let mut printed = 0;
    let mut ids = Identities::new();
    for (ns, procs_in_ns) in by_ns {
        let Some(sockets) = dumps.remove(&ns) else {
            continue;
        };
        for (owner, owned) in &procs_in_ns {
            let p = analyse(owner.pid, &owner.comm, ns, &sockets, owned, idle_ms);
            if p.states.is_empty() {
                continue;
            }
            let limit = procs::nofile_limit(owner.pid);
            let app = app_of_owners(std::slice::from_ref(owner));
            let findings = diagnose_sockets(
                &p,
                idle.as_secs_f64(),
                limit,
                app.client_timeout_setting(),
                &earlier,
            );
            if args.pid.is_none() && findings.is_empty() {
                continue; // all processes: only the ones with something to say
            }
            printed += 1;
            let id = ids.get(p.pid, &p.comm);
            if args.json {
                println!(
                    "{}",
                    json!({"event": "sockets", "pid": p.pid, "comm": p.comm, "pod": id.pod, "container": id.container, "netns": ns, "states": p.states, "idle_established": p.idle_established, "idle_accepted": p.idle_accepted,
                        "close_wait": {"count": p.close_wait, "fds": p.close_wait_fds, "remotes": p.close_wait_remotes, "lasting": earlier.lasting(&p).len(), "lasted_s": earlier.ago_s}, "nofile_limit": limit, "causes": findings})
                );
            } else {
                let states: Vec<String> =
                    p.states.iter().map(|(s, n)| format!("{s} {n}")).collect();
                println!(
                    "{}/{} netns {}: {}{}",
                    p.pid,
                    p.comm,
                    ns,
                    states.join(", "),
                    id.text().map(|t| format!(" · {t}")).unwrap_or_default()
                );
                for g in &p.idle_established {
                    println!(
                        "  idle ESTABLISHED → {}:{}: {} ({} awaiting an answer; max idle {:.0} s, sent {} B, received {} B)",
                        g.raddr,
                        g.rport,
                        g.count,
                        g.awaiting_reply,
                        g.max_idle_s,
                        g.bytes_sent,
                        g.bytes_received
                    );
                }
                for g in &p.idle_accepted {
                    println!(
                        "  idle accepted on :{}: {} (max idle {:.0} s; clients keeping connections open, not stale upstreams)",
                        g.lport, g.count, g.max_idle_s
                    );
                }
                if p.close_wait > 0 {
                    println!(
                        "  CLOSE_WAIT: {} ({} held for {:.0} s; fds {:?}) from {:?}",
                        p.close_wait,
                        earlier.lasting(&p).len(),
                        earlier.ago_s,
                        p.close_wait_fds,
                        p.close_wait_remotes
                    );
                }
                for f in findings {
                    println!("  cause {}: {}", f.cause, f.text);
                    for fix in f.fix {
                        println!("    fix: {fix}");
                    }
                }
            }
        }
        let tw = time_wait_by_remote(&sockets, 5);
        if !tw.is_empty() {
            if args.json {
                println!(
                    "{}",
                    json!({"event": "time_wait", "netns": ns, "by_remote": tw})
                );
            } else {
                let parts: Vec<String> = tw.iter().map(|(r, n)| format!("{r} {n}")).collect();
                println!("netns {ns}: TIME_WAIT by remote: {}", parts.join(", "));
            }
        }
    }
    if printed == 0 && !args.json {
        println!(
            "no stale ESTABLISHED or CLOSE_WAIT sockets found{}",
            if args.pid.is_some() {
                " for these processes"
            } else {
                ""
            }
        );
    }
    Ok(0)
}
