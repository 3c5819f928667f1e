//! Wire types shared by the kernel programs (`tcpq-ebpf`) and userspace (`tcpq-user`).
//!
//! Everything here is `#[repr(C)]` with fixed-width fields and explicit padding: no enums or
//! bools cross the ring buffers, only integers whose meaning is given by the consts below.
//! Here: map and program names, the `EventHeader` every ring record starts with, every record
//! `kind`, the `RING_LOST` slots and the shared programs' knobs; each family's own types are in
//! `listen`, `connect`, `drop` and `accept` (re-exported here).
#![no_std]

pub mod accept;
pub mod connect;
pub mod drop;
pub mod listen;

pub use accept::*;
pub use connect::ConnectEvent;
pub use drop::DropEvent;
pub use listen::*;

/// Names of maps and programs, shared so that a rename cannot silently break the loader.
pub mod names {
    pub const LISTEN_EVENTS: &str = "LISTEN_EVENTS";
    pub const LISTEN_COUNTS: &str = "LISTEN_COUNTS";
    /// Per-CPU array indexed by `lost::*`: records no ring had room for, every family's.
    pub const RING_LOST: &str = "RING_LOST";
    pub const ACCEPTS_BY_TGID: &str = "ACCEPTS_BY_TGID";

    pub const PROG_LISTEN_INGRESS: &str = "listen_ingress";
    pub const PROG_SYNACK_RETRANS: &str = "synack_retransmit";
    /// The one program on `tcp:tcp_send_reset`; `reset_hooks` bits are its parts.
    pub const PROG_SEND_RESET: &str = "send_reset";
    /// Its listen part: resets sent on overflow (`tcp_abort_on_overflow=1`).
    pub const PROG_OVERFLOW_RESET: &str = "overflow_reset";
    /// Its accept part: connections a process closed with data unread (TCPAbortOnClose).
    pub const PROG_ABORT_CLOSE: &str = "abort_close";
    /// Per-CPU LRU hash: `AbortKey` → `AbortTally`.
    pub const ABORTS_ON_CLOSE: &str = "ABORTS_ON_CLOSE";
    pub const PROG_SYS_ENTER_LISTEN: &str = "sys_enter_listen";
    pub const PROG_SYS_EXIT_ACCEPT: &str = "sys_exit_accept";
    pub const PROG_SYS_EXIT_ACCEPT4: &str = "sys_exit_accept4";
    pub const PROG_FENTRY_PROBE: &str = "fentry_probe";
    /// fentry/kprobe backends of `sys_enter_listen` (`__sys_listen`), fexit of the accept rate.
    pub const PROG_LISTEN_FENTRY: &str = "listen_fentry";
    pub const PROG_LISTEN_KPROBE: &str = "listen_kprobe";
    pub const PROG_ACCEPT_COUNT_FEXIT: &str = "accept_count_fexit";
    /// The one program on `sock:inet_sock_set_state`; the four state hooks below are its parts.
    pub const PROG_SOCK_STATE: &str = "sock_state";
    /// An empty program on the same tracepoint, for the bench's cost floor.
    pub const PROG_FLOOR_PROBE: &str = "floor_probe";
    pub const PROG_OUTCOME_XMIT: &str = "outcome_xmit";
    pub const PROG_OUTCOME_CHILD: &str = "outcome_child";
    pub const PROG_OUTCOME_CONSUME: &str = "outcome_consume";
    pub const PROG_OUTCOME_KFREE: &str = "outcome_kfree";
    pub const LISTEN_CONFIG: &str = "LISTEN_CONFIG";
    pub const LISTEN_UNSENT: &str = "LISTEN_UNSENT";

    pub const CONNECT_EVENTS: &str = "CONNECT_EVENTS";
    pub const CONNECT_COUNTS: &str = "CONNECT_COUNTS";
    pub const PROG_SYS_ENTER_CONNECT: &str = "sys_enter_connect";
    pub const PROG_SYS_EXIT_CONNECT: &str = "sys_exit_connect";
    pub const PROG_CONNECT_STATE: &str = "connect_state";
    pub const PROG_CONNECT_RETRANS: &str = "connect_retrans";
    /// fentry/fexit backend of the connect syscall hooks (`__sys_connect`).
    pub const PROG_CONNECT_FENTRY: &str = "connect_fentry";
    pub const PROG_CONNECT_FEXIT: &str = "connect_fexit";

