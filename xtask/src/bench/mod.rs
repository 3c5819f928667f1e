//! `cargo xtask bench [--quick]`: tcpq's cost under a real load (nginx + wrk with short
//! connections, in a namespace of its own), per hook family, per program, against the
//! bpftrace equivalent, and the collector under a SYN storm. Prints a table; the full run
//! rewrites BENCHMARKS.md. Ratios are measured side by side in one run, never asserted.
//! This file: the shared settings and `bench`, which runs the parts (one file each) and writes
//! the report.
use std::{process::Command, thread};

use anyhow::{Result, bail};

use crate::{is_root, output_of, root_dir, run, setup};

use armed::{EVERYTHING, OVERFLOW, armed_comparison, armed_rows};
use big_tables::{big_tables_both, big_tables_text, splice_big_tables};
use bpftrace::bpftrace_ratio;
use load::BenchNs;
use pairs::{armed_program_table, floor_ns, pair, program_costs};
use profile::{Profiled, profile, profile_table};
use running::{frames, frames_lost};
use storm::storm;

mod armed;
mod big_tables;
mod bpftrace;
mod cost;
mod load;
mod pairs;
mod procfs;
mod profile;
mod running;
mod storm;

mod soak;

const BENCH_NS: &str = "tcpq-bench";

/// nginx listens here; the storm lab's full listener on STORM_PORT.
const NGINX_PORT: u16 = 18090;

const STORM_PORT: u16 = 18091;

/// The same nginx with `backlog=8`: wrk's 200 connections overflow it (~200 refusals/s here),
/// the incident whose armed cost is compared with bpftrace's.
const OVERFLOW_PORT: u16 = 18092;

/// Pinning (`taskset`): nginx on CPU 0, wrk and tcpq on CPU 1, so that the pairs compare the
/// same placement every time.
const NGINX_CPU: &str = "0";

const WRK_CPU: &str = "1";

const TCPQ_CPU: &str = "1";

/// The release build `bench` makes.
const PROFILE: &str = "release";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn pct(r: f64) -> String {
    format!("{:.1} %", r * 100.0)
}

