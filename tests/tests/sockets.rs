//! `tcpq sockets`: CLOSE_WAIT leaks and stale ESTABLISHED connections, found per process.
use std::time::Duration;

use tcpq_tests::*;

fn sockets_json(pid: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let out = tcpq()
        .args(["sockets", "--pid", pid, "--json"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The "sockets" row of `tcpq sockets --pid PID --json`.
fn sockets_row(pid: &str) -> serde_json::Value {
    let rows = sockets_json(pid, &[]);
    rows.iter()
        .find(|r| r["event"] == "sockets")
        .unwrap_or_else(|| panic!("{rows:?}"))
        .clone()
}

/// A server on 127.0.0.1:`port` in `ns` that accepts three connections and closes them after
/// `close_after_s` (never if None) while its clients hang up at once; then `tcpq sockets` on its
/// pid (started right away) and the server's "sockets" row.
fn close_wait_rows(ns: &Netns, port: u16, close_after_s: Option<f64>) -> serde_json::Value {
    let close = match close_after_s {
        Some(s) => format!("time.sleep({s})\nfor c in keep: c.close()\n"),
        None => String::new(),
    };
    let mut server = python_in(
        ns,
        &format!(
            "import socket,os,time\nl=socket.socket(); l.bind(('127.0.0.1',{port})); l.listen(16)\nprint(os.getpid(),flush=True)\nkeep=[]\nfor _ in range(3):\n c,_=l.accept(); keep.append(c)\n{close}time.sleep(30)"
        ),
    );
    let pid = first_line(&mut server);
    let clients = python_in(
        ns,
        &format!(
            "import socket\nfor _ in range(3):\n s=socket.socket(); s.connect(('127.0.0.1',{port})); s.close()"
        ),
    );
    assert!(clients.wait_with_output().unwrap().status.success());
    let row = sockets_row(&pid);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(row["pid"].as_u64(), Some(pid.parse().unwrap()));
    row
}

#[test]
fn close_wait_leak_is_reported_with_its_fds() {
    if skip_unless_root("close_wait") {
        return;
    }
    let ns = Netns::new("cw");
    // A server that accepts and never closes; three clients connect and close.
    let row = close_wait_rows(&ns, 9400, None);
    assert_eq!(row["close_wait"]["count"], 3, "{row}");
    assert_eq!(
        row["close_wait"]["fds"].as_array().unwrap().len(),
        3,
        "{row}"
    );
    assert_eq!(row["close_wait"]["lasting"], 3, "{row}");
    assert_eq!(row["causes"][0]["cause"], "close_wait_leak", "{row}");
    let text = row["causes"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("has held 3 sockets in CLOSE_WAIT for at least 2 s")
            && text.contains("never called close()"),
        "{text}"
    );
}

/// A CLOSE_WAIT the application closes soon after (a busy worker finishing its request) is not
/// a leak: `sockets` looks again 2 s later and only names what is still there.
#[test]
fn brief_close_wait_is_not_a_leak() {
    if skip_unless_root("close_wait_brief") {
        return;
    }
    let ns = Netns::new("cwbrief");
    // The listener keeps the process listed; its CLOSE_WAITs are closed between the looks.
    let row = close_wait_rows(&ns, 9415, Some(1.0));
    assert_eq!(row["close_wait"]["count"], 0, "{row}");
    assert_eq!(row["causes"], serde_json::json!([]), "{row}");
}

#[test]
fn stale_established_to_a_silent_upstream() {
    if skip_unless_root("stale_established") {
        return;
    }
    let ns = Netns::new("stale");
    // The client sends a request and waits for an answer that never comes (no timeout set).
    let (mut server, mut client, pid) = silent_upstream(&ns, 9401);
    std::thread::sleep(Duration::from_millis(2500));
    let rows = sockets_json(&pid, &["--idle", "2s"]);
    let _ = client.kill();
    let _ = server.kill();
    let _ = client.wait();
    let _ = server.wait();
    let row = rows
        .iter()
        .find(|r| r["event"] == "sockets")
        .unwrap_or_else(|| panic!("{rows:?}"));
    let idle = &row["idle_established"][0];
    assert_eq!(idle["raddr"], "127.0.0.1", "{row}");
    assert_eq!(idle["rport"], 9401, "{row}");
    assert_eq!(idle["count"], 1);
    assert!(idle["max_idle_s"].as_f64().unwrap() >= 2.0, "{row}");
    assert_eq!(row["causes"][0]["cause"], "stale_established", "{row}");
    assert!(
        row["causes"][0]["fix"][0]
            .as_str()
            .unwrap()
            .contains("timeouts")
    );
}

/// `tcpq sockets --idle 2s --pid P` 2.5 s into a `stale-upstream` lab on `port`, for each pid
/// `pick` takes from the lab's facts; returns the rows of each.
fn sockets_in_stale_lab(
    ns: &Netns,
    port: &str,
    pick: impl Fn(&serde_json::Value) -> Vec<u64>,
) -> Vec<Vec<serde_json::Value>> {
    let lab = BackgroundLab::start(ns, &["stale-upstream", "--port", port, "--duration", "8"]);
    std::thread::sleep(Duration::from_millis(2500));
    pick(&lab.facts)
        .iter()
        .map(|pid| sockets_json(&pid.to_string(), &["--idle", "2s"]))
        .collect()
}

/// An accepted connection that sits idle is the server's client keeping it open, not a stale
/// upstream: the `stale-upstream` lab's server holds four idle accepted sockets (three clients
/// waiting, one pooled) and is not named; its clients are.
#[test]
fn idle_accepted_sockets_are_not_stale_upstreams() {
    if skip_unless_root("idle_accepted") {
        return;
    }
    let ns = Netns::new("idleacc");
    let rows = sockets_in_stale_lab(&ns, "9411", |f| {
        vec![
            f["pid"].as_u64().unwrap(),
            f["clients"][0].as_u64().unwrap(),
        ]
    });
    let (server_rows, client_rows) = (&rows[0], &rows[1]);
    let row = server_rows
        .iter()
        .find(|r| r["event"] == "sockets" && r["netns"].as_u64() == Some(ns.inode()))
        .unwrap_or_else(|| panic!("{server_rows:?}"));
    assert_eq!(row["comm"], "tcpq-lab", "{row}");
    assert_eq!(row["idle_established"], serde_json::json!([]), "{row}");
    assert_eq!(row["idle_accepted"][0]["lport"], 9411, "{row}");
    assert_eq!(row["idle_accepted"][0]["count"], 4, "{row}");
    assert!(
        row["causes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["cause"] != "stale_established"),
        "{row}"
    );
    let row = client_rows
        .iter()
        .find(|r| r["event"] == "sockets")
        .unwrap_or_else(|| panic!("{client_rows:?}"));
    assert_eq!(row["comm"], "tcpq-client", "{row}");
    assert_eq!(row["idle_established"][0]["rport"], 9411, "{row}");
    assert_eq!(row["idle_accepted"], serde_json::json!([]), "{row}");
    assert_eq!(row["causes"][0]["cause"], "stale_established", "{row}");
}

/// An idle pooled connection (its answer came) is listed, not called stale; a waiting one is
/// "awaiting an answer".
#[test]
fn idle_pooled_connection_is_not_stale() {
    if skip_unless_root("idle_pooled") {
        return;
    }
    let ns = Netns::new("pooled");
    let rows = sockets_in_stale_lab(&ns, "9414", |f| {
        vec![
            f["pooled"].as_u64().unwrap(),
            f["clients"][0].as_u64().unwrap(),
        ]
    });
    let (pooled_rows, client_rows) = (&rows[0], &rows[1]);
    let row = pooled_rows
        .iter()
        .find(|r| r["event"] == "sockets")
        .unwrap_or_else(|| panic!("{pooled_rows:?}"));
    assert_eq!(row["comm"], "tcpq-pooled", "{row}");
    let idle = &row["idle_established"][0];
    assert_eq!(
        (idle["rport"].as_u64(), idle["count"].as_u64()),
        (Some(9414), Some(1)),
        "{row}"
    );
    assert_eq!(idle["awaiting_reply"], 0, "{row}");
    assert_eq!(row["causes"], serde_json::json!([]), "{row}");
    let row = client_rows
        .iter()
        .find(|r| r["event"] == "sockets")
        .unwrap_or_else(|| panic!("{client_rows:?}"));
    assert_eq!(row["idle_established"][0]["awaiting_reply"], 1, "{row}");
    assert_eq!(row["causes"][0]["cause"], "stale_established", "{row}");
    assert!(
        row["causes"][0]["text"]
            .as_str()
            .unwrap()
            .contains("tcpq-client (pid "),
        "{row}"
    );
}

/// A process in a Kubernetes pod's cgroup (containerd, systemd driver shape) is named by its pod
/// and container in `sockets --json`.
#[test]
fn sockets_json_names_the_pod_and_container_of_the_process() {
    if skip_unless_root("sockets_pod") {
        return;
    }
    let ns = Netns::new("spod");
    let cg = TestCgroup::containerd_pod("sockets");
    let mut server = python_in(
        &ns,
        "import socket,os,time\nl=socket.socket(); l.bind(('127.0.0.1',9504)); l.listen(16)\nprint(os.getpid(),flush=True)\ntime.sleep(30)",
    );
    let pid = first_line(&mut server);
    cg.adopt(pid.parse().expect("the server's pid"));
    let row = sockets_row(&pid);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(row["states"]["LISTEN"], 1, "{row}");
    cg.assert_named_in(&row);
}
