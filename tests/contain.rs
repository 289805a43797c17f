//! Containment on the real kernel: a rule's `kill` ends a whole tree (grandchild
//! that escaped by setsid and spins without syscalls included); a rule's `freeze`
//! stops it until an operator thaws it; operator freeze, kill and refusals.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use agentmon::event::{Event, Kind};

use crate::{
    R,
    support::{self, SCENARIO_ENV, agentmon, ensure, eq, run_agentmon_with, wait, workdir},
};

/// A work dir with an enforced task and a rules dir whose one rule reacts to the
/// creation of `repo/<marker>` with `action`.
pub(crate) fn setup(name: &str, marker: &str, action: &str) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    let d = workdir(name);
    let repo = d.join("repo");
    let rules = d.join("rules");
    for dir in [&repo.join("pids"), &rules] {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let task = d.join("task.yaml");
    std::fs::write(
        &task,
        format!(
            "id: {name}\nmode: execute\nenforcement: enforce\nscope:\n  write: [\"{r}/**\"]\n  \
             exec: [\"{me}\"]\n",
            r = repo.display(),
            me = me.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(
        rules.join("contain.yaml"),
        format!(
            "rules:\n  - id: test.{action}\n    description: the agent made the {marker} marker\n    severity: critical\n    \
             match:\n      kinds: [file_create]\n      paths: [\"**/{marker}\"]\n    action: {action}\n    examples:\n      \
             match:\n        - {{kind: file_create, path: /x/{marker}}}\n      no_match:\n        - {{kind: file_create, path: /x/other}}\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok((d, task, rules))
}

pub(crate) fn scenario_cmd(d: &Path, args: &[&str]) -> Result<Vec<String>, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    Ok([me.display().to_string(), d.display().to_string()]
        .into_iter()
        .chain(args.iter().map(|s| s.to_string()))
        .collect())
}

fn pids(d: &Path) -> Result<Vec<(String, u32)>, String> {
    ["root", "child", "grandchild"]
        .iter()
        .map(|w| {
            let t = std::fs::read_to_string(d.join("repo/pids").join(w))
                .map_err(|e| format!("no {w} pid: {e}"))?;
            Ok((w.to_string(), t.trim().parse().map_err(|e| format!("{w} pid {t:?}: {e}"))?))
        })
        .collect()
}

/// Waits until `cond` holds, up to `limit`; a synchronisation point, not a timing check.
fn all_gone(pids: &[(String, u32)]) -> Result<(), String> {
    let alive = || {
        pids.iter().filter(|(_, p)| Path::new(&format!("/proc/{p}")).exists()).cloned().collect::<Vec<_>>()
    };
    ensure(wait(Duration::from_secs(5), || alive().is_empty()), || format!("still alive: {:?}", alive()))
}

fn by(ev: &Event) -> Option<&str> {
    ev.detail.get("by").and_then(|v| v.as_str())
}

/// A rule with `action: kill` ends the whole tree at once: the root, a sleeping
/// child, and a grandchild that left by double fork + setsid and runs no syscall.
pub fn rule_kill_ends_the_tree() -> R {
    let (d, task, rules) = setup("contain-kill", "KILL-ME", "kill")?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&task, &d)?);
    }
    let cmd = scenario_cmd(&d, &["KILL-ME", "spin"])?;
    let flags = ["--task", task.to_str().unwrap(), "--rules", rules.to_str().unwrap()];
    let run = run_agentmon_with(&flags, &cmd, &[(SCENARIO_ENV, "contain")], &d)?;
    eq("exit code (SIGKILL)", run.code, 128 + 9)?;
    let pids = pids(&d)?;
    all_gone(&pids)?;
    let trigger = run.find(Kind::FileCreate, &d.join("repo/KILL-ME"))?;
    eq(
        "trigger rule",
        (trigger.rule.as_deref(), trigger.action.as_deref()),
        (Some("test.kill"), Some("kill")),
    )?;
    let actions = run.of(Kind::Action);
    let [a] = actions.as_slice() else {
        return Err(format!("want one action event, got {actions:?}").into());
    };
    eq(
        "action",
        (a.action.as_deref(), a.rule.as_deref(), by(a)),
        (Some("kill"), Some("test.kill"), Some("policy")),
    )?;
    eq("action task", a.task.as_deref(), Some("contain-kill"))?;
    eq("action pid (the offender)", a.pid, trigger.pid)?;
    eq(
        "trigger id",
        a.detail.get("trigger").and_then(|v| v.as_str()),
        Some(trigger.id.to_string().as_str()),
    )?;
    ensure(
        a.detail.get("cgroup").is_some_and(|c| c.as_str().is_some_and(|c| c.contains("agentmon"))),
        || format!("no cgroup in {:?}", a.detail),
    )?;
    ensure(!a.detail.contains_key("error"), || format!("the kill reported an error: {:?}", a.detail))?;
    // Every process of the tree exits by SIGKILL, and says so in its exit event.
    for (who, pid) in &pids {
        let exit = run
            .of(Kind::Exit)
            .into_iter()
            .find(|e| e.pid == *pid)
            .ok_or_else(|| format!("no exit event for the {who} (pid {pid}):\n{}", run.summary()))?;
        eq(&format!("{who} exit signal"), exit.signal.as_deref(), Some("SIGKILL"))?;
    }
    // Nothing the tree did after the trigger's own write survived: the heartbeat
    // loop did not run its full minute (the scenario errs out if it does).
    ensure(!run.stderr.contains("neither killed nor frozen"), || run.stderr.clone())?;
    Ok(())
}

