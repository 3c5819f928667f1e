//! Loading and attaching the kernel programs. The hook registry says, for every program, what it
//! gives, whether tcpq can work without it, and why it may be unavailable (kunai's compat idea).
//! All kernel plumbing lives in `kernel::*`; everything after decode is plain Rust.
use std::{
    collections::HashMap,
    fs::File,
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::maps::Array;
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, FEntry, FExit, KProbe, ProgramError,
        RawTracePoint, TracePoint, cgroup_skb::CgroupSkbLinkId, fentry::FEntryLinkId,
        fexit::FExitLinkId, kprobe::KProbeLinkId, raw_trace_point::RawTracePointLinkId,
        trace_point::TracePointLinkId,
    },
};
use tcpq_common::{config, dispatcher, kfree_hooks, names, reset_hooks, state_hooks};

use super::{btf, env, tracefs};

/// The kernel object built by build.rs (aya-build).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcpq"));

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// cgroup_skb ingress on the cgroup2 root: sees every packet delivered to a local socket.
    CgroupSkbIngress,
    /// Raw tracepoint by name (no tracefs needed).
    RawTracepoint(&'static str),
    /// Tracepoint category/name (needs tracefs for the id and the record format).
    Tracepoint(&'static str, &'static str),
    /// A part (a bit of its knob) of a program shared by several hooks on one tracepoint:
    /// attached once for every family that needs it; each part runs while its bit is armed.
    Part(Dispatcher, u32),
    /// fentry on a kernel function (BTF trampoline: kernels that allow tracing programs).
    FEntry(&'static str),
    /// fexit on a kernel function: its arguments and return value after the call.
    FExit(&'static str),
    /// kprobe on a kernel function's entry (CONFIG_KPROBES, no lockdown).
    KProbe(&'static str),
}

/// A program that serves several hooks on one tracepoint: one run per event instead of one
/// per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dispatcher {
    pub program: &'static str,
    pub tracepoint: &'static str,
    /// The read-only global naming the parts loaded (the verifier drops the others' code).
    pub knob: &'static str,
    /// Its slot in ARMED_PARTS (`tcpq_common::dispatcher`).
    pub slot: u32,
}

/// `sock:inet_sock_set_state` (`tcpq_common::state_hooks` bits).
pub const SOCK_STATE: Dispatcher = Dispatcher {
    program: names::PROG_SOCK_STATE,
    tracepoint: "inet_sock_set_state",
    knob: "STATE_HOOKS",
    slot: dispatcher::SOCK_STATE,
};

/// `skb:kfree_skb` (`tcpq_common::kfree_hooks` bits).
pub const SKB_KFREE: Dispatcher = Dispatcher {
    program: names::PROG_SKB_KFREE,
    tracepoint: "kfree_skb",
    knob: "KFREE_HOOKS",
    slot: dispatcher::SKB_KFREE,
};

/// `tcp:tcp_send_reset` (`tcpq_common::reset_hooks` bits).
pub const SEND_RESET: Dispatcher = Dispatcher {
    program: names::PROG_SEND_RESET,
    tracepoint: "tcp_send_reset",
    knob: "RESET_HOOKS",
    slot: dispatcher::SEND_RESET,
};

const DISPATCHERS: [Dispatcher; 3] = [SOCK_STATE, SKB_KFREE, SEND_RESET];

impl Attach {
    pub fn describe(&self) -> String {
        match self {
            Attach::CgroupSkbIngress => "cgroup_skb/ingress on the cgroup2 root".into(),
            Attach::RawTracepoint(n) => format!("raw_tracepoint {n}"),
            Attach::Tracepoint(c, n) => format!("tracepoint {c}:{n}"),
            Attach::Part(d, _) => format!("raw_tracepoint {} (in {})", d.tracepoint, d.program),
            Attach::FEntry(f) => format!("fentry {f}"),
            Attach::FExit(f) => format!("fexit {f}"),
            Attach::KProbe(f) => format!("kprobe {f}"),
        }
    }

    /// The hook backend this attachment belongs to.
    pub fn backend(&self) -> Backend {
        match self {
            Attach::FEntry(_) | Attach::FExit(_) => Backend::Fentry,
            Attach::KProbe(_) => Backend::Kprobe,
            _ => Backend::Tracepoint,
        }
    }
}

/// How a hook reaches the kernel. Tracepoints (with raw tracepoints and cgroup_skb) work on
/// every kernel tcpq supports, including lockdown kernels that refuse the other two; fentry
/// and kprobes replace the syscall tracepoints where the kernel allows them: a syscall
/// tracepoint, once attached, puts every task of the machine on the syscall slow path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Backend {
    Fentry,
    Kprobe,
    Tracepoint,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Fentry => "fentry",
            Backend::Kprobe => "kprobe",
            Backend::Tracepoint => "tracepoint",
        }
    }

    /// TCPQ_BACKEND=fentry|kprobe|tracepoint: the most capable backend tcpq may use (tests run
    /// each backend on kernels that have them all).
    fn allowed() -> Backend {
        match std::env::var("TCPQ_BACKEND").as_deref() {
            Ok("tracepoint") => Backend::Tracepoint,
            Ok("kprobe") => Backend::Kprobe,
            _ => Backend::Fentry,
        }
    }
}

/// Another program serving the same hook through a cheaper backend, tried before the hook's
/// own `attach`; the first that loads and attaches wins. Hooks whose alternatives share a
/// program (accept(2) and accept4(2) both call `__sys_accept4`) use it once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alternative {
    pub program: &'static str,
    pub attach: Attach,
}

