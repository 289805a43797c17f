//! File side effects: opens with write intent (and read-only opens of sensitive
//! files), unlink/rmdir, rename, truncate, chmod, chown, link/symlink, mkdir.
//!
//! Each syscall has one sys_exit handler that emits the event with the result. Paths
//! are resolved in the kernel: relative names against their dirfd or the cwd, and fd
//! results (opens, f* calls) from the file itself, so symlinks and `..` are already
//! resolved there.

use aya_ebpf::{helpers::generated as h, maps::LruHashMap};
use monitor_common::{FIXED_SIZE, hash, kind, lsm::FsKey, op, pflags};

use crate::{
    REFUSED_OPEN, SCRATCH, SECRETS, SENSITIVE, TRUNC_OPEN,
    kern::{
        AT_FDCWD, Args, CallMark, Ev, NO_BASE, bounded, conf, fd_file, file_path, ident, is_tracked, kptr,
        kread, off, on_exit, pid_tgid, sys, tracked,
    },
};

const O_WRONLY: u64 = 0o1;
const O_RDWR: u64 = 0o2;
const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;
pub(crate) const WRITE_INTENT: u64 = O_WRONLY | O_RDWR | O_CREAT | O_TRUNC;
const FMODE_READ: u32 = 1;
const FMODE_WRITE: u32 = 2;
const FMODE_PATH: u32 = 0x4000;
const PROC_SUPER_MAGIC: u64 = 0x9fa0;
const AT_REMOVEDIR: u64 = 0x200;
const AT_SYMLINK_NOFOLLOW: u64 = 0x100;
const EACCES: i64 = 13;

// ---- opens ------------------------------------------------------------------------

/// An open of a tracked process, normalised to (dfd, filename, flags, mode): emitted
/// if it may change the file, or is read-only of a file whose basename passes the
/// sensitive prefilter, or reads one of agentmon's keys (by inode), or opens one of
/// agentmon's own /proc files. On success the path comes from the new file (exact,
/// symlinks resolved), the access mode from its f_mode, and FMODE_CREATED tells a
/// created file from an existing one; on failure it is the name as passed, relative
/// to its dirfd, except for an open the BPF LSM tier refused: then the file the hook
/// refused (operand 1) and the name as passed (operand 2), with the hook's f_mode.
#[inline(always)]
pub(crate) fn open_exit(ret: i64, o: u16, dfd: u64, fname: u64, flags: u64, mode: u64) -> Option<()> {
    // The LSM tier's word on this call, taken whatever the outcome (so none is left
    // for a later call to match): what its file_open refused, what it truncated.
    let by_hook = if conf!(lsm) != 0 { take_for_call(&REFUSED_OPEN) } else { None };
    let by_hook = by_hook.filter(|_| ret == -EACCES);
    let trunc = if conf!(lsm) != 0 { take_for_call(&TRUNC_OPEN) } else { None };
    let file = if ret >= 0 { unsafe { fd_file(ret) } } else { 0 };
    let dentry = if file != 0 { unsafe { kptr(file + off!(file_path), off!(path_dentry)) } } else { 0 };
    // What the file was opened for, as the kernel opened it (openat2's `how` is the
    // caller's memory, which another thread may have changed since); for an open the
    // LSM tier refused, as its hook saw it.
    let fmode: u32 = if file != 0 {
        unsafe { kread(file + off!(file_mode)) }
    } else {
        by_hook.as_ref().map_or(0, |r| r.fmode)
    };
    // An O_PATH descriptor reads and writes nothing (its O_CREAT, O_TRUNC are ignored).
    if fmode & FMODE_PATH != 0 {
        return None;
    }
    let flags = if file != 0 || by_hook.is_some() {
        let acc = match (fmode & FMODE_READ != 0, fmode & FMODE_WRITE != 0) {
            (true, true) => O_RDWR,
            (false, true) => O_WRONLY,
            _ => 0,
        };
        (flags & !0o3) | acc
    } else {
        flags
    };
    // openat2's O_TRUNC as the kernel acted on it, where the LSM tier's truncate hooks
    // run (its `how`, read above, may have been changed by another thread since, to
    // hide a truncation or to claim one): a mark of this call, on this file.
    let flags = if o == op::OPENAT2 && file != 0 && conf!(lsm) != 0 {
        if trunc.is_some_and(|t| t.dentry == dentry) { flags | O_TRUNC } else { flags & !O_TRUNC }
    } else {
        flags
    };
    // Opened, it changes something if it may write, truncates, or made the file
    // (O_CREAT of a file that exists makes nothing); refused, if it asked to.
    let write = if file != 0 {
        flags & (O_WRONLY | O_RDWR | O_TRUNC) != 0 || fmode & conf!(off.fmode_created) != 0
    } else {
        flags & WRITE_INTENT != 0
    };
    let mut pf = 0;
    if let Some(r) = &by_hook {
        pf = r.pflags;
    } else if dentry != 0 && agentmon_proc(dentry) {
        // Agentmon's own /proc files, but for what any `ps` reads.
        if !write && harmless_proc_file(dentry) {
            return None;
        }
        pf = pflags::AGENTMON_PROC;
    } else if dentry != 0 && fmode & FMODE_READ != 0 && secret(dentry) {
        // One of agentmon's keys opened to read, by whatever name or mount.
        pf = pflags::SENSITIVE | pflags::SECRET;
    } else if !write {
        // The opened file's own name when there is one, else the name as passed.
        let hit = if dentry != 0 {
            sensitive_name(unsafe { kptr(dentry, off!(dentry_name) + off!(qstr_name)) }, false)
        } else {
            sensitive_name(fname, true)
        };
        if !hit {
            return None;
        }
        pf = pflags::SENSITIVE;
    }
    let t = tracked()?;
    let mut ev = Ev::new(kind::OPEN, o, &t, ret)?;
    ev.flag(pf);
    ev.arg(0, flags);
    ev.arg(1, mode);
    if file != 0 {
        ev.arg(2, fmode as u64);
        if fmode & conf!(off.fmode_created) != 0 {
            ev.flag(pflags::CREATED);
        }
        ev.flag(pflags::OP1_FROM_FD);
        ev.operand_path(1, file_path(file));
    } else if let Some(r) = by_hook {
        ev.arg(2, fmode as u64);
        ev.flag(pflags::OP1_FROM_FD);
        // Nothing holds the dentry since the open failed: walked only if it is still
        // the file's (else unresolved, and judged so).
        let same = unsafe { kptr(r.dentry, off!(dentry_inode)) } == r.inode && r.inode != 0;
        ev.operand_dentry(1, if same { r.dentry } else { 0 }, r.mnt);
        ev.operand(2, fname, true, dfd as i64);
    } else {
        ev.operand(1, fname, true, dfd as i64);
    }
    ev.emit();
    Some(())
}

