//! Per-process socket verdicts: ESTABLISHED connections idle too long (stale upstream) and
//! CLOSE_WAIT the application never closed. Pure and unit-tested.
use std::collections::BTreeSet;

use super::aggregate::{CloseWaitSeen, ProcessSockets, StaleUpstream, compact_pids, group_stale};
use crate::diagnosis::{Finding, cause};

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
    use std::{
        collections::HashMap,
        net::{IpAddr, Ipv4Addr},
    };

    use super::{super::aggregate::*, *};
    use crate::{
        diagnosis::check::assert_text,
        snapshot::sockdiag::{DiagSocket, TcpActivity},
    };

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
        assert_text(&f[0], "10.0.0.1:3306");
        // Both seen 10 s ago: a leak of two.
        let earlier = CloseWaitSeen::of(std::slice::from_ref(&p), 10.0);
        let f = diagnose_sockets(&p, 60.0, Some(1024), "TIMEOUT", &earlier);
        assert_eq!(f[1].cause, "close_wait_leak");
        assert_text(
            &f[1],
            "2 sockets in CLOSE_WAIT for at least 10 s (fds 10,11)",
        );
        assert_text(&f[1], "limit 1024");
        // Only one of them (inode 4's socket, fd 10) was there then: one lasting, one newer.
        let one = CloseWaitSeen {
            cookies: [1004].into_iter().collect(),
            ago_s: 3.0,
        };
        let f = diagnose_close_wait(&p, None, &one).unwrap();
        assert_eq!(f.impact, 1);
        assert_text(&f, "1 socket in CLOSE_WAIT for at least 3 s (fds 10)");
        assert_text(&f, "; 1 newer");
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
        assert_text(&f, "keepalive does not help");
        assert_text(&f, "111 more connections to it idle after an answer");
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
        assert_text(&f, "pid 301");
        assert_text(&f, "1 not even acknowledged");
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