    pub const DROP_EVENTS: &str = "DROP_EVENTS";
    pub const DROP_COUNTS: &str = "DROP_COUNTS";
    pub const PROG_DROP_KFREE: &str = "drop_kfree";
    pub const PROG_DROP_OWNER: &str = "drop_owner";
    /// A second program on `skb:kfree_skb`: the drop part for the calls the kernel skipped
    /// `skb_kfree` for (it was already running on that CPU).
    pub const PROG_DROP_NESTED: &str = "drop_kfree_nested";
    /// Per-CPU count of those skipped runs it did instead (taken out of the missed runs).
    pub const RESCUED_RUNS: &str = "RESCUED_RUNS";
    /// LRU hash: socket pointer → the process that connected it (drop family).
    pub const SOCK_OWNER: &str = "SOCK_OWNER";
    pub const DROP_CONFIG: &str = "DROP_CONFIG";

    pub const ACCEPT_EVENTS: &str = "ACCEPT_EVENTS";
    pub const IN_ACCEPT: &str = "IN_ACCEPT";
    pub const ACCEPT_TOTALS: &str = "ACCEPT_TOTALS";
    pub const ENQUEUE_SINCE: &str = "ENQUEUE_SINCE";
    pub const PROG_ACCEPT_ENQUEUE: &str = "accept_enqueue";
    pub const PROG_ACCEPT_ENTER4: &str = "accept_enter4";
    pub const PROG_ACCEPT_ENTER: &str = "accept_enter";
    pub const PROG_ACCEPT_EXIT4: &str = "accept_exit4";
    pub const PROG_ACCEPT_EXIT: &str = "accept_exit";
    /// fentry/fexit backend of the accept syscall hooks (`__sys_accept4`: accept and accept4).
    pub const PROG_ACCEPT_FENTRY: &str = "accept_fentry";
    pub const PROG_ACCEPT_FEXIT: &str = "accept_fexit";

    /// Array indexed by `dispatcher::*`: the parts of each shared program that run now (the live
    /// commands arm the per-connection and per-packet parts while their family has trouble).
    pub const ARMED_PARTS: &str = "ARMED_PARTS";
    /// The one program on `skb:kfree_skb`; `kfree_hooks` bits are its parts.
    pub const PROG_SKB_KFREE: &str = "skb_kfree";
}

/// The head of every ring record (`ListenEvent`, `ListenCallEvent`, `ConnectEvent`,
/// `DropEvent`, `AcceptEvent`): userspace reads it first to dispatch on `kind`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of `kind::*`: tells the record's type and meaning.
    pub kind: u16,
    /// AF_INET (2) or AF_INET6 (10); 0 when unknown.
    pub family: u16,
    /// Network namespace inode (`sock_net(sk)->ns.inum`).
    pub netns: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
}

const _: () = assert!(core::mem::size_of::<EventHeader>() == 16);

