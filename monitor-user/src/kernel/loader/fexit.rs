//! The fexit observation tier's programs (`kernel::observe`): `fx_NAME` attached to
//! each syscall's function; `sk_NAME`, loaded (not attached) for the tail call that
//! `seccomp_skip` on `__secure_computing` makes for a call seccomp answered, which
//! never reaches its function; and the choice of tier, made once all of them have
//! loaded (all or none: a tier with a gap is never chosen).

use std::path::Path;

use aya::{
    Btf, Ebpf,
    maps::{MapData, ProgramArray},
    programs::{FExit, Program, ProgramError, fexit::FExitLink},
};

use super::{LoadError, verifier_tail};
use crate::kernel::{
    btf::KernelBtf,
    observe::{self, Ask, Chosen, OBSERVE_ENV, PROBE, SECCOMP_FN, Tier},
    tracefs::{TraceFs, TraceFsError},
};

/// The fexit tier's programs, once loaded: empty on the tracepoint tier.
#[derive(Default)]
pub struct Fexit {
    /// Attached: program, link, where.
    pub links: Vec<(String, FExitLink, String)>,
    /// Loaded for a tail call: program, what from.
    pub loaded: Vec<(String, String)>,
    /// Programs whose syscall this kernel does not have.
    pub absent: Vec<String>,
    /// SKIPPED: syscall number -> `sk_` program.
    pub skipped: Option<ProgramArray<MapData>>,
}

/// The observation tier, and on fexit its programs loaded and attached: fexit where
/// this kernel attaches [`PROBE`], has every syscall's function and
/// `__secure_computing`, and takes every program, unless the operator asked for the
/// tracepoints. In `auto`, a program it does not take (a verifier's refusal, a
/// function that cannot be traced) makes it the tracepoints, with the reason; asked
/// for, fexit is then an error. SKIPPED is pinned at `skipped_pin` (with this load's
/// links: a daemon's tail calls outlive it).
pub fn choose(
    ebpf: &mut Ebpf,
    btf: &Btf,
    kbtf: &KernelBtf,
    tracefs: &TraceFs,
    skipped_pin: Option<&Path>,
    fexit_auto: bool,
) -> Result<(Chosen, Fexit), LoadError> {
    let ask = Ask::from_env().map_err(LoadError::Observe)?;
    if ask == Ask::Only(Tier::Tracepoint) {
        let why = format!("{OBSERVE_ENV}=tracepoint");
        return Ok((Chosen { tier: Tier::Tracepoint, why }, Fexit::default()));
    }
    if ask == Ask::Auto && !fexit_auto {
        let why = format!(
            "chosen for one command: attaching and detaching a trampoline per syscall takes longer than the \
             tracepoints cost it; the daemon observes through fexit, and {OBSERVE_ENV}=fexit asks for it here"
        );
        return Ok((Chosen { tier: Tier::Tracepoint, why }, Fexit::default()));
    }
    // A kernel that preempts programs mid-run loses fexit events unsaid and mixes
    // their per-CPU state (kernel::preempt); the tracepoints' run with preemption off.
    if let Some(why) = super::super::preempt::preempts() {
        if ask == Ask::Auto {
            let why = format!("fexit not used: this kernel may preempt a BPF program mid-run ({why})");
            return Ok((Chosen { tier: Tier::Tracepoint, why }, Fexit::default()));
        }
        return Err(LoadError::Program {
            prog: PROBE.into(),
            attach: format!("fexit {}", observe::target(PROBE).unwrap_or_default()),
            stage: "choose",
            msg: format!(
                "this kernel may preempt a BPF program mid-run ({why}): fexit programs would lose events \
                 unsaid; {OBSERVE_ENV}=fexit asks for it: unset it (or set tracepoint)"
            ),
        });
    }
    let progs: Vec<String> =
        ebpf.programs().filter(|(_, p)| matches!(p, Program::FExit(_))).map(|(n, _)| n.to_string()).collect();
    let exists = |tp: &str| !matches!(tracefs.check_syscall(tp), Err(TraceFsError::Missing(..)));
    let target = observe::target(PROBE).unwrap_or_default();
    let tried = match observe::plan(kbtf, &progs, exists) {
        Err(why) => Err(LoadError::Observe(why)),
        Ok(plan) => load_all(ebpf, btf, plan, skipped_pin),
    };
    match tried {
        Ok(fx) => {
            let why = match ask {
                Ask::Auto => "this kernel attaches them".to_string(),
                Ask::Only(_) => format!("{OBSERVE_ENV}=fexit"),
            };
            Ok((Chosen { tier: Tier::Fexit, why }, fx))
        }
        // What was attached is detached as the partial set drops; what was
        // loaded (all of them, verified side by side) is let go here.
        Err(e) if ask == Ask::Auto => {
            for (_, p) in ebpf.programs_mut() {
                if let Program::FExit(p) = p {
                    let _ = p.unload();
                }
            }
            // A pinned SKIPPED would hold the sk_ programs put in it.
            if let Some(pin) = skipped_pin {
                let _ = std::fs::remove_file(pin);
            }
            let why = format!("fexit not available: {e}");
            Ok((Chosen { tier: Tier::Tracepoint, why }, Fexit::default()))
        }
        Err(LoadError::Observe(why)) => Err(LoadError::Program {
            prog: PROBE.into(),
            attach: format!("fexit {target}"),
            stage: "choose",
            msg: format!(
                "{why}; {OBSERVE_ENV}=fexit asks for it: unset it (or set tracepoint) to observe through the \
                 syscall tracepoints"
            ),
        }),
        Err(e) => Err(e),
    }
}

