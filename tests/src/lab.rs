//! `tcpq lab` run by a test: to completion (`run_lab`) or in the background (`BackgroundLab`).
use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Stdio},
};

use serde_json::Value;

use crate::{Netns, tcpq};

/// Runs `tcpq lab … --json --netns NS` to completion; returns (facts, done) lines.
pub fn run_lab(ns: &Netns, args: &[&str]) -> (Value, Value) {
    let out = tcpq()
        .arg("lab")
        .args(args)
        .args(["--json", "--netns", &ns.name])
        .output()
        .expect("spawn tcpq lab");
    assert!(
        out.status.success(),
        "tcpq lab {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("lab JSON"))
        .collect();
    assert_eq!(lines.len(), 2, "lab prints facts and done: {lines:?}");
    (lines[0].clone(), lines[1].clone())
}

/// A `tcpq lab` running in the background.
pub struct BackgroundLab {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
    pub facts: Value,
}

impl BackgroundLab {
    /// Starts the lab and returns once its server listens (the facts line).
    pub fn start(ns: &Netns, args: &[&str]) -> Self {
        let mut child = tcpq()
            .arg("lab")
            .args(args)
            .args(["--json", "--netns", &ns.name])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn tcpq lab");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("lab facts");
        let facts =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("lab facts ({e}): {line}"));
        Self {
            child,
            stdout,
            facts,
        }
    }

    /// Ends the lab now (SIGINT: it stops its load and reports); returns its `lab_done` line.
    pub fn interrupt(self) -> Value {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.finish()
    }

    /// Waits for the lab to finish; returns its `lab_done` line.
    pub fn finish(mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("lab done");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "lab failed: {status}");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("lab done ({e}): {line}"))
    }
}

impl Drop for BackgroundLab {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
