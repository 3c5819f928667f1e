//! The listen path against the kernel's own counters (root; real programs; network namespaces).
use tcpq_tests::*;

const OVERFLOWS: &str = "TcpExt:ListenOverflows";

#[test]
fn accept_queue_overflow_syn_and_ack_match_listen_overflows() {
    if skip_unless_root("accept_queue_overflow") {
        return;
    }
    let run = OverflowRun::new("ovf", 4);
    let (inode, lines, counts) = (run.inode, &run.lines, &run.counts);
    assert!(
        counts.get("syn").copied().unwrap_or(0) > 0,
        "SYN drops seen: {counts:?}"
    );

    // Every event names the lab's server process, its port and the client.
    let pid = run.facts["pid"].as_u64().unwrap();
    let events: Vec<_> = lines
        .iter()
        .filter(|v| v["netns"].as_u64() == Some(inode) && v["event"] == "overflow")
        .collect();
    assert!(!events.is_empty());
    for e in &events {
        assert_eq!(e["lport"], 8080, "{e}");
        assert_eq!(e["laddr"], "127.0.0.1", "{e}");
        assert_eq!(e["pid"].as_u64(), Some(pid), "listener owner: {e}");
        assert_eq!(e["comm"], "tcpq-lab", "{e}");
        assert_eq!(e["backlog"], 4, "{e}");
        // Per-event lines name the client; aggregated ones (even of a single event left in
        // the window) have no client.
        if e["aggregated"] != true {
            assert_eq!(e["count"], 1, "{e}");
            assert_eq!(e["raddr"], "127.0.0.1", "{e}");
            assert!(e["rport"].as_u64().unwrap() > 1024, "{e}");
        }
        for k in [
            "ts", "event", "kind", "count", "netns", "laddr", "lport", "raddr", "rport", "pid",
            "comm", "backlog", "queue",
        ] {
            assert!(e.get(k).is_some(), "field {k} in {e}");
        }
    }

    // The summary names the cause and the application's backlog (seen at listen()).
    let s = listener_summary(final_summary(lines), inode);
    assert_eq!(s["pid"].as_u64(), Some(pid));
    assert_eq!(s["listen_arg"], 4);
    assert_eq!(s["listen_arg_source"], "seen");
    let c = causes(s);
    assert_eq!(c[0], "accept_queue_full", "{c:?}");
    let text = s["causes"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("the application's backlog is the limit"),
        "{text}"
    );
    assert!(
        s["causes"][0]["fix"][0]
            .as_str()
            .unwrap()
            .contains("backlog="),
        "{s}"
    );
    assert!(
        s["accepts"].as_u64().unwrap() > 0,
        "accept rate measured: {s}"
    );
}

/// A listener with a larger backlog: while its queues are far below their limits its SYNs and
/// ACKs are not followed through (the cheap path), and the counts stay exact once they fill.
#[test]
fn large_backlog_overflow_is_exact_across_the_far_from_limits_shortcut() {
    if skip_unless_root("large_backlog_overflow") {
        return;
    }
    let run = OverflowRun::new("ovfbig", 160);
    // The lab's half-filled queue (80 of 160) is below the margin: those handshakes took the
    // shortcut; the rest were followed, and every refusal was counted (OverflowRun::new).
    let summary = final_summary(&run.lines);
    let far = summary["far_from_limits"].as_u64().unwrap();
    assert!(far >= 80, "SYNs/ACKs far from the limits: {far}");
    let s = listener_summary(summary, run.inode);
    assert_eq!(s["listen_arg"], 160);
    assert_eq!(causes(s)[0], "accept_queue_full", "{s}");
}

#[test]
fn abort_on_overflow_resets_match_embryonic_resets() {
    if skip_unless_root("abort_on_overflow_resets") {
        return;
    }
    let ns = Netns::new("rst");
    let inode = ns.inode();
    let tracer = Tracer::start(&[]);
    let before = ns.counters();
    run_lab(
        &ns,
        &[
            "overflow",
            "--backlog",
            "8",
            "--duration",
            "1",
            "--abort-on-overflow",
        ],
    );
    let after = ns.counters();
    let lines = tracer.stop();
    let counts = counts_by_kind(&lines, inode);
    let resets = counts.get("reset").copied().unwrap_or(0);
    // The run-wide facts (other_drops, unresolved, missed_runs, lost) explain any mismatch.
    eprintln!("tcpq {counts:?}; summary {}", final_summary(&lines));
    assert!(resets > 0, "overflow resets seen: {counts:?}");
    assert_eq!(resets, delta(&before, &after, "TcpExt:EmbryonicRsts"));
    let syn_ack = counts.get("syn").copied().unwrap_or(0) + counts.get("ack").copied().unwrap_or(0);
    assert_count_matches(
        "syn+ack vs ListenOverflows",
        syn_ack,
        delta(&before, &after, OVERFLOWS),
        final_summary(&lines),
    );
    let s = listener_summary(final_summary(&lines), inode);
    assert!(causes(s).contains(&"overflow_resets".to_string()), "{s}");
}

