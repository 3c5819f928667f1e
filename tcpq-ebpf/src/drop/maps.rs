//! The drop family's maps: its ring, counters, configuration, socket owners and scratch record.
use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, LruHashMap, PerCpuArray, RingBuf};
use tcpq_common::{DropEvent, drop as d};

#[map]
pub(super) static DROP_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[map]
static DROP_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(d::COUNT_SLOTS, 0);

/// Written by userspace: `tcpq trace drops` sets `CONFIG_ALL_TCP`.
#[map]
pub(super) static DROP_CONFIG: Array<u32> = Array::with_max_entries(d::CONFIG_SLOTS, 0);

/// The process that started connecting a socket: a SYN retransmitted from a timer runs in
/// softirq, where the current task is whoever was interrupted.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Owner {
    pub tgid: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<Owner>() == tcpq_common::OWNER_SIZE);

#[map]
pub(super) static SOCK_OWNER: LruHashMap<u64, Owner> = LruHashMap::with_max_entries(65536, 0);

/// Counts one event in `DROP_COUNTS[slot]`.
#[inline(always)]
pub(super) fn count(slot: u32) {
    if let Some(p) = DROP_COUNTS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot.
        unsafe { *p += 1 };
    }
}

/// Where a drop record is built before it goes to the ring: off the stack, which kernels
/// before 6.13 limit to 512 bytes per call chain (6.1 refused the family: "combined stack size
/// of 2 calls is 544"). One slot per program (`kfree::SCRATCH_OUTER` for `skb_kfree`,
/// `SCRATCH_NESTED` for `drop_kfree_nested`, which runs while the first is mid-record): neither
/// nests on a CPU (a raw tracepoint program firing inside itself is skipped).
#[map]
pub(super) static DROP_SCRATCH: PerCpuArray<DropEvent> = PerCpuArray::with_max_entries(2, 0);
