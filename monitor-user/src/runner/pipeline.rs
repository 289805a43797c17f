//! Records in, judged events out, and the containment a rule calls for carried out
//! before the next record is read.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use serde_json::json;

use aya::maps::{MapData, RingBuf};

use crate::{
    contain::{Act, By, Containment},
    ctl::StepPhase,
    decode::decode,
    enrich::Enricher,
    event::{Alert, Event, Kind, Step},
    gate::Gate,
    judge::Judge,
    kernel::loader::Sensors,
    policy::Action,
    sink::Fanout,
    task::Stop,
};

use super::setup::OnExpiry;

/// How long a drain waits for a record reserved before it began to be committed.
const STALL: std::time::Duration = std::time::Duration::from_millis(2);

/// Steps a task may have open at once (tool calls in flight: agents run a few).
pub const MAX_OPEN_STEPS: usize = 64;

/// Why a step cannot begin or end.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("{mine} task {0:?}", mine = crate::ctl::NOT_MINE)]
    NoTask(String),
    #[error("step {call} of task {task} has already begun")]
    Begun { task: Arc<str>, call: String },
    #[error("no step {call} is open in task {task}")]
    NotOpen { task: Arc<str>, call: String },
    #[error("task {0} has {MAX_OPEN_STEPS} steps open; one must end first")]
    Full(Arc<str>),
}

/// Everything that turns records into judged events.
pub struct Pipeline {
    pub enr: Enricher,
    pub judge: Judge,
    pub contain: Containment,
    /// The approval gate of the task, if it has gated operations.
    pub gates: Vec<Gate>,
    /// Tasks whose end is recorded.
    pub ended: HashSet<Arc<str>>,
    /// Open steps of each task, oldest first; the newest labels the task's events.
    pub steps: crate::gate::Steps,
    /// The events file of each task that has its own (as opened: no symlink on it).
    pub logs: HashMap<Arc<str>, std::path::PathBuf>,
    /// The ring's fill level (None: no ring, as in the pipeline benchmark).
    pub level: Option<super::pressure::Level>,
    /// Pauses tasks while the ring is filling (None: losses instead, or no ring).
    pub pressure: Option<super::pressure::Pressure>,
    /// Calls the kernel refused enforced tasks: past a burst, counted.
    pub refusals: super::refusals::KernelRefusals,
}

impl Pipeline {
    pub fn new(enr: Enricher, judge: Judge) -> Self {
        Self {
            enr,
            judge,
            contain: Containment::default(),
            gates: Vec::new(),
            ended: HashSet::new(),
            steps: HashMap::new(),
            logs: HashMap::new(),
            level: None,
            pressure: None,
            refusals: Default::default(),
        }
    }

    /// One kernel record: decoded, enriched, labelled with its task's open step and
    /// a held call's decision, and judged; its alert, if it has one. None: not an
    /// event (undecodable, counted as lost; or dropped, such as a PATH search's
    /// misses). What `drain` runs for every record, and `cargo xtask pipeline`
    /// measures.
    pub fn record(&mut self, item: &[u8]) -> Option<(Event, Option<Alert>)> {
        let mut ev = match decode(item) {
            Ok(raw) => self.enr.event(&raw)?,
            Err(e) => {
                tracing::warn!("undecodable kernel record: {e}");
                self.enr.decode_errors += 1;
                return None;
            }
        };
        if let Some(t) = &ev.task {
            ev.step = self.steps.get(t).and_then(|v| v.last().cloned());
        }
        for g in self.gates.iter_mut() {
            g.annotate(&mut ev);
        }
        let alert = self.judge.apply(&mut ev, &self.enr.procs);
        Some((ev, alert))
    }