const ACCEPT_FENTRY: &[Alternative] = &[Alternative {
    program: names::PROG_ACCEPT_FENTRY,
    attach: Attach::FEntry("__sys_accept4"),
}];
const ACCEPT_FEXIT: &[Alternative] = &[Alternative {
    program: names::PROG_ACCEPT_FEXIT,
    attach: Attach::FExit("__sys_accept4"),
}];
const ACCEPT_COUNT_FEXIT: &[Alternative] = &[Alternative {
    program: names::PROG_ACCEPT_COUNT_FEXIT,
    attach: Attach::FExit("__sys_accept4"),
}];
// No kprobe for the returns: a kretprobe loses the returns of calls that block once more than
// max(10, 2 × CPUs) threads wait inside (its instance pool; perf_event_open cannot raise it),
// and accept() and connect() block.
const CONNECT_FENTRY: &[Alternative] = &[Alternative {
    program: names::PROG_CONNECT_FENTRY,
    attach: Attach::FEntry("__sys_connect"),
}];
const CONNECT_FEXIT: &[Alternative] = &[Alternative {
    program: names::PROG_CONNECT_FEXIT,
    attach: Attach::FExit("__sys_connect"),
}];
const LISTEN_ENTRY: &[Alternative] = &[
    Alternative {
        program: names::PROG_LISTEN_FENTRY,
        attach: Attach::FEntry("__sys_listen"),
    },
    Alternative {
        program: names::PROG_LISTEN_KPROBE,
        attach: Attach::KProbe("__sys_listen"),
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Listen,
    Connect,
    Drop,
    Accept,
}

#[derive(Debug, Clone, Copy)]
pub struct HookSpec {
    pub program: &'static str,
    pub attach: Attach,
    pub family: Family,
    /// tcpq cannot do its job for this family without it.
    pub core: bool,
    pub gives: &'static str,
    /// What is lost when it is unavailable.
    pub without: &'static str,
    /// Cheaper programs for the same hook, tried first (see `Alternative`).
    pub alternatives: &'static [Alternative],
}

pub const HOOKS: &[HookSpec] = &[
    HookSpec {
        program: names::PROG_ACCEPT_ENQUEUE,
        attach: Attach::Part(SOCK_STATE, state_hooks::ENQUEUE),
        family: Family::Accept,
        core: true,
        gives: "when each connection entered the accept queue",
        without: "no accept-queue wait",
        alternatives: &[],
    },
    HookSpec {
        program: names::PROG_ACCEPT_ENTER4,
        attach: Attach::Tracepoint("syscalls", "sys_enter_accept4"),
        family: Family::Accept,
        core: true,
        gives: "threads inside accept4() (idle acceptors) and the listening fd",
        without: "no accept4() callers",
        alternatives: ACCEPT_FENTRY,
    },
    HookSpec {
        program: names::PROG_ACCEPT_EXIT4,
        attach: Attach::Tracepoint("syscalls", "sys_exit_accept4"),
        family: Family::Accept,
        core: true,
        gives: "accepted connections with their queue wait, accept4() errors",
        without: "no accept4() results",
        alternatives: ACCEPT_FEXIT,
    },
    HookSpec {
        program: names::PROG_ACCEPT_ENTER,
        attach: Attach::Tracepoint("syscalls", "sys_enter_accept"),
        family: Family::Accept,
        core: false,
        gives: "accept(2) callers (older code)",
        without: "accept(2) callers not seen (accept4 still are)",
        alternatives: ACCEPT_FENTRY,
    },
    HookSpec {
        program: names::PROG_ACCEPT_EXIT,
        attach: Attach::Tracepoint("syscalls", "sys_exit_accept"),
        family: Family::Accept,
        core: false,
        gives: "accept(2) results",
        without: "accept(2) results not seen",
        alternatives: ACCEPT_FEXIT,
    },
    HookSpec {
        program: names::PROG_ABORT_CLOSE,
        attach: Attach::Part(SEND_RESET, reset_hooks::ABORT_CLOSE),
        family: Family::Accept,
        core: false,
        gives: "connections a process closed with the request unread (reset: TCPAbortOnClose), per process and port — a server at its connection limit",
        without: "a server that accepts and drops connections at its limit (nginx worker_connections) is not named",
        alternatives: &[],
    },
    HookSpec {
        program: names::PROG_DROP_KFREE,
        attach: Attach::Part(SKB_KFREE, kfree_hooks::DROP),
        family: Family::Drop,
        core: true,
        gives: "packets netfilter dropped (conntrack table full or a rule), with the 5-tuple and process",
        without: "no netfilter drops",
        alternatives: &[],
    },
    HookSpec {
        program: names::PROG_DROP_OWNER,
        attach: Attach::Part(SOCK_STATE, state_hooks::OWNER),
        family: Family::Drop,
        core: false,
        gives: "the connecting process of dropped SYN retransmits (sent from a timer)",
        without: "retransmitted SYNs are attributed to whatever task the timer interrupted",
        alternatives: &[],
    },
    HookSpec {
        program: names::PROG_SYS_ENTER_CONNECT,
        attach: Attach::Tracepoint("syscalls", "sys_enter_connect"),
        family: Family::Connect,
        core: true,
        gives: "connect() destinations and start times",
        without: "no outbound connects at all",
        alternatives: CONNECT_FENTRY,
    },
    HookSpec {
        program: names::PROG_SYS_EXIT_CONNECT,
        attach: Attach::Tracepoint("syscalls", "sys_exit_connect"),
        family: Family::Connect,
        core: true,
        gives: "connect() results (EADDRNOTAVAIL…) and time in the syscall (port search)",
        without: "no connect failures",
        alternatives: CONNECT_FEXIT,
    },
    HookSpec {
        program: names::PROG_CONNECT_STATE,
        attach: Attach::Part(SOCK_STATE, state_hooks::CONNECT),
        family: Family::Connect,
        core: true,
        gives: "handshakes: source port, latency, refused/timed out",
        without: "no handshake outcomes",
        alternatives: &[],
    },
    HookSpec {
        program: names::PROG_CONNECT_RETRANS,
        attach: Attach::RawTracepoint("tcp_retransmit_skb"),
        family: Family::Connect,
        core: false,
        gives: "SYN retransmits while connecting",
        without: "SYN retransmits not counted",
        alternatives: &[],
    },
    HookSpec {
        program: names::PROG_LISTEN_INGRESS,
        attach: Attach::CgroupSkbIngress,
        family: Family::Listen,
        core: true,
        gives: "SYN/ACK dropped on a full accept queue, SYN-queue drops, syncookies",
        without: "no listen-path drops at all",
        alternatives: &[],
    },
    HookSpec {
        program: names::PROG_OUTCOME_XMIT,
        attach: Attach::RawTracepoint("net_dev_queue"),
        family: Family::Listen,
        core: false,
        gives: "outcome of each SYN: SYN-ACK sent, with a request socket or a cookie",
        without: "verdicts are predicted from the queues at arrival (can be off under concurrency)",
        alternatives: &[],
    },
    HookSpec {
        program: names::PROG_OUTCOME_CHILD,
        attach: Attach::Part(SOCK_STATE, state_hooks::CHILD),
        family: Family::Listen,
        core: false,
        gives: "outcome of each final ACK: child socket created",
        without: "verdicts are predicted from the queues at arrival",
        alternatives: &[],
    },
    HookSpec {
        program: names::PROG_OUTCOME_CONSUME,
        attach: Attach::RawTracepoint("consume_skb"),
        family: Family::Listen,
        core: false,
        gives: "end of a listener's SYN processing (dropped if no SYN-ACK left)",
        without: "verdicts are predicted from the queues at arrival",
        alternatives: &[],
    },
    HookSpec {
        program: names::PROG_OUTCOME_KFREE,
        attach: Attach::Part(SKB_KFREE, kfree_hooks::OUTCOME),
        family: Family::Listen,
        core: false,
        gives: "final ACKs dropped (SKB_DROP_REASON_TCP_LISTEN_OVERFLOW)",
        without: "verdicts are predicted from the queues at arrival",
        alternatives: &[],
    },
    HookSpec {
        program: names::PROG_SYNACK_RETRANS,
        attach: Attach::RawTracepoint("tcp_retransmit_synack"),
        family: Family::Listen,
        core: false,
        gives: "retransmitted SYN-ACKs per listener",
        without: "SYN-ACK retransmits not shown",
        alternatives: &[],
    },
    HookSpec {
        program: names::PROG_OVERFLOW_RESET,
        attach: Attach::Part(SEND_RESET, reset_hooks::OVERFLOW),
        family: Family::Listen,
        core: false,
        gives: "resets sent on overflow (tcp_abort_on_overflow=1)",
        without: "overflow resets not shown",
        alternatives: &[],
    },
    HookSpec {
        program: names::PROG_SYS_ENTER_LISTEN,
        attach: Attach::Tracepoint("syscalls", "sys_enter_listen"),
        family: Family::Listen,
        core: false,
        gives: "the backlog each application passed to listen()",
        without: "the listen() argument is inferred from the effective backlog",
        alternatives: LISTEN_ENTRY,
    },
    HookSpec {
        program: names::PROG_SYS_EXIT_ACCEPT4,
        attach: Attach::Tracepoint("syscalls", "sys_exit_accept4"),
        family: Family::Listen,
        core: false,
        gives: "accept rate per process (is the application accepting?)",
        without: "cannot tell a stuck application from a small backlog",
        alternatives: ACCEPT_COUNT_FEXIT,
    },
    HookSpec {
        program: names::PROG_SYS_EXIT_ACCEPT,
        attach: Attach::Tracepoint("syscalls", "sys_exit_accept"),
        family: Family::Listen,
        core: false,
        gives: "accept rate per process (accept(2) callers)",
        without: "accept(2) callers not counted (accept4 still is)",
        alternatives: ACCEPT_COUNT_FEXIT,
    },
];

#[derive(Debug, Clone)]
pub enum HookState {
    Attached,
    /// Loaded and verified, not attached: the live commands attach it while its family is
    /// armed (tier 2), see `Loaded::arm`.
    Standby,
    Unavailable(String),
}

#[derive(Debug, Clone)]
pub struct HookStatus {
    pub spec: HookSpec,
    pub state: HookState,
    /// The alternative serving the hook, None: its own `attach`.
    pub via: Option<Alternative>,
    /// Alternatives tried (or not) and refused, with why.
    pub declined: Vec<(Attach, String)>,
}

impl HookStatus {
    fn new(spec: HookSpec, state: HookState) -> Self {
        Self {
            spec,
            state,
            via: None,
            declined: Vec::new(),
        }
    }

    /// The program that runs for this hook (an alternative's, or the hook's own).
    pub fn program(&self) -> &'static str {
        self.via.map_or(self.spec.program, |a| a.program)
    }

    /// Where it runs.
    pub fn attach(&self) -> Attach {
        self.via.map_or(self.spec.attach, |a| a.attach)
    }

    /// The hook as loaded: the alternative's program and attachment in the hook's place.
    fn effective(&self) -> HookSpec {
        HookSpec {
            program: self.program(),
            attach: self.attach(),
            ..self.spec
        }
    }
}

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

