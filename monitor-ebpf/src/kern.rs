//! Shared kernel-side machinery: the tracked-task filter, syscall arguments at exit,
//! kernel struct reads at BTF-derived offsets, path resolution by dentry walk, and the
//! event builder that writes into a per-CPU buffer and copies the used part out.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    EbpfContext,
    helpers::generated as h,
    programs::{FExitContext, TracePointContext},
};
use monitor_common::{
    Body, COMM_LEN, EventHeader, FIXED_SIZE, HEADER_SIZE, STR_MAX, TAIL_MASK, TAIL_MAX, Tracked, WALK_MAX,
    counter, kind, pflags,
};

use crate::{COUNTERS, EPOCH, EVENTS, PENDING, SCRATCH, TRACKED, TRACKED_BYTES};

pub const AT_FDCWD: i64 = -100;
/// `dfd` value meaning "this string is not a path relative to anything" (symlink targets).
pub const NO_BASE: i64 = i64::MIN;
/// Steps of a dentry climb (`WALK_MAX`, as `bpf_loop` takes it).
pub const WALK_LIMIT: u32 = WALK_MAX as u32;
/// Longest dentry name (NAME_MAX 255 + NUL).
const NAME_READ: usize = 256;

pub const SCRATCH_SIZE: usize = FIXED_SIZE + TAIL_MAX + STR_MAX + 64;

/// Builder state. It lives in the per-CPU map value, not in registers, on purpose:
/// values loaded from a map are unknown to the verifier, so two paths through the
/// path walk that wrote different amounts reach the loop head in equivalent states
/// and are pruned. Kept in registers, every mount-hop/component branch combination
/// of the walk would be explored separately (2^depth) and the program rejected.
#[repr(C)]
pub struct Ctl {
    off: u64,
    pf: u64,
    nops: u64,
    /// Components written by the walk in progress.
    walked: u64,
}

#[repr(C)]
pub struct Scratch {
    pub ctl: Ctl,
    pub scan: crate::file::NameScan,
    pub buf: [u8; SCRATCH_SIZE],
}

/// Reads a field of the load-time configuration. Volatile so the compiler does not
/// fold the zero initialiser; the verifier sees the loader's value (frozen .rodata).
macro_rules! conf {
    ($($f:ident).+) => {
        {
            #[allow(unused_unsafe)]
            let v = unsafe { core::ptr::read_volatile(&raw const crate::CONFIG.$($f).+) };
            v
        }
    };
}
pub(crate) use conf;

/// Offset of a kernel struct field, as u64.
macro_rules! off {
    ($f:ident) => {
        crate::kern::conf!(off.$f) as u64
    };
}
pub(crate) use off;

/// `x & mask`, with the mask applied where the verifier sees it: LLVM drops a mask it
/// can prove redundant, but the verifier tracks ranges less precisely (signedness),
/// so the value goes through a volatile stack slot first.
#[inline(always)]
pub fn bounded(x: usize, mask: usize) -> usize {
    unsafe { read_volatile(&x) & mask }
}

#[inline(always)]
pub fn pid_tgid() -> u64 {
    unsafe { h::bpf_get_current_pid_tgid() }
}

/// Is `tgid` marked in TRACKED_BYTES? An inlined array access and a byte load: what
/// untracked processes pay. A tgid beyond the map (pid_max raised after load) is
/// "maybe": the caller confirms against TRACKED.
#[inline(always)]
fn marked(tgid: u32) -> Option<bool> {
    let w = TRACKED_BYTES.get_ptr(tgid >> 6)? as *const u8;
    Some(unsafe { read_volatile(w.add((tgid & 63) as usize)) } != 0)
}

/// Sets `tgid`'s byte. A byte store: no read-modify-write, so no race with the
/// other pids of the same map value.
#[inline(always)]
pub fn mark(tgid: u32, on: bool) {
    if let Some(w) = TRACKED_BYTES.get_ptr_mut(tgid >> 6) {
        unsafe { write_volatile((w as *mut u8).add((tgid & 63) as usize), on as u8) };
    }
}

