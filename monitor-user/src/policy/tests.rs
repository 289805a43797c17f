//! Table-driven engine tests: modes, scopes, rules, globs, resolved paths,
//! IPv4-mapped IPv6, ports and expiry. And every shipped rule's examples.

use std::{path::Path, sync::Arc};

use super::*;
use crate::{
    event::{Dst, Event, Kind, Timestamp},
    task::{self, Task},
};

const T0: Timestamp = Timestamp(1_800_000_000_000_000_000);

fn task(yaml: &str) -> Task {
    task::parse(yaml, Path::new("task.yaml"), T0).unwrap()
}

const EXECUTE: &str = r#"
id: t-exec
mode: execute
expires_in: 1h
scope:
  read: ["/srv/repo/**"]
  write: ["/srv/repo/**", "/tmp/scratch-*"]
  delete: ["/srv/repo/build/**"]
  exec: ["/usr/bin/git", "/usr/bin/python3*"]
  connect: ["127.0.0.1:8080", "10.0.0.0/8:443", "[fd00::/8]:443", "unix:/run/app/*.sock"]
  listen: ["127.0.0.1:9000-9100"]
approval_required: [rename]
"#;

fn ev(kind: Kind) -> Event {
    let mut e = Event::new(kind, Timestamp(T0.0 + 1_000_000_000), Arc::from("h"));
    e.pid = 42;
    e.comm = "agent".into();
    e
}

fn path(kind: Kind, p: &str) -> Event {
    let mut e = ev(kind);
    e.path = Some(p.into());
    e
}

fn net(kind: Kind, ip: &str, port: u16) -> Event {
    let mut e = ev(kind);
    e.dst = Some(Dst::Ip { ip: ip.into(), port });
    e
}

fn judge(engine: &Engine, t: Option<&Task>, e: &Event) -> Verdict {
    let cx = Ctx { task: t, ..Default::default() };
    engine.judge(e, &cx, &mut Windows::default())
}

fn clause(v: &Verdict) -> Option<&'static str> {
    v.reasons.first().and_then(|r| r.clause)
}

