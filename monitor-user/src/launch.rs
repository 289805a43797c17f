//! Starts a command as a tracked task root.
//!
//! The child is forked and then waits on a pipe before it execs, so agentmon can put
//! its pid in the kernel's tracking map first: the exec itself, and everything after
//! it, is observed. Between fork and exec the child only makes async-signal-safe
//! calls (read, signal, execv, write, _exit); everything is prepared before the fork.

use std::{
    ffi::{CString, OsStr},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::ffi::{OsStrExt, OsStringExt},
    },
    path::{Path, PathBuf},
};

use nix::{
    fcntl::OFlag,
    unistd::{ForkResult, Pid, fork, pipe2},
};

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("no command given")]
    Empty,
    #[error("{0}: command not found")]
    NotFound(String),
    #[error("{cmd}: cannot execute: {err}")]
    Exec { cmd: String, err: nix::errno::Errno },
    #[error("argument contains a NUL byte: {0:?}")]
    Nul(String),
    #[error("cannot start the command: {0}")]
    Sys(#[from] nix::errno::Errno),
    #[error("the command could not be confined (enforcement); it was not started")]
    Confine,
    #[error(
        "standard stream {0}: an enforced command may not have it (a socket agentmon's caller made \
         is not the task's network guard's, and the agent could send from it to any address; only a \
         connected stream socket may be one): give it a pipe, a file or a terminal"
    )]
    Stdio(String),
}

/// Error code the child reports when confinement fails (not an errno).
const CONFINE_FAILED: i32 = -1;

impl LaunchError {
    /// Exit status agentmon returns for this failure (as env(1) and timeout(1) do).
    pub fn exit_code(&self) -> i32 {
        match self {
            LaunchError::NotFound(_) => 127,
            LaunchError::Exec { .. } => 126,
            _ => 125,
        }
    }
}

/// Finds `name` like execvp would: as given if it contains a slash, else on PATH.
pub fn resolve_program(name: &str) -> Result<PathBuf, LaunchError> {
    if name.is_empty() {
        return Err(LaunchError::Empty);
    }
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let cand = dir.join(name);
        if is_executable(&cand) {
            return Ok(cand);
        }
    }
    Err(LaunchError::NotFound(name.into()))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

fn cstring(s: &OsStr) -> Result<CString, LaunchError> {
    CString::new(s.as_bytes()).map_err(|_| LaunchError::Nul(s.to_string_lossy().into_owned()))
}

/// A forked child waiting for [`Held::release`] before it execs.
pub struct Held {
    pub pid: Pid,
    pub program: PathBuf,
    pub argv: Vec<String>,
    go: Option<OwnedFd>,
    err: OwnedFd,
    /// Where the child sends its approval listener (when the task is gated).
    gate: Option<OwnedFd>,
    /// The descriptors agentmon's caller left open that an enforced command does
    /// not get (see [`inherited`]), described: for its `task_start`.
    pub closed: Vec<String>,
}

/// The descriptors this process would pass on at exec (no close-on-exec flag), from
/// 3 up, other than `keep`, each with what it is (`socket (inet, datagram)`). Every
/// descriptor agentmon opens itself is close-on-exec: these came from its caller.
/// An enforced command does not get them: a socket made outside the task's cgroup
/// is not the network guard's (its address hooks and packet check are the socket's
/// cgroup's), a connected unix socket (a container runtime's) needs no connect, and
/// a file opened for writing needs no Landlock right.
pub fn inherited(keep: Option<std::os::fd::RawFd>) -> Vec<(i32, String)> {
    // Not listed: said as such (close_range still marks them all).
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return vec![(-1, "not listed".into())] };
    let mut fds: Vec<i32> = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    fds.sort_unstable();
    fds.into_iter()
        .filter(|&fd| fd > 2 && Some(fd) != keep)
        // SAFETY: F_GETFD only reads the descriptor's flags (-1: closed meanwhile,
        // such as the listing's own descriptor).
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } == 0)
        .map(|fd| (fd, describe(fd)))
        .collect()
}

/// The int-sized SOL_SOCKET option `o` of descriptor `fd` (None: not a socket, or
/// refused).
pub fn socket_option(fd: i32, o: libc::c_int) -> Option<libc::c_int> {
    let (mut v, mut len) = (0 as libc::c_int, std::mem::size_of::<libc::c_int>() as libc::socklen_t);
    // SAFETY: an int-sized option into an int.
    let r = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, o, (&raw mut v).cast(), &mut len) };
    (r == 0).then_some(v)
}

