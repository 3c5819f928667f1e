//! A lab run of tests/tests/listen.rs under `tcpq trace overflow --json`, with the kernel's
//! counters of its namespace around it, and the checks every `lab overflow` run must pass.
use crate::{
    Netns, Tracer, assert_count_matches, counts_by_kind, delta, final_summary, listener_summary,
    run_lab,
};

pub const OVERFLOWS: &str = "TcpExt:ListenOverflows";

/// One lab run in a namespace of its own under `tcpq trace overflow --json`, with the
/// namespace's SNMP counters read around it and tcpq's counts for that namespace by kind.
pub struct TracedLab {
    pub inode: u64,
    pub facts: serde_json::Value,
    before: std::collections::HashMap<String, u64>,
    after: std::collections::HashMap<String, u64>,
    pub lines: Vec<serde_json::Value>,
    pub counts: std::collections::HashMap<String, u64>,
}

impl TracedLab {
    pub fn run(name: &str, lab: &[&str]) -> Self {
        let ns = Netns::new(name);
        let inode = ns.inode();
        let tracer = Tracer::start(&[]);
        let before = ns.counters();
        let (facts, done) = run_lab(&ns, lab);
        let after = ns.counters();
        let lines = tracer.stop();
        let counts = counts_by_kind(&lines, inode);
        // The run-wide facts (other_drops, unresolved, missed_runs, lost) explain any mismatch.
        eprintln!(
            "tcpq {counts:?}; lab {done}; summary {}",
            final_summary(&lines)
        );
        Self {
            inode,
            facts,
            before,
            after,
            lines,
            counts,
        }
    }

    /// The kernel counter's change over the run.
    pub fn kernel(&self, counter: &str) -> u64 {
        delta(&self.before, &self.after, counter)
    }

    /// tcpq's count of one kind in the lab's namespace.
    pub fn count(&self, kind: &str) -> u64 {
        self.counts.get(kind).copied().unwrap_or(0)
    }

    pub fn summary(&self) -> &serde_json::Value {
        final_summary(&self.lines)
    }

    /// The final summary's entry for the lab's listener.
    pub fn listener(&self) -> &serde_json::Value {
        listener_summary(self.summary(), self.inode)
    }

    /// Asserts tcpq's count equals the kernel's (see `assert_count_matches`).
    pub fn assert_matches(&self, what: &str, tcpq: u64, counter: &str) {
        assert_count_matches(what, tcpq, self.kernel(counter), self.summary());
    }
}

/// One `tcpq lab overflow` run (both phases) with the assertions every overflow run must pass:
/// final-ACK drops seen, and SYN + ACK drops and cookies equal to the kernel's own counters.
pub fn overflow_run(name: &str, backlog: u32) -> TracedLab {
    let backlog = backlog.to_string();
    let run = TracedLab::run(
        name,
        &["overflow", "--backlog", &backlog, "--duration", "2"],
    );
    assert_eq!(
        run.facts["ack_phase"], true,
        "nft is needed for the ack phase: run `cargo xtask setup`"
    );
    assert!(
        run.count("ack") > 0,
        "final-ACK drops seen: {:?}",
        run.counts
    );
    let refused = run.count("syn") + run.count("ack");
    run.assert_matches("syn+ack vs ListenOverflows", refused, OVERFLOWS);
    run.assert_matches(
        "syn+ack vs ListenDrops (no other listen drops)",
        refused,
        "TcpExt:ListenDrops",
    );
    run.assert_matches("cookies", run.count("cookie"), "TcpExt:SyncookiesSent");
    run
}
