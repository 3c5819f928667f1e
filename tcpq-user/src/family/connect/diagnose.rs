//! Ephemeral-port usage per (source, destination) against the usable range, and the verdict.
//! Pure: the caller supplies sock_diag sockets, sysctls and traced connect stats.
use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::IpAddr,
};

use serde::Serialize;

use super::{aggregate::ConnectStats, decode::ConnectResult};
use crate::{
    diagnosis::{Finding, cause},
    snapshot::sockdiag::{DiagSocket, state_name},
};

/// `net.ipv4.ip_local_port_range` minus `ip_local_reserved_ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
    pub reserved: Vec<(u16, u16)>,
}

impl PortRange {
    /// Parses "32768\t60999" and the reserved list "8080,9000-9010" (may be empty).
    pub fn parse(range: &str, reserved: &str) -> Option<Self> {
        let mut it = range.split_whitespace().map(|s| s.parse::<u16>());
        let (lo, hi) = (it.next()?.ok()?, it.next()?.ok()?);
        if lo > hi {
            return None;
        }
        let mut res = Vec::new();
        for part in reserved
            .trim()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
                None => {
                    let p: u16 = part.parse().ok()?;
                    (p, p)
                }
            };
            res.push((a, b));
        }
        Some(Self {
            lo,
            hi,
            reserved: res,
        })
    }

    pub fn contains(&self, port: u16) -> bool {
        port >= self.lo
            && port <= self.hi
            && !self.reserved.iter().any(|(a, b)| port >= *a && port <= *b)
    }

    /// Ports connect() may pick.
    pub fn usable(&self) -> u32 {
        (self.lo..=self.hi).filter(|p| self.contains(*p)).count() as u32
    }
}

/// Sockets from one source address to one destination, in one namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DestUsage {
    pub saddr: Option<IpAddr>,
    pub daddr: Option<IpAddr>,
    pub dport: u16,
    /// Sockets by state whose local port is in the usable range.
    pub states: BTreeMap<&'static str, u64>,
    /// Sides held by the selected processes (TIME_WAIT sockets belong to nobody).
    pub owned: u64,
}

impl DestUsage {
    pub fn used(&self) -> u64 {
        self.states.values().sum()
    }
    pub fn state(&self, s: &str) -> u64 {
        self.states.get(s).copied().unwrap_or(0)
    }
}

/// Groups client-side sockets (local port in `range`) by (source, destination). A destination is
/// kept when one of `owned_inodes` connects to it, or it is in `extra_dests` (traced connects,
/// including ones that failed with no socket), or when `all` is set.
pub fn group_usage(
    sockets: &[DiagSocket],
    range: &PortRange,
    owned_inodes: &HashSet<u64>,
    extra_dests: &BTreeSet<(IpAddr, u16)>,
    all: bool,
) -> Vec<DestUsage> {
    let wanted: BTreeSet<(IpAddr, u16)> = sockets
        .iter()
        .filter(|s| s.state != 10 && owned_inodes.contains(&s.inode))
        .map(|s| (s.raddr, s.rport))
        .chain(extra_dests.iter().copied())
        .collect();
    let mut groups: BTreeMap<(IpAddr, IpAddr, u16), DestUsage> = BTreeMap::new();
    for s in sockets {
        if s.state == 10 || !range.contains(s.lport) {
            continue;
        }
        if !all && !wanted.contains(&(s.raddr, s.rport)) {
            continue;
        }
        let g = groups
            .entry((s.laddr, s.raddr, s.rport))
            .or_insert_with(|| DestUsage {
                saddr: Some(s.laddr),
                daddr: Some(s.raddr),
                dport: s.rport,
                ..Default::default()
            });
        *g.states.entry(state_name(s.state)).or_insert(0) += 1;
        if owned_inodes.contains(&s.inode) {
            g.owned += 1;
        }
    }
    // Destinations that only failed (no socket left at all) still deserve a row.
    for (d, p) in extra_dests {
        if !groups.keys().any(|(_, gd, gp)| gd == d && gp == p) {
            groups.insert(
                (IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), *d, *p),
                DestUsage {
                    saddr: None,
                    daddr: Some(*d),
                    dport: *p,
                    ..Default::default()
                },
            );
        }
    }
    let mut v: Vec<DestUsage> = groups.into_values().collect();
    v.sort_by(|a, b| {
        b.used()
            .cmp(&a.used())
            .then(a.daddr.cmp(&b.daddr))
            .then(a.dport.cmp(&b.dport))
    });
    v
}

