//! Rendering of listen-path events, aggregated lines and summaries as text (ss-like columns) or
//! NDJSON (field names documented in README.md: a public interface). Pure.
use std::net::IpAddr;

use serde_json::{Value, json};

use super::{
    aggregate::{AggregateLine, KindCounts},
    decode::{OverflowEvent, OverflowKind},
};
use crate::{
    diagnosis::Finding,
    render::{Clock, endpoint},
    snapshot::listeners::ListenerInfo,
};

fn process_label(info: Option<&ListenerInfo>) -> String {
    match info.and_then(|i| i.primary()) {
        Some(o) => {
            let more = info.map(|i| i.owners.len()).unwrap_or(1);
            if more > 1 {
                format!("{}/{} +{}", o.pid, o.comm, more - 1)
            } else {
                format!("{}/{}", o.pid, o.comm)
            }
        }
        None => "-".into(),
    }
}

/// The owner's `pod NS/NAME, container NAME` (snapshot::container::label), None on the host.
fn pod_label(info: Option<&ListenerInfo>) -> Option<String> {
    info.and_then(|i| crate::snapshot::container::label(i.pod.as_deref(), i.container.as_deref()))
}

/// What an event line appends after the process: `  pod NS/NAME, container NAME`.
fn pod_suffix(info: Option<&ListenerInfo>) -> String {
    pod_label(info)
        .map(|t| format!("  {t}"))
        .unwrap_or_default()
}

pub const TEXT_HEADER: &str = "TIME             NETNS       KIND            LISTENER               CLIENT                 QUEUE      PROCESS";

pub fn event_text(clock: &Clock, ev: &OverflowEvent, info: Option<&ListenerInfo>) -> String {
    format!(
        "{:<16} {:<11} {:<15} {:<22} {:<22} {:<10} {}{}",
        clock.short(ev.ts_ns),
        ev.netns,
        ev.kind.id(),
        endpoint(ev.laddr, ev.lport),
        endpoint(ev.raddr, ev.rport),
        format!("{}/{}", ev.queue, ev.backlog),
        process_label(info),
        pod_suffix(info),
    )
}

/// `line` with the listener's owner: `pid` and `comm` of the first owner, every owner's `pids`,
/// and its `pod` and `container` (null, and no pids, on the host or when unknown).
fn with_owner(mut line: Value, info: Option<&ListenerInfo>) -> Value {
    let first = info.and_then(|i| i.primary());
    let pids: Vec<u32> = info
        .map(|i| i.owners.iter().map(|o| o.pid).collect())
        .unwrap_or_default();
    if let Value::Object(fields) = &mut line {
        fields.insert("pid".into(), json!(first.map(|o| o.pid)));
        fields.insert("comm".into(), json!(first.map(|o| &o.comm)));
        fields.insert("pids".into(), json!(pids));
        fields.insert("pod".into(), json!(info.and_then(|i| i.pod.as_ref())));
        fields.insert(
            "container".into(),
            json!(info.and_then(|i| i.container.as_ref())),
        );
    }
    line
}

pub fn event_json(clock: &Clock, ev: &OverflowEvent, info: Option<&ListenerInfo>) -> Value {
    let fields = json!({
        "ts": clock.rfc3339(ev.ts_ns),
        "event": ev.kind.event(),
        "kind": ev.kind.id(),
        "cause": ev.kind.cause(),
        "count": 1,
        "netns": ev.netns,
        "laddr": ev.laddr.to_string(),
        "lport": ev.lport,
        "raddr": ev.raddr.to_string(),
        "rport": ev.rport,
        "backlog": ev.backlog,
        "queue": ev.queue,
        "synq": ev.synq,
    });
    with_owner(fields, info)
}

pub fn aggregate_text(clock: &Clock, line: &AggregateLine, info: Option<&ListenerInfo>) -> String {
    let t = clock.short(line.second * 1_000_000_000);
    format!(
        "{:<16} {:<11} {:<15} {:<22} {:<22} {:<10} {}{}",
        format!("{} +1s", t.get(..8).unwrap_or(&t)),
        line.key.netns,
        format!("{}×{}", line.kind.id(), line.count),
        endpoint(line.key.laddr, line.key.lport),
        format!("({} more, {} clients)", line.count, line.clients),
        format!("{}/{}", line.last_queue, line.backlog),
        process_label(info),
        pod_suffix(info),
    )
}

pub fn aggregate_json(clock: &Clock, line: &AggregateLine, info: Option<&ListenerInfo>) -> Value {
    let fields = json!({
        "ts": clock.rfc3339(line.second * 1_000_000_000),
        "event": line.kind.event(),
        "kind": line.kind.id(),
        "cause": line.kind.cause(),
        "count": line.count,
        "aggregated": true,
        "clients": line.clients,
        "netns": line.key.netns,
        "laddr": line.key.laddr.to_string(),
        "lport": line.key.lport,
        "raddr": Value::Null,
        "rport": Value::Null,
        "backlog": line.backlog,
        "queue": line.last_queue,
    });
    with_owner(fields, info)
}

