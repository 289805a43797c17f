//! Containment: stopping a task's whole process tree at once, from a rule whose
//! action is `kill` or `freeze` (enforced tasks) or from an operator
//! (`agentmon kill|freeze|thaw TASK`, any task).
//!
//! Kill, in order: the offending process (rule) gets SIGKILL through a pidfd; the
//! task is marked doomed in the kernel's `TRACKED` map, so each of its processes
//! gets SIGKILL from `bpf_send_signal` at its next hooked syscall and a child forked
//! meanwhile inherits the mark; `cgroup.kill` ends everything in the task's cgroup
//! in one step, races with fork included; and every process still tracked under the
//! task is signalled until none is left (a sub-task shares its parent's cgroup, so
//! this is what ends it), off the loop past a moment (kill.rs). Freeze and thaw write `cgroup.freeze` and wait briefly
//! for the kernel to report it done, then check each tick (freeze.rs); a frozen
//! tree keeps its memory and files for forensics.
//!
//! Every action is an event (`kind: action`).

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap, HashSet},
    os::fd::{FromRawFd, OwnedFd},
    sync::Arc,
};

use serde_json::json;

use crate::{
    enforce::cgroup::TaskCgroup,
    event::{Event, Kind, Timestamp},
    kernel::loader::Sensors,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Kill,
    Freeze,
    Thaw,
    /// Nothing done here: the action record has the broker revoke the task's
    /// credentials (nats/sink.rs).
    Revoke,
    /// Frozen for a moment while agentmon caught up with its events, then thawed.
    Pause,
}

impl Act {
    pub fn as_str(self) -> &'static str {
        match self {
            Act::Kill => "kill",
            Act::Freeze => "freeze",
            Act::Thaw => "thaw",
            Act::Revoke => "revoke",
            Act::Pause => "pause",
        }
    }
}

/// Who asked for the action.
pub enum By<'a> {
    /// A rule or scope decision on this event.
    Policy(&'a Event),
    /// The ring buffer filled faster than agentmon could record (`runner::pressure`):
    /// `times` pauses of `ms` in all since the previous record.
    Backpressure { times: u32, ms: u64 },
    /// An operator over the control socket (kernel credentials of the caller), and
    /// whom it relays for (a signed remote command).
    Operator { pid: u32, uid: u32, via: Option<&'a str> },
    /// The task's expiry passed (its `on_expiry`, or the host's).
    Expiry,
    /// A freeze `asked_by` someone (for a rule: its `trigger` event and rule) did
    /// not complete within [`FREEZE_GRACE`]; `stuck` says the threads not stopped
    /// (`tid (comm) state S in WCHAN`).
    LateFreeze {
        asked_by: &'static str,
        trigger: Option<&'a (uuid::Uuid, Option<String>)>,
        stuck: &'a [String],
    },
    /// A kill `asked_by` someone whose processes were not all gone within
    /// [`KILL_GRACE`] (its `detail` names the kill's record and what is left).
    LateKill { asked_by: &'static str },
    /// An output agentmon records to failed (`Some(output, error)`: the task's
    /// `on_output_failure` is carried out) or works again (`None`: thawed).
    Outputs(Option<(&'a str, &'a str)>),
    /// A pause that the agentmon before this one left when it stopped (killed
    /// mid-pause), undone by this one as it resumed the task.
    LeftPause,
}

impl By<'_> {
    /// What `detail.by` of the action record says.
    pub fn name(&self) -> &'static str {
        match self {
            By::Policy(_) => "policy",
            By::Backpressure { .. } => "backpressure",
            By::Operator { .. } => "operator",
            By::Expiry => "expiry",
            By::Outputs(_) => "output_failure",
            By::LateFreeze { .. } => "freeze_timeout",
            By::LateKill { .. } => "kill_timeout",
            By::LeftPause => "restart",
        }
    }

    /// Whether the action contains a task (a rule's, an expiry's, a failing
    /// output's): a freeze of it that does not complete is made a kill.
    fn contains(&self) -> bool {
        matches!(self, By::Policy(_) | By::Expiry | By::Outputs(Some(_)) | By::LateFreeze { .. })
    }
}

struct Entry {
    cookie: u32,
    /// The task's own cgroup (top-level tasks); sub-tasks live in their parent's.
    cgroup: Option<TaskCgroup>,
    parent: Option<Arc<str>>,
    enforce: bool,
    killed: bool,
    /// A freeze asked of the kernel and not yet reported done.
    freezing: Option<Freezing>,
}

