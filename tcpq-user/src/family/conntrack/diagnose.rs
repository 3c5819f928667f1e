//! Conntrack: the table's state per namespace and what to change. Pure and unit-tested.
use super::aggregate::TopConsumers;
use crate::diagnosis::{Finding, cause};

/// The rules that stop tracking a local service's loopback traffic, both directions: on
/// loopback a flow is tracked where its packets are sent — the output hook, for the requests
/// (to addr:port) and for the replies (from addr:port) alike — and the packet keeps that
/// verdict when it comes back in through prerouting.
pub fn notrack_rules(addr: &str, port: u16) -> String {
    let (family, tables) = if addr.contains(':') {
        ("ip6", "ip6tables")
    } else {
        ("ip", "iptables")
    };
    format!(
        "exempt this local flow from tracking (both directions leave through the output hook on loopback): nft add table inet raw; nft 'add chain inet raw out {{ type filter hook output priority raw; }}'; nft add rule inet raw out {family} daddr {addr} tcp dport {port} notrack; nft add rule inet raw out {family} saddr {addr} tcp sport {port} notrack — or {tables} -t raw -A OUTPUT -d {addr} -p tcp --dport {port} -j NOTRACK; {tables} -t raw -A OUTPUT -s {addr} -p tcp --sport {port} -j NOTRACK"
    )
}

/// A per-source limit when one address or network holds `n` of `count` entries (≥ 20 %):
/// entries a single client can pin, with room for its fair share.
fn per_source_limit(who: &str, n: u64, count: u64, max: u64) -> Option<String> {
    if count == 0 || n * 5 < count {
        return None;
    }
    let limit = (max / 20).max(64);
    let (mask, nft_key) = if who.ends_with("/24") {
        ("24", "ip saddr & 255.255.255.0")
    } else if who.ends_with("/64") {
        ("64", "ip6 saddr & ffff:ffff:ffff:ffff::")
    } else if who.contains(':') {
        ("128", "ip6 saddr")
    } else {
        ("32", "ip saddr")
    };
    let family = if nft_key.starts_with("ip6") {
        "ipv6_addr"
    } else {
        "ipv4_addr"
    };
    Some(format!(
        "{who} holds {n} of {count} entries: cap what one source may open — nft add table inet filter; nft 'add chain inet filter in {{ type filter hook input priority 0; }}'; nft 'add set inet filter per_source {{ type {family}; flags dynamic; }}'; nft add rule inet filter in ct state new add @per_source {{ {nft_key} ct count over {limit} }} reject — or iptables -A INPUT -m conntrack --ctstate NEW -m connlimit --connlimit-above {limit} --connlimit-mask {mask} -j REJECT"
    ))
}

/// Evidence about one namespace's table.
#[derive(Debug, Clone, Default)]
pub struct CtEvidence {
    pub count: u64,
    pub max: u64,
    pub buckets: u64,
    pub established_timeout: u64,
    /// Table-full drops (stat `drop` delta, or traced) over `duration_s`.
    pub table_full_drops: u64,
    pub rule_drops: u64,
    pub early_drops: u64,
    pub duration_s: f64,
    pub top: TopConsumers,
    /// The busiest local flow (for the notrack suggestion): "127.0.0.1" / "tcp/9000".
    pub busiest_local_dport: Option<(String, u16)>,
    pub ns_prefix: String,
}

/// At least 90 % of the table in use.
pub fn near_full(count: u64, max: u64) -> bool {
    max > 0 && count * 100 >= max * 90
}

