//! The one way a record goes to a ring buffer: reserved, copied in from where it was built,
//! submitted; a full ring counts one loss in `RING_LOST`, the same way for every family.
use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use tcpq_common::lost;

/// Records no ring had room for, by `lost::*` slot (userspace sums each family's slots).
#[map]
static RING_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(lost::SLOTS, 0);

/// Counts one loss in `RING_LOST[slot]`.
#[inline(always)]
pub fn count_lost(slot: u32) {
    if let Some(p) = RING_LOST.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot (migration is disabled while the program runs).
        unsafe { *p += 1 };
    }
}

/// Sends `record` to `ring`. False, with one loss counted in `lost_slot`, when the ring is
/// full. The record is copied memory to memory into the reservation — from a map value when
/// the caller built it there — never through a stack temporary: kernels before 6.13 allow 512
/// bytes of stack per call chain.
#[inline(always)]
pub fn emit<T: 'static>(ring: &RingBuf, record: &T, lost_slot: u32) -> bool {
    match ring.reserve::<T>(0) {
        Some(mut entry) => {
            // SAFETY: the reservation holds one `T`; `record` is a valid one and cannot overlap
            // ring memory reserved just now.
            unsafe { core::ptr::copy_nonoverlapping(record, entry.as_mut_ptr(), 1) };
            entry.submit(0);
            true
        }
        None => {
            count_lost(lost_slot);
            false
        }
    }
}
