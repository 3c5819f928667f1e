//! Least privilege for the long-running commands (`export`, `top`). Everything that needs more
//! is done at start: loading and verifying the programs (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN),
//! BPF_ENABLE_STATS and mounting tracefs (CAP_SYS_ADMIN), binding the /metrics socket. What is
//! left at run time is in `RUNTIME_NEEDS`; `drop_to_runtime` keeps exactly the capabilities
//! that allow it (permitted, effective and bounding), clears inheritable and ambient, and sets
//! no_new_privs. Capabilities are per thread: it must run before any other thread exists, so
//! that every later thread inherits the reduced set.
//!
//! Not kept: CAP_BPF (the kernel checks no capability when attaching or detaching, except the
//! two below: "CAPs are not checked at attach/detach time", commit a17b53c4a4b5 that made
//! CAP_BPF; map reads and writes and BPF_OBJ_GET_INFO_BY_FD need none), CAP_PERFMON when
//! CAP_SYS_ADMIN is kept (perfmon_capable() accepts either). Each was dropped in turn with
//! tests/tests/privilege.rs running: CAP_SYS_ADMIN — the namespace created after start is
//! never read, nothing arms (and with CAP_PERFMON gone too, tracepoints fail with EACCES);
//! CAP_SYS_PTRACE — owners of a full root process and of another uid are not found;
//! CAP_DAC_READ_SEARCH — the other uid's owner is not found. CAP_NET_ADMIN could go on 6.18
//! (bpf_net_capable() accepts CAP_SYS_ADMIN, and conntrack entries fall back to
//! /proc/net/nf_conntrack), not on the older kernels tcpq supports.
use caps::{CapSet, Capability, CapsHashSet};

/// Something a live command still does after start, and the kernel check that allows it.
#[derive(Debug)]
pub struct Need {
    pub what: &'static str,
    /// The check, where it is in the kernel.
    pub check: &'static str,
    /// The capabilities the check accepts, the narrowest first.
    pub any_of: &'static [Capability],
}

/// In this order: a need met by only one capability comes before one that capability also
/// covers, so that no narrower capability is kept beside it for nothing.
pub const RUNTIME_NEEDS: &[Need] = &[
    Need {
        what: "enter the other network namespaces (tier 0: each one's sock_diag socket and /proc/net files, opened inside it, also for namespaces created later)",
        check: "setns(CLONE_NEWNET): netns_install() wants ns_capable(CAP_SYS_ADMIN)",
        any_of: &[Capability::CAP_SYS_ADMIN],
    },
    Need {
        what: "attach the tier-2 tracepoint programs when a family arms",
        check: "perf_event_open() of a system-wide tracepoint: perf_allow_cpu() and perf_allow_tracepoint() want perfmon_capable() (CAP_PERFMON or CAP_SYS_ADMIN)",
        any_of: &[Capability::CAP_PERFMON, Capability::CAP_SYS_ADMIN],
    },
    Need {
        what: "attach the cgroup_skb program when the listen family arms; dump conntrack entries over ctnetlink",
        check: "bpf_prog_attach_check_attach_type() for BPF_PROG_TYPE_CGROUP_SKB: capable(CAP_NET_ADMIN) (recent kernels such as 6.18 accept CAP_SYS_ADMIN too through bpf_net_capable(), 5.x and 6.1 do not); nfnetlink_rcv_msg(): netlink_net_capable(CAP_NET_ADMIN)",
        any_of: &[Capability::CAP_NET_ADMIN],
    },
    Need {
        what: "read other processes' /proc/PID/fd, ns/net and task/*/syscall (socket owners, their namespaces, idle acceptors)",
        check: "ptrace_may_access(): cap_ptrace_access_check() wants CAP_SYS_PTRACE for a process whose capabilities are not a subset of ours (any full root process once ours are reduced) or of another user",
        any_of: &[Capability::CAP_SYS_PTRACE],
    },
    Need {
        what: "list /proc/PID/fd of processes of other users (nginx workers as www-data)",
        check: "proc_fd_permission(): the directory is mode 0500 of its owner; generic_permission() wants CAP_DAC_READ_SEARCH",
        any_of: &[Capability::CAP_DAC_READ_SEARCH],
    },
];

/// A capability kept after start, with the needs it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub cap: Capability,
    pub needs: Vec<&'static str>,
}

/// The plan for a process holding `permitted`: the capabilities to keep, and the needs none of
/// them meets (they will fail at run time: said by `tcpq check`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub keep: Vec<Kept>,
    pub unmet: Vec<&'static str>,
}

impl Plan {
    pub fn set(&self) -> CapsHashSet {
        self.keep.iter().map(|k| k.cap).collect()
    }

    /// `CAP_SYS_ADMIN CAP_NET_ADMIN …`, or `none`.
    pub fn names(&self) -> String {
        if self.keep.is_empty() {
            return "none".into();
        }
        let names: Vec<String> = self.keep.iter().map(|k| k.cap.to_string()).collect();
        names.join(" ")
    }
}

