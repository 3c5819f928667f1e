//! Kernel counters (/proc/net/netstat, /proc/net/snmp) of a network namespace: the one parser
//! of these files, for tcpq (tier 0, trace summaries), its labs, tests and bench.
use std::collections::HashMap;

use anyhow::{Context as _, Result};

/// Calls `each(prefix, name, value)` for every counter of the "Prefix: names…" / "Prefix:
/// values…" line pairs of /proc/net/netstat and /proc/net/snmp (a value line is one of numbers
/// under a header of the same prefix; negative values, snmp's -1 for "dynamic", read as 0).
fn for_each_counter<'a>(text: &'a str, mut each: impl FnMut(&'a str, &'a str, u64)) {
    let mut header: Option<(&str, &str)> = None;
    for line in text.lines() {
        let Some((prefix, rest)) = line.split_once(':') else {
            header = None;
            continue;
        };
        let numeric = rest.split_whitespace().all(|t| t.parse::<i64>().is_ok());
        match header {
            Some((hp, names)) if hp == prefix && numeric => {
                for (n, v) in names.split_whitespace().zip(rest.split_whitespace()) {
                    if let Ok(v) = v.parse::<i64>() {
                        each(prefix, n, v.max(0) as u64);
                    }
                }
                header = None;
            }
            _ => header = Some((prefix, rest)),
        }
    }
}

/// Parses /proc/net/netstat or /proc/net/snmp into `Prefix:Name → value`. (procfs parses snmp
/// but not netstat's TcpExt.)
pub fn parse_pairs(text: &str) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for_each_counter(text, |prefix, n, v| {
        out.insert(format!("{prefix}:{n}"), v);
    });
    out
}

/// Like `parse_pairs`, keeping only the `Prefix:Name` keys in `wanted` (no allocation for the
/// others: tier 0 reads these files several times a second).
pub fn parse_selected(text: &str, wanted: &[&str], out: &mut HashMap<String, u64>) {
    for_each_counter(text, |prefix, n, v| {
        let wanted_here = wanted.iter().any(|w| {
            w.len() == prefix.len() + 1 + n.len()
                && w.starts_with(prefix)
                && w.ends_with(n)
                && w.as_bytes()[prefix.len()] == b':'
        });
        if wanted_here {
            out.insert(format!("{prefix}:{n}"), v);
        }
    });
}

/// TcpExt and Tcp counters of the calling thread's network namespace.
pub fn read_here() -> Result<HashMap<String, u64>> {
    let mut all = HashMap::new();
    for f in [
        "/proc/thread-self/net/netstat",
        "/proc/thread-self/net/snmp",
    ] {
        let text = std::fs::read_to_string(f).with_context(|| format!("read {f}"))?;
        all.extend(parse_pairs(&text));
    }
    Ok(all)
}

/// `after - before` for the listed counters (missing counters count as 0).
pub fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>, key: &str) -> u64 {
    after
        .get(key)
        .copied()
        .unwrap_or(0)
        .saturating_sub(before.get(key).copied().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_wanted_counters_are_kept() {
        let text = "TcpExt: SyncookiesSent ListenDrops\nTcpExt: 3 7\nIpExt: InNoRoutes\nIpExt: 1\nTcp: RtoAlgorithm AttemptFails\nTcp: 1 9\n";
        let mut out = HashMap::new();
        parse_selected(
            text,
            &["TcpExt:ListenDrops", "Tcp:AttemptFails", "Tcp:Missing"],
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out["TcpExt:ListenDrops"], 7);
        assert_eq!(out["Tcp:AttemptFails"], 9);
        assert_eq!(
            parse_pairs(text)["TcpExt:ListenDrops"],
            7,
            "same reading as parse_pairs"
        );
    }

    #[test]
    fn parses_netstat() {
        let t = "TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops\nTcpExt: 3 1 38 40\nIpExt: InNoRoutes\nIpExt: 0\n";
        let m = parse_pairs(t);
        assert_eq!(m["TcpExt:ListenOverflows"], 38);
        assert_eq!(m["TcpExt:SyncookiesSent"], 3);
        assert_eq!(m["IpExt:InNoRoutes"], 0);
        let mut after = m.clone();
        after.insert("TcpExt:ListenOverflows".into(), 50);
        assert_eq!(delta(&m, &after, "TcpExt:ListenOverflows"), 12);
        assert_eq!(delta(&m, &after, "TcpExt:Missing"), 0);
    }

    #[test]
    fn tolerates_garbage() {
        let m = parse_pairs("garbage\nTcpExt: A B\nOther: 1 2\nTcp: RtoMin\nTcp: -1\n");
        assert_eq!(m.get("Tcp:RtoMin"), Some(&0), "negative values clamp to 0");
        assert!(
            !m.contains_key("TcpExt:A"),
            "a header without values is ignored"
        );
    }

    #[test]
    fn reads_own_namespace() {
        let m = read_here().unwrap();
        assert!(m.contains_key("TcpExt:ListenOverflows"));
    }
}
