//! The sockets family: no hook of its own; sock_diag snapshots per process (stale upstream
//! connections, CLOSE_WAIT leaks, TIME_WAIT by remote).
pub mod aggregate;
pub mod diagnose;
