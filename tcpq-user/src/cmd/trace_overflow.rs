//! `tcpq trace overflow`: every connection refused at a listening socket, live, with the
//! listener's process, and a per-listener summary with the cause and the fix.
use std::collections::{HashMap, HashSet};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, MapData};
use tcpq_common::names;

use super::trace_out::{TraceOut, Windows};
use crate::{
    cli::TraceOverflowArgs,
    family::listen::{
        aggregate::{Admit, KindCounts, ListenLines, ListenerAgg, OverflowAggregator},
        decode::{ListenRecord, OverflowEvent, OverflowKind, decode_listen},
        diagnose::{ListenerEvidence, diagnose_listener},
        render::{self as output, ListenerSummary},
        unsent::UnsentReader,
    },
    kernel::probe::{self, Family, HookState, LoadOptions, sum_per_cpu},
    render::Clock,
    snapshot::{counters, listeners::ListenerDirectory, netns, procs},
};

struct Tracer {
    args: TraceOverflowArgs,
    clock: Clock,
    out: TraceOut,
    dir: ListenerDirectory,
    agg: OverflowAggregator,
    limiter: ListenLines,
    pid_filter: Option<HashSet<u32>>,
    host_netns: u32,
    windows: Windows,
    accepts: Option<BpfHashMap<MapData, u32, u64>>,
    accepts_run_base: HashMap<u32, u64>,
    accepts_window_base: HashMap<u32, u64>,
    netns_counters_run: HashMap<u32, HashMap<String, u64>>,
    netns_counters_window: HashMap<u32, HashMap<String, u64>>,
    /// Last counters read per namespace with activity (a lab's namespace may be gone by the
    /// final summary).
    netns_counters_last: HashMap<u32, HashMap<String, u64>>,
    active_netns: HashSet<u32>,
    /// Sysctls per namespace as first seen: the namespace may be gone by summary time.
    netns_sysctls: HashMap<u32, counters::ListenSysctls>,
    decode_errors: u64,
    /// Per-listener counts of events that skipped the ring.
    unsent: UnsentReader,
}

fn read_accepts(map: &BpfHashMap<MapData, u32, u64>) -> HashMap<u32, u64> {
    map.iter().flatten().collect()
}

impl Tracer {
    /// `--pid`: a listener passes when one of its owners is a selected pid or, for a name,
    /// is a process of that name (including ones started after tcpq).
    fn passes_filter(&self, owners: &[procs::Owner]) -> bool {
        match &self.pid_filter {
            None => true,
            Some(f) => owners.iter().any(|o| {
                f.contains(&o.pid)
                    || self
                        .args
                        .pid
                        .as_deref()
                        .is_some_and(|name| name.parse::<u32>().is_err() && o.comm == name)
            }),
        }
    }

    fn note_netns(&mut self, ns: u32) {
        if !self.netns_counters_run.contains_key(&ns)
            && let Ok(c) = counters::read_in(ns)
        {
            self.netns_counters_window.insert(ns, c.clone());
            self.netns_counters_run.insert(ns, c);
            self.netns_sysctls
                .insert(ns, counters::ListenSysctls::read_in(ns));
        }
    }

    fn handle(&mut self, bytes: &[u8]) {
        let rec = match decode_listen(bytes) {
            Ok(r) => r,
            Err(_) => {
                self.decode_errors += 1;
                return;
            }
        };
        let ev: OverflowEvent = match rec {
            ListenRecord::ListenCall(call) => {
                self.dir.on_listen_call(&call);
                return;
            }
            ListenRecord::Overflow(ev) => ev,
        };
        self.note_netns(ev.netns);
        self.active_netns.insert(ev.netns);
        let info = self.dir.lookup(ev.netns, ev.cookie, ev.laddr, ev.lport);
        let owners: &[procs::Owner] = info.as_deref().map(|i| i.owners.as_slice()).unwrap_or(&[]);
        if !self.passes_filter(owners) {
            return;
        }
        self.agg.record(&ev);
        let (flushed, admit) = self.limiter.admit_event(ev.ts_ns / 1_000_000_000, &ev);
        self.print_aggregates(flushed);
        if admit == Admit::Print {
            if self.args.out.json {
                let v = output::event_json(&self.clock, &ev, info.as_deref());
                self.out.emit(v.to_string());
            } else {
                self.out.header_once(output::TEXT_HEADER);
                let t = output::event_text(&self.clock, &ev, info.as_deref());
                self.out.emit(t);
            }
        }
    }

