//! The BPF LSM tier's opens: file_open checks an enforced task's writes against its
//! scope and, where the task asks, its reads of the sensitive set against an exact
//! in-kernel matcher (a name prefilter hit, then each pattern's parent components);
//! every refusal is left for the open's exit to name the file it refused.

use core::ffi::c_void;

use aya_ebpf::{helpers::generated as h, macros::lsm, programs::LsmContext};
use monitor_common::{
    hash,
    lsm::{FsKey, Refused, SENS_DEPTH, SENS_PATTERNS, SensPattern, lflags, right},
    pflags,
};

use super::{
    EACCES, FMODE_READ, FMODE_WRITE, S_IFBLK, S_IFMT, borrowed_creds, climb, enforced, may_change,
    path_parts, rights, state::state,
};
use crate::{
    IDENT, REFUSED_OPEN, SENS_PAT,
    kern::{Args, Pos, bounded, conf, ident, kptr, kread, mount_hop, off, pid_tgid},
};

/// lsm/file_open(struct file *file): file->f_mode, file->f_path. Opens for writing
/// need WRITE; reads of the sensitive set need READ_SENSITIVE where the task asks.
#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    let file: u64 = ctx.arg(0);
    let id = pid_tgid();
    if (id >> 32) as u32 == conf!(self_tgid) {
        // agentmon asking how the hooks know a file it is about to grant or protect.
        // The first open only: overlayfs opens the layer's file after its own.
        // No early return: agentmon is never a task's, so the check below passes
        // it, while a process that got its pid after it died (its programs stay
        // pinned) is checked like any other.
        if let Some(slot) = IDENT.get_ptr_mut(&(id as u32))
            && unsafe { (*slot).ino } == 0
        {
            let d = unsafe { kptr(file + off!(file_path), off!(path_dentry)) };
            if let Some((dev, ino)) = ident(d) {
                unsafe { *slot = FsKey { ino, dev, task: 0 } };
            }
        }
    }
    let Some((_, l)) = enforced() else { return 0 };
    if borrowed_creds() {
        // overlayfs opening its layer's file (6.12: a backing file, whose path is the
        // layer's) for an open of its own file, which was checked.
        return 0;
    }
    let fmode: u32 = unsafe { kread(file + off!(file_mode)) };
    let (d, m) = path_parts(file + off!(file_path));
    let mode: u16 = unsafe { kread(kptr(file, off!(file_inode)) + off!(inode_mode)) };
    let kind = mode & S_IFMT;
    if kind == S_IFBLK {
        // Raw disks: past every file scope and the sensitive set (read, one of it).
        let pf = if fmode & FMODE_READ != 0 { pflags::SENSITIVE } else { 0 };
        return refused(pf, file, d, m);
    }
    // Reads first, so that an O_RDWR (or O_CREAT, O_TRUNC) open of a key or of the
    // sensitive set is reported as the read it also is, not as a write.
    // agentmon's private keys, known by inode (a hard link or bind mount is the same
    // file): read, they sign as agentmon.
    if fmode & FMODE_READ != 0 && rights(0, d) & right::SECRET != 0 {
        return refused(pflags::SENSITIVE | pflags::SECRET, file, d, m);
    }
    if l.flags & lflags::DENY_SENSITIVE != 0 && fmode & FMODE_READ != 0 && sensitive(d, m) {
        let up = climb(l.rules, right::READ_SENSITIVE, true, d, m);
        if up.granted == 0 {
            return refused(pflags::SENSITIVE, file, d, m);
        }
    }
    // Pseudo files (pipes reopened through /proc, pidfds: 6.9+ opens them through
    // this hook) are in no file scope, as with Landlock: a dentry that is its own
    // parent without being its mount's root. (Not "a climb that ended at a root
    // other than the mount's": a directory moved out of a bind mount does that.)
    let pseudo = unsafe { kptr(d, off!(dentry_parent)) == d && kptr(m, off!(vfsmount_root)) != d };
    if fmode & FMODE_WRITE != 0 && l.flags & lflags::FILES != 0 && !pseudo {
        if !may_change(l.rules, right::WRITE, d, m) {
            return refused(0, file, d, m);
        }
    }
    0
}

/// Refuses an open, and tells its exit which file it refused (REFUSED_OPEN): the
/// name the caller passed, all that exit has of a failed open, may be a symlink or a
/// hard link into the scope that says nothing of the file, and another thread may
/// rewrite it before the exit reads it.
#[inline(always)]
fn refused(pf: u16, file: u64, dentry: u64, mnt: u64) -> i32 {
    let r = Refused {
        args: Args::current().first3(),
        dentry,
        mnt,
        inode: unsafe { kptr(dentry, off!(dentry_inode)) },
        fmode: unsafe { kread(file + off!(file_mode)) },
        pflags: pf | pflags::REFUSED_FOR_FILE,
        _pad: 0,
    };
    let _ = REFUSED_OPEN.insert(&(pid_tgid() as u32), &r, 0);
    EACCES
}

/// Parent components of a file whose name passed the sensitive prefilter, hashed
/// (exact-name hash), leaf's parent first. The thread's (state.rs): the name buffer
/// is too big for the stack.
#[repr(C)]
pub struct SensUp {
    name: [u8; 64],
    /// Slot SENS_DEPTH is a component past the deepest a pattern names; 7 is spare
    /// (an index the verifier can bound with a mask).
    h: [u64; 8],
    /// Components hashed.
    n: u64,
    /// 1: the walk reached the namespace root after `n` components.
    top: u64,
    /// Where the walk is.
    pos: Pos,
    /// 1 once the walk stopped where it should (a root, the top, deep enough). A
    /// step that could not find the thread's state stops it without: the file is
    /// then taken for sensitive (a 6.1 kernel's task storage lookup fails while
    /// another thread on the CPU is preempted inside one).
    ended: u64,
}

