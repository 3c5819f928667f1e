use std::process::ExitCode;

use clap::Parser as _;
use tcpq::{
    cli::{self, Cli, Command, TraceWhat},
    cmd, stop,
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
    if runs_until_stopped(&cli.command) {
        // Before the programs load (100 ms here, a minute under TCG): a stop sent meanwhile is
        // acted on as soon as the command runs. Installed only later, a SIGINT in that window
        // would be lost when the shell started tcpq with it ignored (a background job of a
        // script), and tcpq would run on.
        stop::install();
    }
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("tcpq: {}", tcpq::one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// The commands that run until a stop (or their --duration); the others end by themselves and
/// keep the default signal actions.
fn runs_until_stopped(command: &Command) -> bool {
    !matches!(
        command,
        Command::Check(_) | Command::Conntrack(_) | Command::Sockets(_)
    )
}

/// Dispatch: each subcommand's options go as parsed to its `run`.
fn run(cli: Cli) -> anyhow::Result<u8> {
    cli::validate(&cli)?;
    let code = match cli.command {
        Command::Check(opts) => cmd::check::run(opts)?,
        Command::Trace(TraceWhat::Accept(opts)) => cmd::trace_accept::run(opts).map(|()| 0)?,
        Command::Trace(TraceWhat::Drops(opts)) => cmd::trace_drops::run(opts).map(|()| 0)?,
        Command::Trace(TraceWhat::Conntrack(opts)) => {
            cmd::trace_conntrack::run(opts).map(|()| 0)?
        }
        Command::Trace(TraceWhat::Connect(opts)) => cmd::trace_connect::run(opts).map(|()| 0)?,
        Command::Trace(TraceWhat::Overflow(opts)) => cmd::trace_overflow::run(opts).map(|()| 0)?,
        Command::Ports(opts) => cmd::ports::run(opts)?,
        Command::Conntrack(opts) => cmd::conntrack::run_snapshot(opts)?,
        Command::Sockets(opts) => cmd::sockets::run(opts)?,
        Command::Diagnose(opts) => cmd::diagnose::run(opts)?,
        Command::Top(opts) => cmd::top::run(opts)?,
        Command::Export(opts) => cmd::export::run(opts)?,
        Command::Lab(opts) => {
            stop::install();
            tcpq_lab::run(&opts.lab(), tcpq_lab::Stop::when(stop::requested)).map(|()| 0)?
        }
    };
    Ok(code as u8)
}
