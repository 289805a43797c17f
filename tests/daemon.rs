//! The daemon on the real kernel: two tasks registered by `agentmon exec` at once,
//! each event attributed to its own task (in the daemon's stream and in each exec's
//! own events file); a running tree attached; malformed and unauthorised control
//! requests refused; SIGTERM records the end and flushes.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use agentmon::event::{Event, Kind};

use crate::{
    R,
    support::{self, SCENARIO_ENV, agentmon, ensure, eq, wait, workdir},
};

fn manifest(d: &Path, id: &str, dir: &Path) -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let t = d.join(format!("{id}.yaml"));
    std::fs::write(
        &t,
        format!(
            "id: {id}\nmode: execute\nscope:\n  write: [\"{}/out/f*\"]\n  exec: [\"{}\"]\n",
            dir.display(),
            me.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok(t)
}

fn stream_cmd(dir: &Path, count: u32, gap: u32) -> Result<Vec<String>, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    Ok(vec![me.display().to_string(), dir.display().to_string(), count.to_string(), gap.to_string()])
}

/// One request line on the daemon's socket; the reply's JSON.
fn raw(sock: &Path, line: &str) -> Result<serde_json::Value, String> {
    let mut s = UnixStream::connect(sock).map_err(|e| e.to_string())?;
    s.write_all(line.as_bytes()).map_err(|e| e.to_string())?;
    s.write_all(b"\n").map_err(|e| e.to_string())?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).map_err(|e| e.to_string())?;
    serde_json::from_str(&reply).map_err(|e| format!("reply {reply:?}: {e}"))
}

pub(crate) fn events(p: &Path) -> Result<Vec<Event>, String> {
    let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(support::parse_stream(&text)?.0)
}

/// Each file written under `dir` is attributed to `task` and nothing else is.
fn attributed(evs: &[Event], dir: &Path, task: &str, files: u32) -> Result<(), String> {
    let under = format!("{}/", dir.display());
    let mine: Vec<&Event> =
        evs.iter().filter(|e| e.path.as_deref().is_some_and(|p| p.starts_with(&under))).collect();
    for e in &mine {
        eq(&format!("task of {:?} {:?}", e.kind, e.path), e.task.as_deref(), Some(task))?;
    }
    for i in 0..files {
        let p = format!("{under}out/f{i}");
        ensure(
            mine.iter().any(|e| e.kind == Kind::FileCreate && e.path.as_deref() == Some(p.as_str())),
            || format!("no file_create of {p}"),
        )?;
    }
    let progress: Vec<&&Event> =
        mine.iter().filter(|e| e.path.as_deref() == Some(format!("{under}out/progress").as_str())).collect();
    ensure(
        !progress.is_empty() && progress.iter().all(|e| e.verdict.as_deref() == Some("out_of_scope")),
        || {
            format!(
                "out-of-scope writes of {task}: {:?}",
                progress.iter().map(|e| &e.verdict).collect::<Vec<_>>()
            )
        },
    )?;
    let ends = |k: Kind| evs.iter().filter(|e| e.kind == k && e.task.as_deref() == Some(task)).count();
    eq(&format!("task_start/task_end of {task}"), (ends(Kind::TaskStart), ends(Kind::TaskEnd)), (1, 1))
}

/// The socket and the events file of the daemon that [`start_daemon`] runs in `d`.
pub(crate) fn daemon_paths(d: &Path) -> (PathBuf, PathBuf) {
    (d.join("agentmon.sock"), d.join("all.jsonl"))
}

/// Writes the configuration of a daemon in `d` (first time: a restart reuses it) and
/// starts it; returns once its socket answers.
pub(crate) fn start_daemon(d: &Path, extra: &str) -> Result<Child, String> {
    start_daemon_via(d, extra, &[])
}

