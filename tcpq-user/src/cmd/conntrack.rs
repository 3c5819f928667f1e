//! `tcpq conntrack`: the table per namespace (headroom, drops, top consumers, timeouts and what
//! to change).
use std::{cell::RefCell, time::Instant};

use anyhow::{Result, bail};
use serde_json::json;
use tcpq_common::names;

use super::filter::PidFilter;
use super::ring::{Handlers, Schedule};
use crate::{
    cli::ConntrackArgs,
    family::conntrack::{
        decode::{decode_drop, drop_kind},
        diagnose::diagnose_conntrack,
        snapshot::snapshot_in,
    },
    kernel::{
        env::Privileges,
        probe::{self, Family, LoadOptions},
    },
    snapshot::netns,
};

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

        let on_record = |bytes: &[u8]| {
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
        };
        let banner = || {
            eprintln!(
                "tcpq: watching netfilter drops for {:.0} s…",
                args.duration.as_secs_f64()
            )
        };
        let handlers = Handlers::new(on_record, || {}, |_| {});
        super::ring::run(ring, Schedule::once(args.duration), banner, handlers);
        drop(loaded);
        traced = Some(counts.into_inner());
    }
    let now = snapshot_in(ns, true);
    let dur = started.elapsed().as_secs_f64();
    let delta = |k: &str| now.stat_since(&before, k);
    let (tf, rule) = traced.unwrap_or((delta("drop"), 0));
    let ev = now.evidence(&before, tf, rule, dur, netns::enter_prefix(ns, host));
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