/// Why standard stream `fd` may not go to an enforced command, if it may not: a
/// socket the agent could send from to an address of its choosing, past the task's
/// guard (the socket was made outside the task's cgroup: its hooks are that
/// cgroup's). Only a connected stream socket (unix or inet) may be one: it cannot be
/// pointed elsewhere.
fn stdio_escape(fd: i32) -> Option<String> {
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    if !target.to_string_lossy().starts_with("socket:") {
        return None;
    }
    let stream = matches!(socket_option(fd, libc::SO_TYPE), Some(libc::SOCK_STREAM | libc::SOCK_SEQPACKET));
    let family =
        matches!(socket_option(fd, libc::SO_DOMAIN), Some(libc::AF_UNIX | libc::AF_INET | libc::AF_INET6));
    // SAFETY: getpeername writes at most `len` bytes into the storage.
    let connected = unsafe {
        let mut a: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        libc::getpeername(fd, (&raw mut a).cast(), &mut len) == 0
    };
    let said = if connected { "connected" } else { "not connected" };
    (!(stream && family && connected)).then(|| format!("fd {fd}: {}, {said}", describe(fd)))
}

/// What descriptor `fd` is: a socket's family and type, else what /proc names.
fn describe(fd: i32) -> String {
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).map(|t| t.display().to_string());
    let Ok(target) = target else { return "unknown".into() };
    if !target.starts_with("socket:") {
        return target;
    }
    let opt = |o| socket_option(fd, o);
    let family = match opt(libc::SO_DOMAIN) {
        Some(libc::AF_UNIX) => "unix".to_string(),
        Some(libc::AF_INET) => "inet".to_string(),
        Some(libc::AF_INET6) => "inet6".to_string(),
        Some(libc::AF_NETLINK) => "netlink".to_string(),
        Some(libc::AF_PACKET) => "packet".to_string(),
        Some(f) => format!("family {f}"),
        None => "family unknown".to_string(),
    };
    let kind = match opt(libc::SO_TYPE) {
        Some(libc::SOCK_STREAM) => "stream".to_string(),
        Some(libc::SOCK_DGRAM) => "datagram".to_string(),
        Some(libc::SOCK_SEQPACKET) => "seqpacket".to_string(),
        Some(libc::SOCK_RAW) => "raw".to_string(),
        Some(t) => format!("type {t}"),
        None => "type unknown".to_string(),
    };
    format!("socket ({family}, {kind})")
}

/// Marks every descriptor from 3 up close-on-exec (close_range, Linux 5.11); where
/// that is refused (an older kernel, a container's seccomp profile), each of
/// `listed` (the parent's [`inherited`] list, taken just before the fork: every
/// other descriptor is close-on-exec already). Only system calls: safe between fork
/// and exec.
unsafe fn cloexec_from_3(listed: &[i32]) -> bool {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    unsafe {
        if libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, libc::c_uint::MAX, CLOSE_RANGE_CLOEXEC)
            == 0
        {
            return true;
        }
        listed.iter().all(|&fd| libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) == 0)
    }
}

/// struct clone_args (include/uapi/linux/sched.h) up to `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// include/uapi/linux/sched.h (Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// fork(2) as clone3 with CLONE_INTO_CGROUP: the child starts in the cgroup `dir`
/// (a directory descriptor) instead of its parent's. Moving a process later takes
/// the kernel's cgroup lock for writing, which waits for an RCU grace period (9-19
/// ms at a task's start, measured); a child made there takes it only for reading.
/// Refused where the caller may not write the cgroup (not root) or the kernel is
/// older than 5.7 (EINVAL, ENOSYS): the caller forks as usual then.
///
/// # Safety
/// As fork in a threaded process: until it execs, the child may make only
/// async-signal-safe calls (glibc's fork handlers do not run).
unsafe fn fork_into(dir: std::os::fd::BorrowedFd<'_>) -> nix::Result<libc::pid_t> {
    let mut args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: dir.as_raw_fd() as u64,
        ..Default::default()
    };
    // SAFETY: clone_args of the size given; no stack, so the child runs on a copy of
    // this one, as after fork.
    let r = unsafe { libc::syscall(libc::SYS_clone3, &raw mut args, std::mem::size_of::<CloneArgs>()) };
    if r < 0 { Err(nix::errno::Errno::last()) } else { Ok(r as libc::pid_t) }
}

