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
//! forms of truncate, chmod, chown), or a duplicate of the agent's own open file
//! (pidfd_getfd, for ftruncate, fchmod, fchown). On approval agentmon performs the
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

/// How long agentmon waits for a string in an agent's memory. The page may be a
/// file's the agent serves itself (on its own FUSE mount) and never come in: read
/// on agentmon's loop, that stopped agentmon for every task. Past this,
/// [`read_cstr`] gives up with ETIMEDOUT. (A userfaultfd page cannot hold the
/// read: a remote read of a missing page fails at once.)
pub const MEM_WAIT: std::time::Duration = std::time::Duration::from_millis(500);
/// Reads running at once (those stuck stay until the agent lets them go), per
/// process and in all: past its own share a process's memory is not read (its own
/// stall, ETIMEDOUT); past the whole, no one's is (EAGAIN, no one blamed).
const MAX_READS_EACH: usize = 2;
const MAX_READS: usize = 64;
static READS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Reads a NUL-terminated string (at most PATH_MAX) from thread `tid`'s memory, in
/// a thread of its own, waiting at most [`MEM_WAIT`].
pub fn read_cstr(tid: u32, addr: u64) -> Result<CString, Errno> {
    let who = tgid_of(tid).unwrap_or(tid);
    {
        let mut r = READS.lock().unwrap_or_else(|e| e.into_inner());
        if r.iter().filter(|&&p| p == who).count() >= MAX_READS_EACH {
            return Err(Errno::ETIMEDOUT);
        }
        if r.len() >= MAX_READS {
            return Err(Errno::EAGAIN);
        }
        r.push(who);
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let r = read_cstr_now(tid, addr);
        let mut all = READS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = all.iter().position(|&p| p == who) {
            all.swap_remove(i);
        }
        drop(all);
        let _ = tx.send(r);
    });
    rx.recv_timeout(MEM_WAIT).unwrap_or(Err(Errno::ETIMEDOUT))
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
    let s = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok())
}

/// Filesystem credentials of thread `tid`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Creds {
    pub fsuid: u32,
    pub fsgid: u32,
    pub groups: Vec<u32>,
}

pub fn creds_of(tid: u32) -> Option<Creds> {
    let s = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let field = |k: &str| s.lines().find_map(|l| l.strip_prefix(k)).map(str::split_whitespace);
    Some(Creds {
        fsuid: field("Uid:")?.nth(3)?.parse().ok()?,
        fsgid: field("Gid:")?.nth(3)?.parse().ok()?,
        groups: field("Groups:")?.filter_map(|g| g.parse().ok()).collect(),
    })
}

/// One pinned target.
#[derive(Debug)]
pub enum Target {
    /// A directory entry: the parent pinned, the name, and the entry's inode at
    /// request time (None: it did not exist).
    Entry { dir: OwnedFd, name: CString, path: String, ino: Option<(u64, u64)> },
    /// A file pinned by an fd: O_PATH from resolving a path (`opath`), or a duplicate
    /// of the agent's own open file.
    File { fd: OwnedFd, path: String, opath: bool },
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

/// A duplicate of file descriptor `fd` of the process of thread `tid`.
fn agent_fd(tid: u32, fd: u64) -> Result<OwnedFd, Errno> {
    let tgid = tgid_of(tid).ok_or(Errno::ESRCH)?;
    let pidfd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, tgid as libc::pid_t, 0) })?;
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    let dup = cvt(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd as libc::c_int, 0) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(dup as RawFd) })
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

