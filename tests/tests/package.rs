//! The Debian package of `cargo xtask dist` (target/dist/tcpq_*.deb), installed with dpkg on this
//! machine: it puts tcpq, its man pages, completions, the tcpq-export unit and its
//! /etc/default file in place; the unit passes `systemd-analyze verify` (where systemd is
//! installed) and grants exactly the
//! capabilities `tcpq check --json` names (export_keeps, plus CAP_BPF and CAP_PERFMON to load);
//! the unit's ExecStart, run with those capabilities only (setpriv: bounding set, no_new_privs) and
//! its EnvironmentFile's arguments (the port swapped for a free one), serves /metrics; `dpkg -r`
//! then `dpkg -P` remove every file. Root. `cargo xtask test` builds the package first.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use tcpq_tests::*;

const UNIT: &str = "/lib/systemd/system/tcpq-export.service";
const DEFAULTS: &str = "/etc/default/tcpq-export";

/// The newest .deb in target/dist.
fn package(test: &str) -> Option<PathBuf> {
    newest_in_dist(test, ".deb")
}

fn dpkg(args: &[&str]) -> (bool, String) {
    let out = Command::new("dpkg")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .expect("dpkg");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn installed() -> bool {
    dpkg(&["-s", "tcpq"])
        .1
        .contains("Status: install ok installed")
}

/// Purges the package when the test ends, also when it panics.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = dpkg(&["-P", "tcpq"]);
    }
}

