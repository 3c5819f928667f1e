//! Real servers: Debian's nginx (master + 2 workers, backlog 16) under wrk with 1000 connections,
//! in a network namespace of its own. tcpq's counts must equal the namespace's kernel counters
//! exactly, even with both CPUs racing on the listener.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tcpq_tests::*;

struct Nginx {
    ns: String,
    conf: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Nginx {
    fn start(ns: &Netns, port: u16, backlog: u32) -> Self {
        let dir = std::env::temp_dir().join(format!("tcpq-nginx-{}-{}", std::process::id(), port));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 4096; }}\nhttp {{\n access_log off;\n client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n server {{ listen 127.0.0.1:{port} backlog={backlog}; location / {{ return 200 \"ok\\n\"; }} }}\n}}\n"
            ),
        )
        .unwrap();
        let st = Command::new("ip")
            .args(["netns", "exec", &ns.name, "nginx", "-c"])
            .arg(&conf)
            .status()
            .expect("nginx (cargo xtask setup installs it)");
        assert!(st.success(), "nginx failed to start");
        let pidfile = dir.join("nginx.pid");
        let t = Instant::now();
        while !pidfile.exists() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        Self {
            ns: ns.name.clone(),
            conf,
            dir,
        }
    }

    fn master_pid(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("nginx.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.ns, "nginx", "-s", "stop", "-c"])
            .arg(&self.conf)
            .stderr(Stdio::null())
            .status();
        std::thread::sleep(Duration::from_millis(300));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn nginx_under_wrk_counts_match_the_kernel() {
    if skip_unless_root("nginx_under_wrk") {
        return;
    }
    for tool in ["nginx", "wrk"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .success(),
            "{tool} missing: run `cargo xtask setup`"
        );
    }
    let ns = Netns::new("ngx");
    let inode = ns.inode();
    let tracer = Tracer::start(&["--port", "18080"]);
    let nginx = Nginx::start(&ns, 18080, 16);
    let master = nginx.master_pid();
    let before = ns.counters();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "wrk",
            "-t2",
            "-c1000",
            "-d4s",
            "-H",
            "Connection: close",
            "http://127.0.0.1:18080/",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "wrk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_secs(2)); // let retransmitted SYNs/ACKs settle
    let after = ns.counters();
    let lines = tracer.stop();
    drop(nginx);

    let counts = counts_by_kind(&lines, inode);
    let syn = counts.get("syn").copied().unwrap_or(0);
    let ack = counts.get("ack").copied().unwrap_or(0);
    let cookie = counts.get("cookie").copied().unwrap_or(0);
    let kernel_overflows = delta(&before, &after, "TcpExt:ListenOverflows");
    eprintln!(
        "wrk: {}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("Requests/sec"))
            .collect::<String>()
    );
    let fin = final_summary(&lines);
    eprintln!(
        "tcpq {counts:?}; kernel ListenOverflows {kernel_overflows}, SyncookiesSent {}; tcpq kernel_counts {} lost {} unresolved {} other {} cookies_unmatched {}",
        delta(&before, &after, "TcpExt:SyncookiesSent"),
        fin["kernel_counts"],
        fin["lost_events"],
        fin["unresolved"],
        fin["other_drops"],
        fin["cookies_unmatched"]
    );
    assert!(
        syn + ack > 0,
        "a backlog of 16 overflows under 1000 connections: {counts:?}"
    );
    // Exact in 8 of 8 runs since packets that wait in the listener's backlog (nginx's accept()
    // holds its lock) are matched on whichever CPU release_sock() runs. Allow 0.1 % below for
    // races not yet seen, never above (tcpq must not report a refusal the kernel did not
    // make), and print any difference.
    if syn + ack != kernel_overflows {
        eprintln!(
            "NOTE: syn+ack {} vs ListenOverflows {kernel_overflows}",
            syn + ack
        );
    }
    assert!(
        syn + ack <= kernel_overflows
            && (kernel_overflows - (syn + ack)) * 1000 <= kernel_overflows,
        "syn+ack {} ≈ ListenOverflows {kernel_overflows}",
        syn + ack
    );
    // Cookies: exact since SYN-ACKs of backlogged SYNs are matched too; allow 3 % (an older
    // one-in-fifteen miss of ~30) and print any difference.
    let sent = delta(&before, &after, "TcpExt:SyncookiesSent");
    if cookie != sent {
        eprintln!("NOTE: cookies {cookie} vs SyncookiesSent {sent}");
    }
    assert!(
        cookie <= sent && (sent - cookie) * 100 <= sent * 3,
        "cookies {cookie} ≈ SyncookiesSent {sent}"
    );
    assert_eq!(
        counts.get("synq").copied().unwrap_or(0),
        delta(&before, &after, "TcpExt:TCPReqQFullDrop")
    );

    let s = listener_summary(final_summary(&lines), inode);
    assert_eq!(s["verdicts"], serde_json::Value::Null); // per-run field, not per listener
    assert_eq!(final_summary(&lines)["verdicts"], "confirmed");
    assert_eq!(s["comm"], "nginx");
    assert_eq!(
        s["pid"].as_u64(),
        Some(master),
        "the master owns the listener"
    );
    assert_eq!(
        s["pids"].as_array().unwrap().len(),
        3,
        "master and 2 workers share it: {s}"
    );
    assert_eq!(
        s["listen_arg"], 16,
        "nginx's backlog=16 seen at listen(): {s}"
    );
    assert_eq!(causes(s)[0], "accept_queue_full", "{s}");
    assert!(
        s["causes"][0]["fix"][0]
            .as_str()
            .unwrap()
            .contains("listen 18080 backlog="),
        "{s}"
    );
}

/// nginx proxying to a local upstream over TCP with a 16-port range: the EADDRNOTAVAIL
/// failures tcpq counts for nginx equal the `connect() … failed (99: Cannot assign requested
/// address)` lines nginx logs.
#[test]
fn nginx_upstream_eaddrnotavail_matches_its_error_log() {
    if skip_unless_root("nginx_upstream_eaddrnotavail") {
        return;
    }
    let ns = Netns::new("ngxup");
    for (path, value) in [
        ("/proc/sys/net/ipv4/ip_local_port_range", "40000 40015"),
        ("/proc/sys/net/ipv4/tcp_tw_reuse", "0"),
    ] {
        let st = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "sh",
                "-c",
                &format!("echo {value} > {path}"),
            ])
            .status()
            .unwrap();
        assert!(st.success());
    }
    // Upstream: answers with Content-Length, then waits for nginx to close first (so the
    // TIME_WAIT sockets, and the port shortage, are nginx's).
    let mut upstream = python_in(
        &ns,
        "import socketserver\nclass H(socketserver.BaseRequestHandler):\n def handle(self):\n  d=b''\n  while b'\\r\\n\\r\\n' not in d:\n   c=self.request.recv(4096)\n   if not c: return\n   d+=c\n  self.request.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok')\n  while self.request.recv(4096): pass\nsocketserver.ThreadingTCPServer.allow_reuse_address=True\nsocketserver.ThreadingTCPServer.daemon_threads=True\nsocketserver.ThreadingTCPServer(('127.0.0.1',9000),H).serve_forever()",
    );
    let dir = std::env::temp_dir().join(format!("tcpq-nginx-up-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!("worker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log error;\nevents {{ worker_connections 4096; }}\nhttp {{\n access_log off;\n client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n server {{ listen 127.0.0.1:18081; location / {{ proxy_pass http://127.0.0.1:9000; }} }}\n}}\n"),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let tracer = Tracer::start_cmd(
        &["trace", "connect", "--json", "--dst", "127.0.0.1:9000"],
        &[],
    );
    let st = Command::new("ip")
        .args(["netns", "exec", &ns.name, "nginx", "-c"])
        .arg(&conf)
        .status()
        .unwrap();
    assert!(st.success());
    std::thread::sleep(Duration::from_millis(500));
    let master: u64 = std::fs::read_to_string(dir.join("nginx.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "wrk",
            "-t2",
            "-c20",
            "-d3s",
            "http://127.0.0.1:18081/",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("ip")
        .args(["netns", "exec", &ns.name, "nginx", "-s", "stop", "-c"])
        .arg(&conf)
        .status();
    std::thread::sleep(Duration::from_millis(500));
    let lines = tracer.stop();
    let _ = upstream.kill();
    let _ = upstream.wait();

    let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
    let logged = log
        .lines()
        .filter(|l| l.contains("(99: Cannot assign requested address)"))
        .count() as u64;
    let mut seen = 0u64;
    let mut nginx_pids = std::collections::BTreeSet::new();
    for v in lines
        .iter()
        .filter(|v| v["event"] == "connect" && v["result"] == "EADDRNOTAVAIL")
    {
        assert_eq!(v["comm"], "nginx", "{v}");
        nginx_pids.insert(v["pid"].as_u64().unwrap());
        seen += v["count"].as_u64().unwrap();
    }
    eprintln!(
        "nginx logged {logged}, tcpq counted {seen} EADDRNOTAVAIL (workers {nginx_pids:?}, master {master})"
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(logged > 0, "16 ports run out under wrk -c20: {log}");
    assert_eq!(seen, logged, "tcpq's EADDRNOTAVAIL = nginx's error log");
    assert!(
        !nginx_pids.contains(&master),
        "the workers connect upstream, not the master"
    );
}
