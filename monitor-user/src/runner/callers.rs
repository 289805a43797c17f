//! Who is calling on the control socket, decided when the connection is accepted
//! and checked again when the request is answered.
//!
//! Authority is the connecting process's (SO_PEERCRED at connect), never the
//! socket's: the kernel attaches the writer's credentials to every message
//! (SO_PASSCRED on the listener, inherited by accepted sockets), so a connection
//! handed to another process (SCM_RIGHTS, inheritance) and written by it is seen as
//! written by someone else and refused. The connector must still be alive (same
//! start time) when its request is answered: a task process that connected, passed
//! the socket on and exited cannot leave operator rights behind. A process tracked
//! in a task, or in the cgroup of one, at connect or at answer time is a task
//! caller: it may delegate and announce steps, nothing else.
//!
//! Reading is off the event loop with bounded slots per caller class, so a local
//! user holding connections open cannot starve operators or tasks; refusals are
//! counted and logged at most once per [`LOG_EVERY`].

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{net::UnixStream, sync::mpsc};

pub use crate::noise::Noise;
use crate::{ctl, kernel::loader::Sensors};

/// Who connected, as the kernel says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub pid: u32,
    pub uid: u32,
    /// The connector's start time (clock ticks since boot, /proc/PID/stat).
    pub start: u64,
    /// The task cookie it was tracked under at connect, if any.
    pub task: Option<u32>,
}

/// How much a caller may ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Root or agentmon's own user, outside every task.
    Operator,
    /// A process of a task (by cookie): delegation and steps only.
    Task(u32),
    /// Any other local user: refused, but read so that the refusal is answered.
    User(u32),
    /// The connector exited before the connection was accepted: refused, but read
    /// so that whoever writes on the connection is named.
    Gone,
}

impl Class {
    fn slots(self) -> usize {
        match self {
            Class::Operator => 32,
            Class::Task(_) | Class::User(_) | Class::Gone => 4,
        }
    }
}

/// A connection whose request has been read.
pub struct Incoming {
    pub stream: UnixStream,
    pub caller: Caller,
    pub req: Result<ctl::Request, String>,
    /// The processes that wrote the request's bytes (SCM_CREDENTIALS).
    pub writers: Vec<u32>,
    /// Came through the mailbox of this task (cookie): its writer is named by
    /// credentials a root agent could forge, so it may only delegate and announce
    /// steps, and only from inside that task.
    pub mailbox: Option<u32>,
    /// Descriptors sent with the request (a gate's listener).
    pub fds: Vec<std::os::fd::OwnedFd>,
}

/// At most one log line per this long about refused connections.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Connections being read, off the event loop.
pub struct Reader {
    tx: mpsc::Sender<Incoming>,
    pub rx: mpsc::Receiver<Incoming>,
    busy: Arc<Mutex<HashMap<Class, usize>>>,
    /// Connections refused since the last log line, by uid.
    refused: HashMap<Option<u32>, u64>,
    logged: Option<Instant>,
    /// What callers without rights may make agentmon write.
    pub noise: Noise,
}

impl Default for Reader {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(64);
        Self {
            tx,
            rx,
            busy: Default::default(),
            refused: HashMap::new(),
            logged: None,
            noise: Noise::default(),
        }
    }
}

/// Start time of `pid` (clock ticks since boot), None if it is gone.
pub fn start_of(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].split(' ').nth(19)?.parse().ok()
}

/// Whether `pid` sits in a cgroup agentmon made for a task (or beneath one).
pub fn in_task_cgroup(pid: u32) -> bool {
    crate::enforce::cgroup::of_pid(pid).is_some_and(|p| crate::enforce::cgroup::is_task_path(&p))
}

impl Caller {
    /// Who connected on `stream`; None when the kernel cannot say (another pid
    /// namespace) or the connector is already gone.
    /// A connector already gone gets start time 0: its request is read (the writer is
    /// named then) and refused.
    pub fn of(stream: &UnixStream, sensors: &Sensors) -> Option<Caller> {
        let cred = stream.peer_cred().ok()?;
        let pid = u32::try_from(cred.pid()?).ok().filter(|p| *p > 0)?;
        let start = start_of(pid).unwrap_or(0);
        let task = sensors.task_of(pid);
        Some(Caller { pid, uid: cred.uid(), start, task })
    }

    pub fn class(&self) -> Class {
        match self.task {
            _ if self.start == 0 => Class::Gone,
            Some(c) => Class::Task(c),
            None if in_task_cgroup(self.pid) => Class::Task(0),
            None if self.uid == 0 || self.uid == nix::unistd::geteuid().as_raw() => Class::Operator,
            None => Class::User(self.uid),
        }
    }

