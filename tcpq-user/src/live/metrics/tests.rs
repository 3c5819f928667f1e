//! The exporter's unit tests: intervals in, the OpenMetrics text they must give.
use std::collections::HashMap;

use super::*;
use crate::live::session::{Aggregates, Lost};

fn series_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(f64::NAN)
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