/// Every record kind of every ring (`EventHeader::kind`), in one place so that two families
/// cannot pick the same value. The listen values (1..=16) are also the index into the per-CPU
/// `LISTEN_COUNTS` array, which the kernel increments for every classified packet whether or
/// not the event fit in the ring.
pub mod kind {
    /// SYN dropped because the accept queue is full (`tcp_conn_request`, LINUX_MIB_LISTENOVERFLOWS).
    pub const SYN_DROP: u16 = 1;
    /// Final handshake ACK dropped because the accept queue is full (`tcp_v4_syn_recv_sock`).
    pub const ACK_DROP: u16 = 2;
    /// SYN dropped because the request (SYN) queue is full and syncookies are off
    /// (LINUX_MIB_TCPREQQFULLDROP).
    pub const SYNQ_DROP: u16 = 3;
    /// SYN answered with a syncookie because the request queue is full (LINUX_MIB_SYNCOOKIESSENT).
    pub const COOKIE: u16 = 4;
    /// A SYN-ACK retransmitted by a listener (`tcp:tcp_retransmit_synack`).
    pub const SYNACK_RETRANS: u16 = 5;
    /// A reset sent by a listener whose accept queue is full (`tcp_abort_on_overflow=1`).
    pub const OVERFLOW_RESET: u16 = 6;
    /// Count only: drops (counted as `SYN_DROP` / `ACK_DROP`) that neither look at the queues
    /// explained: a race with another CPU, or a rare other reason (no route, memory, LSM).
    pub const OTHER_DROP: u16 = 7;
    /// Count only: a packet whose outcome the confirmation hooks did not observe.
    pub const UNRESOLVED: u16 = 8;
    /// Count only: cookie SYN-ACKs seen leaving without a recorded SYN (also counted as COOKIE).
    pub const COOKIE_UNMATCHED: u16 = 9;
    /// Count only: refusals counted per listener in `LISTEN_UNSENT` instead of the ring (over
    /// the per-CPU line budget, or the ring was full).
    pub const UNSENT: u16 = 10;
    /// Count only: SYNs/ACKs not followed through because every queue of their listener was
    /// far below its limit (no refusal possible; see `listen::far_from_limits`).
    pub const FAR_FROM_LIMITS: u16 = 11;
    /// SYN dropped by tcp_conn_request()'s tcp_max_syn_backlog rule: tcp_syncookies=0 and the
    /// SYN queue holds more than 3/4 of net.ipv4.tcp_max_syn_backlog (below the listener's
    /// backlog); counted by the kernel only in LINUX_MIB_LISTENDROPS.
    pub const SYN_BACKLOG_DROP: u16 = 12;
    /// Count only: final-ACK records kept by tuple (BACKLOG_PENDING) because their CPU's slot
    /// was needed for the next packet while their outcome was still unseen.
    pub const PARKED: u16 = 13;
    /// Count only: parked records whose outcome was then seen. PARKED − PARK_RESOLVED are
    /// records whose outcome tcpq never saw (part of `unresolved`).
    pub const PARK_RESOLVED: u16 = 14;
    /// Count only: SYN records still open when the next packet reached their CPU's slot, decided
    /// then as consumed (no outcome hook saw their free; see `listen::outcome::settle_unfinished`).
    pub const LATE_RESOLVED: u16 = 15;
    /// `listen(fd, backlog)` entered (`syscalls:sys_enter_listen`); a `ListenCallEvent`.
    pub const LISTEN_CALL: u16 = 16;
    /// Size of the `LISTEN_COUNTS` array.
    pub const COUNT_SLOTS: u32 = 17;

    /// Connect family (`CONNECT_EVENTS`, `ConnectEvent`): a connect() that failed inside the
    /// syscall before any SYN left (EADDRNOTAVAIL, ENETUNREACH, …) or a blocking connect()
    /// whose handshake ended inside the syscall.
    pub const CONNECT_SYSCALL: u16 = 32;
    /// A handshake that ended after a non-blocking connect() returned EINPROGRESS.
    pub const CONNECT_HANDSHAKE: u16 = 33;

    /// Drop family (`DROP_EVENTS`, `DropEvent`): a packet netfilter dropped.
    pub const DROP_NETFILTER: u16 = 48;
    /// Any other TCP drop (`tcpq trace drops`), with its `skb_drop_reason`.
    pub const DROP_TCP: u16 = 49;

    /// Accept family (`ACCEPT_EVENTS`, `AcceptEvent`): accept() returned a connection.
    pub const ACCEPTED: u16 = 64;
    /// accept() failed (`AcceptEvent::result` is the negative errno).
    pub const ACCEPT_FAILED: u16 = 65;
}

/// Index into the per-CPU `RING_LOST` array: records that did not fit in their ring, one slot
/// per hook that writes one (the kernel's one `emit` counts them). A family's "lost events"
/// are the sum of its slots.
pub mod lost {
    /// Listen family (`LISTEN_EVENTS`): the slots `LISTEN` spans, one per hook.
    pub const LISTEN_INGRESS: u32 = 0;
    pub const SYNACK_RETRANS: u32 = 1;
    pub const SEND_RESET: u32 = 2;
    pub const SYS_ENTER_LISTEN: u32 = 3;
    /// Events emitted when a packet's outcome is confirmed (consume_skb / kfree_skb).
    pub const OUTCOME: u32 = 4;
    /// Every listen slot.
    pub const LISTEN: core::ops::Range<u32> = 0..5;
    /// Connect family (`CONNECT_EVENTS`).
    pub const CONNECT: u32 = 5;
    /// Drop family (`DROP_EVENTS`).
    pub const DROP: u32 = 6;
    /// Accept family (`ACCEPT_EVENTS`).
    pub const ACCEPT: u32 = 7;
    /// Accepts the live commands could not count because `ACCEPT_TOTALS` was full (no ring
    /// involved; they count with the accept family's losses).
    pub const ACCEPT_TOTALS_FULL: u32 = 8;
    pub const SLOTS: u32 = 9;
}

