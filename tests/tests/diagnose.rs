//! `tcpq diagnose --json` on each lab incident names the right cause, process and port (root).
use std::process::Command;

use tcpq_tests::{diagnose::*, *};

#[test]
fn overflow_is_named_with_process_and_port() {
    if skip_unless_root("diagnose_overflow") {
        return;
    }
    let ns = Netns::new("dgovf");
    let (r, pid, code, _) = diagnose_during(
        &ns,
        &["overflow", "--duration", "2"],
        "5",
        &["--fail-on-cause"],
    );
    assert_eq!(code, 1, "--fail-on-cause: a cause fired");
    let c = &r["causes"][0];
    assert!(
        c["cause"] == "accept_queue_full" || c["cause"] == "app_not_accepting",
        "{r}"
    );
    assert_eq!(c["pid"].as_u64(), Some(pid), "{r}");
    assert_eq!(c["port"], 8080);
    assert_eq!(c["process"], "tcpq-lab");
    assert!(!c["fix"].as_array().unwrap().is_empty());
    assert!(
        r["causes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["cause"] != "conntrack_full"),
        "no conntrack in that namespace: {r}"
    );
    for k in ["duration_s", "checked", "lost_events"] {
        assert!(r.get(k).is_some(), "{k}");
    }
}

#[test]
fn ports_exhaustion_is_named() {
    if skip_unless_root("diagnose_ports") {
        return;
    }
    let ns = Netns::new("dgport");
    let (r, pid, _, done) = diagnose_during(
        &ns,
        &["ports", "--port", "9000", "--duration", "3"],
        "5",
        &[],
    );
    let c = find(&r, "ports_exhausted");
    assert_eq!(c["pid"].as_u64(), Some(pid), "{r}");
    assert_eq!(c["port"], 9000);
    // diagnose has no connect() syscall hooks: each failed port search is seen as SYN_SENT →
    // CLOSE without a port. Every one the client saw, no more.
    let failed = done["eaddrnotavail"].as_u64().unwrap();
    assert!(failed > 0, "{done}");
    assert_eq!(
        c["evidence"]["EADDRNOTAVAIL"].as_u64(),
        Some(failed),
        "{c} {done}"
    );
}

#[test]
fn conntrack_full_is_named() {
    if skip_unless_root("diagnose_conntrack") {
        return;
    }
    let before = ct_max();
    let _restore = CtMaxRestore::save();
    let ns = Netns::new("dgct");
    let (r, _, _, _) = diagnose_during(&ns, &["conntrack", "--duration", "2"], "4", &[]);
    assert_eq!(ct_max(), before);
    let c = find(&r, "conntrack_full");
    assert_eq!(c["evidence"]["netns"].as_u64(), Some(ns.inode()), "{c}");
    assert!(c["evidence"]["table_full"].as_u64().unwrap() > 0, "{c}");
}

#[test]
fn close_wait_is_named_and_quiet_means_no_problem() {
    if skip_unless_root("diagnose_close_wait") {
        return;
    }
    let ns = Netns::new("dgcw");
    // CLOSE_WAITs that appear during the run may be a worker about to close them: no leak.
    let (r, pid, _, _) = diagnose_during(&ns, &["close-wait", "--duration", "4"], "2", &[]);
    assert!(
        r["causes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["cause"] != "close_wait_leak" || c["pid"].as_u64() != Some(pid)),
        "CLOSE_WAITs younger than the run called a leak: {r}"
    );
    // Held from before the run to its end: a leak, with the time it lasted.
    let lab = BackgroundLab::start(&ns, &["close-wait", "--duration", "6"]);
    let pid = lab.facts["pid"].as_u64().unwrap();
    let out = tcpq()
        .args(["diagnose", "--json", "--duration", "2"])
        .output()
        .unwrap();
    drop(lab);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = find(&r, "close_wait_leak");
    assert_eq!(c["pid"].as_u64(), Some(pid), "{r}");
    assert_eq!(c["process"], "tcpq-lab", "{c}");
    assert_eq!(c["evidence"]["close_wait"], 10);
    assert!(c["evidence"]["lasted_s"].as_f64().unwrap() >= 2.0, "{c}");
    assert!(
        c["text"]
            .as_str()
            .unwrap()
            .contains("has held 10 sockets in CLOSE_WAIT for at least 2 s"),
        "{c}"
    );
    assert!(
        fix_lines(c)[1].contains("close the socket on every error/EOF path"),
        "{c}"
    );
    // Nothing going on: exit 0 even with --fail-on-cause when no cause fires… unless the host
    // itself has a problem; then the report must still be well formed.
    let out = Command::new(tcpq_bin())
        .args(["diagnose", "--json", "--duration", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.code() == Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let quiet: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(quiet["checked"].as_array().unwrap().len() >= 5);
}

#[test]
fn synflood_is_named_as_syn_queue_pressure() {
    if skip_unless_root("diagnose_synflood") {
        return;
    }
    let ns = Netns::new("dgsyn");
    let (r, pid, _, _) = diagnose_during(&ns, &["synflood", "--duration", "2"], "5", &[]);
    let c = find(&r, "syn_cookies");
    assert_eq!(c["pid"].as_u64(), Some(pid), "{r}");
    assert_eq!(c["port"], 8080);
    assert_eq!(c["process"], "tcpq-lab");
    assert!(!c["fix"].as_array().unwrap().is_empty());
}

/// Syncookies under somaxconn 10 with php-fpm's 511: the SYN queue has the accept queue's limit,
/// so somaxconn's fix comes before php-fpm's own `listen.backlog` (diagnose infers the listen()
/// argument: it has no syscall hook).
#[test]
fn syn_cookies_under_somaxconn_name_somaxconn_then_the_owner_setting() {
    if skip_unless_root("diagnose_syn_cookies_somaxconn") {
        return;
    }
    let ns = Netns::new("dgsmx");
    let (r, pid, _, _) = diagnose_during(
        &ns,
        &[
            "synflood",
            "--backlog",
            "511",
            "--somaxconn",
            "10",
            "--process-name",
            "php-fpm",
            "--duration",
            "2",
        ],
        "5",
        &[],
    );
    let c = find(&r, "syn_cookies");
    assert_eq!(c["pid"].as_u64(), Some(pid), "{r}");
    assert_eq!(c["port"], 8080);
    assert_eq!(c["process"], "php-fpm");
    assert_eq!(c["evidence"]["backlog"], 10, "{c}");
    let text = c["text"].as_str().unwrap();
    assert!(
        text.contains("the SYN queue has the accept queue's limit: effective backlog 10 = min(listen() ≥ 10 [inferred], net.core.somaxconn 10): somaxconn is the limit"),
        "{text}"
    );
    let fix = fix_lines(c);
    // The lab's clients never complete the handshake: a flood verdict, then the sizing.
    assert!(fix[0].contains("keep net.ipv4.tcp_syncookies=1"), "{fix:?}");
    assert!(
        fix[1].starts_with("if these are real clients, the SYN queue is too small: nsenter --net=")
            && fix[1].contains("sysctl -w net.core.somaxconn=1024"),
        "{fix:?}"
    );
    assert!(
        fix[2].starts_with("raise php-fpm's backlog to 1024: php-fpm `listen.backlog = 1024`")
            && fix[2].contains("calls listen() again"),
        "{fix:?}"
    );
    assert!(!fix.iter().any(|f| f.contains("nginx")), "{fix:?}");
}

#[test]
fn slow_accept_is_named_as_the_application() {
    if skip_unless_root("diagnose_slow_accept") {
        return;
    }
    let ns = Netns::new("dgslow");
    let (r, pid, _, _) = diagnose_during(&ns, &["slow-accept", "--duration", "3"], "5", &[]);
    let c = find(&r, "app_not_accepting");
    assert_eq!(c["pid"].as_u64(), Some(pid), "{r}");
    assert_eq!(c["port"], 8080);
    assert!(
        c["evidence"]["wait_p99_us"].as_u64().unwrap() > 100_000,
        "{c}"
    );
    // Its 50-client burst fills the lab's 64-entry queue past half: pressure, stated.
    assert!(
        c["text"].as_str().unwrap().contains("its queue reached"),
        "{c}"
    );
}

/// The same slow acceptor behind a big backlog: the burst waits, but the queue stays far from
/// its limit and nothing is refused — a burst the backlog absorbed, not an application that
/// cannot keep up.
#[test]
fn a_burst_a_big_backlog_absorbs_is_not_called_not_accepting() {
    if skip_unless_root("diagnose_absorbed_burst") {
        return;
    }
    let ns = Netns::new("dgbig");
    let (r, _, _, _) = diagnose_during(
        &ns,
        &["slow-accept", "--duration", "3", "--backlog", "65535"],
        "5",
        &[],
    );
    let causes = r["causes"].as_array().unwrap();
    assert!(
        !causes.iter().any(|c| c["cause"] == "app_not_accepting"),
        "{r}"
    );
}

#[test]
fn busy_workers_are_named_with_no_idle_acceptor() {
    if skip_unless_root("diagnose_workers") {
        return;
    }
    let ns = Netns::new("dgwrk");
    // Workers hold each connection 3 s: the second batch is accepted ~3 s after the lab starts.
    let (r, _, _, _) = diagnose_during(
        &ns,
        &["workers", "--duration", "4", "--process-name", "php-fpm"],
        "9",
        &[],
    );
    let c = find(&r, "app_not_accepting");
    assert_eq!(c["port"], 8080, "{c}");
    assert_eq!(c["process"], "php-fpm", "{c}");
    // The owner's own worker setting, first.
    assert!(
        c["fix"][0]
            .as_str()
            .unwrap()
            .starts_with("all workers are busy: php-fpm: raise `pm.max_children`"),
        "{c}"
    );
    assert_eq!(c["evidence"]["idle_acceptors"], 0, "{c}");
    // The five workers and the parent that forked them hold the socket.
    assert!(
        c["text"]
            .as_str()
            .unwrap()
            .contains("processes share :8080, 0 idle in accept"),
        "{c}"
    );
}

/// `diagnose --idle` sets the stale threshold as in `tcpq sockets`: a client waiting 3 s on a
/// silent upstream is stale at `--idle 2s` (the default, 60 s, would not name it).
#[test]
fn idle_threshold_names_a_stale_upstream() {
    if skip_unless_root("diagnose_idle") {
        return;
    }
    let ns = Netns::new("dgidle");
    let (mut server, mut client, pid) = silent_upstream(&ns, 9402);
    let pid: u64 = pid.parse().unwrap();
    let out = tcpq()
        .args(["diagnose", "--json", "--duration", "3", "--idle", "2s"])
        .output()
        .unwrap();
    for c in [&mut client, &mut server] {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = r["causes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cause"] == "stale_established" && c["pid"].as_u64() == Some(pid))
        .unwrap_or_else(|| panic!("no stale_established for pid {pid}: {r}"));
    assert_eq!(c["process"], "python3", "{c}");
    assert_eq!(c["evidence"]["idle_established"], 1, "{c}");
    let text = c["text"].as_str().unwrap();
    assert!(
        text.contains("to 127.0.0.1:9402 and got no answer for more than 2 s"),
        "{text}"
    );
    assert!(fix_lines(c).iter().any(|f| f.contains("timeouts")), "{c}");
    assert!(
        r["checked"].to_string().contains("no data for 2 s"),
        "{}",
        r["checked"]
    );
}

/// Direction: the silent upstream's own accepted sockets sit as idle as its clients', but only
/// connections a process opened are stale upstreams — the server (the lab process, the lowest
/// pid) is not named, its clients are.
#[test]
fn stale_established_names_clients_not_the_server() {
    if skip_unless_root("diagnose_direction") {
        return;
    }
    let ns = Netns::new("dgdir");
    let (r, facts, clients) = diagnose_stale_lab(&ns, "9412", &[]);
    let server = facts["pid"].as_u64().unwrap();
    let stale: Vec<&serde_json::Value> = r["causes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["cause"] == "stale_established")
        .collect();
    assert!(
        stale.iter().all(|c| c["pid"].as_u64() != Some(server)),
        "the server's accepted sockets named as a stale upstream: {r}"
    );
    let c = stale
        .iter()
        .find(|c| c["port"] == 9412)
        .unwrap_or_else(|| panic!("no stale_established to :9412: {r}"));
    assert!(clients.contains(&c["pid"].as_u64().unwrap()), "{c}");
    assert_eq!(c["process"], "tcpq-client", "{c}");
    assert!(fix_lines(c).iter().any(|f| f.contains("timeouts")), "{c}");
}

/// Stale upstreams are grouped by program and remote: five `tcpq-client` processes waiting on
/// one silent upstream are one finding listing their pids, "request sent, no answer" (the
/// peer acknowledged), fixed by the client's read timeouts; the pooled client whose connection
/// idles after its answer is no finding.
#[test]
fn stale_upstream_is_one_finding_per_program_and_remote() {
    if skip_unless_root("diagnose_stale_grouped") {
        return;
    }
    let ns = Netns::new("dgstale");
    let (r, facts, clients) = diagnose_stale_lab(&ns, "9413", &["--clients", "5"]);
    let pooled = facts["pooled"].as_u64().unwrap();
    let stale: Vec<&serde_json::Value> = r["causes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["cause"] == "stale_established" && c["port"] == 9413)
        .collect();
    assert_eq!(stale.len(), 1, "one finding for the pool: {r}");
    let c = stale[0];
    assert_eq!(c["process"], "tcpq-client", "{c}");
    assert_eq!(c["pid"].as_u64(), Some(clients[0]), "{c}");
    assert_eq!(c["where"], "tcpq-client → 127.0.0.1:9413", "{c}");
    let pids: Vec<u64> = c["evidence"]["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert_eq!(pids, clients, "{c}");
    assert_eq!(c["evidence"]["awaiting_reply"], 5, "{c}");
    assert_eq!(c["evidence"]["unacknowledged"], 0, "{c}");
    let text = c["text"].as_str().unwrap();
    assert!(
        text.contains("sent a request on 5 connections to 127.0.0.1:9413 and got no answer"),
        "{text}"
    );
    assert!(
        text.contains("the peer acknowledged every request but never answered"),
        "{text}"
    );
    assert!(text.contains("keepalive does not help"), "{text}");
    assert!(
        fix_lines(c)[0].starts_with("set read timeouts on the client"),
        "{c}"
    );
    assert!(
        r["causes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["pid"].as_u64() != Some(pooled)),
        "the pooled client's idle connection is no finding: {r}"
    );
}

/// One failing destination is one finding: refused from 8 source addresses (each with its own
/// TIME_WAIT, so 8 port-usage rows), it gives one `connect_failures`, named after the process
/// that was refused — not the lab process, which connected there first without failing.
#[test]
fn connect_failures_are_one_per_destination_and_name_who_failed() {
    if skip_unless_root("diagnose_connect_failures") {
        return;
    }
    let ns = Netns::new("dgfail");
    let (r, lab_pid, _, done) = diagnose_during(
        &ns,
        &["failing-upstream", "--port", "9421", "--duration", "3"],
        "5",
        &[],
    );
    let client = done["clients"][0].as_u64().unwrap();
    let found: Vec<&serde_json::Value> = r["causes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["cause"] == "connect_failures")
        .collect();
    assert_eq!(found.len(), 1, "one finding per destination: {r}");
    let c = found[0];
    assert_ne!(c["pid"].as_u64(), Some(lab_pid), "{c}");
    assert_eq!(c["pid"].as_u64(), Some(client), "{c}");
    assert_eq!(c["process"], "tcpq-client", "{c}");
    assert_eq!(c["port"], 9421, "{c}");
    assert_eq!(c["where"], "tcpq-client → 127.0.0.1:9421", "{c}");
    assert_eq!(c["evidence"]["pids"], serde_json::json!([client]), "{c}");
    let text = c["text"].as_str().unwrap();
    assert!(
        text.contains("connects to 127.0.0.1:9421 failed: refused"),
        "{text}"
    );
    assert!(
        fix_lines(c)[0].contains("tcpq trace connect --dst 127.0.0.1:9421 --failed"),
        "{c}"
    );
}

/// Issue 15: nginx at `worker_connections` accepts connections and closes them unread (the
/// kernel resets them: TCPAbortOnClose), which no queue shows. `diagnose` names it
/// `connection_limit`, for nginx on the lab's port with nginx's own settings, and counts
/// exactly what the namespace's TCPAbortOnClose counted over the run: the lab starts after
/// tcpq's banner and ends before tcpq does, and its clients read everything before closing
/// (a client closing on an unread answer would be counted too: tcpq counts every process).
#[test]
fn nginx_at_worker_connections_is_a_connection_limit_counted_exactly() {
    if skip_unless_root("diagnose_connection_limit") {
        return;
    }
    if !std::path::Path::new("/usr/sbin/nginx").exists() {
        eprintln!(
            "skipping diagnose_connection_limit: /usr/sbin/nginx missing (cargo xtask setup installs it)"
        );
        return;
    }
    let ns = Netns::new("dglim");
    let before = ns.counters();
    let (r, _, code, done) = diagnose_during(
        &ns,
        &["connection-limit", "--duration", "3", "--port", "8093"],
        "7",
        &[],
    );
    let after = ns.counters();
    assert_eq!(code, 0, "{r}");
    assert!(
        done["worker_connections_not_enough"].as_u64().unwrap_or(0) > 0,
        "nginx ran out of connections: {done}"
    );
    let kernel = delta(&before, &after, "TcpExt:TCPAbortOnClose");
    assert!(kernel > 0, "the kernel counted resets on close");
    // Kernels before 6.10 (Debian 12's 6.1) have no reset reason in tcp_send_reset, so
    // abort_close is refused and no connection limit is named: said, and only that part skipped.
    if let Some(why) = hook_unavailable("abort_close") {
        eprintln!(
            "diagnose_connection_limit: connection_limit not asserted on this kernel, abort_close is unavailable: {why}"
        );
        return;
    }
    let c = find(&r, "connection_limit");
    assert_eq!(c["process"], "nginx", "{c}");
    assert_eq!(c["port"], 8093, "{c}");
    assert_eq!(c["evidence"]["netns"].as_u64(), Some(ns.inode()), "{c}");
    let fix = fix_lines(c).join("\n");
    assert!(fix.contains("worker_connections"), "{fix}");
    assert!(fix.contains("worker_rlimit_nofile"), "{fix}");
    // The plateau: one worker of 32 connections holds (nearly) all of them as clients.
    let peak = c["evidence"]["established_peak"].as_u64().unwrap_or(0);
    assert!((16..=32).contains(&peak), "ESTABLISHED plateau {peak}: {c}");
    let resets = c["evidence"]["resets_on_close"].as_u64().unwrap_or(0);
    let in_ns = c["evidence"]["namespace_resets_on_close"]
        .as_u64()
        .unwrap_or(0);
    // tcp_send_active_reset() skips the tracepoint only when it cannot allocate the reset
    // (TCPAbortFailed); a program run the kernel skipped is in lost_events.
    let failed = delta(&before, &after, "TcpExt:TCPAbortFailed");
    eprintln!(
        "resets on close: tcpq {resets} (nginx) / {in_ns} (namespace), TCPAbortOnClose {kernel}, TCPAbortFailed {failed}, nginx's 'not enough' lines {}, lost {}",
        done["worker_connections_not_enough"], r["lost_events"]
    );
    let unseen =
        serde_json::json!({"missed_runs": r["lost_events"].as_u64().unwrap_or(0) + failed});
    assert_count_matches("resets on close in the namespace", in_ns, kernel, &unseen);
    assert_count_matches("resets on close by nginx", resets, kernel, &unseen);
    assert_eq!(
        c["evidence"]["TcpExt:TCPAbortOnClose"].as_u64(),
        Some(kernel),
        "tcpq's own reading of the counter over its run: {c}"
    );
}
