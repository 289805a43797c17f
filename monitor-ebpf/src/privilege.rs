//! Privilege-relevant calls: ptrace, bpf, the setuid/setgid family and capset; and
//! the calls against agentmon or that no task needs (kind TAMPER): signals to
//! agentmon, mounts, modules, kexec, perf, another process's memory or descriptors,
//! file handles, socket families and namespaces (clone3) refused by enforcement.
//! (Refused fcntl and ioctl requests are recorded by the task's gate.)
//! (Fileless exec is flagged on the exec event, see process.rs.)

use aya_ebpf::{helpers::generated as h, macros::btf_tracepoint, programs::BtfTracePointContext};
use monitor_common::{kind, op};

use crate::kern::{Args, Ev, conf, kread, off, on_exit, sys, tracked};

const EPERM: i64 = 1;
const EACCES: i64 = 13;

sys!(sys_exit_ptrace, fx_ptrace, sk_ptrace, op::PTRACE, kind::PTRACE, |a, ev| {
    ev.arg(0, a.get(0));
    ev.arg(1, a.get(1));
});
sys!(sys_exit_bpf, fx_bpf, sk_bpf, op::BPF, kind::BPF, |a, ev| {
    ev.arg(0, a.get(0));
});

macro_rules! ids {
    ($exit:ident, $fx:ident, $sk:ident, $op:expr) => {
        sys!($exit, $fx, $sk, $op, kind::PRIVILEGE, |a, ev| {
            ev.arg(0, a.get(0));
            ev.arg(1, a.get(1));
            ev.arg(2, a.get(2));
        });
    };
}
ids!(sys_exit_setuid, fx_setuid, sk_setuid, op::SETUID);
ids!(sys_exit_setgid, fx_setgid, sk_setgid, op::SETGID);
ids!(sys_exit_setreuid, fx_setreuid, sk_setreuid, op::SETREUID);
ids!(sys_exit_setregid, fx_setregid, sk_setregid, op::SETREGID);
ids!(sys_exit_setresuid, fx_setresuid, sk_setresuid, op::SETRESUID);
ids!(sys_exit_setresgid, fx_setresgid, sk_setresgid, op::SETRESGID);
ids!(sys_exit_setfsuid, fx_setfsuid, sk_setfsuid, op::SETFSUID);
ids!(sys_exit_setfsgid, fx_setfsgid, sk_setfsgid, op::SETFSGID);

// capset(header, data): reads the first __user_cap_data_struct (effective,
// permitted, inheritable; low 32 capabilities).
sys!(sys_exit_capset, fx_capset, sk_capset, op::CAPSET, kind::PRIVILEGE, |a, ev| {
    let mut d = [0u32; 3];
    if unsafe { h::bpf_probe_read_user((&raw mut d).cast(), 12, a.get(1) as *const _) } == 0 {
        ev.arg(0, d[0] as u64);
        ev.arg(1, d[1] as u64);
        ev.arg(2, d[2] as u64);
    }
});

