//! `tcpq export`: Prometheus metrics (prometheus-client) fed from each interval's aggregates.
//! Counters only ever grow; label values are bounded per metric family (the first `top_k`
//! distinct values keep their own label, later ones are summed into `other`).
use std::{
    collections::{HashMap, HashSet},
    sync::atomic::AtomicU64,
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{
    family::listen::decode::OverflowKind,
    live::{
        cause::Cause,
        session::{Aggregates, Lost},
    },
    render::endpoint,
};

/// Listener owners remembered (beyond it, a listener whose owner is not found this interval is
/// labelled with no process).
const MAX_KNOWN_OWNERS: usize = 10_000;

/// Who owns a listener, as labels: its process (comm) and, in a container, its pod and container
/// (snapshot::container; empty on the host, which Prometheus reads as no label).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    pub process: String,
    pub pod: String,
    pub container: String,
}

/// The label value for "every other value" once a family is at its bound.
pub const OTHER: &str = "other";

/// Every series name `/metrics` can carry, with its labels, as it appears in PromQL (counters
/// with `_total`, histograms as `_bucket`/`_sum`/`_count`). The alert rules and the dashboard
/// under deploy/ are checked against it (tests/tests/deploy.rs), and a unit test below checks
/// it against the registry's own encoding.
/// The `listener` label of a namespace's refusals that no listener could be named for.
pub const UNATTRIBUTED: &str = "unattributed";

pub const EXPORTED: &[(&str, &[&str])] = &[
    (
        "tcpq_listen_refusals_total",
        &["netns", "listener", "process", "pod", "container", "kind"],
    ),
    (
        "tcpq_listen_refused_total",
        &["netns", "listener", "process", "pod", "container"],
    ),
    (
        "tcpq_listen_refused_uncertain_total",
        &["netns", "listener", "process", "pod", "container"],
    ),
    ("tcpq_family_armed", &["family"]),
    ("tcpq_accepts_total", &["netns", "listener"]),
    (
        "tcpq_accept_wait_seconds_bucket",
        &["netns", "listener", "le"],
    ),
    ("tcpq_accept_wait_seconds_sum", &["netns", "listener"]),
    ("tcpq_accept_wait_seconds_count", &["netns", "listener"]),
    (
        "tcpq_connects_total",
        &[
            "netns",
            "process",
            "pod",
            "container",
            "destination",
            "result",
        ],
    ),
    (
        "tcpq_connect_latency_seconds_bucket",
        &["destination", "le"],
    ),
    ("tcpq_connect_latency_seconds_sum", &["destination"]),
    ("tcpq_connect_latency_seconds_count", &["destination"]),
    ("tcpq_conntrack_drops_total", &["netns", "kind"]),
    ("tcpq_conntrack_entries", &["netns"]),
    ("tcpq_conntrack_max", &["netns"]),
    ("tcpq_lost_events_total", &["family"]),
    ("tcpq_cause_active", &["cause", "where"]),
    ("tcpq_events_total", &[]),
    ("tcpq_labels_folded", &[]),
    ("tcpq_last_update_seconds", &[]),
    ("tcpq_process_cpu_seconds_total", &[]),
    ("tcpq_process_resident_memory_bytes", &[]),
];

/// Admits at most `cap` distinct label values; the rest map to `other`.
#[derive(Debug, Clone)]
pub struct LabelBudget {
    cap: usize,
    admitted: HashSet<String>,
    /// Values folded into `other` (distinct values seen past the bound).
    pub folded: HashSet<String>,
}

