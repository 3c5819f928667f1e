//! The loaded object (`Loaded`): its programs, hooks and links, the maps userspace reads, and
//! the kernel's counters (per-CPU slots, programs' fdinfo: missed runs).
use std::{
    collections::HashMap,
    fs::File,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, RingBuf},
};
use tcpq_common::{dispatcher, names};

use super::{
    environment::Environment,
    link::LinkHandle,
    status::{HookState, HookStatus},
};

/// Loaded programs, attached links (detached on drop) and the maps userspace reads.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub hooks: Vec<HookStatus>,
    pub env: Environment,
    /// Verdicts confirmed from the kernel's actions (all outcome hooks attached), not predicted.
    pub confirm: bool,
    /// The cgroup2 root, kept for attaching cgroup programs later (`arm`).
    pub(super) cgroup: Option<File>,
    /// Links of the standby programs attached now, by the name of the program that runs
    /// (one link may serve two hooks: see `Alternative`).
    pub(super) armed_links: HashMap<&'static str, LinkHandle>,
    /// ARMED_PARTS as last written.
    pub(super) armed_parts: [u32; dispatcher::SLOTS as usize],
}

impl Loaded {
    pub fn take_ring(&mut self, name: &str) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or_else(|| anyhow!("kernel object has no map {name}"))?;
        RingBuf::try_from(map).with_context(|| format!("open ring buffer {name}"))
    }

    pub fn take_per_cpu_counters(&mut self, name: &str) -> Result<PerCpuArray<MapData, u64>> {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or_else(|| anyhow!("kernel object has no map {name}"))?;
        PerCpuArray::try_from(map).with_context(|| format!("open per-CPU array {name}"))
    }

    /// Program runs the kernel skipped, all of tcpq's loaded programs together:
    /// `recursion_misses` in each program's fdinfo (kernel ≥ 5.12). A raw tracepoint program
    /// does not run again on a CPU where it is already running (bpf_trace_run*() →
    /// bpf_prog_get_recursion_context()), e.g. a softirq's kfree_skb interrupting one in process
    /// context; tracepoint programs share one such guard per CPU (trace_call_bpf():
    /// bpf_prog_active). Each skipped run may be an event tcpq never saw, so it is reported
    /// with the lost events — less the skipped runs of `skb_kfree` that `drop_kfree_nested` did
    /// in its place (RESCUED_RUNS). The nested program's own skipped runs stay in: one that
    /// interrupts its brief check while `skb_kfree` is not running loses nothing, so the count
    /// errs high, never low.
    pub fn missed_runs(&self) -> u64 {
        let skipped: u64 = self
            .ebpf
            .programs()
            .filter_map(|(_, program)| program.fd().ok())
            .filter_map(|fd| fdinfo_counter(fd.as_fd().as_raw_fd(), "recursion_misses"))
            .sum();
        skipped.saturating_sub(self.rescued_runs())
    }

    /// Skipped runs of `skb_kfree` that `drop_kfree_nested` did instead (0 when not loaded).
    pub fn rescued_runs(&self) -> u64 {
        self.ebpf
            .map(names::RESCUED_RUNS)
            .and_then(|map| PerCpuArray::<_, u64>::try_from(map).ok())
            .map(|counts| sum_per_cpu(&counts, 0))
            .unwrap_or(0)
    }

    pub fn attached(&self, program: &str) -> bool {
        self.hooks
            .iter()
            .any(|h| h.spec.program == program && matches!(h.state, HookState::Attached))
    }
}

/// A counter from /proc/self/fdinfo/FD (`name:\tvalue` lines; bpf_prog_show_fdinfo()).
fn fdinfo_counter(fd: i32, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    fdinfo_value(&text, name)
}

fn fdinfo_value(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim().parse().ok())?
    })
}

/// Sums a per-CPU u64 slot.
pub fn sum_per_cpu<M: std::borrow::Borrow<MapData>>(map: &PerCpuArray<M, u64>, index: u32) -> u64 {
    map.get(&index, 0)
        .map(|values| values.iter().copied().sum())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_counters_are_read_by_name() {
        // As the kernel prints a program's fdinfo (bpf_prog_show_fdinfo()).
        let text = "pos:\t0\nflags:\t02000002\nprog_type:\t17\nprog_tag:\t3b185187f1855c4c\nrun_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t12\nverified_insns:\t480\n";
        assert_eq!(fdinfo_value(text, "recursion_misses"), Some(12));
        assert_eq!(fdinfo_value(text, "run_cnt"), Some(0));
        assert_eq!(fdinfo_value(text, "missing"), None);
        assert_eq!(
            fdinfo_value("recursion_misses:\tx\n", "recursion_misses"),
            None
        );
        assert_eq!(fdinfo_value("", "recursion_misses"), None);
    }
}
