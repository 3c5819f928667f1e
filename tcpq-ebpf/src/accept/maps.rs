//! The accept family's maps: its ring, queue times, threads in accept(), totals and resets on
//! close.
use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, HashMap, LruPerCpuHashMap, RingBuf};
use tcpq_common::{
    AbortKey, AbortTally, AcceptKey, AcceptTotals, ENQUEUED_SLOT_BITS, Enqueued, IN_ACCEPT_SLOTS,
    InAccept,
};

#[map]
pub(super) static ACCEPT_EVENTS: RingBuf = RingBuf::with_byte_size(512 * 1024, 0);

/// When each child socket was queued, by `socket_slot` (see `tcpq_common::Enqueued`).
#[map]
pub(super) static ENQUEUED: Array<Enqueued> = Array::with_max_entries(1 << ENQUEUED_SLOT_BITS, 0);

/// Slot 0: when userspace last armed the accept family (bpf_ktime_get_ns clock); queue times
/// older than that were written before a gap in which children went unrecorded.
#[map]
pub(super) static ENQUEUE_SINCE: Array<u64> = Array::with_max_entries(1, 0);

/// Threads inside accept(), by `thread_slot`; userspace reads it for idle acceptors.
#[map]
pub(super) static IN_ACCEPT: Array<InAccept> = Array::with_max_entries(IN_ACCEPT_SLOTS, 0);

/// Accepts per (listener, process, CPU) while ACCEPT_AGGREGATE is set. Allocated as keys
/// appear (BPF_F_NO_PREALLOC): sized for thousands of listeners, paid for only when used.
#[map]
pub(super) static ACCEPT_TOTALS: HashMap<AcceptKey, AcceptTotals> =
    HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

const BPF_F_NO_PREALLOC: u32 = 1;

/// Never written: the zeroes a new ACCEPT_TOTALS entry starts from (the value is too big for
/// the stack).
#[map]
pub(super) static ZERO_TOTALS: Array<AcceptTotals> = Array::with_max_entries(1, 0);

/// Connections closed with data unread, per (namespace, local port, closing process): exact
/// counts, no ring (a server at its connection limit resets thousands a second). Per CPU, so
/// the closing CPUs never share a counter; LRU bounds it (an evicted key loses its count, and
/// 4096 keys is far more than processes × ports that do this at once).
#[map]
pub(super) static ABORTS_ON_CLOSE: LruPerCpuHashMap<AbortKey, AbortTally> =
    LruPerCpuHashMap::with_max_entries(4096, 0);