#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Only report listeners on this port (kernel-side filter; 0 = all).
    pub filter_lport: u16,
    /// Programs of the loaded families this command does not read: left unattached (they cost
    /// the traced workload every time they fire) and left out of the hook list.
    pub unused: &'static [&'static str],
    /// Programs loaded and verified now but attached only by `Loaded::arm` (tier 2 of the live
    /// commands). A part of a shared program listed here is off in ARMED_PARTS until armed.
    pub standby: &'static [&'static str],
    /// Count accepts per (listener, process) in the kernel (ACCEPT_TOTALS) instead of one ring
    /// record each: the live commands, which show rates and quantiles, not connections.
    pub aggregate_accepts: bool,
}

/// How to detach a program tcpq attached after load.
#[derive(Debug)]
enum LinkHandle {
    Cgroup(CgroupSkbLinkId),
    Raw(RawTracePointLinkId),
    Tracepoint(TracePointLinkId),
    FEntry(FEntryLinkId),
    FExit(FExitLinkId),
    KProbe(KProbeLinkId),
    /// A part of a shared program: a bit of its ARMED_PARTS slot.
    Part(u32, u32),
}

/// Loaded programs, attached links (detached on drop) and the maps userspace reads.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub hooks: Vec<HookStatus>,
    pub env: Environment,
    /// Verdicts confirmed from the kernel's actions (all outcome hooks attached), not predicted.
    pub confirm: bool,
    /// The cgroup2 root, kept for attaching cgroup programs later (`arm`).
    cgroup: Option<File>,
    /// Links of the standby programs attached now, by the name of the program that runs
    /// (one link may serve two hooks: see `Alternative`).
    armed_links: HashMap<&'static str, LinkHandle>,
    /// ARMED_PARTS as last written.
    armed_parts: [u32; dispatcher::SLOTS as usize],
}

/// Programs that together let the listen path confirm each verdict.
pub const OUTCOME_HOOKS: [&str; 4] = [
    names::PROG_OUTCOME_XMIT,
    names::PROG_OUTCOME_CHILD,
    names::PROG_OUTCOME_CONSUME,
    names::PROG_OUTCOME_KFREE,
];

impl Loaded {
    pub fn take_ring(&mut self, name: &str) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or_else(|| anyhow!("kernel object has no map {name}"))?;
        RingBuf::try_from(map).with_context(|| format!("open ring buffer {name}"))
    }

    pub fn take_per_cpu_counters(&mut self, name: &str) -> Result<PerCpuArray<MapData, u64>> {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or_else(|| anyhow!("kernel object has no map {name}"))?;
        PerCpuArray::try_from(map).with_context(|| format!("open per-CPU array {name}"))
    }

    /// Program runs the kernel skipped, all of tcpq's loaded programs together:
    /// `recursion_misses` in each program's fdinfo (kernel ≥ 5.12). A raw tracepoint program
    /// does not run again on a CPU where it is already running (bpf_trace_run*() →
    /// bpf_prog_get_recursion_context()), e.g. a softirq's kfree_skb interrupting one in process
    /// context; tracepoint programs share one such guard per CPU (trace_call_bpf():
    /// bpf_prog_active). Each skipped run may be an event tcpq never saw, so it is reported
    /// with the lost events.
    pub fn missed_runs(&self) -> u64 {
        self.ebpf
            .programs()
            .filter_map(|(_, program)| program.fd().ok())
            .filter_map(|fd| fdinfo_counter(fd.as_fd().as_raw_fd(), "recursion_misses"))
            .sum()
    }

    /// Attaches every standby program of `family` (tier 2). The listen family's ingress hook
    /// comes last: a packet it records must find the outcome hooks already in place (else its
    /// record is left unresolved). Returns the programs attached; a program the kernel refuses
    /// now is marked unavailable and reported, not fatal.
    pub fn arm(&mut self, family: Family) -> Vec<String> {
        let mut order: Vec<usize> = (0..self.hooks.len())
            .filter(|&i| {
                self.hooks[i].spec.family == family
                    && matches!(self.hooks[i].state, HookState::Standby)
            })
            .collect();
        order.sort_by_key(|&i| matches!(self.hooks[i].spec.attach, Attach::CgroupSkbIngress));
        let mut problems = Vec::new();
        if family == Family::Accept
            && let Err(why) = self.mark_enqueue_since()
        {
            problems.push(why);
        }
        for i in order {
            let spec = self.hooks[i].effective();
            let running = self.armed_links.contains_key(spec.program)
                || self.hooks.iter().enumerate().any(|(j, h)| {
                    j != i
                        && h.via.is_some()
                        && h.program() == spec.program
                        && matches!(h.state, HookState::Attached)
                });
            if running {
                // Its program already runs for another hook of the family.
                self.hooks[i].state = HookState::Attached;
                continue;
            }
            let linked = match spec.attach {
                Attach::Part(d, bit) => self
                    .write_armed(d.slot, self.armed(d.slot) | bit)
                    .map(|_| LinkHandle::Part(d.slot, bit)),
                _ => link_loaded(&mut self.ebpf, &spec, self.cgroup.as_ref()),
            };
            match linked {
                Ok(handle) => {
                    self.armed_links.insert(spec.program, handle);
                    self.hooks[i].state = HookState::Attached;
                }
                Err(why) => {
                    problems.push(format!("{}: {why}", spec.program));
                    self.hooks[i].state = HookState::Unavailable(why);
                }
            }
        }
        problems
    }

    /// Detaches what `arm(family)` attached, the listen ingress hook first (its records'
    /// outcomes still arrive while the outcome hooks stay a moment longer).
    pub fn disarm(&mut self, family: Family) {
        let mut order: Vec<usize> = (0..self.hooks.len())
            .filter(|&i| {
                self.hooks[i].spec.family == family
                    && self.armed_links.contains_key(self.hooks[i].program())
            })
            .collect();
        order.sort_by_key(|&i| !matches!(self.hooks[i].spec.attach, Attach::CgroupSkbIngress));
        let mut results: HashMap<&'static str, Result<(), String>> = HashMap::new();
        for i in order {
            let program = self.hooks[i].program();
            let result = match results.get(program) {
                Some(done) => done.clone(), // one link served two hooks
                None => {
                    let result = match self.armed_links.remove(program) {
                        Some(LinkHandle::Part(slot, bit)) => {
                            self.write_armed(slot, self.armed(slot) & !bit)
                        }
                        Some(other) => unlink(&mut self.ebpf, program, other),
                        None => Ok(()),
                    };
                    results.insert(program, result.clone());
                    result
                }
            };
            self.hooks[i].state = match result {
                Ok(()) => HookState::Standby,
                // The link stays until the process exits (its fd is closed then).
                Err(why) => HookState::Unavailable(format!("detach failed: {why}")),
            };
        }
    }

    /// Whether `family` has standby programs (it can be armed).
    pub fn armable(&self, family: Family) -> bool {
        self.hooks.iter().any(|h| {
            h.spec.family == family
                && (matches!(h.state, HookState::Standby)
                    || self.armed_links.contains_key(h.program()))
        })
    }

    /// Empties a hash map keyed by socket pointer (u64) whose values are `V` bytes: state a
    /// disarmed part no longer keeps current (its socket-close cleanup stops with it).
    pub fn clear_socket_map<const V: usize>(&mut self, name: &str) {
        let Some(map) = self.ebpf.map_mut(name) else {
            return;
        };
        let Ok(mut m) = aya::maps::HashMap::<&mut MapData, u64, [u8; V]>::try_from(map) else {
            return;
        };
        let keys: Vec<u64> = m.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = m.remove(&k);
        }
    }

    /// Queue times recorded before now are stale from here on (children queued while the
    /// accept family was disarmed were not recorded; their socket addresses may be reused).
    fn mark_enqueue_since(&mut self) -> Result<(), String> {
        let map = self
            .ebpf
            .map_mut(names::ENQUEUE_SINCE)
            .ok_or_else(|| format!("kernel object has no map {}", names::ENQUEUE_SINCE))?;
        let mut since: Array<&mut MapData, u64> =
            Array::try_from(map).map_err(|e| format!("open {}: {e}", names::ENQUEUE_SINCE))?;
        since
            .set(0, crate::render::Clock::now_mono_ns(), 0)
            .map_err(|e| format!("write {}: {e}", names::ENQUEUE_SINCE))
    }

    fn armed(&self, slot: u32) -> u32 {
        self.armed_parts.get(slot as usize).copied().unwrap_or(0)
    }

    fn write_armed(&mut self, slot: u32, bits: u32) -> Result<(), String> {
        write_armed_parts(&mut self.ebpf, slot, bits)?;
        if let Some(b) = self.armed_parts.get_mut(slot as usize) {
            *b = bits;
        }
        Ok(())
    }

    pub fn attached(&self, program: &str) -> bool {
        self.hooks
            .iter()
            .any(|h| h.spec.program == program && matches!(h.state, HookState::Attached))
    }
}

