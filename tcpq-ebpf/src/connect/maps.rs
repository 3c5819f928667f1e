//! The connect family's maps: its ring, exact counters, syscalls and handshakes in flight.
use aya_ebpf::macros::map;
use aya_ebpf::maps::{LruHashMap, PerCpuArray, RingBuf};
use tcpq_common::{ConnectEvent, connect as c};

#[map]
pub(super) static CONNECT_EVENTS: RingBuf = RingBuf::with_byte_size(512 * 1024, 0);

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
pub(super) static CONNECT_START: LruHashMap<u64, ConnStart> =
    LruHashMap::with_max_entries(16384, 0);

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
pub(super) static STATE_SCRATCH: PerCpuArray<Handshake> = PerCpuArray::with_max_entries(1, 0);

/// Counts one event in `CONNECT_COUNTS[slot]`.
#[inline(always)]
pub(super) fn count(slot: u32) {
    if let Some(p) = CONNECT_COUNTS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot.
        unsafe { *p += 1 };
    }
}