/// A kill that comes while processes of the task are born and exit by the
/// thousand leaves no process tracked: marking the task's processes for the kill
/// must never write back the entry of one that exited meanwhile (a stale entry
/// would bind, and kill, whatever process reuses its pid).
pub fn kill_amid_churn_leaves_nothing_tracked() -> R {
    let (d, task, rules) = setup("contain-churn", "KILL-ME", "kill")?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&task, &d)?);
    }
    let cmd = scenario_cmd(&d, &["KILL-ME", "churn"])?;
    let flags = ["--task", task.to_str().unwrap(), "--rules", rules.to_str().unwrap()];
    let run = run_agentmon_with(&flags, &cmd, &[(SCENARIO_ENV, "contain")], &d)?;
    eq("exit code (SIGKILL)", run.code, 128 + 9)?;
    all_gone(&pids(&d)?)?;
    let actions = run.of(Kind::Action);
    let [a] = actions.as_slice() else {
        return Err(format!("want one action event, got {actions:?}").into());
    };
    eq("action", a.action.as_deref(), Some("kill"))?;
    ensure(!a.detail.contains_key("error"), || format!("the kill reported an error: {:?}", a.detail))?;
    ensure(!run.stderr.contains("descendants still run"), || run.stderr.clone())?;
    Ok(())
}

fn ctl(args: &[&str]) -> Result<(i32, String, String), String> {
    let out = Command::new(agentmon()).args(args).output().map_err(|e| e.to_string())?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn cgroup_of(pid: u32) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|e| e.to_string())?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::")).ok_or("no cgroup v2 line")?;
    let root = agentmon::enforce::cgroup::v2_root().ok_or("no cgroup v2")?;
    Ok(root.join(rel.trim_start_matches('/')))
}

fn frozen(cg: &Path) -> bool {
    std::fs::read_to_string(cg.join("cgroup.events")).is_ok_and(|t| t.lines().any(|l| l == "frozen 1"))
}

fn heartbeat(d: &Path) -> String {
    std::fs::read_to_string(d.join("repo/heartbeat")).unwrap_or_default()
}

