//! Outbound connects (`CONNECT_EVENTS`, `ConnectEvent`).

use crate::EventHeader;

/// `CONNECT_COUNTS` slots (exact, per-CPU, incremented before the ring is tried; records
/// the ring had no room for: `RING_LOST[lost::CONNECT]`).
pub const COUNT_OK: u32 = 0;
pub const COUNT_REFUSED: u32 = 1;
pub const COUNT_TIMEOUT: u32 = 2;
pub const COUNT_EADDRNOTAVAIL: u32 = 3;
pub const COUNT_OTHER: u32 = 4;
pub const COUNT_SYN_RETRANS: u32 = 5;
pub const COUNT_SLOTS: u32 = 6;

/// One connect() outcome. Addresses in network byte order (IPv4 in the first 4 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectEvent {
    /// `kind::CONNECT_SYSCALL` or `kind::CONNECT_HANDSHAKE`.
    pub header: EventHeader,
    /// Time spent in the connect() syscall (0 if unknown).
    pub syscall_ns: u64,
    /// SYN sent → ESTABLISHED/CLOSE (0 when no SYN left).
    pub handshake_ns: u64,
    pub tgid: u32,
    /// 0 on success, else a negative errno (from the syscall, or `-sk_err` of the handshake;
    /// -103 ECONNABORTED when the application closed the socket before the handshake ended).
    pub result: i32,
    pub sport: u16,
    pub dport: u16,
    /// SYN retransmissions during the handshake.
    pub syn_retrans: u16,
    pub _pad: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub comm: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<ConnectEvent>() == 96);