impl LabelBudget {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            admitted: HashSet::new(),
            folded: HashSet::new(),
        }
    }

    pub fn label(&mut self, value: String) -> String {
        if self.admitted.contains(&value) {
            return value;
        }
        if self.admitted.len() < self.cap {
            self.admitted.insert(value.clone());
            return value;
        }
        if self.folded.len() < 100_000 {
            self.folded.insert(value);
        }
        OTHER.to_string()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    netns: String,
    listener: String,
    process: String,
    pod: String,
    container: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerProcess {
    netns: String,
    listener: String,
    process: String,
    pod: String,
    container: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerOnly {
    netns: String,
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectLabels {
    netns: String,
    process: String,
    pod: String,
    container: String,
    destination: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationOnly {
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CtLabels {
    netns: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetnsOnly {
    netns: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabel {
    family: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: String,
    #[prometheus(flatten)]
    place: WhereLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhereLabel {
    r#where: String,
}

pub struct Metrics {
    registry: Registry,
    listen: Family<ListenerLabels, Counter>,
    refused: Family<ListenerProcess, Counter>,
    uncertain: Family<ListenerProcess, Counter>,
    family_armed: Family<FamilyLabel, Gauge>,
    accepts: Family<ListenerOnly, Counter>,
    accept_wait: Family<ListenerOnly, Histogram>,
    connects: Family<ConnectLabels, Counter>,
    connect_latency: Family<DestinationOnly, Histogram>,
    conntrack: Family<CtLabels, Counter>,
    ct_entries: Family<NetnsOnly, Gauge>,
    ct_max: Family<NetnsOnly, Gauge>,
    lost: Family<FamilyLabel, Counter>,
    causes: Family<CauseLabels, Gauge>,
    events: Counter,
    folded_labels: Gauge,
    last_update: Gauge<f64, AtomicU64>,
    cpu_seconds: Counter<f64, AtomicU64>,
    rss_bytes: Gauge,
    /// This process's CPU seconds at the last update.
    last_cpu: f64,
    listeners_budget: LabelBudget,
    dest_budget: LabelBudget,
    process_budget: LabelBudget,
    netns_budget: LabelBudget,
    pod_budget: LabelBudget,
    last_lost: Lost,
    /// The last known owner of each listener ((netns, port) → comm): an interval whose owner
    /// lookup came back empty (the process was gone, or not found yet) keeps the listener's
    /// series instead of starting one with `process=""`.
    known_owners: HashMap<(u32, u16), Owner>,
}

/// This process's CPU seconds (user + system) and resident bytes, from /proc/self.
fn own_usage() -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    Some((ticks as f64 / hz, pages * page))
}

/// Adds an interval's nanosecond histogram to a Prometheus histogram in seconds.
fn observe_ns(into: &Histogram, from: &hdrhistogram::Histogram<u64>) {
    for v in from.iter_recorded() {
        for _ in 0..v.count_since_last_iteration() {
            into.observe(v.value_iterated_to() as f64 / 1e9);
        }
    }
}

fn seconds_histogram() -> Histogram {
    // 10 µs … ~84 s.
    Histogram::new(exponential_buckets(1e-5, 2.0, 24))
}

impl Metrics {
    pub fn new(top_k: usize) -> Self {
        let mut registry = Registry::with_prefix("tcpq");
        let listen = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "listen_refusals",
            "Connections refused or degraded at a listener, by kind (syn, ack, synq, syn_backlog: dropped; cookie: answered with a syncookie; synack_retrans, reset)",
            listen.clone(),
        );
        let refused = Family::<ListenerProcess, Counter>::default();
        registry.register(
            "listen_refused",
            "Connections a listener refused, exact: its sk_drops as sock_diag reports it (counted with no program attached; listen_refusals gives the kinds while the listen family is traced)",
            refused.clone(),
        );
        let uncertain = Family::<ListenerProcess, Counter>::default();
        registry.register(
            "listen_refused_uncertain",
            "Of listen_refused, those counted after the listener closed together with other listeners of its namespace that were refusing too: the namespace's total is exact, the split among them follows their last rates",
            uncertain.clone(),
        );
        let family_armed = Family::<FamilyLabel, Gauge>::default();
        registry.register(
            "family_armed",
            "1 while a hook family's tracing programs are attached (its kernel counters showed trouble), 0 while only counters are watched",
            family_armed.clone(),
        );
        let accepts = Family::<ListenerOnly, Counter>::default();
        registry.register(
            "accepts",
            "Connections accepted by the application",
            accepts.clone(),
        );
        let accept_wait = Family::<ListenerOnly, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        registry.register(
            "accept_wait_seconds",
            "Time connections waited in the accept queue",
            accept_wait.clone(),
        );
        let connects = Family::<ConnectLabels, Counter>::default();
        registry.register(
            "connects",
            "Outbound connect outcomes per process and destination (result: ok, refused, timeout or the errno name)",
            connects.clone(),
        );
        let connect_latency = Family::<DestinationOnly, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        registry.register(
            "connect_latency_seconds",
            "TCP handshake time of outbound connects",
            connect_latency.clone(),
        );
        let conntrack = Family::<CtLabels, Counter>::default();
        registry.register(
            "conntrack_drops",
            "Packets dropped by netfilter (kind: table_full or rule)",
            conntrack.clone(),
        );
        let ct_entries = Family::<NetnsOnly, Gauge>::default();
        registry.register(
            "conntrack_entries",
            "Conntrack entries in use in a network namespace (nf_conntrack_count), at the last reading",
            ct_entries.clone(),
        );
        let ct_max = Family::<NetnsOnly, Gauge>::default();
        registry.register(
            "conntrack_max",
            "The conntrack table's limit seen from a network namespace (nf_conntrack_max)",
            ct_max.clone(),
        );
        let lost = Family::<FamilyLabel, Counter>::default();
        registry.register(
            "lost_events",
            "Events lost because a ring buffer was full, per hook family; family=missed_runs: program runs the kernel skipped because the program was already running on that CPU",
            lost.clone(),
        );
        let causes = Family::<CauseLabels, Gauge>::default();
        registry.register(
            "cause_active",
            "1 for each cause found in the last interval",
            causes.clone(),
        );
        let events = Counter::default();
        registry.register("events", "Events read from the kernel", events.clone());
        let folded_labels = Gauge::default();
        registry.register(
            "labels_folded",
            "Distinct label values summed into `other` because of the cardinality bound",
            folded_labels.clone(),
        );
        let last_update = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "last_update_seconds",
            "Unix time at which the last interval was folded in (moves every --interval while collection runs)",
            last_update.clone(),
        );
        let cpu_seconds = Counter::<f64, AtomicU64>::default();
        registry.register(
            "process_cpu_seconds",
            "CPU time (user + system) tcpq's own process used",
            cpu_seconds.clone(),
        );
        let rss_bytes = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "tcpq's own resident memory",
            rss_bytes.clone(),
        );
        // Loss is always shown, zero included.
        for family in [
            "listen",
            "connect",
            "drop",
            "accept",
            "missed_runs",
            "unresolved",
        ] {
            let _ = lost.get_or_create(&FamilyLabel {
                family: family.into(),
            });
        }
        Self {
            registry,
            listen,
            refused,
            uncertain,
            family_armed,
            accepts,
            accept_wait,
            connects,
            connect_latency,
            conntrack,
            ct_entries,
            ct_max,
            lost,
            causes,
            events,
            folded_labels,
            last_update,
            cpu_seconds,
            rss_bytes,
            last_cpu: 0.0,
            listeners_budget: LabelBudget::new(top_k),
            dest_budget: LabelBudget::new(top_k),
            process_budget: LabelBudget::new(top_k),
            netns_budget: LabelBudget::new(top_k),
            pod_budget: LabelBudget::new(top_k),
            last_lost: Lost::default(),
            known_owners: HashMap::new(),
        }
    }

    /// Adds one interval. `owners` names a listener's owner ((netns, port) → process, pod,
    /// container); `pods` the pod and container of a connecting process (pid → (pod, container)).
    pub fn update(
        &mut self,
        agg: &Aggregates,
        causes: &[Cause],
        lost: Lost,
        owners: &HashMap<(u32, u16), Owner>,
        pods: &HashMap<u32, (String, String)>,
    ) {
        self.events.inc_by(agg.events);
        // Predicted kinds (counters first) are capped at tier 0's exact count, as in `top`.
        let exact: HashMap<(u32, std::net::IpAddr, u16), u64> = agg
            .tier0_listeners
            .iter()
            .map(|(id, t)| ((id.netns, id.laddr, id.lport), t.refused_interval))
            .collect();
        for (k, o) in owners {
            if self.known_owners.len() < MAX_KNOWN_OWNERS || self.known_owners.contains_key(k) {
                self.known_owners.insert(*k, o.clone());
            }
        }
        for a in agg.overflow.listeners.values() {
            let mut total = a.total;
            if !agg.listen_confirmed
                && let Some(n) = exact.get(&(a.key.netns, a.key.laddr, a.key.lport))
            {
                total.cap_refusals(*n);
            }
            let listener = self
                .listeners_budget
                .label(endpoint(a.key.laddr, a.key.lport));
            let netns = self.netns_budget.label(a.key.netns.to_string());
            let owner = self.owner_labels(a.key.netns, a.key.lport);
            for k in OverflowKind::ALL {
                let n = total.get(k);
                if n > 0 {
                    self.listen
                        .get_or_create(&ListenerLabels {
                            netns: netns.clone(),
                            listener: listener.clone(),
                            process: owner.process.clone(),
                            pod: owner.pod.clone(),
                            container: owner.container.clone(),
                            kind: k.id().to_string(),
                        })
                        .inc_by(n);
                }
            }
        }
        for (id, t) in &agg.tier0_listeners {
            if t.refused_interval == 0 {
                continue;
            }
            let owner = self.owner_labels(id.netns, id.lport);
            let l = ListenerProcess {
                netns: self.netns_budget.label(id.netns.to_string()),
                listener: self.listeners_budget.label(endpoint(id.laddr, id.lport)),
                process: owner.process,
                pod: owner.pod,
                container: owner.container,
            };
            self.refused.get_or_create(&l).inc_by(t.refused_interval);
            if t.uncertain_interval > 0 {
                self.uncertain
                    .get_or_create(&l)
                    .inc_by(t.uncertain_interval);
            }
        }
        // Refusals no listener could be named for (created and closed between two readings):
        // a series of their own, so a namespace's series still add up to its ListenDrops.
        for (ns, n) in &agg.tier0_unattributed {
            let l = ListenerProcess {
                netns: self.netns_budget.label(ns.to_string()),
                listener: UNATTRIBUTED.to_string(),
                process: String::new(),
                pod: String::new(),
                container: String::new(),
            };
            self.refused.get_or_create(&l).inc_by(*n);
        }
        for f in &agg.families {
            self.family_armed
                .get_or_create(&FamilyLabel {
                    family: f.family.into(),
                })
                .set((f.state == "tracing") as i64);
        }
        for ((ns, laddr, lport), s) in &agg.accepts {
            let l = ListenerOnly {
                netns: self.netns_budget.label(ns.to_string()),
                listener: self.listeners_budget.label(endpoint(*laddr, *lport)),
            };
            self.accepts.get_or_create(&l).inc_by(s.accepts);
            let h = self.accept_wait.get_or_create(&l);
            observe_ns(&h, &s.wait_ns);
        }
        for (k, s) in &agg.connects.by_key {
            let destination = self.dest_budget.label(endpoint(k.daddr, k.dport));
            let process = self.process_budget.label(s.comm.clone());
            let netns = self.netns_budget.label(k.netns.to_string());
            let (pod, container) = pods.get(&k.tgid).cloned().unwrap_or_default();
            let (pod, container) = self.pod_labels(pod, container);
            for (r, n) in &s.results {
                self.connects
                    .get_or_create(&ConnectLabels {
                        netns: netns.clone(),
                        process: process.clone(),
                        pod: pod.clone(),
                        container: container.clone(),
                        destination: destination.clone(),
                        result: r.id(),
                    })
                    .inc_by(*n);
            }
            let h = self
                .connect_latency
                .get_or_create(&DestinationOnly { destination });
            observe_ns(&h, &s.handshake_ns);
        }
        for ((ns, kind), n) in &agg.drops {
            let netns = self.netns_budget.label(ns.to_string());
            self.conntrack
                .get_or_create(&CtLabels {
                    netns,
                    kind: kind.to_string(),
                })
                .inc_by(*n);
        }
        // Gauges of the tables seen now: a namespace gone is dropped with its series.
        self.ct_entries.clear();
        self.ct_max.clear();
        for (ns, c) in &agg.tier0_conntrack_tables {
            let l = NetnsOnly {
                netns: self.netns_budget.label(ns.to_string()),
            };
            // Namespaces folded into `other` add up (their counts; the limit is one value).
            self.ct_entries.get_or_create(&l).inc_by(c.count as i64);
            self.ct_max.get_or_create(&l).set(c.max as i64);
        }
        if let Some((cpu, rss)) = own_usage() {
            if cpu > self.last_cpu {
                self.cpu_seconds.inc_by(cpu - self.last_cpu);
                self.last_cpu = cpu;
            }
            self.rss_bytes.set(rss as i64);
        }
        for (family, now, before) in [
            ("listen", lost.listen, self.last_lost.listen),
            ("connect", lost.connect, self.last_lost.connect),
            ("drop", lost.drop, self.last_lost.drop),
            ("accept", lost.accept, self.last_lost.accept),
            ("missed_runs", lost.missed_runs, self.last_lost.missed_runs),
            ("unresolved", lost.unresolved, self.last_lost.unresolved),
        ] {
            self.lost
                .get_or_create(&FamilyLabel {
                    family: family.into(),
                })
                .inc_by(now.saturating_sub(before));
        }
        self.last_lost = lost;
        // Causes are a state, not a count: only the last interval's are present.
        self.causes.clear();
        for c in causes.iter().take(50) {
            self.causes
                .get_or_create(&CauseLabels {
                    cause: c.finding.cause.to_string(),
                    place: WhereLabel {
                        r#where: c.place.clone(),
                    },
                })
                .set(1);
        }
        let folded = self.listeners_budget.folded.len()
            + self.dest_budget.folded.len()
            + self.process_budget.folded.len()
            + self.netns_budget.folded.len()
            + self.pod_budget.folded.len();
        self.folded_labels.set(folded as i64);
        if let Ok(now) = SystemTime::now().duration_since(UNIX_EPOCH) {
            self.last_update.set(now.as_secs_f64());
        }
    }

    /// A listener's owner as bounded labels (the last one known: an interval whose lookup came
    /// back empty keeps the listener's series).
    fn owner_labels(&mut self, netns: u32, port: u16) -> Owner {
        let o = self
            .known_owners
            .get(&(netns, port))
            .cloned()
            .unwrap_or_default();
        let (pod, container) = self.pod_labels(o.pod, o.container);
        Owner {
            process: self.process_budget.label(o.process),
            pod,
            container,
        }
    }

    /// Pod and container as bounded labels: empty stays empty (the host); past the bound both
    /// become `other`.
    fn pod_labels(&mut self, pod: String, container: String) -> (String, String) {
        if pod.is_empty() && container.is_empty() {
            return (pod, container);
        }
        let key = format!("{pod}\u{0}{container}");
        if self.pod_budget.label(key) == OTHER {
            (OTHER.to_string(), OTHER.to_string())
        } else {
            (pod, container)
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        if encode(&mut s, &self.registry).is_err() {
            s.clear();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series_value(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(f64::NAN)
    }

    #[test]
    fn label_budget_folds_past_the_bound() {
        let mut b = LabelBudget::new(2);
        assert_eq!(b.label("a".into()), "a");
        assert_eq!(b.label("b".into()), "b");
        assert_eq!(b.label("c".into()), OTHER);
        assert_eq!(b.label("a".into()), "a");
        assert_eq!(b.folded.len(), 1);
    }

    #[test]
    fn empty_interval_encodes_and_counters_only_grow() {
        let mut m = Metrics::new(3);
        m.update(
            &Aggregates::default(),
            &[],
            Lost {
                listen: 5,
                ..Lost::default()
            },
            &HashMap::new(),
            &HashMap::new(),
        );
        let first = m.encode();
        assert!(
            first.contains("tcpq_lost_events_total{family=\"listen\"} 5"),
            "{first}"
        );
        m.update(
            &Aggregates::default(),
            &[],
            Lost {
                listen: 8,
                missed_runs: 2,
                ..Lost::default()
            },
            &HashMap::new(),
            &HashMap::new(),
        );
        let second = m.encode();
        assert!(
            second.contains("tcpq_lost_events_total{family=\"listen\"} 8"),
            "{second}"
        );
        assert!(
            first.contains("tcpq_lost_events_total{family=\"missed_runs\"} 0")
                && second.contains("tcpq_lost_events_total{family=\"missed_runs\"} 2"),
            "{second}"
        );
        assert!(second.ends_with("# EOF\n"));
        let updated = series_value(&second, "tcpq_last_update_seconds");
        assert!(updated > 1.7e9, "{second}");
    }

    /// EXPORTED lists exactly the series names and labels the registry encodes once every
    /// family holds a series.
    #[test]
    fn exported_matches_the_registry() {
        let m = Metrics::new(3);
        let ll = ListenerLabels {
            netns: "1".into(),
            listener: "127.0.0.1:80".into(),
            process: "p".into(),
            pod: "ns/pod".into(),
            container: "c".into(),
            kind: "syn".into(),
        };
        m.listen.get_or_create(&ll).inc();
        let lp = ListenerProcess {
            netns: "1".into(),
            listener: "l".into(),
            process: "p".into(),
            pod: "ns/pod".into(),
            container: "c".into(),
        };
        m.refused.get_or_create(&lp).inc();
        m.uncertain.get_or_create(&lp).inc();
        let lo = ListenerOnly {
            netns: "1".into(),
            listener: "l".into(),
        };
        m.accepts.get_or_create(&lo).inc();
        m.accept_wait.get_or_create(&lo).observe(0.1);
        m.connects
            .get_or_create(&ConnectLabels {
                netns: "1".into(),
                process: "p".into(),
                pod: "ns/pod".into(),
                container: "c".into(),
                destination: "d".into(),
                result: "ok".into(),
            })
            .inc();
        m.connect_latency
            .get_or_create(&DestinationOnly {
                destination: "d".into(),
            })
            .observe(0.1);
        m.conntrack
            .get_or_create(&CtLabels {
                netns: "1".into(),
                kind: "rule".into(),
            })
            .inc();
        let agg = Aggregates {
            tier0_conntrack_tables: vec![(
                1,
                crate::snapshot::nswatch::CtReading {
                    count: 10,
                    max: 100,
                    drop: 0,
                },
            )],
            ..Aggregates::default()
        };
        let mut m = m;
        m.update(&agg, &[], Lost::default(), &HashMap::new(), &HashMap::new());
        // Set after update(): it replaces the causes with the interval's.
        m.causes
            .get_or_create(&CauseLabels {
                cause: "c".into(),
                place: WhereLabel {
                    r#where: "w".into(),
                },
            })
            .set(1);
        m.family_armed
            .get_or_create(&FamilyLabel {
                family: "listen".into(),
            })
            .set(1);
        let text = m.encode();
        let mut seen: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
            Default::default();
        for l in text.lines().filter(|l| l.starts_with("tcpq_")) {
            let name_end = l.find(['{', ' ']).unwrap();
            let labels = seen.entry(l[..name_end].to_string()).or_default();
            if let Some(inner) = l[name_end..].strip_prefix('{') {
                for pair in inner[..inner.find('}').unwrap()].split(',') {
                    labels.insert(pair.split('=').next().unwrap().to_string());
                }
            }
        }
        let want: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = EXPORTED
            .iter()
            .map(|(n, ls)| (n.to_string(), ls.iter().map(|l| l.to_string()).collect()))
            .collect();
        assert_eq!(seen, want, "{text}");
        assert!(series_value(&text, "tcpq_conntrack_entries{netns=\"1\"}") == 10.0);
        assert!(series_value(&text, "tcpq_process_resident_memory_bytes") > 0.0);
    }

    /// A namespace's series add up to its refusals: a guessed split is also counted as
    /// uncertain, refusals no listener could be named for have a series of their own.
    #[test]
    fn uncertain_and_unattributed_refusals_have_series() {
        let agg = Aggregates::with_refusals(7, 8080, 10, 4, 3);
        let mut m = Metrics::new(5);
        m.update(&agg, &[], Lost::default(), &HashMap::new(), &HashMap::new());
        let text = m.encode();
        let sum: f64 = text
            .lines()
            .filter(|l| l.starts_with("tcpq_listen_refused_total{netns=\"7\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(sum, 13.0, "{text}");
        assert!(
            text.contains("tcpq_listen_refused_total{netns=\"7\",listener=\"unattributed\",process=\"\",pod=\"\",container=\"\"} 3"),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l.starts_with(
                "tcpq_listen_refused_uncertain_total{netns=\"7\",listener=\"127.0.0.1:8080\""
            ) && l.ends_with(" 4")),
            "{text}"
        );
    }

    /// A listener keeps its one series when an interval's owner lookup comes back empty.
    #[test]
    fn a_listener_keeps_its_process_label() {
        use crate::live::engine::{ListenerId, ListenerTotals};
        let id = ListenerId {
            netns: 7,
            laddr: "127.0.0.1".parse().unwrap(),
            lport: 8080,
            cookie: 1,
        };
        let agg = |n| {
            let mut t = ListenerTotals::default();
            t.refused_interval = n;
            Aggregates {
                tier0_listeners: vec![(id, t)],
                ..Aggregates::default()
            }
        };
        let mut m = Metrics::new(5);
        let owners = HashMap::from([(
            (7, 8080),
            Owner {
                process: "nginx".into(),
                pod: "shop/web-1".into(),
                container: "nginx".into(),
            },
        )]);
        m.update(&agg(3), &[], Lost::default(), &owners, &HashMap::new());
        m.update(
            &agg(4),
            &[],
            Lost::default(),
            &HashMap::new(),
            &HashMap::new(),
        );
        let text = m.encode();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("tcpq_listen_refused_total"))
            .collect();
        assert_eq!(
            series,
            [
                "tcpq_listen_refused_total{netns=\"7\",listener=\"127.0.0.1:8080\",process=\"nginx\",pod=\"shop/web-1\",container=\"nginx\"} 7"
            ]
        );
    }
}