/// A rule with `action: freeze` stops the tree; an operator thaws it, freezes it
/// again (twice: the second is a no-op) and kills it. A process inside a task and
/// an unknown task id are refused.
pub fn freeze_thaw_kill_by_operator() -> R {
    let name = "contain-freeze";
    let (d, task, rules) = setup(name, "FREEZE-ME", "freeze")?;
    let events = d.join("events.jsonl");
    let mut child = Command::new(agentmon())
        .args(["exec", "--quiet", "--events"])
        .arg(&events)
        .args(["--task", task.to_str().unwrap(), "--rules", rules.to_str().unwrap(), "--"])
        .args(scenario_cmd(&d, &["FREEZE-ME"])?)
        .env(SCENARIO_ENV, "contain")
        .current_dir(&d)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let result = (|| -> Result<(), String> {
        ensure(wait(Duration::from_secs(20), || d.join("repo/ready").exists()), || {
            "the agent never got ready".into()
        })?;
        let pids = pids(&d)?;
        let cg = cgroup_of(pids[0].1)?;
        ensure(cg.to_string_lossy().contains("agentmon"), || format!("root is in {}", cg.display()))?;
        ensure(wait(Duration::from_secs(10), || frozen(&cg)), || {
            "the freeze rule did not freeze the task".into()
        })?;
        let before = heartbeat(&d);
        std::thread::sleep(Duration::from_millis(300));
        eq("heartbeat while frozen", heartbeat(&d), before.clone())?;

        let (code, out, _) = ctl(&["freeze", name])?;
        eq("second freeze", (code, out.trim()), (0, format!("task {name} was already frozen").as_str()))?;
        let (code, _, err) = ctl(&["kill", "no-such-task"])?;
        ensure(code == 1 && err.contains("no-such-task"), || format!("unknown task: exit {code}: {err}"))?;

        let (code, _, err) = ctl(&["thaw", name])?;
        eq("thaw exit", (code, err), (0, String::new()))?;
        // The reply may come before the kernel reports every process thawed.
        ensure(wait(Duration::from_secs(10), || !frozen(&cg)), || "still frozen after thaw".into())?;
        ensure(wait(Duration::from_secs(10), || heartbeat(&d) != before), || {
            "no heartbeat after thaw".into()
        })?;

        let (code, _, err) = ctl(&["freeze", name])?;
        eq("operator freeze exit", (code, err), (0, String::new()))?;
        ensure(wait(Duration::from_secs(10), || frozen(&cg)), || {
            "not frozen after the operator's freeze".into()
        })?;
        let (code, _, err) = ctl(&["kill", name])?;
        eq("kill exit", (code, err), (0, String::new()))?;
        all_gone(&pids)
    })();
    if result.is_err() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    result?;
    eq("agentmon exit code (SIGKILL)", out.status.code(), Some(128 + 9))?;
    let text = std::fs::read_to_string(&events).map_err(|e| e.to_string())?;
    let (evs, _) = support::parse_stream(&text)?;
    let acts: Vec<(Option<&str>, Option<&str>)> =
        evs.iter().filter(|e| e.kind == Kind::Action).map(|e| (e.action.as_deref(), by(e))).collect();
    eq(
        "action events",
        acts,
        vec![
            (Some("freeze"), Some("policy")),
            (Some("thaw"), Some("operator")),
            (Some("freeze"), Some("operator")),
            (Some("kill"), Some("operator")),
        ],
    )?;
    let op = evs.iter().find(|e| e.kind == Kind::Action && by(e) == Some("operator")).unwrap();
    eq(
        "operator uid",
        op.detail.get("operator").and_then(|o| o.get("uid")).and_then(|u| u.as_u64()),
        Some(0),
    )?;
    Ok(())
}

