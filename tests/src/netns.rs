//! A network namespace owned by a test (`Netns`, tcpq-lab's guard: deleted on drop) and nft
//! rules inside one.
use std::{collections::HashMap, sync::atomic::Ordering};

use tcpq_lab::netns::NetnsGuard;

use crate::SEQ;

/// A named network namespace owned by the test (tcpq-lab's guard); deleted on drop (also its
/// `-cli` sibling that `tcpq lab synflood` creates), even when the test panics.
pub struct Netns {
    pub name: String,
    guard: NetnsGuard,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "tqt-{tag}-{}-{}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        // Fresh: a leftover of a killed run with the same name is not reused.
        let guard = NetnsGuard::fresh(&name)
            .unwrap_or_else(|e| panic!("create network namespace {name}: {e:#}"));
        Self { name, guard }
    }
    /// The network namespace of process `pid` (a container's) named `name` on the host; the
    /// name is removed on drop.
    pub fn attach(name: &str, pid: u32) -> Self {
        let guard = NetnsGuard::attach(name, pid)
            .unwrap_or_else(|e| panic!("name the network namespace of {pid}: {e:#}"));
        Self {
            name: name.to_string(),
            guard,
        }
    }
    pub fn inode(&self) -> u64 {
        match self.guard.inode() {
            0 => panic!("no netns file for {}", self.name),
            inode => u64::from(inode),
        }
    }
    /// Sets a per-namespace sysctl inside this namespace (`path` under /proc/sys).
    pub fn write_sysctl(&self, path: &'static str, value: &str) {
        tcpq_lab::netns::write_sysctl_in(&self.guard, path, value)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    /// TcpExt/Tcp counters of this namespace, read with the kernel's own /proc files (not tcpq).
    pub fn counters(&self) -> HashMap<String, u64> {
        self.counters_of(&self.name)
    }
    pub fn counters_of(&self, name: &str) -> HashMap<String, u64> {
        tcpq_lab::netns::counters_of(name).unwrap_or_else(|e| panic!("{e:#}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The guard deletes the namespace itself.
        tcpq_lab::netns::delete(&format!("{}-cli", self.name));
    }
}

/// Applies an nft script inside a namespace.
pub fn nft_in(ns: &Netns, script: &str) {
    if let Err(e) = tcpq_lab::netns::nft_in(&ns.name, script) {
        panic!("nft script failed ({e:#}): {script}");
    }
}
