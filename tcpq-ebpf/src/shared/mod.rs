//! Helpers every family uses: the one way a record reaches a ring (`emit`).
pub mod emit;
