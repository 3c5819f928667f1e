//! The conntrack table through ctnetlink (NETLINK_NETFILTER, IPCTNL_MSG_CT_GET dump) with the
//! rust-netlink crates; the caller falls back to /proc/net/nf_conntrack when this fails.
use std::ops::ControlFlow;

use anyhow::{Context as _, Result};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
    conntrack::{
        ConntrackAttribute, ConntrackMessage, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple,
        Protocol, Tuple,
    },
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::aggregate::{CtEntry, OrigTuple};
use crate::snapshot::netlink_dump;

/// TCP conntrack states (enum tcp_conntrack).
fn tcp_state(s: u8) -> &'static str {
    match s {
        1 => "SYN_SENT",
        2 => "SYN_RECV",
        3 => "ESTABLISHED",
        4 => "FIN_WAIT",
        5 => "CLOSE_WAIT",
        6 => "LAST_ACK",
        7 => "TIME_WAIT",
        8 => "CLOSE",
        9 => "SYN_SENT2",
        _ => "NONE",
    }
}

fn proto_name(p: &Protocol) -> String {
    match p {
        Protocol::Tcp => "tcp".into(),
        Protocol::Udp => "udp".into(),
        Protocol::Icmp => "icmp".into(),
        Protocol::Ipv6Icmp => "icmpv6".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// One dumped entry → `CtEntry` (original direction).
pub fn entry_from_attrs(attrs: &[ConntrackAttribute]) -> Option<CtEntry> {
    let mut tuple = OrigTuple::default();
    let mut proto = String::from("unknown");
    let mut timeout = 0u64;
    let mut state = None;
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(tuples) => {
                for t in tuples {
                    match t {
                        Tuple::Ip(ips) => {
                            for ip in ips {
                                match ip {
                                    IPTuple::SourceAddress(a) => tuple.src = Some(*a),
                                    IPTuple::DestinationAddress(a) => tuple.dst = Some(*a),
                                    _ => {}
                                }
                            }
                        }
                        Tuple::Proto(ps) => {
                            for p in ps {
                                match p {
                                    ProtoTuple::Protocol(p) => proto = proto_name(p),
                                    ProtoTuple::SourcePort(p) => tuple.sport = Some(*p),
                                    ProtoTuple::DestinationPort(p) => tuple.dport = Some(*p),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            ConntrackAttribute::CtaTimeout(t) => timeout = *t as u64,
            ConntrackAttribute::CtaProtoInfo(infos) => {
                for i in infos {
                    if let ProtoInfo::TCP(tcp) = i {
                        for t in tcp {
                            if let ProtoInfoTCP::State(s) = t {
                                state = Some(tcp_state(*s).to_string());
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    tuple.entry(proto, timeout, state)
}

/// Dumps the calling thread's namespace's conntrack table.
pub fn dump() -> Result<Vec<CtEntry>> {
    dump_first(usize::MAX).map(|(entries, _)| entries)
}

/// The first `limit` entries of the calling thread's namespace's table, and whether there were
/// more (the dump is abandoned there: closing the socket ends it in the kernel). ctnetlink dumps
/// in hash-bucket order, and the kernel seeds that hash at random (nf_conntrack_hash_rnd), so
/// the first entries are a fair sample of a big table.
pub fn dump_first(limit: usize) -> Result<(Vec<CtEntry>, bool)> {
    let mut socket = Socket::new(NETLINK_NETFILTER).context("open NETLINK_NETFILTER socket")?;
    socket.bind_auto().context("bind ctnetlink socket")?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("connect ctnetlink socket")?;
    let request = netlink_dump::request(NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Unspec, libc::NFNETLINK_V0 as u8, 0),
        ConntrackMessage::Get(vec![]),
    ));
    socket
        .send(&request[..], 0)
        .context("send ctnetlink dump request")?;
    let mut out = Vec::new();
    let more = netlink_dump::read(&socket, 256 * 1024, "ctnetlink", |msg: NetfilterMessage| {
        if let NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)) = msg.inner {
            if out.len() >= limit {
                return ControlFlow::Break(());
            }
            if let Some(e) = entry_from_attrs(&attrs) {
                out.push(e);
            }
        }
        ControlFlow::Continue(())
    })?;
    Ok((out, more))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_to_entry() {
        let attrs = vec![
            ConntrackAttribute::CtaTupleOrig(vec![
                Tuple::Ip(vec![
                    IPTuple::SourceAddress("127.0.0.2".parse().unwrap()),
                    IPTuple::DestinationAddress("127.0.0.1".parse().unwrap()),
                ]),
                Tuple::Proto(vec![
                    ProtoTuple::Protocol(Protocol::Tcp),
                    ProtoTuple::SourcePort(40000),
                    ProtoTuple::DestinationPort(9000),
                ]),
            ]),
            ConntrackAttribute::CtaTimeout(431_999),
            ConntrackAttribute::CtaProtoInfo(vec![ProtoInfo::TCP(vec![ProtoInfoTCP::State(3)])]),
        ];
        let e = entry_from_attrs(&attrs).unwrap();
        assert_eq!(
            (e.proto.as_str(), e.timeout, e.state.as_deref()),
            ("tcp", 431_999, Some("ESTABLISHED"))
        );
        assert_eq!(
            (e.src.to_string(), e.dst.to_string(), e.sport, e.dport),
            (
                "127.0.0.2".into(),
                "127.0.0.1".into(),
                Some(40000),
                Some(9000)
            )
        );
        assert!(
            entry_from_attrs(&[ConntrackAttribute::CtaTimeout(1)]).is_none(),
            "no tuple, no entry"
        );
    }
}