/// A counter from /proc/self/fdinfo/FD (`name:\tvalue` lines; bpf_prog_show_fdinfo()).
fn fdinfo_counter(fd: i32, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    fdinfo_value(&text, name)
}

fn fdinfo_value(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim().parse().ok())?
    })
}

/// Sums a per-CPU u64 slot.
pub fn sum_per_cpu(map: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
    map.get(&index, 0)
        .map(|values| values.iter().copied().sum())
        .unwrap_or(0)
}

/// The verifier's own reason for a refusal and its stack depths: the last line of the log that
/// is not one of the statistics it prints after every verdict ("processed N insns", "stack
/// depth A+B", "verification time"), then the stack depths (a refusal for the combined stack
/// of a call chain — 512 bytes before private stacks in 6.13 — needs both to be read).
fn verifier_reason(log: &str) -> Vec<&str> {
    const STATISTICS: &[&str] = &["processed ", "stack depth ", "verification time "];
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let is_statistic = |l: &&str| STATISTICS.iter().any(|p| l.starts_with(p));
    let mut out: Vec<&str> = lines
        .iter()
        .rev()
        .find(|l| !is_statistic(l))
        .copied()
        .into_iter()
        .collect();
    out.extend(
        lines
            .iter()
            .find(|l| l.starts_with("stack depth "))
            .copied(),
    );
    out
}

/// Explains a program load/attach failure in one line, with the verifier's last words.
pub fn explain_program_error(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let tail = verifier_reason(&log);
            let why = match io_error.raw_os_error() {
                Some(libc::EPERM) => {
                    " (EPERM: not allowed on this kernel, e.g. lockdown or missing CAP_BPF/CAP_PERFMON)"
                }
                Some(libc::EINVAL) => " (EINVAL: program type or helper not supported)",
                Some(libc::EACCES) => " (EACCES: rejected by the verifier)",
                _ => "",
            };
            if tail.is_empty() {
                format!("kernel refused to load it: {io_error}{why}")
            } else {
                format!(
                    "kernel refused to load it: {io_error}{why}; verifier: {}",
                    tail.join(" / ")
                )
            }
        }
        other => {
            let mut s = format!("{other}");
            let mut src = std::error::Error::source(other);
            while let Some(inner) = src {
                s.push_str(&format!(": {inner}"));
                src = inner.source();
            }
            s
        }
    }
}

/// Loads `program` and attaches it to the raw tracepoint `tracepoint`.
fn attach_raw_program(ebpf: &mut Ebpf, program: &str, tracepoint: &str) -> Result<(), String> {
    let prog = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} missing from the kernel object"))?;
    let p: &mut RawTracePoint = prog.try_into().map_err(|e| explain_program_error(&e))?;
    p.load().map_err(|e| explain_program_error(&e))?;
    p.attach(tracepoint)
        .map_err(|e| format!("attach failed: {}", explain_program_error(&e)))?;
    Ok(())
}

/// Bench instrumentation: attaches the empty `floor_probe` next to `sock_state`.
pub fn attach_floor_probe(ebpf: &mut Ebpf) -> Result<(), String> {
    attach_raw_program(ebpf, names::PROG_FLOOR_PROBE, "inet_sock_set_state")
}

