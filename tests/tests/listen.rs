//! The listen path against the kernel's own counters (root; real programs; network namespaces).
use tcpq_tests::{listen::*, *};

#[test]
fn accept_queue_overflow_syn_and_ack_match_listen_overflows() {
    if skip_unless_root("accept_queue_overflow") {
        return;
    }
    let run = overflow_run("ovf", 4);
    let (inode, lines) = (run.inode, &run.lines);
    assert!(run.count("syn") > 0, "SYN drops seen: {:?}", run.counts);

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
    let s = run.listener();
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
    // An owner tcpq has no table entry for (tcpq-lab): one generic line, no other program's syntax.
    let fix = s["causes"][0]["fix"][0].as_str().unwrap();
    assert!(
        fix.starts_with(
            "raise the application's backlog to 1024: the backlog argument it passes to listen()"
        ) && fix.contains("restart it so it calls listen() again"),
        "{s}"
    );
    assert!(!fix.contains("nginx") && !fix.contains("php-fpm"), "{fix}");
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
    let run = overflow_run("ovfbig", 160);
    // The lab's half-filled queue (80 of 160) is below the margin: those handshakes took the
    // shortcut; the rest were followed, and every refusal was counted (overflow_run).
    let far = run.summary()["far_from_limits"].as_u64().unwrap();
    assert!(far >= 80, "SYNs/ACKs far from the limits: {far}");
    let s = run.listener();
    assert_eq!(s["listen_arg"], 160);
    assert_eq!(causes(s)[0], "accept_queue_full", "{s}");
}

#[test]
fn abort_on_overflow_resets_match_embryonic_resets() {
    if skip_unless_root("abort_on_overflow_resets") {
        return;
    }
    let run = TracedLab::run(
        "rst",
        &[
            "overflow",
            "--backlog",
            "8",
            "--duration",
            "1",
            "--abort-on-overflow",
        ],
    );
    let resets = run.count("reset");
    assert!(resets > 0, "overflow resets seen: {:?}", run.counts);
    assert_eq!(resets, run.kernel("TcpExt:EmbryonicRsts"));
    run.assert_matches(
        "syn+ack vs ListenOverflows",
        run.count("syn") + run.count("ack"),
        OVERFLOWS,
    );
    assert!(
        causes(run.listener()).contains(&"overflow_resets".to_string()),
        "{}",
        run.listener()
    );
}

