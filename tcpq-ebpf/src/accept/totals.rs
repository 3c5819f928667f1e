//! Accepts counted per (listener, process, CPU) in `ACCEPT_TOTALS` instead of a record each
//! (the live commands: ACCEPT_AGGREGATE).
use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns};
use tcpq_common::{AcceptKey, SLOW_WAIT_US, lost, wait_bucket};

use super::maps::{ACCEPT_TOTALS, ZERO_TOTALS};
use super::queue::queue_wait;
use crate::offsets::*;
use crate::shared::emit::count_lost;
use crate::shared::read::{kread, kread_addr16, sk_netns};

/// One accept of `child` by process `tgid`, added to its (listener, process) totals.
#[inline(always)]
pub(super) fn tally(child: u64, tgid: u32) {
    let mut key = AcceptKey {
        netns: sk_netns(child),
        tgid,
        family: kread(child, OFF_SK_FAMILY.load()),
        lport: kread(child, OFF_SK_NUM.load()),
        // SAFETY: no arguments.
        cpu: unsafe { bpf_get_smp_processor_id() },
        ..AcceptKey::default()
    };
    if key.family == 10 {
        key.laddr = kread_addr16(child, OFF_SK_V6_RCV_SADDR.load());
    } else {
        let l: [u8; 4] = kread(child, OFF_SK_RCV_SADDR.load());
        key.laddr[..4].copy_from_slice(&l);
    }
    // SAFETY: no arguments.
    let wait_ns = queue_wait(child, unsafe { bpf_ktime_get_ns() });
    let totals = match ACCEPT_TOTALS.get_ptr_mut(&key) {
        Some(t) => t,
        None => {
            let Some(zero) = ZERO_TOTALS.get(0) else {
                return;
            };
            // BPF_NOEXIST: another CPU may have added it meanwhile; the lookup below finds it.
            let _ = ACCEPT_TOTALS.insert(&key, zero, 1);
            match ACCEPT_TOTALS.get_ptr_mut(&key) {
                Some(t) => t,
                None => return count_lost(lost::ACCEPT_TOTALS_FULL),
            }
        }
    };
    // SAFETY: `totals` points at the map value of this CPU's key: no other CPU writes it.
    unsafe {
        (*totals).accepts += 1;
        if wait_ns == 0 {
            (*totals).unknown_wait += 1;
            return;
        }
        let us = wait_ns / 1000;
        if us >= SLOW_WAIT_US {
            (*totals).slow += 1;
        }
        // The compiler knows the bucket is in range and drops the check; the verifier cannot
        // follow leading_zeros(): hide the value so that the bound is tested where it can see it.
        let bucket = core::hint::black_box(wait_bucket(us));
        if let Some(b) = (*totals).buckets.get_mut(bucket) {
            *b += 1;
        }
    }
}
