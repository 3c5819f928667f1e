//! Listen ring records → typed events, and the kinds of listen-path event. Pure: no kernel
//! access, unit-tested on byte vectors.
use std::net::IpAddr;

#[cfg(test)]
use tcpq_common::EventHeader;
use tcpq_common::{ListenCallEvent, ListenEvent, kind};

use crate::{
    diagnosis::cause,
    snapshot::listeners::ListenCall,
    wire::{DecodeError, addr, comm_str, header, read_event},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OverflowKind {
    Syn,
    Ack,
    Synq,
    Cookie,
    SynackRetrans,
    Reset,
    /// SYN dropped by the tcp_max_syn_backlog rule (tcp_syncookies=0).
    SynBacklog,
}

impl OverflowKind {
    pub const ALL: [OverflowKind; 7] = [
        OverflowKind::Syn,
        OverflowKind::Ack,
        OverflowKind::Synq,
        OverflowKind::Cookie,
        OverflowKind::SynackRetrans,
        OverflowKind::Reset,
        OverflowKind::SynBacklog,
    ];

    pub fn from_wire(k: u16) -> Option<Self> {
        Some(match k {
            kind::SYN_DROP => OverflowKind::Syn,
            kind::ACK_DROP => OverflowKind::Ack,
            kind::SYNQ_DROP => OverflowKind::Synq,
            kind::COOKIE => OverflowKind::Cookie,
            kind::SYNACK_RETRANS => OverflowKind::SynackRetrans,
            kind::OVERFLOW_RESET => OverflowKind::Reset,
            kind::SYN_BACKLOG_DROP => OverflowKind::SynBacklog,
            _ => return None,
        })
    }

    pub fn wire(self) -> u16 {
        match self {
            OverflowKind::Syn => kind::SYN_DROP,
            OverflowKind::Ack => kind::ACK_DROP,
            OverflowKind::Synq => kind::SYNQ_DROP,
            OverflowKind::Cookie => kind::COOKIE,
            OverflowKind::SynackRetrans => kind::SYNACK_RETRANS,
            OverflowKind::Reset => kind::OVERFLOW_RESET,
            OverflowKind::SynBacklog => kind::SYN_BACKLOG_DROP,
        }
    }

    /// Stable id used in text and JSON (`kind`).
    pub fn id(self) -> &'static str {
        match self {
            OverflowKind::Syn => "syn",
            OverflowKind::Ack => "ack",
            OverflowKind::Synq => "synq",
            OverflowKind::Cookie => "cookie",
            OverflowKind::SynackRetrans => "synack_retrans",
            OverflowKind::Reset => "reset",
            OverflowKind::SynBacklog => "syn_backlog",
        }
    }

    /// JSON `event` name.
    pub fn event(self) -> &'static str {
        match self {
            OverflowKind::SynackRetrans => "synack_retransmit",
            OverflowKind::Reset => "overflow_reset",
            _ => "overflow",
        }
    }

    /// Cause id (DESIGN.md) this kind is evidence for.
    pub fn cause(self) -> &'static str {
        match self {
            OverflowKind::Syn | OverflowKind::Ack | OverflowKind::SynackRetrans => {
                cause::ACCEPT_QUEUE_FULL
            }
            OverflowKind::Synq | OverflowKind::SynBacklog => cause::SYN_QUEUE_FULL,
            OverflowKind::Cookie => cause::SYN_COOKIES,
            OverflowKind::Reset => cause::OVERFLOW_RESETS,
        }
    }

    /// Does this kind mean a connection attempt was refused (dropped or reset)?
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            OverflowKind::Syn
                | OverflowKind::Ack
                | OverflowKind::Synq
                | OverflowKind::Reset
                | OverflowKind::SynBacklog
        )
    }

    pub fn describe(self) -> &'static str {
        match self {
            OverflowKind::Syn => "SYN dropped: accept queue full",
            OverflowKind::Ack => {
                "final ACK dropped: accept queue full (client thinks it is connected)"
            }
            OverflowKind::Synq => "SYN dropped: SYN queue full, syncookies off",
            OverflowKind::Cookie => "SYN answered with a syncookie: SYN queue full",
            OverflowKind::SynackRetrans => "SYN-ACK retransmitted",
            OverflowKind::Reset => "reset sent: accept queue full, tcp_abort_on_overflow=1",
            OverflowKind::SynBacklog => {
                "SYN dropped: SYN queue over 3/4 of tcp_max_syn_backlog, syncookies off"
            }
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenRecord {
    /// A refused/cookied connection, SYN-ACK retransmit or overflow reset.
    Overflow(OverflowEvent),
    /// `listen(fd, backlog)` seen.
    ListenCall(ListenCall),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverflowEvent {
    pub kind: OverflowKind,
    pub ts_ns: u64,
    pub netns: u32,
    pub cookie: u64,
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
    pub queue: u32,
    pub backlog: u32,
    pub synq: u32,
}

pub fn decode_listen(bytes: &[u8]) -> Result<ListenRecord, DecodeError> {
    let k = header(bytes)?.kind;
    if k == kind::LISTEN_CALL {
        let e: ListenCallEvent = read_event(bytes)?;
        return Ok(ListenRecord::ListenCall(ListenCall {
            ts_ns: e.header.ts_ns,
            netns: e.header.netns,
            tgid: e.tgid,
            fd: e.fd,
            backlog: e.backlog,
            comm: comm_str(&e.comm),
            local: (e.header.family != 0 && e.lport != 0)
                .then(|| (addr(e.header.family, &e.laddr), e.lport)),
        }));
    }
    let kind = OverflowKind::from_wire(k).ok_or(DecodeError::UnknownKind(k))?;
    let e: ListenEvent = read_event(bytes)?;
    Ok(ListenRecord::Overflow(OverflowEvent {
        kind,
        ts_ns: e.header.ts_ns,
        netns: e.header.netns,
        cookie: e.cookie,
        laddr: addr(e.header.family, &e.laddr),
        lport: e.lport,
        raddr: addr(e.header.family, &e.raddr),
        rport: e.rport,
        queue: e.queue,
        backlog: e.backlog,
        synq: e.synq,
    }))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: T is a plain #[repr(C)] wire struct; we copy its bytes.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    #[test]
    fn decodes_syn_drop_v4() {
        let mut e = ListenEvent {
            header: EventHeader {
                kind: kind::SYN_DROP,
                family: 2,
                netns: 4026531840,
                ts_ns: 5,
            },
            cookie: 77,
            lport: 8080,
            rport: 40000,
            queue: 9,
            backlog: 8,
            synq: 0,
            ..Default::default()
        };
        e.laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        e.raddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        let rec = decode_listen(&bytes_of(&e)).unwrap();
        let ListenRecord::Overflow(o) = rec else {
            panic!("wrong record")
        };
        assert_eq!(o.kind, OverflowKind::Syn);
        assert_eq!(o.laddr.to_string(), "127.0.0.1");
        assert_eq!(o.raddr.to_string(), "10.1.2.3");
        assert_eq!(
            (o.lport, o.rport, o.queue, o.backlog, o.cookie),
            (8080, 40000, 9, 8, 77)
        );
    }

    #[test]
    fn decodes_v6_and_mapped() {
        let mut e = ListenEvent {
            header: EventHeader {
                kind: kind::COOKIE,
                family: 10,
                ..Default::default()
            },
            ..Default::default()
        };
        e.laddr = Ipv6Addr::LOCALHOST.octets();
        e.raddr = Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped().octets();
        let ListenRecord::Overflow(o) = decode_listen(&bytes_of(&e)).unwrap() else {
            panic!()
        };
        assert_eq!(o.laddr.to_string(), "::1");
        assert_eq!(o.raddr.to_string(), "192.0.2.1");
        assert_eq!(o.kind, OverflowKind::Cookie);
    }

    #[test]
    fn decodes_listen_call() {
        let mut comm = [0u8; 16];
        comm[..5].copy_from_slice(b"nginx");
        let e = ListenCallEvent {
            header: EventHeader {
                kind: kind::LISTEN_CALL,
                ..Default::default()
            },
            tgid: 42,
            fd: 6,
            backlog: 511,
            comm,
            ..Default::default()
        };
        let ListenRecord::ListenCall(c) = decode_listen(&bytes_of(&e)).unwrap() else {
            panic!()
        };
        assert_eq!(
            (c.tgid, c.fd, c.backlog, c.comm.as_str()),
            (42, 6, 511, "nginx")
        );
    }

    #[test]
    fn rejects_short_and_unknown() {
        assert!(matches!(
            decode_listen(&[1]),
            Err(DecodeError::Short { .. })
        ));
        assert!(matches!(
            decode_listen(&[1, 0, 0]),
            Err(DecodeError::Short { .. })
        ));
        let e = ListenEvent {
            header: EventHeader {
                kind: 99,
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            decode_listen(&bytes_of(&e)),
            Err(DecodeError::UnknownKind(99))
        );
    }
}
