//! Conntrack: what one namespace's table holds right now (/proc, ctnetlink), read in the
//! namespace, and the live modes' cached top consumers. Shared by `tcpq conntrack`, `tcpq trace
//! conntrack` and the live core.
use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use super::{
    aggregate::{CtEntry, TopConsumers, parse_entries, parse_entry, top_consumers},
    ctnetlink,
    diagnose::CtEvidence,
};
use crate::snapshot::{
    counters::{parse_ct_stat, read_sysctl},
    netns,
};

/// What /proc says about one namespace's conntrack table.
#[derive(Debug, Clone, Default)]
pub struct CtSnapshot {
    pub in_use: bool,
    pub count: u64,
    pub max: u64,
    pub buckets: u64,
    pub established_timeout: u64,
    pub stat: BTreeMap<String, u64>,
    /// Entries from ctnetlink, or parsed from /proc/net/nf_conntrack when that fails.
    pub entries: Vec<CtEntry>,
    /// "ctnetlink" or "procfs".
    pub entries_source: &'static str,
}

/// Reads the calling thread's namespace (call inside `netns::run_in`).
pub fn snapshot_here(with_entries: bool) -> CtSnapshot {
    let Some(max) = read_sysctl("/proc/sys/net/netfilter/nf_conntrack_max") else {
        return CtSnapshot::default();
    };
    CtSnapshot {
        in_use: true,
        count: read_sysctl("/proc/sys/net/netfilter/nf_conntrack_count").unwrap_or(0),
        max,
        buckets: read_sysctl("/proc/sys/net/netfilter/nf_conntrack_buckets").unwrap_or(0),
        established_timeout: read_sysctl(
            "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established",
        )
        .unwrap_or(0),
        stat: std::fs::read_to_string("/proc/thread-self/net/stat/nf_conntrack")
            .map(|t| parse_ct_stat(&t))
            .unwrap_or_default(),
        entries: Vec::new(),
        entries_source: "",
    }
    .with_entries(with_entries)
    .with_activity()
}

impl CtSnapshot {
    /// The diagnosis's evidence for a run since `before` in which tcpq saw `table_full` and
    /// `rule` drops over `duration_s`; `ns_prefix` enters the namespace in the fixes' commands.
    pub fn evidence(
        &self,
        before: &CtSnapshot,
        table_full: u64,
        rule: u64,
        duration_s: f64,
        ns_prefix: String,
    ) -> CtEvidence {
        let early = self.stat_since(before, "early_drop");
        let entries = &self.entries;
        let top = top_consumers(entries, self.established_timeout, 5);
        // The busiest local destination port among loopback flows: a candidate for notrack.
        let mut local: BTreeMap<(String, u16), u64> = BTreeMap::new();
        for e in entries.iter().filter(|e| e.dst.is_loopback()) {
            if let Some(p) = e.dport {
                *local.entry((e.dst.to_string(), p)).or_insert(0) += 1;
            }
        }
        let busiest_local_dport = local.into_iter().max_by_key(|(_, n)| *n).map(|(k, _)| k);
        CtEvidence {
            count: self.count,
            max: self.max,
            buckets: self.buckets,
            established_timeout: self.established_timeout,
            table_full_drops: table_full,
            rule_drops: rule,
            early_drops: early,
            duration_s,
            top,
            busiest_local_dport,
            ns_prefix,
        }
    }

    /// How much the `/proc/net/stat/nf_conntrack` column `key` grew since `before`.
    pub fn stat_since(&self, before: &CtSnapshot, key: &str) -> u64 {
        let of = |s: &CtSnapshot| s.stat.get(key).copied().unwrap_or(0);
        of(self).saturating_sub(of(before))
    }

    /// nf_conntrack being loaded does not mean this namespace tracks connections: only a rule
    /// that needs state (or NAT) turns it on. Without any entry or activity, it is not in use.
    fn with_activity(mut self) -> Self {
        let active = ["new", "found", "insert", "drop", "invalid"]
            .iter()
            .any(|k| self.stat.get(*k).copied().unwrap_or(0) > 0);
        self.in_use = self.in_use && (self.count > 0 || active);
        self
    }

    fn with_entries(mut self, wanted: bool) -> Self {
        if !wanted {
            return self;
        }
        match ctnetlink::dump() {
            Ok(e) => {
                self.entries = e;
                self.entries_source = "ctnetlink";
            }
            Err(_) => {
                let text = std::fs::read_to_string("/proc/thread-self/net/nf_conntrack")
                    .unwrap_or_default();
                self.entries = parse_entries(&text);
                self.entries_source = "procfs";
            }
        }
        self
    }
}

pub fn snapshot_in(ns: u32, with_entries: bool) -> CtSnapshot {
    netns::run_in(ns, move || snapshot_here(with_entries)).unwrap_or_default()
}

/// Entries the live modes read per dump of one namespace: a sample of a bigger table (see
/// `ctnetlink::dump_first`). 50,000 entries cost ~50 ms and ~6 MB while they are counted; a
/// whole 1,000,000-entry table would cost a second and 100+ MB every time.
pub const LIVE_SAMPLE: usize = 50_000;

