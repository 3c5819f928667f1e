//! connect() entry and exit: the destination, the time in the syscall and its result
//! (syscall tracepoints, or the fentry/fexit backend on `__sys_connect`).
use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
};
use aya_ebpf::macros::{fentry, fexit, tracepoint};
use aya_ebpf::programs::{FEntryContext, FExitContext, TracePointContext};
use tcpq_common::{ConnectEvent, EventHeader, kind};

use super::maps::{CONNECT_START, ConnStart, SYN_START};
use super::record::emit;
use super::{AF_INET, AF_INET6, EALREADY, EINPROGRESS, EISCONN};
use crate::offsets::*;
use crate::shared::read::{kread, sk_netns};
use crate::shared::sock::{fd_to_sk, is_tcp};

#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from the tracepoint's format file; fields are 8-byte longs/pointers.
    let fd = unsafe { ctx.read_at::<u64>(TP_CONNECT_FD.load() as usize) };
    // SAFETY: as above.
    let uaddr = unsafe { ctx.read_at::<u64>(TP_CONNECT_ADDR.load() as usize) };
    if let (Ok(fd), Ok(uaddr)) = (fd, uaddr) {
        let _ = connect_start(fd, uaddr);
    }
    0
}

/// fentry backend: `int __sys_connect(int fd, struct sockaddr __user *uservaddr, int
/// addrlen)` (net/socket.c), the body of connect(2): the same arguments as sys_enter_connect
/// without a syscall tracepoint (which puts every task on the syscall slow path).
#[fentry(function = "__sys_connect")]
pub fn connect_fentry(ctx: FEntryContext) -> u32 {
    let _ = connect_start(ctx.arg::<i32>(0) as u32 as u64, ctx.arg::<u64>(1));
    0
}

/// fexit backend: `__sys_connect`'s return value is connect(2)'s. Not a kretprobe: those lose
/// the returns of calls that block (a blocking connect waits for its handshake) once
/// max(10, 2 × CPUs) threads are inside.
#[fexit(function = "__sys_connect")]
pub fn connect_fexit(ctx: FExitContext) -> u32 {
    if let Ok(ret) = ctx.ret::<i32>() {
        let _ = connect_end(ret as i64);
    }
    0
}

/// connect(fd, uaddr) starting in the current thread: its destination and start time.
#[inline(always)]
fn connect_start(fd: u64, uaddr: u64) -> Result<(), i64> {
    if uaddr == 0 {
        return Ok(());
    }
    // SAFETY: user memory read through the helper, which fails cleanly.
    let family: u16 = unsafe { bpf_probe_read_user(uaddr as *const u16) }?;
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }
    let sk = fd_to_sk(fd);
    if sk == 0 || !is_tcp(sk) {
        return Ok(());
    }
    // SAFETY: as above.
    let port: u16 = unsafe { bpf_probe_read_user((uaddr + 2) as *const u16) }?;
    let mut start = ConnStart {
        // SAFETY: no arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        fd,
        family,
        dport: u16::from_be(port),
        _pad: 0,
        daddr: [0; 16],
    };
    if family == AF_INET {
        // SAFETY: as above.
        let a: [u8; 4] = unsafe { bpf_probe_read_user((uaddr + 4) as *const [u8; 4]) }?;
        start.daddr[..4].copy_from_slice(&a);
    } else {
        // SAFETY: as above.
        start.daddr = unsafe { bpf_probe_read_user((uaddr + 8) as *const [u8; 16]) }?;
    }
    CONNECT_START.insert(bpf_get_current_pid_tgid(), start, 0)?;
    Ok(())
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from the tracepoint's format file; `ret` is a long.
    if let Ok(ret) = unsafe { ctx.read_at::<i64>(TP_CONNECT_RET.load() as usize) } {
        let _ = connect_end(ret);
    }
    0
}

/// connect() returning `ret` in the current thread.
#[inline(always)]
fn connect_end(ret: i64) -> Result<(), i64> {
    let id = bpf_get_current_pid_tgid();
    let Some(start) = CONNECT_START.get_ptr(id) else {
        return Ok(());
    };
    // SAFETY: map value pointer valid until removed below; copied out first.
    let start = unsafe { *start };
    let _ = CONNECT_START.remove(id);
    if ret == -EALREADY || ret == -EISCONN {
        return Ok(()); // a re-check of an attempt already in flight, not a new connect
    }
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let dur = now.saturating_sub(start.ts_ns);
    let sk = fd_to_sk(start.fd);
    if let Some(hs) = SYN_START.get_ptr_mut(sk) {
        // SAFETY: map value pointer; this thread owns the connect in flight.
        let hs = unsafe { &mut *hs };
        if hs.done == 0 {
            // Non-blocking (or interrupted): the handshake reports when it ends.
            hs.in_syscall = 0;
            hs.syscall_ns = dur;
            return Ok(());
        }
        let mut ev = hs.ev;
        ev.header.ts_ns = now;
        ev.syscall_ns = dur;
        if ret == -EINPROGRESS {
            // Non-blocking, but the handshake already ended inside the call (loopback).
            ev.header.kind = kind::CONNECT_HANDSHAKE;
        } else {
            ev.header.kind = kind::CONNECT_SYSCALL;
            ev.result = ret as i32;
        }
        let _ = SYN_START.remove(sk);
        emit(&ev);
        return Ok(());
    }
    if ret == -EINPROGRESS {
        return Ok(());
    }
    // Failed before a handshake was tracked (e.g. connect() on a socket tcpq never saw go to
    // SYN_SENT), or succeeded without one: report the syscall alone.
    let mut ev = ConnectEvent {
        header: EventHeader {
            kind: kind::CONNECT_SYSCALL,
            family: start.family,
            ts_ns: now,
            ..EventHeader::default()
        },
        syscall_ns: dur,
        tgid: (id >> 32) as u32,
        result: ret as i32,
        dport: start.dport,
        daddr: start.daddr,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        ..ConnectEvent::default()
    };
    if sk != 0 {
        ev.header.netns = sk_netns(sk);
        ev.sport = kread(sk, OFF_SK_NUM.load());
    }
    emit(&ev);
    Ok(())
}