    /// Adds what the kernel counted without ring records (see `listen::unsent`).
    fn fold_unsent(&mut self) {
        for c in self.unsent.take() {
            self.note_netns(c.ev.netns);
            self.active_netns.insert(c.ev.netns);
            let info = self
                .dir
                .lookup(c.ev.netns, c.ev.cookie, c.ev.laddr, c.ev.lport);
            let owners: &[procs::Owner] =
                info.as_deref().map(|i| i.owners.as_slice()).unwrap_or(&[]);
            if !self.passes_filter(owners) {
                continue;
            }
            self.agg.record_n(&c.ev, c.n, false);
            let flushed = self
                .limiter
                .add_unsent(c.ev.ts_ns / 1_000_000_000, &c.ev, c.n);
            self.print_aggregates(flushed);
        }
    }

    fn print_aggregates(&mut self, lines: Vec<crate::family::listen::aggregate::AggregateLine>) {
        for l in lines {
            let info = self
                .dir
                .lookup(l.key.netns, l.key.cookie, l.key.laddr, l.key.lport);
            let s = if self.args.out.json {
                output::aggregate_json(&self.clock, &l, info.as_deref()).to_string()
            } else {
                output::aggregate_text(&self.clock, &l, info.as_deref())
            };
            self.out.emit(s);
        }
    }

    fn tick(&mut self) {
        self.fold_unsent();
        let now_sec = Clock::now_mono_ns() / 1_000_000_000;
        let lines = self.limiter.lines_until(now_sec);
        self.print_aggregates(lines);
        self.out.flush();
        for ns in std::mem::take(&mut self.active_netns) {
            if let Ok(c) = counters::read_in(ns) {
                self.netns_counters_last.insert(ns, c);
            }
        }
    }