/// Thread `tid`'s process and thread ids in its own pid namespace (NSpid's last).
fn own_ids(tid: u32) -> Vec<u32> {
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
    let tgid = tgid_of(tid).unwrap_or(tid);
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
/// sees it: to its parent directory and name (`entry`), or to the file itself.
fn resolve(tid: u32, dirfd: i64, path: &CStr, entry: bool, follow: bool) -> Result<Target, Errno> {
    let bytes = path.to_bytes();
    if bytes.is_empty() {
        return Err(Errno::ENOENT);
    }
    // `chmod("/proc/self/fd/N")`: how GNU tar and glibc change the mode of a file
    // they hold an O_PATH descriptor of. The magic link cannot be followed beneath
    // the agent's root (EXDEV), and is not agentmon's own: it is the agent's fd N.
    if !entry
        && follow
        && let Some(n) = own_fd(bytes, &own_ids(tid))
        && agents_proc(tid)
    {
        let fd = agent_fd(tid, n)?;
        let path = fd_path(&fd);
        return Ok(Target::File { fd, path, opath: true });
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
        return Ok(Target::File { fd, path, opath: true });
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

/// Reads and resolves the held call `n` of syscall `g`.
pub fn resolve_call(n: &Notif, g: &'static Gated) -> Result<Call, Errno> {
    let a = n.args;
    let path = |i: usize| read_cstr(n.tid, a[i]);
    let flags = match g.shape {
        Shape::At { f: Some(f), .. } | Shape::Two { f: Some(f), .. } => a[f],
        _ => 0,
    };
    let nofollow = g.nofollow || flags & libc::AT_SYMLINK_NOFOLLOW as u64 != 0;
    let entry = g.nofollow; // delete and rename act on the entry itself
    let targets = match g.shape {
        Shape::Path { p } => vec![resolve(n.tid, libc::AT_FDCWD as i64, &path(p)?, entry, !nofollow)?],
        Shape::At { d, p, .. } => {
            let name = path(p)?;
            if name.is_empty() && flags & libc::AT_EMPTY_PATH as u64 != 0 && !entry {
                let fd = agent_fd(n.tid, a[d])?;
                let path = fd_path(&fd);
                vec![Target::File { fd, path, opath: false }]
            } else {
                vec![resolve(n.tid, a[d] as i32 as i64, &name, entry, !nofollow)?]
            }
        }
        Shape::Fd { fd } => {
            let fd = agent_fd(n.tid, a[fd])?;
            let path = fd_path(&fd);
            vec![Target::File { fd, path, opath: false }]
        }
        Shape::Two { d1, p1, d2, p2, .. } => {
            let dir = |d: Option<usize>| d.map(|d| a[d] as i32 as i64).unwrap_or(libc::AT_FDCWD as i64);
            vec![
                resolve(n.tid, dir(d1), &path(p1)?, true, false)?,
                resolve(n.tid, dir(d2), &path(p2)?, true, false)?,
            ]
        }
    };
    if let Some(Target::Entry { ino: None, .. }) = targets.first() {
        // Nothing there to delete, rename, or change: no side effect to approve.
        return Err(Errno::ENOENT);
    }
    Ok(Call { gated: g, targets, flags, vals: g.vals.iter().map(|&i| a[i]).collect() })
}

/// Performs `call` with the agent's filesystem credentials: in a thread of its own,
/// since credentials set by raw syscalls are per thread and end with it.
pub fn perform(call: &Call, creds: &Creds) -> Result<i64, Errno> {
    std::thread::scope(|s| {
        s.spawn(|| {
            become_(creds)?;
            act(call)
        })
        .join()
        .unwrap_or(Err(Errno::EIO))
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
        (crate::task::Op::Truncate, [Target::File { fd, opath, .. }]) => {
            let w = writable(fd, *opath)?;
            unsafe { libc::ftruncate(w.as_raw_fd(), v(0) as libc::off_t) as libc::c_long }
        }
        (crate::task::Op::Chmod, [Target::File { fd, opath, .. }]) => {
            if *opath {
                let p =
                    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|_| Errno::EINVAL)?;
                unsafe { libc::chmod(p.as_ptr(), v(0) as libc::mode_t) as libc::c_long }
            } else {
                unsafe { libc::fchmod(fd.as_raw_fd(), v(0) as libc::mode_t) as libc::c_long }
            }
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

/// A writable fd for the file: reopened through its O_PATH fd (the same inode,
/// with a fresh permission check), or the agent's own open file.
fn writable(fd: &OwnedFd, opath: bool) -> Result<OwnedFd, Errno> {
    if !opath {
        return fd.try_clone().map_err(|_| Errno::EBADF);
    }
    let p = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|_| Errno::EINVAL)?;
    let w = cvt(unsafe { libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC) }
        as libc::c_long)?;
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
        let t = resolve(me(), libc::AT_FDCWD as i64, &abs, true, false).unwrap();
        assert_eq!(t.path(), root.join("real/f").to_str().unwrap());
        let Target::Entry { ino, .. } = &t else { panic!("{t:?}") };
        assert!(ino.is_some());
        // Relative to a directory fd of "ours" (this thread is the agent here).
        let dirfd = std::fs::File::open(&root).unwrap();
        let t = resolve(me(), dirfd.as_raw_fd() as i64, c"link/./f", true, false).unwrap();
        assert_eq!(t.path(), root.join("real/f").to_str().unwrap());
        // Following the final symlink (chmod) lands on the file.
        std::os::unix::fs::symlink(root.join("real/f"), root.join("real/g")).unwrap();
        let g = CString::new(root.join("real/g").as_os_str().as_bytes()).unwrap();
        let t = resolve(me(), libc::AT_FDCWD as i64, &g, false, true).unwrap();
        assert_eq!(t.path(), root.join("real/f").to_str().unwrap());
        assert_eq!(resolve(me(), libc::AT_FDCWD as i64, c"..", true, false).unwrap_err(), Errno::EINVAL);
    }

    #[test]
    fn performs_on_the_pinned_entry_or_refuses_a_swapped_one() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        std::fs::write(root.join("a"), b"x").unwrap();
        std::fs::write(root.join("b"), b"y").unwrap();
        let g = super::super::filter::lookup(libc::SYS_unlink).unwrap();
        let abs = CString::new(root.join("a").as_os_str().as_bytes()).unwrap();
        let call = Call {
            gated: g,
            targets: vec![resolve(me(), libc::AT_FDCWD as i64, &abs, true, false).unwrap()],
            flags: 0,
            vals: vec![],
        };
        // Another file moved onto the approved name: refused, nothing deleted.
        std::fs::rename(root.join("b"), root.join("a")).unwrap();
        let creds = creds_of(me()).unwrap();
        assert_eq!(perform(&call, &creds), Err(Errno::ESTALE));
        assert_eq!(std::fs::read(root.join("a")).unwrap(), b"y");
        // Pinned afresh, the delete goes through.
        let call =
            Call { targets: vec![resolve(me(), libc::AT_FDCWD as i64, &abs, true, false).unwrap()], ..call };
        assert_eq!(perform(&call, &creds), Ok(0));
        assert!(!root.join("a").exists());
    }

    #[test]
    fn memory_reads_are_capped_per_process_and_in_all() {
        let name = c"/tmp/x";
        assert_eq!(read_cstr(me(), name.as_ptr() as u64).unwrap().as_c_str(), name);
        // Reads stuck on a process (pids no process has): its own next is refused
        // as its stall; past the whole, anyone's is refused, no one blamed.
        let stuck = 4_000_001u32;
        let set = |v: Vec<u32>| *READS.lock().unwrap() = v;
        set(vec![stuck; MAX_READS_EACH]);
        assert_eq!(read_cstr(stuck, 0), Err(Errno::ETIMEDOUT));
        set((0..MAX_READS as u32).map(|i| 4_100_000 + i).collect());
        assert_eq!(read_cstr(stuck, 0), Err(Errno::EAGAIN));
        set(Vec::new());
        assert_eq!(read_cstr(me(), name.as_ptr() as u64).unwrap().as_c_str(), name);
    }

    #[test]
    fn credentials_parse_from_proc() {
        let c = creds_of(me()).unwrap();
        assert_eq!(c.fsuid, nix::unistd::geteuid().as_raw());
        assert_eq!(tgid_of(me()), Some(std::process::id()));
    }
}
