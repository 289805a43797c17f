//! Backpressure on the real kernel path: a storm of file side effects from a task,
//! with a 2 MiB ring and a core kept busy by a process outside every task, is
//! recorded whole (the task is paused while agentmon catches up), and without
//! backpressure the same storm loses events (so the storm is one).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use agentmon::event::{Event, Kind};

use crate::{
    R,
    support::{self, SCENARIO_ENV, ensure, eq, run_agentmon_with, workdir},
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

fn lost(evs: &[Event]) -> u64 {
    evs.iter().filter_map(|e| e.lost.as_ref()).flat_map(|l| l.values()).sum()
}

fn storm(d: &std::path::Path, backpressure: bool) -> Result<support::Run, String> {
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
    let mut flags = vec!["--ringbuf-mb", "2", "--task", manifest.to_str().unwrap()];
    if !backpressure {
        flags.push("--no-backpressure");
    }
    let cmd = [me.display().to_string(), d.display().to_string(), PROCS.to_string(), PAIRS.to_string()];
    let _busy = Busy::start();
    let run = run_agentmon_with(&flags, &cmd, &[(SCENARIO_ENV, "storm")], d)?;
    eq("exit", run.code, 0)?;
    Ok(run)
}

pub fn a_storm_pauses_the_task_instead_of_losing_events() -> R {
    let want = PROCS * PAIRS;
    let run = storm(&workdir("storm-paused"), true)?;
    let count =
        |k: Kind| run.events.iter().filter(|e| e.kind == k && e.task.as_deref() == Some("storm")).count();
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
    let run = storm(&workdir("storm-lossy"), false)?;
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
    let seen =
        run.events.iter().filter(|e| matches!(e.kind, Kind::FileCreate | Kind::FileDelete)).count() as u64;
    eq("recorded + lost creates and deletes", seen + files, 2 * want)?;
    ensure(!run.events.iter().any(|e| e.action.as_deref() == Some("pause")), || {
        "paused with --no-backpressure".into()
    })?;
    Ok(())
}
