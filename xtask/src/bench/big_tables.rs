//! `tcpq top` against big tables — many listeners and TIME_WAITs, then a big conntrack table —
//! in a namespace of their own: whether frames stay on time, their cost, and the report
//! sections (also spliced alone into BENCHMARKS.md by `--tables`).
use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use tcpq_lab::{
    netns::NetnsGuard,
    sysctl::{self, GlobalSysctl},
};

use super::{
    procfs::cpu_seconds,
    running::{frames, start_tcpq},
};
use crate::{output_of, root_dir, run};

/// `tcpq top` against big tables: LISTENERS listening sockets and `time_wait` TIME_WAIT
/// sockets in a namespace of their own.
#[derive(Default)]
pub(super) struct BigTables {
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
pub(super) fn big_tables_both(quick: bool) -> Result<(BigTables, BigConntrack)> {
    let big = if quick {
        big_tables(10_000, 0, 5)?
    } else {
        big_tables(10_000, 1_000_000, 10)?
    };
    eprintln!("xtask: bench: a big conntrack table…");
    let (entries, secs) = if quick { (100_000, 5) } else { (1_000_000, 10) };
    Ok((big, big_conntrack(entries, secs)?))
}

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
pub(super) struct BigConntrack {
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
pub(super) fn big_tables_text(big: &BigTables, big_ct: &BigConntrack) -> String {
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
pub(super) fn splice_big_tables(text: &str) -> Result<()> {
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