/// Evidence for one destination row.
#[derive(Debug, Clone)]
pub struct PortsEvidence<'a> {
    pub usage: &'a DestUsage,
    pub range: &'a PortRange,
    pub tw_reuse: Option<u32>,
    /// Traced connect stats for this destination (None: snapshot only).
    pub traced: Option<&'a ConnectStats>,
    pub duration_s: f64,
    /// `nsenter -t PID -n ` when the namespace is not tcpq's.
    pub ns_prefix: String,
}

pub fn utilisation(used: u64, usable: u32) -> f64 {
    if usable == 0 {
        1.0
    } else {
        used as f64 / usable as f64
    }
}

/// "10.0.0.1:80", "[::1]:80", "*:80".
pub fn dest_label(daddr: Option<IpAddr>, dport: u16) -> String {
    match daddr {
        Some(IpAddr::V6(a)) => format!("[{a}]:{dport}"),
        Some(a) => format!("{a}:{dport}"),
        None => format!("*:{dport}"),
    }
}

/// Connects to one destination that failed other than on a port search (refused, timeout, …):
/// one finding per destination whatever source addresses the connects used. `failed` holds
/// the stats of the processes whose connects failed, not of everyone who connected there.
pub fn diagnose_connect_failures(failed: &ConnectStats, dest: &str) -> Option<Finding> {
    let results: Vec<(&ConnectResult, &u64)> = failed
        .results
        .iter()
        .filter(|(r, _)| r.is_failure() && **r != ConnectResult::Errno(99))
        .collect();
    let n: u64 = results.iter().map(|(_, n)| **n).sum();
    if n == 0 {
        return None;
    }
    let parts: Vec<String> = results
        .iter()
        .map(|(r, n)| format!("{} {n}", r.id()))
        .collect();
    Some(Finding {
        cause: cause::CONNECT_FAILURES,
        impact: n,
        text: format!("{n} connects to {dest} failed: {}", parts.join(", ")),
        fix: vec![format!(
            "check that {dest} is listening and reachable (`tcpq trace connect --dst {dest} --failed`)"
        )],
    })
}

