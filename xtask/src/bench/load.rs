//! The bench's load: nginx in a namespace of its own (`BenchNs`) and wrk against it.
use std::{
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};
use tcpq_lab::netns::NetnsGuard;

use super::{BENCH_NS, NGINX_CPU, NGINX_PORT, OVERFLOW_PORT, WRK_CPU};
use crate::run;

/// `wrk` against the bench nginx inside its namespace; requests/s.
pub(super) fn wrk_rps(secs: u64) -> Result<f64> {
    wrk_rps_at(NGINX_PORT, secs)
}

/// `wrk` against the bench nginx's listener on `port`; requests/s.
pub(super) fn wrk_rps_at(port: u16, secs: u64) -> Result<f64> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            BENCH_NS,
            "taskset",
            "-c",
            WRK_CPU,
            "wrk",
            "-t2",
            "-c200",
            &format!("-d{secs}s"),
            "-H",
            "Connection: close",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .context("run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("Requests/sec:")
                .map(|v| v.trim().parse::<f64>())
        })
        .context("wrk printed no Requests/sec")?
        .context("parse wrk's Requests/sec")
}

/// Starts nginx in the bench namespace; stops it and removes the namespace on drop.
pub(super) struct BenchNs {
    conf: std::path::PathBuf,
    /// Deleted after nginx stopped (fields drop after `drop`).
    _ns: NetnsGuard,
}

impl BenchNs {
    pub(super) fn start() -> Result<Self> {
        let netns = NetnsGuard::fresh(BENCH_NS)?;
        let dir = std::env::temp_dir().join("tcpq-bench");
        std::fs::create_dir_all(&dir)?;
        let d = dir.display();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 8192; }}\nhttp {{\n access_log off;\n client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n server {{ listen 127.0.0.1:{NGINX_PORT} backlog=4096; location / {{ return 200 \"ok\\n\"; }} }}\n server {{ listen 127.0.0.1:{OVERFLOW_PORT} backlog=8; location / {{ return 200 \"ok\\n\"; }} }}\n}}\n"
            ),
        )?;
        let ns = Self { conf, _ns: netns };
        run(Command::new("ip")
            .args([
                "netns", "exec", BENCH_NS, "taskset", "-c", NGINX_CPU, "nginx", "-c",
            ])
            .arg(&ns.conf))?;
        thread::sleep(Duration::from_millis(500));
        Ok(ns)
    }
}

impl Drop for BenchNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "exec", BENCH_NS, "nginx", "-s", "stop", "-c"])
            .arg(&self.conf)
            .stderr(Stdio::null())
            .status();
        thread::sleep(Duration::from_millis(300));
    }
}
