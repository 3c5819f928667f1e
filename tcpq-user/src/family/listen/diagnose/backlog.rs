//! The listener's effective backlog: which limit (listen()'s argument or net.core.somaxconn)
//! sets it, the size worth suggesting, and the fixes that raise it in the owner's own syntax.
use super::ListenerEvidence;
use crate::diagnosis::owner::{App, relisten};

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

/// Why the effective backlog is what it is, and the fixes that raise it to `n`, the binding limit
/// first. The SYN queue has the same limit: tcp_conn_request() tests
/// inet_csk_reqsk_queue_is_full(), request count > sk_max_ack_backlog, the value listen() set to
/// min(backlog, somaxconn) — so this serves the accept queue, the SYN queue and syncookies.
pub(super) fn backlog_fixes(e: &ListenerEvidence, prefix: &str, n: u32) -> (String, Vec<String>) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
