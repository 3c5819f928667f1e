//! A live collection session: every hook family loaded, the rings drained into one set of
//! aggregates that the caller takes per interval (`top`, `export`) or once (`diagnose`).
//! The only kernel plumbing of the live commands; analysis lives in `causes` and `frame`.
use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::Result;
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use tcpq_common::{AcceptKey, AcceptTotals, lost, names};

use crate::{
    family::{
        accept::{aggregate::AcceptStats, decode::decode_accept},
        connect::{aggregate::ConnectAggregator, decode::decode_connect},
        conntrack::decode::{decode_drop, drop_kind},
        listen::{
            aggregate::OverflowAggregator,
            decode::{ListenRecord, decode_listen},
            unsent::UnsentReader,
        },
    },
    kernel::probe::{self, Family, HookStatus, LoadOptions, Loaded, sum_per_cpu},
    live::{
        engine::{self, Arm, FamilyView, ListenerId, ListenerTotals, Step, Tier0},
        slow::SlowReads,
    },
    snapshot::{listeners::ListenerDirectory, netns, nswatch::NsWatcher, procs},
    wire::addr,
};

/// Bounds of the userspace tables per interval (evictions are counted by the aggregators).
const MAX_LISTENERS: usize = 10_000;
const MAX_CONNECT_KEYS: usize = 50_000;
const MAX_ACCEPT_KEYS: usize = 10_000;

/// What the hooks reported over one interval. Pure data: built by `Session::drain`, read by
/// the analysis and renderers (and by unit tests from recorded events).
pub struct Aggregates {
    pub overflow: OverflowAggregator,
    pub connects: ConnectAggregator,
    /// (netns, "table_full" | "rule") → drops.
    pub drops: BTreeMap<(u32, &'static str), u64>,
    pub accepts: BTreeMap<(u32, IpAddr, u16), AcceptStats>,
    /// Holders of each accepting listener and the fewest idle acceptors seen (sampled while the
    /// interval runs: "5 share, 0 idle" must be seen while the workers are busy).
    pub acceptors: BTreeMap<(u32, IpAddr, u16), AcceptorSample>,
    /// Accept keys not recorded because the table was full.
    pub accepts_evicted: u64,
    /// The listen kinds were confirmed by the outcome hooks (else predicted at arrival).
    pub listen_confirmed: bool,
    /// Events decoded (all families).
    pub events: u64,
    /// Listen events the kernel counted per listener without a ring record (line budget).
    pub tallied: u64,
    /// Kernel counters (/proc/net/netstat, snmp) per namespace at the start and at the end of
    /// the interval: tier 0's readings at its boundaries.
    pub counters_first: HashMap<u32, HashMap<String, u64>>,
    pub counters_last: HashMap<u32, HashMap<String, u64>>,
    /// Tier 0: listeners that refused (exact, from `sk_drops`) or queued in the interval.
    pub tier0_listeners: Vec<(ListenerId, ListenerTotals)>,
    /// Tier 0: refusals of the interval no listener could be named for, per namespace
    /// (listeners created and closed between two readings; `Tier0::take_unattributed`).
    pub tier0_unattributed: Vec<(u32, u64)>,
    /// Tier 0: namespaces whose conntrack table is at least half full (count, max) at the end.
    pub tier0_conntrack: Vec<(u32, crate::snapshot::nswatch::CtReading)>,
    /// Tier 0: every namespace with a conntrack table (count, max) at the end (export's gauges).
    pub tier0_conntrack_tables: Vec<(u32, crate::snapshot::nswatch::CtReading)>,
    /// Each family: watching or tracing, since when and why (at the end of the interval).
    pub families: Vec<FamilyView>,
    /// Connections closed with data unread (reset: TCPAbortOnClose) per (namespace, local
    /// port, process) in the interval, exact from the kernel (`limit`).
    pub aborts: BTreeMap<tcpq_common::AbortKey, crate::limit::Tally>,
    /// What each of those processes held on its port at the looks taken while the interval
    /// ran (`Session::sample_limits`).
    pub limit_seen: BTreeMap<tcpq_common::AbortKey, crate::limit::Seen>,
}

impl Default for Aggregates {
    fn default() -> Self {
        Self {
            overflow: OverflowAggregator::new(MAX_LISTENERS),
            connects: ConnectAggregator::new(MAX_CONNECT_KEYS),
            drops: BTreeMap::new(),
            accepts: BTreeMap::new(),
            acceptors: BTreeMap::new(),
            accepts_evicted: 0,
            listen_confirmed: false,
            events: 0,
            tallied: 0,
            counters_first: HashMap::new(),
            counters_last: HashMap::new(),
            tier0_listeners: Vec::new(),
            tier0_unattributed: Vec::new(),
            tier0_conntrack: Vec::new(),
            tier0_conntrack_tables: Vec::new(),
            families: Vec::new(),
            aborts: BTreeMap::new(),
            limit_seen: BTreeMap::new(),
        }
    }
}

impl Aggregates {
    /// An interval in which 127.0.0.1:`lport` of namespace `netns` refused `refused` (of them
    /// `uncertain` guessed) and `unattributed` more were refused there by no listener listed.
    #[cfg(test)]
    pub fn with_refusals(
        netns: u32,
        lport: u16,
        refused: u64,
        uncertain: u64,
        unattributed: u64,
    ) -> Self {
        let id = ListenerId {
            netns,
            laddr: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            lport,
            cookie: 1,
        };
        let mut t = ListenerTotals::default();
        t.refused_interval = refused;
        t.uncertain_interval = uncertain;
        Self {
            tier0_listeners: vec![(id, t)],
            tier0_unattributed: vec![(netns, unattributed)],
            ..Self::default()
        }
    }

