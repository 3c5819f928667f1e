//! `cargo xtask bench --soak [--soak-secs N]`: `tcpq export` for N seconds (600 by default)
//! while every lab comes and goes, each in namespaces of its own, and a scraper GETs /metrics
//! every second. Judges what a long-running exporter must keep: RSS flat, every label bounded
//! by `--top-k`, no lost events, scrapes well under a Prometheus interval.
//! This file: the run itself; the labs are run in `labs`, the page scraped and parsed in
//! `page`, tcpq's resources read in `resources`, and the verdicts written in `summary`.
use std::{
    collections::BTreeMap,
    net::TcpListener,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{procfs::vm_rss_kib, running::start_tcpq};
use labs::{GLOBAL_LOCK, LABS, LabTally, run_lab};
use page::{Scrape, parse_page, scrape};
use resources::{Idle, Resources, fd_count, netns_count};
use summary::{FLAT_MIB, FLAT_PCT, rows, summarize};

mod labs;
mod page;
mod resources;
mod summary;

/// The soak runs export with `--top-k` this small so that the labs' labels fold into `other`
/// (the default, 50, is not reached in ten minutes of labs).
const TOP_K: usize = 10;

const RESOURCE_EVERY: Duration = Duration::from_secs(10);

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
