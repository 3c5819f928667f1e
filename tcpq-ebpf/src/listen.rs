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
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_get_socket_cookie, bpf_jiffies64, bpf_skc_to_tcp_sock},
    },
    macros::{cgroup_skb, fentry, fexit, kprobe, map, raw_tracepoint, tracepoint},
    maps::{Array, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
    programs::{
        FEntryContext, FExitContext, ProbeContext, RawTracePointContext, SkBuffContext,
        TracePointContext,
    },
};
use tcpq_common::{
    EventHeader, ListenCallEvent, ListenEvent, ListenerTally, ListenerTallyKey, TALLY_KINDS,
    config, kind, lost,
};

use crate::{
    offsets::*,
    shared::{
        read::{kread, kread_addr16, kread_bytes, sk_netns},
        sock::{current_netns, fd_to_sk, sk_addrs},
    },
    shared,
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
static LISTEN_EVENTS: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// Exact per-kind counts, incremented before the ring buffer is tried.
#[map]
static LISTEN_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(kind::COUNT_SLOTS, 0);

/// Successful accept()/accept4() calls per process, for "is the application accepting at all".
#[map]
static ACCEPTS_BY_TGID: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

/// Written by userspace: `config::CONFIRM` = 1 when the outcome hooks are attached.
#[map]
static LISTEN_CONFIG: Array<u32> = Array::with_max_entries(config::SLOTS, 0);

/// The SYN or ACK a listener is processing on this CPU, between the cgroup_skb ingress hook
/// (which runs in tcp_filter(), just before the kernel decides) and the end of that
/// processing (consume_skb / kfree_skb of the same packet). Softirq processing of one packet
/// is not interleaved with another on the same CPU, so one slot per CPU suffices — except when
/// the listener is owned by a process and the packet waits in its backlog (BACKLOG_PENDING).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    pub active: u32,
    pub is_syn: u32,
    /// 1: a SYN-ACK for this tuple left with a request socket (normal), 2: without one (cookie).
    pub synack: u32,
    /// A child socket was created for this tuple (the final ACK was accepted).
    pub child: u32,
    pub syncookies: u32,
    pub reqq_full: u32,
    pub acceptq_full: u32,
    /// net.ipv4.tcp_max_syn_backlog, read only when tcp_syncookies=0 (its rule applies then).
    pub max_syn_backlog: u32,
    /// The listener's `sk_drops` when a final ACK was recorded (read only when OFF_SK_DROPS is
    /// set: kernels without SKB_DROP_REASON_TCP_LISTEN_OVERFLOW).
    pub drops: u32,
    pub _pad: u32,
    pub sk: u64,
    /// When the packet was recorded (backlog records expire).
    pub rec_ns: u64,
    pub ev: ListenEvent,
}

#[map]
static PENDING: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);

/// A packet's tuple as seen from the listener.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TupleKey {
    pub raddr: [u8; 16],
    pub laddr: [u8; 16],
    pub rport: u16,
    pub lport: u16,
    pub _pad: u32,
}

/// SYNs/ACKs that found their listener owned by a process (sock_owned_by_user()):
/// tcp_v4_rcv() queues them to the socket backlog and release_sock() processes them later, in
/// the owner's context, after other packets may have used this CPU's slot. Keyed by tuple.
#[map]
static BACKLOG_PENDING: LruHashMap<TupleKey, Pending> = LruHashMap::with_max_entries(4096, 0);

/// [last time a packet went to a listener's backlog, its listener port]: the outcome hooks
/// look in BACKLOG_PENDING only for that port, and only shortly after.
#[map]
static BACKLOG_LAST: Array<u64> = Array::with_max_entries(2, 0);

/// When a record was last parked for a client port (indexed by port & BACKLOG_RPORT_MASK).
#[map]
static BACKLOG_RPORTS: Array<u64> = Array::with_max_entries(BACKLOG_RPORT_MASK + 1, 0);
const BACKLOG_RPORT_MASK: u32 = 4095;

