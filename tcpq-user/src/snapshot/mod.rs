pub mod counters;
pub mod netns;
pub mod procs;
pub mod sockdiag;
