//! What-if tests: rules and manifests applied to recorded events again.

use std::borrow::Cow;

use super::{
    tests::{alert_for, ev, line, run_to_string, temp_file, write_ev},
    *,
};
use crate::event::{AlertReason, Kind};

const RULE: &str = r#"
rules:
  - id: test.secret-write
    description: A file under /srv/secret was written
    severity: high
    match:
      kinds: [file_write]
      paths: ["/srv/secret/**"]
    action: alert
    examples:
      match: [{kind: file_write, path: /srv/secret/a}]
      no_match: [{kind: file_write, path: /srv/a}]
"#;

fn rules_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("test.yaml"), RULE).unwrap();
    d
}

#[tokio::test]
async fn what_if_flags_what_new_rules_match() {
    let hit = write_ev(10, 1, "/srv/secret/key");
    let miss = write_ev(10, 2, "/srv/public/x");
    // Recorded out of scope by the task's scope: kept without a task file.
    let mut scoped = write_ev(10, 3, "/etc/hosts");
    scoped.verdict = Some(Cow::Borrowed("out_of_scope"));
    scoped.action = Some(Cow::Borrowed("alert"));
    scoped.reason = Some("scope.write: /etc/hosts is outside scope.write".into());
    let f = temp_file(&[&hit, &miss, &scoped].map(line).concat());
    let dir = rules_dir();
    let mut args = ReplayArgs::new(f.path().to_str().unwrap());
    args.rules = Some(dir.path().to_path_buf());
    let out = run_to_string(args.clone()).await.unwrap();
    let want = "2026-11-28 15:00:01.000 file_write /srv/secret/key: was in_scope/none -> now violation/alert (test.secret-write)";
    assert!(out.starts_with(want), "{out}");
    assert!(
        out.ends_with("what-if: 3 events judged again, 1 changed: 1 newly flagged, 0 no longer flagged\n"),
        "{out}"
    );

    args.format = ReplayFormat::Json;
    let out = run_to_string(args.clone()).await.unwrap();
    let v: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(v.len(), 2);
    assert_eq!(v[0]["id"], hit.id.to_string());
    assert_eq!(v[0]["was"]["verdict"], "in_scope");
    assert_eq!(v[0]["now"]["rule"], "test.secret-write");
    assert_eq!(v[1]["summary"]["newly_flagged"], 1);

    // With a manifest, the scope is judged again too: /etc/hosts is still outside,
    // and now so is /srv/public.
    let manifest = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(manifest.path(), "id: t1\nmode: execute\nscope:\n  write: [\"/srv/secret/**\"]\n")
        .unwrap();
    args.task_file = Some(manifest.path().to_path_buf());
    args.format = ReplayFormat::Table;
    let out = run_to_string(args.clone()).await.unwrap();
    assert!(out.contains("/srv/public/x: was in_scope/none -> now out_of_scope/alert\n"), "{out}");
    assert!(out.ends_with("2 changed: 2 newly flagged, 0 no longer flagged\n"), "{out}");

    args.format = ReplayFormat::Tree;
    let out = run_to_string(args).await.unwrap();
    assert!(out.contains("file_write /srv/public/x  out_of_scope/alert (-)  (was in_scope/none)"), "{out}");
}

#[test]
fn what_if_rebuilds_the_process_context() {
    // A rule on the parent's executable needs the process table the live run had.
    let rule = r#"
rules:
  - id: test.curl-from-shell
    description: curl run by a shell
    severity: medium
    match:
      kinds: [exec]
      exe: ["/usr/bin/curl"]
      parent_exe: ["/usr/bin/bash"]
    action: alert
    examples:
      match: [{kind: exec, exe: /usr/bin/curl, parent_exe: /usr/bin/bash}]
      no_match: [{kind: exec, exe: /usr/bin/curl}]
"#;
    let rules =
        crate::policy::RuleSet::from_texts(std::iter::once((std::path::Path::new("r.yaml"), rule)), vec![])
            .unwrap();
    let mut sh = ev(Kind::Exec, 0, 100, "t1");
    sh.exe = Some("/usr/bin/bash".into());
    let mut fork = ev(Kind::Fork, 1, 101, "t1");
    fork.ppid = Some(100);
    fork.exe = sh.exe.clone();
    let mut curl = ev(Kind::Exec, 2, 101, "t1");
    curl.exe = Some("/usr/bin/curl".into());
    let mut lone = ev(Kind::Exec, 3, 300, "t1");
    lone.exe = Some("/usr/bin/curl".into());
    let rec = Recording { events: vec![sh, fork, curl, lone], ..Default::default() };
    let now = whatif::rejudge(whatif::Policy { rules, task: None }, &rec);
    let rules: Vec<_> = now.iter().map(|e| e.rule.as_deref()).collect();
    assert_eq!(rules, [None, None, Some("test.curl-from-shell"), None]);
}

#[test]
fn what_if_with_the_recorded_rules_changes_nothing() {
    // Recorded under the shipped rules with a task whose manifest is not at hand: the
    // stand-ins give the rules the scope's finding and the task's root back.
    let rules =
        whatif::load_rules(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules")).unwrap();
    let mut start = ev(Kind::TaskStart, 0, 100, "t1");
    (start.verdict, start.action, start.start) = (None, None, None);
    let mut root = ev(Kind::Exec, 1, 100, "t1");
    root.exe = Some("/usr/bin/python3".into());
    let mut fork = ev(Kind::Fork, 2, 101, "t1");
    (fork.ppid, fork.exe) = (Some(100), root.exe.clone());
    let mut shell = ev(Kind::Exec, 3, 101, "t1");
    shell.exe = Some("/usr/bin/bash".into());
    (shell.verdict, shell.action, shell.rule) =
        (Some("violation".into()), Some("alert".into()), Some("exec.shell-from-agent".into()));
    let mut hosts = write_ev(101, 4, "/etc/hosts");
    (hosts.verdict, hosts.action, hosts.rule) =
        (Some("violation".into()), Some("alert".into()), Some("scope.write-outside".into()));
    let mut alert = alert_for(&hosts, "medium");
    alert.reasons.push(AlertReason {
        verdict: crate::policy::VerdictKind::OutOfScope,
        action: crate::policy::Action::Alert,
        severity: crate::policy::Severity::Medium,
        rule: None,
        clause: Some("scope.write".into()),
        message: "/etc/hosts is outside scope.write".into(),
    });
    let rec = Recording {
        events: vec![start, root, fork, shell, hosts],
        alerts: vec![alert],
        ..Default::default()
    };
    let now = whatif::rejudge(whatif::Policy { rules, task: None }, &rec);
    for (w, n) in rec.events.iter().zip(&now) {
        assert_eq!(whatif::Judged::of(w).text(), whatif::Judged::of(n).text(), "{:?}", w.kind);
    }
}