on_exit!(
    /// syscalls:sys_exit_open(ret); arguments (filename, flags, mode).
    sys_exit_open,
    fx_open,
    sk_open,
    |ret| {
        if is_tracked() {
            let a = Args::current();
            let _ = open_exit(ret, op::OPEN, AT_FDCWD as u64, a.get(0), a.get(1), a.get(2));
        }
    }
);

on_exit!(
    /// syscalls:sys_exit_openat(ret); arguments (dfd, filename, flags, mode).
    sys_exit_openat,
    fx_openat,
    sk_openat,
    |ret| {
        if is_tracked() {
            let a = Args::current();
            let _ = open_exit(ret, op::OPENAT, a.get(0), a.get(1), a.get(2), a.get(3));
        }
    }
);

on_exit!(
    /// syscalls:sys_exit_openat2(ret); arguments (dfd, filename, how, size); reads
    /// how->flags and how->mode from the caller. Its memory may have changed since the
    /// call or be gone: the opened file's own mode says what it was opened for.
    sys_exit_openat2,
    fx_openat2,
    sk_openat2,
    |ret| {
        if is_tracked() {
            let a = Args::current();
            let mut how = [0u64; 2];
            let r = unsafe { h::bpf_probe_read_user((&raw mut how).cast(), 16, a.get(2) as *const _) };
            if r != 0 {
                how = [0; 2];
            }
            let _ = open_exit(ret, op::OPENAT2, a.get(0), a.get(1), how[0], how[1]);
        }
    }
);

on_exit!(
    /// syscalls:sys_exit_creat(ret); arguments (pathname, mode): open(O_CREAT|O_WRONLY|O_TRUNC).
    sys_exit_creat,
    fx_creat,
    sk_creat,
    |ret| {
        if is_tracked() {
            let a = Args::current();
            let _ = open_exit(ret, op::CREAT, AT_FDCWD as u64, a.get(0), O_CREAT | O_WRONLY | O_TRUNC, a.get(1));
        }
    }
);

