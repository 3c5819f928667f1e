//! The catalogue of every series `tcpq export` serves (`EXPORTED`), for the checks of the
//! alert rules and dashboard under deploy/.

/// Every series name `/metrics` can carry, with its labels, as it appears in PromQL (counters
/// with `_total`, histograms as `_bucket`/`_sum`/`_count`). The alert rules and the dashboard
/// under deploy/ are checked against it (tests/tests/deploy.rs), and a unit test checks
/// it against the registry's own encoding (metrics::tests).
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
