//! Outcome confirmation: what the kernel did with each packet the ingress hook recorded.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::macros::raw_tracepoint;
use aya_ebpf::programs::RawTracePointContext;
use tcpq_common::{EventHeader, ListenEvent, kind, lost};

use super::maps::{BACKLOG_PENDING, LISTEN_COUNTS, Pending, TupleKey};
use super::pending::{
    backlog_pending, backlog_used_recently, confirm_mode, hot_port, may_be_parked,
    other_cpu_has_ports, other_cpu_pending, park, pending, records_recent,
};
use super::queues::{listen_drops, over_max_syn_backlog, reqq_full_at};
use super::report::{bump, emit};
use super::{AF_INET, AF_INET6, IPPROTO_TCP, TH_ACK, TH_SYN};
use crate::offsets::*;
use crate::shared::read::{kread, kread_bytes};
use crate::shared::sock::sk_addrs;

// Outcome confirmation. The ingress hook sees the queues just before the kernel tests them; on
// a busy multi-CPU server an accept() or another handshake on another CPU can change the answer
// in between, and a SYN that matched a TIME_WAIT socket skips the SYN-queue and cookie tests
// altogether (tcp_conn_request(): `isn`). So in confirm mode the verdict is taken from what the
// kernel did with the packet, observed on the same CPU before the packet is freed:
//   SYN-ACK transmitted (net:net_dev_queue) with a request socket → accepted; without one
//   (skb->sk NULL, tcp_make_synack() TCP_SYNACK_COOKIE) → cookie; none → dropped.
//   child socket created (sock:inet_sock_set_state LISTEN→SYN_RECV) → final ACK accepted;
//   freed with SKB_DROP_REASON_TCP_LISTEN_OVERFLOW, or freed while the queue is full → dropped.

const TCP_ESTABLISHED_I: i32 = 1;
/// Request sockets (struct request_sock) are in this state.
const TCP_NEW_SYN_RECV: u8 = 12;
const TCP_SYN_RECV: i32 = 3;
const TCP_LISTEN_I: i32 = 10;

/// Ports and flags of the TCP packet in `skb` (tracing context), and where its IP header is.
/// Cheap first look: three small reads; addresses are read only when the ports match.
#[derive(Clone, Copy)]
struct SkbPorts {
    ip: u64,
    sport: u16,
    dport: u16,
    flags: u8,
}

#[inline(always)]
fn skb_ports(skb: u64) -> Option<SkbPorts> {
    let head: u64 = kread(skb, OFF_SKB_HEAD.load());
    if head == 0 {
        return None;
    }
    let nh: u16 = kread(skb, OFF_SKB_NETWORK_HEADER.load());
    let th: u16 = kread(skb, OFF_SKB_TRANSPORT_HEADER.load());
    if nh == 0xffff || th == 0xffff || th <= nh {
        return None; // header offsets unset (~0) or not a transport packet
    }
    // Source/destination ports (4 bytes) … flags at byte 13: one 16-byte read.
    let tcp: [u8; 16] = kread_bytes(head + th as u64, 0);
    Some(SkbPorts {
        ip: head + nh as u64,
        sport: u16::from_be_bytes([tcp[0], tcp[1]]),
        dport: u16::from_be_bytes([tcp[2], tcp[3]]),
        flags: tcp[13],
    })
}

/// (source, destination) addresses of the TCP/IP packet whose IP header is at `ip`.
#[inline(always)]
fn ip_addrs(ip: u64) -> Option<([u8; 16], [u8; 16])> {
    let hdr: [u8; 40] = kread_bytes(ip, 0);
    let mut s = [0u8; 16];
    let mut d = [0u8; 16];
    match hdr[0] >> 4 {
        4 if hdr[9] == IPPROTO_TCP => {
            s[..4].copy_from_slice(&hdr[12..16]);
            d[..4].copy_from_slice(&hdr[16..20]);
        }
        6 if hdr[6] == IPPROTO_TCP => {
            s.copy_from_slice(&hdr[8..24]);
            d.copy_from_slice(&hdr[24..40]);
        }
        _ => return None,
    }
    Some((s, d))
}

