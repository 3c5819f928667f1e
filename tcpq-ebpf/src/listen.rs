//! Listen path: connections the kernel refuses (or answers with a syncookie) at a listening
//! socket, SYN-ACK retransmits, overflow resets, and the listen()/accept() calls that explain them.
//!
//! The drop decision is made in `tcp_conn_request()` (SYN) and `tcp_v4_syn_recv_sock()` (final
//! ACK), neither of which is hookable here (no kprobes, fentry refused). The cgroup_skb ingress
//! hook runs just before them in `tcp_filter()` with `skb->sk` set to the listener, so it sees the
//! same queue state the kernel is about to test and applies the kernel's own rules.
use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, bpf_sock},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns,
        generated::{bpf_get_socket_cookie, bpf_skc_to_tcp_sock},
    },
    macros::{cgroup_skb, map, raw_tracepoint, tracepoint},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::{RawTracePointContext, SkBuffContext, TracePointContext},
};
use tcpq_common::{ListenCallEvent, ListenEvent, hook, kind};

use crate::{
    offsets::*,
    read::{kread, kread_addr16, sk_netns},
};

const TCP_LISTEN: u32 = 10;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u8 = 6;
const TH_FIN: u8 = 0x01;
const TH_SYN: u8 = 0x02;
const TH_RST: u8 = 0x04;
const TH_ACK: u8 = 0x10;

#[map]
static LISTEN_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Exact per-kind counts, incremented before the ring buffer is tried.
#[map]
static LISTEN_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(kind::COUNT_SLOTS, 0);

/// Ring buffer records that did not fit, per hook.
#[map]
static LOST_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(hook::SLOTS, 0);

