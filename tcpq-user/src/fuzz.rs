//! Hostile input: every decoder and parser takes arbitrary bytes/text without panicking
//! (proptest, bounded case counts so the suite stays fast).
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..160)) {
        let _ = crate::family::listen::decode::decode_listen(&bytes);
        let _ = crate::family::connect::decode::decode_connect(&bytes);
        let _ = crate::family::conntrack::decode::decode_drop(&bytes);
        let _ = crate::family::accept::decode::decode_accept(&bytes);
    }

    #[test]
    fn text_parsers_never_panic(text in ".{0,400}") {
        let _ = crate::snapshot::counters::parse_pairs(&text);
        let _ = crate::snapshot::counters::parse_ct_stat(&text);
        let _ = crate::family::conntrack::aggregate::parse_entries(&text);
        let _ = crate::family::connect::diagnose::PortRange::parse(&text, &text);
        let _ = crate::kernel::tracefs::parse_format(&text);
        let _ = crate::kernel::env::parse_cap_eff(&text);
        let _ = crate::kernel::env::parse_release(&text);
        let _ = crate::snapshot::procs::accept_fd_of(&text);
        let _ = crate::cli::parse_duration(&text);
        let _ = crate::cli::parse_port(&text);
        let _ = crate::cmd::filter::DstFilter::parse(&text);
    }

    #[test]
    fn structured_netstat_is_parsed(values in proptest::collection::vec(any::<i64>(), 1..20)) {
        let names: Vec<String> = (0..values.len()).map(|i| format!("C{i}")).collect();
        let text = format!("TcpExt: {}\nTcpExt: {}\n", names.join(" "), values.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(" "));
        let m = crate::snapshot::counters::parse_pairs(&text);
        for (n, v) in names.iter().zip(values.iter()) {
            prop_assert_eq!(m[&format!("TcpExt:{n}")], (*v).max(0) as u64);
        }
    }
}

/// Memory stays bounded: a million distinct clients and a hundred thousand listeners or
/// destinations through the userspace tables, with exact totals and counted evictions.
#[test]
fn tables_stay_bounded_under_a_million_tuples() {
    use std::net::{IpAddr, Ipv4Addr};

    use crate::family::{
        connect::{
            aggregate::ConnectAggregator,
            decode::{ConnectOutcome, ConnectResult},
        },
        listen::{
            aggregate::{ClientSet, ListenLines, OverflowAggregator},
            decode::{OverflowEvent, OverflowKind},
        },
    };
    let ip = |n: u32| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (n & 0x00ff_ffff)));
    let mut agg = OverflowAggregator::new(10_000);
    let mut limiter = ListenLines::new(20);
    let mut printed = 0u64;
    for i in 0..1_000_000u32 {
        let ev = OverflowEvent {
            kind: OverflowKind::Syn,
            ts_ns: 5_000_000_000,
            netns: 1,
            cookie: (i % 100_000) as u64,
            laddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            lport: (i % 100_000) as u16,
            raddr: ip(i),
            rport: (i % 60_000) as u16,
            queue: 9,
            backlog: 8,
            synq: 0,
        };
        agg.record(&ev);
        if limiter.admit_event(5, &ev).1 == crate::family::listen::aggregate::Admit::Print {
            printed += 1;
        }
    }
    assert!(agg.listeners.len() <= 10_000);
    assert!(agg.evicted > 0, "evictions are counted");
    assert_eq!(
        agg.totals().get(OverflowKind::Syn),
        1_000_000,
        "no count is lost"
    );
    assert!(
        agg.listeners
            .values()
            .all(|l| l.clients.len() <= ClientSet::CAP)
    );
    let aggregated: u64 = limiter.all_lines().iter().map(|l| l.count).sum();
    assert_eq!(
        printed + aggregated,
        1_000_000,
        "lines + aggregates = events"
    );

    let mut c = ConnectAggregator::new(20_000);
    for i in 0..1_000_000u32 {
        c.record(&ConnectOutcome {
            ts_ns: 0,
            netns: 1,
            tgid: 7,
            comm: "nginx".into(),
            saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sport: 40000,
            daddr: ip(i % 100_000),
            dport: 9000,
            result: ConnectResult::Ok,
            syscall_ns: Some(1_000),
            handshake_ns: Some(2_000),
            syn_retrans: 0,
        });
    }
    assert!(c.by_key.len() <= 20_000);
    assert!(c.evicted > 0);
}
