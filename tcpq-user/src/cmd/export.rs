//! `tcpq export`: a Prometheus exporter. The live session is folded into the metrics every
//! interval; an HTTP thread serves the last encoding on /metrics. Binds loopback by default.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};

use crate::{cmd::top::Producer, live::metrics::Metrics, stop};

#[derive(Debug, Clone)]
pub struct ExportArgs {
    pub listen: SocketAddr,
    pub interval: Duration,
    pub top_k: usize,
    pub duration: Option<Duration>,
    pub live: crate::live::session::LiveOptions,
}

pub fn run(args: ExportArgs) -> Result<i32> {
    let server = tiny_http::Server::http(args.listen).map_err(|e| {
        anyhow!(
            "listen on {} for /metrics: {e} (choose another address with --listen)",
            args.listen
        )
    })?;
    let mut producer = Producer::start(args.live)?;
    stop::install();
    stop::watch_terminal();
    let mut metrics = Metrics::new(args.top_k);
    let page = Arc::new(Mutex::new(metrics.encode()));
    let served = Arc::clone(&page);
    let server = Arc::new(server);
    let http = Arc::clone(&server);
    std::thread::spawn(move || {
        for req in http.incoming_requests() {
            let path = req.url().split('?').next().unwrap_or("").to_string();
            let resp = if path == "/metrics" {
                let body = served.lock().map(|s| s.clone()).unwrap_or_default();
                let mut r = tiny_http::Response::from_string(body);
                if let Ok(h) = tiny_http::Header::from_bytes(
                    &b"Content-Type"[..],
                    &b"application/openmetrics-text; version=1.0.0; charset=utf-8"[..],
                ) {
                    r.add_header(h);
                }
                r
            } else {
                tiny_http::Response::from_string("tcpq exporter: see /metrics\n")
                    .with_status_code(if path == "/" { 200 } else { 404 })
            };
            let _ = req.respond(resp);
        }
    });
    eprintln!(
        "tcpq: serving Prometheus metrics on http://{}/metrics",
        args.listen
    );
    let started = Instant::now();
    loop {
        let deadline = Instant::now() + args.interval;
        let go_on = producer.collect_until(deadline, |wait| {
            std::thread::sleep(wait);
            true
        });
        let tick = producer.tick();
        let owners: HashMap<(u32, u16), String> = tick
            .frame
            .listeners
            .iter()
            .filter_map(|l| {
                let port = l.listener.rsplit(':').next()?.parse().ok()?;
                Some(((l.netns, port), l.process.clone()?))
            })
            .collect();
        metrics.update(&tick.agg, &tick.causes, producer.session.lost(), &owners);
        if let Ok(mut p) = page.lock() {
            *p = metrics.encode();
        }
        if !go_on || stop::requested() || args.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
    }
    server.unblock();
    Ok(0)
}
