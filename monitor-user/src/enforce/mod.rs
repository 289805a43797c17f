//! Enforcement: turning a task's scope into kernel-enforced limits on its processes.
//!
//! Layers (design.md): Landlock for the file scope and TCP connect ports, seccomp for
//! outright syscall denials, a per-task cgroup for the network allowlist and for
//! containment (kill, freeze), seccomp user notification for approval gates. At start-up agentmon says which layers are active, and an
//! enforce-mode task whose scope needs something no active layer can enforce is
//! refused, naming the clause and the missing layer — never run weaker than declared.

pub mod caps;
pub mod cgroup;
pub mod landlock;
pub mod lsm;
pub mod mounts;
pub mod seccomp;

use std::path::PathBuf;

use crate::task::Task;

/// What this host can enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layers {
    /// Landlock ABI version (0: unavailable).
    pub landlock_abi: i32,
    /// seccomp filters can be installed.
    pub seccomp: bool,
    /// Tasks can get their own cgroup v2: the network guard is attached to it and
    /// containment kills (cgroup.kill) or freezes (cgroup.freeze) it.
    pub cgroups: bool,
    /// seccomp user notification (approval gates).
    pub approval: bool,
    /// The BPF LSM tier enforces the file scope, executions and signals (the kernel
    /// runs BPF LSM, and the operator did not ask for the other tier); else
    /// Landlock does, with seccomp and the gate.
    pub lsm: bool,
    /// Why the BPF LSM tier is not used (when it is not).
    pub lsm_absent: &'static str,
}

/// Environment variable naming the enforcement tier: `auto` (the default: BPF LSM
/// where the kernel runs it) or `fallback` (Landlock, seccomp and the gate, for
/// comparison or where the LSM tier misbehaves).
pub const TIER_ENV: &str = "AGENTMON_ENFORCE_TIER";

impl Layers {
    pub fn probe() -> Self {
        let forced = std::env::var(TIER_ENV).is_ok_and(|v| v == "fallback");
        // A kernel that preempts kernel code may preempt a hook mid-check: the hooks
        // keep a check's state per thread (monitor-ebpf lsm/state.rs), so the tier
        // holds there too (preempted_checks_stay_their_own), from 6.2 on: before, a
        // task storage lookup fails while another thread on the CPU is preempted
        // inside one (a per-CPU try-lock), and the check refuses in-scope calls.
        let runs = crate::kernel::lsm::kernel_runs_bpf_lsm();
        let preempts = runs && !forced && crate::kernel::preempt::preempts().is_some();
        let old = || {
            aya::util::KernelVersion::current().map_or(true, |v| v < aya::util::KernelVersion::new(6, 2, 0))
        };
        let held_off = preempts && old();
        Self {
            landlock_abi: landlock::abi(),
            seccomp: seccomp::available(),
            cgroups: cgroup::available(),
            approval: seccomp::user_notif_available(),
            lsm: runs && !forced && !held_off,
            lsm_absent: match (runs, forced) {
                (_, true) => "the fallback tier was asked for (AGENTMON_ENFORCE_TIER=fallback)",
                (false, _) => "this kernel does not run BPF LSM (no bpf in /sys/kernel/security/lsm)",
                _ if held_off => {
                    "this kernel preempts kernel code (agentmon probe says how) and is older than 6.2, where \
                     the hooks' per-thread state can be out of reach while another thread is preempted \
                     inside a task storage call"
                }
                (true, false) => "",
            },
        }
    }

    /// The tier that enforces, and why.
    pub fn tier(&self) -> String {
        if self.lsm {
            "BPF LSM: the file scope, executions, mode/owner/xattr changes and signals are checked in the \
             kernel's security hooks before they happen (the hooks are attached while a task is enforced, \
             so that other processes pay nothing for them otherwise)"
                .into()
        } else {
            format!("Landlock, seccomp and the approval gate (BPF LSM not used: {})", self.lsm_absent)
        }
    }

