//! `tcpq trace conntrack`: every netfilter drop, table full or a rule, with the table's state
//! and what to change per namespace.
use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    time::Instant,
};

use anyhow::Result;
use serde_json::json;
use tcpq_common::{drop as d, names};

use super::trace_out::{Budget, TraceOut};
use crate::{
    cli::TraceConntrackArgs,
    family::conntrack::render::{drop_json, process_text},
    family::conntrack::{
        decode::{NfDrop, decode_drop, drop_kind, proto_name},
        diagnose::diagnose_conntrack,
        snapshot::{CtSnapshot, ct_in_use, snapshot_in},
    },
    kernel::probe::{self, Family, LoadOptions, sum_per_cpu},
    render::{Clock, endpoint},
    snapshot::{listeners::ListenerDirectory, netns},
};

type DropKey = (u32, u32, std::net::IpAddr, u16);

/// What `trace conntrack` keeps between its records and summaries.
#[derive(Default)]
struct ConntrackState {
    /// Per namespace: the first snapshot (for stat deltas), the latest count/max sample, counts.
    first: HashMap<u32, CtSnapshot>,
    sample: HashMap<u32, (u64, u64)>,
    kinds: BTreeMap<(u32, &'static str), u64>,
    dir: ListenerDirectory,
    comms: HashMap<u32, String>,
}

impl ConntrackState {
    fn note_ns(&mut self, ns: u32) {
        if !self.first.contains_key(&ns) {
            let s = snapshot_in(ns, false);
            self.sample.insert(ns, (s.count, s.max));
            self.first.insert(ns, s);
        }
    }
}

pub fn run(args: TraceConntrackArgs) -> Result<()> {
    let mut loaded = probe::load(&[Family::Drop], &LoadOptions::default())?;
    let ring = loaded.take_ring(names::DROP_EVENTS)?;
    let counts = loaded.take_per_cpu_counters(names::DROP_COUNTS)?;
    let ring_lost = loaded.take_per_cpu_counters(names::RING_LOST)?;
    let clock = Clock::new();
    let host = netns::current().unwrap_or(0);
    let out = TraceOut::stdout(args.out.json)?;
    let state = RefCell::new(ConntrackState::default());
    let budget: Budget<DropKey, &'static str> = Budget::new(args.out.lines_per_sec);
    let started = Instant::now();
    // Namespaces seen using conntrack: apart from the state, in the RefCell `ct_in_use` takes
    // (the live session keeps the same set).
    let active: RefCell<std::collections::HashSet<u32>> =
        RefCell::new(std::collections::HashSet::new());
    let print_aggregates = |lines: Vec<(u64, DropKey, &'static str, u64)>| {
        let mut st = state.borrow_mut();
        for (second, (ns, pid, daddr, dport), kind, n) in lines {
            let comm = st.comms.get(&pid).cloned();
            let id = st.dir.identities.get(pid, comm.as_deref().unwrap_or(""));
            if args.out.json {
                out.emit(json!({"ts": clock.rfc3339(second * 1_000_000_000), "event": "conntrack_drop", "aggregated": true, "kind": kind, "cause": (kind == "table_full").then_some("conntrack_full"), "count": n, "netns": ns, "pid": (pid != 0).then_some(pid), "comm": comm, "pod": id.pod, "container": id.container, "daddr": daddr.to_string(), "dport": dport}).to_string());
            } else {
                out.emit(format!(
                    "{} +1s  {ns}  {kind}×{n} → {}  pid {pid}{}",
                    clock.short(second * 1_000_000_000).get(..8).unwrap_or(""),
                    endpoint(daddr, dport),
                    id.suffix()
                ));
            }
        }
    };
    let on_record = |bytes: &[u8]| {
        let Ok(e): Result<NfDrop, _> = decode_drop(bytes) else {
            return;
        };
        let mut st = state.borrow_mut();
        st.note_ns(e.netns);
        let (count, max) = st.sample.get(&e.netns).copied().unwrap_or((0, 0));
        let in_use = ct_in_use(&active, e.netns, e.has_ct);
        let kind = drop_kind(e.has_ct, in_use);
        *st.kinds.entry((e.netns, kind)).or_insert(0) += 1;
        let (pid, comm) = e.owner(&mut st.dir);
        if pid != 0 && !st.comms.contains_key(&pid) && st.comms.len() < 65536 {
            st.comms.insert(pid, comm.clone());
        }
        // Resolved at the process's first drop, while it is alive (its aggregated lines come later).
        let id = st.dir.identities.get(pid, &comm);
        drop(st); // print_aggregates borrows the state
        let key: DropKey = (e.netns, pid, e.daddr, e.dport);
        let (flushed, print) = budget.admit(e.ts_ns, &key, &kind);
        print_aggregates(flushed);
        if !print {
            return;
        }
        if args.out.json {
            let own = json!({"event": "conntrack_drop", "kind": kind, "cause": (kind == "table_full").then_some("conntrack_full"), "ct_count": count, "ct_max": max});
            out.emit(drop_json(&e, clock.rfc3339(e.ts_ns), pid, &comm, &id, own));
        } else {
            out.header_once("TIME             NETNS       KIND        DIR  PROTO  SOURCE                 DESTINATION            COUNT/MAX      PROCESS");
            out.emit(format!(
                "{:<16} {:<11} {:<11} {:<4} {:<6} {:<22} {:<22} {:<14} {}",
                clock.short(e.ts_ns),
                e.netns,
                kind,
                e.direction(),
                proto_name(e.proto),
                endpoint(e.saddr, e.sport),
                endpoint(e.daddr, e.dport),
                format!("{count}/{max}"),
                process_text(pid, &comm, &id)
            ));
        }
    };
    let on_tick = || {
        print_aggregates(budget.due());
        let mut st = state.borrow_mut();
        let nss: Vec<u32> = st.first.keys().copied().collect();
        for ns in nss {
            let s = snapshot_in(ns, false);
            if s.in_use {
                st.sample.insert(ns, (s.count, s.max));
            }
        }
        out.flush();
    };
    let on_summary = |final_run: bool| {
        print_aggregates(budget.at_summary(final_run));
        let dur = started.elapsed().as_secs_f64();
        let lost = sum_per_cpu(&ring_lost, tcpq_common::lost::DROP);
        let unparsed = sum_per_cpu(&counts, d::COUNT_UNPARSED);
        let missed = loaded.missed_runs();
        // Drops seen only because drop_kfree_nested ran where the kernel skipped skb_kfree.
        let rescued = loaded.rescued_runs();
        let st = state.borrow();
        let nss: Vec<u32> = st.first.keys().copied().collect();
        for ns in nss {
            let now = snapshot_in(ns, true);
            let before = st.first.get(&ns).cloned().unwrap_or_default();
            let delta = |k: &str| now.stat_since(&before, k);
            let tf = st.kinds.get(&(ns, "table_full")).copied().unwrap_or(0);
            let rule = st.kinds.get(&(ns, "rule")).copied().unwrap_or(0);
            let ev = now.evidence(&before, tf, rule, dur, netns::enter_prefix(ns, host));
            let findings = diagnose_conntrack(&ev);
            // Drops the kernel counted that never reached skb:kfree_skb as table-full frees
            // (seen on 6.18 in ~1 of 25 lab runs, 1–12 of ~480; an independent bpftrace
            // counter on the same tracepoint misses the same ones): shown, never hidden.
            let untraced = delta("drop").saturating_sub(tf);
            if args.out.json {
                out.emit(json!({"ts": clock.rfc3339(Clock::now_mono_ns()), "event": "conntrack_summary", "duration_s": (dur * 10.0).round() / 10.0, "netns": ns, "lost_events": lost, "missed_runs": missed, "rescued_runs": rescued, "unparsed_events": unparsed, "table_full": tf, "rule": rule, "stat_drop": delta("drop"), "untraced_drops": untraced, "stat_early_drop": delta("early_drop"), "stat_insert_failed": delta("insert_failed"), "ct_count": now.count, "ct_max": now.max, "top": ev.top, "causes": findings}).to_string());
            } else {
                out.emit(format!(
                    "── conntrack summary over {dur:.1} s ── netns {ns}: table_full {tf}, rule {rule} (kernel stat drop +{}{}, early_drop +{}) · count {}/{} · lost events {lost}, missed runs {missed}, unparsed {unparsed}",
                    delta("drop"),
                    if untraced > 0 {
                        format!(", {untraced} of them not seen at skb:kfree_skb")
                    } else {
                        String::new()
                    },
                    delta("early_drop"),
                    now.count,
                    now.max
                ));
                out.causes(findings);
            }
        }
        out.flush();
    };
    let banner = || {
        eprintln!("tcpq: tracing netfilter drops (conntrack table full or a rule) — Ctrl-C to stop")
    };
    let handlers = super::ring::Handlers::new(on_record, on_tick, on_summary);
    super::ring::run(ring, &args.out, banner, handlers);
    drop(loaded);
    Ok(())
}
