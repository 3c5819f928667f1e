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
use tcpq_common::{dispatcher, kfree_hooks, state_hooks};

use crate::offsets::{KFREE_HOOKS, STATE_HOOKS};

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

/// Bench instrumentation only (`diagnose` with TCPQ_BPF_STATS=1 attaches it): an empty program
/// on the same tracepoint, the floor any hook pays before doing anything.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn floor_probe(_ctx: RawTracePointContext) -> i32 {
    0
}
