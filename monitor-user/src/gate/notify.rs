//! The listener side of a gate: receive a held syscall, resolve what it would touch,
//! and, once decided, answer it.
//!
//! TOCTOU: the syscall's arguments live in the agent's memory, which another of its
//! threads (or a process sharing the page) can rewrite after we read them; letting
//! the kernel continue the call (SECCOMP_USER_NOTIF_FLAG_CONTINUE) would re-read
//! them, so an approved request could carry out a different operation. agentmon
//! therefore never continues a held call. It resolves the target once, when the
//! request arrives, and pins it: the parent directory as an O_PATH fd plus the
//! entry's name and inode (delete, rename), the file itself as an O_PATH fd (path
//! forms of truncate, chmod, chown), or an O_PATH copy of the agent's own open
//! file (pidfd_getfd, for ftruncate, fchmod, fchown: a truncate reopens it for
//! writing with the agent's credentials, a fresh permission check). On approval agentmon performs the
//! operation itself on exactly that, in a thread that takes the agent's filesystem
//! credentials (fsuid, fsgid, groups), after checking that the entry still holds
//! the inode it held at request time; the agent's call returns the result. What
//! proceeds is what was shown to the approver, or nothing. (The one call let
//! through as made is one agentmon only reports: an observed task's i386 or x32
//! call, [`proceed`]; its record says the path is as requested, not as resolved.)

use std::{
    ffi::{CStr, CString},
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use nix::errno::Errno;

use super::filter::{Gated, Shape};
use crate::worker::{self, Stuck};

/// A held syscall.
#[derive(Debug, Clone, Copy)]
pub struct Notif {
    pub id: u64,
    /// The calling thread.
    pub tid: u32,
    pub nr: i64,
    /// AUDIT_ARCH_* of the call (x86-64, or i386 for `int 0x80`).
    pub arch: u32,
    pub args: [u64; 6],
}

pub enum Ready {
    Call,
    Nothing,
    Closed,
}

/// Is a held call waiting on listener `fd` (without blocking)?
pub fn pending(fd: RawFd) -> Ready {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&raw mut p, 1, 0) };
    if n <= 0 {
        return Ready::Nothing;
    }
    if p.revents & libc::POLLIN != 0 {
        Ready::Call
    } else if p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
        Ready::Closed
    } else {
        Ready::Nothing
    }
}

/// Takes one held call; blocks if none is waiting (check [`pending`] first).
pub fn recv(fd: RawFd) -> io::Result<Notif> {
    // SAFETY: the kernel fills a zeroed seccomp_notif of the size it expects.
    let mut n: libc::seccomp_notif = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_RECV, &raw mut n) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Notif { id: n.id, tid: n.pid, nr: n.data.nr as i64, arch: n.data.arch, args: n.data.args })
}

/// Is the notification still pending (its thread alive and still in the call)?
pub fn valid(fd: RawFd, id: u64) -> bool {
    let mut id = id;
    unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &raw mut id) == 0 }
}

