//! Tier 0 of the live commands: what the kernel already counts, read with no program attached.
//! Per network namespace: every listener with its accept queue, backlog and `sk_drops`
//! (sock_diag, INET_DIAG_SKMEMINFO), the TcpExt/Tcp counters and the conntrack table's
//! count, limit and drop stat. A sock_diag socket and the /proc files opened once inside a
//! namespace stay bound to it, so each reading is a dump and a few reads, without entering the
//! namespace again; namespaces are (re)discovered at a slower pace.
use std::{
    collections::HashMap,
    fs::File,
    io::{Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Result;
use netlink_sys::Socket;

use super::{counters, netns, sockdiag};

/// How often new namespaces are looked for (and vanished ones let go).
pub const DISCOVER_EVERY: Duration = Duration::from_secs(1);
/// Namespaces watched at most: beyond, the newest are left out (and counted).
pub const MAX_NAMESPACES: usize = 512;
/// A namespace's counters are read at least this often; at every reading where one of its
/// listeners' sk_drops moved (the refusals are shared out by them) or a listener came or went
/// (the refusals a closed one counted after its last reading are its own only if the counters
/// are read in the reading that first misses it), and when forced.
pub const COUNTERS_EVERY: Duration = Duration::from_secs(1);

/// One namespace's tier-0 reading.
#[derive(Debug, Clone, Default)]
pub struct NsReading {
    pub inum: u32,
    pub listeners: Vec<sockdiag::DiagSocket>,
    /// `Prefix:Name` → value (/proc/net/netstat and /proc/net/snmp, the wanted ones): None
    /// when not read this time (see COUNTERS_EVERY).
    pub counters: Option<HashMap<String, u64>>,
    /// Read with the counters.
    pub conntrack: Option<CtReading>,
    /// The dump failed this time (its socket was opened again for the next reading): the
    /// namespace is still watched, its listeners and counters are unknown until then. Not a
    /// namespace without listeners: its refusals must not be counted again from 0.
    pub unread: bool,
}

/// The conntrack table of a namespace (/proc/net/stat/nf_conntrack, nf_conntrack_max).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtReading {
    pub count: u64,
    pub max: u64,
    /// The `drop` stat summed over CPUs: packets dropped because no entry could be created.
    pub drop: u64,
}

struct Watched {
    /// Σ sk_drops of its listeners at the last reading, and when its counters were read.
    drops_sum: u64,
    /// Its listeners at the last reading: how many, and their cookies summed (wrapping).
    listeners_seen: (usize, u64),
    /// A path that opened it (to open its sock_diag socket again after a failed dump).
    path: Option<PathBuf>,
    counters_at: Option<Instant>,
    diag: Socket,
    netstat: File,
    snmp: File,
    ct_stat: Option<File>,
    ct_max: Option<File>,
}

fn open_here() -> Result<Watched> {
    let open = |p: &str| File::open(p).map_err(|e| anyhow::anyhow!("open {p}: {e}"));
    let (ct_stat, ct_max) = open_conntrack_here();
    Ok(Watched {
        drops_sum: 0,
        listeners_seen: (0, 0),
        path: None,
        counters_at: None,
        diag: sockdiag::open_diag()?,
        netstat: open("/proc/thread-self/net/netstat")?,
        snmp: open("/proc/thread-self/net/snmp")?,
        ct_stat,
        ct_max,
    })
}

const CT_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

/// The conntrack stat and limit of the calling thread's namespace (absent while nf_conntrack is
/// not loaded).
fn open_conntrack_here() -> (Option<File>, Option<File>) {
    (
        File::open("/proc/thread-self/net/stat/nf_conntrack").ok(),
        File::open(CT_MAX).ok(),
    )
}

/// Reads a /proc file again from its start (seq_file regenerates it on every read).
fn reread(file: &mut File, buf: &mut String) -> bool {
    buf.clear();
    file.seek(SeekFrom::Start(0)).is_ok() && file.read_to_string(buf).is_ok()
}

/// A new sock_diag socket in the namespace `path` opens, if that is still namespace `ino`.
fn reopen_diag(path: &Path, ino: u32) -> Option<Socket> {
    if netns::inode_of(path) != Some(ino) {
        return None;
    }
    netns::run_in_path(path, sockdiag::open_diag).ok()?.ok()
}

/// Every network namespace with a name under /run/netns or a process in it: inode → a path
/// that opens it.
pub fn discover() -> HashMap<u32, PathBuf> {
    let mut found = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        for e in dir.flatten() {
            if let Some(ino) = netns::inode_of(&e.path()) {
                found.entry(ino).or_insert(e.path());
            }
        }
    }
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for e in procs.flatten() {
            let name = e.file_name();
            if !name
                .to_str()
                .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()))
            {
                continue;
            }
            let path = e.path().join("ns/net");
            if let Some(ino) = netns::inode_of(&path) {
                found.entry(ino).or_insert(path);
            }
        }
    }
    found
}

