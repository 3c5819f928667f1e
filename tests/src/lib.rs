//! Helpers for tcpq's integration tests: they run the real `tcpq` binary as root against
//! incidents reproduced by `tcpq lab` in network namespaces created here, and compare what tcpq
//! reports with the kernel's own counters of those namespaces. One module per job, everything
//! re-exported here (`use tcpq_tests::*`) but the helpers of a single test binary, which that
//! binary imports by path (`use tcpq_tests::exporter::*`) so their names stay its own; this file:
//! root, the tcpq binary, and the sequence that keeps the names of a test's namespaces and
//! cgroups apart.
use std::{path::PathBuf, process::Command, sync::atomic::AtomicU32};

mod apps;
mod cgroup;
mod deploy;
mod guards;
mod lab;
mod metrics;
mod netns;
mod output;
mod programs;
mod promql;
mod tools;
mod top;
mod tracer;

// The helpers of one test binary each, named after it.
pub mod diagnose;
pub mod exporter;
pub mod image;
pub mod listen;
pub mod signals;
pub mod systemd;

pub use apps::{first_line, python_in, silent_upstream};
pub use cgroup::{TestCgroup, cgroup2_root};
pub use deploy::{
    deploy_dir, kubernetes_manifests, kubernetes_object, status_field, unit_setting, yaml_strings,
};
pub use guards::{CtMaxRestore, TmuxSession, ct_max, tmux};
pub use lab::{BackgroundLab, run_lab};
pub use metrics::{free_loopback_addr, listener_refused, metric_series, scrape};
pub use netns::{Netns, nft_in};
pub use output::{
    assert_count_matches, causes, counts_by_kind, final_summary, fix_lines, listener_summary,
};
pub use programs::{
    AttachedProgram, attached_by, attached_tcpq_programs, bpf_programs_of, fd_count,
    hook_unavailable, rss_kib,
};
pub use promql::{PromqlRefs, grafana_to_promql, promql_refs};
pub use tools::{newest_in_dist, present_or_skip, tool_or_skip};
pub use top::TopJson;
pub use tracer::Tracer;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Skips (returns true) with a clear message when not root. CI runs as root, so there they run.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!(
        "SKIPPED {test}: needs root (loads eBPF programs, creates network namespaces); run `cargo xtask test` as root"
    );
    true
}

/// The tcpq binary: $TCPQ_BIN, else target/debug/tcpq of this workspace (`cargo xtask test`
/// builds it first).
pub fn tcpq_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TCPQ_BIN") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/tcpq");
    assert!(
        p.exists(),
        "{} missing: build it first (`cargo build -p tcpq-user` or `cargo xtask test`)",
        p.display()
    );
    p
}

pub fn tcpq() -> Command {
    Command::new(tcpq_bin())
}

pub(crate) static SEQ: AtomicU32 = AtomicU32::new(0);

pub use tcpq_lab::counters::delta;