#[test]
fn syn_queue_full_without_cookies_matches_reqqfulldrop() {
    if skip_unless_root("syn_queue_full") {
        return;
    }
    let run = TracedLab::run(
        "synq",
        &["synflood", "--syncookies", "0", "--duration", "2"],
    );
    let synq = run.count("synq");
    assert!(synq > 0, "{:?}", run.counts);
    run.assert_matches("synq vs TCPReqQFullDrop", synq, "TcpExt:TCPReqQFullDrop");
    assert_eq!(run.count("cookie"), 0);
    // The client lives in another namespace: all SYN retransmits counted here are SYN-ACKs.
    assert_eq!(
        run.count("synack_retrans"),
        run.kernel("TcpExt:TCPSynRetrans")
    );
    let e = run
        .lines
        .iter()
        .find(|v| v["kind"] == "synq" && v["netns"].as_u64() == Some(run.inode))
        .unwrap();
    assert_eq!(e["raddr"], run.facts["raddr"], "client address: {e}");
    assert_eq!(e["laddr"], run.facts["laddr"]);
    assert_eq!(e["pid"], run.facts["pid"]);
    let s = run.listener();
    assert_eq!(causes(s)[0], "syn_queue_full", "{s}");
    // The listener's backlog (16, below somaxconn) sizes the SYN queue: its fix first, then cookies.
    let fix = fix_lines(&s["causes"][0]);
    assert!(
        fix[0].starts_with("raise the application's backlog to 1024"),
        "{fix:?}"
    );
    assert!(
        fix.iter().any(|f| f.contains("tcp_syncookies=1")),
        "{fix:?}"
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
    let run = TracedLab::run(
        "synb",
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
    let dropped = run.count("syn_backlog");
    assert!(dropped > 0, "{:?}", run.counts);
    assert_eq!(run.kernel("TcpExt:TCPReqQFullDrop"), 0);
    assert_eq!(run.kernel(OVERFLOWS), 0);
    run.assert_matches("syn_backlog vs ListenDrops", dropped, "TcpExt:ListenDrops");
    assert_eq!(run.count("synq"), 0);
    let e = run
        .lines
        .iter()
        // An event line, not one the line budget aggregated (no address): under a slow kernel
        // (qemu's TCG) the budget is reached early.
        .find(|v| {
            v["kind"] == "syn_backlog"
                && v["netns"].as_u64() == Some(run.inode)
                && v["aggregated"] != true
        })
        .unwrap();
    assert_eq!(e["raddr"], run.facts["raddr"], "client address: {e}");
    assert_eq!(e["pid"], run.facts["pid"]);
    let s = run.listener();
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

/// The SYN queue has the accept queue's limit (tcp_conn_request(): inet_csk_reqsk_queue_is_full(),
/// requests > sk_max_ack_backlog = min(listen(), somaxconn)): somaxconn 10 under php-fpm's 511
/// drops SYNs at 10 half-open requests. somaxconn is named first, then php-fpm's own setting,
/// then the namespace's tcp_max_syn_backlog when its 3/4 rule would stop the queue below the new
/// backlog (cookies are off; 10 half-open requests stay below that rule's 96, so every drop is
/// the listener's queue).
#[test]
fn syn_queue_capped_by_somaxconn_raises_somaxconn_first() {
    if skip_unless_root("syn_queue_capped_by_somaxconn") {
        return;
    }
    let run = TracedLab::run(
        "synsmx",
        &[
            "synflood",
            "--syncookies",
            "0",
            "--backlog",
            "511",
            "--somaxconn",
            "10",
            "--max-syn-backlog",
            "128",
            "--process-name",
            "php-fpm",
            "--duration",
            "2",
        ],
    );
    let synq = run.count("synq");
    assert!(synq > 0, "{:?}", run.counts);
    run.assert_matches("synq vs TCPReqQFullDrop", synq, "TcpExt:TCPReqQFullDrop");
    let s = run.listener();
    assert_eq!(s["pid"], run.facts["pid"], "{s}");
    assert_eq!(s["comm"], "php-fpm", "{s}");
    assert_eq!(s["lport"], 8080, "{s}");
    assert_eq!(s["backlog"], 10, "effective backlog min(511, 10): {s}");
    assert_eq!(s["listen_arg"], 511, "{s}");
    let c = &s["causes"][0];
    assert_eq!(c["cause"], "syn_queue_full", "{s}");
    let text = c["text"].as_str().unwrap();
    assert!(
        text.contains("the SYN queue has the accept queue's limit: effective backlog 10 = min(listen() 511 [seen by tcpq], net.core.somaxconn 10): somaxconn is the limit"),
        "{text}"
    );
    let fix = fix_lines(c);
    assert!(
        fix[0].starts_with("nsenter --net=")
            && fix[0].contains("sysctl -w net.core.somaxconn=1024"),
        "somaxconn first, in the lab's namespace: {fix:?}"
    );
    // /etc/sysctl.d does not reach a namespace: persisted where it is created.
    assert!(
        fix[0].contains("docker run --sysctl net.core.somaxconn=1024")
            && fix[0].contains("--allowed-unsafe-sysctls=net.core.somaxconn")
            && !fix[0].contains("> /etc/sysctl.d"),
        "{fix:?}"
    );
    assert!(
        fix[1].starts_with("raise php-fpm's backlog to 1024: php-fpm `listen.backlog = 1024`"),
        "{fix:?}"
    );
    assert!(!fix.iter().any(|f| f.contains("nginx")), "{fix:?}");
    // 3/4 of the namespace's tcp_max_syn_backlog (128, set by the lab) is below 1024.
    assert!(
        fix[2].contains("sysctl -w net.ipv4.tcp_max_syn_backlog=2048"),
        "{fix:?}"
    );
    assert!(
        fix.iter().any(|f| f.contains("tcp_syncookies=1")),
        "{fix:?}"
    );
}

/// listen() 10 with somaxconn 10: both limits are 10, and raising only one leaves the backlog
/// at 10; the fix says to raise both, in nginx's syntax for an nginx listener.
#[test]
fn equal_limits_name_both_fixes() {
    if skip_unless_root("equal_limits") {
        return;
    }
    let run = TracedLab::run(
        "ovfeq",
        &[
            "overflow",
            "--backlog",
            "10",
            "--somaxconn",
            "10",
            "--process-name",
            "nginx",
            "--duration",
            "1",
        ],
    );
    let refused = run.count("syn") + run.count("ack");
    assert!(refused > 0, "{:?}", run.counts);
    run.assert_matches("syn+ack vs ListenOverflows", refused, OVERFLOWS);
    let s = run.listener();
    assert_eq!(s["pid"], run.facts["pid"], "{s}");
    assert_eq!(s["comm"], "nginx", "{s}");
    assert_eq!(s["lport"], 8080, "{s}");
    assert_eq!(s["listen_arg"], 10, "{s}");
    assert_eq!(s["somaxconn"], 10, "{s}");
    let c = &s["causes"][0];
    assert_eq!(c["cause"], "accept_queue_full", "{s}");
    let text = c["text"].as_str().unwrap();
    assert!(
        text.contains("both limits are 10, so raising only one leaves the backlog at 10")
            && !text.contains("somaxconn is the limit"),
        "{text}"
    );
    let fix = c["fix"].to_string();
    assert_eq!(
        c["fix"][0], "raise both: net.core.somaxconn and nginx's backlog are both 10",
        "{fix}"
    );
    assert!(
        c["fix"][1]
            .as_str()
            .unwrap()
            .contains("sysctl -w net.core.somaxconn=1024"),
        "{fix}"
    );
    assert!(
        c["fix"][2]
            .as_str()
            .unwrap()
            .contains("nginx `listen 8080 backlog=1024;`")
            && fix.contains("nginx -s reload"),
        "{fix}"
    );
    assert!(
        !fix.contains("listen.backlog"),
        "only nginx's syntax: {fix}"
    );
}

#[test]
fn syn_cookies_match_syncookiessent() {
    if skip_unless_root("syn_cookies") {
        return;
    }
    let run = TracedLab::run(
        "cookie",
        &["synflood", "--syncookies", "1", "--duration", "2"],
    );
    let cookies = run.count("cookie");
    assert!(cookies > 0, "{:?}", run.counts);
    run.assert_matches(
        "cookies vs SyncookiesSent",
        cookies,
        "TcpExt:SyncookiesSent",
    );
    assert_eq!(run.count("synq"), 0);
    let s = run.listener();
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
    // A name must match a running process: start the lab first, then trace it by name. The
    // lab overflows until interrupted, so the tracer sees seconds of it however long its own
    // start takes (verifying the programs takes most of a minute under qemu's TCG).
    let lab = BackgroundLab::start(&ns, &["overflow", "--duration", "120"]);
    let by_name = Tracer::start(&["--pid", "tcpq-lab"]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    lab.interrupt();
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
    let run = TracedLab::run("v6", &["overflow", "--ipv6", "--duration", "1"]);
    let refused = run.count("syn") + run.count("ack");
    assert!(refused > 0, "{:?}", run.counts);
    run.assert_matches("IPv6 syn+ack vs ListenOverflows", refused, OVERFLOWS);
    let e = run
        .lines
        .iter()
        .find(|v| {
            v["netns"].as_u64() == Some(run.inode)
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
    run_lab(
        &ns,
        &[
            "overflow",
            "--accept-rate",
            "0",
            "--duration",
            "1",
            "--process-name",
            "php-fpm",
        ],
    );
    let lines = tracer.stop();
    let s = listener_summary(final_summary(&lines), inode);
    assert_eq!(s["accepts"], 0, "{s}");
    assert_eq!(s["comm"], "php-fpm", "{s}");
    assert_eq!(s["lport"], 8080, "{s}");
    assert_eq!(causes(s)[0], "app_not_accepting", "{s}");
    // php-fpm's own worker setting, not another program's.
    let fix = s["causes"][0]["fix"][0].as_str().unwrap();
    assert!(
        fix.contains("php-fpm: raise `pm.max_children`") && !fix.contains("worker_connections"),
        "{fix}"
    );
}
