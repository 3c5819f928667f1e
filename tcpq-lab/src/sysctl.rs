//! Global sysctls set for as long as a guard lives (a lab's or the bench's own runs: tcpq
//! itself never sets one). The previous value is put back on drop, also when unwinding from a
//! panic: a lowered nf_conntrack_max left behind would break the whole machine's networking.
use anyhow::{Context as _, Result};

/// The global conntrack table size (read-only outside the initial network namespace).
pub const CONNTRACK_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

/// Restores `path` to the value it had when the guard was made.
pub struct GlobalSysctl {
    path: &'static str,
    previous: String,
}

impl GlobalSysctl {
    /// Sets `path` to `value`; the guard puts the previous value back.
    pub fn set(path: &'static str, value: &str) -> Result<Self> {
        let guard = Self::save(path).with_context(|| format!("read {path}"))?;
        std::fs::write(path, value).with_context(|| format!("set {path} to {value}"))?;
        Ok(guard)
    }

    /// Only remembers `path`'s value, to restore it on drop: for a test that lets another
    /// process (a lab it may have to kill) change it.
    pub fn save(path: &'static str) -> Result<Self> {
        let previous = std::fs::read_to_string(path)?.trim().to_string();
        Ok(Self { path, previous })
    }

    /// The value restored on drop (trimmed).
    pub fn previous(&self) -> &str {
        &self.previous
    }
}

impl Drop for GlobalSysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, &self.previous);
    }
}

/// The global nf_conntrack_max lowered to `value` (the conntrack lab), restored on drop.
pub fn lower_conntrack_max(value: u32) -> Result<GlobalSysctl> {
    let guard = GlobalSysctl::save(CONNTRACK_MAX)
        .context("read nf_conntrack_max (is nf_conntrack available?)")?;
    std::fs::write(CONNTRACK_MAX, value.to_string()).context("lower nf_conntrack_max")?;
    Ok(guard)
}

/// Loads nf_conntrack where it is a module (Debian's kernels: no nf_conntrack_max until
/// something needs conntrack); best effort: built in, or absent, both leave it as is.
pub fn load_conntrack() {
    let _ = std::process::Command::new("modprobe")
        .args(["-q", "nf_conntrack"])
        .stderr(std::process::Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_value_is_back_after_a_panic() {
        let file = std::env::temp_dir().join(format!("tcpq-lab-sysctl-{}", std::process::id()));
        std::fs::write(&file, "65536\n").unwrap();
        let path: &'static str = Box::leak(file.to_string_lossy().into_owned().into_boxed_str());
        let unwound = std::panic::catch_unwind(|| {
            let guard = GlobalSysctl::set(path, "64").unwrap();
            assert_eq!(guard.previous(), "65536");
            assert_eq!(std::fs::read_to_string(path).unwrap(), "64");
            panic!("a lab failing while the value is lowered");
        });
        assert!(unwound.is_err());
        assert_eq!(std::fs::read_to_string(path).unwrap(), "65536");
        let _ = std::fs::remove_file(path);
    }
}
