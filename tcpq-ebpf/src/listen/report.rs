//! How a listen event is counted and reported: exact per-kind counts, the per-CPU line budget,
//! per-listener tallies of what did not go through the ring, and the ring itself.
use aya_ebpf::maps::PerCpuArray;
use tcpq_common::{ListenEvent, ListenerTallyKey, TALLY_KINDS, config, kind};

use super::maps::{
    BPF_NOEXIST, LISTEN_BUDGET, LISTEN_CONFIG, LISTEN_COUNTS, LISTEN_EVENTS, LISTEN_UNSENT,
    ZERO_TALLY,
};
use crate::shared;

/// Adds one to this CPU's `slot` of `map`.
#[inline(always)]
pub(super) fn bump(map: &PerCpuArray<u64>, slot: u32) {
    if let Some(p) = map.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot owned by this CPU while the program runs (migration disabled).
        unsafe { *p += 1 };
    }
}

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
pub(super) fn emit(ev: &ListenEvent, lost_slot: u32) {
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
