//! The listen diagnosis's rules, one case each: which findings a listener's evidence gives, and
//! their text and fixes.
use super::*;
use crate::diagnosis::check::{assert_fix, assert_text};

fn ev() -> ListenerEvidence {
    ListenerEvidence {
        netns: 1,
        host_netns: 1,
        lport: 8080,
        owners: vec![Owner {
            pid: 42,
            comm: "nginx".into(),
        }],
        duration_s: 10.0,
        backlog: 8,
        last_queue: 9,
        sysctls: ListenSysctls {
            somaxconn: Some(4096),
            ..Default::default()
        },
        accepts: Some(100),
        app: App::Nginx,
        ..Default::default()
    }
}

#[test]
fn small_app_backlog_names_the_app_setting() {
    let mut e = ev();
    e.counts.add(OverflowKind::Syn, 30);
    e.counts.add(OverflowKind::Ack, 3);
    e.listen_arg = Some(8);
    let f = diagnose_listener(&e);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].cause, "accept_queue_full");
    assert_eq!(f[0].impact, 33);
    assert_text(
        &f[0],
        "min(listen() 8 [seen by tcpq], net.core.somaxconn 4096)",
    );
    assert!(f[0].text.contains("nginx's backlog is the limit"));
    assert!(f[0].text.contains("think they are connected"));
    assert_eq!(f[0].fix.len(), 1, "{:?}", f[0].fix);
    assert_fix(
        &f[0],
        0,
        "raise nginx's backlog to 1024: nginx `listen 8080 backlog=1024;` (in the server block); then make it call listen() again: `nginx -s reload`",
    );
    // Only the owner's syntax.
    assert!(!f[0].fix[0].contains("listen.backlog"), "{:?}", f[0].fix);
}

#[test]
fn unknown_owner_gets_one_generic_line() {
    let mut e = ev();
    e.app = App::Other;
    e.listen_arg = Some(8);
    e.counts.add(OverflowKind::Syn, 3);
    let f = diagnose_listener(&e);
    assert!(
        f[0].fix[0].starts_with(
            "raise the application's backlog to 1024: the backlog argument it passes to listen()"
        ) && f[0].fix[0].contains("restart it so it calls listen() again"),
        "{:?}",
        f[0].fix
    );
    assert!(!f[0].fix[0].contains("nginx") && !f[0].fix[0].contains("php-fpm"));
}

/// listen() 10 with somaxconn 10: raising either alone leaves the backlog at 10.
#[test]
fn equal_limits_need_both_raised() {
    let mut e = ev();
    e.backlog = 10;
    e.sysctls.somaxconn = Some(10);
    e.listen_arg = Some(10);
    e.counts.add(OverflowKind::Syn, 5);
    assert_eq!(
        backlog_limit(10, Some(10), Some(10)),
        BacklogLimit::Equal { limit: 10 }
    );
    let f = diagnose_listener(&e);
    assert_text(
        &f[0],
        "min(listen() 10 [seen by tcpq], net.core.somaxconn 10): both limits are 10, so raising only one leaves the backlog at 10",
    );
    assert!(
        !f[0].text.contains("somaxconn is the limit"),
        "{}",
        f[0].text
    );
    assert_eq!(
        f[0].fix[0],
        "raise both: net.core.somaxconn and nginx's backlog are both 10"
    );
    assert_fix(&f[0], 1, "sysctl -w net.core.somaxconn=1024");
    assert_fix(&f[0], 2, "`listen 8080 backlog=1024;`");
    // Not seen (diagnose, top): somaxconn first, the tie named, both fixes.
    e.listen_arg = None;
    let f = diagnose_listener(&e);
    assert_text(&f[0], "listen() ≥ 10 [inferred]");
    assert_text(
        &f[0],
        "or both are, if the application asked for exactly 10: then raise both",
    );
    assert!(f[0].fix[0].starts_with("sysctl -w net.core.somaxconn=1024"));
    assert_fix(&f[0], 1, "backlog=1024");
}