    /// Namespaces any event of the interval came from.
    pub fn namespaces(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .overflow
            .listeners
            .keys()
            .map(|k| k.netns)
            .chain(self.connects.by_key.keys().map(|k| k.netns))
            .chain(self.drops.keys().map(|(n, _)| *n))
            .chain(self.accepts.keys().map(|(n, _, _)| *n))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcceptorSample {
    pub holders: Vec<crate::snapshot::procs::Owner>,
    pub min_idle: u64,
}

/// Who holds a listener and how many of their threads sit in accept() right now.
pub fn sample_acceptors(
    dir: &mut ListenerDirectory,
    ns: u32,
    laddr: IpAddr,
    lport: u16,
) -> Option<AcceptorSample> {
    let info = dir.lookup(ns, 0, laddr, lport)?;
    let idle = info
        .owners
        .iter()
        .map(|o| procs::threads_in_accept(o.pid, info.inode))
        .sum();
    Some(AcceptorSample {
        holders: info.owners.clone(),
        min_idle: idle,
    })
}

/// Events lost in the kernel (ring buffer full), per hook family, since the session started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Lost {
    pub listen: u64,
    pub connect: u64,
    pub drop: u64,
    pub accept: u64,
    /// Program runs the kernel skipped (recursion guard: the program was already running on
    /// that CPU), all families together.
    pub missed_runs: u64,
    /// Listen records whose outcome the kernel side never saw (`listen::unresolved_records`).
    pub unresolved: u64,
}

impl Lost {
    pub fn total(&self) -> u64 {
        self.listen + self.connect + self.drop + self.accept + self.missed_runs + self.unresolved
    }
}

pub struct Session {
    pub loaded: Loaded,
    listen_ring: RingBuf<MapData>,
    connect_ring: RingBuf<MapData>,
    drop_ring: RingBuf<MapData>,
    accept_ring: RingBuf<MapData>,
    /// Records no ring had room for, every family's (`lost::*` slots).
    ring_lost: PerCpuArray<MapData, u64>,
    /// Run-wide listen counters (unresolved and parked records).
    listen_counts: PerCpuArray<MapData, u64>,
    accept_totals: AcceptTotalsReader,
    listen_unsent: UnsentReader,
    /// Resets on close per process and port (tier 1), and the running totals at the start of
    /// the interval.
    aborts: crate::limit::AbortReader,
    abort_base: BTreeMap<tcpq_common::AbortKey, crate::limit::Tally>,
    pub dir: ListenerDirectory,
    ct_active: RefCell<HashSet<u32>>,
    pub host: u32,
    pub agg: Aggregates,
    /// Families that could not attach, with the reason.
    pub missing: Vec<(Family, String)>,
    /// The slow reads (port usage, conntrack entries, socket scans) and their latest results,
    /// off the frame thread.
    pub slow: SlowReads,
    /// The kernel's conntrack `drop` stat per namespace when a frame last read it, for its rate
    /// next to tcpq's traced drops (the kernel counts a few drops no tracepoint reports).
    pub ct_drop_stat: HashMap<u32, (std::time::Instant, u64)>,
    pub engine: Engine,
    /// TCPQ_BPF_STATS=1: the kernel times every program run while this fd is open
    /// (BPF_ENABLE_STATS); `cargo xtask bench` reads run_time_ns from tcpq's fdinfo.
    pub stats_fd: Option<std::os::fd::OwnedFd>,
}

/// How a live command attaches its programs.
#[derive(Debug, Clone, Copy)]
pub struct LiveOptions {
    /// `--hooks all`: every program attached all the time (no tiers).
    pub hooks_all: bool,
    /// A tracing family is disarmed after this long without trouble.
    pub quiet: Duration,
}

/// The start-up line of the live commands: what they attach.
pub fn describe_tiers(live: &LiveOptions) -> String {
    if live.hooks_all {
        "every hook family attached (--hooks all)".into()
    } else {
        format!(
            "counters first: tier-2 programs attached while a family has trouble, detached after {:.0} s quiet",
            live.quiet.as_secs_f64()
        )
    }
}

/// Tier 0 and the arming of tier 2 (see `live::engine`).
pub struct Engine {
    watcher: NsWatcher,
    pub tier0: Tier0,
    /// Listen (with Accept), Connect, Drop.
    pub arms: BTreeMap<Family, Arm>,
    pub opts: LiveOptions,
    last_poll: Option<Instant>,
    /// Between frames, tier 0 is read this often (engine::next_poll_after).
    poll_every: Duration,
    /// What the last reading took.
    pub poll_cost: Duration,
    /// Tier-1 signals since the last poll: EADDRNOTAVAIL handshakes, table-full drops.
    failed_port_searches: u64,
    table_full_drops: u64,
    /// The listen family was just disarmed: read its per-listener tallies once more.
    listen_flush: bool,
}

impl Engine {
    /// Network namespaces tier 0 reads now.
    pub fn namespaces(&self) -> usize {
        self.watcher.namespaces()
    }
}

/// The families the engine arms, as the renderers name them.
pub const ARMED_FAMILIES: [(Family, &str); 3] = [
    (Family::Listen, "listen"),
    (Family::Connect, "connect"),
    (Family::Drop, "conntrack"),
];

/// Hooks the live commands (top, diagnose, export) do not read. Connect outcomes come from the
/// state changes alone (sock_state: a failed port search is SYN_SENT → CLOSE before any port was
/// taken); the connect() syscall hooks add only the time inside connect() and errors before a
/// handshake starts (no route), which `tcpq trace connect` shows. The listen family's accept
/// counters repeat what the accept family reports per accept. Syscall tracepoints are the
/// costliest hooks for a busy server: each one runs on every call, and while any is attached
/// every task takes the syscall slow path.
/// The backlog an application passed to listen() comes from sock_diag in the live commands
/// (`idiag_wqueue` = sk_max_ack_backlog) instead of `sys_enter_listen`.
pub const LIVE_UNUSED: &[&str] = &[
    names::PROG_SYS_ENTER_CONNECT,
    names::PROG_SYS_EXIT_CONNECT,
    names::PROG_SYS_EXIT_ACCEPT4,
    names::PROG_SYS_EXIT_ACCEPT,
    names::PROG_SYS_ENTER_LISTEN,
];

/// What the live commands leave out under counters first (not `--hooks all`): LIVE_UNUSED and
/// the listen family's outcome hooks. Those confirm each SYN/ACK's fate from what the kernel
/// then did with it, at four more program runs per packet on a listener's port while tracing
/// (net_dev_queue and consume_skb fire for every packet of every socket); without them the
/// ingress hook predicts each verdict from the queues at arrival. The exact refusal totals come
/// from tier 0 either way; predicted kinds are capped at them (`KindCounts::cap_refusals`).
/// `trace overflow` and `--hooks all` confirm.
pub const LIVE_UNUSED_COUNTERS_FIRST: &[&str] = &[
    names::PROG_SYS_ENTER_CONNECT,
    names::PROG_SYS_EXIT_CONNECT,
    names::PROG_SYS_EXIT_ACCEPT4,
    names::PROG_SYS_EXIT_ACCEPT,
    names::PROG_SYS_ENTER_LISTEN,
    names::PROG_OUTCOME_XMIT,
    names::PROG_OUTCOME_CHILD,
    names::PROG_OUTCOME_CONSUME,
    names::PROG_OUTCOME_KFREE,
];

/// Tier 2: loaded and verified at start, attached only while their family's tier-0 signal
/// moves (`Engine`). What stays attached (tier 1): `sock_state` with only the connect
/// family's failure path (EADDRNOTAVAIL) and `skb_kfree` with only the drop part (leaves on the drop reason).
pub const LIVE_STANDBY: &[&str] = &[
    names::PROG_LISTEN_INGRESS,
    names::PROG_SYNACK_RETRANS,
    names::PROG_OVERFLOW_RESET,
    names::PROG_ACCEPT_ENQUEUE,
    names::PROG_ACCEPT_ENTER4,
    names::PROG_ACCEPT_EXIT4,
    names::PROG_ACCEPT_ENTER,
    names::PROG_ACCEPT_EXIT,
    names::PROG_CONNECT_STATE,
    names::PROG_CONNECT_RETRANS,
    names::PROG_DROP_OWNER,
];

impl Session {
    /// Loads and attaches every hook family (optional hooks the kernel refuses are reported by
    /// `hooks()`, not fatal).
    pub fn start(live: LiveOptions) -> Result<Self> {
        let all = [
            Family::Listen,
            Family::Connect,
            Family::Drop,
            Family::Accept,
        ];
        let opts = LoadOptions {
            unused: if live.hooks_all {
                LIVE_UNUSED
            } else {
                LIVE_UNUSED_COUNTERS_FIRST
            },
            standby: if live.hooks_all { &[] } else { LIVE_STANDBY },
            aggregate_accepts: true,
            ..LoadOptions::default()
        };
        let mut missing = Vec::new();
        let mut loaded = match probe::load(&all, &opts) {
            Ok(l) => l,
            Err(first) => {
                // A family whose core hook the kernel refuses (e.g. the syscall tracepoints
                // without tracefs) is left out; the others still run, as `tcpq check` reports.
                let mut usable = Vec::new();
                for f in all {
                    match probe::load(&[f], &opts) {
                        Ok(_) => usable.push(f),
                        Err(e) => missing.push((f, crate::one_line(&e))),
                    }
                }
                if usable.is_empty() {
                    return Err(first);
                }
                for (f, why) in &missing {
                    eprintln!("tcpq: running without the {f:?} hooks: {why}");
                }
                probe::load(&usable, &opts)?
            }
        };
        let listen_ring = loaded.take_ring(names::LISTEN_EVENTS)?;
        let connect_ring = loaded.take_ring(names::CONNECT_EVENTS)?;
        let drop_ring = loaded.take_ring(names::DROP_EVENTS)?;
        let accept_ring = loaded.take_ring(names::ACCEPT_EVENTS)?;
        let ring_lost = loaded.take_per_cpu_counters(names::RING_LOST)?;
        let listen_counts = loaded.take_per_cpu_counters(names::LISTEN_COUNTS)?;
        let accept_totals = AcceptTotalsReader::open(&mut loaded)?;
        let listen_unsent = UnsentReader::open(&mut loaded)?;
        let aborts = crate::limit::AbortReader::open(&mut loaded);
        let host = netns::current().unwrap_or(0);
        let agg = Aggregates::default();
        let mut session = Self {
            loaded,
            listen_ring,
            connect_ring,
            drop_ring,
            accept_ring,
            ring_lost,
            listen_counts,
            accept_totals,
            listen_unsent,
            aborts,
            abort_base: BTreeMap::new(),
            dir: ListenerDirectory::new(),
            ct_active: RefCell::new(HashSet::new()),
            host,
            agg,
            missing,
            slow: SlowReads::default(),
            ct_drop_stat: HashMap::new(),
            stats_fd: (std::env::var("TCPQ_BPF_STATS").as_deref() == Ok("1"))
                .then(|| aya::sys::enable_stats(aya::sys::Stats::RunTime).ok())
                .flatten(),
            engine: Engine {
                watcher: NsWatcher::new(engine::TIER0_COUNTERS),
                tier0: Tier0::default(),
                arms: ARMED_FAMILIES
                    .iter()
                    .map(|(f, _)| (*f, Arm::default()))
                    .collect(),
                opts: live,
                last_poll: None,
                poll_every: engine::POLL_EVERY,
                poll_cost: Duration::ZERO,
                failed_port_searches: 0,
                table_full_drops: 0,
                listen_flush: false,
            },
        };
        // The first reading: the baseline of every counter and listener, and the interval's
        // starting counters.
        session.poll(true);
        session.agg.counters_first = session.engine.tier0.counters().clone();
        session.abort_base = session.aborts.read();
        Ok(session)
    }

