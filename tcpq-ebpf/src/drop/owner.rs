//! Who connects each socket (SYN_SENT), for drops of packets sent from a timer.
use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid};
use tcpq_common::state_hooks;

use super::maps::{Owner, SOCK_OWNER};
use crate::offsets::*;

/// `sock:inet_sock_set_state` (via `state::sock_state`, only when the connect family is not
/// attached: its handshake records name the owner then): remember who connects (SYN_SENT, in
/// the connect() caller's context); forget on CLOSE.
// A BPF-to-BPF call, not inlined: each family's frame stays its own (the stack limit is
// 512 bytes per call chain, and the four inlined together exceed it).
#[inline(never)]
pub fn on_state(sk: u64, new: i32) {
    if new == 2 {
        let owner = Owner {
            tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
            _pad: 0,
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
        };
        let _ = SOCK_OWNER.insert(sk, owner, 0);
    } else if new == 7 && SOCK_OWNER.get_ptr(sk).is_some() {
        // Look first: server-side sockets never had an owner entry, and a lookup is lock-free.
        let _ = SOCK_OWNER.remove(sk);
    }
}

/// The process that connected `sk`, if tcpq saw it start the handshake.
#[inline(always)]
pub(super) fn owner_of(sk: u64) -> Option<(u32, [u8; 16])> {
    // The connect family's record of this very handshake first; else this family's own (the
    // live commands arm them independently; userspace clears SOCK_OWNER when it disarms it).
    if STATE_HOOKS.load() & state_hooks::CONNECT != 0
        && let Some(o) = crate::shared::owner::handshake_owner(sk)
    {
        return Some(o);
    }
    SOCK_OWNER.get_ptr(sk).map(|o| {
        // SAFETY: map value pointer, copied out at once.
        let o = unsafe { *o };
        (o.tgid, o.comm)
    })
}
