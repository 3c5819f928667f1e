//! `tcpq trace accept`: every accepted connection with its accept-queue wait, accept() errors,
//! and per listener: wait p50/p99, accept rate, errors, processes sharing it and how many sit
//! idle in accept(), with the verdict.
use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use anyhow::Result;
use aya::maps::{Array as BpfArray, MapData};
use serde_json::json;
use tcpq_common::{InAccept, names};

use super::filter::PidFilter;
use super::trace_out::{Budget, TraceOut, Windows};
use crate::{
    cli::TraceAcceptArgs,
    diagnosis::owner::app_of_owners,
    family::accept::{
        aggregate::AcceptStats,
        decode::{Accepted, decode_accept},
        diagnose::{AcceptEvidence, diagnose_accept},
    },
    kernel::probe::{self, Family, LoadOptions},
    render::{Clock, endpoint},
    snapshot::{
        container::{Identities, Identity},
        listeners::ListenerDirectory,
        procs,
    },
};

type ListenerId = (u32, IpAddr, u16);

/// Threads blocked in accept() for more than 50 ms, per (tgid, listening fd). The map is an
/// array of one slot per thread id (a walk of its 65,536 slots, once per summary).
fn idle_acceptors(map: &BpfArray<MapData, InAccept>) -> HashMap<(u32, u32), u64> {
    let now = Clock::now_mono_ns();
    let mut out: HashMap<(u32, u32), u64> = HashMap::new();
    for v in map.iter().flatten() {
        if v.pid_tgid != 0 && now.saturating_sub(v.ts_ns) > 50_000_000 {
            *out.entry(((v.pid_tgid >> 32) as u32, v.fd)).or_insert(0) += 1;
        }
    }
    out
}

/// `result` and the queue wait of an accept() as lines show them.
fn result_and_wait(e: &Accepted) -> (String, Option<u64>) {
    match e.result {
        Ok(w) => ("ok".to_string(), w),
        Err(errno) => (crate::wire::errno_name(errno), None),
    }
}

/// One accepted connection (or accept() error) as NDJSON.
pub fn accepted_json(clock: &Clock, e: &Accepted, id: &Identity) -> serde_json::Value {
    let (result, wait) = result_and_wait(e);
    json!({"ts": clock.rfc3339(e.ts_ns), "event": "accept", "count": 1, "netns": e.netns, "laddr": e.laddr.to_string(), "lport": e.lport,
        "raddr": e.raddr.to_string(), "rport": e.rport, "pid": e.tgid, "comm": e.comm, "pod": id.pod, "container": id.container,
        "result": result, "wait_us": wait.map(|w| w / 1000)})
}

pub const ACCEPT_HEADER: &str = "TIME             NETNS       LISTENER               CLIENT                 ACCEPTOR              RESULT     QUEUE WAIT";

/// One accepted connection as a text line (the acceptor's pod and container at the end).
pub fn accepted_text(clock: &Clock, e: &Accepted, id: &Identity) -> String {
    let (result, wait) = result_and_wait(e);
    format!(
        "{:<16} {:<11} {:<22} {:<22} {:<21} {:<10} {}{}",
        clock.short(e.ts_ns),
        e.netns,
        endpoint(e.laddr, e.lport),
        endpoint(e.raddr, e.rport),
        format!("{}/{}", e.tgid, e.comm),
        result,
        wait.map(|w| format!("{:.1} ms", w as f64 / 1e6))
            .unwrap_or_else(|| "-".into()),
        id.suffix()
    )
}

/// What `trace accept` keeps between its records and summaries.
#[derive(Default)]
struct AcceptState {
    total: BTreeMap<ListenerId, AcceptStats>,
    window: BTreeMap<ListenerId, AcceptStats>,
    /// Which (tgid, fd) pairs accept on each listener (for idle acceptors).
    fds: HashMap<ListenerId, HashSet<(u32, u32)>>,
    dir: ListenerDirectory,
    /// Each acceptor's pod and container, resolved at its first accept.
    ids: Identities,
}

