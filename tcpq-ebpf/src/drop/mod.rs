//! Drop family: packets netfilter dropped (`skb:kfree_skb` with SKB_DROP_REASON_NETFILTER_DROP).
//! A packet dropped without a conntrack entry while the table is at its limit is a table-full
//! drop (nf_conntrack_in(): init_conntrack() failed); one with an entry was dropped by a rule.
//!
//! `maps`: its maps and counters; `owner`: who connects each socket; `kfree`: the drop records.
mod kfree;
mod maps;
mod owner;

pub use kfree::{SCRATCH_NESTED, SCRATCH_OUTER, on_kfree};
pub use owner::on_state;
