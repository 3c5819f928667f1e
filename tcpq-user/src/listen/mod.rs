pub mod diagnose;
pub mod resolve;
pub mod unsent;
