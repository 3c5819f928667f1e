//! Accept side: how long each connection waited in the accept queue (child ESTABLISHED →
//! accept() returning it), accept() failures by errno, and which threads sit in accept().
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
    },
    macros::{fentry, fexit, map, tracepoint},
    maps::{Array, HashMap, LruPerCpuHashMap, RingBuf},
    programs::{FEntryContext, FExitContext, TracePointContext},
};
use tcpq_common::{
    AbortKey, AbortTally, AcceptEvent, AcceptKey, AcceptTotals, ENQUEUED_SLOT_BITS, Enqueued,
    EventHeader, IN_ACCEPT_SLOTS, InAccept, SLOW_WAIT_US, kind, lost, socket_slot, thread_slot,
    wait_bucket,
};

use crate::{
    shared::sock::fd_to_sk,
    offsets::*,
    shared::read::{kread, kread_addr16, sk_netns},
    shared::emit::{count_lost, emit},
};

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_RECV: i32 = 3;
const EAGAIN: i64 = 11;
const EINTR: i64 = 4;
const ERESTARTSYS: i64 = 512;

#[map]
static ACCEPT_EVENTS: RingBuf = RingBuf::with_byte_size(512 * 1024, 0);

/// When each child socket was queued, by `socket_slot` (see `tcpq_common::Enqueued`).
#[map]
static ENQUEUED: Array<Enqueued> = Array::with_max_entries(1 << ENQUEUED_SLOT_BITS, 0);

/// Slot 0: when userspace last armed the accept family (bpf_ktime_get_ns clock); queue times
/// older than that were written before a gap in which children went unrecorded.
#[map]
static ENQUEUE_SINCE: Array<u64> = Array::with_max_entries(1, 0);

/// Threads inside accept(), by `thread_slot`; userspace reads it for idle acceptors.
#[map]
static IN_ACCEPT: Array<InAccept> = Array::with_max_entries(IN_ACCEPT_SLOTS, 0);

/// Accepts per (listener, process, CPU) while ACCEPT_AGGREGATE is set. Allocated as keys
/// appear (BPF_F_NO_PREALLOC): sized for thousands of listeners, paid for only when used.
#[map]
static ACCEPT_TOTALS: HashMap<AcceptKey, AcceptTotals> =
    HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

const BPF_F_NO_PREALLOC: u32 = 1;

/// Never written: the zeroes a new ACCEPT_TOTALS entry starts from (the value is too big for
/// the stack).
#[map]
static ZERO_TOTALS: Array<AcceptTotals> = Array::with_max_entries(1, 0);

/// Connections closed with data unread, per (namespace, local port, closing process): exact
/// counts, no ring (a server at its connection limit resets thousands a second). Per CPU, so
/// the closing CPUs never share a counter; LRU bounds it (an evicted key loses its count, and
/// 4096 keys is far more than processes × ports that do this at once).
#[map]
static ABORTS_ON_CLOSE: LruPerCpuHashMap<AbortKey, AbortTally> =
    LruPerCpuHashMap::with_max_entries(4096, 0);

/// `tcp:tcp_send_reset` (via `state::send_reset`) with SK_RST_REASON_TCP_ABORT_ON_CLOSE:
/// `__tcp_close()` found unread data in the receive queue, counted LINUX_MIB_TCPABORTONCLOSE,
/// set TCP_CLOSE and called tcp_send_active_reset(). It runs in the closing task (close(2) or
/// its exit), so the current tgid is the process that dropped the connection — for a server at
/// its connection limit, the worker that accepted it and closed it unread ("worker_connections
/// are not enough"). The local port of an accepted socket is its listener's: read from
/// `inet_sport` (network order), since tcp_set_state(TCP_CLOSE) → inet_put_port() has already
/// zeroed `inet_num`.
#[inline(never)]
pub fn on_abort_close(sk: u64) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let sport: u16 = kread(sk, OFF_INET_SPORT.load());
    let key = AbortKey {
        netns: sk_netns(sk),
        tgid,
        lport: u16::from_be(sport),
        family: kread(sk, OFF_SK_FAMILY.load()),
        _pad: 0,
    };
    if let Some(t) = ABORTS_ON_CLOSE.get_ptr_mut(&key) {
        // SAFETY: a valid per-CPU map value of this CPU; no other CPU writes it.
        unsafe { (*t).count += 1 };
        return;
    }
    let tally = AbortTally {
        count: 1,
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    let _ = ABORTS_ON_CLOSE.insert(&key, &tally, 0);
}

