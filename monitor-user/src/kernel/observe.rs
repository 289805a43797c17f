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

/// The x86_64 numbers of the hooked syscalls, by the name their programs carry
/// (the tracepoints' names: `umount` is umount2's).
#[cfg(target_arch = "x86_64")]
const NUMBERS: &[(&str, libc::c_long)] = &[
    ("bind", libc::SYS_bind),
    ("bpf", libc::SYS_bpf),
    ("capset", libc::SYS_capset),
    ("chmod", libc::SYS_chmod),
    ("chown", libc::SYS_chown),
    ("clone", libc::SYS_clone),
    ("clone3", libc::SYS_clone3),
    ("connect", libc::SYS_connect),
    ("creat", libc::SYS_creat),
    ("delete_module", libc::SYS_delete_module),
    ("execve", libc::SYS_execve),
    ("execveat", libc::SYS_execveat),
    ("fchmod", libc::SYS_fchmod),
    ("fchmodat", libc::SYS_fchmodat),
    ("fchmodat2", libc::SYS_fchmodat2),
    ("fchown", libc::SYS_fchown),
    ("fchownat", libc::SYS_fchownat),
    ("finit_module", libc::SYS_finit_module),
    ("fremovexattr", libc::SYS_fremovexattr),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsetxattr", libc::SYS_fsetxattr),
    ("fsmount", libc::SYS_fsmount),
    ("fsopen", libc::SYS_fsopen),
    ("fspick", libc::SYS_fspick),
    ("ftruncate", libc::SYS_ftruncate),
    ("init_module", libc::SYS_init_module),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("kexec_load", libc::SYS_kexec_load),
    ("kill", libc::SYS_kill),
    ("lchown", libc::SYS_lchown),
    ("link", libc::SYS_link),
    ("linkat", libc::SYS_linkat),
    ("listen", libc::SYS_listen),
    ("lremovexattr", libc::SYS_lremovexattr),
    ("lsetxattr", libc::SYS_lsetxattr),
    ("memfd_create", libc::SYS_memfd_create),
    ("mkdir", libc::SYS_mkdir),
    ("mkdirat", libc::SYS_mkdirat),
    ("mknod", libc::SYS_mknod),
    ("mknodat", libc::SYS_mknodat),
    ("mount", libc::SYS_mount),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("move_mount", libc::SYS_move_mount),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("open", libc::SYS_open),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("open_tree", libc::SYS_open_tree),
    ("openat", libc::SYS_openat),
    ("openat2", libc::SYS_openat2),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("pidfd_send_signal", libc::SYS_pidfd_send_signal),
    ("pivot_root", libc::SYS_pivot_root),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("ptrace", libc::SYS_ptrace),
    ("removexattr", libc::SYS_removexattr),
    ("rename", libc::SYS_rename),
    ("renameat", libc::SYS_renameat),
    ("renameat2", libc::SYS_renameat2),
    ("rmdir", libc::SYS_rmdir),
    ("seccomp", libc::SYS_seccomp),
    ("sendmmsg", libc::SYS_sendmmsg),
    ("sendmsg", libc::SYS_sendmsg),
    ("sendto", libc::SYS_sendto),
    ("setfsgid", libc::SYS_setfsgid),
    ("setfsuid", libc::SYS_setfsuid),
    ("setgid", libc::SYS_setgid),
    ("setns", libc::SYS_setns),
    ("setregid", libc::SYS_setregid),
    ("setresgid", libc::SYS_setresgid),
    ("setresuid", libc::SYS_setresuid),
    ("setreuid", libc::SYS_setreuid),
    ("setuid", libc::SYS_setuid),
    ("setxattr", libc::SYS_setxattr),
    ("socket", libc::SYS_socket),
    ("socketpair", libc::SYS_socketpair),
    ("symlink", libc::SYS_symlink),
    ("symlinkat", libc::SYS_symlinkat),
    ("tgkill", libc::SYS_tgkill),
    ("tkill", libc::SYS_tkill),
    ("truncate", libc::SYS_truncate),
    ("umount", libc::SYS_umount2),
    ("unlink", libc::SYS_unlink),
    ("unlinkat", libc::SYS_unlinkat),
    ("unshare", libc::SYS_unshare),
    ("userfaultfd", libc::SYS_userfaultfd),
];

/// The number of syscall `name`, for the `sk_` program's slot.
#[cfg(target_arch = "x86_64")]
pub fn number(name: &str) -> Option<u32> {
    NUMBERS.iter().find(|(n, _)| *n == name).map(|(_, nr)| *nr as u32)
}

#[cfg(not(target_arch = "x86_64"))]
pub fn number(_: &str) -> Option<u32> {
    None
}

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
            && number(s).is_none()
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
    #[cfg(target_arch = "x86_64")]
    fn skipped_calls_are_found_by_their_number() {
        assert_eq!(number("openat"), Some(257));
        // The tracepoint `umount` is umount2 (166); x86_64 has no umount.
        assert_eq!(number("umount"), Some(166));
        assert_eq!(number("no_such_call"), None);
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
