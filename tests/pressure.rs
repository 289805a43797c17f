//! Backpressure on the real kernel path: a storm of file side effects from a task,
//! with a 2 MiB ring and a core kept busy by a process outside every task, is
//! recorded whole (the task is paused while agentmon catches up), and without
//! backpressure the same storm loses events (so the storm is one).

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use agentmon::{
    enforce::cgroup::TaskCgroup,
    event::{Event, Kind},
};

use crate::{
    R,
    daemon::{daemon_paths, events, start_daemon, stop, under_daemon},
    support::{self, SCENARIO_ENV, ensure, eq, wait, workdir},
};

const PROCS: u64 = 2;
const PAIRS: u64 = 60_000;

/// A thread of this (untracked) test process spinning until dropped.
struct Busy(Arc<AtomicBool>);

impl Busy {
    fn start() -> Busy {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        Busy(stop)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A create or delete of the storm's own files (d/repo/storm-N).
fn of_storm(e: &Event) -> bool {
    e.task.as_deref() == Some("storm") && e.path.as_deref().is_some_and(|p| p.contains("/repo/storm-"))
}

fn lost(evs: &[Event]) -> u64 {
    evs.iter().filter_map(|e| e.lost.as_ref()).flat_map(|l| l.values()).sum()
}

/// Task `storm` in `d` (writes and deletes under d/repo, runs this test binary):
/// the binary and the manifest.
fn storm_task(d: &Path) -> Result<(PathBuf, PathBuf), String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(d.join("repo")).map_err(|e| e.to_string())?;
    let manifest = d.join("task.yaml");
    std::fs::write(
        &manifest,
        format!(
            "id: storm\nmode: execute\nscope:\n  write: [\"{r}/**\"]\n  delete: [\"{r}/**\"]\n  exec: [\"{me}\"]\n",
            r = d.join("repo").display(),
            me = me.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok((me, manifest))
}

/// The storm as task `storm` in `d`; `midway` runs once its first events are in.
fn storm(
    d: &Path,
    backpressure: bool,
    until_stop: bool,
    midway: impl FnOnce() -> Result<(), String>,
) -> Result<support::Run, String> {
    let (me, manifest) = storm_task(d)?;
    let mut flags = vec!["--ringbuf-mb", "2", "--task", manifest.to_str().unwrap()];
    if !backpressure {
        flags.push("--no-backpressure");
    }
    let mut cmd =
        vec![me.display().to_string(), d.display().to_string(), PROCS.to_string(), PAIRS.to_string()];
    if until_stop {
        cmd.push("stop".into());
    }
    let _busy = Busy::start();
    let events = d.join("events.jsonl");
    let mut child = support::exec_command(&events, &flags, &cmd, &[(SCENARIO_ENV, "storm")], d)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let started = support::wait(std::time::Duration::from_secs(30) * support::slowdown(), || {
        std::fs::read_to_string(&events).is_ok_and(|t| t.contains("\"kind\":\"file_create\""))
    });
    let mid = if started { midway() } else { Err("the storm made no event in 30 s".into()) };
    if mid.is_err() {
        // Not left frozen by a freeze whose thaw failed.
        let _ = std::process::Command::new(support::agentmon()).args(["thaw", "storm"]).output();
    }
    // A storm without a count runs until told to stop.
    std::fs::write(d.join("stop"), b"").map_err(|e| e.to_string())?;
    let limit = std::time::Duration::from_secs(120) * support::slowdown();
    let code = support::exit_within(&mut child, limit);
    if code.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    mid?;
    eq("exit", code, Some(Some(0)))?;
    let text = std::fs::read_to_string(&events).map_err(|e| e.to_string())?;
    let (events, alerts) = support::parse_stream(&text)?;
    Ok(support::Run { events, alerts, code: 0, stderr: String::from_utf8_lossy(&out.stderr).into() })
}

/// `agentmon ARGS` answered within 10 s (the agentmon serving the storm is reached
/// over its control socket): its exit code.
fn answered(args: &[&str]) -> Result<(), String> {
    let t = std::time::Instant::now();
    let out =
        std::process::Command::new(support::agentmon()).args(args).output().map_err(|e| e.to_string())?;
    let took = t.elapsed();
    ensure(out.status.success(), || format!("agentmon {args:?}: {}", String::from_utf8_lossy(&out.stderr)))?;
    ensure(took < std::time::Duration::from_secs(10), || format!("agentmon {args:?} took {took:?}"))?;
    Ok(())
}

pub fn a_storm_pauses_the_task_instead_of_losing_events() -> R {
    let want = PROCS * PAIRS;
    let run = storm(&workdir("storm-paused"), true, false, || Ok(()))?;
    let count = |k: Kind| run.events.iter().filter(|e| e.kind == k && of_storm(e)).count();
    let losses: Vec<_> = run.events.iter().filter_map(|e| e.lost.as_ref()).collect();
    eq("lost", (lost(&run.events), losses), (0, vec![]))?;
    eq(
        "(creates, deletes) recorded",
        (count(Kind::FileCreate), count(Kind::FileDelete)),
        (want as usize, want as usize),
    )?;
    let pauses: Vec<&Event> = run
        .events
        .iter()
        .filter(|e| e.kind == Kind::Action && e.action.as_deref() == Some("pause"))
        .collect();
    ensure(!pauses.is_empty(), || {
        "no pause record: the ring never filled, or nothing paused the task".into()
    })?;
    for p in &pauses {
        eq("paused task", p.task.as_deref(), Some("storm"))?;
        eq("by", p.detail.get("by").and_then(|v| v.as_str()), Some("backpressure"))?;
        ensure(p.detail.get("times").and_then(|v| v.as_u64()).is_some_and(|n| n >= 1), || {
            format!("a pause record without times: {:?}", p.detail)
        })?;
    }
    // Without it, the same storm overflows the ring: counted, as ever.
    // Mid-storm, the loop still answers an operator (each drain takes only what
    // was in the ring when it began): the freeze stops live processes.
    // It runs until the operator's freeze and thaw are done (PAIRS at least).
    let d = workdir("storm-lossy");
    let run = storm(&d, false, true, || {
        answered(&["freeze", "storm"])?;
        answered(&["thaw", "storm"])
    })?;
    let mut made = 0;
    for i in 0..PROCS {
        let n = std::fs::read_to_string(d.join(format!("made-{i}"))).map_err(|e| e.to_string())?;
        made += n.trim().parse::<u64>().map_err(|e| e.to_string())?;
    }
    let froze = run.events.iter().find(|e| e.kind == Kind::Action && e.action.as_deref() == Some("freeze"));
    let procs =
        froze.and_then(|f| f.detail.get("processes")).and_then(|p| p.as_array()).map_or(0, |p| p.len());
    ensure(procs > 0, || format!("the freeze found no process of the storm: {froze:?}"))?;
    ensure(lost(&run.events) > 0, || {
        "without backpressure nothing was lost: the storm is too weak to test it".into()
    })?;
    // The creates and deletes lost (an exit or a fork may be lost too).
    let files: u64 = run
        .events
        .iter()
        .filter_map(|e| e.lost.as_ref())
        .flat_map(|l| ["open", "file_delete"].map(|k| l.get(k).copied().unwrap_or(0)))
        .sum();
    let seen = run
        .events
        .iter()
        .filter(|e| matches!(e.kind, Kind::FileCreate | Kind::FileDelete) && of_storm(e))
        .count() as u64;
    // Lost records of the count files (d/made-N) are among the lost too.
    let total = seen + files;
    ensure((2 * made..=2 * made + PROCS).contains(&total), || {
        format!("recorded + lost creates and deletes: {total}, for {made} pairs made")
    })?;
    ensure(!run.events.iter().any(|e| e.action.as_deref() == Some("pause")), || {
        "paused with --no-backpressure".into()
    })?;
    Ok(())
}

/// A pause is agentmon's own, to undo once it has caught up. A daemon killed during
/// one (SIGKILL: nothing of it runs after) left the task frozen for good: the next
/// daemon resumed it and could not tell that freeze from a rule's or an operator's.
/// The pause is now marked on the task's cgroup, where only root can mark, and the
/// next daemon thaws what is marked (at its first tick: after the ring's waiting
/// events and the expiries, which may claim it) and says so; an operator's freeze
/// has no mark and stays. The daemon is killed while the storm's cgroup is frozen
/// (again, with its successor, when the pause ended first).
pub fn a_pause_left_by_a_killed_daemon_is_undone() -> R {
    let d = workdir("pause-left");
    let (sock, all) = daemon_paths(&d);
    let (me, manifest) = storm_task(&d)?;
    let _busy = Busy::start();
    let mut daemon: Child = start_daemon(&d, "ringbuf_mb: 1\n")?;
    let child = under_daemon(&sock, &manifest)
        .arg(&me)
        .arg(&d)
        .args([PROCS.to_string(), PAIRS.to_string(), "stop".into()])
        .env(SCENARIO_ENV, "storm")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(err) => {
            let _ = stop(daemon);
            return Err(err.to_string().into());
        }
    };
    let limit = Duration::from_secs(60) * support::slowdown();
    let record = d.join("state/storm.json");
    let mut cg = None;
    wait(limit, || {
        cg = std::fs::read(&record)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["cgroup"].as_str().map(PathBuf::from));
        cg.is_some()
    });
    let mut left = None;
    let mut tries = 0;
    let result = (|| -> Result<(), String> {
        let cg = cg.clone().ok_or("the task's record names no cgroup")?;
        // Read as the daemon reads it: its mark and its cgroup.freeze.
        let cg = TaskCgroup::adopt(cg).map_err(|e| e.to_string())?;
        let (marked, freeze_asked) = (|| cg.marked_paused(), || cg.freeze_requested());
        while tries < 8 && left.is_none() {
            tries += 1;
            if !wait(limit, freeze_asked) {
                break;
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
            if freeze_asked() {
                left = Some(marked());
            } else {
                daemon = start_daemon(&d, "")?;
            }
        }
        let was_marked =
            left.ok_or_else(|| format!("never killed the daemon during a pause ({tries} tries)"))?;
        ensure(was_marked, || "the pause left no mark on the task's cgroup".into())?;
        // Nothing else thaws it.
        std::thread::sleep(Duration::from_millis(500));
        ensure(freeze_asked(), || "the task was thawed with no daemon".into())?;
        daemon = start_daemon(&d, "")?;
        // (It may pause the storm again at once, mark and all: the record says
        // which thaw was of the pause left behind.)
        ensure(wait(limit, || !freeze_asked()), || "the next daemon left the task frozen".into())?;
        // An operator's freeze, of a task paused or not, is the operator's: no
        // mark, and a daemon killed after it leaves it frozen past the next one's
        // first ticks.
        let sock = sock.to_str().ok_or("the socket's path is not UTF-8")?;
        let ctl = |op: &str| answered(&[op, "storm", "--socket", sock]);
        ctl("freeze")?;
        ensure(!marked(), || "an operator's freeze is marked as a pause".into())?;
        let _ = daemon.kill();
        let _ = daemon.wait();
        daemon = start_daemon(&d, "")?;
        std::thread::sleep(Duration::from_millis(1500) * support::slowdown());
        ensure(freeze_asked(), || "the next daemon thawed an operator's freeze".into())?;
        ctl("thaw")
    })();
    std::fs::write(d.join("stop"), b"").map_err(|e| e.to_string())?;
    if result.is_err()
        && let Some(cg) = &cg
    {
        // The storm must end, with or without a daemon to thaw it.
        let _ = std::fs::write(cg.join("cgroup.freeze"), "0");
    }
    let code = support::exit_within(&mut child, Duration::from_secs(120) * support::slowdown());
    if code.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let said = stop(daemon).unwrap_or_else(|e| e);
    result.map_err(|e| format!("{e}; the daemon said: {said}"))?;
    eq("the storm's exit", code, Some(Some(0)))?;
    let evs = events(&all)?;
    let thaws: Vec<&Event> = evs
        .iter()
        .filter(|e| {
            e.kind == Kind::Action
                && e.action.as_deref() == Some("thaw")
                && e.task.as_deref() == Some("storm")
        })
        .collect();
    let by = |e: &&Event| e.detail.get("by").and_then(|v| v.as_str()).map(String::from);
    eq(
        "thaws by",
        thaws.iter().map(by).collect::<Vec<_>>(),
        vec![Some("restart".into()), Some("operator".into())],
    )?;
    let t = thaws[0];
    eq("error", t.error.as_deref(), None)?;
    ensure(t.detail.get("processes").and_then(|p| p.as_array()).is_some_and(|p| !p.is_empty()), || {
        format!("the thaw names no process: {:?} ({})", t.detail, String::from_utf8_lossy(&out.stderr))
    })?;
    Ok(())
}