/// `net:net_dev_queue(struct sk_buff *skb)`: a SYN-ACK for the pending SYN leaves.
#[raw_tracepoint(tracepoint = "net_dev_queue")]
pub fn outcome_xmit(ctx: RawTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    let pending = pending().filter(|p| p.is_syn != 0 && p.synack == 0);
    if pending.is_none() && !records_recent() {
        return 0; // nothing recorded anywhere lately (the common case far from every limit)
    }
    // tcp_make_synack(): a normal SYN-ACK is owned by its request socket, a cookie one by none.
    // Almost every other packet has an owner too, so this one read keeps the common case cheap.
    let owner: u64 = kread(skb, OFF_SKB_SK.load());
    // Only a SYN-ACK from a request socket (TCP_NEW_SYN_RECV) may answer a SYN recorded on
    // another CPU or parked (processed here from the listener's backlog): one more read for
    // packets of full sockets, and nothing else.
    if owner != 0
        && pending.is_none()
        && kread::<u8>(owner, OFF_SK_STATE.load()) != TCP_NEW_SYN_RECV
    {
        return 0;
    }
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(t) = skb_ports(skb) else { return 0 };
    if t.flags & (TH_SYN | TH_ACK) != (TH_SYN | TH_ACK) {
        return 0;
    }
    let Some((saddr, daddr)) = ip_addrs(t.ip) else {
        return 0;
    };
    let on_synack = |p: &mut Pending| {
        if owner == 0 {
            p.synack = 2;
            resolve(p, FREED_CONSUMED); // emits the cookie now
        } else {
            p.active = 0; // accepted into the SYN queue
        }
    };
    if let Some(p) = pending
        && t.sport == p.ev.lport
        && t.dport == p.ev.rport
        && saddr == p.ev.laddr
        && daddr == p.ev.raddr
    {
        on_synack(p);
        return 0;
    }
    let key = TupleKey {
        raddr: daddr,
        laddr: saddr,
        rport: t.dport,
        lport: t.sport,
        _pad: 0,
    };
    if t.sport == hot_port()
        && let Some(p) = other_cpu_pending(&key)
        && p.is_syn != 0
        && p.synack == 0
    {
        on_synack(p);
        return 0;
    }
    if may_be_parked(t.sport, t.dport, now) {
        // The SYN waited in the listener's backlog (see BACKLOG_PENDING).
        if let Some(p) = backlog_pending(&key, now)
            && p.is_syn != 0
        {
            on_synack(p);
            bump(&LISTEN_COUNTS, kind::PARK_RESOLVED as u32);
            let _ = BACKLOG_PENDING.remove(&key);
            return 0;
        }
    }
    if owner != 0 {
        return 0;
    }
    if confirm_mode() {
        // A cookie SYN-ACK whose SYN we did not record (SyncookiesSent counts it all the same):
        // report it from the SYN-ACK itself; the queue snapshot is unknown.
        let filter = FILTER_LPORT.load();
        if filter != 0 && filter != t.sport as u32 {
            return 0;
        }
        let dev: u64 = kread(skb, OFF_SKB_DEV.load());
        let net: u64 = kread(dev, OFF_DEV_NET.load());
        let mut ev = ListenEvent {
            header: EventHeader {
                kind: kind::COOKIE,
                family: if kread::<u8>(t.ip, 0) >> 4 == 6 {
                    AF_INET6
                } else {
                    AF_INET
                },
                netns: kread(net, OFF_NET_INUM.load()),
                ts_ns: 0,
            },
            laddr: saddr,
            raddr: daddr,
            lport: t.sport,
            rport: t.dport,
            ..ListenEvent::default()
        };
        // SAFETY: no arguments.
        ev.header.ts_ns = unsafe { bpf_ktime_get_ns() };
        bump(&LISTEN_COUNTS, kind::COOKIE as u32);
        bump(&LISTEN_COUNTS, kind::COOKIE_UNMATCHED as u32);
        emit(&ev, lost::OUTCOME);
    }
    0
}

