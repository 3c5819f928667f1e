//! What the live commands attach: every family (`--hooks all`) or counters first, the hooks
//! they never read, and the tier-2 programs kept on standby.
use std::time::Duration;

use tcpq_common::names;

/// How a live command attaches its programs.
#[derive(Debug, Clone, Copy)]
pub struct LiveOptions {
    /// `--hooks all`: every program attached all the time (no tiers).
    pub hooks_all: bool,
    /// A tracing family is disarmed after this long without trouble.
    pub quiet: Duration,
}

/// The start-up line of the live commands: what they attach.
pub fn describe_tiers(live: &LiveOptions) -> String {
    if live.hooks_all {
        "every hook family attached (--hooks all)".into()
    } else {
        format!(
            "counters first: tier-2 programs attached while a family has trouble, detached after {:.0} s quiet",
            live.quiet.as_secs_f64()
        )
    }
}

/// Hooks the live commands (top, diagnose, export) do not read. Connect outcomes come from the
/// state changes alone (sock_state: a failed port search is SYN_SENT → CLOSE before any port was
/// taken); the connect() syscall hooks add only the time inside connect() and errors before a
/// handshake starts (no route), which `tcpq trace connect` shows. The listen family's accept
/// counters repeat what the accept family reports per accept. Syscall tracepoints are the
/// costliest hooks for a busy server: each one runs on every call, and while any is attached
/// every task takes the syscall slow path.
/// The backlog an application passed to listen() comes from sock_diag in the live commands
/// (`idiag_wqueue` = sk_max_ack_backlog) instead of `sys_enter_listen`.
pub const LIVE_UNUSED: &[&str] = &[
    names::PROG_SYS_ENTER_CONNECT,
    names::PROG_SYS_EXIT_CONNECT,
    names::PROG_SYS_EXIT_ACCEPT4,
    names::PROG_SYS_EXIT_ACCEPT,
    names::PROG_SYS_ENTER_LISTEN,
];

/// What the live commands leave out under counters first (not `--hooks all`): LIVE_UNUSED and
/// the listen family's outcome hooks. Those confirm each SYN/ACK's fate from what the kernel
/// then did with it, at four more program runs per packet on a listener's port while tracing
/// (net_dev_queue and consume_skb fire for every packet of every socket); without them the
/// ingress hook predicts each verdict from the queues at arrival. The exact refusal totals come
/// from tier 0 either way; predicted kinds are capped at them (`KindCounts::cap_refusals`).
/// `trace overflow` and `--hooks all` confirm.
pub const LIVE_UNUSED_COUNTERS_FIRST: &[&str] = &[
    names::PROG_SYS_ENTER_CONNECT,
    names::PROG_SYS_EXIT_CONNECT,
    names::PROG_SYS_EXIT_ACCEPT4,
    names::PROG_SYS_EXIT_ACCEPT,
    names::PROG_SYS_ENTER_LISTEN,
    names::PROG_OUTCOME_XMIT,
    names::PROG_OUTCOME_CHILD,
    names::PROG_OUTCOME_CONSUME,
    names::PROG_OUTCOME_KFREE,
];

/// Tier 2: loaded and verified at start, attached only while their family's tier-0 signal
/// moves (`Engine`). What stays attached (tier 1): `sock_state` with only the connect
/// family's failure path (EADDRNOTAVAIL), `skb_kfree` with only the drop part (leaves on the drop
/// reason) and `drop_kfree_nested` (leaves on a per-CPU flag unless `skb_kfree` is running).
pub const LIVE_STANDBY: &[&str] = &[
    names::PROG_LISTEN_INGRESS,
    names::PROG_SYNACK_RETRANS,
    names::PROG_OVERFLOW_RESET,
    names::PROG_ACCEPT_ENQUEUE,
    names::PROG_ACCEPT_ENTER4,
    names::PROG_ACCEPT_EXIT4,
    names::PROG_ACCEPT_ENTER,
    names::PROG_ACCEPT_EXIT,
    names::PROG_CONNECT_STATE,
    names::PROG_CONNECT_RETRANS,
    names::PROG_DROP_OWNER,
];