#[test]
fn scope_table() {
    let exec = task(EXECUTE);
    let read =
        task("id: t-read\nmode: read\nscope:\n  read: [\"/srv/repo/**\"]\n  exec: [\"/usr/bin/git\"]\n");
    let propose = task("id: t-prop\nmode: propose\nscope:\n  propose_dir: /srv/proposals/t\n");
    let expired =
        task("id: t-old\nmode: execute\nexpires_at: 2020-01-01T00:00:00Z\nscope:\n  write: [\"/**\"]\n");
    let engine = Engine::default();
    use VerdictKind::*;
    let mut rename = path(Kind::FileRename, "/srv/repo/a.rs");
    rename.new_path = Some("/srv/repo/b.rs".into());
    let mut rename_out = rename.clone();
    rename_out.new_path = Some("/etc/b.rs".into());
    let mut exec_git = ev(Kind::Exec);
    exec_git.exe = Some("/usr/bin/git".into());
    let mut exec_curl = ev(Kind::Exec);
    exec_curl.exe = Some("/usr/bin/curl".into());
    let mut unix_ok = ev(Kind::Connect);
    unix_ok.dst = Some(Dst::Unix { unix: "/run/app/api.sock".into() });
    let mut unix_bad = ev(Kind::Connect);
    unix_bad.dst = Some(Dst::Unix { unix: "/var/run/docker.sock".into() });
    let cases: Vec<(&str, &Task, Event, VerdictKind, Option<&str>)> = vec![
        ("write in scope", &exec, path(Kind::FileWrite, "/srv/repo/src/main.rs"), InScope, None),
        ("scope dir itself", &exec, path(Kind::DirCreate, "/srv/repo"), InScope, None),
        ("write outside", &exec, path(Kind::FileWrite, "/etc/passwd"), OutOfScope, Some("scope.write")),
        (
            "sibling prefix is not inside",
            &exec,
            path(Kind::FileCreate, "/srv/repository/x"),
            OutOfScope,
            Some("scope.write"),
        ),
        ("single-star glob", &exec, path(Kind::FileCreate, "/tmp/scratch-1"), InScope, None),
        (
            "single star stops at /",
            &exec,
            path(Kind::FileCreate, "/tmp/scratch-1/x"),
            OutOfScope,
            Some("scope.write"),
        ),
        ("delete in scope", &exec, path(Kind::FileDelete, "/srv/repo/build/x.o"), InScope, None),
        (
            "delete outside delete scope",
            &exec,
            path(Kind::FileDelete, "/srv/repo/src/main.rs"),
            OutOfScope,
            Some("scope.delete"),
        ),
        ("rename needs approval", &exec, rename.clone(), NeedsApproval, Some("approval_required")),
        ("rename out of scope beats approval", &exec, rename_out, OutOfScope, Some("scope.write")),
        ("sensitive read in scope", &exec, path(Kind::SensitiveRead, "/srv/repo/.env"), InScope, None),
        (
            // A file in scope.read by its path that the kernel refused all the same.
            "sensitive read refused for its file",
            &exec,
            {
                let mut e = path(Kind::SensitiveRead, "/srv/repo/.env");
                e.flags.push(crate::event::REFUSED_FOR_FILE.into());
                e
            },
            OutOfScope,
            Some("scope.read"),
        ),
        (
            "sensitive read outside",
            &exec,
            path(Kind::SensitiveRead, "/root/.aws/credentials"),
            OutOfScope,
            Some("scope.read"),
        ),
        ("exec allowed", &exec, exec_git.clone(), InScope, None),
        ("exec not allowed", &exec, exec_curl.clone(), OutOfScope, Some("scope.exec")),
        ("connect allowed", &exec, net(Kind::Connect, "127.0.0.1", 8080), InScope, None),
        (
            // A sendmmsg's destinations past those the kernel records: unknown.
            "sendmmsg destinations unread",
            &exec,
            {
                let mut e = ev(Kind::Send);
                e.flags.push("truncated".into());
                e
            },
            OutOfScope,
            Some("scope.connect"),
        ),
        ("send with no destination", &exec, ev(Kind::Send), InScope, None),
        (
            "connect wrong port",
            &exec,
            net(Kind::Connect, "127.0.0.1", 8081),
            OutOfScope,
            Some("scope.connect"),
        ),
        ("cidr", &exec, net(Kind::Connect, "10.20.30.40", 443), InScope, None),
        (
            "v4-mapped v6 inside a v4 cidr",
            &exec,
            net(Kind::Connect, "::ffff:10.20.30.40", 443),
            InScope,
            None,
        ),
        (
            "v4-mapped v6 outside",
            &exec,
            net(Kind::Send, "::ffff:8.8.8.8", 53),
            OutOfScope,
            Some("scope.connect"),
        ),
        ("v6 cidr", &exec, net(Kind::Connect, "fd12::1", 443), InScope, None),
        ("unix allowed", &exec, unix_ok, InScope, None),
        ("unix not allowed", &exec, unix_bad, OutOfScope, Some("scope.connect")),
        ("listen in range", &exec, net(Kind::Listen, "127.0.0.1", 9050), InScope, None),
        ("listen outside", &exec, net(Kind::Listen, "0.0.0.0", 9050), OutOfScope, Some("scope.listen")),
        ("ephemeral bind", &exec, net(Kind::Bind, "0.0.0.0", 0), InScope, None),
        ("ptrace is never declarable", &exec, ev(Kind::Ptrace), OutOfScope, Some("capabilities")),
        ("fork is fine", &exec, ev(Kind::Fork), InScope, None),
        ("read mode: no writes", &read, path(Kind::FileWrite, "/srv/repo/a"), OutOfScope, Some("mode")),
        ("read mode: no deletes", &read, path(Kind::FileDelete, "/srv/repo/a"), OutOfScope, Some("mode")),
        ("read mode: exec in scope", &read, exec_git, InScope, None),
        ("read mode: exec outside", &read, exec_curl, OutOfScope, Some("scope.exec")),
        (
            "propose: write in propose dir",
            &propose,
            path(Kind::FileCreate, "/srv/proposals/t/p.diff"),
            InScope,
            None,
        ),
        (
            "propose: write elsewhere",
            &propose,
            path(Kind::FileWrite, "/srv/repo/a"),
            OutOfScope,
            Some("scope.propose_dir"),
        ),
        (
            "propose: no deletes",
            &propose,
            path(Kind::FileDelete, "/srv/proposals/t/p.diff"),
            OutOfScope,
            Some("mode"),
        ),
        ("expired", &expired, path(Kind::FileWrite, "/tmp/x"), OutOfScope, Some("expires")),
    ];
    for (name, t, e, want, want_clause) in cases {
        let v = judge(&engine, Some(t), &e);
        assert_eq!((v.verdict, clause(&v)), (want, want_clause), "{name}: {v:?}");
    }
}

