//! The control socket of a running `agentmon exec`: delegation and containment.
//!
//! Delegation: a process inside a task runs `agentmon exec --task child.yaml -- …`;
//! that agentmon asks the one watching the task (path in `AGENTMON_CTL`) to bind its
//! command to the sub-task. The watching agentmon decides with what it knows, not
//! what the caller claims: the caller must be a tracked process of a task (checked
//! by its kernel credentials, SO_PEERCRED), the command must be the caller's own
//! child in that task, and the sub-task's scope must be within the task's.
//!
//! Containment (`agentmon kill|freeze|thaw TASK`) is for operators: the caller must
//! be outside every task and run as root or as agentmon's own user.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

/// Environment variable naming the control socket, set for the task's command.
pub const CTL_ENV: &str = "AGENTMON_CTL";
/// Environment variable with the number of the task's inherited control mailbox
/// (a socket: see `runner/callers.rs`), how a task that may not create unix sockets
/// reaches agentmon.
pub const CTL_FD_ENV: &str = "AGENTMON_CTL_FD";
/// Set (to 1) for the processes of an enforced task: a sub-task they delegate to is
/// confined by its own scope too. (Cleared, the delegation is refused: see
/// `Request::Delegate`.)
pub const ENFORCED_ENV: &str = "AGENTMON_ENFORCED";
/// Environment variable with the task id, set for the task's command (information
/// only: nothing trusts it).
pub const TASK_ENV: &str = "AGENTMON_TASK";
const MAX_REQUEST: u64 = 256 * 1024;
/// Where control sockets live: root's, not writable by anyone else.
pub const SOCKET_DIR: &str = "/run/agentmon";
/// Start of the error an agentmon gives for a task or approval it does not have.
pub const NOT_MINE: &str = "not here: no";

