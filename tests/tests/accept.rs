//! The accept side: queue wait of a slow acceptor, a saturated worker pool, EMFILE (root).
use std::{io::BufRead as _, time::Duration};

use tcpq_tests::*;

fn summary_for(lines: &[serde_json::Value], port: u16) -> &serde_json::Value {
    lines
        .iter()
        .rev()
        .find(|v| v["event"] == "accept_summary" && v["lport"] == port)
        .unwrap_or_else(|| panic!("no summary for :{port}: {lines:?}"))
}

#[test]
fn slow_acceptor_wait_and_verdict() {
    if skip_unless_root("slow_acceptor") {
        return;
    }
    let ns = Netns::new("slowacc");
    let tracer = Tracer::start_cmd(&["trace", "accept", "--json", "--port", "9500"], &[]);
    // Accepts one connection every 100 ms; 50 clients arrive at once.
    let mut server = python_in(
        &ns,
        "import socket,time\nl=socket.socket(); l.bind(('127.0.0.1',9500)); l.listen(128)\nprint('up',flush=True)\nkeep=[]\nfor _ in range(50):\n time.sleep(0.1); c,_=l.accept(); keep.append(c)\nprint('done',flush=True)\ntime.sleep(5)",
    );
    assert_eq!(first_line(&mut server), "up");
    let clients = python_in(
        &ns,
        "import socket,time\ncs=[]\nfor _ in range(50):\n s=socket.socket(); s.setblocking(False)\n try: s.connect(('127.0.0.1',9500))\n except BlockingIOError: pass\n cs.append(s)\ntime.sleep(7)",
    );
    assert_eq!(first_line(&mut server), "done");
    let lines = tracer.stop();
    let _ = server.kill();
    let _ = server.wait();
    drop(clients);
    let s = summary_for(&lines, 9500);
    eprintln!("{s}");
    assert_eq!(s["count"], 50, "{s}");
    // The i-th connection waits ≈ i × 100 ms: p99 ≈ 4.9 s, p50 ≈ 2.5 s.
    let p99 = s["wait"]["p99_us"].as_u64().unwrap();
    let p50 = s["wait"]["p50_us"].as_u64().unwrap();
    assert!((4_300_000..=5_600_000).contains(&p99), "p99 {p99} µs: {s}");
    assert!((2_000_000..=3_100_000).contains(&p50), "p50 {p50} µs: {s}");
    assert_eq!(s["causes"][0]["cause"], "app_not_accepting", "{s}");
    assert!(
        s["causes"][0]["text"]
            .as_str()
            .unwrap()
            .contains("not keeping up")
    );
}

#[test]
fn saturated_worker_pool_has_no_idle_acceptor() {
    if skip_unless_root("worker_pool") {
        return;
    }
    let ns = Netns::new("pool");
    // Five blocking workers share one listener; each holds a connection for 3 s.
    let mut pool = python_in(
        &ns,
        // The parent holds the listener until the test kills it (tcpq may take most of a minute
        // to start under qemu's TCG).
        "import socket,os,time\nl=socket.socket(); l.bind(('127.0.0.1',9501)); l.listen(256)\nfor _ in range(5):\n if os.fork()==0:\n  while True:\n   c,_=l.accept(); time.sleep(3); c.close()\nprint(os.getpid(),flush=True)\ntime.sleep(600)",
    );
    let parent = first_line(&mut pool);
    std::thread::sleep(Duration::from_millis(300));
    let tracer = Tracer::start_cmd(&["trace", "accept", "--json", "--port", "9501"], &[]);
    let mut clients = python_in(
        &ns,
        "import socket,time\ncs=[]\nfor _ in range(100):\n s=socket.socket(); s.setblocking(False)\n try: s.connect(('127.0.0.1',9501))\n except BlockingIOError: pass\n cs.append(s)\nprint('connected',flush=True)\ntime.sleep(600)",
    );
    // Counted from the connects (not from the client's start, which is slow under emulation),
    // past the workers' second accepts (3 s later): the workers were blocked in accept() before
    // tcpq attached, and where accept runs on fexit (kernels that allow fentry) a call already
    // in flight at attach returns through the old code — only their next accept is seen.
    assert_eq!(first_line(&mut clients), "connected");
    std::thread::sleep(Duration::from_millis(4500));
    let lines = tracer.stop();
    let _ = clients.kill();
    let _ = clients.wait();
    let _ = std::process::Command::new("pkill")
        .args(["-P", &parent])
        .status();
    let _ = pool.kill();
    let _ = pool.wait();
    let s = summary_for(&lines, 9501);
    eprintln!("{s}");
    assert_eq!(
        s["holders"].as_array().unwrap().len(),
        6,
        "the parent and 5 workers hold the socket: {s}"
    );
    assert_eq!(s["idle_acceptors"], 0, "{s}");
    assert_eq!(s["acceptors"].as_array().unwrap().len(), 5, "{s}");
}