    /// Prints the summary of the last window (`final_run`: of the whole run).
    fn summary(&mut self, kernel_totals: &KindCounts, facts: &output::RunFacts, final_run: bool) {
        self.fold_unsent();
        let lines = if final_run {
            self.limiter.all_lines()
        } else {
            Vec::new()
        };
        self.print_aggregates(lines);
        let duration_s = self.windows.seconds(final_run);
        let accepts_now = self.accepts.as_ref().map(read_accepts);
        let ranked: Vec<ListenerAgg> = self
            .agg
            .ranked()
            .into_iter()
            .filter(|a| !(if final_run { a.total } else { a.window }).is_empty())
            .cloned()
            .collect();
        let mut sysctl_cache: HashMap<u32, counters::ListenSysctls> = HashMap::new();
        let mut counters_now: HashMap<u32, HashMap<String, u64>> = HashMap::new();
        let mut infos = Vec::new();
        for a in &ranked {
            let info = self
                .dir
                .lookup(a.key.netns, a.key.cookie, a.key.laddr, a.key.lport);
            infos.push(info);
        }
        let mut summaries = Vec::new();
        for (a, info) in ranked.iter().zip(infos.iter()) {
            let ns = a.key.netns;
            let cached = self.netns_sysctls.get(&ns).cloned().unwrap_or_default();
            let sysctls = sysctl_cache
                .entry(ns)
                .or_insert_with(|| {
                    let now = counters::ListenSysctls::read_in(ns);
                    if now.somaxconn.is_some() { now } else { cached }
                })
                .clone();
            let last = self
                .netns_counters_last
                .get(&ns)
                .cloned()
                .unwrap_or_default();
            let now = counters_now
                .entry(ns)
                .or_insert_with(|| counters::read_in(ns).unwrap_or(last))
                .clone();
            let base = if final_run {
                self.netns_counters_run.get(&ns)
            } else {
                self.netns_counters_window.get(&ns)
            };
            let cookies_sent_recv = base.map(|b| {
                (
                    counters::delta(b, &now, "TcpExt:SyncookiesSent"),
                    counters::delta(b, &now, "TcpExt:SyncookiesRecv"),
                )
            });
            let counts = if final_run { a.total } else { a.window };
            let accepts = match (&accepts_now, info) {
                (Some(now), Some(info)) if !info.owners.is_empty() => {
                    let base = if final_run {
                        &self.accepts_run_base
                    } else {
                        &self.accepts_window_base
                    };
                    Some(
                        info.owners
                            .iter()
                            .map(|o| {
                                now.get(&o.pid)
                                    .copied()
                                    .unwrap_or(0)
                                    .saturating_sub(base.get(&o.pid).copied().unwrap_or(0))
                            })
                            .sum(),
                    )
                }
                _ => None,
            };
            let listen_arg = info.as_ref().and_then(|i| {
                i.listen_arg
                    .or_else(|| self.dir.listen_arg(ns, i.inode, a.key.laddr, a.key.lport))
            });
            let evidence = ListenerEvidence {
                counts,
                listen_arg,
                sysctls: sysctls.clone(),
                accepts,
                cookies_sent_recv,
                ..ListenerEvidence::of_listener(
                    a,
                    info.as_deref(),
                    self.host_netns,
                    netns::enter_prefix(ns, self.host_netns),
                    duration_s,
                )
            };
            let findings = diagnose_listener(&evidence);
            summaries.push((a, evidence, findings));
        }
        let views: Vec<ListenerSummary> = summaries
            .iter()
            .zip(infos.iter())
            .map(|((a, e, f), info)| ListenerSummary {
                netns: a.key.netns,
                laddr: a.key.laddr,
                lport: a.key.lport,
                info: info.as_deref(),
                counts: e.counts,
                backlog: a.backlog,
                last_queue: a.last_queue,
                somaxconn: e.sysctls.somaxconn,
                listen_arg: e.listen_arg,
                accepts: e.accepts,
                clients: e.clients,
                findings: f.clone(),
            })
            .collect();
        let text = if self.args.out.json {
            output::summary_json(
                &self.clock,
                Clock::now_mono_ns(),
                duration_s,
                facts,
                kernel_totals,
                &views,
            )
            .to_string()
        } else {
            output::summary_text(duration_s, facts, kernel_totals, &views)
        };
        self.out.emit(text.trim_end().to_string());
        self.out.flush();
        // next window
        self.agg.reset_window();
        self.windows.next();
        if let Some(now) = accepts_now {
            self.accepts_window_base = now;
        }
        for (ns, c) in counters_now {
            self.netns_counters_window.insert(ns, c);
        }
        if let (Some(name), Some(_)) = (&self.args.pid, &self.pid_filter)
            && let Ok(owners) = procs::resolve_pid_arg(name)
        {
            self.pid_filter = Some(owners.iter().map(|o| o.pid).collect());
        }
    }
}

fn kernel_totals(counts: &aya::maps::PerCpuArray<MapData, u64>) -> KindCounts {
    let mut k = KindCounts::default();
    for kind in OverflowKind::ALL {
        k.add(kind, sum_per_cpu(counts, kind.wire() as u32));
    }
    k
}

fn run_facts(
    lost: &aya::maps::PerCpuArray<MapData, u64>,
    counts: &aya::maps::PerCpuArray<MapData, u64>,
    confirmed: bool,
    missed_runs: u64,
) -> output::RunFacts {
    output::RunFacts {
        lost: tcpq_common::lost::LISTEN
            .map(|i| sum_per_cpu(lost, i))
            .sum(),
        confirmed,
        other_drops: sum_per_cpu(counts, tcpq_common::kind::OTHER_DROP as u32),
        unresolved: crate::family::listen::unresolved_records(counts),
        cookies_unmatched: sum_per_cpu(counts, tcpq_common::kind::COOKIE_UNMATCHED as u32),
        unsent: sum_per_cpu(counts, tcpq_common::kind::UNSENT as u32),
        missed_runs,
        far_from_limits: sum_per_cpu(counts, tcpq_common::kind::FAR_FROM_LIMITS as u32),
        late_resolved: sum_per_cpu(counts, tcpq_common::kind::LATE_RESOLVED as u32),
    }
}

