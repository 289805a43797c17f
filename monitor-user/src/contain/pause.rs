//! Backpressure's pauses: a task whose events come faster than agentmon records
//! them is frozen for a moment (`runner::pressure` decides when), and thawed when
//! agentmon has caught up, unless a rule, an operator or an expiry made the freeze
//! its own meanwhile. A pause is marked on the task's cgroup, so that one a killed
//! daemon leaves is told from theirs by the next ([`TaskCgroup::mark_paused`]).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use serde_json::json;

use super::{Act, By, Containment, action_event};
use crate::{
    enforce::cgroup::TaskCgroup,
    event::{Event, Timestamp},
};

impl Containment {
    /// The top-level tasks whose records were at least a tenth of the `sampled`
    /// (`samples`: per task, sub-tasks counted with their top-level task: a storm
    /// split over sub-tasks is one), or with fewer than 16 sampled every one that
    /// was sampled; not those of `held` (calls held for approval).
    pub fn makers(&self, samples: &HashMap<Arc<str>, u32>, sampled: u32, held: &[Arc<str>]) -> Vec<Arc<str>> {
        let held: HashSet<&str> = held.iter().filter_map(|t| self.top(t)).collect();
        let mut per_top: HashMap<&str, u32> = HashMap::new();
        for (t, n) in samples {
            if let Some(top) = self.top(t).filter(|top| !held.contains(top)) {
                *per_top.entry(top).or_default() += n;
            }
        }
        per_top
            .into_iter()
            .filter(|&(_, n)| sampled < 16 || n.saturating_mul(10) >= sampled)
            .filter_map(|(t, _)| self.tasks.get_key_value(t).map(|(k, _)| k.clone()))
            .collect()
    }

    /// Freezes the top-level tasks `ids` that are neither frozen nor killed, without
    /// waiting for the freezer (the processes stop at their next return to user
    /// space). Returns the tasks paused.
    pub fn pause(&mut self, ids: &[Arc<str>]) -> Vec<Arc<str>> {
        let mut now = Vec::new();
        for id in ids {
            let Some(e) = self.tasks.get(id) else { continue };
            let Some(cg) = e.cgroup.as_ref().filter(|_| !e.killed && !self.paused.contains(id)) else {
                continue;
            };
            // Frozen already (by a rule, an operator, an expiry), or unknown: not
            // agentmon's to pause, nor so to thaw.
            if cg.freeze_asked().unwrap_or(true) {
                continue;
            }
            // Marked first: a daemon killed between the two leaves a mark on a
            // cgroup not frozen, which its successor only clears.
            if self.unmarkable.is_none()
                && let Err(err) = cg.mark_paused(true)
            {
                tracing::warn!(
                    "pauses are not marked on their cgroups ({err}): a daemon killed during one leaves its task frozen"
                );
                self.unmarkable = Some(err.to_string());
            }
            match cg.request_freeze(true) {
                Ok(()) => now.push(id.clone()),
                Err(err) => {
                    unmark(id, cg);
                    tracing::warn!("task {id}: pausing it: {err}")
                }
            }
        }
        self.paused.extend(now.iter().cloned());
        now
    }

    /// Thaws the tasks [`Self::pause`] froze (a task frozen meanwhile by a rule, an
    /// operator or its expiry is no longer among them).
    /// Returns the tasks thawed.
    pub fn resume(&mut self) -> Vec<Arc<str>> {
        let mut thawed = Vec::new();
        // Those a previous agentmon left wait for the first tick.
        let (left, mine): (HashSet<_>, HashSet<_>) =
            std::mem::take(&mut self.paused).into_iter().partition(|id| self.left.contains(id));
        self.paused = left;
        for id in mine {
            let Some(cg) = self.tasks.get(&id).and_then(|e| e.cgroup.as_ref()) else { continue };
            match cg.request_freeze(false) {
                Ok(()) => {
                    unmark(&id, cg);
                    thawed.push(id)
                }
                Err(err) => tracing::error!("task {id}: thawing it after a pause: {err}"),
            }
        }
        thawed
    }

