//! A task's root is made in its cgroup (clone3 with CLONE_INTO_CGROUP, into a cgroup
//! prepared before the fork: runner/prepared.rs), not moved there as the task
//! starts: a move takes the kernel's cgroup lock for writing, which waits for an RCU
//! grace period, most of a task's start. Through a daemon and by `agentmon exec`
//! alone, observed and enforced; the command runs in its task's cgroup either way.

use std::path::{Path, PathBuf};

use agentmon::event::{Event, Kind};

use crate::{
    R,
    daemon::{daemon_paths, events, start_daemon, stop, under_daemon},
    support::{self, ensure, eq, workdir},
};

/// Task `id`, writing under `d/id` and running the system's programs.
fn task(d: &Path, id: &str, enforce: bool) -> Result<PathBuf, String> {
    let dir = d.join(id);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let t = d.join(format!("{id}.yaml"));
    let mode = if enforce { "enforce" } else { "observe" };
    std::fs::write(
        &t,
        format!(
            "id: {id}\nmode: execute\nenforcement: {mode}\nscope:\n  write: [\"{}/**\"]\n  exec: \
             [\"/usr/bin/**\", \"/bin/**\"]\n",
            dir.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok(t)
}

/// The command: writes the cgroup it runs in to `d/id/cg`.
fn command(d: &Path, id: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), format!("cat /proc/self/cgroup > {}/cg", d.join(id).display())]
}

/// The command of task `id` ran in a task's cgroup, and its `task_start` (among
/// `evs`) says its root was made there.
fn made_in(d: &Path, id: &str, evs: &[Event]) -> Result<(), String> {
    let cg = std::fs::read_to_string(d.join(id).join("cg")).map_err(|e| format!("{id}: {e}"))?;
    let at = cg.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or_default();
    ensure(agentmon::enforce::cgroup::is_task_path(at), || {
        format!("{id} ran in {at}, not its task's cgroup")
    })?;
    let start = evs
        .iter()
        .find(|e| e.kind == Kind::TaskStart && e.task.as_deref() == Some(id))
        .ok_or_else(|| format!("no task_start of {id}"))?;
    eq(
        &format!("{id}: task_start root_made_in_cgroup"),
        start.detail.get("root_made_in_cgroup"),
        Some(&serde_json::json!(true)),
    )
}

pub fn a_tasks_root_is_made_in_its_cgroup() -> R {
    let d = workdir("made-in");
    let enforce = support::can_enforce();
    let kinds: Vec<(&str, bool)> = [("made-observed", false), ("made-enforced", true)]
        .into_iter()
        .filter(|(_, e)| !e || enforce)
        .collect();
    let (sock, all) = daemon_paths(&d);
    let daemon = start_daemon(&d, "")?;
    let ran = (|| -> Result<(), String> {
        for &(id, enforce) in &kinds {
            let out = under_daemon(&sock, &task(&d, id, enforce)?)
                .args(command(&d, id))
                .output()
                .map_err(|e| e.to_string())?;
            ensure(out.status.success(), || format!("{id}: {}", String::from_utf8_lossy(&out.stderr)))?;
        }
        Ok(())
    })();
    // A process inside a task may not have a cgroup prepared (an operator's request):
    // refused, and said as an attempt.
    let asked = (|| -> Result<(), String> {
        let id = "made-asker";
        let script = format!(
            "import socket; s = socket.socket(socket.AF_UNIX); s.connect({sock:?}); \
             s.sendall(b'{{\"op\":\"prepare\"}}\\n'); open({out:?}, 'wb').write(s.makefile('rb').readline())",
            sock = sock.display().to_string(),
            out = d.join(id).join("reply").display().to_string(),
        );
        let out = under_daemon(&sock, &task(&d, id, false)?)
            .args(["/usr/bin/python3", "-c", &script])
            .output()
            .map_err(|e| e.to_string())?;
        ensure(out.status.success(), || format!("{id}: {}", String::from_utf8_lossy(&out.stderr)))?;
        let reply = std::fs::read_to_string(d.join(id).join("reply")).map_err(|e| format!("{id}: {e}"))?;
        let reply: serde_json::Value = serde_json::from_str(&reply).map_err(|e| format!("{reply:?}: {e}"))?;
        ensure(reply["ok"] == false && reply["prepared"].is_null(), || format!("a task's prepare: {reply}"))
    })();
    let said = stop(daemon)?;
    ran.and(asked).map_err(|e| format!("{e}; the daemon said: {said}"))?;
    let evs = events(&all)?;
    for &(id, _) in &kinds {
        made_in(&d, id, &evs)?;
    }
    let attempt = support::tamper_of(&evs, "control request prepare");
    eq("tamper records of the task's prepare", attempt.len(), 1)?;
    eq("the attempt's task", attempt[0].task.as_deref(), Some("made-asker"))?;
    // agentmon exec alone prepares its task's cgroup itself.
    for (id, enforce) in kinds.iter().map(|(id, e)| (format!("{id}-alone"), *e)) {
        let t = task(&d, &id, enforce)?;
        let run = support::run_agentmon_with(&["--task", t.to_str().unwrap()], &command(&d, &id), &[], &d)?;
        eq(&format!("{id}: exit ({})", run.stderr), run.code, 0)?;
        made_in(&d, &id, &run.events)?;
    }
    Ok(())
}
