//! The accept family: `accept()` calls on a listener (wait in the queue, errors, acceptors).
pub mod aggregate;
pub mod decode;
pub mod diagnose;
