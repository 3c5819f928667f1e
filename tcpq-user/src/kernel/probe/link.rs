//! Loading one program into the kernel and attaching or detaching it: each attachment kind's
//! aya calls, the link handles kept to detach later and the ARMED_PARTS bits of shared programs.
use std::{fs::File, path::PathBuf};

use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, FEntry, FExit, KProbe, ProgramError,
        RawTracePoint, TracePoint, cgroup_skb::CgroupSkbLinkId, fentry::FEntryLinkId,
        fexit::FExitLinkId, kprobe::KProbeLinkId, raw_trace_point::RawTracePointLinkId,
        trace_point::TracePointLinkId,
    },
};
use tcpq_common::names;

use super::{
    hooks::{Attach, HookSpec},
    verifier::explain_program_error,
};

/// How to detach a program tcpq attached after load.
#[derive(Debug)]
pub(super) enum LinkHandle {
    Cgroup(CgroupSkbLinkId),
    Raw(RawTracePointLinkId),
    Tracepoint(TracePointLinkId),
    FEntry(FEntryLinkId),
    FExit(FExitLinkId),
    KProbe(KProbeLinkId),
    /// A part of a shared program: a bit of its ARMED_PARTS slot.
    Part(u32, u32),
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
pub(super) fn attach_one(
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
pub(super) fn link_loaded(
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
pub(super) struct KernelTypes {
    path: PathBuf,
    btf: Option<Result<aya::Btf, String>>,
}

impl KernelTypes {
    pub(super) fn new(path: PathBuf) -> Self {
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
    pub(super) fn release(&mut self) {
        if self.btf.take().is_some() {
            // SAFETY: malloc_trim only returns free heap memory to the kernel; no pointer
            // handed out by the allocator is affected.
            unsafe { libc::malloc_trim(0) };
        }
    }
}

/// Detaches a link `link_loaded` made.
pub(super) fn unlink(ebpf: &mut Ebpf, program: &str, handle: LinkHandle) -> Result<(), String> {
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
pub(super) fn write_armed_parts(ebpf: &mut Ebpf, slot: u32, bits: u32) -> Result<(), String> {
    let map = ebpf
        .map_mut(names::ARMED_PARTS)
        .ok_or_else(|| format!("kernel object has no map {}", names::ARMED_PARTS))?;
    let mut armed: Array<&mut MapData, u32> =
        Array::try_from(map).map_err(|e| format!("open {}: {e}", names::ARMED_PARTS))?;
    armed
        .set(slot, bits, 0)
        .map_err(|e| format!("write {}: {e}", names::ARMED_PARTS))
}
