//! `connection_limit`: a server that accepts connections and drops them at once because it is
//! at its own connection cap (nginx: "worker_connections are not enough"). The kernel sees
//! `close()` of a socket whose request is still unread: `__tcp_close()` counts
//! LINUX_MIB_TCPABORTONCLOSE and `tcp_send_active_reset(SK_RST_REASON_TCP_ABORT_ON_CLOSE)`
//! resets it, in the closing task. The accept family's `abort_close` part tallies these per
//! (namespace, local port, process) in `ABORTS_ON_CLOSE`; this module reads the tally, samples
//! the process's ESTABLISHED sockets on that port (its plateau) and turns it into a cause.
//! Everything but `AbortReader` and `sample` is pure.
use std::collections::{BTreeMap, HashMap, HashSet};

use aya::maps::{MapData, PerCpuHashMap};
use netlink_packet_sock_diag::inet::StateFlags;
use tcpq_common::{AbortKey, AbortTally, names};

use crate::{
    diagnosis::{Finding, cause, owner::App},
    kernel::probe::Loaded,
    snapshot::{netns, procs, sockdiag},
};

/// Fewer resets on close than this in an interval are not a cause: a client may send more
/// than a server reads before it closes (a pipelined request after `Connection: close`).
pub const MIN_RESETS: u64 = 10;

/// Resets on close per key, all CPUs summed, with the closing task's comm.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub count: u64,
    pub comm: String,
}

/// Sums one key's per-CPU values; the comm of the first CPU that made the entry.
pub fn sum_cpus(values: &[AbortTally]) -> Tally {
    let comm = values
        .iter()
        .find(|v| v.comm[0] != 0)
        .map(|v| crate::wire::comm_str(&v.comm))
        .unwrap_or_default();
    Tally {
        count: values.iter().map(|v| v.count).sum(),
        comm,
    }
}

/// What `now` added to `before` (keys the LRU evicted since count from zero again).
pub fn interval(
    before: &BTreeMap<AbortKey, Tally>,
    now: &BTreeMap<AbortKey, Tally>,
) -> BTreeMap<AbortKey, Tally> {
    now.iter()
        .filter_map(|(k, t)| {
            let base = before.get(k).map_or(0, |b| b.count);
            let n = if t.count >= base {
                t.count - base
            } else {
                t.count
            };
            (n > 0).then(|| {
                (
                    *k,
                    Tally {
                        count: n,
                        comm: t.comm.clone(),
                    },
                )
            })
        })
        .collect()
}

/// The `ABORTS_ON_CLOSE` map, if the `abort_close` part is loaded.
pub struct AbortReader {
    map: Option<PerCpuHashMap<MapData, AbortKey, AbortTally>>,
}

impl AbortReader {
    pub fn open(loaded: &mut Loaded) -> Self {
        let map = loaded
            .ebpf
            .take_map(names::ABORTS_ON_CLOSE)
            .and_then(|m| PerCpuHashMap::try_from(m).ok());
        Self { map }
    }

    /// Every key's running total (a map walk: one syscall per key, a handful in practice).
    pub fn read(&self) -> BTreeMap<AbortKey, Tally> {
        let Some(map) = &self.map else {
            return BTreeMap::new();
        };
        map.iter()
            .filter_map(Result::ok)
            .map(|(k, values)| (k, sum_cpus(&values)))
            .collect()
    }
}

/// A resetting process seen on its port while the interval ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    /// It holds a listening socket on that port (the resets are of connections it accepted).
    pub holds_listener: bool,
    /// The most ESTABLISHED sockets on that port it held at one look (its plateau).
    pub established_peak: u64,
    /// Its soft RLIMIT_NOFILE.
    pub nofile: Option<u64>,
}

impl Seen {
    pub fn merge(&mut self, other: Seen) {
        self.holds_listener |= other.holds_listener;
        self.established_peak = self.established_peak.max(other.established_peak);
        self.nofile = other.nofile.or(self.nofile);
    }
}

/// Counts the sockets of `lport` held by descriptors in `fds`: (holds a listener there,
/// ESTABLISHED ones). Pure.
pub fn count_held(socks: &[sockdiag::DiagSocket], lport: u16, fds: &HashSet<u64>) -> Seen {
    const TCP_ESTABLISHED: u8 = 1;
    const TCP_LISTEN: u8 = 10;
    let mut seen = Seen::default();
    for s in socks
        .iter()
        .filter(|s| s.lport == lport && fds.contains(&s.inode))
    {
        match s.state {
            TCP_LISTEN => seen.holds_listener = true,
            TCP_ESTABLISHED => seen.established_peak += 1,
            _ => {}
        }
    }
    seen
}