/// Answers a held call: Ok(value) is its return value, Err(errno) its error.
pub fn respond(fd: RawFd, id: u64, result: Result<i64, Errno>) -> io::Result<()> {
    let (val, error) = match result {
        Ok(v) => (v, 0),
        Err(e) => (0, -(e as i32)),
    };
    let mut r = libc::seccomp_notif_resp { id, val, error, flags: 0 };
    if unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_SEND, &raw mut r) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Lets a reported call proceed as the agent made it (the kernel reads its
/// arguments again). Only for calls agentmon reports and does not decide: a
/// foreign-ABI call of an observed task.
pub fn proceed(fd: RawFd, id: u64) -> io::Result<()> {
    let flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32;
    let mut r = libc::seccomp_notif_resp { id, val: 0, error: 0, flags };
    if unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_SEND, &raw mut r) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How long agentmon waits for a held call's strings in the agent's memory, and
/// for the lookups that resolve them. The page may be a file's the agent serves
/// itself (on its own FUSE mount) and never come in; the lookup may be on that
/// mount. Past this the call is refused ([`Unresolved`]). (A userfaultfd page
/// cannot hold the read: a remote read of a missing page fails at once.)
pub const MEM_WAIT: std::time::Duration = std::time::Duration::from_millis(500);
/// How long agentmon waits for a held call it performs (a `setattr` or unlink on
/// the agent's own FUSE mount waits for the agent).
pub const ACT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads a NUL-terminated string (at most PATH_MAX) from thread `tid`'s memory, off
/// the loop ([`worker`]), waiting at most [`MEM_WAIT`]; `gate` is whose share the
/// read counts against.
pub fn read_cstr(gate: u32, tid: u32, addr: u64) -> Result<CString, Errno> {
    match worker::READERS.run(gate, MEM_WAIT, move || read_cstr_now(tid, addr)) {
        Ok(r) => r,
        Err(Stuck::Late) => Err(Errno::ETIMEDOUT),
        Err(Stuck::Refused(e)) => Err(e),
        Err(Stuck::Failed) => Err(Errno::EIO),
    }
}

fn read_cstr_now(tid: u32, addr: u64) -> Result<CString, Errno> {
    let mem = std::fs::File::open(format!("/proc/{tid}/mem")).map_err(|_| Errno::ESRCH)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    use std::os::unix::fs::FileExt;
    while out.len() < libc::PATH_MAX as usize {
        let n = mem.read_at(&mut buf, addr + out.len() as u64).map_err(|_| Errno::EFAULT)?;
        if n == 0 {
            return Err(Errno::EFAULT);
        }
        if let Some(end) = buf[..n].iter().position(|&b| b == 0) {
            out.extend_from_slice(&buf[..end]);
            return CString::new(out).map_err(|_| Errno::EINVAL);
        }
        out.extend_from_slice(&buf[..n]);
    }
    Err(Errno::ENAMETOOLONG)
}

/// The thread group (process) of thread `tid`.
pub fn tgid_of(tid: u32) -> Option<u32> {
    Caller::of(tid).map(|c| c.tgid)
}

/// Filesystem credentials of thread `tid`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Creds {
    pub fsuid: u32,
    pub fsgid: u32,
    pub groups: Vec<u32>,
}

/// What a held call's thread is, from one read of its status (the kernel renders
/// the whole file for any read of it: a read per field was two fifths of the
/// daemon's time under an enforced `tar x`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tgid: u32,
    pub creds: Creds,
}

impl Caller {
    pub fn of(tid: u32) -> Option<Caller> {
        let s = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
        let field = |k: &str| s.lines().find_map(|l| l.strip_prefix(k)).map(str::split_whitespace);
        Some(Caller {
            tgid: field("Tgid:")?.next()?.parse().ok()?,
            creds: Creds {
                fsuid: field("Uid:")?.nth(3)?.parse().ok()?,
                fsgid: field("Gid:")?.nth(3)?.parse().ok()?,
                groups: field("Groups:")?.filter_map(|g| g.parse().ok()).collect(),
            },
        })
    }
}

/// One pinned target.
#[derive(Debug)]
pub enum Target {
    /// A directory entry: the parent pinned, the name, and the entry's inode at
    /// request time (None: it did not exist).
    Entry { dir: OwnedFd, name: CString, path: String, ino: Option<(u64, u64)> },
    /// A file pinned by an O_PATH fd: from resolving a path, or from the agent's
    /// own open file ([`agent_fd`]).
    File { fd: OwnedFd, path: String },
}

impl Target {
    pub fn path(&self) -> &str {
        match self {
            Target::Entry { path, .. } | Target::File { path, .. } => path,
        }
    }
}

