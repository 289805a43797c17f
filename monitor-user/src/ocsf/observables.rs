//! OCSF `observables`: the record's paths, addresses, ports, processes, users and
//! host, each named by where it is in the record (`name`, e.g. `file.path`), so a
//! SIEM can pivot on them without knowing each class.

use serde_json::{Map, Value, json};

/// Where each observable may be, and its OCSF 1.3.0 observable type.
const WHERE: &[(&str, u32, &str)] = &[
    ("device.hostname", 1, "Hostname"),
    ("actor.user.name", 4, "User Name"),
    ("actor.process.name", 9, "Process Name"),
    ("actor.process.pid", 15, "Process ID"),
    ("actor.process.cmd_line", 13, "Command Line"),
    ("actor.process.user.name", 4, "User Name"),
    ("process.name", 9, "Process Name"),
    ("process.pid", 15, "Process ID"),
    ("process.cmd_line", 13, "Command Line"),
    ("process.user.name", 4, "User Name"),
    ("file.path", 7, "File Name"),
    ("file_result.path", 7, "File Name"),
    ("dst_endpoint.ip", 2, "IP Address"),
    ("dst_endpoint.port", 11, "Port"),
    ("dst_endpoint.hostname", 1, "Hostname"),
    ("src_endpoint.ip", 2, "IP Address"),
    ("src_endpoint.port", 11, "Port"),
];

/// The observables of record `o`; each `name` is prefixed with `prefix` (e.g.
/// `evidences[0].` for a finding's evidence). One per distinct (name, value).
pub fn of(o: &Map<String, Value>, prefix: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for (path, type_id, ty) in WHERE {
        let (top, rest) = path.split_once('.').unwrap_or((path, ""));
        let found =
            rest.split('.').filter(|k| !k.is_empty()).try_fold(o.get(top), |v, k| v.map(|v| v.get(k)));
        let Some(Some(v)) = found else { continue };
        let value = match v {
            Value::String(s) if !s.is_empty() => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => continue,
        };
        out.push(
            json!({ "name": format!("{prefix}{path}"), "type_id": type_id, "type": ty, "value": value }),
        );
    }
    out
}

/// A finding's observables: its own (host, actor) and each evidence's.
pub fn of_finding(o: &Map<String, Value>) -> Vec<Value> {
    let mut out = of(o, "");
    if let Some(Value::Array(evs)) = o.get("evidences") {
        for (i, e) in evs.iter().enumerate() {
            if let Value::Object(e) = e {
                out.extend(of(e, &format!("evidences[{i}].")));
            }
        }
    }
    out
}