/// What an action did: the event to record (None when there was nothing to do) and
/// the answer for whoever asked.
pub struct Outcome {
    pub event: Option<Event>,
    pub result: Result<String, String>,
    /// A kill with processes left: `result` is what it was asked, and whoever
    /// asked is answered by [`Containment::settle_kills`] when it is over.
    pub pending: bool,
}

impl Outcome {
    fn refused(msg: String) -> Self {
        Self { event: None, result: Err(msg), pending: false }
    }
}

#[derive(Default)]
pub struct Containment {
    tasks: HashMap<Arc<str>, Entry>,
    /// Tasks agentmon froze itself while its ring buffer was filling, to be thawed
    /// once it has caught up: not those a rule, an operator or an expiry froze.
    paused: HashSet<Arc<str>>,
    /// Of `paused`, those the agentmon before this one paused and left so: thawed
    /// at the first tick ([`Self::thaw_left_pauses`]), after the ring's waiting
    /// events are judged and expiries checked, unless one of those claims them.
    left: HashSet<Arc<str>>,
    /// Why a pause could not be marked on its cgroup (said once; pauses go on
    /// unmarked, and a daemon killed during one leaves its task frozen).
    unmarkable: Option<String>,
    /// Kills with processes left, swept off the loop (kill.rs).
    kills: HashMap<Arc<str>, kill::Dying>,
}

impl Containment {
    /// A top-level task and its cgroup (if it got one).
    pub fn register(&mut self, id: Arc<str>, cookie: u32, cgroup: Option<TaskCgroup>, enforce: bool) {
        self.tasks.insert(id, Entry { cookie, cgroup, parent: None, enforce, killed: false, freezing: None });
    }

    /// A delegated sub-task: it shares the cgroup of its top-level task.
    pub fn register_sub(&mut self, id: Arc<str>, cookie: u32, parent: Arc<str>, enforce: bool) {
        self.tasks.insert(
            id,
            Entry { cookie, cgroup: None, parent: Some(parent), enforce, killed: false, freezing: None },
        );
    }

    /// Forgets a task (its cgroup is removed if empty).
    pub fn unregister(&mut self, id: &str) {
        // What is left in its cgroup (processes past the tracking limit) runs on.
        if self.paused.remove(id)
            && let Some(cg) = self.tasks.get(id).and_then(|e| e.cgroup.as_ref())
        {
            match cg.request_freeze(false) {
                Ok(()) => unmark(id, cg),
                Err(err) => tracing::error!("task {id}: thawing it after a pause: {err}"),
            }
        }
        self.tasks.remove(id);
    }

    /// Cookies of task `id` and of every task delegated from it, at any depth.
    pub fn cookies_under(&self, id: &str) -> Vec<u32> {
        self.tasks
            .iter()
            .filter(|(t, _)| {
                let mut cur = Some(&***t);
                while let Some(c) = cur {
                    if c == id {
                        return true;
                    }
                    cur = self.tasks.get(c).and_then(|e| e.parent.as_deref());
                }
                false
            })
            .map(|(_, e)| e.cookie)
            .collect()
    }

