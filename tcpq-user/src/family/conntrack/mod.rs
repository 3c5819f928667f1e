//! The conntrack family: netfilter drops (table full vs a rule), the table's state per
//! namespace, its top consumers, and what to change.
pub mod aggregate;
pub mod ctnetlink;
pub mod decode;
pub mod diagnose;
pub mod render;
pub mod snapshot;