/// The SYN queue's limit is the accept queue's: somaxconn 10 under php-fpm's 511 caps both.
#[test]
fn syn_queue_under_somaxconn_puts_somaxconn_first() {
    let mut e = ev();
    e.app = App::PhpFpm;
    e.backlog = 10;
    e.max_synq = 11;
    e.listen_arg = Some(511);
    e.sysctls.somaxconn = Some(10);
    e.sysctls.tcp_max_syn_backlog = Some(128);
    e.counts.add(OverflowKind::Synq, 40);
    let f = diagnose_listener(&e);
    assert_eq!(f[0].cause, "syn_queue_full");
    assert_text(
        &f[0],
        "the SYN queue has the accept queue's limit: effective backlog 10 = min(listen() 511 [seen by tcpq], net.core.somaxconn 10): somaxconn is the limit",
    );
    let fix = &f[0].fix;
    assert!(
        fix[0].starts_with("sysctl -w net.core.somaxconn=1024"),
        "{fix:?}"
    );
    assert!(
        fix[1].contains("php-fpm `listen.backlog = 1024`"),
        "{fix:?}"
    );
    // Cookies off: 3/4 of 128 would stop the queue at 96, below the new backlog.
    assert!(
        fix[2].starts_with("sysctl -w net.ipv4.tcp_max_syn_backlog=2048"),
        "{fix:?}"
    );
    assert!(fix[3].contains("tcp_syncookies=1"), "{fix:?}");
    // A tcp_max_syn_backlog large enough is left alone.
    e.sysctls.tcp_max_syn_backlog = Some(4096);
    let f = diagnose_listener(&e);
    assert!(
        !f[0].fix.iter().any(|x| x.contains("tcp_max_syn_backlog")),
        "{:?}",
        f[0].fix
    );

    // Cookies (legitimate load): somaxconn first as well, no tcp_max_syn_backlog (its rule
    // only applies with cookies off).
    let mut e = ev();
    e.app = App::Fluentd;
    e.lport = 24224;
    e.backlog = 128;
    e.listen_arg = Some(511);
    e.sysctls.somaxconn = Some(128);
    e.sysctls.tcp_max_syn_backlog = Some(128);
    e.counts.add(OverflowKind::Cookie, 50);
    e.cookies_sent_recv = Some((50, 48));
    let f = diagnose_listener(&e);
    assert_eq!(f[0].cause, "syn_cookies");
    assert_text(&f[0], "legitimate load");
    assert_text(&f[0], "somaxconn is the limit");
    assert_fix(&f[0], 0, "sysctl -w net.core.somaxconn=1024");
    assert_fix(&f[0], 1, "fluentd in_forward `backlog 1024`");
    assert!(!f[0].fix.iter().any(|x| x.contains("tcp_max_syn_backlog")));
    // A flood verdict still says how to size the queue if those were real clients.
    e.cookies_sent_recv = Some((50, 1));
    let f = diagnose_listener(&e);
    assert_fix(&f[0], 0, "keep net.ipv4.tcp_syncookies=1");
    assert_fix(
        &f[0],
        1,
        "if these are real clients, the SYN queue is too small: sysctl -w net.core.somaxconn=1024",
    );
}

#[test]
fn somaxconn_limit_names_the_sysctl() {
    let mut e = ev();
    e.backlog = 128;
    e.sysctls.somaxconn = Some(128);
    e.listen_arg = Some(511);
    e.counts.add(OverflowKind::Syn, 5);
    let f = diagnose_listener(&e);
    assert_text(&f[0], "somaxconn is the limit");
    assert_fix(&f[0], 0, "sysctl -w net.core.somaxconn=1024");
    assert_fix(&f[0], 1, "backlog=1024");
    // listen() already asks for enough: only the sysctl, then a new listen().
    e.app = App::Redis;
    e.listen_arg = Some(-1);
    let f = diagnose_listener(&e);
    assert_eq!(f[0].fix.len(), 2, "{:?}", f[0].fix);
    assert_fix(
        &f[0],
        1,
        "Redis's listen() asks for the maximum, enough: then restart it",
    );
}

#[test]
fn inferred_when_not_seen_and_nsenter_in_other_netns() {
    let mut e = ev();
    e.netns = 2;
    e.backlog = 4096;
    e.counts.add(OverflowKind::Syn, 5);
    let f = diagnose_listener(&e);
    assert_text(&f[0], "listen() ≥ 4096 [inferred]");
    assert_fix(
        &f[0],
        0,
        "nsenter -t 42 -n sysctl -w net.core.somaxconn=16384",
    );
}

#[test]
fn zero_accepts_means_app_not_accepting() {
    let mut e = ev();
    e.accepts = Some(0);
    e.counts.add(OverflowKind::Syn, 12);
    let f = diagnose_listener(&e);
    assert_eq!(f[0].cause, "app_not_accepting");
    assert!(f[0].text.contains("accepted 0 connections"));
    assert_fix(&f[0], 0, "worker_connections");
    e.app = App::PhpFpm;
    let f = diagnose_listener(&e);
    assert_fix(&f[0], 0, "pm.max_children");
    assert!(!f[0].fix[0].contains("worker_connections"));
}

