pub mod container;
pub mod counters;
pub mod netns;
pub mod nswatch;
pub mod procs;
pub mod sockdiag;