/// Socket inodes of `pid`'s descriptors.
fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(fds) = procfs::process::Process::new(pid as i32).and_then(|p| p.fd()) else {
        return HashSet::new();
    };
    fds.flatten()
        .filter_map(|fd| match fd.target {
            procfs::process::FDTarget::Socket(inode) => Some(inode),
            _ => None,
        })
        .collect()
}

/// Looks at `key`'s process now: its listener and ESTABLISHED sockets on the port, its limit.
pub fn sample(key: &AbortKey) -> Option<Seen> {
    let fds = socket_inodes(key.tgid);
    if fds.is_empty() {
        return None;
    }
    let states = StateFlags::LISTEN | StateFlags::ESTABLISHED;
    let socks = netns::run_in(key.netns, || sockdiag::dump_tcp(states).ok())
        .ok()
        .flatten()?;
    let mut seen = count_held(&socks, key.lport, &fds);
    seen.nofile = procs::nofile_limit(key.tgid);
    Some(seen)
}

/// Everything one `connection_limit` finding rests on.
#[derive(Debug, Clone)]
pub struct LimitEvidence<'a> {
    pub lport: u16,
    pub comm: &'a str,
    /// Every process of that program that reset connections on this port.
    pub pids: Vec<u32>,
    /// Connections they reset on close in the interval (exact, from the kernel).
    pub resets: u64,
    pub duration_s: f64,
    pub seen: Seen,
    /// The namespace's TcpExt TCPAbortOnClose over the interval (every process and port).
    pub kernel_abort_on_close: Option<u64>,
    pub app: App,
}

/// A server that resets the connections it accepts, at a plateau of ESTABLISHED ones: its own
/// connection cap (or descriptor limit) is full. None for a process that does not hold the
/// port's listener (a client's own resets are not a server's limit) or for a few resets.
pub fn diagnose_connection_limit(ev: &LimitEvidence) -> Option<Finding> {
    if ev.resets < MIN_RESETS || !ev.seen.holds_listener {
        return None;
    }
    let who = match ev.pids.as_slice() {
        [one] => format!("{} (pid {one})", ev.comm),
        many => format!("{} ({} processes)", ev.comm, many.len()),
    };
    let plateau = if ev.seen.established_peak > 0 {
        format!(
            " while holding {} ESTABLISHED on the port{}",
            ev.seen.established_peak,
            if ev.pids.len() > 1 {
                " (the most one process held)"
            } else {
                ""
            }
        )
    } else {
        String::new()
    };
    let kernel = ev
        .kernel_abort_on_close
        .map(|k| format!("; the namespace's TcpExt TCPAbortOnClose +{k}"))
        .unwrap_or_default();
    let text = format!(
        "{who} reset {} connections to :{} right after accepting them ({:.0}/s: closed with the request unread{kernel}){plateau}: it is at its own connection limit, and clients see resets",
        ev.resets,
        ev.lport,
        ev.resets as f64 / ev.duration_s.max(0.001),
    );
    Some(Finding {
        cause: cause::CONNECTION_LIMIT,
        impact: ev.resets,
        text,
        fix: ev
            .app
            .connection_limit_fixes(ev.seen.established_peak, ev.seen.nofile),
    })
}

/// Groups an interval's tallies per (namespace, port, program): one finding for nginx's
/// workers together. Keys of every process, in pid order.
pub fn group(
    tallies: &BTreeMap<AbortKey, Tally>,
) -> BTreeMap<(u32, u16, String), Vec<(AbortKey, u64)>> {
    let mut out: BTreeMap<(u32, u16, String), Vec<(AbortKey, u64)>> = BTreeMap::new();
    for (k, t) in tallies {
        out.entry((k.netns, k.lport, t.comm.clone()))
            .or_default()
            .push((*k, t.count));
    }
    out
}

