//! Packets dropped by netfilter (`DROP_EVENTS`, `DropEvent`).

use crate::EventHeader;

/// `DROP_CONFIG` slot: 1 = also report every TCP drop, not only netfilter's.
pub const CONFIG_ALL_TCP: u32 = 0;
pub const CONFIG_SLOTS: u32 = 1;
/// `DROP_COUNTS` slots (records the ring had no room for: `RING_LOST[lost::DROP]`).
/// Frees whose IP header could not be read (no event sent).
pub const COUNT_UNPARSED: u32 = 0;
pub const COUNT_SLOTS: u32 = 1;
/// `DropEvent::direction`.
pub const DIR_IN: u8 = 0;
pub const DIR_OUT: u8 = 1;

/// A packet freed with SKB_DROP_REASON_NETFILTER_DROP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    /// `kind::DROP_NETFILTER` or `kind::DROP_TCP`.
    pub header: EventHeader,
    /// Locally generated packets (skb->sk set): the sending process; else 0.
    pub tgid: u32,
    /// The `enum skb_drop_reason` value (names come from the running kernel's BTF).
    pub reason: u32,
    pub sport: u16,
    pub dport: u16,
    /// IPPROTO_TCP, IPPROTO_UDP, …
    pub proto: u8,
    /// 1 when the skb carried a conntrack entry (`skb->_nfct`): a rule dropped it.
    pub has_ct: u8,
    /// `drop::DIR_IN` / `drop::DIR_OUT`.
    pub direction: u8,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub comm: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<DropEvent>() == 80);
