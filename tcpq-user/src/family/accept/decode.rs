//! Accept side: `accept()` ring records → typed events. Pure and unit-tested.
use std::net::IpAddr;

use tcpq_common::{AcceptEvent, accept as a};

use crate::wire::{DecodeError, addr, comm_str};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub ts_ns: u64,
    pub netns: u32,
    pub tgid: u32,
    pub comm: String,
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
    pub listen_fd: u32,
    /// Ok(wait in the queue, if known) or Err(errno).
    pub result: Result<Option<u64>, i32>,
}

pub fn decode_accept(bytes: &[u8]) -> Result<Accepted, DecodeError> {
    let need = std::mem::size_of::<AcceptEvent>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: length checked; AcceptEvent is a #[repr(C)] integer-only wire type.
    let e: AcceptEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let result = match e.kind {
        a::ACCEPTED => Ok((e.wait_ns > 0).then_some(e.wait_ns)),
        a::FAILED => Err(-e.result),
        k => return Err(DecodeError::UnknownKind(k)),
    };
    Ok(Accepted {
        ts_ns: e.ts_ns,
        netns: e.netns,
        tgid: e.tgid,
        comm: comm_str(&e.comm),
        laddr: addr(e.family, &e.laddr),
        lport: e.lport,
        raddr: addr(e.family, &e.raddr),
        rport: e.rport,
        listen_fd: e.listen_fd,
        result,
    })
}
