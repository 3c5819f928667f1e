use std::process::ExitCode;

use clap::Parser as _;
use tcpq::{
    cli::{self, Cli, Command, TraceWhat},
    cmd, lab,
};

/// Errors are one line (`tcpq: …`) and exit 2; tcpq never panics on bad input.
fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().filter_or("TCPQ_LOG", "warn")).init();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            // --help / --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, like every other tcpq error: clap's first line, minus its "error: ".
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("tcpq: {first} (see `tcpq --help`)");
            return ExitCode::from(2);
        }
    };
    if !matches!(cli.command, Command::Lab(_)) {
        // SAFETY: restores the default disposition of SIGPIPE before any thread exists: a closed
        // pipe (`tcpq check | head`) ends tcpq quietly, like any filter, instead of a panic in
        // println!. The kernel detaches every program when the process ends (nothing is
        // pinned). `lab` keeps Rust's default so its cleanup (namespaces, nf_conntrack_max) runs.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("tcpq: {}", tcpq::one_line(&e));
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    cli::validate(&cli)?;
    match cli.command {
        Command::Check { json } => Ok(cmd::check::run(json)? as u8),
        Command::Trace {
            what:
                TraceWhat::Overflow {
                    port,
                    pid,
                    json,
                    duration,
                    lines_per_sec,
                    summary_interval,
                },
        } => {
            cmd::trace_overflow::run(cmd::trace_overflow::TraceOverflowArgs {
                port,
                pid,
                json,
                duration,
                lines_per_sec,
                summary_every: summary_interval,
            })?;
            Ok(0)
        }
        Command::Trace {
            what:
                TraceWhat::Connect {
                    pid,
                    dst,
                    failed,
                    json,
                    duration,
                    lines_per_sec,
                    summary_interval,
                },
        } => {
            cmd::trace_connect::run(cmd::trace_connect::TraceConnectArgs {
                pid,
                dst,
                failed,
                json,
                duration,
                lines_per_sec,
                summary_every: summary_interval,
            })?;
            Ok(0)
        }
        Command::Trace {
            what:
                TraceWhat::Conntrack {
                    json,
                    duration,
                    lines_per_sec,
                    summary_interval,
                },
        } => {
            cmd::conntrack::run_trace(cmd::conntrack::TraceConntrackArgs {
                json,
                duration,
                lines_per_sec,
                summary_every: summary_interval,
            })?;
            Ok(0)
        }
        Command::Trace {
            what:
                TraceWhat::Drops {
                    json,
                    duration,
                    lines_per_sec,
                    summary_interval,
                },
        } => {
            cmd::conntrack::run_drops(cmd::conntrack::TraceDropsArgs {
                json,
                duration,
                lines_per_sec,
                summary_every: summary_interval,
            })?;
            Ok(0)
        }
        Command::Trace {
            what:
                TraceWhat::Accept {
                    pid,
                    port,
                    json,
                    duration,
                    lines_per_sec,
                    summary_interval,
                },
        } => {
            cmd::trace_accept::run(cmd::trace_accept::TraceAcceptArgs {
                pid,
                port,
                json,
                duration,
                lines_per_sec,
                summary_every: summary_interval,
            })?;
            Ok(0)
        }
        Command::Diagnose {
            duration,
            json,
            fail_on_cause,
            idle,
            tiers,
        } => Ok(cmd::diagnose::run(cmd::diagnose::DiagnoseArgs {
            duration,
            json,
            fail_on_cause,
            idle: idle.idle,
            live: tiers.live(cli::HooksMode::All),
        })? as u8),
        Command::Sockets { pid, idle, json } => Ok(cmd::sockets::run(cmd::sockets::SocketsArgs {
            pid,
            idle: idle.idle,
            json,
        })? as u8),
        Command::Conntrack {
            pid,
            duration,
            json,
        } => Ok(cmd::conntrack::run_snapshot(cmd::conntrack::ConntrackArgs {
            pid,
            duration,
            json,
        })? as u8),
        Command::Ports {
            pid,
            dst,
            duration,
            json,
        } => Ok(cmd::ports::run(cmd::ports::PortsArgs {
            pid,
            dst,
            duration,
            json,
        })? as u8),
        Command::Top {
            delay,
            batch,
            json,
            iterations,
            tiers,
        } => Ok(cmd::top::run(cmd::top::TopArgs {
            delay,
            batch,
            json,
            iterations,
            live: tiers.live(cli::HooksMode::Auto),
        })? as u8),
        Command::Export {
            listen,
            interval,
            top_k,
            duration,
            tiers,
        } => Ok(cmd::export::run(cmd::export::ExportArgs {
            listen,
            interval,
            top_k: top_k as usize,
            duration,
            live: tiers.live(cli::HooksMode::Auto),
        })? as u8),
        Command::Lab(args) => {
            lab::run(args)?;
            Ok(0)
        }
    }
}