/// A held call, resolved: what it would do, on what.
#[derive(Debug)]
pub struct Call {
    pub gated: &'static Gated,
    pub targets: Vec<Target>,
    pub flags: u64,
    pub vals: Vec<u64>,
}

fn cvt(r: libc::c_long) -> Result<libc::c_long, Errno> {
    if r < 0 { Err(Errno::last()) } else { Ok(r) }
}

fn fd_path(fd: &OwnedFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn open_path(path: &str, flags: i32) -> Result<OwnedFd, Errno> {
    let c = CString::new(path).map_err(|_| Errno::EINVAL)?;
    let fd = cvt(unsafe { libc::open(c.as_ptr(), flags | libc::O_PATH | libc::O_CLOEXEC) } as libc::c_long)?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn openat2(base: &OwnedFd, path: &CStr, flags: i32, resolve: u64) -> Result<OwnedFd, Errno> {
    // SAFETY: open_how is plain data; zero is its default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    let fd = cvt(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            base.as_raw_fd(),
            path.as_ptr(),
            &raw const how,
            size_of::<libc::open_how>(),
        )
    })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The file of descriptor `fd` of process `tgid`, as an O_PATH descriptor of
/// agentmon's. Not the agent's open file itself: closing that may wait on the agent
/// (a FUSE file's FLUSH, answered when the agent pleases), and a held call's
/// targets are dropped wherever it ends, the loop included; this copy is closed
/// here, in a worker ([`worker`]). What is performed on the file reopens it (with
/// a fresh permission check, as the agent) or acts by the descriptor. Also the
/// status flags the agent's descriptor has (its access mode, O_PATH), which decide
/// what the kernel would let a call by descriptor do.
fn agent_fd(tgid: u32, fd: u64) -> Result<(OwnedFd, i32), Errno> {
    let pidfd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, tgid as libc::pid_t, 0) })?;
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    let dup = cvt(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd as libc::c_int, 0) })?;
    let dup = unsafe { OwnedFd::from_raw_fd(dup as RawFd) };
    let flags = cvt(unsafe { libc::fcntl(dup.as_raw_fd(), libc::F_GETFL) } as libc::c_long)? as i32;
    Ok((open_path(&format!("/proc/self/fd/{}", dup.as_raw_fd()), 0)?, flags))
}

fn stat_id(dir: &OwnedFd, name: &CStr) -> Result<Option<(u64, u64)>, Errno> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &raw mut st, libc::AT_SYMLINK_NOFOLLOW) };
    match r {
        0 => Ok(Some((st.st_dev, st.st_ino))),
        _ if Errno::last() == Errno::ENOENT => Ok(None),
        _ => Err(Errno::last()),
    }
}

/// The descriptor `N` a path of the form `/proc/{self,thread-self,PID}/fd/N` names,
/// PID being one of `own` (the caller's process and thread ids as its own pid
/// namespace numbers them).
fn own_fd(path: &[u8], own: &[u32]) -> Option<u64> {
    let rest = std::str::from_utf8(path).ok()?.strip_prefix("/proc/")?;
    let (who, n) = rest.split_once("/fd/")?;
    let mine = who == "self" || who == "thread-self" || who.parse::<u32>().is_ok_and(|p| own.contains(&p));
    let digits = !n.is_empty() && n.len() <= 10 && n.bytes().all(|b| b.is_ascii_digit());
    (mine && digits).then(|| n.parse().ok()).flatten()
}

/// Thread `tid`'s (of process `tgid`) process and thread ids in its own pid
/// namespace (NSpid's last).
fn own_ids(tgid: u32, tid: u32) -> Vec<u32> {
    let last = |f: &str| {
        std::fs::read_to_string(f)
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))?
            .split_whitespace()
            .last()?
            .parse()
            .ok()
    };
    [last(&format!("/proc/{tgid}/status")), last(&format!("/proc/{tgid}/task/{tid}/status"))]
        .into_iter()
        .flatten()
        .collect()
}

