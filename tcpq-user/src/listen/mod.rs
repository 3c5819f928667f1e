pub mod diagnose;
pub mod resolve;