pub fn plan(permitted: &CapsHashSet) -> Plan {
    let mut plan = Plan::default();
    for need in RUNTIME_NEEDS {
        if let Some(k) = plan.keep.iter_mut().find(|k| need.any_of.contains(&k.cap)) {
            k.needs.push(need.what);
        } else if let Some(&cap) = need.any_of.iter().find(|c| permitted.contains(c)) {
            plan.keep.push(Kept {
                cap,
                needs: vec![need.what],
            });
        } else {
            plan.unmet.push(need.what);
        }
    }
    plan
}

/// The plan for this process (`tcpq check` shows it; `drop_to_runtime` carries it out).
pub fn current_plan() -> Result<Plan, String> {
    caps::read(None, CapSet::Permitted)
        .map(|p| plan(&p))
        .map_err(|e| format!("read this process's capabilities (capget): {e}"))
}

/// Reduces this thread's capabilities to `current_plan()`'s and sets no_new_privs. A process
/// that holds less keeps what it has; a step the kernel refuses is one warning line, not an
/// error. Call it before any other thread is started (tokio, the terminal watcher).
pub fn drop_to_runtime() -> Plan {
    let plan = match current_plan() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tcpq: warning: keeping every capability: {e}");
            return Plan::default();
        }
    };
    let others = other_threads();
    if others > 0 {
        // Capabilities are per thread: those threads would keep the full set.
        eprintln!(
            "tcpq: warning: {others} other threads run already and keep their capabilities (capabilities are per thread; drop before starting threads)"
        );
    }
    let keep = plan.set();
    let mut failed = Vec::new();
    // tcpq never executes a program: nothing it runs may gain privileges (setuid files, file
    // capabilities), whatever happens to it later.
    if let Err(e) = nix::sys::prctl::set_no_new_privs() {
        failed.push(format!("no_new_privs ({e})"));
    }
    // The bounding set first: PR_CAPBSET_DROP needs CAP_SETPCAP, about to be dropped. Without
    // it (not root) the bounding set stays; with no_new_privs and no exec it grants nothing.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        match caps::read(None, CapSet::Bounding) {
            Ok(bounding) => {
                for cap in bounding.difference(&keep) {
                    if let Err(e) = caps::drop(None, CapSet::Bounding, *cap) {
                        failed.push(format!("bounding {cap} ({e})"));
                    }
                }
            }
            Err(e) => failed.push(format!("bounding ({e})")),
        }
    }
    for set in [CapSet::Ambient, CapSet::Inheritable] {
        if let Err(e) = caps::clear(None, set) {
            failed.push(format!("{set:?} ({e})"));
        }
    }
    // Effective before permitted: the kernel refuses an effective set larger than permitted.
    for set in [CapSet::Effective, CapSet::Permitted] {
        if let Err(e) = caps::set(None, set, &keep) {
            failed.push(format!("{set:?} ({e})"));
        }
    }
    if !failed.is_empty() {
        eprintln!(
            "tcpq: warning: dropping capabilities not needed after start failed for {} (tcpq runs on with more privilege than it needs)",
            failed.join(", ")
        );
    }
    plan
}

/// Threads of this process other than the caller. Threads that were joined may still be listed
/// for a moment while the kernel reaps them: wait a little for them.
fn other_threads() -> usize {
    let count = || {
        std::fs::read_dir("/proc/self/task")
            .map(|d| d.count().saturating_sub(1))
            .unwrap_or(0)
    };
    for _ in 0..20 {
        let n = count();
        if n == 0 {
            return 0;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(caps: &[Capability]) -> CapsHashSet {
        caps.iter().copied().collect()
    }

    #[test]
    fn root_keeps_sys_admin_net_admin_ptrace_and_dac_read_search() {
        let p = plan(&caps::all());
        assert_eq!(
            p.names(),
            "CAP_SYS_ADMIN CAP_NET_ADMIN CAP_SYS_PTRACE CAP_DAC_READ_SEARCH"
        );
        assert!(p.unmet.is_empty());
        // CAP_SYS_ADMIN serves setns and the tracepoints: no CAP_PERFMON beside it.
        assert_eq!(p.keep[0].needs.len(), 2);
    }

    #[test]
    fn the_documented_minimum_keeps_perfmon_and_cannot_enter_namespaces() {
        let p = plan(&set(&[
            Capability::CAP_BPF,
            Capability::CAP_PERFMON,
            Capability::CAP_NET_ADMIN,
            Capability::CAP_SYS_PTRACE,
            Capability::CAP_DAC_READ_SEARCH,
        ]));
        assert_eq!(
            p.names(),
            "CAP_PERFMON CAP_NET_ADMIN CAP_SYS_PTRACE CAP_DAC_READ_SEARCH"
        );
        assert_eq!(p.unmet, [RUNTIME_NEEDS[0].what]);
    }

    #[test]
    fn nothing_held_nothing_kept() {
        let p = plan(&CapsHashSet::new());
        assert_eq!(p.names(), "none");
        assert_eq!(p.unmet.len(), RUNTIME_NEEDS.len());
    }
}