    /// Reads the records in the ring when it is called (not those written while it
    /// reads: a storm must not hold the loop).
    /// With `budget`, it also stops once that long has passed (checked every 256
    /// records): the loop's own ring arms, which come round again at once.
    pub fn drain(
        &mut self,
        ring: &mut RingBuf<MapData>,
        sink: &mut Fanout,
        sensors: &mut Sensors,
        budget: Option<std::time::Duration>,
    ) {
        let until = self.level.as_ref().map(|l| l.producer());
        let began = std::time::Instant::now();
        let mut n = 0u64;
        let mut stalled: Option<std::time::Instant> = None;
        loop {
            if let (Some(l), Some(u)) = (&self.level, until)
                && l.consumer().wrapping_sub(u) as isize >= 0
            {
                break;
            }
            if n > 0 && n.is_multiple_of(256) && budget.is_some_and(|b| began.elapsed() >= b) {
                break;
            }
            let Some(item) = ring.next() else {
                // Stopped short of `until` at a record reserved but not yet committed
                // (its program preempted on another CPU): what was written before the
                // drain began is read by it, waited for up to 2 ms.
                if until.is_some() && stalled.get_or_insert_with(std::time::Instant::now).elapsed() < STALL {
                    std::hint::spin_loop();
                    continue;
                }
                break;
            };
            stalled = None;
            n += 1;
            // The record is borrowed until it is judged; then the ring slot is freed.
            let recorded = self.record(&item);
            drop(item);
            let task = recorded.as_ref().and_then(|(ev, _)| ev.task.as_ref());
            if self.pressure.as_mut().is_some_and(|p| p.took(task)) {
                self.relieve();
            }
            if let Some((mut ev, mut alert)) = recorded {
                // Containment first: the event is written a moment later either way.
                let action = alert.as_ref().and_then(|a| self.contain_for(&ev, to_carry_out(a), sensors));
                // A refused call containment acted on is always its own record.
                let admit = match action {
                    Some(_) => super::refusals::Admit::RECORD,
                    None => self.refusals.admit(&mut ev, &mut alert),
                };
                if let Some((s, a)) = admit.before {
                    send_judged(sink, &s, a.as_ref());
                }
                if admit.record {
                    send_judged(sink, &ev, alert.as_ref());
                }
                if let Some(a) = action {
                    sink.send(&a);
                }
                if ev.kind == Kind::Exit
                    && let Some(end) = self.root_exited(&ev)
                {
                    if let Some(id) = &end.task {
                        self.unsaid_of(sink, id, end.ts);
                    }
                    sink.send(&end);
                }
            }
        }
        if n > 0 {
            sink.batch_end();
        }
        self.relieve();
    }

    /// Backpressure's turn at the ring's level now: pause the storm's makers, or thaw
    /// them (see `runner::pressure`); tasks with calls held for approval are spared.
    fn relieve(&mut self) {
        if let Some(p) = &mut self.pressure
            && let Some(l) = &self.level
        {
            let gates = &self.gates;
            p.check(l.backlog(), &mut self.contain, &|| gates.iter().flat_map(|g| g.held_tasks()).collect());
        }
    }

    /// The `task_start` record of a task just bound (before any of its events).
    pub fn task_started(&self, id: &str) -> Option<Event> {
        let b = self.judge.task(id)?;
        let t = &b.task;
        let mut ev = Event::new(Kind::TaskStart, self.enr.clock().now_wall(), self.enr.host());
        ev.task = Some(b.id.clone());
        b.stamp(&mut ev);
        ev.pid = b.root;
        ev.tid = b.root;
        ev.comm = "agentmon".into();
        ev.detail.insert("agent".into(), json!(t.agent));
        ev.detail.insert("principal".into(), json!(t.principal));
        ev.detail.insert("mode".into(), json!(t.mode.as_str()));
        ev.detail.insert("enforcement".into(), json!(if t.enforce { "enforce" } else { "observe" }));
        ev.detail.insert("expires".into(), json!(t.expires));
        ev.detail.insert("manifest".into(), json!(t.source.display().to_string()));
        ev.detail.insert("manifest_sha256".into(), json!(t.manifest_sha256));
        if let Some(p) = &t.prompt {
            ev.detail.insert("prompt".into(), json!(p));
        }
        if !t.credentials.is_empty() {
            ev.detail.insert("credentials".into(), json!(t.credentials));
        }
        if let Some(g) = &t.granted {
            // Who granted it, the grant's id and, delegated from another host, the
            // chain of grants above it.
            ev.detail.insert("grant".into(), json!(g));
        }
        Some(ev)
    }

