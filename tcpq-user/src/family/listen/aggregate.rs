//! Aggregation of listen-path events: per listener totals, per-window counts and the lines
//! the per-second line budget folds (readable output at high rates without losing counts).
//! Pure and unit-tested.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use super::decode::{OverflowEvent, OverflowKind};
use crate::aggregate::{Folded, LineBudget};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCounts([u64; 7]);

impl KindCounts {
    pub fn add(&mut self, k: OverflowKind, n: u64) {
        self.0[k.index()] += n;
    }
    pub fn get(&self, k: OverflowKind) -> u64 {
        self.0[k.index()]
    }
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
    pub fn refused(&self) -> u64 {
        OverflowKind::ALL
            .iter()
            .filter(|k| k.is_refusal())
            .map(|k| self.get(*k))
            .sum()
    }
    pub fn merge(&mut self, other: &KindCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// Scales the refusal kinds down so that they add up to at most `exact` (tier 0's count
    /// for the same listener and interval): kinds predicted from the queues at arrival may
    /// take a packet the kernel then accepted for a refusal. Each kind keeps its share,
    /// rounded down, the remainder going to the largest.
    pub fn cap_refusals(&mut self, exact: u64) {
        let predicted = self.refused();
        if predicted <= exact {
            return;
        }
        let refusals: Vec<OverflowKind> = OverflowKind::ALL
            .iter()
            .copied()
            .filter(|k| k.is_refusal())
            .collect();
        for k in &refusals {
            let n = self.get(*k);
            self.0[k.index()] = (n as u128 * exact as u128 / predicted as u128) as u64;
        }
        let short = exact - self.refused();
        if let Some(largest) = refusals.iter().max_by_key(|k| self.get(**k)) {
            self.0[largest.index()] += short;
        }
    }
}

/// Identity of a listening socket: its netns and sock_diag cookie (distinguishes SO_REUSEPORT
/// siblings), plus the address for display.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerKey {
    pub netns: u32,
    pub cookie: u64,
    pub laddr: IpAddr,
    pub lport: u16,
}

impl ListenerKey {
    pub fn of(ev: &OverflowEvent) -> Self {
        Self {
            netns: ev.netns,
            cookie: ev.cookie,
            laddr: ev.laddr,
            lport: ev.lport,
        }
    }
}

/// Bounded set of distinct clients (counting stops growing at the cap; the count is then a floor).
#[derive(Debug, Clone, Default)]
pub struct ClientSet {
    set: HashSet<IpAddr>,
    pub saturated: bool,
}

impl ClientSet {
    pub const CAP: usize = 4096;
    pub fn insert(&mut self, a: IpAddr) {
        if self.set.len() < Self::CAP {
            self.set.insert(a);
        } else if !self.set.contains(&a) {
            self.saturated = true;
        }
    }
    pub fn len(&self) -> usize {
        self.set.len()
    }
    pub fn merge(&mut self, other: &ClientSet) {
        for a in &other.set {
            self.insert(*a);
        }
        self.saturated |= other.saturated;
    }
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct ListenerAgg {
    pub key: ListenerKey,
    pub total: KindCounts,
    pub window: KindCounts,
    pub last_queue: u32,
    pub backlog: u32,
    pub max_synq: u32,
    pub first_ts_ns: u64,
    pub last_ts_ns: u64,
    pub clients: ClientSet,
}

/// Most refused first, then most events, then by key.
fn worst_first(a: &ListenerAgg, b: &ListenerAgg) -> std::cmp::Ordering {
    b.total
        .refused()
        .cmp(&a.total.refused())
        .then(b.total.total().cmp(&a.total.total()))
        .then(a.key.cmp(&b.key))
}

/// Per-listener aggregates, bounded: beyond `max_listeners` new listeners are folded into
/// `other` and counted as evictions.
#[derive(Debug)]
pub struct OverflowAggregator {
    pub listeners: HashMap<ListenerKey, ListenerAgg>,
    pub other: KindCounts,
    pub evicted: u64,
    max_listeners: usize,
}

impl OverflowAggregator {
    pub fn new(max_listeners: usize) -> Self {
        Self {
            listeners: HashMap::new(),
            other: KindCounts::default(),
            evicted: 0,
            max_listeners,
        }
    }

