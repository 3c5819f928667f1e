//! Tier 0's unit tests: recorded readings in, the totals and signals they must give.
use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use super::*;
use crate::snapshot::{
    nswatch::NsReading,
    sockdiag::{DiagSocket, TCP_LISTEN},
};

fn listener(port: u16, queue: u32, backlog: u32, drops: u32) -> DiagSocket {
    DiagSocket {
        state: TCP_LISTEN,
        laddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        lport: port,
        raddr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        rport: 0,
        recv_queue: queue,
        send_queue: backlog,
        uid: 0,
        inode: 1,
        cookie: port as u64,
        info: None,
        drops: Some(drops),
    }
}

fn reading(ns: u32, listeners: Vec<DiagSocket>, counters: &[(&str, u64)]) -> NsReading {
    NsReading {
        inum: ns,
        listeners,
        counters: Some(counters.iter().map(|(k, v)| (k.to_string(), *v)).collect()),
        conntrack: None,
        unread: false,
    }
}

const LD: &str = "TcpExt:ListenDrops";

#[test]
fn drops_before_the_first_reading_are_not_counted_later_ones_are() {
    let mut t = Tier0::default();
    let s = t.update(vec![reading(
        1,
        vec![listener(80, 0, 10, 500)],
        &[(LD, 480)],
    )]);
    assert_eq!(s.listen, None);
    // sk_drops moved by 14 (two ACK drops counted twice), ListenDrops by 12.
    let s = t.update(vec![reading(
        1,
        vec![listener(80, 10, 10, 514)],
        &[(LD, 492)],
    )]);
    assert!(s.listen.as_deref().unwrap().starts_with("14 refused"));
    let out = t.take_interval();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.refused_interval, 12);
    assert_eq!(out[0].1.refused_total, 12);
    assert_eq!(out[0].1.queue_peak, 10);
    // Next interval starts at 0; sk_drops wraps.
    let mut l = listener(80, 0, 10, 3);
    l.drops = Some(3);
    t.listeners
        .values_mut()
        .for_each(|v| v.last_drops = u32::MAX - 1);
    t.update(vec![reading(1, vec![l], &[(LD, 497)])]);
    let out = t.take_interval();
    assert_eq!(
        out[0].1.refused_interval, 5,
        "u32::MAX-1 → 3 moved: 5 shared"
    );
}

#[test]
fn drops_counted_before_the_listener_moved_wait_one_reading() {
    let mut t = Tier0::default();
    t.update(vec![reading(1, vec![listener(80, 0, 10, 0)], &[(LD, 0)])]);
    t.update(vec![reading(1, vec![listener(80, 4, 10, 0)], &[(LD, 3)])]);
    t.update(vec![reading(1, vec![listener(80, 4, 10, 3)], &[(LD, 3)])]);
    assert_eq!(t.take_interval()[0].1.refused_interval, 3);
}

#[test]
fn a_listener_created_after_start_counts_all_its_drops() {
    let mut t = Tier0::default();
    t.update(vec![reading(1, vec![], &[])]);
    let s = t.update(vec![reading(2, vec![listener(9000, 4, 4, 7)], &[(LD, 7)])]);
    assert!(s.listen.is_some());
    assert_eq!(t.take_interval()[0].1.refused_interval, 7);
}

#[test]
fn a_queue_over_half_its_backlog_is_trouble_without_drops() {
    let mut t = Tier0::default();
    let s = t.update(vec![reading(1, vec![listener(80, 6, 10, 0)], &[])]);
    assert!(
        s.listen
            .as_deref()
            .unwrap()
            .starts_with("accept queue 6/10")
    );
    let s = t.update(vec![reading(1, vec![listener(80, 5, 10, 0)], &[])]);
    assert_eq!(s.listen, None, "half is not over half");
}

#[test]
fn big_tables_are_read_less_often() {
    assert_eq!(next_poll_after(Duration::from_micros(300)), POLL_EVERY);
    assert_eq!(
        next_poll_after(Duration::from_millis(18)),
        Duration::from_millis(1800)
    );
    assert_eq!(next_poll_after(Duration::from_secs(1)), MAX_POLL_EVERY);
}

#[test]
fn tier0_keeps_every_counter_it_reads() {
    for c in LISTEN_COUNTERS
        .iter()
        .chain(CONNECT_COUNTERS)
        .chain(crate::live::frame::WATCHED_COUNTERS)
    {
        assert!(TIER0_COUNTERS.contains(c), "{c}");
    }
}

