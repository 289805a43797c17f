//! What an enforced agent keeps of what agentmon's caller left it: capabilities
//! (enforce/caps.rs), when agentmon itself was started with unusual sets, and open
//! descriptors (launch::inherited). Neither may reach past the task's layers.

use std::os::{fd::AsRawFd, unix::process::CommandExt};

use agentmon::enforce::caps;

use crate::{
    R,
    support::{self, SCENARIO_ENV, ensure, eq, workdir},
};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SETPCAP: u32 = 8;

/// Changes the calling process's sets with `f` (capget, then capset).
fn capset(f: impl Fn(&mut [caps::Data; 2])) -> std::io::Result<()> {
    let mut d = caps::get().ok_or_else(std::io::Error::last_os_error)?;
    f(&mut d);
    if caps::set(&d) { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// agentmon started with CAP_NET_ADMIN in its inheritable set (which root keeps
/// across exec, and which an exec of a root program turns back into a permitted
/// capability whatever the bounding set says), then with no CAP_SETPCAP (it cannot
/// shrink the bounding set at all): either way the agent holds neither CAP_NET_ADMIN
/// nor CAP_SYS_ADMIN after its exec.
pub fn harness_capabilities_do_not_reach_the_agent() -> R {
    let d = workdir("caps");
    let (t, me) = support::enforced_self_task(&d, "caps", "")?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&t, &d)?);
    }
    let actions = [
        format!("has_cap={CAP_NET_ADMIN}"),
        format!("has_cap={CAP_SYS_ADMIN}"),
        format!("holds_cap={CAP_NET_ADMIN}"),
        format!("holds_cap={CAP_SYS_ADMIN}"),
    ];
    let mut cmd = vec![me.display().to_string(), d.display().to_string()];
    cmd.extend(actions);
    let events = d.join("events.jsonl");
    let flags = ["--task", t.to_str().unwrap()];
    let env = [(SCENARIO_ENV, "attempts")];

    // 1. CAP_NET_ADMIN inheritable.
    let mut c = support::exec_command(&events, &flags, &cmd, &env, &d);
    unsafe {
        c.pre_exec(|| capset(|d| d[0].inheritable |= 1 << CAP_NET_ADMIN));
    }
    let run = support::run_command(c, &events)?;
    eq("exit (inheritable)", run.code, 0)?;
    eq(
        "capabilities after exec (inheritable)",
        results(&d)?,
        ["has_cap 0", "has_cap 0", "holds_cap 0", "holds_cap 0"].map(String::from).to_vec(),
    )?;

    // 2. No CAP_SETPCAP: the bounding set stays as it is, so the agent's current
    // sets must be emptied of them (no_new_privs keeps the exec from adding back).
    let _ = std::fs::remove_file(&events);
    let mut c = support::exec_command(&events, &flags, &cmd, &env, &d);
    unsafe {
        c.pre_exec(|| {
            if libc::prctl(libc::PR_CAPBSET_DROP, CAP_SETPCAP as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            capset(|d| {
                for s in [&mut d[0].effective, &mut d[0].permitted, &mut d[0].inheritable] {
                    *s &= !(1 << CAP_SETPCAP);
                }
            })
        });
    }
    let run = support::run_command(c, &events)?;
    eq("exit (no CAP_SETPCAP)", run.code, 0)?;
    eq(
        "capabilities after exec (no CAP_SETPCAP: still bounded, not held)",
        results(&d)?,
        ["has_cap 1", "has_cap 1", "holds_cap 0", "holds_cap 0"].map(String::from).to_vec(),
    )?;
    Ok(())
}

/// The scenario's results, one line per action.
fn results(d: &std::path::Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(d.join("repo/results.txt")).map_err(|e| e.to_string())?;
    Ok(text.lines().map(String::from).collect())
}