/// Whether the agent's `/proc` is the proc file system (not a look-alike its root
/// put there, whose `self/fd/N` would be something else).
fn agents_proc(tid: u32) -> bool {
    let Ok(c) = CString::new(format!("/proc/{tid}/root/proc")) else { return false };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &raw mut st) == 0 && st.f_type == libc::PROC_SUPER_MAGIC }
}

/// Resolves `path` (relative to `dirfd`, AT_FDCWD meaning the cwd) as thread `tid`
/// of process `tgid` sees it: to its parent directory and name (`entry`), or to
/// the file itself.
fn resolve(tgid: u32, tid: u32, dirfd: i64, path: &CStr, entry: bool, follow: bool) -> Result<Target, Errno> {
    let bytes = path.to_bytes();
    if bytes.is_empty() {
        return Err(Errno::ENOENT);
    }
    // `chmod("/proc/self/fd/N")`: how GNU tar and glibc change the mode of a file
    // they hold an O_PATH descriptor of. The magic link cannot be followed beneath
    // the agent's root (EXDEV), and is not agentmon's own: it is the agent's fd N.
    if !entry
        && follow
        && bytes.starts_with(b"/proc/")
        && let Some(n) = own_fd(bytes, &own_ids(tgid, tid))
        && agents_proc(tid)
    {
        let (fd, _) = agent_fd(tgid, n)?;
        let path = fd_path(&fd);
        return Ok(Target::File { fd, path });
    }
    // Absolute paths resolve in the agent's root (which may be a chroot); relative
    // ones from its cwd or the directory fd it named.
    let (base, rel, resolve) = if bytes[0] == b'/' {
        (open_path(&format!("/proc/{tid}/root"), libc::O_DIRECTORY)?, &bytes[1..], libc::RESOLVE_IN_ROOT)
    } else if dirfd as i32 == libc::AT_FDCWD {
        (open_path(&format!("/proc/{tid}/cwd"), libc::O_DIRECTORY)?, bytes, 0)
    } else {
        (open_path(&format!("/proc/{tid}/fd/{}", dirfd as i32), libc::O_DIRECTORY)?, bytes, 0)
    };
    if !entry {
        let rel = if rel.is_empty() { &b"."[..] } else { rel };
        let c = CString::new(rel).map_err(|_| Errno::EINVAL)?;
        let fd = openat2(&base, &c, if follow { 0 } else { libc::O_NOFOLLOW }, resolve)?;
        let path = fd_path(&fd);
        return Ok(Target::File { fd, path });
    }
    let trimmed = {
        let mut r = rel;
        while r.len() > 1 && r.ends_with(b"/") {
            r = &r[..r.len() - 1];
        }
        r
    };
    let (dir, name) = match trimmed.iter().rposition(|&b| b == b'/') {
        Some(i) => (&trimmed[..i.max(1)], &trimmed[i + 1..]),
        None => (&b"."[..], trimmed),
    };
    if name.is_empty() || name == b"." || name == b".." {
        return Err(Errno::EINVAL);
    }
    let dir = CString::new(if dir.is_empty() { &b"."[..] } else { dir }).map_err(|_| Errno::EINVAL)?;
    let dir = openat2(&base, &dir, libc::O_DIRECTORY, resolve)?;
    let name = CString::new(name).map_err(|_| Errno::EINVAL)?;
    let ino = stat_id(&dir, &name)?;
    let parent = fd_path(&dir);
    let path = if parent == "/" {
        format!("/{}", String::from_utf8_lossy(name.as_bytes()))
    } else {
        format!("{parent}/{}", String::from_utf8_lossy(name.as_bytes()))
    };
    Ok(Target::Entry { dir, name, path, ino })
}