/// How long a backlog record may wait for release_sock().
const BACKLOG_WINDOW_NS: u64 = 1_000_000_000;

/// [0]: the listening port of the last recorded SYN/ACK: outcome hooks look at other CPUs'
/// slots only for packets of that port. [1]: the jiffy in which a SYN/ACK was last recorded
/// (written once per jiffy at most, so its cache line does not bounce between CPUs when every
/// packet is recorded): once RECENT_JIFFIES have passed no record can be pending on another
/// CPU or in a backlog, and the outcome hooks leave after two lookups.
#[map]
static LISTEN_HOT_PORT: Array<u64> = Array::with_max_entries(2, 0);

/// At least BACKLOG_WINDOW_NS (1 s) for any CONFIG_HZ (100…1000); jiffies, not ktime: the
/// verifier inlines bpf_jiffies64() into a load (kernel/bpf/verifier.c, do_misc_fixups()), a
/// clock read costs tens of ns in a VM, on every packet the outcome hooks see.
const RECENT_JIFFIES: u64 = 1000;

#[inline(always)]
fn jiffies() -> u64 {
    // SAFETY: no arguments.
    unsafe { bpf_jiffies64() }
}

/// Whether any CPU recorded a SYN/ACK recently enough for it to be still unresolved.
#[inline(always)]
fn records_recent() -> bool {
    LISTEN_HOT_PORT
        .get(1)
        .is_some_and(|t| *t != 0 && jiffies().wrapping_sub(*t) <= RECENT_JIFFIES)
}

/// The kernel cannot refuse this packet unless `margin` more connections reach the listener's
/// queues (from other CPUs) between this look and its own test a few microseconds later, with
/// margin = max(NEAR_MARGIN, backlog / 2): tcp_conn_request() refuses a SYN only when the SYN
/// queue (cookies) or the accept queue is full, tcp_v4_syn_recv_sock() an ACK only when the
/// accept queue is. Only with tcp_syncookies=1: with 2 every SYN gets a cookie, with 0 the
/// tcp_max_syn_backlog rule may drop a SYN well below the backlog. NEAR_MARGIN 0 turns it off.
#[inline(always)]
fn far_from_limits(ev: &ListenEvent, syncookies: u8) -> bool {
    let min = NEAR_MARGIN.load();
    if min == 0 || syncookies != 1 {
        return false;
    }
    let margin = min.max(ev.backlog / 2);
    ev.queue.saturating_add(margin) < ev.backlog && ev.synq.saturating_add(margin) < ev.backlog
}

/// Upper bound of the per-CPU slot scans; NR_CPUS (a verifier-known constant) is the real one,
/// and bpf_map_lookup_percpu_elem returns NULL past the last CPU anyway.
const MAX_CPUS: u32 = 128;

/// The first CPU slot holding an unresolved record for these ports and, when given, these
/// (client, listener) addresses. A record found on another CPU means the packet was queued to
/// the listener's backlog there and release_sock() runs here (the owner's CPU).
#[inline(always)]
fn scan_cpus(rport: u16, lport: u16, addrs: Option<&TupleKey>) -> Option<&'static mut Pending> {
    let map = core::ptr::addr_of!(PENDING) as *mut core::ffi::c_void;
    let index: u32 = 0;
    let cpus = NR_CPUS.load();
    for cpu in 0..MAX_CPUS {
        if cpu >= cpus {
            return None;
        }
        // SAFETY: `map` is the PENDING map (PerCpuArray is repr(transparent) over its
        // definition); the helper returns NULL for CPUs that do not exist.
        let ptr = unsafe {
            aya_ebpf::helpers::generated::bpf_map_lookup_percpu_elem(
                map,
                &index as *const u32 as *const core::ffi::c_void,
                cpu,
            )
        } as *mut Pending;
        if ptr.is_null() {
            return None;
        }
        // SAFETY: a slot of the PENDING map; that CPU may write it concurrently, in which
        // case the tuple no longer matches and the record is left alone.
        let p = unsafe { &mut *ptr };
        if p.active != 0
            && p.ev.rport == rport
            && p.ev.lport == lport
            && addrs.is_none_or(|k| p.ev.raddr == k.raddr && p.ev.laddr == k.laddr)
        {
            return Some(p);
        }
    }
    None
}

