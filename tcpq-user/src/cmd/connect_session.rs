//! A loaded connect family for `trace connect` and `ports`: its ring, its exact kernel-side
//! totals and the loop that feeds both to the command.

use anyhow::Result;
use aya::maps::{MapData, PerCpuArray};
use serde_json::json;
use tcpq_common::{connect as c, names};

use super::ring::{Handlers, Schedule};
use crate::{
    family::connect::decode::{ConnectOutcome, decode_connect},
    kernel::probe::{self, Family, HookState, LoadOptions, sum_per_cpu},
};

/// Exact kernel-side totals.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectTotals {
    pub ok: u64,
    pub refused: u64,
    pub timeout: u64,
    pub eaddrnotavail: u64,
    pub other: u64,
    pub syn_retrans: u64,
    pub lost: u64,
    /// Program runs the kernel skipped (already running on that CPU).
    pub missed_runs: u64,
}

/// The exact counts (`CONNECT_COUNTS`) and the records the ring had no room for
/// (`RING_LOST`).
pub fn totals(
    m: &PerCpuArray<MapData, u64>,
    ring_lost: &PerCpuArray<MapData, u64>,
) -> ConnectTotals {
    ConnectTotals {
        ok: sum_per_cpu(m, c::COUNT_OK),
        refused: sum_per_cpu(m, c::COUNT_REFUSED),
        timeout: sum_per_cpu(m, c::COUNT_TIMEOUT),
        eaddrnotavail: sum_per_cpu(m, c::COUNT_EADDRNOTAVAIL),
        other: sum_per_cpu(m, c::COUNT_OTHER),
        syn_retrans: sum_per_cpu(m, c::COUNT_SYN_RETRANS),
        lost: sum_per_cpu(ring_lost, tcpq_common::lost::CONNECT),
        missed_runs: 0,
    }
}

impl ConnectTotals {
    pub fn json(&self) -> serde_json::Value {
        json!({"ok": self.ok, "refused": self.refused, "timeout": self.timeout, "EADDRNOTAVAIL": self.eaddrnotavail, "other": self.other, "syn_retrans": self.syn_retrans})
    }
}

/// A loaded connect family: its ring buffer and exact counters.
pub struct ConnectSession {
    pub loaded: probe::Loaded,
    pub ring: aya::maps::RingBuf<MapData>,
    pub counts: PerCpuArray<MapData, u64>,
    pub ring_lost: PerCpuArray<MapData, u64>,
}

impl ConnectSession {
    pub fn open() -> Result<Self> {
        let mut loaded = probe::load(&[Family::Connect], &LoadOptions::default())?;
        let ring = loaded.take_ring(names::CONNECT_EVENTS)?;
        let counts = loaded.take_per_cpu_counters(names::CONNECT_COUNTS)?;
        let ring_lost = loaded.take_per_cpu_counters(names::RING_LOST)?;
        Ok(Self {
            loaded,
            ring,
            counts,
            ring_lost,
        })
    }

    pub fn hooks_line(&self) -> String {
        self.loaded
            .hooks
            .iter()
            .map(|h| match &h.state {
                HookState::Attached | HookState::Standby => format!("{} ✓", h.spec.program),
                HookState::Unavailable(why) => format!("{} ✗ ({why})", h.spec.program),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Runs to `schedule`'s end or Ctrl-C/SIGTERM/SIGHUP; `on_event` for every outcome,
    /// `on_tick` every second, `on_summary` every summary interval and at the end.
    pub fn run(
        self,
        schedule: impl Into<Schedule>,
        banner: impl FnOnce(),
        mut on_event: impl FnMut(&ConnectOutcome),
        on_tick: impl FnMut(),
        mut on_summary: impl FnMut(&ConnectTotals, bool),
    ) {
        let ConnectSession {
            loaded,
            ring,
            counts,
            ring_lost,
        } = self;
        let on_record = |bytes: &[u8]| {
            if let Ok(o) = decode_connect(bytes) {
                on_event(&o);
            }
        };
        let on_summary = |final_run| {
            let t = ConnectTotals {
                missed_runs: loaded.missed_runs(),
                ..totals(&counts, &ring_lost)
            };
            on_summary(&t, final_run)
        };
        let handlers = Handlers::new(on_record, on_tick, on_summary);
        super::ring::run(ring, schedule, banner, handlers);
        drop(loaded);
    }
}
