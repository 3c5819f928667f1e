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
use aya_ebpf::{
    macros::map,
    macros::raw_tracepoint,
    maps::{Array, PerCpuArray},
    programs::RawTracePointContext,
};
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

/// 1 while `skb_kfree` runs its drop part on this CPU. The kernel skips a raw tracepoint
/// program's run when that program is already running on the CPU (__bpf_trace_run(): the
/// program's per-CPU `active` count; counted in its `recursion_misses`) — a softirq's drop
/// interrupting `skb_kfree` while it handles a drop in process context. `drop_kfree_nested` has
/// a guard of its own, so it runs for exactly those calls.
#[map]
static KFREE_BUSY: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Runs of `skb_kfree` the kernel skipped that `drop_kfree_nested` did in its place (the drop
/// part, with no listen part armed): userspace takes them out of the missed runs it reports.
#[map]
static RESCUED_RUNS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `skb:kfree_skb(skb, location, reason, rx_sk)`.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn skb_kfree(ctx: RawTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    let reason = ctx.arg::<u64>(2) as u32;
    let on = KFREE_HOOKS.load() & armed(dispatcher::SKB_KFREE);
    if on & kfree_hooks::DROP != 0 {
        match KFREE_BUSY.get_ptr_mut(0) {
            // SAFETY: this CPU's slot; only this program writes it (the nested one reads it).
            Some(b) if unsafe { *b } == 0 => {
                // SAFETY: as above.
                unsafe { *b = 1 };
                crate::drop::on_kfree(skb, reason, crate::drop::SCRATCH_OUTER);
                // SAFETY: as above.
                unsafe { *b = 0 };
            }
            // Running inside its own run on this CPU: the kernels tcpq knows (6.1–6.18) skip
            // such a run (__bpf_trace_run()); on one that did not, drop_kfree_nested does this
            // call — not both, and not in the record the outer run is filling.
            Some(_) => {}
            None => crate::drop::on_kfree(skb, reason, crate::drop::SCRATCH_OUTER),
        }
    }
    if on & kfree_hooks::OUTCOME != 0 {
        crate::listen::on_kfree(skb, reason);
    }
    0
}

/// The drop part of `skb_kfree` for the calls the kernel skipped it for (see KFREE_BUSY): a
/// second program on `skb:kfree_skb` that leaves at once unless `skb_kfree` is running on this
/// CPU now — one array read per freed packet, and the packet's own record otherwise.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn drop_kfree_nested(ctx: RawTracePointContext) -> i32 {
    if KFREE_BUSY.get(0).is_none_or(|b| *b == 0) {
        return 0;
    }
    let on = KFREE_HOOKS.load() & armed(dispatcher::SKB_KFREE);
    if on & kfree_hooks::DROP == 0 {
        return 0;
    }
    let skb: u64 = ctx.arg(0);
    let reason = ctx.arg::<u64>(2) as u32;
    // Its own scratch record: the outer run is using the other one.
    crate::drop::on_kfree(skb, reason, crate::drop::SCRATCH_NESTED);
    // The skipped run's listen part (final-ACK outcomes) is not redone here: such a run stays
    // counted as missed.
    if on & kfree_hooks::OUTCOME == 0
        && let Some(n) = RESCUED_RUNS.get_ptr_mut(0)
    {
        // SAFETY: this CPU's slot, written by this program alone, which does not nest.
        unsafe { *n += 1 };
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
