//! `tcpq export`: a Prometheus exporter. The live session is folded into the metrics every
//! interval; a thread of its own (`metrics_http`) serves the last encoding on /metrics. Binds
//! loopback by default.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{Result, anyhow};

use super::metrics_http::{LIMITS, Page, bind, start_http};
use crate::{
    cli::{ExportArgs, HooksMode},
    event_loop::{self, next_due},
    kernel::privilege,
    live::{
        metrics::{Metrics, Owner},
        producer::Producer,
    },
    stop,
};

pub fn run(args: ExportArgs) -> Result<i32> {
    let listener = bind(args.listen).map_err(|e| {
        anyhow!(
            "listen on {} for /metrics: {e} (choose another address with --listen)",
            args.listen
        )
    })?;
    let mut producer = Producer::start(super::live_options(&args.tiers, HooksMode::Auto))?;
    // Programs loaded, stats fd and tracefs done, socket bound: from here on only what
    // `privilege::RUNTIME_NEEDS` lists. Before any thread starts (the terminal watcher, HTTP).
    let kept = privilege::drop_to_runtime();
    stop::install();
    stop::watch_terminal();
    let mut metrics = Metrics::new(args.top_k as usize);
    let page: Page = Arc::new(Mutex::new(Arc::from(metrics.encode())));
    // Dropping it (when `run` returns) stops the server.
    let _http = start_http(listener, Arc::clone(&page), LIMITS)?;
    eprintln!(
        "tcpq: serving Prometheus metrics on http://{}/metrics (capabilities kept: {})",
        args.listen,
        kept.names()
    );
    let started = Instant::now();
    let mut deadline = started + args.interval;
    loop {
        let go_on = producer.collect_until(deadline, |wait| {
            event_loop::sleep(wait);
            true
        });
        let tick = producer.tick();
        let owners: HashMap<(u32, u16), Owner> = tick
            .frame
            .listeners
            .iter()
            .filter_map(|l| {
                let port = l.listener.rsplit(':').next()?.parse().ok()?;
                Some((
                    (l.netns, port),
                    Owner {
                        process: l.process.clone()?,
                        pod: l.pod.clone().unwrap_or_default(),
                        container: l.container.clone().unwrap_or_default(),
                    },
                ))
            })
            .collect();
        let pods: HashMap<u32, (String, String)> = tick
            .frame
            .outbound
            .iter()
            .filter(|o| o.pod.is_some() || o.container.is_some())
            .map(|o| {
                (
                    o.pid,
                    (
                        o.pod.clone().unwrap_or_default(),
                        o.container.clone().unwrap_or_default(),
                    ),
                )
            })
            .collect();
        metrics.update(
            &tick.agg,
            &tick.causes,
            producer.session.lost(),
            &owners,
            &pods,
        );
        let fresh: Arc<str> = Arc::from(metrics.encode());
        let old = {
            let mut current = page.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            std::mem::replace(&mut *current, fresh)
        };
        // Freed (when no answer holds it any more) outside the lock.
        drop(old);
        if !go_on || stop::requested() || args.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        deadline = next_due(deadline, args.interval, Instant::now());
    }
    Ok(0)
}
