//! How every tracing command runs (on the one event loop, `event_loop.rs`): drain its ring buffer
//! as it fills, tick every second, summarize periodically, stop on Ctrl-C/SIGTERM/SIGHUP, the
//! terminal's hangup or after a duration, then drain what the kernel already queued and
//! summarize the whole run.
use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};

use crate::{
    cli::TraceOutput,
    event_loop::{self, Every},
    stop,
};

/// When a trace ends and how often it summarizes.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// None: until a stop.
    pub duration: Option<Duration>,
    /// None: only the final summary.
    pub summary_every: Option<Duration>,
}

impl Schedule {
    /// A run of `duration` with only its final summary (`ports`, `conntrack`).
    pub fn once(duration: Duration) -> Self {
        Self {
            duration: Some(duration),
            summary_every: None,
        }
    }
}

impl From<&TraceOutput> for Schedule {
    fn from(out: &TraceOutput) -> Self {
        Self {
            duration: out.duration,
            summary_every: Some(out.summary_interval),
        }
    }
}

/// What a trace does with its records and its clock.
pub struct Handlers<R, T, S> {
    /// Each record as the ring delivers it.
    on_record: R,
    /// Once a second (line budgets, owners).
    on_tick: T,
    /// Every summary interval (false), and once at the end over the whole run (true).
    on_summary: S,
}

impl<R: FnMut(&[u8]), T: FnMut(), S: FnMut(bool)> Handlers<R, T, S> {
    pub fn new(on_record: R, on_tick: T, on_summary: S) -> Self {
        Self {
            on_record,
            on_tick,
            on_summary,
        }
    }
}

const SECOND: Duration = Duration::from_secs(1);

/// Runs a trace to its end; `banner` is announced once the stop handlers are in place (a
/// signal sent after it must find them).
pub fn run(
    mut ring: RingBuf<MapData>,
    schedule: impl Into<Schedule>,
    banner: impl FnOnce(),
    handlers: Handlers<impl FnMut(&[u8]), impl FnMut(), impl FnMut(bool)>,
) {
    let Handlers {
        mut on_record,
        mut on_tick,
        mut on_summary,
    } = handlers;
    let schedule = schedule.into();
    stop::install();
    stop::watch_terminal();
    banner();
    let start = Instant::now();
    let deadline = schedule.duration.map(|d| start + d);
    let mut tick = Every::new(start, SECOND);
    let mut summary = schedule.summary_every.map(|p| Every::new(start + p, p));
    let ring_fd = ring.as_fd().as_raw_fd();
    event_loop::run_until(
        deadline,
        |now| {
            while let Some(item) = ring.next() {
                on_record(&item);
            }
            if tick.fire(now) {
                on_tick();
            }
            // A summary due within a second of the end: the final one follows at once.
            let ending = deadline.is_some_and(|d| d.saturating_duration_since(now) < SECOND);
            if let Some(summary) = &mut summary
                && summary.fire(now)
                && !ending
            {
                on_summary(false);
            }
            summary.map_or(tick.due(), |s| tick.due().min(s.due()))
        },
        |timeout| {
            event_loop::wait_readable(&[ring_fd], timeout);
            true
        },
    );
    while let Some(item) = ring.next() {
        on_record(&item);
    }
    on_summary(true);
}
