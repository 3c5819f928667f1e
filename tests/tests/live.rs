//! `tcpq top` and `tcpq export` against lab incidents (root): the cause, process, namespace and
//! cgroup they show, counts against the kernel's own counters, the full-screen view in tmux,
//! and /metrics scraped over HTTP.
use std::{
    collections::HashMap,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tcpq_tests::*;

#[test]
fn top_json_conntrack_row_shows_table_full_drops_and_the_kernel_stat() {
    if skip_unless_root("top_json_conntrack") {
        return;
    }
    let _restore = CtMaxRestore::save();
    let ns = Netns::new("topct");
    let inode = ns.inode();
    let top = TopJson::start("500ms");
    let _ = top.next(); // programs attached, first interval done
    while top.frames.try_recv().is_ok() {}
    let lab = BackgroundLab::start(&ns, &["conntrack", "--ct-max", "64", "--duration", "3"]);
    let mut frames = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        frames.push(top.next());
    }
    lab.finish();
    frames.push(top.next());

    let rows: Vec<&Value> = frames
        .iter()
        .flat_map(|f| f["conntrack"].as_array().unwrap().iter())
        .filter(|r| r["netns"].as_u64() == Some(inode))
        .collect();
    assert!(
        rows.iter()
            .any(|r| r["table_full_per_s"].as_f64().unwrap() > 0.0),
        "table-full drops shown: {rows:?}"
    );
    assert!(
        rows.iter().any(|r| r["max"] == 64),
        "the lowered maximum is shown: {rows:?}"
    );
    // From the namespace's second reading on, the kernel's own rate is there too.
    assert!(
        rows.iter()
            .any(|r| r["kernel_drops_per_s"].as_f64().is_some_and(|k| k > 0.0)),
        "the kernel's drop rate shown: {rows:?}"
    );
    let cause = frames
        .iter()
        .flat_map(|f| f["causes"].as_array().unwrap().iter())
        .find(|c| c["cause"] == "conntrack_full")
        .unwrap_or_else(|| panic!("no conntrack_full cause in {frames:?}"));
    assert_eq!(cause["where"], format!("netns {inode}"), "{cause}");
}

#[test]
fn top_json_attributes_the_overflow_to_its_process_namespace_and_cgroup() {
    if skip_unless_root("top_json_overflow") {
        return;
    }
    let ns = Netns::new("topj");
    let top = TopJson::start("500ms");
    let first = top.next(); // programs attached, first interval done
    for k in [
        "host",
        "kernel",
        "hooks_active",
        "events_per_s",
        "lost_total",
        "causes",
        "listeners",
        "outbound",
        "conntrack",
    ] {
        assert!(first.get(k).is_some(), "frame field {k}: {first}");
    }
    while top.frames.try_recv().is_ok() {}
    let before = ns.counters();
    let cg = TestCgroup::new("top");
    let lab = BackgroundLab::start(&ns, &["overflow", "--duration", "3"]);
    let pid = lab.facts["pid"].as_u64().unwrap();
    cg.adopt(pid);
    let mut frames = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        frames.push(top.next());
    }
    lab.finish();
    std::thread::sleep(Duration::from_secs(2)); // retransmitted SYNs/ACKs settle
    let after = ns.counters();
    // Two more frames: everything the kernel reported before `after` is in a frame by then.
    frames.push(top.next());
    frames.push(top.next());

    let inode = ns.inode();
    let mut syn_ack = 0;
    let mut refused = 0;
    let mut named = None;
    for f in &frames {
        for l in f["listeners"].as_array().unwrap() {
            if l["netns"].as_u64() == Some(inode) && l["listener"] == "127.0.0.1:8080" {
                syn_ack += l["counts"]["syn"].as_u64().unwrap_or(0)
                    + l["counts"]["ack"].as_u64().unwrap_or(0);
                refused += l["refused"].as_u64().unwrap_or(0);
                if l["pid"].as_u64() == Some(pid) && l["cgroup"].is_string() {
                    named = Some(l.clone());
                }
            }
        }
    }
    let l = named
        .unwrap_or_else(|| panic!("no listener row naming pid {pid} in netns {inode}: {frames:?}"));
    assert_eq!(l["process"], "tcpq-lab", "{l}");
    assert_eq!(
        l["cgroup"].as_str(),
        Some(format!("/{}", cg.name).as_str()),
        "{l}"
    );
    assert!(l["backlog"].as_u64().is_some(), "{l}");
    let overflows = delta(&before, &after, "TcpExt:ListenOverflows");
    let drops = delta(&before, &after, "TcpExt:ListenDrops");
    eprintln!(
        "top frames: refused {refused}, syn+ack {syn_ack}; kernel ListenDrops {drops}, ListenOverflows {overflows}, lost_total {}",
        frames.last().unwrap()["lost_total"]
    );
    assert!(overflows > 0);
    // The per-listener totals come from the listener's sk_drops (tier 0): exact, whether or not
    // the listen family was traced yet. The kinds are tier 2's detail: armed on the first
    // refusals, so they cover part of them and never more than the kernel counted.
    assert_eq!(refused, drops, "refused over the frames == ListenDrops");
    assert!(
        syn_ack > 0 && syn_ack <= overflows,
        "syn+ack over the frames {syn_ack} ≤ ListenOverflows {overflows}"
    );
    let cause = frames
        .iter()
        .flat_map(|f| f["causes"].as_array().unwrap().clone())
        .find(|c| c["cause"] == "accept_queue_full" && c["pid"].as_u64() == Some(pid))
        .unwrap_or_else(|| panic!("no accept_queue_full cause for pid {pid}"));
    assert!(
        cause["where"].as_str().unwrap().ends_with(":8080"),
        "{cause}"
    );
    assert!(cause["impact_per_s"].as_f64().unwrap() > 0.0, "{cause}");
    assert!(!cause["fix"].as_array().unwrap().is_empty(), "{cause}");
}

