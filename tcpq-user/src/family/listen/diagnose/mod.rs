//! Listen-path diagnosis: evidence about one listener → causes, each with the exact fix.
//! Pure; every rule is unit-tested.
use std::net::IpAddr;

use super::{
    aggregate::{KindCounts, ListenerAgg},
    decode::OverflowKind,
};
use crate::{
    diagnosis::{
        Finding, cause,
        owner::{App, app_of_owners},
        rank,
    },
    snapshot::{counters::ListenSysctls, listeners::ListenerInfo, procs::Owner},
};

mod backlog;
#[cfg(test)]
mod tests;

use backlog::backlog_fixes;
pub use backlog::{BacklogLimit, backlog_limit, suggested_backlog};

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

impl ListenerEvidence {
    /// What one listener's aggregate `a` and its socket's `info` (owners, listen() argument)
    /// say, counting the whole run; the caller adds what it measured besides (sysctls,
    /// accepts, cookie counters) and, for one window, that window's counts.
    pub fn of_listener(
        a: &ListenerAgg,
        info: Option<&ListenerInfo>,
        host_netns: u32,
        ns_enter: String,
        duration_s: f64,
    ) -> Self {
        ListenerEvidence {
            netns: a.key.netns,
            host_netns,
            ns_enter,
            laddr: Some(a.key.laddr),
            lport: a.key.lport,
            owners: info.map(|i| i.owners.clone()).unwrap_or_default(),
            counts: a.total,
            duration_s,
            backlog: a.backlog,
            last_queue: a.last_queue,
            max_synq: a.max_synq,
            listen_arg: info.and_then(|i| i.listen_arg),
            clients: a.clients.len(),
            app: info.map(|i| app_of_owners(&i.owners)).unwrap_or_default(),
            ..Default::default()
        }
    }
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

/// Both SYN-queue drops (the listener's queue full, or tcp_max_syn_backlog's rule) stop with cookies on.
fn syncookies_fix(prefix: &str) -> String {
    crate::fixes::sysctl_fix(
        prefix,
        "net.ipv4.tcp_syncookies",
        "1",
        "answer with cookies instead of dropping",
    )
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
