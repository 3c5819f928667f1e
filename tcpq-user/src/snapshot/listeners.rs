//! Listener directory: socket cookie → address, inode, owning processes and the backlog the
//! application passed to listen(). Filled lazily from sock_diag in the listener's own network
//! namespace and from /proc; cached, with a short negative cache so a vanished listener does
//! not cost a /proc scan per event.
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::IpAddr,
    rc::Rc,
    time::{Duration, Instant},
};

use crate::snapshot::{
    container::Identities,
    netns,
    procs::{self, Owner},
    sockdiag,
};

/// A `listen(fd, backlog)` call the listen family decoded: the argument the application passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenCall {
    pub ts_ns: u64,
    pub netns: u32,
    pub tgid: u32,
    pub fd: u32,
    pub backlog: i32,
    pub comm: String,
    /// The socket's bound address, when the kernel could resolve the fd.
    pub local: Option<(IpAddr, u16)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerInfo {
    pub inode: u64,
    /// Effective backlog reported by sock_diag (sk_max_ack_backlog).
    pub backlog: u32,
    pub owners: Vec<Owner>,
    /// The listen() argument, when tcpq saw the call.
    pub listen_arg: Option<i32>,
    /// The first owner's Kubernetes pod and container (snapshot::container), None on the host.
    pub pod: Option<String>,
    pub container: Option<String>,
}

impl ListenerInfo {
    pub fn primary(&self) -> Option<&Owner> {
        self.owners.first()
    }
}

#[derive(Debug, Default)]
pub struct ListenerDirectory {
    by_cookie: HashMap<(u32, u64), Rc<ListenerInfo>>,
    by_addr: HashMap<(u32, IpAddr, u16), u64>,
    misses: HashMap<(u32, u64, u16), Instant>,
    listen_args: HashMap<(u32, u64), i32>,
    /// listen() arguments by (netns, address, port), for callers gone before we saw them.
    listen_args_by_addr: HashMap<(u32, IpAddr, u16), i32>,
    /// sock_diag/procfs failures, counted for the summary.
    pub lookup_failures: u64,
    /// The owners' pods and containers, per pid (shared with the callers' own lines).
    pub identities: Identities,
}

const MISS_RETRY: Duration = Duration::from_secs(2);
const MAX_ENTRIES: usize = 65536;

impl ListenerDirectory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Looks a listener up, refreshing its network namespace's listeners on a miss. The result is
    /// shared (no copy per event).
    pub fn lookup(
        &mut self,
        netns: u32,
        cookie: u64,
        laddr: IpAddr,
        lport: u16,
    ) -> Option<Rc<ListenerInfo>> {
        let key = self.find_key(netns, cookie, laddr, lport);
        if key.is_none() {
            let miss_key = (netns, cookie, lport);
            if self
                .misses
                .get(&miss_key)
                .is_some_and(|t| t.elapsed() < MISS_RETRY)
            {
                return None;
            }
            self.refresh_netns(netns);
            if self.find_key(netns, cookie, laddr, lport).is_none() {
                if self.misses.len() > MAX_ENTRIES {
                    self.misses.clear();
                }
                self.misses.insert(miss_key, Instant::now());
                return None;
            }
        }
        let key = self.find_key(netns, cookie, laddr, lport)?;
        self.by_cookie.get(&(netns, key)).cloned()
    }

    fn find_key(&self, netns: u32, cookie: u64, laddr: IpAddr, lport: u16) -> Option<u64> {
        if cookie != 0 && self.by_cookie.contains_key(&(netns, cookie)) {
            return Some(cookie);
        }
        self.by_addr
            .get(&(netns, laddr, lport))
            .or_else(|| {
                // A wildcard listener serves every local address.
                let any = if laddr.is_ipv4() {
                    IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
                } else {
                    IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                };
                self.by_addr.get(&(netns, any, lport)).or_else(|| {
                    self.by_addr
                        .get(&(netns, IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), lport))
                })
            })
            .copied()
            .filter(|_| cookie == 0)
    }

    /// Re-reads the listeners of one namespace and their owners.
    pub fn refresh_netns(&mut self, netns_inum: u32) {
        let listeners = match netns::run_in(netns_inum, sockdiag::dump_listeners) {
            Ok(Ok(l)) => l,
            _ => {
                self.lookup_failures += 1;
                return;
            }
        };
        let inodes: HashSet<u64> = listeners
            .iter()
            .map(|l| l.inode)
            .filter(|i| *i != 0)
            .collect();
        let owners = procs::socket_owners(&inodes);
        if self.by_cookie.len() > MAX_ENTRIES {
            self.by_cookie.clear();
            self.by_addr.clear();
        }
        for l in listeners {
            let owners: Vec<Owner> = owners
                .get(&l.inode)
                .map(|s: &BTreeSet<Owner>| s.iter().cloned().collect())
                .unwrap_or_default();
            let listen_arg = self
                .listen_args
                .get(&(netns_inum, l.inode))
                .or_else(|| {
                    self.listen_args_by_addr
                        .get(&(netns_inum, l.laddr, l.lport))
                })
                .copied();
            self.by_addr
                .insert((netns_inum, l.laddr, l.lport), l.cookie);
            self.by_cookie.insert(
                (netns_inum, l.cookie),
                Rc::new({
                    let id = owners
                        .first()
                        .map(|o| self.identities.get(o.pid, &o.comm))
                        .unwrap_or_default();
                    ListenerInfo {
                        inode: l.inode,
                        backlog: l.send_queue,
                        owners,
                        listen_arg,
                        pod: id.pod.clone(),
                        container: id.container.clone(),
                    }
                }),
            );
        }
    }

    /// Records a listen() call: the fd is resolved to its socket inode while the process still
    /// holds it.
    pub fn on_listen_call(&mut self, call: &ListenCall) {
        if self.listen_args.len() > MAX_ENTRIES {
            self.listen_args.clear();
            self.listen_args_by_addr.clear();
        }
        if let Some((addr, port)) = call.local {
            self.listen_args_by_addr
                .insert((call.netns, addr, port), call.backlog);
            let keys: Vec<u64> = self
                .by_addr
                .iter()
                .filter(|((ns, a, p), _)| *ns == call.netns && *a == addr && *p == port)
                .map(|(_, cookie)| *cookie)
                .collect();
            for cookie in keys {
                if let Some(info) = self.by_cookie.get_mut(&(call.netns, cookie)) {
                    Rc::make_mut(info).listen_arg = Some(call.backlog);
                }
            }
        }
        let Some(inode) = procs::fd_socket_inode(call.tgid, call.fd) else {
            return;
        };
        self.listen_args.insert((call.netns, inode), call.backlog);
        for ((ns, _), info) in self.by_cookie.iter_mut() {
            if *ns == call.netns && info.inode == inode {
                Rc::make_mut(info).listen_arg = Some(call.backlog);
            }
        }
    }

    pub fn listen_arg(&self, netns: u32, inode: u64, laddr: IpAddr, lport: u16) -> Option<i32> {
        self.listen_args
            .get(&(netns, inode))
            .or_else(|| self.listen_args_by_addr.get(&(netns, laddr, lport)))
            .copied()
    }

    /// Every known listener owned by one of `pids`.
    pub fn owned_by(&self, pids: &HashSet<u32>) -> Vec<(u32, u64)> {
        self.by_cookie
            .iter()
            .filter(|(_, i)| i.owners.iter().any(|o| pids.contains(&o.pid)))
            .map(|(k, _)| *k)
            .collect()
    }
}
