//! Conntrack: netfilter drop ring records → typed events, table full vs a rule. Pure and
//! unit-tested.
use std::net::IpAddr;

use tcpq_common::{DropEvent, drop as d, kind};

use crate::{
    snapshot::listeners::ListenerDirectory,
    wire::{DecodeError, addr, comm_str, read_event_of_kind},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfDrop {
    /// false: a TCP drop for another reason (`tcpq trace drops`).
    pub netfilter: bool,
    /// `enum skb_drop_reason` value.
    pub reason: u32,
    pub ts_ns: u64,
    pub netns: u32,
    pub tgid: u32,
    pub comm: String,
    pub proto: u8,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub has_ct: bool,
    pub outbound: bool,
    pub tcp_flags: u8,
}

impl NfDrop {
    /// The process a drop is charged to (pid 0 and no name: none found). An outbound packet is
    /// dropped in its sender's context; an inbound one in softirq, so its owner is the listener
    /// of the destination port.
    pub fn owner(&self, dir: &mut ListenerDirectory) -> (u32, String) {
        if self.outbound {
            return (self.tgid, self.comm.clone());
        }
        match dir
            .lookup(self.netns, 0, self.daddr, self.dport)
            .and_then(|i| i.primary().cloned())
        {
            Some(o) => (o.pid, o.comm),
            None => (0, String::new()),
        }
    }

    /// `out` or `in`, as the trace lines show it.
    pub fn direction(&self) -> &'static str {
        if self.outbound { "out" } else { "in" }
    }
}

pub fn decode_drop(bytes: &[u8]) -> Result<NfDrop, DecodeError> {
    let e: DropEvent = read_event_of_kind(bytes, &[kind::DROP_NETFILTER, kind::DROP_TCP])?;
    Ok(NfDrop {
        netfilter: e.header.kind == kind::DROP_NETFILTER,
        reason: e.reason,
        ts_ns: e.header.ts_ns,
        netns: e.header.netns,
        tgid: e.tgid,
        comm: comm_str(&e.comm),
        proto: e.proto,
        saddr: addr(e.header.family, &e.saddr),
        sport: e.sport,
        daddr: addr(e.header.family, &e.daddr),
        dport: e.dport,
        has_ct: e.has_ct != 0,
        outbound: e.direction == d::DIR_OUT,
        tcp_flags: e.tcp_flags,
    })
}

/// `table_full` when netfilter dropped a packet that got no conntrack entry (nf_conntrack_in()
/// could not create one: the kernel's `drop` stat counts exactly these); `rule` when it had one
/// (a rule after conntrack dropped it) or conntrack is not in use. A rule in a hook that runs
/// before conntrack (raw table) also leaves no entry: summaries show the kernel's `drop` stat
/// next to tcpq's count so such a difference is visible.
pub fn drop_kind(has_ct: bool, conntrack_in_use: bool) -> &'static str {
    if has_ct || !conntrack_in_use {
        "rule"
    } else {
        "table_full"
    }
}

pub fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => format!("proto {n}"),
    }
}