#[test]
fn launch_exec_is_the_task_not_a_step() {
    let t = task("id: t\nmode: execute\napproval_required: [exec]\n");
    let mut e = ev(Kind::Exec);
    e.exe = Some("/usr/bin/python3".into());
    let engine = Engine::default();
    let launch = Ctx { task: Some(&t), launch: true, ..Default::default() };
    assert_eq!(engine.judge(&e, &launch, &mut Windows::default()).verdict, VerdictKind::InScope);
    assert_eq!(judge(&engine, Some(&t), &e).verdict, VerdictKind::OutOfScope);
}

#[test]
fn shipped_rules_load_and_their_examples_hold() {
    let set = shipped::rules().expect("shipped rules are valid");
    assert!(set.len() >= 15, "ship at least 15 rules, have {}", set.len());
    let failures = examples::check(&set);
    assert!(failures.is_empty(), "{}", failures.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("\n"));
    // The embedded list is the whole rules/ directory.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
    let on_disk: Vec<String> = rules::rule_files(&dir)
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let embedded: Vec<String> = shipped::FILES.iter().map(|(f, _)| f.to_string()).collect();
    assert_eq!(embedded, on_disk, "policy/shipped.rs must list every file in rules/");
    // Every rule reading a path the kernel only reports for the sensitive set is
    // covered by the default set (or it could never fire).
    let sens = crate::sensitive::SensitiveSet::default_set();
    for r in &set.rules {
        for (want, _, ex) in &r.examples {
            if *want && ex.kind == "sensitive_read" {
                let p = ex.path.as_deref().unwrap();
                assert!(sens.matches(p), "rule {} example {p} is not in the default sensitive set", r.id);
            }
        }
    }
}

#[test]
fn rules_and_scope_combine() {
    let engine = Engine::new(shipped::rules().unwrap());
    let t = task(EXECUTE);
    // A metadata-endpoint connect: out of scope and a rule violation; the rule wins.
    let v = judge(&engine, Some(&t), &net(Kind::Connect, "169.254.169.254", 80));
    assert_eq!((v.verdict, v.action), (VerdictKind::Violation, Action::Deny));
    assert_eq!(v.reasons[0].rule.as_deref(), Some("net.cloud-metadata"));
    assert!(v.reasons.iter().any(|r| r.clause == Some("scope.connect")));
    // The same through the v4-mapped form.
    let v = judge(&engine, Some(&t), &net(Kind::Connect, "::ffff:169.254.169.254", 80));
    assert_eq!(v.reasons[0].rule.as_deref(), Some("net.cloud-metadata"));
    // Writing outside scope also fires the scope rule.
    let v = judge(&engine, Some(&t), &path(Kind::FileWrite, "/etc/hosts"));
    assert!(v.reasons.iter().any(|r| r.rule.as_deref() == Some("scope.write-outside")), "{v:?}");
    // Without a task, rules still apply; scope rules do not.
    let v = judge(&engine, None, &path(Kind::FileWrite, "/root/.bashrc"));
    assert_eq!(v.reasons[0].rule.as_deref(), Some("persist.shell-rc"));
    assert!(judge(&engine, None, &path(Kind::FileWrite, "/etc/hosts")).reasons.is_empty());
    // Package installs need approval.
    let mut pip = ev(Kind::Exec);
    pip.exe = Some("/usr/bin/pip3".into());
    pip.argv = Some(vec!["pip3".into(), "install".into(), "x".into()]);
    let v = judge(&engine, None, &pip);
    assert_eq!((v.verdict, v.action), (VerdictKind::NeedsApproval, Action::RequireApproval));
}

