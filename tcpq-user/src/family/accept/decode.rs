//! Accept side: `accept()` ring records → typed events. Pure and unit-tested.
use std::net::IpAddr;

use tcpq_common::{AcceptEvent, kind};

use crate::wire::{DecodeError, addr, comm_str, read_event};

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
    let e: AcceptEvent = read_event(bytes)?;
    let result = match e.header.kind {
        kind::ACCEPTED => Ok((e.wait_ns > 0).then_some(e.wait_ns)),
        kind::ACCEPT_FAILED => Err(-e.result),
        k => return Err(DecodeError::UnknownKind(k)),
    };
    Ok(Accepted {
        ts_ns: e.header.ts_ns,
        netns: e.header.netns,
        tgid: e.tgid,
        comm: comm_str(&e.comm),
        laddr: addr(e.header.family, &e.laddr),
        lport: e.lport,
        raddr: addr(e.header.family, &e.raddr),
        rport: e.rport,
        listen_fd: e.listen_fd,
        result,
    })
}
