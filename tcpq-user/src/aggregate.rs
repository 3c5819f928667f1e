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

/// Up to `per_second` lines per key per second; beyond, the events of each (key, class) fold
/// into one accumulator (`A`: an exact count by default), returned when the second ends. The
/// trace commands count per key and class; `trace overflow` folds more per listener and kind
/// (`family::listen::aggregate::Suppressed`).
#[derive(Debug)]
pub struct LineBudget<K: Hash + Eq + Clone + Ord, C: Hash + Eq + Clone + Ord, A = u64> {
    per_second: u32,
    second: u64,
    printed: HashMap<K, u32>,
    suppressed: HashMap<(K, C), A>,
}

/// The accumulators of finished seconds: (second, key, class, accumulator), by key then class.
pub type Folded<K, C, A = u64> = Vec<(u64, K, C, A)>;

impl<K: Hash + Eq + Clone + Ord, C: Hash + Eq + Clone + Ord, A: Default> LineBudget<K, C, A> {
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            second: 0,
            printed: HashMap::new(),
            suppressed: HashMap::new(),
        }
    }

    /// Returns the accumulators of finished seconds and whether to print this event; an event
    /// not printed is folded into its (key, class) accumulator by `fold`.
    pub fn admit_with(
        &mut self,
        second: u64,
        key: &K,
        class: &C,
        fold: impl FnOnce(&mut A),
    ) -> (Folded<K, C, A>, bool) {
        let flushed = self.flush_until(second);
        let n = self.printed.entry(key.clone()).or_insert(0);
        if *n < self.per_second {
            *n += 1;
            return (flushed, true);
        }
        self.fold_unprinted(second, key, class, fold);
        (flushed, false)
    }

    /// Events that never get a line of their own (the kernel counted them without a record):
    /// folded into their (key, class) accumulator for `second`, using none of the key's lines.
    pub fn fold_unprinted(
        &mut self,
        second: u64,
        key: &K,
        class: &C,
        fold: impl FnOnce(&mut A),
    ) -> Folded<K, C, A> {
        let flushed = self.flush_until(second);
        fold(
            self.suppressed
                .entry((key.clone(), class.clone()))
                .or_default(),
        );
        flushed
    }

    /// Ends every second before `second` and returns their accumulators.
    pub fn flush_until(&mut self, second: u64) -> Folded<K, C, A> {
        if second <= self.second {
            return Vec::new();
        }
        let done = self.second;
        self.second = second;
        self.printed.clear();
        let mut out: Folded<K, C, A> = self
            .suppressed
            .drain()
            .map(|((k, c), n)| (done, k, c, n))
            .collect();
        out.sort_by(|a, b| a.1.cmp(&b.1).then(a.2.cmp(&b.2)));
        out
    }

    /// Flushes everything (exit).
    pub fn flush_all(&mut self) -> Folded<K, C, A> {
        let next = self.second + 1;
        self.flush_until(next)
    }
}

impl<K: Hash + Eq + Clone + Ord, C: Hash + Eq + Clone + Ord> LineBudget<K, C> {
    /// [`LineBudget::admit_with`] counting the events not printed.
    pub fn admit(&mut self, second: u64, key: &K, class: &C) -> (Folded<K, C>, bool) {
        self.admit_with(second, key, class, |n| *n += 1)
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
