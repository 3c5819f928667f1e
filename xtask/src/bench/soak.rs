//! `cargo xtask bench --soak [--soak-secs N]`: `tcpq export` for N seconds (600 by default)
//! while every lab comes and goes, each in namespaces of its own, and a scraper GETs /metrics
//! every second. Judges what a long-running exporter must keep: RSS flat, every label bounded
//! by `--top-k`, no lost events, scrapes well under a Prometheus interval.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{PROFILE, procfs::vm_rss_kib, running::start_tcpq};
use crate::tcpq_bin;

/// The labs cycled through, with their arguments (short runs: the point is churn — namespaces,
/// listeners, processes and destinations that come and go). `storm` is rate-limited: the
/// machine is shared and the soak measures the exporter, not the collector's ceiling.
const LABS: &[(&str, &[&str])] = &[
    ("overflow", &["--duration", "2s"]),
    ("synflood", &["--duration", "2s"]),
    ("ports", &["--duration", "2s"]),
    ("conntrack", &["--duration", "2s"]),
    ("slow-accept", &["--duration", "2s"]),
    ("workers", &["--duration", "2s"]),
    ("connection-limit", &["--duration", "2s"]),
    ("close-wait", &["--duration", "2s"]),
    ("stale-upstream", &["--duration", "2s"]),
    ("failing-upstream", &["--duration", "2s"]),
    ("storm", &["--duration", "2s", "--rate", "50000"]),
];

/// Labs that set a global sysctl (conntrack lowers nf_conntrack_max and restores it) run under
/// this lock (flock(1)), so that two runs on a shared machine never restore each other's value.
const GLOBAL_LOCK: &str = "/tmp/tcpq-global.lock";
const GLOBAL_LABS: &[&str] = &["conntrack"];
/// A lab still running after this is interrupted (SIGINT: it cleans up) and counted as failed.
const LAB_LIMIT: Duration = Duration::from_secs(60);
/// The soak runs export with `--top-k` this small so that the labs' labels fold into `other`
/// (the default, 50, is not reached in ten minutes of labs).
const TOP_K: usize = 10;
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
const RESOURCE_EVERY: Duration = Duration::from_secs(10);

/// What one GET /metrics gave.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Page {
    /// Sample lines per family (the `# TYPE` line they follow).
    pub series: BTreeMap<String, usize>,
    /// Distinct label sets per family, `le` left out (a histogram's buckets are one set).
    pub label_sets: BTreeMap<String, usize>,
    /// Distinct values per (family, label), `le` left out.
    pub label_values: BTreeMap<(String, String), usize>,
    /// Σ tcpq_lost_events_total over its `family` labels, and each of them.
    pub lost: f64,
    pub lost_by: BTreeMap<String, f64>,
    pub folded: f64,
}

/// A scrape: how long the GET took, its size and content, and the lab running meanwhile.
#[derive(Debug, Clone, Default)]
pub(super) struct Scrape {
    pub lab: &'static str,
    pub ms: f64,
    pub bytes: usize,
    pub page: Page,
}

/// tcpq's resident memory and open descriptors at one look.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Resources {
    pub at_s: f64,
    pub rss_kib: u64,
    pub fds: usize,
}

/// One sample line: its metric name, labels and value.
type Sample<'a> = (&'a str, Vec<(String, String)>, f64);

