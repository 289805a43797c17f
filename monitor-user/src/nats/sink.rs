//! The NATS sink: turns events and alerts into messages (native JSON, OCSF copies,
//! kill signals, revoke messages) and appends them to the spool, from which the
//! publisher sends them. Nothing here waits on the network.

use std::{
    borrow::Cow,
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use serde_json::json;

use super::{
    Subjects,
    config::NatsArgs,
    publish::{Publisher, Status},
    spool::{Class, Shared, SpoolError, Writer},
};
use crate::{
    event::{Alert, Event, Kind, TaskInfo, Timestamp},
    sink::{Sink, SinkError},
};

pub const KILL_SCHEMA: &str = "agentmon.kill/1";
pub const REVOKE_SCHEMA: &str = "agentmon.revoke/1";

#[derive(Debug, Clone)]
pub struct NatsOptions {
    pub args: NatsArgs,
    pub host: String,
    pub spool: PathBuf,
    pub spool_max: u64,
    /// Also publish OCSF copies of events and alerts.
    pub ocsf: bool,
    /// The host's key: revoke and kill messages are signed with it, so a broker
    /// acting on them can tell they are this host's (`--nats-sign-key`).
    pub sign_key: Option<ed25519_dalek::SigningKey>,
}

/// The spool lane of an event of `kind`: what happened to a task and to the record
/// itself is sent ahead of bulk events and keeps room under pressure.
pub fn class_of(kind: Kind) -> Class {
    match kind {
        Kind::Loss
        | Kind::TaskStart
        | Kind::TaskEnd
        | Kind::Action
        | Kind::ApprovalRequest
        | Kind::Approval
        | Kind::Rules => Class::Priority,
        _ => Class::Bulk,
    }
}

/// How many ended tasks' identities are kept for the records after their end.
const KEEP_ENDED: usize = 256;

pub struct NatsSink {
    spool: Writer,
    subjects: Subjects,
    host: Arc<str>,
    ocsf: bool,
    publisher: Publisher,
    /// Agent identity of each task seen starting, and the credentials it declared,
    /// for kill and revoke messages.
    tasks: HashMap<Arc<str>, (TaskInfo, Vec<String>)>,
    /// Tasks ended, oldest first: kept in `tasks` a while, for the records that
    /// follow an end (an expired task's freeze made a kill when it did not complete).
    ended: std::collections::VecDeque<Arc<str>>,
    sign_key: Option<ed25519_dalek::SigningKey>,
    /// Drops counted in a loss record in the spool (for NATS).
    reported: u64,
    /// Drops told to the other outputs.
    alarmed: u64,
    alarms: Vec<Event>,
    line: Vec<u8>,
}

impl NatsSink {
    pub fn open(o: NatsOptions) -> Result<Self, SpoolError> {
        let spool = Writer::open(&o.spool, o.spool_max)?;
        let subjects = Subjects::new(&o.host);
        let publisher = Publisher::start(o.args, subjects.clone(), spool.shared())
            .map_err(|source| SpoolError::Io { path: o.spool.clone(), source })?;
        Ok(Self {
            spool,
            subjects,
            host: o.host.into(),
            ocsf: o.ocsf,
            publisher,
            tasks: HashMap::new(),
            ended: std::collections::VecDeque::new(),
            sign_key: o.sign_key,
            reported: 0,
            alarmed: 0,
            alarms: Vec::new(),
            line: Vec::with_capacity(1024),
        })
    }

    pub fn status(&self) -> Arc<Status> {
        self.publisher.status.clone()
    }

    pub fn spool(&self) -> Arc<Shared> {
        self.spool.shared()
    }

    fn err(&self, e: SpoolError) -> SinkError {
        SinkError::Write { name: "nats spool".into(), source: std::io::Error::other(e.to_string()) }
    }

    /// Appends one message; false if the spool had no room for it (counted).
    fn put(&mut self, class: Class, subject: &str, id: &str, payload: &[u8]) -> Result<bool, SinkError> {
        self.spool.append_as(class, subject, id, payload).map_err(|e| self.err(e))
    }

    fn put_json(
        &mut self,
        class: Class,
        subject: &str,
        id: &str,
        v: &serde_json::Value,
    ) -> Result<bool, SinkError> {
        let bytes = serde_json::to_vec(v)
            .map_err(|e| self.err(SpoolError::Io { path: "json".into(), source: e.into() }))?;
        self.put(class, subject, id, &bytes)
    }

    fn task_info(&self, id: &Arc<str>) -> TaskInfo {
        self.tasks.get(id).map(|(t, _)| t.clone()).unwrap_or_else(|| TaskInfo {
            id: id.clone(),
            agent: None,
            principal: None,
            mode: Cow::Borrowed("unknown"),
            parents: Vec::new(),
        })
    }

    /// `m` signed with the host's key, if it has one: `key` (hex public key) and
    /// `sig` (hex Ed25519 over `<schema>\n` and `m` without `sig`, compact JSON with
    /// sorted keys, as crate::signed makes every signed object).
    fn signed(&self, mut m: serde_json::Value) -> serde_json::Value {
        use ed25519_dalek::Signer;
        if let Some(k) = &self.sign_key {
            m["key"] = json!(hex::encode(k.verifying_key().as_bytes()));
            let context = format!("{}\n", m["schema"].as_str().unwrap_or_default());
            let sig = k.sign(&crate::signed::bytes(context.as_bytes(), &m));
            m["sig"] = json!(hex::encode(sig.to_bytes()));
        }
        m
    }

    /// A kill signal: the task was killed or frozen, and why.
    fn kill_signal(&self, ev: &Event, task: &TaskInfo) -> serde_json::Value {
        self.signed(json!({
            "schema": KILL_SCHEMA,
            "id": format!("{}:kill", ev.id),
            "ts": ev.ts,
            "host": self.host,
            "task": task.id,
            "parents": task.parents,
            "agent": task.agent,
            "principal": task.principal,
            "action": ev.action,
            "reason": ev.reason,
            "rule": ev.rule,
            "by": ev.detail.get("by"),
            "trigger": ev.detail.get("trigger"),
            "event": ev,
        }))
    }

    /// A revoke message: credentials issued for the task should end now (those its
    /// manifest named; a broker also revokes what it issued for this host's task).
    fn revoke(&self, ev: &Event, task: &TaskInfo, why: &str) -> serde_json::Value {
        self.signed(json!({
            "schema": REVOKE_SCHEMA,
            "id": format!("{}:revoke", ev.id),
            "ts": ev.ts,
            "host": self.host,
            "task": task.id,
            "parents": task.parents,
            "agent": task.agent,
            "principal": task.principal,
            "credentials": self.tasks.get(&task.id).map(|(_, c)| c.clone()).unwrap_or_default(),
            "reason": why,
            "rule": ev.rule,
            "event": ev.id,
        }))
    }

    /// Sends task `t`'s revoke for `ev`.
    fn send_revoke(&mut self, ev: &Event, t: &TaskInfo, why: &str) -> Result<bool, SinkError> {
        let m = self.revoke(ev, t, why);
        self.put_json(Class::Priority, &self.subjects.revoke(), &format!("{}:revoke", ev.id), &m)
    }

    /// A `loss` record of agentmon's own about this output.
    fn own_loss(&self) -> Event {
        let mut ev = Event::new(Kind::Loss, Timestamp::now(), self.host.clone());
        ev.pid = std::process::id();
        ev.tid = ev.pid;
        ev.comm = "agentmon".into();
        ev.detail.insert("sink".into(), json!("nats"));
        ev
    }

    /// The host's stream, found with other settings than configured (fewer
    /// replicas, another retention): used as it is, and said, in every output.
    fn stream_mismatch(&mut self) -> Option<Event> {
        let status = self.publisher.status.clone();
        let said = status.stream_mismatch.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        let mut ev = self.own_loss();
        ev.reason = Some(format!(
            "{said}: agentmon publishes to it as it is; what it keeps may be less than configured"
        ));
        ev.detail.insert("stream_mismatch".into(), json!(said));
        Some(ev)
    }

    /// The `loss` record of `n` messages for NATS that the spool dropped.
    fn loss_record(&self, n: u64) -> Event {
        let shared = self.spool.shared();
        let mut ev = self.own_loss();
        ev.lost = Some([("nats_spool".to_string(), n)].into());
        ev.reason = Some(format!(
            "the NATS spool ({}) was full or damaged: {n} messages for NATS were dropped",
            shared.dir.display()
        ));
        ev.detail.insert("spool_bytes".into(), json!(shared.depth()));
        ev.detail.insert("spool_max".into(), json!(shared.max_bytes));
        ev
    }

    /// Dropped messages not yet told: to the other outputs at once (an alarm), and
    /// to NATS in a loss record in the spool's reserve. A loss record that finds no
    /// room is not itself a loss: the next one carries its count too, so every
    /// drop is counted in NATS in the end.
    fn report_drops(&mut self) -> Result<(), SinkError> {
        let shared = self.spool.shared();
        let total = shared.dropped.load(Relaxed) + shared.torn.load(Relaxed);
        if total > self.alarmed {
            self.alarms.push(self.loss_record(total - self.alarmed));
            self.alarmed = total;
        }
        if total > self.reported {
            let ev = self.loss_record(total - self.reported);
            let before = shared.dropped.load(Relaxed);
            if self.record(&ev)? {
                self.reported = total;
            } else {
                // Neither it nor its copies count: the next one says it all.
                shared.dropped.fetch_sub(shared.dropped.load(Relaxed) - before, Relaxed);
            }
        }
        Ok(())
    }

    /// Writes `ev` and everything it implies (OCSF copy, revoke, kill signal, action
    /// copy); whether the event itself found room in the spool.
    fn record(&mut self, ev: &Event) -> Result<bool, SinkError> {
        let id = ev.id.to_string();
        let class = class_of(ev.kind);
        self.line.clear();
        crate::jsonw::write_event(&mut self.line, ev);
        let line = std::mem::take(&mut self.line);
        let r = self.put(class, &self.subjects.events(ev.task.as_deref()), &id, &line);
        self.line = line;
        let fitted = r?;
        let task = ev.task.as_ref().map(|t| self.task_info(t));
        if self.ocsf
            && let Some(o) = crate::ocsf::event(ev, task.as_ref())
        {
            // Kept like the event it copies (a task's or a loss record's copy too).
            self.put_json(class, &self.subjects.ocsf_events(ev.task.as_deref()), &format!("{id}:ocsf"), &o)?;
        }
        match ev.kind {
            Kind::TaskStart => {
                if let Some(t) = &ev.task {
                    let s = |k: &str| ev.detail.get(k).and_then(|v| v.as_str()).map(String::from);
                    let info = TaskInfo {
                        id: t.clone(),
                        agent: s("agent"),
                        principal: s("principal"),
                        mode: s("mode").map(Cow::Owned).unwrap_or(Cow::Borrowed("unknown")),
                        parents: ev.task_chain.iter().flat_map(|c| c.iter().map(|x| x.to_string())).collect(),
                    };
                    let creds: Vec<String> = ev
                        .detail
                        .get("credentials")
                        .and_then(|v| serde_json::from_value(v.clone()).ok())
                        .unwrap_or_default();
                    self.ended.retain(|e| e != t);
                    self.tasks.insert(t.clone(), (info, creds));
                }
            }
            Kind::TaskEnd => {
                if let Some(t) = &task {
                    self.send_revoke(ev, t, "task ended")?;
                }
                if let Some(t) = &ev.task
                    && self.tasks.contains_key(t)
                    && !self.ended.contains(t)
                {
                    self.ended.push_back(t.clone());
                    if self.ended.len() > KEEP_ENDED
                        && let Some(old) = self.ended.pop_front()
                    {
                        self.tasks.remove(&old);
                    }
                }
            }
            Kind::Action | Kind::ApprovalRequest | Kind::Approval => {
                self.put(
                    Class::Priority,
                    &self.subjects.actions(),
                    &format!("{id}:action"),
                    &self.line.clone(),
                )?;
                let act = ev.action.as_deref().unwrap_or("");
                let failed = ev.detail.contains_key("error");
                if ev.kind == Kind::Action
                    && matches!(act, "kill" | "freeze" | "revoke")
                    && let Some(t) = &task
                {
                    if act != "revoke" && !failed {
                        let m = self.kill_signal(ev, t);
                        self.put_json(Class::Priority, &self.subjects.kill(), &format!("{id}:kill"), &m)?;
                    }
                    // An anomaly cuts the task's credentials: a kill or freeze, done or
                    // failed (all the more then), or a rule that asks for only that.
                    // Not agentmon's own fail-closed freeze while an output fails: the
                    // agent could cause it (a full disk) to cut every task's access;
                    // nor does a thaw issue anything again.
                    // (Also when that freeze did not complete and was made a kill.)
                    let said = |k: &str| ev.detail.get(k).and_then(|v| v.as_str());
                    // (Or when its kill did not end every process in time.)
                    let own = said("by") == Some("output_failure")
                        || (matches!(said("by"), Some("freeze_timeout" | "kill_timeout"))
                            && said("asked_by") == Some("output_failure"));
                    let why = match (act, failed) {
                        ("kill", false) => "task killed",
                        ("freeze", false) => "task frozen",
                        ("kill" | "freeze", true) => "task could not be stopped",
                        _ => "a rule asked for it",
                    };
                    if !own {
                        self.send_revoke(ev, t, why)?;
                    }
                }
            }
            _ => {}
        }
        Ok(fitted)
    }
}

impl Sink for NatsSink {
    fn name(&self) -> String {
        format!("nats (spool {})", self.spool.shared().dir.display())
    }

    fn send(&mut self, ev: &Event) -> Result<(), SinkError> {
        self.record(ev).map(drop)
    }

    fn alert(&mut self, a: &Alert) -> Result<(), SinkError> {
        let id = a.id.to_string();
        let v = serde_json::to_value(a)
            .map_err(|e| self.err(SpoolError::Io { path: "json".into(), source: e.into() }))?;
        self.put_json(Class::Bulk, &self.subjects.alerts(), &id, &v)?;
        if self.ocsf {
            self.put_json(
                Class::Bulk,
                &self.subjects.ocsf_alerts(),
                &format!("{id}:ocsf"),
                &crate::ocsf::alert(a),
            )?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        if let Some(ev) = self.stream_mismatch() {
            self.alarms.push(ev.clone());
            let _ = self.send(&ev);
        }
        self.report_drops()?;
        self.spool.flush().map_err(|e| self.err(e))
    }

    /// Hands the batch to the publisher at once: events reach NATS within
    /// milliseconds of the syscall, not at the next periodic flush.
    fn batch_end(&mut self) -> Result<(), SinkError> {
        self.spool.flush().map_err(|e| self.err(e))
    }

    fn alarms(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.alarms)
    }

    fn close(&mut self) -> Result<(), SinkError> {
        self.flush()?;
        self.spool.sync().map_err(|e| self.err(e))?;
        // Caught up at once when the broker is healthy; a broker never reached is
        // given a second; a cluster in failover up to this long.
        if !self.publisher.close(Duration::from_secs(15)) {
            let shared = self.spool.shared();
            tracing::warn!(
                "NATS: {} bytes not yet acknowledged stay in the spool {} and are sent on the next start",
                shared.depth(),
                shared.dir.display()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
