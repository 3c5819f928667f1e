//! Command line: argument definitions and validation (bad input → one line, exit 2). Each
//! subcommand has its options type, handed as parsed to its `run` (`cmd::…`, `lab`); the options
//! several commands share are flattened in (`TraceOutput`, `IdleArgs`, `TierArgs`). This module
//! imports no command: the commands import their options from here.
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

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

/// The stale-ESTABLISHED threshold, shared by `sockets` and `diagnose` (same parsing, same help).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct IdleArgs {
    /// ESTABLISHED connections with no data for this long count as idle.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub idle: Duration,
}

/// How the live commands (top, export, diagnose) attach their programs.
#[derive(Debug, Clone, clap::Args)]
pub struct TierArgs {
    /// `auto`: counters first — per-packet and per-connection programs are attached only while
    /// their family's kernel counters show trouble; `all`: every program all the time.
    /// Default: `auto` for top and export; `all` for diagnose (a bounded report wants every
    /// detail from its first second: accept waits of connections queued before any trouble).
    #[arg(long, value_enum)]
    pub hooks: Option<HooksMode>,
    /// With `--hooks auto`: detach a family's tracing programs after this long without trouble.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub quiet_period: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HooksMode {
    Auto,
    All,
}

impl TierArgs {
    pub fn live(&self, default: HooksMode) -> crate::live::session::LiveOptions {
        crate::live::session::LiveOptions {
            hooks_all: self.hooks.unwrap_or(default) == HooksMode::All,
            quiet: self.quiet_period,
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "tcpq",
    version,
    about = "Why do TCP connections fail on this server? Live, per listener, process and destination."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show every kernel hook tcpq uses: attached, available or unavailable, and why.
    Check(CheckArgs),
    /// Stream events live.
    #[command(subcommand)]
    Trace(TraceWhat),
    /// Ephemeral ports per destination against the usable range (snapshot; as root also traces
    /// connect() for --duration).
    Ports(PortsArgs),
    /// The conntrack table: headroom, drops (table full vs rules), top consumers, timeouts, fixes.
    Conntrack(ConntrackArgs),
    /// Per process: socket states, ESTABLISHED idle too long (stale upstream), CLOSE_WAIT never
    /// closed (with the fds), TIME_WAIT by remote. No root needed for your own processes.
    Sockets(SocketsArgs),
    /// Every hook family for --duration, then one report: causes ranked worst first, with evidence
    /// and fixes ("no problem found" and what was checked otherwise).
    Diagnose(DiagnoseArgs),
    /// Live view: causes now, listeners, outbound connects, conntrack (full screen on a TTY;
    /// `-b` or no TTY: plain text frames; `--json`: NDJSON frames).
    Top(TopArgs),
    /// Prometheus exporter: /metrics over HTTP (loopback unless told otherwise).
    Export(ExportArgs),
    /// Reproduce an incident in network namespaces of its own (root), then clean up.
    Lab(LabArgs),
}

/// `tcpq check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `tcpq ports`.
#[derive(Debug, Clone, clap::Args)]
pub struct PortsArgs {
    /// Only connections of this process: a pid or a process name (all matches aggregated).
    #[arg(long)]
    pub pid: Option<String>,
    /// Only this destination: ADDR or ADDR:PORT ([v6]:port).
    #[arg(long)]
    pub dst: Option<String>,
    /// How long to trace connect() when root (0: snapshot only).
    #[arg(long, default_value = "5s", value_parser = parse_duration_or_zero)]
    pub duration: Duration,
    /// NDJSON output.
    #[arg(long)]
    pub json: bool,
}

/// `tcpq conntrack`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConntrackArgs {
    /// Look at this process's network namespace (pid or name).
    #[arg(long)]
    pub pid: Option<String>,
    /// How long to watch drops (root; 0: snapshot only).
    #[arg(long, default_value = "5s", value_parser = parse_duration_or_zero)]
    pub duration: Duration,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `tcpq sockets`.
#[derive(Debug, Clone, clap::Args)]
pub struct SocketsArgs {
    /// A pid or a process name (default: every process, showing only problems).
    #[arg(long)]
    pub pid: Option<String>,
    #[command(flatten)]
    pub idle: IdleArgs,
    /// NDJSON output.
    #[arg(long)]
    pub json: bool,
}

/// `tcpq diagnose`.
#[derive(Debug, Clone, clap::Args)]
pub struct DiagnoseArgs {
    /// How long to collect.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// One JSON report.
    #[arg(long)]
    pub json: bool,
    /// Exit 1 when a cause fired (for CI of load tests).
    #[arg(long)]
    pub fail_on_cause: bool,
    #[command(flatten)]
    pub idle: IdleArgs,
    #[command(flatten)]
    pub tiers: TierArgs,
}

/// `tcpq top`.
#[derive(Debug, Clone, clap::Args)]
pub struct TopArgs {
    /// Refresh interval.
    #[arg(short = 'd', long = "delay", default_value = "1s", value_parser = parse_duration)]
    pub delay: Duration,
    /// Batch mode: plain-text frames on stdout, like `top -b`.
    #[arg(short = 'b', long)]
    pub batch: bool,
    /// NDJSON: one frame object per line.
    #[arg(long, conflicts_with = "batch")]
    pub json: bool,
    /// Stop after this many frames (batch and JSON modes; default: until interrupted).
    #[arg(short = 'n', long, value_parser = clap::value_parser!(u64).range(1..))]
    pub iterations: Option<u64>,
    #[command(flatten)]
    pub tiers: TierArgs,
}

/// `tcpq export`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// Address to serve /metrics on.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub listen: std::net::SocketAddr,
    /// How often the aggregates are folded into the metrics.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Distinct label values per metric before the rest are summed as `other`.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub top_k: u32,
    /// Stop after this long (default: until interrupted).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub tiers: TierArgs,
}

/// `tcpq trace …`. Each command words `TraceOutput`'s help for itself (`trace_help`): what its
/// lines are counted per, and where it says more, its JSON and its summaries.
#[derive(Debug, Subcommand)]
pub enum TraceWhat {
    /// Accepted connections: accept-queue wait, accept() errors, idle acceptors per listener.
    #[command(mut_args(trace_help(
        "Lines per listener per second before they are aggregated",
        None,
        None
    )))]
    Accept(TraceAcceptArgs),
    /// Every TCP packet the kernel dropped, with the drop reason by name (and netfilter's).
    #[command(mut_args(trace_help(
        "Lines per reason and destination per second before they are aggregated",
        None,
        None
    )))]
    Drops(TraceDropsArgs),
    /// Packets netfilter dropped: conntrack table full (no entry) or a rule, with the flow and process.
    #[command(mut_args(trace_help(
        "Lines per flow key per second before they are aggregated",
        None,
        None
    )))]
    Conntrack(TraceConntrackArgs),
    /// Outbound connects: result, source port, time in connect(), handshake latency, SYN retransmits.
    #[command(mut_args(trace_help(
        "Lines per process→destination per second before they are aggregated",
        Some("NDJSON output (one object per line)"),
        None
    )))]
    Connect(TraceConnectArgs),
    /// Connections refused at listening sockets: accept queue, SYN queue, syncookies.
    #[command(mut_args(trace_help(
        "Lines per listener per second before they are aggregated (exact counts kept)",
        Some("NDJSON output (one object per line)"),
        Some("Interval between per-listener summaries")
    )))]
    Overflow(TraceOverflowArgs),
}

