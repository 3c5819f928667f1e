//! Outbound connects: every connect() outcome with its destination, source port, result,
//! time in the syscall (the port search is in there: inet_hash_connect()), handshake latency
//! and SYN retransmits. Handshake state is keyed by socket pointer and deleted when the
//! handshake ends (libbpf-tools tcpconnlat style); LRU maps bound what is never cleaned.
//!
//! `maps`: its maps and counters; `record`: filling, counting and sending a record; `syscall`:
//! connect() entry and exit; `handshake`: SYN_SENT → ESTABLISHED / CLOSE; `retrans`: SYNs
//! retransmitted while connecting.
mod handshake;
mod maps;
mod record;
mod retrans;
mod syscall;

pub use handshake::{on_failed_handshake, on_state};
/// Read by `shared::owner` (the drop family names a handshake's process).
pub(crate) use maps::SYN_START;

// Address families, socket states and errnos the family compares with (the kernel's values).
pub(super) const AF_INET: u16 = 2;
pub(super) const AF_INET6: u16 = 10;
pub(super) const TCP_ESTABLISHED: i32 = 1;
pub(super) const TCP_SYN_SENT: i32 = 2;
pub(super) const TCP_CLOSE: i32 = 7;
pub(super) const EINPROGRESS: i64 = 115;
pub(super) const EALREADY: i64 = 114;
pub(super) const EISCONN: i64 = 106;
pub(super) const ECONNREFUSED: i32 = 111;
pub(super) const ETIMEDOUT: i32 = 110;
pub(super) const EADDRNOTAVAIL: i32 = 99;
pub(super) const ECONNABORTED: i32 = 103;