/// Another CPU's record of this client → listener tuple.
#[inline(always)]
fn other_cpu_pending(key: &TupleKey) -> Option<&'static mut Pending> {
    scan_cpus(key.rport, key.lport, Some(key))
}

/// Whether any CPU holds an unresolved record for these ports (addresses not compared): the
/// cheap gate before the packet's addresses are read.
#[inline(always)]
fn other_cpu_has_ports(rport: u16, lport: u16) -> bool {
    scan_cpus(rport, lport, None).is_some()
}

#[inline(always)]
fn hot_port() -> u16 {
    LISTEN_HOT_PORT.get(0).map(|p| *p as u16).unwrap_or(0)
}

/// Keeps a record for a packet processed later from the listener's backlog.
#[inline(always)]
fn park(rec: &Pending, now: u64) {
    let key = TupleKey {
        raddr: rec.ev.raddr,
        laddr: rec.ev.laddr,
        rport: rec.ev.rport,
        lport: rec.ev.lport,
        _pad: 0,
    };
    if BACKLOG_PENDING.insert(&key, rec, 0).is_err() {
        bump(&LISTEN_COUNTS, kind::UNRESOLVED as u32);
        return;
    }
    bump(&LISTEN_COUNTS, kind::PARKED as u32);
    if let Some(t) = BACKLOG_LAST.get_ptr_mut(0) {
        // SAFETY: array slot; a racing writer stores an equally recent time.
        unsafe { *t = now };
    }
    if let Some(port) = BACKLOG_LAST.get_ptr_mut(1) {
        // SAFETY: as above.
        unsafe { *port = rec.ev.lport as u64 };
    }
    if let Some(t) = BACKLOG_RPORTS.get_ptr_mut(rec.ev.rport as u32 & BACKLOG_RPORT_MASK) {
        // SAFETY: as above.
        unsafe { *t = now };
    }
}

/// Whether a record was parked in the last BACKLOG_WINDOW_NS.
#[inline(always)]
fn backlog_used_recently(now: u64) -> bool {
    BACKLOG_LAST
        .get(0)
        .is_some_and(|t| *t != 0 && now.saturating_sub(*t) <= BACKLOG_WINDOW_NS)
}

/// Whether a record for this listener port and client port may be parked: the port of the
/// listener whose backlog was used last, and a recent park for a client port in the same slot
/// of BACKLOG_RPORTS. Two array reads keep the address read and the hash lookup off the path
/// of the packets (nearly all) that were never parked.
#[inline(always)]
fn may_be_parked(lport: u16, rport: u16, now: u64) -> bool {
    if !backlog_used_recently(now) {
        return false;
    }
    if BACKLOG_LAST.get(1).map(|p| *p as u16) != Some(lport) {
        return false;
    }
    BACKLOG_RPORTS
        .get(rport as u32 & BACKLOG_RPORT_MASK)
        .is_some_and(|t| *t != 0 && now.saturating_sub(*t) <= BACKLOG_WINDOW_NS)
}

/// The backlog record of the client → listener tuple, if recent.
#[inline(always)]
fn backlog_pending(key: &TupleKey, now: u64) -> Option<&'static mut Pending> {
    let p = BACKLOG_PENDING.get_ptr_mut(key)?;
    // SAFETY: map value pointer; the record is removed by whoever resolves it.
    let p = unsafe { &mut *p };
    if p.active == 0 || now.saturating_sub(p.rec_ns) > BACKLOG_WINDOW_NS {
        return None;
    }
    Some(p)
}

#[inline(always)]
fn confirm_mode() -> bool {
    LISTEN_CONFIG.get(config::CONFIRM).is_some_and(|v| *v == 1)
}

