//! `tcpq top --json` in the background (`TopJson`): its frames on a channel.
use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::tcpq;

/// `tcpq top --json -d DELAY EXTRA…` in the background: frames arrive on a channel; stopped
/// with SIGINT on drop.
pub struct TopJson {
    pub child: Child,
    pub frames: std::sync::mpsc::Receiver<Value>,
}

impl TopJson {
    pub fn start(delay: &str) -> Self {
        Self::start_with(delay, &[])
    }

    pub fn start_with(delay: &str, extra: &[&str]) -> Self {
        let mut child = tcpq()
            .args(["top", "--json", "-d", delay])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tcpq top");
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, frames) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let v: Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("frame ({e}): {line}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Self { child, frames }
    }

    pub fn next(&self) -> Value {
        self.frames
            .recv_timeout(Duration::from_secs(15))
            .expect("a frame from tcpq top")
    }
}

impl Drop for TopJson {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}