/// Loads `spec`'s program (the verifier runs now), and attaches it unless `standby`. `btf` is
/// the kernel's, for fentry/fexit (their target's type); loaded on first use.
fn attach_one(
    ebpf: &mut Ebpf,
    spec: &HookSpec,
    cgroup: Option<&File>,
    tracefs_ok: bool,
    standby: bool,
    btf: &mut KernelTypes,
) -> Result<Option<LinkHandle>, String> {
    let program = match spec.attach {
        // Shared by several hooks (its parts chosen by its knob): `load` attaches it once; a
        // standby part is a bit of ARMED_PARTS.
        Attach::Part(d, _) => d.program,
        _ => spec.program,
    };
    let prog = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} missing from the kernel object"))?;
    let loaded = match spec.attach {
        Attach::RawTracepoint(_) | Attach::Part(..) => {
            let p: &mut RawTracePoint = prog.try_into().map_err(|e| explain_program_error(&e))?;
            p.load()
        }
        Attach::CgroupSkbIngress => {
            if cgroup.is_none() {
                return Err("no cgroup2 mount to attach to".into());
            }
            let p: &mut CgroupSkb = prog.try_into().map_err(|e| explain_program_error(&e))?;
            p.load()
        }
        Attach::Tracepoint(..) => {
            if !tracefs_ok {
                return Err("tracefs unavailable (see the tracefs line)".into());
            }
            let p: &mut TracePoint = prog.try_into().map_err(|e| explain_program_error(&e))?;
            p.load()
        }
        Attach::FEntry(function) => {
            let btf = btf.get()?;
            let p: &mut FEntry = prog.try_into().map_err(|e| explain_program_error(&e))?;
            p.load(function, btf)
        }
        Attach::FExit(function) => {
            let btf = btf.get()?;
            let p: &mut FExit = prog.try_into().map_err(|e| explain_program_error(&e))?;
            p.load(function, btf)
        }
        Attach::KProbe(_) => {
            let p: &mut KProbe = prog.try_into().map_err(|e| explain_program_error(&e))?;
            p.load()
        }
    };
    loaded.map_err(|e| explain_program_error(&e))?;
    if standby && !matches!(spec.attach, Attach::Part(..)) {
        return Ok(None);
    }
    let spec = HookSpec { program, ..*spec };
    link_loaded(ebpf, &spec, cgroup).map(Some)
}

/// Attaches the already loaded program of `spec`.
fn link_loaded(
    ebpf: &mut Ebpf,
    spec: &HookSpec,
    cgroup: Option<&File>,
) -> Result<LinkHandle, String> {
    let prog = ebpf
        .program_mut(spec.program)
        .ok_or_else(|| format!("program {} missing from the kernel object", spec.program))?;
    let attach_failed = |e: ProgramError| format!("attach failed: {}", explain_program_error(&e));
    match spec.attach {
        Attach::RawTracepoint(name) => {
            let p: &mut RawTracePoint = prog.try_into().map_err(|e| explain_program_error(&e))?;
            p.attach(name).map(LinkHandle::Raw).map_err(attach_failed)
        }
        Attach::Part(d, _) => {
            let p: &mut RawTracePoint = prog.try_into().map_err(|e| explain_program_error(&e))?;
            p.attach(d.tracepoint)
                .map(LinkHandle::Raw)
                .map_err(attach_failed)
        }
        Attach::CgroupSkbIngress => {
            let cgroup = cgroup.ok_or_else(|| "no cgroup2 mount to attach to".to_string())?;
            let p: &mut CgroupSkb = prog.try_into().map_err(|e| explain_program_error(&e))?;
            // aya attaches with a BPF link on kernels ≥ 5.7: cgroup links always coexist with
            // other programs (multi semantics) and the kernel rejects any flag there (EINVAL),
            // so the mode must be `Single` (no flag) — it does not exclude systemd's programs.
            p.attach(
                cgroup,
                CgroupSkbAttachType::Ingress,
                CgroupAttachMode::Single,
            )
            .map(LinkHandle::Cgroup)
            .map_err(attach_failed)
        }
        Attach::Tracepoint(category, name) => {
            let p: &mut TracePoint = prog.try_into().map_err(|e| explain_program_error(&e))?;
            p.attach(category, name)
                .map(LinkHandle::Tracepoint)
                .map_err(attach_failed)
        }
        Attach::FEntry(_) => {
            let p: &mut FEntry = prog.try_into().map_err(|e| explain_program_error(&e))?;
            p.attach().map(LinkHandle::FEntry).map_err(attach_failed)
        }
        Attach::FExit(_) => {
            let p: &mut FExit = prog.try_into().map_err(|e| explain_program_error(&e))?;
            p.attach().map(LinkHandle::FExit).map_err(attach_failed)
        }
        Attach::KProbe(function) => {
            let p: &mut KProbe = prog.try_into().map_err(|e| explain_program_error(&e))?;
            p.attach(function, 0)
                .map(LinkHandle::KProbe)
                .map_err(attach_failed)
        }
    }
}

/// The kernel's BTF as aya reads it (fentry/fexit name their target by its type): parsed on
/// first use only (an fentry/fexit program tried) and dropped with the load — aya's parsed
/// form of vmlinux's BTF is ~20 MiB, which a long-running export must not keep.
struct KernelTypes {
    path: PathBuf,
    btf: Option<Result<aya::Btf, String>>,
}

impl KernelTypes {
    fn new(path: PathBuf) -> Self {
        Self { path, btf: None }
    }