#[test]
fn syn_queue_full_without_cookies_matches_reqqfulldrop() {
    if skip_unless_root("syn_queue_full") {
        return;
    }
    let ns = Netns::new("synq");
    let inode = ns.inode();
    let tracer = Tracer::start(&[]);
    let before = ns.counters();
    let (facts, _) = run_lab(&ns, &["synflood", "--syncookies", "0", "--duration", "2"]);
    let after = ns.counters();
    let lines = tracer.stop();
    let counts = counts_by_kind(&lines, inode);
    // The run-wide facts (other_drops, unresolved, missed_runs, lost) explain any mismatch.
    eprintln!("tcpq {counts:?}; summary {}", final_summary(&lines));
    let synq = counts.get("synq").copied().unwrap_or(0);
    assert!(synq > 0, "{counts:?}");
    assert_count_matches(
        "synq vs TCPReqQFullDrop",
        synq,
        delta(&before, &after, "TcpExt:TCPReqQFullDrop"),
        final_summary(&lines),
    );
    assert_eq!(counts.get("cookie").copied().unwrap_or(0), 0);
    // The client lives in another namespace: all SYN retransmits counted here are SYN-ACKs.
    assert_eq!(
        counts.get("synack_retrans").copied().unwrap_or(0),
        delta(&before, &after, "TcpExt:TCPSynRetrans")
    );
    let e = lines
        .iter()
        .find(|v| v["kind"] == "synq" && v["netns"].as_u64() == Some(inode))
        .unwrap();
    assert_eq!(e["raddr"], facts["raddr"], "client address: {e}");
    assert_eq!(e["laddr"], facts["laddr"]);
    assert_eq!(e["pid"], facts["pid"]);
    let s = listener_summary(final_summary(&lines), inode);
    assert_eq!(causes(s)[0], "syn_queue_full", "{s}");
    assert!(
        s["causes"][0]["fix"][0]
            .as_str()
            .unwrap()
            .contains("tcp_syncookies=1")
    );
}

/// With cookies off, tcp_conn_request() also refuses SYNs once the SYN queue holds 3/4 of
/// tcp_max_syn_backlog, below the listener's backlog. The kernel counts those only in
/// ListenDrops (not ListenOverflows, not TCPReqQFullDrop).
#[test]
fn max_syn_backlog_rule_matches_listen_drops() {
    if skip_unless_root("max_syn_backlog_rule") {
        return;
    }
    let ns = Netns::new("synb");
    let inode = ns.inode();
    let tracer = Tracer::start(&[]);
    let before = ns.counters();
    let (facts, _) = run_lab(
        &ns,
        &[
            "synflood",
            "--syncookies",
            "0",
            "--backlog",
            "256",
            "--max-syn-backlog",
            "128",
            "--duration",
            "2",
        ],
    );
    let after = ns.counters();
    let lines = tracer.stop();
    let counts = counts_by_kind(&lines, inode);
    eprintln!("tcpq {counts:?}; summary {}", final_summary(&lines));
    let dropped = counts.get("syn_backlog").copied().unwrap_or(0);
    assert!(dropped > 0, "{counts:?}");
    assert_eq!(delta(&before, &after, "TcpExt:TCPReqQFullDrop"), 0);
    assert_eq!(delta(&before, &after, OVERFLOWS), 0);
    assert_count_matches(
        "syn_backlog vs ListenDrops",
        dropped,
        delta(&before, &after, "TcpExt:ListenDrops"),
        final_summary(&lines),
    );
    assert_eq!(counts.get("synq").copied().unwrap_or(0), 0);
    let e = lines
        .iter()
        .find(|v| v["kind"] == "syn_backlog" && v["netns"].as_u64() == Some(inode))
        .unwrap();
    assert_eq!(e["raddr"], facts["raddr"], "client address: {e}");
    assert_eq!(e["pid"], facts["pid"]);
    let s = listener_summary(final_summary(&lines), inode);
    assert_eq!(causes(s)[0], "syn_queue_full", "{s}");
    let text = s["causes"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("tcp_max_syn_backlog 128, so the limit is 96"),
        "{text}"
    );
    assert!(
        s["causes"][0]["fix"][1]
            .as_str()
            .unwrap()
            .contains("net.ipv4.tcp_max_syn_backlog=512"),
        "{s}"
    );
}

