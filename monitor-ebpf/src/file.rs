//! File side effects: opens with write intent (and read-only opens of sensitive
//! files), unlink/rmdir, rename, truncate, chmod, chown, link/symlink, mkdir.
//!
//! Each syscall has a sys_enter handler that saves its arguments when the process is
//! tracked, and a sys_exit handler that emits the event with the result. Paths are
//! resolved in the kernel: relative names against their dirfd or the cwd, and fd
//! results (opens, f* calls) from the file itself, so symlinks and `..` are already
//! resolved there.

use aya_ebpf::{helpers::generated as h, macros::tracepoint, programs::TracePointContext};
use monitor_common::{FIXED_SIZE, hash, kind, op, pflags};

use crate::{
    SCRATCH, SENSITIVE,
    kern::{
        AT_FDCWD, Ev, NO_BASE, bounded, conf, fd_file, file_path, kread, off, stash, sys_arg, sys_ret,
        take_stash, tracked,
    },
};

const O_WRONLY: u64 = 0o1;
const O_RDWR: u64 = 0o2;
const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;
const WRITE_INTENT: u64 = O_WRONLY | O_RDWR | O_CREAT | O_TRUNC;
const AT_REMOVEDIR: u64 = 0x200;
const AT_SYMLINK_NOFOLLOW: u64 = 0x100;

/// A pair of tracepoint programs for one syscall: enter saves `$n` arguments, exit
/// builds the event in `$body` from the saved arguments `$st` into `$ev`.
macro_rules! sys {
    ($enter:ident, $exit:ident, $op:expr, $kind:expr, $n:expr, |$st:ident, $ev:ident| $body:block) => {
        #[doc = concat!("syscalls:", stringify!($enter), ": saves the arguments of a tracked call.")]
        #[aya_ebpf::macros::tracepoint]
        pub fn $enter(ctx: aya_ebpf::programs::TracePointContext) -> u32 {
            crate::kern::enter_stash(&ctx, $op, $kind, $n);
            0
        }

        #[doc = concat!("syscalls:", stringify!($exit), ": reads `ret`; emits the saved call.")]
        #[aya_ebpf::macros::tracepoint]
        pub fn $exit(ctx: aya_ebpf::programs::TracePointContext) -> u32 {
            if let Some($st) = crate::kern::take_stash($op) {
                if let Some(t) = crate::kern::tracked() {
                    let ret = crate::kern::sys_ret(&ctx);
                    if let Some(mut $ev) = crate::kern::Ev::new($kind, $op, &t, ret) {
                        $body;
                        $ev.emit();
                    }
                }
            }
            0
        }
    };
}
pub(crate) use sys;

// ---- opens ------------------------------------------------------------------------

/// Saves an open if it has write intent, or is read-only but its basename passes the
/// sensitive prefilter. Arguments are normalised to (dfd, filename, flags, mode).
#[inline(always)]
fn open_enter(o: u16, dfd: u64, fname: u64, flags: u64, mode: u64) {
    let pf = if flags & WRITE_INTENT != 0 {
        0
    } else if sensitive_name(fname) {
        pflags::SENSITIVE
    } else {
        return;
    };
    stash(o, kind::OPEN, pf, [dfd, fname, flags, mode, 0, 0]);
}

/// On success the path comes from the new file (exact, symlinks resolved) and
/// FMODE_CREATED tells a created file from an existing one; on failure it is the
/// name as passed, relative to its dirfd.
#[inline(always)]
fn open_exit(ctx: &TracePointContext, o: u16) -> Option<()> {
    let st = take_stash(o)?;
    let t = tracked()?;
    let ret = sys_ret(ctx);
    let mut ev = Ev::new(kind::OPEN, o, &t, ret)?;
    ev.flag(st.pflags);
    ev.arg(0, st.args[2]);
    ev.arg(1, st.args[3]);
    if ret >= 0 {
        let file = unsafe { fd_file(ret) };
        let fmode: u32 = if file == 0 { 0 } else { unsafe { kread(file + off!(file_mode)) } };
        ev.arg(2, fmode as u64);
        if fmode & conf!(off.fmode_created) != 0 {
            ev.flag(pflags::CREATED);
        }
        ev.flag(pflags::OP1_FROM_FD);
        ev.operand_path(1, file_path(file));
    } else {
        ev.operand(1, st.args[1], true, st.args[0] as i64);
    }
    ev.emit();
    Some(())
}

