//! The collector under a SYN storm at a full listener (`tcpq lab storm` while `tcpq top` runs):
//! the kernel's refusals against tcpq's count, its records, losses and cost.
use std::{process::Command, thread, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{
    BENCH_NS, PROFILE, STORM_PORT,
    procfs::ns_counter,
    running::{frames, frames_lost, start_tcpq},
};
use crate::tcpq_bin;

/// The collector under a SYN storm at a full listener.
pub(super) struct Storm {
    pub(super) secs: f64,
    pub(super) syns_sent: u64,
    pub(super) kernel_refusals: u64,
    pub(super) tcpq_counted: u64,
    pub(super) records: f64,
    pub(super) tallied: f64,
    pub(super) lost: u64,
    pub(super) cpu_s: f64,
    pub(super) rss_mib: f64,
}

pub(super) fn storm(secs: u64) -> Result<Storm> {
    let before = ns_counter("TcpExt", "ListenOverflows")?;
    let running = start_tcpq(&["top", "--json", "-d", "1"], &[], true)?;
    thread::sleep(Duration::from_millis(500));
    let bin = tcpq_bin(PROFILE);
    let port = STORM_PORT.to_string();
    let dur = format!("{secs}s");
    let lab = Command::new(&bin)
        .args([
            "lab",
            "storm",
            "--netns",
            BENCH_NS,
            "--port",
            &port,
            "--duration",
            &dur,
            "--json",
        ])
        .output()
        .context("run tcpq lab storm");
    // Two more frames: everything the storm caused is reported.
    thread::sleep(Duration::from_millis(2500));
    let after = ns_counter("TcpExt", "ListenOverflows")?;
    let out = running.stop(true)?;
    let lab = lab?;
    if !lab.status.success() {
        bail!(
            "tcpq lab storm failed: {}",
            String::from_utf8_lossy(&lab.stderr).trim()
        );
    }
    let done: Value = String::from_utf8_lossy(&lab.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "lab_done")
        .context("the storm lab printed no lab_done line")?;
    let frames = frames(&out.stdout);
    let listener = format!("127.0.0.1:{STORM_PORT}");
    let mut counted = 0;
    let (mut records, mut tallied) = (0.0, 0.0);
    for f in &frames {
        let secs = f["interval_s"].as_f64().unwrap_or(0.0);
        records += f["events_per_s"].as_f64().unwrap_or(0.0) * secs;
        tallied += f["tallied_per_s"].as_f64().unwrap_or(0.0) * secs;
        for l in f["listeners"].as_array().into_iter().flatten() {
            if l["listener"] == listener.as_str() {
                // Exact per listener with or without tracing (tier 0: ListenDrops shared by
                // sk_drops); the kinds cover what was traced once the family was armed.
                counted += l["refused"].as_u64().unwrap_or(0);
            }
        }
    }
    Ok(Storm {
        secs: done["seconds"].as_f64().unwrap_or(0.0),
        syns_sent: done["syns_sent"].as_u64().unwrap_or(0),
        kernel_refusals: after.saturating_sub(before),
        tcpq_counted: counted,
        records,
        tallied,
        lost: frames_lost(&frames),
        cpu_s: out.cpu_s,
        rss_mib: out.rss_mib,
    })
}
