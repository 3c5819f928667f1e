//! Listen path: connections the kernel refuses (or answers with a syncookie) at a listening
//! socket, SYN-ACK retransmits, overflow resets, and the listen()/accept() calls that explain them.
//!
//! The drop decision is made in `tcp_conn_request()` (SYN) and `tcp_v4_syn_recv_sock()` (final
//! ACK), neither of which is hookable here (no kprobes, fentry refused). The cgroup_skb ingress
//! hook runs just before them in `tcp_filter()` with `skb->sk` set to the listener, so it sees the
//! same queue state the kernel is about to test and applies the kernel's own rules.
//!
//! `maps`: its maps and the records they hold; `ingress`: the cgroup_skb hook; `queues`: the
//! listener's queues and the kernel's refusal rules; `pending`: packets recorded until their
//! outcome is seen; `outcome`: what the kernel did with them; `report`: counting, the line
//! budget and the ring; `listener`: SYN-ACK retransmits and overflow resets; `syscall`: listen()
//! and the accept rate; `probe`: the fentry capability probe.
mod ingress;
mod listener;
mod maps;
mod outcome;
mod pending;
mod probe;
mod queues;
mod report;
mod syscall;

pub use listener::on_send_reset;
pub use outcome::{on_kfree, on_state_child};

// Socket states, address families, protocol and TCP flags the family compares with.
pub(super) const TCP_LISTEN: u32 = 10;
pub(super) const AF_INET: u16 = 2;
pub(super) const AF_INET6: u16 = 10;
pub(super) const IPPROTO_TCP: u8 = 6;
pub(super) const TH_FIN: u8 = 0x01;
pub(super) const TH_SYN: u8 = 0x02;
pub(super) const TH_RST: u8 = 0x04;
pub(super) const TH_ACK: u8 = 0x10;
