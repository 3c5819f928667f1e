//! Packets recorded at ingress until their outcome is seen: this CPU's slot, other CPUs' slots
//! (an outcome that surfaces on another CPU) and final-ACK records parked by tuple.
use aya_ebpf::helpers::generated::bpf_jiffies64;
use tcpq_common::{config, kind};

use super::maps::{
    BACKLOG_LAST, BACKLOG_PENDING, BACKLOG_RPORT_MASK, BACKLOG_RPORTS, BACKLOG_WINDOW_NS,
    LISTEN_CONFIG, LISTEN_COUNTS, LISTEN_HOT_PORT, PENDING, Pending, RECENT_JIFFIES, TupleKey,
};
use super::report::bump;
use crate::offsets::*;

#[inline(always)]
pub(super) fn jiffies() -> u64 {
    // SAFETY: no arguments.
    unsafe { bpf_jiffies64() }
}

/// Whether any CPU recorded a SYN/ACK recently enough for it to be still unresolved.
#[inline(always)]
pub(super) fn records_recent() -> bool {
    LISTEN_HOT_PORT
        .get(1)
        .is_some_and(|t| *t != 0 && jiffies().wrapping_sub(*t) <= RECENT_JIFFIES)
}

/// Upper bound of the per-CPU slot scans; NR_CPUS (a verifier-known constant) is the real one,
/// and bpf_map_lookup_percpu_elem returns NULL past the last CPU anyway.
const MAX_CPUS: u32 = 128;

/// The first CPU slot holding an unresolved record for these ports and, when given, these
/// (client, listener) addresses: an outcome seen on another CPU than its packet's record.
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
pub(super) fn other_cpu_pending(key: &TupleKey) -> Option<&'static mut Pending> {
    scan_cpus(key.rport, key.lport, Some(key))
}

/// Whether any CPU holds an unresolved record for these ports (addresses not compared): the
/// cheap gate before the packet's addresses are read.
#[inline(always)]
pub(super) fn other_cpu_has_ports(rport: u16, lport: u16) -> bool {
    scan_cpus(rport, lport, None).is_some()
}

#[inline(always)]
pub(super) fn hot_port() -> u16 {
    LISTEN_HOT_PORT.get(0).map(|p| *p as u16).unwrap_or(0)
}

/// Keeps a final-ACK record by tuple while its outcome is still unseen (see
/// `outcome::settle_unfinished`).
#[inline(always)]
pub(super) fn park(rec: &Pending, now: u64) {
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
pub(super) fn backlog_used_recently(now: u64) -> bool {
    BACKLOG_LAST
        .get(0)
        .is_some_and(|t| *t != 0 && now.saturating_sub(*t) <= BACKLOG_WINDOW_NS)
}

/// Whether a record for this listener port and client port may be parked: the port of the
/// listener whose backlog was used last, and a recent park for a client port in the same slot
/// of BACKLOG_RPORTS. Two array reads keep the address read and the hash lookup off the path
/// of the packets (nearly all) that were never parked.
#[inline(always)]
pub(super) fn may_be_parked(lport: u16, rport: u16, now: u64) -> bool {
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
pub(super) fn backlog_pending(key: &TupleKey, now: u64) -> Option<&'static mut Pending> {
    let p = BACKLOG_PENDING.get_ptr_mut(key)?;
    // SAFETY: map value pointer; the record is removed by whoever resolves it.
    let p = unsafe { &mut *p };
    if p.active == 0 || now.saturating_sub(p.rec_ns) > BACKLOG_WINDOW_NS {
        return None;
    }
    Some(p)
}

#[inline(always)]
pub(super) fn confirm_mode() -> bool {
    LISTEN_CONFIG.get(config::CONFIRM).is_some_and(|v| *v == 1)
}

#[inline(always)]
pub(super) fn pending() -> Option<&'static mut Pending> {
    let p = PENDING.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot (see `Pending`).
    let p = unsafe { &mut *p };
    if p.active == 0 { None } else { Some(p) }
}