#[derive(Debug, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Bind process `pid` (the caller's held child) to the task in `manifest`.
    /// `confined`: the child runs under the sub-task's own sandbox (required when
    /// the calling task is enforced).
    Delegate {
        manifest: String,
        file: String,
        pid: u32,
        #[serde(default)]
        confined: bool,
    },
    /// Containment, from an operator outside every task: kill the task's processes.
    /// `via`: who the operator relays for (a signed NATS command), recorded.
    Kill {
        task: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        via: Option<String>,
    },
    /// Freeze the task's processes (kept for forensics) until thawed or killed.
    Freeze {
        task: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        via: Option<String>,
    },
    Thaw {
        task: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        via: Option<String>,
    },
    /// Let held call `id` proceed (agentmon performs it); with `for_s`, also later
    /// calls of the same task and operation under the same directory, for that long.
    Approve {
        id: String,
        #[serde(default)]
        for_s: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        via: Option<String>,
        /// Why, in the approver's words (recorded with the decision).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Refuse held call `id` (it fails with EPERM).
    Deny {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        via: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// List the held calls waiting for an approver.
    Approvals {},
    /// Tasks, their processes and state, and the pending approvals.
    Status {},
    /// From `agentmon exec` when a daemon runs: bind the caller's held child to a
    /// new top-level task (the daemon creates its cgroup and network guard).
    Start {
        manifest: String,
        file: String,
        pid: u32,
        #[serde(default)]
        enforce: bool,
        /// Also write the task's events to this file.
        #[serde(default)]
        events: Option<String>,
        /// The task's grant (`task::grant`), the text of its grant file.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grant: Option<String>,
        /// The files the command itself executes (its program and interpreters).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        launch: Vec<String>,
        /// The client confined the command for the BPF LSM tier (no Landlock): the
        /// daemon must enforce on that tier too, or refuse.
        #[serde(default)]
        lsm: bool,
        /// Where the client keeps its own copy of the task's mailbox (attached), for
        /// a restarted daemon to take back.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kept_mailbox: Option<i32>,
        /// Descriptors from the client's caller that the enforced command was not
        /// given (`launch::inherited`), for its `task_start`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        closed_fds: Vec<String>,
        /// The cookie of the cgroup a [`Request::Prepare`] made for it (the child
        /// was made in it, or is moved there).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prepared: Option<u32>,
    },
    /// From `agentmon exec` when a daemon runs, before it forks: a cgroup for the
    /// task it is about to start ([`Reply::prepared`]), to make the child in.
    Prepare {},
    /// From `agentmon exec` with a daemon: the approval listener of the task's root,
    /// attached (SCM_RIGHTS); the daemon holds the task's gated calls from now on.
    /// `kept`: where the client keeps its own copy, for a restarted daemon.
    Gate {
        task: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kept: Option<i32>,
    },
    /// The task is over: its end is recorded (`task_end`, and the revoke on NATS);
    /// with `kill`, its processes are killed first.
    End {
        task: String,
        #[serde(default)]
        kill: bool,
    },
    /// Bind a process tree that already runs to a new task (observe, kill, freeze).
    Attach {
        manifest: String,
        file: String,
        pid: u32,
        #[serde(default)]
        events: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grant: Option<String>,
    },
    /// A step (tool call) of a task begins or ends: the task's events in between
    /// carry it. From the task's own processes (agent hooks) or an operator.
    Step {
        phase: StepPhase,
        /// Default: the caller's own task.
        #[serde(default)]
        task: Option<String>,
        tool: String,
        call_id: String,
        #[serde(default)]
        traceparent: Option<String>,
    },
    /// The prompt (the request the agent acts on) a task's next steps serve: recorded
    /// as its hash, and its text if the host keeps text. From the task's own
    /// processes (the agent's prompt hook) or an operator.
    Prompt {
        /// Default: the caller's own task.
        #[serde(default)]
        task: Option<String>,
        text: String,
        /// The caller cut a longer prompt to `prompt::MAX_PROMPT_BYTES`; its whole length.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cut: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StepPhase {
    Begin,
    End,
}

impl Request {
    pub fn op_name(&self) -> &'static str {
        match self {
            Request::Delegate { .. } => "delegate",
            Request::Kill { .. } => "kill",
            Request::Freeze { .. } => "freeze",
            Request::Thaw { .. } => "thaw",
            Request::Approve { .. } => "approve",
            Request::Deny { .. } => "deny",
            Request::Approvals {} => "approvals",
            Request::Status {} => "status",
            Request::Step { .. } => "step",
            Request::Prompt { .. } => "prompt",
            Request::Start { .. } => "start",
            Request::Prepare {} => "prepare",
            Request::Attach { .. } => "attach",
            Request::End { .. } => "end",
            Request::Gate { .. } => "gate",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What was done, for people (containment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Machine-readable answer (status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// A cgroup made for a task about to start (prepare).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepared: Option<Prepared>,
}

/// A task cgroup made before its task's root is (a prepare's answer): the start
/// names it by `cookie`; the root is made in `cgroup` (a path) where its launcher may.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct Prepared {
    pub cookie: u32,
    pub cgroup: String,
}

impl Reply {
    pub fn err(msg: impl Into<String>) -> Self {
        Reply { ok: false, error: Some(msg.into()), ..Default::default() }
    }
}

/// The listening socket; removed when dropped.
pub struct Server {
    pub listener: UnixListener,
    pub path: PathBuf,
}

/// Where a daemon listens unless configured otherwise.
pub const DAEMON_SOCKET: &str = "/run/agentmon/agentmon.sock";

impl Server {
    pub fn bind() -> std::io::Result<Self> {
        Self::bind_at(&Path::new(SOCKET_DIR).join(format!("exec-{}.sock", std::process::id())))
    }

    /// Listens at `path` (a stale socket there is replaced; a live one is refused).
    pub fn bind_at(path: &Path) -> std::io::Result<Self> {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{}: another agentmon is listening there", path.display()),
            ));
        }
        if let Some(d) = path.parent() {
            own_dir(d)?;
        }
        let path = path.to_path_buf();
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        // Every message then carries its writer's pid (accepted sockets inherit it):
        // authority is the connector's, never that of whoever holds the socket.
        nix::sys::socket::setsockopt(&listener, nix::sys::socket::sockopt::PassCred, &true)
            .map_err(std::io::Error::from)?;
        // Anyone may connect (tasks delegate, operators contain); what each caller may
        // ask is decided from its kernel credentials (runner/callers.rs).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        Ok(Self { listener, path })
    }
}

/// Creates `d` (mode 0755) if needed and checks that it is a directory only its
/// owner (this user) can write: a socket in a directory others can write could be
/// replaced under the clients.
fn own_dir(d: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().recursive(true).mode(0o755).create(d) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let m = std::fs::symlink_metadata(d)?;
    if !m.is_dir() || m.uid() != nix::unistd::geteuid().as_raw() || m.mode() & 0o022 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{}: the control socket's directory must be a directory of agentmon's user that no one else can \
                 write (it is uid {}, mode {:o}); fix it or remove it",
                d.display(),
                m.uid(),
                m.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Replies being written by [`reply_later`], and a wake-up for each one done.
static REPLYING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static REPLIED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Writes `reply` to `stream`: now, if the socket takes it all (a reply is small;
/// the socket's buffer is not), else the rest in a task of its own (the loop does
/// not wait on a client that does not read), counted so that [`replies_written`]
/// can let it end. Not always spawned: on the one-thread runtime a spawned writer
/// runs only when the loop next waits, which a kill's sweep or a task's end can
/// put off for seconds (an operator's kill went unanswered for 10 s in a guest).
pub fn reply_later(stream: UnixStream, reply: Reply) {
    use nix::sys::socket::{MsgFlags, send};
    use std::os::fd::AsRawFd;
    use std::sync::atomic::Ordering;
    let mut text = reply_text(&reply);
    // Straight to the socket, not through tokio's try_write: that one gives up
    // (WouldBlock) while the reactor has not yet seen the socket writable.
    match send(stream.as_raw_fd(), &text, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL) {
        Ok(n) if n == text.len() => return,
        Ok(n) => drop(text.drain(..n)),
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
        // The caller is gone: nothing to answer.
        Err(_) => return,
    }
    REPLYING.fetch_add(1, Ordering::AcqRel);
    let mut stream = stream;
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&text)).await;
        REPLYING.fetch_sub(1, Ordering::AcqRel);
        REPLIED.notify_waiters();
    });
}

