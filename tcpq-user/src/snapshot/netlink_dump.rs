//! A netlink dump (sock_diag, ctnetlink): the request, then every reply message in turn until
//! NLMSG_DONE. The reply parsing is pure and unit-tested.
use std::ops::ControlFlow;

use anyhow::{Context as _, Result, anyhow, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable,
};
use netlink_sys::Socket;

/// The bytes of a dump request for `inner` (NLM_F_REQUEST | NLM_F_DUMP), ready to send.
pub fn request<I: NetlinkSerializable>(inner: I) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(inner));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf[..]);
    buf
}

/// Receives the replies to the dump request sent on `socket` into a buffer of `buf_len` bytes
/// and hands each message of the family's own type to `each`, until NLMSG_DONE or until `each`
/// breaks; true when `each` stopped it early. `what` names the dump in errors (`sock_diag`).
pub fn read<I: NetlinkDeserializable>(
    socket: &Socket,
    buf_len: usize,
    what: &str,
    mut each: impl FnMut(I) -> ControlFlow<()>,
) -> Result<bool> {
    let mut rx = vec![0u8; buf_len];
    loop {
        let size = socket
            .recv(&mut &mut rx[..], 0)
            .with_context(|| format!("receive {what} dump"))?;
        if size == 0 {
            bail!("{what} dump ended without NLMSG_DONE");
        }
        match read_batch(&rx[..size], what, &mut each)? {
            Batch::More => {}
            Batch::Done => return Ok(false),
            Batch::Stopped => return Ok(true),
        }
    }
}

/// Where one received buffer of a dump left it.
#[derive(Debug, PartialEq, Eq)]
enum Batch {
    /// More replies follow.
    More,
    /// NLMSG_DONE: the dump is complete.
    Done,
    /// The caller stopped reading.
    Stopped,
}

/// The messages of one received buffer, in order.
fn read_batch<I: NetlinkDeserializable>(
    bytes: &[u8],
    what: &str,
    each: &mut impl FnMut(I) -> ControlFlow<()>,
) -> Result<Batch> {
    let mut offset = 0;
    while offset < bytes.len() {
        let msg = <NetlinkMessage<I>>::deserialize(&bytes[offset..])
            .map_err(|e| anyhow!("decode {what} message: {e}"))?;
        let len = msg.header.length as usize;
        let flow = match msg.payload {
            NetlinkPayload::InnerMessage(inner) => each(inner),
            NetlinkPayload::Done(_) => return Ok(Batch::Done),
            NetlinkPayload::Error(e) => bail!("{what} dump failed: {e:?}"),
            _ => ControlFlow::Continue(()),
        };
        if flow.is_break() {
            return Ok(Batch::Stopped);
        }
        if len == 0 {
            break;
        }
        offset += len;
    }
    Ok(Batch::More)
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{DoneMessage, ErrorMessage};

    use super::*;

    /// A family message of four bytes, enough to follow the reading.
    #[derive(Debug, PartialEq)]
    struct Ping(u32);

    impl NetlinkSerializable for Ping {
        fn message_type(&self) -> u16 {
            100
        }
        fn buffer_len(&self) -> usize {
            4
        }
        fn serialize(&self, buffer: &mut [u8]) {
            buffer[..4].copy_from_slice(&self.0.to_ne_bytes());
        }
    }

    impl NetlinkDeserializable for Ping {
        type Error = std::io::Error;
        fn deserialize(_: &NetlinkHeader, payload: &[u8]) -> Result<Self, Self::Error> {
            let raw = payload.get(..4).ok_or(std::io::ErrorKind::UnexpectedEof)?;
            Ok(Ping(u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]])))
        }
    }

    fn message(payload: NetlinkPayload<Ping>) -> Vec<u8> {
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), payload);
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf[..]);
        buf
    }

    #[test]
    fn a_batch_is_read_message_by_message_up_to_done() {
        let mut bytes = message(NetlinkPayload::InnerMessage(Ping(1)));
        bytes.extend(message(NetlinkPayload::InnerMessage(Ping(2))));
        let mut seen = Vec::new();
        let mut collect = |p: Ping| {
            seen.push(p.0);
            ControlFlow::Continue(())
        };
        assert_eq!(
            read_batch(&bytes, "test", &mut collect).unwrap(),
            Batch::More
        );
        bytes.extend(message(NetlinkPayload::Done(DoneMessage::default())));
        bytes.extend(message(NetlinkPayload::InnerMessage(Ping(3))));
        assert_eq!(
            read_batch(&bytes, "test", &mut collect).unwrap(),
            Batch::Done
        );
        assert_eq!(seen, [1, 2, 1, 2]);

        let mut stop = |_: Ping| ControlFlow::Break(());
        assert_eq!(
            read_batch(&bytes, "test", &mut stop).unwrap(),
            Batch::Stopped
        );
    }

    #[test]
    fn an_error_reply_fails_the_dump_under_its_name() {
        let mut error = ErrorMessage::default();
        error.code = std::num::NonZeroI32::new(-1);
        let bytes = message(NetlinkPayload::Error(error));
        let e = read_batch(
            &bytes,
            "sock_diag",
            &mut |_: Ping| ControlFlow::Continue(()),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("sock_diag dump failed"), "{e}");
        let e = read_batch(&bytes[..10], "sock_diag", &mut |_: Ping| {
            ControlFlow::Continue(())
        })
        .unwrap_err();
        assert!(e.to_string().starts_with("decode sock_diag message"), "{e}");
    }

    #[test]
    fn a_request_asks_for_a_dump() {
        let bytes = request(Ping(7));
        let msg = <NetlinkMessage<Ping>>::deserialize(&bytes).unwrap();
        assert_eq!(msg.header.flags, NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(msg.header.length as usize, bytes.len());
        assert_eq!(msg.payload, NetlinkPayload::InnerMessage(Ping(7)));
    }
}
