//! `tcpq export`: Prometheus metrics (prometheus-client) fed from each interval's aggregates.
//! Counters only ever grow; label values are bounded per metric family (the first `top_k`
//! distinct values keep their own label, later ones are summed into `other`).
mod budget;
mod exported;
#[cfg(test)]
mod tests;
mod update;

use std::{collections::HashMap, sync::atomic::AtomicU64};

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

pub use budget::LabelBudget;
pub use exported::EXPORTED;

use crate::live::session::Lost;

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

/// The `listener` label of a namespace's refusals that no listener could be named for.
pub const UNATTRIBUTED: &str = "unattributed";

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

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        if encode(&mut s, &self.registry).is_err() {
            s.clear();
        }
        s
    }
}
