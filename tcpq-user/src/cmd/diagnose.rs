//! `tcpq diagnose [--duration 10s] [--json] [--fail-on-cause]`: every hook family at once for
//! the duration, then one report: causes ranked by impact, each with its evidence and fix, and
//! what was checked when nothing fired.
use std::{
    collections::BTreeSet,
    fmt::Write as _,
    io::IsTerminal as _,
    time::{Duration, Instant},
};

use anyhow::Result;
use serde_json::{Value, json};

use crate::{
    cli::{DiagnoseArgs, HooksMode},
    event_loop::{self, Every},
    family::sockets::aggregate::CloseWaitSeen,
    live::{
        causes::{find_causes, scan_sockets},
        session::Session,
    },
    stop,
};

const SECOND: Duration = Duration::from_secs(1);
/// How often the rings are drained during the run.
const DRAIN_EVERY: Duration = Duration::from_millis(10);

pub fn run(args: DiagnoseArgs) -> Result<i32> {
    // Every program from the first second by default: a bounded report wants every detail.
    let live = super::live_options(&args.tiers, HooksMode::All);
    // ESTABLISHED connections idle this long are stale (`--idle`, as in `tcpq sockets`).
    let idle = args.idle.idle;
    let mut session = Session::start(live)?;
    stop::install();
    stop::watch_terminal();
    // TCPQ_BPF_STATS=1 (the session enables the kernel's run-time stats): report ns per run;
    // `cargo xtask bench` uses it.
    let stats = session.stats_fd.is_some();
    if stats {
        // The floor next to the hooks' costs: an empty program on inet_sock_set_state. Best
        // effort: the report simply lacks the row if the kernel refuses it.
        let _ = crate::kernel::probe::attach_floor_probe(&mut session.loaded.ebpf);
    }
    // CLOSE_WAIT sockets before the banner (the run starts there): those still there at the end have lasted the whole run (a leak);
    // newer ones may be a busy worker about to close them.
    let close_wait_start = CloseWaitSeen::of(&scan_sockets(idle), 0.0).cookies;
    let tty = std::io::stderr().is_terminal();
    eprintln!(
        "tcpq: diagnosing for {:.0} s ({})…",
        args.duration.as_secs_f64(),
        crate::live::session::describe_tiers(&live)
    );
    let started = Instant::now();
    let mut second = Every::new(started + SECOND, SECOND);
    event_loop::run_until(
        Some(started + args.duration),
        |now| {
            session.drain();
            session.poll(false);
            if second.fire(now) {
                session.sample_acceptors();
                session.sample_limits();
                if tty {
                    let secs = started.elapsed().as_secs();
                    eprint!("\r  collecting… {secs}/{} s", args.duration.as_secs());
                }
            }
            // Every hook family at once fills the rings fast (a storm): drained at 100 Hz.
            (now + DRAIN_EVERY).min(second.due())
        },
        |timeout| {
            event_loop::sleep(timeout);
            true
        },
    );
    session.drain();
    // The counters at the end of the run (tier 0), for the evidence.
    session.poll(true);
    if tty {
        eprintln!();
    }
    let duration_s = started.elapsed().as_secs_f64();
    let lost = session.lost().total();
    let agg = session.take();
    let host = session.host;
    let earlier = CloseWaitSeen {
        cookies: close_wait_start,
        ago_s: duration_s,
    };
    let causes = find_causes(
        &agg,
        &mut session.dir,
        host,
        duration_s,
        Some((idle, &earlier)),
        None,
    );
    let (overflow, connects, drops, accepts) =
        (&agg.overflow, &agg.connects, &agg.drops, &agg.accepts);
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
        format!(
            "connections a process accepted and closed unread, resetting them (TCPAbortOnClose; {} process/port pair(s))",
            agg.aborts.len()
        ),
        format!(
            "stale ESTABLISHED (no data for {} s) and CLOSE_WAIT sockets (held the whole run) of every process",
            idle.as_secs_f64()
        ),
    ];
    // Tier 0: each listener's exact refusals over the run (sk_drops), traced or not.
    let refused_json: Vec<Value> = agg
        .tier0_listeners
        .iter()
        .filter(|(_, t)| t.refused_interval > 0)
        .map(|(id, t)| {
            json!({"netns": id.netns, "laddr": id.laddr.to_string(), "lport": id.lport,
                   "refused": t.refused_interval, "queue": t.queue, "backlog": t.backlog})
        })
        .collect();
    let program_stats: Vec<Value> = if stats {
        session
            .loaded
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
    // The report goes out through the output thread: a reader that does not read it (a full
    // pipe, a stopped terminal) holds tcpq only until a stop.
    let mut report_text = String::new();
    if args.json {
        let list: Vec<Value> = causes.iter().map(|c| c.to_json()).collect();
        let mut report = json!({"duration_s": (duration_s * 10.0).round() / 10.0, "causes": list, "checked": checked, "lost_events": lost, "families": agg.families, "listeners_refused": refused_json});
        if !program_stats.is_empty() {
            report["program_stats"] = json!(program_stats);
        }
        let _ = writeln!(report_text, "{report}");
    } else {
        let _ = writeln!(
            report_text,
            "tcpq diagnose — {duration_s:.1} s, lost events: {lost}"
        );
        for f in &agg.families {
            let _ = writeln!(
                report_text,
                "  {} family: {} ({})",
                f.family, f.state, f.why
            );
        }
        if causes.is_empty() {
            let _ = writeln!(report_text, "no problem found. Checked:");
            for c in &checked {
                let _ = writeln!(report_text, "  · {c}");
            }
        }
        for (i, c) in causes.iter().enumerate() {
            let _ = writeln!(
                report_text,
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
                let _ = writeln!(report_text, "     fix: {f}");
            }
        }
    }
    let mut out = crate::outbox::Outbox::stdout(1)?;
    out.send(report_text);
    out.finish_unless_stopped();
    drop(session);
    Ok(if args.fail_on_cause && !causes.is_empty() {
        1
    } else {
        0
    })
}
