//! An agent working against agentmon: passing control connections around, holding
//! the control socket, planting sockets, leaving its cgroup.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::net::{UnixListener, UnixStream},
    },
    path::Path,
    time::Duration,
};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// Sends `{"op": "thaw", "task": task}` on `s`: "accepted" or "refused: why".
fn thaw_on(s: UnixStream, task: &str) -> String {
    ask_on(s, serde_json::json!({"op": "thaw", "task": task}))
}

/// The operator requests a passed connection must never carry for its holder.
fn operator_requests(task: &str) -> [serde_json::Value; 4] {
    use serde_json::json;
    [
        json!({"op": "thaw", "task": task}),
        json!({"op": "approve", "id": "a1", "for_s": 3600}),
        json!({"op": "kill", "task": task}),
        json!({"op": "end", "task": task, "kill": true}),
    ]
}

fn ask_on(mut s: UnixStream, req: serde_json::Value) -> String {
    if let Err(e) = writeln!(s, "{req}") {
        return format!("refused: write: {e}");
    }
    let mut line = String::new();
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if let Err(e) = BufReader::new(s).read_line(&mut line) {
        return format!("refused: read: {e}");
    }
    match serde_json::from_str::<serde_json::Value>(&line) {
        Ok(v) if v["ok"] == true => "accepted".into(),
        Ok(v) => format!("refused: {}", v["error"].as_str().unwrap_or("?")),
        Err(e) => format!("refused: {e}: {line:?}"),
    }
}

fn send_fd(over: &UnixStream, fd: i32) -> Result<(), String> {
    let iov = [std::io::IoSlice::new(b"x")];
    sendmsg::<()>(over.as_raw_fd(), &iov, &[ControlMessage::ScmRights(&[fd])], MsgFlags::empty(), None)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn recv_fd(from: &UnixStream) -> Result<OwnedFd, String> {
    recv_fds(from)?.into_iter().next().ok_or("no descriptor came".into())
}

fn recv_fds(from: &UnixStream) -> Result<Vec<OwnedFd>, String> {
    let mut b = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut b)];
    let mut cmsg = nix::cmsg_space!([i32; 8]);
    let m = recvmsg::<()>(from.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty())
        .map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    for c in m.cmsgs().map_err(|e| e.to_string())? {
        if let ControlMessageOwned::ScmRights(v) = c {
            // SAFETY: the kernel just installed these descriptors for us.
            got.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    Ok(got)
}

/// args: DIR TASK. (1) A child connects to agentmon's control socket, passes the
/// connection to this process and exits; this process then asks for a thaw on it.
/// (2) The control socket's path goes to DIR/ctl-path and a listener to
/// DIR/pass.sock; four connections the test made (outside every task) arrive there
/// and this process asks for a thaw, an approval, a kill and an end, one on each.
/// Results in DIR/rights.txt.
pub fn rights(d: &Path, task: &str) -> Result<(), String> {
    let ctl = std::env::var("AGENTMON_CTL").map_err(|e| e.to_string())?;
    let (a, b) = UnixStream::pair().map_err(|e| e.to_string())?;
    // SAFETY: the child connects, sends one descriptor and exits.
    let handoff = match unsafe { nix::unistd::fork() }.map_err(|e| e.to_string())? {
        nix::unistd::ForkResult::Child => {
            let code = match UnixStream::connect(&ctl) {
                Ok(s) if send_fd(&a, s.as_raw_fd()).is_ok() => 0,
                _ => 1,
            };
            std::process::exit(code);
        }
        nix::unistd::ForkResult::Parent { child } => {
            let got = recv_fd(&b);
            nix::sys::wait::waitpid(child, None).map_err(|e| e.to_string())?;
            // Its exit is the kernel's by now; give agentmon's tracking a moment too.
            std::thread::sleep(Duration::from_millis(200));
            match got {
                Ok(fd) => thaw_on(UnixStream::from(fd), task),
                Err(e) => return Err(format!("handoff: {e}")),
            }
        }
    };
    fs::write(d.join("ctl-path"), &ctl).map_err(|e| e.to_string())?;
    let l = UnixListener::bind(d.join("pass.sock")).map_err(|e| e.to_string())?;
    let (conn, _) = l.accept().map_err(|e| e.to_string())?;
    // Four connections the test made, one for each operator request.
    let fds = recv_fds(&conn)?;
    if fds.len() != 4 {
        return Err(format!("{} connections came, not 4", fds.len()));
    }
    let mut out = format!("handoff {handoff}\n");
    for (fd, req) in fds.into_iter().zip(operator_requests(task)) {
        let op = req["op"].as_str().unwrap_or("?").to_string();
        out += &format!("taken {op} {}\n", ask_on(UnixStream::from(fd), req));
    }
    fs::write(d.join("rights.txt"), out).map_err(|e| e.to_string())
}

/// args: SOCKET N DIR. Opens N connections to SOCKET, sends nothing, says so in
/// DIR/held and sleeps until killed.
pub fn hold(sock: &str, n: usize, d: &Path) -> Result<(), String> {
    let mut held = Vec::new();
    let null = fs::File::open("/dev/null").map_err(|e| e.to_string())?;
    let fds = [null.as_raw_fd(); 10];
    for i in 0..n {
        match UnixStream::connect(sock) {
            Ok(s) => {
                // Every other one: a request with ten descriptors attached, which must
                // not pile up in agentmon.
                if i % 2 == 1 {
                    let iov = [std::io::IoSlice::new(b"{\"op\":\"status\"}\n")];
                    let _ = sendmsg::<()>(
                        s.as_raw_fd(),
                        &iov,
                        &[ControlMessage::ScmRights(&fds)],
                        MsgFlags::empty(),
                        None,
                    );
                }
                held.push(s)
            }
            Err(e) if held.is_empty() => return Err(format!("{sock}: {e}")),
            Err(_) => break,
        }
    }
    fs::write(d.join("held"), held.len().to_string()).map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(120));
    Ok(())
}