    /// One line per layer, saying whether it is active.
    pub fn describe(&self) -> Vec<String> {
        let tier = format!("tier: {}", self.tier());
        let ll = match self.landlock_abi {
            _ if self.lsm => format!(
                "landlock ABI {}: not used (the BPF LSM tier enforces the file scope)",
                self.landlock_abi
            ),
            0 => "landlock: unavailable (kernel without Landlock, or not enabled at boot)".to_string(),
            v if v < landlock::NEEDED_ABI => format!(
                "landlock: ABI {v}, too old (file scope, TCP ports and signal scoping need ABI {})",
                landlock::NEEDED_ABI
            ),
            v => format!(
                "landlock ABI {v}: file scope (write, delete, exec), TCP connect ports, signal scoping: active"
            ),
        };
        let sc = if self.seccomp {
            format!(
                "seccomp: denies {}: active",
                seccomp::DENIED
                    .iter()
                    .map(|(n, _)| *n)
                    .filter(|n| !(self.lsm && seccomp::LSM_KEEPS.contains(n)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            "seccomp: unavailable".to_string()
        };
        let (net, contain) = if self.cgroups {
            (
                "network allowlist (per-task cgroup, connect4/6 + sendmsg4/6): active".to_string(),
                "containment (kernel kill mark + cgroup.kill; cgroup.freeze): active".to_string(),
            )
        } else {
            let why = "unavailable (needs root and a cgroup v2 hierarchy with cgroup.kill)";
            (
                format!("network allowlist (per-task cgroup): {why}"),
                format!("containment (kill, freeze): {why}"),
            )
        };
        let gates = if self.approval {
            format!(
                "approval gates (seccomp user notification): {}; i386/x32 calls of observed commands reported: \
                 active",
                crate::gate::filter::gateable(self.lsm)
                    .iter()
                    .map(|o| o.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            "approval gates: unavailable (the kernel lacks seccomp user notification); i386/x32 calls of \
             observed commands go unseen"
                .to_string()
        };
        vec![tier, ll, sc, net, gates, contain]
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnforceError {
    #[error("cannot enforce task {task}: {clause}: {why}")]
    Refused { task: String, clause: &'static str, why: String },
    #[error("building the {layer} layer: {msg}")]
    Build { layer: &'static str, msg: String },
}

/// Files and directories agentmon itself writes or trusts: an enforced task may never
/// be allowed to write them or anything under them.
#[derive(Debug, Clone, Default)]
pub struct Protected {
    pub paths: Vec<PathBuf>,
}

/// Kernel-side limits to apply in the child between fork and exec.
pub struct Confinement {
    pub landlock: Option<::landlock::RulesetCreated>,
    pub seccomp: Option<seccompiler::BpfProgram>,
    /// The gate's filter (user notification): the task's gated operations and the
    /// requests refused with a record, where the kernel offers user notification.
    pub gate: Option<Vec<libc::sock_filter>>,
    /// Drop [`caps::DROPPED`] (enforced tasks).
    pub drop_caps: bool,
}

impl std::fmt::Debug for Confinement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Confinement")
            .field("landlock", &self.landlock.is_some())
            .field("seccomp", &self.seccomp.as_ref().map(Vec::len))
            .field("gate", &self.gate.as_ref().map(Vec::len))
            .field("drop_caps", &self.drop_caps)
            .finish()
    }
}

/// Files the launch of `program` executes: the program (resolved), and for a script
/// its `#!` interpreter (and, for `#!/usr/bin/env X`, X found on PATH).
pub fn launch_files(program: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(real) = std::fs::canonicalize(program) else { return out };
    out.push(real.clone());
    let head = landlock::head(&real, 256).unwrap_or_default();
    if let Some(line) = head.strip_prefix(b"#!") {
        let line = String::from_utf8_lossy(line);
        let mut words = line.lines().next().unwrap_or("").split_whitespace();
        if let Some(interp) = words.next() {
            out.extend(std::fs::canonicalize(interp));
            if interp.ends_with("/env")
                && let Some(name) = words.find(|w| !w.starts_with('-'))
                && let Ok(p) = crate::launch::resolve_program(name)
            {
                out.extend(std::fs::canonicalize(p));
            }
        }
    }
    out
}

/// Can the gate hold what `task` asks to be approved?
fn held_ok(task: &Task, layers: &Layers) -> bool {
    task.approval.is_empty() || layers.approval
}

/// Builds the confinement of `task`, or refuses it. `launch` are the files the
/// command itself needs to execute (the program and its interpreters).
pub fn confine(
    task: &Task,
    layers: &Layers,
    launch: &[PathBuf],
    protected: &Protected,
) -> Result<Confinement, EnforceError> {
    let refuse =
        |clause: &'static str, why: String| EnforceError::Refused { task: task.id.clone(), clause, why };
    if !layers.lsm && layers.landlock_abi < landlock::NEEDED_ABI {
        return Err(refuse(
            "scope",
            format!(
                "the Landlock layer is not available (ABI {}, need {})",
                layers.landlock_abi,
                landlock::NEEDED_ABI
            ),
        ));
    }
    if !layers.seccomp {
        return Err(refuse("scope", "the seccomp layer is not available".into()));
    }
    // Mode and owner changes are not limited by Landlock: the gate holds every chmod
    // and chown of an enforced task, and lets through at once those its scope allows
    // (approval_required may still ask for them). The BPF LSM tier checks them itself.
    if !layers.lsm && !layers.approval {
        return Err(refuse(
            "scope.write",
            "mode and owner changes are kept to the write scope by holding them (seccomp user notification), \
             which this kernel does not offer"
                .into(),
        ));
    }
    let gate = {
        let gateable = crate::gate::filter::gateable(layers.lsm);
        if let Some(op) = task.approval.iter().find(|o| !gateable.contains(o)) {
            return Err(refuse(
                "approval_required",
                format!(
                    "{} cannot be held for approval in this version (gated: {})",
                    op.as_str(),
                    gateable.iter().map(|o| o.as_str()).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let mut held = task.approval.clone();
        if !layers.lsm {
            held.extend(
                [crate::task::Op::Chmod, crate::task::Op::Chown]
                    .iter()
                    .filter(|o| !task.approval.contains(o)),
            );
        }
        // Also where nothing is held: the gate refuses and records the requests no
        // task may make (gate::filter::REFUSED), which the denial filter cannot.
        layers.approval.then(|| crate::gate::filter::program(&held))
    };
    if !held_ok(task, layers) {
        return Err(refuse(
            "approval_required",
            "approval gates need seccomp user notification, which this kernel does not offer".into(),
        ));
    }
    for p in &protected.paths {
        if let Some(clause) = task.writes_reach(p) {
            return Err(refuse(
                clause,
                format!(
                    "covers {}, which agentmon writes or trusts (the agent could edit its own record)",
                    p.display()
                ),
            ));
        }
    }
    // The network: Landlock limits TCP ports, not addresses, and no active layer sees
    // unix socket paths; until the cgroup layer lands a task that needs either is
    // refused rather than half-enforced.
    if task.connect.iter().any(|e| matches!(e, crate::task::scope::Endpoint::Unix { .. })) {
        return Err(refuse(
            "scope.connect",
            "unix socket allowlists need a layer this version does not have (Landlock ABI 9 or approval gates)"
                .into(),
        ));
    }
    if !task.connect.is_empty() && !layers.cgroups {
        return Err(refuse(
            "scope.connect",
            "allowing some destinations needs the address allowlist layer (a per-task cgroup), which is not \
             available on this host"
                .into(),
        ));
    }
    if !task.listen.is_empty() {
        return Err(refuse(
            "scope.listen",
            "listen allowlists need the cgroup bind layer, not in this version".into(),
        ));
    }
    if task.deny_sensitive_reads && !layers.lsm {
        return Err(refuse(
            "sensitive_reads",
            format!(
                "refusing reads of the sensitive set needs the BPF LSM tier's file_open hook, not active here \
                 ({})",
                layers.lsm_absent
            ),
        ));
    }
    let landlock = if layers.lsm {
        // Checked now, before anything runs; the plan itself is loaded when the
        // task is bound (`runner::tasks`).
        // TCP ports are the cgroup guard's alone on this tier (enforce mode needs
        // the task's cgroup anyway: `runner::tasks::admissible`).
        lsm::plan(task, launch).map_err(|(clause, why)| refuse(clause, why))?;
        None
    } else {
        Some(
            landlock::ruleset(task, layers.landlock_abi, launch)
                .map_err(|(clause, why)| refuse(clause, why))?,
        )
    };
    // UDP destinations are checked by the cgroup guard (sendmsg4/6) when the task may
    // reach anything at all; raw sockets would bypass it.
    let sockets = seccomp::Sockets { no_datagram: task.connect.is_empty(), no_unix: true };
    let seccomp =
        seccomp::filter(sockets, layers.lsm).map_err(|msg| EnforceError::Build { layer: "seccomp", msg })?;
    Ok(Confinement { landlock, seccomp: Some(seccomp), gate, drop_caps: true })
}

#[cfg(test)]
mod tests;