/// Successful accept()/accept4() calls per process, for "is the application accepting at all".
#[map]
static ACCEPTS_BY_TGID: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
fn bump(map: &PerCpuArray<u64>, slot: u32) {
    if let Some(p) = map.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot owned by this CPU while the program runs (migration disabled).
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn emit(ev: &ListenEvent, hook_slot: u32) {
    match LISTEN_EVENTS.reserve::<ListenEvent>(0) {
        Some(mut entry) => {
            entry.write(*ev);
            entry.submit(0);
        }
        None => bump(&LOST_EVENTS, hook_slot),
    }
}

/// Listener-side state shared by every hook that reports on a listening socket.
#[inline(always)]
fn fill_listener(ev: &mut ListenEvent, sk: u64) {
    ev.netns = sk_netns(sk);
    ev.queue = kread(sk, OFF_SK_ACK_BACKLOG.load());
    ev.backlog = kread(sk, OFF_SK_MAX_ACK_BACKLOG.load());
    ev.synq = kread(sk, OFF_ICSK_QLEN.load());
}

// ---------------------------------------------------------------------------------------------
// cgroup_skb ingress: SYN / ACK / SYNQ / COOKIE

#[cgroup_skb(ingress)]
pub fn listen_ingress(ctx: SkBuffContext) -> i32 {
    let _ = try_listen_ingress(&ctx);
    1 // always allow: tcpq observes, it never drops
}

fn try_listen_ingress(ctx: &SkBuffContext) -> Result<(), i64> {
    // SAFETY: ctx.skb.skb is the program's __sk_buff context pointer.
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: reading the `sk` member of the context; the verifier rewrites this access.
    let sk: *mut bpf_sock = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return Ok(());
    }
    // SAFETY: `state` is readable on any sock_common pointer (bpf_sock_common_is_valid_access).
    if unsafe { (*sk).state } != TCP_LISTEN {
        return Ok(()); // the common case: not a listener, leave as fast as possible
    }

    // Packet data starts at the network header for cgroup_skb.
    let b0: u8 = ctx.load(0)?;
    let mut ev = ListenEvent::default();
    let l4: usize;
    match b0 >> 4 {
        4 => {
            let proto: u8 = ctx.load(9)?;
            if proto != IPPROTO_TCP {
                return Ok(());
            }
            l4 = ((b0 & 0x0f) as usize) * 4;
            ev.family = AF_INET;
            let src: [u8; 4] = ctx.load(12)?;
            let dst: [u8; 4] = ctx.load(16)?;
            ev.raddr[..4].copy_from_slice(&src);
            ev.laddr[..4].copy_from_slice(&dst);
        }
        6 => {
            let next: u8 = ctx.load(6)?;
            if next != IPPROTO_TCP {
                return Ok(()); // extension headers: not worth the cost here
            }
            l4 = 40;
            ev.family = AF_INET6;
            ev.raddr = ctx.load(8)?;
            ev.laddr = ctx.load(24)?;
        }
        _ => return Ok(()),
    }
    let ports: [u8; 4] = ctx.load(l4)?;
    let flags: u8 = ctx.load(l4 + 13)?;
    ev.rport = u16::from_be_bytes([ports[0], ports[1]]);
    ev.lport = u16::from_be_bytes([ports[2], ports[3]]);
    let filter = FILTER_LPORT.load();
    if filter != 0 && filter != ev.lport as u32 {
        return Ok(());
    }

    let is_syn = flags & (TH_SYN | TH_ACK | TH_RST) == TH_SYN;
    // A final handshake ACK, or data/FIN riding on it, completes a request socket.
    let is_ack = flags & (TH_SYN | TH_RST) == 0 && flags & TH_ACK != 0;
    let _ = TH_FIN;
    if !is_syn && !is_ack {
        return Ok(());
    }

    // SAFETY: helper returns NULL unless sk is a TCP socket; the result is only used as an address.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk as *mut _) } as u64;
    if tp == 0 {
        return Ok(());
    }
    fill_listener(&mut ev, tp);
    // sk_acceptq_is_full(): sk_ack_backlog > sk_max_ack_backlog
    let acceptq_full = ev.queue > ev.backlog;

    let k = if is_syn {
        // tcp_conn_request(): the request-queue test comes first, then the accept-queue test.
        let net: u64 = kread(tp, OFF_SK_NET.load());
        let syncookies: u8 = kread(net, OFF_NET_SYNCOOKIES.load());
        let reqq_full = if REQQ_FULL_GE.load() != 0 {
            ev.synq >= ev.backlog
        } else {
            ev.synq > ev.backlog
        };
        if syncookies == 2 || reqq_full {
            if syncookies == 0 {
                kind::SYNQ_DROP
            } else if acceptq_full {
                kind::SYN_DROP
            } else {
                kind::COOKIE
            }
        } else if acceptq_full {
            kind::SYN_DROP
        } else {
            return Ok(());
        }
    } else if acceptq_full {
        kind::ACK_DROP
    } else {
        return Ok(());
    };

    ev.kind = k;
    // SAFETY: the context pointer is valid for the helper; skb->sk is the listener here.
    ev.cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: no arguments.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    bump(&LISTEN_COUNTS, k as u32);
    emit(&ev, hook::LISTEN_INGRESS);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Raw tracepoints on the listener: SYN-ACK retransmits and overflow resets

/// Fills local/remote addresses from a sock_common (a request sock: remote = client).
#[inline(always)]
fn fill_tuple_from_common(ev: &mut ListenEvent, skc: u64) {
    ev.family = kread(skc, OFF_SK_FAMILY.load());
    ev.lport = kread(skc, OFF_SK_NUM.load());
    let dport: u16 = kread(skc, OFF_SK_DPORT.load());
    ev.rport = u16::from_be(dport);
    if ev.family == AF_INET6 {
        ev.laddr = kread_addr16(skc, OFF_SK_V6_RCV_SADDR.load());
        ev.raddr = kread_addr16(skc, OFF_SK_V6_DADDR.load());
    } else {
        let l: [u8; 4] = kread(skc, OFF_SK_RCV_SADDR.load());
        let r: [u8; 4] = kread(skc, OFF_SK_DADDR.load());
        ev.laddr[..4].copy_from_slice(&l);
        ev.raddr[..4].copy_from_slice(&r);
    }
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
    ev.kind = kind::SYNACK_RETRANS;
    ev.cookie = kread(sk, OFF_SK_COOKIE.load());
    // SAFETY: no arguments.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    bump(&LISTEN_COUNTS, kind::SYNACK_RETRANS as u32);
    emit(&ev, hook::SYNACK_RETRANS);
    Ok(())
}

/// `tcp:tcp_send_reset(const struct sock *sk, const struct sk_buff *skb, enum sk_rst_reason)`:
/// a reset sent on behalf of a listener whose accept queue is full while
/// `tcp_abort_on_overflow=1` (tcp_check_req() → embryonic_reset).
#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn send_reset(ctx: RawTracePointContext) -> i32 {
    let _ = try_send_reset(&ctx);
    0
}

