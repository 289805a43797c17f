use std::path::Path;

use super::*;

const NOW: Timestamp = Timestamp(1_795_000_000_000_000_000);

const EXAMPLE: &str = r#"
id: refactor-42
agent: spiffe://example.org/agent/coder
principal: alice@example.org
prompt: "Refactor the parser into its own module; keep the tests green."
mode: execute
expires_in: 30m
scope:
  read:    ["/srv/repo/**"]
  write:   ["/srv/repo/**"]
  delete:  ["/srv/repo/build/**"]
  exec:    ["/usr/bin/git", "/usr/bin/python3*"]
  connect: ["127.0.0.1:8080", "10.0.0.0/8:443", "localhost:443"]
  propose_dir: /srv/proposals/refactor-42
approval_required: [delete, rename]
credentials: ["arn:aws:iam::123456789012:role/coder-session-42", "vault:token:abc"]
"#;

fn parse_ok(text: &str) -> Task {
    parse(text, Path::new("t.yaml"), NOW).unwrap()
}

fn parse_err(text: &str) -> ManifestError {
    parse(text, Path::new("t.yaml"), NOW).unwrap_err()
}

#[test]
fn parses_the_documented_example() {
    let t = parse_ok(EXAMPLE);
    assert_eq!(t.id, "refactor-42");
    assert_eq!(t.prompt.as_deref(), Some("Refactor the parser into its own module; keep the tests green."));
    assert_eq!(t.mode, Mode::Execute);
    assert_eq!(t.expires, Some(Timestamp(NOW.0 + 30 * 60 * 1_000_000_000)));
    assert!(t.write.matches("/srv/repo/src/main.rs"));
    assert!(t.delete.matches("/srv/repo/build/x.o"));
    assert!(!t.delete.matches("/srv/repo/src/main.rs"));
    assert!(t.exec.matches("/usr/bin/python3.11"));
    assert_eq!(t.approval, vec![Op::Delete, Op::Rename]);
    assert_eq!(t.connect.len(), 3);
    // localhost resolved at load.
    assert!(t.connect[2].allows_ip("127.0.0.1".parse().unwrap(), 443));
}

#[test]
fn errors_name_file_line_and_field() {
    let cases: &[(&str, u64, &str, &str)] = &[
        ("id: a\nmode: execute\nbogus: 1\n", 3, "(document)", "bogus"),
        ("id: a\nmode: sideways\n", 2, "mode", "sideways"),
        ("id: a\nmode: read\nscope:\n  write: [\"relative/x\"]\n", 4, "scope.write", "absolute"),
        ("id: a\nmode: read\nscope:\n  connect: [\"10.0.0.0/40:443\"]\n", 4, "scope.connect", "CIDR"),
        ("id: a\nmode: read\nscope:\n  connect: [\"1.2.3.4:70000\"]\n", 4, "scope.connect", "port"),
        ("id: a\nmode: read\nexpires_in: soon\n", 3, "expires_in", "soon"),
        ("id: a\nmode: read\nexpires_at: tomorrow\n", 3, "expires_at", "RFC 3339"),
        (
            "id: a\nmode: execute\nscope:\n  write: [\"/srv/a/**\"]\n  delete:\n    - /etc/**\n",
            6,
            "scope.delete",
            "outside scope.write",
        ),
        ("id: a\nmode: propose\n", 2, "scope.propose_dir", "propose"),
        ("id: a\nmode: read\napproval_required: [nuke]\n", 3, "approval_required", "nuke"),
        ("id: a b\nmode: read\n", 1, "id", "characters"),
        ("id: a\nmode: read\nagent: coder\n", 3, "agent", "SPIFFE"),
        ("id: a\nmode: read\nscope:\n  write: [\"/a/../etc\"]\n", 4, "scope.write", ".."),
        ("id: a\nmode: read\ncredentials: [x, \"y\\tz\"]\n", 3, "credentials", "printable"),
        ("id: a\nmode: read\ncredentials:\n  - x\n  - x\n", 5, "credentials", "twice"),
        ("id: a\nmode: read\ncredentials: [\"\"]\n", 3, "credentials", "1-512"),
    ];
    let many: Vec<String> = (0..65).map(|i| format!("c{i}")).collect();
    let e = parse_err(&format!("id: a\nmode: read\ncredentials: [{}]\n", many.join(", ")));
    assert_eq!(e.field, "credentials", "{e}");
    assert!(e.msg.contains("at most 64"), "{e}");
    let long = format!("id: a\nmode: read\nprompt: \"{}\"\n", "x".repeat(20_000));
    let e = parse_err(&long);
    assert_eq!((e.line, e.field.as_str()), (3, "prompt"), "{e}");
    for (text, line, field, needle) in cases {
        let e = parse_err(text);
        assert_eq!((e.line, e.field.as_str()), (*line, *field), "{text:?} -> {e}");
        assert!(e.to_string().starts_with(&format!("t.yaml:{line}: ")), "{e}");
        assert!(e.msg.contains(needle), "{text:?}: {e}");
    }
}