    pub fn record(&mut self, ev: &OverflowEvent) {
        self.record_n(ev, 1, true);
    }

    /// `n` events like `ev` (the kernel's per-listener tally of events that skipped the ring:
    /// `with_client` false, the client fields mean nothing).
    pub fn record_n(&mut self, ev: &OverflowEvent, n: u64, with_client: bool) {
        let key = ListenerKey::of(ev);
        if !self.listeners.contains_key(&key) && self.listeners.len() >= self.max_listeners {
            self.other.add(ev.kind, n);
            self.evicted += 1;
            return;
        }
        let agg = self.listeners.entry(key).or_insert_with(|| ListenerAgg {
            key,
            total: KindCounts::default(),
            window: KindCounts::default(),
            last_queue: 0,
            backlog: 0,
            max_synq: 0,
            first_ts_ns: ev.ts_ns,
            last_ts_ns: ev.ts_ns,
            clients: ClientSet::default(),
        });
        agg.total.add(ev.kind, n);
        agg.window.add(ev.kind, n);
        // A record without a queue snapshot (backlog 0: sk_max_ack_backlog is never 0 on a
        // listener that refuses) must not erase the one the listener has.
        if ev.backlog > 0 || agg.backlog == 0 {
            agg.last_queue = ev.queue;
            agg.backlog = ev.backlog;
        }
        agg.max_synq = agg.max_synq.max(ev.synq);
        agg.last_ts_ns = agg.last_ts_ns.max(ev.ts_ns);
        agg.first_ts_ns = agg.first_ts_ns.min(ev.ts_ns);
        if !with_client {
            agg.clients.saturated = true; // some clients are not known: the count is a floor
        } else if ev.kind != OverflowKind::SynackRetrans {
            agg.clients.insert(ev.raddr);
        }
    }

    pub fn totals(&self) -> KindCounts {
        let mut t = self.other;
        for a in self.listeners.values() {
            t.merge(&a.total);
        }
        t
    }

    /// Listeners ranked by refused connections, worst first.
    pub fn ranked(&self) -> Vec<&ListenerAgg> {
        let mut v: Vec<&ListenerAgg> = self.listeners.values().collect();
        v.sort_by(|a, b| worst_first(a, b));
        v
    }

    /// One aggregate per listener, ranked as `ranked`: records of a listener that came without
    /// a queue snapshot (backlog 0) under another cookie are folded into the aggregate of the
    /// same namespace, address and port that has one (the busiest), so a listener gets one
    /// finding. SO_REUSEPORT siblings (each with its own queue) stay apart.
    pub fn by_listener(&self) -> Vec<ListenerAgg> {
        let mut whole: Vec<ListenerAgg> = Vec::new();
        let mut partial: Vec<&ListenerAgg> = Vec::new();
        for a in self.ranked() {
            if a.backlog > 0 {
                whole.push(a.clone());
            } else {
                partial.push(a);
            }
        }
        for p in partial {
            let same = |w: &&mut ListenerAgg| {
                (w.key.netns, w.key.laddr, w.key.lport) == (p.key.netns, p.key.laddr, p.key.lport)
            };
            match whole.iter_mut().find(same) {
                Some(w) => {
                    w.total.merge(&p.total);
                    w.window.merge(&p.window);
                    w.max_synq = w.max_synq.max(p.max_synq);
                    w.first_ts_ns = w.first_ts_ns.min(p.first_ts_ns);
                    w.last_ts_ns = w.last_ts_ns.max(p.last_ts_ns);
                    w.clients.merge(&p.clients);
                }
                None => whole.push(p.clone()),
            }
        }
        whole.sort_by(worst_first);
        whole
    }

    pub fn reset_window(&mut self) {
        for a in self.listeners.values_mut() {
            a.window = KindCounts::default();
        }
    }
}

/// What to do with one event under the per-second line budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Print,
    Suppress,
}

