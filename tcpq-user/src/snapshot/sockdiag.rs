//! TCP sockets of the current network namespace through NETLINK_SOCK_DIAG (inet_diag), using the
//! rust-netlink crates for the wire format.
use std::{collections::BTreeSet, net::IpAddr, ops::ControlFlow};

use anyhow::{Context as _, Result};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use super::netlink_dump;

pub const TCP_LISTEN: u8 = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagSocket {
    pub state: u8,
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
    /// Listeners: accept queue length. Others: bytes unread.
    pub recv_queue: u32,
    /// Listeners: the effective backlog. Others: bytes unsent.
    pub send_queue: u32,
    pub uid: u32,
    pub inode: u64,
    pub cookie: u64,
    /// From tcp_info when requested (`dump_tcp_with_info`).
    pub info: Option<TcpActivity>,
    /// `sk_drops` from INET_DIAG_SKMEMINFO when requested (`DiagSocket::drops`): for a
    /// listener, every connection tcp_listendrop() refused (SYN- and ACK-time alike).
    pub drops: Option<u32>,
}

/// The parts of tcp_info tcpq uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpActivity {
    pub last_data_sent_ms: u32,
    pub last_data_recv_ms: u32,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    /// Segments sent and not yet acknowledged (`tcpi_unacked`).
    pub unacked: u32,
}

impl TcpActivity {
    /// Time since data last moved in either direction.
    pub fn idle_ms(&self) -> u32 {
        self.last_data_sent_ms.min(self.last_data_recv_ms)
    }

    /// This side sent last and nothing came back since: a request waiting for its answer.
    /// `bytes_acked` counts the SYN as 1 (tcp_ack() → tcp_snd_una_update() on the SYN-ACK), so
    /// more than 1 means data went out. The last times are jiffies apart at best: a pooled
    /// connection answered within a tick shows equal times and reads as answered.
    pub fn awaiting_reply(&self) -> bool {
        let sent = self.bytes_acked > 1 || self.unacked > 0;
        sent && (self.bytes_received == 0 || self.last_data_recv_ms > self.last_data_sent_ms)
    }
}

fn cookie_of(raw: &[u8; 8]) -> u64 {
    // sock_diag_save_cookie(): two host-order u32, low word first.
    let lo = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]) as u64;
    let hi = u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]) as u64;
    lo | (hi << 32)
}

fn unmap(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(a),
        v4 => v4,
    }
}

/// Dumps TCP sockets in `states` (both families) of the calling thread's network namespace.
pub fn dump_tcp(states: StateFlags) -> Result<Vec<DiagSocket>> {
    let mut out = Vec::new();
    for family in [AF_INET, AF_INET6] {
        dump_family(family, states.clone(), ExtensionFlags::empty(), &mut out)?;
    }
    Ok(out)
}

/// Like `dump_tcp`, with tcp_info (last data sent/received, bytes) for each socket.
pub fn dump_tcp_with_info(states: StateFlags) -> Result<Vec<DiagSocket>> {
    let mut out = Vec::new();
    for family in [AF_INET, AF_INET6] {
        dump_family(family, states.clone(), ExtensionFlags::INFO, &mut out)?;
    }
    Ok(out)
}

/// Every TCP socket but listeners of the calling thread's namespace whose destination is one
/// of `dests` (addresses as `DiagSocket` shows them: IPv4-mapped ones unmapped), TIME_WAIT
/// included: the kernel filters (`to_dests_bytecode`), so a namespace with a million TIME_WAIT
/// elsewhere returns only these.
pub fn dump_to(dests: &BTreeSet<(IpAddr, u16)>) -> Result<Vec<DiagSocket>> {
    let mut out = Vec::new();
    if dests.is_empty() {
        return Ok(out);
    }
    // A filter's jumps are 16-bit: past MAX_FILTER_DESTS the kernel returns every socket and
    // the caller's grouping keeps the destinations asked for.
    let bytecode = (dests.len() <= MAX_FILTER_DESTS).then(|| to_dests_bytecode(dests));
    let states = StateFlags::all().difference(StateFlags::LISTEN);
    let mut socket = open_diag()?;
    for family in [AF_INET, AF_INET6] {
        dump_family_filtered(
            &mut socket,
            family,
            states.clone(),
            ExtensionFlags::empty(),
            bytecode.as_deref(),
            &mut out,
        )?;
    }
    Ok(out)
}