/// Why a held call was not resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unresolved {
    /// Its strings in the agent's memory did not come in within [`MEM_WAIT`].
    Unread,
    /// What it names did not resolve within [`MEM_WAIT`]: a lookup on a file
    /// system that answers late (the agent's own FUSE mount).
    Unresolving,
    /// Not tried: the task's steps already stuck on it take its share of the
    /// workers (ETIMEDOUT), or every worker is taken (EAGAIN) ([`worker`]).
    Refused(Errno),
    Failed(Errno),
}

/// Reads and resolves held call `n` of syscall `g`, and who made it: off the loop
/// ([`worker`]), counted against `gate`'s share.
pub fn resolve_held(gate: u32, n: Notif, g: &'static Gated) -> Result<(Caller, Call), Unresolved> {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    let named = Arc::new(AtomicBool::new(false));
    let mark = named.clone();
    match worker::READERS.run(gate, MEM_WAIT, move || resolve_call(&n, g, &mark)) {
        Ok(r) => r.map_err(Unresolved::Failed),
        Err(Stuck::Late) if named.load(Ordering::Acquire) => Err(Unresolved::Unresolving),
        Err(Stuck::Late) => Err(Unresolved::Unread),
        Err(Stuck::Refused(e)) => Err(Unresolved::Refused(e)),
        Err(Stuck::Failed) => Err(Unresolved::Failed(Errno::EIO)),
    }
}

/// [`resolve_held`]'s work: `named` is set once the call's strings are read.
fn resolve_call(
    n: &Notif,
    g: &'static Gated,
    named: &std::sync::atomic::AtomicBool,
) -> Result<(Caller, Call), Errno> {
    let (a, tid) = (n.args, n.tid);
    let caller = Caller::of(tid).ok_or(Errno::ESRCH)?;
    let tgid = caller.tgid;
    let flags = match g.shape {
        Shape::At { f: Some(f), .. } | Shape::Two { f: Some(f), .. } => a[f],
        _ => 0,
    };
    let names = match g.shape {
        Shape::Path { p } | Shape::At { p, .. } => vec![read_cstr_now(tid, a[p])?],
        Shape::Fd { .. } => vec![],
        Shape::Two { p1, p2, .. } => vec![read_cstr_now(tid, a[p1])?, read_cstr_now(tid, a[p2])?],
    };
    named.store(true, std::sync::atomic::Ordering::Release);
    let nofollow = g.nofollow || flags & libc::AT_SYMLINK_NOFOLLOW as u64 != 0;
    let entry = g.nofollow; // delete and rename act on the entry itself
    let agents = |fd: u64| {
        let (fd, flags) = agent_fd(tgid, fd)?;
        let path = fd_path(&fd);
        Ok::<_, Errno>((vec![Target::File { fd, path }], flags))
    };
    let targets = match (g.shape, names.as_slice()) {
        (Shape::Path { .. }, [name]) => {
            vec![resolve(tgid, tid, libc::AT_FDCWD as i64, name, entry, !nofollow)?]
        }
        (Shape::At { d, .. }, [name]) => {
            if name.is_empty() && flags & libc::AT_EMPTY_PATH as u64 != 0 && !entry {
                agents(a[d])?.0
            } else {
                vec![resolve(tgid, tid, a[d] as i32 as i64, name, entry, !nofollow)?]
            }
        }
        (Shape::Fd { fd }, []) => {
            let (targets, flags) = agents(a[fd])?;
            // What the kernel refuses a call by such a descriptor (fchmod, fchown,
            // ftruncate): agentmon acts on the file, not through the descriptor.
            if flags & libc::O_PATH != 0 {
                return Err(Errno::EBADF);
            }
            if g.op == crate::task::Op::Truncate && flags & libc::O_ACCMODE == libc::O_RDONLY {
                return Err(Errno::EINVAL);
            }
            targets
        }
        (Shape::Two { d1, d2, .. }, [n1, n2]) => {
            let dir = |d: Option<usize>| d.map(|d| a[d] as i32 as i64).unwrap_or(libc::AT_FDCWD as i64);
            vec![resolve(tgid, tid, dir(d1), n1, true, false)?, resolve(tgid, tid, dir(d2), n2, true, false)?]
        }
        _ => return Err(Errno::EINVAL),
    };
    if let Some(Target::Entry { ino: None, .. }) = targets.first() {
        // Nothing there to delete, rename, or change: no side effect to approve.
        return Err(Errno::ENOENT);
    }
    Ok((caller, Call { gated: g, targets, flags, vals: g.vals.iter().map(|&i| a[i]).collect() }))
}

