//! Per-process socket analysis: states, ESTABLISHED connections idle too long (stale upstream),
//! CLOSE_WAIT the application never closed, TIME_WAIT by remote. Pure and unit-tested.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use serde::Serialize;

use crate::{
    connect::ports::state_name, listen::diagnose::Finding, snapshot::sockdiag::DiagSocket,
};

/// The stale threshold where no `--idle` is given (top, export; `--idle`'s default).
pub const DEFAULT_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct IdleGroup {
    pub raddr: String,
    pub rport: u16,
    pub count: u64,
    pub max_idle_s: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// Accepted (server-side) connections with no data for the idle threshold, per listening port:
/// a client keeping its connection open, not an upstream of this process.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct IdleAccepted {
    pub lport: u16,
    pub count: u64,
    pub max_idle_s: f64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ProcessSockets {
    pub pid: u32,
    pub comm: String,
    pub netns: u32,
    pub states: BTreeMap<&'static str, u64>,
    /// Outbound connections (this process is the client) idle for the threshold, by remote.
    pub idle_established: Vec<IdleGroup>,
    /// Accepted connections idle for the threshold, by listening port.
    pub idle_accepted: Vec<IdleAccepted>,
    pub close_wait: u64,
    /// Descriptors holding CLOSE_WAIT sockets.
    pub close_wait_fds: Vec<u32>,
    /// CLOSE_WAIT by remote (who hung up).
    pub close_wait_remotes: Vec<(String, u64)>,
}

/// `owned`: socket inode → fds of this process.
pub fn analyse(
    pid: u32,
    comm: &str,
    netns: u32,
    sockets: &[DiagSocket],
    owned: &HashMap<u64, Vec<u32>>,
    idle_ms: u32,
) -> ProcessSockets {
    let mut p = ProcessSockets {
        pid,
        comm: comm.to_string(),
        netns,
        ..Default::default()
    };
    let mut idle: BTreeMap<(IpAddr, u16), IdleGroup> = BTreeMap::new();
    let mut cw_remote: BTreeMap<String, u64> = BTreeMap::new();
    let mut cw_fds: BTreeSet<u32> = BTreeSet::new();
    let mut accepted: BTreeMap<u16, IdleAccepted> = BTreeMap::new();
    let listeners = listening(sockets);
    for s in sockets.iter().filter(|s| s.inode != 0) {
        let Some(fds) = owned.get(&s.inode) else {
            continue;
        };
        *p.states.entry(state_name(s.state)).or_insert(0) += 1;
        match s.state {
            1 => {
                let Some(info) = s.info.filter(|i| i.idle_ms() >= idle_ms) else {
                    continue;
                };
                let idle_s = info.idle_ms() as f64 / 1000.0;
                if is_accepted(s, &listeners) {
                    let g = accepted.entry(s.lport).or_insert_with(|| IdleAccepted {
                        lport: s.lport,
                        ..Default::default()
                    });
                    g.count += 1;
                    g.max_idle_s = g.max_idle_s.max(idle_s);
                } else {
                    let g = idle.entry((s.raddr, s.rport)).or_insert_with(|| IdleGroup {
                        raddr: s.raddr.to_string(),
                        rport: s.rport,
                        ..Default::default()
                    });
                    g.count += 1;
                    g.max_idle_s = g.max_idle_s.max(idle_s);
                    g.bytes_sent += info.bytes_acked;
                    g.bytes_received += info.bytes_received;
                }
            }
            8 => {
                p.close_wait += 1;
                cw_fds.extend(fds.iter().copied());
                *cw_remote
                    .entry(crate::output::endpoint(s.raddr, s.rport))
                    .or_insert(0) += 1;
            }
            _ => {}
        }
    }
    p.idle_accepted = accepted.into_values().collect();
    p.idle_established = idle.into_values().collect();
    p.idle_established.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(b.max_idle_s.total_cmp(&a.max_idle_s))
    });
    p.close_wait_fds = cw_fds.into_iter().collect();
    let mut r: Vec<(String, u64)> = cw_remote.into_iter().collect();
    r.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    r.truncate(10);
    p.close_wait_remotes = r;
    p
}

/// The namespace's listening (address, port)s.
fn listening(sockets: &[DiagSocket]) -> Vec<(IpAddr, u16)> {
    sockets
        .iter()
        .filter(|s| s.state == 10)
        .map(|s| (s.laddr, s.lport))
        .collect()
}

/// An ESTABLISHED socket whose local address:port is a listener of its namespace came from
/// accept() (inet_csk_accept(): the child keeps the listener's port); an outbound one got an
/// ephemeral port, which bind conflicts keep off a listening address:port. A wildcard listener
/// (0.0.0.0 or ::, dual-stack) covers every local address of the port.
fn is_accepted(s: &DiagSocket, listeners: &[(IpAddr, u16)]) -> bool {
    listeners
        .iter()
        .any(|(a, p)| *p == s.lport && (a.is_unspecified() || *a == s.laddr))
}

/// TIME_WAIT sockets by remote endpoint (they have no owner).
pub fn time_wait_by_remote(sockets: &[DiagSocket], k: usize) -> Vec<(String, u64)> {
    let mut m: BTreeMap<String, u64> = BTreeMap::new();
    for s in sockets.iter().filter(|s| s.state == 6) {
        *m.entry(crate::output::endpoint(s.raddr, s.rport))
            .or_insert(0) += 1;
    }
    let mut v: Vec<(String, u64)> = m.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(k);
    v
}

