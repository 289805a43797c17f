//! The observation tier: which programs see a tracked process's syscalls return.
//!
//! Every syscall handler is built twice from one body (`monitor-ebpf` `on_exit!`):
//! as the tracepoint `syscalls:sys_exit_NAME` and as the fexit program `fx_NAME`
//! for the syscall's own function (`__x64_sys_NAME`). The loader attaches one set.
//! Attaching any syscall tracepoint makes every syscall of every process on the host
//! take the kernel's slow syscall path; an fexit program costs only the processes
//! that make its call (a trampoline and the tracked test). A call seccomp answers
//! never reaches its function: for those, `sk_NAME` (the same body) is run by a tail
//! call from an fexit program on `__secure_computing`. So fexit is chosen where
//! the kernel attaches it, the tracepoints elsewhere (this build machine's VM blocks
//! trampolines), and `AGENTMON_OBSERVE_TIER` forces either for comparison.

use std::fmt;

use super::btf::KernelBtf;

/// Environment variable naming the observation tier: `auto` (the default), `fexit`
/// (refuse to start without it) or `tracepoint`.
pub const OBSERVE_ENV: &str = "AGENTMON_OBSERVE_TIER";

/// The program whose load and attach show whether this kernel runs fexit programs.
pub const PROBE: &str = "fx_openat";

/// The prefix of a syscall's function on this architecture.
const SYSCALL_PREFIX: &str = if cfg!(target_arch = "aarch64") { "__arm64_sys_" } else { "__x64_sys_" };

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// fexit programs on the syscalls' functions.
    Fexit,
    /// The syscall tracepoints.
    Tracepoint,
}

impl Tier {
    /// As `task_start`'s `detail.observe` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Fexit => "fexit",
            Tier::Tracepoint => "tracepoint",
        }
    }
}

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    Auto,
    Only(Tier),
}

impl Ask {
    /// From [`OBSERVE_ENV`]; a value it does not know is an error naming it.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(OBSERVE_ENV) {
            Err(std::env::VarError::NotPresent) => Ok(Ask::Auto),
            Ok(v) => Self::parse(&v),
            Err(e) => Err(format!("{OBSERVE_ENV}: {e}")),
        }
    }

    fn parse(v: &str) -> Result<Self, String> {
        match v {
            "" | "auto" => Ok(Ask::Auto),
            "fexit" => Ok(Ask::Only(Tier::Fexit)),
            "tracepoint" => Ok(Ask::Only(Tier::Tracepoint)),
            other => Err(format!("{OBSERVE_ENV}={other}: expected auto, fexit or tracepoint")),
        }
    }
}

/// The tier chosen, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub tier: Tier,
    pub why: String,
}

impl fmt::Display for Chosen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.tier {
            Tier::Fexit => write!(
                f,
                "fexit on each syscall's function ({SYSCALL_PREFIX}*): processes outside every task pay \
                 only for the calls hooked ({})",
                self.why
            ),
            Tier::Tracepoint => write!(
                f,
                "syscall tracepoints: every process's syscalls take the kernel's slow path while agentmon \
                 runs ({})",
                self.why
            ),
        }
    }
}

/// The function every `sk_NAME` program is loaded for (`monitor-ebpf` skip.rs): a
/// call seccomp answers never reaches its syscall's function.
pub const SECCOMP_FN: &str = "__secure_computing";

/// The function `fx_NAME` is attached to, or None for a program not of this tier.
pub fn target(prog: &str) -> Option<String> {
    prog.strip_prefix("fx_").map(|s| format!("{SYSCALL_PREFIX}{s}"))
}

/// What the fexit tier will load on this kernel, once [`plan`] found it fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The parameters of `__secure_computing` (its form: 1 before 6.15, 0 since).
    pub seccomp_params: usize,
    /// `fx_` programs whose syscall this kernel does not have (nothing to miss).
    pub absent: Vec<String>,
}

/// Whether fexit programs can stand in for these tracepoints on this kernel, and
/// why not: each `fx_NAME` needs its function with one argument (the saved
/// registers), unless the syscall itself is absent (`tracepoint_exists` false:
/// nothing there to miss); each `sk_NAME` its syscall's number; and the calls
/// seccomp answers need `__secure_computing` (see `monitor-ebpf` skip.rs).
pub fn plan(
    kbtf: &KernelBtf,
    progs: &[String],
    tracepoint_exists: impl Fn(&str) -> bool,
) -> Result<Plan, String> {
    let seccomp_params = match kbtf.function_params(SECCOMP_FN) {
        Some(n @ (0 | 1)) => n,
        Some(n) => return Err(format!("{SECCOMP_FN} takes {n} arguments here")),
        // Without it, calls seccomp refuses would go unseen.
        None => return Err(format!("the kernel has no function {SECCOMP_FN} (CONFIG_SECCOMP_FILTER)")),
    };
    let mut absent = Vec::new();
    for p in progs {
        if let Some(s) = p.strip_prefix("sk_")
            && super::sysnr::number(s).is_none()
        {
            return Err(format!("no syscall number is known for {s}"));
        }
        let Some(f) = target(p) else { continue };
        match kbtf.function_params(&f) {
            Some(1) => {}
            Some(n) => return Err(format!("{f} takes {n} arguments here, not the saved registers alone")),
            None if tracepoint_exists(&p.replacen("fx_", "sys_exit_", 1)) => {
                return Err(format!("the kernel has syscall {} but no function {f}", &p[3..]));
            }
            None => absent.push(p.clone()),
        }
    }
    Ok(Plan { seccomp_params, absent })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_map_to_their_syscalls_functions() {
        let want = if cfg!(target_arch = "aarch64") { "__arm64_sys_openat" } else { "__x64_sys_openat" };
        assert_eq!(target("fx_openat").as_deref(), Some(want));
        assert_eq!(target("sys_exit_openat"), None);
        assert_eq!(target("sched_process_exec"), None);
    }

    #[test]
    fn the_operator_names_a_tier_or_is_told_what_is_wrong() {
        assert_eq!(Ask::parse("auto"), Ok(Ask::Auto));
        assert_eq!(Ask::parse(""), Ok(Ask::Auto));
        assert_eq!(Ask::parse("fexit"), Ok(Ask::Only(Tier::Fexit)));
        assert_eq!(Ask::parse("tracepoint"), Ok(Ask::Only(Tier::Tracepoint)));
        let e = Ask::parse("fentry").unwrap_err();
        assert_eq!(e, "AGENTMON_OBSERVE_TIER=fentry: expected auto, fexit or tracepoint");
    }
}
