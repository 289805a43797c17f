//! The BPF LSM tier: an enforced task's file scope, executions and signals checked
//! in the kernel's security hooks, before the effect (see monitor_common::lsm for
//! the grants). Loaded only where the kernel runs BPF LSM; elsewhere Landlock,
//! seccomp and the gate enforce the same scope.
//!
//! Every hook first asks whether the caller is tracked (the byte map, as every
//! sensor does) and whether its task is enforced on this tier (`LSM_TASK`); other
//! processes pay that and nothing else. A denial returns -EACCES for files and
//! -EPERM for signals, as Landlock does, so the syscall's own event reports it
//! `denied` on either tier.
//!
//! A right is looked for on the object and its ancestors, crossing mounts up to the
//! namespace root (a grant on `/srv/**` covers a file system mounted beneath it).
//! Agentmon's own files are refused on that path and on the file system's own
//! parent chain, which a bind mount of a protected directory cannot hide.

use core::ffi::c_void;

use aya_ebpf::{helpers::generated as h, macros::lsm, programs::LsmContext};
use monitor_common::lsm::{FsKey, LsmTask, TruncMark, lflags, right};

use crate::{
    ESCAPED, EXEC_OK, FS_RULES, LSM_TASK, NET_TASK, TRACKED, TRUNC_OPEN,
    kern::{
        Args, Pos, WALK_LIMIT, bload, conf, ident, is_tracked, kptr, kread, mount_hop, off, pid_tgid,
        task_btf, tracked,
    },
};

mod open;
pub mod state;

pub use open::SensUp;

const EACCES: i32 = -13;
const EPERM: i32 = -1;
/// include/linux/fs.h
/// include/uapi/linux/stat.h
const S_IFMT: u16 = 0o170000;
const S_IFBLK: u16 = 0o060000;
const S_IFCHR: u16 = 0o020000;
const FMODE_READ: u32 = 0x1;
const FMODE_WRITE: u32 = 0x2;
/// include/uapi/linux/fs.h
const RENAME_EXCHANGE: u32 = 1 << 1;

/// The caller's task on this tier, or None (untracked, or not enforced here).
#[inline(always)]
fn enforced() -> Option<(u32, LsmTask)> {
    let task = match tracked() {
        Some(t) => t.task,
        None => escaped()?,
    };
    let l = unsafe { LSM_TASK.get(&task) }.copied()?;
    Some((task, l))
}

/// The task of an untracked caller inside an enforced task's cgroup (NET_TASK:
/// cgroup id -> cookie). Such a process exists only once a fork escaped tracking
/// (TRACKED full), so until then this costs one array read; after, it is held to
/// the rules of the task whose cgroup it runs in (it cannot leave: cgroupfs is out
/// of every scope).
#[inline(always)]
fn escaped() -> Option<u32> {
    if ESCAPED.get(0).copied().unwrap_or(0) == 0 {
        return None;
    }
    let cg = unsafe { h::bpf_get_current_cgroup_id() };
    unsafe { NET_TASK.get(&cg) }.copied()
}

/// The task of process `p` (a `task_struct *`) found by its cgroup, once a fork has
/// escaped tracking (see [`escaped`]): task -> cgroups -> dfl_cgrp -> kn -> id.
#[inline(always)]
fn escaped_task_of(p: u64) -> Option<u32> {
    if ESCAPED.get(0).copied().unwrap_or(0) == 0 {
        return None;
    }
    let cg = unsafe {
        let cgrp = kptr(kptr(p, off!(task_cgroups)), off!(css_set_dfl_cgrp));
        kread::<u64>(kptr(cgrp, off!(cgroup_kn)) + off!(kernfs_node_id))
    };
    if cg == 0 {
        return None;
    }
    unsafe { NET_TASK.get(&cg) }.copied()
}

/// The grants an enforced task's file calls are checked against (its rules), or
/// None: untracked, not enforced here, or files not enforced for it.
#[inline(always)]
fn file_rules() -> Option<u32> {
    let (_, l) = enforced()?;
    (l.flags & lflags::FILES != 0).then_some(l.rules)
}

/// The hook's answer: 0, or EACCES when refused.
#[inline(always)]
fn verdict(ok: bool) -> i32 {
    if ok { 0 } else { EACCES }
}

