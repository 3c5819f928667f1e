//! Reliability: loss is counted (and kernel-side counts stay exact), and every way tcpq can be
//! stopped leaves no program attached (root).
use std::{collections::HashSet, time::Duration};

use tcpq_tests::*;

/// IDs of loaded BPF programs (any owner).
fn program_ids() -> HashSet<u32> {
    aya::programs::loaded_programs()
        .flatten()
        .map(|p| p.id())
        .collect()
}

/// `trace overflow --json` (with `env`) while 1500 non-blocking connects hit a listener with
/// backlog 1 on `port` that never accepts: (the tracer's lines, ListenOverflows over the flood).
fn traced_flood(ns: &Netns, port: u16, env: &[(&str, &str)]) -> (Vec<serde_json::Value>, u64) {
    let tracer = Tracer::start_with_env(&[], env);
    let mut server = python_in(
        ns,
        &format!(
            "import socket,time\nl=socket.socket(); l.bind(('127.0.0.1',{port})); l.listen(1)\nprint('up',flush=True)\ntime.sleep(15)"
        ),
    );
    {
        use std::io::Read as _;
        let mut b = [0u8; 3];
        server.stdout.as_mut().unwrap().read_exact(&mut b).unwrap();
    }
    let before = ns.counters();
    let flood = python_in(
        ns,
        &format!(
            "import socket\ncs=[]\nfor _ in range(1500):\n s=socket.socket(); s.setblocking(False)\n try: s.connect(('127.0.0.1',{port}))\n except BlockingIOError: pass\n cs.append(s)\nimport time; time.sleep(1)"
        ),
    );
    assert!(flood.wait_with_output().unwrap().status.success());
    let after = ns.counters();
    std::thread::sleep(Duration::from_millis(1500));
    let lines = tracer.stop();
    let _ = server.kill();
    let _ = server.wait();
    (lines, delta(&before, &after, "TcpExt:ListenOverflows"))
}

#[test]
fn ring_overflow_is_counted_and_kernel_counts_stay_exact() {
    if skip_unless_root("ring_overflow") {
        return;
    }
    let ns = Netns::new("loss");
    let inode = ns.inode();
    // A flood far beyond a 4 KiB ring read slowly.
    let (lines, overflows) = traced_flood(&ns, 9600, &[("TCPQ_RING_BYTES", "4096")]);
    let fin = final_summary(&lines);
    let lost = fin["lost_events"].as_u64().unwrap();
    let kernel = fin["kernel_counts"]["syn"].as_u64().unwrap()
        + fin["kernel_counts"]["ack"].as_u64().unwrap();
    let seen: u64 = counts_by_kind(&lines, inode)
        .iter()
        .filter(|(k, _)| *k == "syn" || *k == "ack")
        .map(|(_, n)| n)
        .sum();
    eprintln!("kernel {kernel}, seen {seen}, lost {lost}, ListenOverflows {overflows}");
    assert!(lost > 0, "a 4 KiB ring read slowly must overflow");
    assert_eq!(
        kernel, overflows,
        "per-CPU kernel counts stay exact despite the loss"
    );
    // The lost records were counted per listener in the kernel: the listener's lines (events
    // plus aggregated lines) still add up to every refusal.
    assert_eq!(
        seen, kernel,
        "per-listener counts stay exact despite the loss"
    );
    assert!(fin["unsent_events"].as_u64().unwrap() >= lost);
}

#[test]
fn over_the_line_budget_refusals_are_counted_in_the_kernel_not_lost() {
    if skip_unless_root("line_budget") {
        return;
    }
    let ns = Netns::new("budget");
    let inode = ns.inode();
    // 20 records a second for the whole machine: nearly everything goes to the kernel tally.
    let (lines, overflows) = traced_flood(&ns, 9602, &[("TCPQ_LISTEN_BUDGET", "20")]);
    let fin = final_summary(&lines);

    let seen: u64 = counts_by_kind(&lines, inode)
        .iter()
        .filter(|(k, _)| *k == "syn" || *k == "ack")
        .map(|(_, n)| n)
        .sum();
    let single = lines
        .iter()
        .filter(|v| v["event"] != "summary" && v["netns"].as_u64() == Some(inode))
        .filter(|v| v["aggregated"] != true)
        .count();
    let unsent = fin["unsent_events"].as_u64().unwrap();
    let listener = listener_summary(fin, inode);
    let listener_total = listener["counts"]["syn"].as_u64().unwrap_or(0)
        + listener["counts"]["ack"].as_u64().unwrap_or(0);
    eprintln!(
        "ListenOverflows {overflows}, lines' total {seen}, listener {listener_total}, single lines {single}, unsent {unsent}, lost {}",
        fin["lost_events"]
    );
    assert!(
        overflows > 500,
        "the flood overflowed the queue: {overflows}"
    );
    assert_eq!(
        fin["lost_events"], 0,
        "nothing lost: over budget is counted"
    );
    assert!(unsent > 0, "the budget held records back");
    assert!(
        (single as u64) < overflows / 2,
        "most refusals became aggregated counts, not lines: {single} lines"
    );
    assert_eq!(seen, overflows, "the lines add up to every refusal");
    assert_eq!(listener_total, overflows, "the listener's count is exact");
}

