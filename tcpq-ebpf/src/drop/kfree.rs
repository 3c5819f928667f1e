//! Packets freed with a drop reason: netfilter's (and, for `tcpq trace drops`, every TCP one).
use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use tcpq_common::{DropEvent, EventHeader, drop as d, kind, lost};

use super::maps::{DROP_CONFIG, DROP_EVENTS, DROP_SCRATCH, count};
use super::owner::owner_of;
use crate::offsets::*;
use crate::shared::emit::emit;
use crate::shared::read::{kread, kread_bytes, sk_netns};

/// `DROP_SCRATCH` slot of `state::skb_kfree`'s runs.
pub const SCRATCH_OUTER: u32 = 0;
/// `DROP_SCRATCH` slot of `state::drop_kfree_nested`'s runs (a drop while the outer one works).
pub const SCRATCH_NESTED: u32 = 1;

/// `skb:kfree_skb(skb, location, reason, rx_sk)` (via `state::skb_kfree`, or
/// `state::drop_kfree_nested` for the runs the kernel skipped it for); `scratch`: the record
/// slot of the calling program.
// A BPF-to-BPF call, not inlined: the listen part's frame stays its own.
#[inline(never)]
pub fn on_kfree(skb: u64, reason: u32, scratch: u32) {
    let nf = RSN_NETFILTER_DROP.load();
    let is_nf = nf != 0 && reason == nf;
    if !is_nf && !DROP_CONFIG.get(d::CONFIG_ALL_TCP).is_some_and(|v| *v == 1) {
        return; // the common case: any other free
    }
    let _ = try_drop(skb, reason, is_nf, scratch);
}

fn try_drop(skb: u64, reason: u32, is_nf: bool, slot: u32) -> Result<(), i64> {
    let head: u64 = kread(skb, OFF_SKB_HEAD.load());
    let nh: u16 = kread(skb, OFF_SKB_NETWORK_HEADER.load());
    if head == 0 || nh == 0xffff {
        count(d::COUNT_UNPARSED);
        return Ok(());
    }
    let ip = head + nh as u64;
    let hdr: [u8; 40] = kread_bytes(ip, 0);
    let Some(scratch) = DROP_SCRATCH.get_ptr_mut(slot) else {
        return Ok(());
    };
    // SAFETY: this CPU's record for the calling program, used by it alone (see DROP_SCRATCH).
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
