//! What a restarted daemon opens and grants again for a task, while the agent may
//! have changed the file system meanwhile.
//! - A task's own events file (`agentmon exec --daemon … --events FILE`) is opened
//!   by the root daemon at a path the operator chose, and again by every restarted
//!   daemon: swapped for a symlink, the daemon would append to (and cut the torn
//!   tail of) whatever it points at; swapped for a directory, the task's resume
//!   failed and its processes were let go, unobserved.
//! - A task's scope: its manifest parsed again resolves a directory swapped for a
//!   symlink to wherever it points, which moved the scope (the judge's and the BPF
//!   LSM grants) there.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use agentmon::event::{Event, Kind};

use crate::{
    R,
    daemon::{daemon_paths, events, start_daemon, stop},
    support::{self, SCENARIO_ENV, agentmon, ensure, eq, wait, workdir},
};

/// Whether the daemon in `d` has taken task `id`'s approval gate from its exec (its
/// record names the kept copy).
pub(crate) fn gate_taken(d: &Path, id: &str) -> bool {
    std::fs::read(d.join(format!("state/{id}.json")))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| !v["keeper"]["gate"].is_null())
}

/// Task `id` in `d`: writes under `d/<id>/**` (`enforce`: held to it), runs this
/// test binary.
fn task(d: &Path, id: &str, enforce: bool) -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(d.join(id).join("repo")).map_err(|e| e.to_string())?;
    let t = d.join(format!("{id}.yaml"));
    let mode = if enforce { "enforcement: enforce\n" } else { "" };
    std::fs::write(
        &t,
        format!(
            "id: {id}\nmode: execute\n{mode}scope:\n  write: [\"{}/**\"]\n  exec: [\"{}\"]\n",
            d.join(id).display(),
            me.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok(t)
}

/// `agentmon exec` registering task `t` with the daemon at `sock`, its own events in
/// `log`; the command waits for `d/go`, then writes inside its scope.
fn exec(sock: &Path, t: &Path, log: &Path, d: &Path, id: &str) -> Result<Command, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut c = Command::new(agentmon());
    c.args(["exec", "--quiet", "--daemon"]).arg(sock).arg("--events").arg(log).arg("--task").arg(t).arg("--");
    c.arg(me).arg(d.join(id)).arg(format!("wait={}", d.join("go").display())).arg("write_in");
    c.env(SCENARIO_ENV, "attempts").stdin(Stdio::null()).stderr(Stdio::piped());
    Ok(c)
}

