//! `tcpq diagnose --json` run by tests/tests/diagnose.rs alongside a lab incident, and the
//! report's finding for one cause.
use crate::{BackgroundLab, Netns, tcpq};

/// Runs `tcpq diagnose --json --duration D` while `lab` runs in `ns`; returns (report, lab pid,
/// exit code, the lab's closing facts).
pub fn diagnose_during(
    ns: &Netns,
    lab: &[&str],
    duration: &str,
    extra: &[&str],
) -> (serde_json::Value, u64, i32, serde_json::Value) {
    let mut diag = tcpq()
        .args(["diagnose", "--json", "--duration", duration])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The banner comes once every program is attached: a lab started earlier (a fixed sleep
    // on a slow machine) loses the connections enqueued before accept_enqueue was attached.
    let mut stderr = std::io::BufReader::new(diag.stderr.take().unwrap());
    let mut banner = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut banner).unwrap();
    assert!(banner.contains("diagnosing"), "tcpq diagnose: {banner}");
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let lab = BackgroundLab::start(ns, lab);
    let pid = lab.facts["pid"].as_u64().unwrap();
    let out = diag.wait_with_output().unwrap();
    let done = lab.finish();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (report, pid, out.status.code().unwrap_or(-1), done)
}

pub fn find<'a>(report: &'a serde_json::Value, cause: &str) -> &'a serde_json::Value {
    report["causes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cause"] == cause)
        .unwrap_or_else(|| panic!("no {cause} in {report}"))
}

/// `tcpq diagnose --idle 2s` 2.5 s into a `stale-upstream` lab on `port` (`extra`: more lab
/// arguments); returns (report, the lab's facts, its client pids sorted).
pub fn diagnose_stale_lab(
    ns: &Netns,
    port: &str,
    extra: &[&str],
) -> (serde_json::Value, serde_json::Value, Vec<u64>) {
    let lab_args = [
        &["stale-upstream", "--port", port, "--duration", "8"],
        extra,
    ]
    .concat();
    let lab = BackgroundLab::start(ns, &lab_args);
    let mut clients: Vec<u64> = lab.facts["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    clients.sort();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let out = tcpq()
        .args(["diagnose", "--json", "--duration", "1", "--idle", "2s"])
        .output()
        .unwrap();
    let facts = lab.facts.clone();
    drop(lab);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = serde_json::from_slice(&out.stdout).unwrap();
    (r, facts, clients)
}
