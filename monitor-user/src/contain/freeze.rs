//! Freezes the kernel has not yet reported done.
//!
//! Writing `cgroup.freeze` stops a task's processes at once in user space (each
//! traps at its next return there), but the kernel reports the cgroup `frozen` only
//! when every one has got there: one waiting in a system call (a file system that
//! answers late, a machine under load) stops when that call returns. An action
//! waits [`FREEZE_WAIT`] for the report, on the loop; past that the freeze is
//! checked every tick, off the critical path, for up to [`FREEZE_GRACE`]. Then one
//! that contains a task (a rule's, an expiry's, a failing output's) becomes a kill,
//! since a tree that cannot be frozen must not run on, and an operator's is
//! recorded as failed. Before, an action waited a second on the loop, and a freeze
//! not reported by then was a failure: on a slow machine an expiry killed a task it
//! was to keep for forensics.

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
    since: Instant,
    /// Who asked (`detail.by` of its record).
    by: &'static str,
    /// Whether it contains the task: made a kill when it does not complete.
    pub(super) contain: bool,
}

impl Freezing {
    pub(super) fn new(by: &'static str, contain: bool) -> Self {
        Self { since: Instant::now(), by, contain }
    }
}

/// A freeze past its grace.
pub(super) struct Late {
    pub(super) id: Arc<str>,
    pub(super) by: &'static str,
    pub(super) contain: bool,
    /// The processes not stopped: `pid (comm) state S in WCHAN`.
    pub(super) stuck: Vec<String>,
}

impl Containment {
    /// The freezes not reported done within `grace`, no longer waited for. Those
    /// reported done, thawed or ended meanwhile are let go.
    pub(super) fn late_freezes(&mut self, grace: Duration) -> Vec<Late> {
        let mut late = Vec::new();
        for (id, e) in &mut self.tasks {
            let Some(f) = &e.freezing else { continue };
            let Some(cg) = e.cgroup.as_ref().filter(|cg| !e.killed && cg.freeze_requested()) else {
                e.freezing = None;
                continue;
            };
            if cg.frozen() {
                tracing::info!("task {id} frozen, {} ms after it was asked", f.since.elapsed().as_millis());
                e.freezing = None;
                continue;
            }
            if f.since.elapsed() < grace {
                continue;
            }
            let stuck = cg.pids().into_iter().filter(|&p| !trapped(p)).map(describe_wait).collect();
            late.push(Late { id: id.clone(), by: f.by, contain: f.contain, stuck });
            e.freezing = None;
        }
        late
    }

    /// Every tick: a freeze not reported done within [`FREEZE_GRACE`] is recorded,
    /// and made a kill when it contains the task. The records to send.
    pub fn settle_freezes(&mut self, sensors: &mut Sensors, host: Arc<str>, now: Timestamp) -> Vec<Event> {
        let mut out = Vec::new();
        for l in self.late_freezes(FREEZE_GRACE) {
            let by = By::LateFreeze { asked_by: l.by, stuck: &l.stuck };
            if l.contain {
                let o = self.act(sensors, &l.id, Act::Kill, by, host.clone(), now);
                match &o.result {
                    Ok(m) => {
                        tracing::error!("{m}: its freeze did not complete (stuck: {})", l.stuck.join(", "))
                    }
                    Err(err) => tracing::error!("task {}: killing it after a late freeze: {err}", l.id),
                }
                out.extend(o.event);
            } else {
                let mut detail: BTreeMap<Cow<'static, str>, serde_json::Value> = BTreeMap::new();
                let why = format!(
                    "not every process stopped within {} s: {}",
                    FREEZE_GRACE.as_secs(),
                    l.stuck.join(", ")
                );
                tracing::error!("task {}: {why}", l.id);
                detail.insert("error".into(), json!(why));
                out.push(action_event(&l.id, Act::Freeze, &by, detail, host.clone(), now));
            }
        }
        out
    }
}

/// Whether `pid` is stopped by the cgroup freezer (sleeping in its trap).
fn trapped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/wchan")).is_ok_and(|w| w.trim() == "do_freezer_trap")
}

/// [`describe`], and where in the kernel `pid` waits.
fn describe_wait(pid: u32) -> String {
    match std::fs::read_to_string(format!("/proc/{pid}/wchan")) {
        Ok(w) if !w.trim().is_empty() && w.trim() != "0" => format!("{} in {}", describe(pid), w.trim()),
        _ => describe(pid),
    }
}