/// Waits, at most `limit`, for the replies [`reply_later`] is still writing: when
/// agentmon stops, the reply to the request that stopped it (an operator's kill of
/// its task) is written, not dropped with the runtime.
pub async fn replies_written(limit: Duration) {
    use std::sync::atomic::Ordering;
    let _ = tokio::time::timeout(limit, async {
        loop {
            let done = REPLIED.notified();
            if REPLYING.load(Ordering::Acquire) == 0 {
                return;
            }
            done.await;
        }
    })
    .await;
}

/// A reply as sent: one JSON line.
fn reply_text(reply: &Reply) -> Vec<u8> {
    let mut text = serde_json::to_vec(reply).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
    text.push(b'\n');
    text
}

/// Sends one request to the agentmon at `socket` and reads its reply.
pub async fn call(socket: &Path, req: &Request) -> Result<Reply, String> {
    call_reaching(socket, req).await.map_err(|e| match e {
        Reach::Stale => format!("no agentmon listens at {} (a stale socket)", socket.display()),
        Reach::Failed(e) => e,
    })
}

/// Why a call got no answer: nobody listens (a socket left by an agentmon that is
/// gone), or something else, said.
enum Reach {
    Stale,
    Failed(String),
}

/// Who may answer an operator: root, or the caller's own user.
fn trusted_peer(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

async fn call_reaching(socket: &Path, req: &Request) -> Result<Reply, Reach> {
    let mut s = match UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNREFUSED | libc::ENOENT)) => {
            return Err(Reach::Stale);
        }
        Err(e) => {
            return Err(Reach::Failed(format!("cannot reach the agentmon at {}: {e}", socket.display())));
        }
    };
    // A socket planted by another user must not get the request (an approval, a kill).
    match s.peer_cred() {
        Ok(c) if trusted_peer(c.uid()) => {}
        Ok(c) => {
            return Err(Reach::Failed(format!(
                "{} is not agentmon's: its listener runs as uid {}; nothing was sent",
                socket.display(),
                c.uid()
            )));
        }
        Err(e) => return Err(Reach::Failed(format!("{}: {e}", socket.display()))),
    }
    let fail = |e: String| Reach::Failed(e);
    let mut text = serde_json::to_string(req).map_err(|e| fail(e.to_string()))?;
    text.push('\n');
    s.write_all(text.as_bytes()).await.map_err(|e| fail(e.to_string()))?;
    let mut line = String::new();
    let mut r = BufReader::new(&mut s);
    // Containment may wait for a freeze to settle; a second is the most it waits.
    tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line))
        .await
        .map_err(|_| fail(format!("no reply from the agentmon at {}", socket.display())))?
        .map_err(|e| fail(e.to_string()))?;
    serde_json::from_str(line.trim_end()).map_err(|e| fail(format!("bad reply {line:?}: {e}")))
}