    /// Reads tier 0 (at most every `engine::POLL_EVERY` unless `now`) and arms or disarms the
    /// families whose signals moved or went quiet.
    pub fn poll(&mut self, now: bool) {
        let e = &mut self.engine;
        // A frame's own reading (`now`) keeps intervals exact (unless one just ran); between
        // frames, big tables are read less often (engine::next_poll_after).
        let wait = if now {
            Duration::from_millis(50)
        } else {
            e.poll_every
        };
        if e.last_poll.is_some_and(|t| t.elapsed() < wait) {
            return;
        }
        let started = Instant::now();
        e.last_poll = Some(started);
        let readings = e.watcher.poll(now);
        let sig = e.tier0.update(readings);
        e.poll_cost = started.elapsed();
        e.poll_every = engine::next_poll_after(e.poll_cost);
        let connect = sig.connect.or_else(|| {
            (e.failed_port_searches > 0).then(|| {
                format!(
                    "{} connect() found no free port (EADDRNOTAVAIL)",
                    e.failed_port_searches
                )
            })
        });
        let conntrack = sig.conntrack.or_else(|| {
            (e.table_full_drops > 0).then(|| {
                format!(
                    "{} packets dropped: conntrack table full",
                    e.table_full_drops
                )
            })
        });
        e.failed_port_searches = 0;
        e.table_full_drops = 0;
        if e.opts.hooks_all {
            return;
        }
        let at = Instant::now();
        for (family, trouble) in [
            (Family::Listen, sig.listen),
            (Family::Connect, connect),
            (Family::Drop, conntrack),
        ] {
            if !self.loaded.armable(family) {
                continue;
            }
            let Some(arm) = self.engine.arms.get_mut(&family) else {
                continue;
            };
            match arm.step(at, trouble.as_deref(), self.engine.opts.quiet) {
                Step::Arm => {
                    // The accept family's waits and idle acceptors explain a listener's trouble:
                    // armed with it.
                    let mut refused = self.loaded.arm(family);
                    if family == Family::Listen {
                        refused.extend(self.loaded.arm(Family::Accept));
                    }
                    // E.g. a capability export dropped after start that this kernel wants.
                    for why in refused {
                        log::warn!("attach {why}");
                    }
                }
                Step::Disarm => {
                    self.loaded.disarm(family);
                    match family {
                        Family::Listen => {
                            self.loaded.disarm(Family::Accept);
                            self.engine.listen_flush = true;
                        }
                        // Owners recorded while armed are not removed at close any more: a
                        // socket pointer reused later must not find a stale one.
                        Family::Drop => self
                            .loaded
                            .clear_socket_map::<{ tcpq_common::OWNER_SIZE }>(names::SOCK_OWNER),
                        _ => {}
                    }
                }
                Step::Stay => {}
            }
        }
    }

