//! A live collection session: every hook family loaded, the rings drained into one set of
//! aggregates that the caller takes per interval (`top`, `export`) or once (`diagnose`).
//! The only kernel plumbing of the live commands; analysis lives in `causes` and `frame`.
mod accept_totals;
mod aggregates;
mod arming;
mod tiers;

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    time::Duration,
};

use accept_totals::AcceptTotalsReader;
pub use aggregates::{AcceptorSample, Aggregates, Lost, sample_acceptors};
use anyhow::Result;
pub use arming::{ARMED_FAMILIES, Engine};
use aya::maps::{MapData, PerCpuArray, RingBuf};
use tcpq_common::{lost, names};
pub use tiers::{
    LIVE_STANDBY, LIVE_UNUSED, LIVE_UNUSED_COUNTERS_FIRST, LiveOptions, describe_tiers,
};

use crate::{
    family::{
        accept::decode::decode_accept,
        connect::decode::decode_connect,
        conntrack::decode::{decode_drop, drop_kind},
        listen::{
            decode::{ListenRecord, decode_listen},
            unsent::UnsentReader,
        },
    },
    kernel::probe::{self, Family, HookStatus, LoadOptions, Loaded, sum_per_cpu},
    live::{
        engine::{self, Arm, Tier0},
        slow::SlowReads,
    },
    snapshot::{listeners::ListenerDirectory, netns, nswatch::NsWatcher},
};

/// Bounds of the userspace tables per interval (evictions are counted by the aggregators).
const MAX_LISTENERS: usize = 10_000;
const MAX_CONNECT_KEYS: usize = 50_000;
const MAX_ACCEPT_KEYS: usize = 10_000;

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