pub fn run(args: TraceOverflowArgs) -> Result<()> {
    // Resolve the filter before loading anything: a typo must fail fast and cleanly.
    let pid_filter = match &args.pid {
        Some(p) => Some(
            procs::resolve_pid_arg(p)?
                .into_iter()
                .map(|o| o.pid)
                .collect::<HashSet<u32>>(),
        ),
        None => None,
    };
    let mut loaded = probe::load(
        &[Family::Listen],
        &LoadOptions {
            filter_lport: args.port.unwrap_or(0),
            ..LoadOptions::default()
        },
    )?;
    let ring = loaded.take_ring(names::LISTEN_EVENTS)?;
    let counts = loaded.take_per_cpu_counters(names::LISTEN_COUNTS)?;
    let lost = loaded.take_per_cpu_counters(names::RING_LOST)?;
    let accepts = if loaded.attached(names::PROG_SYS_EXIT_ACCEPT4) {
        let map = loaded
            .ebpf
            .take_map(names::ACCEPTS_BY_TGID)
            .context("kernel object has no accept map")?;
        Some(BpfHashMap::<MapData, u32, u64>::try_from(map).context("open accept counters")?)
    } else {
        None
    };
    let unsent = UnsentReader::open(&mut loaded)?;
    let confirmed = loaded.confirm;
    let attached: Vec<String> = loaded
        .hooks
        .iter()
        .map(|h| match &h.state {
            HookState::Attached | HookState::Standby => format!("{} ✓", h.spec.program),
            HookState::Unavailable(why) => format!("{} ✗ ({why})", h.spec.program),
        })
        .collect();

    let base = accepts.as_ref().map(read_accepts).unwrap_or_default();
    let t = std::cell::RefCell::new(Tracer {
        clock: Clock::new(),
        out: TraceOut::stdout(args.out.json)?,
        dir: ListenerDirectory::new(),
        agg: OverflowAggregator::new(10_000),
        limiter: ListenLines::new(args.out.lines_per_sec),
        pid_filter,
        host_netns: netns::current().unwrap_or(0),
        windows: Windows::start(),
        accepts,
        accepts_run_base: base.clone(),
        accepts_window_base: base,
        netns_counters_run: HashMap::new(),
        netns_counters_window: HashMap::new(),
        netns_counters_last: HashMap::new(),
        active_netns: HashSet::new(),
        netns_sysctls: HashMap::new(),
        decode_errors: 0,
        unsent,
        args: args.clone(),
    });
    if let Some(ns) = netns::current() {
        t.borrow_mut().note_netns(ns);
    }
    let on_record = |bytes: &[u8]| t.borrow_mut().handle(bytes);
    let on_tick = || t.borrow_mut().tick();
    let on_summary = |final_run| {
        let k = kernel_totals(&counts);
        t.borrow_mut().summary(
            &k,
            &run_facts(&lost, &counts, confirmed, loaded.missed_runs()),
            final_run,
        );
    };
    let banner = || {
        eprintln!(
            "tcpq: tracing listen overflows{}{} — verdicts {} — hooks: {} — Ctrl-C to stop",
            args.port
                .map(|p| format!(" on port {p}"))
                .unwrap_or_default(),
            args.pid
                .as_ref()
                .map(|p| format!(" for {p}"))
                .unwrap_or_default(),
            if confirmed {
                "confirmed from the kernel's actions"
            } else {
                "predicted from the queues (outcome hooks unavailable)"
            },
            attached.join(", ")
        )
    };
    let handlers = super::ring::Handlers::new(on_record, on_tick, on_summary);
    super::ring::run(ring, &args.out, banner, handlers);
    let errors = t.borrow().decode_errors;
    if errors > 0 {
        eprintln!(
            "tcpq: {errors} records could not be decoded (kernel object and tcpq out of step?)"
        );
    }
    drop(loaded);
    Ok(())
}
