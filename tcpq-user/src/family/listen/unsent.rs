//! Listen events the kernel counted per listener instead of writing them to the ring
//! (`LISTEN_UNSENT`: over the per-CPU line budget, or the ring was full). Adding them back keeps
//! every per-listener count exact under a storm; only the per-client detail is missing.
use std::collections::HashMap;

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{MapData, PerCpuHashMap};
use tcpq_common::{ListenerTally, ListenerTallyKey, TALLY_KINDS, names};

use super::decode::{OverflowEvent, OverflowKind};

/// Sum of one listener's per-CPU tallies: counts add up, the queue snapshot is the newest.
pub fn sum_cpus<'a>(values: impl IntoIterator<Item = &'a ListenerTally>) -> ListenerTally {
    let mut out = ListenerTally::default();
    for v in values {
        for (o, c) in out.counts.iter_mut().zip(v.counts.iter()) {
            *o = o.saturating_add(*c);
        }
        if v.last_ts_ns >= out.last_ts_ns {
            out.last_ts_ns = v.last_ts_ns;
            out.queue = v.queue;
            out.backlog = v.backlog;
            out.synq = v.synq;
        }
    }
    out
}

/// Turns cumulative kernel tallies into new counts since the last look.
#[derive(Debug, Default)]
pub struct UnsentTracker {
    last: HashMap<ListenerTallyKey, [u64; TALLY_KINDS]>,
}

/// `n` events of `ev.kind` on `ev`'s listener (the client fields are unspecified).
#[derive(Debug, Clone, PartialEq)]
pub struct UnsentCount {
    pub ev: OverflowEvent,
    pub n: u64,
}

impl UnsentTracker {
    /// New counts per listener and kind since the previous call. An entry the kernel's LRU
    /// evicted and created again restarts from zero: its whole value is new.
    pub fn deltas(
        &mut self,
        snapshot: impl IntoIterator<Item = (ListenerTallyKey, ListenerTally)>,
    ) -> Vec<UnsentCount> {
        let mut out = Vec::new();
        for (key, tally) in snapshot {
            let last = self.last.entry(key).or_insert([0; TALLY_KINDS]);
            for (k, (&now, prev)) in tally.counts.iter().zip(last.iter_mut()).enumerate() {
                let n = if now >= *prev { now - *prev } else { now };
                *prev = now;
                let Some(kind) = OverflowKind::from_wire(k as u16) else {
                    continue;
                };
                if n == 0 {
                    continue;
                }
                out.push(UnsentCount {
                    ev: OverflowEvent {
                        kind,
                        ts_ns: tally.last_ts_ns,
                        netns: key.netns,
                        cookie: key.cookie,
                        laddr: crate::wire::addr(key.family, &key.laddr),
                        lport: key.lport,
                        raddr: crate::wire::addr(key.family, &[0; 16]),
                        rport: 0,
                        queue: tally.queue,
                        backlog: tally.backlog,
                        synq: tally.synq,
                    },
                    n,
                });
            }
        }
        out
    }
}

/// The kernel's `LISTEN_UNSENT` map and what was already taken from it.
pub struct UnsentReader {
    map: PerCpuHashMap<MapData, ListenerTallyKey, ListenerTally>,
    tracker: UnsentTracker,
}

impl UnsentReader {
    pub fn open(loaded: &mut crate::kernel::probe::Loaded) -> Result<Self> {
        let map = loaded
            .ebpf
            .take_map(names::LISTEN_UNSENT)
            .ok_or_else(|| anyhow!("kernel object has no map {}", names::LISTEN_UNSENT))?;
        Ok(Self {
            map: PerCpuHashMap::try_from(map)
                .with_context(|| format!("open per-CPU hash {}", names::LISTEN_UNSENT))?,
            tracker: UnsentTracker::default(),
        })
    }

    /// Counts added since the last call (entries that cannot be read are skipped).
    pub fn take(&mut self) -> Vec<UnsentCount> {
        let snapshot: Vec<(ListenerTallyKey, ListenerTally)> = self
            .map
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, v)| (k, sum_cpus(v.iter())))
            .collect();
        self.tracker.deltas(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcpq_common::kind;

    fn key(port: u16) -> ListenerTallyKey {
        ListenerTallyKey {
            netns: 7,
            family: 2,
            lport: port,
            cookie: 99,
            laddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        }
    }

    fn tally(syn: u64, ack: u64, ts: u64, queue: u32) -> ListenerTally {
        let mut t = ListenerTally {
            last_ts_ns: ts,
            queue,
            backlog: 4,
            ..Default::default()
        };
        t.counts[kind::SYN_DROP as usize] = syn;
        t.counts[kind::ACK_DROP as usize] = ack;
        t
    }

    #[test]
    fn cpus_add_up_and_the_newest_snapshot_wins() {
        let s = sum_cpus(&[tally(3, 1, 10, 5), tally(4, 0, 20, 6), tally(0, 0, 0, 0)]);
        assert_eq!(s.counts[kind::SYN_DROP as usize], 7);
        assert_eq!(s.counts[kind::ACK_DROP as usize], 1);
        assert_eq!((s.last_ts_ns, s.queue), (20, 6));
        assert_eq!(sum_cpus(&[]), ListenerTally::default());
    }

    #[test]
    fn deltas_are_new_counts_per_kind_and_listener() {
        let mut t = UnsentTracker::default();
        let d = t.deltas([(key(80), tally(5, 2, 1, 9))]);
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].ev.kind, d[0].n), (OverflowKind::Syn, 5));
        assert_eq!((d[1].ev.kind, d[1].n), (OverflowKind::Ack, 2));
        assert_eq!(d[0].ev.lport, 80);
        assert_eq!(d[0].ev.queue, 9);
        assert_eq!(d[0].ev.laddr.to_string(), "127.0.0.1");
        // Nothing new: nothing reported.
        assert!(t.deltas([(key(80), tally(5, 2, 1, 9))]).is_empty());
        // Grown: only the difference.
        let d = t.deltas([(key(80), tally(8, 2, 2, 9)), (key(81), tally(1, 0, 2, 1))]);
        let sum: u64 = d.iter().map(|c| c.n).sum();
        assert_eq!(sum, 4);
        // Evicted and recreated by the kernel: the new value counts in full.
        let d = t.deltas([(key(80), tally(2, 0, 3, 9))]);
        assert_eq!(d.iter().map(|c| c.n).sum::<u64>(), 2);
    }

    #[test]
    fn kinds_without_a_listener_meaning_are_ignored() {
        let mut t = UnsentTracker::default();
        let mut v = tally(0, 0, 1, 0);
        v.counts[0] = 3; // slot 0 is no kind
        v.counts[kind::OTHER_DROP as usize] = 2; // count-only kinds never reach the ring
        assert!(t.deltas([(key(80), v)]).is_empty());
    }
}
