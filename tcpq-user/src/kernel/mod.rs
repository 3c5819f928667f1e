pub mod btf;
pub mod env;
pub mod privilege;
pub mod probe;
pub mod tracefs;

/// Now on the clock the programs stamp their records with: bpf_ktime_get_ns() is
/// CLOCK_MONOTONIC. 0 if the clock cannot be read (never on Linux).
pub fn ktime_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| (t.tv_sec() as u64).saturating_mul(1_000_000_000) + t.tv_nsec() as u64)
        .unwrap_or(0)
}