macro_rules! never {
    ($exit:ident, $fx:ident, $sk:ident, $op:expr) => {
        sys!($exit, $fx, $sk, $op, kind::TAMPER, |a, ev| {
            ev.arg(0, a.get(0));
            ev.arg(1, a.get(1));
            ev.arg(2, a.get(2));
        });
    };
}
// Rare, and never part of a task's work: every call (refused or not) is reported.
never!(sys_exit_mount, fx_mount, sk_mount, op::MOUNT);
// umount2(2) is the `umount` syscall to the tracepoints.
never!(sys_exit_umount, fx_umount, sk_umount, op::UMOUNT2);
never!(sys_exit_pivot_root, fx_pivot_root, sk_pivot_root, op::PIVOT_ROOT);
never!(sys_exit_fsopen, fx_fsopen, sk_fsopen, op::FSOPEN);
never!(sys_exit_move_mount, fx_move_mount, sk_move_mount, op::MOVE_MOUNT);
never!(sys_exit_init_module, fx_init_module, sk_init_module, op::INIT_MODULE);
never!(sys_exit_finit_module, fx_finit_module, sk_finit_module, op::FINIT_MODULE);
never!(sys_exit_delete_module, fx_delete_module, sk_delete_module, op::DELETE_MODULE);
never!(sys_exit_kexec_load, fx_kexec_load, sk_kexec_load, op::KEXEC_LOAD);
never!(sys_exit_kexec_file_load, fx_kexec_file_load, sk_kexec_file_load, op::KEXEC_FILE_LOAD);
never!(sys_exit_perf_event_open, fx_perf_event_open, sk_perf_event_open, op::PERF_EVENT_OPEN);
never!(sys_exit_process_vm_readv, fx_process_vm_readv, sk_process_vm_readv, op::PROCESS_VM_READV);
never!(sys_exit_process_vm_writev, fx_process_vm_writev, sk_process_vm_writev, op::PROCESS_VM_WRITEV);
never!(sys_exit_pidfd_getfd, fx_pidfd_getfd, sk_pidfd_getfd, op::PIDFD_GETFD);

on_exit!(
    /// syscalls:sys_exit_open_by_handle_at(ret); arguments (mount_fd, handle, flags):
    /// every call is a TAMPER event; the file it opened is an open event too, its path
    /// read from the new file (a handle names none), judged like any other open.
    sys_exit_open_by_handle_at,
    fx_open_by_handle_at,
    sk_open_by_handle_at,
    |ret| {
        let _ = tamper_if(ret, op::OPEN_BY_HANDLE_AT, |_, _| true);
        if ret >= 0 && crate::kern::is_tracked() {
            let a = Args::current();
            let _ = crate::file::open_exit(ret, op::OPEN_BY_HANDLE_AT, crate::kern::NO_BASE as u64, 0, a.get(2), 0);
        }
    }
);
never!(sys_exit_name_to_handle_at, fx_name_to_handle_at, sk_name_to_handle_at, op::NAME_TO_HANDLE_AT);
// The new mount API and entering another namespace.
never!(sys_exit_open_tree, fx_open_tree, sk_open_tree, op::OPEN_TREE);
never!(sys_exit_fsconfig, fx_fsconfig, sk_fsconfig, op::FSCONFIG);
never!(sys_exit_fsmount, fx_fsmount, sk_fsmount, op::FSMOUNT);
never!(sys_exit_fspick, fx_fspick, sk_fspick, op::FSPICK);
never!(sys_exit_mount_setattr, fx_mount_setattr, sk_mount_setattr, op::MOUNT_SETATTR);
never!(sys_exit_setns, fx_setns, sk_setns, op::SETNS);
// Pages a process serves itself (the tool for widening a kernel race).
never!(sys_exit_userfaultfd, fx_userfaultfd, sk_userfaultfd, op::USERFAULTFD);

/// Emits a TAMPER event of `o` with the call's first three arguments when `when`
/// holds for (return value, arguments).
#[inline(always)]
fn tamper_if(ret: i64, o: u16, when: impl Fn(i64, &Args) -> bool) -> Option<()> {
    let t = tracked()?;
    let a = Args::current();
    if !when(ret, &a) {
        return None;
    }
    let mut ev = Ev::new(kind::TAMPER, o, &t, ret)?;
    ev.arg(0, a.get(0));
    ev.arg(1, a.get(1));
    ev.arg(2, a.get(2));
    ev.emit();
    Some(())
}