/// `sock:inet_sock_set_state(sk, oldstate, newstate)` (via `state::sock_state`):
/// inet_csk_clone_lock() moves a new child from the listener's LISTEN to SYN_RECV once the
/// accept-queue test passed.
// A BPF-to-BPF call, not inlined: each family's frame stays its own (the stack limit is
// 512 bytes per call chain, and the four inlined together exceed it).
#[inline(never)]
pub fn on_state_child(sk: u64, old: i32, new: i32) {
    if old == TCP_SYN_RECV && new == TCP_ESTABLISHED_I {
        // A child whose final ACK waited in the listener's backlog is established: forget it.
        // SAFETY: no arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        if !backlog_used_recently(now) {
            return; // the common case: no listener's backlog held a SYN/ACK lately
        }
        let lport: u16 = kread(sk, OFF_SK_NUM.load());
        let rport = u16::from_be(kread(sk, OFF_SK_DPORT.load()));
        if may_be_parked(lport, rport, now) {
            let (_, laddr, raddr) = sk_addrs(sk);
            let key = TupleKey {
                raddr,
                laddr,
                rport,
                lport,
                _pad: 0,
            };
            if BACKLOG_PENDING.get_ptr(&key).is_some() {
                bump(&LISTEN_COUNTS, kind::PARK_RESOLVED as u32);
                let _ = BACKLOG_PENDING.remove(&key);
            }
        }
        return;
    }
    if old != TCP_LISTEN_I || new != TCP_SYN_RECV {
        return;
    }
    let Some(p) = pending() else { return };
    if p.is_syn != 0 {
        return;
    }
    // The clone still carries the listener's port (the remote side is filled in just after).
    let num: u16 = kread(sk, OFF_SK_NUM.load());
    if num == p.ev.lport {
        p.child = 1;
        p.active = 0; // accepted into the accept queue
    }
}

/// A record still open in this CPU's slot when the next SYN/ACK of a listener reaches it. Its
/// packet's handling is over (one CPU's softirq packet processing does not interleave), but no
/// outcome hook saw its end. For a SYN that end was tcp_rcv_state_process()'s consume_skb()
/// (every SYN handed to tcp_conn_request() is consumed): on 6.18 bursts of retransmitted SYNs
/// arriving microseconds apart are decided that way without any free the hooks see (README:
/// "Settled with kprobes on 6.12"). It is decided now as consumed, with the same queue bracket
/// as any SYN, so a refusal is still reported only when a queue was full; LATE_RESOLVED counts
/// them. A final ACK's outcome (a child, or a labelled free) may still come: it is parked.
// A BPF-to-BPF call, not inlined: the ingress program's own frame stays as it was (kernels
// before 6.13 allow 512 bytes of stack per call chain).
#[inline(never)]
pub(super) fn settle_unfinished(p: &mut Pending, now: u64) {
    if p.is_syn != 0 && p.synack == 0 {
        bump(&LISTEN_COUNTS, kind::LATE_RESOLVED as u32);
        resolve(p, FREED_CONSUMED);
    } else {
        park(p, now);
    }
}

/// How the pending packet was freed.
const FREED_CONSUMED: u32 = 0;
/// kfree_skb with SKB_DROP_REASON_TCP_LISTEN_OVERFLOW (tcp_check_req()).
const FREED_LISTEN_OVERFLOW: u32 = 1;
/// kfree_skb with SKB_DROP_REASON_NO_SOCKET: cookie_v4/v6_check() could not create the child
/// (tcp_get_cookie_sock() → syn_recv_sock() refused by sk_acceptq_is_full()).
const FREED_NO_SOCKET: u32 = 2;
const FREED_OTHER: u32 = 3;