/// A task's impact threshold (`limits:`): the delete past it is a violation with the
/// task's `on_exceed` (kill here), and the enforced tree ends before the next one.
pub fn a_task_past_its_limit_is_stopped() -> R {
    let d = support::workdir("limits");
    let out = d.join("out");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    for i in 1..=4 {
        std::fs::write(out.join(format!("f{i}")), "x").map_err(|e| e.to_string())?;
    }
    let task = d.join("task.yaml");
    std::fs::write(
        &task,
        format!(
            "id: budget\nmode: execute\nenforcement: enforce\nscope:\n  write: [\"{o}/**\"]\n  delete: [\"{o}/**\"]\n  exec: [\"/usr/bin/**\"]\n\
             limits:\n  deletes: 2\n  on_exceed: kill\n",
            o = out.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    // Observed, an action is recorded, not carried out: enforced, it is.
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&task, &d)?);
    }
    let o = out.display();
    let script = format!("rm {o}/f1; rm {o}/f2; rm {o}/f3; sleep 10; rm {o}/f4; touch {o}/after");
    let cmd = ["/usr/bin/sh".to_string(), "-c".into(), script];
    let run = run_agentmon_with(&["--task", task.to_str().unwrap()], &cmd, &[], &d)?;
    eq("exit code (SIGKILL)", run.code, 128 + 9)?;
    let third = run.find(Kind::FileDelete, &out.join("f3"))?;
    eq(
        "the third delete (verdict, action, reason)",
        (third.verdict.as_deref(), third.action.as_deref(), third.reason.as_deref()),
        (Some("violation"), Some("kill"), Some("limits: past the task's limit of 2 deletes (3)")),
    )?;
    for f in ["f1", "f2"] {
        let e = run.find(Kind::FileDelete, &out.join(f))?;
        eq(&format!("{f}: verdict"), e.verdict.as_deref(), Some("in_scope"))?;
    }
    ensure(out.join("f4").exists() && !out.join("after").exists(), || {
        "the tree went on past its limit".to_string()
    })?;
    let actions: Vec<_> =
        run.of(Kind::Action).into_iter().map(|a| a.action.as_deref().map(String::from)).collect();
    eq("one kill", actions, vec![Some("kill".to_string())])?;
    Ok(())
}