#[test]
fn syn_cookies_match_syncookiessent() {
    if skip_unless_root("syn_cookies") {
        return;
    }
    let ns = Netns::new("cookie");
    let inode = ns.inode();
    let tracer = Tracer::start(&[]);
    let before = ns.counters();
    run_lab(&ns, &["synflood", "--syncookies", "1", "--duration", "2"]);
    let after = ns.counters();
    let lines = tracer.stop();
    let counts = counts_by_kind(&lines, inode);
    // The run-wide facts (other_drops, unresolved, missed_runs, lost) explain any mismatch.
    eprintln!("tcpq {counts:?}; summary {}", final_summary(&lines));
    let cookies = counts.get("cookie").copied().unwrap_or(0);
    assert!(cookies > 0, "{counts:?}");
    assert_count_matches(
        "cookies vs SyncookiesSent",
        cookies,
        delta(&before, &after, "TcpExt:SyncookiesSent"),
        final_summary(&lines),
    );
    assert_eq!(counts.get("synq").copied().unwrap_or(0), 0);
    let s = listener_summary(final_summary(&lines), inode);
    assert_eq!(causes(s)[0], "syn_cookies", "{s}");
    // The client's ACKs never arrive: tcpq calls it a flood, not load.
    assert!(
        s["causes"][0]["text"]
            .as_str()
            .unwrap()
            .contains("SYN flood"),
        "{s}"
    );
}

#[test]
fn port_filter_is_applied_in_the_kernel() {
    if skip_unless_root("port_filter") {
        return;
    }
    let ns = Netns::new("port");
    let inode = ns.inode();
    let other = Tracer::start(&["--port", "9999"]);
    let mine = Tracer::start(&["--port", "8080"]);
    run_lab(&ns, &["overflow", "--duration", "1"]);
    let other_lines = other.stop();
    let mine_lines = mine.stop();
    assert!(
        counts_by_kind(&other_lines, inode).is_empty(),
        "port 9999 saw nothing"
    );
    assert!(
        !counts_by_kind(&mine_lines, inode).is_empty(),
        "port 8080 saw the overflow"
    );
    // The kernel's own per-kind counts respect the filter too.
    assert_eq!(final_summary(&other_lines)["kernel_counts"]["syn"], 0);
}

#[test]
fn pid_filter_selects_the_listener_owner() {
    if skip_unless_root("pid_filter") {
        return;
    }
    let ns = Netns::new("pid");
    let inode = ns.inode();
    // A process that owns no listener: it must see nothing of the lab.
    let mut sleeper = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let pid = sleeper.id().to_string();
    let filtered = Tracer::start(&["--pid", &pid]);
    // A name must match a running process: start the lab first, then trace it by name.
    let lab = BackgroundLab::start(&ns, &["overflow", "--duration", "4"]);
    let by_name = Tracer::start(&["--pid", "tcpq-lab"]);
    lab.finish();
    let f = filtered.stop();
    let n = by_name.stop();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(
        counts_by_kind(&f, inode).is_empty(),
        "a pid owning no listener sees no events"
    );
    assert!(
        !counts_by_kind(&n, inode).is_empty(),
        "the lab's server is the `tcpq-lab` process"
    );
}

#[test]
fn ipv6_overflow_matches_listen_overflows() {
    if skip_unless_root("ipv6_overflow") {
        return;
    }
    let ns = Netns::new("v6");
    let inode = ns.inode();
    let tracer = Tracer::start(&[]);
    let before = ns.counters();
    run_lab(&ns, &["overflow", "--ipv6", "--duration", "1"]);
    let after = ns.counters();
    let lines = tracer.stop();
    let counts = counts_by_kind(&lines, inode);
    let refused = counts.get("syn").copied().unwrap_or(0) + counts.get("ack").copied().unwrap_or(0);
    assert!(refused > 0, "{counts:?}");
    assert_count_matches(
        "IPv6 syn+ack vs ListenOverflows",
        refused,
        delta(&before, &after, OVERFLOWS),
        final_summary(&lines),
    );
    let e = lines
        .iter()
        .find(|v| {
            v["netns"].as_u64() == Some(inode)
                && v["event"] == "overflow"
                && v["aggregated"] != true
        })
        .unwrap();
    assert_eq!(e["laddr"], "::1", "{e}");
    assert_eq!(e["raddr"], "::1", "{e}");
    assert_eq!(e["comm"], "tcpq-lab", "{e}");
}

