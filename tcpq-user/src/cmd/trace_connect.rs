//! `tcpq trace connect`: every outbound connect outcome (result, source port, time in the
//! syscall, handshake latency, SYN retransmits), and the shared collector used by `tcpq ports`.

use anyhow::Result;
use serde_json::json;

use super::trace_out::{Budget, TraceOut, Windows};
use super::{
    connect_session::{ConnectSession, ConnectTotals},
    filter::{DstFilter, PidFilter},
};
use crate::{
    cli::TraceConnectArgs,
    family::connect::{
        aggregate::{ConnectAggregator, ConnectKey, ConnectStats},
        decode::ConnectOutcome,
    },
    render::{Clock, endpoint},
    snapshot::container::{Identities, Identity},
};

fn us(ns: Option<u64>) -> serde_json::Value {
    ns.map(|v| json!((v as f64 / 1000.0 * 10.0).round() / 10.0))
        .unwrap_or(serde_json::Value::Null)
}

fn fmt_ms(ns: Option<u64>) -> String {
    match ns {
        Some(v) if v >= 1_000_000 => format!("{:.1}ms", v as f64 / 1e6),
        Some(v) => format!("{:.0}µs", v as f64 / 1e3),
        None => "-".into(),
    }
}

pub fn outcome_json(clock: &Clock, o: &ConnectOutcome, id: &Identity) -> serde_json::Value {
    let cause = match o.result {
        crate::family::connect::decode::ConnectResult::Ok => serde_json::Value::Null,
        crate::family::connect::decode::ConnectResult::Errno(99) => json!("ports_exhausted"),
        _ => json!("connect_failures"),
    };
    json!({
        "ts": clock.rfc3339(o.ts_ns),
        "event": "connect",
        "count": 1,
        "netns": o.netns,
        "pid": o.tgid,
        "comm": o.comm,
        "pod": id.pod,
        "container": id.container,
        "saddr": o.saddr.to_string(),
        "sport": o.sport,
        "daddr": o.daddr.to_string(),
        "dport": o.dport,
        "result": o.result.id(),
        "cause": cause,
        "syscall_us": us(o.syscall_ns),
        "handshake_us": us(o.handshake_ns),
        "syn_retrans": o.syn_retrans,
    })
}

pub const CONNECT_HEADER: &str = "TIME             PID      COMM             NETNS       SOURCE                 DESTINATION            RESULT          SYSCALL   HANDSHAKE  RETRANS";

pub fn outcome_text(clock: &Clock, o: &ConnectOutcome, id: &Identity) -> String {
    format!(
        "{:<16} {:<8} {:<16} {:<11} {:<22} {:<22} {:<15} {:<9} {:<10} {}{}",
        clock.short(o.ts_ns),
        o.tgid,
        o.comm,
        o.netns,
        endpoint(o.saddr, o.sport),
        endpoint(o.daddr, o.dport),
        o.result.id(),
        fmt_ms(o.syscall_ns),
        fmt_ms(o.handshake_ns),
        o.syn_retrans,
        id.suffix()
    )
}

pub fn stats_json(
    key: &ConnectKey,
    s: &ConnectStats,
    duration_s: f64,
    id: &Identity,
) -> serde_json::Value {
    let q = |h| {
        ConnectStats::quantiles(h).map(|(p50, p99, max)| json!({"p50_us": p50 / 1000, "p99_us": p99 / 1000, "max_us": max / 1000}))
    };
    let results: serde_json::Map<String, serde_json::Value> =
        s.results.iter().map(|(r, n)| (r.id(), json!(n))).collect();
    json!({
        "netns": key.netns,
        "pid": key.tgid,
        "comm": s.comm,
        "pod": id.pod,
        "container": id.container,
        "daddr": key.daddr.to_string(),
        "dport": key.dport,
        "count": s.attempts,
        "rate_per_s": if duration_s > 0.0 { (s.attempts as f64 / duration_s * 10.0).round() / 10.0 } else { 0.0 },
        "results": results,
        "failures": s.failures(),
        "syscall": q(&s.syscall_ns),
        "handshake": q(&s.handshake_ns),
        "syn_retrans": s.syn_retrans,
    })
}

