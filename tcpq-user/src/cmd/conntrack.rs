//! `tcpq trace conntrack` (every netfilter drop: table full or a rule) and `tcpq conntrack`
//! (the table per namespace: headroom, drops, top consumers, timeouts and what to change).
use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use serde_json::json;
use tcpq_common::{drop as d, names};

use super::filter::PidFilter;
use super::trace_out::{Budget, TraceOut};
use crate::{
    cli::{ConntrackArgs, TraceConntrackArgs, TraceDropsArgs},
    family::conntrack::{
        decode::{NfDrop, decode_drop, drop_kind, proto_name},
        diagnose::diagnose_conntrack,
        snapshot::{CtSnapshot, ct_in_use, evidence, snapshot_in},
    },
    kernel::{
        env::Privileges,
        probe::{self, Family, LoadOptions, sum_per_cpu},
    },
    render::{Clock, endpoint},
    snapshot::{container::Identity, listeners::ListenerDirectory, netns},
};

type DropKey = (u32, u32, std::net::IpAddr, u16);

/// The PROCESS column of a drop line: `pid/comm` and its pod and container, `-` when unknown.
fn process_text(pid: u32, comm: &str, id: &Identity) -> String {
    if pid != 0 {
        format!("{pid}/{comm}{}", id.suffix())
    } else {
        "-".into()
    }
}