#[test]
fn top_batch_frames_are_plain_text_and_stop_after_n() {
    if skip_unless_root("top_batch") {
        return;
    }
    let out = tcpq()
        .args(["top", "-b", "-d", "300ms", "-n", "2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("tcpq top — ").count(), 2, "{text}");
    for section in ["CAUSES NOW", "LISTENERS", "OUTBOUND", "CONNTRACK", "lost "] {
        assert!(text.contains(section), "{section}: {text}");
    }
    assert!(
        !text.contains('\u{1b}'),
        "no escape sequences in batch mode"
    );
}

#[test]
fn top_in_tmux_shows_the_cause_within_3s_and_restores_the_terminal() {
    if skip_unless_root("top_tmux") {
        return;
    }
    let name = format!("tcpqtop{}", std::process::id());
    let bin = tcpq_bin();
    let status = Command::new("tmux")
        .args(["new-session", "-d", "-s", &name, "-x", "200", "-y", "60"])
        .arg(format!(
            "{} top; echo TCPQ-EXITED $?; sleep 30",
            bin.display()
        ))
        .status()
        .expect("tmux");
    assert!(status.success());
    let _session = TmuxSession(name.clone());
    let capture = || tmux(&["capture-pane", "-p", "-t", &name]);
    let until = |what: &dyn Fn(&str) -> bool, limit: Duration| -> (bool, Duration, String) {
        let t = Instant::now();
        loop {
            let screen = capture();
            if what(&screen) {
                return (true, t.elapsed(), screen);
            }
            if t.elapsed() > limit {
                return (false, t.elapsed(), screen);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let (ok, _, screen) = until(
        &|s| s.contains("Causes now") && s.contains("hooks"),
        Duration::from_secs(15),
    );
    assert!(ok, "the view did not come up: {screen}");
    std::thread::sleep(Duration::from_millis(1200)); // first frame with every hook attached

    let ns = Netns::new("toptm");
    let lab = BackgroundLab::start(&ns, &["overflow", "--duration", "5"]);
    let (ok, took, screen) = until(
        &|s| s.contains("accept_queue_full") || s.contains("app_not_accepting"),
        Duration::from_secs(10),
    );
    eprintln!("cause on screen after {took:?}");
    assert!(ok, "no cause on screen: {screen}");
    assert!(
        took <= Duration::from_secs(3),
        "the cause took {took:?} to appear (≤ 3 s)"
    );
    assert!(screen.contains("tcpq-lab"), "{screen}");

    tmux(&["send-keys", "-t", &name, "?"]);
    let (ok, _, screen) = until(&|s| s.contains("tab next panel"), Duration::from_secs(3));
    assert!(ok, "help: {screen}");
    tmux(&["send-keys", "-t", &name, "?"]);
    tmux(&["send-keys", "-t", &name, "q"]);
    let (ok, _, screen) = until(&|s| s.contains("TCPQ-EXITED"), Duration::from_secs(5));
    assert!(ok, "q did not quit: {screen}");
    assert!(screen.contains("TCPQ-EXITED 0"), "{screen}");
    assert!(
        !screen.contains("Causes now"),
        "the alternate screen was left: {screen}"
    );
    drop(lab);
}

#[test]
fn metrics_scraped_during_an_overflow_rise_consistently() {
    if skip_unless_root("export_metrics") {
        return;
    }
    let addr = "127.0.0.1:19464";
    let mut child = tcpq()
        .args(["export", "--listen", addr, "--interval", "300ms"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let mut up = None;
    while t.elapsed() < Duration::from_secs(15) && up.is_none() {
        std::thread::sleep(Duration::from_millis(200));
        up = scrape(addr).filter(|b| b.contains("tcpq_events_total"));
    }
    let first = up.expect("/metrics answers");
    assert!(
        first.contains("tcpq_lost_events_total{family=\"listen\"}"),
        "{first}"
    );
    std::thread::sleep(Duration::from_millis(1000));

    let ns = Netns::new("expm");
    let inode = ns.inode().to_string();
    let before = ns.counters();
    let lab = BackgroundLab::start(&ns, &["overflow", "--duration", "3"]);
    std::thread::sleep(Duration::from_millis(2000));
    let during_text = scrape(addr).expect("scrape during the incident");
    let during = metric_series(&during_text);
    lab.finish();
    std::thread::sleep(Duration::from_secs(2));
    let after_counters = ns.counters();
    std::thread::sleep(Duration::from_millis(900)); // one more interval folded in
    let text = scrape(addr).expect("scrape after the incident");
    let after = metric_series(&text);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();

    let refused = |m: &HashMap<String, f64>, kind: &str| -> f64 {
        m.iter()
            .filter(|(k, _)| {
                k.starts_with("tcpq_listen_refusals_total{")
                    && k.contains(&format!("netns=\"{inode}\""))
                    && k.contains("listener=\"127.0.0.1:8080\"")
                    && k.contains(&format!("kind=\"{kind}\""))
            })
            .map(|(_, v)| v)
            .sum()
    };
    let exact = |m: &HashMap<String, f64>| -> f64 {
        m.iter()
            .filter(|(k, _)| {
                k.starts_with("tcpq_listen_refused_total{")
                    && k.contains(&format!("netns=\"{inode}\""))
                    && k.contains("listener=\"127.0.0.1:8080\"")
            })
            .map(|(_, v)| v)
            .sum()
    };
    let d = exact(&during);
    let a = exact(&after);
    let kinds = refused(&after, "syn") + refused(&after, "ack");
    let overflows = delta(&before, &after_counters, "TcpExt:ListenOverflows") as f64;
    let drops = delta(&before, &after_counters, "TcpExt:ListenDrops") as f64;
    eprintln!(
        "/metrics refused during {d}, after {a} (syn+ack {kinds}); kernel ListenDrops {drops}, ListenOverflows {overflows}"
    );
    assert!(d > 0.0, "counters rise during the incident");
    assert!(a >= d);
    assert_eq!(a, drops, "tcpq_listen_refused_total == ListenDrops");
    assert!(
        kinds > 0.0 && kinds <= overflows,
        "kinds {kinds} ≤ ListenOverflows {overflows}"
    );
    assert!(
        text.contains("tcpq_family_armed{family=\"listen\"}"),
        "{text}"
    );
    for (k, v) in &during {
        if k.contains("_total") && !k.contains("_bucket") {
            let later = after.get(k).copied().unwrap_or(f64::NAN);
            assert!(later >= *v, "counter {k} went from {v} to {later}");
        }
    }
    assert!(during_text.contains("tcpq_cause_active{"), "{during_text}");
    assert!(text.contains("tcpq_accept_wait_seconds_bucket{"), "{text}");
    assert!(text.contains("process=\"tcpq-lab\""), "{text}");
}

/// A listener in a containerd pod's cgroup (systemd driver shape) is named by its pod and
/// container in `top --json`: the pod UID and the short container id from the cgroup path (no
/// runtime state on this machine gives the names; snapshot::container's unit tests read those).
#[test]
fn top_json_names_the_pod_and_container_of_a_listener() {
    if skip_unless_root("top_json_pod") {
        return;
    }
    let cg = TestCgroup::containerd_pod("top");
    let ns = Netns::new("pod");
    let top = TopJson::start("500ms");
    top.next();
    let lab = BackgroundLab::start(&ns, &["overflow", "--duration", "3"]);
    let pid = lab.facts["pid"].as_u64().unwrap();
    cg.adopt(pid);
    let mut frames = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        frames.push(top.next());
    }
    lab.finish();
    let inode = ns.inode();
    let rows: Vec<&Value> = frames
        .iter()
        .flat_map(|f| f["listeners"].as_array().unwrap())
        .filter(|l| l["netns"].as_u64() == Some(inode) && l["pid"].as_u64() == Some(pid))
        .filter(|l| l["cgroup"].as_str().is_some_and(|c| c.ends_with(".scope")))
        .collect();
    let l = rows
        .last()
        .unwrap_or_else(|| panic!("no listener row of pid {pid} in its pod cgroup {}", cg.name));
    cg.assert_named_in(l);
    let cause = frames
        .iter()
        .flat_map(|f| f["causes"].as_array().unwrap())
        .find(|c| c["pid"].as_u64() == Some(pid) && c["pod"].is_string())
        .unwrap_or_else(|| panic!("no cause naming the pod of pid {pid}"));
    assert_eq!(cause["pod"], l["pod"], "{cause}");
    assert_eq!(cause["container"], l["container"], "{cause}");
    // A host process's rows say null.
    assert!(
        frames
            .iter()
            .flat_map(|f| f["listeners"].as_array().unwrap())
            .filter(|l| l["cgroup"].is_null())
            .all(|l| l["pod"].is_null() && l["container"].is_null())
    );
}
