//! OCSF 1.3.0 form of agentmon's events and alerts, field by field in docs/ocsf.md.
//! Pure: an [`Event`] or [`Alert`] in, a JSON object out (no I/O, no clock).
//!
//! Events map to Process Activity (1007), File System Activity (1001), Kernel Activity
//! (1003), Network Activity (4001) and, for `loss`, Event Log Activity (1008); alerts
//! to Detection Finding (2004). agentmon's own records (`action`, `approval_request`,
//! `approval`, `task_start`, `task_end`) are not observed activity and have no class:
//! [`event`] returns `None`.
//! Native fields without an OCSF attribute, the policy verdict and the task's identity
//! are kept in `unmapped` under their native names.

mod classes;
#[cfg(test)]
mod conformance;
mod finding;
mod objects;
mod observables;
#[cfg(test)]
mod tests;

use serde_json::{Map, Value, json};

use crate::event::{Alert, Dst, Event, Kind, TaskInfo, Timestamp};
use classes::{Activity, Class};

/// The OCSF schema version produced (`metadata.version`).
pub const VERSION: &str = "1.3.0";

/// The OCSF form of `ev`; `None` for agentmon's own records, which have no OCSF
/// class (`action`, `approval_request`, `approval`, `task_start`, `task_end`). `task`
/// adds the agent and principal.
pub fn event(ev: &Event, task: Option<&TaskInfo>) -> Option<Value> {
    let body = classes::body(ev)?;
    let who = Who::of(ev, task);
    let control = ev.verdict.as_deref().map(|v| Control::of(v, ev));
    let mut o = header(body.class, body.activity, ev.ts);
    let profiles = profiles(control.is_some(), ev);
    o.insert("metadata".into(), metadata(&ev.id, ev.ts, &ev.schema, ev.kind.as_str(), &profiles, who.task));
    severity(&mut o, body.severity_id.unwrap_or_else(|| verdict_severity(ev.verdict.as_deref())), None);
    let (status_id, status) = body.status.unwrap_or_else(|| status_of(ev.error.as_deref()));
    o.insert("status_id".into(), json!(status_id));
    o.insert("status".into(), json!(status));
    if let Some(e) = &ev.error {
        o.insert("status_code".into(), json!(e));
    }
    o.insert("message".into(), json!(summary(ev)));
    o.insert("device".into(), device(&ev.host, ev));
    o.insert("actor".into(), who.actor(body.actor_process.unwrap_or_else(|| objects::process(ev))));
    if let Some(c) = control {
        let verdict = ev.verdict.as_deref().unwrap_or_default();
        c.write(&mut o, vec![authorization(verdict, ev.rule.as_deref(), None, ev.reason.as_deref())]);
    }
    o.extend(body.fields);
    let mut un = body.unmapped;
    native_unmapped(ev, &mut un);
    who.unmapped(&mut un);
    if !un.is_empty() {
        o.insert("unmapped".into(), Value::Object(un));
    }
    let seen = observables::of(&o, "");
    if !seen.is_empty() {
        o.insert("observables".into(), Value::Array(seen));
    }
    Some(Value::Object(o))
}

/// The OCSF Detection Finding (2004) for `a`, with the triggering event as evidence.
pub fn alert(a: &Alert) -> Value {
    finding::detection_finding(a)
}

/// Classification and time: the attributes every OCSF event starts with.
fn header(class: Class, (activity_id, activity_name): Activity, ts: Timestamp) -> Map<String, Value> {
    let mut o = Map::new();
    o.insert("class_uid".into(), json!(class.uid));
    o.insert("class_name".into(), json!(class.name));
    o.insert("category_uid".into(), json!(class.category_uid));
    o.insert("category_name".into(), json!(class.category_name));
    o.insert("activity_id".into(), json!(activity_id));
    o.insert("activity_name".into(), json!(activity_name));
    o.insert("type_uid".into(), json!(class.uid as u64 * 100 + activity_id as u64));
    o.insert("type_name".into(), json!(format!("{}: {activity_name}", class.name)));
    o.insert("time".into(), json!(millis(ts)));
    o
}

/// OCSF timestamps are Unix milliseconds.
fn millis(ts: Timestamp) -> i64 {
    ts.0.div_euclid(1_000_000) as i64
}

fn metadata(
    uid: &uuid::Uuid,
    ts: Timestamp,
    log_name: &str,
    event_code: &str,
    profiles: &[&str],
    task: Option<&str>,
) -> Value {
    let mut m = json!({
        "version": VERSION,
        "product": {
            "name": "agentmon",
            "vendor_name": "agentmon",
            "version": env!("CARGO_PKG_VERSION"),
        },
        "uid": uid.to_string(),
        "original_time": ts.to_string(),
        "log_name": log_name,
        "log_provider": "agentmon",
        "event_code": event_code,
        "profiles": profiles,
    });
    if let Some(t) = task {
        m["correlation_uid"] = json!(t);
    }
    m
}

