//! System-wide CPU profiles (perf, cpu-clock) under the load with each tool, their symbols
//! grouped by where the tool adds work (`cost_group`), and the table that compares them.
use std::{
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use super::{bpftrace::Bpftrace, load::wrk_rps, pct, running::start_tcpq};
use crate::ensure_package;

/// What an eBPF tool (`tool`: its process name) adds to the machine's work, by where it runs:
/// groups of `perf report` symbols. The first matching group wins; `comm` is the process a
/// sample was taken in (programs run in whatever task or softirq the event happened in, so they
/// are grouped by symbol first).
fn cost_group(tool: &str, comm: &str, symbol: &str) -> Option<&'static str> {
    // (group, symbol-name prefixes or substrings); JIT code is `bpf_prog_<tag>_<name>`.
    const GROUPS: &[(&str, &[&str])] = &[
        ("the tool's programs (JIT code)", &["^bpf_prog_"]),
        (
            "probe reads (bpf_probe_read_kernel)",
            &["copy_from_kernel_nofault", "bpf_probe_read_kernel"],
        ),
        (
            "map lookups and updates (hash, LRU, per-CPU)",
            &[
                "htab_",
                "lookup_nulls_elem",
                "bpf_lru_",
                "pcpu_freelist",
                "percpu_array",
                "bpf_map_",
            ],
        ),
        ("ring buffer reserve/submit", &["ringbuf"]),
        (
            "syscall tracepoint slow path (every syscall of every task)",
            &[
                "syscall_trace_enter",
                "syscall_exit_work",
                "perf_syscall_",
                "trace_sys_e",
            ],
        ),
        (
            "hook dispatch (tracepoints, cgroup_skb)",
            &[
                "__bpf_trace_",
                "bpf_trace_run",
                "trace_call_bpf",
                "cgroup_bpf_run",
                "__bpf_prog_run",
                "perf_trace_run_bpf",
            ],
        ),
        (
            "clock reads (bpf_ktime_get_ns)",
            &["ktime_get_mono_fast", "bpf_ktime_get"],
        ),
        ("other BPF helpers", &["^bpf_", "__get_task_comm"]),
    ];
    let kernel = symbol.starts_with("[k] ");
    let name = symbol.split_once("] ").map_or(symbol, |(_, n)| n);
    let matches = |pattern: &str| match pattern.strip_prefix('^') {
        Some(prefix) => name.starts_with(prefix),
        None => name.contains(pattern),
    };
    if kernel
        && let Some((group, _)) = GROUPS
            .iter()
            .find(|(_, pats)| pats.iter().any(|p| matches(p)))
    {
        return Some(group);
    }
    match (comm == tool, kernel) {
        (true, true) => {
            Some("kernel work the tool asks for (sock_diag dumps, /proc and map reads)")
        }
        (true, false) => Some("the tool's userspace (decode, aggregation, output)"),
        _ => None,
    }
}

/// Shares of all samples per group, from `perf report --sort comm,symbol` lines
/// (`  1.23%  comm  [k] symbol`), largest first.
fn cost_profile(tool: &str, report: &str) -> Vec<(&'static str, f64)> {
    let mut groups: Vec<(&'static str, f64)> = Vec::new();
    for line in report.lines() {
        let mut words = line.split_whitespace();
        let (Some(pct), Some(comm)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(pct) = pct.trim_end_matches('%').parse::<f64>() else {
            continue;
        };
        let symbol: Vec<&str> = words.take(2).collect();
        let Some(group) = cost_group(tool, comm, &symbol.join(" ")) else {
            continue;
        };
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, v)) => *v += pct,
            None => groups.push((group, pct)),
        }
    }
    groups.sort_by(|a, b| b.1.total_cmp(&a.1));
    groups
}

/// Which tool a profile runs.
#[derive(Clone, Copy)]
pub(super) enum Profiled {
    Tcpq,
    Bpftrace,
}