/// `name{a="x",b="y"} value` → (name, [(a, x), (b, y)], value). Label values may hold escaped
/// quotes (`\"`) and commas; `None` for comments, blank and malformed lines.
fn sample(line: &str) -> Option<Sample<'_>> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        let mut value = String::new();
        let mut in_value = false;
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match (in_value, c) {
                (false, '}') => {
                    end = Some(i + 1);
                    break;
                }
                (false, ',') => {}
                (false, '=') => {
                    // The opening quote.
                    if chars.next().map(|(_, q)| q) != Some('"') {
                        return None;
                    }
                    in_value = true;
                }
                (false, c) => key.push(c),
                (true, '\\') => {
                    let (_, escaped) = chars.next()?;
                    value.push(match escaped {
                        'n' => '\n',
                        other => other,
                    });
                }
                (true, '"') => {
                    labels.push((std::mem::take(&mut key), std::mem::take(&mut value)));
                    in_value = false;
                }
                (true, c) => value.push(c),
            }
        }
        rest = &inner[end?..];
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// Reads an OpenMetrics page: per family its samples, label sets and values per label, and
/// tcpq's own lost-event and folded-label counts.
pub(super) fn parse_page(text: &str) -> Page {
    let mut page = Page::default();
    let mut family = String::new();
    let mut sets: BTreeMap<String, BTreeSet<Vec<(String, String)>>> = BTreeMap::new();
    let mut values: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            family = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            continue;
        }
        let Some((name, labels, value)) = sample(line) else {
            continue;
        };
        // Samples before any TYPE line (not OpenMetrics, but tolerated) are their own family.
        let fam = if family.is_empty() || !name.starts_with(family.as_str()) {
            name.to_string()
        } else {
            family.clone()
        };
        *page.series.entry(fam.clone()).or_default() += 1;
        let set: Vec<(String, String)> = labels.into_iter().filter(|(k, _)| k != "le").collect();
        for (k, v) in &set {
            values
                .entry((fam.clone(), k.clone()))
                .or_default()
                .insert(v.clone());
        }
        if name == "tcpq_lost_events_total" {
            page.lost += value;
            let by = set
                .iter()
                .find(|(k, _)| k == "family")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            *page.lost_by.entry(by).or_default() += value;
        }
        if name == "tcpq_labels_folded" {
            page.folded = value;
        }
        sets.entry(fam).or_default().insert(set);
    }
    page.label_sets = sets.into_iter().map(|(f, s)| (f, s.len())).collect();
    page.label_values = values.into_iter().map(|(k, s)| (k, s.len())).collect();
    page
}

/// GET /metrics on `addr`, read to the close: (milliseconds, bytes, body).
fn scrape(addr: &str) -> Result<(f64, usize, String)> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
    s.set_read_timeout(Some(SCRAPE_TIMEOUT))?;
    s.set_write_timeout(Some(SCRAPE_TIMEOUT))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: tcpq\r\nConnection: close\r\n\r\n")
        .with_context(|| format!("send GET /metrics to {addr}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("read /metrics from {addr}"))?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!(
            "{addr}/metrics answered without a complete head ({} bytes)",
            raw.len()
        );
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "{addr}/metrics answered {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok((ms, raw.len(), body.to_string()))
}

/// tcpq's open fds, less its BPF links: a family armed by a lab keeps its tier-2 programs
/// attached (one link each) until `--quiet-period` (30 s) after the trouble, so the links
/// follow the labs and are no leak.
fn fd_count(pid: u32) -> Option<usize> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        dir.flatten()
            .filter(|e| {
                std::fs::read_link(e.path())
                    .map(|t| t.to_string_lossy() != "anon_inode:bpf_link")
                    .unwrap_or(true)
            })
            .count(),
    )
}

/// Network namespaces on the machine (every process's and every /run/netns mount), which tier 0
/// all watches: on a shared machine other people's come and go too.
fn netns_count() -> usize {
    use std::os::unix::fs::MetadataExt as _;
    let procs = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("ns/net"));
    let named = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    procs
        .chain(named)
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect::<BTreeSet<_>>()
        .len()
}

/// tcpq's fds and the machine's network namespaces with no lab running.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Idle {
    pub fds: usize,
    pub namespaces: usize,
}

/// Per lab: runs, failures and the last failure's message.
#[derive(Default)]
struct LabTally {
    runs: usize,
    failed: usize,
    last_error: String,
}