#[test]
fn predicted_verdicts_when_outcome_hooks_are_refused() {
    if skip_unless_root("predicted_verdicts") {
        return;
    }
    let ns = Netns::new("pred");
    let inode = ns.inode();
    let refused = "outcome_xmit,outcome_kfree";
    let tracer = Tracer::start_with_env(&[], &[("TCPQ_DISABLE_HOOKS", refused)]);
    assert!(
        tracer
            .banner()
            .iter()
            .any(|l| l.contains("verdicts predicted")),
        "{:?}",
        tracer.banner()
    );
    let before = ns.counters();
    // A server that never accepts: no other CPU moves the queue between prediction and decision.
    run_lab(&ns, &["overflow", "--duration", "1", "--accept-rate", "0"]);
    let after = ns.counters();
    let lines = tracer.stop();
    let counts = counts_by_kind(&lines, inode);
    let refused_count =
        counts.get("syn").copied().unwrap_or(0) + counts.get("ack").copied().unwrap_or(0);
    // One client thread, a server that never accepts: predictions made at arrival hold.
    assert_eq!(
        refused_count,
        delta(&before, &after, OVERFLOWS),
        "{counts:?}"
    );
    assert_eq!(final_summary(&lines)["verdicts"], "predicted");
    let out = tcpq()
        .args(["check", "--json"])
        .env("TCPQ_DISABLE_HOOKS", refused)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let h = v["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["program"] == "outcome_xmit")
        .unwrap();
    assert_eq!(h["state"], "unavailable");
    assert!(h["detail"].as_str().unwrap().contains("predicted"), "{h}");
}

#[test]
fn application_not_accepting_is_named() {
    if skip_unless_root("application_not_accepting") {
        return;
    }
    let ns = Netns::new("stuck");
    let inode = ns.inode();
    let tracer = Tracer::start(&[]);
    run_lab(&ns, &["overflow", "--accept-rate", "0", "--duration", "1"]);
    let lines = tracer.stop();
    let s = listener_summary(final_summary(&lines), inode);
    assert_eq!(s["accepts"], 0, "{s}");
    assert_eq!(causes(s)[0], "app_not_accepting", "{s}");
    let fix = s["causes"][0]["fix"][0].as_str().unwrap();
    assert!(
        fix.contains("pm.max_children") && fix.contains("worker_connections"),
        "{fix}"
    );
}

/// One `tcpq lab overflow` run (both phases) under `trace overflow`, with the namespace's
/// counters around it. `new` asserts what every overflow run must show: final-ACK drops, and
/// SYN + ACK drops, cookies equal to the kernel's own counters.
struct OverflowRun {
    inode: u64,
    facts: serde_json::Value,
    lines: Vec<serde_json::Value>,
    counts: std::collections::HashMap<String, u64>,
}

impl OverflowRun {
    fn new(name: &str, backlog: u32) -> Self {
        let ns = Netns::new(name);
        let inode = ns.inode();
        let tracer = Tracer::start(&[]);
        let before = ns.counters();
        let backlog = backlog.to_string();
        let (facts, done) = run_lab(&ns, &["overflow", "--backlog", &backlog, "--duration", "2"]);
        assert_eq!(
            facts["ack_phase"], true,
            "nft is needed for the ack phase: run `cargo xtask setup`"
        );
        let after = ns.counters();
        let lines = tracer.stop();
        let counts = counts_by_kind(&lines, inode);
        let syn = counts.get("syn").copied().unwrap_or(0);
        let ack = counts.get("ack").copied().unwrap_or(0);
        let kernel = delta(&before, &after, OVERFLOWS);
        let summary = lines.iter().rev().find(|v| v["event"] == "summary");
        eprintln!(
            "tcpq {counts:?}; kernel ListenOverflows {kernel}; lab {done}; summary {summary:?}"
        );
        assert!(ack > 0, "final-ACK drops seen: {counts:?}");
        let summary = final_summary(&lines);
        assert_count_matches("syn+ack vs ListenOverflows", syn + ack, kernel, summary);
        assert_count_matches(
            "syn+ack vs ListenDrops (no other listen drops)",
            syn + ack,
            delta(&before, &after, "TcpExt:ListenDrops"),
            summary,
        );
        assert_count_matches(
            "cookies",
            counts.get("cookie").copied().unwrap_or(0),
            delta(&before, &after, "TcpExt:SyncookiesSent"),
            summary,
        );
        Self {
            inode,
            facts,
            lines,
            counts,
        }
    }
}