/// Destinations one kernel filter holds at most (32 bytes each at most: well within the 16-bit
/// jumps and attribute length).
pub const MAX_FILTER_DESTS: usize = 512;

/// inet_diag bytecode (INET_DIAG_REQ_BYTECODE) matching a socket whose destination is any of
/// `dests`, laid out as ss(8) compiles an OR: `[D_COND 1][JMP][D_COND 2][JMP]…[D_COND n]`. A
/// condition that holds steps to the JMP after it, which jumps past the end (accept); one that
/// fails jumps 4 bytes past its own end, over that JMP, to the next condition (past the end
/// after the last one: reject). The kernel's audit (inet_diag_bc_audit) follows the "yes"
/// steps, so every op is reachable that way. An IPv4 condition also matches an IPv4-mapped
/// IPv6 socket.
pub fn to_dests_bytecode(dests: &BTreeSet<(IpAddr, u16)>) -> Vec<u8> {
    const BC_JMP: u8 = 1;
    const BC_D_COND: u8 = 8;
    let conds: Vec<Vec<u8>> = dests
        .iter()
        .map(|(addr, port)| {
            // struct inet_diag_hostcond { u8 family; u8 prefix_len; int port; be32 addr[]; }
            let (family, prefix, bytes) = match addr {
                IpAddr::V4(a) => (AF_INET, 32u8, a.octets().to_vec()),
                IpAddr::V6(a) => (AF_INET6, 128u8, a.octets().to_vec()),
            };
            let mut c = vec![family, prefix, 0, 0];
            c.extend_from_slice(&i32::from(*port).to_ne_bytes());
            c.extend_from_slice(&bytes);
            c
        })
        .collect();
    // struct inet_diag_bc_op { u8 code; u8 yes; u16 no; }
    let op = |code: u8, yes: usize, no: usize| {
        let mut o = vec![code, yes as u8];
        o.extend_from_slice(&(no as u16).to_ne_bytes());
        o
    };
    let mut out = Vec::new();
    let mut rest: usize = conds
        .iter()
        .map(|c| 4 + c.len() + 4)
        .sum::<usize>()
        .saturating_sub(4);
    for (i, c) in conds.iter().enumerate() {
        let size = 4 + c.len();
        out.extend(op(BC_D_COND, size, size + 4));
        out.extend_from_slice(c);
        rest = rest.saturating_sub(size);
        if i + 1 < conds.len() {
            rest = rest.saturating_sub(4);
            out.extend(op(BC_JMP, 4, rest + 4));
        }
    }
    out
}

pub fn dump_listeners() -> Result<Vec<DiagSocket>> {
    dump_tcp(StateFlags::LISTEN)
}

/// A sock_diag socket kept open: it stays bound to the network namespace it was opened in, so
/// a namespace can be dumped again and again without entering it (tier 0 of the live modes).
/// A NETLINK_SOCK_DIAG socket of the calling thread's network namespace.
pub fn open_diag() -> Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).context("open NETLINK_SOCK_DIAG socket")?;
    socket.bind_auto().context("bind sock_diag socket")?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("connect sock_diag socket")?;
    Ok(socket)
}

/// Listeners of `socket`'s namespace with their accept queue, backlog and `sk_drops`.
pub fn dump_listeners_on(socket: &mut Socket, out: &mut Vec<DiagSocket>) -> Result<()> {
    for family in [AF_INET, AF_INET6] {
        dump_family_on(
            socket,
            family,
            StateFlags::LISTEN,
            ExtensionFlags::SKMEMINFO,
            out,
        )?;
    }
    Ok(())
}