    /// Takes up resumed task `id`'s pause if the agentmon before this one paused
    /// it and stopped during the pause ([`TaskCgroup::mark_paused`]): a pause still,
    /// thawed at the first tick unless a rule, an operator or an expiry claims it
    /// first. A freeze of one of those has no mark and stays.
    pub fn adopt_left_pause(&mut self, id: &str) {
        let Some((key, e)) = self.tasks.get_key_value(id) else { return };
        let Some(cg) = e.cgroup.as_ref().filter(|cg| cg.marked_paused()) else { return };
        if cg.freeze_asked().unwrap_or(false) {
            self.paused.insert(key.clone());
            self.left.insert(key.clone());
        } else {
            // Killed between marking and freezing, or between thawing and unmarking.
            unmark(id, cg);
        }
    }

    /// Thaws the pauses [`Self::adopt_left_pause`] took up and nothing claimed
    /// since; their records.
    pub fn thaw_left_pauses(&mut self, host: Arc<str>, now: Timestamp) -> Vec<Event> {
        let mut out = Vec::new();
        for id in std::mem::take(&mut self.left) {
            if !self.paused.remove(&id) {
                continue;
            }
            let Some(cg) = self.tasks.get(&id).and_then(|e| e.cgroup.as_ref()) else { continue };
            let mut detail = BTreeMap::new();
            detail.insert("cgroup".into(), json!(cg.path.display().to_string()));
            detail.insert("processes".into(), json!(cg.pids()));
            let mut ev = action_event(&id, Act::Thaw, &By::LeftPause, detail, host.clone(), now);
            match cg.request_freeze(false) {
                Ok(()) => unmark(&id, cg),
                // Left marked: the next agentmon tries again, and a claim unmarks it.
                Err(err) => ev.error = Some(format!("{}: cgroup.freeze: {err}", cg.path.display()).into()),
            }
            tracing::warn!("task {id}: {}", ev.reason.as_deref().unwrap_or("thawed"));
            out.push(ev);
        }
        out
    }

    /// Whether task `id` is paused by [`Self::pause`] now (not claimed since).
    pub fn is_paused(&self, id: &str) -> bool {
        self.paused.contains(id)
    }

    /// Takes task `id` out of the paused (whether it was): it is being frozen,
    /// thawed or killed for good, and is no longer agentmon's to thaw when it has
    /// caught up.
    pub(super) fn claim(&mut self, id: &str) -> bool {
        let was = self.paused.remove(id);
        self.left.remove(id);
        // Whatever `paused` says: a mark a thaw failed to take off must not make
        // this freeze a pause for the next agentmon.
        if let Some(cg) = self.tasks.get(id).and_then(|e| e.cgroup.as_ref())
            && ((was && self.unmarkable.is_none()) || cg.marked_paused())
        {
            unmark(id, cg);
        }
        was
    }

    /// The record of a task's pauses since the previous one.
    pub fn paused_event(id: &str, times: u32, ms: u64, host: Arc<str>, now: Timestamp) -> Event {
        action_event(id, Act::Pause, &By::Backpressure { times, ms }, BTreeMap::new(), host, now)
    }
}

/// Takes the pause mark off task `id`'s cgroup: its freeze, if any, is no longer a
/// pause (thawed, or claimed by a rule, an operator or an expiry).
pub(super) fn unmark(id: &str, cg: &TaskCgroup) {
    // EPERM, EOPNOTSUPP: marks do not work here (the first pause said so once).
    if let Err(err) = cg.mark_paused(false)
        && !matches!(err.raw_os_error(), Some(libc::EPERM | libc::EOPNOTSUPP))
    {
        tracing::warn!("task {id}: unmarking its pause (the next agentmon would thaw it): {err}");
    }
}
