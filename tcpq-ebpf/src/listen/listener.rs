//! Raw tracepoints on the listener: SYN-ACK retransmits and overflow resets.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::macros::raw_tracepoint;
use aya_ebpf::programs::RawTracePointContext;
use tcpq_common::{ListenEvent, kind, lost};

use super::maps::LISTEN_COUNTS;
use super::queues::fill_listener;
use super::report::{bump, emit};
use super::{AF_INET, AF_INET6, TCP_LISTEN};
use crate::offsets::*;
use crate::shared::read::{kread, kread_addr16};
use crate::shared::sock::sk_addrs;

/// Fills local/remote addresses from a sock_common (a request sock: remote = client).
#[inline(always)]
fn fill_tuple_from_common(ev: &mut ListenEvent, skc: u64) {
    (ev.header.family, ev.laddr, ev.raddr) = sk_addrs(skc);
    ev.lport = kread(skc, OFF_SK_NUM.load());
    let dport: u16 = kread(skc, OFF_SK_DPORT.load());
    ev.rport = u16::from_be(dport);
}

/// `tcp:tcp_retransmit_synack(const struct sock *sk, const struct request_sock *req)`
#[raw_tracepoint(tracepoint = "tcp_retransmit_synack")]
pub fn synack_retransmit(ctx: RawTracePointContext) -> i32 {
    let _ = try_synack_retransmit(&ctx);
    0
}

fn try_synack_retransmit(ctx: &RawTracePointContext) -> Result<(), i64> {
    let sk: u64 = ctx.arg(0);
    let req: u64 = ctx.arg(1);
    if sk == 0 || req == 0 {
        return Ok(());
    }
    let mut ev = ListenEvent::default();
    // request_sock starts with `struct sock_common __req_common`.
    fill_tuple_from_common(&mut ev, req);
    let filter = FILTER_LPORT.load();
    if filter != 0 && filter != ev.lport as u32 {
        return Ok(());
    }
    fill_listener(&mut ev, sk);
    ev.header.kind = kind::SYNACK_RETRANS;
    ev.cookie = kread(sk, OFF_SK_COOKIE.load());
    // SAFETY: no arguments.
    ev.header.ts_ns = unsafe { bpf_ktime_get_ns() };
    bump(&LISTEN_COUNTS, kind::SYNACK_RETRANS as u32);
    emit(&ev, lost::SYNACK_RETRANS);
    Ok(())
}

/// `tcp:tcp_send_reset` (via `state::send_reset`): a reset sent on behalf of a listener whose
/// accept queue is full while `tcp_abort_on_overflow=1` (tcp_check_req() → embryonic_reset).
// A BPF-to-BPF call, not inlined: its frame stays its own (see state.rs).
#[inline(never)]
pub fn on_send_reset(sk: u64, skb: u64) {
    let _ = try_send_reset(sk, skb);
}

fn try_send_reset(sk: u64, skb: u64) -> Result<(), i64> {
    if sk == 0 || skb == 0 {
        return Ok(());
    }
    let state: u8 = kread(sk, OFF_SK_STATE.load());
    if state as u32 != TCP_LISTEN {
        return Ok(());
    }
    let net: u64 = kread(sk, OFF_SK_NET.load());
    let abort: u8 = kread(net, OFF_NET_ABORT_ON_OVERFLOW.load());
    if abort == 0 {
        return Ok(());
    }
    let mut ev = ListenEvent::default();
    fill_listener(&mut ev, sk);
    if ev.queue <= ev.backlog {
        return Ok(());
    }
    // The reset answers the client's packet: its source is the client.
    let head: u64 = kread(skb, OFF_SKB_HEAD.load());
    let nh: u16 = kread(skb, OFF_SKB_NETWORK_HEADER.load());
    let th: u16 = kread(skb, OFF_SKB_TRANSPORT_HEADER.load());
    let ip = head + nh as u64;
    let b0: u8 = kread(ip, 0);
    if b0 >> 4 == 6 {
        ev.header.family = AF_INET6;
        ev.raddr = kread_addr16(ip, 8);
        ev.laddr = kread_addr16(ip, 24);
    } else {
        ev.header.family = AF_INET;
        let s: [u8; 4] = kread(ip, 12);
        let d: [u8; 4] = kread(ip, 16);
        ev.raddr[..4].copy_from_slice(&s);
        ev.laddr[..4].copy_from_slice(&d);
    }
    let ports: [u8; 4] = kread(head + th as u64, 0);
    ev.rport = u16::from_be_bytes([ports[0], ports[1]]);
    ev.lport = u16::from_be_bytes([ports[2], ports[3]]);
    let filter = FILTER_LPORT.load();
    if filter != 0 && filter != ev.lport as u32 {
        return Ok(());
    }
    ev.header.kind = kind::OVERFLOW_RESET;
    ev.cookie = kread(sk, OFF_SK_COOKIE.load());
    // SAFETY: no arguments.
    ev.header.ts_ns = unsafe { bpf_ktime_get_ns() };
    bump(&LISTEN_COUNTS, kind::OVERFLOW_RESET as u32);
    emit(&ev, lost::SEND_RESET);
    Ok(())
}
