//! Every kind of record agentmon maps, checked against the OCSF 1.3.0 schema by an
//! implementation that is not agentmon's: tests/ocsf/validate.py (ocsf-json-schema's
//! JSON Schema of each class and profile, checked by jsonschema), installed by
//! scripts/setup.sh into target/pyenv. A missing validator fails the test, naming
//! the fix; `AGENTMON_SKIP_OCSF_SCHEMA=1` is the explicit opt-out.

use std::{borrow::Cow, path::PathBuf, sync::Arc};

use serde_json::Value;

use super::{tests::task, *};
use crate::event::{ALERT_SCHEMA, AlertReason, Step};

/// The unit tests' event, with its user.
fn ev(kind: Kind) -> Event {
    let mut e = super::tests::ev(kind);
    e.uid = Some(1000);
    e.gid = Some(1000);
    e.user = Some("alice".into());
    e
}

/// `e` as a task's event, in a tool call, judged `verdict`.
fn judged(mut e: Event, verdict: &'static str, action: &'static str) -> Event {
    e.task = Some("refactor-42".into());
    e.task_chain = Some(Arc::from(vec![Arc::from("root-1")]));
    e.step = Some(Arc::new(Step {
        tool: "Bash".into(),
        call_id: "toolu_01".into(),
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        span_id: Some("00f067aa0ba902b7".into()),
    }));
    e.verdict = Some(Cow::Borrowed(verdict));
    e.action = Some(Cow::Borrowed(action));
    e.reason = Some(format!("{verdict}: scope.write"));
    e
}

/// Every observed kind, with the fields the kernel fills for it.
fn observed() -> Vec<Event> {
    let mut out = Vec::new();
    for kind in Kind::ALL.into_iter().filter(|k| !k.is_own_record() || *k == Kind::Loss) {
        let mut e = ev(kind);
        match kind {
            Kind::Exec | Kind::MemfdExec => {
                e.path = Some("/srv/repo/run.py".into());
                e.argv = Some(vec!["python3".into(), "run.py".into()]);
            }
            Kind::Exit => e.status = Some(1),
            Kind::Fork => e.detail.insert("child".into(), 4250.into()).map_or((), drop),
            Kind::Ptrace => {
                e.detail.insert("request".into(), "PTRACE_POKEDATA".into());
                e.detail.insert("target_pid".into(), 4100.into());
            }
            Kind::Privilege => e.syscall = Some(Cow::Borrowed("setuid")),
            Kind::FileRename | Kind::FileLink => {
                e.path = Some("/srv/repo/a.txt".into());
                e.new_path = Some("/home/alice/.bashrc".into());
            }
            Kind::FileChown => {
                e.path = Some("/srv/repo/a.txt".into());
                e.detail.insert("uid".into(), 0.into());
            }
            Kind::FileChmod => {
                e.path = Some("/srv/repo/a.txt".into());
                e.mode = Some("0777".into());
            }
            Kind::Connect | Kind::Send | Kind::Bind | Kind::Listen => {
                e.dst = Some(Dst::Ip { ip: "10.0.0.9".into(), port: 22 });
                e.proto = Some(Cow::Borrowed("tcp"));
            }
            Kind::IoUring => e.detail.insert("opcode".into(), "IORING_OP_OPENAT".into()).map_or((), drop),
            Kind::Bpf => e.detail.insert("cmd".into(), "BPF_PROG_LOAD".into()).map_or((), drop),
            Kind::Tamper => {
                e.detail.insert("attempt".into(), "signal".into());
                e.reason = Some("signals agentmon".into());
            }
            Kind::Loss => e.lost = Some([("file_write".to_string(), 12)].into()),
            _ => e.path = Some("/srv/repo/a.txt".into()),
        }
        out.push(e);
    }
    // Variants: a failed call, a unix socket, a judged event in a tool call, io_uring
    // setup, an output's and the NATS spool's losses.
    let mut failed = ev(Kind::Connect);
    failed.dst = Some(Dst::Ip { ip: "2001:db8::1".into(), port: 443 });
    failed.error = Some(Cow::Borrowed("ECONNREFUSED"));
    out.push(failed);
    let mut unix = ev(Kind::Connect);
    unix.dst = Some(Dst::Unix { unix: "/run/docker.sock".into() });
    out.push(judged(unix, "out_of_scope", "deny"));
    let mut w = ev(Kind::FileWrite);
    w.path = Some("/etc/hosts".into());
    w.error = Some(Cow::Borrowed("EACCES"));
    out.push(judged(w, "denied", "deny"));
    let mut setup = ev(Kind::IoUring);
    setup.flags = vec![Cow::Borrowed("setup")];
    out.push(setup);
    let mut output = ev(Kind::Loss);
    output.lost = Some([("output:events.jsonl".to_string(), 3)].into());
    output.detail.insert("output".into(), "events.jsonl".into());
    out.push(output);
    // A process in a Kubernetes pod's container, and in a plain Docker container
    // (device.container, with and without the pod's uid and orchestrator).
    for pod in [true, false] {
        let mut c = ev(if pod { Kind::FileCreate } else { Kind::Exec });
        c.path = Some("/srv/repo/a.txt".into());
        c.cgroup = Some(Arc::from("/kubepods/burstable/pod1b4e28ba/3f1c"));
        c.container = Some(Arc::new(crate::container::Container {
            id: "3f1c9a2b7d4e".into(),
            runtime: if pod { "containerd" } else { "docker" }.into(),
        }));
        c.pod = pod.then(|| {
            Arc::new(crate::container::Pod {
                uid: "1b4e28ba-2fa1-11d2-883f-0016d3cca427".into(),
                qos: "burstable".into(),
            })
        });
        out.push(if pod { judged(c, "out_of_scope", "alert") } else { c });
    }
    let mut spool = ev(Kind::Loss);
    spool.lost = Some([("nats_spool".to_string(), 1953)].into());
    spool.detail.insert("sink".into(), "nats".into());
    out.push(spool);
    out
}

