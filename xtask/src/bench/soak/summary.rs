//! The soak's verdicts — RSS flat after the warm-up, labels bounded, scrapes' p99, descriptors
//! back at idle — and the report rows that show them.
use std::collections::BTreeMap;

use super::{
    TOP_K,
    page::{Page, Scrape},
    resources::{Idle, Resources},
};

/// The soak's judgement from its recorded samples (pure: unit-tested).
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Summary {
    pub secs: f64,
    /// The first and last windows' length (a minute, or a fifth of a shorter run).
    pub window_s: f64,
    pub rss_first_mib: f64,
    pub rss_last_mib: f64,
    pub rss_max_mib: f64,
    /// RSS at 20 % of the run, and the last window's max minus it.
    pub rss_base_mib: f64,
    pub rss_growth_mib: f64,
    /// "flat: +0.4 MiB (< 2 MiB)" and whether it passed.
    pub rss_verdict: String,
    pub rss_flat: bool,
    pub series_first: usize,
    pub series_last: usize,
    pub series_max: usize,
    pub sets_first: usize,
    pub sets_last: usize,
    pub sets_max: usize,
    /// The most distinct values any one label of any family had, with where.
    pub label_values_max: usize,
    pub label_values_where: String,
    pub bytes_first: usize,
    pub bytes_last: usize,
    pub bytes_max: usize,
    pub scrapes: usize,
    pub scrape_failures: usize,
    pub scrape_p99_ms: f64,
    pub scrape_max_ms: f64,
    pub lost: f64,
    /// Where the lost events moved: the lab running at the scrape that saw each increase.
    pub lost_by_lab: BTreeMap<&'static str, f64>,
    pub lost_by: BTreeMap<String, f64>,
    pub folded: f64,
    pub fds_first: usize,
    pub fds_last: usize,
    pub fds_max: usize,
    /// tcpq's fds with no lab running: before the first lab, and once the last one's namespaces
    /// are gone (tier 0 lets a namespace go within a second of its disappearance).
    pub fds_idle: Option<(Idle, Idle)>,
}

/// RSS flat: grew less than 5 % or less than 2 MiB from 20 % into the run to the last window's
/// maximum (the first fifth is warm-up: maps, page cache of the binary, label tables filling).
pub(super) const FLAT_PCT: f64 = 5.0;

pub(super) const FLAT_MIB: f64 = 2.0;

