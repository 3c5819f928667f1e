//! One ranked cause as the live commands show and export it: a finding, where, who, and the
//! evidence behind it.
use serde_json::{Value, json};

use crate::diagnosis::Finding;

/// One ranked cause.
#[derive(Debug, Clone)]
pub struct Cause {
    pub finding: Finding,
    /// Listener address:port, "process → destination", "netns N" or "pid N".
    pub place: String,
    pub process: Option<String>,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    /// The process's cgroup (v2) when it is not the root: its container.
    pub cgroup: Option<String>,
    pub evidence: Value,
}

impl Cause {
    pub fn to_json(&self) -> Value {
        let (pod, container) = crate::snapshot::container::identify(self.cgroup.as_deref());
        json!({"cause": self.finding.cause, "where": self.place, "process": self.process, "pid": self.pid, "port": self.port, "cgroup": self.cgroup, "pod": pod, "container": container, "impact": self.finding.impact, "text": self.finding.text, "evidence": self.evidence, "fix": self.finding.fix})
    }
}