#[test]
fn max_syn_backlog_rule_is_named_with_its_sysctl() {
    let mut e = ev();
    e.backlog = 1024;
    e.max_synq = 97;
    e.sysctls.tcp_max_syn_backlog = Some(128);
    e.counts.add(OverflowKind::SynBacklog, 40);
    let f = diagnose_listener(&e);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].cause, "syn_queue_full");
    assert_eq!(f[0].impact, 40);
    assert_text(&f[0], "tcp_max_syn_backlog 128, so the limit is 96");
    assert_text(&f[0], "backlog of 1024");
    assert!(f[0].fix[0].contains("tcp_syncookies=1"));
    assert!(
        f[0].fix[1].starts_with("sysctl -w net.ipv4.tcp_max_syn_backlog=2048   #"),
        "{:?}",
        f[0].fix
    );
}

#[test]
fn synq_cookies_resets() {
    let mut e = ev();
    e.max_synq = 9;
    e.counts.add(OverflowKind::Synq, 7);
    e.counts.add(OverflowKind::Cookie, 20);
    e.counts.add(OverflowKind::Reset, 2);
    e.cookies_sent_recv = Some((20, 1));
    let f = diagnose_listener(&e);
    let causes: Vec<&str> = f.iter().map(|f| f.cause).collect();
    assert_eq!(
        causes,
        [
            "syn_cookies",
            "syn_queue_full",
            "accept_queue_full",
            "overflow_resets"
        ]
    );
    assert!(f[0].text.contains("looks like a SYN flood"));
    // The listener's own backlog is the limit: its fix first, then cookies.
    assert_fix(&f[1], 0, "backlog=1024");
    assert!(f[1].fix.iter().any(|x| x.contains("tcp_syncookies=1")));
    assert!(f[3].fix[0].contains("tcp_abort_on_overflow=0"));
}

#[test]
fn no_queue_snapshot_no_zero_backlog_text() {
    let mut e = ev();
    e.backlog = 0;
    e.max_synq = 0;
    e.counts.add(OverflowKind::Cookie, 20);
    e.counts.add(OverflowKind::Synq, 3);
    for f in diagnose_listener(&e) {
        assert!(!f.text.contains("backlog of 0"), "{}", f.text);
    }
    e.backlog = 16;
    e.max_synq = 17;
    let f = diagnose_listener(&e);
    assert_text(
        &f[0],
        "(SYN queue full: 17 half-open requests for a backlog of 16, ",
    );
}

#[test]
fn nothing_no_findings() {
    assert!(diagnose_listener(&ev()).is_empty());
}

#[test]
fn a_listeners_evidence_takes_its_queue_and_owners_from_the_aggregate_and_socket() {
    use crate::family::listen::aggregate::{ClientSet, ListenerKey};
    let mut clients = ClientSet::default();
    clients.insert("10.0.0.1".parse().unwrap());
    let mut total = KindCounts::default();
    total.add(OverflowKind::Ack, 5);
    let a = ListenerAgg {
        key: ListenerKey {
            netns: 7,
            cookie: 1,
            laddr: "127.0.0.1".parse().unwrap(),
            lport: 8080,
        },
        total,
        window: KindCounts::default(),
        last_queue: 9,
        backlog: 8,
        max_synq: 3,
        first_ts_ns: 0,
        last_ts_ns: 0,
        clients,
    };
    let info = ListenerInfo {
        owners: ev().owners,
        listen_arg: Some(511),
        ..Default::default()
    };
    let e = ListenerEvidence::of_listener(&a, Some(&info), 1, "nsenter ".into(), 2.0);
    assert_eq!(
        (e.netns, e.host_netns, e.ns_enter.as_str()),
        (7, 1, "nsenter ")
    );
    assert_eq!((e.laddr, e.lport), (Some(a.key.laddr), 8080));
    assert_eq!((e.backlog, e.last_queue, e.max_synq), (8, 9, 3));
    assert_eq!((e.counts, e.clients, e.duration_s), (total, 1, 2.0));
    assert_eq!((e.listen_arg, e.app), (Some(511), App::Nginx));
    assert_eq!(e.owners[0].pid, 42);
    let unknown = ListenerEvidence::of_listener(&a, None, 1, String::new(), 2.0);
    assert!(unknown.owners.is_empty() && unknown.listen_arg.is_none());
    assert_eq!(unknown.app, App::Other);
}