fn p99(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    // Nearest rank.
    let rank = ((v.len() as f64) * 0.99).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub(super) fn summarize(
    secs: f64,
    scrapes: &[Scrape],
    failures: usize,
    resources: &[Resources],
    fds_idle: Option<(Idle, Idle)>,
) -> Summary {
    let window_s = 60f64.min(secs / 5.0);
    let mib = |kib: u64| kib as f64 / 1024.0;
    let rss_max_in = |lo: f64, hi: f64| {
        resources
            .iter()
            .filter(|r| r.at_s >= lo && r.at_s <= hi)
            .map(|r| mib(r.rss_kib))
            .fold(0.0, f64::max)
    };
    let rss_first_mib = rss_max_in(0.0, window_s);
    let rss_last_mib = rss_max_in(secs - window_s, f64::MAX);
    let rss_max_mib = resources.iter().map(|r| mib(r.rss_kib)).fold(0.0, f64::max);
    let rss_base_mib = resources
        .iter()
        .find(|r| r.at_s >= secs * 0.2)
        .or(resources.last())
        .map(|r| mib(r.rss_kib))
        .unwrap_or(0.0);
    let rss_growth_mib = rss_last_mib - rss_base_mib;
    let growth_pct = if rss_base_mib > 0.0 {
        rss_growth_mib / rss_base_mib * 100.0
    } else {
        0.0
    };
    let (rss_flat, rss_verdict) = if resources.len() < 2 {
        (false, "not judged: fewer than 2 readings".to_string())
    } else if rss_growth_mib < FLAT_MIB {
        (
            true,
            format!("flat: {rss_growth_mib:+.1} MiB after the first 20 % (< {FLAT_MIB} MiB)"),
        )
    } else if growth_pct < FLAT_PCT {
        (
            true,
            format!("flat: {growth_pct:+.1} % after the first 20 % (< {FLAT_PCT} %)"),
        )
    } else {
        (
            false,
            format!(
                "GROWING: {rss_growth_mib:+.1} MiB = {growth_pct:+.1} % after the first 20 % (≥ {FLAT_MIB} MiB and ≥ {FLAT_PCT} %)"
            ),
        )
    };
    let total = |p: &Page| p.series.values().sum::<usize>();
    let sets = |p: &Page| p.label_sets.values().sum::<usize>();
    let first = scrapes.first().map(|s| &s.page);
    let last = scrapes.last().map(|s| &s.page);
    let (label_values_max, label_values_where) = scrapes
        .iter()
        .flat_map(|s| s.page.label_values.iter())
        .max_by_key(|(_, n)| **n)
        .map(|((f, l), n)| (*n, format!("{f}{{{l}}}")))
        .unwrap_or_default();
    let ms: Vec<f64> = scrapes.iter().map(|s| s.ms).collect();
    let mut lost_by_lab: BTreeMap<&'static str, f64> = BTreeMap::new();
    let mut seen = 0.0;
    for s in scrapes {
        if s.page.lost > seen {
            *lost_by_lab.entry(s.lab).or_default() += s.page.lost - seen;
            seen = s.page.lost;
        }
    }
    Summary {
        secs,
        window_s,
        rss_first_mib,
        rss_last_mib,
        rss_max_mib,
        rss_base_mib,
        rss_growth_mib,
        rss_verdict,
        rss_flat,
        series_first: first.map(total).unwrap_or(0),
        series_last: last.map(total).unwrap_or(0),
        series_max: scrapes.iter().map(|s| total(&s.page)).max().unwrap_or(0),
        sets_first: first.map(sets).unwrap_or(0),
        sets_last: last.map(sets).unwrap_or(0),
        sets_max: scrapes.iter().map(|s| sets(&s.page)).max().unwrap_or(0),
        label_values_max,
        label_values_where,
        bytes_first: scrapes.first().map(|s| s.bytes).unwrap_or(0),
        bytes_last: scrapes.last().map(|s| s.bytes).unwrap_or(0),
        bytes_max: scrapes.iter().map(|s| s.bytes).max().unwrap_or(0),
        scrapes: scrapes.len(),
        scrape_failures: failures,
        scrape_p99_ms: p99(&ms),
        scrape_max_ms: ms.iter().copied().fold(0.0, f64::max),
        // Counters: the last page holds the run's totals.
        lost: last.map(|p| p.lost).unwrap_or(0.0),
        lost_by: last.map(|p| p.lost_by.clone()).unwrap_or_default(),
        lost_by_lab,
        folded: last.map(|p| p.folded).unwrap_or(0.0),
        fds_first: resources.first().map(|r| r.fds).unwrap_or(0),
        fds_last: resources.last().map(|r| r.fds).unwrap_or(0),
        fds_max: resources.iter().map(|r| r.fds).max().unwrap_or(0),
        fds_idle,
    }
}

/// Fds before → after with no lab running: a leak when they grew while the machine's
/// namespaces did not (each watched namespace holds a few).
fn idle_verdict(idle: Option<(Idle, Idle)>) -> String {
    let Some((b, a)) = idle else {
        return "not read".to_string();
    };
    let seen = format!(
        "{} → {} ({} → {} namespaces on the machine)",
        b.fds, a.fds, b.namespaces, a.namespaces
    );
    if a.fds <= b.fds {
        seen
    } else if a.namespaces <= b.namespaces {
        format!("{seen}: LEAKED {}", a.fds - b.fds)
    } else {
        format!("{seen}: not comparable, more namespaces")
    }
}

/// The soak's table (markdown), targets in the last column.
pub(super) fn rows(s: &Summary, labs: &str) -> String {
    let lost_by = s
        .lost_by
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(k, v)| format!("{k}: {v}"))
        .chain(
            s.lost_by_lab
                .iter()
                .map(|(lab, v)| format!("{v} while {lab} ran")),
        )
        .collect::<Vec<_>>()
        .join(", ");
    let w = if s.window_s >= 60.0 {
        "minute".to_string()
    } else {
        format!("{:.0} s", s.window_s)
    };
    format!(
        "| measure | value | target |\n|---|---|---|\n\
         | labs run (failed) | {labs} | |\n\
         | RSS first {w} → last {w} (max) | {:.1} → {:.1} MiB ({:.1}) | flat |\n\
         | RSS from 20 % into the run to the last {w}'s max | {:.1} → {:.1} MiB: {} | < {FLAT_PCT} % or < {FLAT_MIB} MiB |\n\
         | series count first → last (max) | {} → {} ({}) | bounded |\n\
         | label sets (all families, `le` aside) first → last (max) | {} → {} ({}) | bounded |\n\
         | distinct values of one label, max over families and scrapes | {} ({}){} | ≤ top-k + `other` = {} |\n\
         | labels folded into `other` (tcpq_labels_folded, at the end) | {} | |\n\
         | response size first → last (max) | {:.1} → {:.1} KiB ({:.1}) | |\n\
         | scrape time p99 / max ({} scrapes, {} failed) | {:.1} / {:.1} ms | < 50 ms, 0 failed |\n\
         | lost events (tcpq_lost_events_total, at the end) | {}{} | 0 |\n\
         | fds first → last (max; labs' namespaces come and go) | {} → {} ({}) | flat |\n\
         | fds with no lab running, before → after the soak | {} | equal (no leak) |\n",
        s.rss_first_mib,
        s.rss_last_mib,
        s.rss_max_mib,
        s.rss_base_mib,
        s.rss_last_mib,
        s.rss_verdict,
        s.series_first,
        s.series_last,
        s.series_max,
        s.sets_first,
        s.sets_last,
        s.sets_max,
        s.label_values_max,
        s.label_values_where,
        if s.label_values_max > TOP_K + 1 {
            ": OVER the bound"
        } else {
            ""
        },
        TOP_K + 1,
        s.folded,
        s.bytes_first as f64 / 1024.0,
        s.bytes_last as f64 / 1024.0,
        s.bytes_max as f64 / 1024.0,
        s.scrapes,
        s.scrape_failures,
        s.scrape_p99_ms,
        s.scrape_max_ms,
        s.lost,
        if lost_by.is_empty() {
            String::new()
        } else {
            format!(" ({lost_by})")
        },
        s.fds_first,
        s.fds_last,
        s.fds_max,
        idle_verdict(s.fds_idle),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::soak::page::{parse_page, tests::PAGE};

    fn idle(fds: usize, namespaces: usize) -> Idle {
        Idle { fds, namespaces }
    }

    fn res(at_s: f64, mib: f64, fds: usize) -> Resources {
        Resources {
            at_s,
            rss_kib: (mib * 1024.0) as u64,
            fds,
        }
    }

    fn scrape_of(ms: f64, page: &str) -> Scrape {
        Scrape {
            lab: "storm",
            ms,
            bytes: page.len(),
            page: parse_page(page),
        }
    }

    #[test]
    fn rss_flat_by_mib_or_percent_after_the_warm_up() {
        // Warm-up growth (first 20 %) does not count; +1 MiB after it is flat by MiB.
        let r: Vec<Resources> = (0..=60)
            .map(|i| {
                res(
                    i as f64 * 10.0,
                    if i < 12 {
                        10.0 + i as f64
                    } else {
                        22.0 + (i as f64 - 12.0) / 48.0
                    },
                    20,
                )
            })
            .collect();
        let s = summarize(600.0, &[], 0, &r, None);
        assert_eq!(s.window_s, 60.0);
        assert!(s.rss_flat, "{}", s.rss_verdict);
        assert!(s.rss_verdict.contains("MiB"), "{}", s.rss_verdict);
        assert_eq!(s.rss_max_mib, 23.0);
        // A big process growing 3 MiB (< 5 %) is flat by percent.
        let r = vec![
            res(0.0, 100.0, 20),
            res(130.0, 100.0, 20),
            res(600.0, 103.0, 21),
        ];
        let s = summarize(600.0, &[], 0, &r, None);
        assert!(
            s.rss_flat && s.rss_verdict.contains('%'),
            "{}",
            s.rss_verdict
        );
        assert_eq!((s.fds_first, s.fds_last, s.fds_max), (20, 21, 21));
        // 20 → 25 MiB after the warm-up: growing.
        let r = vec![
            res(0.0, 20.0, 20),
            res(130.0, 20.0, 20),
            res(600.0, 25.0, 20),
        ];
        let s = summarize(600.0, &[], 0, &r, None);
        assert!(
            !s.rss_flat && s.rss_verdict.starts_with("GROWING"),
            "{}",
            s.rss_verdict
        );
        // Short runs compare fifths, not minutes.
        assert_eq!(summarize(100.0, &[], 0, &r, None).window_s, 20.0);
        assert!(!summarize(600.0, &[], 0, &r[..1], None).rss_flat);
    }

    #[test]
    fn scrapes_give_p99_max_series_and_end_totals() {
        let small =
            "# TYPE tcpq_lost_events counter\ntcpq_lost_events_total{family=\"listen\"} 0\n";
        let mut scrapes: Vec<Scrape> = (0..100)
            .map(|i| scrape_of(1.0 + i as f64 / 10.0, small))
            .collect();
        scrapes.push(scrape_of(80.0, PAGE));
        let s = summarize(101.0, &scrapes, 2, &[], Some((idle(70, 5), idle(72, 5))));
        assert_eq!(s.scrapes, 101);
        assert_eq!(s.scrape_failures, 2);
        assert_eq!(s.scrape_max_ms, 80.0);
        // Nearest rank: the 100th of 101 sorted.
        assert!((s.scrape_p99_ms - 10.9).abs() < 1e-9, "{}", s.scrape_p99_ms);
        assert_eq!((s.series_first, s.series_last, s.series_max), (1, 9, 9));
        assert_eq!(s.lost, 3.0);
        assert_eq!(s.label_values_max, 2);
        let table = rows(&s, "overflow 1");
        assert!(table.contains("| lost events (tcpq_lost_events_total, at the end) | 3 (listen: 2, missed_runs: 1, 3 while storm ran) | 0 |"), "{table}");
        assert!(table.contains("< 50 ms"), "{table}");
        assert!(
            table.contains("| 70 → 72 (5 → 5 namespaces on the machine): LEAKED 2 |"),
            "{table}"
        );
        assert!(
            idle_verdict(Some((idle(70, 5), idle(74, 6))))
                .ends_with("not comparable, more namespaces")
        );
        assert!(
            idle_verdict(Some((idle(70, 5), idle(70, 7)))).ends_with("namespaces on the machine)")
        );
        assert!(!table.contains("OVER the bound"), "{table}");
    }
}
