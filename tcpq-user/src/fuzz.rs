//! Hostile input: every decoder and parser takes arbitrary bytes/text without panicking
//! (proptest, bounded case counts so the suite stays fast).
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..160)) {
        let _ = crate::decode::decode_listen(&bytes);
        let _ = crate::connect::decode_connect(&bytes);
        let _ = crate::conntrack::decode_drop(&bytes);
        let _ = crate::accept::decode_accept(&bytes);
    }

    #[test]
    fn text_parsers_never_panic(text in ".{0,400}") {
        let _ = crate::snapshot::counters::parse_pairs(&text);
        let _ = crate::conntrack::parse_stat(&text);
        let _ = crate::conntrack::parse_entries(&text);
        let _ = crate::connect::ports::PortRange::parse(&text, &text);
        let _ = crate::kernel::tracefs::parse_format(&text);
        let _ = crate::kernel::env::parse_cap_eff(&text);
        let _ = crate::kernel::env::parse_release(&text);
        let _ = crate::snapshot::procs::accept_fd_of(&text);
        let _ = crate::cli::parse_duration(&text);
        let _ = crate::cli::parse_port(&text);
        let _ = crate::cmd::trace_connect::DstFilter::parse(&text);
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
