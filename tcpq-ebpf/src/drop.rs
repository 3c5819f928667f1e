//! Drop family: packets netfilter dropped (`skb:kfree_skb` with SKB_DROP_REASON_NETFILTER_DROP).
//! A packet dropped without a conntrack entry while the table is at its limit is a table-full
//! drop (nf_conntrack_in(): init_conntrack() failed); one with an entry was dropped by a rule.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use tcpq_common::{DropEvent, EventHeader, drop as d, kind, lost, state_hooks};

use crate::{
    offsets::*,
    shared::read::{kread, kread_bytes, sk_netns},
    shared::emit::emit,
};

#[map]
static DROP_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[map]
static DROP_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(d::COUNT_SLOTS, 0);

/// Written by userspace: `tcpq trace drops` sets `CONFIG_ALL_TCP`.
#[map]
static DROP_CONFIG: Array<u32> = Array::with_max_entries(d::CONFIG_SLOTS, 0);

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
static SOCK_OWNER: LruHashMap<u64, Owner> = LruHashMap::with_max_entries(65536, 0);

/// `sock:inet_sock_set_state` (via `state::sock_state`, only when the connect family is not
/// attached: its handshake records name the owner then): remember who connects (SYN_SENT, in
/// the connect() caller's context); forget on CLOSE.
// A BPF-to-BPF call, not inlined: each family's frame stays its own (the stack limit is
// 512 bytes per call chain, and the four inlined together exceed it).
#[inline(never)]
pub fn on_state(sk: u64, new: i32) {
    if new == 2 {
        let owner = Owner {
            tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
            _pad: 0,
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
        };
        let _ = SOCK_OWNER.insert(sk, owner, 0);
    } else if new == 7 && SOCK_OWNER.get_ptr(sk).is_some() {
        // Look first: server-side sockets never had an owner entry, and a lookup is lock-free.
        let _ = SOCK_OWNER.remove(sk);
    }
}

/// The process that connected `sk`, if tcpq saw it start the handshake.
#[inline(always)]
fn owner_of(sk: u64) -> Option<(u32, [u8; 16])> {
    // The connect family's record of this very handshake first; else this family's own (the
    // live commands arm them independently; userspace clears SOCK_OWNER when it disarms it).
    if STATE_HOOKS.load() & state_hooks::CONNECT != 0
        && let Some(o) = crate::shared::owner::handshake_owner(sk)
    {
        return Some(o);
    }
    SOCK_OWNER.get_ptr(sk).map(|o| {
        // SAFETY: map value pointer, copied out at once.
        let o = unsafe { *o };
        (o.tgid, o.comm)
    })
}

#[inline(always)]
fn count(slot: u32) {
    if let Some(p) = DROP_COUNTS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot.
        unsafe { *p += 1 };
    }
}

/// Where `skb_kfree` builds a drop record before it goes to the ring: off the stack, which
/// kernels before 6.13 limit to 512 bytes per call chain (6.1 refused the family: "combined
/// stack size of 2 calls is 544"). `skb_kfree` does not nest on a CPU (a raw tracepoint program
/// firing inside itself is skipped), and nothing else writes the slot.
#[map]
static DROP_SCRATCH: PerCpuArray<DropEvent> = PerCpuArray::with_max_entries(1, 0);

/// `skb:kfree_skb(skb, location, reason, rx_sk)` (via `state::skb_kfree`).
// A BPF-to-BPF call, not inlined: the listen part's frame stays its own.
#[inline(never)]
pub fn on_kfree(skb: u64, reason: u32) {
    let nf = RSN_NETFILTER_DROP.load();
    let is_nf = nf != 0 && reason == nf;
    if !is_nf && !DROP_CONFIG.get(d::CONFIG_ALL_TCP).is_some_and(|v| *v == 1) {
        return; // the common case: any other free
    }
    let _ = try_drop(skb, reason, is_nf);
}

fn try_drop(skb: u64, reason: u32, is_nf: bool) -> Result<(), i64> {
    let head: u64 = kread(skb, OFF_SKB_HEAD.load());
    let nh: u16 = kread(skb, OFF_SKB_NETWORK_HEADER.load());
    if head == 0 || nh == 0xffff {
        count(d::COUNT_UNPARSED);
        return Ok(());
    }
    let ip = head + nh as u64;
    let hdr: [u8; 40] = kread_bytes(ip, 0);
    let Some(scratch) = DROP_SCRATCH.get_ptr_mut(0) else {
        return Ok(());
    };
    // SAFETY: this CPU's scratch slot, used by `skb_kfree` alone (see DROP_SCRATCH).
    let ev = unsafe { &mut *scratch };
    *ev = DropEvent {
        header: EventHeader {
            kind: if is_nf {
                kind::DROP_NETFILTER
            } else {
                kind::DROP_TCP
            },
            ..EventHeader::default()
        },
        reason,
        ..DropEvent::default()
    };
    let l4_off: u64;
    match hdr[0] >> 4 {
        4 => {
            ev.header.family = 2;
            ev.proto = hdr[9];
            ev.saddr[..4].copy_from_slice(&hdr[12..16]);
            ev.daddr[..4].copy_from_slice(&hdr[16..20]);
            l4_off = ((hdr[0] & 0x0f) as u64) * 4;
        }
        6 => {
            ev.header.family = 10;
            ev.proto = hdr[6];
            ev.saddr.copy_from_slice(&hdr[8..24]);
            ev.daddr.copy_from_slice(&hdr[24..40]);
            l4_off = 40;
        }
        _ => {
            count(d::COUNT_UNPARSED);
            return Ok(());
        }
    }
    if !is_nf && ev.proto != 6 {
        return Ok(()); // `trace drops` is about TCP
    }
    if ev.proto == 6 || ev.proto == 17 {
        let l4: [u8; 14] = kread_bytes(ip + l4_off, 0);
        ev.sport = u16::from_be_bytes([l4[0], l4[1]]);
        ev.dport = u16::from_be_bytes([l4[2], l4[3]]);
        if ev.proto == 6 {
            ev.tcp_flags = l4[13];
        }
    }
    let nfct: u64 = kread(skb, OFF_SKB_NFCT.load());
    ev.has_ct = (nfct & !7u64 != 0) as u8;
    let sk: u64 = kread(skb, OFF_SKB_SK.load());
    if sk != 0 {
        ev.direction = d::DIR_OUT;
        // Locally generated. The connecting process if we saw it connect; else the current
        // task (right for sendmsg()/connect(), not for timer retransmits).
        match owner_of(sk) {
            Some((tgid, comm)) => {
                ev.tgid = tgid;
                ev.comm = comm;
            }
            None => {
                ev.tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
                ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
            }
        }
        ev.header.netns = sk_netns(sk);
    } else {
        ev.direction = d::DIR_IN;
        let dev: u64 = kread(skb, OFF_SKB_DEV.load());
        let net: u64 = kread(dev, OFF_DEV_NET.load());
        ev.header.netns = kread(net, OFF_NET_INUM.load());
    }
    // The conntrack count lives in net_generic() data since 5.x: userspace samples
    // nf_conntrack_count per namespace instead.
    // SAFETY: no arguments.
    ev.header.ts_ns = unsafe { bpf_ktime_get_ns() };
    emit(&DROP_EVENTS, ev, lost::DROP);
    Ok(())
}