/// Events folded into one line because a listener exceeded its line budget in one second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateLine {
    pub second: u64,
    pub key: ListenerKey,
    pub kind: OverflowKind,
    pub count: u64,
    pub clients: usize,
    pub last_queue: u32,
    pub backlog: u32,
}

/// What one listener's events of one kind that got no line of their own add up to in a second.
#[derive(Debug, Default)]
pub struct Suppressed {
    count: u64,
    clients: HashSet<IpAddr>,
    last_queue: u32,
    backlog: u32,
}

/// `trace overflow`'s line budget: up to `per_second` lines per listener per second; the rest
/// become one aggregated line per listener and kind, with the exact count, when the second ends.
pub type ListenLines = LineBudget<ListenerKey, OverflowKind, Suppressed>;

impl LineBudget<ListenerKey, OverflowKind, Suppressed> {
    /// Call with the event's second (monotonic); returns the lines of finished seconds first.
    pub fn admit_event(&mut self, second: u64, ev: &OverflowEvent) -> (Vec<AggregateLine>, Admit) {
        let (flushed, print) = self.admit_with(second, &ListenerKey::of(ev), &ev.kind, |s| {
            s.count += 1;
            if s.clients.len() < 1024 {
                s.clients.insert(ev.raddr);
            }
            s.last_queue = ev.queue;
            s.backlog = ev.backlog;
        });
        let admit = if print { Admit::Print } else { Admit::Suppress };
        (aggregate_lines(flushed), admit)
    }

    /// `n` events the kernel counted without a ring record (`LISTEN_UNSENT`): they join the
    /// aggregated line of their listener and kind for `second`; no line of their own.
    pub fn add_unsent(&mut self, second: u64, ev: &OverflowEvent, n: u64) -> Vec<AggregateLine> {
        let flushed = self.fold_unprinted(second, &ListenerKey::of(ev), &ev.kind, |s| {
            s.count += n;
            s.last_queue = ev.queue;
            s.backlog = ev.backlog;
        });
        aggregate_lines(flushed)
    }

    /// Ends every second before `second` and returns their aggregated lines.
    pub fn lines_until(&mut self, second: u64) -> Vec<AggregateLine> {
        aggregate_lines(self.flush_until(second))
    }

    /// Every aggregated line left (exit).
    pub fn all_lines(&mut self) -> Vec<AggregateLine> {
        aggregate_lines(self.flush_all())
    }
}

fn aggregate_lines(folded: Folded<ListenerKey, OverflowKind, Suppressed>) -> Vec<AggregateLine> {
    folded
        .into_iter()
        .map(|(second, key, kind, s)| AggregateLine {
            second,
            key,
            kind,
            count: s.count,
            clients: s.clients.len(),
            last_queue: s.last_queue,
            backlog: s.backlog,
        })
        .collect()
}

#[cfg(test)]
mod tests {

    #[test]
    fn predicted_kinds_are_capped_at_the_exact_total_keeping_their_shares() {
        let mut c = KindCounts::default();
        c.add(OverflowKind::Syn, 90);
        c.add(OverflowKind::Ack, 30);
        c.add(OverflowKind::Cookie, 5); // not a refusal: left alone
        c.cap_refusals(100);
        assert_eq!(c.refused(), 100);
        assert_eq!(
            (c.get(OverflowKind::Syn), c.get(OverflowKind::Ack)),
            (75, 25)
        );
        assert_eq!(c.get(OverflowKind::Cookie), 5);
        let mut odd = KindCounts::default();
        odd.add(OverflowKind::Syn, 2);
        odd.add(OverflowKind::Ack, 1);
        odd.cap_refusals(2);
        assert_eq!(odd.refused(), 2);
        // Under the total: untouched.
        let before = c;
        c.cap_refusals(1000);
        assert_eq!(c, before);
    }

    use std::net::Ipv4Addr;

    use super::*;