    /// Checks, when the request is answered, that it still speaks for the process
    /// that connected: the same process wrote it and is still alive. `Err`: why not.
    pub fn speaks_for(&self, writers: &[u32]) -> Result<(), String> {
        if self.start == 0 || start_of(self.pid) != Some(self.start) {
            return Err(format!(
                "the process that connected (pid {}) exited before its request was answered",
                self.pid
            ));
        }
        if let Some(w) = writers.iter().find(|w| **w != self.pid) {
            return Err(format!(
                "the request was written by pid {w}, not by the process that connected (pid {}): a control \
                 connection passed to another process carries no rights",
                self.pid
            ));
        }
        if writers.is_empty() {
            return Err("the request carried no credentials".into());
        }
        Ok(())
    }

    /// The task the caller belongs to, at connect or now (cookie 0: in a task's
    /// cgroup but not tracked).
    pub fn task_now(&self, sensors: &Sensors) -> Option<u32> {
        self.task.or_else(|| sensors.task_of(self.pid)).or_else(|| in_task_cgroup(self.pid).then_some(0))
    }

    /// Who acted, for a refusal: a writer that is not the connector (the process the
    /// connection was passed to), else the connector; and its task cookie.
    pub fn actor(&self, writers: &[u32], sensors: &Sensors) -> (u32, Option<u32>) {
        match writers.iter().find(|w| **w != self.pid && **w != 0) {
            Some(&w) => (w, sensors.task_of(w).or_else(|| in_task_cgroup(w).then_some(0))),
            None => (self.pid, self.task_now(sensors)),
        }
    }
}

impl Reader {
    /// Reads the request of a new connection in a task of its own, if the caller's
    /// class has a free slot; else the connection is closed and the refusal counted.
    pub fn accept(&mut self, mut stream: UnixStream, sensors: &Sensors) {
        let Some(caller) = Caller::of(&stream, sensors) else {
            self.refuse(None);
            return;
        };
        let class = caller.class();
        {
            let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
            let n = busy.entry(class).or_default();
            if *n >= class.slots() {
                drop(busy);
                self.refuse(Some(caller.uid));
                return;
            }
            *n += 1;
        }
        let (tx, busy) = (self.tx.clone(), self.busy.clone());
        tokio::spawn(async move {
            // Only operators hand descriptors over (a gate's listener, a mailbox).
            let keep = if class == Class::Operator { 1 } else { 0 };
            let (req, fds, writers) = ctl::read_request_fds(&mut stream, keep).await;
            if let Some(n) = busy.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&class) {
                *n -= 1;
            }
            let _ = tx.send(Incoming { stream, caller, req, writers, fds, mailbox: None }).await;
        });
    }

    fn refuse(&mut self, uid: Option<u32>) {
        *self.refused.entry(uid).or_default() += 1;
        if self.logged.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            let by: Vec<String> = self
                .refused
                .iter()
                .map(|(u, n)| match u {
                    Some(u) => format!("{n} from uid {u}"),
                    None => format!("{n} from callers the kernel could not name"),
                })
                .collect();
            tracing::warn!(
                "control socket: connections refused (too many being read for the caller): {}",
                by.join(", ")
            );
            self.refused.clear();
            self.logged = Some(Instant::now());
        }
    }
}

/// A task's control mailbox: the agentmon end of a socket pair whose other end the
/// task's root inherits (`AGENTMON_CTL_FD`). Its processes reach agentmon through it
/// where they may not create unix sockets (enforce mode): each message is one
/// request with the write end of a reply socket attached; the kernel names the
/// writer of each (SO_PASSCRED), and authority is the writer's, as on the socket.
pub struct Mailbox {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
    /// The task (cookie) whose root inherited the other end.
    pub task: u32,
    /// Every process holding the other end has exited.
    pub closed: bool,
}

/// Requests taken from a mailbox per wakeup: a task flooding its own mailbox delays
/// its own requests, not the loop.
const MAILBOX_BATCH: usize = 16;

