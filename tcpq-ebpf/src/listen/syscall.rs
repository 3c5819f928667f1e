//! Syscall hooks: the listen() argument and the accept rate.
use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use aya_ebpf::macros::{fentry, fexit, kprobe, tracepoint};
use aya_ebpf::programs::{FEntryContext, FExitContext, ProbeContext, TracePointContext};
use tcpq_common::{EventHeader, ListenCallEvent, kind, lost};

use super::AF_INET6;
use super::maps::{ACCEPTS_BY_TGID, LISTEN_COUNTS, LISTEN_EVENTS};
use super::report::bump;
use crate::offsets::*;
use crate::shared;
use crate::shared::read::{kread, kread_addr16};
use crate::shared::sock::{current_netns, fd_to_sk};

#[tracepoint(category = "syscalls", name = "sys_enter_listen")]
pub fn sys_enter_listen(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets come from this tracepoint's format file; fields are 8-byte longs.
    let fd = unsafe { ctx.read_at::<u64>(TP_LISTEN_FD.load() as usize) };
    // SAFETY: as above.
    let backlog = unsafe { ctx.read_at::<u64>(TP_LISTEN_BACKLOG.load() as usize) };
    if let (Ok(fd), Ok(backlog)) = (fd, backlog) {
        listen_call(fd, backlog as i32);
    }
    0
}

/// fentry backend: `int __sys_listen(int fd, int backlog)` (net/socket.c), the body of
/// listen(2), without a syscall tracepoint (which puts every task on the syscall slow path).
#[fentry(function = "__sys_listen")]
pub fn listen_fentry(ctx: FEntryContext) -> u32 {
    listen_call(ctx.arg::<i32>(0) as u32 as u64, ctx.arg::<i32>(1));
    0
}

/// kprobe backend of the same (kernels with kprobes but no fentry): only the entry is needed,
/// so no kretprobe and its lost returns.
#[kprobe(function = "__sys_listen")]
pub fn listen_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(fd), Some(backlog)) = (ctx.arg::<i32>(0), ctx.arg::<i32>(1)) {
        listen_call(fd as u32 as u64, backlog);
    }
    0
}

/// listen(fd, backlog) called by the current task: one record with the listener's address.
#[inline(always)]
fn listen_call(fd: u64, backlog: i32) {
    let mut ev = ListenCallEvent {
        header: EventHeader {
            kind: kind::LISTEN_CALL,
            family: 0,
            netns: current_netns(),
            // SAFETY: no arguments.
            ts_ns: unsafe { bpf_ktime_get_ns() },
        },
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        fd: fd as u32,
        backlog,
        lport: 0,
        _pad0: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        laddr: [0; 16],
    };
    let sk = fd_to_sk(fd);
    if sk != 0 {
        ev.header.family = kread(sk, OFF_SK_FAMILY.load());
        ev.lport = kread(sk, OFF_SK_NUM.load());
        if ev.header.family == AF_INET6 {
            ev.laddr = kread_addr16(sk, OFF_SK_V6_RCV_SADDR.load());
        } else {
            let l: [u8; 4] = kread(sk, OFF_SK_RCV_SADDR.load());
            ev.laddr[..4].copy_from_slice(&l);
        }
    }
    bump(&LISTEN_COUNTS, kind::LISTEN_CALL as u32);
    shared::emit::emit(&LISTEN_EVENTS, &ev, lost::SYS_ENTER_LISTEN);
}

/// An accept() that returned `ret`: counted per process when it succeeded.
#[inline(always)]
fn count_accept(ret: i64) {
    if ret < 0 {
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    match ACCEPTS_BY_TGID.get_ptr_mut(tgid) {
        Some(p) => {
            // SAFETY: p points into the map value; a lost increment under a race is acceptable
            // for a rate used only to tell "accepting" from "not accepting".
            unsafe { *p += 1 };
        }
        None => {
            let _ = ACCEPTS_BY_TGID.insert(tgid, 1, 0);
        }
    }
}

/// The `ret` field of sys_exit_accept{,4}.
#[inline(always)]
fn tp_accept_ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: offset from the tracepoint's format file; `ret` is a long.
    unsafe { ctx.read_at::<i64>(TP_ACCEPT_RET.load() as usize) }.unwrap_or(-1)
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    count_accept(tp_accept_ret(&ctx));
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    count_accept(tp_accept_ret(&ctx));
    0
}

/// fexit backend: `__sys_accept4` serves accept(2) and accept4(2) (see accept::accept_fexit).
#[fexit(function = "__sys_accept4")]
pub fn accept_count_fexit(ctx: FExitContext) -> u32 {
    count_accept(ctx.ret::<i32>().map_or(-1, |r| r as i64));
    0
}