/// Is the current process tracked? The byte map only (no hash lookup); while
/// userspace has roots pending, an unset byte is confirmed against TRACKED.
#[inline(always)]
pub fn is_tracked() -> bool {
    // No exception for agentmon's own pid: userspace never tracks agentmon, and no
    // tracked process can fork a child with its pid while it lives; once it is gone
    // (its programs pinned), a process that reuses the pid must stay tracked.
    let tgid = (pid_tgid() >> 32) as u32;
    match marked(tgid) {
        Some(true) => return true,
        None => return unsafe { TRACKED.get(&tgid) }.is_some(),
        Some(false) => {}
    }
    let pending = match PENDING.get_ptr(0) {
        Some(p) => unsafe { read_volatile(p) },
        None => 0,
    };
    if pending == 0 {
        return false;
    }
    if unsafe { TRACKED.get(&tgid) }.is_some() {
        mark(tgid, true);
        return true;
    }
    false
}

/// The current process's task binding, or None (the common, cheap case).
#[inline(always)]
pub fn tracked() -> Option<Tracked> {
    if !is_tracked() {
        return None;
    }
    let tgid = (pid_tgid() >> 32) as u32;
    let t = unsafe { TRACKED.get(&tgid).copied() }?;
    if t.flags & monitor_common::tflags::DOOMED != 0 {
        // Containment: userspace condemned this task; stop the process now.
        unsafe { h::bpf_send_signal(9) };
    }
    Some(t)
}

/// Reads a `T` from kernel memory; zero on fault.
#[inline(always)]
pub unsafe fn kread<T: Copy + Default>(addr: u64) -> T {
    let mut v = T::default();
    let r = unsafe {
        h::bpf_probe_read_kernel(
            (&raw mut v).cast(),
            core::mem::size_of::<T>() as u32,
            addr as *const core::ffi::c_void,
        )
    };
    if r < 0 { T::default() } else { v }
}

/// Reads a kernel pointer at `base + off`; 0 if `base` is 0 or on fault.
#[inline(always)]
pub unsafe fn kptr(base: u64, off: u64) -> u64 {
    if base == 0 { 0 } else { unsafe { kread::<u64>(base + off) } }
}

/// (device, inode number) of `dentry` as the kernel knows the file (`s_dev` in its
/// encoding), or None for a negative dentry.
#[inline(always)]
pub fn ident(dentry: u64) -> Option<(u32, u64)> {
    let inode = unsafe { kptr(dentry, off!(dentry_inode)) };
    let sb = unsafe { kptr(dentry, off!(dentry_sb)) };
    if inode == 0 || sb == 0 {
        return None;
    }
    unsafe { Some((kread::<u32>(sb + off!(sb_dev)), kread::<u64>(inode + off!(inode_ino)))) }
}

/// Loads a `T` at `base + off`, where `base` is a kernel pointer the verifier knows
/// by its BTF type (the current task from `bpf_get_current_task_btf`, its saved
/// registers, or a struct pointer loaded from one of those) and `off` a constant it
/// can check against that type. A plain load, which the verifier makes fault-safe:
/// no helper call, where [`kread`] costs one. This is what keeps the tracked hot path
/// (arguments, fd table) cheap. Pointers to pointers (fd table slots) load as plain
/// numbers, and what is reached from those needs [`kread`].
#[inline(always)]
pub unsafe fn bload<T: Copy>(base: *const u8, off: u64) -> T {
    unsafe { read_volatile(base.add(off as usize) as *const T) }
}

/// The current task, as a BTF-typed pointer for [`bload`].
#[inline(always)]
pub fn task_btf() -> *const u8 {
    unsafe { h::bpf_get_current_task_btf() as *const u8 }
}

/// Return value of a sys_exit tracepoint (`long ret` at offset 16).
#[inline(always)]
pub fn sys_ret(ctx: &TracePointContext) -> i64 {
    unsafe { *(ctx.as_ptr() as *const i64).add(2) }
}

/// The result of a call seccomp answered, as the caller will see it: what its
/// filter or agentmon's gate set in the saved registers.
#[inline(always)]
pub fn skipped_ret() -> i64 {
    let regs = unsafe { h::bpf_task_pt_regs(h::bpf_get_current_task_btf()) } as *const u8;
    if regs.is_null() {
        return 0;
    }
    unsafe { bload::<i64>(regs, read_volatile(&raw const crate::CONFIG.off.regs_ret) as u64) }
}

