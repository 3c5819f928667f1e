//! Listen-path diagnosis: evidence about one listener → causes, each with the exact fix.
//! Pure; every rule is unit-tested.
use std::net::IpAddr;

use super::{aggregate::KindCounts, decode::OverflowKind};
use crate::{
    diagnosis::{
        Finding, cause,
        owner::{App, relisten},
        rank,
    },
    snapshot::{counters::ListenSysctls, procs::Owner},
};

#[derive(Debug, Clone, Default)]
pub struct ListenerEvidence {
    pub netns: u32,
    /// The namespace tcpq runs in: commands for another namespace get an `nsenter` prefix.
    pub host_netns: u32,
    /// The prefix to use for another namespace (`nsenter --net=PATH `); when empty, one is built
    /// from the owner's pid.
    pub ns_enter: String,
    pub laddr: Option<IpAddr>,
    pub lport: u16,
    pub owners: Vec<Owner>,
    pub counts: KindCounts,
    pub duration_s: f64,
    pub backlog: u32,
    pub last_queue: u32,
    pub max_synq: u32,
    pub listen_arg: Option<i32>,
    pub sysctls: ListenSysctls,
    /// Successful accept() calls by the owners during the interval (None: not measured).
    pub accepts: Option<u64>,
    /// (SyncookiesSent, SyncookiesRecv) deltas of the namespace over the interval.
    pub cookies_sent_recv: Option<(u64, u64)>,
    pub clients: usize,
    /// The owner's program, for fixes in its own syntax (`owner::app_of_owners`).
    pub app: App,
}

/// Which limit made the effective backlog what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BacklogLimit {
    /// listen()'s argument is below somaxconn: the application sets the limit.
    Application {
        arg: u32,
        seen: bool,
    },
    /// listen()'s argument (seen) equals somaxconn: raising either alone changes nothing.
    Equal {
        limit: u32,
    },
    /// somaxconn caps what the application asked for.
    Somaxconn {
        somaxconn: u32,
        arg: Option<u32>,
    },
    Unknown,
}

pub fn backlog_limit(
    backlog: u32,
    listen_arg: Option<i32>,
    somaxconn: Option<u32>,
) -> BacklogLimit {
    // listen(): sk_max_ack_backlog = min(backlog, somaxconn) (negative/oversized → somaxconn).
    match (listen_arg, somaxconn) {
        (Some(arg), Some(s)) => {
            let arg_u = if arg < 0 { u32::MAX } else { arg as u32 };
            if arg_u < s {
                BacklogLimit::Application {
                    arg: arg_u,
                    seen: true,
                }
            } else if arg_u == s {
                BacklogLimit::Equal { limit: s }
            } else {
                BacklogLimit::Somaxconn {
                    somaxconn: s,
                    arg: Some(arg_u),
                }
            }
        }
        (Some(arg), None) if arg >= 0 => BacklogLimit::Application {
            arg: arg as u32,
            seen: true,
        },
        (None, Some(s)) if backlog < s => BacklogLimit::Application {
            arg: backlog,
            seen: false,
        },
        (None, Some(s)) => BacklogLimit::Somaxconn {
            somaxconn: s,
            arg: None,
        },
        _ => BacklogLimit::Unknown,
    }
}

/// A backlog worth suggesting: at least 4× the current one, at least 1024, a power of two, ≤ 65535.
pub fn suggested_backlog(current: u32) -> u32 {
    (current.saturating_mul(4))
        .max(1024)
        .next_power_of_two()
        .min(65535)
}

fn who(e: &ListenerEvidence) -> String {
    match e.owners.first() {
        Some(o) if e.owners.len() > 1 => {
            format!("pid {} ({}) and {} more", o.pid, o.comm, e.owners.len() - 1)
        }
        Some(o) => format!("pid {} ({})", o.pid, o.comm),
        None => "an unknown process".into(),
    }
}

/// Prefix to run a command in the listener's namespace when it is not tcpq's.
fn in_ns(e: &ListenerEvidence) -> String {
    if e.netns == 0 || e.netns == e.host_netns {
        return String::new();
    }
    if !e.ns_enter.is_empty() {
        return e.ns_enter.clone();
    }
    match e.owners.first() {
        Some(o) => format!("nsenter -t {} -n ", o.pid),
        None => format!("(in network namespace {}) ", e.netns),
    }
}