pub fn run_trace(args: TraceConntrackArgs) -> Result<()> {
    let mut loaded = probe::load(&[Family::Drop], &LoadOptions::default())?;
    let ring = loaded.take_ring(names::DROP_EVENTS)?;
    let counts = loaded.take_per_cpu_counters(names::DROP_COUNTS)?;
    let clock = Clock::new();
    let host = netns::current().unwrap_or(0);
    let out = TraceOut::stdout(args.out.json)?;
    // Per namespace: the first snapshot (for stat deltas), the latest count/max sample, counts.
    let first: RefCell<HashMap<u32, CtSnapshot>> = RefCell::new(HashMap::new());
    let sample: RefCell<HashMap<u32, (u64, u64)>> = RefCell::new(HashMap::new());
    let kinds: RefCell<BTreeMap<(u32, &'static str), u64>> = RefCell::new(BTreeMap::new());
    let dir = RefCell::new(ListenerDirectory::new());
    let budget: Budget<DropKey, &'static str> = Budget::new(args.out.lines_per_sec);
    let started = Instant::now();
    let comms: RefCell<HashMap<u32, String>> = RefCell::new(HashMap::new());
    let active: RefCell<std::collections::HashSet<u32>> =
        RefCell::new(std::collections::HashSet::new());
    let note_ns = |ns: u32| {
        if !first.borrow().contains_key(&ns) {
            let s = snapshot_in(ns, false);
            sample.borrow_mut().insert(ns, (s.count, s.max));
            first.borrow_mut().insert(ns, s);
        }
    };
    let print_aggregates = |lines: Vec<(u64, DropKey, &'static str, u64)>| {
        for (second, (ns, pid, daddr, dport), kind, n) in lines {
            let comm = comms.borrow().get(&pid).cloned();
            let id = dir
                .borrow_mut()
                .identities
                .get(pid, comm.as_deref().unwrap_or(""));
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
        note_ns(e.netns);
        let (count, max) = sample.borrow().get(&e.netns).copied().unwrap_or((0, 0));
        let in_use = ct_in_use(&active, e.netns, e.has_ct);
        let kind = drop_kind(e.has_ct, in_use);
        *kinds.borrow_mut().entry((e.netns, kind)).or_insert(0) += 1;
        // Inbound drops happen in softirq: the owner is the listener of the destination port.
        let (pid, comm) = if e.outbound {
            (e.tgid, e.comm.clone())
        } else {
            match dir
                .borrow_mut()
                .lookup(e.netns, 0, e.daddr, e.dport)
                .and_then(|i| i.primary().cloned())
            {
                Some(o) => (o.pid, o.comm),
                None => (0, String::new()),
            }
        };
        if pid != 0 && !comms.borrow().contains_key(&pid) && comms.borrow().len() < 65536 {
            comms.borrow_mut().insert(pid, comm.clone());
        }
        // Resolved at the process's first drop, while it is alive (its aggregated lines come later).
        let id = dir.borrow_mut().identities.get(pid, &comm);
        let key: DropKey = (e.netns, pid, e.daddr, e.dport);
        let (flushed, print) = budget.admit(e.ts_ns, &key, &kind);
        print_aggregates(flushed);
        if !print {
            return;
        }
        if args.out.json {
            out.emit(json!({
                "ts": clock.rfc3339(e.ts_ns), "event": "conntrack_drop", "kind": kind,
                "cause": (kind == "table_full").then_some("conntrack_full"), "count": 1, "netns": e.netns,
                "pid": (pid != 0).then_some(pid), "comm": (!comm.is_empty()).then_some(&comm),
                "pod": id.pod, "container": id.container,
                "direction": if e.outbound { "out" } else { "in" }, "proto": proto_name(e.proto),
                "saddr": e.saddr.to_string(), "sport": e.sport, "daddr": e.daddr.to_string(), "dport": e.dport,
                "ct_count": count, "ct_max": max,
            }).to_string());
        } else {
            out.header_once("TIME             NETNS       KIND        DIR  PROTO  SOURCE                 DESTINATION            COUNT/MAX      PROCESS");
            out.emit(format!(
                "{:<16} {:<11} {:<11} {:<4} {:<6} {:<22} {:<22} {:<14} {}",
                clock.short(e.ts_ns),
                e.netns,
                kind,
                if e.outbound { "out" } else { "in" },
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
        let nss: Vec<u32> = first.borrow().keys().copied().collect();
        for ns in nss {
            let s = snapshot_in(ns, false);
            if s.in_use {
                sample.borrow_mut().insert(ns, (s.count, s.max));
            }
        }
        out.flush();
    };
    let on_summary = |final_run: bool| {
        print_aggregates(budget.at_summary(final_run));
        let dur = started.elapsed().as_secs_f64();
        let lost = sum_per_cpu(&counts, d::COUNT_LOST);
        let unparsed = sum_per_cpu(&counts, d::COUNT_UNPARSED);
        let missed = loaded.missed_runs();
        let nss: Vec<u32> = first.borrow().keys().copied().collect();
        for ns in nss {
            let now = snapshot_in(ns, true);
            let before = first.borrow().get(&ns).cloned().unwrap_or_default();
            let delta = |k: &str| {
                now.stat
                    .get(k)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(before.stat.get(k).copied().unwrap_or(0))
            };
            let tf = kinds
                .borrow()
                .get(&(ns, "table_full"))
                .copied()
                .unwrap_or(0);
            let rule = kinds.borrow().get(&(ns, "rule")).copied().unwrap_or(0);
            let ev = evidence(
                &now,
                tf,
                rule,
                delta("early_drop"),
                dur,
                netns::enter_prefix(ns, host),
            );
            let findings = diagnose_conntrack(&ev);
            // Drops the kernel counted that never reached skb:kfree_skb as table-full frees
            // (seen on 6.18 in ~1 of 25 lab runs, 1–12 of ~480; an independent bpftrace
            // counter on the same tracepoint misses the same ones): shown, never hidden.
            let untraced = delta("drop").saturating_sub(tf);
            if args.out.json {
                out.emit(json!({"ts": clock.rfc3339(Clock::now_mono_ns()), "event": "conntrack_summary", "duration_s": (dur * 10.0).round() / 10.0, "netns": ns, "lost_events": lost, "missed_runs": missed, "unparsed_events": unparsed, "table_full": tf, "rule": rule, "stat_drop": delta("drop"), "untraced_drops": untraced, "stat_early_drop": delta("early_drop"), "stat_insert_failed": delta("insert_failed"), "ct_count": now.count, "ct_max": now.max, "top": ev.top, "causes": findings}).to_string());
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
    super::ring::run(
        ring,
        args.out.duration,
        args.out.summary_interval,
        on_record,
        on_tick,
        on_summary,
        || {
            eprintln!(
                "tcpq: tracing netfilter drops (conntrack table full or a rule) — Ctrl-C to stop"
            )
        },
    )?;
    drop(loaded);
    Ok(())
}

pub fn run_snapshot(args: ConntrackArgs) -> Result<i32> {
    let privileges = Privileges::current();
    if privileges.euid != 0 && !privileges.has(crate::kernel::env::cap::NET_ADMIN) {
        bail!(
            "tcpq conntrack needs root (it reads the conntrack table and traces drops): run it with sudo"
        );
    }
    let host = netns::current().unwrap_or(0);
    let ns = match &args.pid {
        Some(p) => {
            let f = PidFilter::resolve(p)?;
            f.pids
                .iter()
                .filter_map(|p| netns::of_pid(*p))
                .next()
                .unwrap_or(host)
        }
        None => host,
    };
    let before = snapshot_in(ns, false);
    if !before.in_use {
        if args.json {
            println!(
                "{}",
                json!({"event": "conntrack", "netns": ns, "in_use": false})
            );
        } else {
            println!(
                "conntrack not in use in network namespace {ns} (not loaded, or no rule there needs connection state)"
            );
        }
        return Ok(0);
    }
    let started = Instant::now();
    let mut traced: Option<(u64, u64)> = None;
    if !args.duration.is_zero() && privileges.can_load_bpf() {
        let mut loaded = probe::load(&[Family::Drop], &LoadOptions::default())?;
        let ring = loaded.take_ring(names::DROP_EVENTS)?;
        let counts = RefCell::new((0u64, 0u64));

        super::ring::run(
            ring,
            Some(args.duration),
            args.duration + Duration::from_secs(3600),
            |bytes| {
                if let Ok(e) = decode_drop(bytes)
                    && e.netfilter
                    && e.netns == ns
                {
                    let mut c = counts.borrow_mut();
                    if drop_kind(e.has_ct, true) == "table_full" {
                        c.0 += 1
                    } else {
                        c.1 += 1
                    }
                }
            },
            || {},
            |_| {},
            || {
                eprintln!(
                    "tcpq: watching netfilter drops for {:.0} s…",
                    args.duration.as_secs_f64()
                )
            },
        )?;
        drop(loaded);
        traced = Some(counts.into_inner());
    }
    let now = snapshot_in(ns, true);
    let dur = started.elapsed().as_secs_f64();
    let delta = |k: &str| {
        now.stat
            .get(k)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.stat.get(k).copied().unwrap_or(0))
    };
    let (tf, rule) = traced.unwrap_or((delta("drop"), 0));
    let ev = evidence(
        &now,
        tf,
        rule,
        delta("early_drop"),
        dur,
        netns::enter_prefix(ns, host),
    );
    let findings = diagnose_conntrack(&ev);
    if args.json {
        println!(
            "{}",
            json!({"event": "conntrack", "netns": ns, "in_use": true, "duration_s": (dur * 10.0).round() / 10.0, "ct_count": now.count, "ct_max": now.max,
                "headroom": now.max.saturating_sub(now.count), "buckets": now.buckets, "tcp_timeout_established": now.established_timeout,
                "stat": now.stat, "stat_drop": delta("drop"), "stat_early_drop": delta("early_drop"), "stat_insert_failed": delta("insert_failed"),
                "entries_source": now.entries_source,
                "table_full": tf, "rule": rule, "traced": traced.is_some(), "top": ev.top, "causes": findings})
        );
    } else {
        println!(
            "conntrack in network namespace {ns}: {} of {} entries ({} free), {} buckets, tcp established timeout {} s",
            now.count,
            now.max,
            now.max.saturating_sub(now.count),
            now.buckets,
            now.established_timeout
        );
        println!(
            "  over {dur:.1} s: table-full drops {tf}, rule drops {rule}, stat drop +{}, early_drop +{}, insert_failed +{}",
            delta("drop"),
            delta("early_drop"),
            delta("insert_failed")
        );
        let fmt = |v: &Vec<(String, u64)>| {
            v.iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!("  top sources: {}", fmt(&ev.top.by_source));
        println!("  top destination ports: {}", fmt(&ev.top.by_dport));
        println!(
            "  by state: {} · ESTABLISHED idle > 1 h: {}",
            fmt(&ev.top.by_state),
            ev.top.idle_established
        );
        if findings.is_empty() {
            println!(
                "  no problem found (headroom {:.0} %)",
                if now.max > 0 {
                    (now.max - now.count.min(now.max)) as f64 * 100.0 / now.max as f64
                } else {
                    0.0
                }
            );
        }
        for f in findings {
            println!("  cause {}: {}", f.cause, f.text);
            for fix in f.fix {
                println!("    fix: {fix}");
            }
        }
    }
    Ok(0)
}

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

/// `tcpq trace drops`: every TCP packet the kernel dropped, with the reason by name.
pub fn run_drops(args: TraceDropsArgs) -> Result<()> {
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
    let by_reason: RefCell<BTreeMap<String, u64>> = RefCell::new(BTreeMap::new());
    let budget: Budget<ReasonKey, u32> = Budget::new(args.out.lines_per_sec);
    let dir = RefCell::new(ListenerDirectory::new());
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
        *by_reason.borrow_mut().entry(reason.clone()).or_insert(0) += 1;
        let (pid, comm) = if e.outbound {
            (e.tgid, e.comm.clone())
        } else {
            match dir
                .borrow_mut()
                .lookup(e.netns, 0, e.daddr, e.dport)
                .and_then(|i| i.primary().cloned())
            {
                Some(o) => (o.pid, o.comm),
                None => (0, String::new()),
            }
        };
        let id = dir.borrow_mut().identities.get(pid, &comm);
        let key: ReasonKey = (e.netns, e.reason, e.daddr, e.dport);
        let (flushed, print) = budget.admit(e.ts_ns, &key, &e.reason);
        print_aggregates(flushed);
        if !print {
            return;
        }
        if args.out.json {
            out.emit(json!({
                "ts": clock.rfc3339(e.ts_ns), "event": "drop", "reason": reason, "count": 1, "netns": e.netns,
                "pid": (pid != 0).then_some(pid), "comm": (!comm.is_empty()).then_some(&comm),
                "pod": id.pod, "container": id.container,
                "direction": if e.outbound { "out" } else { "in" }, "proto": proto_name(e.proto),
                "saddr": e.saddr.to_string(), "sport": e.sport, "daddr": e.daddr.to_string(), "dport": e.dport,
                "tcp_flags": e.tcp_flags,
            }).to_string());
        } else {
            out.header_once("TIME             NETNS       REASON                     DIR  SOURCE                 DESTINATION            PROCESS");
            out.emit(format!(
                "{:<16} {:<11} {:<26} {:<4} {:<22} {:<22} {}",
                clock.short(e.ts_ns),
                e.netns,
                reason,
                if e.outbound { "out" } else { "in" },
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
        let lost = sum_per_cpu(&counts, d::COUNT_LOST);
        let unparsed = sum_per_cpu(&counts, d::COUNT_UNPARSED);
        let missed = loaded.missed_runs();
        let dur = started.elapsed().as_secs_f64();
        let r = by_reason.borrow();
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
    super::ring::run(
        ring,
        args.out.duration,
        args.out.summary_interval,
        on_record,
        on_tick,
        on_summary,
        || {
            eprintln!(
                "tcpq: tracing TCP drops by reason ({n_reasons} reasons known from BTF) — Ctrl-C to stop"
            )
        },
    )?;
    drop(loaded);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_lines_name_the_pod_and_container() {
        let pod = Identity::new(Some("shop/api-0".into()), Some("app".into()));
        assert_eq!(
            process_text(12, "curl", &pod),
            "12/curl  pod shop/api-0, container app"
        );
        assert_eq!(process_text(12, "curl", &Identity::default()), "12/curl");
        assert_eq!(process_text(0, "", &pod), "-");
    }
}
