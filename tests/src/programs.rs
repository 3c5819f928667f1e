//! What a tcpq process holds: its BPF programs attached (from the kernel's own lists), its open
//! descriptors and RSS.
use std::collections::HashMap;

/// tcpq's program names (tcpq-common's `names::PROG_*`); the kernel keeps at most 15 bytes.
const TCPQ_PROGRAMS: &[&str] = &[
    "listen_ingress",
    "synack_retransmit",
    "send_reset",
    "sys_enter_listen",
    "sys_exit_accept",
    "sys_exit_accept4",
    "fentry_probe",
    "sock_state",
    "floor_probe",
    "outcome_xmit",
    "outcome_child",
    "outcome_consume",
    "sys_enter_connect",
    "sys_exit_connect",
    "connect_state",
    "connect_retrans",
    "skb_kfree",
    "drop_owner",
    "drop_kfree_nested",
    "accept_enqueue",
    "accept_enter4",
    "accept_enter",
    "accept_exit4",
    "accept_exit",
    // The fentry/kprobe alternatives of the syscall hooks (kernels that allow them).
    "accept_fentry",
    "accept_fexit",
    "connect_fentry",
    "connect_fexit",
    "listen_fentry",
    "listen_kprobe",
    "accept_count_fexit",
];

/// One attachment of a tcpq program, as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedProgram {
    pub name: String,
    pub prog_id: u32,
    pub link_id: u32,
}

/// tcpq's programs attached right now (by any process), from the kernel's own lists: every BPF
/// link (cgroup_skb, raw tracepoint and perf-event tracepoint attachments alike) joined with its
/// program, kept when the program's name is one of tcpq's.
pub fn attached_tcpq_programs() -> Vec<AttachedProgram> {
    let names: HashMap<u32, String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| Some((p.id(), p.name_as_str()?.to_string())))
        .filter(|(_, n)| TCPQ_PROGRAMS.iter().any(|t| &t[..t.len().min(15)] == n))
        .collect();
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter_map(|l| {
            Some(AttachedProgram {
                name: names.get(&l.program_id())?.clone(),
                prog_id: l.program_id(),
                link_id: l.id(),
            })
        })
        .collect()
}

/// Ids of the BPF programs a process holds (the `prog_id` of its program and link descriptors
/// in /proc/PID/fdinfo): with `attached_tcpq_programs`, what one tcpq has attached, apart from
/// any other tcpq running at the same time.
pub fn bpf_programs_of(pid: u32) -> std::collections::HashSet<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Default::default();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

/// tcpq's programs the process `pid` has attached now, from the kernel's link list.
pub fn attached_by(pid: u32) -> Vec<String> {
    let mine = bpf_programs_of(pid);
    let mut names: Vec<String> = attached_tcpq_programs()
        .into_iter()
        .filter(|a| mine.contains(&a.prog_id))
        .map(|a| a.name)
        .collect();
    names.sort();
    names
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Open descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Why this kernel cannot serve tcpq's hook `program` — `tcpq check --json`'s detail for a hook
/// in state "unavailable" (a kernel that lacks what it needs) — or None when it can.
pub fn hook_unavailable(program: &str) -> Option<String> {
    let out = crate::tcpq()
        .args(["check", "--json"])
        .output()
        .expect("run tcpq check --json");
    let check: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "tcpq check --json: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    check["hooks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| h["program"] == program && h["state"] == "unavailable")
        .map(|h| h["detail"].as_str().unwrap_or("unavailable").to_string())
}