fn rate(n: u64, secs: f64) -> String {
    if secs <= 0.0 {
        return format!("{n}");
    }
    format!("{n} ({:.1}/s)", n as f64 / secs)
}

/// "php-fpm's", or "the application's".
fn owners_of(app: App) -> String {
    match app {
        App::Other => "the application's".into(),
        a => format!("{}'s", a.name()),
    }
}

fn app_backlog_fix(app: App, port: u16, n: u32) -> String {
    format!(
        "raise {} backlog to {n}: {}; {}",
        owners_of(app),
        app.backlog_setting(port, n),
        relisten(app)
    )
}

fn somaxconn_fix(prefix: &str, n: u32) -> String {
    crate::fixes::sysctl_fix(prefix, "net.core.somaxconn", &n.to_string(), "")
}

/// Both SYN-queue drops (the listener's queue full, or tcp_max_syn_backlog's rule) stop with cookies on.
fn syncookies_fix(prefix: &str) -> String {
    crate::fixes::sysctl_fix(
        prefix,
        "net.ipv4.tcp_syncookies",
        "1",
        "answer with cookies instead of dropping",
    )
}

/// Why the effective backlog is what it is, and the fixes that raise it to `n`, the binding limit
/// first. The SYN queue has the same limit: tcp_conn_request() tests
/// inet_csk_reqsk_queue_is_full(), request count > sk_max_ack_backlog, the value listen() set to
/// min(backlog, somaxconn) — so this serves the accept queue, the SYN queue and syncookies.
fn backlog_fixes(e: &ListenerEvidence, prefix: &str, n: u32) -> (String, Vec<String>) {
    let somaxconn = e.sysctls.somaxconn;
    let app_fix = app_backlog_fix(e.app, e.lport, n);
    match backlog_limit(e.backlog, e.listen_arg, somaxconn) {
        BacklogLimit::Application { arg, seen } => {
            let src = if seen {
                "seen by tcpq"
            } else {
                "inferred: below somaxconn, so it is what listen() asked for"
            };
            let mut fix = vec![app_fix];
            if somaxconn.is_some_and(|s| s < n) {
                fix.push(somaxconn_fix(prefix, n) + "  # somaxconn caps the backlog too");
            }
            (
                format!(
                    "effective backlog {} = min(listen() {arg} [{src}], net.core.somaxconn {}): {} backlog is the limit",
                    e.backlog,
                    somaxconn
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "?".into()),
                    owners_of(e.app)
                ),
                fix,
            )
        }
        BacklogLimit::Equal { limit } => (
            format!(
                "effective backlog {} = min(listen() {limit} [seen by tcpq], net.core.somaxconn {limit}): both limits are {limit}, so raising only one leaves the backlog at {limit}",
                e.backlog
            ),
            vec![
                format!(
                    "raise both: net.core.somaxconn and {} backlog are both {limit}",
                    owners_of(e.app)
                ),
                somaxconn_fix(prefix, n),
                app_fix,
            ],
        ),
        BacklogLimit::Somaxconn { somaxconn: s, arg } => {
            let asked = match arg {
                Some(a) => format!("listen() {a} [seen by tcpq]"),
                None => format!("listen() ≥ {s} [inferred]"),
            };
            let mut why = format!(
                "effective backlog {} = min({asked}, net.core.somaxconn {s}): somaxconn is the limit",
                e.backlog
            );
            if arg.is_none() {
                why.push_str(&format!(
                    " (or both are, if the application asked for exactly {s}: then raise both)"
                ));
            }
            let mut fix = vec![somaxconn_fix(prefix, n)];
            match arg {
                // It already asks for enough: only the sysctl, and a new listen() to pick it up.
                Some(a) if a >= n => fix.push(format!(
                    "{} listen() asks for {}, enough: {}",
                    owners_of(e.app),
                    if a == u32::MAX {
                        "the maximum".into()
                    } else {
                        a.to_string()
                    },
                    relisten(e.app)
                )),
                _ => fix.push(app_fix),
            }
            (why, fix)
        }
        BacklogLimit::Unknown => (
            format!("effective backlog {}", e.backlog),
            vec![somaxconn_fix(prefix, n), app_fix],
        ),
    }
}

