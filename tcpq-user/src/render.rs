//! Shared by every family's renderer: monotonic → wall-clock time and `address:port`. Pure.
use std::{
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Converts `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall_minus_mono_ns: i128,
}

fn clock_ns(id: nix::time::ClockId) -> i128 {
    nix::time::clock_gettime(id)
        .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
        .unwrap_or(0)
}

impl Clock {
    pub fn new() -> Self {
        let mono = clock_ns(nix::time::ClockId::CLOCK_MONOTONIC);
        let wall = clock_ns(nix::time::ClockId::CLOCK_REALTIME);
        Self {
            wall_minus_mono_ns: wall - mono,
        }
    }
    pub fn fixed(wall_minus_mono_ns: i128) -> Self {
        Self { wall_minus_mono_ns }
    }
    pub fn now_mono_ns() -> u64 {
        crate::kernel::ktime_ns()
    }
    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        let ns = (mono_ns as i128 + self.wall_minus_mono_ns).max(0) as u128;
        UNIX_EPOCH + Duration::from_nanos(ns.min(u64::MAX as u128) as u64)
    }
    pub fn rfc3339(&self, mono_ns: u64) -> String {
        humantime::format_rfc3339_micros(self.wall(mono_ns)).to_string()
    }
    /// `HH:MM:SS.micro` (UTC) for text lines.
    pub fn short(&self, mono_ns: u64) -> String {
        let s = self.rfc3339(mono_ns);
        s.get(11..26).unwrap_or(&s).to_string()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

pub fn endpoint(a: IpAddr, port: u16) -> String {
    match a {
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        IpAddr::V4(v4) => format!("{v4}:{port}"),
    }
}
