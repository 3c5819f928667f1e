//! tcpq's labs: reproducible incidents in network namespaces of their own (`tcpq lab NAME`),
//! and the pieces the integration tests and `cargo xtask bench` build theirs from — namespaces,
//! nft rules and sysctls inside them, global sysctls restored on drop, load generators, the
//! one parser of the kernel's counters files, and starting tcpq until it is ready. Written once here; tcpq-user depends on this
//! crate, never the other way round.
use std::{
    thread,
    time::{Duration, Instant},
};

pub mod counters;
pub mod generators;
pub mod netns;
mod scenarios;
pub mod sysctl;
pub mod tcpq;

pub use scenarios::{Lab, Scenario, run};

/// Whether the caller wants a lab to end early (tcpq: a SIGINT/SIGTERM/SIGHUP seen by its
/// handler): polled between steps, so a lab stops quickly and still removes what it created.
#[derive(Clone, Copy)]
pub struct Stop(fn() -> bool);

impl Stop {
    /// Stops when `requested` says so.
    pub const fn when(requested: fn() -> bool) -> Self {
        Self(requested)
    }

    /// Never stops early: the generator runs to its deadline.
    pub const fn never() -> Self {
        Self(|| false)
    }

    pub fn requested(self) -> bool {
        (self.0)()
    }

    /// Sleeps in small steps so a stop is honoured quickly.
    pub fn nap(self, d: Duration) {
        let end = Instant::now() + d;
        while !self.requested() {
            let now = Instant::now();
            if now >= end {
                break;
            }
            thread::sleep((end - now).min(Duration::from_millis(20)));
        }
    }
}