pub fn diagnose_conntrack(e: &CtEvidence) -> Vec<Finding> {
    let mut out = Vec::new();
    let headroom = e.max.saturating_sub(e.count);
    // From 90 % on: the level at which the live modes arm the family, and where a burst of new
    // flows (a reconnect storm after a restart) fills the rest in seconds.
    if e.table_full_drops > 0 || near_full(e.count, e.max) {
        let new_max = (e.max.max(e.count) * 4).max(262_144).next_power_of_two();
        // ~320 bytes per entry (struct nf_conn + hash) is the usual estimate.
        let mem_mb = new_max * 320 / (1024 * 1024);
        let mut fix = vec![crate::fixes::global_sysctl_fix(
            "net.netfilter.nf_conntrack_max",
            &new_max.to_string(),
            &format!(
                "~{mem_mb} MiB of kernel memory at full use; also raise the hash: echo {} > /sys/module/nf_conntrack/parameters/hashsize",
                new_max / 4
            ),
            !e.ns_prefix.is_empty(),
        )];
        if e.established_timeout >= 86_400 {
            fix.push(crate::fixes::sysctl_fix(
                &e.ns_prefix,
                "net.netfilter.nf_conntrack_tcp_timeout_established",
                "3600",
                &format!(
                    "now {} s ({:.1} days): idle flows hold entries that long",
                    e.established_timeout,
                    e.established_timeout as f64 / 86_400.0
                ),
            ));
        }
        if let Some((addr, port)) = &e.busiest_local_dport {
            fix.push(notrack_rules(addr, *port));
        }
        // The one source or source network that holds the biggest share, if it is big.
        let biggest = e
            .top
            .by_source
            .first()
            .into_iter()
            .chain(e.top.by_source_net.first())
            .max_by_key(|(_, n)| *n);
        if let Some((who, n)) = biggest
            && let Some(f) = per_source_limit(who, *n, e.count.max(1), e.max)
        {
            fix.push(f);
        }
        fix.push("if no rule needs connection state (no `ct state`, NAT or conntrack match), stop loading conntrack for this namespace".into());
        out.push(Finding {
            cause: cause::CONNTRACK_FULL,
            impact: e.table_full_drops.max(1),
            text: format!(
                "conntrack table {}: {} of {} entries ({} free){}; {}{}{}",
                if e.table_full_drops > 0 || headroom == 0 { "full" } else { "nearly full" },
                e.count,
                e.max,
                headroom,
                if e.buckets > 0 { format!(", {} hash buckets", e.buckets) } else { String::new() },
                if e.table_full_drops > 0 {
                    format!(
                        "{} packets dropped without an entry in {:.0} s (\"nf_conntrack: table full, dropping packet\")",
                        e.table_full_drops, e.duration_s
                    )
                } else {
                    "no drop yet: new flows are refused once it is full".to_string()
                },
                match e.top.by_source.first() {
                    Some((src, n)) => format!("; top source {src} holds {n} entries"),
                    None => String::new(),
                },
                match e.top.by_source_net.first() {
                    Some((net, n)) if e.top.by_source.first().is_none_or(|(_, m)| n > m) => {
                        format!(", and its network {net} holds {n}")
                    }
                    _ => String::new(),
                }
            ),
            fix,
        });
    } else if e.established_timeout >= 86_400 && e.top.idle_established > 0 {
        out.push(Finding {
            cause: cause::CONNTRACK_FULL,
            impact: e.top.idle_established,
            text: format!(
                "{} ESTABLISHED entries idle for more than an hour are kept for up to {:.1} days (nf_conntrack_tcp_timeout_established={}): the table will fill",
                e.top.idle_established,
                e.established_timeout as f64 / 86_400.0,
                e.established_timeout
            ),
            fix: vec![crate::fixes::sysctl_fix(
                &e.ns_prefix,
                "net.netfilter.nf_conntrack_tcp_timeout_established",
                "3600",
                "",
            )],
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{
        super::{aggregate::*, decode::*},
        *,
    };
    use crate::diagnosis::check::assert_text;

    #[test]
    fn source_networks_group_a_client_pool() {
        assert_eq!(source_net("10.1.2.3".parse().unwrap()), "10.1.2.0/24");
        assert_eq!(
            source_net("2001:db8:1:2:3::9".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
        let entries: Vec<CtEntry> = (1..=30u8)
            .map(|i| CtEntry {
                proto: "tcp".into(),
                timeout: 100,
                state: Some("ESTABLISHED".into()),
                src: format!("10.9.8.{i}").parse().unwrap(),
                dst: "10.0.0.1".parse().unwrap(),
                sport: Some(40000),
                dport: Some(80),
            })
            .collect();
        let top = top_consumers(&entries, 432_000, 3);
        assert_eq!(top.by_source_net, [("10.9.8.0/24".to_string(), 30)]);
        assert_eq!(top.by_source[0].1, 1);
    }

    #[test]
    fn notrack_covers_both_directions_in_output_and_ipv6() {
        let v4 = notrack_rules("127.0.0.1", 9000);
        assert!(
            v4.contains("out ip daddr 127.0.0.1 tcp dport 9000 notrack"),
            "{v4}"
        );
        assert!(
            v4.contains("out ip saddr 127.0.0.1 tcp sport 9000 notrack"),
            "{v4}"
        );
        assert!(
            v4.contains("iptables -t raw -A OUTPUT -s 127.0.0.1 -p tcp --sport 9000"),
            "{v4}"
        );
        assert!(!v4.contains("prerouting"), "{v4}");
        let v6 = notrack_rules("::1", 9000);
        assert!(
            v6.contains("out ip6 daddr ::1 tcp dport 9000 notrack"),
            "{v6}"
        );
        assert!(v6.contains("ip6tables -t raw"), "{v6}");
    }

    #[test]
    fn near_full_tables_and_big_sources_get_findings() {
        let mut e = CtEvidence {
            count: 920,
            max: 1000,
            established_timeout: 432_000,
            duration_s: 5.0,
            ..CtEvidence::default()
        };
        e.top.by_source = vec![("10.9.8.7".into(), 10)];
        e.top.by_source_net = vec![("10.9.8.0/24".into(), 600)];
        let f = diagnose_conntrack(&e);
        assert_eq!(f[0].cause, "conntrack_full");
        assert!(
            f[0].text
                .starts_with("conntrack table nearly full: 920 of 1000"),
            "{}",
            f[0].text
        );
        assert_text(&f[0], "no drop yet");
        assert_text(&f[0], "its network 10.9.8.0/24 holds 600");
        let limit = f[0]
            .fix
            .iter()
            .find(|x| x.contains("connlimit"))
            .expect("a per-source limit");
        assert!(limit.starts_with("10.9.8.0/24 holds 600 of 920"), "{limit}");
        assert!(
            limit.contains("ip saddr & 255.255.255.0 ct count over 64"),
            "{limit}"
        );
        assert!(limit.contains("--connlimit-mask 24"), "{limit}");
        // Below 90 %, with nothing idle for long: nothing to say.
        e.count = 800;
        e.top = TopConsumers::default();
        assert!(diagnose_conntrack(&e).is_empty());
        // A fair share gets no limit.
        assert_eq!(per_source_limit("10.0.0.1", 10, 1000, 1000), None);
    }

    #[test]
    fn entries_parse() {
        let t = "ipv4     2 tcp      6 431999 ESTABLISHED src=127.0.0.2 dst=127.0.0.1 sport=40000 dport=9000 src=127.0.0.1 dst=127.0.0.2 sport=9000 dport=40000 [ASSURED] mark=0 zone=0 use=2\nipv4     2 udp      17 29 src=10.0.0.1 dst=10.0.0.2 sport=53 dport=53 [UNREPLIED] src=10.0.0.2 dst=10.0.0.1 sport=53 dport=53 mark=0 use=2\ngarbage\n";
        let e = parse_entries(t);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].state.as_deref(), Some("ESTABLISHED"));
        assert_eq!(
            (e[0].src.to_string().as_str(), e[0].dport),
            ("127.0.0.2", Some(9000))
        );
        assert_eq!(e[1].state, None);
        let top = top_consumers(&e, 432_000, 5);
        assert_eq!(top.by_source[0], ("10.0.0.1".to_string(), 1));
        assert_eq!(top.idle_established, 0);
        let old = CtEntry {
            timeout: 100,
            ..e[0].clone()
        };
        assert_eq!(top_consumers(&[old], 432_000, 5).idle_established, 1);
    }

    #[test]
    fn kinds() {
        assert_eq!(drop_kind(true, true), "rule");
        assert_eq!(drop_kind(false, true), "table_full");
        assert_eq!(drop_kind(false, false), "rule");
    }

    #[test]
    fn verdict_text() {
        let e = CtEvidence {
            count: 64,
            max: 64,
            buckets: 1024,
            established_timeout: 432_000,
            table_full_drops: 40,
            duration_s: 3.0,
            top: TopConsumers {
                by_source: vec![("127.0.0.1".into(), 64)],
                ..Default::default()
            },
            busiest_local_dport: Some(("127.0.0.1".into(), 9000)),
            ..Default::default()
        };
        let f = diagnose_conntrack(&e);
        assert_eq!(f[0].cause, "conntrack_full");
        assert_text(&f[0], "64 of 64 entries (0 free)");
        let fixes = f[0].fix.join("\n");
        assert!(
            fixes.contains("nf_conntrack_max=262144") && fixes.contains("hashsize"),
            "{fixes}"
        );
        assert!(fixes.contains("nf_conntrack_tcp_timeout_established=3600"));
        assert!(fixes.contains("tcp dport 9000 notrack"));
        assert!(
            diagnose_conntrack(&CtEvidence {
                count: 10,
                max: 1000,
                established_timeout: 3600,
                ..Default::default()
            })
            .is_empty()
        );
    }
}