/// args: SOCKET LOG. A fake agentmon: answers every request with a made-up task and
/// appends what it was sent to LOG.
pub fn fake_agentmon(sock: &Path, log: &Path) -> Result<(), String> {
    let _ = fs::remove_file(sock);
    let l = UnixListener::bind(sock).map_err(|e| format!("{}: {e}", sock.display()))?;
    fs::write(log, "").map_err(|e| e.to_string())?;
    for c in l.incoming() {
        let Ok(mut c) = c else { continue };
        let mut line = String::new();
        let _ = BufReader::new(&c).read_line(&mut line);
        let mut f = fs::OpenOptions::new().append(true).open(log).map_err(|e| e.to_string())?;
        let _ = f.write_all(line.as_bytes());
        let fake = serde_json::json!({"ok": true, "message": "FAKE-APPROVED",
            "data": {"pid": 1, "host": "evil", "tasks": [{"task": "FAKE-TASK"}]}});
        let _ = writeln!(c, "{fake}");
    }
    Ok(())
}

/// args: DIR PROCS. Moves itself into the cgroup whose cgroup.procs is PROCS, writes
/// its pid to DIR/left, and waits for DIR/go.
pub fn leave_cgroup(d: &Path, procs: &str) -> Result<(), String> {
    fs::write(procs, std::process::id().to_string()).map_err(|e| format!("{procs}: {e}"))?;
    fs::write(d.join("left"), std::process::id().to_string()).map_err(|e| e.to_string())?;
    super::wait_for(&d.join("go"))
}

/// args: DIR SPEC...; each SPEC is `REL|c1/c2/.../file`: creates the directories
/// one at a time under DIR/REL (each relative to the last, so that no single path
/// is long) and then the file. Paths deeper than the kernel walks.
pub fn deep(d: &Path, specs: &[String]) -> Result<(), String> {
    use nix::{
        fcntl::{OFlag, openat},
        sys::stat::{Mode, mkdirat},
    };
    for spec in specs {
        let (rel, chain) = spec.split_once('|').ok_or("SPEC is REL|c1/.../file")?;
        let base = d.join(rel);
        fs::create_dir_all(&base).map_err(|e| e.to_string())?;
        let mut dir = nix::fcntl::open(&base, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
            .map_err(|e| format!("{}: {e}", base.display()))?;
        let comps: Vec<&str> = chain.split('/').collect();
        let (file, dirs) = comps.split_last().ok_or("empty chain")?;
        for c in dirs {
            match mkdirat(&dir, *c, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(format!("mkdir {c}: {e}")),
            }
            dir = openat(&dir, *c, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
                .map_err(|e| format!("{c}: {e}"))?;
        }
        openat(&dir, *file, OFlag::O_CREAT | OFlag::O_WRONLY, Mode::from_bits_truncate(0o644))
            .map_err(|e| format!("{file}: {e}"))?;
    }
    Ok(())
}