/// [`start_daemon`], its command run by the command `via` (`via... agentmon daemon …`).
pub(crate) fn start_daemon_via(d: &Path, extra: &str, via: &[&std::ffi::OsStr]) -> Result<Child, String> {
    let (sock, _) = daemon_paths(d);
    let mut daemon = spawn_daemon(d, extra, via)?;
    if !wait(Duration::from_secs(20) * support::slowdown(), || UnixStream::connect(&sock).is_ok()) {
        let _ = daemon.kill();
        let out = daemon.wait_with_output().map_err(|e| e.to_string())?;
        return Err(format!("the daemon's socket never came up: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(daemon)
}

/// [`start_daemon`] without waiting for its socket.
fn spawn_daemon(d: &Path, extra: &str, via: &[&std::ffi::OsStr]) -> Result<Child, String> {
    let (sock, all) = daemon_paths(d);
    let config = d.join("agentmon.yaml");
    if !config.exists() {
        // No rules unless `extra` names some.
        let rules = if extra.lines().any(|l| l.starts_with("rules:")) { "" } else { "rules: none\n" };
        let text = format!(
            "socket: {}\nevents: {}\n{rules}state_dir: {}\n{extra}",
            sock.display(),
            all.display(),
            d.join("state").display()
        );
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
    }
    let mut cmd = match via {
        [first, rest @ ..] => {
            let mut c = Command::new(first);
            c.args(rest).arg(agentmon());
            c
        }
        [] => Command::new(agentmon()),
    };
    cmd.args(["daemon", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())
}

/// SIGTERM while the daemon is still setting up (its kernel programs load for
/// seconds, longer under emulation): it is held, and the daemon stops cleanly once
/// set up — exit 0, its programs detached and unpinned. Before, the default action
/// killed it half set up (seen in a slow guest).
pub fn daemon_signalled_while_loading_stops_cleanly() -> R {
    let d = workdir("daemon-early-term");
    let mut daemon = spawn_daemon(&d, "", &[])?;
    let mut err = BufReader::new(daemon.stderr.take().ok_or("no stderr")?);
    let mut said = String::new();
    // Printed after the signals are caught, before the programs load.
    while !said.contains("enforcement layers on this host") {
        if err.read_line(&mut said).map_err(|e| e.to_string())? == 0 {
            return Err(format!("the daemon stopped before loading: {said}").into());
        }
    }
    let pid = nix::unistd::Pid::from_raw(daemon.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).map_err(|e| e.to_string())?;
    std::io::Read::read_to_string(&mut err, &mut said).map_err(|e| e.to_string())?;
    let status = daemon.wait().map_err(|e| e.to_string())?;
    eq(&format!("exit after SIGTERM while loading: {said}"), status.code(), Some(0))?;
    ensure(said.contains("stopping; no running task"), || format!("no clean stop: {said}"))?;
    let pins = agentmon::kernel::pin::root_of(&d.join("state"));
    ensure(!pins.exists(), || format!("{} left behind", pins.display()))?;
    Ok(())
}

/// GET /metrics on the loopback port.
pub(crate) fn scrape(port: u16) -> Result<String, String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("metrics: {e}"))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    ensure(out.starts_with("HTTP/1.1 200"), || format!("metrics answered: {out}"))?;
    Ok(out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

pub(crate) fn stop(daemon: Child) -> Result<String, String> {
    let pid = nix::unistd::Pid::from_raw(daemon.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let out = daemon.wait_with_output().map_err(|e| e.to_string())?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure(out.status.code() == Some(0), || format!("daemon exit {:?}: {err}", out.status))?;
    // Its stderr is a pipe, as a journal is: no colour codes in it.
    ensure(!err.contains('\x1b'), || format!("ANSI escapes in the daemon's diagnostics: {err:?}"))?;
    Ok(err)
}

pub fn daemon_serves_concurrent_tasks() -> R {
    let d = workdir("daemon");
    let (sock, all) = daemon_paths(&d);
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?.local_addr().unwrap().port();
    let daemon = start_daemon(&d, &format!("metrics: 127.0.0.1:{port}\n"))?;
    let result = (|| -> Result<(), String> {
        // Bad requests: refused with a reason, the daemon keeps serving.
        let r = raw(&sock, "this is not json")?;
        ensure(r["ok"] == false && r["error"].as_str().is_some_and(|e| e.contains("malformed")), || {
            r.to_string()
        })?;
        let r = raw(&sock, r#"{"op":"start","manifest":"id: x"}"#)?;
        ensure(r["ok"] == false && r["error"].as_str().is_some_and(|e| e.contains("malformed")), || {
            r.to_string()
        })?;
        let r = raw(&sock, r#"{"op":"start","manifest":"id: x\nmode: read\n","file":"x.yaml","pid":1}"#)?;
        ensure(
            r["ok"] == false && r["error"].as_str().is_some_and(|e| e.contains("not the caller's child")),
            || r.to_string(),
        )?;

        // Two tasks at once, each with its own scope and events file.
        let (a, b) = (d.join("a"), d.join("b"));
        let mut runs = Vec::new();
        for (id, dir) in [("daemon-a", &a), ("daemon-b", &b)] {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            let child = Command::new(agentmon())
                .args(["exec", "--quiet", "--daemon"])
                .arg(&sock)
                .arg("--events")
                .arg(d.join(format!("{id}.jsonl")))
                .arg("--task")
                .arg(manifest(&d, id, dir)?)
                .arg("--")
                .args(stream_cmd(dir, 20, 10)?)
                .env(SCENARIO_ENV, "stream")
                .stdin(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| e.to_string())?;
            runs.push((id, dir.clone(), child));
        }
        // A tree already running, attached while it runs.
        let c = d.join("c");
        std::fs::create_dir_all(&c).map_err(|e| e.to_string())?;
        let mut running = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
            .args(stream_cmd(&c, 60, 30)?.into_iter().skip(1))
            .env(SCENARIO_ENV, "stream")
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let progress = || {
            std::fs::read_to_string(c.join("out/progress"))
                .ok()
                .and_then(|s| s.parse::<u32>().ok())
                .unwrap_or(0)
        };
        wait(Duration::from_secs(10), || progress() >= 3);
        let out = Command::new(agentmon())
            .args(["attach", "--pid", &running.id().to_string(), "--task"])
            .arg(manifest(&d, "daemon-c", &c)?)
            .arg("--socket")
            .arg(&sock)
            .output()
            .map_err(|e| e.to_string())?;
        let attached_at = progress();
        ensure(out.status.success(), || format!("attach: {}", String::from_utf8_lossy(&out.stderr)))?;
        // An operator ends the attached task while it runs; an unknown task is refused.
        let end = |task: &str| Command::new(agentmon()).args(["end", task, "--socket"]).arg(&sock).output();
        let out = end("no-such-task").map_err(|e| e.to_string())?;
        ensure(out.status.code() == Some(1), || "ending an unknown task succeeded".into())?;
        let out = end("daemon-c").map_err(|e| e.to_string())?;
        eq("end exit", out.status.code(), Some(0))?;
        for (id, _, child) in runs.iter_mut() {
            let st = child.wait().map_err(|e| e.to_string())?;
            eq(&format!("{id} exit"), st.code(), Some(0))?;
        }
        eq("attached tree exit", running.wait().map_err(|e| e.to_string())?.code(), Some(0))?;
        ensure(attached_at < 55, || "the tree finished before it was attached".into())?;
        // Give the daemon a tick to take the last events.
        std::thread::sleep(Duration::from_millis(700));

        let status = Command::new(agentmon())
            .args(["status", "--socket"])
            .arg(&sock)
            .output()
            .map_err(|e| e.to_string())?;
        let st: serde_json::Value = serde_json::from_slice(&status.stdout).map_err(|e| e.to_string())?;
        eq("daemon status pid", st[0]["pid"].as_u64().is_some(), true)?;

        // The metrics endpoint counted what the daemon wrote.
        let text = scrape(port)?;
        let sample = |name: &str| -> Option<f64> {
            text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        };
        ensure(sample("agentmon_events_total{kind=\"file_create\"}").is_some_and(|n| n >= 40.0), || {
            text.clone()
        })?;
        ensure(
            sample("agentmon_verdicts_total{verdict=\"out_of_scope\"}").is_some_and(|n| n >= 2.0),
            || text.clone(),
        )?;
        ensure(sample("agentmon_probes_attached").is_some_and(|n| n > 10.0), || text.clone())?;
        for (id, dir, _) in &runs {
            let own = events(&d.join(format!("{id}.jsonl")))?;
            attributed(&own, dir, id, 20)?;
            ensure(own.iter().all(|e| e.task.as_deref() == Some(*id)), || {
                format!("{id}.jsonl has other tasks' events")
            })?;
        }
        Ok(())
    })();
    let stderr = stop(daemon);
    result?;
    let stderr = stderr?;
    let evs = events(&all)?;
    attributed(&evs, &d.join("a"), "daemon-a", 20)?;
    attributed(&evs, &d.join("b"), "daemon-b", 20)?;
    // The attached tree: its later files are the task's, its exit too.
    let c = d.join("c");
    let last = format!("{}/out/f59", c.display());
    let e = evs
        .iter()
        .find(|e| e.path.as_deref() == Some(last.as_str()))
        .ok_or("no event of the attached tree's last file")?;
    eq("attached task", e.task.as_deref(), Some("daemon-c"))?;
    let ends: Vec<&Event> =
        evs.iter().filter(|e| e.kind == Kind::TaskEnd && e.task.as_deref() == Some("daemon-c")).collect();
    eq("task_end of the attached task", ends.len(), 1)?;
    ensure(ends[0].reason.as_deref().is_some_and(|r| r.starts_with("ended by an operator")), || {
        format!("task_end reason {:?}; daemon said: {stderr}", ends[0].reason)
    })?;
    Ok(())
}

/// A daemon stopped and started again while a task runs: the new daemon resumes the
/// task from its state record, and the task's later events, exit and end are its own.
/// `agentmon exec` registering task `id` with the daemon at `sock`: the stream
/// scenario writing `count` files under `dir`, 40 ms apart.
fn stream_task(d: &Path, sock: &Path, id: &str, dir: &Path, count: u32) -> Result<Child, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    under_daemon(sock, &manifest(d, id, dir)?)
        .args(stream_cmd(dir, count, 40)?)
        .env(SCENARIO_ENV, "stream")
        .spawn()
        .map_err(|e| e.to_string())
}

/// How many files the stream scenario under `dir` has written.
fn progress(dir: &Path) -> u32 {
    std::fs::read_to_string(dir.join("out/progress")).ok().and_then(|s| s.parse().ok()).unwrap_or(0)
}

pub fn daemon_restart_resumes_tasks() -> R {
    let d = workdir("daemon-restart");
    let (sock, all) = daemon_paths(&d);
    let first = start_daemon(&d, "")?;
    let dir = d.join("r");
    let mut exec = stream_task(&d, &sock, "restarted", &dir, 250)?;
    let progress = || progress(&dir);
    let going = wait(Duration::from_secs(20), || progress() >= 10);
    let stopped = stop(first);
    let at_stop = progress();
    let second = start_daemon(&d, "");
    let at_restart = progress();
    let code = exec.wait().map_err(|e| e.to_string())?.code();
    std::thread::sleep(Duration::from_millis(1200));
    let saved_after = d.join("state/restarted.json").exists();
    let second = second?;
    let said = stop(second)?;
    stopped?;
    ensure(going, || "the task never got going".into())?;
    ensure(at_restart < 240, || {
        format!(
            "the task was nearly done ({at_stop} at the stop, {at_restart} at the restart): nothing to resume"
        )
    })?;
    eq("task exit", code, Some(0))?;
    let evs = events(&all)?;
    let starts: Vec<&Event> =
        evs.iter().filter(|e| e.kind == Kind::TaskStart && e.task.as_deref() == Some("restarted")).collect();
    ensure(starts.len() == 2, || {
        format!("{} task_start records, want 2; the second daemon said: {said}", starts.len())
    })?;
    eq("second start resumed", starts[1].detail.get("resumed").and_then(|v| v.as_bool()), Some(true))?;
    // The kernel kept tracking while no daemon ran: every file is reported, once.
    every_file_once(&evs, &dir, "restarted", 250, None)?;
    let last = format!("{}/out/f249", dir.display());
    let e = evs
        .iter()
        .find(|e| e.kind == Kind::FileCreate && e.path.as_deref() == Some(last.as_str()))
        .ok_or_else(|| format!("the resumed task's last file was not seen; daemon said: {said}"))?;
    eq("task of the last file", e.task.as_deref(), Some("restarted"))?;
    eq(
        "task_end records",
        evs.iter().filter(|e| e.kind == Kind::TaskEnd && e.task.as_deref() == Some("restarted")).count(),
        1,
    )?;
    ensure(!saved_after, || "the ended task's state record was kept".into())?;
    Ok(())
}

/// `on_expiry: kill`: a task still running when its expiry passes is killed, and its
/// end recorded.
pub fn daemon_kills_expired_tasks() -> R {
    let d = workdir("daemon-expiry");
    let (sock, all) = daemon_paths(&d);
    let daemon = start_daemon(&d, "on_expiry: kill\n")?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let task = d.join("short.yaml");
    std::fs::write(
        &task,
        format!("id: short\nmode: execute\nexpires_in: 2s\nscope:\n  exec: [\"{}\"]\n", me.display()),
    )
    .map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    let out = under_daemon(&sock, &task)
        .arg(&me)
        .arg(&d)
        .env(SCENARIO_ENV, "wait_for")
        .output()
        .map_err(|e| e.to_string());
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(700));
    stop(daemon)?;
    let out = out?;
    eq("exit code (killed)", out.status.code(), Some(128 + 9))?;
    ensure(took < Duration::from_secs(10), || format!("killed only after {took:?}"))?;
    let evs = events(&all)?;
    let kill = evs
        .iter()
        .find(|e| e.kind == Kind::Action && e.task.as_deref() == Some("short"))
        .ok_or("no action event for the expired task")?;
    eq("action", kill.action.as_deref(), Some("kill"))?;
    eq("by", kill.detail.get("by").and_then(|v| v.as_str()), Some("expiry"))?;
    let ends: Vec<&Event> =
        evs.iter().filter(|e| e.kind == Kind::TaskEnd && e.task.as_deref() == Some("short")).collect();
    eq("task_end records", ends.len(), 1)?;
    // Killed because it expired: the end says so (it said "killed").
    eq("why it ended", ends[0].reason.as_deref(), Some("the task expired"))?;
    Ok(())
}

/// A selector (exe and argv globs) picks up an agent started outside agentmon: it runs
/// as an instance of the default task, `<id>-<pid>`, from soon after its start.
pub fn daemon_selectors_attach_agents() -> R {
    let d = workdir("daemon-select");
    let (_, all) = daemon_paths(&d);
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = d.join("sel-marker");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let default = manifest(&d, "agent", &dir)?;
    let extra = format!(
        "selectors:\n  - exe: \"{}\"\n    argv: \"*sel-marker*\"\ndefault_task: {}\n",
        me.display(),
        default.display()
    );
    let daemon = start_daemon(&d, &extra)?;
    let run = (|| -> Result<(u32, Option<i32>), String> {
        let mut agent = Command::new(&me)
            .args(stream_cmd(&dir, 40, 50)?.into_iter().skip(1))
            .env(SCENARIO_ENV, "stream")
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let code = agent.wait().map_err(|e| e.to_string())?.code();
        Ok((agent.id(), code))
    })();
    std::thread::sleep(Duration::from_millis(800));
    stop(daemon)?;
    let (pid, code) = run?;
    eq("agent exit", code, Some(0))?;
    let id = format!("agent-{pid}");
    let evs = events(&all)?;
    ensure(evs.iter().any(|e| e.kind == Kind::TaskStart && e.task.as_deref() == Some(id.as_str())), || {
        format!("no task_start of {id}")
    })?;
    let last = format!("{}/out/f39", dir.display());
    let e = evs
        .iter()
        .find(|e| e.kind == Kind::FileCreate && e.path.as_deref() == Some(last.as_str()))
        .ok_or("the selected agent's last file was not seen")?;
    eq("task of the selected agent's file", e.task.as_deref(), Some(id.as_str()))?;
    ensure(evs.iter().any(|e| e.kind == Kind::TaskEnd && e.task.as_deref() == Some(id.as_str())), || {
        format!("no task_end of {id}")
    })?;
    Ok(())
}

/// An enforced task `id` in `d/<id>.yaml` whose deletes are held for approval; its
/// files in d/<id>/repo (a.txt to delete). Returns (d/<id>, the manifest, this binary).
pub(crate) fn gated_task(d: &Path, id: &str) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let g = d.join(id);
    std::fs::create_dir_all(g.join("repo")).map_err(|e| e.to_string())?;
    std::fs::write(g.join("repo/a.txt"), "a").map_err(|e| e.to_string())?;
    let task = d.join(format!("{id}.yaml"));
    std::fs::write(
        &task,
        format!(
            "id: {id}\nmode: execute\nenforcement: enforce\napproval_required: [delete]\nscope:\n  \
             write: [\"{r}/**\"]\n  delete: [\"{r}/**\"]\n  exec: [\"{me}\"]\n",
            r = g.join("repo").display(),
            me = me.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok((g, task, me))
}

/// The approval id of task `id`'s held call, once it is asked for.
fn held_approval(all: &Path, id: &str, limit: Duration) -> Result<String, String> {
    let mut held = None;
    wait(limit, || {
        held = events(all).ok().and_then(|evs| {
            evs.iter()
                .find(|e| e.kind == Kind::ApprovalRequest && e.task.as_deref() == Some(id))
                .and_then(|e| e.detail.get("approval").and_then(|v| v.as_str()).map(String::from))
        });
        held.is_some()
    });
    held.ok_or_else(|| format!("no approval_request of {id} from the daemon"))
}

/// `agentmon approve ID` at the daemon's socket.
fn approve(sock: &Path, held: &str) -> Result<(), String> {
    let out = Command::new(agentmon())
        .args(["approve", held, "--socket"])
        .arg(sock)
        .output()
        .map_err(|e| e.to_string())?;
    ensure(out.status.success(), || format!("approve: {}", String::from_utf8_lossy(&out.stderr)))
}

/// Waits for task `id`'s held delete of g/repo/a.txt to be asked for, checks it is
/// still held, and approves it.
pub(crate) fn approve_the_delete(
    all: &Path,
    sock: &Path,
    g: &Path,
    id: &str,
    limit: Duration,
) -> Result<(), String> {
    let held = held_approval(all, id, limit)?;
    ensure(g.join("repo/a.txt").exists(), || "deleted before it was approved".into())?;
    approve(sock, &held)
}

/// Two enforced tasks with approval gates, registered with one daemon: `agentmon
/// exec` hands each task's approval listener to the daemon, which holds each delete
/// until an operator approves it, then performs it. Each held call has an id of
/// its own: approving one task's never lets another's through (the ids were
/// counted per gate, so both tasks' first calls were `<pid>-1`, and approving one
/// performed whichever gate was found first).
pub fn daemon_holds_approval_gates() -> R {
    let d = workdir("daemon-gate");
    let (sock, all) = daemon_paths(&d);
    let daemon = start_daemon(&d, "approval_timeout: 30s\n")?;
    let limit = Duration::from_secs(20) * support::slowdown();
    let spawn = |id: &str| -> Result<(PathBuf, Child), String> {
        let (g, task, me) = gated_task(&d, id)?;
        let child = under_daemon(&sock, &task)
            .arg(&me)
            .arg(&g)
            .arg("delete=repo/a.txt")
            .env(SCENARIO_ENV, "gated")
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        Ok((g, child))
    };
    let (a, b) = (spawn("gated-a"), spawn("gated-b"));
    let result = (|| -> Result<(String, String, bool), String> {
        let (ga, gb) = (&a.as_ref()?.0, &b.as_ref()?.0);
        let (ida, idb) = (held_approval(&all, "gated-a", limit)?, held_approval(&all, "gated-b", limit)?);
        ensure(ga.join("repo/a.txt").exists() && gb.join("repo/a.txt").exists(), || {
            "deleted before it was approved".into()
        })?;
        approve(&sock, &ida)?;
        let a_done = wait(limit, || !ga.join("repo/a.txt").exists());
        std::thread::sleep(Duration::from_millis(300) * support::slowdown());
        let b_held = gb.join("repo/a.txt").exists();
        approve(&sock, &idb)?;
        ensure(a_done, || "the approved delete did not happen".into())?;
        Ok((ida, idb, b_held))
    })();
    let mut outs = Vec::new();
    for r in [a, b] {
        let (g, child) = r?;
        outs.push((g, child.wait_with_output().map_err(|e| e.to_string())?));
    }
    std::thread::sleep(Duration::from_millis(700));
    stop(daemon)?;
    let (ida, idb, b_held) = result?;
    ensure(ida != idb, || format!("two tasks' held calls share the approval id {ida}"))?;
    ensure(b_held, || "approving one task's call let another task's held delete through".into())?;
    for (g, out) in &outs {
        eq("exec exit", out.status.code(), Some(0))?;
        let results = std::fs::read_to_string(g.join("repo/results.txt")).map_err(|e| e.to_string())?;
        eq("the agent's result", results.trim(), "delete 0")?;
        ensure(!g.join("repo/a.txt").exists(), || "the approved delete did not happen".into())?;
    }
    let evs = events(&all)?;
    for id in ["gated-a", "gated-b"] {
        let decided = evs
            .iter()
            .find(|e| e.kind == Kind::Approval && e.task.as_deref() == Some(id))
            .ok_or_else(|| format!("no approval event of {id}"))?;
        eq("decision", decided.detail.get("decision").and_then(|v| v.as_str()), Some("approved"))?;
    }
    Ok(())
}

/// Each of the stream scenario's `count` files has exactly one creation event, of
/// task `task`: none missed while no daemon ran, none doubled at the hand-over.
/// `killed_at`: a daemon killed then may have lost what it had read and not yet
/// written — the files made in the second before it may be missing (never doubled).
fn every_file_once(
    evs: &[Event],
    dir: &Path,
    task: &str,
    count: u32,
    killed_at: Option<std::time::SystemTime>,
) -> Result<(), String> {
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for e in evs.iter().filter(|e| e.kind == Kind::FileCreate && e.task.as_deref() == Some(task)) {
        *seen.entry(e.path.clone().unwrap_or_default()).or_default() += 1;
    }
    let name = |i: u32| format!("{}/out/f{i}", dir.display());
    let excused = |i: u32| {
        let made = std::fs::metadata(name(i)).and_then(|m| m.modified()).ok();
        match (killed_at, made) {
            (Some(k), Some(m)) => m <= k && k.duration_since(m).is_ok_and(|d| d < Duration::from_secs(1)),
            _ => false,
        }
    };
    let missing: Vec<u32> = (0..count).filter(|i| !seen.contains_key(&name(*i)) && !excused(*i)).collect();
    let doubled: Vec<u32> = (0..count).filter(|i| seen.get(&name(*i)).is_some_and(|n| *n > 1)).collect();
    ensure(missing.is_empty() && doubled.is_empty(), || {
        format!("files with no creation event: {missing:?}; with more than one: {doubled:?}")
    })
}

/// A daemon killed with SIGKILL (no chance to say anything) and restarted at once:
/// the kernel programs and maps, pinned, keep tracking the task meanwhile; the new
/// daemon takes them over, resumes the task, reports what it did in the gap from
/// the ring (every file once), and its `task_start` says for how long no daemon
/// watched. Stopped with no task left, it leaves nothing in bpffs.
pub fn daemon_kill9_restart_reports_the_gap() -> R {
    let d = workdir("daemon-kill9");
    let (sock, all) = daemon_paths(&d);
    let audit = format!(
        "audit:\n  path: {}\n  key: {}\n",
        d.join("audit.jsonl").display(),
        d.join("audit.key").display()
    );
    let first = start_daemon(&d, &audit)?;
    let dir = d.join("r");
    let mut exec = stream_task(&d, &sock, "gapped", &dir, 200)?;
    let progress = || progress(&dir);
    // Running, and its gate (the i386/x32 report) taken: this is a kill of a daemon
    // serving a running task (one killed while taking the gate: a_gate_outlives_...).
    let going = wait(Duration::from_secs(20) * support::slowdown(), || {
        progress() >= 10 && crate::tasklog::gate_taken(&d, "gapped")
    });
    let mut first = first;
    let killed_at = std::time::SystemTime::now();
    let _ = first.kill();
    let _ = first.wait();
    let pins = agentmon::kernel::pin::root_of(&d.join("state"));
    let pinned = pins.exists();
    // A kill lands mid-write at times (a write stops at a page boundary on SIGKILL):
    // made certain here, in both files, by a fragment of the next record.
    let log = d.join("audit.jsonl");
    for f in [&all, &log] {
        let mut w = std::fs::OpenOptions::new().append(true).open(f).map_err(|e| e.to_string())?;
        w.write_all(b"{\"schema\":\"agentmon.event/1\",\"id\":{\"sch").map_err(|e| e.to_string())?;
    }
    std::thread::sleep(Duration::from_millis(800));
    // The same configuration: the torn files are continued.
    let second = start_daemon(&d, &audit);
    let code = exec.wait().map_err(|e| e.to_string())?.code();
    // Stopped once it has ended the task (a fixed 1.2 s was too short for the
    // deb13bpo guest, where the daemon observes through the syscall tracepoints).
    let ended = wait(Duration::from_secs(20) * support::slowdown(), || {
        events(&all).is_ok_and(|evs| {
            evs.iter().any(|e| e.kind == Kind::TaskEnd && e.task.as_deref() == Some("gapped"))
        })
    });
    std::thread::sleep(Duration::from_millis(1200));
    let second = second?;
    let said = stop(second)?;
    ensure(going, || "the task never got going".into())?;
    eq("task exit", code, Some(0))?;
    ensure(ended, || format!("the second daemon never ended the task; it said: {said}"))?;
    ensure(pinned, || format!("nothing pinned at {} once the daemon was killed", pins.display()))?;
    ensure(!pins.exists(), || {
        format!("{} left behind by a daemon stopped with no task; it said: {said}", pins.display())
    })?;
    let evs = events(&all)?;
    every_file_once(&evs, &dir, "gapped", 200, Some(killed_at))?;
    let starts: Vec<&Event> =
        evs.iter().filter(|e| e.kind == Kind::TaskStart && e.task.as_deref() == Some("gapped")).collect();
    ensure(starts.len() == 2, || {
        format!("{} task_start records; the second daemon said: {said}", starts.len())
    })?;
    for s in &starts {
        // Both daemons saw the task's calls through the tier this kernel gives a daemon.
        let tier = s.detail.get("observe").and_then(|v| v.as_str());
        match support::expected_observe() {
            Some(want) => eq("the daemon's observation tier", tier, Some(want.as_str()))?,
            None => ensure(matches!(tier, Some("fexit" | "tracepoint")), || format!("observe: {tier:?}"))?,
        }
    }
    let gap = starts[1].detail.get("gap").ok_or_else(|| format!("no gap in {:?}", starts[1].detail))?;
    let from = gap["from"].as_str().and_then(agentmon::event::Timestamp::parse).ok_or("gap.from")?;
    let to = gap["to"].as_str().and_then(agentmon::event::Timestamp::parse).ok_or("gap.to")?;
    ensure(from < to && to <= starts[1].ts, || format!("gap {gap}"))?;
    eq("gap seconds", gap["seconds"].as_u64(), Some(((to.0 - from.0) / 1_000_000_000) as u64))?;
    eq("gap observed by the kept programs", gap["observed"].as_bool(), Some(true))?;
    for f in [&all, &log] {
        // `output:FILE` or `output:audit chain FILE`.
        let name = f.display().to_string();
        let of = |k: &String| k.starts_with("output:") && k.ends_with(&name);
        let cut =
            evs.iter().find(|e| e.kind == Kind::Loss && e.lost.as_ref().is_some_and(|l| l.keys().any(of)));
        let cut = cut.ok_or_else(|| format!("no loss record of the torn line of {}", f.display()))?;
        let kept = cut.detail["torn"]["kept"].as_str().ok_or("detail.torn.kept")?;
        let fragment = std::fs::read(kept).map_err(|e| format!("{kept}: {e}"))?;
        ensure(fragment.ends_with(b"\"id\":{\"sch"), || format!("{kept} holds {fragment:?}"))?;
    }
    ensure(starts[1].reason.as_deref().is_some_and(|r| r.contains("kept tracking")), || {
        format!("{:?}", starts[1].reason)
    })?;
    let (vc, _, verr) = {
        let out = Command::new(agentmon())
            .args(["audit", "verify"])
            .arg(&log)
            .output()
            .map_err(|e| e.to_string())?;
        (out.status.code(), (), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    eq(&format!("audit verify after a kill -9: {verr}"), vc, Some(0))?;
    Ok(())
}

/// A task `parent` (writes d/repo/**, enforced where enforce mode is available;
/// runs this binary and agentmon) and a narrower sub-task `child` (writes
/// d/repo/sub/**), for the delegation scenarios.
struct Family {
    repo: PathBuf,
    parent: PathBuf,
    child: PathBuf,
    me: PathBuf,
    enforce: bool,
}

fn family(d: &Path) -> Result<Family, String> {
    let repo = d.join("repo");
    std::fs::create_dir_all(repo.join("sub")).map_err(|e| e.to_string())?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let enforce = support::can_enforce();
    let parent = d.join("parent.yaml");
    let mode = if enforce { "enforce" } else { "observe" };
    std::fs::write(
        &parent,
        format!(
            "id: parent\nmode: execute\nenforcement: {mode}\nscope:\n  write: [\"{r}/**\"]\n  exec: [\"{me}\", \"{am}\"]\n",
            r = repo.display(),
            me = me.display(),
            am = support::agentmon(),
        ),
    )
    .map_err(|e| e.to_string())?;
    let child = d.join("child.yaml");
    std::fs::write(
        &child,
        format!(
            "id: child\nmode: execute\nscope:\n  write: [\"{}/sub/**\"]\n  exec: [\"{}\"]\n",
            repo.display(),
            me.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok(Family { repo, parent, child, me, enforce })
}

/// A process a sub-task left behind, after both the sub-task and its parent ended,
/// across a restart: it stays the sub-task's, held by the sub-task's scope. Found
/// by review: the parent, ended with no process of its own left, was dropped, so
/// the sub-task was never resumed and the process was let go.
pub fn daemon_restart_keeps_a_sub_tasks_leftovers() -> R {
    let d = workdir("daemon-sub-leftover");
    let Family { repo, parent, child, me, enforce } = family(&d)?;
    let (sock, all) = daemon_paths(&d);
    let first = start_daemon(&d, "")?;
    let code = under_daemon(&sock, &parent)
        .args([me.as_os_str(), d.as_os_str(), support::agentmon().as_ref(), child.as_os_str()])
        .arg("sub_leaves")
        .env(SCENARIO_ENV, "delegate_one")
        .status()
        .map_err(|e| e.to_string())?
        .code();
    let limit = Duration::from_secs(30) * support::slowdown();
    let ends = |evs: &[Event]| evs.iter().filter(|e| e.kind == Kind::TaskEnd).count();
    let both_ended = wait(limit, || events(&all).is_ok_and(|evs| ends(&evs) >= 2));
    // The records say so before the daemon stops.
    let said1 = stop(first)?;
    let second = start_daemon(&d, "")?;
    taken_up(&sock);
    std::fs::write(d.join("go"), b"").map_err(|e| e.to_string())?;
    let done = wait(limit, || repo.join("sub/left_done").exists());
    std::thread::sleep(Duration::from_millis(1200));
    let said2 = stop(second)?;
    eq("exit", code, Some(0))?;
    ensure(both_ended, || format!("the tasks never ended: {said1}"))?;
    ensure(done, || format!("the left-behind process never finished: {said2}"))?;
    let evs = events(&all)?;
    let created = |p: &Path| created(&evs, p, &said2);
    let inside = created(&repo.join("sub/left_in.txt"))?;
    eq(
        &format!("left behind, inside: task (the daemons said: {said1}\n{said2})"),
        inside.task.as_deref(),
        Some("child"),
    )?;
    let out = repo.join("left_out.txt");
    let ev = created(&out)?;
    let want = if enforce { "denied" } else { "out_of_scope" };
    eq(
        "left behind, outside the sub-task: (task, verdict)",
        (ev.task.as_deref(), ev.verdict.as_deref()),
        (Some("child"), Some(want)),
    )?;
    ensure(enforce != out.exists(), || "the sub-task's scope did not hold for what it left behind".into())?;
    Ok(())
}

/// A sub-task delegated inside a daemon's task, across a restart of the daemon: the
/// next daemon binds it again, so what it does afterwards is its own, judged (and,
/// enforced, held) by its narrower scope. Before, it was not recorded: the next
/// daemon let its processes go (nothing reported; on the BPF LSM tier not held by
/// any scope), or on fresh maps judged them by the parent's wider one.
pub fn daemon_restart_keeps_sub_tasks() -> R {
    let d = workdir("daemon-subtask");
    let Family { repo, parent, child, me, enforce } = family(&d)?;
    let am = support::agentmon();
    let (sock, all) = daemon_paths(&d);
    let first = start_daemon(&d, "")?;
    let mut exec = under_daemon(&sock, &parent)
        .arg(&me)
        .arg(&d)
        .arg(am)
        .arg(&child)
        .env(SCENARIO_ENV, "delegate_one")
        .spawn()
        .map_err(|e| e.to_string())?;
    let limit = Duration::from_secs(30) * support::slowdown();
    let ready = wait(limit, || repo.join("sub/ready").exists());
    // The same build takes the kernel's maps over (the sub-task's processes were kept
    // under its cookie) ...
    let stopped = stop(first);
    let second = start_daemon(&d, "")?;
    // Its socket answers before it has resumed its tasks.
    let resumed = |n: usize| {
        wait(limit, || {
            events(&all).is_ok_and(|evs| {
                evs.iter().filter(|e| e.kind == Kind::TaskStart && e.task.as_deref() == Some("child")).count()
                    >= n
            })
        })
    };
    resumed(2);
    std::fs::write(d.join("go1"), b"").map_err(|e| e.to_string())?;
    let one = wait(limit, || repo.join("sub/done1").exists());
    std::thread::sleep(Duration::from_millis(700));
    let said2 = stop(second)?;
    // ... another configuration starts on fresh maps (its processes found again as the
    // descendants of its root, among its parent's).
    let config = d.join("agentmon.yaml");
    let text = std::fs::read_to_string(&config).map_err(|e| e.to_string())?;
    std::fs::write(&config, format!("{text}max_tracked: 60000\n")).map_err(|e| e.to_string())?;
    let third = start_daemon(&d, "");
    resumed(3);
    std::fs::write(d.join("go2"), b"").map_err(|e| e.to_string())?;
    let code = exec.wait().map_err(|e| e.to_string())?.code();
    std::thread::sleep(Duration::from_millis(1200));
    let said3 = stop(third?)?;
    stopped?;
    ensure(ready && one, || format!("the sub-task never got going ({ready}, {one}): {said2}"))?;
    eq("exit", code, Some(0))?;
    eq("sub-task exit", std::fs::read_to_string(repo.join("sub-rc")).ok(), Some("Some(0)".into()))?;
    let evs = events(&all)?;
    let starts: Vec<&Event> =
        evs.iter().filter(|e| e.kind == Kind::TaskStart && e.task.as_deref() == Some("child")).collect();
    ensure(starts.len() == 3, || format!("{} task_start of the sub-task: {said2}\n{said3}", starts.len()))?;
    for (s, observed) in [(starts[1], true), (starts[2], false)] {
        eq("resumed", s.detail.get("resumed").and_then(|v| v.as_bool()), Some(true))?;
        eq("gap observed", s.detail.get("gap").and_then(|g| g["observed"].as_bool()), Some(observed))?;
    }
    let said = format!("{said2}\n{said3}");
    let created = |p: &Path| created(&evs, p, &said);
    for n in 1..=2 {
        let after = created(&repo.join(format!("sub/after{n}.txt")))?;
        eq(&format!("restart {n}, inside: task"), after.task.as_deref(), Some("child"))?;
        eq(&format!("restart {n}, inside: verdict"), after.verdict.as_deref(), Some("in_scope"))?;
        let out = repo.join(format!("notsub_after{n}.txt"));
        let ev = created(&out)?;
        eq(&format!("restart {n}, outside: task"), ev.task.as_deref(), Some("child"))?;
        let want = if enforce { "denied" } else { "out_of_scope" };
        eq(&format!("restart {n}, outside: verdict"), ev.verdict.as_deref(), Some(want))?;
        ensure(enforce != out.exists(), || format!("the sub-task's scope did not hold after restart {n}"))?;
    }
    Ok(())
}

/// A process an enforced task left behind (its root exited: the task ended) stays
/// the task's across a restart of the daemon: bound again with no new `task_start`,
/// reported, and held by the task's scope. Before, the next daemon let it go, and a
/// daemon stopped with no running task unpinned everything: unobserved, and on the
/// BPF LSM tier held by no scope.
pub fn daemon_restart_keeps_leftovers() -> R {
    let d = workdir("daemon-leftover");
    let (t, me) = enforced_task(&d, "lefty")?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&t, &d)?);
    }
    let (sock, all) = daemon_paths(&d);
    let first = start_daemon(&d, "")?;
    let code = under_daemon(&sock, &t)
        .arg(&me)
        .arg(&d)
        .env(SCENARIO_ENV, "leave_behind")
        .status()
        .map_err(|e| e.to_string())?
        .code();
    let limit = Duration::from_secs(30) * support::slowdown();
    let ended =
        |evs: &[Event]| evs.iter().any(|e| e.kind == Kind::TaskEnd && e.task.as_deref() == Some("lefty"));
    let was_ended = wait(limit, || events(&all).is_ok_and(|evs| ended(&evs)));
    let said1 = stop(first)?;
    let pins = agentmon::kernel::pin::root_of(&d.join("state"));
    let pinned = pins.exists();
    let second = start_daemon(&d, "")?;
    taken_up(&sock);
    std::fs::write(d.join("go"), b"").map_err(|e| e.to_string())?;
    let done = wait(limit, || d.join("repo/left_done").exists());
    std::thread::sleep(Duration::from_millis(1200));
    let said2 = stop(second)?;
    eq("exit", code, Some(0))?;
    ensure(was_ended, || format!("the task never ended: {said1}"))?;
    ensure(pinned, || format!("the first daemon unpinned the left process's task: {said1}"))?;
    ensure(done, || "the left-behind process never finished".into())?;
    let evs = events(&all)?;
    let starts =
        evs.iter().filter(|e| e.kind == Kind::TaskStart && e.task.as_deref() == Some("lefty")).count();
    eq("task_start records (none for the leftovers)", starts, 1)?;
    let created = |p: &Path| created(&evs, p, &said2);
    let inside = created(&d.join("repo/left_in.txt"))?;
    eq(
        &format!("left behind, inside: task (the daemons said: {said1}\n{said2})"),
        inside.task.as_deref(),
        Some("lefty"),
    )?;
    let out = created(&d.join("out.txt"))?;
    eq(
        "left behind, outside: (task, verdict)",
        (out.task.as_deref(), out.verdict.as_deref()),
        (Some("lefty"), Some("denied")),
    )?;
    ensure(!d.join("out.txt").exists(), || "the left-behind process wrote outside the task's scope".into())?;
    ensure(!pins.exists(), || format!("{} kept after the last process ended: {said2}", pins.display()))?;
    Ok(())
}

/// The creation event of `p` in `evs`; its absence says what the daemons said.
fn created<'a>(evs: &'a [Event], p: &Path, said: &str) -> Result<&'a Event, String> {
    evs.iter()
        .find(|e| e.kind == Kind::FileCreate && e.path.as_deref() == p.to_str())
        .ok_or_else(|| format!("no file_create of {}: {said}", p.display()))
}

/// Returns once the daemon at `sock` answers a request: its loop runs, so the
/// recorded tasks were taken up (its socket accepts connections before that).
pub(crate) fn taken_up(sock: &Path) {
    let _ = raw(sock, r#"{"op":"status"}"#);
}

/// `agentmon exec --quiet --daemon SOCK --task T --`: the command's words follow.
pub(crate) fn under_daemon(sock: &Path, t: &Path) -> Command {
    let mut c = Command::new(agentmon());
    c.args(["exec", "--quiet", "--daemon"]).arg(sock).arg("--task").arg(t).arg("--").stdin(Stdio::null());
    c
}

/// `agentmon exec` registering task `t` with the daemon at `sock`, its command the
/// `attempts` scenario in `d` (this test binary `me`) with `actions`.
pub(crate) fn attempts_under(sock: &Path, t: &Path, me: &Path, d: &Path, actions: &[&str]) -> Command {
    let mut c = under_daemon(sock, t);
    c.arg(me).arg(d).args(actions).env(SCENARIO_ENV, "attempts");
    c
}

/// Writes an enforced task `id` in `d`: writes under d/repo, runs this test binary.
pub(crate) fn enforced_task(d: &Path, id: &str) -> Result<(PathBuf, PathBuf), String> {
    std::fs::create_dir_all(d.join("repo")).map_err(|e| e.to_string())?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let t = d.join(format!("{id}.yaml"));
    std::fs::write(
        &t,
        format!(
            "id: {id}\nmode: execute\nenforcement: enforce\nscope:\n  write: [\"{}/**\"]\n  exec: [\"{}\"]\n",
            d.join("repo").display(),
            me.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok((t, me))
}

/// An enforced task whose daemon is killed: its limits hold while no daemon runs
/// (on the BPF LSM tier only because the programs and the task cgroup's network
/// guard stay pinned; Landlock holds by itself), and the refused attempts made
/// meanwhile are reported by the next daemon, with their verdict.
pub fn enforcement_outlives_the_daemon() -> R {
    let d = workdir("daemon-enforce-gap");
    let (t, me) = enforced_task(&d, "held")?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&t, &d)?);
    }
    let (sock, all) = daemon_paths(&d);
    let mut first = start_daemon(&d, "")?;
    let go = d.join("go");
    let wait_go = format!("wait={}", go.display());
    let mut exec = attempts_under(&sock, &t, &me, &d, &[&wait_go, "write_out", "write_in", "tcp"])
        .spawn()
        .map_err(|e| e.to_string())?;
    // Running: its root exec'd under the task. The exec then hands the task's
    // approval gate to the daemon (a daemon gone before that, the exec kills the
    // command rather than leave its gated calls unanswered): a moment for that.
    let running =
        |evs: &[Event]| evs.iter().any(|e| e.kind == Kind::Exec && e.task.as_deref() == Some("held"));
    let bound =
        wait(Duration::from_secs(30) * support::slowdown(), || events(&all).is_ok_and(|evs| running(&evs)));
    std::thread::sleep(Duration::from_millis(500) * support::slowdown());
    let _ = first.kill();
    let _ = first.wait();
    std::fs::write(&go, b"").map_err(|e| e.to_string())?;
    let code = exec.wait().map_err(|e| e.to_string())?.code();
    let second = start_daemon(&d, "")?;
    std::thread::sleep(Duration::from_millis(1500) * support::slowdown());
    let said = stop(second)?;
    ensure(bound, || "the task was never bound".into())?;
    eq("task exit", code, Some(0))?;
    let res = crate::enforce::attempt_results(&d)?;
    eq("write_out errno while no daemon ran", res.get("write_out").copied(), Some(libc::EACCES))?;
    eq("write_in errno", res.get("write_in").copied(), Some(0))?;
    eq("tcp errno while no daemon ran", res.get("tcp").copied(), Some(crate::enforce::tcp_denied()))?;
    ensure(!d.join("outside.txt").exists(), || "the out-of-scope write happened".into())?;
    let evs = events(&all)?;
    let outside = d.join("outside.txt").display().to_string();
    let w = evs
        .iter()
        .find(|e| e.kind == Kind::FileCreate && e.path.as_deref() == Some(outside.as_str()))
        .ok_or_else(|| {
            format!("the refused write made in the gap was not reported; the daemon said: {said}")
        })?;
    eq("task of the refused write", w.task.as_deref(), Some("held"))?;
    eq(
        "verdict of the refused write",
        (w.verdict.as_deref(), w.error.as_deref()),
        (Some("denied"), Some("EACCES")),
    )?;
    let ends = evs.iter().filter(|e| e.kind == Kind::TaskEnd && e.task.as_deref() == Some("held")).count();
    eq("task_end records", ends, 1)?;
    Ok(())
}

/// A fork that escaped tracking (TRACKED full: a daemon with `max_tracked: 16` and a
/// task that holds 40 processes) is still held to its enforced task's scope on the
/// BPF LSM tier, by the task's cgroup; the escape itself is a loss record.
pub fn escaped_forks_stay_enforced() -> R {
    let d = workdir("daemon-escaped-fork");
    let (t, me) = enforced_task(&d, "many")?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&t, &d)?);
    }
    let (sock, all) = daemon_paths(&d);
    let daemon = start_daemon(&d, "max_tracked: 16\n")?;
    let out = attempts_under(&sock, &t, &me, &d, &["escaped_write_out=40", "escaped_signal=40"])
        .output()
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(1000) * support::slowdown());
    let said = stop(daemon)?;
    eq(&format!("task exit ({})", String::from_utf8_lossy(&out.stderr)), out.status.code(), Some(0))?;
    let got = crate::enforce::attempt_results(&d)?.get("escaped_write_out").copied();
    eq("errno of the escaped child's write", got, Some(libc::EACCES))?;
    // Its task may still signal it (before, the LSM tier refused: it is in no TRACKED
    // entry, and only those counted as the task's).
    let got = crate::enforce::attempt_results(&d)?.get("escaped_signal").copied();
    eq("errno of a signal to the escaped child from its task", got, Some(0))?;
    ensure(!d.join("outside.txt").exists(), || "the escaped child wrote out of scope".into())?;
    let evs = events(&all)?;
    let forks_lost: u64 = evs
        .iter()
        .filter(|e| e.kind == Kind::Loss)
        .filter_map(|e| e.lost.as_ref().and_then(|l| l.get("fork").copied()))
        .sum();
    ensure(forks_lost > 0, || format!("no loss record counts the escaped forks; the daemon said: {said}"))?;
    Ok(())
}

/// A name in bpffs another user made first (on a bpffs mounted 1777: a directory of
/// nobody's, open to all, where the daemon's pins go — they could rename or remove
/// the pins in it) does not receive the daemon's pins: it is removed and the
/// daemon's own directory made.
pub fn daemon_pins_despite_a_planted_name() -> R {
    use std::os::unix::fs::MetadataExt;
    let d = workdir("daemon-planted-pin");
    std::fs::create_dir_all(d.join("state")).map_err(|e| e.to_string())?;
    let root = agentmon::kernel::pin::root_of(&d.join("state"));
    if let Some(p) = root.parent() {
        std::fs::create_dir_all(p).map_err(|e| e.to_string())?;
    }
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    std::os::unix::fs::chown(&root, Some(65534), Some(65534)).map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).map_err(|e| e.to_string())?;
    let daemon = start_daemon(&d, "")?;
    let m = std::fs::symlink_metadata(&root).map_err(|e| e.to_string());
    // Its socket answers before its signal handlers are in (a slow guest shows it).
    std::thread::sleep(Duration::from_millis(500) * support::slowdown());
    let said = stop(daemon)?;
    let m = m?;
    ensure(m.is_dir() && m.uid() == 0 && m.mode() & 0o077 == 0, || {
        format!(
            "{} is not the daemon's own directory (uid {}, mode {:o}): {said}",
            root.display(),
            m.uid(),
            m.mode()
        )
    })?;
    Ok(())
}
