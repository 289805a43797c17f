//! Letting go of ended tasks. A daemon runs for months: once a task has ended and
//! none of its processes is left, its per-task outputs are closed and what is kept of
//! it dropped; but not before the last of its events is recorded under it.
//!
//! The kernel takes an exiting process out of its tracked list a moment before it
//! writes that process's exit record. So a tick that finds no process of a task in
//! the list, and then drains the ring, may miss the last exit record (it is written
//! after the drain began). A task is let go only at a later tick that finds none of
//! its processes either, at least [`SETTLE`] after the first (ticks missed while the
//! loop was busy come back to back): that tick's drain has the record.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use super::engine::Engine;

/// How long an ended task stays without a tracked process before it is let go.
const SETTLE: Duration = Duration::from_millis(250);

/// Lets go of the ended tasks (each one's state record marked ended once, `marked`)
/// no process was tracked for at this tick nor at an earlier one at least [`SETTLE`]
/// before (`quiet`: the tasks found without one, each since when). `tracked`: the kernel's list of (pid,
/// cookie), taken before the ring was last drained (None: not taken this tick, as no
/// task had ended then).
pub fn forget_finished(
    e: &mut Engine,
    marked: &mut HashSet<Arc<str>>,
    quiet: &mut HashMap<Arc<str>, Instant>,
    tracked: Option<&[(u32, u32)]>,
) {
    let Some(tracked) = tracked else { return };
    if e.p.ended.is_empty() {
        return;
    }
    let Some(state) = &e.setup.state else { return };
    for id in &e.p.ended {
        if marked.insert(id.clone()) {
            state.mark_ended(id);
        }
    }
    // Its sub-tasks' processes keep it too (they share its cgroup and events file),
    // and so do forks that escaped tracking: its state record must outlive them, or
    // a restarted daemon would let their grants go.
    let contain = &e.p.contain;
    let ended: std::collections::BTreeSet<u32> =
        e.p.ended.iter().flat_map(|id| contain.cookies_under(id)).collect();
    let held = held_by_cgroups(&e.sensors, |c| ended.contains(&c));
    let busy = |id: &str| {
        contain.cookies_under(id).iter().any(|c| held.contains(c) || tracked.iter().any(|(_, t)| t == c))
    };
    for id in settled(&e.p.ended, busy, quiet, Instant::now()) {
        e.out.remove_keyed(&id);
        state.drop_saved(&id);
        e.p.forget(&id);
        e.p.ended.remove(&id);
        e.gated.retain(|(t, _)| *t != id);
        marked.remove(&id);
    }
}

/// The enforced tasks whose guarded cgroup (NET_TASK) has processes: a fork that
/// escaped tracking (TRACKED full) is in no TRACKED entry, and the BPF LSM hooks
/// hold it by that cgroup, so its task lives while the cgroup does not empty. Where
/// that cannot be told (no file handles on cgroupfs), every guarded task, said once.
/// Only tasks `of` selects are asked of.
pub(super) fn held_by_cgroups(
    sensors: &crate::kernel::loader::Sensors,
    of: impl Fn(u32) -> bool,
) -> std::collections::BTreeSet<u32> {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let guarded: Vec<(u64, u32)> = sensors.guarded().into_iter().filter(|(_, c)| of(*c)).collect();
    if guarded.is_empty() {
        return Default::default();
    }
    let held = crate::enforce::cgroup::populated(guarded.iter().map(|(cg, _)| *cg));
    if held.is_none() && !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            "whether enforced tasks' cgroups still have processes cannot be asked by id here: their tasks' \
             grants are kept while their cgroups exist"
        );
    }
    guarded
        .into_iter()
        .filter(|(cg, _)| held.as_ref().is_none_or(|h| h.contains(cg)))
        .map(|(_, c)| c)
        .collect()
}

/// Of the `ended` tasks, those without a process (`busy`: whether one has any) at
/// this tick and since at least [`SETTLE`] before `now`; `quiet` becomes those without
/// one at this tick still kept, each since when.
fn settled(
    ended: &HashSet<Arc<str>>,
    busy: impl Fn(&str) -> bool,
    quiet: &mut HashMap<Arc<str>, Instant>,
    now: Instant,
) -> Vec<Arc<str>> {
    let mut done = Vec::new();
    let mut still = HashMap::new();
    for id in ended {
        if busy(id) {
            continue;
        }
        match quiet.get(id) {
            Some(&since) if now.duration_since(since) >= SETTLE => done.push(id.clone()),
            Some(&since) => {
                still.insert(id.clone(), since);
            }
            None => {
                still.insert(id.clone(), now);
            }
        }
    }
    *quiet = still;
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_goes_a_tick_after_its_last_process() {
        let ended: HashSet<Arc<str>> = ["a".into(), "b".into()].into();
        let mut quiet = HashMap::new();
        let t0 = Instant::now();
        let tick = |n: u32| t0 + Duration::from_millis(500) * n;
        // "b" still has a process; "a" has none, for the first time: both kept (the
        // exit record of a's last process may be written after this tick's drain).
        assert!(settled(&ended, |id| id == "b", &mut quiet, tick(0)).is_empty());
        // A process of "a" seen again (a sub-task's): it starts over.
        assert!(settled(&ended, |_| true, &mut quiet, tick(1)).is_empty());
        assert!(settled(&ended, |id| id == "b", &mut quiet, tick(2)).is_empty());
        // A missed tick run at once after: too soon.
        assert!(settled(&ended, |id| id == "b", &mut quiet, tick(2) + Duration::from_millis(1)).is_empty());
        // The next tick without one: "a" goes, "b" stays.
        assert_eq!(settled(&ended, |id| id == "b", &mut quiet, tick(3)), vec![Arc::<str>::from("a")]);
        // "b" too, a tick after its last process.
        let ended: HashSet<Arc<str>> = ["b".into()].into();
        assert!(settled(&ended, |_| false, &mut quiet, tick(4)).is_empty());
        assert_eq!(settled(&ended, |_| false, &mut quiet, tick(5)), vec![Arc::<str>::from("b")]);
    }
}