    fn ev(kind: OverflowKind, lport: u16, client: u8) -> OverflowEvent {
        OverflowEvent {
            kind,
            ts_ns: 1,
            netns: 1,
            cookie: lport as u64,
            laddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            lport,
            raddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, client)),
            rport: 1000,
            queue: 9,
            backlog: 8,
            synq: 2,
        }
    }

    #[test]
    fn one_aggregate_per_listener() {
        let mut a = OverflowAggregator::new(10);
        // Cookies recorded with the listener's queues (cookie 5), and counted by the kernel
        // without them under another cookie (0): one listener, one aggregate.
        let mut with = ev(OverflowKind::Cookie, 24224, 1);
        with.cookie = 5;
        with.backlog = 16;
        let mut without = ev(OverflowKind::Cookie, 24224, 0);
        without.cookie = 0;
        without.backlog = 0;
        without.queue = 0;
        without.synq = 0;
        a.record_n(&with, 30, true);
        a.record_n(&without, 12, false);
        // A record without queues never erases the listener's own snapshot.
        a.record_n(
            &OverflowEvent {
                backlog: 0,
                queue: 0,
                ..with.clone()
            },
            1,
            false,
        );
        // An SO_REUSEPORT sibling with its own queue stays apart.
        let mut sibling = with.clone();
        sibling.cookie = 6;
        a.record_n(&sibling, 2, true);
        assert_eq!(a.listeners.len(), 3);
        let v = a.by_listener();
        assert_eq!(v.len(), 2, "{v:?}");
        assert_eq!((v[0].key.cookie, v[0].backlog), (5, 16));
        assert_eq!(v[0].total.get(OverflowKind::Cookie), 43);
        assert!(v[0].clients.saturated);
        assert_eq!((v[1].key.cookie, v[1].total.total()), (6, 2));
        // Alone, a record without queues stays a listener of its own.
        let mut b = OverflowAggregator::new(10);
        b.record_n(&without, 4, false);
        assert_eq!(b.by_listener().len(), 1);
    }

    #[test]
    fn wire_round_trip() {
        for k in OverflowKind::ALL {
            assert_eq!(OverflowKind::from_wire(k.wire()), Some(k));
        }
        assert_eq!(OverflowKind::from_wire(0), None);
    }

    #[test]
    fn aggregates_per_listener_and_ranks() {
        let mut a = OverflowAggregator::new(10);
        for i in 0..5 {
            a.record(&ev(OverflowKind::Syn, 80, i));
        }
        a.record(&ev(OverflowKind::Ack, 80, 1));
        a.record(&ev(OverflowKind::Cookie, 443, 1));
        let r = a.ranked();
        assert_eq!(r[0].key.lport, 80);
        assert_eq!(r[0].total.get(OverflowKind::Syn), 5);
        assert_eq!(r[0].total.refused(), 6);
        assert_eq!(r[0].clients.len(), 5);
        assert_eq!(r[1].total.refused(), 0);
        assert_eq!(a.totals().total(), 7);
        a.reset_window();
        assert!(a.listeners.values().all(|l| l.window.is_empty()));
        assert_eq!(a.totals().total(), 7);
    }

    #[test]
    fn bounded_listeners_count_evictions() {
        let mut a = OverflowAggregator::new(2);
        for port in 1..=4 {
            a.record(&ev(OverflowKind::Syn, port, 1));
        }
        assert_eq!(a.listeners.len(), 2);
        assert_eq!(a.evicted, 2);
        assert_eq!(a.totals().get(OverflowKind::Syn), 4, "no count is lost");
    }

    #[test]
    fn limiter_keeps_exact_counts() {
        let mut l = ListenLines::new(3);
        let mut printed = 0;
        let mut aggregated = 0;
        for i in 0..10u8 {
            let (flushed, admit) = l.admit_event(5, &ev(OverflowKind::Syn, 80, i));
            assert!(flushed.is_empty() || i == 0);
            if admit == Admit::Print {
                printed += 1;
            }
        }
        // next second flushes the aggregate of second 5
        let (flushed, admit) = l.admit_event(6, &ev(OverflowKind::Syn, 80, 1));
        assert_eq!(admit, Admit::Print);
        assert_eq!(flushed.len(), 1);
        aggregated += flushed[0].count;
        assert_eq!(flushed[0].second, 5);
        assert_eq!(flushed[0].clients, 7);
        assert_eq!(printed + aggregated, 10);
        assert!(l.all_lines().is_empty());
    }
}