    /// Each armed family's state, as shown by top, export and diagnose.
    pub fn families(&self) -> Vec<FamilyView> {
        ARMED_FAMILIES
            .iter()
            .map(|(family, name)| {
                let arm = self.engine.arms.get(family).cloned().unwrap_or_default();
                let available = self.missing.iter().all(|(f, _)| f != family);
                if !available {
                    FamilyView {
                        family: name,
                        state: "unavailable",
                        since: 0,
                        why: "its core hook could not be attached (see hooks_inactive)".into(),
                    }
                } else if self.engine.opts.hooks_all {
                    FamilyView {
                        family: name,
                        state: "tracing",
                        since: 0,
                        why: "--hooks all".into(),
                    }
                } else {
                    FamilyView {
                        family: name,
                        state: if arm.tracing { "tracing" } else { "watching" },
                        since: arm.since_unix,
                        why: arm.why,
                    }
                }
            })
            .collect()
    }

    pub fn hooks(&self) -> &[HookStatus] {
        &self.loaded.hooks
    }

    /// Reads everything the rings hold into the current aggregates; returns the events read.
    pub fn drain(&mut self) -> u64 {
        let agg = &mut self.agg;
        let before = agg.events;
        while let Some(item) = self.listen_ring.next() {
            agg.events += 1;
            match decode_listen(&item) {
                Ok(ListenRecord::Overflow(ev)) => {
                    // Resolve the owner now: the process may be gone by the end of the interval.
                    let _ = self.dir.lookup(ev.netns, ev.cookie, ev.laddr, ev.lport);
                    agg.overflow.record(&ev);
                }
                Ok(ListenRecord::ListenCall(c)) => self.dir.on_listen_call(&c),
                Err(_) => {}
            }
        }
        // Events the kernel counted per listener instead of writing them (line budget, full
        // ring): the listener counts stay exact. Only the listen ingress hook tallies, so the
        // table (a map walk: one syscall per entry) is read only while it is attached.
        let tallying = self.loaded.attached(names::PROG_LISTEN_INGRESS)
            || std::mem::take(&mut self.engine.listen_flush);
        let unsent = if tallying {
            self.listen_unsent.take()
        } else {
            Vec::new()
        };
        for c in unsent {
            let _ = self
                .dir
                .lookup(c.ev.netns, c.ev.cookie, c.ev.laddr, c.ev.lport);
            agg.overflow.record_n(&c.ev, c.n, false);
            agg.tallied += c.n;
        }
        while let Some(item) = self.connect_ring.next() {
            agg.events += 1;
            if let Ok(o) = decode_connect(&item) {
                if o.result == crate::family::connect::decode::ConnectResult::Errno(99) {
                    self.engine.failed_port_searches += 1; // EADDRNOTAVAIL (tier 1)
                }
                agg.connects.record(&o);
            }
        }
        while let Some(item) = self.drop_ring.next() {
            agg.events += 1;
            if let Ok(d) = decode_drop(&item)
                && d.netfilter
            {
                let in_use = crate::family::conntrack::snapshot::ct_in_use(
                    &self.ct_active,
                    d.netns,
                    d.has_ct,
                );
                let kind = drop_kind(d.has_ct, in_use);
                if kind == "table_full" {
                    self.engine.table_full_drops += 1;
                }
                *agg.drops.entry((d.netns, kind)).or_insert(0) += 1;
            }
        }
        while let Some(item) = self.accept_ring.next() {
            agg.events += 1;
            if let Ok(a) = decode_accept(&item) {
                let key = (a.netns, a.laddr, a.lport);
                if let Some(s) = agg.accepts.get_mut(&key) {
                    s.record(&a);
                } else if agg.accepts.len() < MAX_ACCEPT_KEYS {
                    agg.accepts.entry(key).or_default().record(&a);
                } else {
                    agg.accepts_evicted += 1;
                }
            }
        }
        agg.events - before
    }