/// What [`read_request_fds`] read: the request, the descriptors sent with it
/// (SCM_RIGHTS), and the pid of each process that wrote part of it
/// (SCM_CREDENTIALS, attached by the kernel: see [`Server::bind_at`]).
pub type Read = (Result<Request, String>, Vec<std::os::fd::OwnedFd>, Vec<u32>);

/// The most descriptors one message can carry (the kernel's SCM_MAX_FD): the
/// control buffer has room for them all, so none is ever installed unseen (and
/// so never closed).
pub const SCM_MAX_FD: usize = 253;

/// Reads one request line with its descriptors and writers, bounded in size and
/// time. At most `keep_fds` descriptors are kept (the first ones); the others are
/// closed as they arrive.
pub async fn read_request_fds(stream: &mut UnixStream, keep_fds: usize) -> Read {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    let mut line = Vec::new();
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut writers: Vec<u32> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !line.contains(&b'\n') {
        if line.len() as u64 > MAX_REQUEST {
            return (Err("request too long".into()), fds, writers);
        }
        match tokio::time::timeout_at(deadline, stream.readable()).await {
            Err(_) => return (Err("timed out reading the request".into()), fds, writers),
            Ok(Err(e)) => return (Err(format!("reading the request: {e}")), fds, writers),
            Ok(Ok(())) => {}
        }
        let mut buf = [0u8; 4096];
        let r = stream.try_io(tokio::io::Interest::READABLE, || {
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let mut cmsg = nix::cmsg_space!([RawFd; SCM_MAX_FD], libc::ucred);
            let fd = stream.as_raw_fd();
            let msg = recvmsg::<()>(
                fd,
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
            )
            .map_err(std::io::Error::from)?;
            let (mut got, mut who) = (Vec::new(), None);
            for c in msg.cmsgs().map_err(std::io::Error::from)? {
                match c {
                    ControlMessageOwned::ScmRights(v) => got.extend(v),
                    ControlMessageOwned::ScmCredentials(u) => who = Some(u.pid()),
                    _ => {}
                }
            }
            Ok((msg.bytes, got, who))
        });
        match r {
            Ok((0, _, _)) => {
                return (
                    Err(if line.is_empty() { "empty request" } else { "request cut short" }.into()),
                    fds,
                    writers,
                );
            }
            Ok((n, got, who)) => {
                line.extend_from_slice(&buf[..n]);
                // No credentials: a writer the kernel could not name (pid 0 is nobody).
                writers.push(who.map_or(0, |p| p.max(0) as u32));
                // SAFETY: the kernel just installed these descriptors for us; those
                // beyond what is kept are closed when dropped here.
                for fd in got.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }) {
                    if fds.len() < keep_fds {
                        fds.push(fd);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return (Err(format!("reading the request: {e}")), fds, writers),
        }
    }
    let text = String::from_utf8_lossy(&line);
    let first = text.split('\n').next().unwrap_or("");
    (serde_json::from_str(first.trim_end()).map_err(|e| format!("malformed request: {e}")), fds, writers)
}

/// Sends `req` with `fd` attached (SCM_RIGHTS) and reads the reply.
pub fn call_with_fd(socket: &Path, req: &Request, fd: std::os::fd::BorrowedFd<'_>) -> Result<Reply, String> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    use std::io::BufRead;
    use std::os::fd::AsRawFd;
    let s = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("cannot reach the agentmon at {}: {e}", socket.display()))?;
    let peer = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    if !trusted_peer(peer.uid()) {
        return Err(format!(
            "{} is not agentmon's: its listener runs as uid {}",
            socket.display(),
            peer.uid()
        ));
    }
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let mut text = serde_json::to_string(req).map_err(|e| e.to_string())?;
    text.push('\n');
    let fds = [fd.as_raw_fd()];
    let iov = [std::io::IoSlice::new(text.as_bytes())];
    let sent =
        sendmsg::<()>(s.as_raw_fd(), &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)
            .map_err(|e| format!("sending to {}: {e}", socket.display()))?;
    if sent != text.len() {
        return Err("the request was cut short".into());
    }
    let mut line = String::new();
    std::io::BufReader::new(&s).read_line(&mut line).map_err(|e| e.to_string())?;
    serde_json::from_str(line.trim_end()).map_err(|e| format!("bad reply {line:?}: {e}"))
}