/// One trace command's help for `TraceOutput`'s options, set in place (the order of the
/// options stays as declared).
fn trace_help(
    lines_per_sec: &'static str,
    json: Option<&'static str>,
    summary_interval: Option<&'static str>,
) -> impl FnMut(clap::Arg) -> clap::Arg {
    move |arg| {
        let help = match arg.get_id().as_str() {
            "lines_per_sec" => Some(lines_per_sec),
            "json" => json,
            "summary_interval" => summary_interval,
            _ => None,
        };
        match help {
            Some(h) => arg.help(h),
            None => arg,
        }
    }
}

/// What every `trace` command takes last: output format, when to stop, the line budget and the
/// summary interval.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceOutput {
    /// NDJSON output.
    #[arg(long)]
    pub json: bool,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Lines per key per second before they are aggregated.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub lines_per_sec: u32,
    /// Interval between summaries.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub summary_interval: Duration,
}

/// `tcpq trace accept`.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceAcceptArgs {
    /// Only this acceptor process: a pid or a process name.
    #[arg(long)]
    pub pid: Option<String>,
    /// Only this listening port.
    #[arg(long, value_parser = parse_port)]
    pub port: Option<u16>,
    #[command(flatten)]
    pub out: TraceOutput,
}

/// `tcpq trace drops`.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceDropsArgs {
    #[command(flatten)]
    pub out: TraceOutput,
}

/// `tcpq trace conntrack`.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceConntrackArgs {
    #[command(flatten)]
    pub out: TraceOutput,
}