#[test]
fn every_way_of_stopping_detaches_everything() {
    if skip_unless_root("detach") {
        return;
    }
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGKILL] {
        let before = program_ids();
        let mut child = tcpq()
            .args(["trace", "overflow", "--json"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait for the banner: the programs are attached by then.
        {
            use std::io::BufRead as _;
            let mut line = String::new();
            std::io::BufReader::new(child.stderr.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert!(line.starts_with("tcpq: tracing"), "{line}");
        }
        let ours: HashSet<u32> = program_ids().difference(&before).copied().collect();
        assert!(
            ours.len() >= 6,
            "tcpq attached its programs ({} new)",
            ours.len()
        );
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = child.wait().unwrap();
        if sig != libc::SIGKILL {
            assert!(status.success(), "signal {sig}: clean exit, got {status}");
        }
        // The kernel releases programs when the last fd/link goes; give it a moment.
        let mut left = ours.clone();
        for _ in 0..50 {
            let now = program_ids();
            left = ours.intersection(&now).copied().collect();
            if left.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            left.is_empty(),
            "signal {sig}: programs still loaded: {left:?}"
        );
    }
    assert!(
        !std::path::Path::new("/sys/fs/bpf/tcpq").exists(),
        "tcpq pins nothing"
    );
}

#[test]
fn loss_is_shown_by_top_and_export() {
    if skip_unless_root("loss_top_export") {
        return;
    }
    use std::io::{BufRead as _, Read as _, Write as _};
    let ns = Netns::new("losstop");
    let mut top = tcpq()
        // Every program from the start: the one-shot flood below is over before tier 0 would
        // arm the listen family (this test is about loss being shown, not about arming).
        .args(["top", "--json", "-d", "500ms", "--hooks", "all"])
        .env("TCPQ_RING_BYTES", "4096")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = "127.0.0.1:19465";
    let mut export = tcpq()
        .args([
            "export",
            "--listen",
            addr,
            "--interval",
            "300ms",
            "--hooks",
            "all",
        ])
        .env("TCPQ_RING_BYTES", "4096")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut frames = std::io::BufReader::new(top.stdout.take().unwrap()).lines();
    let _ = frames.next(); // attached
    std::thread::sleep(Duration::from_millis(1500)); // the exporter too
    let mut server = python_in(
        &ns,
        "import socket,time\nl=socket.socket(); l.bind(('127.0.0.1',9601)); l.listen(1)\nprint('up',flush=True)\ntime.sleep(15)",
    );
    {
        let mut b = [0u8; 3];
        server.stdout.as_mut().unwrap().read_exact(&mut b).unwrap();
    }
    let flood = python_in(
        &ns,
        "import socket\ncs=[]\nfor _ in range(1500):\n s=socket.socket(); s.setblocking(False)\n try: s.connect(('127.0.0.1',9601))\n except BlockingIOError: pass\n cs.append(s)\nimport time; time.sleep(1)",
    );
    assert!(flood.wait_with_output().unwrap().status.success());
    std::thread::sleep(Duration::from_millis(800));
    let mut lost_frame = None;
    for _ in 0..6 {
        let Some(Ok(line)) = frames.next() else { break };
        let f: serde_json::Value = serde_json::from_str(&line).unwrap();
        if f["lost_total"].as_u64().unwrap_or(0) > 0 {
            lost_frame = Some(f);
            break;
        }
    }
    let mut s = std::net::TcpStream::connect(addr).expect("exporter up");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    for child in [&mut top, &mut export] {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
    let _ = server.kill();
    let _ = server.wait();
    let f = lost_frame.expect("a top frame reporting lost events");
    assert!(f["lost_total"].as_u64().unwrap() > 0);
    let lost: f64 = body
        .lines()
        .find(|l| l.starts_with("tcpq_lost_events_total{family=\"listen\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no listen loss series: {body}"));
    assert!(lost > 0.0, "export counts the loss: {body}");
}

/// SYNs from a million distinct clients (127.a.b.c:port on loopback; checksums computed
/// incrementally) at a listener whose accept queue is full: each one is refused.
const MILLION_SYNS: &str = r#"
import socket, struct, sys
N = 1_000_000
dst = socket.inet_aton('127.0.0.1'); dport = 9700
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
def fold(x):
    while x >> 16: x = (x & 0xffff) + (x >> 16)
    return x
# TCP header after the source port (18 bytes, checksum 0): seq 1, SYN, window 64240.
rest = struct.pack('!HIIBBHHH', dport, 1, 0, 5 << 4, 0x02, 64240, 0, 0)
base = fold(sum(struct.unpack('!9H', rest)) + (dst[0] << 8 | dst[1]) + (dst[2] << 8 | dst[3]) + 6 + 20)
sent = 0
for i in range(N):
    a, b, c = (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff
    sport = 1024 + (i % 60000)
    src = bytes((127, 1 + a, b, c))
    ck = 0xffff - fold(base + ((127 << 8) | (1 + a)) + ((b << 8) | c) + sport)
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 40, 0, 0, 64, 6, 0, src, dst)
    tcp = struct.pack('!H', sport) + rest[:14] + struct.pack('!H', ck) + rest[16:]
    s.sendto(ip + tcp, ('127.0.0.1', 0))
    sent += 1
print(sent, flush=True)
"#;

#[test]
fn a_million_client_tuples_keep_memory_bounded_and_counts_exact() {
    if skip_unless_root("million_tuples") {
        return;
    }
    use std::io::Read as _;
    let ns = Netns::new("mtup");
    // A listener that never accepts, its queue (backlog 1) filled by two clients.
    let mut server = python_in(
        &ns,
        "import socket,time\nl=socket.socket(); l.bind(('127.0.0.1',9700)); l.listen(1)\nc=[socket.create_connection(('127.0.0.1',9700)) for _ in range(2)]\nprint('up',flush=True)\ntime.sleep(120)",
    );
    {
        let mut b = [0u8; 3];
        server.stdout.as_mut().unwrap().read_exact(&mut b).unwrap();
    }
    let tracer = Tracer::start(&["--port", "9700"]);
    let pid = tracer.pid();
    let before = ns.counters();
    let start_rss = rss_kib(pid).unwrap_or(0);
    let mut flood = python_in(&ns, MILLION_SYNS);
    let mut peak = start_rss;
    let started = std::time::Instant::now();
    loop {
        if let Some(k) = rss_kib(pid) {
            peak = peak.max(k);
        }
        if let Ok(Some(_)) = flood.try_wait() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the flood did not finish"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut stdout = String::new();
    let mut stderr = String::new();
    flood
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    flood
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let sent: u64 = stdout.trim().parse().unwrap_or(0);
    std::thread::sleep(Duration::from_secs(1));
    let after = ns.counters();
    let lines = tracer.stop();
    let _ = server.kill();
    let _ = server.wait();
    let fin = final_summary(&lines);
    let kernel = fin["kernel_counts"]["syn"].as_u64().unwrap();
    let overflows = delta(&before, &after, "TcpExt:ListenOverflows");
    eprintln!(
        "sent {sent} SYNs from distinct clients in {:.1} s; tcpq syn {kernel}, ListenOverflows {overflows}, lost {}; RSS {} → peak {} KiB",
        started.elapsed().as_secs_f64(),
        fin["lost_events"],
        start_rss,
        peak
    );
    assert_eq!(sent, 1_000_000, "{stderr}");
    assert!(overflows >= 999_000, "the kernel refused them: {overflows}");
    assert_eq!(kernel, overflows, "kernel-side counts stay exact");
    assert!(
        peak < 100 * 1024,
        "RSS stays bounded under 1M distinct clients: peak {peak} KiB"
    );
}

#[test]
fn a_syn_storm_is_counted_exactly_with_nothing_lost() {
    if skip_unless_root("syn_storm") {
        return;
    }
    let ns = Netns::new("storm");
    let inode = ns.inode();
    let tracer = Tracer::start(&["--port", "9703"]);
    let before = ns.counters();
    // One raw SYN sender per CPU, as fast as the machine goes, at a full listener.
    let (_, done) = run_lab(&ns, &["storm", "--port", "9703", "--duration", "2s"]);
    let after = ns.counters();
    std::thread::sleep(Duration::from_millis(1500));
    let lines = tracer.stop();
    let fin = final_summary(&lines);
    let overflows = delta(&before, &after, "TcpExt:ListenOverflows");
    let listener = listener_summary(fin, inode);
    let counted = listener["counts"]["syn"].as_u64().unwrap_or(0);
    let lines_total = counts_by_kind(&lines, inode)
        .get("syn")
        .copied()
        .unwrap_or(0);
    eprintln!(
        "storm: {} SYNs sent in {} s, ListenOverflows {overflows}, tcpq {counted} (lines {lines_total}), unsent {}, lost {}",
        done["syns_sent"], done["seconds"], fin["unsent_events"], fin["lost_events"]
    );
    assert!(
        overflows > 100_000,
        "the storm refused many SYNs: {overflows}"
    );
    // (A SYN the loopback backlog dropped before TCP saw it is sent but never refused.)
    assert!(done["syns_sent"].as_u64().unwrap_or(0) >= overflows);
    assert_eq!(counted, overflows, "the listener's count is exact");
    assert_eq!(lines_total, overflows, "the lines add up to every refusal");
    assert_eq!(fin["lost_events"], 0, "nothing lost");
}