/// From inside a task: `req` through the inherited mailbox when there is one and
/// `socket` is the task's own agentmon (`AGENTMON_CTL`), else on `socket`.
pub async fn call_from_task(socket: &Path, req: &Request) -> Result<Reply, String> {
    let own = std::env::var_os(CTL_ENV).is_some_and(|s| Path::new(&s) == socket);
    match std::env::var(CTL_FD_ENV).ok().and_then(|v| v.parse::<i32>().ok()) {
        Some(fd) if own && fd > 2 => {
            let req = serde_json::to_vec(req).map_err(|e| e.to_string())?;
            tokio::task::spawn_blocking(move || call_mailbox(fd, &req)).await.map_err(|e| e.to_string())?
        }
        _ => call(socket, req).await,
    }
}

/// One request through mailbox `fd`: sent with the write end of a fresh socket pair,
/// on which the answer comes back.
fn call_mailbox(fd: i32, req: &[u8]) -> Result<Reply, String> {
    use nix::sys::socket::{
        AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, socketpair,
    };
    use std::io::BufRead;
    use std::os::fd::AsRawFd;
    let (mine, theirs) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| format!("mailbox: {e}"))?;
    let fds = [theirs.as_raw_fd()];
    let iov = [std::io::IoSlice::new(req)];
    sendmsg::<()>(fd, &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)
        .map_err(|e| format!("the task's control mailbox (fd {fd}): {e}"))?;
    drop(theirs);
    let s = std::os::unix::net::UnixStream::from(mine);
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::BufReader::new(&s).read_line(&mut line).map_err(|e| e.to_string())?;
    serde_json::from_str(line.trim_end()).map_err(|e| format!("bad reply {line:?}: {e}"))
}

/// Client side: asks the agentmon watching this task to bind `pid` to the task in `file`.
pub async fn delegate(
    socket: &Path,
    file: &Path,
    manifest: String,
    pid: u32,
    confined: bool,
) -> Result<Reply, String> {
    call_from_task(socket, &Request::Delegate { manifest, file: file.display().to_string(), pid, confined })
        .await
}

/// Sockets of the agentmons running here: in [`SOCKET_DIR`] when that is root's and
/// writable by no one else, and owned by root themselves. Anything else there was
/// not made by an agentmon and is ignored (said once).
pub fn sockets() -> Vec<PathBuf> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let safe = |m: &std::fs::Metadata| trusted_peer(m.uid()) && m.mode() & 0o022 == 0;
    match std::fs::symlink_metadata(SOCKET_DIR) {
        Ok(m) if m.is_dir() && safe(&m) => {}
        Ok(_) => {
            tracing::warn!("{SOCKET_DIR} is not a directory of root's that only root can write: ignored");
            return Vec::new();
        }
        Err(_) => return Vec::new(),
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(SOCKET_DIR)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .filter(|p| {
            let ok = std::fs::symlink_metadata(p)
                .is_ok_and(|m| m.file_type().is_socket() && trusted_peer(m.uid()));
            if !ok {
                tracing::warn!("{}: not a socket of root's, ignored", p.display());
            }
            ok
        })
        .collect();
    v.sort();
    v
}

/// `req` to every agentmon running here: each live one's answer (stale sockets,
/// left by an agentmon that is gone, are skipped).
pub async fn each(req: &Request) -> Vec<(PathBuf, Result<Reply, String>)> {
    let mut out = Vec::new();
    for s in sockets() {
        match call_reaching(&s, req).await {
            Err(Reach::Stale) => {}
            Err(Reach::Failed(e)) => out.push((s, Err(e))),
            Ok(r) => out.push((s, Ok(r))),
        }
    }
    out
}