    /// A tamper record: process `pid` (of task cookie `task`, if any) attempted `what`
    /// and agentmon refused it (`refused`) or only saw it. Written with its alert.
    pub fn tamper(
        &self,
        pid: u32,
        task: Option<u32>,
        what: &str,
        why: &str,
        refused: bool,
    ) -> (Event, Alert) {
        let mut ev = Event::new(Kind::Tamper, self.enr.clock().now_wall(), self.enr.host());
        ev.pid = pid;
        ev.tid = pid;
        ev.ppid = crate::ctl::ppid_of(pid);
        ev.comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim_end().to_string())
            .unwrap_or_default();
        ev.task = task.and_then(|c| self.enr.task_name(c));
        if let Some(b) = ev.task.as_ref().and_then(|t| self.judge.task(t)) {
            b.stamp(&mut ev);
        }
        ev.verdict = Some(if refused { "denied" } else { "violation" }.into());
        ev.action = Some("none".into());
        ev.reason = Some(format!("{what}: {why}"));
        ev.detail.insert("attempt".into(), json!(what));
        let alert = self.judge.tamper_alert(&ev);
        (ev, alert)
    }

    /// `task_end` when the exit is of a task's root process.
    fn root_exited(&mut self, exit: &Event) -> Option<Event> {
        let id = exit.task.clone()?;
        if self.judge.task(&id)?.root != exit.pid || exit.pid != exit.tid {
            return None;
        }
        let mut ev = self.task_ended(&id, "the task's root process exited")?;
        ev.status = exit.status;
        ev.signal = exit.signal.clone();
        Some(ev)
    }

    /// `task_end` of a task not yet ended (None if it was).
    pub fn task_ended(&mut self, id: &Arc<str>, why: &str) -> Option<Event> {
        self.end_record(id, why, true)
    }

    /// The end of task `id`, once; `killed_says`: a task agentmon killed ended by
    /// the kill, whatever `why` says.
    fn end_record(&mut self, id: &Arc<str>, why: &str, killed_says: bool) -> Option<Event> {
        let b = self.judge.task(id)?;
        if !self.ended.insert(id.clone()) {
            return None;
        }
        let mut ev = Event::new(Kind::TaskEnd, self.enr.clock().now_wall(), self.enr.host());
        ev.task = Some(b.id.clone());
        b.stamp(&mut ev);
        ev.pid = b.root;
        ev.tid = b.root;
        ev.comm = "agentmon".into();
        let killed = killed_says && self.contain.was_killed(id);
        ev.reason = Some(if killed { "the task was killed".into() } else { why.into() });
        ev.detail.insert("agent".into(), json!(b.task.agent));
        ev.detail.insert("principal".into(), json!(b.task.principal));
        Some(ev)
    }

    /// Opens or closes a step of task `id`; the `step` record to write. At most
    /// [`MAX_OPEN_STEPS`] are open at once per task: an agent opening steps without
    /// end grew the daemon's memory (and each begin's scan) until it was killed.
    pub fn step(&mut self, id: &str, phase: StepPhase, st: Step) -> Result<Event, StepError> {
        let b = self.judge.task(id).ok_or_else(|| StepError::NoTask(id.into()))?;
        let id = b.id.clone();
        let mut ev = Event::new(Kind::Step, self.enr.clock().now_wall(), self.enr.host());
        b.stamp(&mut ev);
        let open = self.steps.entry(id.clone()).or_default();
        let st = match phase {
            StepPhase::Begin => {
                if open.iter().any(|s| s.call_id == st.call_id) {
                    return Err(StepError::Begun { task: id, call: st.call_id });
                }
                if open.len() >= MAX_OPEN_STEPS {
                    return Err(StepError::Full(id));
                }
                let st = Arc::new(st);
                open.push(st.clone());
                st
            }
            StepPhase::End => {
                let Some(i) = open.iter().position(|s| s.call_id == st.call_id) else {
                    return Err(StepError::NotOpen { task: id, call: st.call_id });
                };
                open.remove(i)
            }
        };
        ev.task = Some(id);
        ev.pid = std::process::id();
        ev.tid = ev.pid;
        ev.comm = "agentmon".into();
        ev.step = Some(st);
        ev.detail.insert("phase".into(), json!(if phase == StepPhase::Begin { "begin" } else { "end" }));
        Ok(ev)
    }

    /// The prompt record of task `id`: what the next steps serve (a `step` record,
    /// `detail.phase: prompt`, with what `policy` keeps of the text).
    pub fn prompt(
        &mut self,
        id: &str,
        text: &str,
        cut: Option<u64>,
        policy: &crate::prompt::PromptPolicy,
    ) -> Result<Event, StepError> {
        let b = self.judge.task(id).ok_or_else(|| StepError::NoTask(id.into()))?;
        let mut ev = Event::new(Kind::Step, self.enr.clock().now_wall(), self.enr.host());
        ev.task = Some(b.id.clone());
        b.stamp(&mut ev);
        ev.pid = std::process::id();
        ev.tid = ev.pid;
        ev.comm = "agentmon".into();
        ev.detail.insert("phase".into(), json!("prompt"));
        for (k, v) in policy.fields(text, cut) {
            ev.detail.insert(k.into(), v);
        }
        Ok(ev)
    }

    /// Tasks whose expiry passed: their end is recorded (`task_end`, "expired"; on NATS
    /// the revoke), after what the task's `on_expiry` (else the host's `on_expiry`
    /// for observed tasks, freeze for enforced ones) says: freeze or kill the tree.
    /// A sub-task, which shares its parent's cgroup, is killed where it would be
    /// frozen. Processes left running stay watched and are judged out of scope.
    pub fn expire(&mut self, sensors: &mut Sensors, host: OnExpiry, sink: &mut Fanout) {
        let now = self.enr.clock().now_wall();
        let due: Vec<(Arc<str>, Stop)> = self
            .task_ids()
            .into_iter()
            .filter(|id| !self.ended.contains(id))
            .filter_map(|id| {
                let t = &self.judge.task(&id)?.task;
                let stop = match (t.expiry_stop(), host) {
                    (Some(s), _) => s,
                    (None, OnExpiry::Kill) => Stop::Kill,
                    (None, OnExpiry::End) if t.enforce => Stop::Freeze,
                    (None, OnExpiry::End) => Stop::Continue,
                };
                t.expired(now).then_some((id, stop))
            })
            .collect();
        for (id, stop) in due {
            let act = match stop {
                Stop::Continue => None,
                Stop::Freeze if self.contain.cgroup(&id).is_some() => Some(Act::Freeze),
                Stop::Freeze | Stop::Kill => Some(Act::Kill),
            };
            // The action while the task is known to the outputs (its kill message
            // names its agent, principal and parents), then its end: the expiry's,
            // though the action killed it.
            if let Some(act) = act {
                let o = self.contain.act(sensors, &id, act, By::Expiry, self.enr.host(), now);
                let froze = o.result.is_ok();
                o.event.iter().for_each(|ev| sink.send(ev));
                // A tree that could not be frozen is killed: it must not run on.
                if act == Act::Freeze && !froze {
                    let o = self.contain.act(sensors, &id, Act::Kill, By::Expiry, self.enr.host(), now);
                    o.event.iter().for_each(|ev| sink.send(ev));
                }
            }
            if let Some(end) = self.end_record(&id, "the task expired", false) {
                self.unsaid_of(sink, &id, end.ts);
                sink.send(&end);
            }
        }
    }

    /// Drops what is kept of a task that ended and has no process left.
    pub fn forget(&mut self, id: &str) {
        if let Some(c) = self.contain.cookie(id) {
            self.enr.unbind_task(c);
        }
        self.judge.unbind(id);
        self.contain.unregister(id);
        self.steps.remove(id);
        self.logs.remove(id);
        self.refusals.forget(id);
    }

    /// Ids of the bound tasks.
    pub fn task_ids(&self) -> Vec<Arc<str>> {
        self.judge.task_ids()
    }

    /// The refusals the gates counted but did not record one by one (a flood), each
    /// gate's as one record and alert, once its limit allows (every tick); a closed
    /// gate's, and every gate's when `all` (agentmon stops), at once.
    pub fn unsaid_refusals(&mut self, sink: &mut Fanout, all: bool) {
        let now = self.enr.clock().now_wall();
        for g in self.gates.iter_mut() {
            for ev in g.refusals_unsaid(now, all || g.closed) {
                sink.send(&ev);
                sink.alert(&self.judge.tamper_alert(&ev));
            }
        }
        // And the calls the kernel refused (an ended task's at once).
        for (ev, alert) in self.refusals.due(now, &self.ended, all) {
            send_judged(sink, &ev, alert.as_ref());
        }
    }

    /// What the calls the kernel refused task `id` left unsaid, at once: written
    /// before its end, stamped with its time `at`.
    pub fn unsaid_of(&mut self, sink: &mut Fanout, id: &str, at: crate::event::Timestamp) {
        for (ev, alert) in self.refusals.unsaid(at, |t| t == id) {
            send_judged(sink, &ev, alert.as_ref());
        }
    }

    /// Takes the calls the gate holds: refusals happen at once, requests are recorded.
    pub fn held_calls(&mut self, sensors: &mut Sensors, sink: &mut Fanout) {
        if self.gates.is_empty() {
            return;
        }
        // Each gate checks (poll) before it takes: one that holds nothing costs a poll.
        for g in self.gates.iter_mut() {
            for ev in g.take(sensors, &self.enr, &self.judge, &self.steps) {
                sink.send(&ev);
                // An observed task's i386/x32 call: an attempt to act unseen.
                if ev.kind == Kind::Tamper {
                    sink.alert(&self.judge.tamper_alert(&ev));
                }
            }
        }
        // An approver watches the stream: do not wait for the next periodic flush.
        sink.flush();
    }

    /// Denies the requests whose time ran out.
    pub fn expire_approvals(&mut self, sink: &mut Fanout) {
        if self.gates.is_empty() {
            return;
        }
        for g in self.gates.iter_mut() {
            for ev in g.expire() {
                sink.send(&ev);
            }
        }
        // Gates whose every process has exited hold nothing more (what they counted
        // is said first).
        self.unsaid_refusals(sink, false);
        self.gates.retain(|g| !g.closed || g.next_deadline().is_some());
        sink.flush();
    }

    /// Held calls waiting for an approver, over every gate.
    pub fn approvals_pending(&self) -> usize {
        self.gates.iter().map(|g| g.pending()).sum()
    }

    /// Carries out a rule's `kill`, `freeze` or `revoke` on an enforced task.
    fn contain_for(&mut self, ev: &Event, action: Action, sensors: &mut Sensors) -> Option<Event> {
        let act = match action {
            Action::Kill => Act::Kill,
            Action::Freeze => Act::Freeze,
            Action::Revoke => Act::Revoke,
            _ => return None,
        };
        // A limit passed for a task this one was delegated from stops that task.
        let id: Arc<str> = match ev.detail.get("limit_of").and_then(|v| v.as_str()) {
            Some(owner) => Arc::from(owner),
            None => ev.task.clone()?,
        };
        if !self.contain.enforced(&id) {
            return None;
        }
        let out =
            self.contain.act(sensors, &id, act, By::Policy(ev), self.enr.host(), self.enr.clock().now_wall());
        match &out.result {
            Ok(msg) => tracing::info!("{msg} ({})", ev.rule.as_deref().unwrap_or("scope")),
            Err(e) => tracing::error!("{} of task {id} failed: {e}", act.as_str()),
        }
        out.event
    }
}

