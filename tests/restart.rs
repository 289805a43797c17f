//! A task's approval gate across a restart of its daemon. The exec that registered
//! the task hands the gate's listener to the daemon and keeps a copy; a restarted
//! daemon takes the copy back (runner/keeper.rs), and a daemon that stopped before
//! taking it is offered it again once its successor has resumed the task.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use agentmon::event::Kind;
use nix::sys::signal::{Signal, kill};

use crate::{
    R,
    daemon::{
        approve_the_delete, daemon_paths, events, gated_task, start_daemon, stop, taken_up, under_daemon,
    },
    support::{self, SCENARIO_ENV, agentmon, ensure, eq, wait, workdir},
};

/// An enforced task's approval gate across a restart of its daemon: the exec that
/// registered the task keeps a copy of the listener, the next daemon takes it back,
/// and a delete the task makes after the restart is held for approval as before.
/// Before, the gate went with the daemon and the delete failed with ENOSYS.
pub fn daemon_restart_keeps_the_gate() -> R {
    let d = workdir("daemon-gate-kept");
    let (sock, all) = daemon_paths(&d);
    let (g, task, me) = gated_task(&d, "gate-kept")?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&task, &d)?);
    }
    let first = start_daemon(&d, "approval_timeout: 60s\n")?;
    let child = under_daemon(&sock, &task)
        .args([me.as_os_str(), g.as_os_str()])
        .args(["wait=go", "delete=repo/a.txt"])
        .env(SCENARIO_ENV, "gated")
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let limit = Duration::from_secs(30) * support::slowdown();
    let running = wait(limit, || {
        events(&all).is_ok_and(|evs| {
            evs.iter().any(|e| e.kind == Kind::Exec && e.task.as_deref() == Some("gate-kept"))
        })
    });
    // The gate is handed over beside the root's exec: this restart is of a daemon
    // that has it (and has recorded where the exec keeps its copy).
    let record = d.join("state/gate-kept.json");
    let handed = wait(limit, || {
        std::fs::read(&record)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["keeper"]["gate"].is_number())
    });
    let said1 = stop(first)?;
    let second = start_daemon(&d, "")?;
    taken_up(&sock);
    std::fs::write(g.join("go"), b"").map_err(|e| e.to_string())?;
    let result = ensure(running && handed, || format!("the task never ran ({running}, {handed}): {said1}"))
        .and_then(|()| approve_the_delete(&all, &sock, &g, "gate-kept", limit));
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(700));
    let said2 = stop(second)?;
    let results = std::fs::read_to_string(g.join("repo/results.txt")).unwrap_or_default();
    result.map_err(|e| format!("{e}; the agent's results: {results:?}; the second daemon said: {said2}"))?;
    eq("exec exit", out.status.code(), Some(0))?;
    eq("the agent's result", results.trim(), "delete 0")?;
    ensure(!g.join("repo/a.txt").exists(), || "the approved delete did not happen".into())?;
    Ok(())
}

