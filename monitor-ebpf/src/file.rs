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
        AT_FDCWD, Ev, NO_BASE, bounded, conf, fd_file, file_path, is_tracked, kread, off, stash,
        stashed_tracked, sys_arg, sys_ret, take_stash, tracked,
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
                let t = crate::kern::stashed_tracked(&$st);
                let ret = crate::kern::sys_ret(&ctx);
                if let Some(mut $ev) = crate::kern::Ev::new($kind, $op, &t, ret) {
                    $body;
                    $ev.emit();
                }
            }
            0
        }
    };
}
pub(crate) use sys;

// ---- opens ------------------------------------------------------------------------

/// Saves an open of a tracked process if it has write intent, or is read-only but
/// its basename passes the sensitive prefilter. Arguments are normalised to (dfd,
/// filename, flags, mode). The TRACKED lookup waits until there is something to save.
#[inline(always)]
fn open_enter(o: u16, dfd: u64, fname: u64, flags: u64, mode: u64) {
    let pf = if flags & WRITE_INTENT != 0 {
        0
    } else if sensitive_name(fname) {
        pflags::SENSITIVE
    } else {
        return;
    };
    if let Some(t) = tracked() {
        stash(&t, o, kind::OPEN, pf, [dfd, fname, flags, mode, 0, 0]);
    }
}

/// On success the path comes from the new file (exact, symlinks resolved) and
/// FMODE_CREATED tells a created file from an existing one; on failure it is the
/// name as passed, relative to its dirfd.
#[inline(always)]
fn open_exit(ctx: &TracePointContext, o: u16) -> Option<()> {
    let st = take_stash(o)?;
    let t = stashed_tracked(&st);
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

/// Scan state of [`sensitive_name`]. It lives in the per-CPU scratch map and is
/// accessed volatile, not kept in registers: values loaded from a map are unknown to
/// the verifier, so each loop iteration has one state whatever the bytes were
/// (in registers, every hash value and branch outcome would be tracked apart).
#[repr(C)]
pub struct NameScan {
    start: u64,
    exact: u64,
    ext: u64,
    prefix: u64,
    pre: [u64; 4],
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

/// Does the basename of user string `fname` hash to an entry of the sensitive set
/// (exact name, extension, or one of the configured prefix lengths)? Userspace
/// confirms with the full glob on the resolved path. Basenames over 63 bytes never
/// match.
#[inline(always)]
fn sensitive_name(fname: u64) -> bool {
    let Some(sc) = SCRATCH.get_ptr_mut(0) else { return false };
    let s = unsafe { &raw mut (*sc).scan };
    let buf = unsafe { ((&raw mut (*sc).buf) as *mut u8).add(FIXED_SIZE) };
    let r = unsafe { h::bpf_probe_read_user_str(buf as *mut _, 256, fname as *const _) };
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

/// Is `h` in the sensitive set? The load-time filter answers most misses without a
/// map lookup; the SENSITIVE map confirms hits.
#[inline(always)]
fn candidate(h: u64) -> bool {
    let (w, m) = monitor_common::config::bloom_bit(h);
    let word = unsafe { core::ptr::read_volatile(&raw const crate::CONFIG.sensitive_bloom[bounded(w, 63)]) };
    word & m != 0 && unsafe { SENSITIVE.get(&h) }.is_some()
}

/// syscalls:sys_enter_open(filename, flags, mode).
#[tracepoint]
pub fn sys_enter_open(ctx: TracePointContext) -> u32 {
    if is_tracked() {
        open_enter(op::OPEN, AT_FDCWD as u64, sys_arg(&ctx, 0), sys_arg(&ctx, 1), sys_arg(&ctx, 2));
    }
    0
}

/// syscalls:sys_enter_openat(dfd, filename, flags, mode).
#[tracepoint]
pub fn sys_enter_openat(ctx: TracePointContext) -> u32 {
    if is_tracked() {
        open_enter(op::OPENAT, sys_arg(&ctx, 0), sys_arg(&ctx, 1), sys_arg(&ctx, 2), sys_arg(&ctx, 3));
    }
    0
}

/// syscalls:sys_enter_openat2(dfd, filename, how, usize); reads how->flags, how->mode.
#[tracepoint]
pub fn sys_enter_openat2(ctx: TracePointContext) -> u32 {
    if is_tracked() {
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
    if is_tracked() {
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
