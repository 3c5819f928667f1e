//! One program on `sock:inet_sock_set_state` for every family that follows socket states.
//! The tracepoint fires ~10 times per connection (both ends): four programs there cost four
//! program runs each time, one dispatcher costs one. Which families it serves is the
//! read-only knob STATE_HOOKS, set before load: the verifier drops the code of the others.
//! Which of those parts run now is ARMED_PARTS, written by userspace at run time: the live
//! commands keep the per-connection parts (handshake records, enqueue times, child outcomes,
//! socket owners) off while their family is quiet, and only the failure path of the connect
//! family runs (tier 1: it reads nothing but the tracepoint's arguments on a healthy load).
//! `skb_kfree` is the same for `skb:kfree_skb`: the drop family's netfilter drops (tier 1) and
//! the listen family's final-ACK outcomes (tier 2).
use aya_ebpf::{macros::map, macros::raw_tracepoint, maps::Array, programs::RawTracePointContext};
use tcpq_common::{dispatcher, kfree_hooks, reset_hooks, state_hooks};

use crate::offsets::{KFREE_HOOKS, RESET_HOOKS, RSN_ABORT_ON_CLOSE, STATE_HOOKS};

const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;

#[map]
static ARMED_PARTS: Array<u32> = Array::with_max_entries(dispatcher::SLOTS, 0);

/// The parts of dispatcher `slot` armed now (an array lookup the verifier inlines: no helper
/// call).
#[inline(always)]
fn armed(slot: u32) -> u32 {
    ARMED_PARTS.get(slot).copied().unwrap_or(0)
}

/// `sock:inet_sock_set_state(sk, oldstate, newstate)`.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn sock_state(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let hooks = STATE_HOOKS.load();
    let on = hooks & armed(dispatcher::SOCK_STATE);
    if on & state_hooks::CONNECT != 0 {
        crate::connect::on_state(sk, old, new);
    } else if hooks & state_hooks::CONNECT != 0 && old == TCP_SYN_SENT && new == TCP_CLOSE {
        // Tier 1: a port search that failed (EADDRNOTAVAIL); every other change leaves here,
        // on the tracepoint's arguments alone.
        crate::connect::on_failed_handshake(sk);
    }
    // Armed with the connect family only when that one is not (trace conntrack: alone).
    if on & state_hooks::OWNER != 0 {
        crate::drop::on_state(sk, new);
    }
    if on & state_hooks::ENQUEUE != 0 {
        crate::accept::on_state(sk, old, new);
    }
    if on & state_hooks::CHILD != 0 {
        crate::listen::on_state_child(sk, old, new);
    }
    0
}

/// `skb:kfree_skb(skb, location, reason, rx_sk)`.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn skb_kfree(ctx: RawTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    let reason = ctx.arg::<u64>(2) as u32;
    let on = KFREE_HOOKS.load() & armed(dispatcher::SKB_KFREE);
    if on & kfree_hooks::DROP != 0 {
        crate::drop::on_kfree(skb, reason);
    }
    if on & kfree_hooks::OUTCOME != 0 {
        crate::listen::on_kfree(skb, reason);
    }
    0
}

/// `tcp:tcp_send_reset(const struct sock *sk, const struct sk_buff *skb, enum sk_rst_reason)`.
/// The accept family's part is tier 1: it leaves on the tracepoint's arguments unless the
/// reset is tcp_close()'s for unread data (see accept::on_abort_close); the listen family's
/// overflow part is armed with its family.
#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn send_reset(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let skb: u64 = ctx.arg(1);
    let on = RESET_HOOKS.load() & armed(dispatcher::SEND_RESET);
    // Only loaded when the kernel's BTF has SK_RST_REASON_TCP_ABORT_ON_CLOSE (6.10+, when the
    // tracepoint got its third argument): the verifier drops this code, and its read of
    // argument 2, otherwise.
    if on & reset_hooks::ABORT_CLOSE != 0 {
        let reason = ctx.arg::<u64>(2) as u32;
        // tcp_send_active_reset() passes skb NULL (it builds its own); tcp_close() is the only
        // caller with this reason, in the closing task's context.
        if reason == RSN_ABORT_ON_CLOSE.load() && skb == 0 && sk != 0 {
            crate::accept::on_abort_close(sk);
            return 0;
        }
    }
    if on & reset_hooks::OVERFLOW != 0 {
        crate::listen::on_send_reset(sk, skb);
    }
    0
}

/// Bench instrumentation only (`diagnose` with TCPQ_BPF_STATS=1 attaches it): an empty program
/// on the same tracepoint, the floor any hook pays before doing anything.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn floor_probe(_ctx: RawTracePointContext) -> i32 {
    0
}