/// `sock:inet_sock_set_state` (via `state::sock_state`): a child going SYN_RECV → ESTABLISHED
/// is now in the accept queue (tcp_child_process() right after inet_csk_reqsk_queue_add()).
/// Nothing happens at close: a slot left behind is overwritten by the next child that maps to
/// it, and is only ever matched by its own socket address.
// A BPF-to-BPF call, not inlined: each family's frame stays its own (the stack limit is
// 512 bytes per call chain, and the four inlined together exceed it).
#[inline(never)]
pub fn on_state(sk: u64, old: i32, new: i32) {
    if old == TCP_SYN_RECV
        && new == TCP_ESTABLISHED
        && let Some(slot) = ENQUEUED.get_ptr_mut(socket_slot(sk))
    {
        // SAFETY: no arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        // SAFETY: an array slot; a racing writer of the same slot is another socket's, which
        // this socket's accept then does not match (its wait is unknown).
        unsafe {
            (*slot).sk = sk;
            (*slot).ts_ns = now;
        }
    }
}

/// How long `child` waited in the accept queue (0: unknown); its slot is released.
#[inline(always)]
fn queue_wait(child: u64, now: u64) -> u64 {
    let since = ENQUEUE_SINCE.get(0).copied().unwrap_or(0);
    let Some(slot) = ENQUEUED.get_ptr_mut(socket_slot(child)) else {
        return 0;
    };
    // SAFETY: an array slot, read and released at once.
    unsafe {
        if (*slot).sk != child || (*slot).ts_ns < since {
            return 0;
        }
        (*slot).sk = 0;
        now.saturating_sub((*slot).ts_ns).max(1)
    }
}

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

/// One accept of `child` by process `tgid`, added to its (listener, process) totals.
#[inline(always)]
fn tally(child: u64, tgid: u32) {
    let mut key = AcceptKey {
        netns: sk_netns(child),
        tgid,
        family: kread(child, OFF_SK_FAMILY.load()),
        lport: kread(child, OFF_SK_NUM.load()),
        // SAFETY: no arguments.
        cpu: unsafe { bpf_get_smp_processor_id() },
        ..AcceptKey::default()
    };
    if key.family == 10 {
        key.laddr = kread_addr16(child, OFF_SK_V6_RCV_SADDR.load());
    } else {
        let l: [u8; 4] = kread(child, OFF_SK_RCV_SADDR.load());
        key.laddr[..4].copy_from_slice(&l);
    }
    // SAFETY: no arguments.
    let wait_ns = queue_wait(child, unsafe { bpf_ktime_get_ns() });
    let totals = match ACCEPT_TOTALS.get_ptr_mut(&key) {
        Some(t) => t,
        None => {
            let Some(zero) = ZERO_TOTALS.get(0) else {
                return;
            };
            // BPF_NOEXIST: another CPU may have added it meanwhile; the lookup below finds it.
            let _ = ACCEPT_TOTALS.insert(&key, zero, 1);
            match ACCEPT_TOTALS.get_ptr_mut(&key) {
                Some(t) => t,
                None => return count_lost(lost::ACCEPT_TOTALS_FULL),
            }
        }
    };
    // SAFETY: `totals` points at the map value of this CPU's key: no other CPU writes it.
    unsafe {
        (*totals).accepts += 1;
        if wait_ns == 0 {
            (*totals).unknown_wait += 1;
            return;
        }
        let us = wait_ns / 1000;
        if us >= SLOW_WAIT_US {
            (*totals).slow += 1;
        }
        // The compiler knows the bucket is in range and drops the check; the verifier cannot
        // follow leading_zeros(): hide the value so that the bound is tested where it can see it.
        let bucket = core::hint::black_box(wait_bucket(us));
        if let Some(b) = (*totals).buckets.get_mut(bucket) {
            *b += 1;
        }
    }
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