#[test]
fn emfile_is_reported_with_the_limit() {
    if skip_unless_root("emfile") {
        return;
    }
    let ns = Netns::new("emfile");
    let tracer = Tracer::start_cmd(&["trace", "accept", "--json", "--port", "9502"], &[]);
    // A server whose descriptor limit leaves no room for the accepted socket.
    let mut server = python_in(
        &ns,
        "import socket,resource,time\nl=socket.socket(); l.bind(('127.0.0.1',9502)); l.listen(16)\nresource.setrlimit(resource.RLIMIT_NOFILE,(16,16))\nhold=[]\ntry:\n while True: hold.append(open('/dev/null'))\nexcept OSError: pass\nprint('full',flush=True)\nerrs=0\nfor _ in range(3):\n try: l.accept()\n except OSError: errs+=1\nprint(errs,flush=True)\ntime.sleep(3)",
    );
    // accept() fails with EMFILE before looking at the queue: no client is needed, but one
    // connects anyway, as in production.
    let clients = python_in(
        &ns,
        "import socket,time\ns=socket.socket(); s.connect(('127.0.0.1',9502)); time.sleep(4)",
    );
    let mut out = std::io::BufReader::new(server.stdout.take().unwrap());
    let (mut a, mut b) = (String::new(), String::new());
    out.read_line(&mut a).unwrap();
    out.read_line(&mut b).unwrap();
    assert_eq!((a.trim(), b.trim()), ("full", "3"));
    std::thread::sleep(Duration::from_millis(300));
    let lines = tracer.stop();
    let _ = server.kill();
    let _ = server.wait();
    drop(clients);
    let s = summary_for(&lines, 9502);
    eprintln!("{s}");
    assert_eq!(s["errors"]["EMFILE"], 3, "{s}");
    assert_eq!(s["causes"][0]["cause"], "accept_errors", "{s}");
    assert!(
        s["causes"][0]["text"]
            .as_str()
            .unwrap()
            .contains("limit is 16"),
        "{s}"
    );
}

/// A server in a Kubernetes pod's cgroup (containerd, systemd driver shape) is named by its pod
/// and container in `trace accept --json`'s line for each connection it accepted.
#[test]
fn trace_accept_json_names_the_pod_and_container_of_the_acceptor() {
    if skip_unless_root("accept_pod") {
        return;
    }
    let ns = Netns::new("apod");
    let cg = TestCgroup::containerd_pod("accept");
    let tracer = Tracer::start_cmd(&["trace", "accept", "--json", "--port", "9503"], &[]);
    // It waits to be in the pod's cgroup, then listens and accepts one connection.
    let mut server = python_in(
        &ns,
        "import socket,os,time\nprint(os.getpid(),flush=True)\nwhile 'cri-containerd-' not in open('/proc/self/cgroup').read(): time.sleep(0.02)\nl=socket.socket(); l.bind(('127.0.0.1',9503)); l.listen(16)\nprint('up',flush=True)\nc,_=l.accept()\nprint('accepted',flush=True)\ntime.sleep(2)",
    );
    let pid: u64 = first_line(&mut server).parse().expect("the server's pid");
    cg.adopt(pid);
    assert_eq!(first_line(&mut server), "up");
    let mut clients = python_in(
        &ns,
        "import socket,time\ns=socket.socket(); s.connect(('127.0.0.1',9503)); time.sleep(3)",
    );
    assert_eq!(first_line(&mut server), "accepted");
    std::thread::sleep(Duration::from_millis(300));
    let lines = tracer.stop();
    let _ = server.kill();
    let _ = server.wait();
    let _ = clients.kill();
    let _ = clients.wait();
    let ev = lines
        .iter()
        .find(|v| v["event"] == "accept" && v["pid"].as_u64() == Some(pid))
        .unwrap_or_else(|| panic!("no accept line of pid {pid}: {lines:?}"));
    eprintln!("{ev}");
    assert_eq!(ev["result"], "ok", "{ev}");
    assert_eq!(ev["lport"], 9503, "{ev}");
    cg.assert_named_in(ev);
}
