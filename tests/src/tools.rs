//! What a test needs from outside (a tool on PATH, dist's build): found, or the test is skipped
//! with why — or fails under `cargo xtask test`, which provides them.
use std::path::PathBuf;

/// A tool the test needs (promtool, prometheus, setpriv…): its path, or None after printing why
/// the test is skipped (see `present_or_skip`).
pub fn tool_or_skip(test: &str, tool: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    });
    present_or_skip(
        test,
        found,
        &format!("{tool} is not on PATH (Debian package {package})"),
    )
}

/// Something the test needs that `cargo xtask test` provides (a tool setup installs, the .deb
/// dist builds, setup's venv): `found`, or None after printing `SKIPPED test: missing; …`. Under
/// `cargo xtask test` (TCPQ_TOOLS_REQUIRED=1) a missing one fails the test instead.
pub fn present_or_skip(test: &str, found: Option<PathBuf>, missing: &str) -> Option<PathBuf> {
    if found.is_none() {
        assert!(
            std::env::var_os("TCPQ_TOOLS_REQUIRED").is_none(),
            "{test}: {missing}, although `cargo xtask test` provides it"
        );
        eprintln!(
            "SKIPPED {test}: {missing}: `cargo xtask setup` installs the tools (as root), `cargo xtask dist` builds the package"
        );
    }
    found
}

/// The newest file of target/dist (what `cargo xtask dist` built) whose name ends with `suffix`,
/// or None after saying why the test is skipped (see `present_or_skip`).
pub fn newest_in_dist(test: &str, suffix: &str) -> Option<PathBuf> {
    let dist = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/dist");
    let found = std::fs::read_dir(&dist).ok().and_then(|d| {
        d.filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(suffix))
            .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    });
    present_or_skip(test, found, &format!("no *{suffix} in {}", dist.display()))
}
