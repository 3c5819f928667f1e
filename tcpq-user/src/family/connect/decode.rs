//! Outbound connects: `connect()` ring records → typed outcomes. Pure and unit-tested.
use std::net::IpAddr;

use tcpq_common::{ConnectEvent, kind};

use crate::wire::{DecodeError, addr, comm_str, errno_name, read_event_of_kind};

/// How a connect ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConnectResult {
    Ok,
    Refused,
    Timeout,
    /// Any other errno (positive value), e.g. 99 EADDRNOTAVAIL.
    Errno(i32),
}

impl ConnectResult {
    pub fn from_raw(result: i32) -> Self {
        match -result {
            0 => ConnectResult::Ok,
            111 => ConnectResult::Refused,
            110 => ConnectResult::Timeout,
            e => ConnectResult::Errno(e),
        }
    }

    /// JSON `result`: `ok`, `refused`, `timeout`, or the errno's name (`EADDRNOTAVAIL`).
    pub fn id(self) -> String {
        match self {
            ConnectResult::Ok => "ok".into(),
            ConnectResult::Refused => "refused".into(),
            ConnectResult::Timeout => "timeout".into(),
            ConnectResult::Errno(e) => errno_name(e),
        }
    }

    pub fn is_failure(self) -> bool {
        self != ConnectResult::Ok
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOutcome {
    pub ts_ns: u64,
    pub netns: u32,
    pub tgid: u32,
    pub comm: String,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub result: ConnectResult,
    /// Time in connect() (None if not measured).
    pub syscall_ns: Option<u64>,
    /// SYN → ESTABLISHED/CLOSE (None when no SYN left).
    pub handshake_ns: Option<u64>,
    pub syn_retrans: u16,
}

pub fn decode_connect(bytes: &[u8]) -> Result<ConnectOutcome, DecodeError> {
    let e: ConnectEvent =
        read_event_of_kind(bytes, &[kind::CONNECT_SYSCALL, kind::CONNECT_HANDSHAKE])?;
    Ok(ConnectOutcome {
        ts_ns: e.header.ts_ns,
        netns: e.header.netns,
        tgid: e.tgid,
        comm: comm_str(&e.comm),
        saddr: addr(e.header.family, &e.saddr),
        sport: e.sport,
        daddr: addr(e.header.family, &e.daddr),
        dport: e.dport,
        result: ConnectResult::from_raw(e.result),
        syscall_ns: (e.syscall_ns > 0).then_some(e.syscall_ns),
        handshake_ns: (e.handshake_ns > 0).then_some(e.handshake_ns),
        syn_retrans: e.syn_retrans,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_and_names() {
        assert_eq!(ConnectResult::from_raw(0).id(), "ok");
        assert_eq!(ConnectResult::from_raw(-111).id(), "refused");
        assert_eq!(ConnectResult::from_raw(-110).id(), "timeout");
        assert_eq!(ConnectResult::from_raw(-99).id(), "EADDRNOTAVAIL");
        assert_eq!(ConnectResult::from_raw(-101).id(), "ENETUNREACH");
        assert_eq!(errno_name(4242), "errno 4242");
        assert!(!ConnectResult::Ok.is_failure());
    }

    #[test]
    fn decodes_event() {
        let mut e = ConnectEvent {
            header: tcpq_common::EventHeader {
                kind: kind::CONNECT_HANDSHAKE,
                family: 2,
                ..Default::default()
            },
            tgid: 7,
            result: -111,
            sport: 40000,
            dport: 9000,
            syscall_ns: 5,
            handshake_ns: 0,
            syn_retrans: 2,
            ..Default::default()
        };
        e.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        e.comm[..5].copy_from_slice(b"nginx");
        // SAFETY: plain wire struct → bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&e as *const ConnectEvent).cast::<u8>(),
                std::mem::size_of::<ConnectEvent>(),
            )
        };
        let o = decode_connect(bytes).unwrap();
        assert_eq!(o.result, ConnectResult::Refused);
        assert_eq!(
            (o.daddr.to_string().as_str(), o.dport, o.sport),
            ("127.0.0.1", 9000, 40000)
        );
        assert_eq!(
            (o.syscall_ns, o.handshake_ns, o.syn_retrans),
            (Some(5), None, 2)
        );
        assert_eq!(o.comm, "nginx");
        assert!(decode_connect(&bytes[..10]).is_err());
    }
}
