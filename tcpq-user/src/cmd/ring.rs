//! The event loop every tracing command shares: drain a ring buffer as it fills, tick every
//! second, summarize periodically, stop on Ctrl-C/SIGTERM/SIGHUP, the terminal's hangup or after
//! a duration, then drain what the kernel already queued and summarize the whole run.
use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

pub fn run(
    ring: RingBuf<MapData>,
    duration: Option<Duration>,
    summary_every: Duration,
    mut on_record: impl FnMut(&[u8]),
    mut on_tick: impl FnMut(),
    mut on_summary: impl FnMut(bool),
    ready: impl FnOnce(),
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the event loop")?;
    rt.block_on(async {
        // SAFETY: the ring buffer owns its map fd for the AsyncFd's whole life.
        let mut afd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("watch the ring buffer: {e}"))?;
        let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
        let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
        let mut sighup = signal(SignalKind::hangup()).context("install SIGHUP handler")?;
        // The terminal going away arrives as a SIGHUP too (handled just above).
        crate::stop::watch_terminal();
        // Announce only now: a signal sent after the banner must find the handlers in place.
        ready();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut summary_tick = tokio::time::interval(summary_every);
        summary_tick.tick().await;
        let deadline = duration.map(|d| tokio::time::Instant::now() + d);
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                guard = afd.readable_mut() => {
                    let mut guard = guard.context("poll the ring buffer")?;
                    let rb = guard.get_inner_mut();
                    while let Some(item) = rb.next() {
                        on_record(&item);
                    }
                    guard.clear_ready();
                }
                _ = tick.tick() => on_tick(),
                _ = summary_tick.tick() => {
                    if deadline.is_some_and(|d| d.saturating_duration_since(tokio::time::Instant::now()) < Duration::from_secs(1)) {
                        continue; // the final summary follows at once
                    }
                    on_summary(false);
                }
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
                _ = sighup.recv() => break,
                _ = &mut sleep => break,
            }
        }
        let rb = afd.get_mut();
        while let Some(item) = rb.next() {
            on_record(&item);
        }
        on_summary(true);
        Ok::<(), anyhow::Error>(())
    })
}