/// Performs `call` with the agent's filesystem credentials, in a worker of its own
/// pool (credentials set by raw syscalls are per thread: each step sets them
/// afresh), waiting at most [`ACT_WAIT`] (then ETIMEDOUT, though it may still take
/// effect once the file system answers); `gate` is whose share it counts against.
/// The outer error is the wait's, the inner the operation's.
pub fn perform(gate: u32, call: Call, creds: Creds) -> Result<Result<i64, Errno>, Stuck> {
    worker::PERFORMERS.run(gate, ACT_WAIT, move || {
        become_(&creds)?;
        act(&call)
    })
}

fn become_(c: &Creds) -> Result<(), Errno> {
    // Raw syscalls: glibc's wrappers would change every thread of agentmon.
    unsafe {
        cvt(libc::syscall(libc::SYS_setgroups, c.groups.len(), c.groups.as_ptr()))?;
        libc::syscall(libc::SYS_setfsgid, c.fsgid);
        libc::syscall(libc::SYS_setfsuid, c.fsuid);
        // setfs*id report the previous value, not errors: check they took.
        let uid_now = libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32;
        let gid_now = libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32;
        if uid_now != c.fsuid || gid_now != c.fsgid {
            return Err(Errno::EPERM);
        }
    }
    Ok(())
}

/// The entry must still be the inode it was when the request was shown.
fn unchanged(t: &Target) -> Result<(), Errno> {
    if let Target::Entry { dir, name, ino, .. } = t
        && stat_id(dir, name)? != *ino
    {
        return Err(Errno::ESTALE);
    }
    Ok(())
}

fn act(call: &Call) -> Result<i64, Errno> {
    for t in &call.targets {
        unchanged(t)?;
    }
    let v = |i: usize| call.vals.get(i).copied().unwrap_or(0);
    let r = match (call.gated.op, call.targets.as_slice()) {
        (crate::task::Op::Delete, [Target::Entry { dir, name, .. }]) => {
            let dirflag = if call.gated.name == "rmdir" { libc::AT_REMOVEDIR as u64 } else { call.flags };
            unsafe {
                libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), (dirflag as i32) & libc::AT_REMOVEDIR)
                    as libc::c_long
            }
        }
        (
            crate::task::Op::Rename,
            [Target::Entry { dir: d1, name: n1, .. }, Target::Entry { dir: d2, name: n2, .. }],
        ) => unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                d1.as_raw_fd(),
                n1.as_ptr(),
                d2.as_raw_fd(),
                n2.as_ptr(),
                call.flags as u32,
            )
        },
        (crate::task::Op::Truncate, [Target::File { fd, .. }]) => {
            let w = writable(fd)?;
            unsafe { libc::ftruncate(w.as_raw_fd(), v(0) as libc::off_t) as libc::c_long }
        }
        (crate::task::Op::Chmod, [Target::File { fd, .. }]) => {
            let p = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|_| Errno::EINVAL)?;
            unsafe { libc::chmod(p.as_ptr(), v(0) as libc::mode_t) as libc::c_long }
        }
        // lchown: the link itself, by its entry.
        (crate::task::Op::Chown, [Target::Entry { dir, name, .. }]) => unsafe {
            libc::fchownat(
                dir.as_raw_fd(),
                name.as_ptr(),
                v(0) as libc::uid_t,
                v(1) as libc::gid_t,
                libc::AT_SYMLINK_NOFOLLOW,
            ) as libc::c_long
        },
        (crate::task::Op::Chown, [Target::File { fd, .. }]) => unsafe {
            libc::fchownat(
                fd.as_raw_fd(),
                c"".as_ptr(),
                v(0) as libc::uid_t,
                v(1) as libc::gid_t,
                libc::AT_EMPTY_PATH,
            ) as libc::c_long
        },
        _ => return Err(Errno::ENOSYS),
    };
    cvt(r)
}

