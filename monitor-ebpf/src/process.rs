//! Process lifecycle: fork (tracking inherited in the kernel), exec, exit, and
//! failed execs.

use aya_ebpf::{helpers::generated as h, macros::btf_tracepoint, programs::BtfTracePointContext};
use monitor_common::{ARGV_MAX, Tracked, kind, op, pflags};

use crate::{
    EXEC_OK, TRACKED,
    kern::{
        AT_FDCWD, Args, Ev, NO_BASE, count, dir_base, fd_file, file_path, kptr, kread, mark, off, on_exit,
        pid_tgid, tracked,
    },
};

/// tp_btf/sched_process_fork(struct task_struct *parent, struct task_struct *child).
/// Reads child->tgid and child->start_time. A tracked parent's new process (not a
/// thread) is tracked under the same task before it can run a single instruction.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    let _ = try_fork(&ctx);
    0
}

fn try_fork(ctx: &BtfTracePointContext) -> Option<()> {
    let t = tracked()?;
    let child: u64 = ctx.arg(1);
    let child_tgid: u32 = unsafe { kread(child + off!(task_tgid)) };
    if child_tgid as u64 == pid_tgid() >> 32 {
        return None; // a new thread of a tracked process: already covered by its tgid
    }
    let start: u64 = unsafe { kread(child + off!(task_start_time)) };
    let entry = Tracked { task: t.task, flags: t.flags, start_ns: start };
    if TRACKED.insert(&child_tgid, &entry, 0).is_err() {
        // The child escaped tracking (map full): count it, userspace raises a loss
        // event; the LSM hooks hold it by its cgroup from now on.
        count(kind::FORK, true);
        if let Some(e) = crate::ESCAPED.get_ptr_mut(0) {
            unsafe { core::ptr::write_volatile(e, 1) };
        }
        return None;
    }
    mark(child_tgid, true);
    let mut ev = Ev::new(kind::FORK, op::FORK, &t, 0)?;
    ev.arg(0, child_tgid as u64);
    ev.arg(1, start);
    ev.emit();
    Some(())
}

/// tp_btf/sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm).
/// Reads p->start_time, bprm->file (the resolved executable; nlink 0 = fileless),
/// bprm->filename, bprm->fdpath and bprm->interp (a program run by descriptor),
/// p->mm->arg_start..arg_end (argv, now in the new image), and the
/// inode type of fds 0 and 1.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    let _ = try_exec(&ctx);
    0
}

fn try_exec(ctx: &BtfTracePointContext) -> Option<()> {
    let tgid = (pid_tgid() >> 32) as u32;
    // Not gated by the bitmap: a root inserted by userspace execs before its bit is set.
    let tp = TRACKED.get_ptr_mut(&tgid)?;
    mark(tgid, true);
    let p: u64 = ctx.arg(0);
    let bprm: u64 = ctx.arg(2);
    // An approved exec (BPF LSM tier) has run: its approval is spent. Keyed by the
    // thread that called it, which exec has just made the leader.
    let old_tid: u32 = ctx.arg(1);
    let _ = EXEC_OK.remove(&old_tid);
    let t = unsafe {
        // After exec the caller is the group leader; its start time keys the process.
        // Userspace inserts a task's root without one, so fill it in here.
        (*tp).start_ns = kread(p + off!(task_start_time));
        *tp
    };
    let mut ev = Ev::new(kind::EXEC, op::EXEC, &t, 0)?;
    unsafe {
        let file = kptr(bprm, off!(bprm_file));
        // A file with no links (a memfd, a deleted file) run: fileless.
        let unlinked = |f: u64| {
            let inode = kptr(f, off!(file_inode));
            inode != 0 && kread::<u32>(inode + off!(inode_nlink)) == 0
        };
        if unlinked(file) {
            ev.flag(pflags::FILELESS);
        }
        ev.operand_path(1, file_path(file));
        // The name the program was run by, resolved. Run by descriptor (execveat),
        // the kernel names it `/dev/fd/N[/NAME]` itself (bprm->fdpath; a name the
        // caller passes that reads so is only a name): an ELF image is the file it
        // mapped (fd N may be closed, or another file by now); a script is what its
        // interpreter reads through fd N, which stays open.
        let name = kptr(bprm, off!(bprm_filename));
        let fdpath = kptr(bprm, off!(bprm_fdpath));
        let (s, base) = if fdpath != 0 && fdpath == name {
            ev.flag(pflags::BY_DESCRIPTOR);
            if kptr(bprm, off!(bprm_interp)) == name {
                (0, file_path(file))
            } else {
                match by_descriptor(name) {
                    Some((fd, rest)) => {
                        // bprm->file is the interpreter by now: a script in a memfd
                        // is fileless by its own descriptor.
                        let f = fd_file(fd);
                        if rest == 0 && unlinked(f) {
                            ev.flag(pflags::FILELESS);
                        }
                        (rest, file_path(f))
                    }
                    None => (0, 0),
                }
            }
        } else {
            (name, dir_base(AT_FDCWD))
        };
        ev.operand_under(2, s, base);
        // A shell whose stdin/stdout is a socket is how reverse shells look.
        for (fd, flag) in [(0, pflags::STDIN_SOCKET), (1, pflags::STDOUT_SOCKET)] {
            let inode = kptr(fd_file(fd), off!(file_inode));
            let mode: u16 = if inode == 0 { 0 } else { kread(inode + off!(inode_mode)) };
            if mode & 0o170000 == 0o140000 {
                ev.flag(flag);
            }
        }
        let mm = kptr(p, off!(task_mm));
        let a0: u64 = if mm == 0 { 0 } else { kread(mm + off!(mm_arg_start)) };
        let a1: u64 = if mm == 0 { 0 } else { kread(mm + off!(mm_arg_end)) };
        if a1 > a0 {
            let n = a1 - a0;
            let n = ev.put_extra_user(a0, if n > ARGV_MAX as u64 { ARGV_MAX as u64 } else { n });
            ev.arg(0, n);
        }
    }
    ev.emit();
    Some(())
}

