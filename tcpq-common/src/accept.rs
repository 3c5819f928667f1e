//! The accept family's wire types: accepted connections and accept() failures
//! (`ACCEPT_EVENTS`), threads inside accept(), queue-entry times, per-listener accept totals
//! with their wait histogram, and the resets tcp_close() sent for connections closed unread.

use crate::EventHeader;

/// One accept()/accept4() that returned a connection (with its accept-queue wait) or failed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcceptEvent {
    /// `kind::ACCEPTED` or `kind::ACCEPT_FAILED`.
    pub header: EventHeader,
    /// Time from the child becoming ESTABLISHED (queued) to accept() returning it; 0 if unknown.
    pub wait_ns: u64,
    pub tgid: u32,
    /// Negative errno for `FAILED`, else the new fd.
    pub result: i32,
    /// The listening socket's fd in the acceptor.
    pub listen_fd: u32,
    pub lport: u16,
    pub rport: u16,
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    pub comm: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<AcceptEvent>() == 88);

/// A thread inside accept()/accept4(): `IN_ACCEPT` is an array with one slot per thread id
/// modulo `IN_ACCEPT_SLOTS` (`thread_slot`), not a hash map: entering writes a slot, leaving
/// clears its `pid_tgid` — no allocation, bucket lock or delete per call. A slot whose
/// `pid_tgid` is not the caller's belongs to another thread (ids that collide): the listening fd
/// is then unknown for that call, nothing else. Blocked there long means an idle acceptor.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InAccept {
    /// The thread inside accept() now (0: none).
    pub pid_tgid: u64,
    pub ts_ns: u64,
    pub fd: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<InAccept>() == 24);

/// Slots of `IN_ACCEPT` (a power of two: thread ids are handed out in sequence, so threads
/// alive together rarely share a slot).
pub const IN_ACCEPT_SLOTS: u32 = 1 << 16;

/// The `IN_ACCEPT` slot of thread `tid`.
#[inline(always)]
pub const fn thread_slot(tid: u32) -> u32 {
    tid & (IN_ACCEPT_SLOTS - 1)
}

/// When a child socket entered its listener's accept queue: `ENQUEUED` is an array indexed by
/// `socket_slot(sk)`, written when the child becomes ESTABLISHED and read when accept()
/// returns it (a store and a load: no hash insert per connection, no lookup at every close). A
/// slot holding another socket (two queued children that collide, or a slot taken over) leaves
/// that accept's wait unknown; a slot written before the family was armed last is ignored
/// (`ENQUEUE_SINCE`), so a reused socket address cannot find a stale time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Enqueued {
    pub sk: u64,
    pub ts_ns: u64,
}

const _: () = assert!(core::mem::size_of::<Enqueued>() == 16);

/// log2 of the `ENQUEUED` slots (4 MiB: what the LRU hash it replaces held for 64k sockets).
pub const ENQUEUED_SLOT_BITS: u32 = 18;

/// The `ENQUEUED` slot of socket address `sk` (Fibonacci hashing: socket addresses are
/// slab-aligned, their low bits are all alike).
#[inline(always)]
pub const fn socket_slot(sk: u64) -> u32 {
    (sk.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - ENQUEUED_SLOT_BITS)) as u32
}

/// Buckets of an accept-wait histogram (`AcceptTotals::buckets`): `wait_bucket`.
pub const WAIT_BUCKETS: usize = 104;

/// The histogram bucket of a wait of `us` microseconds: exact below 4 µs, then four buckets
/// per power of two (each at most 25 % wide), the last one open-ended (from ~58 s).
#[inline(always)]
pub const fn wait_bucket(us: u64) -> usize {
    if us < 4 {
        return us as usize;
    }
    let log2 = 63 - us.leading_zeros();
    let idx = 4 * (log2 as usize - 1) + ((us >> (log2 - 2)) & 3) as usize;
    if idx < WAIT_BUCKETS {
        idx
    } else {
        WAIT_BUCKETS - 1
    }
}

/// The least wait (µs) that falls in bucket `idx`.
pub const fn wait_bucket_floor(idx: usize) -> u64 {
    if idx < 4 {
        return idx as u64;
    }
    let log2 = idx / 4 + 1;
    ((4 + (idx % 4)) as u64) << (log2 - 2)
}

/// Accepts of the live commands, counted in the kernel per (listener, accepting process)
/// instead of one ring record each (`ACCEPT_TOTALS`; the ACCEPT_AGGREGATE knob): `top`,
/// `export` and `diagnose` show rates and wait quantiles, not each connection. Failures
/// still come as records (`AcceptEvent`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AcceptKey {
    pub netns: u32,
    pub tgid: u32,
    pub family: u16,
    pub lport: u16,
    /// The CPU that counted: each CPU adds to its own entry (the eBPF target has no atomic
    /// add in Rust), userspace sums them.
    pub cpu: u32,
    pub laddr: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<AcceptKey>() == 32);

/// Running totals of one `AcceptKey` (they only grow: userspace takes differences; u32s that
/// wrap, which differences read every interval absorb).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcceptTotals {
    pub accepts: u32,
    /// Accepts whose queue wait is unknown (queued before tcpq looked, or a slot collision).
    pub unknown_wait: u32,
    /// Accepts that waited at least `SLOW_WAIT_US` (exact; the buckets are coarser).
    pub slow: u32,
    pub _pad: u32,
    /// Waits by `wait_bucket` (µs).
    pub buckets: [u32; WAIT_BUCKETS],
}

const _: () = assert!(core::mem::size_of::<AcceptTotals>() == 16 + 4 * WAIT_BUCKETS);

impl Default for AcceptTotals {
    fn default() -> Self {
        Self {
            accepts: 0,
            unknown_wait: 0,
            slow: 0,
            _pad: 0,
            buckets: [0; WAIT_BUCKETS],
        }
    }
}

/// A wait this long (100 ms) is one the application made a client suffer (`app_not_accepting`'s
/// impact).
pub const SLOW_WAIT_US: u64 = 100_000;

/// Who reset connections on close (`ABORTS_ON_CLOSE` key): the namespace, the socket's local
/// port (for an accepted connection: the listener's) and the closing process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AbortKey {
    pub netns: u32,
    pub tgid: u32,
    /// `inet_sport` in host byte order (`inet_num` is already 0 then: inet_put_port()).
    pub lport: u16,
    /// AF_INET / AF_INET6.
    pub family: u16,
    pub _pad: u32,
}

/// Resets on close counted for one `AbortKey` on one CPU (userspace sums the CPUs), with the
/// closing task's comm when the entry was made.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AbortTally {
    pub count: u64,
    pub comm: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<AbortKey>() == 16);

const _: () = assert!(core::mem::size_of::<AbortTally>() == 24);
