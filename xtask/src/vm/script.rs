//! The default command the guest runs: `tcpq check`, then the count-vs-kernel integration
//! tests, with the marker lines the matrix reads.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result};

use crate::root_dir;

/// The integration tests run by default: the ones whose counts must equal the kernel's.
const DEFAULT_TESTS: &[&str] = &["listen", "connect", "conntrack", "accept"];

/// Marker lines of the matrix script.
pub(super) const CHECK_MARK: &str = "TCPQ_CHECK_JSON=";
pub(super) const TEST_MARK: &str = "TCPQ_TESTS=";

/// The default command: `tcpq check`, then the count-vs-kernel integration tests, built here
/// first (the guest only runs binaries).
/// `stop_at_failure`: the first failure ends it (a plain run); else every test file runs and
/// the status is the last failure's (the matrix), with marker lines for `MatrixRow`.
pub(super) fn default_script(stop_at_failure: bool) -> Result<String> {
    let mut lines = if stop_at_failure {
        vec!["set -e".to_string(), "tcpq check".to_string()]
    } else {
        vec![
            "status=0".to_string(),
            format!("echo \"{CHECK_MARK}$(tcpq check --json | tr -d '\\n')\""),
        ]
    };
    for test in DEFAULT_TESTS {
        let exe = test_executable(test)?;
        lines.push(format!("echo '{TEST_MARK}{test}'"));
        lines.push(format!("{} --test-threads=1", exe.display()));
        if !stop_at_failure {
            lines.push("rc=$?; [ $rc -eq 0 ] || status=$rc".to_string());
        }
    }
    if !stop_at_failure {
        lines.push("exit $status".to_string());
    }
    Ok(lines.join("\n"))
}

/// Builds integration test file `name` and returns its executable.
fn test_executable(name: &str) -> Result<PathBuf> {
    let out = Command::new("cargo")
        .current_dir(root_dir())
        .args([
            "test",
            "--package",
            "tcpq-tests",
            "--test",
            name,
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == name)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("no executable for integration test {name}"))
}
