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