/// Is the file of `dentry` on procfs and of one of agentmon's threads (its
/// `proc_inode`'s pid's task is in agentmon's thread group)? Known by the process,
/// so neither a pid namespace nor a procfs mounted elsewhere hides it, and a file
/// named like one elsewhere is not it.
#[inline(always)]
pub(crate) fn agentmon_proc(dentry: u64) -> bool {
    unsafe {
        let sb = kptr(dentry, off!(dentry_sb));
        if sb == 0 || kread::<u64>(sb + off!(sb_magic)) != PROC_SUPER_MAGIC {
            return false;
        }
        let inode = kptr(dentry, off!(dentry_inode));
        if inode == 0 {
            return false;
        }
        let pid = kptr(inode - off!(proc_inode_vfs), off!(proc_inode_pid));
        if pid == 0 {
            return false;
        }
        // pid->tasks[PIDTYPE_PID].first: the task's pid_links[PIDTYPE_PID].
        let node = kptr(pid, off!(pid_tasks));
        node != 0 && kread::<u32>(node - off!(task_pid_links) + off!(task_tgid)) == conf!(self_tgid)
    }
}

/// Is `dentry` named like a /proc file any `ps` or `top` reads (stat, statm, status,
/// comm, cmdline)? Compared with its NUL, in the first 8 bytes of the name.
#[inline(always)]
pub(crate) fn harmless_proc_file(dentry: u64) -> bool {
    let name = unsafe { kptr(dentry, off!(dentry_name) + off!(qstr_name)) };
    let mut b = [0u8; 8];
    if unsafe { h::bpf_probe_read_kernel((&raw mut b).cast(), 8, name as *const _) } != 0 {
        return false;
    }
    let is = |n: &[u8]| b.len() > n.len() && b[..n.len()] == *n && b[n.len()] == 0;
    is(b"stat") || is(b"statm") || is(b"status") || is(b"comm") || b == *b"cmdline\0"
}

/// What an LSM hook left for this call in `map` (REFUSED_OPEN: the file `file_open`
/// refused; TRUNC_OPEN: the truncate hooks' mark). The entry is taken whatever it
/// holds; it counts only if this call left it (the same saved arguments), not an
/// earlier call whose exit is not one that takes it.
#[inline(always)]
fn take_for_call<V: Copy + CallMark>(map: &LruHashMap<u32, V>) -> Option<V> {
    let tid = pid_tgid() as u32;
    let r = (unsafe { map.get(&tid) }).copied()?;
    let _ = map.remove(&tid);
    let (m, a) = (r.call_args(), Args::current().first3());
    (m[0] == a[0] && m[1] == a[1] && m[2] == a[2]).then_some(r)
}

/// Is the file of `dentry` one of agentmon's private keys (`SECRETS`)?
#[inline(always)]
pub(crate) fn secret(dentry: u64) -> bool {
    ident(dentry).is_some_and(|(dev, ino)| unsafe { SECRETS.get(&FsKey { ino, dev, task: 0 }) }.is_some())
}

/// Scan state of [`sensitive_name`]. It lives in the per-CPU scratch map and is
/// accessed volatile, not kept in registers: values loaded from a map are unknown to
/// the verifier, so each loop iteration has one state whatever the bytes were
/// (in registers, every hash value and branch outcome would be tracked apart).
#[repr(C)]
pub struct NameScan {
    start: u64,
    pub exact: u64,
    pub ext: u64,
    prefix: u64,
    pub pre: [u64; 4],
}

macro_rules! get {
    ($s:ident . $f:ident) => {{
        #[allow(unused_unsafe)]
        let v = unsafe { core::ptr::read_volatile(&raw const (*$s).$f) };
        v
    }};
}
macro_rules! set {
    ($s:ident . $f:ident = $v:expr) => {{
        let v = $v;
        unsafe { core::ptr::write_volatile(&raw mut (*$s).$f, v) }
    }};
}