/// Forks `cmd` with agentmon's environment, less its secrets (`SECRET_ENV`), plus
/// `extra_env`; the child blocks until released, then applies `confine`
/// (enforcement) and execs. A child that cannot be confined never execs. `inherit`:
/// a descriptor the command keeps across exec (the task's control mailbox); an
/// `enforced` command keeps no other but its standard streams ([`inherited`]). (An
/// observed one may be confined too, by the watching filter alone: it keeps them.)
/// `into`: the task's cgroup, to make the child in ([`fork_into`]) where the kernel
/// lets this process (the task's `task_start` says whether it was).
pub fn spawn_held(
    cmd: &[String],
    extra_env: &[(String, String)],
    confine: Option<crate::enforce::Confinement>,
    inherit: Option<std::os::fd::RawFd>,
    enforced: bool,
    into: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<Held, LaunchError> {
    let first = cmd.first().ok_or(LaunchError::Empty)?;
    let program = resolve_program(first)?;
    let path = cstring(program.as_os_str())?;
    let args: Vec<CString> = cmd.iter().map(|a| cstring(OsStr::new(a))).collect::<Result<_, _>>()?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envs: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| !extra_env.iter().any(|(e, _)| OsStr::new(e) == k))
        .filter(|(k, _)| !crate::nats::config::SECRET_ENV.iter().any(|s| OsStr::new(s) == k))
        .map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).map_err(|_| LaunchError::Nul("environment".into()))
        })
        .collect::<Result<_, _>>()?;
    for (k, v) in extra_env {
        envs.push(CString::new(format!("{k}={v}")).map_err(|_| LaunchError::Nul(k.clone()))?);
    }
    let mut envp: Vec<*const libc::c_char> = envs.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let (go_r, go_w) = pipe2(OFlag::O_CLOEXEC)?;
    let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC)?;
    let gate_chan = match confine.as_ref().and_then(|c| c.gate.as_ref()) {
        Some(_) => {
            use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
            Some(socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?)
        }
        None => None,
    };

    // An enforced task's capabilities leave the bounding and ambient sets before the
    // parent returns, and so before the child is tracked (a capset, where one is
    // needed, is agentmon's, not the agent's); its exec clears the rest
    // (enforce/caps.rs).
    let drop_caps = confine.as_ref().is_some_and(|c| c.drop_caps);
    let (ready_r, ready_w) = pipe2(OFlag::O_CLOEXEC)?;
    if enforced && let Some(why) = (0..3).find_map(stdio_escape) {
        return Err(LaunchError::Stdio(why));
    }
    let closed = if enforced { inherited(inherit) } else { Vec::new() };
    // Their numbers, for the child should close_range be refused.
    let closing: Vec<i32> = closed.iter().map(|(fd, _)| *fd).filter(|fd| *fd >= 0).collect();
    let closed: Vec<String> = closed
        .into_iter()
        .map(|(fd, what)| if fd < 0 { format!("descriptors {what}") } else { format!("fd {fd}: {what}") })
        .collect();

    // SAFETY: the child only calls async-signal-safe functions on memory prepared above.
    let made = match into.map(|dir| unsafe { fork_into(dir) }) {
        Some(Ok(0)) => ForkResult::Child,
        Some(Ok(pid)) => ForkResult::Parent { child: Pid::from_raw(pid) },
        Some(Err(e)) => {
            tracing::debug!("the command is made outside its cgroup and moved there: clone3: {e}");
            unsafe { fork() }?
        }
        None => unsafe { fork() }?,
    };
    match made {
        ForkResult::Child => unsafe {
            if drop_caps && !crate::enforce::caps::drop_all() {
                let e = CONFINE_FAILED;
                libc::write(err_w.as_raw_fd(), (&raw const e).cast(), 4);
                libc::_exit(125);
            }
            libc::write(ready_w.as_raw_fd(), [1u8].as_ptr().cast(), 1);
            let mut b = [0u8; 1];
            loop {
                let r = libc::read(go_r.as_raw_fd(), b.as_mut_ptr().cast(), 1);
                if r == 1 {
                    break;
                }
                if r == 0 || *libc::__errno_location() != libc::EINTR {
                    // agentmon went away before releasing us: never run untracked.
                    libc::_exit(125);
                }
            }
            // Rust ignores SIGPIPE in its own process, agentmon the terminal's stop
            // signals and the limits' (runner/runtime.rs); give the command the defaults.
            for s in
                [libc::SIGPIPE, libc::SIGTTOU, libc::SIGTTIN, libc::SIGTSTP, libc::SIGXFSZ, libc::SIGXCPU]
            {
                libc::signal(s, libc::SIG_DFL);
            }
            // An enforced command keeps only its standard streams and the mailbox.
            let kept = !enforced || cloexec_from_3(&closing);
            if !kept || inherit.is_some_and(|fd| libc::fcntl(fd, libc::F_SETFD, 0) != 0) {
                let e = CONFINE_FAILED;
                libc::write(err_w.as_raw_fd(), (&raw const e).cast(), 4);
                libc::_exit(125);
            }
            // Everything below was prepared before the fork; restrict_self and
            // apply_filter only make syscalls (prctl, landlock_restrict_self, seccomp).
            if let Some(c) = confine {
                let crate::enforce::Confinement { landlock, seccomp, gate, .. } = c;
                // The gate's filter before the denial filter: its listener is sent to
                // agentmon and closed here, so the command never holds it.
                let ok = landlock.is_none_or(|r| r.restrict_self().is_ok())
                    && match (&gate, &gate_chan) {
                        (Some(prog), Some((_, child_end))) => {
                            crate::gate::filter::install_and_send(prog, child_end.as_raw_fd())
                        }
                        _ => true,
                    }
                    && seccomp.as_ref().is_none_or(|f| seccompiler::apply_filter(f).is_ok());
                // Never freed here: made by clone3 (fork_into), no fork handler reset
                // the allocator's locks, which another thread may have held.
                std::mem::forget((seccomp, gate));
                if !ok {
                    let e = CONFINE_FAILED;
                    libc::write(err_w.as_raw_fd(), (&raw const e).cast(), 4);
                    libc::_exit(125);
                }
            }
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            let e = *libc::__errno_location();
            libc::write(err_w.as_raw_fd(), (&raw const e).cast(), 4);
            libc::_exit(if e == libc::ENOENT { 127 } else { 126 });
        },
        ForkResult::Parent { child } => {
            drop(go_r);
            drop(err_w);
            drop(ready_w);
            let gate = gate_chan.map(|(ours, _)| ours);
            let held =
                Held { pid: child, program, argv: cmd.to_vec(), go: Some(go_w), err: err_r, gate, closed };
            let mut b = [0u8; 1];
            loop {
                match nix::unistd::read(&ready_r, &mut b) {
                    Ok(1) => return Ok(held),
                    Err(nix::errno::Errno::EINTR) => continue,
                    // The child exited: its error is on the error pipe, or it was
                    // killed (no error written; reaped here).
                    _ => {
                        let r = held.exec_done(|| {});
                        if r.is_ok() {
                            let _ = nix::sys::wait::waitpid(child, None);
                        }
                        return r.and(Err(LaunchError::Confine));
                    }
                }
            }
        }
    }
}

