//! Conntrack table full vs rule drops, and the table's top consumers (root; network namespaces).
//! `nf_conntrack_max` is global: the lab lowers it and restores it (tested below).
use std::time::Duration;

use tcpq_tests::*;

fn stat_drop(ns: &Netns) -> u64 {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "cat",
            "/proc/net/stat/nf_conntrack",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    // No file yet where nf_conntrack is a module nothing has loaded (Debian's kernels, before the
    // lab's ct rule): no drops either.
    let Some(header) = lines.next() else {
        return 0;
    };
    let header: Vec<&str> = header.split_whitespace().collect();
    let col = header.iter().position(|h| *h == "drop").unwrap();
    lines
        .filter_map(|l| l.split_whitespace().nth(col))
        .map(|v| u64::from_str_radix(v, 16).unwrap())
        .sum()
}

#[test]
fn table_full_drops_match_the_kernel_drop_stat() {
    if skip_unless_root("conntrack_table_full") {
        return;
    }
    let max_before = ct_max();
    let _restore = CtMaxRestore::save();
    let ns = Netns::new("ct");
    let inode = ns.inode();
    let tracer = Tracer::start_cmd(&["trace", "conntrack", "--json"], &[]);
    let before = stat_drop(&ns);
    let (facts, _) = run_lab(&ns, &["conntrack", "--ct-max", "64", "--duration", "2"]);
    assert_eq!(
        ct_max(),
        max_before,
        "the lab restored the global nf_conntrack_max"
    );
    std::thread::sleep(Duration::from_millis(300));
    let after = stat_drop(&ns);
    let lines = tracer.stop();
    let pid = facts["pid"].as_u64().unwrap();

    let mut table_full = 0;
    let mut rule = 0;
    for v in lines
        .iter()
        .filter(|v| v["event"] == "conntrack_drop" && v["netns"].as_u64() == Some(inode))
    {
        match v["kind"].as_str().unwrap() {
            "table_full" => {
                table_full += v["count"].as_u64().unwrap();
                assert_eq!(v["cause"], "conntrack_full");
                assert_eq!(
                    v["pid"].as_u64(),
                    Some(pid),
                    "the connecting process is named: {v}"
                );
                assert_eq!(v["comm"], "tcpq-lab", "{v}");
            }
            "rule" => {
                rule += v["count"].as_u64().unwrap();
                assert_eq!(v["dport"], 9999, "only the plain drop rule's port: {v}");
            }
            k => panic!("unknown kind {k}"),
        }
    }
    // The run's own view (loss, skipped runs, untraced drops) to explain any difference.
    let summary = lines
        .iter()
        .rev()
        .find(|v| v["event"] == "conntrack_summary" && v["netns"].as_u64() == Some(inode))
        .expect("summary");
    let kernel = after - before;
    eprintln!(
        "tcpq table_full {table_full}, rule {rule}; kernel stat drop {kernel}; summary {summary}"
    );
    assert!(table_full > 0);
    assert!(
        table_full <= kernel,
        "tcpq never counts more table-full drops ({table_full}) than the kernel's `drop` delta ({kernel})"
    );
    // Exact in most runs. On 6.18 about 1 run in 25 (1 in 10 with a compiler running
    // alongside) the kernel's `drop` stat counts 1–12 of ~480 drops that never reach
    // skb:kfree_skb (an independent bpftrace counter on the same tracepoint misses exactly the
    // same ones), and a kfree_skb in softirq interrupting drop_kfree on the same CPU is skipped
    // (missed_runs). tcpq reports both; the shortfall must be within what it reports as
    // skipped plus 5 % of the kernel's count (the worst seen: 2.5 %).
    let missed = summary["missed_runs"].as_u64().unwrap();
    let lost = summary["lost_events"].as_u64().unwrap();
    assert_eq!(lost, 0, "no ring buffer loss at this rate: {summary}");
    assert_eq!(summary["unparsed_events"], 0, "{summary}");
    assert_eq!(
        summary["untraced_drops"].as_u64(),
        Some(summary["stat_drop"].as_u64().unwrap() - summary["table_full"].as_u64().unwrap()),
        "the summary names the difference: {summary}"
    );
    assert!(
        kernel - table_full <= missed + kernel * 5 / 100,
        "table-full drops {table_full} = the kernel's `drop` delta {kernel} less at most the {missed} skipped runs and 5 %"
    );
    assert!(rule >= 5, "the 5 connects to the drop rule's port: {rule}");
    assert_eq!(summary["causes"][0]["cause"], "conntrack_full", "{summary}");
    // nf_conntrack_max is global and read-only in the lab's namespace: the host's command.
    let fix = summary["causes"][0]["fix"][0].as_str().unwrap();
    assert!(
        fix.starts_with("sysctl -w net.netfilter.nf_conntrack_max=")
            && fix.contains("read-only inside a container's namespace"),
        "{fix}"
    );
    assert_eq!(summary["stat_drop"].as_u64(), Some(kernel), "{summary}");
}

