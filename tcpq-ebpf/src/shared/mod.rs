//! Helpers every family uses: the one way a record reaches a ring (`emit`), kernel memory
//! reads at runtime-resolved offsets (`read`), what a socket or descriptor tells (`sock`) and
//! who started a handshake (`owner`).
pub mod emit;
pub mod owner;
pub mod read;
pub mod sock;