/// Does the basename of string `fname` (user memory, or kernel memory when `user` is
/// false) hash to an entry of the sensitive set
/// (exact name, extension, or one of the configured prefix lengths)? Userspace
/// confirms with the full glob on the resolved path. Basenames over 63 bytes never
/// match.
#[inline(always)]
pub(crate) fn sensitive_name(fname: u64, user: bool) -> bool {
    let Some(sc) = SCRATCH.get_ptr_mut(0) else { return false };
    let s = unsafe { &raw mut (*sc).scan };
    let buf = unsafe { ((&raw mut (*sc).buf) as *mut u8).add(FIXED_SIZE) };
    sensitive_name_in(s, buf, fname, user)
}

/// [`sensitive_name`] with its hashes in `s` and the name read into `buf` (256
/// bytes): the BPF LSM tier's are the thread's (lsm/state.rs), as a hook may be
/// preempted where the syscall tracepoints' programs, which use SCRATCH, are not.
#[inline(always)]
pub(crate) fn sensitive_name_in(s: *mut NameScan, buf: *mut u8, fname: u64, user: bool) -> bool {
    let r = unsafe {
        if user {
            h::bpf_probe_read_user_str(buf as *mut _, 256, fname as *const _)
        } else {
            h::bpf_probe_read_kernel_str(buf as *mut _, 256, fname as *const _)
        }
    };
    if r <= 1 {
        return false;
    }
    let len = ((r - 1) as usize) & 255;
    // Back from the end to the byte after the last '/'.
    set!(s.start = u64::MAX);
    let mut k = 1;
    while k <= 64 {
        if k > len {
            set!(s.start = 0);
            break;
        }
        if unsafe { *buf.add(bounded(len - k, 255)) } == b'/' {
            set!(s.start = (len - k + 1) as u64);
            break;
        }
        k += 1;
    }
    let start = get!(s.start);
    if start == u64::MAX {
        return false;
    }
    set!(s.exact = hash::SEED_EXACT);
    set!(s.ext = 0);
    set!(s.prefix = hash::SEED_PREFIX);
    set!(s.pre = [0; 4]);
    let lens = conf!(sensitive_prefix_lens);
    let mut j = 0usize;
    while j < 64 {
        let i = start as usize + j;
        if i >= len {
            break;
        }
        let b = unsafe { *buf.add(bounded(i, 255)) };
        set!(s.exact = hash::step(get!(s.exact), b));
        let ext = get!(s.ext);
        set!(
            s.ext = if b == b'.' {
                hash::step(hash::SEED_EXT, b)
            } else if ext != 0 {
                hash::step(ext, b)
            } else {
                0
            }
        );
        let p = hash::step(get!(s.prefix), b);
        set!(s.prefix = p);
        j += 1;
        let mut q = 0;
        while q < 4 {
            if lens[q] as usize == j {
                unsafe { core::ptr::write_volatile(&raw mut (*s).pre[q], p) };
            }
            q += 1;
        }
    }
    if candidate(get!(s.exact)) {
        return true;
    }
    let ext = get!(s.ext);
    if ext != 0 && candidate(ext) {
        return true;
    }
    let mut q = 0;
    while q < 4 {
        let p = unsafe { core::ptr::read_volatile(&raw const (*s).pre[q]) };
        if p != 0 && candidate(p) {
            return true;
        }
        q += 1;
    }
    false
}

/// Does the name of `dentry` pass the sensitive prefilter (its hashes in `s`, the
/// name read into `buf`: see [`sensitive_name_in`])?
#[inline(always)]
pub fn sensitive_dentry(dentry: u64, s: *mut NameScan, buf: *mut u8) -> bool {
    dentry != 0
        && sensitive_name_in(s, buf, unsafe { kptr(dentry, off!(dentry_name) + off!(qstr_name)) }, false)
}

/// Is `h` in the sensitive set? The load-time filter answers most misses without a
/// map lookup; the SENSITIVE map confirms hits.
#[inline(always)]
fn candidate(h: u64) -> bool {
    let (w, m) = monitor_common::config::bloom_bit(h);
    let word = unsafe { core::ptr::read_volatile(&raw const crate::CONFIG.sensitive_bloom[bounded(w, 63)]) };
    word & m != 0 && unsafe { SENSITIVE.get(&h) }.is_some()
}

// ---- path calls -------------------------------------------------------------------
// Argument positions follow each syscall's format (include/linux/syscalls.h).

