//! One module per subcommand (`check`, `conntrack`, `diagnose`, `export`, `ports`, `sockets`,
//! `top`, `trace_*`) and the plumbing they share (`ring`, `trace_out`, `filter`,
//! `connect_session`, `metrics_http`). A subcommand imports families, snapshots, `live` and the
//! plumbing, never another subcommand; nothing outside `cmd` imports `cmd`.
pub mod check;
pub mod connect_session;
pub mod conntrack;
pub mod diagnose;
pub mod export;
pub mod filter;
pub mod metrics_http;
pub mod ports;
pub mod ring;
pub mod sockets;
pub mod top;
pub mod trace_accept;
pub mod trace_connect;
pub mod trace_conntrack;
pub mod trace_drops;
pub mod trace_out;
pub mod trace_overflow;

use crate::{
    cli::{HooksMode, TierArgs},
    live::session::LiveOptions,
};

/// The live session's options from a live command's `--hooks`/`--quiet-period` (`default`: the
/// command's own `--hooks` default).
pub fn live_options(tiers: &TierArgs, default: HooksMode) -> LiveOptions {
    LiveOptions {
        hooks_all: tiers.hooks.unwrap_or(default) == HooksMode::All,
        quiet: tiers.quiet_period,
    }
}