/// State of a climb. It lives in a map, not on the stack, on purpose (as the path
/// walk's, kern::Ctl): values loaded from a map are unknown to the verifier, so the
/// loop's states converge at once; kept on the stack, each combination of flags
/// would be a state of its own, at each of the places a climb is inlined, which
/// newer verifiers (6.12) explore until they time out. The map is the thread's
/// (state.rs), not the CPU's: the kernel may preempt a hook mid-climb.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Climb {
    pos: Pos,
    /// Task whose grants count (0: look for protected entries only).
    task: u32,
    /// The right looked for.
    want: u32,
    /// 1 once an ancestor carried `want`.
    granted: u32,
    /// 1 once an ancestor is agentmon's own.
    protected: u32,
    /// Stop as soon as `want` is found (no protected check needed).
    stop: u32,
    /// 1 if the object is a pseudo file (pipe, socket, memfd): on no path at all.
    pseudo: u32,
    /// 1 once the climb reached the top (else the walk limit cut it short).
    done: u32,
    _pad: u32,
}

/// Rights of (`task`, `dentry`), 0 if none.
#[inline(always)]
fn rights(task: u32, dentry: u64) -> u32 {
    let Some((dev, ino)) = ident(dentry) else { return 0 };
    unsafe { FS_RULES.get(&FsKey { ino, dev, task }) }.copied().unwrap_or(0)
}

/// One step: checks the current dentry, then moves to its parent (or out of its
/// mount). Returns 1 to stop the loop.
extern "C" fn climb_step(_i: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = state::state(false) else { return 1 };
    let st = unsafe { &raw mut (*s).climb };
    unsafe {
        let dentry = (*st).pos.dentry;
        let task = (*st).task;
        // The task's own rights here: grants, or PROTECTED on a program held for
        // approval (what the approver sees must be what runs).
        let own = if task != 0 { rights(task, dentry) } else { 0 };
        if own & (*st).want != 0 {
            (*st).granted = 1;
            if (*st).stop != 0 {
                (*st).done = 1;
                return 1;
            }
        }
        if (*st).stop == 0 && (own | rights(0, dentry)) & right::PROTECTED != 0 {
            (*st).protected = 1;
            (*st).done = 1;
            return 1;
        }
        // Top of this mount: on to its mountpoint in the parent mount.
        match mount_hop(&raw mut (*st).pos) {
            Some(true) => return 0,
            Some(false) => {
                (*st).done = 1;
                return 1;
            }
            None => {}
        }
        let parent = kptr(dentry, off!(dentry_parent));
        if parent == 0 || parent == dentry {
            // The file system's root; or, not being a mount root, a pseudo file.
            if (*st).pos.vfsmnt != 0 && parent == dentry {
                (*st).pseudo = 1;
            }
            (*st).done = 1;
            return 1;
        }
        (*st).pos.dentry = parent;
        0
    }
}

/// Climbs from `dentry` (in mount `vfsmnt`, or 0 to stay in the file system).
#[inline(always)]
fn climb(task: u32, want: u32, stop: bool, dentry: u64, vfsmnt: u64) -> Climb {
    let start = Climb {
        pos: Pos { dentry, vfsmnt, mnt: if vfsmnt != 0 { vfsmnt - off!(mount_mnt) } else { 0 } },
        task,
        want,
        granted: 0,
        protected: 0,
        stop: stop as u32,
        pseudo: 0,
        done: 0,
        _pad: 0,
    };
    // No storage for this thread (no memory): the start, which grants nothing.
    let Some(s) = state::state(true) else { return start };
    let st = unsafe { &raw mut (*s).climb };
    unsafe {
        core::ptr::write_volatile(st, start);
        if dentry != 0 {
            h::bpf_loop(WALK_LIMIT, climb_step as *mut c_void, core::ptr::null_mut(), 0);
        }
        core::ptr::read_volatile(st)
    }
}

/// May `task` change what is at `dentry` (in mount `vfsmnt`, 0 if unknown) with
/// `want`? Granted on the way up, and agentmon's own neither on the way up nor on
/// the file system's own parent chain. A climb cut short by the walk limit is a no.
#[inline(always)]
fn may_change(task: u32, want: u32, dentry: u64, vfsmnt: u64) -> bool {
    let up = climb(task, want, false, dentry, vfsmnt);
    // want 0: no grant needed (one was found on the object itself), only no
    // protected ancestor.
    if (want != 0 && up.granted == 0) || up.protected != 0 || up.done == 0 {
        return false;
    }
    if vfsmnt == 0 {
        return true;
    }
    let fs = climb(0, 0, false, dentry, 0);
    fs.protected == 0 && fs.done != 0
}