pub fn stats_text(key: &ConnectKey, s: &ConnectStats, duration_s: f64, id: &Identity) -> String {
    let results: Vec<String> = s
        .results
        .iter()
        .map(|(r, n)| format!("{} {n}", r.id()))
        .collect();
    let q = |h| {
        ConnectStats::quantiles(h)
            .map(|(p50, p99, _)| format!("p50 {} p99 {}", fmt_ms(Some(p50)), fmt_ms(Some(p99))))
            .unwrap_or_else(|| "-".into())
    };
    format!(
        "  {}/{}{} → {} netns {}: {} connects ({:.1}/s): {} · syscall {} · handshake {} · SYN retransmits {}",
        key.tgid,
        s.comm,
        id.text().map(|t| format!(" ({t})")).unwrap_or_default(),
        endpoint(key.daddr, key.dport),
        key.netns,
        s.attempts,
        if duration_s > 0.0 {
            s.attempts as f64 / duration_s
        } else {
            0.0
        },
        results.join(", "),
        q(&s.syscall_ns),
        q(&s.handshake_ns),
        s.syn_retrans
    )
}

/// What `trace connect` keeps between its events, ticks and summaries.
struct ConnectState {
    total: ConnectAggregator,
    window: ConnectAggregator,
    /// Each process's pod and container, resolved at its first connect.
    ids: Identities,
}