/// A system-wide CPU profile while `who` runs under the load (cpu-clock samples: no hardware
/// counters needed, so it works in a VM), grouped by `cost_group`. Err (with why) when perf or
/// the tool cannot run here. Steadier than the rps pairs: the machine's speed drifts between
/// runs, but the share of samples in what the tool adds does not depend on it.
pub(super) fn profile(secs: u64, who: Profiled) -> Result<Vec<(&'static str, f64)>, String> {
    ensure_package("perf", "linux-perf", "the profile")?;
    let data = std::env::temp_dir().join("tcpq-bench").join("perf.data");
    // The tool's process name, and how to stop it.
    let (comm, stop): (&str, Box<dyn FnOnce()>) = match who {
        Profiled::Tcpq => {
            let running =
                start_tcpq(&["top", "--json", "-d", "1"], &[], true).map_err(|e| e.to_string())?;
            ("tcpq", Box::new(move || drop(running.stop(true))))
        }
        Profiled::Bpftrace => {
            let bt = Bpftrace::start()?;
            ("bpftrace", Box::new(move || bt.stop()))
        }
    };
    thread::sleep(Duration::from_millis(500));
    let perf = Command::new("perf")
        .args(["record", "-q", "-a", "-F", "499", "-o"])
        .arg(&data)
        .args(["--", "sleep", &secs.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let rps = wrk_rps(secs);
    let recorded = perf
        .and_then(|mut p| p.wait())
        .map(|s| s.success())
        .unwrap_or(false);
    stop();
    rps.map_err(|e| e.to_string())?;
    if !recorded {
        return Err("perf record failed (perf_event_paranoid, or no cpu-clock events)".into());
    }
    let report = Command::new("perf")
        .args([
            "report",
            "--no-children",
            "--sort",
            "comm,symbol",
            "-q",
            "--stdio",
            "-g",
            "none",
            "-i",
        ])
        .arg(&data)
        .output()
        .map_err(|e| format!("perf report: {e}"))?;
    let _ = std::fs::remove_file(&data);
    Ok(cost_profile(comm, &String::from_utf8_lossy(&report.stdout)))
}

/// The profiles side by side: share of all CPU samples per group, tcpq and bpftrace, and what
/// they imply for the rps ratio (the CPUs are saturated: a share of the samples spent in the
/// tool is that share of the requests not served).
pub(super) fn profile_table(
    tcpq: &Result<Vec<(&'static str, f64)>, String>,
    bpftrace: &Result<Vec<(&'static str, f64)>, String>,
) -> String {
    let groups = match tcpq {
        Ok(g) => g,
        Err(why) => return format!("\nCPU profile: {why}\n"),
    };
    let share = |profile: &Result<Vec<(&'static str, f64)>, String>, group: &str| match profile {
        Ok(g) => g
            .iter()
            .find(|(n, _)| *n == group)
            .map(|(_, p)| format!("{p:.2} %"))
            .unwrap_or_else(|| "0 %".into()),
        Err(_) => "-".into(),
    };
    let mut t = String::from(
        "\nWhere the cost goes (perf, cpu-clock samples on all CPUs during one more run with each tool; share of all samples, symbols grouped):\n\n| where | tcpq top | bpftrace equivalent |\n|---|---|---|\n",
    );
    for (group, _) in groups {
        t.push_str(&format!(
            "| {group} | {} | {} |\n",
            share(tcpq, group),
            share(bpftrace, group)
        ));
    }
    if let Ok(bt) = bpftrace {
        for (group, _) in bt
            .iter()
            .filter(|(g, _)| !groups.iter().any(|(n, _)| n == g))
        {
            t.push_str(&format!("| {group} | 0 % | {} |\n", share(bpftrace, group)));
        }
    }
    let total = |g: &[(&'static str, f64)]| g.iter().map(|(_, p)| p).sum::<f64>();
    let tcpq_total = total(groups);
    match bpftrace {
        Ok(bt) => {
            let bt_total = total(bt);
            t.push_str(&format!(
                "| total | {tcpq_total:.2} % | {bt_total:.2} % |\n\
                 | rps ratio these imply (1 − total) | {} | {} |\n\
                 | cost bpftrace / tcpq (from the profiles) | {:.2}× | target ≥ 3× |\n",
                pct(1.0 - tcpq_total / 100.0),
                pct(1.0 - bt_total / 100.0),
                bt_total / tcpq_total.max(1e-9)
            ));
        }
        Err(why) => t.push_str(&format!(
            "| total | {tcpq_total:.2} % | {why} |\n| rps ratio this implies (1 − total) | {} | |\n",
            pct(1.0 - tcpq_total / 100.0)
        )),
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_groups_what_tcpq_adds() {
        let report = "     5.19%  wrk              [k] _raw_spin_unlock_irqrestore\n\
             1.21%  nginx            [k] copy_from_kernel_nofault\n\
             0.40%  wrk              [k] copy_from_kernel_nofault\n\
             0.49%  swapper          [k] bpf_prog_91bb4a609f3d2e99_outcome_kfree\n\
             0.26%  nginx            [k] syscall_trace_enter\n\
             0.29%  tcpq             [k] tcp_diag_dump\n\
             0.10%  tcpq             [.] __memmove_avx512_unaligned_erms\n\
             0.25%  wrk              [k] bpf_ringbuf_submit\n\
             0.11%  nginx            [k] __bpf_prog_run_save_cb\n\
             garbage line\n\
             \n";
        let groups = cost_profile("tcpq", report);
        let share = |g: &str| {
            groups
                .iter()
                .find(|(n, _)| n.starts_with(g))
                .map(|(_, p)| (p * 100.0).round() / 100.0)
        };
        assert_eq!(share("probe reads"), Some(1.61));
        assert_eq!(share("the tool's programs"), Some(0.49));
        assert_eq!(share("syscall tracepoint"), Some(0.26));
        assert_eq!(share("kernel work the tool"), Some(0.29));
        assert_eq!(share("the tool's userspace"), Some(0.10));
        assert_eq!(share("ring buffer"), Some(0.25));
        assert_eq!(
            share("hook dispatch"),
            Some(0.11),
            "not a program's JIT code"
        );
        assert_eq!(
            groups[0].0, "probe reads (bpf_probe_read_kernel)",
            "largest first"
        );
        assert!(cost_profile("tcpq", "").is_empty());
        // bpftrace's own process is the tool there; tcpq's lines would not be.
        let bt = cost_profile(
            "bpftrace",
            "  0.30%  bpftrace  [.] main\n  0.29%  tcpq  [k] tcp_diag_dump\n",
        );
        assert_eq!(
            bt,
            vec![("the tool's userspace (decode, aggregation, output)", 0.30)]
        );
        let t = profile_table(&Ok(groups.clone()), &Ok(bt));
        assert!(
            t.contains("| cost bpftrace / tcpq (from the profiles) |"),
            "{t}"
        );
        assert!(profile_table(&Err("no perf".into()), &Err("x".into())).contains("no perf"));
    }
}
