//! `top -b`: a frame as plain text, and the small formatters the other renderers share.
use std::{collections::BTreeMap, fmt::Write as _};

use super::*;
use crate::snapshot::container;

/// A value, or "-" when unknown.
pub fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// Rates per kind or result (`syn 2.5, ack 1`), or "-" when there are none.
pub fn rates_text<K: std::fmt::Display>(per_s: &BTreeMap<K, f64>) -> String {
    if per_s.is_empty() {
        return "-".into();
    }
    per_s
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The kernel counters that moved (`name N/s`) joined by `separator`, or "no change".
pub fn counters_text(counters: &[CounterRate], separator: &str) -> String {
    if counters.is_empty() {
        return "no change".into();
    }
    counters
        .iter()
        .map(|c| format!("{} {}/s", c.name, c.per_s))
        .collect::<Vec<_>>()
        .join(separator)
}

pub fn owner_text(pid: Option<u32>, process: Option<&str>) -> String {
    match (pid, process) {
        (Some(p), Some(c)) => format!("{c}[{p}]"),
        (Some(p), None) => format!("[{p}]"),
        (None, Some(c)) => c.to_string(),
        (None, None) => "-".into(),
    }
}

/// " (+N/s counted in the kernel)" when refusals went over the line budget, else "".
pub fn tallied_note(per_s: f64) -> String {
    if per_s > 0.0 {
        format!(" (+{per_s:.0}/s counted in the kernel)")
    } else {
        String::new()
    }
}

/// `top -b`: one plain-text frame.
/// "listen: tracing for 12 s (12 refused at …) · connect: watching · …": what each family
/// attaches now and why.
pub fn families_text(f: &Frame) -> String {
    if f.families.is_empty() {
        return "-".into();
    }
    f.families
        .iter()
        .map(|fam| match fam.state {
            "tracing" if fam.since > 0 => format!(
                "{}: tracing for {} s ({})",
                fam.family,
                f.time.saturating_sub(fam.since),
                fam.why
            ),
            "watching" => format!("{}: watching counters", fam.family),
            other => format!("{}: {other} ({})", fam.family, fam.why),
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

pub fn render_text(f: &Frame) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "tcpq top — {} — kernel {} — hooks {}/{} — {:.0} events/s{} — lost {} ({} this interval) — interval {:.1} s",
        f.host,
        f.kernel,
        f.hooks_active,
        f.hooks_total,
        f.events_per_s,
        tallied_note(f.tallied_per_s),
        f.lost_total,
        f.lost_interval,
        f.interval_s
    );
    let _ = writeln!(
        s,
        "families: {} — {} namespaces watched",
        families_text(f),
        f.namespaces
    );
    if !f.hooks_inactive.is_empty() {
        let _ = writeln!(s, "inactive hooks: {}", f.hooks_inactive.join("; "));
    }
    if f.evicted > 0 {
        let _ = writeln!(s, "table entries not recorded (tables full): {}", f.evicted);
    }
    if f.frames_dropped > 0 {
        let _ = writeln!(
            s,
            "frames dropped: output stalled: {} since the last frame written ({} in all)",
            f.frames_dropped, f.frames_dropped_total
        );
    }
    let _ = writeln!(s, "kernel counters: {}", counters_text(&f.counters, ", "));
    let _ = writeln!(s, "CAUSES NOW");
    if f.causes.is_empty() {
        let _ = writeln!(s, "  none");
    }
    for (i, c) in f.causes.iter().enumerate() {
        let _ = writeln!(
            s,
            "  {}. {:<28} {:<32} {:>9.1}/s  {} — {}",
            i + 1,
            c.cause,
            format!("{} {}", c.place, owner_text(c.pid, c.process.as_deref())),
            c.impact_per_s,
            c.evidence,
            c.fix.first().map(String::as_str).unwrap_or("")
        );
    }
    let _ = writeln!(
        s,
        "LISTENERS{}",
        if f.listen_kinds == "predicted" {
            " (kinds predicted at arrival, capped at the exact REFUSED)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "  {:<10} {:<24} {:<20} {:>11} {:>9} {:<28} {:>9} {:>9} {:>9}",
        "NETNS",
        "LISTENER",
        "PROCESS",
        "QUEUE",
        "REFUSED/s",
        "BY KIND/s",
        "ACCEPT/s",
        "WAITp99us",
        "IDLE/ALL"
    );
    for l in &f.listeners {
        let _ = writeln!(
            s,
            "  {:<10} {:<24} {:<20} {:>11} {:>9.1} {:<28} {:>9.1} {:>9} {:>9}",
            l.netns,
            l.listener,
            owner_text(l.pid, l.process.as_deref()),
            format!("{}/{}", opt(l.queue), opt(l.backlog)),
            l.refused_per_s,
            {
                let mut k = rates_text(&l.per_s);
                if let Some(n) = l.untraced.filter(|n| *n > 0) {
                    k.push_str(&format!(" +{n} untraced"));
                }
                if let Some(n) = l.uncertain.filter(|n| *n > 0) {
                    k.push_str(&format!(" ({n} uncertain)"));
                }
                k
            },
            l.accepts_per_s,
            opt(l.accept_wait_p99_us),
            format!("{}/{}", opt(l.idle_acceptors), opt(l.acceptors)),
        );
        if let Some(cg) = &l.cgroup {
            let _ = writeln!(s, "             {}", container::describe(cg));
        }
    }
    for u in &f.refused_unattributed {
        let _ = writeln!(
            s,
            "  {:<10} {:<24} refused {} (listeners created and closed between two readings)",
            u.netns, "(unlisted)", u.refused
        );
    }
    let _ = writeln!(s, "OUTBOUND");
    let _ = writeln!(
        s,
        "  {:<10} {:<20} {:<24} {:>10} {:>10} {:<24} {:>12} {:>9} {:>10}",
        "NETNS",
        "PROCESS",
        "DESTINATION",
        "CONNECT/s",
        "FAILED/s",
        "BY RESULT/s",
        "PORTS",
        "TIME_WAIT",
        "CONNp99us"
    );
    for o in f.outbound.iter().take(20) {
        let _ = writeln!(
            s,
            "  {:<10} {:<20} {:<24} {:>10.1} {:>10.1} {:<24} {:>12} {:>9} {:>10}",
            o.netns,
            owner_text(Some(o.pid), Some(&o.process)),
            o.destination,
            o.connects_per_s,
            o.failures_per_s,
            rates_text(&o.failures_by_result),
            format!("{}/{}", opt(o.ports_used), opt(o.ports_usable)),
            opt(o.time_wait),
            opt(o.connect_p99_us),
        );
    }
    let _ = writeln!(s, "CONNTRACK");
    for c in &f.conntrack {
        let _ = writeln!(s, "  {}", c.describe());
    }
    s
}

pub fn pct(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 * 100.0 / of as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::session::Aggregates;

    #[test]
    fn rates_and_counters_are_listed_or_say_there_are_none() {
        let by_result = BTreeMap::from([("refused".to_string(), 2.5), ("timeout".into(), 1.0)]);
        assert_eq!(rates_text(&by_result), "refused 2.5, timeout 1");
        assert_eq!(rates_text(&BTreeMap::<&str, f64>::new()), "-");
        let counters = [
            CounterRate {
                name: "ListenDrops".into(),
                per_s: 3.0,
            },
            CounterRate {
                name: "TCPTimeouts".into(),
                per_s: 0.5,
            },
        ];
        assert_eq!(
            counters_text(&counters, " · "),
            "ListenDrops 3/s · TCPTimeouts 0.5/s"
        );
        assert_eq!(counters_text(&[], ", "), "no change");
    }

    /// A listener's guessed share and a namespace's unlisted refusals reach the frame, and
    /// the listener's `refused` with `refused_unattributed` is the namespace's whole count.
    #[test]
    fn uncertain_and_unattributed_refusals_are_shown() {
        let agg = Aggregates::with_refusals(7, 8080, 10, 4, 3);
        let f = build(Header::default(), &agg, &[], &Snapshots::default(), 1.0);
        assert_eq!(f.listeners[0].refused, Some(10));
        assert_eq!(f.listeners[0].uncertain, Some(4));
        assert_eq!(
            f.refused_unattributed,
            vec![Unattributed {
                netns: 7,
                refused: 3
            }]
        );
        let text = render_text(&f);
        assert!(text.contains("(4 uncertain)"), "{text}");
        assert!(
            text.contains("(unlisted)") && text.contains("refused 3"),
            "{text}"
        );
    }
}