/// Resets on close per namespace, every process and port (for the comparison with the
/// namespace's TCPAbortOnClose).
pub fn per_namespace(tallies: &BTreeMap<AbortKey, Tally>) -> HashMap<u32, u64> {
    let mut out = HashMap::new();
    for (k, t) in tallies {
        *out.entry(k.netns).or_insert(0) += t.count;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn key(tgid: u32, lport: u16) -> AbortKey {
        AbortKey {
            netns: 7,
            tgid,
            lport,
            family: 2,
            _pad: 0,
        }
    }

    fn comm(s: &str) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    #[test]
    fn cpus_are_summed_and_the_comm_kept() {
        let v = [
            AbortTally {
                count: 0,
                comm: [0; 16],
            },
            AbortTally {
                count: 5,
                comm: comm("nginx"),
            },
            AbortTally {
                count: 3,
                comm: comm("nginx"),
            },
        ];
        assert_eq!(
            sum_cpus(&v),
            Tally {
                count: 8,
                comm: "nginx".into()
            }
        );
    }

    #[test]
    fn the_interval_is_what_was_added_and_an_evicted_key_starts_again() {
        let t = |n| Tally {
            count: n,
            comm: "nginx".into(),
        };
        let before = BTreeMap::from([(key(1, 80), t(10)), (key(2, 80), t(50))]);
        let now = BTreeMap::from([(key(1, 80), t(25)), (key(2, 80), t(4)), (key(3, 80), t(1))]);
        let got = interval(&before, &now);
        assert_eq!(got.get(&key(1, 80)).map(|t| t.count), Some(15));
        assert_eq!(got.get(&key(2, 80)).map(|t| t.count), Some(4));
        assert_eq!(got.get(&key(3, 80)).map(|t| t.count), Some(1));
        let same = interval(&now, &now);
        assert!(same.is_empty());
        assert_eq!(per_namespace(&got).get(&7), Some(&20));
        let g = group(&got);
        assert_eq!(g.len(), 1);
        assert_eq!(g.values().next().map(Vec::len), Some(3));
    }

    fn sock(state: u8, lport: u16, inode: u64) -> sockdiag::DiagSocket {
        sockdiag::DiagSocket {
            state,
            laddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            lport,
            raddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            rport: 40000,
            recv_queue: 0,
            send_queue: 0,
            uid: 0,
            inode,
            cookie: inode,
            info: None,
            drops: None,
        }
    }

    #[test]
    fn held_sockets_are_counted_on_the_port_only() {
        let socks = [
            sock(10, 8080, 1),
            sock(1, 8080, 2),
            sock(1, 8080, 3),
            sock(1, 8080, 4), // someone else's
            sock(1, 9090, 5),
        ];
        let fds = HashSet::from([1, 2, 3, 5]);
        let seen = count_held(&socks, 8080, &fds);
        assert!(seen.holds_listener);
        assert_eq!(seen.established_peak, 2);
        assert!(!count_held(&socks, 9090, &fds).holds_listener);
    }

    fn evidence(resets: u64, holds: bool, app: App) -> LimitEvidence<'static> {
        LimitEvidence {
            lport: 8080,
            comm: "nginx",
            pids: vec![42],
            resets,
            duration_s: 2.0,
            seen: Seen {
                holds_listener: holds,
                established_peak: 31,
                nofile: Some(1024),
            },
            kernel_abort_on_close: Some(resets),
            app,
        }
    }

    #[test]
    fn a_server_resetting_what_it_accepts_is_at_its_connection_limit() {
        let f = diagnose_connection_limit(&evidence(169, true, App::Nginx)).expect("a cause");
        assert_eq!(f.cause, "connection_limit");
        assert_eq!(f.impact, 169);
        assert!(
            f.text
                .contains("nginx (pid 42) reset 169 connections to :8080"),
            "{}",
            f.text
        );
        assert!(f.text.contains("31 ESTABLISHED"), "{}", f.text);
        assert!(f.text.contains("TCPAbortOnClose +169"), "{}", f.text);
        assert!(f.fix.iter().any(|l| l.contains("worker_connections")));
        assert!(f.fix.iter().any(|l| l.contains("worker_rlimit_nofile")));
        let g = diagnose_connection_limit(&evidence(169, true, App::Other)).expect("a cause");
        assert!(
            g.fix.iter().any(|l| l.contains("LimitNOFILE")),
            "{:?}",
            g.fix
        );
        assert!(g.fix.iter().any(|l| l.contains("ulimit -n")), "{:?}", g.fix);
    }

    #[test]
    fn clients_and_a_few_resets_are_not_a_limit() {
        assert!(diagnose_connection_limit(&evidence(169, false, App::Nginx)).is_none());
        assert!(diagnose_connection_limit(&evidence(MIN_RESETS - 1, true, App::Nginx)).is_none());
    }
}