impl Held {
    /// The channel the child sends its approval listener on (once released).
    pub fn take_gate(&mut self) -> Option<OwnedFd> {
        self.gate.take()
    }

    /// Lets the child exec; returns once it has, or with the exec error.
    pub fn release(mut self) -> Result<Pid, LaunchError> {
        self.go()?;
        self.exec_done(|| {})
    }

    /// Lets the child go on to its exec (once).
    pub fn go(&mut self) -> Result<(), LaunchError> {
        if let Some(go) = self.go.take() {
            nix::unistd::write(&go, &[1u8])?;
        }
        Ok(())
    }

    /// Waits until the child has exec'd (or failed to), calling `between` every
    /// 20 ms meanwhile: a task whose gate holds exec has its root's own exec held,
    /// and whoever serves the gate must be able to let it go.
    pub fn exec_done(self, mut between: impl FnMut()) -> Result<Pid, LaunchError> {
        use std::os::fd::AsFd;

        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        loop {
            let mut fds = [PollFd::new(self.err.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(20u16)) {
                Ok(0) => between(),
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut buf = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match nix::unistd::read(&self.err, &mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        if got == 0 {
            return Ok(self.pid); // the pipe closed on exec: success
        }
        let code = i32::from_ne_bytes(buf);
        let errno = nix::errno::Errno::from_raw(code);
        let cmd = self.argv.first().cloned().unwrap_or_default();
        // Reap the child, which has exited.
        let _ = nix::sys::wait::waitpid(self.pid, None);
        if code == CONFINE_FAILED {
            return Err(LaunchError::Confine);
        }
        Err(if errno == nix::errno::Errno::ENOENT {
            LaunchError::NotFound(cmd)
        } else {
            LaunchError::Exec { cmd, err: errno }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_like_execvp() {
        assert!(resolve_program("sh").unwrap().is_absolute());
        assert_eq!(resolve_program("./x").unwrap(), PathBuf::from("./x"));
        assert!(matches!(resolve_program("no-such-cmd-agentmon"), Err(LaunchError::NotFound(_))));
        assert!(matches!(resolve_program(""), Err(LaunchError::Empty)));
    }

    #[test]
    fn held_child_runs_after_release_and_reports_exec_errors() {
        let h = spawn_held(
            &["sh".into(), "-c".into(), "exit $X".into()],
            &[("X".into(), "7".into())],
            None,
            None,
            false,
            None,
        )
        .unwrap();
        let pid = h.release().unwrap();
        let st = nix::sys::wait::waitpid(pid, None).unwrap();
        assert_eq!(st, nix::sys::wait::WaitStatus::Exited(pid, 7));
        let h = spawn_held(&["/etc/passwd".into()], &[], None, None, false, None).unwrap();
        let e = h.release().unwrap_err();
        assert_eq!(e.exit_code(), 126, "{e}");
    }
}
