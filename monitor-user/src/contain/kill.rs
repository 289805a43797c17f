//! Kills the kernel has not yet seen through.
//!
//! A killed process goes only when the call it is in returns, and one waiting in
//! a file system's answer (a FUSE request its server has read, a hard NFS mount)
//! cannot return before the answer: SIGKILL waits with it. The server may be
//! anyone's, an agent's own in a task the kill leaves running among them. An
//! action sweeps a killed task (signals each process still tracked under it) for
//! [`KILL_WAIT`] on the loop; past that the sweep goes on every few milliseconds
//! off it, for up to [`KILL_GRACE`] from the kill. Before, the loop swept for the
//! whole grace: each kill a file system held stopped every task's events,
//! approvals and operators for 5 s.
//!
//! The kill's record is written at once (`detail.settled: false` while processes
//! are left); an operator who asked is answered when the last is gone. One still
//! there after the grace is recorded again (`detail.by: kill_timeout`, naming the
//! kill's record and what is left, in what state) and the operator told so: it
//! dies when its wait ends (the kernel's SIGKILL is pending; the task's doom mark
//! stays).

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::json;

use super::{Act, By, Containment, action_event, describe, signal_tracked};
use crate::{
    event::{Event, Timestamp},
    kernel::loader::Sensors,
};

/// How long an action sweeps a killed task on the loop.
pub(super) const KILL_WAIT: Duration = Duration::from_millis(50);

/// How long a killed task is swept in all before what is left is reported.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// How often a kill under way is looked at off the loop: whether the processes it
/// left (up to [`QUICK_MAX`]) are gone.
pub const KILL_SWEEP: Duration = Duration::from_millis(10);

/// Past this many processes left, a kill is looked at by walks alone.
const QUICK_MAX: usize = 64;

/// How many of the processes left a late kill's record names.
const NAMED_MAX: usize = 32;

/// How often the whole tracking map is walked for a kill's processes (a fork
/// that raced the kill and makes no syscall, in a sub-task that has no cgroup of
/// its own), and whenever those it left are gone. A walk reads every tracked
/// process's entry (an agent may fork thousands): not every 10 ms.
const KILL_WALK: Duration = Duration::from_millis(100);

/// A kill with processes left.
pub(super) struct Dying {
    /// The task's cookie and those of the tasks delegated from it, at any depth.
    cookies: HashSet<u32>,
    since: Instant,
    /// The kill's record (`detail.kill` of a late one).
    record: uuid::Uuid,
    /// Who asked (`detail.asked_by` of a late one).
    asked_by: &'static str,
    /// What the kill could not do at once (the kernel mark, `cgroup.kill`): the
    /// answer is this error, whatever the sweep finds.
    error: Option<String>,
    /// Those signalled (once each: a SIGKILL stays pending until its process dies).
    signalled: HashSet<u32>,
    /// What the last look found left.
    left: Vec<u32>,
    walked: Instant,
}

impl Dying {
    /// Whether the kill covers task cookie `c`.
    pub(super) fn covers(&self, c: u32) -> bool {
        self.cookies.contains(&c)
    }