sys!(sys_exit_unlink, fx_unlink, sk_unlink, op::UNLINK, kind::UNLINK, |a, ev| {
    ev.operand(1, a.get(0), true, AT_FDCWD);
});
sys!(sys_exit_unlinkat, fx_unlinkat, sk_unlinkat, op::UNLINKAT, kind::UNLINK, |a, ev| {
    ev.arg(0, a.get(2));
    ev.operand(1, a.get(1), true, a.get(0) as i64);
});
sys!(sys_exit_rmdir, fx_rmdir, sk_rmdir, op::RMDIR, kind::UNLINK, |a, ev| {
    ev.arg(0, AT_REMOVEDIR);
    ev.operand(1, a.get(0), true, AT_FDCWD);
});

sys!(sys_exit_rename, fx_rename, sk_rename, op::RENAME, kind::RENAME, |a, ev| {
    ev.operand(1, a.get(0), true, AT_FDCWD);
    ev.operand(2, a.get(1), true, AT_FDCWD);
});
sys!(sys_exit_renameat, fx_renameat, sk_renameat, op::RENAMEAT, kind::RENAME, |a, ev| {
    ev.operand(1, a.get(1), true, a.get(0) as i64);
    ev.operand(2, a.get(3), true, a.get(2) as i64);
});
sys!(sys_exit_renameat2, fx_renameat2, sk_renameat2, op::RENAMEAT2, kind::RENAME, |a, ev| {
    ev.arg(0, a.get(4));
    ev.operand(1, a.get(1), true, a.get(0) as i64);
    ev.operand(2, a.get(3), true, a.get(2) as i64);
});

sys!(sys_exit_truncate, fx_truncate, sk_truncate, op::TRUNCATE, kind::TRUNCATE, |a, ev| {
    // Its truncate hook's mark is for no open.
    let _ = TRUNC_OPEN.remove(&(pid_tgid() as u32));
    ev.arg(0, a.get(1));
    ev.operand(1, a.get(0), true, AT_FDCWD);
});
sys!(sys_exit_ftruncate, fx_ftruncate, sk_ftruncate, op::FTRUNCATE, kind::TRUNCATE, |a, ev| {
    let _ = TRUNC_OPEN.remove(&(pid_tgid() as u32));
    ev.arg(0, a.get(1));
    ev.flag(pflags::OP1_FROM_FD);
    ev.operand_path(1, file_path(unsafe { fd_file(a.get(0) as i32 as i64) }));
});

sys!(sys_exit_chmod, fx_chmod, sk_chmod, op::CHMOD, kind::CHMOD, |a, ev| {
    ev.arg(0, a.get(1));
    ev.operand(1, a.get(0), true, AT_FDCWD);
});
sys!(sys_exit_fchmod, fx_fchmod, sk_fchmod, op::FCHMOD, kind::CHMOD, |a, ev| {
    ev.arg(0, a.get(1));
    ev.flag(pflags::OP1_FROM_FD);
    ev.operand_path(1, file_path(unsafe { fd_file(a.get(0) as i32 as i64) }));
});
sys!(sys_exit_fchmodat, fx_fchmodat, sk_fchmodat, op::FCHMODAT, kind::CHMOD, |a, ev| {
    ev.arg(0, a.get(2));
    ev.operand(1, a.get(1), true, a.get(0) as i64);
});
sys!(sys_exit_fchmodat2, fx_fchmodat2, sk_fchmodat2, op::FCHMODAT2, kind::CHMOD, |a, ev| {
    ev.arg(0, a.get(2));
    ev.arg(1, a.get(3));
    ev.operand(1, a.get(1), true, a.get(0) as i64);
});

sys!(sys_exit_chown, fx_chown, sk_chown, op::CHOWN, kind::CHOWN, |a, ev| {
    ev.arg(0, a.get(1));
    ev.arg(1, a.get(2));
    ev.operand(1, a.get(0), true, AT_FDCWD);
});
sys!(sys_exit_lchown, fx_lchown, sk_lchown, op::LCHOWN, kind::CHOWN, |a, ev| {
    ev.arg(0, a.get(1));
    ev.arg(1, a.get(2));
    ev.arg(2, AT_SYMLINK_NOFOLLOW);
    ev.operand(1, a.get(0), true, AT_FDCWD);
});
sys!(sys_exit_fchown, fx_fchown, sk_fchown, op::FCHOWN, kind::CHOWN, |a, ev| {
    ev.arg(0, a.get(1));
    ev.arg(1, a.get(2));
    ev.flag(pflags::OP1_FROM_FD);
    ev.operand_path(1, file_path(unsafe { fd_file(a.get(0) as i32 as i64) }));
});
sys!(sys_exit_fchownat, fx_fchownat, sk_fchownat, op::FCHOWNAT, kind::CHOWN, |a, ev| {
    ev.arg(0, a.get(2));
    ev.arg(1, a.get(3));
    ev.arg(2, a.get(4));
    ev.operand(1, a.get(1), true, a.get(0) as i64);
});

