//! Loading the kernel programs: `load` sets the object's globals and loads and attaches every
//! hook of the families a command asks for (a cheaper alternative first where one exists).
//! The parts: the hook registry (`hooks`), what became of each hook (`status`), the environment
//! checked first (`environment`), the globals' values (`globals`), one program's load and links
//! (`link`), the verifier's refusals (`verifier`), the loaded object and its counters (`loaded`)
//! and the standby programs' arming (`arm`). All kernel plumbing lives in `kernel::*`;
//! everything after decode is plain Rust.
use std::{collections::HashMap, fs::File};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData},
};
use tcpq_common::{config, dispatcher, names};

use super::{btf, env};

mod arm;
mod environment;
mod globals;
mod hooks;
mod link;
mod loaded;
mod status;
mod verifier;

pub use environment::Environment;
pub use globals::{
    DEFAULT_LISTEN_BUDGET, DEFAULT_NEAR_MARGIN, budget_per_cpu_window, reqq_full_uses_ge,
};
use globals::{listen_budget_per_cpu_window, possible_cpus, tracepoint_globals};
use hooks::DISPATCHERS;
pub use hooks::{
    Alternative, Attach, Backend, Dispatcher, Family, HOOKS, HookSpec, OUTCOME_HOOKS, SEND_RESET,
    SKB_KFREE, SOCK_STATE,
};
pub use link::attach_floor_probe;
use link::{KernelTypes, attach_one, link_loaded, write_armed_parts};
pub use loaded::{Loaded, sum_per_cpu};
pub use status::{FamilyBackend, HookState, HookStatus, family_backend};
pub use verifier::explain_program_error;

/// The kernel object built by build.rs (aya-build).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcpq"));

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
