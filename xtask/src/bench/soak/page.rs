//! One GET /metrics of the soak (`Scrape`): timed, and its OpenMetrics page parsed into series,
//! label sets and values per family (`Page`).
use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// What one GET /metrics gave.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Page {
    /// Sample lines per family (the `# TYPE` line they follow).
    pub series: BTreeMap<String, usize>,
    /// Distinct label sets per family, `le` left out (a histogram's buckets are one set).
    pub label_sets: BTreeMap<String, usize>,
    /// Distinct values per (family, label), `le` left out.
    pub label_values: BTreeMap<(String, String), usize>,
    /// Σ tcpq_lost_events_total over its `family` labels, and each of them.
    pub lost: f64,
    pub lost_by: BTreeMap<String, f64>,
    pub folded: f64,
}

/// One sample line: its metric name, labels and value.
type Sample<'a> = (&'a str, Vec<(String, String)>, f64);

/// `name{a="x",b="y"} value` → (name, [(a, x), (b, y)], value). Label values may hold escaped
/// quotes (`\"`) and commas; `None` for comments, blank and malformed lines.
fn sample(line: &str) -> Option<Sample<'_>> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        let mut value = String::new();
        let mut in_value = false;
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match (in_value, c) {
                (false, '}') => {
                    end = Some(i + 1);
                    break;
                }
                (false, ',') => {}
                (false, '=') => {
                    // The opening quote.
                    if chars.next().map(|(_, q)| q) != Some('"') {
                        return None;
                    }
                    in_value = true;
                }
                (false, c) => key.push(c),
                (true, '\\') => {
                    let (_, escaped) = chars.next()?;
                    value.push(match escaped {
                        'n' => '\n',
                        other => other,
                    });
                }
                (true, '"') => {
                    labels.push((std::mem::take(&mut key), std::mem::take(&mut value)));
                    in_value = false;
                }
                (true, c) => value.push(c),
            }
        }
        rest = &inner[end?..];
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// Reads an OpenMetrics page: per family its samples, label sets and values per label, and
/// tcpq's own lost-event and folded-label counts.
pub(super) fn parse_page(text: &str) -> Page {
    let mut page = Page::default();
    let mut family = String::new();
    let mut sets: BTreeMap<String, BTreeSet<Vec<(String, String)>>> = BTreeMap::new();
    let mut values: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            family = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            continue;
        }
        let Some((name, labels, value)) = sample(line) else {
            continue;
        };
        // Samples before any TYPE line (not OpenMetrics, but tolerated) are their own family.
        let fam = if family.is_empty() || !name.starts_with(family.as_str()) {
            name.to_string()
        } else {
            family.clone()
        };
        *page.series.entry(fam.clone()).or_default() += 1;
        let set: Vec<(String, String)> = labels.into_iter().filter(|(k, _)| k != "le").collect();
        for (k, v) in &set {
            values
                .entry((fam.clone(), k.clone()))
                .or_default()
                .insert(v.clone());
        }
        if name == "tcpq_lost_events_total" {
            page.lost += value;
            let by = set
                .iter()
                .find(|(k, _)| k == "family")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            *page.lost_by.entry(by).or_default() += value;
        }
        if name == "tcpq_labels_folded" {
            page.folded = value;
        }
        sets.entry(fam).or_default().insert(set);
    }
    page.label_sets = sets.into_iter().map(|(f, s)| (f, s.len())).collect();
    page.label_values = values.into_iter().map(|(k, s)| (k, s.len())).collect();
    page
}

const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// A scrape: how long the GET took, its size and content, and the lab running meanwhile.
#[derive(Debug, Clone, Default)]
pub(super) struct Scrape {
    pub lab: &'static str,
    pub ms: f64,
    pub bytes: usize,
    pub page: Page,
}

/// GET /metrics on `addr`, read to the close: (milliseconds, bytes, body).
pub(super) fn scrape(addr: &str) -> Result<(f64, usize, String)> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
    s.set_read_timeout(Some(SCRAPE_TIMEOUT))?;
    s.set_write_timeout(Some(SCRAPE_TIMEOUT))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: tcpq\r\nConnection: close\r\n\r\n")
        .with_context(|| format!("send GET /metrics to {addr}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("read /metrics from {addr}"))?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!(
            "{addr}/metrics answered without a complete head ({} bytes)",
            raw.len()
        );
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "{addr}/metrics answered {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok((ms, raw.len(), body.to_string()))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) const PAGE: &str = "# TYPE tcpq_connects counter\n\
        # HELP tcpq_connects Outbound connects\n\
        tcpq_connects_total{netns=\"4026532\",process=\"curl\",destination=\"10.0.0.1:80\",result=\"ok\"} 3\n\
        tcpq_connects_total{netns=\"4026533\",process=\"a \\\"quoted\\\", name\",destination=\"10.0.0.1:80\",result=\"ok\"} 1\n\
        # TYPE tcpq_accept_wait_seconds histogram\n\
        tcpq_accept_wait_seconds_bucket{listener=\"127.0.0.1:80\",le=\"0.001\"} 1\n\
        tcpq_accept_wait_seconds_bucket{listener=\"127.0.0.1:80\",le=\"+Inf\"} 2\n\
        tcpq_accept_wait_seconds_count{listener=\"127.0.0.1:80\"} 2\n\
        tcpq_accept_wait_seconds_sum{listener=\"127.0.0.1:80\"} 0.01\n\
        # TYPE tcpq_lost_events counter\n\
        tcpq_lost_events_total{family=\"listen\"} 2\n\
        tcpq_lost_events_total{family=\"missed_runs\"} 1\n\
        # TYPE tcpq_labels_folded gauge\n\
        tcpq_labels_folded 7\n\
        # EOF\n";

    #[test]
    fn page_counts_series_label_sets_and_values_per_family() {
        let p = parse_page(PAGE);
        assert_eq!(p.series["tcpq_connects"], 2);
        assert_eq!(p.label_sets["tcpq_connects"], 2);
        assert_eq!(
            p.label_values[&("tcpq_connects".into(), "process".into())],
            2
        );
        assert_eq!(
            p.label_values[&("tcpq_connects".into(), "destination".into())],
            1
        );
        // A histogram's buckets, count and sum are one label set.
        assert_eq!(p.series["tcpq_accept_wait_seconds"], 4);
        assert_eq!(p.label_sets["tcpq_accept_wait_seconds"], 1);
        assert!(
            !p.label_values
                .contains_key(&("tcpq_accept_wait_seconds".into(), "le".into()))
        );
        assert_eq!(p.lost, 3.0);
        assert_eq!(p.lost_by["missed_runs"], 1.0);
        assert_eq!(p.folded, 7.0);
        let (_, labels, v) =
            sample("x{a=\"a \\\"q\\\", b\",c=\"\"} 1.5").expect("a sample with escapes");
        assert_eq!(labels[0].1, "a \"q\", b");
        assert_eq!(labels[1], ("c".to_string(), String::new()));
        assert_eq!(v, 1.5);
        assert!(sample("# EOF").is_none());
        assert!(sample("x{a=unquoted} 1").is_none());
    }
}
