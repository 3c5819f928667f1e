//! SYNs retransmitted while connecting (`tcp:tcp_retransmit_skb`).
use aya_ebpf::macros::raw_tracepoint;
use aya_ebpf::programs::RawTracePointContext;
use tcpq_common::connect as c;

use super::TCP_SYN_SENT;
use super::maps::{SYN_START, count};
use crate::offsets::*;
use crate::shared::read::kread;

/// `tcp:tcp_retransmit_skb(sk, skb, …)`: a retransmitted SYN while connecting.
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn connect_retrans(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let state: u8 = kread(sk, OFF_SK_STATE.load());
    if state as i32 != TCP_SYN_SENT {
        return 0;
    }
    if let Some(hs) = SYN_START.get_ptr_mut(sk) {
        // SAFETY: map value pointer for this socket.
        unsafe { (*hs).ev.syn_retrans = (*hs).ev.syn_retrans.saturating_add(1) };
    }
    count(c::COUNT_SYN_RETRANS);
    0
}
