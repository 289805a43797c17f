//! Freezes the kernel has not yet reported done.
//!
//! Writing `cgroup.freeze` stops a task's processes in user space at once (each
//! traps at its next return there; interruptible sleeps are interrupted), but the
//! kernel reports the cgroup `frozen` only when every thread has got there. One in
//! a wait that only a fatal signal ends (a file system that answers late, a writer
//! throttled on dirty pages) or in a long copy inside the kernel gets there when
//! that call returns; io_uring's workers finish the work already queued. An action
//! waits [`FREEZE_WAIT`] for the report on the loop; past that the freeze is checked
//! every tick, for up to [`FREEZE_GRACE`] from when it was first asked. Then one
//! that contains a task (a rule's, an expiry's, a failing output's) becomes a kill:
//! a tree that cannot be frozen must not run on. An operator's is recorded as not
//! done (the freeze stays asked). Before, an action waited a second on the loop and
//! called a freeze not reported by then failed.
//!
//! What the grace gives an agent: work already inside the kernel runs on for up
//! to 10 s (a kill would cut a long copy or queued io_uring work sooner), and a
//! tree that keeps a thread in such a wait turns a forensic freeze into a kill.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::json;

use super::{Act, By, Containment, action_event, describe};
use crate::{
    event::{Event, Timestamp},
    kernel::loader::Sensors,
};

/// How long a freeze may take to be reported done before it is given up.
pub const FREEZE_GRACE: Duration = Duration::from_secs(10);

/// How long an action waits on the loop for a freeze (or thaw) to be reported.
pub(super) const FREEZE_WAIT: Duration = Duration::from_millis(200);

/// A freeze asked of the kernel and not yet reported done.
pub(super) struct Freezing {
    /// When it was first asked.
    pub(super) since: Instant,
    /// Who asked (`detail.by` of its record): the first who made it a containment.
    pub(super) by: &'static str,
    /// A rule's trigger event and rule, when a rule asked.
    trigger: Option<(uuid::Uuid, Option<String>)>,
    /// Whether it contains the task: made a kill when it does not complete.
    pub(super) contain: bool,
}

impl Freezing {
    /// The freeze `by` asks for now, over `pending` (asked before, not yet done):
    /// the grace runs from the first asking, and whoever first made it a
    /// containment is the one named.
    pub(super) fn asked(pending: Option<&Freezing>, by: &By) -> Freezing {
        let trigger = match by {
            By::Policy(ev) => Some((ev.id, ev.rule.clone())),
            _ => None,
        };
        let now = Freezing { since: Instant::now(), by: by.name(), trigger, contain: by.contains() };
        match pending {
            None => now,
            Some(p) if p.contain || !now.contain => {
                Freezing { since: p.since, by: p.by, trigger: p.trigger.clone(), contain: p.contain }
            }
            Some(p) => Freezing { since: p.since, ..now },
        }
    }
}

/// A freeze past its grace.
pub(super) struct Late {
    pub(super) id: Arc<str>,
    pub(super) asked: Freezing,
    /// The threads not stopped: `tid (comm) state S in WCHAN`.
    pub(super) stuck: Vec<String>,
}

impl Containment {
    /// The freezes not reported done within `grace`, no longer waited for. Those
    /// reported done, thawed or ended meanwhile are let go; one whose state cannot
    /// be read is asked about again at the next tick.
    pub(super) fn late_freezes(&mut self, grace: Duration) -> Vec<Late> {
        let mut late = Vec::new();
        for (id, e) in &mut self.tasks {
            let Some(f) = &e.freezing else { continue };
            let Some(cg) = e.cgroup.as_ref().filter(|_| !e.killed) else {
                e.freezing = None;
                continue;
            };
            let (asked, frozen) = match (cg.freeze_asked(), cg.frozen_now()) {
                (Ok(a), Ok(f)) => (a, f),
                (Err(err), _) | (_, Err(err)) => {
                    tracing::warn!("task {id}: reading its freezer: {err}");
                    continue;
                }
            };
            if !asked || frozen {
                if frozen {
                    tracing::info!(
                        "task {id} frozen, {} ms after it was asked",
                        f.since.elapsed().as_millis()
                    );
                }
                e.freezing = None;
                continue;
            }
            if f.since.elapsed() < grace {
                continue;
            }
            let stuck = cg.threads().into_iter().filter_map(running).collect();
            if let Some(asked) = e.freezing.take() {
                late.push(Late { id: id.clone(), asked, stuck });
            }
        }
        late
    }

    /// Every tick: a freeze not reported done within [`FREEZE_GRACE`] is recorded,
    /// and made a kill when it contains the task. The records to send.
    pub fn settle_freezes(&mut self, sensors: &mut Sensors, host: Arc<str>, now: Timestamp) -> Vec<Event> {
        let mut out = Vec::new();
        for l in self.late_freezes(FREEZE_GRACE) {
            let by =
                By::LateFreeze { asked_by: l.asked.by, trigger: l.asked.trigger.as_ref(), stuck: &l.stuck };
            let stuck = l.stuck.join(", ");
            if l.asked.contain {
                let o = self.act(sensors, &l.id, Act::Kill, by, host.clone(), now);
                match &o.result {
                    Ok(m) => tracing::error!("{m}: its freeze did not complete (not stopped: {stuck})"),
                    Err(err) => tracing::error!("task {}: killing it after a late freeze: {err}", l.id),
                }
                out.extend(o.event);
            } else {
                let mut detail: BTreeMap<Cow<'static, str>, serde_json::Value> = BTreeMap::new();
                let why = format!(
                    "not every thread stopped within {} s (the freeze stays asked): {stuck}",
                    FREEZE_GRACE.as_secs()
                );
                tracing::error!("task {}: {why}", l.id);
                detail.insert("error".into(), json!(why));
                out.push(action_event(&l.id, Act::Freeze, &by, detail, host.clone(), now));
            }
        }
        out
    }
}

/// `tid` described with where it waits in the kernel, if it is not stopped: a
/// thread the freezer stopped sleeps interruptibly (state S; so does one about
/// to stop), one in a wait only a fatal signal ends is in D, one computing in
/// the kernel in R.
fn running(tid: u32) -> Option<String> {
    let (_, state, _) = crate::ctl::proc_stat(tid)?;
    if !matches!(state.as_str(), "R" | "D") {
        return None;
    }
    Some(match std::fs::read_to_string(format!("/proc/{tid}/wchan")) {
        Ok(w) if !w.trim().is_empty() && w.trim() != "0" => format!("{} in {}", describe(tid), w.trim()),
        _ => describe(tid),
    })
}