/// `/dev/fd/N` or `/dev/fd/N/NAME` as the kernel writes them (N below 2^31): N, and
/// NAME's start (0 for the first form: the descriptor's file itself).
#[inline(always)]
fn by_descriptor(name: u64) -> Option<(i64, u64)> {
    const PREFIX: u64 = u64::from_ne_bytes(*b"/dev/fd/");
    let mut b = [0u8; 20];
    let r = unsafe { h::bpf_probe_read_kernel_str(b.as_mut_ptr().cast(), 20, name as *const _) };
    if r < 10 || u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) != PREFIX {
        return None;
    }
    // At most 10 digits, then the end or a `/`.
    let (mut fd, mut i) = (0i64, 8usize);
    while i < 18 {
        match b.get(i) {
            Some(c) if c.is_ascii_digit() => fd = fd * 10 + (*c - b'0') as i64,
            _ => break,
        }
        i += 1;
    }
    match b.get(i) {
        _ if i == 8 => None,
        Some(0) => Some((fd, 0)),
        Some(b'/') => Some((fd, name + i as u64 + 1)),
        _ => None,
    }
}

/// tp_btf/sched_process_exit(struct task_struct *p, bool group_dead) (group_dead since
/// 6.16; the loader loads this or [`sched_process_exit_v1`] by the prototype).
/// Reads p->exit_code. Emitted once per process, when its last thread exits; the
/// process is then untracked.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    let group_dead: u64 = ctx.arg(1);
    if group_dead & 0xff != 0 {
        let _ = try_exit(ctx.arg(0));
    }
    0
}

/// tp_btf/sched_process_exit(struct task_struct *p), before 6.16: reads
/// p->signal->live (do_exit has counted this thread out of it before the
/// tracepoint: 0 when it is the last one) and p->exit_code. Two threads exiting at
/// once may both read 0; only the one that untracks the process reports its exit.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit_v1(ctx: BtfTracePointContext) -> i32 {
    let p: u64 = ctx.arg(0);
    let signal = unsafe { kptr(p, off!(task_signal)) };
    let live: i32 = if signal == 0 { 0 } else { unsafe { kread(signal + off!(signal_live)) } };
    if live == 0 {
        let _ = try_exit(p);
    }
    0
}

fn try_exit(p: u64) -> Option<()> {
    let t = tracked()?;
    let tgid = (pid_tgid() >> 32) as u32;
    mark(tgid, false);
    TRACKED.remove(&tgid).ok()?;
    let code: i32 = unsafe { kread(p + off!(task_exit_code)) };
    let mut ev = Ev::new(kind::EXIT, op::EXIT, &t, 0)?;
    ev.arg(0, code as u32 as u64);
    ev.emit();
    Some(())
}

on_exit!(
    /// syscalls:sys_exit_execve(ret); arguments (filename, argv, envp). A failed exec
    /// is reported here (a successful one by sched_process_exec).
    sys_exit_execve,
    fx_execve,
    sk_execve,
    |ret| {
        exec_failed(ret, op::EXECVE);
    }
);

on_exit!(
    /// syscalls:sys_exit_execveat(ret); arguments (fd, filename, argv, envp, flags).
    sys_exit_execveat,
    fx_execveat,
    sk_execveat,
    |ret| {
        exec_failed(ret, op::EXECVEAT);
    }
);

const EACCES: i64 = 13;

fn exec_failed(ret: i64, o: u16) -> Option<()> {
    if ret >= 0 {
        return None;
    }
    if ret == -EACCES {
        // The LSM tier's file_open may have refused the program or its interpreter:
        // no open's exit is to take that, nor a later open to be labelled by it.
        let _ = crate::REFUSED_OPEN.remove(&(crate::kern::pid_tgid() as u32));
    }
    let t = tracked()?;
    let a = Args::current();
    let (dfd, name) = if o == op::EXECVE { (AT_FDCWD, a.get(0)) } else { (a.get(0) as i64, a.get(1)) };
    let mut ev = Ev::new(kind::EXEC, o, &t, ret)?;
    ev.operand(1, 0, false, NO_BASE);
    ev.operand(2, name, true, dfd);
    ev.emit();
    Some(())
}