/// Scan state of [`sensitive_name`], shared with its `bpf_loop` steps.
#[repr(C)]
struct NameScan {
    buf: *const u8,
    /// Backward scan position, then forward position.
    i: u64,
    len: u64,
    found: u64,
    exact: u64,
    ext: u64,
    prefix: u64,
    pre: [u64; 4],
    lens: [u8; 4],
}

/// Steps back from the end of the name to the byte after the last `/`.
extern "C" fn back_step(_k: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let s = ctx as *mut NameScan;
    unsafe {
        if (*s).i == 0 {
            (*s).found = 1;
            return 1;
        }
        let i = (*s).i - 1;
        if *(*s).buf.add(bounded(i as usize, 255)) == b'/' {
            (*s).found = 1;
            return 1;
        }
        (*s).i = i;
    }
    0
}

/// Hashes one basename byte: exact name, extension since the last `.`, and the
/// prefixes of the configured lengths.
extern "C" fn hash_step(_k: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let s = ctx as *mut NameScan;
    unsafe {
        let i = (*s).i;
        if i >= (*s).len {
            return 1;
        }
        let b = *(*s).buf.add(bounded(i as usize, 255));
        (*s).exact = hash::step((*s).exact, b);
        (*s).ext = if b == b'.' {
            hash::step(hash::SEED_EXT, b)
        } else if (*s).ext != 0 {
            hash::step((*s).ext, b)
        } else {
            0
        };
        (*s).prefix = hash::step((*s).prefix, b);
        (*s).i = i + 1;
        let n = (*s).i - (*s).found;
        let mut q = 0;
        while q < 4 {
            if (*s).lens[q] as u64 == n {
                (*s).pre[q] = (*s).prefix;
            }
            q += 1;
        }
    }
    0
}

/// Does the basename of user string `fname` hash to an entry of the sensitive set
/// (exact name, extension, or one of the configured prefix lengths)? Userspace
/// confirms with the full glob on the resolved path. Basenames over 64 bytes never
/// match. The loops run under `bpf_loop`, which the verifier checks once.
#[inline(always)]
fn sensitive_name(fname: u64) -> bool {
    let Some(p) = SCRATCH.get_ptr_mut(0) else { return false };
    let buf = unsafe { (p as *mut u8).add(FIXED_SIZE) };
    let r = unsafe { h::bpf_probe_read_user_str(buf.cast(), 256, fname as *const _) };
    if r <= 1 {
        return false;
    }
    let len = ((r - 1) as u64) & 255;
    let mut s = NameScan {
        buf,
        i: len,
        len,
        found: 0,
        exact: hash::SEED_EXACT,
        ext: 0,
        prefix: hash::SEED_PREFIX,
        pre: [0; 4],
        lens: conf!(sensitive_prefix_lens),
    };
    let ctx = (&raw mut s).cast();
    unsafe { h::bpf_loop(64, back_step as *mut _, ctx, 0) };
    if s.found == 0 {
        return false;
    }
    // Forward from the basename start; `found` now holds that start for hash_step.
    s.found = s.i;
    unsafe { h::bpf_loop(64, hash_step as *mut _, ctx, 0) };
    unsafe {
        if SENSITIVE.get(&s.exact).is_some() || (s.ext != 0 && SENSITIVE.get(&s.ext).is_some()) {
            return true;
        }
        let mut q = 0;
        while q < 4 {
            if s.pre[q] != 0 && SENSITIVE.get(&s.pre[q]).is_some() {
                return true;
            }
            q += 1;
        }
    }
    false
}

/// syscalls:sys_enter_open(filename, flags, mode).
#[tracepoint]
pub fn sys_enter_open(ctx: TracePointContext) -> u32 {
    if tracked().is_some() {
        open_enter(op::OPEN, AT_FDCWD as u64, sys_arg(&ctx, 0), sys_arg(&ctx, 1), sys_arg(&ctx, 2));
    }
    0
}

/// syscalls:sys_enter_openat(dfd, filename, flags, mode).
#[tracepoint]
pub fn sys_enter_openat(ctx: TracePointContext) -> u32 {
    if tracked().is_some() {
        open_enter(op::OPENAT, sys_arg(&ctx, 0), sys_arg(&ctx, 1), sys_arg(&ctx, 2), sys_arg(&ctx, 3));
    }
    0
}