    /// Adds what the kernel counted per (listener, process) since the last look
    /// (`ACCEPT_TOTALS`): while the accept family is attached, and once more after.
    fn fold_accept_totals(&mut self) {
        let attached = self.loaded.attached(names::PROG_ACCEPT_EXIT4)
            || self.loaded.attached(names::PROG_ACCEPT_EXIT);
        self.accept_totals.fold(
            attached,
            &mut self.agg.accepts,
            &mut self.agg.accepts_evicted,
        );
    }

    /// Samples the holders and idle acceptors of every listener that accepted this interval.
    pub fn sample_acceptors(&mut self) {
        self.fold_accept_totals();
        let keys: Vec<(u32, IpAddr, u16)> = self.agg.accepts.keys().copied().collect();
        for (ns, laddr, lport) in keys {
            let Some(now) = sample_acceptors(&mut self.dir, ns, laddr, lport) else {
                continue;
            };
            match self.agg.acceptors.get_mut(&(ns, laddr, lport)) {
                Some(seen) => {
                    seen.min_idle = seen.min_idle.min(now.min_idle);
                    if seen.holders.len() < now.holders.len() {
                        seen.holders = now.holders;
                    }
                }
                None => {
                    self.agg.acceptors.insert((ns, laddr, lport), now);
                }
            }
        }
    }

