//! The live modes' slow reads, off the frame thread: a namespace's sockets to the busiest
//! destinations (a sock_diag dump that walks every TIME_WAIT of the namespace in the kernel), a
//! sample of a conntrack table (ctnetlink, up to `LIVE_SAMPLE` entries) and the walk of every
//! process's descriptors for socket leaks. Each can take from tens of milliseconds to a second on
//! a big server; run inside the frame tick they made frames late (1,000,000 TIME_WAIT: one frame
//! 2 s after the last). Here one worker thread runs them, one at a time, at a lower CPU
//! priority (`WORKER_NICE`); the frame asks for a read when its last one is stale and shows the latest that is
//! ready (with its age where the output has one).
//!
//! The worker starts at the first request, i.e. after `export` dropped its capabilities: it
//! inherits the runtime set (`kernel::privilege`). It blocks on a condition variable while
//! there is nothing to read; a stop (the `Worker` dropped) wakes it, and a read in progress
//! ends with the process.
use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    hash::Hash,
    net::IpAddr,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use crate::{
    family::{
        connect::diagnose::{DestUsage, PortRange},
        conntrack::snapshot::{LiveConsumers, consumers_here, reuse_for as consumers_reuse_for},
        sockets::aggregate::CloseWaitSeen,
    },
    live::cause::Cause,
    snapshot::netns,
};

/// What a read found, when it was read and what it cost.
#[derive(Debug, Clone)]
pub struct Ready<V> {
    pub value: V,
    pub at: Instant,
    pub cost: Duration,
}

impl<V> Ready<V> {
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.at)
    }
}

/// Reads waiting at most (one per key): more are refused and asked for again by a later frame.
const MAX_WAITING: usize = 64;

/// What a read is of: one per kind and namespace waits at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    Ports(u32),
    Consumers(u32),
    Sockets,
}

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queue {
    waiting: VecDeque<(Key, Job)>,
    running: Option<Key>,
    stop: bool,
    started: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// The worker's thread id (0 until it runs), to give its priority back at a stop.
    tid: std::sync::atomic::AtomicI32,
}

/// The worker's nice value: the frame thread comes first when both want the CPU (it gets ~10
/// times the worker's share), yet the worker is not starved: when tcpq leaves, every thread must
/// run to exit, and at nice 19 under a SYN storm on every CPU the worker took over a second.
const WORKER_NICE: libc::c_int = 10;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One thread that runs submitted reads in order, one at a time.
#[derive(Default)]
pub struct Worker {
    shared: Arc<Shared>,
}

/// Whether a read of `key` may be queued now: not already waiting or running, and room left.
fn admit(waiting: &VecDeque<(Key, Job)>, running: Option<Key>, key: Key) -> bool {
    running != Some(key) && waiting.len() < MAX_WAITING && waiting.iter().all(|(k, _)| *k != key)
}

impl Worker {
    /// Queues `job` unless a read of `key` is waiting or running already; false when not queued.
    pub fn submit(&self, key: Key, job: Job) -> bool {
        let mut q = lock(&self.shared.queue);
        if q.stop || !admit(&q.waiting, q.running, key) {
            return false;
        }
        if !q.started {
            let shared = Arc::clone(&self.shared);
            match std::thread::Builder::new()
                .name("tcpq-reads".into())
                .spawn(move || run(shared))
            {
                Ok(_) => q.started = true,
                Err(e) => {
                    log::warn!(
                        "start the thread for slow reads: {e} (raise the process or thread limit, ulimit -u); they are skipped"
                    );
                    return false;
                }
            }
        }
        q.waiting.push_back((key, job));
        self.shared.wake.notify_one();
        true
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let mut q = lock(&self.shared.queue);
        q.stop = true;
        q.waiting.clear();
        self.shared.wake.notify_all();
        drop(q);
        // A read in progress ends with the process, whose exit waits for every thread to run:
        // the worker's normal priority back where allowed (CAP_SYS_NICE; else EPERM, harmless).
        let tid = self.shared.tid.load(std::sync::atomic::Ordering::SeqCst);
        if tid > 0 {
            // SAFETY: setpriority(2) on a thread id of this process; no memory is passed.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 0);
            }
        }
    }
}

/// The worker thread: a lower CPU priority than the frame thread's (WORKER_NICE), then jobs
/// until a stop.
fn run(shared: Arc<Shared>) {
    // SAFETY: gettid and setpriority(2) on this thread's own id (Linux applies a nice value per
    // thread); no memory is passed. Raising one's own nice value needs no privilege.
    unsafe {
        let tid = libc::gettid();
        shared.tid.store(tid, std::sync::atomic::Ordering::SeqCst);
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, WORKER_NICE);
    }
    loop {
        let job = {
            let mut q = lock(&shared.queue);
            loop {
                if q.stop {
                    return;
                }
                if let Some((key, job)) = q.waiting.pop_front() {
                    q.running = Some(key);
                    break job;
                }
                q = shared
                    .wake
                    .wait(q)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        };
        job();
        lock(&shared.queue).running = None;
    }
}

