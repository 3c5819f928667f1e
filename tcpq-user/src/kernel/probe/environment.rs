//! The environment facts gathered before loading (privileges, BTF, cgroup2, tracefs, kprobes),
//! reported by `tcpq check`, and the first of them that stops the core hooks.
use std::path::PathBuf;

use crate::kernel::env;

/// Environment facts gathered before loading, reported by `tcpq check`.
#[derive(Debug, Clone)]
pub struct Environment {
    pub privileges: env::Privileges,
    pub kernel: String,
    pub btf_path: PathBuf,
    pub btf_present: bool,
    pub cgroup2: Result<PathBuf, String>,
    pub tracefs: env::Tracefs,
    pub kprobes: Option<bool>,
}

impl Environment {
    pub fn gather() -> Self {
        let privileges = env::Privileges::current();
        let tracefs =
            env::ensure_tracefs(privileges.euid == 0 || privileges.has(env::cap::SYS_ADMIN));
        let kprobes = env::kprobes_available(&tracefs);
        let btf_path = env::btf_path();
        Self {
            kernel: env::kernel_release(),
            btf_present: btf_path.exists(),
            btf_path,
            cgroup2: env::find_cgroup2().map_err(|e| format!("{e:#}")),
            tracefs,
            kprobes,
            privileges,
        }
    }

    /// The first reason the core hooks cannot work, as a one-line error with its remedy.
    pub fn fatal_problem(&self) -> Option<String> {
        if !self.privileges.can_load_bpf() {
            let missing = self.privileges.missing_for_bpf().join(", ");
            return Some(if self.privileges.euid != 0 {
                format!(
                    "tcpq needs root (or {missing}) to load its kernel programs: run it with sudo"
                )
            } else {
                format!(
                    "tcpq runs as root but lacks {missing}: run it outside the restricted container/capability set"
                )
            });
        }
        if !self.btf_present {
            return Some(format!(
                "kernel BTF not found at {}: tcpq needs a kernel built with CONFIG_DEBUG_INFO_BTF=y",
                self.btf_path.display()
            ));
        }
        if let Err(e) = &self.cgroup2 {
            return Some(e.clone());
        }
        None
    }
}
