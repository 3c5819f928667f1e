//! `cargo xtask bench [--quick]`: tcpq's cost under a real load (nginx + wrk with short
//! connections, in a namespace of its own), per hook family, per program, against the
//! bpftrace equivalent, and the collector under a SYN storm. Prints a table; the full run
//! rewrites BENCHMARKS.md. Ratios are measured side by side in one run, never asserted.
use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use tcpq_lab::{
    netns::{self, NetnsGuard},
    sysctl::{self, GlobalSysctl},
};

use crate::{ensure_package, is_root, output_of, root_dir, run, setup, tcpq_bin};

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

/// `wrk` against the bench nginx inside its namespace; requests/s.
fn wrk_rps(secs: u64) -> Result<f64> {
    wrk_rps_at(NGINX_PORT, secs)
}

/// `wrk` against the bench nginx's listener on `port`; requests/s.
fn wrk_rps_at(port: u16, secs: u64) -> Result<f64> {
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

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// utime + stime of a process, in seconds (clock ticks of 1/100 s).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised comm: state is field 3, utime 14, stime 15.
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

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

/// Busy CPU time of the whole machine so far, in ns (/proc/stat `cpu` line: everything but
/// idle and iowait; USER_HZ = 100).
fn busy_ns() -> Option<f64> {
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

/// A kernel counter (e.g. `TcpExt` `ListenOverflows`) of the bench namespace.
fn ns_counter(table: &str, name: &str) -> Result<u64> {
    netns::counters_of(BENCH_NS)?
        .get(&format!("{table}:{name}"))
        .copied()
        .with_context(|| format!("no counter {table}:{name} in the bench namespace"))
}

/// The release build `bench` makes.
const PROFILE: &str = "release";

/// A tcpq process whose banner has been seen (every hook attached).
struct Running {
    child: Child,
    startup_ms: f64,
    peak_kib: Arc<AtomicU64>,
    sampler: thread::JoinHandle<()>,
    stdout: Option<thread::JoinHandle<(String, Vec<f64>)>>,
    cpu_at_start: f64,
}

/// A start-up longer than this is a hang (the target is < 300 ms; qemu's TCG takes a minute).
const START_GUARD: Duration = Duration::from_secs(120);

/// Starts `tcpq ARGS`; `collect` keeps its stdout (else it goes to /dev/null).
fn start_tcpq(args: &[&str], env: &[(&str, &str)], collect: bool) -> Result<Running> {
    let bin = tcpq_bin(PROFILE);
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", TCPQ_CPU])
        .arg(&bin)
        .args(args)
        .envs(env.iter().copied())
        .stdout(if collect {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    // Its later stderr lines are drained, unread, by the helper's reader.
    let tcpq_lab::tcpq::Started {
        mut child,
        spawned_at,
        startup,
        ..
    } = tcpq_lab::tcpq::start(&mut cmd, tcpq_lab::tcpq::is_banner, START_GUARD)
        .with_context(|| format!("start {} {}", bin.display(), args.join(" ")))?;
    let startup_ms = startup.as_secs_f64() * 1000.0;
    // Each line with when it arrived (seconds since start): how on time frames are, as their
    // reader sees them.
    let stdout = child.stdout.take().map(|out| {
        thread::spawn(move || {
            let (mut s, mut at) = (String::new(), Vec::new());
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                at.push(spawned_at.elapsed().as_secs_f64());
                s.push_str(&line);
                s.push('\n');
            }
            (s, at)
        })
    });
    let pid = child.id();
    let peak_kib = Arc::new(AtomicU64::new(0));
    let peak = peak_kib.clone();
    let sampler = thread::spawn(move || {
        while let Some(kib) = vm_rss_kib(pid) {
            peak.fetch_max(kib, Ordering::Relaxed);
            thread::sleep(Duration::from_millis(100));
        }
    });
    Ok(Running {
        cpu_at_start: cpu_seconds(pid).unwrap_or(0.0),
        child,
        startup_ms,
        peak_kib,
        sampler,
        stdout,
    })
}

/// What a tcpq run cost and printed.
struct Stopped {
    startup_ms: f64,
    rss_mib: f64,
    cpu_s: f64,
    stdout: String,
    /// When each line of stdout arrived, seconds since start.
    arrivals: Vec<f64>,
}

impl Running {
    /// Stops it (SIGINT unless it ends by itself) and collects what it printed.
    fn stop(mut self, interrupt: bool) -> Result<Stopped> {
        let pid = self.child.id();
        let cpu = cpu_seconds(pid).unwrap_or(0.0) - self.cpu_at_start;
        if interrupt {
            let _ = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
        }
        self.child.wait().context("wait for tcpq")?;
        let _ = self.sampler.join();
        let (stdout, arrivals) = self
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Ok(Stopped {
            startup_ms: self.startup_ms,
            rss_mib: self.peak_kib.load(Ordering::Relaxed) as f64 / 1024.0,
            cpu_s: cpu,
            stdout,
            arrivals,
        })
    }
}

/// One side-by-side measurement: wrk alone and wrk with tcpq running, in alternating order
/// so that a drift of the machine does not favour one side. The tcpq side also accounts its
/// cost: its programs' run time (BPF_ENABLE_STATS) and its process's CPU over the wrk run.
struct Pair {
    base: f64,
    with: f64,
    tcpq: Stopped,
    /// Busy CPU of the machine per request without tcpq, ns.
    base_busy_per_req_ns: f64,
    /// tcpq's programs and process per request.
    cost: Accounted,
}

/// wrk alone: (requests/s, busy CPU ns per request).
fn base_run(secs: u64) -> Result<(f64, f64)> {
    let busy0 = busy_ns().unwrap_or(0.0);
    let rps = wrk_rps(secs)?;
    let busy = busy_ns().unwrap_or(0.0) - busy0;
    Ok((rps, busy / (rps * secs as f64).max(1.0)))
}

fn pair(args: &[&str], secs: u64, tcpq_first: bool) -> Result<Pair> {
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// The frames `tcpq top --json` printed.
fn frames(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// `lost_total` of the last frame.
fn frames_lost(frames: &[Value]) -> u64 {
    frames
        .last()
        .and_then(|f| f["lost_total"].as_u64())
        .unwrap_or(0)
}

/// (program, ns per run, runs) from BPF_ENABLE_STATS.
type ProgramCost = (String, u64, u64);

/// Per-program kernel cost: `tcpq diagnose --hooks HOOKS` with BPF_ENABLE_STATS while wrk
/// runs against `port`; also the requests wrk completed meanwhile.
fn program_costs(secs: u64, port: u16, hooks: &str) -> Result<(Vec<ProgramCost>, f64)> {
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
fn armed_program_table(programs: &Result<Vec<ProgramCost>>) -> String {
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
fn floor_ns(programs: &[ProgramCost]) -> f64 {
    programs
        .iter()
        .find(|(name, _, _)| name == "floor_probe")
        .map(|(_, ns, _)| *ns as f64)
        .unwrap_or(0.0)
}

/// The collector under a SYN storm at a full listener.
struct Storm {
    secs: f64,
    syns_sent: u64,
    kernel_refusals: u64,
    tcpq_counted: u64,
    records: f64,
    tallied: f64,
    lost: u64,
    cpu_s: f64,
    rss_mib: f64,
}

fn storm(secs: u64) -> Result<Storm> {
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

/// `tcpq top` against big tables: LISTENERS listening sockets and `time_wait` TIME_WAIT
/// sockets in a namespace of their own.
#[derive(Default)]
struct BigTables {
    listeners: usize,
    time_wait: usize,
    frames: usize,
    interval_max_s: f64,
    interval_mean_s: f64,
    /// Time between frames as their reader got them, the first from the banner (the last, cut
    /// by the stop, left out): mean, max, and how many came more than LATE_BY after the one
    /// before.
    gap_mean_s: f64,
    gap_max_s: f64,
    late: usize,
    gaps: usize,
    cpu_ms_per_frame: f64,
    rss_mib: f64,
}

const BIG_NS: &str = "tcpq-bench-big";

/// Listeners on 127.0.0.1:20000.. and TIME_WAITs left by connections the client closes first,
/// made by one Python process that keeps the listeners open until stdin closes.
const BIG_TABLES_PY: &str = r#"
import resource, socket, sys
n, tw = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 1024, n + 1024))
ls = []
for i in range(n):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('127.0.0.1', 20000 + i)); s.listen(64); ls.append(s)
for i in range(tw):
    c = socket.create_connection(('127.0.0.1', 20000 + i % n))
    a, _ = ls[i % n].accept()
    c.close(); a.close()
print('ready', flush=True)
sys.stdin.read()
"#;

/// Runs `cmd args…` inside the big namespace.
fn in_big_ns(cmd: &str, args: &[&str]) -> Result<()> {
    run(Command::new("ip")
        .args(["netns", "exec", BIG_NS, cmd])
        .args(args))
}

fn big_tables(listeners: usize, time_wait: usize, secs: u64) -> Result<BigTables> {
    // Anew (a leftover of an interrupted run removed first); deleted when this returns.
    let _ns = NetnsGuard::fresh(BIG_NS)?;
    // Room for the TIME_WAITs (per namespace; the default is sized by memory).
    in_big_ns(
        "sysctl",
        &[
            "-q",
            &format!("net.ipv4.tcp_max_tw_buckets={}", time_wait * 2 + 1024),
        ],
    )?;
    (|| -> Result<BigTables> {
        let mut py = build_in_big_ns(
            BIG_TABLES_PY,
            &[listeners.to_string(), time_wait.to_string()],
            "the big tables",
        )?;
        let measured = top_on_time(secs);
        drop(py.stdin.take()); // the listeners close
        let _ = py.wait();
        let (_, mut big) = measured?;
        (big.listeners, big.time_wait) = (listeners, time_wait);
        Ok(big)
    })()
}

/// Runs a Python `script` with `args` in the big namespace until it prints "ready" (what it
/// builds stays until its stdin closes).
fn build_in_big_ns(script: &str, args: &[String], what: &str) -> Result<Child> {
    let mut py = Command::new("ip")
        .args(["netns", "exec", BIG_NS, "python3", "-c", script])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("start python3 for {what}"))?;
    let mut out = BufReader::new(py.stdout.take().context("python stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)
        .with_context(|| format!("wait for {what}"))?;
    if line.trim() != "ready" {
        let _ = py.kill();
        bail!("{what} was not built: {line}");
    }
    Ok(py)
}

/// A frame is on time when it comes at most this long after the interval (1 s).
const LATE_BY: f64 = 0.1;

/// `tcpq top --json -d 1` for `secs`: its frames, and how on time and costly they were.
fn top_on_time(secs: u64) -> Result<(Vec<Value>, BigTables)> {
    let running = start_tcpq(&["top", "--json", "-d", "1"], &[], true)?;
    let pid = running.child.id();
    thread::sleep(Duration::from_millis(1500));
    // /proc/PID/stat, not the live threads' schedstat: the dumps of another namespace run on
    // short-lived threads (netns::run_in) that schedstat no longer lists once they ended; the
    // process's utime + stime keeps them (10 ms ticks: ±1 ms per frame over 10 s).
    let cpu0 = cpu_seconds(pid).unwrap_or(0.0);
    thread::sleep(Duration::from_secs(secs));
    let cpu = (cpu_seconds(pid).unwrap_or(0.0) - cpu0) * 1e9;
    let out = running.stop(true)?;
    let frames = frames(&out.stdout);
    // The first frame covers start-up and the last one is cut short by the stop.
    let intervals: Vec<f64> = frames
        .iter()
        .skip(1)
        .take(frames.len().saturating_sub(2))
        .filter_map(|f| f["interval_s"].as_f64())
        .collect();
    // From the banner (the loop starts: the first frame is due one interval later) to each
    // frame, then frame to frame.
    let arrivals: Vec<f64> = std::iter::once(out.startup_ms / 1000.0)
        .chain(out.arrivals.iter().copied())
        .collect();
    let gaps: Vec<f64> = arrivals
        .windows(2)
        .map(|w| w[1] - w[0])
        .take(arrivals.len().saturating_sub(2))
        .collect();
    let big = BigTables {
        frames: frames.len(),
        interval_max_s: intervals.iter().copied().fold(0.0, f64::max),
        interval_mean_s: intervals.iter().sum::<f64>() / intervals.len().max(1) as f64,
        gap_mean_s: gaps.iter().sum::<f64>() / gaps.len().max(1) as f64,
        gap_max_s: gaps.iter().copied().fold(0.0, f64::max),
        late: gaps.iter().filter(|g| **g > 1.0 + LATE_BY).count(),
        gaps: gaps.len(),
        cpu_ms_per_frame: cpu / 1e6 / secs as f64,
        rss_mib: out.rss_mib,
        ..BigTables::default()
    };
    Ok((frames, big))
}

/// 10,000 listeners (+ 1,000,000 TIME_WAIT in the full run), then a big conntrack table
/// (100,000 entries in --quick, 1,000,000 in the full run).
fn big_tables_both(quick: bool) -> Result<(BigTables, BigConntrack)> {
    let big = if quick {
        big_tables(10_000, 0, 5)?
    } else {
        big_tables(10_000, 1_000_000, 10)?
    };
    eprintln!("xtask: bench: a big conntrack table…");
    let (entries, secs) = if quick { (100_000, 5) } else { (1_000_000, 10) };
    Ok((big, big_conntrack(entries, secs)?))
}

/// bpftrace has no BPF_ENABLE_STATS fd of its own: its programs are counted with this on.
const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `entries` UDP flows (one socket to 127.1.x.y:1024-61023, unanswered) in the big namespace's
/// conntrack table, then a packet every 10 ms that a rule drops until stdin closes: with drops,
/// the live modes read who fills the table (the expensive part).
const BIG_CONNTRACK_PY: &str = r#"
import select, socket, sys
n = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
for i in range(n):
    k = i // 60000
    try:
        s.sendto(b'x', ('127.1.%d.%d' % (k >> 8, k & 255), 1024 + i % 60000))
    except OSError:
        pass
print('ready', flush=True)
while not select.select([sys.stdin], [], [], 0.01)[0]:
    try:
        s.sendto(b'x', ('127.0.0.1', 9))
    except OSError:
        pass
"#;

/// The big-tables namespace's conntrack table: what top's frames showed of it.
struct BigConntrack {
    entries: u64,
    shown: u64,
    big: BigTables,
}

fn big_conntrack(entries: u64, secs: u64) -> Result<BigConntrack> {
    // A module on most kernels, built in on some: either way its sysctl must exist. Global
    // (read-only outside the initial namespace): raised for the big table, restored on drop.
    sysctl::load_conntrack();
    let _max = GlobalSysctl::set(
        sysctl::CONNTRACK_MAX,
        &(entries + entries / 4 + 65536).to_string(),
    )?;
    let _ns = NetnsGuard::fresh(BIG_NS)?;
    (|| -> Result<BigConntrack> {
        in_big_ns(
            "nft",
            &[
                "add table inet tcpqbench; add chain inet tcpqbench out { type filter hook output priority 0; }; add rule inet tcpqbench out ct state new counter; add rule inet tcpqbench out udp dport 9 drop",
            ],
        )?;
        // Unanswered UDP flows live 30 s by default (per namespace): long enough to measure.
        in_big_ns(
            "sysctl",
            &["-q", "net.netfilter.nf_conntrack_udp_timeout=600"],
        )?;
        let mut py = build_in_big_ns(
            BIG_CONNTRACK_PY,
            &[entries.to_string()],
            "the big conntrack table",
        )?;
        let count = output_of(Command::new("ip").args([
            "netns",
            "exec",
            BIG_NS,
            "cat",
            "/proc/sys/net/netfilter/nf_conntrack_count",
        ]))
        .and_then(|c| c.trim().parse::<u64>().ok())
        .unwrap_or(0);
        let measured = top_on_time(secs);
        drop(py.stdin.take());
        let _ = py.wait();
        let (frames, big) = measured?;
        let shown = frames
            .iter()
            .flat_map(|f| f["conntrack"].as_array().cloned().unwrap_or_default())
            .filter_map(|c| c["count"].as_u64())
            .max()
            .unwrap_or(0);
        Ok(BigConntrack {
            entries: count,
            shown,
            big,
        })
    })()
}

/// The same signals as tcpq's hooks, gathered the plain way: bpftrace one-liners on the
/// equivalent tracepoints (connect/accept syscalls, state changes with handshake and queue
/// latency, drops by reason, SYN-ACK retransmits), aggregated in bpftrace maps.
const BPFTRACE_SCRIPT: &str = r#"
tracepoint:syscalls:sys_enter_connect { @cs[tid] = nsecs; }
tracepoint:syscalls:sys_exit_connect /@cs[tid]/ { @connect_us[comm, args->ret] = hist((nsecs - @cs[tid]) / 1000); delete(@cs[tid]); }
tracepoint:syscalls:sys_exit_accept4 { @accepts[comm, args->ret < 0 ? args->ret : 0] = count(); }
tracepoint:sock:inet_sock_set_state /args->protocol == 6/ {
  if (args->newstate == 2) { @syn[args->skaddr] = nsecs; }
  if (args->oldstate == 2) { @handshake_us[args->dport] = hist((nsecs - @syn[args->skaddr]) / 1000); delete(@syn[args->skaddr]); }
  if (args->oldstate == 3 && args->newstate == 1) { @enq[args->skaddr] = nsecs; }
  if (args->newstate == 7) { delete(@enq[args->skaddr]); }
}
tracepoint:skb:kfree_skb { @drops[args->reason] = count(); }
tracepoint:tcp:tcp_retransmit_synack { @synack_retrans = count(); }
"#;

/// The bpftrace equivalent, attached until `stop`.
struct Bpftrace {
    child: Child,
    drain: thread::JoinHandle<()>,
}

impl Bpftrace {
    fn start() -> Result<Self, String> {
        ensure_package("bpftrace", "bpftrace", "the comparison")?;
        let mut child = Command::new("bpftrace")
            .args(["-e", BPFTRACE_SCRIPT])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start bpftrace: {e}"))?;
        let mut out = BufReader::new(child.stdout.take().ok_or("bpftrace stdout")?);
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        if !line.contains("Attaching") {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("bpftrace did not attach: {}", line.trim()));
        }
        // Keep reading so bpftrace never blocks on a full pipe (it prints its maps at exit).
        let drain = thread::spawn(move || {
            let mut sink = String::new();
            let _ = out.read_to_string(&mut sink);
        });
        Ok(Self { child, drain })
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = self.drain.join();
    }
}

/// One tool's accounted cost over a wrk run, per request: its programs' run time
/// (BPF_ENABLE_STATS, from the fds the process holds), their runs, and its process CPU.
#[derive(Clone, Copy, Default)]
struct Accounted {
    programs_ns: f64,
    runs: f64,
    process_ns: f64,
}

impl Accounted {
    /// Less what BPF_ENABLE_STATS adds to every run (`floor_ns`, the empty floor_probe's run
    /// time): what the tool costs with the stats off, as in production.
    fn net_ns(&self, floor_ns: f64) -> f64 {
        (self.programs_ns - floor_ns * self.runs).max(0.0) + self.process_ns
    }
}

/// Samples `pid`'s programs and CPU around a wrk run at `port`.
/// Requests/s, and what the tool cost per request.
fn account(pid: u32, port: u16, secs: u64) -> Result<(f64, Accounted), String> {
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

/// A load under which tier 2 traces, and how tcpq is run for it.
#[derive(Clone, Copy)]
struct Scenario {
    /// What the rows call it.
    name: &'static str,
    port: u16,
    tcpq_args: &'static [&'static str],
    /// The target column of its ratio row.
    target: &'static str,
}

/// The incident the issue names: nginx with a small backlog overflowing under wrk; tcpq top
/// in its default mode, which arms the listen (and accept) family on it.
const OVERFLOW: Scenario = Scenario {
    name: "nginx overflowing (backlog=8; `top` arms the listen family)",
    port: OVERFLOW_PORT,
    tcpq_args: &["top", "--json", "-d", "1"],
    target: "≤ 1×",
};

/// The worst case: every family tracing on the healthy load (`--hooks all`).
const EVERYTHING: Scenario = Scenario {
    name: "healthy load, every family tracing (`top --hooks all`)",
    port: NGINX_PORT,
    tcpq_args: &["top", "--json", "-d", "1", "--hooks", "all"],
    // Opt-in: every program on every connection, kinds confirmed; the issue's target is the
    // incident above.
    target: "worst case, informational",
};

/// tcpq against the bpftrace equivalent under `scenario`, alternating, `pairs` times; medians
/// of each tool's accounted cost per request (programs + process, stats on), and the frames
/// in which tcpq was tracing (the overflow must have armed it).
struct Armed {
    scenario: Scenario,
    tcpq: Accounted,
    tracing_frames: usize,
    frames: usize,
    bpftrace: Result<Accounted, String>,
}

fn armed_comparison(scenario: Scenario, secs: u64, pairs: usize) -> Result<Armed> {
    let med = |v: &[Accounted]| Accounted {
        programs_ns: median(v.iter().map(|a| a.programs_ns).collect()),
        runs: median(v.iter().map(|a| a.runs).collect()),
        process_ns: median(v.iter().map(|a| a.process_ns).collect()),
    };
    let (mut tcpq, mut bt, mut bt_err) = (Vec::new(), Vec::new(), None);
    let (mut tracing_frames, mut frames_seen) = (0, 0);
    for _ in 0..pairs {
        let running = start_tcpq(scenario.tcpq_args, &[("TCPQ_BPF_STATS", "1")], true)?;
        // One second of the load first: the incident arms tier 2 within it, and the
        // measured run is the armed steady state.
        wrk_rps_at(scenario.port, 1)?;
        let measured = account(running.child.id(), scenario.port, secs).map(|(_, a)| a);
        let out = running.stop(true)?;
        let fs = frames(&out.stdout);
        frames_seen += fs.len();
        tracing_frames += fs
            .iter()
            .filter(|f| {
                f["families"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|x| x["state"] == "tracing"))
            })
            .count();
        tcpq.push(measured.map_err(anyhow::Error::msg)?);
        if bt_err.is_some() {
            continue;
        }
        let stats = GlobalSysctl::set(BPF_STATS_SYSCTL, "1").map_err(|e| format!("{e:#}"));
        let measured = stats.and_then(|_stats| {
            let tool = Bpftrace::start()?;
            let _ = wrk_rps_at(scenario.port, 1);
            let measured = account(tool.child.id(), scenario.port, secs).map(|(_, a)| a);
            tool.stop();
            measured
        });
        match measured {
            Ok(a) => bt.push(a),
            Err(why) => bt_err = Some(why),
        }
    }
    Ok(Armed {
        scenario,
        tcpq: med(&tcpq),
        tracing_frames,
        frames: frames_seen,
        bpftrace: match bt_err {
            Some(why) => Err(why),
            None => Ok(med(&bt)),
        },
    })
}

/// The armed rows of one scenario: both tools' accounted cost per request, as measured and net
/// of the stats' floor, and their ratio (the target).
fn armed_rows(armed: &Armed, floor_ns: f64) -> String {
    let name = armed.scenario.name;
    let t = armed.tcpq;
    let mut rows = format!(
        "| {name}: tcpq's programs + process per request, stats on (frames tracing) | {:.2} µs + {:.2} µs, {:.1} runs ({} of {}) | |\n",
        t.programs_ns / 1000.0,
        t.process_ns / 1000.0,
        t.runs,
        armed.tracing_frames,
        armed.frames,
    );
    match &armed.bpftrace {
        Ok(b) => rows.push_str(&format!(
            "| {name}: the bpftrace equivalent's programs + process per request, stats on | {:.2} µs + {:.2} µs, {:.1} runs | |\n\
             | **{name}: cost per request less the stats' own, tcpq / bpftrace** | {:.2} µs / {:.2} µs = **{:.2}×** | {} |\n",
            b.programs_ns / 1000.0,
            b.process_ns / 1000.0,
            b.runs,
            t.net_ns(floor_ns) / 1000.0,
            b.net_ns(floor_ns) / 1000.0,
            t.net_ns(floor_ns) / b.net_ns(floor_ns).max(1e-9),
            armed.scenario.target,
        )),
        Err(why) => rows.push_str(&format!(
            "| {name}: tcpq's cost per request less the stats' own | {:.2} µs | |\n| {name}: the bpftrace equivalent | {why} | |\n",
            t.net_ns(floor_ns) / 1000.0
        )),
    }
    rows
}

/// rps ratio with the bpftrace equivalent attached, per pair; Err (with why) when bpftrace
/// cannot run here.
fn bpftrace_ratio(secs: u64, pairs: usize) -> Result<f64, String> {
    let mut ratios = Vec::new();
    for i in 0..pairs {
        let base_first = if i % 2 == 0 {
            Some(wrk_rps(secs).map_err(|e| e.to_string())?)
        } else {
            None
        };
        let bt = Bpftrace::start()?;
        thread::sleep(Duration::from_millis(500));
        let with = wrk_rps(secs);
        bt.stop();
        let base = match base_first {
            Some(b) => b,
            None => wrk_rps(secs).map_err(|e| e.to_string())?,
        };
        ratios.push(with.map_err(|e| e.to_string())? / base);
    }
    Ok(median(ratios))
}

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
enum Profiled {
    Tcpq,
    Bpftrace,
}

/// A system-wide CPU profile while `who` runs under the load (cpu-clock samples: no hardware
/// counters needed, so it works in a VM), grouped by `cost_group`. Err (with why) when perf or
/// the tool cannot run here. Steadier than the rps pairs: the machine's speed drifts between
/// runs, but the share of samples in what the tool adds does not depend on it.
fn profile(secs: u64, who: Profiled) -> Result<Vec<(&'static str, f64)>, String> {
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

/// Starts nginx in the bench namespace; stops it and removes the namespace on drop.
struct BenchNs {
    conf: std::path::PathBuf,
    /// Deleted after nginx stopped (fields drop after `drop`).
    _ns: NetnsGuard,
}

impl BenchNs {
    fn start() -> Result<Self> {
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

/// The profiles side by side: share of all CPU samples per group, tcpq and bpftrace, and what
/// they imply for the rps ratio (the CPUs are saturated: a share of the samples spent in the
/// tool is that share of the requests not served).
fn profile_table(
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

fn pct(r: f64) -> String {
    format!("{:.1} %", r * 100.0)
}

/// The row that says whether frames came on time, as their reader got them.
fn on_time_row(big: &BigTables) -> String {
    format!(
        "| time between frames as read from the pipe, mean / max; later than {:.1} s | {:.3} s / {:.3} s; {} of {} | every one ≤ {:.1} s |\n",
        1.0 + LATE_BY,
        big.gap_mean_s,
        big.gap_max_s,
        big.late,
        big.gaps,
        1.0 + LATE_BY
    )
}

/// The big-table sections of the report.
fn big_tables_text(big: &BigTables, big_ct: &BigConntrack) -> String {
    let mut t = String::new();
    t.push_str(&format!(
        "\nBig tables: `tcpq top --json -d 1` with {} listeners and {} TIME_WAIT sockets in one namespace ({} frames):\n\n\
         | measure | value | target |\n|---|---|---|\n\
         | frame interval (`interval_s`), mean / max | {:.2} s / {:.2} s | 1 s |\n\
         {}\
         | tcpq's CPU per 1 s frame (all its threads, ended ones included) | {:.1} ms | bounded |\n\
         | peak RSS | {:.1} MiB | < 40 MiB |\n",
        big.listeners,
        big.time_wait,
        big.frames,
        big.interval_mean_s,
        big.interval_max_s,
        on_time_row(big),
        big.cpu_ms_per_frame,
        big.rss_mib
    ));
    t.push_str(&format!(
        "\nBig conntrack table: `tcpq top --json -d 1` with {} entries in one namespace's table and a rule dropping a packet every 10 ms there (so the live modes read who fills it: at most {} entries per read — tcpq's LIVE_SAMPLE — again after 20× what a read cost; {} frames):\n\n\
         | measure | value | target |\n|---|---|---|\n\
         | table size top showed (max over frames) | {} | {} |\n\
         | frame interval (`interval_s`), mean / max | {:.2} s / {:.2} s | 1 s |\n\
         {}\
         | tcpq's CPU per 1 s frame (all its threads, ended ones included) | {:.1} ms | bounded |\n\
         | peak RSS | {:.1} MiB | < 40 MiB |\n",
        big_ct.entries,
        50_000,
        big_ct.big.frames,
        big_ct.shown,
        big_ct.entries,
        big_ct.big.interval_mean_s,
        big_ct.big.interval_max_s,
        on_time_row(&big_ct.big),
        big_ct.big.cpu_ms_per_frame,
        big_ct.big.rss_mib
    ));
    t
}

/// Replaces the big-table sections of BENCHMARKS.md (from "Big tables:" up to the profile
/// section) with a new run's.
fn splice_big_tables(text: &str) -> Result<()> {
    let path = root_dir().join("BENCHMARKS.md");
    let doc = std::fs::read_to_string(&path).context("read BENCHMARKS.md")?;
    let (Some(start), Some(end)) = (doc.find("\nBig tables:"), doc.find("\nWhere the cost goes"))
    else {
        bail!(
            "BENCHMARKS.md has no big-table section to replace: run the full `cargo xtask bench`"
        );
    };
    let doc = format!("{}{}{}", &doc[..start], text, &doc[end..]);
    std::fs::write(&path, doc).context("write BENCHMARKS.md")?;
    eprintln!("xtask: wrote the big-table sections of BENCHMARKS.md");
    Ok(())
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
             The bpftrace side runs the one-liners in `BPFTRACE_SCRIPT` (xtask/src/bench.rs) on the same nginx, {pairs} pairs. \
             The profiles are `perf record -a -F 499` (cpu-clock) during one more {secs} s wrk run with each tool; their symbols are \
             grouped by `cost_group` in xtask/src/bench.rs (these groups exist only because the tool runs: no other BPF program is loaded).\n{soaked}",
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

    #[test]
    fn median_and_frames_tolerate_empty_and_noise() {
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        let f = frames("not json\n{\"lost_total\":4}\n\n{\"lost_total\":7}\n");
        assert_eq!(f.len(), 2);
        assert_eq!(frames_lost(&f), 7);
        assert_eq!(frames_lost(&[]), 0);
    }

    #[test]
    fn armed_cost_is_net_of_the_stats_floor() {
        let a = Accounted {
            programs_ns: 1000.0,
            runs: 10.0,
            process_ns: 200.0,
        };
        // 10 runs × 34 ns of stats overhead come off the programs' time, not the process's.
        assert_eq!(a.net_ns(34.0), 1000.0 - 340.0 + 200.0);
        assert_eq!(a.net_ns(500.0), 200.0);
        let armed = Armed {
            scenario: OVERFLOW,
            tcpq: a,
            tracing_frames: 4,
            frames: 5,
            bpftrace: Ok(Accounted {
                programs_ns: 2000.0,
                runs: 10.0,
                process_ns: 0.0,
            }),
        };
        let rows = armed_rows(&armed, 0.0);
        assert!(
            rows.contains("1.00 µs + 0.20 µs, 10.0 runs (4 of 5)"),
            "{rows}"
        );
        assert!(
            rows.contains("| 1.20 µs / 2.00 µs = **0.60×** | ≤ 1× |"),
            "{rows}"
        );
        let rows = armed_rows(
            &Armed {
                bpftrace: Err("not measured".into()),
                ..armed
            },
            0.0,
        );
        assert!(rows.contains("| not measured |"), "{rows}");
    }
}
