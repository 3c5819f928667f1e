//! What a test changes outside itself, put back on drop: the global nf_conntrack_max, a tmux
//! session.
use std::process::{Command, Stdio};

use tcpq_lab::sysctl::{self, GlobalSysctl};

/// The global nf_conntrack_max, as the kernel prints it (trimmed). nf_conntrack is loaded
/// first where it is a module, so the value read is the one a lab will find and restore.
pub fn ct_max() -> String {
    sysctl::load_conntrack();
    std::fs::read_to_string(sysctl::CONNTRACK_MAX)
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Restores the global nf_conntrack_max when dropped, also when the test panics while a lab
/// that lowered it still runs (the lab is then killed and cannot restore it itself).
pub struct CtMaxRestore {
    _restores_on_drop: Option<GlobalSysctl>,
}

impl CtMaxRestore {
    pub fn save() -> Self {
        sysctl::load_conntrack();
        Self {
            _restores_on_drop: GlobalSysctl::save(sysctl::CONNTRACK_MAX).ok(),
        }
    }
}

/// Runs `tmux ARGS`; its stdout.
pub fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux")
        .args(args)
        .output()
        .expect("tmux (cargo xtask setup installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tmux session owned by the test: killed on drop.
pub struct TmuxSession(pub String);

impl Drop for TmuxSession {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}