/// `armed_only`: just the cost while every family traces, against bpftrace (a quicker loop
/// while working on the tier-2 programs; prints, writes nothing).
/// `tables_only`: just the big tables (prints them and, unless `quick`, rewrites their sections
/// of BENCHMARKS.md).
/// `soak_only`: just the exporter soak, `soak_secs` long (prints, writes nothing). The full run
/// ends with the same soak and writes it as its own section; `--quick` never runs it.
pub fn bench(
    quick: bool,
    armed_only: bool,
    tables_only: bool,
    soak_only: bool,
    soak_secs: u64,
) -> Result<()> {
    setup()?;
    if !is_root() {
        bail!("the benchmark loads eBPF programs and creates a network namespace: run it as root");
    }
    run(Command::new("cargo").current_dir(root_dir()).args([
        "build",
        "--release",
        "--package",
        "tcpq-user",
    ]))?;
    if soak_only {
        println!("{}", soak::soak(soak_secs)?);
        return Ok(());
    }
    if tables_only {
        let (big, big_ct) = big_tables_both(quick)?;
        let text = big_tables_text(&big, &big_ct);
        println!("{text}");
        if !quick {
            splice_big_tables(&text)?;
        }
        return Ok(());
    }
    let ns = BenchNs::start()?;
    let (pairs, secs) = if quick { (1, 2) } else { (10, 5) };
    if armed_only {
        let (programs, _) = program_costs(secs, NGINX_PORT, "all")?;
        let floor = floor_ns(&programs);
        let mut rows = String::new();
        for scenario in [OVERFLOW, EVERYTHING] {
            rows.push_str(&armed_rows(
                &armed_comparison(scenario, secs, pairs.min(5))?,
                floor,
            ));
        }
        let armed_programs = program_costs(secs, OVERFLOW_PORT, "auto").map(|(p, _)| p);
        drop(ns);
        println!(
            "| measure | value | target |\n|---|---|---|\n{rows}{}",
            armed_program_table(&armed_programs)
        );
        return Ok(());
    }
    let top = ["top", "--json", "-d", "1"];
    let mut all = Vec::new();
    for i in 0..pairs {
        eprintln!(
            "xtask: bench: wrk without/with `tcpq top`, pair {}/{pairs} ({secs} s each side)…",
            i + 1
        );
        all.push(pair(&top, secs, i % 2 == 1)?);
    }
    let ratios: Vec<f64> = all.iter().map(|p| p.with / p.base).collect();
    let ratio = median(ratios.clone());
    let (lo, hi) = ratios
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
    let base = median(all.iter().map(|p| p.base).collect());
    let with = median(all.iter().map(|p| p.with).collect());
    let startup = median(all.iter().map(|p| p.tcpq.startup_ms).collect());
    let rss = all.iter().map(|p| p.tcpq.rss_mib).fold(0.0, f64::max);
    let lost: u64 = all
        .iter()
        .map(|p| frames_lost(&frames(&p.tcpq.stdout)))
        .sum();
    let cpu_pct = median(
        all.iter()
            .map(|p| p.tcpq.cpu_s / (secs as f64 + 0.5) * 100.0)
            .collect(),
    );
    let busy_per_req = median(all.iter().map(|p| p.base_busy_per_req_ns).collect());
    let prog_per_req = median(all.iter().map(|p| p.cost.programs_ns).collect());
    let proc_per_req = median(all.iter().map(|p| p.cost.process_ns).collect());
    let runs_per_req = median(all.iter().map(|p| p.cost.runs).collect());
    let accounted = prog_per_req + proc_per_req;
    let accounted_share = if busy_per_req > 0.0 {
        accounted / busy_per_req
    } else {
        0.0
    };
    let armed_healthy = all
        .iter()
        .flat_map(|p| frames(&p.tcpq.stdout))
        .filter(|f| {
            f["families"]
                .as_array()
                .is_some_and(|fs| fs.iter().any(|x| x["state"] == "tracing"))
        })
        .count();

    eprintln!("xtask: bench: per-program cost with every hook attached (BPF_ENABLE_STATS)…");
    let (programs, _) = program_costs(secs, NGINX_PORT, "all")?;
    // The same while counters first traces the incident: what the armed cost is made of.
    let armed_programs = program_costs(secs, OVERFLOW_PORT, "auto").map(|(p, _)| p);
    let stats_floor = floor_ns(&programs);
    eprintln!("xtask: bench: cost while every family traces, tcpq against bpftrace…");
    let mut armed_rows = String::new();
    for scenario in [OVERFLOW, EVERYTHING] {
        let armed = armed_comparison(scenario, secs, if quick { 1 } else { 5 })?;
        armed_rows.push_str(&self::armed_rows(&armed, stats_floor));
    }
    let net_programs = (prog_per_req - stats_floor * runs_per_req).max(0.0);
    let net = net_programs + proc_per_req;
    let net_share = if busy_per_req > 0.0 {
        net / busy_per_req
    } else {
        0.0
    };
    eprintln!("xtask: bench: SYN storm at a full listener…");
    let storm = storm(if quick { 2 } else { 5 })?;
    eprintln!("xtask: bench: big tables…");
    let (big, big_ct) = big_tables_both(quick)?;
    let bpftrace = if quick {
        Err("not measured in --quick".to_string())
    } else {
        eprintln!("xtask: bench: bpftrace equivalent…");
        bpftrace_ratio(secs, pairs)
    };
    let (profiled, profiled_bt) = if quick {
        let skipped = || Err("not measured in --quick".to_string());
        (skipped(), skipped())
    } else {
        eprintln!("xtask: bench: CPU profiles (perf) with `tcpq top`, then with bpftrace…");
        (
            profile(secs, Profiled::Tcpq),
            profile(secs, Profiled::Bpftrace),
        )
    };
    drop(ns);

    let bpftrace_rows = match &bpftrace {
        Ok(bt) => {
            let (tcpq_cost, bt_cost) = ((1.0 - ratio).max(0.0), (1.0 - bt).max(0.0));
            format!(
                "| rps ratio with the bpftrace equivalent (same tracepoints, maps in bpftrace; informational) | {} | |\n| rps lost: bpftrace / tcpq (informational: the pairs' noise exceeds both costs; the profiles below are the comparison) | {} | |\n",
                pct(*bt),
                if tcpq_cost > 0.0 {
                    format!("{:.2}×", bt_cost / tcpq_cost)
                } else {
                    "tcpq cost not measurable".into()
                }
            )
        }
        Err(why) => format!("| bpftrace comparison | {why} | |\n"),
    };
    let storm_rate = storm.kernel_refusals as f64 / storm.secs.max(1e-9);
    let exact = if storm.tcpq_counted == storm.kernel_refusals {
        "exact".to_string()
    } else {
        format!(
            "off by {}",
            storm.tcpq_counted as i64 - storm.kernel_refusals as i64
        )
    };
    let mut table = format!(
        "| measure | value | target |\n|---|---|---|\n\
         | nginx rps without tcpq (median) | {base:.0} | |\n\
         | nginx rps with `tcpq top --json` (counters first) | {with:.0} | |\n\
         | ratio with/without (median of {pairs} pairs; min–max; informational) | {} ({}–{}) | |\n\
         | machine's busy CPU per request without tcpq (median) | {:.1} µs | |\n\
         | tcpq top's programs per request (BPF_ENABLE_STATS, tcpq's fdinfo) | {:.3} µs | |\n\
         | tcpq top's own process CPU per request | {:.3} µs | |\n\
         | tcpq top's accounted cost per request, as measured (stats on) | {:.3} µs = {:.2} % of the CPU a request costs | |\n\
         | program runs per request; BPF_ENABLE_STATS's own cost per run (floor_probe) | {runs_per_req:.1}; {stats_floor:.0} ns | |\n\
         | **tcpq top's accounted cost per request, less the stats' own cost** | {:.3} µs = **{:.2} %** of the CPU a request costs | ≤ 1 % |\n\
         | frames in which a family was tracing (healthy load: should be 0) | {armed_healthy} | 0 |\n\
         | tcpq's own CPU during the load | {cpu_pct:.1} % of one CPU | |\n\
         | start-up: process start → all hooks attached | {startup:.0} ms | < 300 ms |\n\
         | peak RSS under load | {rss:.1} MiB | < 40 MiB |\n\
         | lost events under load | {lost} | 0 |\n\
         {armed_rows}\
         {bpftrace_rows}\
         | storm: SYNs refused by the kernel (ListenOverflows) | {} in {:.1} s = {:.0}/s ({} sent) | ≥ 200k events/s |\n\
         | storm: refusals tcpq counted for that listener | {} ({exact}) | exact |\n\
         | storm: ring records read / counted in kernel maps | {:.0}/s / {:.0}/s | |\n\
         | storm: lost events | {} | 0 |\n\
         | storm: tcpq CPU / peak RSS | {:.1} % of one CPU / {:.1} MiB | < 40 MiB |\n",
        pct(ratio),
        pct(lo),
        pct(hi),
        busy_per_req / 1000.0,
        prog_per_req / 1000.0,
        proc_per_req / 1000.0,
        accounted / 1000.0,
        accounted_share * 100.0,
        net / 1000.0,
        net_share * 100.0,
        storm.kernel_refusals,
        storm.secs,
        storm_rate,
        storm.syns_sent,
        storm.tcpq_counted,
        storm.records / storm.secs.max(1e-9),
        storm.tallied / storm.secs.max(1e-9),
        storm.lost,
        storm.cpu_s / (storm.secs + 3.0) * 100.0,
        storm.rss_mib,
    );
    table.push_str(
        "\nPer-program kernel cost (BPF_ENABLE_STATS, one more run under the same load; `floor_probe` is an empty program on inet_sock_set_state, attached for this run only: what any hook costs before doing anything, stats overhead included):\n\n| program | ns/run | runs |\n|---|---|---|\n",
    );
    for (name, ns, runs) in &programs {
        table.push_str(&format!("| {name} | {ns} | {runs} |\n"));
    }
    table.push_str(&armed_program_table(&armed_programs));
    table.push_str(&big_tables_text(&big, &big_ct));
    table.push_str(&profile_table(&profiled, &profiled_bt));
    println!("{table}");
    if !quick {
        eprintln!("xtask: bench: exporter soak ({soak_secs} s)…");
        let soaked = soak::soak(soak_secs)?;
        println!("{soaked}");
        let doc = format!(
            "# tcpq benchmarks\n\nWritten by `cargo xtask bench` (do not edit by hand). Machine: {} cores, kernel {}.\n\n\
             Method: nginx (Debian, 2 workers, `return 200`, pinned to CPU 0) in a network namespace of its own, `wrk -t2 -c200 -H 'Connection: close'` (CPU 1) \
             for {secs} s without tcpq and {secs} s while `tcpq top --json -d 1` runs (CPU 1; its default, counters first: tier-2 programs only while a family \
             has trouble; frames to a pipe), in alternating order, {pairs} pairs. **Accounted cost** (the target): tcpq's programs' run time \
             (BPF_ENABLE_STATS via TCPQ_BPF_STATS=1, summed from tcpq's own /proc/PID/fdinfo) plus tcpq's process CPU (/proc/PID/task/*/schedstat), \
             over the wrk run, per request, against the machine's busy CPU per request without tcpq (/proc/stat), medians over the pairs; \
             shown as measured and less what the stats themselves add to every run (the empty floor_probe's run time × runs). \
             The rps ratio is informational: it swings by ±20 points between pairs on this shared VM. The storm: `tcpq lab storm` sends raw SYNs from distinct 127.x.y.z clients \
             (one sender per CPU, sendmmsg) at a listener whose accept queue is full, while `tcpq top --json` runs; every SYN is a \
             ListenOverflow; tcpq's count is the sum of that listener's `refused` over its frames. \
             \n\n{table}\n\
             The bpftrace side runs the one-liners in `BPFTRACE_SCRIPT` (xtask/src/bench/bpftrace.rs) on the same nginx, {pairs} pairs. \
             The profiles are `perf record -a -F 499` (cpu-clock) during one more {secs} s wrk run with each tool; their symbols are \
             grouped by `cost_group` in xtask/src/bench/profile.rs (these groups exist only because the tool runs: no other BPF program is loaded).\n{soaked}",
            thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            output_of(Command::new("uname").arg("-r"))
                .unwrap_or_default()
                .trim()
        );
        std::fs::write(root_dir().join("BENCHMARKS.md"), doc)?;
        eprintln!("xtask: wrote BENCHMARKS.md");
    }
    Ok(())
}
