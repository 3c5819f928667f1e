//! The `tcpq trace …` commands' options: each command's filters and the output options they
//! all take (`TraceOutput`), worded per command (`trace_help`).
use std::time::Duration;

use clap::Subcommand;

use super::parse::{parse_duration, parse_port};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser as _;

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
}
