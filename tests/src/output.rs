//! Reading what tcpq printed (NDJSON lines, summaries, causes and their fixes) and comparing
//! its counts with the kernel's.
use std::collections::HashMap;

use serde_json::Value;

/// Sums `count` per `kind` over event and aggregate lines of one namespace.
pub fn counts_by_kind(lines: &[Value], netns: u64) -> HashMap<String, u64> {
    let mut m = HashMap::new();
    for v in lines {
        if v["event"] == "summary" || v["netns"].as_u64() != Some(netns) {
            continue;
        }
        *m.entry(v["kind"].as_str().unwrap().to_string())
            .or_insert(0) += v["count"].as_u64().unwrap();
    }
    m
}

/// The final (whole-run) summary line.
pub fn final_summary(lines: &[Value]) -> &Value {
    lines
        .iter()
        .rev()
        .find(|v| v["event"] == "summary")
        .expect("a summary line")
}

/// The summary block of the listener in namespace `netns`.
pub fn listener_summary(summary: &Value, netns: u64) -> &Value {
    summary["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["netns"].as_u64() == Some(netns))
        .unwrap_or_else(|| panic!("no listener of netns {netns} in {summary}"))
}

pub fn causes(listener: &Value) -> Vec<String> {
    listener["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cause"].as_str().unwrap().to_string())
        .collect()
}

/// A cause's `fix` lines (JSON of diagnose, top and trace summaries).
pub fn fix_lines(cause: &Value) -> Vec<&str> {
    cause["fix"]
        .as_array()
        .unwrap_or_else(|| panic!("no fix in {cause}"))
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect()
}

/// tcpq's count equals the kernel's over the same interval — except that records whose
/// outcome tcpq could not observe, which its summary reports (`unresolved`, `missed_runs`),
/// may be missing from it: then it may fall short by at most that many, and never exceed.
pub fn assert_count_matches(what: &str, tcpq: u64, kernel: u64, summary: &Value) {
    let unseen =
        summary["unresolved"].as_u64().unwrap_or(0) + summary["missed_runs"].as_u64().unwrap_or(0);
    // Shown with --nocapture (the VM runs): the counts behind a pass, not only a failure's.
    eprintln!("count: {what}: tcpq {tcpq}, kernel {kernel}, unseen {unseen}");
    if unseen == 0 {
        assert_eq!(tcpq, kernel, "{what}: tcpq vs the kernel's counter");
    } else {
        assert!(
            tcpq <= kernel && kernel - tcpq <= unseen,
            "{what}: tcpq {tcpq}, kernel {kernel}, records tcpq reports it could not follow {unseen}"
        );
    }
}