/// A namespace's top consumers as the live modes see them.
#[derive(Debug, Clone, Default)]
pub struct LiveConsumers {
    pub top: TopConsumers,
    /// Entries counted, and whether the table had more (a sample).
    pub read: usize,
    pub sampled: bool,
    /// How old the reading is.
    pub age: Duration,
}

/// When each namespace's entries were last read, what that cost and found.
struct CachedConsumers {
    at: Instant,
    reuse_for: Duration,
    found: LiveConsumers,
}

/// Per namespace, shared by every live command in this process (the causes and the frame of
/// one interval read the same dump). A bound on what the entries cost: a namespace is read
/// again only after 20× what its last dump took (at least 1 s, at most 60 s): ≤ 5 % of one CPU
/// however big the table.
static LIVE_CONSUMERS: std::sync::LazyLock<std::sync::Mutex<HashMap<u32, CachedConsumers>>> =
    std::sync::LazyLock::new(Default::default);

/// The time before a namespace's entries are read again, from what the last read cost.
pub fn reuse_for(cost: Duration) -> Duration {
    (cost * 20).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Top consumers of `ns`'s table for the live modes (`snap`: its counters, read just now).
pub fn live_consumers(ns: u32, snap: &CtSnapshot) -> LiveConsumers {
    let now = Instant::now();
    let mut cache = LIVE_CONSUMERS.lock().unwrap_or_else(|e| e.into_inner());
    // Namespaces gone or quiet for long are let go.
    cache.retain(|_, c| now.saturating_duration_since(c.at) < Duration::from_secs(300));
    if let Some(c) = cache.get(&ns)
        && now.saturating_duration_since(c.at) < c.reuse_for
    {
        return LiveConsumers {
            age: now.saturating_duration_since(c.at),
            ..c.found.clone()
        };
    }
    let timeout = snap.established_timeout;
    let found = match netns::run_in(ns, || consumers_here(timeout)) {
        Ok(found) => found,
        Err(e) => {
            // The cause is still named, without its consumers (a namespace gone since tier 0
            // saw it is common: debug, not a warning on top's screen every interval).
            log::debug!("read the conntrack entries of network namespace {ns}: {e:#}");
            LiveConsumers::default()
        }
    };
    cache.insert(
        ns,
        CachedConsumers {
            at: now,
            reuse_for: reuse_for(now.elapsed()),
            found: found.clone(),
        },
    );
    found
}

/// The top consumers in a sample of the calling thread's namespace's table (`LIVE_SAMPLE`
/// entries at most); `established_timeout` says which ESTABLISHED entries are long idle.
pub fn consumers_here(established_timeout: u64) -> LiveConsumers {
    let (entries, sampled) = sample_entries_here(LIVE_SAMPLE);
    LiveConsumers {
        top: top_consumers(&entries, established_timeout, 5),
        read: entries.len(),
        sampled,
        age: Duration::ZERO,
    }
}

/// At most `limit` entries of the calling thread's namespace: ctnetlink, else the first lines
/// of /proc/net/nf_conntrack (read line by line: a big table's file is 100+ MB of text).
fn sample_entries_here(limit: usize) -> (Vec<CtEntry>, bool) {
    match ctnetlink::dump_first(limit) {
        Ok(found) => return found,
        Err(e) => log::debug!("conntrack entries over ctnetlink: {e:#}; trying /proc"),
    }
    use std::io::BufRead as _;
    let Ok(file) = std::fs::File::open("/proc/thread-self/net/nf_conntrack") else {
        return (Vec::new(), false);
    };
    let mut lines = std::io::BufReader::new(file).lines().map_while(Result::ok);
    let entries = lines
        .by_ref()
        .take(limit)
        .filter_map(|l| parse_entry(&l))
        .collect();
    (entries, lines.next().is_some())
}

/// Is conntrack in use in `ns`? Once seen in use it stays so. A drop without an entry in a
/// namespace not yet known to track is checked right then (a table-full drop means the table
/// holds entries now): a snapshot taken earlier may predate the first tracked connection.
pub fn ct_in_use(active: &RefCell<std::collections::HashSet<u32>>, ns: u32, has_ct: bool) -> bool {
    if active.borrow().contains(&ns) {
        return true;
    }
    if has_ct || snapshot_in(ns, false).in_use {
        active.borrow_mut().insert(ns);
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_read_again_after_twenty_times_their_cost() {
        // A small table: every second (the frame); a 1,000,000-entry dump of 1.5 s: every 30 s;
        // never rarer than a minute.
        assert_eq!(reuse_for(Duration::from_millis(5)), Duration::from_secs(1));
        assert_eq!(
            reuse_for(Duration::from_millis(1500)),
            Duration::from_secs(30)
        );
        assert_eq!(reuse_for(Duration::from_secs(10)), Duration::from_secs(60));
    }
}
