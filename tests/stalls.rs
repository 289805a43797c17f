//! A file system that does not answer cannot stop agentmon.
//!
//! An agent names paths (a delegated sub-task's scope, the files its calls touch,
//! a program it asks to run), an operator's task may name paths an agent chose,
//! and a file system there may be served by a process. agentmon resolved the paths a task names (its scope, its
//! events file) and the directories of an agent's calls the kernel did not walk
//! with plain lookups on its loop: a server that answers the caller's own lookup
//! and then stops answering held the loop, and with it every task's events,
//! verdicts, approvals and containment, for as long as it liked. The server here
//! answers the first lookup of `slow` and holds every later one until the test
//! lets it go.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agentmon::event::{Event, Kind};

use crate::{
    R,
    daemon::{daemon_paths, events, start_daemon, stop, under_daemon},
    enforce::run_attempts,
    support::{self, agentmon, ensure, eq, workdir},
};

/// A FUSE mount at `d/mnt` whose `slow` answers its first lookup and holds the
/// later ones until `d/go` exists (`d/asked` made when one is held).
struct Stalling {
    mnt: PathBuf,
    go: PathBuf,
}

impl Stalling {
    fn mount(d: &Path) -> Result<Self, String> {
        let mnt = d.join("mnt");
        std::fs::create_dir_all(d.join("repo")).map_err(|e| e.to_string())?;
        support::serve_fuse(d, &mnt, Some("after-first"))?;
        Ok(Self { mnt, go: d.join("go") })
    }

    /// Whether a lookup is being held now.
    fn holding(&self) -> bool {
        self.mnt.with_file_name("asked").exists() && !self.go.exists()
    }
}

impl Drop for Stalling {
    /// Every held lookup answered (agentmon's worker ends), the mount taken away
    /// (its server ends with it).
    fn drop(&mut self) {
        let _ = std::fs::write(&self.go, b"");
        std::thread::sleep(Duration::from_millis(100));
        support::unmount(&self.mnt);
    }
}

fn tampers<'a>(evs: &'a [Event], attempt: &str) -> Vec<&'a Event> {
    evs.iter()
        .filter(|e| {
            e.kind == Kind::Tamper && e.detail.get("attempt").and_then(|v| v.as_str()) == Some(attempt)
        })
        .collect()
}