pub fn run(args: TraceConnectArgs) -> Result<()> {
    let pid_filter = args.pid.as_deref().map(PidFilter::resolve).transpose()?;
    let dst = args.dst.as_deref().map(DstFilter::parse).transpose()?;
    let session = ConnectSession::open()?;
    let clock = Clock::new();
    let out = TraceOut::stdout(args.out.json)?;
    let state = std::cell::RefCell::new(ConnectState {
        total: ConnectAggregator::new(20_000),
        window: ConnectAggregator::new(20_000),
        ids: Identities::new(),
    });
    let budget: Budget<ConnectKey, String> = Budget::new(args.out.lines_per_sec);
    let windows = Windows::start();
    let print_aggregates = |st: &mut ConnectState, lines: Vec<(u64, ConnectKey, String, u64)>| {
        for (second, k, result, n) in lines {
            let comm = st
                .total
                .by_key
                .get(&k)
                .map(|s| s.comm.clone())
                .unwrap_or_default();
            let id = st.ids.get(k.tgid, &comm);
            if args.out.json {
                let cause = match result.as_str() {
                    "ok" => serde_json::Value::Null,
                    "EADDRNOTAVAIL" => json!("ports_exhausted"),
                    _ => json!("connect_failures"),
                };
                out.emit(json!({"ts": clock.rfc3339(second * 1_000_000_000), "event": "connect", "aggregated": true, "count": n, "netns": k.netns, "pid": k.tgid, "comm": comm, "pod": id.pod, "container": id.container, "daddr": k.daddr.to_string(), "dport": k.dport, "result": result, "cause": cause}).to_string());
            } else {
                out.emit(format!(
                    "{:<16} {:<8} {:<16} {:<11} {:<22} {:<22} {}×{n} in this second{}",
                    format!(
                        "{} +1s",
                        clock.short(second * 1_000_000_000).get(..8).unwrap_or("")
                    ),
                    k.tgid,
                    comm,
                    k.netns,
                    "",
                    endpoint(k.daddr, k.dport),
                    result,
                    id.suffix()
                ));
            }
        }
    };
    let on_event = |o: &ConnectOutcome| {
        if let Some(f) = &pid_filter
            && !f.matches(o.tgid, &o.comm)
        {
            return;
        }
        if let Some(d) = &dst
            && !d.matches(o.daddr, o.dport)
        {
            return;
        }
        if args.failed && !o.result.is_failure() {
            return;
        }
        let mut st = state.borrow_mut();
        st.total.record(o);
        st.window.record(o);
        let id = st.ids.get(o.tgid, &o.comm);
        let key = ConnectKey::of(o);
        let (flushed, print) = budget.admit(o.ts_ns, &key, &o.result.id());
        print_aggregates(&mut st, flushed);
        if print {
            if args.out.json {
                out.emit(outcome_json(&clock, o, &id).to_string());
            } else {
                out.header_once(CONNECT_HEADER);
                out.emit(outcome_text(&clock, o, &id));
            }
        }
    };
    let on_tick = || {
        print_aggregates(&mut state.borrow_mut(), budget.due());
        out.flush();
    };
    let on_summary = |t: &ConnectTotals, final_run: bool| {
        let mut guard = state.borrow_mut();
        let st = &mut *guard;
        print_aggregates(st, budget.at_summary(final_run));
        let dur = windows.seconds(final_run);
        let a = if final_run { &st.total } else { &st.window };
        if args.out.json {
            let rows: Vec<_> = a
                .ranked()
                .into_iter()
                .map(|(k, s)| stats_json(k, s, dur, &st.ids.get(k.tgid, &s.comm)))
                .collect();
            out.emit(json!({"ts": clock.rfc3339(Clock::now_mono_ns()), "event": "connect_summary", "duration_s": (dur * 10.0).round() / 10.0, "lost_events": t.lost, "missed_runs": t.missed_runs, "kernel_counts": t.json(), "destinations": rows}).to_string());
        } else {
            out.emit(format!(
                "── connect summary over {dur:.1} s ── kernel counted: ok {}, refused {}, timeout {}, EADDRNOTAVAIL {}, other {}, SYN retransmits {} ── lost events: {}, missed runs: {}",
                t.ok,
                t.refused,
                t.timeout,
                t.eaddrnotavail,
                t.other,
                t.syn_retrans,
                t.lost,
                t.missed_runs
            ));
            for (k, s) in a.ranked() {
                out.emit(stats_text(k, s, dur, &st.ids.get(k.tgid, &s.comm)));
            }
        }
        if !final_run {
            st.window.clear();
            windows.next();
        }
        out.flush();
    };
    let hooks = session.hooks_line();
    let ready = || {
        eprintln!(
            "tcpq: tracing connects{}{}{} — hooks: {hooks} — Ctrl-C to stop",
            args.pid
                .as_ref()
                .map(|p| format!(" of {p}"))
                .unwrap_or_default(),
            args.dst
                .as_ref()
                .map(|d| format!(" to {d}"))
                .unwrap_or_default(),
            if args.failed { " (failures only)" } else { "" },
        )
    };
    session.run(&args.out, ready, on_event, on_tick, on_summary);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dst_filters() {
        let d = DstFilter::parse("127.0.0.1:9000").unwrap();
        assert!(d.matches("127.0.0.1".parse().unwrap(), 9000));
        assert!(!d.matches("127.0.0.1".parse().unwrap(), 9001));
        let d = DstFilter::parse("::1").unwrap();
        assert!(d.matches("::1".parse().unwrap(), 1));
        let d = DstFilter::parse("[::1]:80").unwrap();
        assert_eq!(d.port, Some(80));
        for bad in ["", "localhost", "1.2.3.4:99999", "::1:80:x"] {
            assert!(DstFilter::parse(bad).is_err(), "{bad}");
        }
    }
    #[test]
    fn lines_name_the_pod_and_container_of_the_process() {
        let clock = Clock::fixed(0);
        let o = ConnectOutcome {
            ts_ns: 1_000_000_000,
            netns: 4026531840,
            tgid: 4242,
            comm: "php-fpm".into(),
            saddr: "10.0.0.2".parse().unwrap(),
            sport: 40001,
            daddr: "10.0.0.9".parse().unwrap(),
            dport: 5432,
            result: crate::family::connect::decode::ConnectResult::Refused,
            syscall_ns: Some(20_000),
            handshake_ns: Some(90_000),
            syn_retrans: 0,
        };
        let pod = Identity::new(Some("shop/checkout-7d9f".into()), Some("php-fpm".into()));
        let v = outcome_json(&clock, &o, &pod);
        assert_eq!(v["pod"], "shop/checkout-7d9f");
        assert_eq!(v["container"], "php-fpm");
        assert_eq!(v["pid"], 4242);
        let t = outcome_text(&clock, &o, &pod);
        assert!(
            t.ends_with("  pod shop/checkout-7d9f, container php-fpm"),
            "{t}"
        );
        // On the host: null, and the text line is as before.
        let host = Identity::default();
        let v = outcome_json(&clock, &o, &host);
        assert!(v["pod"].is_null() && v["container"].is_null(), "{v}");
        assert!(v.as_object().unwrap().contains_key("pod"));
        assert!(!outcome_text(&clock, &o, &host).contains("pod"));
        // Summary rows.
        let mut agg = ConnectAggregator::new(10);
        agg.record(&o);
        let (k, st) = agg.ranked().into_iter().next().unwrap();
        let row = stats_json(k, st, 1.0, &pod);
        assert_eq!(row["pod"], "shop/checkout-7d9f");
        assert_eq!(row["container"], "php-fpm");
        assert!(stats_json(k, st, 1.0, &host)["pod"].is_null());
        let line = stats_text(k, st, 1.0, &pod);
        assert!(
            line.starts_with(
                "  4242/php-fpm (pod shop/checkout-7d9f, container php-fpm) → 10.0.0.9:5432"
            ),
            "{line}"
        );
    }
}
