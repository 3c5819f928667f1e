//! Values `load` hands the kernel programs besides BTF offsets: tracepoint field offsets, the
//! listen line budget, the near-limit margin and the SYN-queue compare of this kernel.
use tcpq_common::config;

use super::environment::Environment;
use crate::kernel::tracefs;

/// Tracepoint field offsets the programs need; None when tracefs (or the event) is missing.
pub(super) fn tracepoint_globals(env: &Environment) -> Vec<(&'static str, u32)> {
    let Some(tfs) = env.tracefs.path() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (global, cat, ev, field) in [
        ("TP_LISTEN_FD", "syscalls", "sys_enter_listen", "fd"),
        (
            "TP_LISTEN_BACKLOG",
            "syscalls",
            "sys_enter_listen",
            "backlog",
        ),
        ("TP_ACCEPT_RET", "syscalls", "sys_exit_accept4", "ret"),
        ("TP_CONNECT_FD", "syscalls", "sys_enter_connect", "fd"),
        ("TP_ACCEPT_FD", "syscalls", "sys_enter_accept4", "fd"),
        (
            "TP_CONNECT_ADDR",
            "syscalls",
            "sys_enter_connect",
            "uservaddr",
        ),
        ("TP_CONNECT_RET", "syscalls", "sys_exit_connect", "ret"),
    ] {
        if let Ok(off) = tracefs::field_offset(tfs, cat, ev, field) {
            out.push((global, off));
        }
    }
    out
}

/// Listen ring records per second, all CPUs together, unless TCPQ_LISTEN_BUDGET says otherwise
/// (0: no limit). Beyond it the kernel counts refusals per listener without a record: counts
/// stay exact, userspace work stays bounded however fast a SYN flood arrives.
pub const DEFAULT_LISTEN_BUDGET: u32 = 40_000;

/// The least margin below every limit at which a listener's SYNs/ACKs are not followed
/// through (TCPQ_NEAR_MARGIN overrides it; 0 follows every packet): see listen::far_from_limits.
pub const DEFAULT_NEAR_MARGIN: u32 = 64;

/// Possible CPUs (/sys/devices/system/cpu/possible), if readable.
pub(super) fn possible_cpus() -> Option<u32> {
    aya::util::nr_cpus().ok().map(|n| n as u32)
}

/// The budget as the kernel applies it: records per CPU per `config::BUDGET_WINDOW_NS`.
pub(super) fn listen_budget_per_cpu_window(cpus: u32) -> u32 {
    let per_s = std::env::var("TCPQ_LISTEN_BUDGET")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(DEFAULT_LISTEN_BUDGET);
    budget_per_cpu_window(per_s, cpus)
}

/// `per_s` records per second over `cpus` CPUs → per CPU per window (at least 1; 0 stays 0).
pub fn budget_per_cpu_window(per_s: u32, cpus: u32) -> u32 {
    if per_s == 0 {
        return 0;
    }
    let windows_per_s = (1_000_000_000 / config::BUDGET_WINDOW_NS) as u32;
    (per_s / windows_per_s / cpus.max(1)).max(1)
}

/// `inet_csk_reqsk_queue_is_full()` compared `qlen >= backlog` until it became `>`
/// (include/net/inet_connection_sock.h, 6.x). tcpq checks this against the kernel's own
/// counters in its integration tests.
pub fn reqq_full_uses_ge((major, minor): (u32, u32)) -> bool {
    (major, minor) < (6, 12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_budget_is_shared_by_the_cpus_per_window() {
        // 40k/s on 2 CPUs, 10 windows a second: 2000 records per CPU per window.
        assert_eq!(budget_per_cpu_window(40_000, 2), 2000);
        assert_eq!(budget_per_cpu_window(40_000, 64), 62);
        // Never rounds down to "no limit" or to nothing.
        assert_eq!(budget_per_cpu_window(5, 64), 1);
        assert_eq!(budget_per_cpu_window(0, 2), 0);
        assert_eq!(budget_per_cpu_window(100, 0), 10);
    }

    #[test]
    fn reqq_full_compare_changed_in_6_12() {
        assert!(reqq_full_uses_ge((6, 11)));
        assert!(!reqq_full_uses_ge((6, 12)));
        assert!(!reqq_full_uses_ge((6, 18)));
    }
}