fn dump_family(
    family: u8,
    states: StateFlags,
    extensions: ExtensionFlags,
    out: &mut Vec<DiagSocket>,
) -> Result<()> {
    let mut socket = open_diag()?;
    dump_family_on(&mut socket, family, states, extensions, out)
}

fn dump_family_on(
    socket: &mut Socket,
    family: u8,
    states: StateFlags,
    extensions: ExtensionFlags,
    out: &mut Vec<DiagSocket>,
) -> Result<()> {
    dump_family_filtered(socket, family, states, extensions, None, out)
}

/// INET_DIAG_REQ_BYTECODE, the attribute that carries a filter after inet_diag_req_v2.
const INET_DIAG_REQ_BYTECODE: u16 = 1;

fn dump_family_filtered(
    socket: &mut Socket,
    family: u8,
    states: StateFlags,
    extensions: ExtensionFlags,
    bytecode: Option<&[u8]>,
    out: &mut Vec<DiagSocket>,
) -> Result<()> {
    let socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let mut buf = netlink_dump::request(SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions,
        states,
        socket_id,
    }));
    if let Some(bc) = bytecode {
        // The crate has no attributes for a request: append the rtattr and fix nlmsg_len.
        let attr_len = 4 + bc.len();
        buf.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        buf.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        buf.extend_from_slice(bc);
        buf.resize(buf.len().next_multiple_of(4), 0);
        let total = buf.len() as u32;
        buf[..4].copy_from_slice(&total.to_ne_bytes());
    }
    socket
        .send(&buf[..], 0)
        .context("send sock_diag dump request")?;

    netlink_dump::read(socket, 64 * 1024, "sock_diag", |msg| {
        if let SockDiagMessage::InetResponse(r) = msg {
            let h = &r.header;
            let info = r.nlas.iter().find_map(|n| match n {
                netlink_packet_sock_diag::inet::nlas::Nla::TcpInfo(t) => Some(TcpActivity {
                    last_data_sent_ms: t.last_data_sent,
                    last_data_recv_ms: t.last_data_recv,
                    bytes_acked: t.bytes_acked,
                    bytes_received: t.bytes_received,
                    unacked: t.unacked,
                }),
                _ => None,
            });
            let drops = r.nlas.iter().find_map(|n| match n {
                netlink_packet_sock_diag::inet::nlas::Nla::MemInfo(m) => Some(m.drops),
                _ => None,
            });
            out.push(DiagSocket {
                state: h.state,
                laddr: unmap(h.socket_id.source_address),
                lport: h.socket_id.source_port,
                raddr: unmap(h.socket_id.destination_address),
                rport: h.socket_id.destination_port,
                recv_queue: h.recv_queue,
                send_queue: h.send_queue,
                uid: h.uid,
                inode: h.inode as u64,
                cookie: cookie_of(&h.socket_id.cookie),
                info,
                drops,
            });
        }
        ControlFlow::Continue(())
    })?;
    Ok(())
}