#[test]
fn rate_rule_counts_per_task_within_the_window() {
    let engine = Engine::new(shipped::rules().unwrap());
    let t = task("id: t\nmode: execute\nscope:\n  write: [\"/**\"]\n  delete: [\"/**\"]\n");
    let cx = Ctx { task: Some(&t), ..Default::default() };
    let mut win = Windows::default();
    let hit = |win: &mut Windows, i: i128| {
        let mut e = path(Kind::FileDelete, "/srv/x");
        e.ts = Timestamp(T0.0 + i);
        engine.judge(&e, &cx, win).reasons.iter().any(|r| r.rule.as_deref() == Some("fs.mass-delete"))
    };
    // 49 deletes a second apart (49 s > 10 s window): never 50 within 10 s.
    assert!(!(0..49).any(|i| hit(&mut win, i * 1_000_000_000)));
    // 50 within 10 ms: fires on the 50th.
    let mut win = Windows::default();
    let fired: Vec<bool> = (0..50).map(|i| hit(&mut win, i * 200_000)).collect();
    assert_eq!(fired.iter().position(|f| *f), Some(49));
}

#[test]
fn a_burst_is_one_alert_and_only_outside_the_scope_a_freeze() {
    let engine = Engine::new(shipped::rules().unwrap());
    let t = task("id: t\nmode: execute\nscope:\n  write: [\"/srv/**\"]\n  delete: [\"/srv/**\"]\n");
    let cx = Ctx { task: Some(&t), ..Default::default() };
    let judge = |win: &mut Windows, p: &str, i: i128| {
        let mut e = path(Kind::FileDelete, p);
        e.ts = Timestamp(T0.0 + i);
        engine.judge(&e, &cx, win)
    };
    // 400 deletes in scope, 1 ms apart: the 50th alerts (no freeze), the rest carry
    // the rule with no action and no alert of their own.
    let mut win = Windows::default();
    let vs: Vec<Verdict> = (0..400).map(|i| judge(&mut win, "/srv/x", i * 1_000_000)).collect();
    let alerted: Vec<usize> = (0..400).filter(|&i| vs[i].alerts()).collect();
    assert_eq!(alerted, vec![49]);
    assert_eq!((vs[49].action, vs[49].reasons[0].rule.as_deref()), (Action::Alert, Some("fs.mass-delete")));
    for v in &vs[50..] {
        assert_eq!(
            (v.verdict, v.action, v.reasons[0].burst > 0),
            (VerdictKind::Violation, Action::None, true)
        );
    }
    assert_eq!(vs[399].reasons[0].burst, 350);
    // Once the rate falls below, the next burst is a finding again.
    let later = 400 * 1_000_000 + 60_000_000_000;
    let again: Vec<bool> =
        (0..50).map(|i| judge(&mut win, "/srv/x", later + i * 1_000_000).alerts()).collect();
    assert_eq!(again.iter().position(|a| *a), Some(49));
    // Outside the scope: every delete is out of scope (its own alert) and the 50th
    // freezes; the burst after does not freeze again.
    let mut win = Windows::default();
    let vs: Vec<Verdict> = (0..60).map(|i| judge(&mut win, "/etc/x", i * 1_000_000)).collect();
    let froze: Vec<usize> = (0..60).filter(|&i| vs[i].action == Action::Freeze).collect();
    assert_eq!(froze, vec![49]);
    assert!(vs.iter().all(Verdict::alerts), "each out-of-scope delete is its own finding");
}

