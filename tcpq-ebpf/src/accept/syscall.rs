//! accept()/accept4() entry and exit (syscall tracepoints, or the fentry/fexit backend on
//! `__sys_accept4`): the threads inside, and a record per accept or failure.
use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use aya_ebpf::macros::{fentry, fexit, tracepoint};
use aya_ebpf::programs::{FEntryContext, FExitContext, TracePointContext};
use tcpq_common::{AcceptEvent, EventHeader, kind, lost, thread_slot};

use super::maps::{ACCEPT_EVENTS, IN_ACCEPT};
use super::queue::queue_wait;
use super::totals::tally;
use super::{EAGAIN, EINTR, ERESTARTSYS};
use crate::offsets::*;
use crate::shared::emit::emit;
use crate::shared::read::{kread, kread_addr16, sk_netns};
use crate::shared::sock::fd_to_sk;

/// A thread entering accept() on listening descriptor `fd`.
#[inline(always)]
fn enter(fd: u64) {
    let id = bpf_get_current_pid_tgid();
    if let Some(slot) = IN_ACCEPT.get_ptr_mut(thread_slot(id as u32)) {
        // SAFETY: an array slot; another thread sharing it (ids that collide) overwrites it
        // and this one's exit then finds someone else's id (its listening fd unknown).
        unsafe {
            (*slot).pid_tgid = id;
            // SAFETY: no arguments.
            (*slot).ts_ns = bpf_ktime_get_ns();
            (*slot).fd = fd as u32;
        }
    }
}

/// The `fd` argument of sys_enter_accept{,4}.
#[inline(always)]
fn tp_fd(ctx: &TracePointContext) -> Option<u64> {
    // SAFETY: offset from the tracepoint's format file; `fd` is a long.
    unsafe { ctx.read_at::<u64>(TP_ACCEPT_FD.load() as usize) }.ok()
}

#[tracepoint(category = "syscalls", name = "sys_enter_accept4")]
pub fn accept_enter4(ctx: TracePointContext) -> u32 {
    if let Some(fd) = tp_fd(&ctx) {
        enter(fd);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_accept")]
pub fn accept_enter(ctx: TracePointContext) -> u32 {
    if let Some(fd) = tp_fd(&ctx) {
        enter(fd);
    }
    0
}

/// fentry backend: `int __sys_accept4(int fd, struct sockaddr __user *, int __user *, int
/// flags)` (net/socket.c) is what accept(2) and accept4(2) both call, so one program replaces
/// both syscall tracepoints — and no task is put on the syscall slow path (a syscall
/// tracepoint attached does that to every task, whatever it calls).
#[fentry(function = "__sys_accept4")]
pub fn accept_fentry(ctx: FEntryContext) -> u32 {
    enter(ctx.arg::<i32>(0) as u32 as u64);
    0
}

/// fexit backend of the accept results: `__sys_accept4`'s return value is the syscall's
/// (the new descriptor or -errno), read after the call like sys_exit_accept4's `ret`. Not a
/// kretprobe: those lose the returns of calls that block once max(10, 2 × CPUs) threads wait
/// in them (every php-fpm child blocks in accept()).
#[fexit(function = "__sys_accept4")]
pub fn accept_fexit(ctx: FExitContext) -> u32 {
    if let Ok(ret) = ctx.ret::<i32>() {
        exit(ret as i64);
    }
    0
}

/// accept() returning `ret` (a descriptor or -errno) in the current thread.
#[inline(always)]
fn exit(ret: i64) {
    let id = bpf_get_current_pid_tgid();
    // A thread already blocked in accept() when tcpq started has no slot: its connection is
    // still reported (listener from the child), only failures need the listening fd.
    let mut listen_fd = u32::MAX;
    if let Some(slot) = IN_ACCEPT.get_ptr_mut(thread_slot(id as u32)) {
        // SAFETY: an array slot, read and released at once.
        unsafe {
            if (*slot).pid_tgid == id {
                listen_fd = (*slot).fd;
                (*slot).pid_tgid = 0;
            }
        }
    }
    if ret == -EAGAIN || ret == -EINTR || ret == -ERESTARTSYS {
        return; // nothing to accept (non-blocking) or interrupted: not a failure
    }
    if ret >= 0 && ACCEPT_AGGREGATE.load() != 0 {
        let child = fd_to_sk(ret as u64);
        if child != 0 {
            tally(child, (id >> 32) as u32);
        }
        return;
    }
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut ev = AcceptEvent {
        header: EventHeader {
            kind: if ret >= 0 {
                kind::ACCEPTED
            } else {
                kind::ACCEPT_FAILED
            },
            ts_ns: now,
            ..EventHeader::default()
        },
        tgid: (id >> 32) as u32,
        result: ret as i32,
        listen_fd,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        ..AcceptEvent::default()
    };
    // The local side: the listener's (failures) or the child's, which shares its address/port.
    let local = if ret >= 0 {
        fd_to_sk(ret as u64)
    } else if listen_fd != u32::MAX {
        fd_to_sk(listen_fd as u64)
    } else {
        0
    };
    if local == 0 {
        return;
    }
    ev.header.netns = sk_netns(local);
    ev.header.family = kread(local, OFF_SK_FAMILY.load());
    ev.lport = kread(local, OFF_SK_NUM.load());
    if ev.header.family == 10 {
        ev.laddr = kread_addr16(local, OFF_SK_V6_RCV_SADDR.load());
    } else {
        let l: [u8; 4] = kread(local, OFF_SK_RCV_SADDR.load());
        ev.laddr[..4].copy_from_slice(&l);
    }
    if ret >= 0 {
        let child = local;
        ev.wait_ns = queue_wait(child, now);
        let dport: u16 = kread(child, OFF_SK_DPORT.load());
        ev.rport = u16::from_be(dport);
        if ev.header.family == 10 {
            ev.raddr = kread_addr16(child, OFF_SK_V6_DADDR.load());
        } else {
            let r: [u8; 4] = kread(child, OFF_SK_DADDR.load());
            ev.raddr[..4].copy_from_slice(&r);
        }
    }
    emit(&ACCEPT_EVENTS, &ev, lost::ACCEPT);
}

/// The `ret` field of sys_exit_accept{,4}.
#[inline(always)]
fn tp_ret(ctx: &TracePointContext) -> Option<i64> {
    // SAFETY: offset from the tracepoint's format file; `ret` is a long.
    unsafe { ctx.read_at::<i64>(TP_ACCEPT_RET.load() as usize) }.ok()
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn accept_exit4(ctx: TracePointContext) -> u32 {
    if let Some(ret) = tp_ret(&ctx) {
        exit(ret);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn accept_exit(ctx: TracePointContext) -> u32 {
    if let Some(ret) = tp_ret(&ctx) {
        exit(ret);
    }
    0
}
