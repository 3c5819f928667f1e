//! Outbound connects and ephemeral ports (root; real programs; network namespaces).
use std::{process::Command, time::Duration};

use tcpq_tests::*;

fn count_results(lines: &[serde_json::Value], pid: u64) -> std::collections::HashMap<String, u64> {
    let mut m = std::collections::HashMap::new();
    for v in lines
        .iter()
        .filter(|v| v["event"] == "connect" && v["pid"].as_u64() == Some(pid))
    {
        *m.entry(v["result"].as_str().unwrap().to_string())
            .or_insert(0) += v["count"].as_u64().unwrap();
    }
    m
}

#[test]
fn port_exhaustion_is_counted_and_explained() {
    if skip_unless_root("port_exhaustion") {
        return;
    }
    let ns = Netns::new("ports");
    let tracer = Tracer::start_cmd(
        &["trace", "connect", "--json", "--dst", "127.0.0.1:9000"],
        &[],
    );
    // Until interrupted: `tcpq ports` below must find it running however long its own start
    // takes (most of a minute to verify its programs under qemu's TCG).
    let lab = BackgroundLab::start(&ns, &["ports", "--port", "9000", "--duration", "120"]);
    let pid = lab.facts["pid"].as_u64().unwrap();
    let inode = ns.inode();
    // `tcpq ports` by pid while the lab runs: traces 2 s, then snapshots the namespace.
    let ports = tcpq()
        .args([
            "ports",
            "--pid",
            &pid.to_string(),
            "--duration",
            "2",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        ports.status.success(),
        "{}",
        String::from_utf8_lossy(&ports.stderr)
    );
    let done = lab.interrupt();
    let lines = tracer.stop();

    // Every failure the client saw, and every success, with the right process and destination.
    let counts = count_results(&lines, pid);
    eprintln!("tcpq {counts:?}; lab {done}");
    let failures = done["eaddrnotavail"].as_u64().unwrap();
    assert!(failures > 0, "the lab exhausts its 16 ports: {done}");
    assert_eq!(
        counts.get("EADDRNOTAVAIL").copied().unwrap_or(0),
        failures,
        "EADDRNOTAVAIL = what the client saw"
    );
    assert_eq!(
        counts.get("ok").copied().unwrap_or(0),
        done["connects_ok"].as_u64().unwrap()
    );
    for v in lines
        .iter()
        .filter(|v| v["event"] == "connect" && v["pid"].as_u64() == Some(pid))
    {
        assert_eq!(v["daddr"], "127.0.0.1", "{v}");
        assert_eq!(v["dport"], 9000, "{v}");
        assert_eq!(v["comm"], "tcpq-lab", "{v}");
        assert_eq!(v["netns"].as_u64(), Some(inode), "{v}");
        if v["result"] == "EADDRNOTAVAIL" {
            assert_eq!(v["cause"], "ports_exhausted", "{v}");
        }
    }

    // `tcpq ports`: ~100 % of the 16-port range in use, mostly TIME_WAIT, and the verdict.
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&ports.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let row = rows
        .iter()
        .find(|r| r["event"] == "ports" && r["dport"] == 9000)
        .unwrap_or_else(|| panic!("no row for :9000 in {rows:?}"));
    eprintln!("ports row {row}");
    assert_eq!(row["usable"], 16);
    assert!(row["used"].as_u64().unwrap() >= 15, "{row}");
    assert!(row["util"].as_f64().unwrap() >= 90.0, "{row}");
    let tw = row["states"]["TIME_WAIT"].as_u64().unwrap_or(0);
    assert!(
        tw * 2 > row["used"].as_u64().unwrap(),
        "most in TIME_WAIT: {row}"
    );
    assert!(row["eaddrnotavail"].as_u64().unwrap() > 0, "{row}");
    assert_eq!(row["tcp_tw_reuse"], 0);
    assert!(
        row["pids"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(pid)),
        "{row}"
    );
    let cause = &row["causes"][0];
    assert_eq!(cause["cause"], "ports_exhausted", "{row}");
    let text = cause["text"].as_str().unwrap();
    assert!(
        text.contains("ip_local_port_range 40000–40015") && text.contains("TIME_WAIT"),
        "{text}"
    );
    let fixes = cause["fix"].to_string();
    assert!(
        fixes.contains("ip_local_port_range")
            && fixes.contains("tcp_tw_reuse=1")
            && fixes.contains("keepalive"),
        "{fixes}"
    );
    assert!(
        fixes.contains("nsenter --net="),
        "commands target the lab's namespace: {fixes}"
    );
}

#[test]
fn syn_retransmits_and_latency_are_measured() {
    if skip_unless_root("syn_retransmits") {
        return;
    }
    let ns = Netns::new("rtx");
    let mut server = python_in(
        &ns,
        "import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('127.0.0.1',9100))\ns.listen(16)\nprint('up',flush=True)\ntime.sleep(30)",
    );
    std::thread::sleep(Duration::from_millis(500));
    nft_in(
        &ns,
        "table inet tcpq_test {\n chain in {\n  type filter hook input priority 0; policy accept;\n  tcp dport 9100 tcp flags & (syn | ack) == syn drop\n }\n}\n",
    );
    let tracer = Tracer::start_cmd(&["trace", "connect", "--json", "--dst", "127.0.0.1"], &[]);
    let before = ns.counters();
    let mut client = python_in(
        &ns,
        "import socket,os\nprint(os.getpid(),flush=True)\ns=socket.socket()\ns.settimeout(20)\ns.connect(('127.0.0.1',9100))\nprint('connected',flush=True)",
    );
    let client_pid = client.id();
    // It prints its pid just before connecting: from then on, the first SYN and the
    // retransmits within 1.8 s are dropped, a later one gets through (timed from that line, not
    // from the spawn: a Python start takes over a second under qemu's TCG).
    first_line(&mut client);
    std::thread::sleep(Duration::from_millis(1800));
    nft_in(&ns, "delete table inet tcpq_test\n");
    let out = client.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("connected"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = ns.counters();
    let refused = python_in(
        &ns,
        "import socket\ns=socket.socket()\ntry:\n s.connect(('127.0.0.1',9101))\nexcept ConnectionRefusedError:\n print('refused')",
    );
    let rout = refused.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&rout.stdout).contains("refused"));
    std::thread::sleep(Duration::from_millis(300));
    let lines = tracer.stop();
    let _ = server.kill();
    let _ = server.wait();

    let ev = lines
        .iter()
        .find(|v| v["event"] == "connect" && v["dport"] == 9100 && v["aggregated"] != true)
        .unwrap_or_else(|| panic!("no connect event: {lines:?}"));
    eprintln!("{ev}");
    // `ip netns exec` execs python in place, so the pid is the child's.
    assert_eq!(ev["pid"].as_u64(), Some(client_pid as u64), "{ev}");
    assert_eq!(ev["result"], "ok");
    let retrans = ev["syn_retrans"].as_u64().unwrap();
    assert!(retrans >= 2, "{ev}");
    assert_eq!(
        retrans,
        delta(&before, &after, "TcpExt:TCPSynRetrans"),
        "SYN retransmits = TcpExt TCPSynRetrans"
    );
    // Each dropped SYN costs one retransmit timeout (1 s; linear for the first SYN retransmits
    // since tcp_syn_linear_timeouts, exponential before): the handshake took at least that long.
    assert!(
        ev["handshake_us"].as_f64().unwrap() >= retrans as f64 * 980_000.0,
        "latency ≥ retransmits × RTO: {ev}"
    );
    assert!(ev["sport"].as_u64().unwrap() > 0);
    let r = lines
        .iter()
        .find(|v| v["event"] == "connect" && v["dport"] == 9101)
        .unwrap_or_else(|| panic!("no refused event: {lines:?}"));
    assert_eq!(r["result"], "refused", "{r}");
    assert_eq!(r["cause"], "connect_failures");
    assert!(r["sport"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["comm"], "python3");
}

#[test]
fn ports_errors_and_unprivileged_snapshot() {
    for (args, needle) in [
        (
            vec!["ports", "--pid", "no-such-process-xyz"],
            "no process named",
        ),
        (vec!["ports", "--dst", "not-an-address"], "invalid --dst"),
        (
            vec!["trace", "connect", "--dst", "1.2.3.4:99999"],
            "invalid --dst",
        ),
        (vec!["ports", "--duration", "soon"], "invalid duration"),
    ] {
        let out = tcpq().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    if !is_root() {
        return;
    }
    use std::os::unix::process::CommandExt as _;
    let out = Command::new(tcpq_bin())
        .args(["ports", "--duration", "1"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("snapshot only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client in a Kubernetes pod's cgroup (containerd, systemd driver shape) is named by its pod
/// and container in `trace connect --json`: its event line and its summary row (the pod UID and
/// the short container id: no runtime state on this machine gives the names). A host process's
/// lines say null.
#[test]
fn trace_connect_json_names_the_pod_and_container_of_a_client() {
    if skip_unless_root("connect_pod") {
        return;
    }
    let ns = Netns::new("cpod");
    let cg = TestCgroup::containerd_pod("connect");
    let tracer = Tracer::start_cmd(
        &["trace", "connect", "--json", "--dst", "127.0.0.1:9102"],
        &[],
    );
    // It waits to be in the pod's cgroup, is refused (nothing listens on :9102), and stays a
    // second.
    let mut client = python_in(
        &ns,
        "import socket,os,time\nprint(os.getpid(),flush=True)\nwhile 'cri-containerd-' not in open('/proc/self/cgroup').read(): time.sleep(0.02)\ns=socket.socket()\ntry:\n s.connect(('127.0.0.1',9102))\nexcept ConnectionRefusedError:\n print('refused',flush=True)\ntime.sleep(1)",
    );
    let pid: u64 = first_line(&mut client).parse().expect("the client's pid");
    cg.adopt(pid);
    assert_eq!(first_line(&mut client), "refused");
    let host = python_in(
        &ns,
        "import socket\ns=socket.socket()\ntry:\n s.connect(('127.0.0.1',9102))\nexcept ConnectionRefusedError:\n print('refused')",
    );
    let host_pid = host.id() as u64;
    let hout = host.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&hout.stdout).contains("refused"));
    let _ = client.wait();
    std::thread::sleep(Duration::from_millis(300));
    let lines = tracer.stop();

    let ev = lines
        .iter()
        .find(|v| v["event"] == "connect" && v["pid"].as_u64() == Some(pid))
        .unwrap_or_else(|| panic!("no connect line of pid {pid}: {lines:?}"));
    eprintln!("{ev}");
    assert_eq!(ev["result"], "refused", "{ev}");
    cg.assert_named_in(ev);
    let row = lines
        .iter()
        .rev()
        .find(|v| v["event"] == "connect_summary")
        .and_then(|s| {
            s["destinations"]
                .as_array()?
                .iter()
                .find(|d| d["pid"].as_u64() == Some(pid))
        })
        .unwrap_or_else(|| panic!("no summary row of pid {pid}: {lines:?}"));
    assert_eq!(row["pod"], ev["pod"], "{row}");
    assert_eq!(row["container"], ev["container"], "{row}");
    let h = lines
        .iter()
        .find(|v| v["event"] == "connect" && v["pid"].as_u64() == Some(host_pid))
        .unwrap_or_else(|| panic!("no connect line of the host process {host_pid}: {lines:?}"));
    assert!(
        h.get("pod").is_some_and(|p| p.is_null()) && h["container"].is_null(),
        "{h}"
    );
}
