//! A listener's queues as the kernel tests them, and the kernel's refusal rules.
use tcpq_common::ListenEvent;

use crate::offsets::*;
use crate::shared::read::{kread, sk_netns};

/// The kernel cannot refuse this packet unless `margin` more connections reach the listener's
/// queues (from other CPUs) between this look and its own test a few microseconds later, with
/// margin = max(NEAR_MARGIN, backlog / 2): tcp_conn_request() refuses a SYN only when the SYN
/// queue (cookies) or the accept queue is full, tcp_v4_syn_recv_sock() an ACK only when the
/// accept queue is. Only with tcp_syncookies=1: with 2 every SYN gets a cookie, with 0 the
/// tcp_max_syn_backlog rule may drop a SYN well below the backlog. NEAR_MARGIN 0 turns it off.
#[inline(always)]
pub(super) fn far_from_limits(ev: &ListenEvent, syncookies: u8) -> bool {
    let min = NEAR_MARGIN.load();
    if min == 0 || syncookies != 1 {
        return false;
    }
    let margin = min.max(ev.backlog / 2);
    ev.queue.saturating_add(margin) < ev.backlog && ev.synq.saturating_add(margin) < ev.backlog
}

/// Listener-side state shared by every hook that reports on a listening socket.
#[inline(always)]
pub(super) fn fill_listener(ev: &mut ListenEvent, sk: u64) {
    ev.header.netns = sk_netns(sk);
    fill_queues(ev, sk);
}

/// The listener's accept queue, its limit and the SYN queue.
#[inline(always)]
pub(super) fn fill_queues(ev: &mut ListenEvent, sk: u64) {
    ev.queue = kread(sk, OFF_SK_ACK_BACKLOG.load());
    ev.backlog = kread(sk, OFF_SK_MAX_ACK_BACKLOG.load());
    ev.synq = kread(sk, OFF_ICSK_QLEN.load());
}

/// inet_csk_reqsk_queue_is_full(): `qlen > backlog` (6.12+), `>=` before.
#[inline(always)]
pub(super) fn reqq_full(ev: &ListenEvent) -> bool {
    reqq_full_at(ev.synq, ev.backlog)
}

#[inline(always)]
pub(super) fn reqq_full_at(synq: u32, backlog: u32) -> bool {
    if REQQ_FULL_GE.load() != 0 {
        synq >= backlog
    } else {
        synq > backlog
    }
}

/// The listener's `sk_drops` (tcp_listendrop() bumps it for every listen drop), or 0 when
/// OFF_SK_DROPS is not set (kernels with SKB_DROP_REASON_TCP_LISTEN_OVERFLOW: not needed).
/// On 6.18 sk_drops_inc() counts in `sk_drop_counters` when a protocol set one (UDP); TCP
/// sets none, so sk_drops would still be the counter there.
#[inline(always)]
pub(super) fn listen_drops(sk: u64) -> u32 {
    let off = OFF_SK_DROPS.load();
    if off == 0 { 0 } else { kread(sk, off) }
}

/// tcp_conn_request(): `max_syn_backlog - inet_csk_reqsk_queue_len(sk) < (max_syn_backlog >> 2)`.
#[inline(always)]
pub(super) fn over_max_syn_backlog(synq: u32, max_syn_backlog: u32) -> bool {
    max_syn_backlog != 0 && (max_syn_backlog as i64 - synq as i64) < (max_syn_backlog >> 2) as i64
}