/// The namespaces watched and their kept sockets and files.
pub struct NsWatcher {
    watched: HashMap<u32, Watched>,
    /// The `Prefix:Name` counters kept.
    wanted: &'static [&'static str],
    last_discovery: Option<Instant>,
    /// Namespaces not watched because MAX_NAMESPACES was reached.
    pub left_out: usize,
    /// Namespaces whose sockets could not be opened (gone while tcpq looked), last discovery.
    pub unreadable: usize,
    buf: String,
}

impl NsWatcher {
    pub fn new(wanted: &'static [&'static str]) -> Self {
        Self {
            watched: HashMap::new(),
            wanted,
            last_discovery: None,
            left_out: 0,
            unreadable: 0,
            buf: String::new(),
        }
    }

    pub fn namespaces(&self) -> usize {
        self.watched.len()
    }

    fn rediscover(&mut self, here: Option<u32>) {
        let found = discover();
        let loaded_ct = Path::new(CT_MAX).exists();
        // Let go of namespaces nothing else holds any more: our sockets would keep them alive.
        self.watched.retain(|ino, _| found.contains_key(ino));
        self.unreadable = 0;
        self.left_out = 0;
        for (ino, path) in &found {
            let ino = *ino;
            if self.watched.contains_key(&ino) {
                continue;
            }
            if self.watched.len() >= MAX_NAMESPACES {
                self.left_out += 1;
                continue;
            }
            let opened = if Some(ino) == here {
                open_here()
            } else {
                netns::run_in_path(path, open_here).and_then(|r| r)
            };
            match opened {
                Ok(mut w) => {
                    w.path = Some(path.clone());
                    self.watched.insert(ino, w);
                }
                Err(_) => self.unreadable += 1,
            }
        }
        // Conntrack may be loaded after tcpq started: look again where it was missing.
        for (ino, w) in self
            .watched
            .iter_mut()
            .filter(|(_, w)| loaded_ct && w.ct_stat.is_none())
        {
            if let Some(path) = found.get(ino)
                && let Ok((stat, max)) = netns::run_in_path(path, open_conntrack_here)
            {
                w.ct_stat = stat;
                w.ct_max = max;
            }
        }
        self.last_discovery = Some(Instant::now());
    }

    /// Reads every watched namespace (discovering new ones when due); `counters`: read every
    /// namespace's counters now, whatever COUNTERS_EVERY says.
    pub fn poll(&mut self, counters: bool) -> Vec<NsReading> {
        if self
            .last_discovery
            .is_none_or(|t| t.elapsed() >= DISCOVER_EVERY)
        {
            self.rediscover(netns::current());
        }
        let mut out = Vec::with_capacity(self.watched.len());
        let buf = &mut self.buf;
        let mut gone = Vec::new();
        for (ino, w) in self.watched.iter_mut() {
            let mut r = NsReading {
                inum: *ino,
                ..NsReading::default()
            };
            if let Err(e) = sockdiag::dump_listeners_on(&mut w.diag, &mut r.listeners) {
                // A dump that failed half way leaves its rest in the socket: a fresh one for the
                // next reading, if the namespace is still there (else it is let go).
                match w.path.as_deref().and_then(|p| reopen_diag(p, *ino)) {
                    Some(diag) => {
                        log::debug!("sock_diag dump of netns {ino}: {e}; socket opened again");
                        w.diag = diag;
                        out.push(NsReading {
                            inum: *ino,
                            unread: true,
                            ..NsReading::default()
                        });
                    }
                    None => gone.push(*ino),
                }
                continue;
            }
            let drops_sum: u64 = r
                .listeners
                .iter()
                .filter_map(|l| l.drops)
                .map(u64::from)
                .sum();
            let moved = std::mem::replace(&mut w.drops_sum, drops_sum) != drops_sum;
            let seen = (
                r.listeners.len(),
                r.listeners
                    .iter()
                    .fold(0u64, |a, l| a.wrapping_add(l.cookie)),
            );
            let came_or_went = std::mem::replace(&mut w.listeners_seen, seen) != seen;
            let due = counters
                || moved
                || came_or_went
                || w.counters_at.is_none_or(|t| t.elapsed() >= COUNTERS_EVERY);
            if !due {
                out.push(r);
                continue;
            }
            w.counters_at = Some(Instant::now());
            let mut read = HashMap::new();
            for f in [&mut w.netstat, &mut w.snmp] {
                if reread(f, buf) {
                    counters::parse_selected(buf, self.wanted, &mut read);
                }
            }
            r.counters = Some(read);
            if let Some(stat) = w.ct_stat.as_mut()
                && reread(stat, buf)
            {
                let cols = super::counters::parse_ct_stat(buf);
                let max = w
                    .ct_max
                    .as_mut()
                    .and_then(|f| reread(f, buf).then(|| buf.trim().parse().ok()).flatten())
                    .unwrap_or(0);
                r.conntrack = Some(CtReading {
                    count: cols.get("entries").copied().unwrap_or(0),
                    max,
                    drop: cols.get("drop").copied().unwrap_or(0),
                });
            }
            out.push(r);
        }
        for ino in gone {
            self.watched.remove(&ino);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener that closes makes its namespace's counters due in the reading that first
    /// misses it: the refusals it counted since its last reading are shared out then, while it
    /// is known to have just closed.
    #[test]
    fn a_listener_closing_makes_the_counters_due() {
        let here = netns::current().unwrap();
        let mut w = NsWatcher::new(&["TcpExt:ListenDrops"]);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mine = |rs: Vec<NsReading>| rs.into_iter().find(|r| r.inum == here).expect("own");
        // Not due without a change (other programs of this namespace may open or close a
        // listener in between: a few tries).
        let quiet = (0..5).any(|_| {
            mine(w.poll(true));
            mine(w.poll(false)).counters.is_none()
        });
        assert!(quiet, "counters read at every reading without a change");
        drop(l);
        assert!(mine(w.poll(false)).counters.is_some(), "a listener went");
    }

    /// A dump that fails (here: its request cannot be sent) gives a reading marked unread, not
    /// a namespace without listeners, and the next poll reads it with a socket opened again.
    #[test]
    fn a_failed_dump_is_unread_and_the_socket_opened_again() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: entering a namespace needs root");
            return;
        }
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let here = netns::current().unwrap();
        let mut w = NsWatcher::new(&["TcpExt:ListenDrops"]);
        w.poll(true);
        let mut broken = Socket::new(netlink_sys::protocols::NETLINK_SOCK_DIAG).unwrap();
        broken.bind_auto().unwrap();
        // No socket has this port id: sending to it fails (ECONNREFUSED).
        broken
            .connect(&netlink_sys::SocketAddr::new(0x7fff_fff0, 0))
            .unwrap();
        w.watched
            .get_mut(&here)
            .expect("own namespace watched")
            .diag = broken;
        let failed = w.poll(true);
        let mine = failed.iter().find(|r| r.inum == here).expect("a reading");
        assert!(mine.unread && mine.listeners.is_empty() && mine.counters.is_none());
        let again = w.poll(true);
        let mine = again.iter().find(|r| r.inum == here).expect("a reading");
        assert!(!mine.unread);
        assert!(mine.listeners.iter().any(|s| s.lport == port));
    }

    /// The kept files and socket read the namespace again on every poll.
    #[test]
    fn polls_this_namespace_again_and_again() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let here = netns::current().unwrap();
        let mut w = NsWatcher::new(&["TcpExt:ListenDrops", "Tcp:ActiveOpens"]);
        for _ in 0..2 {
            let readings = w.poll(true);
            let mine = readings
                .iter()
                .find(|r| r.inum == here)
                .expect("own namespace");
            assert!(mine.listeners.iter().any(|s| s.lport == port));
            let c = mine.counters.as_ref().expect("counters read when asked");
            assert!(c.contains_key("TcpExt:ListenDrops"));
            assert!(c.contains_key("Tcp:ActiveOpens"));
            assert_eq!(c.len(), 2, "only the wanted ones");
        }
        let again = w.poll(false);
        let mine = again
            .iter()
            .find(|r| r.inum == here)
            .expect("own namespace");
        assert!(mine.counters.is_none(), "not due again within a second");
    }
}