/// A daemon that stops between accepting a task and taking its approval gate (a
/// restart or an upgrade at that moment): the exec offers the gate again until the
/// daemon that resumes the task takes it, and the task's held calls work as before.
/// Before, the exec killed the command ("could not take its approval gate"): a
/// restart at the wrong moment cost the agent its work. The first daemon is stopped
/// (SIGSTOP) as soon as the exec says the task was accepted, so the gate's offer
/// reaches a daemon that never answers it, then killed. Had it taken the gate
/// first, its successor takes it back from the exec instead: either way the
/// command must run to its end with its delete held and approved.
pub fn a_gate_outlives_a_daemon_stopped_before_taking_it() -> R {
    let d = workdir("daemon-gate-late");
    let (sock, all) = daemon_paths(&d);
    let (g, task, me) = gated_task(&d, "gate-late")?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&task, &d)?);
    }
    let mut first = start_daemon(&d, "approval_timeout: 60s\n")?;
    // Not --quiet: its line saying the daemon accepted the task is the moment.
    let mut child = Command::new(agentmon())
        .args(["exec", "--daemon"])
        .arg(&sock)
        .arg("--task")
        .arg(&task)
        .arg("--")
        .args([me.as_os_str(), g.as_os_str()])
        .args(["wait=go", "delete=repo/a.txt"])
        .env(SCENARIO_ENV, "gated")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut lines = BufReader::new(child.stderr.take().ok_or("no stderr")?).lines();
    let mut said = Vec::new();
    let accepted = loop {
        match lines.next() {
            Some(Ok(l)) => {
                let now = l.contains("runs under the daemon");
                said.push(l);
                if now {
                    break true;
                }
            }
            _ => break false,
        }
    };
    let pid = nix::unistd::Pid::from_raw(first.id() as i32);
    let _ = kill(pid, Signal::SIGSTOP);
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    // Its offer waits on the stopped daemon; then the daemon is gone.
    std::thread::sleep(Duration::from_millis(500) * support::slowdown());
    let _ = first.kill();
    let _ = first.wait();
    let second = start_daemon(&d, "approval_timeout: 60s\n")?;
    taken_up(&sock);
    std::fs::write(g.join("go"), b"").map_err(|e| e.to_string())?;
    let limit = Duration::from_secs(40) * support::slowdown();
    let result = ensure(accepted, || format!("the exec never said the task was accepted: {said:?}"))
        .and_then(|()| approve_the_delete(&all, &sock, &g, "gate-late", limit));
    if result.is_err() {
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    said.extend(rest.join().unwrap_or_default());
    std::thread::sleep(Duration::from_millis(700));
    let said2 = stop(second)?;
    let results = std::fs::read_to_string(g.join("repo/results.txt")).unwrap_or_default();
    result.map_err(|e| format!("{e}; the exec said: {said:?}; the second daemon said: {said2}"))?;
    eq(&format!("exec exit ({said:?})"), status.code(), Some(0))?;
    eq("the agent's result", results.trim(), "delete 0")?;
    ensure(!g.join("repo/a.txt").exists(), || "the approved delete did not happen".into())?;
    Ok(())
}

/// A task whose root exits while no daemon runs, its gate not yet taken (the first
/// daemon stopped before it answered the offer, then killed): the daemon that
/// resumes the task sees the root's exit, ends the task and forgets it, and then
/// answers the exec's renewed offer "no task called ...". The exec must report the
/// command's own status: before, it took the refusal as a lost gate and exited 125
/// (seen in CI on the guest without BPF LSM, when a restart came at that moment).
pub fn a_gate_offer_outlives_its_root() -> R {
    let d = workdir("daemon-gate-root");
    let (sock, all) = daemon_paths(&d);
    let task = d.join("root-gone.yaml");
    std::fs::write(
        &task,
        format!("id: root-gone\nmode: execute\nscope:\n  write: [\"{}/**\"]\n", d.display()),
    )
    .map_err(|e| e.to_string())?;
    let mut first = start_daemon(&d, "")?;
    // Not --quiet: its line saying the daemon accepted the task is the moment.
    let mut child = Command::new(agentmon())
        .args(["exec", "--daemon"])
        .arg(&sock)
        .arg("--task")
        .arg(&task)
        .args(["--", "/bin/sh", "-c", "exit 7"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let exec = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut lines = BufReader::new(child.stderr.take().ok_or("no stderr")?).lines();
    let accepted = lines.by_ref().map_while(Result::ok).any(|l| l.contains("runs under the daemon"));
    let _ = kill(nix::unistd::Pid::from_raw(first.id() as i32), Signal::SIGSTOP);
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let limit = Duration::from_secs(30) * support::slowdown();
    // The root runs and exits; the exec, its offer waiting on the stopped daemon,
    // has not reaped it yet.
    let zombie = wait(limit, || children(exec).iter().any(|&p| state_of(p) == Some('Z')));
    // Held still, so that its next offer reaches the next daemon only once that one
    // has forgotten the task.
    let _ = kill(exec, Signal::SIGSTOP);
    let _ = first.kill();
    let _ = first.wait();
    let second = start_daemon(&d, "")?;
    let record = d.join("state/root-gone.json");
    let forgotten = wait(limit, || {
        !record.exists()
            && events(&all).is_ok_and(|evs| {
                evs.iter().any(|e| e.kind == Kind::TaskEnd && e.task.as_deref() == Some("root-gone"))
            })
    });
    let _ = kill(exec, Signal::SIGCONT);
    let status = support::exit_within(&mut child, limit);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let said = rest.join().unwrap_or_default();
    let said2 = stop(second)?;
    ensure(accepted, || format!("the exec never said the task was accepted: {said:?}"))?;
    ensure(zombie, || "the task's root never exited".into())?;
    ensure(forgotten, || format!("the second daemon did not end and forget the task: {said2}"))?;
    eq(&format!("exec exit ({said:?})"), status, Some(Some(7)))?;
    Ok(())
}

/// The children of `pid` (its threads' lists).
fn children(pid: nix::unistd::Pid) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    dir.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| s.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<_>>())
        .collect()
}