/// A task started through the daemon whose scope names a directory on such a
/// mount is refused after a bounded wait (1 s), with a tamper record, while the
/// lookup is still held; the daemon answers its operators meanwhile and starts
/// the next task. An events file on a FUSE mount is refused: the daemon writes it
/// on its loop. Before, the daemon's loop waited in the lookup until the server
/// answered (`agentmon status` got no reply).
pub fn a_file_system_that_does_not_answer_cannot_stop_the_daemon() -> R {
    let d = workdir("stall-daemon");
    let (sock, all) = daemon_paths(&d);
    let fz = Stalling::mount(&d)?;
    let daemon = start_daemon(&d, "")?;
    let r = (|| -> R {
        let task = d.join("stalled.yaml");
        let scope = format!("{}/slow/**", fz.mnt.display());
        std::fs::write(&task, format!("id: stalled\nmode: execute\nscope:\n  write: [\"{scope}\"]\n"))
            .map_err(|e| e.to_string())?;
        // The exec's own lookup is answered (the first); the daemon's is held.
        let began = Instant::now();
        let out = under_daemon(&sock, &task).arg("/bin/true").output().map_err(|e| e.to_string())?;
        let took = began.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        ensure(!out.status.success(), || format!("the task started: {err}"))?;
        ensure(err.contains("did not answer within"), || format!("refused for another reason: {err}"))?;
        ensure(err.contains(&format!("{}/slow", fz.mnt.display())), || {
            format!("the path is not named: {err}")
        })?;
        ensure(took < Duration::from_secs(8) * support::slowdown(), || {
            format!("refused only after {took:?}")
        })?;
        ensure(fz.holding(), || "the daemon's lookup was not held (the test did not stall it)".into())?;
        // The loop runs while the lookup is held: an operator is answered, a task runs.
        let status = Command::new(agentmon())
            .args(["status", "--socket"])
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| e.to_string())?;
        ensure(status.status.success(), || {
            format!("status while a lookup is held: {}", String::from_utf8_lossy(&status.stderr))
        })?;
        let ok = d.join("ok.yaml");
        std::fs::write(
            &ok,
            format!("id: ok\nmode: execute\nscope:\n  write: [\"{}/repo/**\"]\n", d.display()),
        )
        .map_err(|e| e.to_string())?;
        let ran = under_daemon(&sock, &ok)
            .args(["/bin/sh", "-c", &format!("echo x > {}/repo/x.txt", d.display())])
            .output()
            .map_err(|e| e.to_string())?;
        ensure(ran.status.success(), || {
            format!("a task while a lookup is held: {}", String::from_utf8_lossy(&ran.stderr))
        })?;
        ensure(fz.holding(), || "the held lookup ended before the checks".into())?;

        // An events file on the FUSE mount: refused, named. (The server answers one
        // request at a time: the held lookup is let go first.)
        std::fs::write(&fz.go, b"").map_err(|e| e.to_string())?;
        let logged = d.join("logged.yaml");
        std::fs::write(
            &logged,
            format!("id: logged\nmode: execute\nscope:\n  write: [\"{}/repo/**\"]\n", d.display()),
        )
        .map_err(|e| e.to_string())?;
        let out = Command::new(agentmon())
            .args(["exec", "--quiet", "--daemon"])
            .arg(&sock)
            .arg("--task")
            .arg(&logged)
            .arg("--events")
            .arg(fz.mnt.join("f"))
            .args(["--", "/bin/true"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure(!out.status.success(), || format!("a task with its events file on FUSE started: {err}"))?;
        ensure(err.contains("FUSE"), || format!("refused for another reason: {err}"))?;
        Ok(())
    })();
    drop(fz);
    stop(daemon)?;
    r?;
    let evs = events(&all)?;
    let stalled = tampers(&evs, "stalling agentmon");
    eq("tamper records of the held start", stalled.len(), 1)?;
    let why = stalled[0].reason.as_deref().unwrap_or_default();
    ensure(why.contains("stalled.yaml") && why.contains("scope.write"), || format!("the record: {why}"))?;
    ensure(evs.iter().any(|e| e.kind == Kind::TaskStart && e.task.as_deref() == Some("ok")), || {
        "no task_start of the task started while the lookup was held".into()
    })?;
    let x = d.join("repo/x.txt");
    ensure(evs.iter().any(|e| e.path.as_deref() == x.to_str() && e.task.as_deref() == Some("ok")), || {
        "no record of the file the task wrote".into()
    })?;
    Ok(())
}

/// An observed agent's failed call beneath such a mount (the kernel gives the name
/// as passed, so agentmon resolves its directory): its record carries the path
/// unresolved (`…`), judged as unknown, after a wait of at most 50 ms, and the
/// agent's next call is recorded. Before, the enricher's lookup held the loop.
pub fn an_agents_file_system_cannot_stop_the_enricher() -> R {
    let d = workdir("stall-enrich");
    std::fs::create_dir_all(d.join("repo")).map_err(|e| e.to_string())?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let task = d.join("task.yaml");
    std::fs::write(
        &task,
        format!(
            "id: stall-enrich\nmode: execute\nscope:\n  write: [\"{d}/repo/**\", \"{d}/mnt/**\"]\n  delete: \
             [\"{d}/mnt/**\"]\n  exec: [\"{}\"]\n",
            me.display(),
            d = d.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let fz = Stalling::mount(&d)?;
    let gone = fz.mnt.join("slow/x");
    let actions = [format!("delete={}", gone.display()), "write_in".into()];
    // agentmon's worker, held in the lookup, keeps its process from ending (a
    // thread in a FUSE request its server has read cannot be killed): the lookup
    // is let go once the agent is done and agentmon has had a second for its
    // events, and whether it was held then is what the test asks.
    let (results, asked, go) = (d.join("repo/results.txt"), d.join("asked"), fz.go.clone());
    let release = std::thread::spawn(move || {
        support::wait(Duration::from_secs(60) * support::slowdown(), || results.exists());
        std::thread::sleep(Duration::from_secs(1));
        let held = asked.exists();
        let _ = std::fs::write(&go, b"");
        held
    });
    let run = run_attempts(&d, &task, &actions);
    let _ = std::fs::write(&fz.go, b"");
    let held = release.join().unwrap_or(false);
    drop(fz);
    let (run, res) = run?;
    eq("unlink beneath a file (ENOTDIR)", res.get("delete").copied(), Some(libc::ENOTDIR))?;
    ensure(held, || "agentmon's lookup was not held (the test did not stall it)".into())?;
    let unlink = run
        .events
        .iter()
        .find(|e| e.syscall.as_deref().is_some_and(|s| s.starts_with("unlink")) && e.pid != 0)
        .ok_or_else(|| format!("no record of the unlink:\n{}", run.summary()))?;
    let want = format!("{}{}", agentmon::event::UNRESOLVED_PREFIX, gone.display());
    eq("its path, unresolved", unlink.path.as_deref(), Some(want.as_str()))?;
    ensure(unlink.verdict.as_deref() != Some("in_scope"), || {
        "an unresolved path was judged in scope".into()
    })?;
    run.find(Kind::FileCreate, &d.join("repo/ok.txt"))?;
    Ok(())
}

/// An exec held for approval on the BPF LSM tier whose program is on a file
/// system that does not answer an open: agentmon opens the program to learn its
/// identity as the hooks know it (and freeze it while held), in a worker waited
/// for 500 ms, then answers the exec ETIMEDOUT with a `stalling agentmon` record.
/// Before, it opened the program on its loop, which waited until the server
/// answered. Without the BPF LSM tier a task that gates exec is refused.
pub fn an_exec_held_on_a_stalling_file_system_cannot_stop_agentmon() -> R {
    let d = workdir("stall-exec");
    std::fs::create_dir_all(d.join("repo")).map_err(|e| e.to_string())?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let task = d.join("task.yaml");
    std::fs::write(
        &task,
        format!(
            "id: stall-exec\nmode: execute\nenforcement: enforce\nscope:\n  write: [\"{r}/**\"]\n  exec: \
             [\"{me}\", \"{m}/**\", \"/usr/bin/**\", \"/bin/**\"]\napproval_required: [exec]\n",
            r = d.join("repo").display(),
            m = d.join("mnt").display(),
            me = me.display(),
        ),
    )
    .map_err(|e| e.to_string())?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&task, &d)?);
    }
    if !support::bpf_lsm() {
        return Ok(crate::approval::exec_gating_refused(&task, &d)?);
    }
    let mnt = d.join("mnt");
    support::serve_fuse(&d, &mnt, Some("open-when"))?;
    let events = d.join("events.jsonl");
    let timeout = format!("{}s", 30 * support::slowdown());
    let results = || std::fs::read_to_string(d.join("repo/results.txt")).unwrap_or_default();
    let run = crate::approval::spawn_gated(&d, &task, &events, &timeout, &["exec=mnt/f"]).map(|agent| {
        let answered =
            support::wait(Duration::from_secs(20) * support::slowdown(), || results().contains("exec "));
        let held = d.join("asked").exists() && !d.join("go").exists();
        (agent, answered, held)
    });
    let _ = std::fs::write(d.join("go"), b"");
    let (agent, answered, held) = run?;
    let settled = crate::approval::settle(agent, Ok(()));
    support::unmount(&mnt);
    ensure(answered, || "the held exec was not answered while its program's open was held".into())?;
    ensure(held, || "agentmon's open was not held (the test did not stall it)".into())?;
    settled?;
    eq("the exec's result", results().trim().to_string(), format!("exec {}", 100 + libc::ETIMEDOUT))?;
    let evs = crate::daemon::events(&events)?;
    let stalled = tampers(&evs, "stalling agentmon");
    eq("tamper records of the held exec", stalled.len(), 1)?;
    ensure(stalled[0].syscall.as_deref().is_some_and(|s| s.starts_with("exec")), || {
        format!("the record's call: {:?}", stalled[0].syscall)
    })?;
    Ok(())
}