/// syscalls:sys_enter_openat2(dfd, filename, how, usize); reads how->flags, how->mode.
#[tracepoint]
pub fn sys_enter_openat2(ctx: TracePointContext) -> u32 {
    if tracked().is_some() {
        let how = sys_arg(&ctx, 2);
        let mut v = [0u64; 2];
        let r = unsafe { h::bpf_probe_read_user((&raw mut v).cast(), 16, how as *const _) };
        if r == 0 {
            open_enter(op::OPENAT2, sys_arg(&ctx, 0), sys_arg(&ctx, 1), v[0], v[1]);
        }
    }
    0
}

/// syscalls:sys_enter_creat(pathname, mode): open(O_CREAT|O_WRONLY|O_TRUNC).
#[tracepoint]
pub fn sys_enter_creat(ctx: TracePointContext) -> u32 {
    if tracked().is_some() {
        open_enter(
            op::CREAT,
            AT_FDCWD as u64,
            sys_arg(&ctx, 0),
            O_CREAT | O_WRONLY | O_TRUNC,
            sys_arg(&ctx, 1),
        );
    }
    0
}

/// syscalls:sys_exit_open(ret).
#[tracepoint]
pub fn sys_exit_open(ctx: TracePointContext) -> u32 {
    let _ = open_exit(&ctx, op::OPEN);
    0
}

/// syscalls:sys_exit_openat(ret).
#[tracepoint]
pub fn sys_exit_openat(ctx: TracePointContext) -> u32 {
    let _ = open_exit(&ctx, op::OPENAT);
    0
}

/// syscalls:sys_exit_openat2(ret).
#[tracepoint]
pub fn sys_exit_openat2(ctx: TracePointContext) -> u32 {
    let _ = open_exit(&ctx, op::OPENAT2);
    0
}

/// syscalls:sys_exit_creat(ret).
#[tracepoint]
pub fn sys_exit_creat(ctx: TracePointContext) -> u32 {
    let _ = open_exit(&ctx, op::CREAT);
    0
}

// ---- path calls -------------------------------------------------------------------
// Argument positions follow each syscall's format (include/linux/syscalls.h).

sys!(sys_enter_unlink, sys_exit_unlink, op::UNLINK, kind::UNLINK, 1, |st, ev| {
    ev.operand(1, st.args[0], true, AT_FDCWD);
});
sys!(sys_enter_unlinkat, sys_exit_unlinkat, op::UNLINKAT, kind::UNLINK, 3, |st, ev| {
    ev.arg(0, st.args[2]);
    ev.operand(1, st.args[1], true, st.args[0] as i64);
});
sys!(sys_enter_rmdir, sys_exit_rmdir, op::RMDIR, kind::UNLINK, 1, |st, ev| {
    ev.arg(0, AT_REMOVEDIR);
    ev.operand(1, st.args[0], true, AT_FDCWD);
});

sys!(sys_enter_rename, sys_exit_rename, op::RENAME, kind::RENAME, 2, |st, ev| {
    ev.operand(1, st.args[0], true, AT_FDCWD);
    ev.operand(2, st.args[1], true, AT_FDCWD);
});
sys!(sys_enter_renameat, sys_exit_renameat, op::RENAMEAT, kind::RENAME, 4, |st, ev| {
    ev.operand(1, st.args[1], true, st.args[0] as i64);
    ev.operand(2, st.args[3], true, st.args[2] as i64);
});
sys!(sys_enter_renameat2, sys_exit_renameat2, op::RENAMEAT2, kind::RENAME, 5, |st, ev| {
    ev.arg(0, st.args[4]);
    ev.operand(1, st.args[1], true, st.args[0] as i64);
    ev.operand(2, st.args[3], true, st.args[2] as i64);
});

sys!(sys_enter_truncate, sys_exit_truncate, op::TRUNCATE, kind::TRUNCATE, 2, |st, ev| {
    ev.arg(0, st.args[1]);
    ev.operand(1, st.args[0], true, AT_FDCWD);
});
sys!(sys_enter_ftruncate, sys_exit_ftruncate, op::FTRUNCATE, kind::TRUNCATE, 2, |st, ev| {
    ev.arg(0, st.args[1]);
    ev.flag(pflags::OP1_FROM_FD);
    ev.operand_path(1, file_path(unsafe { fd_file(st.args[0] as i32 as i64) }));
});

