//! Least privilege for `tcpq export` (issue 19, item 5): started as root, once its programs are
//! loaded every thread keeps exactly the documented capabilities (permitted, effective and
//! bounding; nothing inheritable or ambient; no_new_privs), and with only those it still enters
//! a namespace created after start, attaches its tier-2 programs of every kind (cgroup_skb, raw
//! tracepoint, tracepoint) when a listener overflows, counts the refusals as the kernel does,
//! names the owners from /proc/PID/fd — a full root process (CAP_SYS_PTRACE) and one of
//! another user (CAP_DAC_READ_SEARCH) — and detaches everything within a second of SIGTERM.
use std::{
    collections::HashSet,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tcpq_tests::*;

/// CAP_DAC_READ_SEARCH (2), CAP_NET_ADMIN (12), CAP_SYS_PTRACE (19), CAP_SYS_ADMIN (21):
/// `RUNTIME_NEEDS` in tcpq-user/src/kernel/privilege.rs says why each.
const KEPT: u64 = 1 << 2 | 1 << 12 | 1 << 19 | 1 << 21;
const KEPT_NAMES: [&str; 4] = [
    "CAP_SYS_ADMIN",
    "CAP_NET_ADMIN",
    "CAP_SYS_PTRACE",
    "CAP_DAC_READ_SEARCH",
];

/// A listener on port argv[1] with a backlog of 1 that never accepts (so no accept event names
/// its owner: only /proc/PID/fd does), and 12 connections to it.
const IDLE_LISTENER: &str = r#"
import socket, sys, time
port = int(sys.argv[1])
s = socket.socket(); s.bind(('127.0.0.1', port)); s.listen(1)
cs = []
for i in range(12):
    c = socket.socket(); c.setblocking(False)
    try: c.connect(('127.0.0.1', port))
    except BlockingIOError: pass
    cs.append(c)
print('ready', flush=True)
time.sleep(60)
"#;

/// `IDLE_LISTENER` in `ns` on `port`, as `uid` (root keeps every capability).
fn idle_listener(ns: &Netns, port: u16, uid: u32) -> Child {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name]);
    if uid != 0 {
        cmd.arg("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups");
    }
    // Debian's python: the root user's own (pyenv) may not be readable by another uid.
    let mut child = cmd
        .args(["/usr/bin/python3", "-c", IDLE_LISTENER, &port.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (and setpriv, util-linux)");
    assert_eq!(first_line(&mut child), "ready", "listener on {port}");
    child
}

struct Export {
    child: Child,
    addr: String,
}

impl Drop for Export {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every thread's capability sets, as the kernel reports them.
fn assert_every_task_reduced(pid: u32) -> usize {
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the exporter's tasks")
        .filter_map(Result::ok)
        .collect();
    for t in &tasks {
        let status = std::fs::read_to_string(t.path().join("status")).expect("task status");
        let tid = t.file_name().to_string_lossy().into_owned();
        for (field, want) in [
            ("CapEff:", KEPT),
            ("CapPrm:", KEPT),
            ("CapBnd:", KEPT),
            ("CapInh:", 0),
            ("CapAmb:", 0),
            ("NoNewPrivs:", 1),
        ] {
            assert_eq!(
                status_field(&status, field),
                want,
                "task {tid} {field} {:#x}",
                status_field(&status, field)
            );
        }
    }
    tasks.len()
}

fn sum_of(series: &std::collections::HashMap<String, f64>, prefix: &str, has: &[&str]) -> f64 {
    series
        .iter()
        .filter(|(k, _)| k.starts_with(prefix) && has.iter().all(|h| k.contains(h)))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn export_keeps_only_its_runtime_capabilities_and_still_arms_counts_and_detaches() {
    if skip_unless_root("privilege_export") {
        return;
    }
    let check = tcpq()
        .args(["check", "--json"])
        .output()
        .expect("tcpq check");
    let check: serde_json::Value =
        serde_json::from_slice(&check.stdout).expect("check --json is one object");
    let said: Vec<&str> = check["export_keeps"]
        .as_array()
        .unwrap_or_else(|| panic!("export_keeps in {check}"))
        .iter()
        .map(|k| k["capability"].as_str().unwrap())
        .collect();
    assert_eq!(said, KEPT_NAMES, "tcpq check: {check}");

    let addr = free_loopback_addr();
    let mut e = Export {
        child: tcpq()
            .args(["export", "--listen", &addr, "--interval", "300ms"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tcpq export"),
        addr,
    };
    let pid = e.child.id();
    let t = Instant::now();
    while scrape(&e.addr).is_none() {
        // A hang guard: export verifies every family's programs first (most of a minute or
        // more under qemu's TCG).
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "/metrics never answered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let threads = assert_every_task_reduced(pid);
    assert!(threads >= 2, "the HTTP thread runs too: {threads} tasks");

    // Created after the drop: tier 0 has to enter it (setns).
    let ns = Netns::new("priv");
    let inode = ns.inode().to_string();
    let before = ns.counters();
    let mut idle = [idle_listener(&ns, 9000, 65534), idle_listener(&ns, 9001, 0)];
    let lab = BackgroundLab::start(&ns, &["overflow", "--duration", "3"]);
    let mut attached = Vec::new();
    let mut prog_ids = HashSet::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        let now = attached_by(pid);
        if now.len() > attached.len() {
            attached = now;
            prog_ids = bpf_programs_of(pid);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let during = scrape(&e.addr).expect("scrape during the incident");
    lab.finish();
    for child in &mut idle {
        let _ = child.kill();
        let _ = child.wait();
    }
    std::thread::sleep(Duration::from_secs(2));
    let after_counters = ns.counters();
    std::thread::sleep(Duration::from_millis(900)); // the last interval folded in
    let text = scrape(&e.addr).expect("scrape after the incident");

    // Every attach kind still works with the reduced set.
    for (prog, kind) in [
        ("listen_ingress", "cgroup_skb"),
        // (Counters first leaves the outcome hooks out; SYN-ACK retransmits are the listen
        // family's raw tracepoint armed with it. Kernel names are cut at 15 bytes.)
        ("synack_retransm", "raw tracepoint"),
        // accept()'s results: a syscall tracepoint, or fexit where the kernel allows fentry.
        ("accept_exit4|accept_fexit", "tracepoint or fexit"),
    ] {
        assert!(
            attached.iter().any(|a| prog.split('|').any(|p| a == p)),
            "{prog} ({kind}) attached after the drop: {attached:?}"
        );
    }
    assert!(
        during.contains("tcpq_family_armed{family=\"listen\"} 1"),
        "{during}"
    );
    let after = metric_series(&text);
    let netns = format!("netns=\"{inode}\"");
    let refused = sum_of(&after, "tcpq_listen_refused_total{", &[&netns]);
    let kinds = sum_of(&after, "tcpq_listen_refusals_total{", &[&netns]);
    let drops = delta(&before, &after_counters, "TcpExt:ListenDrops") as f64;
    let overflows = delta(&before, &after_counters, "TcpExt:ListenOverflows") as f64;
    eprintln!(
        "after the drop: attached {attached:?}; refused {refused} (kinds {kinds}); kernel ListenDrops {drops}, ListenOverflows {overflows}"
    );
    assert!(drops > 0.0, "the incident refused connections");
    assert_eq!(refused, drops, "tcpq_listen_refused_total == ListenDrops");
    assert!(kinds > 0.0 && kinds <= overflows, "{kinds} vs {overflows}");
    // Owners found through /proc/PID/fd alone: one of uid 65534 (its fd directory is mode 0500:
    // CAP_DAC_READ_SEARCH, and CAP_SYS_PTRACE for another uid) and a root process with every
    // capability (CAP_SYS_PTRACE once ours are fewer than its); the lab's (it accepts).
    for (listener, process) in [
        ("127.0.0.1:9000", "python3"),
        ("127.0.0.1:9001", "python3"),
        ("127.0.0.1:8080", "tcpq-lab"),
    ] {
        let owned = sum_of(
            &after,
            "tcpq_listen_refused_total{",
            &[
                &netns,
                &format!("listener=\"{listener}\""),
                &format!("process=\"{process}\""),
            ],
        );
        assert!(owned > 0.0, "{listener} owned by {process}: {text}");
    }

    // SIGTERM: gone within a second, its programs with it.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let t = Instant::now();
    let status = loop {
        if let Some(s) = e.child.try_wait().expect("wait for tcpq export") {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "export still runs 1 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "export exited with {status}");
    let left: Vec<_> = attached_tcpq_programs()
        .into_iter()
        .filter(|a| prog_ids.contains(&a.prog_id))
        .collect();
    assert!(left.is_empty(), "still attached after exit: {left:?}");
}
