//! What became of each hook in one load (attached, standby, unavailable, through which
//! alternative) and the backend each family ends up on (`tcpq check`).
use super::hooks::{Alternative, Attach, Backend, Family, HookSpec};

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
    pub(super) fn new(spec: HookSpec, state: HookState) -> Self {
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
    pub(super) fn effective(&self) -> HookSpec {
        HookSpec {
            program: self.program(),
            attach: self.attach(),
            ..self.spec
        }
    }
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

#[cfg(test)]
mod tests {
    use tcpq_common::names;

    use super::*;
    use crate::kernel::probe::hooks::{
        ACCEPT_COUNT_FEXIT, ACCEPT_FENTRY, ACCEPT_FEXIT, HOOKS, LISTEN_ENTRY,
    };

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
}