pub fn counts_json(c: &KindCounts) -> Value {
    let mut m = serde_json::Map::new();
    for k in OverflowKind::ALL {
        m.insert(k.id().into(), json!(c.get(k)));
    }
    Value::Object(m)
}

pub fn counts_text(c: &KindCounts) -> String {
    OverflowKind::ALL
        .iter()
        .filter(|k| c.get(**k) > 0)
        .map(|k| format!("{} {}", k.id(), c.get(*k)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One listener's block of a summary.
pub struct ListenerSummary<'a> {
    pub netns: u32,
    pub laddr: IpAddr,
    pub lport: u16,
    pub info: Option<&'a ListenerInfo>,
    pub counts: KindCounts,
    pub backlog: u32,
    pub last_queue: u32,
    pub somaxconn: Option<u32>,
    pub listen_arg: Option<i32>,
    pub accepts: Option<u64>,
    pub clients: usize,
    pub findings: Vec<Finding>,
}

/// Run-wide facts shown with every summary.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunFacts {
    /// Ring-buffer records lost (the per-kind kernel counts stay exact).
    pub lost: u64,
    /// Verdicts confirmed from the kernel's actions (true) or predicted from the queues.
    pub confirmed: bool,
    /// Drops counted as `syn`/`ack` although neither look at the queues showed them full.
    pub other_drops: u64,
    /// Packets whose outcome was not observed (confirm mode only).
    pub unresolved: u64,
    /// Cookie SYN-ACKs reported from the SYN-ACK alone (their SYN was not recorded).
    pub cookies_unmatched: u64,
    /// Events the kernel counted per listener without a ring record (over the line budget, or
    /// lost): in the listener counts and aggregated lines, not as lines of their own.
    pub unsent: u64,
    /// Program runs the kernel skipped (already running on that CPU): events possibly unseen.
    pub missed_runs: u64,
    /// SYNs/ACKs not followed through: every queue of their listener was far below its limit.
    pub far_from_limits: u64,
    /// SYN records whose free no outcome hook saw, decided as consumed when the next packet
    /// reached their CPU (kernel `kind::LATE_RESOLVED`).
    pub late_resolved: u64,
}

/// ` ── what: n` for a summary line, nothing when n is 0.
fn aside(what: &str, n: u64) -> String {
    if n > 0 {
        format!(" ── {what}: {n}")
    } else {
        String::new()
    }
}

pub fn summary_text(
    duration_s: f64,
    facts: &RunFacts,
    kernel_totals: &KindCounts,
    listeners: &[ListenerSummary],
) -> String {
    let lost = facts.lost;
    let totals = if kernel_totals.is_empty() {
        "nothing".to_string()
    } else {
        counts_text(kernel_totals)
    };
    let mut s = format!(
        "── summary over {duration_s:.1} s ── kernel counted: {totals} ── verdicts {} ── lost events: {lost}{}{}{}{}\n",
        if facts.confirmed {
            "confirmed"
        } else {
            "predicted"
        },
        if lost > 0 {
            " (ring buffer full: per-kind and per-listener counts stay exact, per-client lines are missing)"
        } else {
            ""
        },
        aside(
            "counted per listener without a line (over the kernel's line budget)",
            facts.unsent.saturating_sub(lost)
        ),
        aside(
            "drops with the queue seen below its limit (raced)",
            facts.other_drops
        ),
        aside(
            "program runs the kernel skipped (already running on that CPU)",
            facts.missed_runs
        ),
    );
    if listeners.is_empty() {
        s.push_str("  no listener refused a connection\n");
    }
    for l in listeners {
        s.push_str(&format!(
            "  {} netns {} {}{}: {} · queue {}/{} · listen() {} · somaxconn {} · accepts {} · clients {}\n",
            endpoint(l.laddr, l.lport),
            l.netns,
            process_label(l.info),
            pod_label(l.info).map(|t| format!(" ({t})")).unwrap_or_default(),
            counts_text(&l.counts),
            l.last_queue,
            l.backlog,
            l.listen_arg.map(|a| format!("{a} (seen)")).unwrap_or_else(|| "not seen".into()),
            l.somaxconn.map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
            l.accepts.map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
            l.clients,
        ));
        for f in &l.findings {
            s.push_str(&format!("    cause {}: {}\n", f.cause, f.text));
            for fix in &f.fix {
                s.push_str(&format!("      fix: {fix}\n"));
            }
        }
    }
    s
}

pub fn summary_json(
    clock: &Clock,
    now_mono: u64,
    duration_s: f64,
    facts: &RunFacts,
    kernel_totals: &KindCounts,
    listeners: &[ListenerSummary],
) -> Value {
    let ls: Vec<Value> = listeners
        .iter()
        .map(|l| {
            let fields = json!({
                "netns": l.netns,
                "laddr": l.laddr.to_string(),
                "lport": l.lport,
                "counts": counts_json(&l.counts),
                "count": l.counts.refused(),
                "backlog": l.backlog,
                "queue": l.last_queue,
                "somaxconn": l.somaxconn,
                "listen_arg": l.listen_arg,
                "listen_arg_source": if l.listen_arg.is_some() { "seen" } else { "inferred" },
                "accepts": l.accepts,
                "clients": l.clients,
                "causes": l.findings,
            });
            with_owner(fields, l.info)
        })
        .collect();
    json!({
        "ts": clock.rfc3339(now_mono),
        "event": "summary",
        "duration_s": (duration_s * 10.0).round() / 10.0,
        "lost_events": facts.lost,
        "verdicts": if facts.confirmed { "confirmed" } else { "predicted" },
        "other_drops": facts.other_drops,
        "unresolved": facts.unresolved,
        "cookies_unmatched": facts.cookies_unmatched,
        "unsent_events": facts.unsent,
        "missed_runs": facts.missed_runs,
        "far_from_limits": facts.far_from_limits,
        "late_resolved": facts.late_resolved,
        "kernel_counts": counts_json(kernel_totals),
        "listeners": ls,
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::snapshot::procs::Owner;

    fn ev() -> OverflowEvent {
        OverflowEvent {
            kind: OverflowKind::Ack,
            ts_ns: 1_500_000_000,
            netns: 4026531840,
            cookie: 9,
            laddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            lport: 8080,
            raddr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
            rport: 40000,
            queue: 5,
            backlog: 4,
            synq: 1,
        }
    }

    fn info() -> ListenerInfo {
        ListenerInfo {
            inode: 1,
            backlog: 4,
            owners: vec![
                Owner {
                    pid: 10,
                    comm: "nginx".into(),
                },
                Owner {
                    pid: 11,
                    comm: "nginx".into(),
                },
            ],
            listen_arg: Some(4),
            pod: Some("shop/web-1".into()),
            container: Some("nginx".into()),
        }
    }

    #[test]
    fn json_event_has_the_public_fields() {
        let clock = Clock::fixed(0);
        let v = event_json(&clock, &ev(), Some(&info()));
        for k in [
            "ts", "event", "kind", "count", "netns", "laddr", "lport", "raddr", "rport", "pid",
            "comm", "backlog", "queue",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["ts"], "1970-01-01T00:00:01.500000Z");
        assert_eq!(v["kind"], "ack");
        assert_eq!(v["event"], "overflow");
        assert_eq!(v["pid"], 10);
        assert_eq!(v["pids"], json!([10, 11]));
        assert_eq!(v["pod"], "shop/web-1");
        assert_eq!(v["container"], "nginx");
        assert_eq!(v["raddr"], "127.0.0.2");
    }

    #[test]
    fn a_line_without_a_known_owner_has_null_owner_fields() {
        let clock = Clock::fixed(0);
        let v = event_json(&clock, &ev(), None);
        assert_eq!(
            (
                &v["pid"],
                &v["comm"],
                &v["pids"],
                &v["pod"],
                &v["container"]
            ),
            (
                &Value::Null,
                &Value::Null,
                &json!([]),
                &Value::Null,
                &Value::Null
            )
        );
        assert_eq!(v["queue"], ev().queue);
    }

    #[test]
    fn text_line_columns() {
        let clock = Clock::fixed(0);
        let t = event_text(&clock, &ev(), Some(&info()));
        assert!(t.starts_with("00:00:01.500000"), "{t}");
        assert!(
            t.contains("127.0.0.1:8080")
                && t.contains("127.0.0.2:40000")
                && t.contains("5/4")
                && t.contains("10/nginx +1"),
            "{t}"
        );
        assert!(
            t.ends_with("10/nginx +1  pod shop/web-1, container nginx"),
            "{t}"
        );
        let host = ListenerInfo {
            pod: None,
            container: None,
            ..info()
        };
        assert!(
            event_text(&clock, &ev(), Some(&host)).ends_with("10/nginx +1"),
            "no suffix on the host"
        );
        let none = event_text(&clock, &ev(), None);
        assert!(none.trim_end().ends_with('-'));
        assert_eq!(endpoint("::1".parse().unwrap(), 80), "[::1]:80");
    }

    #[test]
    fn summary_without_listeners_does_not_panic() {
        let t = summary_text(0.0, &RunFacts::default(), &KindCounts::default(), &[]);
        assert!(t.contains("no listener refused"));
        let facts = RunFacts {
            lost: 3,
            ..Default::default()
        };
        let v = summary_json(
            &Clock::fixed(0),
            0,
            0.0,
            &facts,
            &KindCounts::default(),
            &[],
        );
        assert_eq!(v["lost_events"], 3);
        assert_eq!(v["listeners"], json!([]));
    }
}