impl Mailbox {
    /// A socket pair: (agentmon's end, the end the task inherits).
    pub fn socketpair() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        Ok(socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?)
    }

    /// Agentmon's end (of [`Mailbox::socketpair`], or handed over by an exec that
    /// registered with a daemon).
    pub fn new(fd: std::os::fd::OwnedFd, task: u32) -> std::io::Result<Self> {
        use nix::sys::socket::{setsockopt, sockopt};
        setsockopt(&fd, sockopt::PassCred, &true)?;
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let nonblock = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(nonblock))?;
        // SAFETY: the AsyncFd owns the descriptor for as long as it is registered.
        let fd =
            unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
        Ok(Self { fd, task, closed: false })
    }

    /// Resolves when requests may be waiting.
    pub async fn ready(&self) -> std::io::Result<()> {
        let mut g = self.fd.readable().await?;
        g.clear_ready();
        Ok(())
    }

    /// Takes the requests waiting now.
    pub fn take(&mut self, sensors: &Sensors) -> Vec<Incoming> {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
        let mut out = Vec::new();
        for _ in 0..MAILBOX_BATCH {
            let mut buf = vec![0u8; 64 * 1024];
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let mut cmsg = nix::cmsg_space!([RawFd; ctl::SCM_MAX_FD], libc::ucred);
            let flags = MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT;
            let (n, mut fds, who) =
                match recvmsg::<()>(self.fd.get_ref().as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
                    Ok(m) => {
                        let (mut fds, mut who) = (Vec::new(), None);
                        for c in m.cmsgs().into_iter().flatten() {
                            match c {
                                // SAFETY: the kernel just installed these descriptors for
                                // us. One is the reply's; the rest are closed at once.
                                ControlMessageOwned::ScmRights(v) => {
                                    for fd in v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }) {
                                        if fds.is_empty() {
                                            fds.push(fd);
                                        }
                                    }
                                }
                                ControlMessageOwned::ScmCredentials(u) => who = Some(u),
                                _ => {}
                            }
                        }
                        (m.bytes, fds, who)
                    }
                    Err(nix::errno::Errno::EAGAIN) => break,
                    Err(e) => {
                        tracing::warn!("task mailbox: {e}");
                        break;
                    }
                };
            if n == 0 && fds.is_empty() {
                self.closed = true;
                break;
            }
            // The reply goes on the first descriptor; without one nobody hears it.
            if fds.is_empty() {
                continue;
            }
            let reply = fds.remove(0);
            let stream = std::os::unix::net::UnixStream::from(reply);
            let Ok(stream) = stream.set_nonblocking(true).and_then(|()| UnixStream::from_std(stream)) else {
                continue;
            };
            let Some(u) = who.filter(|u| u.pid() > 0) else { continue };
            let pid = u.pid() as u32;
            let Some(start) = start_of(pid) else { continue };
            let caller = Caller { pid, uid: u.uid(), start, task: sensors.task_of(pid) };
            let req =
                std::str::from_utf8(&buf[..n]).map_err(|e| format!("malformed request: {e}")).and_then(|t| {
                    serde_json::from_str(t.trim_end()).map_err(|e| format!("malformed request: {e}"))
                });
            out.push(Incoming { stream, caller, req, writers: vec![pid], fds, mailbox: Some(self.task) });
        }
        out
    }
}

/// Resolves with the index of a mailbox that has requests (never, with none open).
pub async fn mailbox_ready(boxes: &[Mailbox]) -> (usize, std::io::Result<()>) {
    let open: Vec<_> = boxes
        .iter()
        .enumerate()
        .filter(|(_, m)| !m.closed)
        .map(|(i, m)| Box::pin(async move { (i, m.ready().await) }))
        .collect();
    if open.is_empty() {
        return std::future::pending().await;
    }
    futures_util::future::select_all(open).await.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_times_name_live_processes_only() {
        assert_eq!(start_of(u32::MAX), None);
        let me = start_of(std::process::id()).expect("our own start time");
        assert_eq!(start_of(std::process::id()), Some(me), "stable while we live");
    }

    #[test]
    fn a_request_must_come_from_the_connector_alive() {
        let me = Caller {
            pid: std::process::id(),
            uid: 0,
            start: start_of(std::process::id()).unwrap(),
            task: None,
        };
        assert_eq!(me.speaks_for(&[me.pid, me.pid]), Ok(()));
        assert!(me.speaks_for(&[me.pid, 1]).unwrap_err().contains("written by pid 1"));
        assert!(me.speaks_for(&[]).is_err());
        let other = Caller { pid: 1, start: start_of(1).unwrap(), ..me.clone() };
        assert!(other.speaks_for(&[me.pid]).unwrap_err().contains("not by the process that connected"));
        let gone = Caller { start: me.start + 1, ..me.clone() };
        assert!(gone.speaks_for(&[me.pid]).unwrap_err().contains("exited"));
    }
}
