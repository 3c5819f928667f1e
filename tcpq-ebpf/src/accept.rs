//! Accept side: how long each connection waited in the accept queue (child ESTABLISHED →
//! accept() returning it), accept() failures by errno, and which threads sit in accept().
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use tcpq_common::{AbortKey, AbortTally, AcceptEvent, InAccept, accept as a};

use crate::{
    listen::fd_to_sk,
    offsets::*,
    read::{kread, kread_addr16, sk_netns},
};

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;
const EAGAIN: i64 = 11;
const EINTR: i64 = 4;
const ERESTARTSYS: i64 = 512;

#[map]
static ACCEPT_EVENTS: RingBuf = RingBuf::with_byte_size(512 * 1024, 0);

/// Slot 0: accept records that did not fit in the ring buffer.
#[map]
static ACCEPT_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// When each child socket was queued (by socket pointer); removed when accepted or closed.
#[map]
static ENQUEUED: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65536, 0);

/// Threads inside accept(); userspace reads it for idle acceptors.
#[map]
static IN_ACCEPT: HashMap<u64, InAccept> = HashMap::with_max_entries(16384, 0);

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
// A BPF-to-BPF call, not inlined: each family's frame stays its own (the stack limit is
// 512 bytes per call chain, and the four inlined together exceed it).
#[inline(never)]
pub fn on_state(sk: u64, old: i32, new: i32) {
    if old == TCP_SYN_RECV && new == TCP_ESTABLISHED {
        // SAFETY: no arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        let _ = ENQUEUED.insert(sk, now, 0);
    } else if new == TCP_CLOSE && ENQUEUED.get_ptr(sk).is_some() {
        // Closed before accept() took it. Look before removing: most closing sockets were never
        // queued (clients, accepted children) and a lookup takes no bucket lock.
        let _ = ENQUEUED.remove(sk);
    }
}

#[inline(always)]
fn enter(ctx: &TracePointContext) {
    // SAFETY: offset from the tracepoint's format file; `fd` is a long.
    let Ok(fd) = (unsafe { ctx.read_at::<u64>(TP_ACCEPT_FD.load() as usize) }) else {
        return;
    };
    let v = InAccept {
        // SAFETY: no arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        fd: fd as u32,
        _pad: 0,
    };
    let _ = IN_ACCEPT.insert(bpf_get_current_pid_tgid(), v, 0);
}

#[tracepoint(category = "syscalls", name = "sys_enter_accept4")]
pub fn accept_enter4(ctx: TracePointContext) -> u32 {
    enter(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_accept")]
pub fn accept_enter(ctx: TracePointContext) -> u32 {
    enter(&ctx);
    0
}

#[inline(always)]
fn exit(ctx: &TracePointContext) {
    let id = bpf_get_current_pid_tgid();
    // A thread already blocked in accept() when tcpq started has no entry: its connection is
    // still reported (listener from the child), only failures need the listening fd.
    let start = IN_ACCEPT.get_ptr(id).map(|p| {
        // SAFETY: map value pointer, copied before removal.
        unsafe { *p }
    });
    if start.is_some() {
        let _ = IN_ACCEPT.remove(id);
    }
    // SAFETY: offset from the tracepoint's format file; `ret` is a long.
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(TP_ACCEPT_RET.load() as usize) }) else {
        return;
    };
    if ret == -EAGAIN || ret == -EINTR || ret == -ERESTARTSYS {
        return; // nothing to accept (non-blocking) or interrupted: not a failure
    }
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut ev = AcceptEvent {
        kind: if ret >= 0 { a::ACCEPTED } else { a::FAILED },
        ts_ns: now,
        tgid: (id >> 32) as u32,
        result: ret as i32,
        listen_fd: start.map(|s| s.fd).unwrap_or(u32::MAX),
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        ..AcceptEvent::default()
    };
    // The local side: the listener's (failures) or the child's, which shares its address/port.
    let local = if ret >= 0 {
        fd_to_sk(ret as u64)
    } else {
        start.map(|s| fd_to_sk(s.fd as u64)).unwrap_or(0)
    };
    if local == 0 {
        return;
    }
    ev.netns = sk_netns(local);
    ev.family = kread(local, OFF_SK_FAMILY.load());
    ev.lport = kread(local, OFF_SK_NUM.load());
    if ev.family == 10 {
        ev.laddr = kread_addr16(local, OFF_SK_V6_RCV_SADDR.load());
    } else {
        let l: [u8; 4] = kread(local, OFF_SK_RCV_SADDR.load());
        ev.laddr[..4].copy_from_slice(&l);
    }
    if ret >= 0 {
        let child = local;
        if let Some(t) = ENQUEUED.get_ptr(child) {
            // SAFETY: map value pointer, read at once.
            ev.wait_ns = now.saturating_sub(unsafe { *t });
            let _ = ENQUEUED.remove(child);
        }
        let dport: u16 = kread(child, OFF_SK_DPORT.load());
        ev.rport = u16::from_be(dport);
        if ev.family == 10 {
            ev.raddr = kread_addr16(child, OFF_SK_V6_DADDR.load());
        } else {
            let r: [u8; 4] = kread(child, OFF_SK_DADDR.load());
            ev.raddr[..4].copy_from_slice(&r);
        }
    }
    match ACCEPT_EVENTS.reserve::<AcceptEvent>(0) {
        Some(mut entry) => {
            entry.write(ev);
            entry.submit(0);
        }
        None => {
            if let Some(p) = ACCEPT_LOST.get_ptr_mut(0) {
                // SAFETY: this CPU's slot.
                unsafe { *p += 1 };
            }
        }
    }
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn accept_exit4(ctx: TracePointContext) -> u32 {
    exit(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn accept_exit(ctx: TracePointContext) -> u32 {
    exit(&ctx);
    0
}