/// Decides the pending packet's fate when it is freed (or a SYN-ACK shows it was cookied).
#[inline(always)]
fn resolve(p: &mut Pending, freed: u32) {
    p.active = 0;
    // The record is completed in place (it is no longer active): a copy on the stack would
    // count against the 512 bytes per call chain of kernels before 6.13.
    let ev = &p.ev;
    // Queue state now, after the kernel's decision (for the rare drop that was not predicted).
    let queue: u32 = kread(p.sk, OFF_SK_ACK_BACKLOG.load());
    let synq: u32 = kread(p.sk, OFF_ICSK_QLEN.load());
    let acceptq_full_now = queue > ev.backlog;
    let k = if p.is_syn != 0 {
        match p.synack {
            1 => return,
            2 => kind::COOKIE,
            // tcp_rcv_state_process() consumes every SYN it handed to tcp_conn_request(); a SYN
            // freed as a drop never reached the queue tests (e.g. SYN+FIN, bad checksum).
            _ if freed != FREED_CONSUMED => {
                bump(&LISTEN_COUNTS, kind::OTHER_DROP as u32);
                return;
            }
            _ => {
                // Dropped. tcp_conn_request() tests the SYN queue first (only with cookies off),
                // then the accept queue. Our looks bracket the kernel's; a queue one accept()
                // short of full at either look still explains it (another CPU may have accepted
                // in between). A SYN "drop" that neither look explains is not counted as a
                // listen drop (other reasons — no route, memory, LSM — or a record matched
                // to the wrong packet): tcpq never reports a refusal the kernel did not make.
                if p.syncookies == 0 && (p.reqq_full != 0 || reqq_full_at(synq, ev.backlog)) {
                    kind::SYNQ_DROP
                } else if p.acceptq_full != 0
                    || acceptq_full_now
                    || ev.queue.max(queue) >= ev.backlog
                {
                    kind::SYN_DROP
                } else if p.syncookies == 0
                    && over_max_syn_backlog(ev.synq.max(synq), p.max_syn_backlog)
                {
                    // Tested last, as in tcp_conn_request() (after the route lookup): with
                    // cookies off a SYN is refused once the SYN queue holds 3/4 of
                    // tcp_max_syn_backlog, unless tcp_peer_is_proven() (then it is answered,
                    // and never gets here).
                    kind::SYN_BACKLOG_DROP
                } else {
                    bump(&LISTEN_COUNTS, kind::OTHER_DROP as u32);
                    return;
                }
            }
        }
    } else if p.child != 0 {
        return;
    } else if freed == FREED_OTHER
        && RSN_LISTEN_OVERFLOW.load() == 0
        && (p.acceptq_full != 0 || acceptq_full_now || ev.queue.max(queue) >= ev.backlog)
        && (OFF_SK_DROPS.load() == 0 || listen_drops(p.sk) != p.drops)
    {
        // Kernels without SKB_DROP_REASON_TCP_LISTEN_OVERFLOW (6.1 has none in its BTF) free
        // an overflowing final ACK unlabelled: tcp_check_req() returns NULL at listen_overflow
        // and tcp_v4_rcv()/tcp_v6_rcv() discard it (NOT_SPECIFIED). A final ACK that made no
        // child and was freed, not consumed, while the accept queue was full at either look, is
        // that drop (sk_acceptq_is_full(), the same bracket as a SYN's above) — if the
        // listener's sk_drops moved since the ACK arrived: tcp_v4/v6_syn_recv_sock()'s
        // exit_overflow ends in tcp_listendrop(), on this CPU before the free, so a true drop
        // always moves it. An ACK that found no request socket and was reset from the LISTEN
        // state (tcp_v4_do_rcv(): reset + discard) does not, unless another CPU dropped a
        // packet of this listener meanwhile; one that tcp_check_req() turned away for another
        // reason still does (tcp_v4_rcv()'s discard_and_relse: sk_drops_add() on the
        // listener). One such ACK made a 6.1 run count 270 for the kernel's 269.
        kind::ACK_DROP
    } else if freed == FREED_LISTEN_OVERFLOW || freed == FREED_NO_SOCKET {
        // NO_SOCKET on a listener's ACK comes from cookie_v4/v6_check() when
        // tcp_get_cookie_sock() gets no child: the accept queue was full at the kernel's test
        // (other causes, allocation or routing failures, are rare). The queue may already look
        // fine again to us, so the reason is trusted over our snapshots.
        if p.acceptq_full == 0 && !acceptq_full_now {
            bump(&LISTEN_COUNTS, kind::OTHER_DROP as u32);
        }
        kind::ACK_DROP
    } else {
        return;
    };
    p.ev.header.kind = k;
    // SAFETY: no arguments.
    p.ev.header.ts_ns = unsafe { bpf_ktime_get_ns() };
    bump(&LISTEN_COUNTS, k as u32);
    emit(&p.ev, lost::OUTCOME);
}

