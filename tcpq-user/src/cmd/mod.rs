pub mod check;
pub mod trace_overflow;
