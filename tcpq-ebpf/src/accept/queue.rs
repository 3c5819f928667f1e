//! When each child entered its listener's accept queue, and how long it waited there.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use tcpq_common::socket_slot;

use super::maps::{ENQUEUE_SINCE, ENQUEUED};
use super::{TCP_ESTABLISHED, TCP_SYN_RECV};

/// `sock:inet_sock_set_state` (via `state::sock_state`): a child going SYN_RECV → ESTABLISHED
/// is now in the accept queue (tcp_child_process() right after inet_csk_reqsk_queue_add()).
/// Nothing happens at close: a slot left behind is overwritten by the next child that maps to
/// it, and is only ever matched by its own socket address.
// A BPF-to-BPF call, not inlined: each family's frame stays its own (the stack limit is
// 512 bytes per call chain, and the four inlined together exceed it).
#[inline(never)]
pub fn on_state(sk: u64, old: i32, new: i32) {
    if old == TCP_SYN_RECV
        && new == TCP_ESTABLISHED
        && let Some(slot) = ENQUEUED.get_ptr_mut(socket_slot(sk))
    {
        // SAFETY: no arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        // SAFETY: an array slot; a racing writer of the same slot is another socket's, which
        // this socket's accept then does not match (its wait is unknown).
        unsafe {
            (*slot).sk = sk;
            (*slot).ts_ns = now;
        }
    }
}

/// How long `child` waited in the accept queue (0: unknown); its slot is released.
#[inline(always)]
pub(super) fn queue_wait(child: u64, now: u64) -> u64 {
    let since = ENQUEUE_SINCE.get(0).copied().unwrap_or(0);
    let Some(slot) = ENQUEUED.get_ptr_mut(socket_slot(child)) else {
        return 0;
    };
    // SAFETY: an array slot, read and released at once.
    unsafe {
        if (*slot).sk != child || (*slot).ts_ns < since {
            return 0;
        }
        (*slot).sk = 0;
        now.saturating_sub((*slot).ts_ns).max(1)
    }
}
