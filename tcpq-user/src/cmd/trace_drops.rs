//! `tcpq trace drops`: every TCP packet the kernel dropped, with the reason by name.
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
    cli::TraceDropsArgs,
    family::conntrack::decode::decode_drop,
    family::conntrack::render::{drop_json, process_text},
    kernel::probe::{self, Family, LoadOptions, sum_per_cpu},
    render::{Clock, endpoint},
    snapshot::listeners::ListenerDirectory,
};

/// Drop-reason names of the running kernel (`enum skb_drop_reason`, prefix stripped).
pub fn drop_reason_names() -> HashMap<u32, String> {
    let path = crate::kernel::env::btf_path();
    crate::kernel::btf::KernelBtf::load(&path)
        .and_then(|b| b.enum_members("skb_drop_reason"))
        .map(|m| {
            m.into_iter()
                .map(|(n, v)| {
                    (
                        v as u32,
                        n.strip_prefix("SKB_DROP_REASON_").unwrap_or(&n).to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

type ReasonKey = (u32, u32, std::net::IpAddr, u16);

/// What `trace drops` keeps between its records and summaries.
#[derive(Default)]
struct DropsState {
    by_reason: BTreeMap<String, u64>,
    dir: ListenerDirectory,
}

/// `tcpq trace drops`: every TCP packet the kernel dropped, with the reason by name.
pub fn run(args: TraceDropsArgs) -> Result<()> {
    let mut loaded = probe::load(&[Family::Drop], &LoadOptions::default())?;
    {
        let map = loaded
            .ebpf
            .map_mut(names::DROP_CONFIG)
            .ok_or_else(|| anyhow::anyhow!("kernel object has no map {}", names::DROP_CONFIG))?;
        let mut cfg: aya::maps::Array<&mut aya::maps::MapData, u32> =
            aya::maps::Array::try_from(map)?;
        cfg.set(d::CONFIG_ALL_TCP, 1, 0)?;
    }
    let ring = loaded.take_ring(names::DROP_EVENTS)?;
    let counts = loaded.take_per_cpu_counters(names::DROP_COUNTS)?;
    let ring_lost = loaded.take_per_cpu_counters(names::RING_LOST)?;
    let reasons = drop_reason_names();
    let name = |r: u32| {
        reasons
            .get(&r)
            .cloned()
            .unwrap_or_else(|| format!("reason {r}"))
    };
    let n_reasons = reasons.len();
    let clock = Clock::new();
    let out = TraceOut::stdout(args.out.json)?;
    let state = RefCell::new(DropsState::default());
    let budget: Budget<ReasonKey, u32> = Budget::new(args.out.lines_per_sec);
    let started = Instant::now();
    let print_aggregates = |lines: Vec<(u64, ReasonKey, u32, u64)>| {
        for (second, (ns, _, daddr, dport), reason, n) in lines {
            if args.out.json {
                out.emit(json!({"ts": clock.rfc3339(second * 1_000_000_000), "event": "drop", "aggregated": true, "reason": name(reason), "count": n, "netns": ns, "daddr": daddr.to_string(), "dport": dport}).to_string());
            } else {
                out.emit(format!(
                    "{} +1s  {ns}  {}×{n} → {}",
                    clock.short(second * 1_000_000_000).get(..8).unwrap_or(""),
                    name(reason),
                    endpoint(daddr, dport)
                ));
            }
        }
    };
    let on_record = |bytes: &[u8]| {
        let Ok(e) = decode_drop(bytes) else { return };
        let reason = name(e.reason);
        let mut st = state.borrow_mut();
        *st.by_reason.entry(reason.clone()).or_insert(0) += 1;
        let (pid, comm) = e.owner(&mut st.dir);
        let id = st.dir.identities.get(pid, &comm);
        let key: ReasonKey = (e.netns, e.reason, e.daddr, e.dport);
        let (flushed, print) = budget.admit(e.ts_ns, &key, &e.reason);
        print_aggregates(flushed);
        if !print {
            return;
        }
        if args.out.json {
            let own = json!({"event": "drop", "reason": reason, "tcp_flags": e.tcp_flags});
            out.emit(drop_json(&e, clock.rfc3339(e.ts_ns), pid, &comm, &id, own));
        } else {
            out.header_once("TIME             NETNS       REASON                     DIR  SOURCE                 DESTINATION            PROCESS");
            out.emit(format!(
                "{:<16} {:<11} {:<26} {:<4} {:<22} {:<22} {}",
                clock.short(e.ts_ns),
                e.netns,
                reason,
                e.direction(),
                endpoint(e.saddr, e.sport),
                endpoint(e.daddr, e.dport),
                process_text(pid, &comm, &id)
            ));
        }
    };
    let on_tick = || {
        print_aggregates(budget.due());
        out.flush();
    };
    let on_summary = |final_run: bool| {
        print_aggregates(budget.at_summary(final_run));
        let lost = sum_per_cpu(&ring_lost, tcpq_common::lost::DROP);
        let unparsed = sum_per_cpu(&counts, d::COUNT_UNPARSED);
        let missed = loaded.missed_runs();
        let dur = started.elapsed().as_secs_f64();
        let st = state.borrow();
        let r = &st.by_reason;
        if args.out.json {
            out.emit(json!({"ts": clock.rfc3339(Clock::now_mono_ns()), "event": "drop_summary", "duration_s": (dur * 10.0).round() / 10.0, "lost_events": lost, "missed_runs": missed, "unparsed_events": unparsed, "reasons": *r}).to_string());
        } else {
            let parts: Vec<String> = r.iter().map(|(k, v)| format!("{k} {v}")).collect();
            out.emit(format!(
                "── drops over {dur:.1} s: {} ── lost events: {lost}, missed runs: {missed}, unparsed: {unparsed}",
                if parts.is_empty() {
                    "none".into()
                } else {
                    parts.join(", ")
                }
            ));
        }
        out.flush();
    };
    let banner = || {
        eprintln!(
            "tcpq: tracing TCP drops by reason ({n_reasons} reasons known from BTF) — Ctrl-C to stop"
        )
    };
    let handlers = super::ring::Handlers::new(on_record, on_tick, on_summary);
    super::ring::run(ring, &args.out, banner, handlers);
    drop(loaded);
    Ok(())
}