#[test]
fn top_consumers_are_ranked() {
    if skip_unless_root("conntrack_top_consumers") {
        return;
    }
    let ns = Netns::new("cttop");
    nft_in(
        &ns,
        "table inet tcpq_test {\n chain out {\n  type filter hook output priority 0; policy accept;\n  ct state established accept\n }\n}\n",
    );
    // 30 connections from 127.0.0.2, 20 from .3, 10 from .4, held open.
    let mut app = python_in(
        &ns,
        "import socket,time,os\nl=socket.socket(); l.bind(('127.0.0.1',9200)); l.listen(256)\nc=[]\nfor src,n in (('127.0.0.2',30),('127.0.0.3',20),('127.0.0.4',10)):\n for i in range(n):\n  s=socket.socket(); s.bind((src,0)); s.connect(('127.0.0.1',9200)); c.append(s)\nprint(os.getpid(),flush=True)\ntime.sleep(20)",
    );
    let mut line = String::new();
    use std::io::BufRead as _;
    std::io::BufReader::new(app.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid = line.trim().to_string();
    let out = tcpq()
        .args(["conntrack", "--pid", &pid, "--duration", "0", "--json"])
        .output()
        .unwrap();
    let _ = app.kill();
    let _ = app.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["netns"].as_u64(), Some(ns.inode()), "{v}");
    assert_eq!(v["ct_count"].as_u64(), Some(60), "{v}");
    let top = v["top"]["by_source"].as_array().unwrap();
    let ranked: Vec<(String, u64)> = top
        .iter()
        .map(|e| (e[0].as_str().unwrap().to_string(), e[1].as_u64().unwrap()))
        .collect();
    assert_eq!(
        &ranked[..3],
        &[
            ("127.0.0.2".into(), 30),
            ("127.0.0.3".into(), 20),
            ("127.0.0.4".into(), 10)
        ],
        "{v}"
    );
    assert_eq!(v["top"]["by_dport"][0][0], "tcp/9200");
    assert_eq!(
        v["entries_source"], "ctnetlink",
        "the table is read through ctnetlink: {v}"
    );
    assert_eq!(
        v["top"]["by_state"][0],
        serde_json::json!(["ESTABLISHED", 60]),
        "{v}"
    );
}