pub fn diagnose_sockets(
    p: &ProcessSockets,
    idle_s: f64,
    nofile_limit: Option<u64>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let stale: u64 = p.idle_established.iter().map(|g| g.count).sum();
    if stale > 0 {
        let top = &p.idle_established[0];
        out.push(Finding {
            cause: "stale_established",
            impact: stale,
            text: format!(
                "pid {} ({}) holds {stale} ESTABLISHED connection{} idle for more than {idle_s:.0} s, most to {}:{} ({} idle up to {:.0} s): an upstream that stopped answering while the application waits without a timeout",
                p.pid, p.comm, if stale == 1 { "" } else { "s" }, top.raddr, top.rport, top.count, top.max_idle_s
            ),
            fix: vec![
                "set connect/read timeouts on the client (e.g. nginx `proxy_read_timeout`, PHP `default_socket_timeout`, libcurl CURLOPT_TIMEOUT, JDBC socketTimeout)".into(),
                "enable TCP keepalive (SO_KEEPALIVE; net.ipv4.tcp_keepalive_time) so dead peers are detected".into(),
            ],
        });
    }
    if p.close_wait > 0 {
        let fds: Vec<String> = p
            .close_wait_fds
            .iter()
            .take(20)
            .map(|f| f.to_string())
            .collect();
        let mut text = format!(
            "pid {} ({}) holds {} socket{} in CLOSE_WAIT (fds {}{}): the peer closed, the application never called close()",
            p.pid,
            p.comm,
            p.close_wait,
            if p.close_wait == 1 { "" } else { "s" },
            fds.join(","),
            if p.close_wait_fds.len() > 20 {
                ",…"
            } else {
                ""
            }
        );
        if let Some(limit) = nofile_limit {
            text.push_str(&format!("; each holds a descriptor (limit {limit})"));
        }
        out.push(Finding {
            cause: "close_wait_leak",
            impact: p.close_wait,
            text,
            fix: vec![
                format!("find the code path that returns without closing the connection: `ls -l /proc/{}/fd` shows them, `ss -tnp state close-wait` the peers", p.pid),
                "close the socket on every error/EOF path (read() returning 0 means the peer closed)".into(),
            ],
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::snapshot::sockdiag::TcpActivity;

    fn s(state: u8, inode: u64, rport: u16, idle: u32) -> DiagSocket {
        DiagSocket {
            state,
            laddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            lport: 40000,
            raddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            rport,
            recv_queue: 0,
            send_queue: 0,
            uid: 0,
            inode,
            cookie: 0,
            info: Some(TcpActivity {
                last_data_sent_ms: idle,
                last_data_recv_ms: idle + 5,
                bytes_acked: 10,
                bytes_received: 20,
            }),
            drops: None,
        }
    }

    #[test]
    fn finds_stale_and_close_wait() {
        let socks = vec![
            s(1, 1, 3306, 120_000),
            s(1, 2, 3306, 90_000),
            s(1, 3, 80, 10),
            s(8, 4, 5000, 0),
            s(8, 5, 5000, 0),
            s(6, 0, 80, 0),
            s(1, 99, 80, 999_999),
        ];
        // A listener on *:8080 and a connection accepted from it, idle as long as the stale
        // upstream: the client side of someone else's connection, not this process's upstream.
        let mut socks = socks;
        let mut listener = s(10, 20, 0, 0);
        listener.laddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        listener.lport = 8080;
        let mut accepted = s(1, 21, 51000, 500_000);
        accepted.lport = 8080;
        socks.extend([listener, accepted]);
        let owned: HashMap<u64, Vec<u32>> = [
            (1, vec![7]),
            (2, vec![8]),
            (3, vec![9]),
            (4, vec![10]),
            (5, vec![11]),
            (20, vec![3]),
            (21, vec![12]),
        ]
        .into_iter()
        .collect();
        let p = analyse(42, "php-fpm", 1, &socks, &owned, 60_000);
        assert_eq!(p.states["ESTABLISHED"], 4);
        assert_eq!(p.idle_established.len(), 1);
        assert_eq!(
            p.idle_accepted,
            vec![IdleAccepted {
                lport: 8080,
                count: 1,
                max_idle_s: 500.0
            }]
        );
        assert_eq!(
            (
                p.idle_established[0].rport,
                p.idle_established[0].count,
                p.idle_established[0].max_idle_s
            ),
            (3306, 2, 120.0)
        );
        assert_eq!((p.close_wait, p.close_wait_fds.clone()), (2, vec![10, 11]));
        let f = diagnose_sockets(&p, 60.0, Some(1024));
        assert_eq!(f[0].cause, "stale_established");
        assert!(f[0].text.contains("10.0.0.1:3306"), "{}", f[0].text);
        assert_eq!(f[1].cause, "close_wait_leak");
        assert!(
            f[1].text.contains("fds 10,11") && f[1].text.contains("limit 1024"),
            "{}",
            f[1].text
        );
        assert_eq!(
            time_wait_by_remote(&socks, 5),
            vec![("10.0.0.1:80".to_string(), 1)]
        );
        assert!(
            diagnose_sockets(&analyse(1, "x", 1, &[], &HashMap::new(), 1), 1.0, None).is_empty()
        );
    }
}