#[test]
fn rule_errors_name_file_and_line() {
    let cases = [
        (
            "rules:\n  - id: a\n    description: d\n    severity: loud\n    match: {kinds: [exec]}\n    action: alert\n",
            4,
            "severity",
        ),
        (
            "rules:\n  - id: a\n    description: d\n    severity: low\n    match: {kinds: [nope]}\n    action: alert\n",
            5,
            "kind",
        ),
        (
            "rules:\n  - id: a\n    description: d\n    severity: low\n    match: {dst: [\"1.2.3.0/99\"]}\n    action: alert\n",
            5,
            "CIDR",
        ),
        (
            "rules:\n  - id: a\n    description: d\n    severity: low\n    match: {kinds: [exec]}\n    action: explode\n",
            6,
            "action",
        ),
        (
            "rules:\n  - id: a\n    description: d\n    severity: low\n    match: {kinds: [exec]}\n    action: alert\n    tags: [XYZ]\n",
            7,
            "tag",
        ),
        (
            "rules:\n  - id: a\n    description: d\n    severity: low\n    match: {}\n    action: alert\n",
            5,
            "no condition",
        ),
        (
            "rules:\n  - id: a\n    description: d\n    severity: low\n    match: {kinds: [exec]}\n    action: alert\n",
            2,
            "examples",
        ),
        ("rules:\n  - id: a\n    bogus: 1\n", 3, "bogus"),
        ("rules: [\n", 1, ""),
    ];
    for (text, line, needle) in cases {
        let e = rules::parse_file(text, Path::new("r.yaml")).unwrap_err();
        assert_eq!(e.line, line, "{text:?}: {e}");
        assert!(e.to_string().starts_with(&format!("r.yaml:{line}: ")), "{e}");
        assert!(e.msg.contains(needle), "{text:?}: {e}");
    }
    let dup = "rules:\n  - id: a\n    description: d\n    severity: low\n    match: {kinds: [exec]}\n    action: alert\n    examples: {match: [{kind: exec}], no_match: [{kind: fork}]}\n";
    let two = format!("{dup}{}", &dup[7..]);
    let e = RuleSet::from_texts([(Path::new("r.yaml"), two.as_str())].into_iter(), Vec::new()).unwrap_err();
    assert!(e[0].msg.contains("already defined"), "{e:?}");
}

#[test]
fn rule_parser_never_panics() {
    use proptest::prelude::*;
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 1500,
        ..Default::default()
    });
    let base = shipped::FILES[0].1.as_bytes().to_vec();
    runner
        .run(&(0..base.len(), 0..base.len(), any::<u8>()), |(cut, at, b)| {
            let mut v = base.clone();
            v[at] = b;
            v.truncate(cut.max(1));
            let _ = rules::parse_file(&String::from_utf8_lossy(&v), Path::new("f"));
            Ok(())
        })
        .unwrap();
    runner
        .run(&proptest::string::string_regex("(?s).{0,200}").unwrap(), |s| {
            let _ = rules::parse_file(&s, Path::new("f"));
            Ok(())
        })
        .unwrap();
}

/// The per-kind automaton the engine matches paths with says what each rule's own
/// `paths`/`not_paths` would: for every shipped rule, every kind, and paths made from
/// every rule's patterns (so each rule has paths it matches and paths that only
/// another rule's, or its `not_paths`, match), as path and as new path.
#[test]
fn one_path_pass_agrees_with_each_rules_own_globs() {
    let set = shipped::rules().expect("shipped rules are valid");
    let mut paths: Vec<String> =
        ["/srv/repo/main.rs", "/etc/passwd", "/", "", "/tmp/x", "relative/x"].map(String::from).to_vec();
    for r in &set.rules {
        let nots = r.matcher.not_path_globs.iter().map(|g| g.glob().to_string());
        for p in r.matcher.path_patterns.iter().cloned().chain(nots) {
            for fill in ["x", "a/b", ".hidden", "sub/dir/file.txt"] {
                let made = p.replace("**", fill).replace('*', "y").replace('?', "z");
                paths.push(made.clone());
                paths.push(format!("/var/tmp{made}"));
                paths.push(format!("{made}/child"));
            }
        }
    }
    let mut checked = 0;
    let mut hit = 0;
    for kind in Kind::ALL {
        for (i, rule) in set.indexed_for_kind(kind) {
            for p in &paths {
                for (path, new_path) in [(Some(p.as_str()), None), (Some("/elsewhere/x"), Some(p.as_str()))] {
                    let mut e = ev(kind);
                    e.path = path.map(String::from);
                    e.new_path = new_path.map(String::from);
                    let cx = engine::MatchCtx::default();
                    let alone = engine::conditions_hold(rule, i, &e, cx);
                    let hits = set.path_hits(kind, path, new_path);
                    let once =
                        engine::conditions_hold(rule, i, &e, engine::MatchCtx { paths: hits.as_ref(), ..cx });
                    assert_eq!(alone, once, "rule {} on {kind:?} {path:?} -> {new_path:?}", rule.id);
                    checked += 1;
                    hit += usize::from(once);
                }
            }
        }
    }
    assert!(hit > 50 && checked - hit > 50, "the paths must exercise both outcomes: {hit} of {checked}");
}