/// `severity_id` and its caption; `other` names the source's value for 99.
fn severity(o: &mut Map<String, Value>, id: u32, other: Option<&str>) {
    let name = match id {
        1 => "Informational",
        2 => "Low",
        3 => "Medium",
        4 => "High",
        5 => "Critical",
        6 => "Fatal",
        99 => other.unwrap_or("Other"),
        _ => "Unknown",
    };
    o.insert("severity_id".into(), json!(id));
    o.insert("severity".into(), json!(name));
}

/// An event's severity from its verdict (an alert's comes from the rule instead).
fn verdict_severity(verdict: Option<&str>) -> u32 {
    match verdict {
        Some("violation") => 4,
        Some("out_of_scope" | "denied") => 3,
        Some("needs_approval") => 2,
        _ => 1,
    }
}

fn status_of(error: Option<&str>) -> (u32, &'static str) {
    match error {
        None => (1, "Success"),
        // A non-blocking connect under way: not a failure, not yet a success.
        Some("EINPROGRESS") => (99, "In Progress"),
        Some(_) => (2, "Failure"),
    }
}

/// The profiles a record of `ev` uses: `host` always, `security_control` for a
/// judged event, `container` when [`device`] names one (OCSF 1.3.0 has
/// `device.container` in that profile only).
fn profiles(control: bool, ev: &Event) -> Vec<&'static str> {
    let mut p = vec!["host"];
    if control {
        p.push("security_control");
    }
    if ev.container.is_some() {
        p.push("container");
    }
    p
}

/// The host, and the container the process ran in there (its pod's uid).
fn device(host: &str, ev: &Event) -> Value {
    let mut d = json!({ "hostname": host, "type_id": 0, "type": "Unknown" });
    if let Some(c) = &ev.container {
        let mut ct = json!({ "uid": c.id, "runtime": c.runtime });
        if let Some(p) = &ev.pod {
            ct["pod_uuid"] = json!(p.uid);
            ct["orchestrator"] = json!("Kubernetes");
        }
        d["container"] = ct;
    }
    d
}

/// One line for `message`: the kind and its object.
fn summary(ev: &Event) -> String {
    let mut m = ev.kind.as_str().to_string();
    match ev.kind {
        Kind::Fork => m += &format!(" {} -> {}", ev.ppid.unwrap_or_default(), ev.pid),
        Kind::Exec | Kind::MemfdExec => {
            if let Some(exe) = ev.exe.as_deref().or(ev.path.as_deref()) {
                m += &format!(" {exe}");
            }
        }
        Kind::Exit => match (&ev.signal, ev.status) {
            (Some(s), _) => m += &format!(" {} by {s}", ev.pid),
            (None, Some(code)) => m += &format!(" {} status {code}", ev.pid),
            _ => m += &format!(" {}", ev.pid),
        },
        _ => {
            if let Some(p) = &ev.path {
                m += &format!(" {p}");
            }
            if let Some(n) = &ev.new_path {
                m += &format!(" -> {n}");
            }
        }
    }
    match &ev.dst {
        Some(Dst::Ip { ip, port }) if ip.contains(':') => m += &format!(" [{ip}]:{port}"),
        Some(Dst::Ip { ip, port }) => m += &format!(" {ip}:{port}"),
        Some(Dst::Unix { unix }) => m += &format!(" {unix}"),
        None => {}
    }
    if let Some(e) = &ev.error {
        m += &format!(" ({e})");
    }
    m
}

/// Native fields every class leaves unmapped.
fn native_unmapped(ev: &Event, un: &mut Map<String, Value>) {
    let mut put = |k: &str, v: Value| {
        un.insert(k.into(), v);
    };
    if let Some(s) = &ev.syscall {
        put("syscall", json!(s));
    }
    if !ev.flags.is_empty() {
        put("flags", json!(ev.flags));
    }
    if let Some(m) = &ev.mode {
        put("mode", json!(m));
    }
    if !ev.detail.is_empty() {
        put("detail", json!(ev.detail));
    }
    if let Some(r) = ev.ret {
        put("ret", json!(r));
    }
    if let Some(s) = &ev.signal {
        put("signal", json!(s));
    }
    if let Some(l) = &ev.lost {
        put("lost", json!(l));
    }
    // The tool call the effect belongs to (OCSF 1.3.0 has no trace object).
    if let Some(s) = &ev.step {
        put("step", json!(s));
    }
    if let Some(v) = &ev.verdict {
        put("verdict", json!(v));
    }
    if let Some(a) = &ev.action {
        put("action", json!(a));
    }
    if let Some(r) = &ev.rule {
        put("rule", json!(r));
    }
    if let Some(r) = &ev.reason {
        put("reason", json!(r));
    }
}