/// A writable fd for a regular file, to truncate: reopened through its O_PATH fd
/// (the same inode, with a fresh permission check). Nothing else is opened (a
/// terminal would become agentmon's, a FIFO's waiting readers would be let go):
/// as the kernel's truncate, EISDIR for a directory, EINVAL for the rest.
fn writable(fd: &OwnedFd) -> Result<OwnedFd, Errno> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &raw mut st) } as libc::c_long)?;
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => {}
        libc::S_IFDIR => return Err(Errno::EISDIR),
        _ => return Err(Errno::EINVAL),
    }
    let p = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|_| Errno::EINVAL)?;
    let flags = libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;
    let w = cvt(unsafe { libc::open(p.as_ptr(), flags) } as libc::c_long)?;
    Ok(unsafe { OwnedFd::from_raw_fd(w as RawFd) })
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;

    use super::*;

    fn me() -> u32 {
        nix::unistd::gettid().as_raw() as u32
    }

    #[test]
    fn proc_fd_paths_name_the_callers_own_descriptors() {
        let own = [4242, 4243];
        for (p, want) in [
            ("/proc/self/fd/5", Some(5)),
            ("/proc/thread-self/fd/12", Some(12)),
            ("/proc/4242/fd/0", Some(0)),
            ("/proc/4243/fd/7", Some(7)),
            // Another process's, a component more, not a number, not under /proc.
            ("/proc/1/fd/5", None),
            ("/proc/self/fd/5/x", None),
            ("/proc/self/fd/", None),
            ("/proc/self/fd/-1", None),
            ("/proc/self/fdinfo/5", None),
            ("/tmp/proc/self/fd/5", None),
            ("proc/self/fd/5", None),
        ] {
            assert_eq!(own_fd(p.as_bytes(), &own), want, "{p}");
        }
    }

    #[test]
    fn resolves_entries_relative_absolute_and_through_symlinked_dirs() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir(root.join("real")).unwrap();
        std::fs::write(root.join("real/f"), b"x").unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("link")).unwrap();
        let abs = CString::new(root.join("link/f").as_os_str().as_bytes()).unwrap();
        let t = resolve(std::process::id(), me(), libc::AT_FDCWD as i64, &abs, true, false).unwrap();
        assert_eq!(t.path(), root.join("real/f").to_str().unwrap());
        let Target::Entry { ino, .. } = &t else { panic!("{t:?}") };
        assert!(ino.is_some());
        // Relative to a directory fd of "ours" (this thread is the agent here).
        let dirfd = std::fs::File::open(&root).unwrap();
        let t =
            resolve(std::process::id(), me(), dirfd.as_raw_fd() as i64, c"link/./f", true, false).unwrap();
        assert_eq!(t.path(), root.join("real/f").to_str().unwrap());
        // Following the final symlink (chmod) lands on the file.
        std::os::unix::fs::symlink(root.join("real/f"), root.join("real/g")).unwrap();
        let g = CString::new(root.join("real/g").as_os_str().as_bytes()).unwrap();
        let t = resolve(std::process::id(), me(), libc::AT_FDCWD as i64, &g, false, true).unwrap();
        assert_eq!(t.path(), root.join("real/f").to_str().unwrap());
        assert_eq!(
            resolve(std::process::id(), me(), libc::AT_FDCWD as i64, c"..", true, false).unwrap_err(),
            Errno::EINVAL
        );
    }

    #[test]
    fn performs_on_the_pinned_entry_or_refuses_a_swapped_one() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        std::fs::write(root.join("a"), b"x").unwrap();
        std::fs::write(root.join("b"), b"y").unwrap();
        let g = super::super::filter::lookup(libc::SYS_unlink).unwrap();
        let abs = CString::new(root.join("a").as_os_str().as_bytes()).unwrap();
        let pinned = || Call {
            gated: g,
            targets: vec![
                resolve(std::process::id(), me(), libc::AT_FDCWD as i64, &abs, true, false).unwrap(),
            ],
            flags: 0,
            vals: vec![],
        };
        let call = pinned();
        // Another file moved onto the approved name: refused, nothing deleted.
        std::fs::rename(root.join("b"), root.join("a")).unwrap();
        let creds = Caller::of(me()).unwrap().creds;
        assert_eq!(perform(1, call, creds.clone()), Ok(Err(Errno::ESTALE)));
        assert_eq!(std::fs::read(root.join("a")).unwrap(), b"y");
        // Pinned afresh, the delete goes through.
        let call = pinned();
        assert_eq!(perform(1, call, creds), Ok(Ok(0)));
        assert!(!root.join("a").exists());
    }

    #[test]
    fn calls_by_descriptor_are_refused_as_the_kernel_would() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"xyz").unwrap();
        let held = |nr: i64, fd: RawFd| {
            let g = super::super::filter::lookup(nr).unwrap();
            let n = Notif { id: 0, tid: me(), nr, arch: 0, args: [fd as u64, 0o600, 0, 0, 0, 0] };
            resolve_call(&n, g, &std::sync::atomic::AtomicBool::new(false)).map(|(_, c)| c)
        };
        // ftruncate of a descriptor not open for writing: EINVAL, never reopened.
        let ro = std::fs::File::open(&f).unwrap();
        assert_eq!(held(libc::SYS_ftruncate, ro.as_raw_fd()).unwrap_err(), Errno::EINVAL);
        let rw = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
        assert!(held(libc::SYS_ftruncate, rw.as_raw_fd()).is_ok());
        // fchmod of an O_PATH descriptor: EBADF.
        let opath = open_path(f.to_str().unwrap(), 0).unwrap();
        assert_eq!(held(libc::SYS_fchmod, opath.as_raw_fd()).unwrap_err(), Errno::EBADF);
        assert!(held(libc::SYS_fchmod, ro.as_raw_fd()).is_ok());
        // Truncating anything but a regular file opens nothing.
        let dir = open_path(d.path().to_str().unwrap(), libc::O_DIRECTORY).unwrap();
        assert_eq!(writable(&dir).unwrap_err(), Errno::EISDIR);
        let fifo = d.path().join("p");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let fifo = open_path(fifo.to_str().unwrap(), 0).unwrap();
        assert_eq!(writable(&fifo).unwrap_err(), Errno::EINVAL);
        assert!(writable(&open_path(f.to_str().unwrap(), 0).unwrap()).is_ok());
    }

    #[test]
    fn memory_is_read_off_the_loop() {
        let name = c"/tmp/x";
        assert_eq!(read_cstr(1, me(), name.as_ptr() as u64).unwrap().as_c_str(), name);
        assert_eq!(read_cstr(1, me(), 0), Err(Errno::EFAULT));
    }

    #[test]
    fn credentials_parse_from_proc() {
        let c = Caller::of(me()).unwrap();
        assert_eq!(c.creds.fsuid, nix::unistd::geteuid().as_raw());
        assert_eq!(c.creds.fsgid, nix::unistd::getegid().as_raw());
        assert_eq!(c.tgid, std::process::id());
        // Of a thread that is not the leader: the process it belongs to.
        let t = std::thread::spawn(|| Caller::of(me()).map(|c| c.tgid)).join().unwrap();
        assert_eq!(t, Some(std::process::id()));
    }
}
