//! A running `tcpq trace … --json` (`Tracer`): started through tcpq-lab's start-up helper and
//! waited for until its hooks are attached, its stdout read from the start, stopped with SIGINT.
use std::{
    io::Read as _,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::tcpq;

/// A running `tcpq trace overflow --json …`.
pub struct Tracer {
    child: Child,
    stderr_lines: Vec<String>,
    /// Its stdout, read from the start: a pipe nobody reads fills (64 KiB), and tcpq then drops
    /// lines (`output_stalled`) rather than stop counting — thousands of lines under a slow
    /// kernel (qemu's TCG) did that.
    stdout: Option<std::thread::JoinHandle<String>>,
}

impl Tracer {
    /// Starts tcpq and waits until its hooks are attached (the `tcpq: tracing` line).
    pub fn start(extra: &[&str]) -> Self {
        Self::start_with_env(extra, &[])
    }

    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut args = vec!["trace", "overflow", "--json"];
        args.extend_from_slice(extra);
        Self::start_cmd(&args, env)
    }

    /// Any tracing subcommand (`trace connect --json …`).
    pub fn start_cmd(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = tcpq();
        cmd.args(args).envs(env.iter().copied());
        Self::from_command(cmd)
    }

    /// A tracing command started some other way (e.g. under `ip netns exec`, which execs tcpq:
    /// the child is tcpq itself), waited for like any other.
    pub fn from_command(mut cmd: Command) -> Self {
        // A hang guard, not a timing assert: tcpq verifies its programs in ~1 s here, but in
        // most of a minute under qemu's TCG (the kernel matrix), longer while it shares the CPUs
        // with another VM. TCPQ_TEST_START_SECS overrides the wait.
        let wait = std::env::var("TCPQ_TEST_START_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(120);
        cmd.stdout(Stdio::piped());
        let started = tcpq_lab::tcpq::start(
            &mut cmd,
            |line| line.starts_with("tcpq: tracing"),
            Duration::from_secs(wait),
        )
        .unwrap_or_else(|e| panic!("tcpq did not start: {e:#}"));
        let mut child = started.child;
        let mut stdout = child.stdout.take().expect("tcpq's stdout is piped");
        let stdout = std::thread::spawn(move || {
            let mut out = String::new();
            let _ = stdout.read_to_string(&mut out);
            out
        });
        Self {
            child,
            stderr_lines: started.banner,
            stdout: Some(stdout),
        }
    }

    /// SIGINT, then every NDJSON line it printed (events, aggregates, summaries).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stop(mut self) -> Vec<Value> {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().unwrap();
        let out = self
            .stdout
            .take()
            .unwrap()
            .join()
            .expect("the stdout reader of tcpq");
        assert!(
            status.success(),
            "tcpq exited with {status}; stderr: {:?}",
            self.stderr_lines
        );
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

impl Tracer {
    /// The `tcpq: tracing …` banner and anything printed before it on stderr.
    pub fn banner(&self) -> &[String] {
        &self.stderr_lines
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