    /// The ids of the tasks' own cgroups (nested ones are not under agentmon's
    /// directory, which lists the rest).
    pub fn cgroup_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.tasks.values().filter_map(|e| e.cgroup.as_ref().map(|c| c.id))
    }

    /// The cookie of task `id`.
    pub fn cookie(&self, id: &str) -> Option<u32> {
        self.tasks.get(id).map(|e| e.cookie)
    }

    /// Whether rule actions are carried out for the task (enforce mode).
    pub fn enforced(&self, id: &str) -> bool {
        self.tasks.get(id).is_some_and(|e| e.enforce)
    }

    /// Cookies of the tasks killed so far.
    pub fn killed(&self) -> Vec<u32> {
        self.tasks.values().filter(|e| e.killed).map(|e| e.cookie).collect()
    }

    /// Whether the task (or the task it was delegated from) was killed.
    pub fn was_killed(&self, id: &str) -> bool {
        let mut e = self.tasks.get(id);
        while let Some(x) = e {
            if x.killed {
                return true;
            }
            e = x.parent.as_ref().and_then(|p| self.tasks.get(p));
        }
        false
    }

    /// Each task: id, parent, enforced, killed, and its processes (by cookie, from `tracked`).
    pub fn status(&self, tracked: &[(u32, u32)]) -> Vec<serde_json::Value> {
        let mut v: Vec<_> = self
            .tasks
            .iter()
            .map(|(id, e)| {
                let procs: Vec<u32> =
                    tracked.iter().filter(|(_, c)| *c == e.cookie).map(|(p, _)| *p).collect();
                json!({"task": id, "parent": e.parent, "enforced": e.enforce, "killed": e.killed,
                       "frozen": self.home(id).is_some_and(|cg| cg.frozen()),
                       "freezing": e.freezing.is_some(), "dying": self.kills.values().any(|d| d.covers(e.cookie)),
                       "processes": procs})
            })
            .collect();
        v.sort_by(|a, b| a["task"].as_str().cmp(&b["task"].as_str()));
        v
    }

    pub fn cgroup(&self, id: &str) -> Option<&TaskCgroup> {
        self.tasks.get(id).and_then(|e| e.cgroup.as_ref())
    }

    /// The top-level task of task `id` (itself, if it is one).
    fn top<'a>(&'a self, id: &'a str) -> Option<&'a str> {
        let mut cur = id;
        // Delegation is at most this deep (task::MAX_DEPTH is far below it).
        for _ in 0..64 {
            match &self.tasks.get(cur)?.parent {
                Some(p) => cur = p,
                None => return Some(cur),
            }
        }
        None
    }

    /// The cgroup holding the task's processes: its own or its top-level task's.
    fn home(&self, id: &str) -> Option<&TaskCgroup> {
        let mut e = self.tasks.get(id)?;
        while let Some(p) = &e.parent {
            e = self.tasks.get(p)?;
        }
        e.cgroup.as_ref()
    }

    /// Processes of task `id` (its sub-tasks' included) that left its cgroup, moved
    /// back into it: each (pid, where it had gone). A tree that left its cgroup would
    /// escape freeze, `cgroup.kill` and the network guard.
    pub fn regroup(&self, sensors: &Sensors, id: &str) -> Vec<(u32, String)> {
        let Some(cg) = self.home(id) else { return Vec::new() };
        let cookies = self.cookies_under(id);
        let mut moved = Vec::new();
        for (pid, c) in sensors.tracked() {
            if !cookies.contains(&c) {
                continue;
            }
            if let Some(at) = cg.outside(pid) {
                match cg.add(pid) {
                    Ok(()) => moved.push((pid, at)),
                    Err(e) => {
                        tracing::error!("task {id}: pid {pid} left for {at} and cannot be moved back: {e}")
                    }
                }
            }
        }
        moved
    }

    /// Top-level tasks (those with a cgroup of their own).
    pub fn top_level(&self) -> Vec<Arc<str>> {
        self.tasks.iter().filter(|(_, e)| e.cgroup.is_some() && !e.killed).map(|(id, _)| id.clone()).collect()
    }

    /// Carries out `act` on task `id`.
    pub fn act(
        &mut self,
        sensors: &mut Sensors,
        id: &str,
        act: Act,
        by: By,
        host: Arc<str>,
        now: Timestamp,
    ) -> Outcome {
        let was_paused = !matches!(act, Act::Revoke | Act::Pause) && self.claim(id);
        let Some(e) = self.tasks.get(id) else {
            return Outcome::refused(format!("{} task called {id}", crate::ctl::NOT_MINE));
        };
        if e.killed {
            // Asked again while it goes: answered when it is gone, as the first.
            let pending = self.kills.contains_key(id);
            return Outcome { event: None, result: Ok(format!("task {id} was already killed")), pending };
        }
        let cookie = e.cookie;
        let own = e.cgroup.as_ref();
        // The task's cookie and those of the tasks delegated from it.
        let under: HashSet<u32> =
            if act == Act::Kill { self.cookies_under(id).into_iter().collect() } else { HashSet::new() };
        // What becomes of a freeze under way (None: left as it is).
        let mut freezing: Option<Option<Freezing>> = None;
        // The processes a kill left, swept off the loop.
        let mut left = None;
        let mut detail: BTreeMap<Cow<'static, str>, serde_json::Value> = BTreeMap::new();
        if matches!(act, Act::Kill | Act::Freeze) {
            // What left the cgroup comes back first, so that the action covers it.
            let moved = self.regroup(sensors, id);
            if !moved.is_empty() {
                detail.insert(
                    "regrouped".into(),
                    json!(moved.iter().map(|(p, at)| json!({"pid": p, "was_in": at})).collect::<Vec<_>>()),
                );
            }
        }
        let result = match act {
            Act::Revoke => Ok(format!("task {id}: its credentials are to be revoked")),
            Act::Kill => {
                if let By::Policy(ev) = &by {
                    // The offender first: it is the one acting right now.
                    signal_tracked(sensors, ev.pid, cookie);
                }
                let mut errors = Vec::new();
                // And what it delegated, at any depth: a sub-task shares its cgroup,
                // so nothing else would end a sub-task's sub-tasks. (One walk of the
                // map for them all: an agent may make many.)
                if let Err(err) = sensors.doom(&under) {
                    errors.push(format!("kernel mark: {err}"));
                }
                if let Some(cg) = own {
                    detail.insert("cgroup".into(), json!(cg.path.display().to_string()));
                    if let Err(err) = cg.kill() {
                        errors.push(format!("{}: cgroup.kill: {err}", cg.path.display()));
                    }
                }
                // Dying takes a moment under load (seconds under emulation), and a
                // process waiting on a file system as long as it answers late: the
                // rest of the sweep is off the loop (kill.rs).
                let victims = kill::sweep(sensors, &under, KILL_WAIT);
                detail.insert("processes".into(), json!(victims.signalled));
                if !victims.left.is_empty() {
                    detail.insert("settled".into(), json!(false));
                    left = Some(victims);
                }
                if errors.is_empty() { Ok(format!("task {id} killed")) } else { Err(errors.join("; ")) }
            }
            Act::Pause => return Outcome::refused(format!("task {id}: pauses are agentmon's own")),
            Act::Freeze | Act::Thaw => {
                let on = act == Act::Freeze;
                let Some(cg) = own else {
                    let why = match (&e.parent, self.home(id)) {
                        (Some(p), Some(_)) => format!(
                            "task {id} is a sub-task of {p} and shares its cgroup: {} {p} instead, or kill {id}",
                            act.as_str()
                        ),
                        _ => format!(
                            "task {id} has no cgroup of its own (cgroup v2 unavailable?): it cannot be frozen"
                        ),
                    };
                    return Outcome::refused(why);
                };
                detail.insert("cgroup".into(), json!(cg.path.display().to_string()));
                // A pause is a freeze already: made a freeze by this act, it is
                // recorded; a thaw also undoes a freeze asked for but not yet done.
                let already =
                    if on { cg.frozen() && !was_paused } else { !cg.frozen() && !cg.freeze_requested() };
                if already {
                    return Outcome {
                        pending: false,
                        event: None,
                        result: Ok(format!("task {id} was already {}", if on { "frozen" } else { "thawed" })),
                    };
                }
                detail.insert("processes".into(), json!(cg.pids()));
                // The grace runs from the first asking: asking again does not stretch it.
                let asked = Freezing::asked(e.freezing.as_ref().filter(|_| on), &by);
                match cg.freeze(on, FREEZE_WAIT) {
                    Ok(true) => {
                        freezing = Some(None);
                        Ok(format!("task {id} {}", if on { "frozen" } else { "thawed" }))
                    }
                    Ok(false) if on => {
                        // Not a failure: no process runs in user space any more (each
                        // stops at its return there); one in a wait only a fatal
                        // signal ends (a slow file system) stops when its call
                        // returns. Checked every tick.
                        detail.insert("settled".into(), json!(false));
                        let contain = asked.contain;
                        freezing = Some(Some(asked));
                        Ok(format!(
                            "task {id} frozen, not yet every process: one waiting in the kernel stops when its \
                             call returns; if that takes over {} s, {}",
                            FREEZE_GRACE.as_secs(),
                            if contain { "the task is killed" } else { "that is recorded" }
                        ))
                    }
                    Ok(false) => {
                        freezing = Some(None);
                        detail.insert("settled".into(), json!(false));
                        Ok(format!("task {id} thawed, not yet every process"))
                    }
                    // cgroup.freeze could not be written: nothing was asked.
                    Err(err) => Err(err.to_string()),
                }
            }
        };
        if act == Act::Kill {
            freezing = Some(None);
        }
        if let (Some(f), Some(e)) = (freezing, self.tasks.get_mut(id)) {
            e.freezing = f;
        }
        if act == Act::Kill {
            // Every task the kill covers: none is killed again, each says so.
            for e in self.tasks.values_mut().filter(|e| under.contains(&e.cookie)) {
                e.killed = true;
            }
        }
        if let Err(err) = &result {
            detail.insert("error".into(), json!(err));
        }
        let ev = action_event(id, act, &by, detail, host, now);
        let pending = left.is_some();
        if let Some(swept) = left {
            // A late freeze's kill is its asker's (agentmon's own, for a failing output).
            let asked_by = match &by {
                By::LateFreeze { asked_by, .. } => *asked_by,
                _ => by.name(),
            };
            let error = result.as_ref().err().cloned();
            self.kills.insert(Arc::from(id), kill::Dying::new(under, (ev.id, asked_by), error, swept));
        }
        Outcome { event: Some(ev), result, pending }
    }
}