fn try_send_reset(ctx: &RawTracePointContext) -> Result<(), i64> {
    let sk: u64 = ctx.arg(0);
    let skb: u64 = ctx.arg(1);
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
        ev.family = AF_INET6;
        ev.raddr = kread_addr16(ip, 8);
        ev.laddr = kread_addr16(ip, 24);
    } else {
        ev.family = AF_INET;
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
    ev.kind = kind::OVERFLOW_RESET;
    ev.cookie = kread(sk, OFF_SK_COOKIE.load());
    // SAFETY: no arguments.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    bump(&LISTEN_COUNTS, kind::OVERFLOW_RESET as u32);
    emit(&ev, hook::SEND_RESET);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Syscall tracepoints: the listen() argument and the accept rate

fn current_netns() -> u32 {
    // SAFETY: no arguments; the result is only used as an address for probe reads.
    let task = unsafe { bpf_get_current_task() };
    let nsproxy: u64 = kread(task, OFF_TASK_NSPROXY.load());
    let net: u64 = kread(nsproxy, OFF_NSPROXY_NET_NS.load());
    kread(net, OFF_NET_INUM.load())
}

#[tracepoint(category = "syscalls", name = "sys_enter_listen")]
pub fn sys_enter_listen(ctx: TracePointContext) -> u32 {
    let _ = try_sys_enter_listen(&ctx);
    0
}

fn try_sys_enter_listen(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: offsets come from this tracepoint's format file; fields are 8-byte longs.
    let fd: u64 = unsafe { ctx.read_at(TP_LISTEN_FD.load() as usize) }?;
    // SAFETY: as above.
    let backlog: u64 = unsafe { ctx.read_at(TP_LISTEN_BACKLOG.load() as usize) }?;
    let ev = ListenCallEvent {
        kind: kind::LISTEN_CALL,
        _pad0: 0,
        netns: current_netns(),
        // SAFETY: no arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        fd: fd as u32,
        backlog: backlog as i32,
        _pad1: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    bump(&LISTEN_COUNTS, kind::LISTEN_CALL as u32);
    match LISTEN_EVENTS.reserve::<ListenCallEvent>(0) {
        Some(mut entry) => {
            entry.write(ev);
            entry.submit(0);
        }
        None => bump(&LOST_EVENTS, hook::SYS_ENTER_LISTEN),
    }
    Ok(())
}

#[inline(always)]
fn count_accept(ctx: &TracePointContext) {
    // SAFETY: offset from the tracepoint's format file; `ret` is a long.
    let ret: i64 = match unsafe { ctx.read_at(TP_ACCEPT_RET.load() as usize) } {
        Ok(v) => v,
        Err(_) => return,
    };
    if ret < 0 {
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    match ACCEPTS_BY_TGID.get_ptr_mut(&tgid) {
        Some(p) => {
            // SAFETY: p points into the map value; a lost increment under a race is acceptable
            // for a rate used only to tell "accepting" from "not accepting".
            unsafe { *p += 1 };
        }
        None => {
            let _ = ACCEPTS_BY_TGID.insert(&tgid, &1, 0);
        }
    }
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    count_accept(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    count_accept(&ctx);
    0
}

// ---------------------------------------------------------------------------------------------
// Capability probe only: never attached for data. `tcpq check` loads it to report whether this
// kernel accepts fentry programs (lockdown kernels refuse them with EPERM).

#[aya_ebpf::macros::fentry(function = "tcp_conn_request")]
pub fn fentry_probe(_ctx: aya_ebpf::programs::FEntryContext) -> u32 {
    0
}
