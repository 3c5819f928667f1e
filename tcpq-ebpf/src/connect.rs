//! Outbound connects: every connect() outcome with its destination, source port, result,
//! time in the syscall (the port search is in there: inet_hash_connect()), handshake latency
//! and SYN retransmits. Handshake state is keyed by socket pointer and deleted when the
//! handshake ends (libbpf-tools tcpconnlat style); LRU maps bound what is never cleaned.
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
    },
    macros::{fentry, fexit, map, raw_tracepoint, tracepoint},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::{FEntryContext, FExitContext, RawTracePointContext, TracePointContext},
};
use tcpq_common::{ConnectEvent, EventHeader, connect as c, kind, lost};

use crate::{
    shared::sock::{fd_to_sk, is_tcp},
    offsets::*,
    shared::read::{kread, kread_addr16, sk_netns},
    shared,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
const EINPROGRESS: i64 = 115;
const EALREADY: i64 = 114;
const EISCONN: i64 = 106;
const ECONNREFUSED: i32 = 111;
const ETIMEDOUT: i32 = 110;
const EADDRNOTAVAIL: i32 = 99;
const ECONNABORTED: i32 = 103;

#[map]
static CONNECT_EVENTS: RingBuf = RingBuf::with_byte_size(512 * 1024, 0);

#[map]
static CONNECT_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(c::COUNT_SLOTS, 0);

/// A connect() syscall in progress, by thread.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnStart {
    pub ts_ns: u64,
    pub fd: u64,
    pub family: u16,
    pub dport: u16,
    pub _pad: u32,
    pub daddr: [u8; 16],
}

#[map]
static CONNECT_START: LruHashMap<u64, ConnStart> = LruHashMap::with_max_entries(16384, 0);

/// A handshake in progress, by socket pointer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Handshake {
    pub syn_ts_ns: u64,
    pub syscall_ns: u64,
    /// 1 while the connect() that started it has not returned.
    pub in_syscall: u32,
    /// 1 when the handshake ended while still inside that connect().
    pub done: u32,
    pub ev: ConnectEvent,
}

#[map]
pub(crate) static SYN_START: LruHashMap<u64, Handshake> = LruHashMap::with_max_entries(65536, 0);

/// Where `sock_state` builds a handshake record or a failure before copying it into SYN_START or
/// the ring: not on the stack, which kernels before 6.13 (no private stacks) limit to 512 bytes
/// per call chain — with the record built there, 6.1's verifier refused the whole family
/// ("combined stack size of 3 calls is 544"). One slot per CPU is enough: `sock_state` does not
/// nest on a CPU (a raw tracepoint program that fires inside itself is skipped,
/// bpf_prog_get_recursion_context()), and nothing else writes it.
#[map]
static STATE_SCRATCH: PerCpuArray<Handshake> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn count(slot: u32) {
    if let Some(p) = CONNECT_COUNTS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot.
        unsafe { *p += 1 };
    }
}

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
fn emit(ev: &ConnectEvent) {
    count_result(ev.result);
    shared::emit::emit(&CONNECT_EVENTS, ev, lost::CONNECT);
}

/// The local port of a connecting socket (0 before inet_hash_connect() chose one).
#[inline(always)]
fn local_port(sk: u64) -> u16 {
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
fn fill_from_sk(ev: &mut ConnectEvent, sk: u64) {
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

/// Fills `ev` afresh for a handshake `sk` starts in the current task's context.
#[inline(always)]
fn start_record(ev: &mut ConnectEvent, sk: u64) {
    let id = bpf_get_current_pid_tgid();
    *ev = ConnectEvent::default();
    ev.tgid = (id >> 32) as u32;
    ev.header.netns = sk_netns(sk);
    ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    fill_from_sk(ev, sk);
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