/// `skb:consume_skb(skb, location)`: tcp_rcv_state_process() consumes every SYN a listener
/// handled, dropped or not.
#[raw_tracepoint(tracepoint = "consume_skb")]
pub fn outcome_consume(ctx: RawTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    resolve_freed(skb, || FREED_CONSUMED);
    0
}

/// Resolves the pending record of the packet being freed: this CPU's slot, else (shortly after
/// a listener's backlog was used) its backlog record. Runs for every freed packet, so the
/// common case — nothing pending for these ports — costs one read of the packet's ports and a
/// look at each CPU's slot, never the addresses.
#[inline(always)]
fn resolve_freed(skb: u64, freed: impl Fn() -> u32) {
    let mine = pending();
    if mine.is_none() && !records_recent() {
        return;
    }
    let hot = hot_port();
    let Some(t) = skb_ports(skb) else { return };
    if let Some(p) = mine
        && t.sport == p.ev.rport
        && t.dport == p.ev.lport
        && matches!(ip_addrs(t.ip), Some((s, d)) if s == p.ev.raddr && d == p.ev.laddr)
    {
        resolve(p, freed());
        return;
    }
    if hot == 0 || t.dport != hot {
        return;
    }
    let on_other_cpu = other_cpu_has_ports(t.sport, t.dport);
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let in_backlog = may_be_parked(t.dport, t.sport, now);
    if !on_other_cpu && !in_backlog {
        return;
    }
    let Some((saddr, daddr)) = ip_addrs(t.ip) else {
        return;
    };
    let key = TupleKey {
        raddr: saddr,
        laddr: daddr,
        rport: t.sport,
        lport: t.dport,
        _pad: 0,
    };
    if on_other_cpu && let Some(p) = other_cpu_pending(&key) {
        resolve(p, freed());
        return;
    }
    if !in_backlog {
        return;
    }
    if let Some(p) = backlog_pending(&key, now) {
        resolve(p, freed());
        bump(&LISTEN_COUNTS, kind::PARK_RESOLVED as u32);
        let _ = BACKLOG_PENDING.remove(&key);
    }
}

/// `skb:kfree_skb(skb, location, reason, rx_sk)`: a dropped final ACK (tcp_check_req():
/// SKB_DROP_REASON_TCP_LISTEN_OVERFLOW; cookie_v4_check() frees it itself). Via
/// `state::skb_kfree`.
// A BPF-to-BPF call, not inlined: the dispatcher's frame stays small and each family's frame
// is its own (kernels before 6.13 allow 512 bytes of stack per call chain).
#[inline(never)]
pub fn on_kfree(skb: u64, reason: u32) {
    resolve_freed(skb, || {
        if reason != 0 && reason == RSN_LISTEN_OVERFLOW.load() {
            FREED_LISTEN_OVERFLOW
        } else if reason != 0 && reason == RSN_NO_SOCKET.load() {
            FREED_NO_SOCKET
        } else {
            FREED_OTHER
        }
    });
}