/// agentmon never leaves a task frozen by its own pause, whatever way it ends.
impl Drop for Containment {
    fn drop(&mut self) {
        // Stopping before the first tick: a pause left by the agentmon before is
        // thawed with this one's own.
        self.left.clear();
        self.resume();
    }
}

fn action_event(
    id: &str,
    act: Act,
    by: &By,
    mut detail: BTreeMap<Cow<'static, str>, serde_json::Value>,
    host: Arc<str>,
    now: Timestamp,
) -> Event {
    let mut ev = Event::new(Kind::Action, now, host);
    ev.task = Some(Arc::from(id));
    ev.action = Some(Cow::Borrowed(act.as_str()));
    detail.insert("by".into(), json!(by.name()));
    // A rule's action is its trigger's process's; any other is agentmon's own.
    if let By::Policy(t) = by {
        ev.pid = t.pid;
        ev.tid = t.tid;
        ev.ppid = t.ppid;
        ev.comm = t.comm.clone();
        ev.exe = t.exe.clone();
        ev.start = t.start;
        (ev.task_chain, ev.unsigned) = (t.task_chain.clone(), t.unsigned);
        ev.rule = t.rule.clone();
    } else {
        ev.pid = std::process::id();
        ev.tid = ev.pid;
        ev.comm = "agentmon".into();
    }
    let reason = match by {
        By::Policy(t) => {
            detail.insert("trigger".into(), json!(t.id));
            ev.reason = t.reason.clone();
            None
        }
        By::Operator { pid, uid, via } => {
            detail.insert("operator".into(), json!({"pid": pid, "uid": uid}));
            match via {
                Some(v) => {
                    detail.insert("via".into(), json!(v));
                    Some(format!("operator request: {v}"))
                }
                None => Some(format!("operator request (pid {pid}, uid {uid})")),
            }
        }
        By::Backpressure { times, ms } => {
            detail.insert("times".into(), json!(times));
            detail.insert("ms".into(), json!(ms));
            Some(format!(
                "its events came faster than agentmon could record them: paused {times} times, {ms} ms in all"
            ))
        }
        By::Expiry => Some("the task expired".into()),
        By::LateFreeze { asked_by, trigger, stuck } => {
            detail.insert("asked_by".into(), json!(asked_by));
            detail.insert("stuck".into(), json!(stuck));
            if let Some((id, rule)) = trigger {
                detail.insert("trigger".into(), json!(id));
                ev.rule = rule.clone();
            }
            Some(format!("the freeze ({asked_by}) did not complete within {} s", FREEZE_GRACE.as_secs()))
        }
        By::LateKill { asked_by } => {
            detail.insert("asked_by".into(), json!(asked_by));
            Some(format!("the kill ({asked_by}) did not end every process within {} s", KILL_GRACE.as_secs()))
        }
        By::Outputs(Some((out, err))) => {
            detail.insert("output".into(), json!(out));
            Some(format!("fail closed: {out} cannot be written ({err})"))
        }
        By::Outputs(None) => Some("the outputs work again".into()),
        By::LeftPause => {
            Some("a pause of its events' backpressure, left by an agentmon that stopped during it".into())
        }
    };
    if reason.is_some() {
        ev.reason = reason;
    }
    ev.detail = detail;
    ev
}

/// `pid (comm) state S` from /proc, or just the pid once it is gone.
fn describe(pid: u32) -> String {
    match crate::ctl::proc_stat(pid) {
        Some((comm, state, _)) => format!("{pid} ({comm}) state {state}"),
        None => format!("{pid} (gone)"),
    }
}

/// SIGKILL to `pid` if it is (still) a process of task `cookie`. Through a pidfd
/// checked after opening: the tracking entry goes at exit, before the pid can be
/// reaped and reused, so a pidfd opened while the entry exists names that process.
fn signal_tracked(sensors: &Sensors, pid: u32, cookie: u32) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: fd was just returned by the kernel and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if sensors.task_of(pid) != Some(cookie) {
        return false;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_send_signal with a valid pidfd, no siginfo, no flags.
    let r = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), libc::SIGKILL, std::ptr::null::<u8>(), 0)
    };
    r == 0
}

mod freeze;
mod kill;
mod pause;

use pause::unmark;

pub use freeze::FREEZE_GRACE;
use freeze::{FREEZE_WAIT, Freezing};
use kill::KILL_WAIT;
pub use kill::{KILL_GRACE, KILL_SWEEP, Killed};

#[cfg(test)]
pub(crate) mod tests;