/// Bits of the STATE_HOOKS knob: the families `sock_state` (the one program on
/// `sock:inet_sock_set_state`) serves.
pub mod state_hooks {
    /// connect: handshakes (SYN_SENT → ESTABLISHED / CLOSE).
    pub const CONNECT: u32 = 1;
    /// drop: who connects each socket (for SYNs retransmitted from a timer).
    pub const OWNER: u32 = 2;
    /// accept: when each child entered the accept queue.
    pub const ENQUEUE: u32 = 4;
    /// listen: child sockets created (final-ACK outcomes).
    pub const CHILD: u32 = 8;
}

/// Programs shared by several hooks on one tracepoint (one program run per event, not one per
/// family): their slot in `ARMED_PARTS`.
pub mod dispatcher {
    /// `sock_state` on `sock:inet_sock_set_state` (`state_hooks` bits).
    pub const SOCK_STATE: u32 = 0;
    /// `skb_kfree` on `skb:kfree_skb` (`kfree_hooks` bits).
    pub const SKB_KFREE: u32 = 1;
    /// `send_reset` on `tcp:tcp_send_reset` (`reset_hooks` bits).
    pub const SEND_RESET: u32 = 2;
    pub const SLOTS: u32 = 3;
}

/// Bits of the RESET_HOOKS knob: the families `send_reset` serves.
pub mod reset_hooks {
    /// listen: resets sent for a listener whose accept queue is full (tcp_abort_on_overflow=1).
    pub const OVERFLOW: u32 = 1;
    /// accept: a process closed a connection with data unread (tcp_close() →
    /// tcp_send_active_reset(SK_RST_REASON_TCP_ABORT_ON_CLOSE), LINUX_MIB_TCPABORTONCLOSE).
    pub const ABORT_CLOSE: u32 = 2;
}

/// Bits of the KFREE_HOOKS knob: the families `skb_kfree` serves.
pub mod kfree_hooks {
    /// drop: packets netfilter dropped (leaves on the drop reason).
    pub const DROP: u32 = 1;
    /// listen: final ACKs dropped on overflow (outcome confirmation).
    pub const OUTCOME: u32 = 2;
}

/// Size of a `SOCK_OWNER` value (tgid, padding, comm): userspace empties that map.
pub const OWNER_SIZE: usize = 24;

/// Slots of the `LISTEN_CONFIG` array, written by userspace after attaching.
pub mod config {
    /// 1: every hook of the outcome family is attached, so the ingress hook only records the
    /// packet and the verdict is taken from what the kernel then did (see tcpq-ebpf
    /// listen/outcome.rs).
    pub const CONFIRM: u32 = 0;
    /// Ring records each CPU may write per `BUDGET_WINDOW_NS` (0: no limit). Beyond it, events
    /// are counted per listener in `LISTEN_UNSENT` only: exact counts, no per-client line.
    pub const BUDGET: u32 = 1;
    pub const SLOTS: u32 = 2;
    pub const BUDGET_WINDOW_NS: u64 = 100_000_000;
}

const _: () = assert!(core::mem::offset_of!(ConnectEvent, header) == 0);

const _: () = assert!(core::mem::offset_of!(DropEvent, header) == 0);

const _: () = assert!(core::mem::offset_of!(AcceptEvent, header) == 0);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] structs of integers with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::EventHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ListenEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ListenCallEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ListenerTallyKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ListenerTally {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnectEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DropEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AcceptEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::InAccept {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Enqueued {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AcceptKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AcceptTotals {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AbortKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AbortTally {}
}