/// Sends an operator request to `socket`, or to every agentmon here until one owns
/// the task or approval.
pub async fn contain(socket: Option<&Path>, req: &Request) -> Result<Reply, String> {
    if let Some(s) = socket {
        return call(s, req).await;
    }
    let mut last = Err(format!("no running agentmon was found (no live socket in {SOCKET_DIR})"));
    for (_, answer) in each(req).await {
        match answer {
            Ok(r) if r.ok => return Ok(r),
            // "Not a task of mine" from one agentmon is not the answer if another owns it.
            Ok(r) if last.is_err() || r.error.as_deref().is_some_and(|e| !e.starts_with(NOT_MINE)) => {
                last = Ok(r)
            }
            Ok(_) => {}
            Err(e) if last.is_err() => last = Err(e),
            Err(_) => {}
        }
    }
    last
}

/// Parent pid of `pid` from /proc (the kernel's view, not the caller's word).
pub fn ppid_of(pid: u32) -> Option<u32> {
    proc_stat(pid)?.2.parse().ok()
}

/// `(comm, state, ppid)` of `pid` from /proc/PID/stat, as the kernel wrote them.
pub fn proc_stat(pid: u32) -> Option<(String, String, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: fields follow the last ')'.
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    let (state, ppid) = (rest.next()?, rest.next()?);
    Some((stat[open + 1..close].to_string(), state.to_string(), ppid.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply is on the socket before the loop next waits: on the one-thread
    /// runtime a spawned writer waited for that, and a kill whose sweep and task
    /// end held the loop left the operator with no answer for 10 s (a guest). One
    /// the socket cannot take at once is finished in a task, and counted.
    #[test]
    fn a_reply_does_not_wait_for_the_loop() {
        use std::io::Read;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (server, client) = UnixStream::pair().unwrap();
            reply_later(
                server,
                Reply { ok: true, message: Some("task t killed".into()), ..Default::default() },
            );
            // The loop busy, no await: the client reads the whole reply all the same.
            let mut c = client.into_std().unwrap();
            c.set_nonblocking(false).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut got = String::new();
            c.read_to_string(&mut got).unwrap();
            assert_eq!(got, "{\"ok\":true,\"message\":\"task t killed\"}\n");

            // Larger than the socket takes at once: the rest is written by a task.
            let (server, mut client) = UnixStream::pair().unwrap();
            let big = "x".repeat(4 << 20);
            reply_later(server, Reply { ok: true, message: Some(big.clone()), ..Default::default() });
            let mut all = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut client, &mut all).await.unwrap();
            assert!(all.ends_with(b"\"}\n") && all.len() > big.len(), "{} bytes", all.len());
            replies_written(Duration::from_secs(1)).await;
            assert_eq!(REPLYING.load(std::sync::atomic::Ordering::Acquire), 0);
        });
    }

    /// A client that starts a request and never ends it (or sends nothing) holds a
    /// reader for 5 s at most: a slot in the control socket cannot be kept for ever.
    #[test]
    fn a_slow_client_is_let_go() {
        use tokio::io::AsyncWriteExt;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (mut server, mut client) = UnixStream::pair().unwrap();
            client.write_all(b"{\"op\":").await.unwrap();
            let t = std::time::Instant::now();
            let (r, fds, _) = read_request_fds(&mut server, 0).await;
            assert_eq!(r.unwrap_err(), "timed out reading the request");
            assert!(fds.is_empty());
            let took = t.elapsed();
            assert!(took >= Duration::from_secs(5) && took < Duration::from_secs(8), "{took:?}");
        });
    }

    #[test]
    fn requests_are_strict() {
        assert!(
            serde_json::from_str::<Request>(r#"{"op":"delegate","manifest":"x","file":"f","pid":1}"#).is_ok()
        );
        for bad in [
            r#"{"op":"delete_everything"}"#,
            r#"{"op":"delegate","manifest":"x","file":"f"}"#,
            r#"{"op":"delegate","manifest":"x","file":"f","pid":1,"extra":true}"#,
            r#"{"op":"delegate","manifest":"x","file":"f","pid":-1}"#,
            "not json",
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ppid_from_proc() {
        assert_eq!(ppid_of(std::process::id()), Some(nix::unistd::getppid().as_raw() as u32));
        assert_eq!(ppid_of(u32::MAX), None);
        let (comm, state, _) = proc_stat(std::process::id()).unwrap();
        let own = std::fs::read_to_string("/proc/self/comm").unwrap();
        // The state is the group leader's (R, S, D, Z, ...): one letter.
        assert_eq!(comm, own.trim_end());
        assert!(state.len() == 1 && state.chars().all(|c| c.is_ascii_uppercase()), "{state}");
    }
}
