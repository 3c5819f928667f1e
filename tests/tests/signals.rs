//! tcpq leaves within 1 s of SIGTERM, SIGINT, SIGHUP or its terminal going away, in every live
//! mode and mid-incident, and none of its programs stays attached (issue 19: `tcpq top` in a tmux
//! session killed during `lab overflow` spun at 100 % CPU, deaf to signals, until SIGKILL).
//! Times run from the moment of the signal or the terminal's loss to the process being gone.
use std::{
    io::{BufRead as _, BufReader},
    process::Command,
    sync::mpsc,
    time::{Duration, Instant},
};

use tcpq_tests::{signals::*, *};

/// A root-only test that runs one check: `name: check(args…)`.
macro_rules! root_test {
    ($name:ident: $check:ident($($arg:expr),+ $(,)?)) => {
        #[test]
        fn $name() {
            if skip_unless_root(stringify!($name)) {
                return;
            }
            $check($($arg),+);
        }
    };
}

root_test!(
    top_batch_leaves_within_1s_of_sigterm_during_a_storm:
    leaves_on_signal_during_a_storm(
        "top -b, SIGTERM",
        &["top", "-b", "-d", "1s"],
        "tcpq: top:",
        libc::SIGTERM,
    )
);
root_test!(
    top_json_leaves_within_1s_of_sigterm_during_a_storm:
    leaves_on_signal_during_a_storm(
        "top --json, SIGTERM",
        &["top", "--json", "-d", "1s"],
        "tcpq: top:",
        libc::SIGTERM,
    )
);
root_test!(
    top_json_leaves_within_1s_of_sigint_during_a_storm:
    leaves_on_signal_during_a_storm(
        "top --json, SIGINT",
        &["top", "--json", "-d", "1s"],
        "tcpq: top:",
        libc::SIGINT,
    )
);
root_test!(
    trace_overflow_leaves_within_1s_of_sigterm_during_a_storm:
    leaves_on_signal_during_a_storm(
        "trace overflow, SIGTERM",
        &["trace", "overflow"],
        "tcpq: tracing",
        libc::SIGTERM,
    )
);
root_test!(
    trace_connect_leaves_within_1s_of_sighup_during_a_storm:
    leaves_on_signal_during_a_storm(
        "trace connect, SIGHUP",
        &["trace", "connect"],
        "tcpq: tracing",
        libc::SIGHUP,
    )
);
root_test!(
    diagnose_leaves_within_1s_of_sigterm_during_a_storm:
    leaves_on_signal_during_a_storm(
        "diagnose, SIGTERM",
        &["diagnose", "--duration", "60s"],
        "tcpq: diagnosing",
        libc::SIGTERM,
    )
);
root_test!(
    export_leaves_within_1s_of_sigterm_during_a_storm:
    leaves_on_signal_during_a_storm(
        "export, SIGTERM",
        &["export".to_string(), "--listen".to_string(), free_loopback_addr()],
        "tcpq: serving",
        libc::SIGTERM,
    )
);

root_test!(
    trace_connect_keeps_a_sigint_sent_while_it_loads:
    a_sigint_during_start_up_is_kept("trace connect", &["trace", "connect"], "tcpq: tracing")
);
root_test!(
    diagnose_keeps_a_sigint_sent_while_it_loads:
    a_sigint_during_start_up_is_kept("diagnose", &["diagnose", "--duration", "60s"], "tcpq: diagnosing")
);