#[test]
fn scope_patterns_resolve_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let real = std::fs::canonicalize(dir.path()).unwrap();
    std::fs::create_dir(real.join("repo")).unwrap();
    std::os::unix::fs::symlink(real.join("repo"), real.join("link")).unwrap();
    let text = format!("id: s\nmode: execute\nscope:\n  write: [\"{}/link/**\"]\n", real.display());
    let t = parse_ok(&text);
    // Events carry resolved paths: the scope must match them.
    assert!(t.write.matches(&format!("{}/repo/a.rs", real.display())));
}

#[test]
fn delegation_only_narrows() {
    let parent = parse_ok(EXAMPLE);
    let ok = parse_ok(
        "id: child\nmode: read\nexpires_in: 10m\nscope:\n  read: [\"/srv/repo/src/**\"]\n  \
         connect: [\"10.1.0.0/16:443\"]\napproval_required: [delete, rename, exec]\n",
    );
    assert_eq!(parent.contains(&ok), Ok(()));
    assert_eq!(parent.credentials.len(), 2);
    let same = parse_ok(
        "id: child\nmode: read\nexpires_in: 10m\napproval_required: [delete, rename]\n\
         agent: spiffe://example.org/agent/coder\nprincipal: alice@example.org\n",
    );
    assert_eq!(parent.contains(&same), Ok(()));
    let wider = [
        (
            "id: c\nmode: execute\nexpires_in: 1m\nscope:\n  write: [\"/etc/**\"]\napproval_required: [delete, rename]\n",
            "scope.write",
        ),
        (
            "id: c\nmode: execute\nexpires_in: 1m\nscope:\n  connect: [\"10.0.0.0/8:*\"]\napproval_required: [delete, rename]\n",
            "scope.connect \"10.0.0.0/8:*\" is not within the parent's scope.connect",
        ),
        (
            "id: c\nmode: execute\nexpires_in: 1m\nscope:\n  exec: [\"/usr/bin/*\"]\napproval_required: [delete, rename]\n",
            "scope.exec",
        ),
        ("id: c\nmode: read\nexpires_in: 2h\napproval_required: [delete, rename]\n", "expires"),
        ("id: c\nmode: read\napproval_required: [delete, rename]\n", "expire"),
        ("id: c\nmode: read\nexpires_in: 1m\napproval_required: [delete]\n", "rename"),
        // Its end would revoke them: credentials are not the agent's to name, nor
        // the identity its revoke names.
        (
            "id: c\nmode: read\nexpires_in: 1m\napproval_required: [delete, rename]\ncredentials: [\"vault:token:abc\"]\n",
            "credentials",
        ),
        (
            "id: c\nmode: read\nexpires_in: 1m\napproval_required: [delete, rename]\nagent: spiffe://example.org/agent/victim\n",
            "agent \"spiffe://example.org/agent/victim\" is not the parent's (\"spiffe://example.org/agent/coder\")",
        ),
        (
            "id: c\nmode: read\nexpires_in: 1m\napproval_required: [delete, rename]\nprincipal: bob@example.org\n",
            "principal \"bob@example.org\" is not the parent's (\"alice@example.org\")",
        ),
    ];
    for (text, needle) in wider {
        let child = parse_ok(text);
        let e = parent.contains(&child).unwrap_err();
        assert!(e.contains(needle), "{text}: {e}");
        // Said as a manifest would say it, never as Rust's debug output.
        assert!(!["Some(", "None", "Net {", "Ports {"].iter().any(|d| e.contains(d)), "{e}");
    }
    let read_parent = parse_ok("id: p\nmode: read\n");
    assert!(read_parent.contains(&parse_ok("id: c\nmode: execute\n")).unwrap_err().contains("mode"));
}

/// The parser must return an error, never panic, whatever it is given.
#[test]
fn parser_never_panics() {
    use proptest::prelude::*;
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 2000,
        ..Default::default()
    });
    // Random text, and mutations of a valid manifest (truncations and byte flips).
    runner
        .run(&proptest::string::string_regex("(?s).{0,300}").unwrap(), |s| {
            let _ = parse(&s, Path::new("f"), NOW);
            Ok(())
        })
        .unwrap();
    let base = EXAMPLE.as_bytes().to_vec();
    runner
        .run(&(0..base.len(), 0..base.len(), any::<u8>()), |(cut, at, b)| {
            let mut v = base.clone();
            v[at] = b;
            v.truncate(cut.max(1));
            let _ = parse(&String::from_utf8_lossy(&v), Path::new("f"), NOW);
            Ok(())
        })
        .unwrap();
}

