//! `--matrix`: the default command on every kernel of the matrix and on this machine's, and
//! README.md's compatibility table written from what each showed (`MatrixRow`).
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use super::{
    KERNELS, boot, build_initramfs, default_script, fetch_kernel, prepare,
    script::{CHECK_MARK, TEST_MARK},
};
use crate::{output_of, root_dir};

/// `--matrix`: the default command on every kernel of KERNELS and on this machine's, then the
/// compatibility table in README.md (between its matrix markers) rewritten.
pub(super) fn matrix() -> Result<()> {
    prepare()?;
    let script = default_script(false)?;
    let mut rows = Vec::new();
    for (kernel, _) in KERNELS {
        let guest = fetch_kernel(kernel)?;
        let initrd = build_initramfs(&guest, &script)?;
        let (status, console) = boot(&guest, &initrd)?;
        rows.push(MatrixRow::from_console(&guest.release, status, &console));
    }
    eprintln!("xtask: vm: the same on this machine's kernel…");
    let path = format!(
        "{}:{}",
        root_dir().join("target/debug").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("sh")
        .current_dir(root_dir())
        .env("PATH", path)
        .env("TCPQ_BIN", crate::tcpq_bin("debug"))
        .args(["-c", &script])
        .stderr(Stdio::inherit())
        .output()
        .context("run the matrix script here")?;
    let here: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let release = output_of(Command::new("uname").arg("-r")).unwrap_or_default();
    rows.push(MatrixRow::from_console(
        &format!("{} (this machine)", release.trim()),
        out.status.code().unwrap_or(1),
        &here,
    ));
    let table = matrix_table(&rows);
    println!("{table}");
    let readme = root_dir().join("README.md");
    let text = std::fs::read_to_string(&readme)?;
    let (start, end) = ("<!-- matrix:start -->", "<!-- matrix:end -->");
    let (Some(a), Some(b)) = (text.find(start), text.find(end)) else {
        bail!("README.md has no {start} … {end} markers for the table");
    };
    let new = format!("{}{start}\n{table}{}", &text[..a], &text[b..]);
    std::fs::write(&readme, new)?;
    eprintln!("xtask: vm: README.md's compatibility table rewritten");
    if rows.iter().any(|r| r.status != 0) {
        bail!("a kernel of the matrix failed (see the table)");
    }
    Ok(())
}

/// What one kernel of the matrix showed.
#[derive(Debug, PartialEq)]
struct MatrixRow {
    kernel: String,
    status: i32,
    /// (hooks attached, hooks loaded) per `tcpq check --json`.
    attached: (usize, usize),
    /// Refused hooks: "program: reason".
    refused: Vec<String>,
    /// kprobes / fentry as `tcpq check` found them.
    kprobes: String,
    fentry: String,
    /// "family backend" per `tcpq check --json`'s `backends`.
    backends: Vec<String>,
    /// (test file, passed, failed).
    tests: Vec<(String, u64, u64)>,
}

impl MatrixRow {
    /// Reads the markers the matrix script prints (see `default_script`).
    fn from_console(kernel: &str, status: i32, console: &[String]) -> Self {
        let mut row = MatrixRow {
            kernel: kernel.to_string(),
            status,
            attached: (0, 0),
            refused: Vec::new(),
            kprobes: "?".into(),
            fentry: "?".into(),
            backends: Vec::new(),
            tests: Vec::new(),
        };
        let mut current = None;
        for line in console {
            // The console's first line after boot carries the firmware's escape sequences.
            let marked = |mark: &str| line.find(mark).map(|i| line[i + mark.len()..].trim());
            let line = line.trim();
            if let Some(json) = marked(CHECK_MARK) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
                    continue;
                };
                let hooks = v["hooks"].as_array().cloned().unwrap_or_default();
                row.attached = (
                    hooks.iter().filter(|h| h["state"] == "attached").count(),
                    hooks.len(),
                );
                row.refused = hooks
                    .iter()
                    .filter(|h| h["state"] != "attached")
                    .map(|h| {
                        format!(
                            "{}: {}",
                            h["program"].as_str().unwrap_or("?"),
                            h["detail"].as_str().unwrap_or("")
                        )
                    })
                    .collect();
                // "available (not needed)", "unavailable: CONFIG_KPROBES unset …" → one word.
                let short = |x: &serde_json::Value| {
                    x.as_str()
                        .map(|s| s.split([' ', '(', ':']).next().unwrap_or(s).to_string())
                        .or_else(|| x.as_bool().map(|b| if b { "yes" } else { "no" }.into()))
                        .unwrap_or_else(|| "?".into())
                };
                row.kprobes = short(&v["kprobes"]);
                row.fentry = short(&v["fentry"]);
                row.backends = v["backends"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|b| {
                        format!(
                            "{} {}",
                            b["family"].as_str().unwrap_or("?"),
                            b["backend"].as_str().unwrap_or("?")
                        )
                    })
                    .collect();
            } else if let Some(name) = marked(TEST_MARK) {
                current = Some(name.trim().to_string());
            } else if let (Some(name), Some(rest)) = (&current, line.strip_prefix("test result: "))
            {
                let count = |word: &str| {
                    rest.split(';')
                        .find_map(|p| p.trim().strip_suffix(word))
                        .and_then(|n| n.trim().rsplit(' ').next())
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                row.tests
                    .push((name.clone(), count("passed"), count("failed")));
                current = None;
            }
        }
        row
    }
}