#[inline(always)]
fn path_parts(path: u64) -> (u64, u64) {
    unsafe { (kptr(path, off!(path_dentry)), kptr(path, off!(path_mnt))) }
}

/// The verdict for a change at `path` (a `struct path *`: the object itself, or the
/// directory a name is made in) needing `want`.
#[inline(always)]
fn at_path(want: u32, path: u64) -> i32 {
    let Some(rules) = file_rules() else { return 0 };
    let (d, m) = path_parts(path);
    verdict(may_change(rules, want, d, m))
}

/// lsm/path_mknod(const struct path *dir, struct dentry *dentry, umode_t, unsigned):
/// every create, open(O_CREAT) included (may_o_create).
#[lsm(hook = "path_mknod")]
pub fn path_mknod(ctx: LsmContext) -> i32 {
    let Some(rules) = file_rules() else { return 0 };
    let mode: u32 = ctx.arg(2);
    let kind = (mode as u16) & S_IFMT;
    if kind == S_IFBLK || kind == S_IFCHR {
        // A device node in the scope would be a door to the device.
        return EPERM;
    }
    let (d, m) = path_parts(ctx.arg(0));
    verdict(may_change(rules, right::WRITE, d, m))
}

/// lsm/path_mkdir(const struct path *dir, struct dentry *dentry, umode_t).
#[lsm(hook = "path_mkdir")]
pub fn path_mkdir(ctx: LsmContext) -> i32 {
    at_path(right::WRITE, ctx.arg(0))
}

/// lsm/path_symlink(const struct path *dir, struct dentry *dentry, const char *).
#[lsm(hook = "path_symlink")]
pub fn path_symlink(ctx: LsmContext) -> i32 {
    at_path(right::WRITE, ctx.arg(0))
}

/// lsm/path_unlink(const struct path *dir, struct dentry *dentry).
#[lsm(hook = "path_unlink")]
pub fn path_unlink(ctx: LsmContext) -> i32 {
    removal(ctx.arg(0), ctx.arg(1))
}

/// lsm/path_rmdir(const struct path *dir, struct dentry *dentry).
#[lsm(hook = "path_rmdir")]
pub fn path_rmdir(ctx: LsmContext) -> i32 {
    removal(ctx.arg(0), ctx.arg(1))
}

/// REMOVE is looked for from the name removed up (a delete scope may be one file).
#[inline(always)]
fn removal(dir: u64, victim: u64) -> i32 {
    let Some(rules) = file_rules() else { return 0 };
    verdict(may_remove(rules, dir, victim))
}

/// May `task` remove the name `victim` from directory `dir` (a `struct path *`)?
/// REMOVE on `dir` or above it (a `DIR/**` delete scope: not DIR itself), or
/// REMOVE_EXACT on the name itself; never agentmon's own.
#[inline(always)]
fn may_remove(task: u32, dir: u64, victim: u64) -> bool {
    let (d, m) = path_parts(dir);
    if rights(0, victim) & right::PROTECTED != 0 {
        return false;
    }
    let exact = rights(task, victim) & right::REMOVE_EXACT != 0;
    may_change(task, if exact { 0 } else { right::REMOVE }, d, m)
}

/// lsm/path_rename(const struct path *old_dir, struct dentry *old_dentry, const struct
/// path *new_dir, struct dentry *new_dentry, unsigned int flags): a removal from the
/// old directory and a creation in the new one (both ways for an exchange; a
/// replaced name is a removal too).
#[lsm(hook = "path_rename")]
pub fn path_rename(ctx: LsmContext) -> i32 {
    let Some(rules) = file_rules() else { return 0 };
    let (old_dir, old_victim, new_dir, new_victim): (u64, u64, u64, u64) =
        (ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3));
    let flags: u32 = ctx.arg(4);
    let (od, om) = path_parts(old_dir);
    let (nd, nm) = path_parts(new_dir);
    let exchange = flags & RENAME_EXCHANGE != 0;
    let replaces = unsafe { kptr(new_victim, off!(dentry_inode)) } != 0;
    verdict(
        may_remove(rules, old_dir, old_victim)
            && may_change(rules, right::WRITE, nd, nm)
            && (!exchange || may_change(rules, right::WRITE, od, om))
            && (!(exchange || replaces) || may_remove(rules, new_dir, new_victim)),
    )
}