/// The number of the current task's syscall (its saved `orig_ax`), or -1.
#[inline(always)]
pub fn syscall_nr() -> i64 {
    let regs = unsafe { h::bpf_task_pt_regs(h::bpf_get_current_task_btf()) } as *const u8;
    if regs.is_null() {
        return -1;
    }
    unsafe { bload::<i64>(regs, read_volatile(&raw const crate::CONFIG.off.regs_nr) as u64) }
}

/// Return value of a syscall's function at its fexit: `long __x64_sys_NAME(const
/// struct pt_regs *)` has one argument, and the result follows the arguments.
#[inline(always)]
pub fn fexit_ret(ctx: &FExitContext) -> i64 {
    ctx.arg::<i64>(1)
}

/// `*p += v`, atomically (BPF_ATOMIC_ADD, a lock-prefixed add on x86): the bpf
/// target gives Rust no atomic read-modify-write, so it is written out.
///
/// # Safety
/// `p` must point into a map value.
#[inline(always)]
pub unsafe fn add(p: *mut u64, v: u64) {
    unsafe {
        core::arch::asm!("lock *(u64 *)({p} + 0) += {v}", p = in(reg) p, v = in(reg) v, options(nostack, preserves_flags))
    };
}

#[inline(always)]
pub fn count(k: u16, lost: bool) {
    let idx = kind::slot(k) * 2 + if lost { counter::LOST } else { counter::EMITTED };
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        // Atomic, so that emitted plus lost adds up: an fexit program preempted
        // here (the kernel's preemption model switched under agentmon, until it is
        // put back) or interrupted by another program counting the same kind would
        // lose a count.
        unsafe { add(c, 1) };
    }
}

/// Arguments of the syscall now returning, read from the task's saved user
/// registers (they still hold the arguments at sys_exit for every syscall hooked
/// here). Reading them at exit means one program per syscall, not an enter/exit
/// pair with state in between: half the tracepoints, and untracked processes pay
/// for one program per hooked syscall instead of two.
///
/// Like any syscall-tracepoint tracer, user memory (a path) is read after the
/// kernel did; a racing thread of the agent could change it in between. Results
/// that come from a file descriptor (opens, f* calls) are exact.
pub struct Args {
    regs: *const u8,
}

impl Args {
    #[inline(always)]
    pub fn current() -> Args {
        let regs = unsafe { h::bpf_task_pt_regs(h::bpf_get_current_task_btf()) } as *const u8;
        Args { regs }
    }

    /// Argument `i` (0..5), or 0. `i` must be a constant: the verifier needs the
    /// register's offset in `pt_regs` known to allow the direct load.
    #[inline(always)]
    pub fn get(&self, i: usize) -> u64 {
        if i >= 6 || self.regs.is_null() {
            return 0;
        }
        let off = unsafe { read_volatile(&raw const crate::CONFIG.off.regs_args[i]) } as u64;
        unsafe { bload::<u64>(self.regs, off) }
    }

    /// The first three arguments: what an LSM hook saves to know its syscall's exit
    /// (a thread's exit after another call of the same thread has other ones).
    #[inline(always)]
    pub fn first3(&self) -> [u64; 3] {
        [self.get(0), self.get(1), self.get(2)]
    }
}

/// A per-thread entry an LSM hook leaves for its syscall's exit, known by the
/// call's first three arguments ([`Args::first3`]).
pub trait CallMark {
    fn call_args(&self) -> [u64; 3];
}

impl CallMark for monitor_common::lsm::Refused {
    fn call_args(&self) -> [u64; 3] {
        self.args
    }
}

impl CallMark for monitor_common::lsm::TruncMark {
    fn call_args(&self) -> [u64; 3] {
        self.args
    }
}

