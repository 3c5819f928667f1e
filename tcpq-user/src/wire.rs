//! Shared by every family's decoder: the decode error, reading a wire struct from ring bytes,
//! addresses, process names and errno names. Pure.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
pub fn header(bytes: &[u8]) -> Result<tcpq_common::EventHeader, DecodeError> {
    read_event(bytes)
}

/// The wire record `T` when the record's kind is one of `kinds` (the ones a family's `T`
/// carries); a record too short for `T` is reported as such before its kind.
pub fn read_event_of_kind<T: aya::Pod>(bytes: &[u8], kinds: &[u16]) -> Result<T, DecodeError> {
    let event = read_event(bytes)?;
    let kind = header(bytes)?.kind;
    if kinds.contains(&kind) {
        Ok(event)
    } else {
        Err(DecodeError::UnknownKind(kind))
    }
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

/// The errno's symbolic name (nix knows every Linux errno), or `errno N`.
pub fn errno_name(e: i32) -> String {
    let n = nix::errno::Errno::from_raw(e);
    if n == nix::errno::Errno::UnknownErrno {
        format!("errno {e}")
    } else {
        format!("{n:?}")
    }
}

#[cfg(test)]
mod tests {
    use tcpq_common::{ConnectEvent, EventHeader, kind};

    use super::*;

    fn connect_record(kind: u16) -> Vec<u8> {
        let e = ConnectEvent {
            header: EventHeader {
                kind,
                ..Default::default()
            },
            tgid: 7,
            ..Default::default()
        };
        // SAFETY: ConnectEvent is a plain #[repr(C)] wire struct; the slice lives as long as `e`.
        unsafe {
            std::slice::from_raw_parts(
                (&e as *const ConnectEvent).cast::<u8>(),
                std::mem::size_of::<ConnectEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn a_record_of_another_kind_or_too_short_is_refused() {
        let kinds = [kind::CONNECT_SYSCALL, kind::CONNECT_HANDSHAKE];
        let ok = connect_record(kind::CONNECT_HANDSHAKE);
        let e: ConnectEvent = read_event_of_kind(&ok, &kinds).unwrap();
        assert_eq!((e.header.kind, e.tgid), (kind::CONNECT_HANDSHAKE, 7));
        let other = connect_record(kind::ACCEPTED);
        assert_eq!(
            read_event_of_kind::<ConnectEvent>(&other, &kinds).unwrap_err(),
            DecodeError::UnknownKind(kind::ACCEPTED)
        );
        assert!(matches!(
            read_event_of_kind::<ConnectEvent>(&other[..10], &kinds),
            Err(DecodeError::Short { len: 10, .. })
        ));
    }
}
