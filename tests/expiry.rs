//! Expiry in a standalone `agentmon exec` (no daemon): the task's end is recorded
//! when its expiry passes, whatever the mode; an observed task's later side effects
//! are judged out of scope, an enforced task is frozen (its default `on_expiry`).

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use agentmon::event::{Event, Kind};

use crate::{
    R,
    support::{self, SCENARIO_ENV, agentmon, ensure, eq, wait, workdir},
};

fn task(d: &Path, id: &str, enforce: bool, extra: &str) -> Result<std::path::PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(d.join("out")).map_err(|e| e.to_string())?;
    let t = d.join(format!("{id}.yaml"));
    std::fs::write(
        &t,
        format!(
            "id: {id}\nmode: execute\nexpires_in: 2s\nenforcement: {}\nscope:\n  write: [\"{}/out/**\"]\n  exec: [\"{}\"]\n{extra}",
            if enforce { "enforce" } else { "observe" },
            d.display(),
            me.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok(t)
}

fn events(p: &Path) -> Result<Vec<Event>, String> {
    support::parse_stream(&std::fs::read_to_string(p).map_err(|e| e.to_string())?).map(|(e, _)| e)
}

pub fn exec_ends_expired_tasks() -> R {
    // Observed: the end is recorded at the expiry; the writes after it are out of scope.
    let d = workdir("expiry-observe");
    let t = task(&d, "short-observed", false, "")?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let cmd = [me.display().to_string(), d.display().to_string(), "80".into(), "50".into()];
    let run =
        support::run_agentmon_with(&["--task", t.to_str().unwrap()], &cmd, &[(SCENARIO_ENV, "stream")], &d)?;
    eq("exit", run.code, 0)?;
    let ends = run.of(Kind::TaskEnd);
    eq("task_end records", ends.len(), 1)?;
    eq("why", ends[0].reason.as_deref(), Some("the task expired"))?;
    let last = run.find(Kind::FileCreate, &d.join("out/f79"))?;
    ensure(last.ts > ends[0].ts, || "the last write came before the expiry: nothing to judge".into())?;
    ensure(last.verdict.as_deref() != Some("in_scope"), || "a write after the expiry was in scope".into())?;
    let alert =
        run.alerts.iter().find(|a| a.event.id == last.id).ok_or("no alert for a write after the expiry")?;
    ensure(alert.reasons.iter().any(|r| r.clause.as_deref() == Some("expires")), || {
        format!("{:?}", alert.reasons)
    })?;

    // Enforced: frozen at the expiry (kept for forensics), then killed by the operator.
    let d = workdir("expiry-enforce");
    let t = task(&d, "short-enforced", true, "")?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&t, &d)?);
    }
    let log = d.join("events.jsonl");
    let cmd = [me.display().to_string(), d.display().to_string(), "400".into(), "50".into()];
    let mut c =
        support::exec_command(&log, &["--task", t.to_str().unwrap()], &cmd, &[(SCENARIO_ENV, "stream")], &d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
    let frozen = wait(Duration::from_secs(60), || {
        events(&log).is_ok_and(|evs| {
            evs.iter().any(|e| {
                e.kind == Kind::Action
                    && e.action.as_deref() == Some("freeze")
                    && e.detail.get("by").and_then(|v| v.as_str()) == Some("expiry")
            })
        })
    });
    let progress = || std::fs::read_to_string(d.join("out/progress")).unwrap_or_default();
    let at_freeze = progress();
    std::thread::sleep(Duration::from_millis(500));
    let still = progress() == at_freeze;
    let sock = format!("/run/agentmon/exec-{}.sock", c.id());
    let killed = Command::new(agentmon()).args(["kill", "short-enforced", "--socket", &sock]).output();
    let said = killed.as_ref().map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).unwrap_or_default();
    // Never hang on a task left frozen: the test fails instead.
    if !wait(Duration::from_secs(60), || matches!(c.try_wait(), Ok(Some(_)))) {
        let _ = c.kill();
        let _ = c.wait();
        return Err(
            format!("agentmon did not end after the kill (frozen: {frozen}; kill said: {said})").into()
        );
    }
    let code = c.wait().map_err(|e| e.to_string())?.code();
    ensure(frozen, || "the enforced task was not frozen at its expiry".into())?;
    ensure(still, || format!("the frozen task went on writing ({at_freeze} then {})", progress()))?;
    ensure(killed.is_ok_and(|o| o.status.success()), || {
        // What the expiry's freeze said, for a kill that found the task gone.
        let freezes: Vec<String> = events(&log)
            .unwrap_or_default()
            .iter()
            .filter(|e| e.kind == Kind::Action)
            .map(|e| format!("{:?} {:?}", e.action, e.detail))
            .collect();
        format!("the operator could not kill the frozen task: {said}; actions: {freezes:?}")
    })?;
    eq("exit (killed)", code, Some(128 + 9))?;
    let ends: Vec<Event> = events(&log)?.into_iter().filter(|e| e.kind == Kind::TaskEnd).collect();
    ensure(ends.iter().any(|e| e.reason.as_deref() == Some("the task expired")), || format!("{ends:?}"))?;
    enforced_expiry_kills_or_refuses(&me)
}

/// An enforced task that says `on_expiry: kill` is killed at its expiry, with its
/// end and the action recorded; one that asks to run on (`continue`) is refused,
/// since nothing could hold it to its scope after the expiry.
fn enforced_expiry_kills_or_refuses(me: &Path) -> R {
    let d = workdir("expiry-kill");
    let t = task(&d, "short-killed", true, "on_expiry: kill\n")?;
    let cmd = [me.display().to_string(), d.display().to_string(), "400".into(), "50".into()];
    let run =
        support::run_agentmon_with(&["--task", t.to_str().unwrap()], &cmd, &[(SCENARIO_ENV, "stream")], &d)?;
    eq("exit (killed at the expiry)", run.code, 128 + 9)?;
    let ends = run.of(Kind::TaskEnd);
    ensure(ends.iter().any(|e| e.reason.as_deref() == Some("the task expired")), || format!("{ends:?}"))?;
    let kill = run
        .events
        .iter()
        .find(|e| e.kind == Kind::Action && e.action.as_deref() == Some("kill"))
        .ok_or("no kill action at the expiry")?;
    eq("kill by", kill.detail.get("by").and_then(|v| v.as_str()), Some("expiry"))?;
    ensure(!d.join("out/f399").exists(), || "the task ran to its end after it expired".into())?;

    let d = workdir("expiry-continue");
    let t = task(&d, "short-continued", true, "on_expiry: continue\n")?;
    let log = d.join("events.jsonl");
    let out =
        support::exec_command(&log, &["--task", t.to_str().unwrap()], &cmd, &[(SCENARIO_ENV, "stream")], &d)
            .output()
            .map_err(|e| e.to_string())?;
    let err = String::from_utf8_lossy(&out.stderr);
    eq("exit (refused)", out.status.code(), Some(125))?;
    ensure(
        err.contains("short-continued") && err.contains("on_expiry") && err.contains("freeze or kill"),
        || err.to_string(),
    )?;
    ensure(!d.join("out/f0").exists(), || "a refused task ran".into())?;
    Ok(())
}
