//! The terminal `agentmon exec` shares with the agent it launched. The agent can
//! make the terminal its own (its process group in the foreground, TOSTOP set):
//! then the kernel stops any other process that writes there with SIGTTOU — a
//! signal the terminal generates, which no signal hook or Landlock scoping sees.
//! agentmon writes its diagnostics there, so the agent could stop it at will.

use std::{
    io::Read,
    os::fd::OwnedFd,
    process::{Command, Stdio},
    time::Duration,
};

use agentmon::event::Kind;

use crate::{
    R,
    support::{self, SCENARIO_ENV, agentmon, ensure, eq, workdir},
};

/// An observed agent takes the terminal, then makes agentmon write a diagnostic
/// (a control request from inside the task, refused and logged): agentmon goes on
/// (it ignores the terminal's stop signals), answers, and records what the agent
/// does after. Before, agentmon was stopped — blind — and the agent's request hung.
pub fn terminal_cannot_stop_agentmon() -> R {
    let d = workdir("terminal");
    std::fs::create_dir_all(d.join("repo")).map_err(|e| e.to_string())?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let t = d.join("task.yaml");
    std::fs::write(
        &t,
        format!(
            "id: tty\nmode: execute\nscope:\n  write: [\"{}/repo/**\"]\n  exec: [\"{}\"]\n",
            d.display(),
            me.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let pty = nix::pty::openpty(None, None).map_err(|e| e.to_string())?;
    let slave = |fd: &OwnedFd| fd.try_clone().map(Stdio::from).map_err(|e| e.to_string());
    let events = d.join("events.jsonl");
    // As an operator runs it: a job of an interactive shell (its own process group,
    // in the foreground; the shell, its parent, in the same session). A process
    // group with no parent in its session is orphaned, and the kernel never stops
    // those.
    let mut c = Command::new("/bin/sh");
    c.args(["-c", "set -m; \"$@\"; s=$?; exit $s", "sh", agentmon()]);
    c.args(["exec", "--events"]).arg(&events).arg("--task").arg(&t).arg("--");
    c.arg(&me).arg(&d).args(["take_tty", "ctl=kill:tty", "write_in"]);
    c.env(SCENARIO_ENV, "attempts");
    c.stdin(slave(&pty.slave)?).stdout(slave(&pty.slave)?).stderr(slave(&pty.slave)?);
    // The shell in a session of its own, the pty its controlling terminal.
    // SAFETY: setsid and ioctl only, between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, || {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = c.spawn().map_err(|e| e.to_string())?;
    // No end of the terminal's slave side left here (the Command holds its copies):
    // the reader below ends when agentmon's side closes.
    drop(c);
    drop(pty.slave);
    // The terminal's output is read, so that no write blocks on a full pty.
    let mut master = std::fs::File::from(pty.master);
    let said = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    let limit = Duration::from_secs(30) * support::slowdown();
    let Some(code) = support::exit_within(&mut child, limit) else {
        let stopped = std::fs::read_to_string(format!("/proc/{}/stat", child.id()))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('T')));
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!(
            "agentmon never finished (stopped: {stopped:?}): the agent stopped it through the terminal"
        )
        .into());
    };
    let said = said.join().unwrap_or_default();
    let res = crate::enforce::attempt_results(&d).map_err(|e| {
        format!("the agent never finished ({e}): was agentmon stopped? The terminal said: {said:?}")
    })?;
    eq(&format!("exit (the terminal said: {said:?})"), code, Some(0))?;
    eq("taking the terminal", res.get("take_tty").copied(), Some(0))?;
    let text = std::fs::read_to_string(&events).map_err(|e| e.to_string())?;
    let (evs, _) = support::parse_stream(&text)?;
    let ok = d.join("repo/ok.txt");
    let w = evs
        .iter()
        .find(|e| e.kind == Kind::FileCreate && e.path.as_deref() == ok.to_str())
        .ok_or("the agent's write after taking the terminal was not recorded")?;
    eq("its task", w.task.as_deref(), Some("tty"))?;
    eq("the refused request", res.get("ctl").copied(), Some(libc::EPERM))?;
    ensure(
        evs.iter().any(|e| {
            e.kind == Kind::Tamper
                && e.detail.get("attempt").and_then(|v| v.as_str()) == Some("control request kill")
        }),
        || "the refused control request was not recorded".into(),
    )?;
    Ok(())
}
