//! One tool's accounted cost over a wrk run, per request: its programs' run time
//! (BPF_ENABLE_STATS, from the fds it holds) and its process's CPU.
use super::load::wrk_rps_at;

/// CPU time of every thread of a process so far, in ns (/proc/PID/task/*/schedstat: ns
/// resolution, where /proc/PID/stat counts 10 ms ticks — too coarse for a few seconds of a
/// process that mostly sleeps).
fn cpu_ns(pid: u32) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    Some(
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// Σ run_time_ns over the BPF programs a process holds (its /proc/PID/fdinfo; counted while
/// BPF_ENABLE_STATS is on, which `tcpq` turns on with TCPQ_BPF_STATS=1).
fn programs_run_ns(pid: u32) -> (f64, f64) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return (0.0, 0.0);
    };
    let field = |t: &str, name: &str| {
        t.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter(|t| t.contains("prog_tag:"))
        .map(|t| (field(&t, "run_time_ns:"), field(&t, "run_cnt:")))
        .fold((0.0, 0.0), |(ns, n), (a, b)| (ns + a, n + b))
}

/// One tool's accounted cost over a wrk run, per request: its programs' run time
/// (BPF_ENABLE_STATS, from the fds the process holds), their runs, and its process CPU.
#[derive(Clone, Copy, Default)]
pub(super) struct Accounted {
    pub(super) programs_ns: f64,
    pub(super) runs: f64,
    pub(super) process_ns: f64,
}

impl Accounted {
    /// Less what BPF_ENABLE_STATS adds to every run (`floor_ns`, the empty floor_probe's run
    /// time): what the tool costs with the stats off, as in production.
    pub(super) fn net_ns(&self, floor_ns: f64) -> f64 {
        (self.programs_ns - floor_ns * self.runs).max(0.0) + self.process_ns
    }
}

/// Samples `pid`'s programs and CPU around a wrk run at `port`.
/// Requests/s, and what the tool cost per request.
pub(super) fn account(pid: u32, port: u16, secs: u64) -> Result<(f64, Accounted), String> {
    let (prog0, cpu0) = (programs_run_ns(pid), cpu_ns(pid).unwrap_or(0.0));
    let rps = wrk_rps_at(port, secs).map_err(|e| e.to_string())?;
    let (prog1, cpu1) = (programs_run_ns(pid), cpu_ns(pid).unwrap_or(0.0));
    let requests = (rps * secs as f64).max(1.0);
    Ok((
        rps,
        Accounted {
            programs_ns: (prog1.0 - prog0.0) / requests,
            runs: (prog1.1 - prog0.1) / requests,
            process_ns: (cpu1 - cpu0) / requests,
        },
    ))
}