/// The latest result per key, written by the worker, read by the frame.
pub struct Latest<K, V>(Arc<Mutex<HashMap<K, Ready<V>>>>);

impl<K, V> Default for Latest<K, V> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<K, V> Clone for Latest<K, V> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<K: Eq + Hash, V: Clone> Latest<K, V> {
    pub fn get(&self, key: &K) -> Option<Ready<V>> {
        lock(&self.0).get(key).cloned()
    }

    fn put(&self, key: K, value: V, at: Instant) {
        let cost = at.elapsed();
        lock(&self.0).insert(key, Ready { value, at, cost });
    }

    /// Forgets results older than `keep`.
    fn expire(&self, keep: Duration) {
        let now = Instant::now();
        lock(&self.0).retain(|_, r| r.age(now) < keep);
    }
}

/// A namespace's port usage toward the destinations asked for.
#[derive(Debug, Clone)]
pub struct PortsRead {
    pub dests: BTreeSet<(IpAddr, u16)>,
    /// Per source address and destination (only the destinations asked for).
    pub groups: Vec<DestUsage>,
    pub range: PortRange,
    pub tw_reuse: Option<u32>,
}

impl PortsRead {
    /// (ports used, TIME_WAIT) toward one destination.
    pub fn usage(&self, daddr: IpAddr, dport: u16) -> (u64, u64) {
        self.groups
            .iter()
            .filter(|g| g.daddr == Some(daddr) && g.dport == dport)
            .fold((0, 0), |(u, t), g| (u + g.used(), t + g.state("TIME_WAIT")))
    }
}

/// Reads one namespace's usage toward `dests` (the kernel returns only their sockets).
pub fn read_ports(ns: u32, dests: &BTreeSet<(IpAddr, u16)>) -> Option<PortsRead> {
    netns::run_in(ns, || -> Option<PortsRead> {
        let socks = crate::snapshot::sockdiag::dump_to(dests).ok()?;
        let ports = crate::family::connect::snapshot::read_port_sysctls().ok()?;
        let groups = crate::family::connect::diagnose::group_usage(
            &socks,
            &ports.range,
            &Default::default(),
            dests,
            false,
        );
        Some(PortsRead {
            dests: dests.clone(),
            groups,
            range: ports.range,
            tw_reuse: ports.tw_reuse,
        })
    })
    .ok()
    .flatten()
}

/// A destination's port usage is re-read this often while its connects succeed, and at every
/// frame once any fails.
pub const PORTS_REFRESH: Duration = Duration::from_secs(5);

/// Socket-leak causes need a walk of every process's descriptors: refreshed this often.
pub const SOCKET_SCAN_EVERY: Duration = Duration::from_secs(10);

/// Whether a namespace's port usage must be read again: never read, older than the refresh (or
/// than a frame while connects fail there), or missing a destination now wanted.
pub fn ports_stale(
    last: Option<(&BTreeSet<(IpAddr, u16)>, Duration)>,
    wanted: &BTreeSet<(IpAddr, u16)>,
    failing: bool,
) -> bool {
    match last {
        None => true,
        Some((dests, age)) => {
            !wanted.is_subset(dests) || age >= PORTS_REFRESH || (failing && !age.is_zero())
        }
    }
}

/// Scans the sockets (stale upstreams idle over the threshold, CLOSE_WAIT leaks against the
/// sockets seen earlier): its causes and the CLOSE_WAIT sockets it saw.
pub type SocketScanner = fn(Duration, &CloseWaitSeen) -> (Vec<Cause>, HashSet<u64>);

/// A socket scan's findings and the CLOSE_WAIT sockets it saw (for the next one).
#[derive(Debug, Clone, Default)]
pub struct SocketScan {
    pub causes: Vec<Cause>,
    pub close_wait: std::collections::HashSet<u64>,
}

/// The slow reads of one live session and their latest results.
#[derive(Default)]
pub struct SlowReads {
    worker: Worker,
    pub ports: Latest<u32, PortsRead>,
    pub consumers: Latest<u32, LiveConsumers>,
    pub sockets: Latest<(), SocketScan>,
}

