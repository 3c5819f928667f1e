//! `tcpq check`: which kernel hooks tcpq uses, which are attached, and why others are not.
use anyhow::Result;
use aya::{Btf, programs::FEntry};
use serde_json::json;
use tcpq_common::names;

use crate::{
    cli::CheckArgs,
    kernel::{
        env, privilege,
        probe::{self, Environment, Family, HookState, LoadOptions, explain_program_error},
    },
};

fn privileges_line(env: &Environment) -> String {
    let p = &env.privileges;
    let caps: Vec<&str> = [
        (env::cap::BPF, "CAP_BPF"),
        (env::cap::PERFMON, "CAP_PERFMON"),
        (env::cap::NET_ADMIN, "CAP_NET_ADMIN"),
        (env::cap::SYS_ADMIN, "CAP_SYS_ADMIN"),
        (env::cap::SYS_PTRACE, "CAP_SYS_PTRACE"),
        (env::cap::DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"),
    ]
    .iter()
    .filter(|(b, _)| p.has(*b))
    .map(|(_, n)| *n)
    .collect();
    format!(
        "{} (uid {}), capabilities: {}",
        if p.euid == 0 { "root" } else { "not root" },
        p.euid,
        if caps.is_empty() {
            "none".to_string()
        } else {
            caps.join(" ")
        }
    )
}

/// Tries to load the fentry probe: reports whether this kernel allows fentry at all.
fn fentry_status(loaded: &mut probe::Loaded) -> String {
    let Some(prog) = loaded.ebpf.program_mut(names::PROG_FENTRY_PROBE) else {
        return "not probed (program missing)".into();
    };
    let btf = match Btf::from_sys_fs() {
        Ok(b) => b,
        Err(e) => return format!("not probed: {e}"),
    };
    let p: &mut FEntry = match prog.try_into() {
        Ok(p) => p,
        Err(e) => return format!("not probed: {e}"),
    };
    match p.load("tcp_conn_request", &btf) {
        Ok(()) => "available: the syscall hooks use fentry/fexit (see backends)".into(),
        Err(e) => format!(
            "refused: {} — the syscall hooks use tracepoints",
            explain_program_error(&e)
        ),
    }
}

pub fn run(args: CheckArgs) -> Result<i32> {
    let json_out = args.json;
    let env = Environment::gather();
    let fatal = env.fatal_problem();
    let mut rows: Vec<(String, String, String, String)> = Vec::new(); // state, program, attach, detail
    let mut fentry = "not probed (needs root)".to_string();
    let mut core_failure: Option<String> = None;
    let mut backends: Vec<(Family, probe::FamilyBackend)> = Vec::new();
    if fatal.is_none() {
        // One family at a time: a family whose core hook fails (e.g. the syscall tracepoints
        // without tracefs) is reported as unavailable while the others still attach. Only the
        // listen family decides the exit code (the core of `tcpq trace overflow`).
        for family in [
            Family::Listen,
            Family::Connect,
            Family::Drop,
            Family::Accept,
        ] {
            match probe::load(&[family], &LoadOptions::default()) {
                Ok(mut loaded) => {
                    for h in &loaded.hooks {
                        let (state, detail) = match &h.state {
                            HookState::Attached => ("attached", h.spec.gives.to_string()),
                            HookState::Standby => ("standby", h.spec.gives.to_string()),
                            HookState::Unavailable(why) => (
                                "unavailable",
                                format!("{why} — without it: {}", h.spec.without),
                            ),
                        };
                        let attach = match h.via {
                            Some(_) => format!(
                                "{} (for {})",
                                h.attach().describe(),
                                h.spec.attach.describe()
                            ),
                            None => h.spec.attach.describe(),
                        };
                        rows.push((state.into(), h.program().into(), attach, detail));
                    }
                    backends.push((family, probe::family_backend(&loaded.hooks, family)));
                    if family == Family::Listen {
                        fentry = fentry_status(&mut loaded);
                    }
                    // The live commands count accepts in the kernel (another verified program
                    // than `trace accept`'s one record per accept): verify that one too.
                    if family == Family::Accept {
                        drop(loaded);
                        let live = LoadOptions {
                            aggregate_accepts: true,
                            ..LoadOptions::default()
                        };
                        if let Err(e) = probe::load(&[family], &live) {
                            rows.push((
                                "unavailable".into(),
                                format!("{} (in-kernel totals)", names::PROG_ACCEPT_EXIT4),
                                "tracepoint syscalls:sys_exit_accept4".into(),
                                format!(
                                    "top, export and diagnose show no accepts: {}",
                                    crate::one_line(&e)
                                ),
                            ));
                        }
                    }
                }
                Err(e) => {
                    let why = crate::one_line(&e);
                    for h in probe::HOOKS.iter().filter(|h| h.family == family) {
                        rows.push((
                            "unavailable".into(),
                            h.program.into(),
                            h.attach.describe(),
                            format!("{family:?} family not loaded: {why}"),
                        ));
                    }
                    if family == Family::Listen {
                        core_failure = Some(why);
                    }
                }
            }
        }
    } else {
        for h in probe::HOOKS {
            rows.push((
                "not tried".into(),
                h.program.into(),
                h.attach.describe(),
                h.gives.into(),
            ));
        }
    }
    let kprobes = match env.kprobes {
        Some(true) => "available: listen() is read by a kprobe where fentry is refused".to_string(),
        Some(false) => {
            "unavailable: CONFIG_KPROBES unset (no kprobe_events in tracefs) — tracepoints serve instead"
                .to_string()
        }
        None => "unknown (tracefs unavailable)".to_string(),
    };
    let cgroup2 = match &env.cgroup2 {
        Ok(p) if p.as_path() == std::path::Path::new(crate::kernel::env::CGROUP2_PRIVATE) => {
            format!(
                "none was mounted: tcpq mounted it at {} (cgroup_skb hooks attach to its root; in this mount namespace only when under `ip netns exec`, else `umount {}` to undo)",
                p.display(),
                p.display()
            )
        }
        Ok(p) => format!("{} (cgroup_skb hooks attach to its root)", p.display()),
        Err(e) => e.clone(),
    };
    let btf = if env.btf_present {
        format!("{} present", env.btf_path.display())
    } else {
        format!(
            "{} missing: struct offsets cannot be resolved",
            env.btf_path.display()
        )
    };
    let plan = privilege::current_plan();
    let problem = fatal.clone().or(core_failure.clone());
    let code = if problem.is_some() { 2 } else { 0 };
    if json_out {
        let v = json!({
            "event": "check",
            "kernel": env.kernel,
            "privileges": privileges_line(&env),
            "btf": btf,
            "cgroup2": cgroup2,
            "tracefs": env.tracefs.describe(),
            "kprobes": kprobes,
            "fentry": fentry,
            "export_keeps": plan.as_ref().map(|p| p.keep.iter().map(|k| json!({"capability": k.cap.to_string(), "for": k.needs})).collect::<Vec<_>>()).unwrap_or_default(),
            "export_cannot": plan.as_ref().map(|p| p.unmet.clone()).unwrap_or_default(),
            "backends": backends.iter().map(|(f, b)| json!({"family": format!("{f:?}").to_lowercase(), "backend": b.backend.name(), "why": b.why})).collect::<Vec<_>>(),
            "hooks": rows.iter().map(|(s, p, a, d)| json!({"state": s, "program": p, "attach": a, "detail": d})).collect::<Vec<_>>(),
            "ok": problem.is_none(),
            "error": problem,
        });
        println!("{v}");
    } else {
        println!("tcpq check — kernel {}", env.kernel);
        println!("  {:<11} {}", "privileges", privileges_line(&env));
        println!("  {:<11} {}", "btf", btf);
        println!("  {:<11} {}", "cgroup2", cgroup2);
        println!("  {:<11} {}", "tracefs", env.tracefs.describe());
        println!("  {:<11} {}", "kprobes", kprobes);
        println!("  {:<11} {}", "fentry", fentry);
        match &plan {
            Ok(p) => {
                println!(
                    "  {:<11} keeps {} after start (drops the rest, no_new_privs)",
                    "export",
                    p.names()
                );
                for k in &p.keep {
                    println!("  {:<11}   {}: {}", "", k.cap, k.needs.join("; "));
                }
                for what in &p.unmet {
                    println!("  {:<11}   cannot: {what}", "");
                }
            }
            Err(e) => println!("  {:<11} {e}", "export"),
        }
        if !backends.is_empty() {
            println!("backends:");
            for (family, b) in &backends {
                println!(
                    "  {:<11} {:<11} {}",
                    format!("{family:?}").to_lowercase(),
                    b.backend.name(),
                    b.why
                );
            }
        }
        println!("hooks:");
        for (s, p, a, d) in &rows {
            println!("  {s:<11} {p:<18} {a:<44} {d}");
        }
        let refused: Vec<&str> = rows
            .iter()
            .filter(|(s, ..)| *s != "attached")
            .map(|(_, p, ..)| p.as_ref())
            .collect();
        match (&problem, refused.is_empty()) {
            (None, true) => println!("result: core hooks work; every hook attached"),
            // Not fatal (each command that needs one says so), but not to be missed either: on
            // 6.1 a whole family was once refused under a line that said only "work".
            (None, false) => println!(
                "result: core hooks work; {} of {} hooks unavailable ({}): the commands that need them report it",
                refused.len(),
                rows.len(),
                refused.join(", ")
            ),
            (Some(p), _) => println!("result: core hooks cannot work: {p}"),
        }
    }
    if let Some(p) = problem {
        eprintln!("tcpq: {p}");
    }
    Ok(code)
}