/// An event and its alert, if it has one.
fn send_judged(sink: &mut Fanout, ev: &Event, alert: Option<&Alert>) {
    sink.send(ev);
    if let Some(a) = alert {
        sink.alert(a);
    }
}

/// What containment carries out for alert `a`: its action, or a revoke that any of
/// its reasons asked for when the strongest action stops nothing (a `deny` or the
/// scope's `require_approval` outranks `revoke`, and would drop it); kill and freeze
/// revoke anyway.
fn to_carry_out(a: &crate::event::Alert) -> Action {
    let revoke = a.reasons.iter().any(|r| r.action == Action::Revoke);
    match a.action {
        Action::Kill | Action::Freeze => a.action,
        _ if revoke => Action::Revoke,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::event::{Alert, AlertReason, Event, Timestamp};

    fn alert(action: Action, reasons: &[Action]) -> Alert {
        let reason = |a: Action| AlertReason {
            verdict: crate::policy::VerdictKind::Violation,
            action: a,
            severity: crate::policy::Severity::High,
            rule: Some("r".into()),
            clause: None,
            message: String::new(),
        };
        Alert {
            schema: Cow::Borrowed(crate::event::ALERT_SCHEMA),
            kind: Cow::Borrowed("alert"),
            id: uuid::Uuid::now_v7(),
            ts: Timestamp(0),
            host: "h".into(),
            severity: Cow::Borrowed("high"),
            verdict: Cow::Borrowed("violation"),
            action,
            rule: None,
            reason: String::new(),
            reasons: reasons.iter().map(|&a| reason(a)).collect(),
            task: None,
            event: Event::new(Kind::FileWrite, Timestamp(0), "h".into()),
        }
    }

    /// A revoke asked for by one reason is carried out even when another reason's
    /// deny or require_approval is the strongest action (which would have dropped
    /// it); kill and freeze stay what they are (they revoke anyway).
    #[test]
    fn a_revoke_is_never_outranked_into_nothing() {
        assert_eq!(to_carry_out(&alert(Action::Deny, &[Action::Deny, Action::Revoke])), Action::Revoke);
        assert_eq!(
            to_carry_out(&alert(Action::RequireApproval, &[Action::RequireApproval, Action::Revoke])),
            Action::Revoke
        );
        assert_eq!(to_carry_out(&alert(Action::Kill, &[Action::Kill, Action::Revoke])), Action::Kill);
        assert_eq!(to_carry_out(&alert(Action::Freeze, &[Action::Revoke, Action::Freeze])), Action::Freeze);
        assert_eq!(to_carry_out(&alert(Action::Deny, &[Action::Deny])), Action::Deny);
        assert_eq!(to_carry_out(&alert(Action::Alert, &[Action::Alert])), Action::Alert);
    }
}