#[test]
fn the_last_drops_of_a_closed_listener_are_its_own() {
    let mut t = Tier0::default();
    t.update(vec![reading(1, vec![listener(80, 0, 10, 0)], &[(LD, 0)])]);
    t.update(vec![reading(
        1,
        vec![listener(80, 10, 10, 100)],
        &[(LD, 100)],
    )]);
    // Closed after 40 more drops, before the next reading could see its sk_drops.
    t.update(vec![reading(1, vec![], &[(LD, 140)])]);
    assert_eq!(t.take_interval()[0].1.refused_interval, 140);
}

/// Seen under load (tier 0 read less often): the lab's listener and a healthy one of the
/// same namespace closed between two readings; the refusals after the lab's last reading
/// went half to the healthy one (38 and 37 of 75), which never refused.
#[test]
fn listeners_closing_together_leave_the_last_drops_to_the_one_refusing() {
    let mut t = Tier0::default();
    let both = |lab_drops| vec![listener(9099, 0, 128, 0), listener(8080, 10, 10, lab_drops)];
    t.update(vec![reading(1, both(0), &[(LD, 0)])]);
    t.update(vec![reading(1, both(600), &[(LD, 580)])]);
    t.update(vec![reading(1, both(803), &[(LD, 788)])]);
    // A frame between: the interval's counts start again at 0.
    let out = t.take_interval();
    let lab = |out: &[(ListenerId, ListenerTotals)]| {
        out.iter().find(|(id, _)| id.lport == 8080).map(|(_, t)| *t)
    };
    assert_eq!(lab(&out).unwrap().refused_interval, 788);
    t.update(vec![reading(1, vec![], &[(LD, 863)])]);
    let out = t.take_interval();
    assert_eq!(lab(&out).unwrap().refused_interval, 75);
    assert_eq!(
        lab(&out).unwrap().uncertain_interval,
        0,
        "only one was refusing"
    );
    assert!(
        out.iter()
            .all(|(id, t)| id.lport != 9099 || t.refused_interval == 0),
        "the healthy listener refused nothing: {out:?}"
    );
    assert!(t.take_unattributed().is_empty());
}

/// Two listeners that both refused when last seen and closed together: the namespace's
/// count stays whole, split by their last rates, and the split is reported as a guess.
#[test]
fn a_split_between_closed_listeners_that_both_refused_is_uncertain() {
    let mut t = Tier0::default();
    let both = |a, b| vec![listener(80, 10, 10, a), listener(81, 10, 10, b)];
    t.update(vec![reading(1, both(0, 0), &[(LD, 0)])]);
    t.update(vec![reading(1, both(30, 10), &[(LD, 40)])]);
    t.take_interval();
    t.update(vec![reading(1, vec![], &[(LD, 80)])]);
    let out = t.take_interval();
    assert_eq!(out.iter().map(|(_, t)| t.refused_interval).sum::<u64>(), 40);
    assert_eq!(
        out.iter().map(|(_, t)| t.uncertain_interval).sum::<u64>(),
        40
    );
    let p80 = out.iter().find(|(id, _)| id.lport == 80).unwrap().1;
    assert_eq!(
        p80.refused_interval, 30,
        "by their rates when last seen (3:1)"
    );
}

/// A listener created and closed between two readings was never listed: its refusals are
/// counted for its namespace (after waiting one reading for a late sk_drops), not kept
/// waiting for a listener that will never move.
#[test]
fn refusals_of_a_listener_never_listed_are_counted_for_the_namespace() {
    let mut t = Tier0::default();
    t.update(vec![reading(1, vec![listener(22, 0, 128, 0)], &[(LD, 0)])]);
    t.update(vec![reading(1, vec![listener(22, 0, 128, 0)], &[(LD, 9)])]);
    assert!(
        t.take_unattributed().is_empty(),
        "may still show on a listener"
    );
    t.update(vec![reading(1, vec![listener(22, 0, 128, 0)], &[(LD, 9)])]);
    assert_eq!(t.take_unattributed(), vec![(1, 9)]);
    assert!(
        t.take_interval()
            .iter()
            .all(|(_, l)| l.refused_interval == 0)
    );
    assert!(t.take_unattributed().is_empty(), "per interval");
}

/// A namespace whose dump failed once (nswatch opens its socket again): its listener is
/// not closed and its counters are not forgotten — read again from 0, its ListenDrops so
/// far would be counted twice.
#[test]
fn a_namespace_unread_once_is_counted_on_not_again() {
    let mut t = Tier0::default();
    t.update(vec![reading(1, vec![listener(80, 0, 10, 0)], &[(LD, 0)])]);
    t.update(vec![reading(
        1,
        vec![listener(80, 10, 10, 50)],
        &[(LD, 50)],
    )]);
    let unread = NsReading {
        inum: 1,
        unread: true,
        ..NsReading::default()
    };
    t.update(vec![unread]);
    assert_eq!(t.take_interval()[0].1.refused_interval, 50);
    t.update(vec![reading(
        1,
        vec![listener(80, 10, 10, 80)],
        &[(LD, 80)],
    )]);
    let out = t.take_interval();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.refused_interval, 30);
    assert_eq!(out[0].1.refused_total, 80);
    assert!(t.take_unattributed().is_empty());
}

