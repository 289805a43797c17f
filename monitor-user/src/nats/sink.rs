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
}

pub struct NatsSink {
    spool: Writer,
    subjects: Subjects,
    host: Arc<str>,
    ocsf: bool,
    publisher: Publisher,
    /// Agent identity of each task seen starting, for kill and revoke messages.
    tasks: HashMap<Arc<str>, TaskInfo>,
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
        self.tasks.get(id).cloned().unwrap_or_else(|| TaskInfo {
            id: id.clone(),
            agent: None,
            principal: None,
            mode: Cow::Borrowed("unknown"),
            parents: Vec::new(),
        })
    }

    /// A kill signal: the task was killed or frozen, and why.
    fn kill_signal(&self, ev: &Event, task: &TaskInfo) -> serde_json::Value {
        json!({
            "schema": KILL_SCHEMA,
            "id": format!("{}:kill", ev.id),
            "ts": ev.ts,
            "host": self.host,
            "task": task.id,
            "agent": task.agent,
            "principal": task.principal,
            "action": ev.action,
            "reason": ev.reason,
            "rule": ev.rule,
            "by": ev.detail.get("by"),
            "trigger": ev.detail.get("trigger"),
            "event": ev,
        })
    }

    /// A revoke message: credentials issued for the task should end now.
    fn revoke(&self, ev: &Event, task: &TaskInfo, why: &str) -> serde_json::Value {
        json!({
            "schema": REVOKE_SCHEMA,
            "id": format!("{}:revoke", ev.id),
            "ts": ev.ts,
            "host": self.host,
            "task": task.id,
            "agent": task.agent,
            "principal": task.principal,
            "reason": why,
            "event": ev.id,
        })
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
        // What happened to a task and to the record itself keeps room under pressure.
        let class = match ev.kind {
            Kind::Loss
            | Kind::TaskStart
            | Kind::TaskEnd
            | Kind::Action
            | Kind::ApprovalRequest
            | Kind::Approval
            | Kind::Rules => Class::Priority,
            _ => Class::Bulk,
        };
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
                    self.tasks.insert(t.clone(), info);
                }
            }
            Kind::TaskEnd => {
                if let Some(t) = &task {
                    let m = self.revoke(ev, t, "task ended");
                    self.put_json(Class::Priority, &self.subjects.revoke(), &format!("{id}:revoke"), &m)?;
                }
                if let Some(t) = &ev.task {
                    self.tasks.remove(t);
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
                if ev.kind == Kind::Action
                    && matches!(act, "kill" | "freeze")
                    && !ev.detail.contains_key("error")
                    && let Some(t) = &task
                {
                    let m = self.kill_signal(ev, t);
                    self.put_json(Class::Priority, &self.subjects.kill(), &format!("{id}:kill"), &m)?;
                    if act == "kill" {
                        let m = self.revoke(ev, t, "task killed");
                        self.put_json(Class::Priority, &self.subjects.revoke(), &format!("{id}:revoke"), &m)?;
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
        if !self.publisher.close(Duration::from_secs(5)) {
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
mod tests {
    use super::*;
    use crate::sink::{Fanout, JsonLines};

    /// A spool too small for the stream while the broker is away: the overflow is
    /// counted and reported once as a loss event in the other sinks.
    #[test]
    fn full_spool_is_a_loss_event_in_the_other_sinks() {
        let dir = tempfile::tempdir().unwrap();
        let o = NatsOptions {
            // Nothing listens on port 1: the publisher keeps retrying.
            args: NatsArgs { nats: Some("nats://127.0.0.1:1".into()), ..Default::default() },
            host: "h".into(),
            spool: dir.path().join("spool"),
            spool_max: 8192,
            ocsf: false,
        };
        let nats = NatsSink::open(o).unwrap();
        let shared = nats.spool();
        let lines = dir.path().join("events.jsonl");
        let mut f = Fanout::new(vec![Box::new(JsonLines::file(&lines).unwrap()), Box::new(nats)]);
        let mut ev = Event::new(Kind::FileWrite, Timestamp::now(), "h".into());
        ev.path = Some(format!("/{}", "x".repeat(300)));
        for _ in 0..100 {
            f.send(&ev);
        }
        f.flush();
        let dropped = shared.dropped.load(Relaxed);
        assert!(dropped > 50, "only {dropped} dropped");
        f.flush();
        assert_eq!(f.close(), Vec::new());
        let text = std::fs::read_to_string(&lines).unwrap();
        let losses: Vec<Event> = text
            .lines()
            .map(|l| serde_json::from_str::<Event>(l).unwrap())
            .filter(|e| e.kind == Kind::Loss)
            .collect();
        assert_eq!(losses.len(), 1, "one report, not one per flush");
        assert_eq!(losses[0].lost.as_ref().unwrap()["nats_spool"], dropped);
        assert_eq!(losses[0].detail["sink"], "nats");
    }

    /// With the spool full of bulk events (the broker away), what happened to the
    /// task (its end, the revoke) and the loss record still go in, from the
    /// reserve, and the loss record in the spool counts every drop.
    #[test]
    fn task_records_and_loss_survive_a_full_spool() {
        let dir = tempfile::tempdir().unwrap();
        let o = NatsOptions {
            args: NatsArgs { nats: Some("nats://127.0.0.1:1".into()), ..Default::default() },
            host: "h".into(),
            spool: dir.path().join("spool"),
            spool_max: 16384,
            ocsf: false,
        };
        let nats = NatsSink::open(o).unwrap();
        let shared = nats.spool();
        let mut f = Fanout::new(vec![Box::new(nats)]);
        let mut ev = Event::new(Kind::FileWrite, Timestamp::now(), "h".into());
        ev.task = Some("t".into());
        ev.path = Some(format!("/{}", "x".repeat(300)));
        for _ in 0..200 {
            f.send(&ev);
        }
        let dropped = shared.dropped.load(Relaxed);
        assert!(dropped > 100, "only {dropped} dropped");
        let mut end = Event::new(Kind::TaskEnd, Timestamp::now(), "h".into());
        end.task = Some("t".into());
        f.send(&end);
        f.flush();
        assert_eq!(shared.dropped.load(Relaxed), dropped, "a task record was dropped");
        let subjects = Subjects::new("h");
        let mut r = crate::nats::spool::Reader::new(shared.clone());
        let mut records = Vec::new();
        while let Some((rec, _)) = r.next_record().unwrap() {
            records.push(rec);
        }
        assert!(records.iter().any(|r| r.id == end.id.to_string()), "no task_end in the spool");
        assert!(records.iter().any(|r| r.subject == subjects.revoke()), "no revoke in the spool");
        let losses: Vec<Event> = records
            .iter()
            .filter_map(|r| serde_json::from_slice::<Event>(&r.payload).ok())
            .filter(|e| e.kind == Kind::Loss)
            .collect();
        assert_eq!(losses.len(), 1);
        assert_eq!(losses[0].lost.as_ref().unwrap()["nats_spool"], dropped);
        drop(f);
    }
}