#[test]
fn lifetimes_are_bounded_and_stops_named() {
    let e = parse_err("id: a\nmode: read\nexpires_in: 580000000000y\n");
    assert_eq!((e.line, e.field.as_str()), (3, "expires_in"), "{e}");
    let e = parse_err("id: a\nmode: read\nexpires_in: 400days\n");
    assert!(e.msg.contains("366 days"), "{e}");
    let e = parse_err("id: a\nmode: read\nexpires_at: \"9999-01-01T00:00:00Z\"\n");
    assert_eq!(e.field, "expires_at", "{e}");
    assert!(parse("id: a\nmode: read\nexpires_in: 365days\n", Path::new("t.yaml"), NOW).is_ok());
    let e = parse_err("id: a\nmode: read\non_expiry: explode\n");
    assert_eq!((e.line, e.field.as_str()), (3, "on_expiry"), "{e}");
    let t = parse_ok("id: a\nmode: read\non_expiry: kill\n");
    assert_eq!(t.on_expiry, Some(Stop::Kill));
    assert_eq!(t.output_failure(), Stop::Continue);
    // An enforced task cannot run on past its expiry, however it came to be
    // enforced (its manifest, --enforce, its parent): only a stop holds then.
    let mut t = parse_ok("id: a\nmode: read\non_expiry: continue\n");
    assert_eq!(t.expiry_stop(), Some(Stop::Continue));
    assert!(t.refused_expiry().is_none());
    t.enforce = true;
    assert_eq!(t.expiry_stop(), Some(Stop::Freeze));
    assert!(t.refused_expiry().unwrap().contains("freeze or kill"));
    let t = parse_ok("id: a\nmode: read\nenforcement: enforce\non_expiry: kill\n");
    assert_eq!((t.expiry_stop(), t.refused_expiry()), (Some(Stop::Kill), None));
    let t = parse_ok("id: a\nmode: read\nenforcement: enforce\n");
    assert_eq!(t.output_failure(), Stop::Freeze);
    let t = parse_ok("id: a\nmode: read\nenforcement: enforce\non_output_failure: kill\n");
    assert_eq!(t.output_failure(), Stop::Kill);
}

#[test]
fn where_a_task_may_write_follows_its_mode() {
    let p = Path::new;
    let exec = parse_ok("id: a\nmode: execute\nscope:\n  write: [\"/w/**\"]\n  delete: [\"/w/x*/**\"]\n");
    assert_eq!(exec.writes_reach(p("/w/f")), Some("scope.write"));
    assert_eq!(exec.writes_reach(p("/w/x1/f")), Some("scope.write"));
    assert_eq!(exec.writes_reach(p("/")), Some("scope.write"), "a directory holding what it may write");
    assert_eq!(exec.writes_reach(p("/elsewhere")), None);
    let dir = std::env::temp_dir();
    let propose = parse_ok(&format!(
        "id: a\nmode: propose\nscope:\n  write: [\"/w/**\"]\n  propose_dir: \"{}\"\n",
        dir.display()
    ));
    assert_eq!(propose.writes_reach(&dir.join("f")), Some("scope.propose_dir"));
    assert_eq!(propose.writes_reach(p("/")), Some("scope.propose_dir"));
    // Its write patterns grant nothing in mode propose (the layers grant the dir).
    assert_eq!(propose.writes_reach(p("/w/f")), None);
    assert_eq!(propose.write_roots(), vec![("scope.propose_dir", dir.clone())]);
    let read = parse_ok("id: a\nmode: read\nscope:\n  write: [\"/w/**\"]\n");
    assert_eq!(read.writes_reach(p("/w/f")), None);
    assert!(read.write_roots().is_empty());
}

#[test]
fn limits_are_parsed_and_what_cannot_be_counted_is_refused() {
    let t =
        parse_ok("id: a\nmode: execute\nlimits:\n  files_changed: 50\n  deletes: 5\n  on_exceed: freeze\n");
    let l = t.limits.unwrap();
    assert_eq!((l.files_changed, l.deletes, l.processes), (Some(50), Some(5), None));
    assert_eq!(l.on_exceed, crate::policy::Action::Freeze);
    let t = parse_ok("id: a\nmode: execute\nlimits:\n  connections: 3\n");
    assert_eq!(t.limits.unwrap().on_exceed, crate::policy::Action::Alert, "alert by default");
    let e = parse_err("id: a\nmode: execute\nlimits:\n  deletes: 5\n  bytes_written: 1000\n");
    assert_eq!((e.line, e.field.as_str()), (5, "limits.bytes_written"), "{e}");
    assert!(e.msg.contains("files_changed"), "{e}");
    let e = parse_err("id: a\nmode: execute\nlimits:\n  deletes: 0\n");
    assert_eq!((e.line, e.field.as_str()), (4, "limits.deletes"), "{e}");
    let e = parse_err("id: a\nmode: execute\nlimits:\n  deletes: 1\n  on_exceed: shrug\n");
    assert_eq!((e.line, e.field.as_str()), (5, "limits.on_exceed"), "{e}");
    let e = parse_err("id: a\nmode: execute\nlimits:\n  on_exceed: kill\n");
    assert_eq!(e.field, "limits", "{e}");
    let e = parse_err("id: a\nmode: execute\nlimits:\n  files: 3\n");
    assert_eq!(e.line, 4, "an unknown limit names its line: {e}");
}
