//! The listen family's maps: its ring and exact counts, configuration, the records of packets
//! awaiting their outcome, and the per-listener tallies of events that did not go through the
//! ring.
use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf};
use tcpq_common::{ListenEvent, ListenerTally, ListenerTallyKey, config, kind};

#[map]
pub(super) static LISTEN_EVENTS: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// Exact per-kind counts, incremented before the ring buffer is tried.
#[map]
pub(super) static LISTEN_COUNTS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(kind::COUNT_SLOTS, 0);

/// Successful accept()/accept4() calls per process, for "is the application accepting at all".
#[map]
pub(super) static ACCEPTS_BY_TGID: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

/// Written by userspace: `config::CONFIRM` = 1 when the outcome hooks are attached.
#[map]
pub(super) static LISTEN_CONFIG: Array<u32> = Array::with_max_entries(config::SLOTS, 0);

/// The SYN or ACK a listener is processing on this CPU, between the cgroup_skb ingress hook
/// (which runs in tcp_filter(), just before the kernel decides) and the end of that
/// processing (consume_skb / kfree_skb of the same packet). Softirq processing of one packet
/// is not interleaved with another on the same CPU, so one slot per CPU suffices (listeners are
/// lockless: their packets never wait in a socket backlog). A record still open when the next
/// packet comes is settled then (`outcome::settle_unfinished`).
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
pub(super) static PENDING: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);

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

/// Final-ACK records whose outcome (a child, or a labelled free) was still unseen when the next
/// packet needed their CPU's slot: kept by tuple for a late outcome (`outcome::settle_unfinished`).
#[map]
pub(super) static BACKLOG_PENDING: LruHashMap<TupleKey, Pending> =
    LruHashMap::with_max_entries(4096, 0);

/// [last time a packet went to a listener's backlog, its listener port]: the outcome hooks
/// look in BACKLOG_PENDING only for that port, and only shortly after.
#[map]
pub(super) static BACKLOG_LAST: Array<u64> = Array::with_max_entries(2, 0);

/// When a record was last parked for a client port (indexed by port & BACKLOG_RPORT_MASK).
#[map]
pub(super) static BACKLOG_RPORTS: Array<u64> = Array::with_max_entries(BACKLOG_RPORT_MASK + 1, 0);
pub(super) const BACKLOG_RPORT_MASK: u32 = 4095;

/// How long a backlog record may wait for release_sock().
pub(super) const BACKLOG_WINDOW_NS: u64 = 1_000_000_000;

/// [0]: the listening port of the last recorded SYN/ACK: outcome hooks look at other CPUs'
/// slots only for packets of that port. [1]: the jiffy in which a SYN/ACK was last recorded
/// (written once per jiffy at most, so its cache line does not bounce between CPUs when every
/// packet is recorded): once RECENT_JIFFIES have passed no record can be pending on another
/// CPU or in a backlog, and the outcome hooks leave after two lookups.
#[map]
pub(super) static LISTEN_HOT_PORT: Array<u64> = Array::with_max_entries(2, 0);

/// At least BACKLOG_WINDOW_NS (1 s) for any CONFIG_HZ (100…1000); jiffies, not ktime: the
/// verifier inlines bpf_jiffies64() into a load (kernel/bpf/verifier.c, do_misc_fixups()), a
/// clock read costs tens of ns in a VM, on every packet the outcome hooks see.
pub(super) const RECENT_JIFFIES: u64 = 1000;

/// Events that did not go through the ring, counted per listener so that every per-listener
/// count stays exact under a storm: over the line budget, or the ring was full.
#[map]
pub(super) static LISTEN_UNSENT: LruPerCpuHashMap<ListenerTallyKey, ListenerTally> =
    LruPerCpuHashMap::with_max_entries(4096, 0);

/// Map update flag: create only (include/uapi/linux/bpf.h).
pub(super) const BPF_NOEXIST: u64 = 1;

/// This CPU's line budget: [start of the current window, records written in it].
#[map]
pub(super) static LISTEN_BUDGET: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// One all-zero tally, never written: the initial value of a LISTEN_UNSENT entry.
#[map]
pub(super) static ZERO_TALLY: Array<ListenerTally> = Array::with_max_entries(1, 0);