#[test]
fn the_deb_installs_runs_its_unit_command_and_purges_cleanly() {
    let test = "deb_package";
    if skip_unless_root(test) {
        return;
    }
    let Some(deb) = package(test) else {
        return;
    };
    if installed() {
        eprintln!("SKIPPED {test}: a tcpq package is already installed here; not touching it");
        return;
    }
    let started = Instant::now();
    let _purge = Purge;
    let (ok, out) = dpkg(&["-i", deb.to_str().unwrap()]);
    assert!(ok, "dpkg -i {}: {out}", deb.display());
    assert!(installed());

    let files = [
        "/usr/bin/tcpq",
        "/usr/share/man/man1/tcpq.1.gz",
        "/usr/share/man/man1/tcpq-export.1.gz",
        "/usr/share/man/man1/tcpq-trace-overflow.1.gz",
        "/usr/share/bash-completion/completions/tcpq",
        "/usr/share/zsh/vendor-completions/_tcpq",
        "/usr/share/fish/vendor_completions.d/tcpq.fish",
        UNIT,
        DEFAULTS,
    ];
    for f in files {
        assert!(Path::new(f).is_file(), "{f} not installed");
    }
    let listed = dpkg(&["-L", "tcpq"]).1;
    for f in files {
        assert!(
            listed.lines().any(|l| l == f),
            "{f} not in dpkg -L: {listed}"
        );
    }
    let version = Command::new("/usr/bin/tcpq")
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&version.stdout).starts_with("tcpq "),
        "{version:?}"
    );

    // The unit: valid for systemd, and the capabilities it grants are the ones tcpq says it needs.
    // systemd-analyze verify where systemd is installed (a CI container may have none: then
    // only the unit's settings below are checked).
    match Command::new("systemd-analyze")
        .args(["verify", UNIT])
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => eprintln!("{test}: no systemd-analyze here: the unit is not verified by systemd"),
    }
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let caps: BTreeSet<String> = unit_setting(&unit, "CapabilityBoundingSet")
        .expect("CapabilityBoundingSet")
        .split_whitespace()
        .map(String::from)
        .collect();
    let check = Command::new("/usr/bin/tcpq")
        .args(["check", "--json"])
        .output()
        .unwrap();
    let check: serde_json::Value = serde_json::from_slice(&check.stdout).expect("check --json");
    let mut needed: BTreeSet<String> = check["export_keeps"]
        .as_array()
        .expect("export_keeps")
        .iter()
        .map(|c| c["capability"].as_str().unwrap().to_string())
        .collect();
    needed.extend(["CAP_BPF".to_string(), "CAP_PERFMON".to_string()]);
    assert_eq!(
        caps, needed,
        "the unit's bounding set vs tcpq check's export_keeps + loading"
    );
    for hardening in [
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "ProtectHome=yes",
        "PrivateTmp=yes",
    ] {
        assert!(unit.lines().any(|l| l == hardening), "{hardening} missing");
    }

    // ExecStart with the EnvironmentFile's arguments, --listen on a free loopback port, under the
    // unit's capabilities only.
    let exec = unit_setting(&unit, "ExecStart").expect("ExecStart");
    let env_file = unit_setting(&unit, "EnvironmentFile").expect("EnvironmentFile");
    let defaults = std::fs::read_to_string(env_file.trim_start_matches('-')).unwrap();
    let args = unit_setting(&defaults, "TCPQ_EXPORT_ARGS").expect("TCPQ_EXPORT_ARGS");
    let addr = free_loopback_addr();
    let mut words: Vec<String> = Vec::new();
    let mut argv = exec.replace("$TCPQ_EXPORT_ARGS", &args);
    argv = argv.replace("${TCPQ_EXPORT_ARGS}", &args);
    let mut it = argv.split_whitespace();
    while let Some(w) = it.next() {
        words.push(w.to_string());
        if w == "--listen" {
            it.next();
            words.push(addr.clone());
        }
    }
    assert_eq!(words[..2], ["/usr/bin/tcpq", "export"], "{exec}");
    let bounding: Vec<String> = needed
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    // util-linux is Essential in Debian: setpriv is always there.
    let setpriv = tool_or_skip(test, "setpriv", "util-linux").expect("setpriv (util-linux)");
    let log = std::env::temp_dir().join(format!("tcpq-deb-{}.log", std::process::id()));
    let mut child = Command::new(setpriv)
        .arg(format!("--bounding-set=-all,{}", bounding.join(",")))
        .args(["--inh-caps=-all", "--no-new-privs", "--"])
        .args(&words)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("setpriv");
    let t = Instant::now();
    let page = loop {
        if let Some(p) = scrape(&addr).filter(|p| {
            metric_series(p)
                .get("tcpq_last_update_seconds")
                .is_some_and(|v| *v > 0.0)
        }) {
            break p;
        }
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        if t.elapsed() > Duration::from_secs(30) || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            panic!("the unit's command never served /metrics: {words:?}: {log_text}");
        }
        thread::sleep(Duration::from_millis(200));
    };
    assert!(page.contains("tcpq_lost_events_total"), "{page}");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(
        log_text.contains(
            "capabilities kept: CAP_SYS_ADMIN CAP_NET_ADMIN CAP_SYS_PTRACE CAP_DAC_READ_SEARCH"
        ),
        "{log_text}"
    );
    assert!(
        status.success() || status.code().is_none(),
        "{status}: {log_text}"
    );

    // Removal keeps only the conffile; purge removes it too.
    let (ok, out) = dpkg(&["-r", "tcpq"]);
    assert!(ok, "dpkg -r: {out}");
    for f in files.iter().filter(|f| **f != DEFAULTS) {
        assert!(!Path::new(f).exists(), "{f} left after dpkg -r");
    }
    assert!(
        Path::new(DEFAULTS).exists(),
        "the conffile stays until purge"
    );
    let (ok, out) = dpkg(&["-P", "tcpq"]);
    assert!(ok, "dpkg -P: {out}");
    assert!(!Path::new(DEFAULTS).exists(), "{DEFAULTS} left after purge");
    assert!(!installed());
    assert!(
        !dpkg(&["-s", "tcpq"]).1.contains("Status: deinstall"),
        "purged, not just removed"
    );
    eprintln!("package test took {:?}", started.elapsed());
}