/// A freeze the kernel is slow to report done is a freeze, not a failure: every
/// process stops in user space at once, and one waiting in a system call (here a
/// lookup on a file system that answers only when the test says) stops when the
/// call returns. Before, agentmon waited a second on its loop and then said the
/// freeze failed. One not stopped 10 s after the freeze is made a kill (a tree
/// that cannot be frozen must not run on), and the record says where it waits.
pub fn a_slow_freeze_is_waited_for_then_made_a_kill() -> R {
    for (name, stuck) in [("freeze-slow", false), ("freeze-stuck", true)] {
        let (d, task, rules) = setup(name, "FREEZE-ME", "freeze")?;
        if !support::can_enforce() {
            return Ok(support::enforce_refused_here(&task, &d)?);
        }
        let mnt = d.join("mnt");
        support::serve_fuse(&d, &mnt, Some("when"))?;
        let events = d.join("events.jsonl");
        let flags = ["--task", task.to_str().unwrap(), "--rules", rules.to_str().unwrap()];
        let cmd = scenario_cmd(&d, &[mnt.join("slow").to_str().unwrap()])?;
        let mut c = support::exec_command(&events, &flags, &cmd, &[(SCENARIO_ENV, "slow_freeze")], &d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let r = watch_slow_freeze(&mut c, &d, name, &events, stuck);
        // Whatever happened: the lookup is answered (the agent can go), agentmon
        // ends, and the server goes with its mount.
        let _ = std::fs::write(d.join("go"), b"");
        let ended = support::exit_within(&mut c, Duration::from_secs(60));
        if ended.is_none() {
            let _ = c.kill();
            let _ = c.wait();
        }
        support::unmount(&mnt);
        r?;
        eq("agentmon's exit", ended, Some(Some(128 + 9)))?;
    }
    Ok(())
}

fn watch_slow_freeze(c: &mut std::process::Child, d: &Path, name: &str, log: &Path, stuck: bool) -> R {
    let actions = || -> Vec<Event> {
        let evs = crate::daemon::events(log).unwrap_or_default();
        // (Not agentmon's pauses while it catches up with a busy machine's events.)
        evs.into_iter().filter(|e| e.kind == Kind::Action && e.action.as_deref() != Some("pause")).collect()
    };
    let said = |acts: &[Event]| -> Vec<(Option<String>, Option<String>)> {
        acts.iter().map(|e| (e.action.as_deref().map(String::from), by(e).map(String::from))).collect()
    };
    let limit = Duration::from_secs(60) * support::slowdown();
    ensure(wait(limit, || !actions().is_empty()), || "the freeze rule did not fire".into())?;
    let freeze = actions().remove(0);
    eq(
        "first action",
        said(std::slice::from_ref(&freeze)),
        vec![(Some("freeze".into()), Some("policy".into()))],
    )?;
    ensure(!freeze.detail.contains_key("error"), || format!("the freeze failed: {:?}", freeze.detail))?;
    eq(
        "settled (reported done within 200 ms)",
        freeze.detail.get("settled"),
        Some(&serde_json::json!(false)),
    )?;
    let cg =
        PathBuf::from(freeze.detail.get("cgroup").and_then(|v| v.as_str()).ok_or("no cgroup in the freeze")?);
    if stuck {
        // Never answered: made a kill 10 s after the freeze, saying what waits.
        ensure(wait(limit, || actions().len() > 1), || {
            "a freeze that never completed was not given up".into()
        })?;
        let acts = actions();
        eq(
            "actions",
            said(&acts),
            vec![
                (Some("freeze".into()), Some("policy".into())),
                (Some("kill".into()), Some("freeze_timeout".into())),
            ],
        )?;
        let after = acts[1].ts.0.saturating_sub(freeze.ts.0);
        ensure(after >= 10_000_000_000, || format!("given up {after} ns after the freeze, before its 10 s"))?;
        eq("asked by", acts[1].detail.get("asked_by").and_then(|v| v.as_str()), Some("policy"))?;
        eq("its rule", acts[1].rule.as_deref(), Some("test.freeze"))?;
        // The child waiting in the lookup, not the parent the freezer stopped.
        let waits = acts[1].detail.get("stuck").and_then(|v| v.as_array()).cloned().unwrap_or_default();
        // (The freeze is the parent's: it made the marker.)
        let parent = format!("{} (", acts[0].pid);
        ensure(
            waits.len() == 1
                && waits[0].as_str().is_some_and(|s| s.contains("state D") && !s.starts_with(&parent)),
            || format!("the kill does not say what did not stop: {:?}", acts[1].detail),
        )?;
        return Ok(());
    }
    // Past the second agentmon used to wait: not killed, not reported frozen, and
    // stopped in user space all the same (the parent's heartbeat stands still).
    let beat = heartbeat(d);
    std::thread::sleep(Duration::from_millis(1500));
    ensure(matches!(c.try_wait(), Ok(None)), || format!("agentmon ended before the kill: {:?}", actions()))?;
    ensure(!frozen(&cg), || "reported frozen while a process waits in the kernel".into())?;
    eq("heartbeat while frozen", heartbeat(d), beat)?;
    // The lookup answered, the child stops too: the freeze is done.
    std::fs::write(d.join("go"), b"").map_err(|e| e.to_string())?;
    ensure(wait(Duration::from_secs(10), || frozen(&cg)), || {
        "not reported frozen once the lookup returned".into()
    })?;
    let (code, _, err) = ctl(&["kill", name])?;
    eq("kill exit", (code, err), (0, String::new()))?;
    eq(
        "actions",
        said(&actions()),
        vec![(Some("freeze".into()), Some("policy".into())), (Some("kill".into()), Some("operator".into()))],
    )?;
    Ok(())
}

/// Killing a sub-task ends what it delegated in turn: a sub-task shares its top
/// task's cgroup (no cgroup.kill for it alone), and its own sub-tasks' processes
/// are under cookies of their own. Before, those were neither marked nor swept:
/// an agent that delegated once more before it was killed kept a process running.
pub fn killing_a_sub_task_ends_what_it_delegated() -> R {
    let d = workdir("kill-nested");
    let repo = d.join("repo");
    std::fs::create_dir_all(repo.join("sub")).map_err(|e| e.to_string())?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let am = agentmon();
    let manifest = |name: &str, id: &str, write: &str, exec: &str| -> Result<PathBuf, String> {
        let p = d.join(name);
        std::fs::write(
            &p,
            format!("id: {id}\nmode: execute\nscope:\n  write: [\"{write}\"]\n  exec: [{exec}]\n"),
        )
        .map_err(|e| e.to_string())?;
        Ok(p)
    };
    let both = format!("\"{}\", \"{am}\"", me.display());
    let parent = manifest("parent.yaml", "kn-parent", &format!("{}/**", repo.display()), &both)?;
    let child = manifest("child.yaml", "kn-child", &format!("{}/sub/**", repo.display()), &both)?;
    manifest(
        "grand.yaml",
        "kn-grand",
        &format!("{}/sub/**", repo.display()),
        &format!("\"{}\"", me.display()),
    )?;
    let events = d.join("events.jsonl");
    let cmd = scenario_cmd(&d, &[am, child.to_str().unwrap(), "nested_hold"])?;
    let mut c = support::exec_command(
        &events,
        &["--task", parent.to_str().unwrap()],
        &cmd,
        &[(SCENARIO_ENV, "delegate_one")],
        &d,
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .map_err(|e| e.to_string())?;
    let held = repo.join("sub/held.pid");
    let r = (|| -> Result<u32, String> {
        // (Its pid is written after the file is made.)
        let pid = || std::fs::read_to_string(&held).ok().and_then(|t| t.trim().parse::<u32>().ok());
        ensure(wait(Duration::from_secs(60) * support::slowdown(), || pid().is_some()), || {
            "the sub-task's own sub-task never ran".into()
        })?;
        let pid = pid().ok_or("its pid")?;
        let sock = format!("/run/agentmon/exec-{}.sock", c.id());
        let (code, _, err) = ctl(&["kill", "kn-child", "--socket", &sock])?;
        eq("kill exit", (code, err), (0, String::new()))?;
        let gone =
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "));
        ensure(wait(Duration::from_secs(10) * support::slowdown(), gone), || {
            format!("the killed sub-task's own sub-task (pid {pid}) runs on")
        })?;
        Ok(pid)
    })();
    let ended = support::exit_within(&mut c, Duration::from_secs(60) * support::slowdown());
    if ended.is_none() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let pid = r?;
    eq("agentmon's exit", ended, Some(Some(0)))?;
    let evs = crate::daemon::events(&events)?;
    let kill = evs
        .iter()
        .find(|e| e.kind == Kind::Action && e.action.as_deref() == Some("kill"))
        .ok_or("no kill record")?;
    eq("the kill's task", kill.task.as_deref(), Some("kn-child"))?;
    ensure(evs.iter().any(|e| e.kind == Kind::TaskStart && e.task.as_deref() == Some("kn-grand")), || {
        "the sub-task's own sub-task was not delegated (no task_start)".into()
    })?;
    let signalled = kill.detail.get("processes").and_then(|v| v.as_array()).cloned().unwrap_or_default();
    ensure(signalled.iter().any(|p| p.as_u64() == Some(pid.into())), || {
        format!("the sub-task's own sub-task's process {pid} is not among those killed: {:?}", kill.detail)
    })?;
    Ok(())
}