#[inline(always)]
fn bump(map: &PerCpuArray<u64>, slot: u32) {
    if let Some(p) = map.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot owned by this CPU while the program runs (migration disabled).
        unsafe { *p += 1 };
    }
}

/// Events that did not go through the ring, counted per listener so that every per-listener
/// count stays exact under a storm: over the line budget, or the ring was full.
#[map]
static LISTEN_UNSENT: LruPerCpuHashMap<ListenerTallyKey, ListenerTally> =
    LruPerCpuHashMap::with_max_entries(4096, 0);

/// Map update flag: create only (include/uapi/linux/bpf.h).
const BPF_NOEXIST: u64 = 1;

/// This CPU's line budget: [start of the current window, records written in it].
#[map]
static LISTEN_BUDGET: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Whether this CPU may write one more ring record in the current budget window.
#[inline(always)]
fn within_budget(now: u64) -> bool {
    let budget = LISTEN_CONFIG.get(config::BUDGET).map(|v| *v).unwrap_or(0);
    if budget == 0 {
        return true;
    }
    let Some(state) = LISTEN_BUDGET.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: this CPU's slot (migration is disabled while the program runs).
    let state = unsafe { &mut *state };
    if now.saturating_sub(state[0]) >= config::BUDGET_WINDOW_NS {
        state[0] = now;
        state[1] = 0;
    }
    if state[1] >= budget as u64 {
        return false;
    }
    state[1] += 1;
    true
}

/// One all-zero tally, never written: the initial value of a LISTEN_UNSENT entry.
#[map]
static ZERO_TALLY: Array<ListenerTally> = Array::with_max_entries(1, 0);

/// Counts `ev` in LISTEN_UNSENT (its kind on its listener).
#[inline(always)]
fn tally_unsent(ev: &ListenEvent) {
    bump(&LISTEN_COUNTS, kind::UNSENT as u32);
    let kind = ev.header.kind as usize;
    if kind >= TALLY_KINDS {
        return;
    }
    let key = ListenerTallyKey {
        netns: ev.header.netns,
        family: ev.header.family,
        lport: ev.lport,
        cookie: ev.cookie,
        laddr: ev.laddr,
    };
    let t = match LISTEN_UNSENT.get_ptr_mut(&key) {
        Some(t) => t,
        None => {
            // Another CPU may have created it meanwhile (each CPU has its own value anyway).
            // The zeroed value comes from a map, not the stack (128 bytes of it would count
            // against the 512 per call chain of kernels before 6.13).
            let Some(zero) = ZERO_TALLY.get(0) else {
                return;
            };
            let _ = LISTEN_UNSENT.insert(&key, zero, BPF_NOEXIST);
            match LISTEN_UNSENT.get_ptr_mut(&key) {
                Some(t) => t,
                None => return,
            }
        }
    };
    // SAFETY: this CPU's value of the entry.
    let t = unsafe { &mut *t };
    if let Some(c) = t.counts.get_mut(kind) {
        *c += 1;
    }
    t.last_ts_ns = ev.header.ts_ns;
    t.queue = ev.queue;
    t.backlog = ev.backlog;
    t.synq = ev.synq;
}

#[inline(always)]
fn emit(ev: &ListenEvent, lost_slot: u32) {
    if !within_budget(ev.header.ts_ns) {
        tally_unsent(ev);
        return;
    }
    // Often a map value (see `shared::emit`); a record the ring had no room for is still
    // counted on its listener.
    if !shared::emit::emit(&LISTEN_EVENTS, ev, lost_slot) {
        tally_unsent(ev);
    }
}

/// Listener-side state shared by every hook that reports on a listening socket.
#[inline(always)]
fn fill_listener(ev: &mut ListenEvent, sk: u64) {
    ev.header.netns = sk_netns(sk);
    fill_queues(ev, sk);
}