/// Port usage from one source to one destination: exhausted ports or a TIME_WAIT pile-up.
pub fn diagnose_ports(e: &PortsEvidence) -> Vec<Finding> {
    let u = e.usage;
    let usable = e.range.usable();
    let used = u.used();
    let util = utilisation(used, usable);
    let tw = u.state("TIME_WAIT");
    let eaddr = e
        .traced
        .map(|t| t.count(ConnectResult::Errno(99)))
        .unwrap_or(0);
    let dest = dest_label(u.daddr, u.dport);
    let loopback = u.daddr.is_some_and(|a| a.is_loopback());
    let mut out = Vec::new();
    if eaddr > 0 || util >= 0.9 {
        let states: Vec<String> = u.states.iter().map(|(s, n)| format!("{s} {n}")).collect();
        let mut text = format!(
            "ephemeral ports to {dest} exhausted: {used} of {usable} usable ports in use ({:.0} %; ip_local_port_range {}–{}{}){}{}",
            util * 100.0,
            e.range.lo,
            e.range.hi,
            if e.range.reserved.is_empty() {
                String::new()
            } else {
                format!(
                    " minus {} reserved",
                    (e.range.hi - e.range.lo + 1) as u32 - usable
                )
            },
            if states.is_empty() {
                String::new()
            } else {
                format!(": {}", states.join(", "))
            },
            if eaddr > 0 {
                format!(
                    "; connect() failed {eaddr} times with EADDRNOTAVAIL in {:.0} s",
                    e.duration_s
                )
            } else {
                String::new()
            },
        );
        if used > 0 && tw * 2 >= used {
            text.push_str(&format!(
                " — TIME_WAIT holds {tw} of them: one connection per request, closed by this side"
            ));
        }
        let mut fix = Vec::new();
        if used == 0 || tw * 2 >= used {
            fix.push("reuse connections to the upstream instead of one per request: nginx `upstream app { server DEST; keepalive 32; }` with `proxy_http_version 1.1; proxy_set_header Connection \"\";` (HTTP) or `fastcgi_keep_conn on;` (FastCGI)".replace("DEST", &dest));
        }
        match e.tw_reuse {
            Some(1) => {}
            Some(2) if loopback => fix.push(crate::fixes::sysctl_fix(
                &e.ns_prefix,
                "net.ipv4.tcp_tw_reuse",
                "1",
                &format!("2 (the default) already reuses TIME_WAIT ports to loopback after 1 s: the connect rate is above {usable} per second"),
            )),
            _ => fix.push(crate::fixes::sysctl_fix(
                &e.ns_prefix,
                "net.ipv4.tcp_tw_reuse",
                "1",
                "connect() may reuse a TIME_WAIT port after 1 s (needs TCP timestamps, on by default)",
            )),
        }
        if usable < 60_000 {
            fix.push(crate::fixes::sysctl_fix(
                &e.ns_prefix,
                "net.ipv4.ip_local_port_range",
                "1024 65535",
                &format!("{usable} → 64512 ports per destination (keep service ports in ip_local_reserved_ports)"),
            ));
        }
        if loopback {
            fix.push("the upstream is on this host: use a unix socket, e.g. php-fpm `listen = /run/php/php-fpm.sock` and nginx `fastcgi_pass unix:/run/php/php-fpm.sock;`".into());
        }
        fix.push("more source addresses: each (source IP, destination) pair has its own range (nginx `proxy_bind` over several local IPs)".into());
        out.push(Finding {
            cause: cause::PORTS_EXHAUSTED,
            impact: eaddr.max(used),
            text,
            fix,
        });
    } else if used >= 1000 && tw * 2 >= used {
        out.push(Finding {
            cause: cause::TIME_WAIT_PILEUP,
            impact: tw,
            text: format!("{tw} TIME_WAIT sockets to {dest} ({:.0} % of the {usable} usable ports): connections are opened per request and closed by this side", util * 100.0),
            fix: vec!["reuse connections (keepalive / connection pooling) before the range runs out".into()],
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::diagnosis::check::{assert_fix, assert_text};

    fn sock(state: u8, lport: u16, rport: u16, inode: u64) -> DiagSocket {
        DiagSocket {
            state,
            laddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            lport,
            raddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            rport,
            recv_queue: 0,
            send_queue: 0,
            uid: 0,
            inode,
            cookie: 0,
            info: None,
            drops: None,
        }
    }

    #[test]
    fn connect_failures_leave_port_searches_to_ports_exhausted() {
        let mut agg = crate::family::connect::aggregate::ConnectAggregator::new(10);
        for (result, n) in [
            (ConnectResult::Refused, 5),
            (ConnectResult::Errno(99), 3),
            (ConnectResult::Ok, 2),
        ] {
            for _ in 0..n {
                agg.record(&crate::family::connect::decode::ConnectOutcome {
                    ts_ns: 0,
                    netns: 1,
                    tgid: 4,
                    comm: "curl".into(),
                    saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    sport: 0,
                    daddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    dport: 9000,
                    result,
                    syscall_ns: None,
                    handshake_ns: None,
                    syn_retrans: 0,
                });
            }
        }
        let stats = agg.by_key.values().next().unwrap();
        let dest = dest_label(Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), 9000);
        let f = diagnose_connect_failures(stats, &dest).unwrap();
        assert_eq!((f.cause, f.impact), ("connect_failures", 5));
        assert_eq!(f.text, "5 connects to 127.0.0.1:9000 failed: refused 5");
        assert_fix(&f, 0, "--dst 127.0.0.1:9000");
        assert_eq!(dest_label(Some("::1".parse().unwrap()), 80), "[::1]:80");
        assert_eq!(dest_label(None, 80), "*:80");
    }

    #[test]
    fn ranges() {
        let r = PortRange::parse("40000\t40015", "").unwrap();
        assert_eq!(r.usable(), 16);
        let r = PortRange::parse("32768 60999", "40000-40009,50000\n").unwrap();
        assert_eq!(r.usable(), 28232 - 11);
        assert!(!r.contains(50000) && r.contains(50001) && !r.contains(1000));
        assert!(PortRange::parse("5 1", "").is_none());
        assert!(PortRange::parse("garbage", "").is_none());
    }

    #[test]
    fn groups_by_destination_including_unowned_time_wait() {
        let range = PortRange::parse("40000 40015", "").unwrap();
        let mut socks: Vec<DiagSocket> = (0..14).map(|i| sock(6, 40000 + i, 9000, 0)).collect();
        socks.push(sock(1, 40014, 9000, 77));
        socks.push(sock(1, 9000, 40014, 88)); // server side: local port not in range
        socks.push(sock(10, 9000, 0, 99)); // listener
        socks.push(sock(1, 40015, 5432, 0)); // another destination, not ours
        let g = group_usage(
            &socks,
            &range,
            &HashSet::from([77]),
            &BTreeSet::new(),
            false,
        );
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].dport, 9000);
        assert_eq!(g[0].used(), 15);
        assert_eq!(g[0].state("TIME_WAIT"), 14);
        assert_eq!(g[0].owned, 1);
        let all = group_usage(&socks, &range, &HashSet::new(), &BTreeSet::new(), true);
        assert_eq!(all.len(), 2);
        let failed_only = group_usage(
            &[],
            &range,
            &HashSet::new(),
            &BTreeSet::from([(IpAddr::V4(Ipv4Addr::LOCALHOST), 9000)]),
            false,
        );
        assert_eq!((failed_only.len(), failed_only[0].used()), (1, 0));
    }

    #[test]
    fn verdict_names_range_time_wait_and_fixes() {
        let range = PortRange::parse("40000 40015", "").unwrap();
        let socks: Vec<DiagSocket> = (0..16).map(|i| sock(6, 40000 + i, 9000, 0)).collect();
        let g = group_usage(&socks, &range, &HashSet::new(), &BTreeSet::new(), true);
        let mut stats_src = crate::family::connect::aggregate::ConnectAggregator::new(4);
        for _ in 0..5 {
            stats_src.record(&crate::family::connect::decode::ConnectOutcome {
                ts_ns: 0,
                netns: 1,
                tgid: 1,
                comm: "php".into(),
                saddr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                sport: 0,
                daddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                dport: 9000,
                result: ConnectResult::Errno(99),
                syscall_ns: Some(10_000),
                handshake_ns: None,
                syn_retrans: 0,
            });
        }
        let stats = stats_src.by_key.values().next().unwrap();
        let e = PortsEvidence {
            usage: &g[0],
            range: &range,
            tw_reuse: Some(0),
            traced: Some(stats),
            duration_s: 5.0,
            ns_prefix: String::new(),
        };
        let f = diagnose_ports(&e);
        assert_eq!(f[0].cause, "ports_exhausted");
        assert_text(
            &f[0],
            "16 of 16 usable ports in use (100 %; ip_local_port_range 40000–40015)",
        );
        assert!(f[0].text.contains("TIME_WAIT 16"));
        assert!(f[0].text.contains("EADDRNOTAVAIL"));
        let fixes = f[0].fix.join("\n");
        assert!(
            fixes.contains("keepalive 32") && fixes.contains("fastcgi_keep_conn on"),
            "{fixes}"
        );
        assert!(fixes.contains("tcp_tw_reuse=1"));
        assert!(fixes.contains("ip_local_port_range=\"1024 65535\""));
        assert!(fixes.contains("unix:/run/php/php-fpm.sock"));
        // snapshot only, half used: no verdict
        let half: Vec<DiagSocket> = (0..8).map(|i| sock(1, 40000 + i, 9000, 0)).collect();
        let g = group_usage(&half, &range, &HashSet::new(), &BTreeSet::new(), true);
        let e = PortsEvidence {
            usage: &g[0],
            range: &range,
            tw_reuse: Some(2),
            traced: None,
            duration_s: 0.0,
            ns_prefix: String::new(),
        };
        assert!(diagnose_ports(&e).is_empty());
    }
}
