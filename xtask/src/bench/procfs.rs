//! What /proc says about a process (RSS, CPU ticks), the machine (busy CPU) and the bench
//! namespace (its kernel counters).
use anyhow::{Context as _, Result};
use tcpq_lab::netns;

use super::BENCH_NS;

pub(super) fn vm_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// utime + stime of a process, in seconds (clock ticks of 1/100 s).
pub(super) fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised comm: state is field 3, utime 14, stime 15.
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Busy CPU time of the whole machine so far, in ns (/proc/stat `cpu` line: everything but
/// idle and iowait; USER_HZ = 100).
pub(super) fn busy_ns() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle) as f64 * 1e7)
}

/// A kernel counter (e.g. `TcpExt` `ListenOverflows`) of the bench namespace.
pub(super) fn ns_counter(table: &str, name: &str) -> Result<u64> {
    netns::counters_of(BENCH_NS)?
        .get(&format!("{table}:{name}"))
        .copied()
        .with_context(|| format!("no counter {table}:{name} in the bench namespace"))
}