#[test]
fn conntrack_needs_root_with_a_clear_message() {
    if !is_root() {
        return;
    }
    use std::os::unix::process::CommandExt as _;
    let out = std::process::Command::new(tcpq_bin())
        .args(["conntrack"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("needs root") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn tcp_drops_are_named_by_the_kernels_reasons() {
    if skip_unless_root("trace_drops") {
        return;
    }
    let ns = Netns::new("drops");
    let inode = ns.inode();
    let tracer = Tracer::start_cmd(&["trace", "drops", "--json"], &[]);
    // Five SYNs to a closed port: each is freed with SKB_DROP_REASON_NO_SOCKET (and answered
    // with a RST, so nothing is retransmitted).
    let out = python_in(&ns, "import socket\nfor _ in range(5):\n s=socket.socket()\n try: s.connect(('127.0.0.1',9300))\n except ConnectionRefusedError: print('refused')").wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("refused")
            .count(),
        5
    );
    std::thread::sleep(Duration::from_millis(300));
    let lines = tracer.stop();
    let no_socket: u64 = lines
        .iter()
        .filter(|v| {
            v["event"] == "drop"
                && v["netns"].as_u64() == Some(inode)
                && v["reason"] == "NO_SOCKET"
                && v["dport"] == 9300
        })
        .map(|v| v["count"].as_u64().unwrap())
        .sum();
    assert_eq!(no_socket, 5, "{lines:?}");
    let summary = lines
        .iter()
        .rev()
        .find(|v| v["event"] == "drop_summary")
        .unwrap();
    assert!(
        summary["reasons"]["NO_SOCKET"].as_u64().unwrap() >= 5,
        "{summary}"
    );
}

/// A table at 95 % with no drop yet is a cause for `diagnose` (tier 0 reads every namespace's
/// table), and the source network that fills it gets a per-source limit.
#[test]
fn a_nearly_full_table_is_named_before_it_drops() {
    if skip_unless_root("conntrack_nearly_full") {
        return;
    }
    let _restore = CtMaxRestore::save();
    let ns = Netns::new("ctnear");
    let inode = ns.inode();
    nft_in(
        &ns,
        "table inet tcpq_near {\n chain out {\n  type filter hook output priority 0; policy accept;\n  ct state new counter\n }\n}\n",
    );
    // 190 flows from 127.0.1.1-190 (one /24) to a closed UDP port, unreplied. Their entries
    // must outlive tcpq's start: unreplied UDP lasts 30 s by default, and under TCG (the 6.1
    // VM) loading diagnose's programs takes longer than that — its read found 0 entries.
    ns.write_sysctl("/proc/sys/net/netfilter/nf_conntrack_udp_timeout", "600");
    let mut py = python_in(
        &ns,
        "import socket,sys\nfor i in range(1,191):\n s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n s.bind(('127.0.1.%d'%i,40000))\n s.sendto(b'x',('127.0.0.1',9))\n s.close()\nprint('sent',flush=True)\nsys.stdin.read()",
    );
    first_line(&mut py);
    let read = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "cat",
            "/proc/sys/net/netfilter/nf_conntrack_count",
        ])
        .output()
        .unwrap();
    let count: u64 = String::from_utf8_lossy(&read.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(
        count >= 190,
        "the namespace's table holds the flows: {count}"
    );
    // The global limit just above them: 95 % full, nothing dropped.
    let max = count * 100 / 95 + 1;
    std::fs::write("/proc/sys/net/netfilter/nf_conntrack_max", max.to_string()).unwrap();
    let out = tcpq()
        .args(["diagnose", "--json", "--duration", "3"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let _ = py.kill();
    let _ = py.wait();
    let cause = report["causes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cause"] == "conntrack_full" && c["evidence"]["netns"].as_u64() == Some(inode))
        .unwrap_or_else(|| panic!("no conntrack_full for netns {inode}: {report}"));
    let text = cause["text"].as_str().unwrap();
    assert!(
        text.starts_with(&format!("conntrack table nearly full: {count} of {max}"))
            && text.contains("no drop yet")
            && text.contains("127.0.1.0/24 holds 190"),
        "{text}"
    );
    let fixes = cause["fix"].to_string();
    assert!(
        fixes.contains("127.0.1.0/24 holds 190")
            && fixes.contains("ip saddr & 255.255.255.0 ct count over")
            && fixes.contains("--connlimit-mask 24"),
        "{fixes}"
    );
    let first = cause["fix"][0].as_str().unwrap();
    assert!(
        first.starts_with("sysctl -w net.netfilter.nf_conntrack_max="),
        "the global limit is the host's command: {first}"
    );
}

/// A process in a Kubernetes pod's cgroup (containerd, systemd driver shape) whose SYNs a rule
/// drops is named by its pod and container in `trace conntrack --json`.
#[test]
fn trace_conntrack_json_names_the_pod_and_container_of_the_sender() {
    if skip_unless_root("conntrack_pod") {
        return;
    }
    let ns = Netns::new("ctpod");
    let cg = TestCgroup::containerd_pod("conntrack");
    nft_in(
        &ns,
        "table inet tcpq_test {\n chain out {\n  type filter hook output priority 0; policy accept;\n  tcp dport 9302 ct state new drop\n }\n}\n",
    );
    let tracer = Tracer::start_cmd(&["trace", "conntrack", "--json"], &[]);
    // It waits to be in the pod's cgroup, then its connect times out: every SYN is dropped.
    let mut client = python_in(
        &ns,
        "import socket,os,time\nprint(os.getpid(),flush=True)\nwhile 'cri-containerd-' not in open('/proc/self/cgroup').read(): time.sleep(0.02)\ns=socket.socket(); s.settimeout(1.5)\ntry:\n s.connect(('127.0.0.1',9302))\nexcept OSError:\n print('dropped',flush=True)\ntime.sleep(0.5)",
    );
    let pid: u64 = first_line(&mut client).parse().expect("the client's pid");
    cg.adopt(pid);
    assert_eq!(first_line(&mut client), "dropped");
    let _ = client.wait();
    std::thread::sleep(Duration::from_millis(300));
    let lines = tracer.stop();
    let ev = lines
        .iter()
        .find(|v| v["event"] == "conntrack_drop" && v["pid"].as_u64() == Some(pid))
        .unwrap_or_else(|| panic!("no conntrack_drop line of pid {pid}: {lines:?}"));
    eprintln!("{ev}");
    assert_eq!(
        (ev["kind"].as_str(), ev["dport"].as_u64()),
        (Some("rule"), Some(9302)),
        "{ev}"
    );
    cg.assert_named_in(ev);
}
