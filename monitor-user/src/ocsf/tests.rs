use std::{borrow::Cow, collections::BTreeMap, sync::Arc};

use serde_json::{Value, json};

use super::*;
use crate::event::{ALERT_SCHEMA, AlertReason};

/// 2026-11-28T15:41:39.607000123Z
const NS: i128 = 1_795_880_499_607_000_123;
const MS: i64 = 1_795_880_499_607;

pub(super) fn ev(kind: Kind) -> Event {
    let mut e = Event::new(kind, Timestamp(NS), "box1".into());
    e.pid = 4242;
    e.tid = 4243;
    e.ppid = Some(4000);
    e.comm = "python3".into();
    e.exe = Some("/usr/bin/python3.12".into());
    e.start = Some(987_654_321);
    e
}

fn map(e: &Event) -> Value {
    event(e, None).unwrap_or_else(|| panic!("{:?} not mapped", e.kind))
}

/// Classification, time, metadata: what every mapped object must have.
fn check_envelope(v: &Value, class_uid: u64, activity_id: u64, uid: &uuid::Uuid) {
    assert_eq!(v["class_uid"], class_uid, "{v:#}");
    assert_eq!(v["category_uid"], class_uid / 1000, "{v:#}");
    assert_eq!(v["activity_id"], activity_id, "{v:#}");
    assert_eq!(v["type_uid"], class_uid * 100 + activity_id, "{v:#}");
    assert!(v["class_name"].is_string() && v["activity_name"].is_string() && v["type_name"].is_string());
    assert_eq!(v["time"], MS);
    assert_eq!(v["metadata"]["version"], "1.3.0");
    assert_eq!(v["metadata"]["uid"], uid.to_string());
    assert_eq!(v["metadata"]["product"]["name"], "agentmon");
    assert_eq!(v["metadata"]["product"]["vendor_name"], "agentmon");
    assert_eq!(v["metadata"]["product"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["severity_id"].is_u64(), "{v:#}");
    assert_eq!(v["device"]["hostname"], "box1");
}

#[test]
fn exec_is_process_launch_by_the_parent() {
    let mut e = ev(Kind::Exec);
    e.path = Some("/srv/repo/run.py".into());
    e.argv = Some(vec!["python3".into(), "run.py".into(), "--fast".into()]);
    let v = map(&e);
    check_envelope(&v, 1007, 1, &e.id);
    assert_eq!(v["type_name"], "Process Activity: Launch");
    let p = &v["process"];
    assert_eq!(p["pid"], 4242);
    assert_eq!(p["tid"], 4243);
    assert_eq!(p["name"], "python3");
    assert_eq!(p["uid"], "4242:987654321");
    assert_eq!(p["cmd_line"], "python3 run.py --fast");
    assert_eq!(p["file"]["path"], "/usr/bin/python3.12");
    assert_eq!(p["file"]["name"], "python3.12");
    assert_eq!(p["file"]["parent_folder"], "/usr/bin");
    assert!(p["file"].get("ext").is_none(), "a version is not an extension");
    assert_eq!(p["file"]["type_id"], 1);
    assert_eq!(p["parent_process"]["pid"], 4000);
    assert_eq!(v["actor"]["process"], json!({"pid": 4000}));
    // The script named in the call is not the executable: kept.
    assert_eq!(v["unmapped"]["path"], "/srv/repo/run.py");
    assert_eq!(v["status_id"], 1);
    assert_eq!(v["severity_id"], 1);
    assert_eq!(v["metadata"]["event_code"], "exec");
    assert_eq!(v["metadata"]["original_time"], "2026-11-28T15:41:39.607000123Z");
    assert_eq!(v["metadata"]["profiles"], json!(["host"]));
    // No verdict: no security control attributes.
    assert!(v.get("action_id").is_none() && v.get("disposition_id").is_none());

    // A failed exec: the file it tried to run; the old image kept.
    let mut f = ev(Kind::Exec);
    f.path = Some("/usr/bin/nmap".into());
    f.error = Some(Cow::Borrowed("EACCES"));
    let v = map(&f);
    check_envelope(&v, 1007, 1, &f.id);
    assert_eq!(v["process"]["file"]["path"], "/usr/bin/nmap");
    assert_eq!(v["unmapped"]["exe"], "/usr/bin/python3.12");
    assert_eq!(v["status_id"], 2);
    assert_eq!(v["status_code"], "EACCES");

    let mut m = ev(Kind::MemfdExec);
    m.exe = Some("/memfd:payload".into());
    let v = map(&m);
    check_envelope(&v, 1007, 1, &m.id);
    assert_eq!(v["process"]["file"]["type_id"], 99);
    assert_eq!(v["metadata"]["event_code"], "memfd_exec");
}

#[test]
fn fork_exit_ptrace_privilege() {
    let f = ev(Kind::Fork);
    let v = map(&f);
    check_envelope(&v, 1007, 1, &f.id);
    assert_eq!(v["process"]["pid"], 4242);
    assert_eq!(v["process"]["parent_process"]["pid"], 4000);
    assert_eq!(v["actor"]["process"]["pid"], 4000);
    assert_eq!(v["actor"]["process"]["name"], "python3");

    let mut x = ev(Kind::Exit);
    x.status = Some(3);
    let v = map(&x);
    check_envelope(&v, 1007, 2, &x.id);
    assert_eq!(v["exit_code"], 3);
    assert_eq!(v["process"]["pid"], 4242);

    let mut k = ev(Kind::Exit);
    k.signal = Some("SIGKILL".into());
    assert_eq!(map(&k)["unmapped"]["signal"], "SIGKILL");

    let mut p = ev(Kind::Ptrace);
    p.syscall = Some(Cow::Borrowed("ptrace"));
    p.detail.insert("request".into(), json!("PTRACE_POKEDATA"));
    p.detail.insert("target_pid".into(), json!(77));
    let v = map(&p);
    check_envelope(&v, 1007, 4, &p.id);
    assert_eq!(v["process"], json!({"pid": 77}));
    assert_eq!(v["actor"]["process"]["pid"], 4242);
    assert_eq!(v["injection_type_id"], 99);
    assert_eq!(v["unmapped"]["detail"]["request"], "PTRACE_POKEDATA");
    p.detail.insert("request".into(), json!("PTRACE_ATTACH"));
    check_envelope(&map(&p), 1007, 3, &p.id);
    p.detail.insert("request".into(), json!("PTRACE_TRACEME"));
    p.detail.insert("target_pid".into(), json!(0));
    assert_eq!(map(&p)["process"], json!({"pid": 4000}));

    let mut s = ev(Kind::Privilege);
    s.syscall = Some(Cow::Borrowed("setuid"));
    s.detail.insert("id".into(), json!(0));
    let v = map(&s);
    check_envelope(&v, 1007, 5, &s.id);
    assert_eq!(v["unmapped"]["detail"]["id"], 0);
    assert_eq!(v["unmapped"]["syscall"], "setuid");
    s.syscall = Some(Cow::Borrowed("capset"));
    let v = map(&s);
    check_envelope(&v, 1007, 99, &s.id);
    assert_eq!(v["activity_name"], "Set Capabilities");
}

#[test]
fn file_kinds_map_to_file_system_activity() {
    let cases: &[(Kind, u64, u64, &[&str])] = &[
        (Kind::FileCreate, 1, 1, &["O_CREAT"]),
        (Kind::DirCreate, 1, 2, &[]),
        (Kind::FileLink, 1, 7, &["symlink"]),
        (Kind::SensitiveRead, 2, 0, &[]),
        (Kind::FileWrite, 3, 0, &["O_WRONLY"]),
        (Kind::FileTruncate, 3, 0, &[]),
        (Kind::FileDelete, 4, 0, &[]),
        (Kind::FileDelete, 4, 2, &["AT_REMOVEDIR"]),
        (Kind::FileRename, 5, 0, &[]),
        (Kind::FileChmod, 7, 0, &[]),
        (Kind::FileChown, 7, 0, &[]),
        (Kind::FileXattr, 6, 0, &[]),
    ];
    for (kind, activity, type_id, flags) in cases {
        let mut e = ev(*kind);
        e.path = Some("/home/a/.ssh/id_ed25519.pub".into());
        e.flags = flags.iter().map(|f| Cow::Owned(f.to_string())).collect();
        let v = map(&e);
        check_envelope(&v, 1001, *activity, &e.id);
        let f = &v["file"];
        assert_eq!(f["path"], "/home/a/.ssh/id_ed25519.pub", "{kind:?}");
        assert_eq!(f["name"], "id_ed25519.pub");
        assert_eq!(f["parent_folder"], "/home/a/.ssh");
        assert_eq!(f["ext"], "pub");
        assert_eq!(f["type_id"], *type_id, "{kind:?} {flags:?}");
        assert_eq!(v["actor"]["process"]["pid"], 4242);
        assert_eq!(v["actor"]["process"]["file"]["path"], "/usr/bin/python3.12");
        if !flags.is_empty() {
            assert_eq!(v["unmapped"]["flags"], json!(flags));
        }
    }

    let mut r = ev(Kind::FileRename);
    r.path = Some("/tmp/x".into());
    r.new_path = Some("/home/a/.bashrc".into());
    let v = map(&r);
    assert_eq!(v["file"]["path"], "/tmp/x");
    assert_eq!(v["file_result"]["path"], "/home/a/.bashrc");
    assert_eq!(v["file_result"]["name"], ".bashrc");
    assert!(v["file_result"].get("ext").is_none());
    assert_eq!(v["message"], "file_rename /tmp/x -> /home/a/.bashrc");

    let mut c = ev(Kind::FileChown);
    c.path = Some("/srv/f".into());
    c.detail.insert("uid".into(), json!(0));
    c.detail.insert("gid".into(), json!(-1));
    let v = map(&c);
    assert_eq!(v["file_result"]["owner"], json!({"uid": "0"}));
    assert_eq!(v["unmapped"]["detail"]["gid"], -1);
    c.detail.insert("uid".into(), json!(-1));
    assert!(map(&c).get("file_result").is_none());

    let mut m = ev(Kind::FileChmod);
    m.path = Some("/srv/f".into());
    m.mode = Some("4755".into());
    assert_eq!(map(&m)["unmapped"]["mode"], "4755");

    let mut l = ev(Kind::FileLink);
    l.path = Some("/srv/link".into());
    l.new_path = Some("../etc/shadow".into());
    assert_eq!(map(&l)["unmapped"]["new_path"], "../etc/shadow");

    // A failed call.
    let mut w = ev(Kind::FileWrite);
    w.path = Some("/etc/hosts".into());
    w.error = Some(Cow::Borrowed("EACCES"));
    w.ret = Some(-13);
    let v = map(&w);
    assert_eq!(v["status_id"], 2);
    assert_eq!(v["status"], "Failure");
    assert_eq!(v["status_code"], "EACCES");
    assert_eq!(v["unmapped"]["ret"], -13);
    // The root folder.
    let mut d = ev(Kind::FileDelete);
    d.path = Some("/x".into());
    assert_eq!(map(&d)["file"]["parent_folder"], "/");
}

#[test]
fn network_kinds_map_to_network_activity() {
    let mut c = ev(Kind::Connect);
    c.dst = Some(Dst::Ip { ip: "93.184.216.34".into(), port: 443 });
    c.proto = Some(Cow::Borrowed("tcp"));
    let v = map(&c);
    check_envelope(&v, 4001, 1, &c.id);
    assert_eq!(v["dst_endpoint"], json!({"ip": "93.184.216.34", "port": 443}));
    let ci = &v["connection_info"];
    assert_eq!(ci["protocol_name"], "tcp");
    assert_eq!(ci["protocol_num"], 6);
    assert_eq!(ci["direction_id"], 2);
    assert_eq!(ci["protocol_ver_id"], 4);
    assert!(ci.get("boundary_id").is_none());
    assert_eq!(v["actor"]["process"]["pid"], 4242);
    assert_eq!(v["message"], "connect 93.184.216.34:443");

    c.error = Some(Cow::Borrowed("ECONNREFUSED"));
    let v = map(&c);
    check_envelope(&v, 4001, 5, &c.id);
    assert_eq!(v["status_id"], 2);
    c.error = Some(Cow::Borrowed("ENETUNREACH"));
    check_envelope(&map(&c), 4001, 4, &c.id);
    c.error = Some(Cow::Borrowed("EINPROGRESS"));
    let v = map(&c);
    check_envelope(&v, 4001, 1, &c.id);
    assert_eq!(v["status_id"], 99);

    let mut u = ev(Kind::Connect);
    u.dst = Some(Dst::Unix { unix: "/run/docker.sock".into() });
    u.proto = Some(Cow::Borrowed("unix-stream"));
    let v = map(&u);
    check_envelope(&v, 4001, 1, &u.id);
    assert_eq!(v["dst_endpoint"], json!({"name": "/run/docker.sock"}));
    assert_eq!(v["unmapped"]["unix"], "/run/docker.sock");
    assert_eq!(v["unmapped"]["proto"], "unix-stream");
    assert_eq!(v["connection_info"]["boundary_id"], 1);
    assert!(v["connection_info"].get("protocol_name").is_none());

    let mut s = ev(Kind::Send);
    s.dst = Some(Dst::Ip { ip: "::1".into(), port: 53 });
    s.proto = Some(Cow::Borrowed("udp"));
    let v = map(&s);
    check_envelope(&v, 4001, 6, &s.id);
    assert_eq!(v["dst_endpoint"]["ip"], "::1");
    assert_eq!(v["dst_endpoint"]["port"], 53);
    assert_eq!(v["connection_info"]["protocol_num"], 17);
    assert_eq!(v["connection_info"]["protocol_ver_id"], 6);
    assert_eq!(v["connection_info"]["boundary"], "Localhost");

    let mut l = ev(Kind::Listen);
    l.dst = Some(Dst::Ip { ip: "0.0.0.0".into(), port: 8080 });
    l.proto = Some(Cow::Borrowed("tcp"));
    let v = map(&l);
    check_envelope(&v, 4001, 7, &l.id);
    assert_eq!(v["dst_endpoint"]["port"], 8080);
    assert_eq!(v["connection_info"]["direction_id"], 1);
    l.kind = Kind::Bind;
    let v = map(&l);
    check_envelope(&v, 4001, 99, &l.id);
    assert_eq!(v["activity_name"], "Bind");
    assert_eq!(v["connection_info"]["direction_id"], 0);
}

#[test]
fn io_uring_and_bpf_are_kernel_activity_and_loss_is_event_log_activity() {
    let mut s = ev(Kind::IoUring);
    s.flags = vec![Cow::Borrowed("setup")];
    let v = map(&s);
    check_envelope(&v, 1003, 1, &s.id);
    assert_eq!(v["kernel"]["name"], "io_uring");
    assert_eq!(v["kernel"]["type_id"], 2);
    let mut q = ev(Kind::IoUring);
    q.flags = vec![Cow::Borrowed("submit")];
    q.detail.insert("opcode".into(), json!("IORING_OP_OPENAT"));
    let v = map(&q);
    check_envelope(&v, 1003, 4, &q.id);
    assert_eq!(v["kernel"]["name"], "IORING_OP_OPENAT");
    let mut b = ev(Kind::Bpf);
    b.syscall = Some(Cow::Borrowed("bpf"));
    b.detail.insert("cmd".into(), json!("BPF_PROG_LOAD"));
    let v = map(&b);
    check_envelope(&v, 1003, 4, &b.id);
    assert_eq!(v["kernel"]["name"], "BPF_PROG_LOAD");
    assert_eq!(v["kernel"]["system_call"], "bpf");

    let mut l = ev(Kind::Loss);
    l.lost = Some(BTreeMap::from([("open".to_string(), 120), ("undecodable".to_string(), 3)]));
    let v = map(&l);
    check_envelope(&v, 1008, 99, &l.id);
    assert_eq!(v["count"], 123);
    assert_eq!(v["severity_id"], 3);
    assert_eq!(v["status_id"], 2);
    assert_eq!(v["unmapped"]["lost"]["open"], 120);
}

#[test]
fn control_records_are_not_mapped() {
    for kind in [Kind::Action, Kind::ApprovalRequest, Kind::Approval, Kind::TaskStart, Kind::TaskEnd] {
        assert_eq!(event(&ev(kind), None), None, "{kind:?}");
    }
}

pub(super) fn task() -> TaskInfo {
    TaskInfo {
        id: "refactor-42".into(),
        agent: Some("spiffe://example.org/agent/coder".into()),
        principal: Some("alice@example.org".into()),
        mode: Cow::Borrowed("execute"),
        parents: vec!["root-1".into()],
    }
}

#[test]
fn task_identity_and_verdict() {
    let mut e = ev(Kind::FileWrite);
    e.path = Some("/etc/hosts".into());
    e.task = Some("refactor-42".into());
    e.task_chain = Some(Arc::from(vec![Arc::from("root-1")]));
    e.unsigned = true;
    e.verdict = Some(Cow::Borrowed("out_of_scope"));
    e.action = Some(Cow::Borrowed("alert"));
    e.reason = Some("scope.write: /etc/hosts is outside scope.write".into());
    let t = task();
    let v = event(&e, Some(&t)).unwrap();
    let a = &v["actor"];
    assert_eq!(a["user"], json!({"name": "alice@example.org"}));
    assert_eq!(a["app_uid"], "spiffe://example.org/agent/coder");
    assert_eq!(a["session"], json!({"uid": "refactor-42"}));
    assert_eq!(a["process"]["pid"], 4242);
    assert_eq!(v["metadata"]["correlation_uid"], "refactor-42");
    assert_eq!(v["metadata"]["profiles"], json!(["host", "security_control"]));
    let un = &v["unmapped"];
    assert_eq!(un["task"], "refactor-42");
    assert_eq!(un["task_chain"], json!(["root-1"]));
    assert_eq!(un["unsigned"], json!(true));
    assert_eq!(un["agent"], "spiffe://example.org/agent/coder");
    assert_eq!(un["principal"], "alice@example.org");
    assert_eq!(un["task_mode"], "execute");
    assert_eq!(un["verdict"], "out_of_scope");
    assert_eq!(un["action"], "alert");
    assert_eq!(v["severity_id"], 3);
    assert_eq!(v["action_id"], 1);
    assert_eq!(v["disposition_id"], 19);
    assert_eq!(v["disposition"], "Alert");
    let auth = &v["authorizations"][0];
    assert_eq!(auth["decision"], "out_of_scope");
    assert_eq!(auth["policy"]["name"], "scope.write");
    assert_eq!(auth["policy"]["desc"], "scope.write: /etc/hosts is outside scope.write");

    // Without the TaskInfo the event still names its task.
    let v = event(&e, None).unwrap();
    assert_eq!(v["actor"]["session"]["uid"], "refactor-42");
    assert!(v["actor"].get("user").is_none());

    // Blocked by enforcement; approved and refused by an approver; in scope.
    e.verdict = Some(Cow::Borrowed("denied"));
    e.error = Some(Cow::Borrowed("EACCES"));
    let v = event(&e, None).unwrap();
    assert_eq!((v["action_id"].clone(), v["disposition_id"].clone()), (json!(2), json!(2)));
    assert_eq!(v["action"], "Denied");
    assert_eq!(v["disposition"], "Blocked");
    e.verdict = Some(Cow::Borrowed("needs_approval"));
    e.detail.insert("decision".into(), json!("approved"));
    e.error = None;
    let v = event(&e, None).unwrap();
    assert_eq!((v["action_id"].clone(), v["disposition_id"].clone()), (json!(1), json!(8)));
    assert_eq!(v["severity_id"], 2);
    e.detail.insert("decision".into(), json!("timeout"));
    assert_eq!(event(&e, None).unwrap()["disposition_id"], 2);
    e.detail.clear();
    e.verdict = Some(Cow::Borrowed("in_scope"));
    e.reason = None;
    let v = event(&e, None).unwrap();
    assert_eq!((v["action_id"].clone(), v["disposition_id"].clone()), (json!(1), json!(1)));
    assert_eq!(v["severity_id"], 1);
    assert_eq!(v["authorizations"], json!([{"decision": "in_scope"}]));
    e.verdict = Some(Cow::Borrowed("violation"));
    e.rule = Some("cred-ssh-key".into());
    let v = event(&e, None).unwrap();
    assert_eq!(v["severity_id"], 4);
    assert_eq!(v["authorizations"][0]["policy"]["uid"], "cred-ssh-key");
    assert_eq!(v["authorizations"][0]["policy"]["group"]["name"], "rules");
}

fn alert_of(e: Event, severity: &'static str) -> Alert {
    Alert {
        schema: Cow::Borrowed(ALERT_SCHEMA),
        kind: Cow::Borrowed("alert"),
        id: uuid::Uuid::now_v7(),
        ts: e.ts,
        host: e.host.clone(),
        severity: Cow::Borrowed(severity),
        verdict: Cow::Borrowed("violation"),
        action: crate::policy::Action::Kill,
        rule: Some("cred-ssh-key".into()),
        reason: "reads an SSH private key".into(),
        reasons: vec![
            AlertReason {
                verdict: crate::policy::VerdictKind::Violation,
                action: crate::policy::Action::Kill,
                severity: crate::policy::Severity::parse(severity).unwrap_or(crate::policy::Severity::High),
                rule: Some("cred-ssh-key".into()),
                clause: None,
                message: "reads an SSH private key".into(),
            },
            AlertReason {
                verdict: crate::policy::VerdictKind::OutOfScope,
                action: crate::policy::Action::Alert,
                severity: crate::policy::Severity::Medium,
                rule: None,
                clause: Some(Cow::Borrowed("scope.read")),
                message: "/home/a/.ssh/id_ed25519 is outside scope.read".into(),
            },
        ],
        task: Some(task()),
        event: e,
    }
}

#[test]
fn alert_is_a_detection_finding_with_evidence() {
    let mut e = ev(Kind::SensitiveRead);
    e.path = Some("/home/a/.ssh/id_ed25519".into());
    e.task = Some("refactor-42".into());
    e.verdict = Some(Cow::Borrowed("violation"));
    e.action = Some(Cow::Borrowed("kill"));
    e.rule = Some("cred-ssh-key".into());
    e.reason = Some("reads an SSH private key".into());
    let a = alert_of(e, "high");
    let v = alert(&a);
    check_envelope(&v, 2004, 1, &a.id);
    assert_eq!(v["type_uid"], 200401);
    assert_eq!(v["category_name"], "Findings");
    assert_eq!(v["severity_id"], 4);
    assert_eq!(v["severity"], "High");
    assert_eq!(v["status_id"], 1);
    assert_eq!(v["metadata"]["event_code"], "alert");
    assert_eq!(v["metadata"]["log_name"], "agentmon.alert/1");
    assert_eq!(v["metadata"]["correlation_uid"], "refactor-42");
    assert_eq!(v["action_id"], 1);
    assert_eq!(v["disposition_id"], 19);
    assert_eq!(v["authorizations"].as_array().unwrap().len(), 2);
    assert_eq!(v["authorizations"][1]["policy"]["name"], "scope.read");

    let fi = &v["finding_info"];
    assert_eq!(fi["uid"], a.id.to_string());
    assert_eq!(fi["title"], "cred-ssh-key");
    assert_eq!(fi["desc"], "reads an SSH private key");
    assert_eq!(fi["types"], json!(["violation"]));
    assert_eq!(fi["created_time"], MS);
    assert_eq!(fi["analytic"]["uid"], "cred-ssh-key");
    assert_eq!(fi["analytic"]["type_id"], 1);
    assert_eq!(fi["analytic"]["type"], "Rule");
    assert_eq!(fi["related_analytics"][0]["name"], "scope.read");
    assert_eq!(fi["related_events"][0]["uid"], a.event.id.to_string());
    assert_eq!(fi["related_events"][0]["type_uid"], 100102);

    let ev0 = &v["evidences"][0];
    assert_eq!(ev0["file"]["path"], "/home/a/.ssh/id_ed25519");
    assert_eq!(ev0["process"]["pid"], 4242);
    assert_eq!(ev0["actor"]["process"]["file"]["path"], "/usr/bin/python3.12");
    assert_eq!(ev0["actor"]["app_uid"], "spiffe://example.org/agent/coder");
    assert_eq!(v["actor"]["user"]["name"], "alice@example.org");

    let un = &v["unmapped"];
    assert_eq!(un["event_id"], a.event.id.to_string());
    assert_eq!(un["event_kind"], "sensitive_read");
    assert_eq!(un["verdict"], "violation");
    assert_eq!(un["action"], "kill");
    assert_eq!(un["reasons"][1]["clause"], "scope.read");
    assert_eq!(un["task"], "refactor-42");
    assert_eq!(un["agent"], "spiffe://example.org/agent/coder");
}

#[test]
fn alert_evidence_for_network_rename_and_scope_clauses() {
    let mut c = ev(Kind::Connect);
    c.dst = Some(Dst::Ip { ip: "10.0.0.9".into(), port: 22 });
    c.proto = Some(Cow::Borrowed("tcp"));
    let mut a = alert_of(c, "critical");
    a.rule = None;
    a.reasons.remove(0);
    a.reasons[0].clause = Some(Cow::Borrowed("scope.connect"));
    let v = alert(&a);
    assert_eq!(v["severity_id"], 5);
    assert_eq!(v["finding_info"]["title"], "violation: scope.connect");
    assert_eq!(v["finding_info"]["analytic"]["name"], "scope.connect");
    assert_eq!(v["finding_info"]["analytic"]["category"], "task scope");
    assert_eq!(v["evidences"][0]["dst_endpoint"], json!({"ip": "10.0.0.9", "port": 22}));
    assert_eq!(v["evidences"][0]["connection_info"]["protocol_name"], "tcp");
    assert_eq!(v["finding_info"]["related_events"][0]["type_uid"], 400101);

    let mut r = ev(Kind::FileRename);
    r.path = Some("/tmp/x".into());
    r.new_path = Some("/home/a/.bashrc".into());
    let mut a = alert_of(r, "whatever");
    a.task = None;
    let v = alert(&a);
    assert_eq!(v["severity_id"], 99);
    assert_eq!(v["severity"], "whatever");
    assert_eq!(v["evidences"][0]["file"]["path"], "/tmp/x");
    assert_eq!(v["evidences"][1]["file"]["path"], "/home/a/.bashrc");
    assert!(v["unmapped"].get("task").is_none());
}

/// Activity ids each class allows in OCSF 1.3.0 (0 Unknown and 99 Other included).
fn allowed(class_uid: u64) -> std::ops::RangeInclusive<u64> {
    match class_uid {
        1001 => 0..=14,
        1003 => 0..=4,
        1007 => 0..=5,
        1008 => 0..=10,
        2004 => 0..=3,
        4001 => 0..=7,
        other => panic!("unexpected class {other}"),
    }
}

#[test]
fn every_kind_maps_or_is_documented_as_unmapped() {
    use Kind::*;
    let all = Kind::ALL;
    for kind in all {
        let mut e = ev(kind);
        e.path = Some("/p/q".into());
        e.dst = Some(Dst::Ip { ip: "10.1.2.3".into(), port: 80 });
        let Some(v) = event(&e, Some(&task())) else {
            assert!(
                matches!(kind, Action | ApprovalRequest | Approval | TaskStart | TaskEnd | Step | Rules),
                "{kind:?}"
            );
            continue;
        };
        let class = v["class_uid"].as_u64().unwrap();
        let activity = v["activity_id"].as_u64().unwrap();
        assert!(activity == 99 || allowed(class).contains(&activity), "{kind:?}: {activity}");
        check_envelope(&v, class, activity, &e.id);
        assert_eq!(v["metadata"]["event_code"], kind.as_str());
        // Required attributes of the class (and of the System category).
        let required: &[&str] = match class {
            1001 => &["file", "actor", "device"],
            1003 => &["kernel", "actor", "device"],
            1007 => &["process", "actor", "device"],
            1008 => &["actor", "device"],
            4001 => &["dst_endpoint"],
            _ => unreachable!(),
        };
        for k in required {
            assert!(v.get(*k).is_some(), "{kind:?} lacks {k}");
        }
        assert!(v["actor"]["process"]["pid"].is_u64(), "{kind:?}");
        // The alert for it too.
        let a = alert_of(e, "medium");
        let f = alert(&a);
        check_envelope(&f, 2004, 1, &a.id);
        assert!(!f["evidences"].as_array().unwrap().is_empty());
        assert_eq!(f["finding_info"]["related_events"][0]["type_uid"], v["type_uid"]);
    }
}

/// The container a process ran in is the OCSF device's (`device.container`, with the
/// pod's uid and the orchestrator for a pod's container); none without one.
#[test]
fn the_container_and_pod_are_the_devices() {
    let mut e = ev(Kind::FileCreate);
    e.path = Some("/w/x".into());
    assert!(map(&e)["device"].get("container").is_none());
    assert_eq!(map(&e)["metadata"]["profiles"], json!(["host"]));
    e.container =
        Some(Arc::new(crate::container::Container { id: "3f1c".into(), runtime: "containerd".into() }));
    e.pod = Some(Arc::new(crate::container::Pod {
        uid: "1b4e28ba-2fa1-11d2-883f-0016d3cca427".into(),
        qos: "burstable".into(),
    }));
    assert_eq!(
        map(&e)["device"]["container"],
        json!({"uid": "3f1c", "runtime": "containerd", "pod_uuid": "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
               "orchestrator": "Kubernetes"})
    );
    // OCSF 1.3.0 has device.container in the container profile only.
    assert_eq!(map(&e)["metadata"]["profiles"], json!(["host", "container"]));
    e.pod = None;
    assert_eq!(map(&e)["device"]["container"], json!({"uid": "3f1c", "runtime": "containerd"}));
    // The cgroup path, which no OCSF object holds, is kept under its native name.
    e.cgroup = Some(Arc::from("/kubepods/burstable/pod1b4e28ba/3f1c"));
    assert_eq!(map(&e)["unmapped"]["cgroup"], json!("/kubepods/burstable/pod1b4e28ba/3f1c"));
}
