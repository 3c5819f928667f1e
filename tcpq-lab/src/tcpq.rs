//! Starting a tcpq process and waiting until it is ready — its programs attached, its banner
//! on stderr — as the integration tests and `cargo xtask bench` both do: spawn, read stderr on
//! a thread, wait for the ready line with a hang guard. Written once here; each caller says
//! which line means ready, how long to wait, and what to do with stdout.
use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Whether a stderr line is the banner a command prints once its hooks are attached: the trace
/// commands' `tcpq: tracing …`, `tcpq: diagnosing …`, export's `tcpq: serving …` and
/// `tcpq: top: … attached …`.
pub fn is_banner(line: &str) -> bool {
    line.starts_with("tcpq: tracing")
        || line.starts_with("tcpq: diagnosing")
        || line.starts_with("tcpq: serving")
        || (line.starts_with("tcpq: top") && line.contains("attached"))
}

/// A tcpq process whose ready line has been seen.
pub struct Started {
    pub child: Child,
    /// stderr up to and including the ready line.
    pub banner: Vec<String>,
    /// Just before the spawn: what start-up and output arrival times count from.
    pub spawned_at: Instant,
    /// From the spawn to the ready line.
    pub startup: Duration,
    /// stderr's later lines as they come. The reader drains stderr to its end whether or not
    /// this is read (or kept), so tcpq never blocks on, or fails, a write to it.
    pub stderr: Receiver<String>,
}

/// Spawns `cmd` (its stdin and stdout as the caller set them; stderr is piped here) and waits
/// until a stderr line satisfies `ready`, for at most `hang_guard`: a guard against a tcpq that
/// never gets there, not a timing assert. Not ready in time, or gone before: the process is
/// killed and reaped, and the error carries what it printed on stderr.
pub fn start(
    cmd: &mut Command,
    ready: impl Fn(&str) -> bool,
    hang_guard: Duration,
) -> Result<Started> {
    let spawned_at = Instant::now();
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))?;
    let stderr = child.stderr.take().context("take tcpq's stderr pipe")?;
    let (tx, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // Keep reading after the receiver is gone: a closed pipe would fail tcpq's writes.
            let _ = tx.send(line);
        }
    });
    match wait_for_ready(&lines, ready, spawned_at + hang_guard) {
        Ok(banner) => Ok(Started {
            child,
            banner,
            spawned_at,
            startup: spawned_at.elapsed(),
            stderr: lines,
        }),
        Err(Waited::TimedOut(seen)) => {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "wait for tcpq's ready line: none within {} s; stderr: {seen:?}",
                hang_guard.as_secs()
            )
        }
        Err(Waited::Closed(seen)) => {
            let status = reap(&mut child);
            bail!("wait for tcpq's ready line: it exited before ({status}); stderr: {seen:?}")
        }
    }
}

/// Why no ready line came, with the lines that did.
#[derive(Debug, PartialEq, Eq)]
enum Waited {
    /// The deadline passed.
    TimedOut(Vec<String>),
    /// stderr ended (the process is leaving).
    Closed(Vec<String>),
}

/// Reads `lines` until one satisfies `ready` (returned last, after the ones before it) or the
/// deadline passes.
fn wait_for_ready(
    lines: &Receiver<String>,
    ready: impl Fn(&str) -> bool,
    deadline: Instant,
) -> Result<Vec<String>, Waited> {
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let done = ready(&line);
                seen.push(line);
                if done {
                    return Ok(seen);
                }
            }
            Err(RecvTimeoutError::Timeout) => return Err(Waited::TimedOut(seen)),
            Err(RecvTimeoutError::Disconnected) => return Err(Waited::Closed(seen)),
        }
    }
}

/// The exit status of a process whose stderr closed: it is leaving, so give it a second to
/// finish; one that closed stderr and stays is killed.
fn reap(child: &mut Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(status)) => return status.to_string(),
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => return format!("wait failed: {e}"),
        }
    }
    let _ = child.kill();
    match child.wait() {
        Ok(status) => format!("still running with stderr closed, killed: {status}"),
        Err(e) => format!("wait failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banners_of_every_long_running_command_are_ready_lines() {
        for line in [
            "tcpq: tracing listen overflows — verdicts x — hooks: y — Ctrl-C to stop",
            "tcpq: diagnosing for 5 s (…)…",
            "tcpq: serving Prometheus metrics on http://127.0.0.1:9/metrics (capabilities kept: none)",
            "tcpq: top: 3 hooks attached",
        ] {
            assert!(is_banner(line), "{line}");
        }
        for line in ["tcpq: top: loading", "warning: tracing", "tcpq: lab storm"] {
            assert!(!is_banner(line), "{line}");
        }
    }

    #[test]
    fn waiting_keeps_the_lines_up_to_the_ready_one() {
        let (tx, rx) = mpsc::channel();
        for l in ["warn: a", "tcpq: tracing x", "later"] {
            tx.send(l.to_string()).expect("send a line");
        }
        let far = Instant::now() + Duration::from_secs(5);
        let banner = wait_for_ready(&rx, |l| l.starts_with("tcpq: tracing"), far);
        assert_eq!(
            banner,
            Ok(vec!["warn: a".to_string(), "tcpq: tracing x".to_string()])
        );
        assert_eq!(rx.try_recv().as_deref(), Ok("later"), "later lines stay");
    }

    #[test]
    fn waiting_ends_at_the_deadline_or_when_stderr_closes() {
        let (tx, rx) = mpsc::channel();
        tx.send("warn: a".to_string()).expect("send a line");
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(
            wait_for_ready(&rx, |_| false, soon),
            Err(Waited::TimedOut(vec!["warn: a".to_string()]))
        );
        drop(tx);
        let far = Instant::now() + Duration::from_secs(5);
        assert_eq!(
            wait_for_ready(&rx, |_| false, far),
            Err(Waited::Closed(Vec::new()))
        );
    }

    #[test]
    fn start_returns_the_banner_and_later_lines_or_why_not() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo one >&2; echo 'tcpq: tracing x' >&2; echo two >&2",
        ]);
        let started = start(&mut cmd, is_banner, Duration::from_secs(30)).expect("sh starts");
        assert_eq!(started.banner, ["one", "tcpq: tracing x"]);
        assert_eq!(started.stderr.recv().as_deref(), Ok("two"));

        let mut gone = Command::new("sh");
        gone.args(["-c", "echo bye >&2; exit 3"]);
        let err = format!(
            "{:#}",
            start(&mut gone, is_banner, Duration::from_secs(30))
                .err()
                .expect("not ready")
        );
        assert!(
            err.contains("exited before") && err.contains("\"bye\""),
            "{err}"
        );

        let mut silent = Command::new("sleep");
        silent.arg("30");
        let err = format!(
            "{:#}",
            start(&mut silent, is_banner, Duration::from_millis(100))
                .err()
                .expect("not ready")
        );
        assert!(err.contains("none within"), "{err}");
    }
}