sys!(sys_enter_chmod, sys_exit_chmod, op::CHMOD, kind::CHMOD, 2, |st, ev| {
    ev.arg(0, st.args[1]);
    ev.operand(1, st.args[0], true, AT_FDCWD);
});
sys!(sys_enter_fchmod, sys_exit_fchmod, op::FCHMOD, kind::CHMOD, 2, |st, ev| {
    ev.arg(0, st.args[1]);
    ev.flag(pflags::OP1_FROM_FD);
    ev.operand_path(1, file_path(unsafe { fd_file(st.args[0] as i32 as i64) }));
});
sys!(sys_enter_fchmodat, sys_exit_fchmodat, op::FCHMODAT, kind::CHMOD, 3, |st, ev| {
    ev.arg(0, st.args[2]);
    ev.operand(1, st.args[1], true, st.args[0] as i64);
});
sys!(sys_enter_fchmodat2, sys_exit_fchmodat2, op::FCHMODAT2, kind::CHMOD, 4, |st, ev| {
    ev.arg(0, st.args[2]);
    ev.arg(1, st.args[3]);
    ev.operand(1, st.args[1], true, st.args[0] as i64);
});

sys!(sys_enter_chown, sys_exit_chown, op::CHOWN, kind::CHOWN, 3, |st, ev| {
    ev.arg(0, st.args[1]);
    ev.arg(1, st.args[2]);
    ev.operand(1, st.args[0], true, AT_FDCWD);
});
sys!(sys_enter_lchown, sys_exit_lchown, op::LCHOWN, kind::CHOWN, 3, |st, ev| {
    ev.arg(0, st.args[1]);
    ev.arg(1, st.args[2]);
    ev.arg(2, AT_SYMLINK_NOFOLLOW);
    ev.operand(1, st.args[0], true, AT_FDCWD);
});
sys!(sys_enter_fchown, sys_exit_fchown, op::FCHOWN, kind::CHOWN, 3, |st, ev| {
    ev.arg(0, st.args[1]);
    ev.arg(1, st.args[2]);
    ev.flag(pflags::OP1_FROM_FD);
    ev.operand_path(1, file_path(unsafe { fd_file(st.args[0] as i32 as i64) }));
});
sys!(sys_enter_fchownat, sys_exit_fchownat, op::FCHOWNAT, kind::CHOWN, 5, |st, ev| {
    ev.arg(0, st.args[2]);
    ev.arg(1, st.args[3]);
    ev.arg(2, st.args[4]);
    ev.operand(1, st.args[1], true, st.args[0] as i64);
});

// Links: operand 1 is the new name, operand 2 the existing file (hard link) or the
// symlink's target string, which is stored as written (it is resolved against the
// link's directory when followed, not against the caller's cwd).
sys!(sys_enter_link, sys_exit_link, op::LINK, kind::LINK, 2, |st, ev| {
    ev.operand(1, st.args[1], true, AT_FDCWD);
    ev.operand(2, st.args[0], true, AT_FDCWD);
});
sys!(sys_enter_linkat, sys_exit_linkat, op::LINKAT, kind::LINK, 5, |st, ev| {
    ev.arg(1, st.args[4]);
    ev.operand(1, st.args[3], true, st.args[2] as i64);
    ev.operand(2, st.args[1], true, st.args[0] as i64);
});
sys!(sys_enter_symlink, sys_exit_symlink, op::SYMLINK, kind::LINK, 2, |st, ev| {
    ev.arg(0, 1);
    ev.operand(1, st.args[1], true, AT_FDCWD);
    ev.operand(2, st.args[0], true, NO_BASE);
});
sys!(sys_enter_symlinkat, sys_exit_symlinkat, op::SYMLINKAT, kind::LINK, 3, |st, ev| {
    ev.arg(0, 1);
    ev.operand(1, st.args[2], true, st.args[1] as i64);
    ev.operand(2, st.args[0], true, NO_BASE);
});

sys!(sys_enter_mkdir, sys_exit_mkdir, op::MKDIR, kind::MKDIR, 2, |st, ev| {
    ev.arg(0, st.args[1]);
    ev.operand(1, st.args[0], true, AT_FDCWD);
});
sys!(sys_enter_mkdirat, sys_exit_mkdirat, op::MKDIRAT, kind::MKDIR, 3, |st, ev| {
    ev.arg(0, st.args[2]);
    ev.operand(1, st.args[1], true, st.args[0] as i64);
});