/// Loads every fexit program: [`PROBE`] first (what this kernel says to fexit at
/// all), each `fx_` attached to its syscall's function, the `seccomp_skip` of this
/// kernel's `__secure_computing` attached to it, each `sk_` loaded into SKIPPED.
fn load_all(
    ebpf: &mut Ebpf,
    btf: &Btf,
    plan: observe::Plan,
    skipped_pin: Option<&Path>,
) -> Result<Fexit, LoadError> {
    let mut fx = Fexit { absent: plan.absent, ..Fexit::default() };
    let probe_target = observe::target(PROBE).unwrap_or_default();
    let probe = probe(ebpf, btf, &probe_target).map_err(LoadError::Observe)?;
    fx.links.push((PROBE.to_string(), probe, format!("fexit {probe_target}")));
    let map = ebpf.take_map("SKIPPED").ok_or(LoadError::Map("SKIPPED"))?;
    if let Some(path) = skipped_pin {
        map.pin(path).map_err(|e| LoadError::MapOp { name: "SKIPPED", msg: e.to_string() })?;
    }
    let mut skipped =
        ProgramArray::try_from(map).map_err(|e| LoadError::MapOp { name: "SKIPPED", msg: e.to_string() })?;
    // Verified side by side first (par.rs); the loop below loads what failed again.
    let mut jobs: Vec<(&mut FExit, String)> = ebpf
        .programs_mut()
        .filter_map(|(name, p)| match (p, load_target(name, &fx.absent, plan.seccomp_params)) {
            (Program::FExit(p), Some(Ok(target))) => Some((p, target)),
            _ => None,
        })
        .collect();
    super::par::load_each(&mut jobs, |(p, target)| {
        let _ = p.load(target, btf);
    });
    for (name, p) in ebpf.programs_mut() {
        let Program::FExit(p) = p else { continue };
        let Some(target) = load_target(name, &fx.absent, plan.seccomp_params) else { continue };
        let fail = |attach: &str, stage: &'static str, msg: String| LoadError::Program {
            prog: name.to_string(),
            attach: attach.to_string(),
            stage,
            msg,
        };
        let target = target.map_err(|e| fail("fexit", "classify", e.into()))?;
        let load = |p: &mut FExit, attach: &str| match p.fd() {
            Ok(_) => Ok(()),
            Err(_) => p.load(&target, btf).map_err(|e| fail(attach, "load", verifier_tail(&e))),
        };
        if let Some(call) = name.strip_prefix("sk_") {
            let attach = format!("tail call from fexit {SECCOMP_FN} (syscall {call} answered by seccomp)");
            let nr = crate::kernel::sysnr::number(call)
                .ok_or_else(|| fail(&attach, "classify", "no syscall number".into()))?;
            load(p, &attach)?;
            let fd = p.fd().map_err(|e| fail(&attach, "load", e.to_string()))?;
            skipped.set(nr, fd, 0).map_err(|e| fail(&attach, "set", e.to_string()))?;
            fx.loaded.push((name.to_string(), attach));
            continue;
        }
        let attach = format!("fexit {target}");
        load(p, &attach)?;
        let id = p.attach().map_err(|e| fail(&attach, "attach", e.to_string()))?;
        let link = p.take_link(id).map_err(|e| fail(&attach, "own link", e.to_string()))?;
        fx.links.push((name.to_string(), link, attach));
    }
    fx.skipped = Some(skipped);
    Ok(fx)
}

/// The function an fexit program is loaded for (an `sk_` program: the one its tail
/// call comes from), or `None` for one not loaded here: [`PROBE`] (loaded first),
/// one whose syscall this kernel lacks, the `seccomp_skip` form of another
/// prototype.
fn load_target(name: &str, absent: &[String], seccomp_params: usize) -> Option<Result<String, &'static str>> {
    if name == PROBE || absent.iter().any(|a| a == name) {
        return None;
    }
    if name.starts_with("sk_") {
        return Some(Ok(SECCOMP_FN.to_string()));
    }
    if let Some(form) = name.strip_prefix("seccomp_skip") {
        // One form per prototype: (sd) before 6.15, (void) since.
        let want = if form == "_v0" { 0 } else { 1 };
        return (seccomp_params == want).then(|| Ok(SECCOMP_FN.to_string()));
    }
    Some(observe::target(name).ok_or("not named fx_SYSCALL"))
}

/// Loads and attaches [`PROBE`] on `target`: what this kernel says to fexit.
fn probe(ebpf: &mut Ebpf, btf: &Btf, target: &str) -> Result<FExitLink, String> {
    let p: &mut FExit = ebpf
        .program_mut(PROBE)
        .ok_or_else(|| format!("program {PROBE} missing from the object"))?
        .try_into()
        .map_err(|e: ProgramError| e.to_string())?;
    p.load(target, btf).map_err(|e| format!("loading {PROBE} on {target}: {}", verifier_tail(&e)))?;
    let id = p.attach().map_err(|e| format!("attaching {PROBE} to {target}: {e}"))?;
    p.take_link(id).map_err(|e| e.to_string())
}
