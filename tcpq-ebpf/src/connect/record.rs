//! A connect record: filled from its socket, counted by result, sent to the ring.
use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid};
use tcpq_common::{ConnectEvent, connect as c, lost};

use super::maps::{CONNECT_EVENTS, count};
use super::{AF_INET6, EADDRNOTAVAIL, ECONNREFUSED, ETIMEDOUT};
use crate::offsets::*;
use crate::shared;
use crate::shared::read::{kread, kread_addr16, sk_netns};

#[inline(always)]
fn count_result(result: i32) {
    count(match -result {
        0 => c::COUNT_OK,
        ECONNREFUSED => c::COUNT_REFUSED,
        ETIMEDOUT => c::COUNT_TIMEOUT,
        EADDRNOTAVAIL => c::COUNT_EADDRNOTAVAIL,
        _ => c::COUNT_OTHER,
    });
}

/// Counts `ev`'s result, then sends it (often from a map value: see `shared::emit`).
#[inline(always)]
pub(super) fn emit(ev: &ConnectEvent) {
    count_result(ev.result);
    shared::emit::emit(&CONNECT_EVENTS, ev, lost::CONNECT);
}

/// The local port of a connecting socket (0 before inet_hash_connect() chose one).
#[inline(always)]
pub(super) fn local_port(sk: u64) -> u16 {
    let num: u16 = kread(sk, OFF_SK_NUM.load());
    if num != 0 {
        return num;
    }
    // tcp_set_state(CLOSE) releases the port (inet_num = 0) before the tracepoint sees it;
    // inet_sport still holds it (network order).
    u16::from_be(kread(sk, OFF_INET_SPORT.load()))
}

/// Addresses and remote port of a connecting socket (the local port: `local_port`).
#[inline(always)]
pub(super) fn fill_from_sk(ev: &mut ConnectEvent, sk: u64) {
    ev.header.family = kread(sk, OFF_SK_FAMILY.load());
    let dport: u16 = kread(sk, OFF_SK_DPORT.load());
    ev.dport = u16::from_be(dport);
    if ev.header.family == AF_INET6 {
        ev.saddr = kread_addr16(sk, OFF_SK_V6_RCV_SADDR.load());
        ev.daddr = kread_addr16(sk, OFF_SK_V6_DADDR.load());
    } else {
        let s: [u8; 4] = kread(sk, OFF_SK_RCV_SADDR.load());
        let d: [u8; 4] = kread(sk, OFF_SK_DADDR.load());
        ev.saddr = [0; 16];
        ev.daddr = [0; 16];
        ev.saddr[..4].copy_from_slice(&s);
        ev.daddr[..4].copy_from_slice(&d);
    }
}

/// Fills `ev` afresh for a handshake `sk` starts in the current task's context.
#[inline(always)]
pub(super) fn start_record(ev: &mut ConnectEvent, sk: u64) {
    let id = bpf_get_current_pid_tgid();
    *ev = ConnectEvent::default();
    ev.tgid = (id >> 32) as u32;
    ev.header.netns = sk_netns(sk);
    ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    fill_from_sk(ev, sk);
}