/// Runs `tcpq lab NAME ARGS` to its end (interrupted past LAB_LIMIT); the error names it.
fn run_lab(name: &str, args: &[&str]) -> Result<()> {
    let bin = tcpq_bin(PROFILE);
    let mut cmd = if GLOBAL_LABS.contains(&name) {
        let mut c = Command::new("flock");
        c.args(["-w", "60", GLOBAL_LOCK]).arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    let mut child = cmd
        .args(["lab", name])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start tcpq lab {name}"))?;
    let mut err = child.stderr.take().context("tcpq lab's stderr")?;
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let mut interrupted = false;
    let status = loop {
        if let Some(status) = child.try_wait().context("wait for tcpq lab")? {
            break status;
        }
        if !interrupted && started.elapsed() > LAB_LIMIT {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            interrupted = true;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let stderr = reader.join().unwrap_or_default();
    if interrupted {
        bail!(
            "tcpq lab {name} ran past {} s and was interrupted",
            LAB_LIMIT.as_secs()
        );
    }
    if !status.success() {
        let last = stderr.lines().last().unwrap_or("no message");
        bail!("tcpq lab {name} exited with {status}: {last}");
    }
    Ok(())
}

/// The soak's judgement from its recorded samples (pure: unit-tested).
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Summary {
    pub secs: f64,
    /// The first and last windows' length (a minute, or a fifth of a shorter run).
    pub window_s: f64,
    pub rss_first_mib: f64,
    pub rss_last_mib: f64,
    pub rss_max_mib: f64,
    /// RSS at 20 % of the run, and the last window's max minus it.
    pub rss_base_mib: f64,
    pub rss_growth_mib: f64,
    /// "flat: +0.4 MiB (< 2 MiB)" and whether it passed.
    pub rss_verdict: String,
    pub rss_flat: bool,
    pub series_first: usize,
    pub series_last: usize,
    pub series_max: usize,
    pub sets_first: usize,
    pub sets_last: usize,
    pub sets_max: usize,
    /// The most distinct values any one label of any family had, with where.
    pub label_values_max: usize,
    pub label_values_where: String,
    pub bytes_first: usize,
    pub bytes_last: usize,
    pub bytes_max: usize,
    pub scrapes: usize,
    pub scrape_failures: usize,
    pub scrape_p99_ms: f64,
    pub scrape_max_ms: f64,
    pub lost: f64,
    /// Where the lost events moved: the lab running at the scrape that saw each increase.
    pub lost_by_lab: BTreeMap<&'static str, f64>,
    pub lost_by: BTreeMap<String, f64>,
    pub folded: f64,
    pub fds_first: usize,
    pub fds_last: usize,
    pub fds_max: usize,
    /// tcpq's fds with no lab running: before the first lab, and once the last one's namespaces
    /// are gone (tier 0 lets a namespace go within a second of its disappearance).
    pub fds_idle: Option<(Idle, Idle)>,
}

/// RSS flat: grew less than 5 % or less than 2 MiB from 20 % into the run to the last window's
/// maximum (the first fifth is warm-up: maps, page cache of the binary, label tables filling).
pub(super) const FLAT_PCT: f64 = 5.0;
pub(super) const FLAT_MIB: f64 = 2.0;

fn p99(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    // Nearest rank.
    let rank = ((v.len() as f64) * 0.99).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub(super) fn summarize(
    secs: f64,
    scrapes: &[Scrape],
    failures: usize,
    resources: &[Resources],
    fds_idle: Option<(Idle, Idle)>,
) -> Summary {
    let window_s = 60f64.min(secs / 5.0);
    let mib = |kib: u64| kib as f64 / 1024.0;
    let rss_max_in = |lo: f64, hi: f64| {
        resources
            .iter()
            .filter(|r| r.at_s >= lo && r.at_s <= hi)
            .map(|r| mib(r.rss_kib))
            .fold(0.0, f64::max)
    };
    let rss_first_mib = rss_max_in(0.0, window_s);
    let rss_last_mib = rss_max_in(secs - window_s, f64::MAX);
    let rss_max_mib = resources.iter().map(|r| mib(r.rss_kib)).fold(0.0, f64::max);
    let rss_base_mib = resources
        .iter()
        .find(|r| r.at_s >= secs * 0.2)
        .or(resources.last())
        .map(|r| mib(r.rss_kib))
        .unwrap_or(0.0);
    let rss_growth_mib = rss_last_mib - rss_base_mib;
    let growth_pct = if rss_base_mib > 0.0 {
        rss_growth_mib / rss_base_mib * 100.0
    } else {
        0.0
    };
    let (rss_flat, rss_verdict) = if resources.len() < 2 {
        (false, "not judged: fewer than 2 readings".to_string())
    } else if rss_growth_mib < FLAT_MIB {
        (
            true,
            format!("flat: {rss_growth_mib:+.1} MiB after the first 20 % (< {FLAT_MIB} MiB)"),
        )
    } else if growth_pct < FLAT_PCT {
        (
            true,
            format!("flat: {growth_pct:+.1} % after the first 20 % (< {FLAT_PCT} %)"),
        )
    } else {
        (
            false,
            format!(
                "GROWING: {rss_growth_mib:+.1} MiB = {growth_pct:+.1} % after the first 20 % (≥ {FLAT_MIB} MiB and ≥ {FLAT_PCT} %)"
            ),
        )
    };
    let total = |p: &Page| p.series.values().sum::<usize>();
    let sets = |p: &Page| p.label_sets.values().sum::<usize>();
    let first = scrapes.first().map(|s| &s.page);
    let last = scrapes.last().map(|s| &s.page);
    let (label_values_max, label_values_where) = scrapes
        .iter()
        .flat_map(|s| s.page.label_values.iter())
        .max_by_key(|(_, n)| **n)
        .map(|((f, l), n)| (*n, format!("{f}{{{l}}}")))
        .unwrap_or_default();
    let ms: Vec<f64> = scrapes.iter().map(|s| s.ms).collect();
    let mut lost_by_lab: BTreeMap<&'static str, f64> = BTreeMap::new();
    let mut seen = 0.0;
    for s in scrapes {
        if s.page.lost > seen {
            *lost_by_lab.entry(s.lab).or_default() += s.page.lost - seen;
            seen = s.page.lost;
        }
    }
    Summary {
        secs,
        window_s,
        rss_first_mib,
        rss_last_mib,
        rss_max_mib,
        rss_base_mib,
        rss_growth_mib,
        rss_verdict,
        rss_flat,
        series_first: first.map(total).unwrap_or(0),
        series_last: last.map(total).unwrap_or(0),
        series_max: scrapes.iter().map(|s| total(&s.page)).max().unwrap_or(0),
        sets_first: first.map(sets).unwrap_or(0),
        sets_last: last.map(sets).unwrap_or(0),
        sets_max: scrapes.iter().map(|s| sets(&s.page)).max().unwrap_or(0),
        label_values_max,
        label_values_where,
        bytes_first: scrapes.first().map(|s| s.bytes).unwrap_or(0),
        bytes_last: scrapes.last().map(|s| s.bytes).unwrap_or(0),
        bytes_max: scrapes.iter().map(|s| s.bytes).max().unwrap_or(0),
        scrapes: scrapes.len(),
        scrape_failures: failures,
        scrape_p99_ms: p99(&ms),
        scrape_max_ms: ms.iter().copied().fold(0.0, f64::max),
        // Counters: the last page holds the run's totals.
        lost: last.map(|p| p.lost).unwrap_or(0.0),
        lost_by: last.map(|p| p.lost_by.clone()).unwrap_or_default(),
        lost_by_lab,
        folded: last.map(|p| p.folded).unwrap_or(0.0),
        fds_first: resources.first().map(|r| r.fds).unwrap_or(0),
        fds_last: resources.last().map(|r| r.fds).unwrap_or(0),
        fds_max: resources.iter().map(|r| r.fds).max().unwrap_or(0),
        fds_idle,
    }
}

/// Fds before → after with no lab running: a leak when they grew while the machine's
/// namespaces did not (each watched namespace holds a few).
fn idle_verdict(idle: Option<(Idle, Idle)>) -> String {
    let Some((b, a)) = idle else {
        return "not read".to_string();
    };
    let seen = format!(
        "{} → {} ({} → {} namespaces on the machine)",
        b.fds, a.fds, b.namespaces, a.namespaces
    );
    if a.fds <= b.fds {
        seen
    } else if a.namespaces <= b.namespaces {
        format!("{seen}: LEAKED {}", a.fds - b.fds)
    } else {
        format!("{seen}: not comparable, more namespaces")
    }
}

/// The soak's table (markdown), targets in the last column.
pub(super) fn rows(s: &Summary, labs: &str) -> String {
    let lost_by = s
        .lost_by
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(k, v)| format!("{k}: {v}"))
        .chain(
            s.lost_by_lab
                .iter()
                .map(|(lab, v)| format!("{v} while {lab} ran")),
        )
        .collect::<Vec<_>>()
        .join(", ");
    let w = if s.window_s >= 60.0 {
        "minute".to_string()
    } else {
        format!("{:.0} s", s.window_s)
    };
    format!(
        "| measure | value | target |\n|---|---|---|\n\
         | labs run (failed) | {labs} | |\n\
         | RSS first {w} → last {w} (max) | {:.1} → {:.1} MiB ({:.1}) | flat |\n\
         | RSS from 20 % into the run to the last {w}'s max | {:.1} → {:.1} MiB: {} | < {FLAT_PCT} % or < {FLAT_MIB} MiB |\n\
         | series count first → last (max) | {} → {} ({}) | bounded |\n\
         | label sets (all families, `le` aside) first → last (max) | {} → {} ({}) | bounded |\n\
         | distinct values of one label, max over families and scrapes | {} ({}){} | ≤ top-k + `other` = {} |\n\
         | labels folded into `other` (tcpq_labels_folded, at the end) | {} | |\n\
         | response size first → last (max) | {:.1} → {:.1} KiB ({:.1}) | |\n\
         | scrape time p99 / max ({} scrapes, {} failed) | {:.1} / {:.1} ms | < 50 ms, 0 failed |\n\
         | lost events (tcpq_lost_events_total, at the end) | {}{} | 0 |\n\
         | fds first → last (max; labs' namespaces come and go) | {} → {} ({}) | flat |\n\
         | fds with no lab running, before → after the soak | {} | equal (no leak) |\n",
        s.rss_first_mib,
        s.rss_last_mib,
        s.rss_max_mib,
        s.rss_base_mib,
        s.rss_last_mib,
        s.rss_verdict,
        s.series_first,
        s.series_last,
        s.series_max,
        s.sets_first,
        s.sets_last,
        s.sets_max,
        s.label_values_max,
        s.label_values_where,
        if s.label_values_max > TOP_K + 1 {
            ": OVER the bound"
        } else {
            ""
        },
        TOP_K + 1,
        s.folded,
        s.bytes_first as f64 / 1024.0,
        s.bytes_last as f64 / 1024.0,
        s.bytes_max as f64 / 1024.0,
        s.scrapes,
        s.scrape_failures,
        s.scrape_p99_ms,
        s.scrape_max_ms,
        s.lost,
        if lost_by.is_empty() {
            String::new()
        } else {
            format!(" ({lost_by})")
        },
        s.fds_first,
        s.fds_last,
        s.fds_max,
        idle_verdict(s.fds_idle),
    )
}

/// Runs the soak for `secs` seconds; returns its section (method and table).
pub(super) fn soak(secs: u64) -> Result<String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("find a free loopback port for tcpq export (bind 127.0.0.1:0)")?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let running = start_tcpq(
        &[
            "export",
            "--listen",
            &addr,
            "--interval",
            "1s",
            "--top-k",
            &TOP_K.to_string(),
        ],
        &[],
        false,
    )?;
    let pid = running.child.id();
    // Settled (the first namespaces scan done) before the first lab.
    thread::sleep(Duration::from_secs(2));
    let idle = || {
        fd_count(pid).map(|fds| Idle {
            fds,
            namespaces: netns_count(),
        })
    };
    let idle_before = idle();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let done = Arc::new(AtomicBool::new(false));
    let current: Arc<Mutex<&'static str>> = Arc::new(Mutex::new(""));
    let scraper = {
        let done = done.clone();
        let current = current.clone();
        let addr = addr.clone();
        thread::spawn(move || {
            let (mut scrapes, mut failures, mut resources) = (Vec::new(), Vec::new(), Vec::new());
            let mut next_resources = started;
            let mut tick = started;
            while !done.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now >= next_resources {
                    if let (Some(rss_kib), Some(fds)) = (vm_rss_kib(pid), fd_count(pid)) {
                        resources.push(Resources {
                            at_s: (now - started).as_secs_f64(),
                            rss_kib,
                            fds,
                        });
                    }
                    next_resources += RESOURCE_EVERY;
                }
                match scrape(&addr) {
                    Ok((ms, bytes, body)) => scrapes.push(Scrape {
                        lab: current.lock().map(|l| *l).unwrap_or_default(),
                        ms,
                        bytes,
                        page: parse_page(&body),
                    }),
                    Err(e) => failures.push(format!("{e:#}")),
                }
                tick += Duration::from_secs(1);
                thread::sleep(tick.saturating_duration_since(Instant::now()));
            }
            (scrapes, failures, resources)
        })
    };
    let mut tallies: BTreeMap<&str, LabTally> = BTreeMap::new();
    'cycle: loop {
        for (name, args) in LABS {
            if Instant::now() >= deadline {
                break 'cycle;
            }
            eprintln!(
                "xtask: bench: soak {:.0}/{secs} s: tcpq lab {name}…",
                started.elapsed().as_secs_f64()
            );
            if let Ok(mut l) = current.lock() {
                *l = name;
            }
            let tally = tallies.entry(name).or_default();
            tally.runs += 1;
            if let Err(e) = run_lab(name, args) {
                tally.failed += 1;
                tally.last_error = format!("{e:#}");
                eprintln!("xtask: bench: soak: {e:#}");
            }
        }
    }
    // The last interval folded in and scraped.
    thread::sleep(Duration::from_secs(2));
    done.store(true, Ordering::Relaxed);
    let (scrapes, failures, resources) = scraper
        .join()
        .map_err(|_| anyhow::anyhow!("the soak's scraper thread panicked"))?;
    let elapsed = started.elapsed().as_secs_f64();
    // Namespaces are rediscovered every second and let go when they vanish.
    thread::sleep(Duration::from_secs(3));
    let fds_idle = idle_before.zip(idle());
    running.stop(true)?;
    for f in failures.iter().take(3) {
        eprintln!("xtask: bench: soak: scrape failed: {f}");
    }
    let summary = summarize(elapsed, &scrapes, failures.len(), &resources, fds_idle);
    let labs = tallies
        .iter()
        .map(|(n, t)| {
            if t.failed > 0 {
                format!("{n} {} ({} failed: {})", t.runs, t.failed, t.last_error)
            } else {
                format!("{n} {}", t.runs)
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    Ok(format!(
        "\nSoak: `tcpq export --interval 1s` for {elapsed:.0} s while every lab ran in turn, each in namespaces of its own (`tcpq lab NAME --duration 2s`; storm at 50000 SYNs/s; conntrack under {GLOBAL_LOCK}), \
         a GET /metrics every second (time to the close; series, label sets and values per family from the page), tcpq's VmRSS and open fds (BPF links aside: the labs arm families, which keep their links for the 30 s quiet period) every {} s. \
         tier 0 watches every network namespace on the machine (a sock_diag socket and a few /proc files each), so its fds follow the labs' namespaces, and anyone else's: \
         the leak check is the reading with no lab running, before the first and 3 s after the last. \
         RSS is flat when its last {}'s maximum is less than {FLAT_PCT} % or {FLAT_MIB} MiB above its reading 20 % into the run.\n\n{}",
        RESOURCE_EVERY.as_secs(),
        if summary.window_s >= 60.0 {
            "minute".to_string()
        } else {
            format!("{:.0} s", summary.window_s)
        },
        rows(&summary, &labs)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# TYPE tcpq_connects counter\n\
        # HELP tcpq_connects Outbound connects\n\
        tcpq_connects_total{netns=\"4026532\",process=\"curl\",destination=\"10.0.0.1:80\",result=\"ok\"} 3\n\
        tcpq_connects_total{netns=\"4026533\",process=\"a \\\"quoted\\\", name\",destination=\"10.0.0.1:80\",result=\"ok\"} 1\n\
        # TYPE tcpq_accept_wait_seconds histogram\n\
        tcpq_accept_wait_seconds_bucket{listener=\"127.0.0.1:80\",le=\"0.001\"} 1\n\
        tcpq_accept_wait_seconds_bucket{listener=\"127.0.0.1:80\",le=\"+Inf\"} 2\n\
        tcpq_accept_wait_seconds_count{listener=\"127.0.0.1:80\"} 2\n\
        tcpq_accept_wait_seconds_sum{listener=\"127.0.0.1:80\"} 0.01\n\
        # TYPE tcpq_lost_events counter\n\
        tcpq_lost_events_total{family=\"listen\"} 2\n\
        tcpq_lost_events_total{family=\"missed_runs\"} 1\n\
        # TYPE tcpq_labels_folded gauge\n\
        tcpq_labels_folded 7\n\
        # EOF\n";

    #[test]
    fn page_counts_series_label_sets_and_values_per_family() {
        let p = parse_page(PAGE);
        assert_eq!(p.series["tcpq_connects"], 2);
        assert_eq!(p.label_sets["tcpq_connects"], 2);
        assert_eq!(
            p.label_values[&("tcpq_connects".into(), "process".into())],
            2
        );
        assert_eq!(
            p.label_values[&("tcpq_connects".into(), "destination".into())],
            1
        );
        // A histogram's buckets, count and sum are one label set.
        assert_eq!(p.series["tcpq_accept_wait_seconds"], 4);
        assert_eq!(p.label_sets["tcpq_accept_wait_seconds"], 1);
        assert!(
            !p.label_values
                .contains_key(&("tcpq_accept_wait_seconds".into(), "le".into()))
        );
        assert_eq!(p.lost, 3.0);
        assert_eq!(p.lost_by["missed_runs"], 1.0);
        assert_eq!(p.folded, 7.0);
        let (_, labels, v) =
            sample("x{a=\"a \\\"q\\\", b\",c=\"\"} 1.5").expect("a sample with escapes");
        assert_eq!(labels[0].1, "a \"q\", b");
        assert_eq!(labels[1], ("c".to_string(), String::new()));
        assert_eq!(v, 1.5);
        assert!(sample("# EOF").is_none());
        assert!(sample("x{a=unquoted} 1").is_none());
    }

    fn idle(fds: usize, namespaces: usize) -> Idle {
        Idle { fds, namespaces }
    }

    fn res(at_s: f64, mib: f64, fds: usize) -> Resources {
        Resources {
            at_s,
            rss_kib: (mib * 1024.0) as u64,
            fds,
        }
    }

    fn scrape_of(ms: f64, page: &str) -> Scrape {
        Scrape {
            lab: "storm",
            ms,
            bytes: page.len(),
            page: parse_page(page),
        }
    }

    #[test]
    fn rss_flat_by_mib_or_percent_after_the_warm_up() {
        // Warm-up growth (first 20 %) does not count; +1 MiB after it is flat by MiB.
        let r: Vec<Resources> = (0..=60)
            .map(|i| {
                res(
                    i as f64 * 10.0,
                    if i < 12 {
                        10.0 + i as f64
                    } else {
                        22.0 + (i as f64 - 12.0) / 48.0
                    },
                    20,
                )
            })
            .collect();
        let s = summarize(600.0, &[], 0, &r, None);
        assert_eq!(s.window_s, 60.0);
        assert!(s.rss_flat, "{}", s.rss_verdict);
        assert!(s.rss_verdict.contains("MiB"), "{}", s.rss_verdict);
        assert_eq!(s.rss_max_mib, 23.0);
        // A big process growing 3 MiB (< 5 %) is flat by percent.
        let r = vec![
            res(0.0, 100.0, 20),
            res(130.0, 100.0, 20),
            res(600.0, 103.0, 21),
        ];
        let s = summarize(600.0, &[], 0, &r, None);
        assert!(
            s.rss_flat && s.rss_verdict.contains('%'),
            "{}",
            s.rss_verdict
        );
        assert_eq!((s.fds_first, s.fds_last, s.fds_max), (20, 21, 21));
        // 20 → 25 MiB after the warm-up: growing.
        let r = vec![
            res(0.0, 20.0, 20),
            res(130.0, 20.0, 20),
            res(600.0, 25.0, 20),
        ];
        let s = summarize(600.0, &[], 0, &r, None);
        assert!(
            !s.rss_flat && s.rss_verdict.starts_with("GROWING"),
            "{}",
            s.rss_verdict
        );
        // Short runs compare fifths, not minutes.
        assert_eq!(summarize(100.0, &[], 0, &r, None).window_s, 20.0);
        assert!(!summarize(600.0, &[], 0, &r[..1], None).rss_flat);
    }

    #[test]
    fn scrapes_give_p99_max_series_and_end_totals() {
        let small =
            "# TYPE tcpq_lost_events counter\ntcpq_lost_events_total{family=\"listen\"} 0\n";
        let mut scrapes: Vec<Scrape> = (0..100)
            .map(|i| scrape_of(1.0 + i as f64 / 10.0, small))
            .collect();
        scrapes.push(scrape_of(80.0, PAGE));
        let s = summarize(101.0, &scrapes, 2, &[], Some((idle(70, 5), idle(72, 5))));
        assert_eq!(s.scrapes, 101);
        assert_eq!(s.scrape_failures, 2);
        assert_eq!(s.scrape_max_ms, 80.0);
        // Nearest rank: the 100th of 101 sorted.
        assert!((s.scrape_p99_ms - 10.9).abs() < 1e-9, "{}", s.scrape_p99_ms);
        assert_eq!((s.series_first, s.series_last, s.series_max), (1, 9, 9));
        assert_eq!(s.lost, 3.0);
        assert_eq!(s.label_values_max, 2);
        let table = rows(&s, "overflow 1");
        assert!(table.contains("| lost events (tcpq_lost_events_total, at the end) | 3 (listen: 2, missed_runs: 1, 3 while storm ran) | 0 |"), "{table}");
        assert!(table.contains("< 50 ms"), "{table}");
        assert!(
            table.contains("| 70 → 72 (5 → 5 namespaces on the machine): LEAKED 2 |"),
            "{table}"
        );
        assert!(
            idle_verdict(Some((idle(70, 5), idle(74, 6))))
                .ends_with("not comparable, more namespaces")
        );
        assert!(
            idle_verdict(Some((idle(70, 5), idle(70, 7)))).ends_with("namespaces on the machine)")
        );
        assert!(!table.contains("OVER the bound"), "{table}");
    }
}
