pub mod check;
pub mod ports;
pub mod trace_connect;
pub mod trace_overflow;
