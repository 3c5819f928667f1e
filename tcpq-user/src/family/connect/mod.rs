//! The connect family: outbound `connect()` outcomes per process → destination, and the verdict
//! on ephemeral ports.
pub mod aggregate;
pub mod decode;
pub mod diagnose;
pub mod snapshot;