/// `tcpq trace connect`.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceConnectArgs {
    /// Only this process: a pid or a process name.
    #[arg(long)]
    pub pid: Option<String>,
    /// Only this destination: ADDR or ADDR:PORT ([v6]:port).
    #[arg(long)]
    pub dst: Option<String>,
    /// Only failed connects.
    #[arg(long)]
    pub failed: bool,
    #[command(flatten)]
    pub out: TraceOutput,
}

/// `tcpq trace overflow`.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceOverflowArgs {
    /// Only this local (listener) port.
    #[arg(long, value_parser = parse_port)]
    pub port: Option<u16>,
    /// Only listeners of this process: a pid or a process name.
    #[arg(long)]
    pub pid: Option<String>,
    #[command(flatten)]
    pub out: TraceOutput,
}

/// `10`, `10s`, `1500ms`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = if let Ok(secs) = s.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return Err(format!(
                "invalid duration '{s}': must be a positive number of seconds"
            ));
        }
        Duration::from_secs_f64(secs)
    } else {
        humantime::parse_duration(s)
            .map_err(|e| format!("invalid duration '{s}' ({e}): use e.g. 10s, 500ms, 2m"))?
    };
    if d.is_zero() {
        return Err(format!("invalid duration '{s}': must be greater than zero"));
    }
    Ok(d)
}

/// Like `parse_duration`, but 0 is allowed (`tcpq ports --duration 0`: snapshot only).
pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    if s.trim().parse::<f64>().is_ok_and(|v| v == 0.0) {
        return Ok(Duration::ZERO);
    }
    parse_duration(s)
}

pub fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(format!("invalid port '{s}': use a number from 1 to 65535")),
    }
}

pub fn validate(cli: &Cli) -> Result<()> {
    if let Command::Lab(LabArgs {
        backlog: Some(0), ..
    }) = &cli.command
    {
        bail!("invalid --backlog 0: use at least 1");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sockets` and `diagnose` take the same --idle, defaulting to what top and export use.
    #[test]
    fn idle_is_shared_and_defaults_to_the_live_threshold() {
        use clap::Parser as _;
        for sub in ["sockets", "diagnose"] {
            let cli = Cli::try_parse_from(["tcpq", sub]).unwrap();
            let idle = match cli.command {
                Command::Sockets(SocketsArgs { idle, .. })
                | Command::Diagnose(DiagnoseArgs { idle, .. }) => idle.idle,
                _ => unreachable!(),
            };
            assert_eq!(
                idle,
                crate::family::sockets::aggregate::DEFAULT_IDLE,
                "{sub}"
            );
            let cli = Cli::try_parse_from(["tcpq", sub, "--idle", "1500ms"]).unwrap();
            let idle = match cli.command {
                Command::Sockets(SocketsArgs { idle, .. })
                | Command::Diagnose(DiagnoseArgs { idle, .. }) => idle.idle,
                _ => unreachable!(),
            };
            assert_eq!(idle, Duration::from_millis(1500), "{sub}");
            assert!(Cli::try_parse_from(["tcpq", sub, "--idle", "soon"]).is_err());
        }
    }

    /// Each trace command says what its lines are counted per (`trace_help` matched the option).
    #[test]
    fn every_trace_command_words_its_line_budget() {
        use clap::CommandFactory as _;
        let cli = Cli::command();
        let trace = cli.find_subcommand("trace").unwrap();
        for sub in ["accept", "drops", "conntrack", "connect", "overflow"] {
            let cmd = trace.find_subcommand(sub).unwrap();
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_id() == "lines_per_sec")
                .unwrap();
            let help = arg.get_help().unwrap().to_string();
            assert!(
                help.starts_with("Lines per ") && !help.starts_with("Lines per key "),
                "{sub}: {help}"
            );
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        for bad in ["0", "-1", "abc", "", "NaN", "10 parsecs"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port("8080").unwrap(), 8080);
        for bad in ["0", "65536", "http", "-1"] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_trace_overflow() {
        let cli = Cli::try_parse_from([
            "tcpq", "trace", "overflow", "--port", "80", "--pid", "nginx", "--json",
        ])
        .unwrap();
        match cli.command {
            Command::Trace(TraceWhat::Overflow(TraceOverflowArgs { port, pid, out })) => {
                assert_eq!(port, Some(80));
                assert_eq!(pid.as_deref(), Some("nginx"));
                assert!(out.json);
            }
            _ => panic!("wrong command"),
        }
        assert!(Cli::try_parse_from(["tcpq", "trace", "overflow", "--port", "99999"]).is_err());
        assert!(Cli::try_parse_from(["tcpq", "lab", "nosuchlab"]).is_err());
    }

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