fn matrix_table(rows: &[MatrixRow]) -> String {
    let mut t = String::from(
        "| kernel | hooks attached | backend | kprobes / fentry | integration tests (passed/failed) | refused |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let tests = if r.tests.is_empty() {
            format!("none ran (exit status {})", r.status)
        } else {
            r.tests
                .iter()
                .map(|(n, p, f)| format!("{n} {p}/{f}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let refused = if r.refused.is_empty() {
            "none".to_string()
        } else {
            r.refused.join("; ")
        };
        let backends = if r.backends.is_empty() {
            "?".to_string()
        } else {
            r.backends.join(", ")
        };
        t.push_str(&format!(
            "| {} | {}/{} | {backends} | {} / {} | {tests} | {refused} |\n",
            r.kernel, r.attached.0, r.attached.1, r.kprobes, r.fentry,
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_row_reads_the_markers() {
        let console: Vec<String> = [
            "vm| noise",
            r#"Booting from ROM..\x1b[2JTCPQ_CHECK_JSON={"kernel":"6.1.0-57-amd64","kprobes":"available (not needed)","fentry":"available","backends":[{"family":"listen","backend":"fentry"},{"family":"drop","backend":"tracepoint"}],"hooks":[{"program":"a","state":"attached","detail":"x"},{"program":"b","state":"unavailable","detail":"refused: why"}]}"#,
            "TCPQ_TESTS=listen",
            "running 13 tests",
            "test result: ok. 13 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 80.1s",
            "TCPQ_TESTS=connect",
            "test result: FAILED. 7 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let row = MatrixRow::from_console("6.1.0-57-amd64", 101, &console);
        assert_eq!(row.attached, (1, 2));
        assert_eq!(row.refused, ["b: refused: why"]);
        assert_eq!(row.kprobes, "available");
        let host = MatrixRow::from_console(
            "6.18",
            0,
            &[r#"TCPQ_CHECK_JSON={"kprobes":"unavailable: CONFIG_KPROBES unset","fentry":"refused: EPERM","hooks":[]}"#.to_string()],
        );
        assert_eq!(
            (host.kprobes.as_str(), host.fentry.as_str()),
            ("unavailable", "refused")
        );
        assert_eq!(
            row.tests,
            [("listen".to_string(), 13, 0), ("connect".to_string(), 7, 2)]
        );
        let t = matrix_table(&[row]);
        assert!(
            t.contains("| 6.1.0-57-amd64 | 1/2 | listen fentry, drop tracepoint |"),
            "{t}"
        );
        assert!(t.contains("listen 13/0, connect 7/2"), "{t}");
        let empty = matrix_table(&[MatrixRow::from_console("x", 125, &[])]);
        assert!(empty.contains("none ran (exit status 125)"), "{empty}");
    }
}