/// A process's state letter (`R`, `S`, `Z`, ...).
fn state_of(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// A new task the daemon cannot record (its state directory full, or here the
/// record's temporary file taken by a directory) would be lost at the next restart,
/// its processes running on unseen: a launched one is refused before anything is
/// taken on, its command never runs, and the refusal is in the daemon's record.
/// A tree attached while it runs is watched all the same (refusing it would stop
/// nothing), and the missing record is said. Before, the failure was a warning and
/// the launched task ran.
pub fn a_task_that_cannot_be_recorded_is_refused() -> R {
    let d = workdir("daemon-unrecorded");
    let (sock, all) = daemon_paths(&d);
    let manifest = |id: &str| -> Result<std::path::PathBuf, String> {
        let t = d.join(format!("{id}.yaml"));
        std::fs::write(&t, format!("id: {id}\nmode: execute\nscope:\n  write: [\"{}/**\"]\n", d.display()))
            .map_err(|e| e.to_string())?;
        Ok(t)
    };
    let daemon = start_daemon(&d, "")?;
    for id in ["doomed", "held"] {
        std::fs::create_dir_all(d.join(format!("state/.{id}.json.tmp"))).map_err(|e| e.to_string())?;
    }
    let ran = d.join("ran");
    let out = under_daemon(&sock, &manifest("doomed")?)
        .args(["/bin/sh", "-c", &format!("echo ran > {}", ran.display())])
        .output()
        .map_err(|e| e.to_string())?;
    // A tree already running, attached.
    let (go, after) = (d.join("go"), d.join("after"));
    let mut running = Command::new("/bin/sh")
        .args([
            "-c",
            &format!("while [ ! -e {} ]; do sleep 0.1; done; echo x > {}", go.display(), after.display()),
        ])
        .spawn()
        .map_err(|e| e.to_string())?;
    let attach = Command::new(agentmon())
        .args(["attach", "--pid", &running.id().to_string(), "--task"])
        .arg(manifest("held")?)
        .arg("--socket")
        .arg(&sock)
        .output()
        .map_err(|e| e.to_string())?;
    std::fs::write(&go, "").map_err(|e| e.to_string())?;
    let tree = running.wait().map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(700));
    let said = stop(daemon)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    eq(&format!("exec exit ({stderr}; the daemon said: {said})"), out.status.code(), Some(125))?;
    ensure(stderr.contains("cannot be recorded") && stderr.contains("a restart would lose it"), || {
        format!("the refusal does not say why: {stderr}")
    })?;
    ensure(!ran.exists(), || "the refused task's command ran".into())?;
    ensure(attach.status.success(), || format!("attach: {}", String::from_utf8_lossy(&attach.stderr)))?;
    eq("attached tree exit", tree.code(), Some(0))?;
    let evs = events(&all)?;
    let record_gaps: Vec<(Option<&str>, Option<&str>)> = evs
        .iter()
        .filter(|e| {
            e.kind == Kind::Tamper && e.detail.get("attempt").and_then(|v| v.as_str()) == Some("task record")
        })
        .map(|e| (e.task.as_deref(), e.verdict.as_deref()))
        .collect();
    eq(
        "task record gaps (task, verdict)",
        record_gaps,
        vec![(None, Some("denied")), (Some("held"), Some("violation"))],
    )?;
    let after_path = after.display().to_string();
    ensure(
        evs.iter()
            .any(|e| e.path.as_deref() == Some(after_path.as_str()) && e.task.as_deref() == Some("held")),
        || "the attached tree's write was not watched".into(),
    )?;
    Ok(())
}
