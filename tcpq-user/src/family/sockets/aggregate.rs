//! Per-process socket analysis: states, ESTABLISHED connections idle past the threshold
//! (grouped per program and remote), CLOSE_WAIT seen at each look, TIME_WAIT by remote. Pure
//! and unit-tested.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use serde::Serialize;

use crate::snapshot::sockdiag::{DiagSocket, state_name};

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
