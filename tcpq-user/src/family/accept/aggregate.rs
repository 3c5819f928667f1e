//! Accept side: per-listener stats (queue wait histogram, errors, acceptors), from ring
//! records or the kernel's running totals. Pure and unit-tested.
use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use tcpq_common::{AcceptTotals, SLOW_WAIT_US, WAIT_BUCKETS, wait_bucket_floor};

use super::decode::Accepted;
use crate::{aggregate::histogram, wire::errno_name};

/// A wait that users feel: 100 ms in the accept queue.
pub const SLOW_WAIT_NS: u64 = SLOW_WAIT_US * 1000;

/// The middle of wait bucket `idx` (`tcpq_common::wait_bucket`), in ns; the last, open-ended
/// bucket is taken at its floor.
pub fn bucket_middle_ns(idx: usize) -> u64 {
    let low = wait_bucket_floor(idx);
    if idx + 1 >= WAIT_BUCKETS {
        return low * 1000;
    }
    let high = wait_bucket_floor(idx + 1);
    (low + high) * 500
}

#[derive(Debug, Clone)]
pub struct AcceptStats {
    pub accepts: u64,
    /// Accepts that waited at least `SLOW_WAIT_NS` (exact, also when the waits come as the
    /// kernel's histogram buckets).
    pub slow: u64,
    pub wait_ns: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
    pub acceptors: BTreeMap<u32, String>,
}

impl Default for AcceptStats {
    fn default() -> Self {
        Self {
            accepts: 0,
            slow: 0,
            wait_ns: histogram(),
            errors: BTreeMap::new(),
            acceptors: BTreeMap::new(),
        }
    }
}

impl AcceptStats {
    pub fn record(&mut self, e: &Accepted) {
        if self.acceptors.len() < 1024 {
            self.acceptors
                .entry(e.tgid)
                .or_insert_with(|| e.comm.clone());
        }
        match e.result {
            Ok(wait) => {
                self.accepts += 1;
                if let Some(w) = wait {
                    self.slow += (w >= SLOW_WAIT_NS) as u64;
                    let _ = self.wait_ns.record(w.clamp(1_000, 3_600_000_000_000));
                }
            }
            Err(errno) => *self.errors.entry(errno_name(errno)).or_insert(0) += 1,
        }
    }

    /// What the kernel counted for process `tgid` (`comm`) on this listener between two
    /// readings of its running totals (`ACCEPT_TOTALS`); each wait bucket is recorded at its
    /// middle. Returns the accepts added.
    pub fn add_totals(
        &mut self,
        tgid: u32,
        comm: impl FnOnce() -> String,
        before: &AcceptTotals,
        now: &AcceptTotals,
    ) -> u64 {
        let accepts = now.accepts.wrapping_sub(before.accepts) as u64;
        if accepts == 0 {
            return 0;
        }
        if self.acceptors.len() < 1024 {
            self.acceptors.entry(tgid).or_insert_with(comm);
        }
        self.accepts += accepts;
        self.slow += now.slow.wrapping_sub(before.slow) as u64;
        for (i, (n, b)) in now.buckets.iter().zip(before.buckets.iter()).enumerate() {
            let d = n.wrapping_sub(*b) as u64;
            if d > 0 {
                let _ = self
                    .wait_ns
                    .record_n(bucket_middle_ns(i).clamp(1_000, 3_600_000_000_000), d);
            }
        }
        accepts
    }

    pub fn wait_quantiles(&self) -> Option<(u64, u64, u64)> {
        (!self.wait_ns.is_empty()).then(|| {
            (
                self.wait_ns.value_at_quantile(0.5),
                self.wait_ns.value_at_quantile(0.99),
                self.wait_ns.max(),
            )
        })
    }
}