/// The kernel's name of a TCP state (`ss` spells them the same).
pub fn state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_words() {
        let mut raw = [0u8; 8];
        raw[..4].copy_from_slice(&0x0000_1234u32.to_ne_bytes());
        raw[4..].copy_from_slice(&0x0000_0001u32.to_ne_bytes());
        assert_eq!(cookie_of(&raw), 0x1_0000_1234);
    }

    /// sock_diag needs no privilege: every user may list sockets of its own namespace.
    #[test]
    fn sees_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let socks = dump_listeners().unwrap();
        let me = socks
            .iter()
            .find(|s| s.lport == port)
            .expect("listener listed");
        assert_eq!(me.state, TCP_LISTEN);
        assert_eq!(me.laddr.to_string(), "127.0.0.1");
        assert!(me.send_queue > 0, "backlog reported");
        assert!(me.inode > 0);
    }

    #[test]
    fn the_destination_filter_is_an_or_chain_the_kernel_accepts() {
        let one = BTreeSet::from([(IpAddr::from([10, 0, 0, 1]), 80)]);
        let bc = to_dests_bytecode(&one);
        // D_COND, yes 16 (the end: accept), no 20 (4 past the end: reject); hostcond.
        assert_eq!((bc[0], bc[1]), (8, 16));
        assert_eq!(u16::from_ne_bytes([bc[2], bc[3]]), 20);
        assert_eq!(&bc[4..8], &[AF_INET, 32, 0, 0]);
        assert_eq!(i32::from_ne_bytes([bc[8], bc[9], bc[10], bc[11]]), 80);
        assert_eq!(&bc[12..16], &[10, 0, 0, 1]);
        assert_eq!(bc.len(), 16);
        let two = BTreeSet::from([
            (IpAddr::from([10, 0, 0, 1]), 80),
            ("::1".parse().unwrap(), 443),
        ]);
        let bc = to_dests_bytecode(&two);
        assert_eq!(bc.len(), 16 + 4 + 28);
        // The first condition: yes to the JMP, no over it to the second condition.
        assert_eq!(
            (bc[0], bc[1], u16::from_ne_bytes([bc[2], bc[3]])),
            (8, 16, 20)
        );
        // The JMP: always "no", to the end.
        assert_eq!(
            (bc[16], bc[17], u16::from_ne_bytes([bc[18], bc[19]])),
            (1, 4, 32)
        );
        // The last condition: yes to the end, no past it.
        assert_eq!(
            (bc[20], bc[21], u16::from_ne_bytes([bc[22], bc[23]])),
            (8, 28, 32)
        );
    }

    /// The kernel takes the filter and returns only the sockets to the destinations asked for,
    /// TIME_WAIT included.
    #[test]
    fn the_kernel_returns_only_the_destinations_asked_for() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (pa, pb) = (
            a.local_addr().unwrap().port(),
            b.local_addr().unwrap().port(),
        );
        let ca = std::net::TcpStream::connect(("127.0.0.1", pa)).unwrap();
        let cb = std::net::TcpStream::connect(("127.0.0.1", pb)).unwrap();
        let lo = IpAddr::from([127, 0, 0, 1]);
        let got = dump_to(&BTreeSet::from([(lo, pa)])).unwrap();
        assert!(
            got.iter()
                .any(|s| s.rport == pa && s.lport == ca.local_addr().unwrap().port())
        );
        assert!(
            got.iter().all(|s| s.rport == pa && s.raddr == lo),
            "{got:?}"
        );
        let both = dump_to(&BTreeSet::from([(lo, pa), (lo, pb)])).unwrap();
        assert!(
            both.iter()
                .any(|s| s.rport == pb && s.lport == cb.local_addr().unwrap().port())
        );
        assert!(dump_to(&BTreeSet::new()).unwrap().is_empty());
        assert!(to_dests_bytecode(&BTreeSet::new()).is_empty());
        // Too many for one filter: every socket comes back, the ones asked for among them.
        let many: BTreeSet<(IpAddr, u16)> = (1..=MAX_FILTER_DESTS as u16 + 1)
            .map(|p| (IpAddr::from([127, 0, 0, 2]), p))
            .chain([(lo, pa)])
            .collect();
        let all = dump_to(&many).unwrap();
        assert!(all.iter().any(|s| s.rport == pa) && all.iter().any(|s| s.rport == pb));
    }

    /// A kept socket dumps again and again, with each listener's drop count.
    #[test]
    fn kept_socket_dumps_listeners_with_drops() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut sock = open_diag().unwrap();
        for _ in 0..3 {
            let mut out = Vec::new();
            dump_listeners_on(&mut sock, &mut out).unwrap();
            let me = out
                .iter()
                .find(|s| s.lport == port)
                .expect("listener listed");
            assert_eq!(me.drops, Some(0));
        }
    }
}