    /// Looks at every process that reset connections on close this interval: does it hold the
    /// port's listener, how many ESTABLISHED does it hold there (the plateau), its nofile limit.
    /// Sampled while the interval runs: the server may be gone (or idle) by its end.
    pub fn sample_limits(&mut self) {
        let now = crate::limit::interval(&self.abort_base, &self.aborts.read());
        for key in now.keys() {
            if let Some(seen) = crate::limit::sample(key) {
                self.agg.limit_seen.entry(*key).or_default().merge(seen);
            }
        }
    }

    /// Ends the interval: returns its aggregates and starts a fresh set.
    pub fn take(&mut self) -> Aggregates {
        self.fold_accept_totals();
        // Counters at the interval's boundary: tier 0's last reading (`poll(true)` just before).
        let next = Aggregates {
            counters_first: self.engine.tier0.counters().clone(),
            ..Aggregates::default()
        };
        let mut agg = std::mem::replace(&mut self.agg, next);
        // Read right after the interval's last counters (`poll(true)`), as its start was.
        let aborts = self.aborts.read();
        agg.aborts = crate::limit::interval(&self.abort_base, &aborts);
        self.abort_base = aborts;
        agg.counters_last = self.engine.tier0.counters().clone();
        agg.tier0_listeners = self.engine.tier0.take_interval();
        agg.tier0_unattributed = self.engine.tier0.take_unattributed();
        agg.tier0_conntrack = self.engine.tier0.conntrack_filling();
        agg.tier0_conntrack_tables = self.engine.tier0.conntrack_tables();
        agg.families = self.families();
        agg.listen_confirmed = self.loaded.confirm;
        agg
    }

