//! Shared by every family's aggregation: the latency histogram and the per-second line budget
//! (one line per event up to N per key per second, then exact aggregated counts). Pure and
//! unit-tested.
use std::{collections::HashMap, hash::Hash};

use hdrhistogram::Histogram;

/// A latency histogram in ns shared by connect and accept statistics.
pub fn histogram() -> Histogram<u64> {
    // 1 µs .. 1 h in ns, 2 significant digits: small, and exact enough for p50/p99.
    Histogram::new_with_bounds(1_000, 3_600_000_000_000, 2)
        .unwrap_or_else(|_| Histogram::new(2).unwrap_or_else(|_| unreachable!()))
}

/// Up to `per_second` lines per key per second; beyond, exact counts per (key, class) are
/// returned when the second ends.
#[derive(Debug)]
pub struct LineBudget<K: Hash + Eq + Clone + Ord, C: Hash + Eq + Clone + Ord> {
    per_second: u32,
    second: u64,
    printed: HashMap<K, u32>,
    suppressed: HashMap<(K, C), u64>,
}

impl<K: Hash + Eq + Clone + Ord, C: Hash + Eq + Clone + Ord> LineBudget<K, C> {
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            second: 0,
            printed: HashMap::new(),
            suppressed: HashMap::new(),
        }
    }

    /// Returns the aggregates of finished seconds and whether to print this event.
    pub fn admit(&mut self, second: u64, key: &K, class: &C) -> (Vec<(u64, K, C, u64)>, bool) {
        let flushed = self.flush_until(second);
        let n = self.printed.entry(key.clone()).or_insert(0);
        if *n < self.per_second {
            *n += 1;
            return (flushed, true);
        }
        *self
            .suppressed
            .entry((key.clone(), class.clone()))
            .or_insert(0) += 1;
        (flushed, false)
    }

    pub fn flush_until(&mut self, second: u64) -> Vec<(u64, K, C, u64)> {
        if second <= self.second {
            return Vec::new();
        }
        let done = self.second;
        self.second = second;
        self.printed.clear();
        let mut out: Vec<(u64, K, C, u64)> = self
            .suppressed
            .drain()
            .map(|((k, c), n)| (done, k, c, n))
            .collect();
        out.sort_by(|a, b| a.1.cmp(&b.1).then(a.2.cmp(&b.2)));
        out
    }

    pub fn flush_all(&mut self) -> Vec<(u64, K, C, u64)> {
        let next = self.second + 1;
        self.flush_until(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_keeps_exact_counts() {
        let mut b: LineBudget<u32, &str> = LineBudget::new(2);
        let mut printed = 0;
        for _ in 0..5 {
            if b.admit(1, &7, &"ok").1 {
                printed += 1;
            }
        }
        let (agg, _) = b.admit(2, &7, &"ok");
        assert_eq!(printed, 2);
        assert_eq!(agg, vec![(1, 7, "ok", 3)]);
        assert!(b.flush_all().is_empty());
    }
}
