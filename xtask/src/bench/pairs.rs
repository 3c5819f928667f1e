//! Side-by-side measurements on the healthy load: wrk without and with tcpq (`pair`), and the
//! per-program kernel cost from `tcpq diagnose` with BPF_ENABLE_STATS.
use std::{thread, time::Duration};

use anyhow::{Context as _, Result};
use serde_json::Value;

use super::{
    NGINX_PORT,
    cost::{Accounted, account},
    load::{wrk_rps, wrk_rps_at},
    procfs::busy_ns,
    running::{Stopped, start_tcpq},
};

/// One side-by-side measurement: wrk alone and wrk with tcpq running, in alternating order
/// so that a drift of the machine does not favour one side. The tcpq side also accounts its
/// cost: its programs' run time (BPF_ENABLE_STATS) and its process's CPU over the wrk run.
pub(super) struct Pair {
    pub(super) base: f64,
    pub(super) with: f64,
    pub(super) tcpq: Stopped,
    /// Busy CPU of the machine per request without tcpq, ns.
    pub(super) base_busy_per_req_ns: f64,
    /// tcpq's programs and process per request.
    pub(super) cost: Accounted,
}

/// wrk alone: (requests/s, busy CPU ns per request).
fn base_run(secs: u64) -> Result<(f64, f64)> {
    let busy0 = busy_ns().unwrap_or(0.0);
    let rps = wrk_rps(secs)?;
    let busy = busy_ns().unwrap_or(0.0) - busy0;
    Ok((rps, busy / (rps * secs as f64).max(1.0)))
}

pub(super) fn pair(args: &[&str], secs: u64, tcpq_first: bool) -> Result<Pair> {
    let base_first = if tcpq_first {
        None
    } else {
        Some(base_run(secs)?)
    };
    let running = start_tcpq(args, &[("TCPQ_BPF_STATS", "1")], true)?;
    thread::sleep(Duration::from_millis(500));
    let measured = account(running.child.id(), NGINX_PORT, secs);
    let tcpq = running.stop(true)?;
    let (with, cost) = measured.map_err(anyhow::Error::msg)?;
    let (base, base_busy_per_req_ns) = match base_first {
        Some(b) => b,
        None => base_run(secs)?,
    };
    Ok(Pair {
        base,
        with,
        tcpq,
        base_busy_per_req_ns,
        cost,
    })
}

/// (program, ns per run, runs) from BPF_ENABLE_STATS.
type ProgramCost = (String, u64, u64);

/// Per-program kernel cost: `tcpq diagnose --hooks HOOKS` with BPF_ENABLE_STATS while wrk
/// runs against `port`; also the requests wrk completed meanwhile.
pub(super) fn program_costs(secs: u64, port: u16, hooks: &str) -> Result<(Vec<ProgramCost>, f64)> {
    let duration = format!("{}", secs + 2);
    let running = start_tcpq(
        &[
            "diagnose",
            "--json",
            "--duration",
            &duration,
            "--hooks",
            hooks,
        ],
        &[("TCPQ_BPF_STATS", "1")],
        true,
    )?;
    thread::sleep(Duration::from_millis(500));
    let rps = wrk_rps_at(port, secs)?;
    let out = running.stop(false)?;
    let report: Value = out
        .stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .context("diagnose printed no report")?;
    let mut programs: Vec<ProgramCost> = report["program_stats"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["program"].as_str().unwrap_or("?").to_string(),
                        p["ns_per_run"].as_u64().unwrap_or(0),
                        p["run_count"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    programs.sort_by_key(|p| std::cmp::Reverse(p.2));
    Ok((programs, rps * secs as f64))
}

/// The per-program table of the armed overflow (counters first, as `top` runs).
pub(super) fn armed_program_table(programs: &Result<Vec<ProgramCost>>) -> String {
    let programs = match programs {
        Ok(p) => p,
        Err(e) => return format!("\nPer-program cost while armed: not measured ({e:#})\n"),
    };
    let mut t = String::from(
        "\nPer-program kernel cost while the nginx overflow arms the listen family (counters first: `diagnose --hooks auto`, the programs `top` attaches; same load, against the backlog=8 listener; runs include the second before arming):\n\n| program | ns/run | runs |\n|---|---|---|\n",
    );
    for (name, ns, runs) in programs {
        t.push_str(&format!("| {name} | {ns} | {runs} |\n"));
    }
    t
}

/// What BPF_ENABLE_STATS itself adds to every run (two clock reads and the counters): the run
/// time of the empty floor_probe in the same kind of run. Off in production.
pub(super) fn floor_ns(programs: &[ProgramCost]) -> f64 {
    programs
        .iter()
        .find(|(name, _, _)| name == "floor_probe")
        .map(|(_, ns, _)| *ns as f64)
        .unwrap_or(0.0)
}
