//! Ring-buffer records → typed events. Pure: no kernel access, unit-tested on byte vectors.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tcpq_common::{EventHeader, ListenCallEvent, ListenEvent, kind};

use crate::model::OverflowKind;

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenCall {
    pub ts_ns: u64,
    pub netns: u32,
    pub tgid: u32,
    pub fd: u32,
    pub backlog: i32,
    pub comm: String,
    /// The socket's bound address, when the kernel could resolve the fd.
    pub local: Option<(IpAddr, u16)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Short { len: usize, need: usize },
    UnknownKind(u16),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Short { len, need } => write!(f, "record of {len} bytes, need {need}"),
            DecodeError::UnknownKind(k) => write!(f, "unknown record kind {k}"),
        }
    }
}

/// The wire record `T` at the start of a ring-buffer record: every family's decoder reads
/// through this one length check.
pub fn read_event<T: aya::Pod>(bytes: &[u8]) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: length checked above; T is a #[repr(C)] integer-only wire type for which every bit
    // pattern is valid; read_unaligned copes with any alignment of the ring buffer slice.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// The header every record starts with, to dispatch on its kind before reading the rest.
pub fn header(bytes: &[u8]) -> Result<EventHeader, DecodeError> {
    read_event(bytes)
}

pub fn addr(family: u16, raw: &[u8; 16]) -> IpAddr {
    if family == 10 {
        let v6 = Ipv6Addr::from(*raw);
        // Show IPv4-mapped addresses as IPv4, like ss does.
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    }
}

pub fn comm_str(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
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
