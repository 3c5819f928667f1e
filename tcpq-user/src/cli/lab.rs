//! `tcpq lab`'s options: which incident (`LabName`, tcpq-lab's scenarios) and how to run it.
use std::time::Duration;

use super::parse::parse_duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LabName {
    /// Accept-queue overflow on loopback: final ACKs dropped (`ack`), then SYNs (`syn`).
    Overflow,
    /// SYN queue full: a client over veth whose final ACKs are lost (`synq` or `cookie`).
    Synflood,
    /// Ephemeral ports exhausted: 16 ports, a client that closes first (TIME_WAIT), EADDRNOTAVAIL.
    Ports,
    /// Conntrack table full: a `ct state` rule, nf_conntrack_max lowered (restored on exit), a
    /// connect storm; plus a few connects dropped by a plain rule.
    Conntrack,
    /// A server that accepts one connection every 100 ms under a burst of 50 connects.
    SlowAccept,
    /// Five blocking worker processes holding each connection 3 s, under 100 clients.
    Workers,
    /// A server that never closes connections its clients closed (CLOSE_WAIT).
    CloseWait,
    /// A silent upstream: `--clients` processes (`tcpq-client`) sent a request it acknowledged
    /// and never answered; one `tcpq-pooled` process got its answer and keeps the connection
    /// idle; the server's own accepted sockets sit idle too.
    StaleUpstream,
    /// A destination refusing connects from several source addresses: the lab process first
    /// connects from each while it listens (TIME_WAIT per source), then a `tcpq-client` process
    /// is refused from the same `--clients` sources (127.0.0.2…) at `--rate` per second.
    FailingUpstream,
    /// Debian's nginx (/usr/sbin/nginx) with `worker_processes 1; worker_connections 32;` under
    /// `--clients` (default 200) connections that send the start of a request at once and hold
    /// on: nginx accepts past its cap and closes them unread ("worker_connections are not
    /// enough"), the kernel resets them (TCPAbortOnClose). Dropped clients reconnect every
    /// 200 ms.
    ConnectionLimit,
    /// A SYN storm from a million distinct clients (raw packets, one sender per CPU) at a
    /// listener whose accept queue is full: every SYN is refused (collector throughput).
    Storm,
}

/// `tcpq lab` arguments (the lab's defaults per incident: tcpq-lab's `impl Lab`).
#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {
    /// Which incident.
    #[arg(value_enum)]
    pub name: LabName,
    /// Use (or create) this named network namespace instead of a fresh one.
    #[arg(long)]
    pub netns: Option<String>,
    /// Port the lab's server listens on.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// listen() backlog of the lab's server.
    #[arg(long)]
    pub backlog: Option<u32>,
    /// How long the connect storm runs (e.g. 3, 3s, 1500ms).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub duration: Duration,
    /// synflood: tcp_syncookies inside the lab's server namespace (0, 1 or 2).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub syncookies: u8,
    /// synflood: net.ipv4.tcp_max_syn_backlog inside the lab's server namespace (with
    /// --syncookies 0, SYNs are dropped once the SYN queue holds 3/4 of it) [default: the
    /// namespace's own].
    #[arg(long, value_parser = clap::value_parser!(u32).range(4..))]
    pub max_syn_backlog: Option<u32>,
    /// overflow: set tcp_abort_on_overflow=1 inside the lab's namespace (overflows become resets).
    #[arg(long)]
    pub abort_on_overflow: bool,
    /// conntrack: the global nf_conntrack_max to set while the lab runs (restored on exit).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(16..))]
    pub ct_max: u32,
    /// overflow: listen on [::1] instead of 127.0.0.1.
    #[arg(long)]
    pub ipv6: bool,
    /// overflow: connections the server accepts per second (0 = never accepts).
    #[arg(long, default_value_t = 20)]
    pub accept_rate: u32,
    /// Connection attempts per second from the client [default: 200; storm: SYNs per second,
    /// 0 = as fast as the machine goes, the default].
    #[arg(long)]
    pub rate: Option<u32>,
    /// overflow, synflood, slow-accept, workers: net.core.somaxconn inside the lab's server
    /// namespace, set before its server calls listen() (e.g. 10 under a --backlog of 511: the
    /// sysctl caps both the accept and the SYN queue) [default: the namespace's own].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub somaxconn: Option<u32>,
    /// stale-upstream: client processes waiting on the silent upstream [default: 3];
    /// failing-upstream: source addresses the refused client connects from [default: 8].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=200))]
    pub clients: Option<u32>,
    /// The lab process's name (its comm), e.g. php-fpm or nginx: tcpq's fixes use the settings of
    /// the program owning the listener.
    #[arg(long, default_value = "tcpq-lab", value_parser = parse_process_name)]
    pub process_name: String,
    /// Print the lab's facts as NDJSON.
    #[arg(long)]
    pub json: bool,
}

impl LabName {
    /// The scenario tcpq-lab runs for this name.
    pub fn scenario(self) -> tcpq_lab::Scenario {
        use tcpq_lab::Scenario as S;
        match self {
            Self::Overflow => S::Overflow,
            Self::Synflood => S::Synflood,
            Self::Ports => S::Ports,
            Self::Conntrack => S::Conntrack,
            Self::SlowAccept => S::SlowAccept,
            Self::Workers => S::Workers,
            Self::CloseWait => S::CloseWait,
            Self::StaleUpstream => S::StaleUpstream,
            Self::FailingUpstream => S::FailingUpstream,
            Self::ConnectionLimit => S::ConnectionLimit,
            Self::Storm => S::Storm,
        }
    }
}

impl LabArgs {
    /// The lab these options describe, for `tcpq_lab::run`.
    pub fn lab(&self) -> tcpq_lab::Lab {
        tcpq_lab::Lab {
            scenario: self.name.scenario(),
            netns: self.netns.clone(),
            port: self.port,
            backlog: self.backlog,
            duration: self.duration,
            syncookies: self.syncookies,
            max_syn_backlog: self.max_syn_backlog,
            abort_on_overflow: self.abort_on_overflow,
            ct_max: self.ct_max,
            ipv6: self.ipv6,
            accept_rate: self.accept_rate,
            rate: self.rate,
            somaxconn: self.somaxconn,
            clients: self.clients,
            process_name: self.process_name.clone(),
            json: self.json,
        }
    }
}

/// A comm: at most 15 bytes (TASK_COMM_LEN - 1), no NUL, not empty.
fn parse_process_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 15 || s.contains('\0') {
        return Err(format!(
            "invalid process name '{s}': give 1 to 15 bytes without NUL (the kernel's comm length)"
        ));
    }
    Ok(s.to_string())
}
#[cfg(test)]
mod tests {
    use super::*;

    /// The facts line names the lab as tcpq-lab does: the same word the command line takes.
    #[test]
    fn every_lab_name_is_its_scenario_name() {
        use clap::ValueEnum as _;
        for name in LabName::value_variants() {
            let typed = name.to_possible_value().expect("a visible lab name");
            assert_eq!(typed.get_name(), name.scenario().name());
        }
    }
}