/// What an ssh disconnect does to `tcpq top`: the session holding its terminal is killed while
/// an incident feeds its events path.
#[test]
fn top_leaves_within_1s_when_its_tmux_session_is_killed_mid_incident() {
    if skip_unless_root("signals_top_tmux") {
        return;
    }
    let name = format!("tcpqsig{}", std::process::id());
    let status = Command::new("tmux")
        .args(["new-session", "-d", "-s", &name, "-x", "200", "-y", "60"])
        .arg(format!("exec {} top", tcpq_bin().display()))
        .status()
        .expect("tmux");
    assert!(status.success());
    let _session = TmuxSession(name.clone());
    let pid: u32 = tmux(&["display-message", "-p", "-t", &name, "#{pane_pid}"])
        .trim()
        .parse()
        .expect("the pane's pid");
    let screen = || tmux(&["capture-pane", "-p", "-t", &name]);
    assert!(
        eventually(Duration::from_secs(30), || screen().contains("Causes now")),
        "the view did not come up: {}",
        screen()
    );
    let ns = Netns::new("sigtm");
    let _lab = BackgroundLab::start(&ns, &["overflow", "--duration", "20"]);
    assert!(
        eventually(Duration::from_secs(10), || {
            let s = screen();
            s.contains("accept_queue_full") || s.contains("app_not_accepting")
        }),
        "the incident did not reach the view: {}",
        screen()
    );
    let ours = programs_attached_by("top in tmux", pid);
    let since = Instant::now();
    tmux(&["kill-session", "-t", &name]);
    assert_leaves("top in tmux, session killed", pid, since);
    assert_detached("top in tmux", &ours);
}

// The full-screen view places its words one by one: "Causes" is its first panel's title.
root_test!(
    top_leaves_within_1s_when_its_controlling_terminal_is_closed:
    leaves_when_its_pty_is_closed("top on its controlling pty", &["top"], "Causes", true)
);
root_test!(
    top_leaves_within_1s_when_its_terminal_hangs_up_without_a_sighup:
    leaves_when_its_pty_is_closed("top on a pty, no SIGHUP", &["top"], "Causes", false)
);
root_test!(
    top_batch_leaves_within_1s_when_its_terminal_hangs_up_without_a_sighup:
    leaves_when_its_pty_is_closed(
        "top -b on a pty, no SIGHUP",
        &["top", "-b", "-d", "1s"],
        "tcpq: top:",
        false,
    )
);
root_test!(
    trace_overflow_leaves_within_1s_when_its_terminal_hangs_up_without_a_sighup:
    leaves_when_its_pty_is_closed(
        "trace overflow on a pty, no SIGHUP",
        &["trace", "overflow"],
        "tcpq: tracing",
        false,
    )
);

root_test!(
    top_json_leaves_within_1s_of_sigterm_while_nobody_reads_its_stdout:
    leaves_on_sigterm_while_nobody_reads_its_stdout(
        "top --json into a pipe never read, SIGTERM",
        &["top", "--json", "-d", "200ms"],
        "tcpq: top:",
    )
);
root_test!(
    trace_overflow_leaves_within_1s_of_sigterm_while_nobody_reads_its_stdout:
    leaves_on_sigterm_while_nobody_reads_its_stdout(
        "trace overflow into a pipe never read, SIGTERM",
        &["trace", "overflow", "--json"],
        "tcpq: tracing",
    )
);

/// A reader that stops reading for a while and then resumes sees frames again, the first of
/// them saying how many were dropped meanwhile; collection went on (frames keep coming on time).
#[test]
fn a_reader_that_resumes_sees_how_many_frames_were_dropped() {
    if skip_unless_root("signals_top_dropped_frames") {
        return;
    }
    let (_tcpq, read_end) = into_a_stalled_pipe(
        "top --json, reader resumes",
        &["top", "--json", "-d", "200ms"],
        "tcpq: top:",
    );
    std::thread::sleep(Duration::from_secs(2)); // ~10 frames come and find the queue full
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let reader = BufReader::new(std::fs::File::from(read_end));
        for line in reader.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let mut dropped = None;
    while Instant::now() < deadline && dropped.is_none() {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        // The pipe may end with part of a frame: the rest of it went with the queue.
        let Ok(frame) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let n = frame["frames_dropped"]
            .as_u64()
            .expect("frames_dropped in every frame");
        if n > 0 {
            assert!(frame["frames_dropped_total"].as_u64() >= Some(n), "{frame}");
            dropped = Some(n);
        }
        seen.push(n);
    }
    let n = dropped.unwrap_or_else(|| panic!("no frame reported dropped frames: {seen:?}"));
    eprintln!("frames before the report: {seen:?}; dropped while the reader stalled: {n}");
    assert!(n >= 5, "2 s of 200 ms frames stalled: {n} dropped");
}