/// Who acted: the task, its agent (SPIFFE id) and its principal.
struct Who<'a> {
    task: Option<&'a str>,
    agent: Option<&'a str>,
    principal: Option<&'a str>,
    mode: Option<&'a str>,
    chain: Vec<&'a str>,
    /// The task runs on no grant.
    unsigned: bool,
    /// The process's cgroup v2 path (OCSF has no place for it).
    cgroup: Option<&'a str>,
}

impl<'a> Who<'a> {
    fn of(ev: &'a Event, task: Option<&'a TaskInfo>) -> Self {
        let chain = match (&ev.task_chain, task) {
            (Some(c), _) => c.iter().map(|t| &**t).collect(),
            (None, Some(t)) => t.parents.iter().map(String::as_str).collect(),
            (None, None) => Vec::new(),
        };
        Who {
            task: ev.task.as_deref().or(task.map(|t| &*t.id)),
            agent: task.and_then(|t| t.agent.as_deref()),
            principal: task.and_then(|t| t.principal.as_deref()),
            mode: task.map(|t| &*t.mode),
            chain,
            unsigned: ev.unsigned,
            cgroup: ev.cgroup.as_deref(),
        }
    }

    /// `actor`: the process, the principal as `user`, the agent as `app_uid`, the
    /// task as `session`.
    fn actor(&self, process: Map<String, Value>) -> Value {
        let mut a = Map::new();
        a.insert("process".into(), Value::Object(process));
        if let Some(p) = self.principal {
            a.insert("user".into(), json!({ "name": p }));
        }
        if let Some(id) = self.agent {
            a.insert("app_uid".into(), json!(id));
        }
        if let Some(t) = self.task {
            a.insert("session".into(), json!({ "uid": t }));
        }
        Value::Object(a)
    }

    fn unmapped(&self, un: &mut Map<String, Value>) {
        if let Some(t) = self.task {
            un.insert("task".into(), json!(t));
        }
        if !self.chain.is_empty() {
            un.insert("task_chain".into(), json!(self.chain));
        }
        if self.unsigned {
            un.insert("unsigned".into(), json!(true));
        }
        if let Some(c) = self.cgroup {
            un.insert("cgroup".into(), json!(c));
        }
        if let Some(a) = self.agent {
            un.insert("agent".into(), json!(a));
        }
        if let Some(p) = self.principal {
            un.insert("principal".into(), json!(p));
        }
        if let Some(m) = self.mode {
            un.insert("task_mode".into(), json!(m));
        }
    }
}

/// The security control's outcome (profile `security_control`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Control {
    action_id: u32,
    disposition_id: u32,
}

impl Control {
    /// Denied when an enforcement layer stopped the call or an approver refused it;
    /// Approved when an approver allowed it; otherwise the call went through: Alert
    /// when it was flagged, Allowed when not.
    fn of(verdict: &str, ev: &Event) -> Self {
        let decision = ev.detail.get("decision").and_then(Value::as_str);
        let (action_id, disposition_id) =
            if verdict == "denied" || matches!(decision, Some("denied" | "timeout" | "cancelled")) {
                (2, 2)
            } else if decision == Some("approved") {
                (1, 8)
            } else if verdict != "in_scope" || ev.rule.is_some() {
                (1, 19)
            } else {
                (1, 1)
            };
        Control { action_id, disposition_id }
    }

    fn write(self, o: &mut Map<String, Value>, authorizations: Vec<Value>) {
        let action = if self.action_id == 2 { "Denied" } else { "Allowed" };
        let disposition = match self.disposition_id {
            1 => "Allowed",
            2 => "Blocked",
            8 => "Approved",
            _ => "Alert",
        };
        o.insert("action_id".into(), json!(self.action_id));
        o.insert("action".into(), json!(action));
        o.insert("disposition_id".into(), json!(self.disposition_id));
        o.insert("disposition".into(), json!(disposition));
        o.insert("authorizations".into(), json!(authorizations));
    }
}

/// One `authorization`: the verdict as `decision`, the rule or scope clause as `policy`.
fn authorization(verdict: &str, rule: Option<&str>, clause: Option<&str>, desc: Option<&str>) -> Value {
    let mut a = json!({ "decision": verdict });
    let clause = clause.or_else(|| {
        // An event's reason is `clause: finding` when the task's scope decided.
        rule.is_none().then(|| desc?.split_once(": ").map(|(c, _)| c).filter(|c| !c.contains(' '))).flatten()
    });
    let mut policy = Map::new();
    match (rule, clause) {
        (Some(r), _) => {
            policy.insert("uid".into(), json!(r));
            policy.insert("name".into(), json!(r));
            policy.insert("group".into(), json!({ "name": "rules" }));
        }
        (None, Some(c)) => {
            policy.insert("name".into(), json!(c));
            policy.insert("group".into(), json!({ "name": "task scope" }));
        }
        (None, None) if desc.is_some() => {
            policy.insert("name".into(), json!("task scope"));
        }
        (None, None) => return a,
    }
    if let Some(d) = desc {
        policy.insert("desc".into(), json!(d));
    }
    a["policy"] = Value::Object(policy);
    a
}