    pub fn lost(&self) -> Lost {
        Lost {
            listen: lost::LISTEN.map(|i| sum_per_cpu(&self.ring_lost, i)).sum(),
            connect: sum_per_cpu(&self.ring_lost, lost::CONNECT),
            drop: sum_per_cpu(&self.ring_lost, lost::DROP),
            // Ring full, or ACCEPT_TOTALS full.
            accept: sum_per_cpu(&self.ring_lost, lost::ACCEPT)
                + sum_per_cpu(&self.ring_lost, lost::ACCEPT_TOTALS_FULL),
            missed_runs: self.loaded.missed_runs(),
            unresolved: crate::family::listen::unresolved_records(&self.listen_counts),
        }
    }
}

/// The kernel's accept totals per (listener, process) (`ACCEPT_TOTALS`) and what was last read
/// of each: the live commands count accepts without a ring record each.
struct AcceptTotalsReader {
    map: BpfHashMap<MapData, AcceptKey, AcceptTotals>,
    last: HashMap<AcceptKey, AcceptTotals>,
    comms: HashMap<u32, String>,
    /// The last fold found something new (the table may still move once after a disarm).
    moved: bool,
}

impl AcceptTotalsReader {
    fn open(loaded: &mut Loaded) -> Result<Self> {
        let map = loaded
            .ebpf
            .take_map(names::ACCEPT_TOTALS)
            .ok_or_else(|| anyhow::anyhow!("kernel object has no map {}", names::ACCEPT_TOTALS))?;
        Ok(Self {
            map: BpfHashMap::try_from(map)
                .map_err(|e| anyhow::anyhow!("open {}: {e}", names::ACCEPT_TOTALS))?,
            last: HashMap::new(),
            comms: HashMap::new(),
            moved: false,
        })
    }

