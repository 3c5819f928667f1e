//! Accept side: the verdict on one listener's accepts. Pure and unit-tested.
use std::collections::BTreeMap;

use super::aggregate::SLOW_WAIT_NS;
use crate::{
    diagnosis::{Finding, cause, owner::App},
    snapshot::procs::Owner,
};

#[derive(Debug, Clone, Default)]
pub struct AcceptEvidence {
    pub lport: u16,
    pub duration_s: f64,
    pub accepts: u64,
    /// (p50, p99, max) ns.
    pub wait: Option<(u64, u64, u64)>,
    pub errors: BTreeMap<String, u64>,
    /// Processes holding the listening socket.
    pub holders: Vec<Owner>,
    /// Threads blocked in accept() on it right now (None: not measurable).
    pub idle_acceptors: Option<u64>,
    /// (pid, soft limit) of the acceptor that failed with EMFILE.
    pub nofile: Option<(u32, u64)>,
    /// The holders' program, for fixes in its own syntax (`owner::app_of_owners`).
    pub app: App,
    /// Accepted connections that waited at least SLOW_WAIT_NS in the queue.
    pub slow: u64,
    /// What tier 0 saw of the listener over the interval (None: not watched, e.g. `trace
    /// accept`).
    pub pressure: Option<QueuePressure>,
}

/// A listener's accept queue over an interval, from tier 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueuePressure {
    pub refused: u64,
    pub queue_peak: u32,
    pub backlog: u32,
}

impl QueuePressure {
    /// Refusals, or a queue at least half its limit (tier 0's own trigger): the wait is the
    /// application's, not a burst a big backlog absorbed.
    pub fn under_pressure(&self) -> bool {
        self.refused > 0 || (self.backlog > 0 && self.queue_peak * 2 >= self.backlog)
    }
}

fn secs(ns: u64) -> String {
    if ns >= 1_000_000_000 {
        format!("{:.2} s", ns as f64 / 1e9)
    } else {
        format!("{:.1} ms", ns as f64 / 1e6)
    }
}