/// A kill the kernel cannot finish at once does not hold the daemon. A process
/// waiting in a file system's answer that its server has read cannot die until
/// the answer comes (SIGKILL waits for it), and the server may be anyone's: here
/// the test's, beside an agent whose child waits in its lookup. The daemon used to
/// sweep a killed task on its loop for up to 5 s, so each such kill (a rule's, an
/// operator's, an expiry's) stopped every task's events, approvals and operators
/// for that long. Now the kill goes on off the loop: its record, and the answer to
/// an operator who asked, come when the last process is gone (the lookup answered)
/// or, 5 s on, say which are not; the daemon answers its operators meanwhile.
pub fn a_kill_held_by_a_file_system_cannot_stop_the_daemon() -> R {
    // (name, killed by a rule (else an operator), the lookup answered (else never))
    for (name, by_rule, answered) in [("kill-held-rule", true, true), ("kill-held-op", false, false)] {
        // The operator's case: a rule that never fires.
        let marker = if by_rule { "FREEZE-ME" } else { "NEVER" };
        let (d, task, rules) = crate::contain::setup(name, marker, "kill")?;
        if !support::can_enforce() {
            return Ok(support::enforce_refused_here(&task, &d)?);
        }
        let (sock, all) = daemon_paths(&d);
        let mnt = d.join("mnt");
        support::serve_fuse(&d, &mnt, Some("when"))?;
        let daemon = start_daemon(&d, &format!("rules: {}\n", rules.display()));
        let r = daemon
            .as_ref()
            .map_err(|e| e.clone())
            .and_then(|_| held_kill(&d, &sock, &task, name, by_rule, answered));
        let _ = std::fs::write(d.join("go"), b"");
        let stopped = daemon.map(stop);
        support::unmount(&mnt);
        let (child, kill_at) = r?;
        let _ = stopped??;
        let evs = events(&all)?;
        let kills: Vec<&Event> =
            evs.iter().filter(|e| e.kind == Kind::Action && e.action.as_deref() == Some("kill")).collect();
        let said = |e: &Event| {
            (e.detail.get("by").and_then(|v| v.as_str()).unwrap_or_default().to_string(), e.detail.clone())
        };
        let asked = if by_rule { "policy" } else { "operator" };
        // One record at the kill, and one more if it was not over in 5 s.
        let want = if answered { vec![asked] } else { vec![asked, "kill_timeout"] };
        ensure(kills.iter().map(|e| said(e).0).collect::<Vec<_>>() == want, || {
            format!("{name}: kill records {:?}", kills.iter().map(|e| said(e)).collect::<Vec<_>>())
        })?;
        let k = kills[0];
        eq("recorded while processes were left", k.detail.get("settled"), Some(&serde_json::json!(false)))?;
        eq("the kill's error", k.detail.get("error"), None)?;
        let signalled = k.detail.get("processes").and_then(|v| v.as_array()).cloned().unwrap_or_default();
        ensure(signalled.iter().any(|p| p.as_u64() == Some(child.into())), || {
            format!("the waiting child {child} is not among the processes killed: {:?}", k.detail)
        })?;
        ensure(k.ts.0 <= kill_at, || format!("the record's time {} is after the kill ({kill_at})", k.ts.0))?;
        if let Some(late) = kills.get(1) {
            eq("the late record names the kill", late.detail.get("kill"), Some(&serde_json::json!(k.id)))?;
            eq("asked by", late.detail.get("asked_by").and_then(|v| v.as_str()), Some(asked))?;
            let error = late.detail.get("error").and_then(|v| v.as_str());
            ensure(
                error.is_some_and(|e| e.contains(&format!("{child} (")) && e.contains("state D")),
                || format!("the late kill does not name the process left: {:?}", late.detail),
            )?;
        }
        let end = evs.iter().position(|e| e.kind == Kind::TaskEnd && e.task.as_deref() == Some(name));
        let kill = evs.iter().position(|e| std::ptr::eq(e, k));
        ensure(end.is_some_and(|end| kill < Some(end)), || {
            format!("task_end {end:?} before the kill {kill:?}")
        })?;
    }
    Ok(())
}

