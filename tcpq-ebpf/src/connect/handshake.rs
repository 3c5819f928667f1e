//! Handshakes, from `sock:inet_sock_set_state` (via `state::sock_state`): SYN_SENT starts one,
//! ESTABLISHED or CLOSE ends it.
use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use tcpq_common::kind;

use super::maps::{CONNECT_START, STATE_SCRATCH, SYN_START};
use super::record::{emit, fill_from_sk, local_port, start_record};
use super::{EADDRNOTAVAIL, ECONNABORTED, TCP_CLOSE, TCP_ESTABLISHED, TCP_SYN_SENT};
use crate::offsets::*;
use crate::shared::read::kread;
use crate::shared::sock::is_tcp;

/// `sock:inet_sock_set_state(sk, oldstate, newstate)` (via `state::sock_state`): SYN_SENT
/// starts a handshake (inside tcp_v4_connect(), before the port is chosen); SYN_SENT →
/// ESTABLISHED / CLOSE ends it.
// A BPF-to-BPF call, not inlined: each family's frame stays its own (the stack limit is
// 512 bytes per call chain, and the four inlined together exceed it).
#[inline(never)]
pub fn on_state(sk: u64, old: i32, new: i32) {
    if new == TCP_SYN_SENT {
        if is_tcp(sk) {
            start_handshake(sk);
        }
    } else if old == TCP_SYN_SENT && (new == TCP_ESTABLISHED || new == TCP_CLOSE) {
        end_handshake(sk, new == TCP_ESTABLISHED);
    }
}

/// The connect family while it is not armed (tier 1), for a handshake that ended SYN_SENT →
/// CLOSE: reported only when the socket never had a local port — tcp_v4_connect()/tcp_v6_connect()
/// set SYN_SENT, inet_hash_connect() found no free port (EADDRNOTAVAIL) and the failure path
/// set CLOSE, still inside connect(), so the current task is the connecting process.
#[inline(never)]
pub fn on_failed_handshake(sk: u64) {
    if local_port(sk) != 0 {
        return; // refused or timed out: the kernel counts it (AttemptFails), which arms us
    }
    let err: i32 = kread(sk, OFF_SK_ERR.load());
    if err > 0 {
        return;
    }
    let Some(scratch) = STATE_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot, used by `sock_state` alone (see STATE_SCRATCH).
    let ev = unsafe { &mut (*scratch).ev };
    start_record(ev, sk);
    ev.header.kind = kind::CONNECT_HANDSHAKE;
    ev.result = -EADDRNOTAVAIL;
    // SAFETY: no arguments.
    ev.header.ts_ns = unsafe { bpf_ktime_get_ns() };
    emit(ev);
}

#[inline(always)]
fn start_handshake(sk: u64) {
    let Some(scratch) = STATE_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot, used by `sock_state` alone (see STATE_SCRATCH).
    let hs = unsafe { &mut *scratch };
    start_record(&mut hs.ev, sk);
    hs.in_syscall = CONNECT_START.get_ptr(bpf_get_current_pid_tgid()).is_some() as u32;
    hs.done = 0;
    hs.syscall_ns = 0;
    // SAFETY: no arguments.
    hs.syn_ts_ns = unsafe { bpf_ktime_get_ns() };
    let _ = SYN_START.insert(sk, hs, 0);
}

#[inline(always)]
fn end_handshake(sk: u64, established: bool) {
    let Some(hs) = SYN_START.get_ptr_mut(sk) else {
        return;
    };
    // SAFETY: map value pointer for this socket; softirq and the connecting task serialize on
    // the socket lock around state changes. The record is completed in place: it is either
    // reported from here and removed, or left (done) for sys_exit_connect.
    let hs = unsafe { &mut *hs };
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let syn_ts_ns = hs.syn_ts_ns;
    let ev = &mut hs.ev;
    // tcp_v4_connect()/tcp_v6_connect() set both addresses and the remote port before
    // SYN_SENT; only the local port is chosen after it (inet_hash_connect()). Except an IPv6
    // socket connecting to a v4-mapped address: tcp_v6_connect() maps the source address only
    // after tcp_v4_connect() returned.
    if ev.saddr == [0; 16] {
        fill_from_sk(ev, sk);
    }
    ev.sport = local_port(sk);
    ev.handshake_ns = if ev.sport != 0 {
        now.saturating_sub(syn_ts_ns)
    } else {
        0
    };
    ev.result = if established {
        0
    } else {
        let err: i32 = kread(sk, OFF_SK_ERR.load());
        if err > 0 {
            -err
        } else if ev.sport == 0 {
            // Never had a local port: tcp_v4_connect()/tcp_v6_connect() set SYN_SENT, then
            // inet_hash_connect() found no free port and the failure path set CLOSE.
            -EADDRNOTAVAIL
        } else {
            -ECONNABORTED // closed by the application while connecting
        }
    };
    if hs.in_syscall != 0 {
        hs.done = 1; // sys_exit_connect reports it, with the syscall's own result
        return;
    }
    hs.ev.header.kind = kind::CONNECT_HANDSHAKE;
    hs.ev.header.ts_ns = now;
    hs.ev.syscall_ns = hs.syscall_ns;
    emit(&hs.ev);
    let _ = SYN_START.remove(sk);
}