fn alerts() -> Vec<Alert> {
    use crate::policy::{Action, Severity, VerdictKind};
    let reason = |rule: Option<&str>, clause: Option<&'static str>, verdict: VerdictKind| AlertReason {
        verdict,
        action: Action::Alert,
        severity: Severity::High,
        rule: rule.map(String::from),
        clause: clause.map(Cow::Borrowed),
        message: "what was found".into(),
    };
    let mut w = ev(Kind::FileWrite);
    w.path = Some("/etc/hosts".into());
    let mut c = ev(Kind::Connect);
    c.dst = Some(Dst::Ip { ip: "10.0.0.9".into(), port: 22 });
    let mut r = ev(Kind::FileRename);
    r.path = Some("/srv/repo/a".into());
    r.new_path = Some("/home/alice/.bashrc".into());
    [
        (
            judged(w, "out_of_scope", "alert"),
            None,
            vec![reason(None, Some("scope.write"), VerdictKind::OutOfScope)],
        ),
        (
            judged(c, "violation", "kill"),
            Some("net.ssh-out"),
            vec![
                reason(Some("net.ssh-out"), None, VerdictKind::Violation),
                reason(None, Some("scope.connect"), VerdictKind::OutOfScope),
            ],
        ),
        (r, None, vec![reason(None, Some("scope.write"), VerdictKind::OutOfScope)]),
    ]
    .into_iter()
    .map(|(event, rule, reasons): (Event, Option<&str>, Vec<AlertReason>)| Alert {
        schema: Cow::Borrowed(ALERT_SCHEMA),
        kind: Cow::Borrowed("alert"),
        id: uuid::Uuid::now_v7(),
        ts: event.ts,
        host: event.host.clone(),
        severity: Cow::Borrowed("high"),
        verdict: Cow::Borrowed(reasons[0].verdict.as_str()),
        action: Action::Alert,
        rule: rule.map(String::from),
        reason: "what was found".into(),
        reasons,
        task: event.task.as_ref().map(|_| task()),
        event,
    })
    .collect()
}

/// The validator's report on `records`, or why it could not run.
fn validate(records: &[Value]) -> Result<Value, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join("target/pyenv/bin/python");
    let script = root.join("tests/ocsf/validate.py");
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = dir.path().join("ocsf.jsonl");
    let lines: Vec<String> = records.iter().map(Value::to_string).collect();
    std::fs::write(&file, lines.join("\n")).map_err(|e| e.to_string())?;
    let out =
        std::process::Command::new(&python).arg(&script).arg(&file).output().map_err(|e| {
            format!("{}: {e} (scripts/setup.sh installs the OCSF validator)", python.display())
        })?;
    let report: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("validator: {e}; it said: {}", String::from_utf8_lossy(&out.stderr)))?;
    Ok(report)
}

