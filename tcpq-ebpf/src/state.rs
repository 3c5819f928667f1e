//! One program on `sock:inet_sock_set_state` for every family that follows socket states.
//! The tracepoint fires ~10 times per connection (both ends): four programs there cost four
//! program runs each time, one dispatcher costs one. Which families it serves is the
//! read-only knob STATE_HOOKS, set before load: the verifier drops the code of the others.
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use tcpq_common::state_hooks;

use crate::offsets::STATE_HOOKS;

/// `sock:inet_sock_set_state(sk, oldstate, newstate)`.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn sock_state(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let hooks = STATE_HOOKS.load();
    if hooks & state_hooks::CONNECT != 0 {
        crate::connect::on_state(sk, old, new);
    } else if hooks & state_hooks::OWNER != 0 {
        // The connect family's handshake records name the owner when it runs.
        crate::drop::on_state(sk, new);
    }
    if hooks & state_hooks::ENQUEUE != 0 {
        crate::accept::on_state(sk, old, new);
    }
    if hooks & state_hooks::CHILD != 0 {
        crate::listen::on_state_child(sk, old, new);
    }
    0
}

/// Bench instrumentation only (`diagnose` with TCPQ_BPF_STATS=1 attaches it): an empty program
/// on the same tracepoint, the floor any hook pays before doing anything.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn floor_probe(_ctx: RawTracePointContext) -> i32 {
    0
}