pub fn task_events_files_are_kept_from_agents() -> R {
    let d = workdir("task-log");
    let (sock, all) = daemon_paths(&d);
    let logs = d.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
    // What a planted symlink would point the daemon at: its unterminated last line
    // is what a torn-tail cut would move away.
    let victim = d.join("victim.conf");
    let precious = b"keep = this\nunterminated";
    std::fs::write(&victim, precious).map_err(|e| e.to_string())?;

    // An enforced task whose scope reaches its own events file could rewrite its
    // record: refused, naming the file.
    let t = task(&d, "inside", true)?;
    let first = start_daemon(&d, "")?;
    let result = (|| -> Result<(), String> {
        let inside = d.join("inside/repo/inside.jsonl");
        let out = exec(&sock, &t, &inside, &d, "inside")?.output().map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure(out.status.code() != Some(0), || {
            format!("a task whose scope covers its events file ran: {err}")
        })?;
        if support::can_enforce() {
            ensure(err.contains("inside.jsonl") && err.contains("scope.write"), || {
                format!("the refusal does not name the events file and the clause: {err}")
            })?;
        }
        ensure(!d.join("inside/repo/results.txt").exists(), || "the refused task's command ran".into())?;
        Ok(())
    })();
    let running: Vec<Result<Child, String>> = ["linked", "dir"]
        .iter()
        .map(|id| {
            let t = task(&d, id, false)?;
            exec(&sock, &t, &logs.join(format!("{id}.jsonl")), &d, id)?.spawn().map_err(|e| e.to_string())
        })
        .collect();
    let started = |evs: &[Event], id: &str| {
        evs.iter().filter(|e| e.kind == Kind::TaskStart && e.task.as_deref() == Some(id)).count()
    };
    let limit = Duration::from_secs(30) * support::slowdown();
    let bound = wait(limit, || {
        events(&all).is_ok_and(|evs| started(&evs, "linked") == 1 && started(&evs, "dir") == 1)
            && gate_taken(&d, "linked")
            && gate_taken(&d, "dir")
    });
    let said1 = stop(first);
    // While no daemon runs, the agent swaps its events files.
    let swap = (|| -> std::io::Result<()> {
        std::fs::remove_file(logs.join("linked.jsonl"))?;
        std::os::unix::fs::symlink(&victim, logs.join("linked.jsonl"))?;
        std::fs::remove_file(logs.join("dir.jsonl"))?;
        std::fs::create_dir(logs.join("dir.jsonl"))
    })();
    let second = start_daemon(&d, "");
    if second.is_ok() {
        crate::daemon::taken_up(&sock);
    }
    std::fs::write(d.join("go"), b"").map_err(|e| e.to_string())?;
    let mut codes = Vec::new();
    for c in running {
        let out = c?.wait_with_output().map_err(|e| e.to_string())?;
        codes.push((out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    std::thread::sleep(Duration::from_millis(1200));
    let said2 = stop(second?)?;
    let said1 = said1?;
    result?;
    swap.map_err(|e| format!("swapping the events files: {e}"))?;
    ensure(bound, || format!("the tasks were never bound: {said1}"))?;
    for (code, err) in &codes {
        eq(&format!("exec exit ({err})"), *code, Some(0))?;
    }
    let now = std::fs::read(&victim).map_err(|e| e.to_string())?;
    ensure(now == precious, || {
        format!(
            "the restarted daemon wrote through the planted symlink: the file it points at is now {:?}",
            String::from_utf8_lossy(&now)
        )
    })?;
    let evs = events(&all)?;
    for id in ["linked", "dir"] {
        eq(&format!("task_start records of {id} (resumed)"), started(&evs, id), 2)?;
        // Still its own: bound again, its write attributed.
        let wrote = format!("{}/{id}/repo/ok.txt", d.display());
        let w = evs
            .iter()
            .find(|e| e.kind == Kind::FileCreate && e.path.as_deref() == Some(wrote.as_str()))
            .ok_or_else(|| format!("no file_create of {wrote}: {said2}"))?;
        eq(&format!("task of {id}'s write"), w.task.as_deref(), Some(id))?;
        // The swap is said, for that task.
        let log = format!("{}/{id}.jsonl", logs.display());
        let t = evs
            .iter()
            .find(|e| {
                e.kind == Kind::Tamper
                    && e.task.as_deref() == Some(id)
                    && e.reason.as_deref().is_some_and(|r| r.contains(&log))
            })
            .ok_or_else(|| format!("no tamper record of {id}'s swapped events file {log}: {said2}"))?;
        eq(
            &format!("{id}'s tamper attempt"),
            t.detail.get("attempt").and_then(|v| v.as_str()),
            Some("events file"),
        )?;
    }
    ensure(
        logs.join("dir.jsonl").is_dir()
            && std::fs::read_dir(logs.join("dir.jsonl")).is_ok_and(|mut r| r.next().is_none()),
        || "the daemon wrote into the directory planted at dir's events file".into(),
    )?;
    Ok(())
}

/// A directory the scope names (`delete: d/repo/sub/**`) is swapped for a symlink
/// to another while no daemon runs (the agent may: it is inside its write scope).
/// The restarted daemon holds the task to the paths it started with: a delete
/// through the link is out of scope (refused, enforced), and the swap is said.
pub fn restart_keeps_a_tasks_paths() -> R {
    let d = workdir("task-paths");
    let (sock, all) = daemon_paths(&d);
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let (repo, outside) = (d.join("repo"), d.join("outside"));
    std::fs::create_dir_all(repo.join("sub")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&outside).map_err(|e| e.to_string())?;
    std::fs::write(outside.join("victim"), b"keep").map_err(|e| e.to_string())?;
    // A delete scope narrower than the write scope is enforced on the BPF LSM tier
    // only (Landlock refuses it): elsewhere the task is observed, and judged.
    let enforce = support::bpf_lsm();
    // A program that is a symlink by nature (to dash here): its grant is not one the
    // task could have planted, and stays.
    let sh = "/usr/bin/sh";
    let t = d.join("paths.yaml");
    std::fs::write(
        &t,
        format!(
            "id: paths\nmode: execute\nenforcement: {}\nscope:\n  write: [\"{r}/**\"]\n  delete: [\"{r}/sub/**\"]\n  \
             exec: [\"{me}\", \"{sh}\"]\n",
            if enforce { "enforce" } else { "observe" },
            r = repo.display(),
            me = me.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let first = start_daemon(&d, "")?;
    let mut c = Command::new(agentmon());
    c.args(["exec", "--quiet", "--daemon"]).arg(&sock).arg("--task").arg(&t).arg("--");
    c.arg(&me).arg(&d).arg(format!("wait={}", d.join("go").display()));
    c.arg(format!("delete={}", repo.join("sub/victim").display())).arg(format!("run={sh}"));
    let exec = c.env(SCENARIO_ENV, "attempts").stdin(Stdio::null()).stderr(Stdio::piped()).spawn();
    let limit = Duration::from_secs(30) * support::slowdown();
    let running =
        |evs: &[Event]| evs.iter().any(|e| e.kind == Kind::Exec && e.task.as_deref() == Some("paths"));
    // Its gate (an observed task's i386/x32 report; an enforced task's refused
    // requests) is handed over after it runs: the restart comes once the daemon has
    // it, as the restart this test is about is one of a running task.
    let bound = wait(limit, || events(&all).is_ok_and(|evs| running(&evs)) && gate_taken(&d, "paths"));
    let said1 = stop(first);
    let swap = std::fs::remove_dir(repo.join("sub"))
        .and_then(|()| std::os::unix::fs::symlink(&outside, repo.join("sub")));
    let second = start_daemon(&d, "");
    if second.is_ok() {
        crate::daemon::taken_up(&sock);
    }
    std::fs::write(d.join("go"), b"").map_err(|e| e.to_string())?;
    let out = exec.map_err(|e| e.to_string())?.wait_with_output().map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(1200));
    let said2 = stop(second?)?;
    let said1 = said1?;
    swap.map_err(|e| format!("swapping the directory: {e}"))?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure(bound, || format!("the task never ran: {err}; the daemon said: {said1}"))?;
    eq(&format!("exec exit ({err})"), out.status.code(), Some(0))?;
    let evs = events(&all)?;
    // The kernel reports the path it resolved: the file the link leads to.
    let victim = outside.join("victim");
    let del = evs
        .iter()
        .find(|e| e.kind == Kind::FileDelete && e.path.as_deref() == victim.to_str())
        .ok_or_else(|| format!("no file_delete of {}: {said2}", victim.display()))?;
    let want = if enforce { "denied" } else { "out_of_scope" };
    eq(
        "the delete through the link: (task, verdict)",
        (del.task.as_deref(), del.verdict.as_deref()),
        (Some("paths"), Some(want)),
    )?;
    ensure(!enforce || victim.exists(), || {
        "the enforced task deleted a file outside its scope through the link".into()
    })?;
    let said: Vec<&str> = evs
        .iter()
        .filter(|e| {
            e.kind == Kind::Tamper
                && e.task.as_deref() == Some("paths")
                && e.detail.get("attempt").and_then(|v| v.as_str()) == Some("scope paths")
        })
        .filter_map(|e| e.reason.as_deref())
        .collect();
    let sub = format!("{}/sub/**", repo.display());
    ensure(said.iter().any(|r| r.contains(&sub) && r.contains("now resolves to")), || {
        format!("no tamper record says which path moved: {said:?}; {said2}")
    })?;
    // On the BPF LSM tier, the grant is not given again either.
    ensure(!enforce || said.iter().any(|r| r.contains("not granted")), || {
        format!("no tamper record of the grant not given again: {said:?}")
    })?;
    ensure(!said.iter().any(|r| r.contains(sh)), || format!("{sh}'s grant was called moved: {said:?}"))?;
    let results = std::fs::read_to_string(repo.join("results.txt")).map_err(|e| e.to_string())?;
    ensure(results.lines().any(|l| l == "run 0"), || {
        format!("{sh} did not run after the restart: {results}")
    })?;
    Ok(())
}

/// The BPF LSM tier protects an enforced task's events file by its inode while the
/// task lives. Once it has ended the file is an ordinary file again: left protected
/// (as it was), it — or another file given its inode — was refused to every
/// enforced task. Here a later task whose scope holds the file writes to it.
pub fn an_ended_tasks_events_file_is_let_go() -> R {
    let d = workdir("task-log-gone");
    let (sock, all) = daemon_paths(&d);
    let first = task(&d, "first", true)?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&first, &d)?);
    }
    let second = task(&d, "second", true)?;
    let log = d.join("second/repo/first.jsonl");
    std::fs::create_dir_all(d.join("logs")).map_err(|e| e.to_string())?;
    std::fs::write(d.join("go"), b"").map_err(|e| e.to_string())?;
    let daemon = start_daemon(&d, "")?;
    let result = (|| -> Result<(), String> {
        let out = exec(&sock, &first, &log, &d, "first")?.output().map_err(|e| e.to_string())?;
        eq(&format!("first exit ({})", String::from_utf8_lossy(&out.stderr)), out.status.code(), Some(0))?;
        // What the first task's end frees is swept every 10 s.
        std::thread::sleep(Duration::from_secs(12));
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        let out = Command::new(agentmon())
            .args(["exec", "--quiet", "--daemon"])
            .arg(&sock)
            .arg("--events")
            .arg(d.join("logs/second.jsonl"))
            .arg("--task")
            .arg(&second)
            .arg("--")
            .arg(me)
            .arg(d.join("second"))
            .arg(format!("write_file={}", log.display()))
            .env(SCENARIO_ENV, "attempts")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        eq(&format!("second exit ({})", String::from_utf8_lossy(&out.stderr)), out.status.code(), Some(0))?;
        Ok(())
    })();
    std::thread::sleep(Duration::from_millis(700));
    let said = stop(daemon)?;
    result.map_err(|e| format!("{e}\n{said}"))?;
    let results = std::fs::read_to_string(d.join("second/repo/results.txt")).map_err(|e| e.to_string())?;
    eq("the second task's write to the first's events file", results.as_str(), "write_file 0\n")?;
    let evs = events(&all)?;
    let ended = evs.iter().any(|e| e.kind == Kind::TaskEnd && e.task.as_deref() == Some("first"));
    ensure(ended, || format!("no task_end of the first task: {said}"))?;
    Ok(())
}

/// An enforced task's scope never holds another running task's events file (on the
/// Landlock tier nothing else keeps that file from the agent): a task whose events
/// file would lie in a running enforced task's scope is refused, and so is an
/// enforced task whose scope would hold a running task's events file.
pub fn no_task_holds_anothers_events_file() -> R {
    let d = workdir("task-log-apart");
    let (sock, _) = daemon_paths(&d);
    let holder = task(&d, "holder", true)?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&holder, &d)?);
    }
    let plain = task(&d, "plain", false)?;
    // Its scope is d/logs/**, where the holder's events file is.
    let reacher = task(&d, "logs", true)?;
    // It proposes into d/logs: written to as a write scope is.
    let proposer = d.join("proposer.yaml");
    std::fs::create_dir_all(d.join("proposer/repo")).map_err(|e| e.to_string())?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    std::fs::write(
        &proposer,
        format!(
            "id: proposer\nmode: propose\nenforcement: enforce\nscope:\n  propose_dir: \"{}\"\n  exec: [\"{}\"]\n",
            d.join("logs").display(),
            me.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let daemon = start_daemon(&d, "")?;
    let result = (|| -> Result<(), String> {
        let mut h = exec(&sock, &holder, &d.join("logs/holder.jsonl"), &d, "holder")?
            .spawn()
            .map_err(|e| e.to_string())?;
        let up = wait(Duration::from_secs(30) * support::slowdown(), || d.join("state/holder.json").exists());
        let refused = |t: &Path, log: &Path, id: &str, names: &str| -> Result<(), String> {
            let out = exec(&sock, t, log, &d, id)?.output().map_err(|e| e.to_string())?;
            let err = String::from_utf8_lossy(&out.stderr);
            ensure(out.status.code() != Some(0) && err.contains(names), || {
                format!("task {id} (events {}): exit {:?}: {err}", log.display(), out.status.code())
            })?;
            ensure(!d.join(id).join("repo/results.txt").exists(), || format!("the refused task {id} ran"))
        };
        let r = up
            .then_some(())
            .ok_or_else(|| "the holder never started".to_string())
            .and_then(|()| {
                refused(&plain, &d.join("holder/plain.jsonl"), "plain", "running enforced task holder")
            })
            .and_then(|()| refused(&reacher, &d.join("reacher.jsonl"), "logs", "holder.jsonl"))
            .and_then(|()| refused(&proposer, &d.join("proposer.jsonl"), "proposer", "holder.jsonl"));
        std::fs::write(d.join("go"), b"").map_err(|e| e.to_string())?;
        let code = support::exit_within(&mut h, Duration::from_secs(30) * support::slowdown());
        r?;
        eq("the holder's exit", code, Some(Some(0)))
    })();
    std::thread::sleep(Duration::from_millis(700));
    let said = stop(daemon)?;
    Ok(result.map_err(|e| format!("{e}\n{said}"))?)
}
