//! tcpq: why TCP connections fail on a loaded Linux server.
//!
//! Layout: `kernel` (load/attach, BTF, tracefs, environment: the only kernel plumbing),
//! `family` (one home per hook family: decode, aggregate, diagnose, render), `snapshot`
//! (sock_diag, /proc, counters, sysctls, the listener directory), the families' shared
//! `wire`, `aggregate`, `diagnosis` and `render`, `live` (the live commands' core), `cmd`
//! (subcommands); `tcpq lab`'s incident generators are the tcpq-lab crate.
pub mod aggregate;
pub mod cli;
pub mod cmd;
pub mod diagnosis;
pub mod event_loop;
pub mod family;
pub mod fixes;
#[cfg(test)]
mod fuzz;
pub mod kernel;
pub mod limit;
pub mod live;
pub mod outbox;
pub mod render;
pub mod snapshot;
pub mod stop;
pub mod wire;

/// An error chain as one line: the first line of each cause (verifier logs and BTF dumps are
/// multi-line), duplicates removed, capped in length.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let first = cause
            .to_string()
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        if !first.is_empty() && !parts.iter().any(|p| p.contains(&first)) {
            parts.push(first);
        }
    }
    let mut s = parts.join(": ");
    if s.len() > 400 {
        let mut cut = 400;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}