/// A handler reporting only the refusals (EPERM) of its call, as a TAMPER event
/// with the call's first three arguments.
macro_rules! refused {
    ($(#[doc = $doc:expr])* $exit:ident, $fx:ident, $sk:ident, $op:expr) => {
        on_exit!($(#[doc = $doc])* $exit, $fx, $sk, |ret| {
            let _ = tamper_if(ret, $op, |ret, _| ret == -EPERM);
        });
    };
}

/// tp_btf/signal_generate(int sig, struct kernel_siginfo *info, struct task_struct
/// *task, int group, int result): a tracked task's signal that reaches any thread
/// of agentmon, whichever call made it (kill to a pid, a thread, a process group or
/// 0, tkill, tgkill, pidfd_send_signal, rt_sigqueueinfo). Reads task->tgid.
/// SIGCHLD is an exiting child's notice to its parent (agentmon is the root's).
/// Refused signals generate nothing: the sys_exit handlers below report those.
#[btf_tracepoint(function = "signal_generate")]
pub fn signal_generate(ctx: BtfTracePointContext) -> i32 {
    let _ = try_signal(&ctx);
    0
}

const SIGCHLD: u64 = 17;

fn try_signal(ctx: &BtfTracePointContext) -> Option<()> {
    let t = tracked()?;
    let task: u64 = ctx.arg(2);
    let target: u32 = unsafe { kread(task + off!(task_tgid)) };
    let sig: u64 = ctx.arg::<u64>(0) & 0xffff_ffff;
    if target != conf!(self_tgid) || sig == SIGCHLD {
        return None;
    }
    let mut ev = Ev::new(kind::TAMPER, op::SIGNAL_GENERATE, &t, 0)?;
    ev.arg(0, target as u64);
    ev.arg(1, sig);
    ev.arg(2, ctx.arg::<u64>(3) & 0xffff_ffff);
    ev.emit();
    Some(())
}

refused!(
    /// syscalls:sys_exit_kill(ret); arguments (pid, sig): refused (one that reaches
    /// agentmon is reported where it is generated, above).
    sys_exit_kill,
    fx_kill,
    sk_kill,
    op::KILL
);

refused!(
    /// syscalls:sys_exit_tkill(ret); arguments (tid, sig): refused.
    sys_exit_tkill,
    fx_tkill,
    sk_tkill,
    op::TKILL
);

refused!(
    /// syscalls:sys_exit_tgkill(ret); arguments (tgid, tid, sig): refused.
    sys_exit_tgkill,
    fx_tgkill,
    sk_tgkill,
    op::TGKILL
);

refused!(
    /// syscalls:sys_exit_pidfd_send_signal(ret); arguments (pidfd, sig, info, flags):
    /// the target is behind a descriptor, so only refusals are reported.
    sys_exit_pidfd_send_signal,
    fx_pidfd_send_signal,
    sk_pidfd_send_signal,
    op::PIDFD_SEND_SIGNAL
);

on_exit!(
    /// syscalls:sys_exit_socket(ret); arguments (family, type, protocol): a socket
    /// family enforcement refused (unix, raw, packet).
    sys_exit_socket,
    fx_socket,
    sk_socket,
    |ret| {
        let _ = tamper_if(ret, op::SOCKET, |ret, _| ret == -EPERM || ret == -EACCES);
    }
);

refused!(
    /// syscalls:sys_exit_memfd_create(ret); arguments (name, flags): a refused memfd
    /// (enforced tasks may only make ones sealed against execution).
    sys_exit_memfd_create,
    fx_memfd_create,
    sk_memfd_create,
    op::MEMFD_CREATE
);

on_exit!(
    /// syscalls:sys_exit_io_uring_setup(ret); arguments (entries, params): a refused
    /// ring (a created one is reported by the io_uring tracepoints).
    sys_exit_io_uring_setup,
    fx_io_uring_setup,
    sk_io_uring_setup,
    |ret| {
        let _ = tamper_if(ret, op::IOURING_SETUP_CALL, |ret, _| ret < 0);
    }
);

refused!(
    /// syscalls:sys_exit_unshare(ret); arguments (flags): a new namespace refused.
    sys_exit_unshare,
    fx_unshare,
    sk_unshare,
    op::UNSHARE
);

refused!(
    /// syscalls:sys_exit_clone(ret); arguments (flags, ...): a child in a new namespace
    /// refused (a child's own return, 0, is not one).
    sys_exit_clone,
    fx_clone,
    sk_clone,
    op::CLONE
);

// include/uapi/linux/stat.h
const S_IFMT: u64 = 0o170000;
const S_IFCHR: u64 = 0o020000;
const S_IFBLK: u64 = 0o060000;

#[inline(always)]
fn device(mode: u64) -> bool {
    matches!(mode & S_IFMT, S_IFCHR | S_IFBLK)
}

on_exit!(
    /// syscalls:sys_exit_mknod(ret); arguments (path, mode, dev): a device node, made
    /// or refused (a door to a device, whatever the path).
    sys_exit_mknod,
    fx_mknod,
    sk_mknod,
    |ret| {
        let _ = tamper_if(ret, op::MKNOD, |_, a| device(a.get(1)));
    }
);

on_exit!(
    /// syscalls:sys_exit_mknodat(ret); arguments (dfd, path, mode, dev): as mknod.
    sys_exit_mknodat,
    fx_mknodat,
    sk_mknodat,
    |ret| {
        let _ = tamper_if(ret, op::MKNODAT, |_, a| device(a.get(2)));
    }
);

refused!(
    /// syscalls:sys_exit_seccomp(ret); arguments (op, flags, args): a filter with a
    /// listener of the task's own, refused (it could outrank agentmon's gate once
    /// that is gone).
    sys_exit_seccomp,
    fx_seccomp,
    sk_seccomp,
    op::SECCOMP
);

refused!(
    /// syscalls:sys_exit_socketpair(ret); arguments (family, type, protocol, sv): a
    /// datagram pair refused (it could send to any unix socket path).
    sys_exit_socketpair,
    fx_socketpair,
    sk_socketpair,
    op::SOCKETPAIR
);

const ENOSYS: i64 = 38;
// include/uapi/linux/sched.h: the namespaces, and a child started in another cgroup.
const CLONE_NEWTIME: u64 = 0x80;
const CLONE_NEWNS: u64 = 0x0002_0000;
const CLONE_NEWCGROUP: u64 = 0x0200_0000;
const CLONE_NEWUTS: u64 = 0x0400_0000;
const CLONE_NEWIPC: u64 = 0x0800_0000;
const CLONE_NEWUSER: u64 = 0x1000_0000;
const CLONE_NEWPID: u64 = 0x2000_0000;
const CLONE_NEWNET: u64 = 0x4000_0000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
const CLONE3_ATTEMPTS: u64 = CLONE_NEWTIME
    | CLONE_NEWNS
    | CLONE_NEWCGROUP
    | CLONE_NEWUTS
    | CLONE_NEWIPC
    | CLONE_NEWUSER
    | CLONE_NEWPID
    | CLONE_NEWNET
    | CLONE_INTO_CGROUP;

on_exit!(
    /// syscalls:sys_exit_clone3(ret); arguments (uargs, size): enforcement answers every
    /// clone3 ENOSYS (its flags are in memory a filter cannot read; the C library falls
    /// back to clone), so only a refused one asking for a new namespace or another
    /// cgroup is an attempt. Reads clone_args.flags (the struct's first field) from the
    /// caller's memory; flags it cannot read are reported as all ones.
    sys_exit_clone3,
    fx_clone3,
    sk_clone3,
    |ret| {
        let _ = try_clone3(ret);
    }
);

fn try_clone3(ret: i64) -> Option<()> {
    let t = tracked()?;
    if ret != -ENOSYS {
        return None;
    }
    let a = Args::current();
    let mut flags = 0u64;
    if unsafe { h::bpf_probe_read_user((&raw mut flags).cast(), 8, a.get(0) as *const _) } != 0 {
        flags = u64::MAX;
    }
    if flags & CLONE3_ATTEMPTS == 0 {
        return None;
    }
    let mut ev = Ev::new(kind::TAMPER, op::CLONE3, &t, ret)?;
    ev.arg(0, flags);
    ev.arg(1, a.get(1));
    ev.emit();
    Some(())
}