pub fn run(args: TraceAcceptArgs) -> Result<()> {
    let pid_filter = args.pid.as_deref().map(PidFilter::resolve).transpose()?;
    // Resets on close are read by the live commands (connection_limit), not here.
    let opts = LoadOptions {
        unused: &[tcpq_common::names::PROG_ABORT_CLOSE],
        ..LoadOptions::default()
    };
    let mut loaded = probe::load(&[Family::Accept], &opts)?;
    let ring = loaded.take_ring(names::ACCEPT_EVENTS)?;
    let lost_map = loaded.take_per_cpu_counters(names::RING_LOST)?;
    let in_accept: BpfArray<MapData, InAccept> = BpfArray::try_from(
        loaded
            .ebpf
            .take_map(names::IN_ACCEPT)
            .ok_or_else(|| anyhow::anyhow!("kernel object has no map {}", names::IN_ACCEPT))?,
    )?;
    let clock = Clock::new();
    let out = TraceOut::stdout(args.out.json)?;
    let state = RefCell::new(AcceptState::default());
    let budget: Budget<ListenerId, &'static str> = Budget::new(args.out.lines_per_sec);
    let windows = Windows::start();
    let print_aggregates = |lines: Vec<(u64, ListenerId, &'static str, u64)>| {
        for (second, (ns, laddr, lport), what, n) in lines {
            if args.out.json {
                out.emit(json!({"ts": clock.rfc3339(second * 1_000_000_000), "event": "accept", "aggregated": true, "result": what, "count": n, "netns": ns, "laddr": laddr.to_string(), "lport": lport}).to_string());
            } else {
                out.emit(format!(
                    "{} +1s  {ns}  {}  {what}×{n}",
                    clock.short(second * 1_000_000_000).get(..8).unwrap_or(""),
                    endpoint(laddr, lport)
                ));
            }
        }
    };
    let on_record = |bytes: &[u8]| {
        let Ok(e): Result<Accepted, _> = decode_accept(bytes) else {
            return;
        };
        if args.port.is_some_and(|p| p != e.lport) {
            return;
        }
        if pid_filter
            .as_ref()
            .is_some_and(|f| !f.matches(e.tgid, &e.comm))
        {
            return;
        }
        let id: ListenerId = (e.netns, e.laddr, e.lport);
        let mut st = state.borrow_mut();
        st.total.entry(id).or_default().record(&e);
        st.window.entry(id).or_default().record(&e);
        st.fds.entry(id).or_default().insert((e.tgid, e.listen_fd));
        let what = if e.result.is_ok() { "ok" } else { "error" };
        let (flushed, print) = budget.admit(e.ts_ns, &id, &what);
        print_aggregates(flushed);
        if !print {
            return;
        }
        let id = st.ids.get(e.tgid, &e.comm);
        if args.out.json {
            out.emit(accepted_json(&clock, &e, &id).to_string());
        } else {
            out.header_once(ACCEPT_HEADER);
            out.emit(accepted_text(&clock, &e, &id));
        }
    };
    let on_tick = || {
        print_aggregates(budget.due());
        out.flush();
    };
    let on_summary = |final_run: bool| {
        print_aggregates(budget.at_summary(final_run));
        // The array walk (65,536 slots) only when a listener's holders are unknown.
        let mut idle_now: Option<HashMap<(u32, u32), u64>> = None;
        let lost = crate::kernel::probe::sum_per_cpu(&lost_map, tcpq_common::lost::ACCEPT);
        let missed = loaded.missed_runs();
        let dur = windows.seconds(final_run);
        let mut st = state.borrow_mut();
        let stats = if final_run {
            st.total.clone()
        } else {
            st.window.clone()
        };
        for ((ns, laddr, lport), s) in &stats {
            let info = st.dir.lookup(*ns, 0, *laddr, *lport);
            let holders: Vec<procs::Owner> =
                info.as_ref().map(|i| i.owners.clone()).unwrap_or_default();
            // Idle acceptors: threads of the holders sitting in accept() on this socket right now
            // (/proc/PID/task/TID/syscall; also sees threads blocked since before tcpq started),
            // else what the accept hooks saw.
            let idle: Option<u64> = match info.as_ref() {
                Some(i) if !holders.is_empty() => Some(
                    holders
                        .iter()
                        .map(|o| procs::threads_in_accept(o.pid, i.inode))
                        .sum(),
                ),
                _ => {
                    let pairs = st
                        .fds
                        .get(&(*ns, *laddr, *lport))
                        .cloned()
                        .unwrap_or_default();
                    (!pairs.is_empty()).then(|| {
                        let idle = idle_now.get_or_insert_with(|| idle_acceptors(&in_accept));
                        pairs
                            .iter()
                            .map(|p| idle.get(p).copied().unwrap_or(0))
                            .sum()
                    })
                }
            };
            let nofile = s
                .errors
                .contains_key("EMFILE")
                .then(|| {
                    s.acceptors
                        .keys()
                        .find_map(|p| procs::nofile_limit(*p).map(|l| (*p, l)))
                })
                .flatten();
            let ev = AcceptEvidence {
                lport: *lport,
                duration_s: dur,
                accepts: s.accepts,
                wait: s.wait_quantiles(),
                errors: s.errors.clone(),
                holders: holders.clone(),
                idle_acceptors: idle,
                nofile,
                app: app_of_owners(&holders),
                slow: s.slow,
                // Not watched by tier 0 here: the wait alone decides, as before.
                pressure: None,
            };
            let findings = diagnose_accept(&ev);
            let q = s.wait_quantiles();
            if args.out.json {
                out.emit(json!({"ts": clock.rfc3339(Clock::now_mono_ns()), "event": "accept_summary", "duration_s": (dur * 10.0).round() / 10.0, "netns": ns, "laddr": laddr.to_string(), "lport": lport,
                    "count": s.accepts, "rate_per_s": if dur > 0.0 { (s.accepts as f64 / dur * 10.0).round() / 10.0 } else { 0.0 },
                    "wait": q.map(|(a, b, c)| json!({"p50_us": a / 1000, "p99_us": b / 1000, "max_us": c / 1000})), "errors": s.errors,
                    "acceptors": s.acceptors.keys().collect::<Vec<_>>(), "holders": holders.iter().map(|o| o.pid).collect::<Vec<_>>(), "idle_acceptors": idle,
                    "lost_events": lost, "missed_runs": missed, "causes": findings}).to_string());
            } else {
                out.emit(format!(
                    "── accept summary over {dur:.1} s ── {} netns {ns}: {} accepted ({:.1}/s), wait {}, errors {:?}, {} holders, idle in accept {}, lost events {lost}, missed runs {missed}",
                    endpoint(*laddr, *lport),
                    s.accepts,
                    if dur > 0.0 {
                        s.accepts as f64 / dur
                    } else {
                        0.0
                    },
                    q.map(|(a, b, _)| format!(
                        "p50 {:.1} ms p99 {:.1} ms",
                        a as f64 / 1e6,
                        b as f64 / 1e6
                    ))
                    .unwrap_or_else(|| "-".into()),
                    s.errors,
                    holders.len(),
                    idle.map(|v| v.to_string()).unwrap_or_else(|| "?".into())
                ));
                out.causes(findings);
            }
        }
        if !final_run {
            st.window.clear();
            windows.next();
        }
        out.flush();
    };
    let banner =
        || eprintln!("tcpq: tracing accepted connections and accept-queue waits — Ctrl-C to stop");
    let handlers = super::ring::Handlers::new(on_record, on_tick, on_summary);
    super::ring::run(ring, &args.out, banner, handlers);
    drop(loaded);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_the_pod_and_container_of_the_acceptor() {
        let clock = Clock::fixed(0);
        let e = Accepted {
            ts_ns: 1_000_000_000,
            netns: 4026531840,
            tgid: 77,
            comm: "nginx".into(),
            laddr: "0.0.0.0".parse().unwrap(),
            lport: 80,
            raddr: "10.0.0.3".parse().unwrap(),
            rport: 50000,
            listen_fd: 6,
            result: Ok(Some(2_000_000)),
        };
        let pod = Identity::new(Some("web/front-1".into()), Some("nginx".into()));
        let v = accepted_json(&clock, &e, &pod);
        assert_eq!(
            (v["pod"].as_str(), v["container"].as_str()),
            (Some("web/front-1"), Some("nginx"))
        );
        assert_eq!(
            (v["pid"].as_u64(), v["wait_us"].as_u64()),
            (Some(77), Some(2000))
        );
        let t = accepted_text(&clock, &e, &pod);
        assert!(
            t.ends_with("2.0 ms  pod web/front-1, container nginx"),
            "{t}"
        );
        let host = Identity::default();
        let v = accepted_json(&clock, &e, &host);
        assert!(v["pod"].is_null() && v["container"].is_null(), "{v}");
        assert!(accepted_text(&clock, &e, &host).ends_with("2.0 ms"));
        let failed = Accepted {
            result: Err(24),
            ..e
        };
        assert_eq!(accepted_json(&clock, &failed, &host)["result"], "EMFILE");
    }
}
