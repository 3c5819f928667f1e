//! Command line: argument definitions and validation (bad input → one line, exit 2). Each
//! subcommand has its options type, handed as parsed to its `run` (`cmd::…`, `lab`); the options
//! several commands share are flattened in (`TraceOutput`, `IdleArgs`, `TierArgs`). This module
//! imports no command: the commands import their options from here. The trace commands' options
//! are in `trace`, the lab's in `lab`, the value parsers in `parse`.
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

mod lab;
mod parse;
mod trace;

pub use lab::{LabArgs, LabName};
pub use parse::{parse_duration, parse_duration_or_zero, parse_port};
pub use trace::{
    TraceAcceptArgs, TraceConnectArgs, TraceConntrackArgs, TraceDropsArgs, TraceOutput,
    TraceOverflowArgs, TraceWhat,
};

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
}
