//! `tcpq-assets OUT_DIR`: writes tcpq's man pages (OUT_DIR/man: tcpq.1 and one page per
//! subcommand, tcpq-export.1, tcpq-trace-overflow.1, …) and shell completions (OUT_DIR/completions:
//! bash, zsh, fish) from the same clap definition the binary parses. Run by `cargo xtask dist`.
use std::{path::PathBuf, process::ExitCode};

use clap::CommandFactory as _;
use clap_complete::Shell;
use tcpq::cli::Cli;

fn main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: tcpq-assets OUT_DIR");
        return ExitCode::from(2);
    };
    match write(&out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcpq-assets: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write(out: &std::path::Path) -> std::io::Result<()> {
    let man = out.join("man");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    clap_mangen::generate_to(Cli::command(), &man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), "tcpq", &completions)?;
    }
    Ok(())
}
