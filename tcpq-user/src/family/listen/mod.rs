//! The listen family: refused, cookied and reset connections at a listener (`tcp_listen_*`
//! tracepoints and the cgroup_skb hooks), and the listen() calls that set its backlog.
pub mod aggregate;
pub mod decode;
pub mod diagnose;
pub mod render;
pub mod unsent;

/// Listen records the kernel side could not decide: a record whose outcome never came
/// (UNRESOLVED) and records parked by tuple that nothing matched (PARKED − PARK_RESOLVED). Their
/// packets may be missing from the counts, so every mode reports them.
pub fn unresolved_records(counts: &aya::maps::PerCpuArray<aya::maps::MapData, u64>) -> u64 {
    use crate::kernel::probe::sum_per_cpu;
    use tcpq_common::kind;
    sum_per_cpu(counts, kind::UNRESOLVED as u32)
        + sum_per_cpu(counts, kind::PARKED as u32)
            .saturating_sub(sum_per_cpu(counts, kind::PARK_RESOLVED as u32))
}