/// agentmon's caller left two descriptors open (no close-on-exec): a UDP socket,
/// made outside the task's cgroup, so that neither the guard's address hooks nor
/// its packet check are its; and a file outside the write scope, opened for
/// writing, which needs no Landlock right to write. The enforced agent has neither
/// (EBADF), and its `task_start` says which it was not given. Before, it sent to an
/// address outside its scope and wrote the file. An observed agent keeps both (it
/// is watched, not confined: a make jobserver's pipes are such descriptors).
pub fn callers_descriptors_do_not_reach_the_agent() -> R {
    let d = workdir("inherited-fds");
    let (t, me) = support::enforced_self_task(&d, "fds", "  connect: [\"127.0.0.1:5353\"]\n")?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&t, &d)?);
    }
    let victim = d.join("outside.txt");
    std::fs::write(&victim, "").map_err(|e| e.to_string())?;
    let file = std::fs::OpenOptions::new().append(true).open(&victim).map_err(|e| e.to_string())?;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let (file_fd, sock_fd) = (file.as_raw_fd(), sock.as_raw_fd());
    let (sock_at, file_at) = (40, 41);
    let cmd = vec![
        me.display().to_string(),
        d.display().to_string(),
        format!("fd_sendto={sock_at}@127.0.0.1:9"),
        format!("fd_write={file_at}"),
    ];
    let events = d.join("events.jsonl");
    let run_with_fds = |task: &std::path::Path| {
        let _ = std::fs::remove_file(&events);
        let flags = ["--task", task.to_str().unwrap()];
        let mut c = support::exec_command(&events, &flags, &cmd, &[(SCENARIO_ENV, "attempts")], &d);
        unsafe {
            // dup2 leaves the copies without close-on-exec, as a careless caller would.
            c.pre_exec(move || {
                if libc::dup2(sock_fd, sock_at) < 0 || libc::dup2(file_fd, file_at) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        support::run_command(c, &events)
    };
    let task_start = |run: &support::Run| {
        let start = run.of(agentmon::event::Kind::TaskStart).into_iter().next().cloned();
        start.ok_or_else(|| format!("no task_start:\n{}", run.summary()))
    };

    let run = run_with_fds(&t)?;
    eq("exit", run.code, 0)?;
    let ebadf = libc::EBADF;
    eq(
        "the caller's socket and file, from the agent",
        results(&d)?,
        vec![format!("fd_sendto {ebadf}"), format!("fd_write {ebadf}")],
    )?;
    eq("outside file", std::fs::read_to_string(&victim).map_err(|e| e.to_string())?, String::new())?;
    let start = task_start(&run)?;
    let closed: Vec<String> = start
        .detail
        .get("closed_fds")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let want =
        [format!("fd {sock_at}: socket (inet, datagram)"), format!("fd {file_at}: {}", victim.display())];
    ensure(want.iter().all(|w| closed.contains(w)), || {
        format!("task_start closed_fds {closed:?}, want {want:?}")
    })?;

    // Observed: the same task, watched only.
    let observed = d.join("observed.yaml");
    let text = std::fs::read_to_string(&t).map_err(|e| e.to_string())?;
    std::fs::write(&observed, text.replace("enforcement: enforce", "enforcement: observe"))
        .map_err(|e| e.to_string())?;
    let run = run_with_fds(&observed)?;
    eq("exit (observed)", run.code, 0)?;
    eq(
        "the caller's socket and file, observed",
        results(&d)?,
        vec!["fd_sendto 0".to_string(), "fd_write 0".into()],
    )?;
    eq("observed task_start closed_fds", task_start(&run)?.detail.get("closed_fds").cloned(), None)?;
    stdin_sockets(&d, &t, &me, &sock)
}

/// A standard stream stays with the command: one that is a socket the agent could
/// send from anywhere (the caller's UDP socket as stdin) refuses the enforced start;
/// a connected stream (a socketpair, as a harness talks to its agent) does not.
fn stdin_sockets(
    d: &std::path::Path,
    t: &std::path::Path,
    me: &std::path::Path,
    udp: &std::net::UdpSocket,
) -> R {
    let (mine, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
    let cmd = vec![me.display().to_string(), d.display().to_string(), "fd_sendto=0@127.0.0.1:9".into()];
    let events = d.join("stdin.jsonl");
    let run = |stdin: std::process::Stdio| {
        let _ = std::fs::remove_file(&events);
        support::exec_command(
            &events,
            &["--task", t.to_str().unwrap()],
            &cmd,
            &[(SCENARIO_ENV, "attempts")],
            d,
        )
        .stdin(stdin)
        .output()
        .map_err(|e| e.to_string())
    };
    let _ = std::fs::remove_file(d.join("repo/results.txt"));
    let udp = udp.try_clone().map_err(|e| e.to_string())?;
    let out = run(std::process::Stdio::from(std::os::fd::OwnedFd::from(udp)))?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure(
        out.status.code() == Some(125) && err.contains("standard stream fd 0: socket (inet, datagram)"),
        || format!("a UDP socket as stdin: {:?}: {err}", out.status.code()),
    )?;
    ensure(!d.join("repo/results.txt").exists(), || "the refused command ran".into())?;
    let out = run(std::process::Stdio::from(std::os::fd::OwnedFd::from(theirs)))?;
    drop(mine);
    eq(
        &format!("a connected unix stream as stdin: {}", String::from_utf8_lossy(&out.stderr)),
        out.status.code(),
        Some(0),
    )?;
    Ok(())
}
