//! tcpq under the bench: started pinned and seen attached (`start_tcpq`, through tcpq-lab's
//! start-up helper), sampled (peak RSS, CPU), stopped, and its `--json` frames read back.
use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde_json::Value;

use super::{
    PROFILE, TCPQ_CPU,
    procfs::{cpu_seconds, vm_rss_kib},
};
use crate::tcpq_bin;

/// A tcpq process whose banner has been seen (every hook attached).
pub(super) struct Running {
    pub(super) child: Child,
    startup_ms: f64,
    peak_kib: Arc<AtomicU64>,
    sampler: thread::JoinHandle<()>,
    stdout: Option<thread::JoinHandle<(String, Vec<f64>)>>,
    cpu_at_start: f64,
}

/// A start-up longer than this is a hang (the target is < 300 ms; qemu's TCG takes a minute).
const START_GUARD: Duration = Duration::from_secs(120);

/// Starts `tcpq ARGS`; `collect` keeps its stdout (else it goes to /dev/null).
pub(super) fn start_tcpq(args: &[&str], env: &[(&str, &str)], collect: bool) -> Result<Running> {
    let bin = tcpq_bin(PROFILE);
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", TCPQ_CPU])
        .arg(&bin)
        .args(args)
        .envs(env.iter().copied())
        .stdout(if collect {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    // Its later stderr lines are drained, unread, by the helper's reader.
    let tcpq_lab::tcpq::Started {
        mut child,
        spawned_at,
        startup,
        ..
    } = tcpq_lab::tcpq::start(&mut cmd, tcpq_lab::tcpq::is_banner, START_GUARD)
        .with_context(|| format!("start {} {}", bin.display(), args.join(" ")))?;
    let startup_ms = startup.as_secs_f64() * 1000.0;
    // Each line with when it arrived (seconds since start): how on time frames are, as their
    // reader sees them.
    let stdout = child.stdout.take().map(|out| {
        thread::spawn(move || {
            let (mut s, mut at) = (String::new(), Vec::new());
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                at.push(spawned_at.elapsed().as_secs_f64());
                s.push_str(&line);
                s.push('\n');
            }
            (s, at)
        })
    });
    let pid = child.id();
    let peak_kib = Arc::new(AtomicU64::new(0));
    let peak = peak_kib.clone();
    let sampler = thread::spawn(move || {
        while let Some(kib) = vm_rss_kib(pid) {
            peak.fetch_max(kib, Ordering::Relaxed);
            thread::sleep(Duration::from_millis(100));
        }
    });
    Ok(Running {
        cpu_at_start: cpu_seconds(pid).unwrap_or(0.0),
        child,
        startup_ms,
        peak_kib,
        sampler,
        stdout,
    })
}

/// What a tcpq run cost and printed.
pub(super) struct Stopped {
    pub(super) startup_ms: f64,
    pub(super) rss_mib: f64,
    pub(super) cpu_s: f64,
    pub(super) stdout: String,
    /// When each line of stdout arrived, seconds since start.
    pub(super) arrivals: Vec<f64>,
}

impl Running {
    /// Stops it (SIGINT unless it ends by itself) and collects what it printed.
    pub(super) fn stop(mut self, interrupt: bool) -> Result<Stopped> {
        let pid = self.child.id();
        let cpu = cpu_seconds(pid).unwrap_or(0.0) - self.cpu_at_start;
        if interrupt {
            let _ = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
        }
        self.child.wait().context("wait for tcpq")?;
        let _ = self.sampler.join();
        let (stdout, arrivals) = self
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Ok(Stopped {
            startup_ms: self.startup_ms,
            rss_mib: self.peak_kib.load(Ordering::Relaxed) as f64 / 1024.0,
            cpu_s: cpu,
            stdout,
            arrivals,
        })
    }
}

/// The frames `tcpq top --json` printed.
pub(super) fn frames(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// `lost_total` of the last frame.
pub(super) fn frames_lost(frames: &[Value]) -> u64 {
    frames
        .last()
        .and_then(|f| f["lost_total"].as_u64())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::median;

    #[test]
    fn median_and_frames_tolerate_empty_and_noise() {
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        let f = frames("not json\n{\"lost_total\":4}\n\n{\"lost_total\":7}\n");
        assert_eq!(f.len(), 2);
        assert_eq!(frames_lost(&f), 7);
        assert_eq!(frames_lost(&[]), 0);
    }
}