// Extended attributes (setxattr/removexattr families): a metadata change Landlock does
// not limit. Operand 1 is the file, operand 2 the attribute's name (as given).
macro_rules! xattr {
    ($exit:ident, $fx:ident, $sk:ident, $op:expr, $removed:expr, path) => {
        sys!($exit, $fx, $sk, $op, kind::XATTR, |a, ev| {
            ev.arg(0, $removed);
            ev.arg(1, if $removed == 0 { a.get(4) } else { 0 });
            ev.operand(1, a.get(0), true, AT_FDCWD);
            ev.operand(2, a.get(1), true, NO_BASE);
        });
    };
    ($exit:ident, $fx:ident, $sk:ident, $op:expr, $removed:expr, fd) => {
        sys!($exit, $fx, $sk, $op, kind::XATTR, |a, ev| {
            ev.arg(0, $removed);
            ev.arg(1, if $removed == 0 { a.get(4) } else { 0 });
            ev.flag(pflags::OP1_FROM_FD);
            ev.operand_path(1, file_path(unsafe { fd_file(a.get(0) as i32 as i64) }));
            ev.operand(2, a.get(1), true, NO_BASE);
        });
    };
}
xattr!(sys_exit_setxattr, fx_setxattr, sk_setxattr, op::SETXATTR, 0, path);
xattr!(sys_exit_lsetxattr, fx_lsetxattr, sk_lsetxattr, op::LSETXATTR, 0, path);
xattr!(sys_exit_fsetxattr, fx_fsetxattr, sk_fsetxattr, op::FSETXATTR, 0, fd);
xattr!(sys_exit_removexattr, fx_removexattr, sk_removexattr, op::REMOVEXATTR, 1, path);
xattr!(sys_exit_lremovexattr, fx_lremovexattr, sk_lremovexattr, op::LREMOVEXATTR, 1, path);
xattr!(sys_exit_fremovexattr, fx_fremovexattr, sk_fremovexattr, op::FREMOVEXATTR, 1, fd);

// Links: operand 1 is the new name, operand 2 the existing file (hard link) or the
// symlink's target string, which is stored as written (it is resolved against the
// link's directory when followed, not against the caller's cwd).
sys!(sys_exit_link, fx_link, sk_link, op::LINK, kind::LINK, |a, ev| {
    ev.operand(1, a.get(1), true, AT_FDCWD);
    ev.operand(2, a.get(0), true, AT_FDCWD);
});
sys!(sys_exit_linkat, fx_linkat, sk_linkat, op::LINKAT, kind::LINK, |a, ev| {
    ev.arg(1, a.get(4));
    ev.operand(1, a.get(3), true, a.get(2) as i64);
    ev.operand(2, a.get(1), true, a.get(0) as i64);
});
sys!(sys_exit_symlink, fx_symlink, sk_symlink, op::SYMLINK, kind::LINK, |a, ev| {
    ev.arg(0, 1);
    ev.operand(1, a.get(1), true, AT_FDCWD);
    ev.operand(2, a.get(0), true, NO_BASE);
});
sys!(sys_exit_symlinkat, fx_symlinkat, sk_symlinkat, op::SYMLINKAT, kind::LINK, |a, ev| {
    ev.arg(0, 1);
    ev.operand(1, a.get(2), true, a.get(1) as i64);
    ev.operand(2, a.get(0), true, NO_BASE);
});

sys!(sys_exit_mkdir, fx_mkdir, sk_mkdir, op::MKDIR, kind::MKDIR, |a, ev| {
    ev.arg(0, a.get(1));
    ev.operand(1, a.get(0), true, AT_FDCWD);
});
sys!(sys_exit_mkdirat, fx_mkdirat, sk_mkdirat, op::MKDIRAT, kind::MKDIR, |a, ev| {
    ev.arg(0, a.get(2));
    ev.operand(1, a.get(1), true, a.get(0) as i64);
});