    /// Adds each key's growth since the last fold to `accepts` (a map walk: two syscalls per
    /// key, so only while the accept programs run or the table moved last time). Keys of
    /// processes that exited leave the kernel's table once read to the end.
    fn fold(
        &mut self,
        attached: bool,
        accepts: &mut BTreeMap<(u32, IpAddr, u16), AcceptStats>,
        evicted: &mut u64,
    ) {
        if !attached && !self.moved {
            return;
        }
        self.moved = false;
        if self.comms.len() > 4096 {
            self.comms.clear();
        }
        let keys: Vec<AcceptKey> = self.map.keys().filter_map(Result::ok).collect();
        for key in keys {
            let Ok(now) = self.map.get(&key, 0) else {
                continue;
            };
            let before = self.last.get(&key).copied().unwrap_or_default();
            if now.accepts == before.accepts {
                if !procs::alive(key.tgid) {
                    let _ = self.map.remove(&key);
                    self.last.remove(&key);
                }
                continue;
            }
            self.moved = true;
            let id = (key.netns, addr(key.family, &key.laddr), key.lport);
            let comms = &mut self.comms;
            let comm = || {
                comms
                    .entry(key.tgid)
                    .or_insert_with(|| procs::comm(key.tgid).unwrap_or_else(|| "?".into()))
                    .clone()
            };
            if let Some(stats) = accepts.get_mut(&id) {
                stats.add_totals(key.tgid, comm, &before, &now);
            } else if accepts.len() < MAX_ACCEPT_KEYS {
                accepts
                    .entry(id)
                    .or_default()
                    .add_totals(key.tgid, comm, &before, &now);
            } else {
                *evicted += 1;
            }
            self.last.insert(key, now);
        }
    }
}