/// lsm/path_link(struct dentry *old_dentry, const struct path *new_dir, struct dentry
/// *new_dentry): a new name in `new_dir`, and only for a file the task may write
/// already (else a link into the scope would open an out-of-scope file to writes).
#[lsm(hook = "path_link")]
pub fn path_link(ctx: LsmContext) -> i32 {
    let Some(rules) = file_rules() else { return 0 };
    let old: u64 = ctx.arg(0);
    let (nd, nm) = path_parts(ctx.arg(1));
    // Hard links never cross mounts: the old name is in new_dir's mount.
    verdict(may_change(rules, right::WRITE, nd, nm) && may_change(rules, right::WRITE, old, nm))
}

/// lsm/path_truncate(const struct path *path): truncate(2), and O_TRUNC before 6.2.
#[lsm(hook = "path_truncate")]
pub fn path_truncate(ctx: LsmContext) -> i32 {
    let path: u64 = ctx.arg(0);
    truncating(path);
    at_path(right::WRITE, path)
}

/// lsm/file_truncate(struct file *file) (6.2+): ftruncate and O_TRUNC opens.
#[lsm(hook = "file_truncate")]
pub fn file_truncate(ctx: LsmContext) -> i32 {
    let file: u64 = ctx.arg(0);
    truncating(file + off!(file_path));
    at_path(right::WRITE, file + off!(file_path))
}

/// Tells the open's exit that the kernel truncates in this call, for any tracked
/// process, enforced or not (TRUNC_OPEN: thread id -> the call's saved arguments and
/// the truncated dentry).
/// openat2 passes O_TRUNC in the caller's memory, which another thread can change
/// between the kernel's copy and the exit's read: a truncation would pass as a
/// read. Every open's exit takes the entry (a truncate(2)'s, its own exit).
#[inline(always)]
fn truncating(path: u64) {
    if is_tracked() {
        let dentry = unsafe { kptr(path, off!(path_dentry)) };
        let mark = TruncMark { args: Args::current().first3(), dentry };
        let _ = TRUNC_OPEN.insert(&(pid_tgid() as u32), &mark, 0);
    }
}

/// lsm/path_chmod(const struct path *path, umode_t mode).
#[lsm(hook = "path_chmod")]
pub fn path_chmod(ctx: LsmContext) -> i32 {
    at_path(right::WRITE, ctx.arg(0))
}

/// lsm/path_chown(const struct path *path, kuid_t uid, kgid_t gid).
#[lsm(hook = "path_chown")]
pub fn path_chown(ctx: LsmContext) -> i32 {
    at_path(right::WRITE, ctx.arg(0))
}

/// lsm/inode_setxattr(idmap or user_namespace, struct dentry *dentry, ...): the
/// hook has no mount, so the grant is looked for on the file system's own chain
/// (a scope above a mount point does not reach here: stricter, never weaker).
#[lsm(hook = "inode_setxattr")]
pub fn inode_setxattr(ctx: LsmContext) -> i32 {
    xattr(ctx.arg(1), ctx.arg(2))
}

/// lsm/inode_removexattr(idmap or user_namespace, struct dentry *dentry, const char *name).
#[lsm(hook = "inode_removexattr")]
pub fn inode_removexattr(ctx: LsmContext) -> i32 {
    xattr(ctx.arg(1), ctx.arg(2))
}

/// lsm/inode_set_acl(struct mnt_idmap *, struct dentry *dentry, const char *, struct
/// posix_acl *) (6.2+: POSIX ACLs no longer pass the xattr hooks).
#[lsm(hook = "inode_set_acl")]
pub fn inode_set_acl(ctx: LsmContext) -> i32 {
    xattr(ctx.arg(1), 0)
}

/// lsm/inode_remove_acl(struct mnt_idmap *, struct dentry *dentry, const char *) (6.2+).
#[lsm(hook = "inode_remove_acl")]
pub fn inode_remove_acl(ctx: LsmContext) -> i32 {
    xattr(ctx.arg(1), 0)
}