    pub(super) fn new(
        cookies: HashSet<u32>,
        (record, asked_by): (uuid::Uuid, &'static str),
        error: Option<String>,
        swept: Swept,
    ) -> Self {
        let now = Instant::now();
        let signalled = swept.signalled.into_iter().collect();
        Self { cookies, since: now, record, asked_by, error, signalled, left: swept.left, walked: now }
    }
}

/// A kill over: every process gone, or the grace past.
pub struct Killed {
    pub id: Arc<str>,
    /// A late kill's record.
    pub event: Option<Event>,
    /// The answer for an operator who asked.
    pub result: Result<String, String>,
}

pub(super) struct Swept {
    pub(super) signalled: Vec<u32>,
    pub(super) left: Vec<u32>,
}

/// Signals every process tracked under `cookies` until none is left or `limit` passes.
pub(super) fn sweep(sensors: &Sensors, cookies: &HashSet<u32>, limit: Duration) -> Swept {
    let start = Instant::now();
    let mut signalled = HashSet::new();
    loop {
        let left = once(sensors, &sensors.tracked(), cookies, &mut signalled);
        if left.is_empty() || start.elapsed() >= limit {
            let mut signalled: Vec<u32> = signalled.into_iter().collect();
            signalled.sort_unstable();
            return Swept { signalled, left };
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One pass: signals what of `tracked` is under `cookies` and not yet in
/// `signalled` (a SIGKILL stays pending until its process dies), noting it there;
/// what was there.
fn once(
    sensors: &Sensors,
    tracked: &[(u32, u32)],
    cookies: &HashSet<u32>,
    signalled: &mut HashSet<u32>,
) -> Vec<u32> {
    let mut left = Vec::new();
    for &(pid, c) in tracked.iter().filter(|(_, c)| cookies.contains(c)) {
        left.push(pid);
        if !signalled.contains(&pid) && signal_tracked(sensors, pid, c) {
            signalled.insert(pid);
        }
    }
    left
}

impl Containment {
    /// Whether a kill is under way (swept every [`KILL_SWEEP`]).
    pub fn dying(&self) -> bool {
        !self.kills.is_empty()
    }

    /// Sweeps each kill under way once; those over, with what to record and answer.
    pub fn settle_kills(&mut self, sensors: &Sensors, host: Arc<str>, now: Timestamp) -> Vec<Killed> {
        if self.kills.is_empty() {
            return Vec::new();
        }
        // Whether those each kill left are still there (a lookup each, a few of
        // them); the map walked if one's are gone, its grace is past, or it is time.
        let mut walk = false;
        for d in self.kills.values_mut() {
            if d.left.len() <= QUICK_MAX {
                d.left.retain(|&p| sensors.task_of(p).is_some_and(|c| d.cookies.contains(&c)));
            }
            walk |= d.left.is_empty() || d.walked.elapsed() >= KILL_WALK || d.since.elapsed() >= KILL_GRACE;
        }
        let tracked = if walk { sensors.tracked() } else { Vec::new() };
        let mut done = Vec::new();
        self.kills.retain(|id, d| {
            if walk {
                // A process not seen before (a fork that raced the kill) is signalled;
                // one gone is forgotten (its pid may come back as another).
                d.left = once(sensors, &tracked, &d.cookies, &mut d.signalled);
                let left: HashSet<u32> = d.left.iter().copied().collect();
                d.signalled.retain(|p| left.contains(p));
                d.walked = Instant::now();
            }
            let left = &d.left;
            if left.is_empty() {
                tracing::info!(
                    "task {id}: its last process gone {} ms after the kill",
                    d.since.elapsed().as_millis()
                );
                let result = match d.error.take() {
                    Some(err) => Err(err),
                    None => Ok(format!("task {id} killed")),
                };
                done.push(Killed { id: id.clone(), event: None, result });
                return false;
            }
            if d.since.elapsed() < KILL_GRACE {
                return true;
            }
            // Which, and in what state (D: waiting in the kernel, Z: dead but its
            // exit not yet seen), for the operator.
            let mut named: Vec<String> = left.iter().take(NAMED_MAX).map(|&p| describe(p)).collect();
            if left.len() > NAMED_MAX {
                named.push(format!("{} more", left.len() - NAMED_MAX));
            }
            let mut why = format!(
                "{} processes still alive {} s after the kill: {} (each dies when its wait in the kernel ends)",
                left.len(),
                KILL_GRACE.as_secs(),
                named.join(", ")
            );
            if let Some(err) = &d.error {
                why = format!("{err}; {why}");
            }
            tracing::error!("task {id}: {why}");
            let mut detail: BTreeMap<Cow<'static, str>, serde_json::Value> = BTreeMap::new();
            detail.insert("kill".into(), json!(d.record));
            // (A record, not a dump: the first of many.)
            detail.insert("processes".into(), json!(left.iter().take(256).collect::<Vec<_>>()));
            detail.insert("error".into(), json!(why));
            let by = By::LateKill { asked_by: d.asked_by };
            let ev = action_event(id, Act::Kill, &by, detail, host.clone(), now);
            done.push(Killed { id: id.clone(), event: Some(ev), result: Err(why) });
            false
        });
        done
    }

    /// Every kill under way seen through, its grace at most (agentmon stopping:
    /// nothing else waits for its loop).
    pub fn finish_kills(
        &mut self,
        sensors: &Sensors,
        host: Arc<str>,
        now: impl Fn() -> Timestamp,
    ) -> Vec<Killed> {
        let mut done = Vec::new();
        while self.dying() {
            done.extend(self.settle_kills(sensors, host.clone(), now()));
            if self.dying() {
                std::thread::sleep(KILL_SWEEP);
            }
        }
        done
    }
}