/// A namespace unread at tcpq's first reading: its first good reading is the baseline,
/// not refusals of the interval.
#[test]
fn a_namespace_unread_at_start_counts_from_its_first_reading() {
    let mut t = Tier0::default();
    t.update(vec![NsReading {
        inum: 1,
        unread: true,
        ..NsReading::default()
    }]);
    t.update(vec![reading(
        1,
        vec![listener(80, 0, 10, 500)],
        &[(LD, 480)],
    )]);
    assert!(
        t.take_interval()
            .iter()
            .all(|(_, l)| l.refused_interval == 0)
    );
    t.update(vec![reading(
        1,
        vec![listener(80, 0, 10, 504)],
        &[(LD, 484)],
    )]);
    assert_eq!(t.take_interval()[0].1.refused_interval, 4);
}

#[test]
fn movements_wait_for_the_next_counters_reading() {
    let mut t = Tier0::default();
    t.update(vec![reading(1, vec![listener(80, 0, 10, 0)], &[(LD, 0)])]);
    let mut r = reading(1, vec![listener(80, 4, 10, 5)], &[]);
    r.counters = None; // not read this time
    t.update(vec![r]);
    assert_eq!(t.listeners.values().next().unwrap().refused_interval, 0);
    t.update(vec![reading(1, vec![listener(80, 4, 10, 5)], &[(LD, 5)])]);
    assert_eq!(t.take_interval()[0].1.refused_interval, 5);
}

#[test]
fn a_queue_that_is_never_drained_is_trouble_a_passing_one_is_not() {
    let mut t = Tier0::default();
    let q = |n| reading(1, vec![listener(80, n, 256, 0)], &[]);
    assert_eq!(t.update(vec![q(90)]).listen, None);
    assert_eq!(t.update(vec![q(1)]).listen, None, "drained in between");
    assert_eq!(t.update(vec![q(90)]).listen, None);
    assert_eq!(t.update(vec![q(95)]).listen, None);
    let s = t.update(vec![q(95)]).listen.unwrap();
    assert!(
        s.starts_with("accept queue not drained for 3 readings (95/256)"),
        "{s}"
    );
}

#[test]
fn counters_that_move_arm_their_family() {
    let mut t = Tier0::default();
    t.update(vec![reading(
        1,
        vec![],
        &[("TcpExt:SyncookiesSent", 5), ("Tcp:AttemptFails", 1)],
    )]);
    let s = t.update(vec![reading(
        1,
        vec![],
        &[("TcpExt:SyncookiesSent", 9), ("Tcp:AttemptFails", 1)],
    )]);
    assert_eq!(
        s.listen.as_deref(),
        Some("TcpExt:SyncookiesSent +4 (netns 1)")
    );
    assert_eq!(s.connect, None);
    let s = t.update(vec![reading(
        1,
        vec![],
        &[("TcpExt:SyncookiesSent", 9), ("Tcp:AttemptFails", 3)],
    )]);
    assert_eq!(s.listen, None);
    assert_eq!(s.connect.as_deref(), Some("Tcp:AttemptFails +2 (netns 1)"));
}

#[test]
fn conntrack_near_full_or_dropping_is_trouble() {
    let mut t = Tier0::default();
    let mut r = reading(1, vec![], &[]);
    r.conntrack = Some(CtReading {
        count: 10,
        max: 100,
        drop: 0,
    });
    assert_eq!(t.update(vec![r.clone()]).conntrack, None);
    r.conntrack = Some(CtReading {
        count: 90,
        max: 100,
        drop: 0,
    });
    assert!(t.update(vec![r.clone()]).conntrack.is_some());
    r.conntrack = Some(CtReading {
        count: 10,
        max: 100,
        drop: 4,
    });
    let s = t.update(vec![r.clone()]).conntrack.unwrap();
    assert!(s.starts_with("conntrack dropped 4"), "{s}");
}

#[test]
fn gone_listeners_report_their_last_interval_then_leave() {
    let mut t = Tier0::default();
    t.update(vec![reading(1, vec![listener(80, 0, 10, 0)], &[(LD, 0)])]);
    t.update(vec![reading(1, vec![listener(80, 0, 10, 4)], &[(LD, 4)])]);
    t.update(vec![reading(1, vec![], &[(LD, 4)])]);
    assert_eq!(t.take_interval()[0].1.refused_interval, 4);
    assert!(t.listeners.is_empty());
    assert!(t.take_interval().is_empty());
}