/// Starts the agent under the daemon, has it killed while its child waits in the
/// lookup, and checks the daemon meanwhile: the waiting child's pid and the
/// kill's time (ns since the epoch, at the latest).
fn held_kill(
    d: &Path,
    sock: &Path,
    task: &Path,
    name: &str,
    by_rule: bool,
    answered: bool,
) -> Result<(u32, i128), String> {
    let mnt = d.join("mnt");
    let cmd = crate::contain::scenario_cmd(d, &[mnt.join("slow").to_str().unwrap()])?;
    let mut agent = under_daemon(sock, task)
        .args(&cmd)
        .env(support::SCENARIO_ENV, "slow_freeze")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let limit = Duration::from_secs(30) * support::slowdown();
    let r = (|| -> Result<(u32, i128), String> {
        ensure(support::wait(limit, || d.join("asked").exists()), || {
            "the child's lookup was not held".into()
        })?;
        let mut op = None;
        if !by_rule {
            // After the agent's marker (its heartbeat follows), as in the rule's case.
            ensure(support::wait(limit, || d.join("repo/heartbeat").exists()), || "no heartbeat".into())?;
            op = Some(
                Command::new(agentmon())
                    .args(["kill", name, "--socket"])
                    .arg(sock)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|e| e.to_string())?,
            );
        }
        // The root is killed first; its exec ends with it.
        ensure(support::exit_within(&mut agent, limit).is_some(), || "the agent was not killed".into())?;
        let kill_at = agentmon::event::Timestamp::now().0;
        // The daemon answers while the child cannot die.
        let began = Instant::now();
        let status = Command::new(agentmon())
            .args(["status", "--socket"])
            .arg(sock)
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| e.to_string())?;
        let took = began.elapsed();
        ensure(status.status.success(), || format!("status: {}", String::from_utf8_lossy(&status.stderr)))?;
        ensure(took < Duration::from_secs(2) * support::slowdown(), || {
            format!("status answered {took:?} into a kill that cannot finish")
        })?;
        let tasks: serde_json::Value = serde_json::from_slice(&status.stdout).map_err(|e| e.to_string())?;
        let t = tasks[0]["tasks"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["task"] == name))
            .ok_or_else(|| format!("status does not show the task: {tasks}"))?;
        eq(
            "killed, not yet over",
            (&t["killed"], &t["dying"]),
            (&serde_json::json!(true), &serde_json::json!(true)),
        )?;
        let procs = t["processes"].as_array().cloned().unwrap_or_default();
        let child = match procs.as_slice() {
            [p] => p.as_u64().ok_or("a pid")? as u32,
            _ => return Err(format!("the task's processes while it dies: {procs:?}")),
        };
        ensure(d.join("asked").exists() && !d.join("go").exists(), || "the lookup ended early".into())?;
        if let Some(op) = &mut op {
            ensure(op.try_wait().map_err(|e| e.to_string())?.is_none(), || {
                "the operator was answered before the kill was over".into()
            })?;
        }
        if answered {
            std::fs::write(d.join("go"), b"").map_err(|e| e.to_string())?;
        }
        if let Some(op) = op {
            let out = op.wait_with_output().map_err(|e| e.to_string())?;
            let (said, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            if answered {
                eq(
                    "the operator's answer",
                    (out.status.code(), said.trim()),
                    (Some(0), &*format!("task {name} killed")),
                )?;
            } else {
                ensure(out.status.code() == Some(1) && err.contains("processes still alive"), || {
                    format!("the operator's answer: {:?} {said} {err}", out.status.code())
                })?;
            }
        }
        // The task ends once its last process has.
        let _ = std::fs::write(d.join("go"), b"");
        ensure(support::wait(limit, || !ctl_shows(sock, name)), || "the task did not end".into())?;
        Ok((child, kill_at))
    })();
    if agent.try_wait().ok().flatten().is_none() {
        let _ = agent.kill();
        let _ = agent.wait();
    }
    r
}

/// Whether the daemon at `sock` still shows task `name`.
fn ctl_shows(sock: &Path, name: &str) -> bool {
    let Ok(out) = Command::new(agentmon()).args(["status", "--socket"]).arg(sock).output() else {
        return true;
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v[0]["tasks"].as_array().is_some_and(|ts| ts.iter().any(|t| t["task"] == name))
}
