//! A task's approval gate and control mailbox outlive a daemon restart in the
//! `agentmon exec` that registered the task: it keeps its own copies of both file
//! descriptors for as long as the task's root runs. While no daemon runs, the gated
//! calls wait in the kernel (the listener is still open; they are not failed with
//! ENOSYS) and the task's requests wait in the mailbox. A restarted daemon takes
//! both back from that exec with pidfd_getfd(2), once it has checked the process is
//! still the one that registered (its start time) and the descriptors are what they
//! should be.

use std::os::fd::{FromRawFd, OwnedFd};

/// The exec holding a task's descriptors: its pid and start time, and the numbers
/// of the descriptors in its table.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Keeper {
    pub pid: u32,
    pub start: u64,
    #[serde(default)]
    pub mailbox: Option<i32>,
    #[serde(default)]
    pub gate: Option<i32>,
}

/// What a descriptor taken back must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A seccomp user-notification listener.
    Listener,
    /// A unix socket.
    Socket,
}

impl Keeper {
    /// A copy of the keeper's descriptor `fd`, checked to be `what`.
    pub fn take(&self, fd: i32, what: Expect) -> Result<OwnedFd, String> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid as libc::pid_t, 0) };
        if pidfd < 0 {
            return Err(format!("pid {}: {}", self.pid, std::io::Error::last_os_error()));
        }
        // SAFETY: a new descriptor we own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
        // Checked after the pidfd is held: a pid reused before that fails here.
        if super::callers::start_of(self.pid) != Some(self.start) {
            return Err(format!("pid {} is no longer the exec that registered the task", self.pid));
        }
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_getfd takes a pidfd, a descriptor number and flags; returns a
        // new descriptor (close-on-exec) or -1.
        let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
        if got < 0 {
            return Err(format!("descriptor {fd} of pid {}: {}", self.pid, std::io::Error::last_os_error()));
        }
        // SAFETY: a new descriptor we own.
        let got = unsafe { OwnedFd::from_raw_fd(got as i32) };
        let link = std::fs::read_link(format!("/proc/self/fd/{}", got.as_raw_fd())).unwrap_or_default();
        let link = link.to_string_lossy();
        let ok = match what {
            Expect::Listener => link == "anon_inode:seccomp notify",
            Expect::Socket => link.starts_with("socket:"),
        };
        if !ok {
            return Err(format!("descriptor {fd} of pid {} is {link}, not a {what:?}", self.pid));
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_a_socket_back_and_refuses_anything_else() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::os::fd::AsRawFd;
        let me = std::process::id();
        let k = Keeper { pid: me, start: super::super::callers::start_of(me).unwrap(), ..Default::default() };
        assert!(k.take(a.as_raw_fd(), Expect::Socket).is_ok());
        let e = k.take(a.as_raw_fd(), Expect::Listener).unwrap_err();
        assert!(e.contains("not a Listener"), "{e}");
        let stale = Keeper { start: k.start + 1, ..k.clone() };
        assert!(stale.take(a.as_raw_fd(), Expect::Socket).unwrap_err().contains("no longer"));
    }
}