/// The programs of one syscall's exit, sharing one body that gets `$ret`, the call's
/// result: the tracepoint `syscalls:$tp`; the fexit program `$fx` that the loader
/// attaches to the syscall's own function (`__x64_sys_NAME` for `fx_NAME`); and
/// `$sk`, run by a tail call from `skip.rs` when seccomp answered the call before
/// it reached that function (refused it, or agentmon's gate answered it). The
/// loader attaches the tracepoints or the other two: an fexit program costs only
/// the processes that make its call, where attaching any syscall tracepoint sends
/// every syscall of every process through the slow path of the kernel's syscall
/// entry and exit. All run when the call returns, in the caller, with its saved
/// registers still holding the arguments ([`Args`]), so the events are the same.
macro_rules! on_exit {
    ($(#[doc = $doc:expr])* $tp:ident, $fx:ident, $sk:ident, |$ret:ident| $body:block) => {
        $(#[doc = $doc])*
        #[aya_ebpf::macros::tracepoint]
        pub fn $tp(ctx: aya_ebpf::programs::TracePointContext) -> u32 {
            crate::witness::ran(&ctx);
            let $ret = crate::kern::sys_ret(&ctx);
            $body;
            0
        }
        #[doc = concat!("fexit of the syscall's function: what [`", stringify!($tp), "`] does.")]
        #[aya_ebpf::macros::fexit]
        pub fn $fx(ctx: aya_ebpf::programs::FExitContext) -> i32 {
            let $ret = crate::kern::fexit_ret(&ctx);
            $body;
            0
        }
        #[doc = concat!("What [`", stringify!($tp), "`] does, for a call seccomp answered (skip.rs).")]
        #[aya_ebpf::macros::fexit]
        pub fn $sk(_ctx: aya_ebpf::programs::FExitContext) -> i32 {
            let $ret = crate::kern::skipped_ret();
            $body;
            0
        }
    };
}
pub(crate) use on_exit;

/// The programs for one syscall's exit (see [`on_exit`]): when the process is
/// tracked, builds the event in `$body` from the arguments `$a` (see [`Args`]) into
/// `$ev`.
macro_rules! sys {
    ($exit:ident, $fx:ident, $sk:ident, $op:expr, $kind:expr, |$a:ident, $ev:ident| $body:block) => {
        crate::kern::on_exit!(
            #[doc = concat!("syscalls:", stringify!($exit), ": the call's result and arguments.")]
            $exit,
            $fx,
            $sk,
            |ret| {
                if let Some(t) = crate::kern::tracked() {
                    let $a = crate::kern::Args::current();
                    if let Some(mut $ev) = crate::kern::Ev::new($kind, $op, &t, ret) {
                        $body;
                        $ev.emit();
                    }
                }
            }
        );
    };
}
pub(crate) use sys;

/// File of descriptor `fd` in the current task, or 0. task -> files -> fdt are
/// direct loads; the slot itself is read with a helper (see [`bload`]).
#[inline(always)]
pub unsafe fn fd_file(fd: i64) -> u64 {
    if fd < 0 || fd > i32::MAX as i64 {
        return 0;
    }
    unsafe {
        let files: *const u8 = bload(task_btf(), off!(task_files));
        if files.is_null() {
            return 0;
        }
        let fdt: *const u8 = bload(files, off!(files_fdt));
        if fdt.is_null() {
            return 0;
        }
        let max: u32 = bload(fdt, off!(fdt_max_fds));
        if fd as u64 >= max as u64 {
            return 0;
        }
        let arr: u64 = bload(fdt, off!(fdt_fd));
        kptr(arr, (fd as u64) * 8)
    }
}

/// `struct path *` of an open file, or 0.
#[inline(always)]
pub fn file_path(file: u64) -> u64 {
    if file == 0 { 0 } else { file + off!(file_path) }
}

/// `struct path *` of the directory a `*at` call resolves relative paths against.
#[inline(always)]
pub unsafe fn dir_base(dfd: i64) -> u64 {
    if dfd == NO_BASE {
        0
    } else if dfd as i32 as i64 == AT_FDCWD {
        let fs: *const u8 = unsafe { bload(task_btf(), off!(task_fs)) };
        if fs.is_null() { 0 } else { fs as u64 + off!(fs_pwd) }
    } else {
        file_path(unsafe { fd_file(dfd as i32 as i64) })
    }
}

/// An event being assembled in this CPU's scratch buffer.
pub struct Ev {
    p: *mut u8,
    ctl: *mut Ctl,
}

impl Ev {
    /// Starts an event of `k` for the current process.
    #[inline(always)]
    pub fn new(k: u16, op: u16, t: &Tracked, ret: i64) -> Option<Ev> {
        let s = SCRATCH.get_ptr_mut(0)?;
        let id = pid_tgid();
        unsafe {
            let p = (&raw mut (*s).buf) as *mut u8;
            let ctl = &raw mut (*s).ctl;
            let hd = p as *mut EventHeader;
            (*hd).ts_ns = h::bpf_ktime_get_ns();
            (*hd).start_ns = t.start_ns;
            (*hd).ret = ret;
            (*hd).cgroup_id = h::bpf_get_current_cgroup_id();
            (*hd).kind = k;
            (*hd).op = op;
            (*hd).tgid = (id >> 32) as u32;
            (*hd).tid = id as u32;
            (*hd).task = t.task;
            let ids = h::bpf_get_current_uid_gid();
            (*hd).uid = ids as u32;
            (*hd).gid = (ids >> 32) as u32;
            h::bpf_get_current_comm((*hd).comm.as_mut_ptr().cast(), COMM_LEN as u32);
            let b = p.add(HEADER_SIZE) as *mut Body;
            (*b).args = [0; 5];
            (*b).n1 = 0;
            (*b).n2 = 0;
            (*b).extra_len = 0;
            let ev = Ev { p, ctl };
            ev.set_off(0);
            write_volatile(&raw mut (*ctl).pf, 0);
            write_volatile(&raw mut (*ctl).nops, 0);
            Some(ev)
        }
    }

    /// The event being assembled on this CPU (from a `bpf_loop` callback).
    #[inline(always)]
    fn current() -> Option<Ev> {
        let s = SCRATCH.get_ptr_mut(0)?;
        unsafe { Some(Ev { p: (&raw mut (*s).buf) as *mut u8, ctl: &raw mut (*s).ctl }) }
    }

    #[inline(always)]
    fn off(&self) -> usize {
        unsafe { read_volatile(&raw const (*self.ctl).off) as usize }
    }

    #[inline(always)]
    fn set_off(&self, v: usize) {
        unsafe { write_volatile(&raw mut (*self.ctl).off, v as u64) }
    }

    #[inline(always)]
    fn body(&self) -> *mut Body {
        unsafe { self.p.add(HEADER_SIZE) as *mut Body }
    }

    #[inline(always)]
    pub fn arg(&mut self, i: usize, v: u64) {
        if i < 5 {
            unsafe { (*self.body()).args[i] = v };
        }
    }

    /// The syscall result this event carries.
    #[inline(always)]
    pub fn ret(&self) -> i64 {
        unsafe { (*(self.p as *const EventHeader)).ret }
    }

    #[inline(always)]
    pub fn flag(&mut self, f: u16) {
        unsafe {
            let pf = &raw mut (*self.ctl).pf;
            write_volatile(pf, read_volatile(pf) | f as u64);
        }
    }

    #[inline(always)]
    fn tail(&self) -> *mut u8 {
        unsafe { self.p.add(FIXED_SIZE + (self.off() & TAIL_MASK)) }
    }

    /// Copies a NUL-terminated string (user or kernel memory; 0 = empty) into the tail.
    /// Returns the bytes written including the NUL, 0 if out of room.
    #[inline(always)]
    fn put_str(&mut self, src: u64, user: bool, max: usize) -> usize {
        if self.off() > TAIL_MAX - STR_MAX {
            self.flag(pflags::TRUNCATED);
            return 0;
        }
        let dst = self.tail();
        let r = if src == 0 {
            0
        } else if user {
            unsafe { h::bpf_probe_read_user_str(dst.cast(), max as u32, src as *const _) }
        } else {
            unsafe { h::bpf_probe_read_kernel_str(dst.cast(), max as u32, src as *const _) }
        };
        let n = if r <= 0 {
            unsafe { *dst = 0 };
            1
        } else {
            r as usize
        };
        if n >= max {
            self.flag(pflags::TRUNCATED);
        }
        self.set_off(self.off() + n);
        n
    }

    /// Copies up to `len` raw bytes of user memory (argv block, socket path) as the
    /// extra part. Returns the bytes copied.
    #[inline(always)]
    pub fn put_extra_user(&mut self, src: u64, len: u64) -> u64 {
        if self.off() > TAIL_MAX - STR_MAX || src == 0 {
            return 0;
        }
        let len = if len > STR_MAX as u64 { STR_MAX as u64 } else { len };
        if len == 0 {
            return 0;
        }
        let r = unsafe { h::bpf_probe_read_user(self.tail().cast(), len as u32, src as *const _) };
        if r != 0 {
            return 0;
        }
        self.set_off(self.off() + len as usize);
        unsafe { (*self.body()).extra_len = len as u32 };
        len
    }

    /// Appends operand `which` (1 or 2): the string `s` and, unless it is absolute,
    /// the directory it is relative to (`dfd`: a descriptor, AT_FDCWD or NO_BASE).
    #[inline(always)]
    pub fn operand(&mut self, which: u16, s: u64, user: bool, dfd: i64) {
        self.operand_with(which, s, user, dfd != NO_BASE, || unsafe { dir_base(dfd) });
    }

    /// Appends operand `which`: the kernel string `s` and, unless it is absolute, the
    /// `struct path *` it is relative to (0: unresolved). An empty `s` is `base` itself.
    #[inline(always)]
    pub fn operand_under(&mut self, which: u16, s: u64, base: u64) {
        self.operand_with(which, s, false, true, || base);
    }

    #[inline(always)]
    fn operand_with(&mut self, which: u16, s: u64, user: bool, relative: bool, base: impl FnOnce() -> u64) {
        let start = self.off();
        let n = self.put_str(s, user, STR_MAX);
        let first = unsafe { *self.p.add(FIXED_SIZE + (start & TAIL_MASK)) };
        let mut comps = 0;
        if n > 0 && !(n > 1 && first == b'/') {
            let base = base();
            if base != 0 {
                comps = walk(self, base);
            } else if relative {
                self.flag(pflags::UNRESOLVED);
            }
        }
        self.set_operand(which, comps);
    }

    /// Appends operand `which` as the exact path of a dentry in a mount (kernel
    /// pointers: a `struct path`'s two members).
    #[inline(always)]
    pub fn operand_dentry(&mut self, which: u16, dentry: u64, vfsmnt: u64) {
        self.put_str(0, false, STR_MAX);
        let comps = walk_from(self, dentry, vfsmnt);
        self.set_operand(which, comps);
    }

    /// Appends operand `which` as the exact path of a kernel `struct path *`.
    #[inline(always)]
    pub fn operand_path(&mut self, which: u16, path: u64) {
        self.put_str(0, false, STR_MAX);
        let comps = if path != 0 {
            walk(self, path)
        } else {
            self.flag(pflags::UNRESOLVED);
            0
        };
        self.set_operand(which, comps);
    }

    #[inline(always)]
    fn set_operand(&mut self, which: u16, comps: u16) {
        unsafe {
            if which == 1 {
                (*self.body()).n1 = comps;
            } else {
                (*self.body()).n2 = comps;
            }
        }
        unsafe { write_volatile(&raw mut (*self.ctl).nops, which as u64) };
    }

    /// Copies the event out to the ring buffer and counts it (emitted or lost).
    #[inline(always)]
    pub fn emit(self) {
        // Programs of a load that was taken over (or not yet handed the ring) stay
        // silent: the other load's program reports the same call.
        if EPOCH.get(0).copied() != Some(conf!(epoch)) {
            return;
        }
        let off = self.off();
        let len = if off > TAIL_MAX { TAIL_MAX } else { off };
        let k = unsafe {
            let b = self.body();
            (*b).pflags = read_volatile(&raw const (*self.ctl).pf) as u16;
            (*b).nops = read_volatile(&raw const (*self.ctl).nops) as u16;
            (*b).tail_len = len as u32;
            (*(self.p as *mut EventHeader)).kind
        };
        let data = unsafe { core::slice::from_raw_parts(self.p as *const u8, FIXED_SIZE + len) };
        count(k, EVENTS.output(data, 1).is_err());
    }
}

/// Where a walk up a path is: a dentry, in a mount (`struct vfsmount *` and the
/// `struct mount *` around it).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pos {
    pub dentry: u64,
    pub vfsmnt: u64,
    pub mnt: u64,
}

/// At the root of its mount, `p` moves to the mountpoint in the parent mount:
/// Some(true); Some(false) at the top of the namespace; None if `p` is not at the
/// root of its mount (or has none: `vfsmnt` 0).
#[inline(always)]
pub unsafe fn mount_hop(p: *mut Pos) -> Option<bool> {
    unsafe {
        let vfsmnt = (*p).vfsmnt;
        if vfsmnt == 0 || (*p).dentry != kptr(vfsmnt, off!(vfsmount_root)) {
            return None;
        }
        let mnt = (*p).mnt;
        let up = kptr(mnt, off!(mount_parent));
        if up == mnt || up == 0 {
            return Some(false);
        }
        (*p).dentry = kptr(mnt, off!(mount_mountpoint));
        (*p).mnt = up;
        (*p).vfsmnt = up + off!(mount_mnt);
        Some(true)
    }
}

/// State of a path walk, on the caller's stack, passed to each `bpf_loop` step.
#[repr(C)]
struct WalkState {
    pos: Pos,
    done: u64,
}

/// Writes the components of `path` (a kernel `struct path *`) leaf first, crossing
/// mount points up to the root of the mount namespace. Returns how many it wrote.
///
/// The loop runs under `bpf_loop`, so the verifier checks one step instead of
/// unrolling every iteration of every program that walks a path.
#[inline(always)]
fn walk(ev: &mut Ev, path: u64) -> u16 {
    unsafe { walk_from(ev, kptr(path, off!(path_dentry)), kptr(path, off!(path_mnt))) }
}

/// [`walk`] from a dentry in a mount (`struct vfsmount *`).
#[inline(never)]
fn walk_from(ev: &mut Ev, dentry: u64, vfsmnt: u64) -> u16 {
    unsafe {
        if dentry == 0 || vfsmnt == 0 {
            ev.flag(pflags::UNRESOLVED);
            return 0;
        }
        let mut st = WalkState { pos: Pos { dentry, vfsmnt, mnt: vfsmnt - off!(mount_mnt) }, done: 0 };
        write_volatile(&raw mut (*ev.ctl).walked, 0);
        h::bpf_loop(WALK_MAX as u32, walk_step as *mut core::ffi::c_void, (&raw mut st).cast(), 0);
        if read_volatile(&raw const st.done) == 0 {
            ev.flag(pflags::TRUNCATED);
        }
        read_volatile(&raw const (*ev.ctl).walked) as u16
    }
}

/// One step of [`walk`]: either climbs out of a mount or writes one component.
/// Returns 1 to stop the loop.
extern "C" fn walk_step(_i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let st = ctx as *mut WalkState;
    let Some(mut ev) = Ev::current() else { return 1 };
    unsafe {
        // Top of this mount: continue from its mountpoint in the parent mount.
        match mount_hop(&raw mut (*st).pos) {
            Some(true) => return 0,
            Some(false) => {
                (*st).done = 1;
                return 1;
            }
            None => {}
        }
        let dentry = (*st).pos.dentry;
        let parent = kptr(dentry, off!(dentry_parent));
        if parent == 0 {
            (*st).done = 1;
            return 1;
        }
        // Write this component. A dentry that is its own parent without being a mount
        // root is a pseudo file (memfd, anon inode): its name is the whole path.
        let name = kptr(dentry, off!(dentry_name) + off!(qstr_name));
        if name == 0 || ev.put_str(name, false, NAME_READ) == 0 {
            (*st).done = 1;
            return 1;
        }
        if dentry == parent {
            let walked = &raw mut (*ev.ctl).walked;
            write_volatile(walked, read_volatile(walked) + 1);
            (*st).done = 1;
            return 1;
        }
        let walked = &raw mut (*ev.ctl).walked;
        write_volatile(walked, read_volatile(walked) + 1);
        (*st).pos.dentry = parent;
        0
    }
}