/// Hashes the name of `dentry` into the next slot. Names over 63 bytes get a hash no
/// pattern component has (components are at most 63 bytes).
#[inline(always)]
fn hash_name(u: *mut SensUp, dentry: u64) {
    unsafe {
        let name = kptr(dentry, off!(dentry_name) + off!(qstr_name));
        let buf = (&raw mut (*u).name) as *mut u8;
        let r = h::bpf_probe_read_kernel_str(buf.cast(), 64, name as *const c_void);
        let mut hv = hash::SEED_EXACT;
        if r <= 1 || r >= 64 {
            hv = 1;
        } else {
            let len = (r - 1) as usize;
            let mut i = 0usize;
            while i < 63 {
                if i >= len {
                    break;
                }
                hv = hash::step(hv, *buf.add(i & 63));
                i += 1;
            }
        }
        let n = core::ptr::read_volatile(&raw const (*u).n) as usize;
        if n <= SENS_DEPTH {
            let slot = (&raw mut (*u).h) as *mut u64;
            core::ptr::write_volatile(slot.add(bounded(n, 7)), hv);
        }
        core::ptr::write_volatile(&raw mut (*u).n, n as u64 + 1);
    }
}

/// One step up: to the parent component (out of mounts as needed), hashed.
extern "C" fn up_step(_i: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = state(false) else { return 1 };
    let u = unsafe { &raw mut (*s).up };
    let w = u;
    unsafe {
        let dentry = (*w).pos.dentry;
        let parent = kptr(dentry, off!(dentry_parent));
        if parent == 0 || parent == dentry {
            core::ptr::write_volatile(&raw mut (*u).ended, 1);
            return 1; // a file system root outside any mount: no path
        }
        (*w).pos.dentry = parent;
        let mut k = 0;
        while k < 4 {
            match mount_hop(&raw mut (*w).pos) {
                Some(true) => {}
                Some(false) => {
                    core::ptr::write_volatile(&raw mut (*u).top, 1);
                    core::ptr::write_volatile(&raw mut (*u).ended, 1);
                    return 1;
                }
                None => break,
            }
            k += 1;
        }
        hash_name(u, (*w).pos.dentry);
        if core::ptr::read_volatile(&raw const (*u).n) as usize > SENS_DEPTH {
            core::ptr::write_volatile(&raw mut (*u).ended, 1);
            return 1;
        }
    }
    0
}

/// Is the file at `dentry` (in mount `vfsmnt`) in the sensitive set: its name
/// through the prefilter, then by a whole pattern? No state for the thread (no
/// memory): it is taken for one, and the read is refused unless granted.
#[inline(always)]
fn sensitive(dentry: u64, vfsmnt: u64) -> bool {
    let Some(s) = state(true) else { return true };
    crate::file::sensitive_dentry(dentry, unsafe { &raw mut (*s).scan }, unsafe {
        (&raw mut (*s).name).cast()
    }) && sensitive_path(dentry, vfsmnt)
}

/// Is the file at `dentry` (in mount `vfsmnt`), whose name passed the prefilter
/// (its hashes are in the thread's scan), in the sensitive set by a whole pattern?
#[inline(never)]
fn sensitive_path(dentry: u64, vfsmnt: u64) -> bool {
    let Some(s) = state(false) else { return true };
    let u = unsafe { &raw mut (*s).up };
    let sc = s;
    unsafe {
        core::ptr::write_volatile(&raw mut (*u).n, 0);
        core::ptr::write_volatile(&raw mut (*u).top, 0);
        core::ptr::write_volatile(&raw mut (*u).ended, 0);
        core::ptr::write_volatile(&raw mut (*u).pos, Pos { dentry, vfsmnt, mnt: vfsmnt - off!(mount_mnt) });
        // A bind-mounted file: its name in the namespace is its mountpoint's.
        let mut k = 0;
        while k < 4 {
            if mount_hop(&raw mut (*u).pos) != Some(true) {
                break;
            }
            k += 1;
        }
        h::bpf_loop((SENS_DEPTH + 2) as u32, up_step as *mut c_void, core::ptr::null_mut(), 0);
        if core::ptr::read_volatile(&raw const (*u).ended) == 0 {
            return true; // the walk was cut short: not known, so not let through
        }
        let scan = &raw const (*sc).scan;
        let leaves = [
            core::ptr::read_volatile(&raw const (*scan).exact),
            core::ptr::read_volatile(&raw const (*scan).ext),
            core::ptr::read_volatile(&raw const (*scan).pre[0]),
            core::ptr::read_volatile(&raw const (*scan).pre[1]),
            core::ptr::read_volatile(&raw const (*scan).pre[2]),
            core::ptr::read_volatile(&raw const (*scan).pre[3]),
        ];
        let n = core::ptr::read_volatile(&raw const (*u).n);
        let top = core::ptr::read_volatile(&raw const (*u).top);
        let mut i = 0u32;
        while i < SENS_PATTERNS {
            if let Some(p) = SENS_PAT.get(i)
                && p.leaf != 0
                && leaves.contains(&p.leaf)
                && parents_match(p, &(*u).h, n, top)
            {
                return true;
            }
            i += 1;
        }
    }
    false
}

#[inline(always)]
fn parents_match(p: &SensPattern, h: &[u64; 8], n: u64, top: u64) -> bool {
    let want = p.n as u64;
    if want > n || (p.anchored != 0 && (n != want || top == 0)) {
        return false;
    }
    let mut j = 0;
    while j < SENS_DEPTH {
        if (j as u64) < want && p.up[j] != 0 && p.up[j] != h[j] {
            return false;
        }
        j += 1;
    }
    true
}