impl SlowReads {
    /// Asks for `ns`'s port usage toward `wanted` when the last read is stale.
    pub fn want_ports(&self, ns: u32, wanted: BTreeSet<(IpAddr, u16)>, failing: bool) {
        let now = Instant::now();
        let last = self.ports.get(&ns);
        if !ports_stale(
            last.as_ref().map(|r| (&r.value.dests, r.age(now))),
            &wanted,
            failing,
        ) {
            return;
        }
        // Only what is wanted now: a set carried over from read to read would grow with every
        // destination ever seen.
        let dests = wanted;
        let out = self.ports.clone();
        self.worker.submit(
            Key::Ports(ns),
            Box::new(move || {
                let at = Instant::now();
                if let Some(read) = read_ports(ns, &dests) {
                    out.put(ns, read, at);
                }
            }),
        );
        self.ports.expire(6 * PORTS_REFRESH);
    }

    /// `ns`'s top conntrack consumers as last read (their age set), asking for a new read when
    /// that one is due. None until the first read is ready.
    pub fn consumers(&self, ns: u32, established_timeout: u64) -> Option<LiveConsumers> {
        let now = Instant::now();
        let last = self.consumers.get(&ns);
        if last
            .as_ref()
            .is_none_or(|r| r.age(now) >= consumers_reuse_for(r.cost))
        {
            let out = self.consumers.clone();
            self.worker.submit(
                Key::Consumers(ns),
                Box::new(move || {
                    let at = Instant::now();
                    if let Ok(found) = netns::run_in(ns, || consumers_here(established_timeout)) {
                        out.put(ns, found, at);
                    }
                }),
            );
            self.consumers.expire(Duration::from_secs(300));
        }
        last.map(|r| LiveConsumers {
            age: r.age(now),
            ..r.value
        })
    }

    /// The last socket scan's causes, asking for a new scan (`scan`, off this thread) every
    /// SOCKET_SCAN_EVERY.
    pub fn socket_causes(&self, idle: Duration, scan: SocketScanner) -> Vec<Cause> {
        let now = Instant::now();
        let last = self.sockets.get(&());
        if last
            .as_ref()
            .is_none_or(|r| r.age(now) >= SOCKET_SCAN_EVERY)
        {
            let out = self.sockets.clone();
            let (cookies, seen_at) = last
                .as_ref()
                .map(|r| (r.value.close_wait.clone(), Some(r.at)))
                .unwrap_or_default();
            self.worker.submit(
                Key::Sockets,
                Box::new(move || {
                    let at = Instant::now();
                    let earlier = CloseWaitSeen {
                        cookies,
                        ago_s: seen_at
                            .map_or(0.0, |t| at.saturating_duration_since(t).as_secs_f64()),
                    };
                    let (causes, close_wait) = scan(idle, &earlier);
                    out.put((), SocketScan { causes, close_wait }, at);
                }),
            );
        }
        last.map(|r| r.value.causes).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn dest(p: u16) -> (IpAddr, u16) {
        (IpAddr::V4(Ipv4Addr::LOCALHOST), p)
    }

    #[test]
    fn one_read_per_key_waits_at_a_time() {
        let mut waiting: VecDeque<(Key, Job)> = VecDeque::new();
        assert!(admit(&waiting, None, Key::Ports(1)));
        waiting.push_back((Key::Ports(1), Box::new(|| {})));
        assert!(!admit(&waiting, None, Key::Ports(1)), "already waiting");
        assert!(admit(&waiting, None, Key::Ports(2)));
        assert!(
            !admit(&waiting, Some(Key::Sockets), Key::Sockets),
            "running"
        );
        for i in 0..MAX_WAITING as u32 {
            waiting.push_back((Key::Consumers(i), Box::new(|| {})));
        }
        assert!(!admit(&waiting, None, Key::Ports(9)), "bounded");
    }

    #[test]
    fn port_usage_is_reread_when_old_failing_or_missing_a_destination() {
        let read = BTreeSet::from([dest(80), dest(443)]);
        let one = BTreeSet::from([dest(80)]);
        let recent = Duration::from_secs(1);
        assert!(ports_stale(None, &one, false), "never read");
        assert!(!ports_stale(Some((&read, recent)), &one, false), "recent");
        assert!(ports_stale(Some((&read, recent)), &one, true), "failing");
        assert!(
            ports_stale(Some((&read, PORTS_REFRESH)), &one, false),
            "older than the refresh"
        );
        assert!(
            ports_stale(Some((&one, recent)), &read, false),
            "a destination not read yet"
        );
    }

    /// The worker runs what is submitted, blocks while idle and stops when dropped.
    #[test]
    fn the_worker_runs_jobs_and_publishes_results() {
        let worker = Worker::default();
        let latest: Latest<u32, u32> = Latest::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let out = latest.clone();
        assert!(worker.submit(
            Key::Ports(7),
            Box::new(move || {
                out.put(7, 42, Instant::now());
                let _ = tx.send(());
            })
        ));
        rx.recv_timeout(Duration::from_secs(5)).expect("job ran");
        assert_eq!(latest.get(&7).map(|r| r.value), Some(42));
        drop(worker);
    }
}