    fn get(&mut self) -> Result<&aya::Btf, String> {
        let path = &self.path;
        self.btf
            .get_or_insert_with(|| {
                aya::Btf::parse_file(path, aya::Endianness::default())
                    .map_err(|e| format!("read kernel BTF {}: {e}", path.display()))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Frees the parsed BTF and gives the heap pages it held back to the kernel: its hundreds
    /// of thousands of small allocations otherwise stay in the process's RSS (+13 MiB measured)
    /// for as long as a live command runs.
    fn release(&mut self) {
        if self.btf.take().is_some() {
            // SAFETY: malloc_trim only returns free heap memory to the kernel; no pointer
            // handed out by the allocator is affected.
            unsafe { libc::malloc_trim(0) };
        }
    }
}

/// Detaches a link `link_loaded` made.
fn unlink(ebpf: &mut Ebpf, program: &str, handle: LinkHandle) -> Result<(), String> {
    let prog = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} missing from the kernel object"))?;
    let result = match handle {
        LinkHandle::Cgroup(id) => {
            let p: &mut CgroupSkb = prog.try_into().map_err(|e| explain_program_error(&e))?;
            p.detach(id)
        }
        LinkHandle::Raw(id) => {
            let p: &mut RawTracePoint = prog.try_into().map_err(|e| explain_program_error(&e))?;
            p.detach(id)
        }
        LinkHandle::Tracepoint(id) => {
            let p: &mut TracePoint = prog.try_into().map_err(|e| explain_program_error(&e))?;
            p.detach(id)
        }
        LinkHandle::FEntry(id) => {
            let p: &mut FEntry = prog.try_into().map_err(|e| explain_program_error(&e))?;
            p.detach(id)
        }
        LinkHandle::FExit(id) => {
            let p: &mut FExit = prog.try_into().map_err(|e| explain_program_error(&e))?;
            p.detach(id)
        }
        LinkHandle::KProbe(id) => {
            let p: &mut KProbe = prog.try_into().map_err(|e| explain_program_error(&e))?;
            p.detach(id)
        }
        LinkHandle::Part(..) => Ok(()),
    };
    result.map_err(|e| explain_program_error(&e))
}

/// Writes slot `slot` of ARMED_PARTS: the parts of that shared program that run.
fn write_armed_parts(ebpf: &mut Ebpf, slot: u32, bits: u32) -> Result<(), String> {
    let map = ebpf
        .map_mut(names::ARMED_PARTS)
        .ok_or_else(|| format!("kernel object has no map {}", names::ARMED_PARTS))?;
    let mut armed: Array<&mut MapData, u32> =
        Array::try_from(map).map_err(|e| format!("open {}: {e}", names::ARMED_PARTS))?;
    armed
        .set(slot, bits, 0)
        .map_err(|e| format!("write {}: {e}", names::ARMED_PARTS))
}

/// Tracepoint field offsets the programs need; None when tracefs (or the event) is missing.
fn tracepoint_globals(env: &Environment) -> Vec<(&'static str, u32)> {
    let Some(tfs) = env.tracefs.path() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (global, cat, ev, field) in [
        ("TP_LISTEN_FD", "syscalls", "sys_enter_listen", "fd"),
        (
            "TP_LISTEN_BACKLOG",
            "syscalls",
            "sys_enter_listen",
            "backlog",
        ),
        ("TP_ACCEPT_RET", "syscalls", "sys_exit_accept4", "ret"),
        ("TP_CONNECT_FD", "syscalls", "sys_enter_connect", "fd"),
        ("TP_ACCEPT_FD", "syscalls", "sys_enter_accept4", "fd"),
        (
            "TP_CONNECT_ADDR",
            "syscalls",
            "sys_enter_connect",
            "uservaddr",
        ),
        ("TP_CONNECT_RET", "syscalls", "sys_exit_connect", "ret"),
    ] {
        if let Ok(off) = tracefs::field_offset(tfs, cat, ev, field) {
            out.push((global, off));
        }
    }
    out
}

/// The backend a family's syscall hooks use, and why (`tcpq check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyBackend {
    pub backend: Backend,
    pub why: String,
}

/// Which backend serves `family`'s hooks that have alternatives (the best in use), and why the
/// better ones are not used.
pub fn family_backend(hooks: &[HookStatus], family: Family) -> FamilyBackend {
    let mine: Vec<&HookStatus> = hooks
        .iter()
        .filter(|h| h.spec.family == family && !h.spec.alternatives.is_empty())
        .collect();
    let in_use: Vec<Backend> = mine
        .iter()
        .filter(|h| !matches!(h.state, HookState::Unavailable(_)))
        .map(|h| h.attach().backend())
        .collect();
    // The family is as cheap as its costliest hook: one syscall tracepoint is enough to put
    // every task on the syscall slow path.
    let Some(backend) = in_use.iter().max().copied() else {
        return FamilyBackend {
            backend: Backend::Tracepoint,
            why: "raw tracepoints and cgroup_skb only (no syscall hook to choose)".into(),
        };
    };
    let mut functions: Vec<String> = mine
        .iter()
        .filter_map(|h| h.via.map(|a| a.attach.describe()))
        .collect();
    functions.sort();
    functions.dedup();
    // One reason per backend: the same refusal is usually every function's.
    let mut refused: Vec<String> = Vec::new();
    for (attach, why) in mine.iter().flat_map(|h| h.declined.iter()) {
        let line = format!("{}: {why}", attach.backend().name());
        if !refused.contains(&line) {
            refused.push(line);
        }
    }
    let refused = if refused.is_empty() {
        String::new()
    } else {
        format!(" (refused: {})", refused.join("; "))
    };
    let why = match backend {
        Backend::Tracepoint if functions.is_empty() => format!(
            "syscall tracepoints: every task takes the syscall slow path while they are attached{refused}"
        ),
        Backend::Tracepoint => format!(
            "{} and syscall tracepoints for the rest: every task takes the syscall slow path while they are attached{refused}",
            functions.join(", ")
        ),
        _ => format!(
            "{} — no syscall tracepoint: other tasks' syscalls stay on the fast path{refused}",
            functions.join(", ")
        ),
    };
    FamilyBackend { backend, why }
}

/// What became of each alternative program tried in one load.
#[derive(Default)]
struct AlternativesTried {
    /// Loaded: whether it is linked now (false: loaded for standby).
    loaded: HashMap<&'static str, bool>,
    /// Refused, and why.
    refused: HashMap<&'static str, String>,
}

/// Serves `status`'s hook by the first of its alternatives (within TCPQ_BACKEND) that loads
/// and attaches: Some(linked now) — or None, with the refusals in `status.declined`, when the
/// hook's own attachment is to be used. An alternative already loaded for another hook serves
/// this one too, without a second link (it would run twice per call).
fn try_alternatives(
    ebpf: &mut Ebpf,
    status: &mut HookStatus,
    standby: bool,
    cgroup: Option<&File>,
    kernel_types: &mut KernelTypes,
    tried: &mut AlternativesTried,
    kprobes: bool,
) -> Option<bool> {
    let allowed = Backend::allowed();
    for alt in status.spec.alternatives {
        if alt.attach.backend() < allowed {
            let why = format!("not tried (TCPQ_BACKEND={})", allowed.name());
            status.declined.push((alt.attach, why));
            continue;
        }
        if alt.attach.backend() == Backend::Kprobe && !kprobes {
            let why = "CONFIG_KPROBES unset (no kprobe_events in tracefs)".to_string();
            status.declined.push((alt.attach, why));
            continue;
        }
        if let Some(why) = tried.refused.get(alt.program) {
            status.declined.push((alt.attach, why.clone()));
            continue;
        }
        let spec = HookSpec {
            program: alt.program,
            attach: alt.attach,
            ..status.spec
        };
        let linked = match tried.loaded.get(alt.program).copied() {
            Some(true) => Ok(true),
            Some(false) if standby => Ok(false),
            // Loaded for a standby hook, needed now by this one.
            Some(false) => link_loaded(ebpf, &spec, cgroup).map(|_| true),
            None => attach_one(ebpf, &spec, cgroup, true, standby, kernel_types)
                .map(|link| link.is_some()),
        };
        match linked {
            Ok(linked) => {
                tried.loaded.insert(alt.program, linked);
                status.via = Some(*alt);
                return Some(linked);
            }
            Err(why) => {
                status.declined.push((alt.attach, why.clone()));
                tried.refused.insert(alt.program, why);
            }
        }
    }
    None
}

/// Loads the object, sets the globals and attaches every hook of `families`.
/// Fails (with a one-line remedy) only when a core hook cannot work.
pub fn load(families: &[Family], opts: &LoadOptions) -> Result<Loaded> {
    let env = Environment::gather();
    if let Some(problem) = env.fatal_problem() {
        bail!(problem);
    }
    let kbtf = btf::KernelBtf::load(&env.btf_path)?;
    let mut globals: Vec<(&'static str, u32)> = btf::resolve_offsets(&kbtf)?;
    let tp_globals = tracepoint_globals(&env);
    let tp_ok = tp_globals.len() == 7;
    globals.extend(tp_globals);
    globals.push((
        "REQQ_FULL_GE",
        reqq_full_uses_ge(env::kernel_version()) as u32,
    ));
    globals.push(("FILTER_LPORT", opts.filter_lport as u32));
    globals.push(("ACCEPT_AGGREGATE", opts.aggregate_accepts as u32));
    // Optional: older kernels free overflowing ACKs without this reason.
    let overflow_reason = kbtf
        .enum_value("skb_drop_reason", "SKB_DROP_REASON_TCP_LISTEN_OVERFLOW")
        .unwrap_or(0) as u32;
    globals.push(("RSN_LISTEN_OVERFLOW", overflow_reason));
    // Without that reason (6.1) a final ACK freed unlabelled while the accept queue was full
    // counts as an overflow only if the listener's sk_drops moved meanwhile (tcp_listendrop()
    // in tcp_v4/v6_syn_recv_sock()); the programs read it only when this is set. Optional:
    // unresolved, the ACK is judged by the queue alone, as before.
    let sk_drops = if overflow_reason == 0 {
        kbtf.offset_of("sock.sk_drops").unwrap_or(0)
    } else {
        0
    };
    globals.push(("OFF_SK_DROPS", sk_drops));
    let no_socket_reason = kbtf
        .enum_value("skb_drop_reason", "SKB_DROP_REASON_NO_SOCKET")
        .unwrap_or(0) as u32;
    globals.push(("RSN_NO_SOCKET", no_socket_reason));
    let nf_reason = kbtf
        .enum_value("skb_drop_reason", "SKB_DROP_REASON_NETFILTER_DROP")
        .unwrap_or(0) as u32;
    globals.push(("RSN_NETFILTER_DROP", nf_reason));
    // tcp_close() → tcp_send_active_reset(SK_RST_REASON_TCP_ABORT_ON_CLOSE): the reason (and the
    // tracepoint's third argument) exist from 6.10; before that the abort part is not loaded.
    let abort_reason = kbtf
        .enum_value("sk_rst_reason", "SK_RST_REASON_TCP_ABORT_ON_CLOSE")
        .ok()
        .map(|v| v as u32);
    globals.push(("RSN_ABORT_ON_CLOSE", abort_reason.unwrap_or(0)));
    // A SYN/ACK is followed to its outcome unless every queue of its listener is at least
    // max(margin, backlog / 2) below its limit: then no refusal is possible unless that many
    // connections reach the queues from other CPUs between tcpq's look and the kernel's test.
    // An absolute margin alone was too thin: 6 missed one overflow in ~7000 when a vCPU stalled
    // while a 2-CPU SYN flood filled a 16-entry queue (cd9d7c9). 0 follows every packet.
    let margin = std::env::var("TCPQ_NEAR_MARGIN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_NEAR_MARGIN);
    globals.push(("NEAR_MARGIN", margin));
    // Unknown: the programs scan up to their own bound (bpf_map_lookup_percpu_elem fails past
    // the last CPU).
    let cpus = possible_cpus();
    globals.push(("NR_CPUS", cpus.unwrap_or(128)));

    // TCPQ_DISABLE_HOOKS=prog,prog: treat hooks as refused (to test degraded kernels).
    let disabled: Vec<String> = std::env::var("TCPQ_DISABLE_HOOKS")
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    // Hooks this kernel cannot serve, with the reason (`tcpq check` shows it).
    let refused: Vec<(&str, &str)> = if abort_reason.is_none() {
        vec![(
            names::PROG_ABORT_CLOSE,
            "this kernel's tcp_send_reset has no reason argument (SK_RST_REASON_TCP_ABORT_ON_CLOSE, 6.10+)",
        )]
    } else {
        Vec::new()
    };
    let is_refused = |program: &str| {
        refused
            .iter()
            .find(|(p, _)| *p == program)
            .map(|(_, why)| *why)
    };
    // The hooks this command uses.
    let selected =
        |h: &&HookSpec| families.contains(&h.family) && !opts.unused.contains(&h.program);
    // The parts of each shared program these hooks need (a verifier-known constant: the code
    // of the others is dropped).
    for d in DISPATCHERS {
        let bits = HOOKS
            .iter()
            .filter(selected)
            .filter(|h| !disabled.iter().any(|x| x == h.program))
            .filter(|h| is_refused(h.program).is_none())
            .filter_map(|h| match h.attach {
                Attach::Part(hd, bit) if hd == d => Some(bit),
                _ => None,
            })
            .fold(0, |bits, bit| bits | bit);
        globals.push((d.knob, bits));
    }

    let mut loader = EbpfLoader::new();
    for (name, value) in &globals {
        loader.override_global(name, value, true);
    }
    // TCPQ_RING_BYTES: ring buffer size (power of two, ≥ 4096) — small values force loss in tests.
    let ring_bytes = std::env::var("TCPQ_RING_BYTES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|v| v.is_power_of_two() && *v >= 4096);
    if let Some(bytes) = ring_bytes {
        for ring in [
            names::LISTEN_EVENTS,
            names::CONNECT_EVENTS,
            names::DROP_EVENTS,
            names::ACCEPT_EVENTS,
        ] {
            loader.map_max_entries(ring, bytes);
        }
    }
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .context("load tcpq's kernel object (maps and BTF)")?;

    let cgroup = match &env.cgroup2 {
        Ok(p) => Some(File::open(p).with_context(|| format!("open cgroup2 root {}", p.display()))?),
        Err(_) => None,
    };
    let mut hooks = Vec::new();
    let mut kernel_types = KernelTypes::new(env.btf_path.clone());
    let mut alternatives = AlternativesTried::default();
    let mut shared: HashMap<&'static str, Result<(), String>> = HashMap::new();
    let mut armed_parts = [0u32; dispatcher::SLOTS as usize];
    for spec in HOOKS.iter().filter(selected) {
        if disabled.iter().any(|d| d == spec.program) {
            if spec.core {
                bail!(
                    "cannot attach core hook {} ({}): disabled by TCPQ_DISABLE_HOOKS",
                    spec.program,
                    spec.attach.describe()
                );
            }
            hooks.push(HookStatus::new(
                *spec,
                HookState::Unavailable("disabled by TCPQ_DISABLE_HOOKS".into()),
            ));
            continue;
        }
        if let Some(why) = is_refused(spec.program) {
            hooks.push(HookStatus::new(*spec, HookState::Unavailable(why.into())));
            continue;
        }
        let standby = opts.standby.contains(&spec.program);
        let mut status = HookStatus::new(*spec, HookState::Standby);
        if let Some(linked) = try_alternatives(
            &mut ebpf,
            &mut status,
            standby,
            cgroup.as_ref(),
            &mut kernel_types,
            &mut alternatives,
            env.kprobes != Some(false),
        ) {
            status.state = if linked {
                HookState::Attached
            } else {
                HookState::Standby
            };
            hooks.push(status);
            continue;
        }
        let tracefs_ok = tp_ok || !matches!(spec.attach, Attach::Tracepoint(..));
        let attached = match spec.attach {
            // One program for every part: attached with the first, its result shared; a part
            // runs while its ARMED_PARTS bit is set.
            Attach::Part(d, bit) => {
                let once = shared
                    .entry(d.program)
                    .or_insert_with(|| {
                        attach_one(
                            &mut ebpf,
                            spec,
                            cgroup.as_ref(),
                            tracefs_ok,
                            false,
                            &mut kernel_types,
                        )
                        .map(|_| ())
                    })
                    .clone();
                if once.is_ok()
                    && !standby
                    && let Some(b) = armed_parts.get_mut(d.slot as usize)
                {
                    *b |= bit;
                }
                once.map(|_| standby)
            }
            _ => attach_one(
                &mut ebpf,
                spec,
                cgroup.as_ref(),
                tracefs_ok,
                standby,
                &mut kernel_types,
            )
            .map(|link| link.is_none()),
        };
        let state = match attached {
            Ok(false) => HookState::Attached,
            Ok(true) => HookState::Standby,
            Err(why) => {
                if spec.core {
                    bail!(
                        "cannot attach core hook {} ({}): {why}",
                        spec.program,
                        spec.attach.describe()
                    );
                }
                HookState::Unavailable(why)
            }
        };
        status.state = state;
        hooks.push(status);
    }
    kernel_types.release();
    for (slot, bits) in armed_parts.iter().enumerate() {
        write_armed_parts(&mut ebpf, slot as u32, *bits).map_err(|e| anyhow!(e))?;
    }
    // Standby outcome hooks count: they are attached before the ingress hook whenever it is.
    let confirm = OUTCOME_HOOKS.iter().all(|name| {
        hooks.iter().any(|h| {
            h.spec.program == *name && matches!(h.state, HookState::Attached | HookState::Standby)
        })
    });
    if families.contains(&Family::Listen) {
        let map = ebpf
            .map_mut(names::LISTEN_CONFIG)
            .ok_or_else(|| anyhow!("kernel object has no map {}", names::LISTEN_CONFIG))?;
        let mut cfg: Array<&mut MapData, u32> =
            Array::try_from(map).context("open the listen config map")?;
        cfg.set(config::CONFIRM, confirm as u32, 0)
            .context("enable outcome confirmation")?;
        cfg.set(
            config::BUDGET,
            listen_budget_per_cpu_window(cpus.unwrap_or(1)),
            0,
        )
        .context("set the listen line budget")?;
    }
    Ok(Loaded {
        ebpf,
        hooks,
        env,
        confirm,
        cgroup,
        armed_links: HashMap::new(),
        armed_parts,
    })
}

/// Listen ring records per second, all CPUs together, unless TCPQ_LISTEN_BUDGET says otherwise
/// (0: no limit). Beyond it the kernel counts refusals per listener without a record: counts
/// stay exact, userspace work stays bounded however fast a SYN flood arrives.
pub const DEFAULT_LISTEN_BUDGET: u32 = 40_000;

/// The least margin below every limit at which a listener's SYNs/ACKs are not followed
/// through (TCPQ_NEAR_MARGIN overrides it; 0 follows every packet): see listen::far_from_limits.
pub const DEFAULT_NEAR_MARGIN: u32 = 64;

/// Possible CPUs (/sys/devices/system/cpu/possible), if readable.
fn possible_cpus() -> Option<u32> {
    aya::util::nr_cpus().ok().map(|n| n as u32)
}

/// The budget as the kernel applies it: records per CPU per `config::BUDGET_WINDOW_NS`.
fn listen_budget_per_cpu_window(cpus: u32) -> u32 {
    let per_s = std::env::var("TCPQ_LISTEN_BUDGET")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(DEFAULT_LISTEN_BUDGET);
    budget_per_cpu_window(per_s, cpus)
}

/// `per_s` records per second over `cpus` CPUs → per CPU per window (at least 1; 0 stays 0).
pub fn budget_per_cpu_window(per_s: u32, cpus: u32) -> u32 {
    if per_s == 0 {
        return 0;
    }
    let windows_per_s = (1_000_000_000 / config::BUDGET_WINDOW_NS) as u32;
    (per_s / windows_per_s / cpus.max(1)).max(1)
}

/// `inet_csk_reqsk_queue_is_full()` compared `qlen >= backlog` until it became `>`
/// (include/net/inet_connection_sock.h, 6.x). tcpq checks this against the kernel's own
/// counters in its integration tests.
pub fn reqq_full_uses_ge((major, minor): (u32, u32)) -> bool {
    (major, minor) < (6, 12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_reason_skips_the_statistics() {
        let log = "0: (bf) r6 = r1\n...\ncombined stack size of 3 calls is 528. Too large\nverification time 3129 usec\nstack depth 128+400+0\nprocessed 13871 insns (limit 1000000) max_states_per_insn 14\n";
        assert_eq!(
            verifier_reason(log),
            [
                "combined stack size of 3 calls is 528. Too large",
                "stack depth 128+400+0"
            ]
        );
        assert_eq!(
            verifier_reason("R1 invalid mem access 'scalar'\n"),
            ["R1 invalid mem access 'scalar'"]
        );
        assert!(verifier_reason("").is_empty());
    }

    #[test]
    fn the_line_budget_is_shared_by_the_cpus_per_window() {
        // 40k/s on 2 CPUs, 10 windows a second: 2000 records per CPU per window.
        assert_eq!(budget_per_cpu_window(40_000, 2), 2000);
        assert_eq!(budget_per_cpu_window(40_000, 64), 62);
        // Never rounds down to "no limit" or to nothing.
        assert_eq!(budget_per_cpu_window(5, 64), 1);
        assert_eq!(budget_per_cpu_window(0, 2), 0);
        assert_eq!(budget_per_cpu_window(100, 0), 10);
    }

    #[test]
    fn fdinfo_counters_are_read_by_name() {
        // As the kernel prints a program's fdinfo (bpf_prog_show_fdinfo()).
        let text = "pos:\t0\nflags:\t02000002\nprog_type:\t17\nprog_tag:\t3b185187f1855c4c\nrun_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t12\nverified_insns:\t480\n";
        assert_eq!(fdinfo_value(text, "recursion_misses"), Some(12));
        assert_eq!(fdinfo_value(text, "run_cnt"), Some(0));
        assert_eq!(fdinfo_value(text, "missing"), None);
        assert_eq!(
            fdinfo_value("recursion_misses:\tx\n", "recursion_misses"),
            None
        );
        assert_eq!(fdinfo_value("", "recursion_misses"), None);
    }

    fn hook(program: &str) -> HookStatus {
        let spec = HOOKS
            .iter()
            .find(|h| h.program == program)
            .copied()
            .unwrap();
        HookStatus::new(spec, HookState::Attached)
    }

    #[test]
    fn a_family_is_as_cheap_as_its_costliest_syscall_hook() {
        // Every syscall hook on fentry/fexit.
        let mut enter = hook(names::PROG_ACCEPT_ENTER4);
        enter.via = Some(ACCEPT_FENTRY[0]);
        let mut exit = hook(names::PROG_ACCEPT_EXIT4);
        exit.via = Some(ACCEPT_FEXIT[0]);
        let b = family_backend(
            &[enter, exit, hook(names::PROG_ACCEPT_ENQUEUE)],
            Family::Accept,
        );
        assert_eq!(b.backend, Backend::Fentry);
        assert!(
            b.why
                .starts_with("fentry __sys_accept4, fexit __sys_accept4 — no syscall tracepoint"),
            "{}",
            b.why
        );

        // listen() on a kprobe, the accept rate still on a tracepoint: the slow path stays.
        let mut listen = hook(names::PROG_SYS_ENTER_LISTEN);
        listen.via = Some(LISTEN_ENTRY[1]);
        listen.declined.push((
            LISTEN_ENTRY[0].attach,
            "kernel refused to load it: EPERM".into(),
        ));
        let mut rate = hook(names::PROG_SYS_EXIT_ACCEPT4);
        rate.declined.push((
            ACCEPT_COUNT_FEXIT[0].attach,
            "kernel refused to load it: EPERM".into(),
        ));
        let b = family_backend(&[listen, rate], Family::Listen);
        assert_eq!(b.backend, Backend::Tracepoint);
        assert!(
            b.why
                .starts_with("kprobe __sys_listen and syscall tracepoints for the rest"),
            "{}",
            b.why
        );
        // The same refusal once.
        assert!(
            b.why
                .ends_with("(refused: fentry: kernel refused to load it: EPERM)"),
            "{}",
            b.why
        );

        // An unavailable hook does not count; a family without syscall hooks has no choice.
        let mut gone = hook(names::PROG_SYS_ENTER_CONNECT);
        gone.state = HookState::Unavailable("x".into());
        let b = family_backend(&[gone, hook(names::PROG_DROP_KFREE)], Family::Connect);
        assert!(b.why.contains("no syscall hook to choose"), "{}", b.why);
    }

    #[test]
    fn reqq_full_compare_changed_in_6_12() {
        assert!(reqq_full_uses_ge((6, 11)));
        assert!(!reqq_full_uses_ge((6, 12)));
        assert!(!reqq_full_uses_ge((6, 18)));
    }
}
