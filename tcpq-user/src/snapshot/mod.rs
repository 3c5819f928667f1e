pub mod container;
pub mod counters;
pub mod listeners;
pub mod netlink_dump;
pub mod netns;
pub mod nswatch;
pub mod procs;
pub mod sockdiag;
