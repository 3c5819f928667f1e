//! The hook registry: every program tcpq can load, where it attaches, what it gives, whether
//! tcpq can work without it and the cheaper alternatives tried first (kunai's compat idea).
use tcpq_common::{dispatcher, kfree_hooks, names, reset_hooks, state_hooks};

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

pub(super) const DISPATCHERS: [Dispatcher; 3] = [SOCK_STATE, SKB_KFREE, SEND_RESET];

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
    pub(super) fn allowed() -> Backend {
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

pub(super) const ACCEPT_FENTRY: &[Alternative] = &[Alternative {
    program: names::PROG_ACCEPT_FENTRY,
    attach: Attach::FEntry("__sys_accept4"),
}];
pub(super) const ACCEPT_FEXIT: &[Alternative] = &[Alternative {
    program: names::PROG_ACCEPT_FEXIT,
    attach: Attach::FExit("__sys_accept4"),
}];
pub(super) const ACCEPT_COUNT_FEXIT: &[Alternative] = &[Alternative {
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
pub(super) const LISTEN_ENTRY: &[Alternative] = &[
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
        program: names::PROG_DROP_NESTED,
        attach: Attach::RawTracepoint("kfree_skb"),
        family: Family::Drop,
        core: false,
        gives: "netfilter drops in a softirq that interrupted drop_kfree on the same CPU (the kernel skips a program's nested runs)",
        without: "those drops are not seen; they are reported as missed runs",
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

/// Programs that together let the listen path confirm each verdict.
pub const OUTCOME_HOOKS: [&str; 4] = [
    names::PROG_OUTCOME_XMIT,
    names::PROG_OUTCOME_CHILD,
    names::PROG_OUTCOME_CONSUME,
    names::PROG_OUTCOME_KFREE,
];
