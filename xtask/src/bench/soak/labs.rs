//! The soak's labs: each run in turn with `tcpq lab NAME` in namespaces of its own, the global
//! ones under a lock, a stuck one interrupted.
use std::{
    io::Read as _,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{bench::PROFILE, tcpq_bin};

/// The labs cycled through, with their arguments (short runs: the point is churn — namespaces,
/// listeners, processes and destinations that come and go). `storm` is rate-limited: the
/// machine is shared and the soak measures the exporter, not the collector's ceiling.
pub(super) const LABS: &[(&str, &[&str])] = &[
    ("overflow", &["--duration", "2s"]),
    ("synflood", &["--duration", "2s"]),
    ("ports", &["--duration", "2s"]),
    ("conntrack", &["--duration", "2s"]),
    ("slow-accept", &["--duration", "2s"]),
    ("workers", &["--duration", "2s"]),
    ("connection-limit", &["--duration", "2s"]),
    ("close-wait", &["--duration", "2s"]),
    ("stale-upstream", &["--duration", "2s"]),
    ("failing-upstream", &["--duration", "2s"]),
    ("storm", &["--duration", "2s", "--rate", "50000"]),
];

/// Labs that set a global sysctl (conntrack lowers nf_conntrack_max and restores it) run under
/// this lock (flock(1)), so that two runs on a shared machine never restore each other's value.
pub(super) const GLOBAL_LOCK: &str = "/tmp/tcpq-global.lock";

const GLOBAL_LABS: &[&str] = &["conntrack"];

/// A lab still running after this is interrupted (SIGINT: it cleans up) and counted as failed.
const LAB_LIMIT: Duration = Duration::from_secs(60);

/// Per lab: runs, failures and the last failure's message.
#[derive(Default)]
pub(super) struct LabTally {
    pub(super) runs: usize,
    pub(super) failed: usize,
    pub(super) last_error: String,
}

/// Runs `tcpq lab NAME ARGS` to its end (interrupted past LAB_LIMIT); the error names it.
pub(super) fn run_lab(name: &str, args: &[&str]) -> Result<()> {
    let bin = tcpq_bin(PROFILE);
    let mut cmd = if GLOBAL_LABS.contains(&name) {
        let mut c = Command::new("flock");
        c.args(["-w", "60", GLOBAL_LOCK]).arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    let mut child = cmd
        .args(["lab", name])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start tcpq lab {name}"))?;
    let mut err = child.stderr.take().context("tcpq lab's stderr")?;
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let mut interrupted = false;
    let status = loop {
        if let Some(status) = child.try_wait().context("wait for tcpq lab")? {
            break status;
        }
        if !interrupted && started.elapsed() > LAB_LIMIT {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            interrupted = true;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let stderr = reader.join().unwrap_or_default();
    if interrupted {
        bail!(
            "tcpq lab {name} ran past {} s and was interrupted",
            LAB_LIMIT.as_secs()
        );
    }
    if !status.success() {
        let last = stderr.lines().last().unwrap_or("no message");
        bail!("tcpq lab {name} exited with {status}: {last}");
    }
    Ok(())
}