pub fn diagnose_accept(e: &AcceptEvidence) -> Vec<Finding> {
    let mut out = Vec::new();
    let emfile = e.errors.get("EMFILE").copied().unwrap_or(0);
    let enfile = e.errors.get("ENFILE").copied().unwrap_or(0);
    let fd_errors = emfile + enfile;
    if fd_errors > 0 {
        let mut why = Vec::new();
        let mut fix = Vec::new();
        if emfile > 0 {
            let limit = e
                .nofile
                .map(|(pid, l)| format!(": pid {pid}'s open-file limit is {l}"))
                .unwrap_or_default();
            why.push(format!(
                "{emfile} EMFILE (the process's own limit, RLIMIT_NOFILE{limit})"
            ));
            fix.push("raise the process's limit: systemd `LimitNOFILE=65536`, shell `ulimit -n 65536`, nginx `worker_rlimit_nofile 65536;`, php-fpm `rlimit_files = 65536`".to_string());
        }
        if enfile > 0 {
            // ENFILE: alloc_empty_file() found the system-wide count at fs.file-max.
            why.push(format!(
                "{enfile} ENFILE (the whole system's open-file table is full: fs.file-max)"
            ));
            fix.push(format!(
                "raise the system-wide limit: compare `cat /proc/sys/fs/file-nr` (open, 0, max) with fs.file-max, then {}",
                crate::fixes::global_sysctl_fix("fs.file-max", "2097152", "", false)
            ));
        }
        fix.push("if the count of open descriptors keeps growing, look for a leak: `tcpq sockets --pid PID` (CLOSE_WAIT)".into());
        out.push(Finding {
            cause: cause::ACCEPT_ERRORS,
            impact: fd_errors,
            text: format!(
                "accept() on :{} failed {fd_errors} times, out of file descriptors: {}; the connections stay queued and overflow",
                e.lport,
                why.join(", ")
            ),
            fix,
        });
    }
    let other: Vec<String> = e
        .errors
        .iter()
        .filter(|(k, _)| *k != "EMFILE" && *k != "ENFILE")
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if !other.is_empty() {
        out.push(Finding {
            cause: cause::ACCEPT_ERRORS,
            impact: e.errors.values().sum::<u64>() - fd_errors,
            text: format!("accept() on :{} failed: {}", e.lport, other.join(", ")),
            fix: vec!["ENOBUFS/ENOMEM: the kernel is short of memory; ECONNABORTED: clients gave up while queued".into()],
        });
    }
    if let Some((p50, p99, max)) = e.wait
        && p99 >= SLOW_WAIT_NS
        && e.pressure.is_none_or(|p| p.under_pressure())
    {
        let rate = if e.duration_s > 0.0 {
            e.accepts as f64 / e.duration_s
        } else {
            0.0
        };
        let mut text = format!(
            "connections wait in the accept queue of :{} for p50 {}, p99 {}, max {} while the application accepts {rate:.1}/s: it is not keeping up",
            e.lport,
            secs(p50),
            secs(p99),
            secs(max)
        );
        let mut fix = vec!["the application, not the backlog, is the limit: find what makes each request slow, or add workers".into()];
        if let Some(idle) = e.idle_acceptors {
            text.push_str(&format!(
                "; {} process{} share :{}, {idle} idle in accept",
                e.holders.len(),
                if e.holders.len() == 1 { "" } else { "es" },
                e.lport
            ));
            if idle == 0 && e.holders.len() > 1 {
                text.push_str(": all workers busy");
                fix.insert(
                    0,
                    format!("all workers are busy: {}", e.app.workers_setting()),
                );
            }
        }
        if let Some(p) = e.pressure {
            text.push_str(&format!(
                "; its queue reached {} of {}{}",
                p.queue_peak,
                p.backlog,
                if p.refused > 0 {
                    format!(" and {} connections were refused", p.refused)
                } else {
                    String::new()
                }
            ));
        }
        out.push(Finding {
            cause: cause::APP_NOT_ACCEPTING,
            // The connections that suffered: those that waited 100 ms or more, and those
            // refused outright.
            impact: (e.slow + e.pressure.map_or(0, |p| p.refused)).max(1),
            text,
            fix,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use tcpq_common::AcceptTotals;

    use super::{
        super::{aggregate::*, decode::*},
        *,
    };
    use crate::diagnosis::check::{assert_fix, assert_text};

    fn owner(pid: u32) -> Owner {
        Owner {
            pid,
            comm: "php-fpm".into(),
        }
    }

    fn accepted() -> Accepted {
        Accepted {
            ts_ns: 0,
            netns: 1,
            tgid: 42,
            comm: "nginx".into(),
            laddr: "127.0.0.1".parse().unwrap(),
            lport: 80,
            raddr: "127.0.0.1".parse().unwrap(),
            rport: 40000,
            listen_fd: 6,
            result: Ok(None),
        }
    }

    #[test]
    fn enfile_names_the_system_wide_limit() {
        let e = AcceptEvidence {
            lport: 80,
            errors: BTreeMap::from([("ENFILE".to_string(), 3), ("EMFILE".to_string(), 2)]),
            nofile: Some((7, 1024)),
            ..Default::default()
        };
        let f = diagnose_accept(&e);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].impact, 5);
        assert_text(
            &f[0],
            "2 EMFILE (the process's own limit, RLIMIT_NOFILE: pid 7's open-file limit is 1024)",
        );
        assert_text(
            &f[0],
            "3 ENFILE (the whole system's open-file table is full: fs.file-max)",
        );
        assert_fix(&f[0], 0, "LimitNOFILE");
        assert!(
            f[0].fix[1].contains("sysctl -w fs.file-max=") && f[0].fix[1].contains("file-nr"),
            "{:?}",
            f[0].fix
        );
    }

    #[test]
    fn verdicts() {
        let mut s = AcceptStats::default();
        let srv = Accepted {
            tgid: 9,
            comm: "srv".into(),
            lport: 9000,
            rport: 1,
            listen_fd: 3,
            ..accepted()
        };
        for i in 1..=50u64 {
            s.record(&Accepted {
                result: Ok(Some(i * 100_000_000)),
                ..srv.clone()
            });
        }
        s.record(&Accepted {
            result: Err(24),
            ..srv
        });
        let (p50, p99, max) = s.wait_quantiles().unwrap();
        assert!((2_400_000_000..=2_600_000_000).contains(&p50), "{p50}");
        assert!(p99 >= 4_800_000_000 && max >= p99);
        let e = AcceptEvidence {
            lport: 9000,
            duration_s: 5.0,
            accepts: s.accepts,
            wait: s.wait_quantiles(),
            errors: s.errors.clone(),
            holders: (1..=5).map(owner).collect(),
            idle_acceptors: Some(0),
            nofile: Some((9, 16)),
            app: App::PhpFpm,
            slow: s.slow,
            pressure: None,
        };
        let f = diagnose_accept(&e);
        assert_eq!(f[0].cause, "accept_errors");
        assert_text(&f[0], "1 EMFILE");
        assert_text(&f[0], "limit is 16");
        assert!(!f[0].text.contains("ENFILE"), "{}", f[0].text);
        assert_fix(&f[0], 0, "LimitNOFILE");
        assert!(!f[0].fix.iter().any(|x| x.contains("fs.file-max")));
        assert_eq!(f[1].cause, "app_not_accepting");
        assert_text(
            &f[1],
            "5 processes share :9000, 0 idle in accept: all workers busy",
        );
        assert!(f[1].fix[0].contains("pm.max_children"));
        assert!(
            diagnose_accept(&AcceptEvidence {
                wait: Some((1_000, 2_000, 3_000)),
                ..Default::default()
            })
            .is_empty()
        );
    }

    #[test]
    fn a_long_wait_needs_pressure_and_counts_who_suffered() {
        let slow_burst = AcceptEvidence {
            lport: 8080,
            duration_s: 5.0,
            accepts: 1000,
            wait: Some((50_000_000, 400_000_000, 900_000_000)),
            slow: 30,
            ..Default::default()
        };
        // A burst a 65535 backlog absorbed: queue far from its limit, nothing refused.
        let absorbed = AcceptEvidence {
            pressure: Some(QueuePressure {
                refused: 0,
                queue_peak: 900,
                backlog: 65535,
            }),
            ..slow_burst.clone()
        };
        assert!(diagnose_accept(&absorbed).is_empty());
        // Half full: the application is the limit; the impact is the 30 that waited ≥ 100 ms.
        let pressed = AcceptEvidence {
            pressure: Some(QueuePressure {
                refused: 0,
                queue_peak: 40,
                backlog: 64,
            }),
            ..slow_burst.clone()
        };
        let f = diagnose_accept(&pressed);
        assert_eq!(f[0].cause, "app_not_accepting");
        assert_eq!(f[0].impact, 30);
        assert!(
            f[0].text.ends_with("its queue reached 40 of 64"),
            "{}",
            f[0].text
        );
        // Refusals count too.
        let refused = AcceptEvidence {
            pressure: Some(QueuePressure {
                refused: 12,
                queue_peak: 5,
                backlog: 64,
            }),
            ..slow_burst
        };
        let f = diagnose_accept(&refused);
        assert_eq!(f[0].impact, 42);
        assert_text(&f[0], "and 12 connections were refused");
    }

    #[test]
    fn slow_accepts_are_counted_exactly() {
        let mut s = AcceptStats::default();
        for ms in [1u64, 50, 100, 120, 300] {
            s.record(&Accepted {
                result: Ok(Some(ms * 1_000_000)),
                ..accepted()
            });
        }
        s.record(&Accepted {
            result: Ok(None),
            ..accepted()
        });
        assert_eq!((s.accepts, s.slow), (6, 3));
    }

    #[test]
    fn wait_buckets_are_ordered_and_at_most_a_quarter_wide() {
        use tcpq_common::{WAIT_BUCKETS, wait_bucket, wait_bucket_floor};
        for us in [0u64, 1, 3, 4, 5, 7, 8, 9, 15, 16, 99_999, 100_000, 1 << 20] {
            let b = wait_bucket(us);
            assert!(wait_bucket_floor(b) <= us, "{us} in {b}");
            assert!(us < wait_bucket_floor(b + 1), "{us} in {b}");
        }
        for b in 0..WAIT_BUCKETS {
            let low = wait_bucket_floor(b);
            assert_eq!(wait_bucket(low), b, "floor of {b}");
            if b >= 4 && b + 1 < WAIT_BUCKETS {
                let width = wait_bucket_floor(b + 1) - low;
                assert!(width * 4 <= low, "bucket {b}: {low} +{width}");
            }
        }
        // The last bucket is open-ended.
        assert_eq!(wait_bucket(u64::MAX), WAIT_BUCKETS - 1);
        assert!(wait_bucket_floor(WAIT_BUCKETS - 1) > 50_000_000);
    }

    #[test]
    fn kernel_totals_add_their_differences() {
        let mut before = AcceptTotals {
            accepts: u32::MAX, // the counters wrap: differences do not care
            ..AcceptTotals::default()
        };
        before.buckets[tcpq_common::wait_bucket(250)] = 7;
        let mut now = before;
        now.accepts = 2; // 3 more
        now.slow = 1;
        now.unknown_wait = 1;
        now.buckets[tcpq_common::wait_bucket(250)] += 1; // ~250 µs
        now.buckets[tcpq_common::wait_bucket(150_000)] += 1; // ~150 ms
        let mut s = AcceptStats::default();
        assert_eq!(s.add_totals(42, || "nginx".into(), &before, &now), 3);
        assert_eq!((s.accepts, s.slow), (3, 1));
        assert_eq!(s.acceptors.get(&42).map(String::as_str), Some("nginx"));
        let (p50, _, max) = s.wait_quantiles().unwrap();
        assert!((218_000..=282_000).contains(&p50), "{p50}");
        assert!((131_000_000..=164_000_000).contains(&max), "{max}");
        // Nothing new: nothing added, the comm is not even looked up.
        assert_eq!(s.add_totals(43, || unreachable!(), &now, &now), 0);
    }
}
