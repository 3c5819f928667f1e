//! Per-process socket analysis: states, ESTABLISHED connections idle too long (stale upstream),
//! CLOSE_WAIT the application never closed, TIME_WAIT by remote. Pure and unit-tested.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use serde::Serialize;

use crate::{
    diagnosis::{Finding, cause},
    snapshot::sockdiag::{DiagSocket, state_name},
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
    /// Of `count`: this side sent last and no answer came (a request waiting).
    pub awaiting_reply: u64,
    /// Of `awaiting_reply`: data still unacknowledged by the peer.
    pub unacknowledged: u64,
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
    /// Each CLOSE_WAIT socket: its sock_diag cookie and the fds holding it.
    #[serde(skip)]
    pub close_wait_sockets: Vec<(u64, Vec<u32>)>,
}

/// The CLOSE_WAIT sockets (sock_diag cookies: unique per socket for the kernel's lifetime) an
/// earlier look saw, and how long ago: those still in CLOSE_WAIT have lasted at least that.
#[derive(Debug, Clone, Default)]
pub struct CloseWaitSeen {
    pub cookies: HashSet<u64>,
    pub ago_s: f64,
}

impl CloseWaitSeen {
    pub fn of(procs: &[ProcessSockets], ago_s: f64) -> Self {
        Self {
            cookies: procs
                .iter()
                .flat_map(|p| p.close_wait_sockets.iter().map(|(c, _)| *c))
                .collect(),
            ago_s,
        }
    }

    /// The process's CLOSE_WAIT sockets seen then too.
    pub fn lasting<'a>(&self, p: &'a ProcessSockets) -> Vec<&'a (u64, Vec<u32>)> {
        p.close_wait_sockets
            .iter()
            .filter(|(c, _)| self.cookies.contains(c))
            .collect()
    }
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
                    if info.awaiting_reply() {
                        g.awaiting_reply += 1;
                        g.unacknowledged += u64::from(info.unacked > 0);
                    }
                }
            }
            8 => {
                p.close_wait += 1;
                cw_fds.extend(fds.iter().copied());
                p.close_wait_sockets.push((s.cookie, fds.clone()));
                *cw_remote
                    .entry(crate::render::endpoint(s.raddr, s.rport))
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
        *m.entry(crate::render::endpoint(s.raddr, s.rport))
            .or_insert(0) += 1;
    }
    let mut v: Vec<(String, u64)> = m.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(k);
    v
}

/// One program's outbound connections to one remote, idle past the threshold, over every
/// process running it (a prefork pool is one finding, not one per worker).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StaleUpstream {
    pub netns: u32,
    pub comm: String,
    pub raddr: String,
    pub rport: u16,
    /// Processes holding a connection that waits for an answer.
    pub pids: BTreeSet<u32>,
    pub awaiting_reply: u64,
    pub unacknowledged: u64,
    /// Idle connections that got their answers (a pool's spare connections).
    pub idle: u64,
    pub max_idle_s: f64,
}

/// Groups the processes' idle outbound connections by (namespace, program, remote); only the
/// groups with a connection waiting for an answer. Largest first.
pub fn group_stale(procs: &[ProcessSockets]) -> Vec<StaleUpstream> {
    let mut m: BTreeMap<(u32, &str, &str, u16), StaleUpstream> = BTreeMap::new();
    for p in procs {
        for g in &p.idle_established {
            let e = m
                .entry((p.netns, p.comm.as_str(), g.raddr.as_str(), g.rport))
                .or_insert_with(|| StaleUpstream {
                    netns: p.netns,
                    comm: p.comm.clone(),
                    raddr: g.raddr.clone(),
                    rport: g.rport,
                    ..Default::default()
                });
            if g.awaiting_reply > 0 {
                e.pids.insert(p.pid);
                e.max_idle_s = e.max_idle_s.max(g.max_idle_s);
            }
            e.awaiting_reply += g.awaiting_reply;
            e.unacknowledged += g.unacknowledged;
            e.idle += g.count - g.awaiting_reply;
        }
    }
    let mut v: Vec<StaleUpstream> = m.into_values().filter(|g| g.awaiting_reply > 0).collect();
    v.sort_by_key(|s| std::cmp::Reverse(s.awaiting_reply));
    v
}