/// The listener's accept queue, its limit and the SYN queue.
#[inline(always)]
fn fill_queues(ev: &mut ListenEvent, sk: u64) {
    ev.queue = kread(sk, OFF_SK_ACK_BACKLOG.load());
    ev.backlog = kread(sk, OFF_SK_MAX_ACK_BACKLOG.load());
    ev.synq = kread(sk, OFF_ICSK_QLEN.load());
}

/// inet_csk_reqsk_queue_is_full(): `qlen > backlog` (6.12+), `>=` before.
#[inline(always)]
fn reqq_full(ev: &ListenEvent) -> bool {
    reqq_full_at(ev.synq, ev.backlog)
}

#[inline(always)]
fn reqq_full_at(synq: u32, backlog: u32) -> bool {
    if REQQ_FULL_GE.load() != 0 {
        synq >= backlog
    } else {
        synq > backlog
    }
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
            ev.header.family = AF_INET;
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
            ev.header.family = AF_INET6;
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
    fill_queues(&mut ev, tp);
    // sk_acceptq_is_full(): sk_ack_backlog > sk_max_ack_backlog
    let acceptq_full = ev.queue > ev.backlog;

    let net: u64 = kread(tp, OFF_SK_NET.load());
    let syncookies: u8 = kread(net, OFF_NET_SYNCOOKIES.load());
    let reqq_full = reqq_full(&ev);

    let confirm = confirm_mode();
    if confirm && far_from_limits(&ev, syncookies) {
        bump(&LISTEN_COUNTS, kind::FAR_FROM_LIMITS as u32);
        return Ok(());
    }
    // sock_net(sk)->ns.inum, read only now: the packets skipped above never need it.
    ev.header.netns = kread(net, OFF_NET_INUM.load());

    if confirm {
        // Record the packet; the verdict comes from what the kernel then does with it.
        // SAFETY: as in `listen_ingress`: the socket cookie of skb->sk (the listener).
        ev.cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        ev.header.kind = if is_syn {
            kind::SYN_DROP
        } else {
            kind::ACK_DROP
        };
        // SAFETY: no arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        let rec = Pending {
            active: 1,
            is_syn: is_syn as u32,
            synack: 0,
            child: 0,
            syncookies: syncookies as u32,
            reqq_full: reqq_full as u32,
            acceptq_full: acceptq_full as u32,
            max_syn_backlog: if syncookies == 0 {
                kread(net, OFF_NET_MAX_SYN_BACKLOG.load())
            } else {
                0
            },
            drops: if is_ack {
                listen_drops(tp)
            } else {
                0
            },
            _pad: 0,
            sk: tp,
            rec_ns: now,
            ev,
        };
        if let Some(hot) = LISTEN_HOT_PORT.get_ptr_mut(0) {
            // SAFETY: array slot; written only when it changes (no cache-line ping-pong).
            unsafe {
                if *hot != ev.lport as u64 {
                    *hot = ev.lport as u64;
                }
            }
        }
        if let Some(last) = LISTEN_HOT_PORT.get_ptr_mut(1) {
            let jiffy = jiffies();
            // SAFETY: array slot; a racing writer stores the same or the previous jiffy.
            unsafe {
                if *last != jiffy {
                    *last = jiffy;
                }
            }
        }
        let owned: i32 = kread(tp, OFF_SK_LOCK_OWNED.load());
        if owned != 0 {
            park(&rec, now);
        } else if let Some(p) = PENDING.get_ptr_mut(0) {
            // SAFETY: this CPU's slot; softirq packet processing does not nest on one CPU.
            let p = unsafe { &mut *p };
            if p.active != 0 {
                // Still unresolved: the listener was taken by a process between our look and
                // the kernel's (lock_sock() in accept()), so that packet waits in the backlog.
                park(p, now);
            }
            *p = rec;
        }
        return Ok(());
    }

    let k = if is_syn {
        // tcp_conn_request(): the request-queue test comes first, then the accept-queue test.
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

    ev.header.kind = k;
    // SAFETY: the context pointer is valid for the helper; skb->sk is the listener here.
    ev.cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: no arguments.
    ev.header.ts_ns = unsafe { bpf_ktime_get_ns() };
    bump(&LISTEN_COUNTS, k as u32);
    emit(&ev, lost::LISTEN_INGRESS);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Raw tracepoints on the listener: SYN-ACK retransmits and overflow resets

/// Fills local/remote addresses from a sock_common (a request sock: remote = client).
#[inline(always)]
fn fill_tuple_from_common(ev: &mut ListenEvent, skc: u64) {
    (ev.header.family, ev.laddr, ev.raddr) = sk_addrs(skc);
    ev.lport = kread(skc, OFF_SK_NUM.load());
    let dport: u16 = kread(skc, OFF_SK_DPORT.load());
    ev.rport = u16::from_be(dport);
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
    ev.header.kind = kind::SYNACK_RETRANS;
    ev.cookie = kread(sk, OFF_SK_COOKIE.load());
    // SAFETY: no arguments.
    ev.header.ts_ns = unsafe { bpf_ktime_get_ns() };
    bump(&LISTEN_COUNTS, kind::SYNACK_RETRANS as u32);
    emit(&ev, lost::SYNACK_RETRANS);
    Ok(())
}

/// `tcp:tcp_send_reset` (via `state::send_reset`): a reset sent on behalf of a listener whose
/// accept queue is full while `tcp_abort_on_overflow=1` (tcp_check_req() → embryonic_reset).
// A BPF-to-BPF call, not inlined: its frame stays its own (see state.rs).
#[inline(never)]
pub fn on_send_reset(sk: u64, skb: u64) {
    let _ = try_send_reset(sk, skb);
}

fn try_send_reset(sk: u64, skb: u64) -> Result<(), i64> {
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
        ev.header.family = AF_INET6;
        ev.raddr = kread_addr16(ip, 8);
        ev.laddr = kread_addr16(ip, 24);
    } else {
        ev.header.family = AF_INET;
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
    ev.header.kind = kind::OVERFLOW_RESET;
    ev.cookie = kread(sk, OFF_SK_COOKIE.load());
    // SAFETY: no arguments.
    ev.header.ts_ns = unsafe { bpf_ktime_get_ns() };
    bump(&LISTEN_COUNTS, kind::OVERFLOW_RESET as u32);
    emit(&ev, lost::SEND_RESET);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Syscall tracepoints: the listen() argument and the accept rate

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

// ---------------------------------------------------------------------------------------------
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

#[inline(always)]
fn pending() -> Option<&'static mut Pending> {
    let p = PENDING.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot (see `Pending`).
    let p = unsafe { &mut *p };
    if p.active == 0 { None } else { Some(p) }
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

/// The listener's `sk_drops` (tcp_listendrop() bumps it for every listen drop), or 0 when
/// OFF_SK_DROPS is not set (kernels with SKB_DROP_REASON_TCP_LISTEN_OVERFLOW: not needed).
/// On 6.18 sk_drops_inc() counts in `sk_drop_counters` when a protocol set one (UDP); TCP
/// sets none, so sk_drops would still be the counter there.
#[inline(always)]
fn listen_drops(sk: u64) -> u32 {
    let off = OFF_SK_DROPS.load();
    if off == 0 { 0 } else { kread(sk, off) }
}

/// tcp_conn_request(): `max_syn_backlog - inet_csk_reqsk_queue_len(sk) < (max_syn_backlog >> 2)`.
#[inline(always)]
fn over_max_syn_backlog(synq: u32, max_syn_backlog: u32) -> bool {
    max_syn_backlog != 0 && (max_syn_backlog as i64 - synq as i64) < (max_syn_backlog >> 2) as i64
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

// ---------------------------------------------------------------------------------------------
// Capability probe only: never attached for data. `tcpq check` loads it to report whether this
// kernel accepts fentry programs (lockdown kernels refuse them with EPERM).

#[aya_ebpf::macros::fentry(function = "tcp_conn_request")]
pub fn fentry_probe(_ctx: aya_ebpf::programs::FEntryContext) -> u32 {
    0
}
