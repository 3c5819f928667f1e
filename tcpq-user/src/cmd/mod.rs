pub mod check;
pub mod conntrack;
pub mod ports;
pub mod ring;
pub mod sockets;
pub mod trace_accept;
pub mod trace_connect;
pub mod trace_overflow;
