//! The listen family's wire types: refusal records (`LISTEN_EVENTS`), listen() calls and
//! the per-listener tallies kept when a ring or the line budget is full.

use crate::EventHeader;

/// A listener as the kernel counts it in `LISTEN_UNSENT` (the `ListenEvent` identity fields).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerTallyKey {
    pub netns: u32,
    pub family: u16,
    pub lport: u16,
    pub cookie: u64,
    pub laddr: [u8; 16],
}

/// Events of one listener that did not go through the ring, per `kind::*` below
/// `TALLY_KINDS`, with the last queue snapshot. Per CPU; userspace sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerTally {
    pub counts: [u64; TALLY_KINDS],
    pub last_ts_ns: u64,
    pub queue: u32,
    pub backlog: u32,
    pub synq: u32,
    pub _pad: u32,
}

/// Kinds 0..TALLY_KINDS are tallied (every kind that refuses or answers a connection).
pub const TALLY_KINDS: usize = 13;

const _: () = assert!(core::mem::size_of::<ListenerTallyKey>() == 32);

const _: () = assert!(core::mem::size_of::<ListenerTally>() == 128);

/// A connection refused (or answered with a cookie) at a listening socket.
///
/// Written by the cgroup_skb ingress hook (SYN/ACK/SYNQ/COOKIE), `tcp_retransmit_synack`
/// and `tcp_send_reset`. Addresses are in network byte order, IPv4 in the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenEvent {
    /// `kind` is one of the listen `kind::*` values.
    pub header: EventHeader,
    /// Socket cookie of the listener (`sock_gen_cookie`, as in sock_diag); 0 if unknown.
    pub cookie: u64,
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    /// Local (listener) port, host byte order.
    pub lport: u16,
    /// Remote (client) port, host byte order.
    pub rport: u16,
    /// `sk_ack_backlog`: connections waiting in the accept queue.
    pub queue: u32,
    /// `sk_max_ack_backlog`: the effective backlog, min(listen() argument, somaxconn).
    pub backlog: u32,
    /// `icsk_accept_queue.qlen`: request sockets in SYN_RECV (the SYN queue).
    pub synq: u32,
}

/// `listen(fd, backlog)` as the application called it (before somaxconn caps it), with the
/// socket's local address read through the fd table at the call: the caller may be gone by the
/// time userspace sees the record (nginx listens, then daemonizes and the parent exits).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenCallEvent {
    /// `kind` is always `kind::LISTEN_CALL`; `family` is 0 when the fd could not be resolved.
    pub header: EventHeader,
    pub tgid: u32,
    pub fd: u32,
    /// The listen() argument, as passed (an int; negative values are clamped by the kernel).
    pub backlog: i32,
    /// Local port the socket is bound to, host byte order (0 if unknown).
    pub lport: u16,
    pub _pad0: u16,
    pub comm: [u8; 16],
    pub laddr: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<ListenEvent>() == 72);

const _: () = assert!(core::mem::size_of::<ListenCallEvent>() == 64);

const _: () = assert!(core::mem::align_of::<ListenEvent>() == 8);

// Every record starts with its header: userspace peeks at it before knowing the type.
const _: () = assert!(core::mem::offset_of!(ListenEvent, header) == 0);

const _: () = assert!(core::mem::offset_of!(ListenCallEvent, header) == 0);

/// The largest record in `LISTEN_EVENTS`; userspace rejects shorter records.
pub const MAX_LISTEN_RECORD: usize = 72;