/// `security.*` (file capabilities, LSM labels) and `trusted.*`: no task sets them,
/// even in its scope (a capability planted on a binary outlives the task).
#[inline(always)]
fn privileged_xattr(name: u64) -> bool {
    let mut b = [0u8; 9];
    if unsafe { h::bpf_probe_read_kernel((&raw mut b).cast(), 9, name as *const c_void) } != 0 {
        return true;
    }
    &b == b"security." || &b[..8] == b"trusted."
}

/// Is the kernel acting with borrowed credentials (override_creds)? overlayfs
/// repeats a call on its upper layer that way, after the call on the overlay's own
/// file was checked; that second call names the layer's file, which no grant names.
#[inline(always)]
fn borrowed_creds() -> bool {
    let t = task_btf();
    let (cred, real): (u64, u64) = unsafe { (bload(t, off!(task_cred)), bload(t, off!(task_real_cred))) };
    cred != real
}

/// An extended attribute (`name`, 0 for an ACL) of `dentry` set or removed.
/// Calls with borrowed credentials are the kernel's own (overlayfs copying a file up
/// sets trusted.overlay.* on its layer) after the task's call on the overlay's file
/// was checked here.
#[inline(always)]
fn xattr(dentry: u64, name: u64) -> i32 {
    let Some(rules) = file_rules() else { return 0 };
    if borrowed_creds() {
        return 0;
    }
    if name != 0 && privileged_xattr(name) {
        return EPERM;
    }
    verdict(may_change(rules, right::WRITE, dentry, 0))
}

/// lsm/bprm_check_security(struct linux_binprm *bprm): bprm->file, for the program
/// and again for each interpreter a script names. Runs only what EXEC grants cover;
/// never a file with no name (memfd, pseudo file) or no links (deleted); and under
/// an exec gate only the very file that was approved.
#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    let Some((_, l)) = enforced() else { return 0 };
    let bprm: u64 = ctx.arg(0);
    let file = unsafe { kptr(bprm, off!(bprm_file)) };
    let (d, m) = path_parts(file + off!(file_path));
    if l.flags & lflags::EXEC != 0 {
        let inode = unsafe { kptr(file, off!(file_inode)) };
        let nlink: u32 = unsafe { kread(inode + off!(inode_nlink)) };
        let up = climb(l.rules, right::EXEC, true, d, m);
        if nlink == 0 || up.pseudo != 0 || up.granted == 0 {
            return EACCES;
        }
    }
    if l.flags & lflags::EXEC_APPROVED != 0 {
        let tid = pid_tgid() as u32;
        let Some(ok) = EXEC_OK.get_ptr_mut(&tid) else { return EACCES };
        unsafe {
            if (*ok).bprm == bprm {
                return 0; // a later round (interpreter) of the approved exec
            }
            let matches = ident(d).is_some_and(|(dev, ino)| (*ok).dev == dev && (*ok).ino == ino);
            if (*ok).bprm != 0 || !matches {
                // Spent: one approval, one exec.
                let _ = EXEC_OK.remove(&tid);
                return EACCES;
            }
            (*ok).bprm = bprm;
        }
    }
    0
}

/// lsm/task_kill(struct task_struct *p, struct kernel_siginfo *info, int sig, const
/// struct cred *cred): p->tgid. A task may signal its own processes (a fork that
/// escaped tracking, known by its cgroup, included) and those of the tasks it
/// delegated to, nothing else (agentmon least of all).
#[lsm(hook = "task_kill")]
pub fn task_kill(ctx: LsmContext) -> i32 {
    let Some((task, l)) = enforced() else { return 0 };
    if l.flags & lflags::SIGNALS == 0 {
        return 0;
    }
    let p: u64 = ctx.arg(0);
    let tgid: u32 = unsafe { kread(p + off!(task_tgid)) };
    if tgid == conf!(self_tgid) {
        return EPERM;
    }
    let Some(target) = (unsafe { TRACKED.get(&tgid) }) else {
        // Untracked: still the task's own if it is a fork that escaped tracking into
        // the task's cgroup (held to the task's rules by it, so signalled as its own).
        return if escaped_task_of(p) == Some(task) { 0 } else { EPERM };
    };
    if target.task == task {
        return 0;
    }
    match unsafe { LSM_TASK.get(&target.task) } {
        Some(t) if t.up == task => 0,
        _ => EPERM,
    }
}