/// "pid 7" or "3 processes: pids 100-102": consecutive pids as ranges, at most `max` items.
pub fn compact_pids(pids: &BTreeSet<u32>, max: usize) -> String {
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for &p in pids {
        match ranges.last_mut() {
            Some((_, hi)) if *hi + 1 == p => *hi = p,
            _ => ranges.push((p, p)),
        }
    }
    let mut items: Vec<String> = ranges
        .iter()
        .take(max)
        .map(|(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect();
    if ranges.len() > max {
        items.push("…".into());
    }
    match pids.len() {
        1 => format!("pid {}", items.join("")),
        n => format!("{n} processes: pids {}", items.join(", ")),
    }
}

/// A request sent, acknowledged by the peer's kernel and never answered: the upstream is alive
/// (it ACKs, it would ACK keepalive probes too) but silent, and the client waits without a
/// read timeout. `client_timeout` is the client program's setting (`App::client_timeout_setting`).
pub fn diagnose_stale(g: &StaleUpstream, idle_s: f64, client_timeout: &str) -> Option<Finding> {
    if g.awaiting_reply == 0 {
        return None;
    }
    let n = g.awaiting_reply;
    let remote = g
        .raddr
        .parse()
        .map(|a| crate::render::endpoint(a, g.rport))
        .unwrap_or_else(|_| format!("{}:{}", g.raddr, g.rport));
    let acked = n - g.unacknowledged;
    let mut text = format!(
        "{} ({}) sent a request on {n} connection{} to {remote} and got no answer for more than {idle_s:.0} s (up to {:.0} s)",
        g.comm,
        compact_pids(&g.pids, 8),
        if n == 1 { "" } else { "s" },
        g.max_idle_s
    );
    if acked > 0 {
        text.push_str(&format!(
            "; the peer acknowledged {} but never answered: the upstream is alive and silent, and the client waits without a read timeout (TCP keepalive does not help: the peer's kernel answers its probes)",
            if acked == n { "every request".to_string() } else { format!("{acked} of them") }
        ));
    }
    if g.unacknowledged > 0 {
        text.push_str(&format!(
            "; {} not even acknowledged: the peer or the path is gone",
            g.unacknowledged
        ));
    }
    if g.idle > 0 {
        text.push_str(&format!(
            " ({} more connection{} to it idle after an answer: a pool's spares, not a fault)",
            g.idle,
            if g.idle == 1 { "" } else { "s" }
        ));
    }
    let mut fix = vec![format!(
        "set read timeouts on the client so a silent upstream fails the request instead of holding the process: {client_timeout}"
    )];
    if g.unacknowledged > 0 {
        fix.push("unacknowledged data is retransmitted for ~15 min (net.ipv4.tcp_retries2=15) before the connection fails: set TCP_USER_TIMEOUT on the client socket to give up sooner".into());
    }
    fix.push(format!(
        "see them and what the upstream is doing: `ss -tnpio state established dst {} dport = :{}`",
        g.raddr, g.rport
    ));
    Some(Finding {
        cause: cause::STALE_ESTABLISHED,
        impact: n,
        text,
        fix,
    })
}

/// Findings of one process: its stale upstreams (grouped as `group_stale` does) and the
/// CLOSE_WAIT sockets `earlier` saw too.
pub fn diagnose_sockets(
    p: &ProcessSockets,
    idle_s: f64,
    nofile_limit: Option<u64>,
    client_timeout: &str,
    earlier: &CloseWaitSeen,
) -> Vec<Finding> {
    let mut out: Vec<Finding> = group_stale(std::slice::from_ref(p))
        .iter()
        .filter_map(|g| diagnose_stale(g, idle_s, client_timeout))
        .collect();
    out.extend(diagnose_close_wait(p, nofile_limit, earlier));
    out
}

/// CLOSE_WAIT sockets the process has held since `earlier` looked: the peer closed, the process
/// never called close(). One seen once may be a busy worker about to close it: not a leak yet.
pub fn diagnose_close_wait(
    p: &ProcessSockets,
    nofile_limit: Option<u64>,
    earlier: &CloseWaitSeen,
) -> Option<Finding> {
    let lasting = earlier.lasting(p);
    if lasting.is_empty() {
        return None;
    }
    let n = lasting.len() as u64;
    let fds: BTreeSet<u32> = lasting
        .iter()
        .flat_map(|(_, f)| f.iter().copied())
        .collect();
    let shown: Vec<String> = fds.iter().take(20).map(|f| f.to_string()).collect();
    let mut text = format!(
        "pid {} ({}) has held {n} socket{} in CLOSE_WAIT for at least {:.0} s (fds {}{}): the peer closed, the application never called close()",
        p.pid,
        p.comm,
        if n == 1 { "" } else { "s" },
        earlier.ago_s,
        shown.join(","),
        if fds.len() > 20 { ",…" } else { "" }
    );
    if p.close_wait > n {
        text.push_str(&format!("; {} newer", p.close_wait - n));
    }
    if let Some(limit) = nofile_limit {
        text.push_str(&format!("; each holds a descriptor (limit {limit})"));
    }
    Some(Finding {
        cause: cause::CLOSE_WAIT_LEAK,
        impact: n,
        text,
        fix: vec![
            format!(
                "find the code path that returns without closing the connection: `ls -l /proc/{}/fd` shows them, `ss -tnp state close-wait` the peers",
                p.pid
            ),
            "close the socket on every error/EOF path (read() returning 0 means the peer closed)"
                .into(),
        ],
    })
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
            cookie: inode + 1000,
            info: Some(TcpActivity {
                last_data_sent_ms: idle,
                last_data_recv_ms: idle + 5,
                bytes_acked: 10,
                bytes_received: 20,
                unacked: 0,
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
        // CLOSE_WAIT seen for the first time: not a leak yet.
        let f = diagnose_sockets(&p, 60.0, Some(1024), "TIMEOUT", &CloseWaitSeen::default());
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].cause, "stale_established");
        assert!(f[0].text.contains("10.0.0.1:3306"), "{}", f[0].text);
        // Both seen 10 s ago: a leak of two.
        let earlier = CloseWaitSeen::of(std::slice::from_ref(&p), 10.0);
        let f = diagnose_sockets(&p, 60.0, Some(1024), "TIMEOUT", &earlier);
        assert_eq!(f[1].cause, "close_wait_leak");
        assert!(
            f[1].text
                .contains("2 sockets in CLOSE_WAIT for at least 10 s (fds 10,11)")
                && f[1].text.contains("limit 1024"),
            "{}",
            f[1].text
        );
        // Only one of them (inode 4's socket, fd 10) was there then: one lasting, one newer.
        let one = CloseWaitSeen {
            cookies: [1004].into_iter().collect(),
            ago_s: 3.0,
        };
        let f = diagnose_close_wait(&p, None, &one).unwrap();
        assert_eq!(f.impact, 1);
        assert!(
            f.text
                .contains("1 socket in CLOSE_WAIT for at least 3 s (fds 10)")
                && f.text.contains("; 1 newer"),
            "{}",
            f.text
        );
        assert_eq!(
            time_wait_by_remote(&socks, 5),
            vec![("10.0.0.1:80".to_string(), 1)]
        );
        assert!(
            diagnose_sockets(
                &analyse(1, "x", 1, &[], &HashMap::new(), 1),
                1.0,
                None,
                "",
                &CloseWaitSeen::default()
            )
            .is_empty()
        );
    }

    fn activity(
        sent_ms: u32,
        recv_ms: u32,
        acked: u64,
        received: u64,
        unacked: u32,
    ) -> TcpActivity {
        TcpActivity {
            last_data_sent_ms: sent_ms,
            last_data_recv_ms: recv_ms,
            bytes_acked: acked,
            bytes_received: received,
            unacked,
        }
    }

    #[test]
    fn awaiting_reply_means_we_sent_last() {
        // Request sent and acknowledged (bytes_acked counts the SYN as 1), nothing received.
        assert!(activity(3000, 3000, 23, 0, 0).awaiting_reply());
        // A pooled connection answered within the same tick: equal times, data both ways.
        assert!(!activity(3000, 3000, 25, 40, 0).awaiting_reply());
        // A second request on a kept-alive connection, sent 5 s after the last answer.
        assert!(activity(1000, 6000, 50, 80, 0).awaiting_reply());
        // Unacknowledged data: sent, not even acknowledged.
        assert!(activity(1000, 9000, 1, 0, 1).awaiting_reply());
        // Connected, nothing sent either way.
        assert!(!activity(9000, 9000, 1, 0, 0).awaiting_reply());
    }

    fn process(pid: u32, comm: &str, rport: u16, count: u64, awaiting: u64) -> ProcessSockets {
        ProcessSockets {
            pid,
            comm: comm.into(),
            netns: 1,
            idle_established: vec![IdleGroup {
                raddr: "10.0.0.9".into(),
                rport,
                count,
                max_idle_s: pid as f64,
                awaiting_reply: awaiting,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_prefork_pool_is_one_stale_upstream() {
        // 111 php-fpm children, each waiting on one request to :3306, plus pooled spares; a
        // pool that only idles (:6379) is no finding.
        let mut procs: Vec<ProcessSockets> = (100..211)
            .map(|pid| process(pid, "php-fpm", 3306, 2, 1))
            .collect();
        procs.push(process(300, "php-fpm", 6379, 4, 0));
        procs.push(process(301, "nginx", 3306, 1, 1));
        let groups = group_stale(&procs);
        assert_eq!(groups.len(), 2, "{groups:?}");
        let g = &groups[0];
        assert_eq!((g.comm.as_str(), g.rport), ("php-fpm", 3306));
        assert_eq!((g.pids.len(), g.awaiting_reply, g.idle), (111, 111, 111));
        assert_eq!(g.max_idle_s, 210.0);
        let f = diagnose_stale(g, 60.0, "PHP: `default_socket_timeout`").unwrap();
        assert_eq!((f.cause, f.impact), ("stale_established", 111));
        assert!(
            f.text.starts_with("php-fpm (111 processes: pids 100-210) sent a request on 111 connections to 10.0.0.9:3306 and got no answer for more than 60 s (up to 210 s); the peer acknowledged every request but never answered"),
            "{}",
            f.text
        );
        assert!(f.text.contains("keepalive does not help"), "{}", f.text);
        assert!(
            f.text
                .contains("111 more connections to it idle after an answer"),
            "{}",
            f.text
        );
        assert!(f.fix[0].contains("read timeouts") && f.fix[0].contains("default_socket_timeout"));
        assert!(
            f.fix.iter().all(|l| !l.contains("TCP_USER_TIMEOUT")),
            "{:?}",
            f.fix
        );
        assert_eq!(groups[1].comm, "nginx");
        // Unacknowledged data: the peer is gone, TCP_USER_TIMEOUT bounds the retransmissions.
        let mut gone = groups[1].clone();
        gone.unacknowledged = 1;
        let f = diagnose_stale(&gone, 60.0, "x").unwrap();
        assert!(
            f.text.contains("pid 301") && f.text.contains("1 not even acknowledged"),
            "{}",
            f.text
        );
        assert!(!f.text.contains("keepalive"), "{}", f.text);
        assert!(
            f.fix.iter().any(|l| l.contains("TCP_USER_TIMEOUT")),
            "{:?}",
            f.fix
        );
        // A pool that only idles is no finding, from the per-process view too.
        assert!(
            diagnose_sockets(&procs[111], 60.0, None, "x", &CloseWaitSeen::default()).is_empty()
        );
    }

    #[test]
    fn pids_are_listed_compactly() {
        let set = |v: &[u32]| v.iter().copied().collect::<BTreeSet<u32>>();
        assert_eq!(compact_pids(&set(&[7]), 8), "pid 7");
        assert_eq!(
            compact_pids(&set(&[1, 2, 3, 5, 9, 10]), 8),
            "6 processes: pids 1-3, 5, 9-10"
        );
        assert_eq!(
            compact_pids(&set(&[1, 3, 5, 7]), 2),
            "4 processes: pids 1, 3, …"
        );
    }
}