#[test]
fn every_record_conforms_to_ocsf_1_3_0() {
    if std::env::var_os("AGENTMON_SKIP_OCSF_SCHEMA").is_some_and(|v| v == "1") {
        eprintln!("AGENTMON_SKIP_OCSF_SCHEMA=1: the OCSF schema check is skipped");
        return;
    }
    let t = task();
    let mut records: Vec<Value> = Vec::new();
    for e in observed() {
        let info = e.task.as_ref().map(|_| &t);
        records.push(event(&e, info).unwrap_or_else(|| panic!("{:?} has no OCSF form", e.kind)));
    }
    records.extend(alerts().iter().map(alert));
    let containers: Vec<&Value> = records.iter().filter_map(|r| r["device"].get("container")).collect();
    assert!(
        containers.len() == 2 && containers.iter().any(|c| c.get("pod_uuid").is_some()),
        "a container record with and without a pod is checked: {containers:?}"
    );
    let report = validate(&records).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report["records"], records.len(), "{report:#}");
    assert_eq!(report["errors"], serde_json::json!([]), "{report:#}");
    for class in [
        "process_activity",
        "file_activity",
        "kernel_activity",
        "event_log",
        "network_activity",
        "detection_finding",
    ] {
        assert!(report["classes"].get(class).is_some(), "no {class} record checked: {report:#}");
    }
}

/// The observables of record `v`, as (name, type_id, value).
fn seen(v: &Value) -> Vec<(String, u64, String)> {
    v["observables"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            let s = |k: &str| o[k].as_str().unwrap_or_default().to_string();
            (s("name"), o["type_id"].as_u64().unwrap_or_default(), s("value"))
        })
        .collect()
}

/// What a SOC pivots on is in every copy: the tool call, the paths, addresses,
/// processes and users as observables, an analytic id on every finding, and the
/// place events were lost.
#[test]
fn every_copy_carries_the_step_and_its_observables() {
    let t = task();
    for e in observed() {
        let v = event(&e, e.task.as_ref().map(|_| &t)).unwrap();
        let obs = seen(&v);
        let has =
            |name: &str, ty: u64, value: &str| obs.iter().any(|o| o == &(name.into(), ty, value.into()));
        assert!(has("device.hostname", 1, "box1"), "{:?}: {obs:?}", e.kind);
        if let (Some(p), false) = (&e.path, matches!(e.kind, Kind::Exec | Kind::MemfdExec)) {
            assert!(has("file.path", 7, p), "{:?}: {obs:?}", e.kind);
        }
        if let Some(Dst::Ip { ip, port }) = &e.dst {
            // (bind and listen's local address is the mapping's dst_endpoint too)
            assert!(has("dst_endpoint.ip", 2, ip), "{:?}: {obs:?}", e.kind);
            assert!(has("dst_endpoint.port", 11, &port.to_string()), "{:?}: {obs:?}", e.kind);
        }
        if e.step.is_some() {
            assert_eq!(v["unmapped"]["step"]["call_id"], "toolu_01", "{v:#}");
            assert_eq!(v["unmapped"]["step"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{v:#}");
            assert_eq!(v["metadata"]["correlation_uid"], "refactor-42", "{v:#}");
        }
    }
    for a in alerts() {
        let v = alert(&a);
        let f = &v["finding_info"];
        assert!(f["analytic"]["uid"].as_str().is_some_and(|u| !u.is_empty()), "{f:#}");
        for r in f["related_analytics"].as_array().into_iter().flatten() {
            assert!(r["uid"].as_str().is_some_and(|u| !u.is_empty()), "{f:#}");
        }
        if a.event.step.is_some() {
            assert_eq!(v["unmapped"]["step"]["tool"], "Bash", "{v:#}");
        }
        if let Some(p) = &a.event.path {
            assert!(seen(&v).iter().any(|o| o.0 == "evidences[0].file.path" && &o.2 == p), "{:?}", seen(&v));
        }
    }
    let log_names: Vec<String> = observed()
        .iter()
        .filter(|e| e.kind == Kind::Loss)
        .map(|e| event(e, None).unwrap()["log_name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        log_names,
        ["agentmon kernel event ring buffer", "agentmon output events.jsonl", "agentmon NATS spool"],
    );
}
