//! An alert as an OCSF 1.3.0 Detection Finding (2004), Create.

use serde_json::{Map, Value, json};

use super::{
    Control, Who, authorization, classes::DETECTION_FINDING, device, header, metadata, millis, objects,
};
use crate::event::Alert;

/// OCSF `severity_id` for agentmon's severity names (`info`..`critical`); 99 Other
/// (with the name as `severity`) for any other.
fn severity_id(name: &str) -> u32 {
    match name {
        "info" => 1,
        "low" => 2,
        "medium" => 3,
        "high" => 4,
        "critical" => 5,
        _ => 99,
    }
}

pub fn detection_finding(a: &Alert) -> Value {
    let ev = &a.event;
    let who = Who::of(ev, a.task.as_ref());
    let related = match super::event(ev, a.task.as_ref()) {
        Some(Value::Object(m)) => Some(m),
        _ => None,
    };
    let mut o = header(DETECTION_FINDING, (1, "Create"), a.ts);
    let profiles = super::profiles(true, ev);
    o.insert("metadata".into(), metadata(&a.id, a.ts, &a.schema, &a.kind, &profiles, who.task));
    super::severity(&mut o, severity_id(&a.severity), Some(a.severity.as_ref()));
    o.insert("status_id".into(), json!(1));
    o.insert("status".into(), json!("New"));
    if !a.reason.is_empty() {
        o.insert("message".into(), json!(a.reason));
    }
    o.insert("device".into(), device(&a.host, ev));
    let actor = match related.as_ref().and_then(|r| r.get("actor")) {
        Some(actor) => actor.clone(),
        None => who.actor(objects::process(ev)),
    };
    o.insert("actor".into(), actor);
    let authorizations = if a.reasons.is_empty() {
        vec![authorization(&a.verdict, a.rule.as_deref(), None, Some(&a.reason))]
    } else {
        a.reasons
            .iter()
            .map(|r| {
                authorization(r.verdict.as_str(), r.rule.as_deref(), r.clause.as_deref(), Some(&r.message))
            })
            .collect()
    };
    Control::of(&a.verdict, ev).write(&mut o, authorizations);
    o.insert("finding_info".into(), finding_info(a, related.as_ref()));
    o.insert("evidences".into(), evidences(a, related.as_ref(), &who));

    let mut un = Map::new();
    un.insert("verdict".into(), json!(a.verdict));
    un.insert("action".into(), json!(a.action));
    if let Some(r) = &a.rule {
        un.insert("rule".into(), json!(r));
    }
    un.insert("reasons".into(), json!(a.reasons));
    un.insert("event_id".into(), json!(ev.id.to_string()));
    un.insert("event_kind".into(), json!(ev.kind.as_str()));
    if let Some(s) = &ev.step {
        un.insert("step".into(), json!(s));
    }
    who.unmapped(&mut un);
    o.insert("unmapped".into(), Value::Object(un));
    let seen = super::observables::of_finding(&o);
    if !seen.is_empty() {
        o.insert("observables".into(), Value::Array(seen));
    }
    Value::Object(o)
}

/// An analytic for a reason: the rule, or the task scope's clause.
fn analytic(rule: Option<&str>, clause: Option<&str>, desc: &str) -> Option<Value> {
    let (mut an, category) = match (rule, clause) {
        (Some(r), _) => (json!({ "uid": r, "name": r }), "rules"),
        // The clause is the analytic's stable identity (consumers key on `uid`).
        (None, Some(c)) => (json!({ "uid": c, "name": c }), "task scope"),
        (None, None) => return None,
    };
    an["type_id"] = json!(1);
    an["type"] = json!("Rule");
    an["category"] = json!(category);
    if !desc.is_empty() {
        an["desc"] = json!(desc);
    }
    Some(an)
}

fn finding_info(a: &Alert, related: Option<&Map<String, Value>>) -> Value {
    let top = a.reasons.first();
    let clause = top.and_then(|r| r.clause.as_deref());
    let title = match (&a.rule, clause) {
        (Some(r), _) => r.clone(),
        (None, Some(c)) => format!("{}: {c}", a.verdict.replace('_', " ")),
        (None, None) => format!("{}: {}", a.verdict.replace('_', " "), a.event.kind.as_str()),
    };
    let mut f = json!({
        "uid": a.id.to_string(),
        "title": title,
        "types": [a.verdict],
        "created_time": millis(a.ts),
    });
    if !a.reason.is_empty() {
        f["desc"] = json!(a.reason);
    }
    let top_desc = top.map_or(a.reason.as_str(), |r| r.message.as_str());
    if let Some(an) = analytic(a.rule.as_deref(), clause, top_desc) {
        f["analytic"] = an;
    }
    let others: Vec<Value> = a
        .reasons
        .iter()
        .skip(1)
        .filter_map(|r| analytic(r.rule.as_deref(), r.clause.as_deref(), &r.message))
        .collect();
    if !others.is_empty() {
        f["related_analytics"] = json!(others);
    }
    let mut ev = json!({ "uid": a.event.id.to_string() });
    if let Some(r) = related {
        for k in ["type_uid", "type_name"] {
            if let Some(v) = r.get(k) {
                ev[k] = v.clone();
            }
        }
    }
    f["related_events"] = json!([ev]);
    f
}

/// The triggering event's actor, process, file, endpoint and connection; a rename's
/// destination as a second evidence; a kernel resource under `data`.
fn evidences(a: &Alert, related: Option<&Map<String, Value>>, who: &Who) -> Value {
    let mut e = Map::new();
    let mut out = Vec::new();
    match related {
        Some(r) => {
            for k in ["actor", "process", "file", "dst_endpoint", "connection_info"] {
                if let Some(v) = r.get(k) {
                    e.insert(k.into(), v.clone());
                }
            }
            if !e.contains_key("process")
                && let Some(p) = r.get("actor").and_then(|a| a.get("process"))
            {
                e.insert("process".into(), p.clone());
            }
            if let Some(k) = r.get("kernel") {
                e.insert("data".into(), json!({ "kernel": k }));
            }
            out.push(Value::Object(e));
            if let Some(f) = r.get("file_result") {
                out.push(json!({ "file": f }));
            }
        }
        None => {
            let p = objects::process(&a.event);
            e.insert("actor".into(), who.actor(p.clone()));
            e.insert("process".into(), Value::Object(p));
            if let Some(path) = &a.event.path {
                e.insert("file".into(), Value::Object(objects::file(path, objects::FILE_UNKNOWN)));
            }
            out.push(Value::Object(e));
        }
    }
    Value::Array(out)
}