const HALF_OPEN_HINT: &str = "if the half-open requests never complete (a flood or lost ACKs), look at the clients: tcpq trace overflow --json shows each one";

/// "{open}N half-open requests for a backlog of B{close}", or nothing when no record carried
/// the queues (backlog 0): never a 0/0 reading.
fn synq_sizes(e: &ListenerEvidence, open: &str, close: &str) -> String {
    if e.backlog == 0 {
        return String::new();
    }
    format!(
        "{open}{} half-open requests for a backlog of {}{close}",
        e.max_synq, e.backlog
    )
}

pub fn diagnose_listener(e: &ListenerEvidence) -> Vec<Finding> {
    let mut out = Vec::new();
    let c = &e.counts;
    let syn = c.get(OverflowKind::Syn);
    let ack = c.get(OverflowKind::Ack);
    let synq = c.get(OverflowKind::Synq);
    let syn_backlog = c.get(OverflowKind::SynBacklog);
    let cookie = c.get(OverflowKind::Cookie);
    let resets = c.get(OverflowKind::Reset);
    let retrans = c.get(OverflowKind::SynackRetrans);
    let prefix = in_ns(e);
    let overflow = syn + ack + resets;

    if overflow > 0 {
        let mut detail = format!(
            "{} refused: {} SYN{}, {} final ACK{} dropped",
            rate(overflow, e.duration_s),
            syn,
            if syn == 1 { "" } else { "s" },
            ack,
            if ack == 1 { "" } else { "s" },
        );
        if resets > 0 {
            detail.push_str(&format!(", {resets} reset"));
        }
        if ack > 0 {
            detail.push_str(" (clients whose ACK was dropped think they are connected: their first request waits for a SYN-ACK retransmit, ≥1 s)");
        }
        if retrans > 0 {
            detail.push_str(&format!("; {retrans} SYN-ACKs retransmitted"));
        }
        let not_accepting = e.accepts == Some(0);
        if not_accepting {
            out.push(Finding {
                cause: cause::APP_NOT_ACCEPTING,
                impact: overflow,
                text: format!(
                    "{} accepted 0 connections in {:.0} s while its accept queue on :{} was full ({}/{}): the application is not calling accept(); {detail}",
                    who(e), e.duration_s, e.lport, e.last_queue, e.backlog
                ),
                fix: vec![
                    format!("the application is saturated or stuck, not the kernel: are all workers busy? {}", e.app.workers_setting()),
                    format!("see what the workers are doing: `cat /proc/{}/stack`, `strace -f -p {}`", e.owners.first().map(|o| o.pid).unwrap_or(0), e.owners.first().map(|o| o.pid).unwrap_or(0)),
                    "a larger backlog only delays the failure while nothing accepts".into(),
                ],
            });
        } else {
            let (why, fix) = backlog_fixes(e, &prefix, suggested_backlog(e.backlog));
            let accept_note = match e.accepts {
                Some(a) if e.duration_s > 0.0 => format!(
                    "; the application accepted {:.1}/s — if that rate is its ceiling, it is too slow for the arrival rate and a bigger backlog only absorbs bursts",
                    a as f64 / e.duration_s
                ),
                _ => String::new(),
            };
            out.push(Finding {
                cause: cause::ACCEPT_QUEUE_FULL,
                impact: overflow,
                text: format!(
                    "accept queue of {} on :{} full ({}/{}): {detail}; {why}{accept_note}",
                    who(e),
                    e.lport,
                    e.last_queue,
                    e.backlog
                ),
                fix,
            });
        }
    }

    if synq > 0 {
        let n = suggested_backlog(e.backlog);
        let (why, mut fix) = backlog_fixes(e, &prefix, n);
        // With cookies off, tcp_conn_request() also drops once the SYN queue holds 3/4 of
        // tcp_max_syn_backlog: below the new backlog, that rule would be the next limit.
        if let Some(m) = e.sysctls.tcp_max_syn_backlog
            && m - m / 4 < n
        {
            fix.push(crate::fixes::sysctl_fix(
                &prefix,
                "net.ipv4.tcp_max_syn_backlog",
                &(n.saturating_mul(4) / 3 + 1)
                    .next_power_of_two()
                    .to_string(),
                &format!("with tcp_syncookies=0 the SYN queue also stops at 3/4 of it ({m} now)"),
            ));
        }
        fix.push(syncookies_fix(&prefix));
        fix.push(HALF_OPEN_HINT.into());
        out.push(Finding {
            cause: cause::SYN_QUEUE_FULL,
            impact: synq,
            text: format!(
                "{} SYNs to :{} dropped: SYN queue full{} and tcp_syncookies=0; the SYN queue has the accept queue's limit: {why}",
                rate(synq, e.duration_s), e.lport, synq_sizes(e, " (", ")")
            ),
            fix,
        });
    }

    if syn_backlog > 0 {
        let max = e.sysctls.tcp_max_syn_backlog;
        let limit = max
            .map(|m| {
                format!(
                    "net.ipv4.tcp_max_syn_backlog {m}, so the limit is {}",
                    m - m / 4
                )
            })
            .unwrap_or_else(|| "net.ipv4.tcp_max_syn_backlog".into());
        let raise = (e.backlog.max(max.unwrap_or(0)) * 2).next_power_of_two();
        out.push(Finding {
            cause: cause::SYN_QUEUE_FULL,
            impact: syn_backlog,
            text: format!(
                "{} SYNs to :{} dropped: tcp_syncookies=0 and the SYN queue held more than 3/4 of tcp_max_syn_backlog ({} half-open requests; {limit}) — below the listener's backlog of {}: the namespace's tcp_max_syn_backlog rule refused them, not the listener's queue",
                rate(syn_backlog, e.duration_s), e.lport, e.max_synq, e.backlog
            ),
            fix: vec![
                syncookies_fix(&prefix),
                crate::fixes::sysctl_fix(
                    &prefix,
                    "net.ipv4.tcp_max_syn_backlog",
                    &raise.to_string(),
                    "",
                ),
                HALF_OPEN_HINT.into(),
            ],
        });
    }

    if cookie > 0 {
        let (why, sizing) = backlog_fixes(e, &prefix, suggested_backlog(e.backlog));
        let (verdict, fix) = match e.cookies_sent_recv {
            Some((sent, recv)) if sent > 0 && recv * 2 >= sent => (
                format!(
                    "{recv} valid cookie ACKs came back for {sent} cookies sent (SyncookiesRecv counts a retransmitted ACK again): real clients completing the handshake — legitimate load, the SYN queue is too small"
                ),
                sizing,
            ),
            Some((sent, recv)) if sent > 0 => {
                let mut fix = vec!["keep net.ipv4.tcp_syncookies=1; find and filter the sources (tcpq trace overflow --json lists them)".to_string()];
                // The verdict is a guess: real clients whose ACKs are lost look the same.
                if let Some((first, rest)) = sizing.split_first() {
                    fix.push(format!(
                        "if these are real clients, the SYN queue is too small: {first}"
                    ));
                    fix.extend(rest.iter().cloned());
                }
                (
                    format!(
                        "only {recv} valid cookie ACKs came back for {sent} cookies sent: most clients never complete the handshake — looks like a SYN flood (or their ACKs are lost); cookies are protecting the listener"
                    ),
                    fix,
                )
            }
            _ => ("SYN queue full".into(), sizing),
        };
        out.push(Finding {
            cause: cause::SYN_COOKIES,
            impact: cookie,
            text: format!(
                "{} SYNs to :{} answered with syncookies (SYN queue full{}, \"Possible SYN flooding\"): {verdict}; the SYN queue has the accept queue's limit: {why}",
                rate(cookie, e.duration_s), e.lport, synq_sizes(e, ": ", "")
            ),
            fix,
        });
    }

    if resets > 0 {
        out.push(Finding {
            cause: cause::OVERFLOW_RESETS,
            impact: resets,
            text: format!(
                "{resets} clients of :{} got a RST instead of a retry: tcp_abort_on_overflow=1 turns every accept-queue overflow into a connection error",
                e.lport
            ),
            fix: vec![crate::fixes::sysctl_fix(
                &prefix,
                "net.ipv4.tcp_abort_on_overflow",
                "0",
                "clients retry instead of failing (keep 1 only if fast failure is wanted)",
            )],
        });
    }
    rank(&mut out, |f| f.impact);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fix line `i` contains `needle`; shows every fix when not.
    #[track_caller]
    fn assert_fix(f: &Finding, i: usize, needle: &str) {
        assert!(
            f.fix.get(i).is_some_and(|x| x.contains(needle)),
            "fix[{i}] lacks {needle:?}: {:?}",
            f.fix
        );
    }

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
    fn backlog_limits() {
        assert_eq!(
            backlog_limit(8, Some(8), Some(4096)),
            BacklogLimit::Application { arg: 8, seen: true }
        );
        assert_eq!(
            backlog_limit(128, Some(511), Some(128)),
            BacklogLimit::Somaxconn {
                somaxconn: 128,
                arg: Some(511)
            }
        );
        assert_eq!(
            backlog_limit(8, None, Some(4096)),
            BacklogLimit::Application {
                arg: 8,
                seen: false
            }
        );
        assert_eq!(
            backlog_limit(4096, None, Some(4096)),
            BacklogLimit::Somaxconn {
                somaxconn: 4096,
                arg: None
            }
        );
        assert_eq!(
            backlog_limit(4096, Some(-1), Some(4096)),
            BacklogLimit::Somaxconn {
                somaxconn: 4096,
                arg: Some(u32::MAX)
            }
        );
        assert_eq!(backlog_limit(5, None, None), BacklogLimit::Unknown);
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggested_backlog(8), 1024);
        assert_eq!(suggested_backlog(511), 2048);
        assert_eq!(suggested_backlog(40000), 65535);
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
        assert!(
            f[0].text
                .contains("min(listen() 8 [seen by tcpq], net.core.somaxconn 4096)"),
            "{}",
            f[0].text
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
            f[0].fix[0].starts_with("raise the application's backlog to 1024: the backlog argument it passes to listen()")
                && f[0].fix[0].contains("restart it so it calls listen() again"),
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
        assert!(
            f[0].text.contains(
                "min(listen() 10 [seen by tcpq], net.core.somaxconn 10): both limits are 10, so raising only one leaves the backlog at 10"
            ),
            "{}",
            f[0].text
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
        assert!(
            f[0].text.contains("listen() ≥ 10 [inferred]")
                && f[0].text.contains(
                    "or both are, if the application asked for exactly 10: then raise both"
                ),
            "{}",
            f[0].text
        );
        assert!(f[0].fix[0].starts_with("sysctl -w net.core.somaxconn=1024"));
        assert!(f[0].fix[1].contains("backlog=1024"), "{:?}", f[0].fix);
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
        assert!(
            f[0].text.contains("the SYN queue has the accept queue's limit: effective backlog 10 = min(listen() 511 [seen by tcpq], net.core.somaxconn 10): somaxconn is the limit"),
            "{}",
            f[0].text
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
        assert!(
            f[0].text.contains("legitimate load") && f[0].text.contains("somaxconn is the limit"),
            "{}",
            f[0].text
        );
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
        assert!(
            f[0].text.contains("somaxconn is the limit"),
            "{}",
            f[0].text
        );
        assert_fix(&f[0], 0, "sysctl -w net.core.somaxconn=1024");
        assert!(f[0].fix[1].contains("backlog=1024"), "{:?}", f[0].fix);
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
        assert!(
            f[0].text.contains("listen() ≥ 4096 [inferred]"),
            "{}",
            f[0].text
        );
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
        assert!(f[0].fix[0].contains("worker_connections"), "{:?}", f[0].fix);
        e.app = App::PhpFpm;
        let f = diagnose_listener(&e);
        assert!(f[0].fix[0].contains("pm.max_children"), "{:?}", f[0].fix);
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
        assert!(
            f[0].text
                .contains("tcp_max_syn_backlog 128, so the limit is 96")
                && f[0].text.contains("backlog of 1024"),
            "{}",
            f[0].text
        );
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
        assert!(f[1].fix[0].contains("backlog=1024"), "{:?}", f[1].fix);
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
        assert!(
            f[0].text
                .contains("(SYN queue full: 17 half-open requests for a backlog of 16, "),
            "{}",
            f[0].text
        );
    }

    #[test]
    fn nothing_no_findings() {
        assert!(diagnose_listener(&ev()).is_empty());
    }
}
