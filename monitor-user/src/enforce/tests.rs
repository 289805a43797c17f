//! Confinement plans: what is accepted, and what is refused with which clause.
//! (The kernel behaviour of accepted plans is tested by the kernel tests.)

use std::path::Path;

use super::*;
use crate::{event::Timestamp, task};

fn task(y: &str) -> Task {
    task::parse(y, Path::new("t.yaml"), Timestamp(0)).unwrap()
}

fn layers() -> Layers {
    Layers { landlock_abi: 7, seccomp: true, cgroups: false, approval: true, lsm: false, lsm_absent: "test" }
}

fn refused(t: &Task) -> (&'static str, String) {
    match confine(t, &layers(), &[], &Protected::default()) {
        Err(EnforceError::Refused { clause, why, .. }) => (clause, why),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn refusals_name_the_clause() {
    let dir = tempfile::tempdir().unwrap();
    let d = std::fs::canonicalize(dir.path()).unwrap();
    let d = d.display();
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!("id: a\nmode: execute\nscope:\n  write: [\"{d}/*.txt\"]\n  delete: [\"{d}/*.txt\"]\n"),
            "scope.write",
            "cannot be expressed",
        ),
        (
            format!("id: a\nmode: execute\nscope:\n  write: [\"{d}/missing/**\"]\n"),
            "scope.write",
            "not an existing directory",
        ),
        (format!("id: a\nmode: execute\nscope:\n  write: [\"{d}\"]\n"), "scope.write", "is a directory"),
        (
            format!("id: a\nmode: execute\nscope:\n  write: [\"{d}/**\"]\n  delete: [\"{d}/build/**\"]\n"),
            "scope.delete",
            "approval-gate",
        ),
        (
            "id: a\nmode: execute\napproval_required: [delete, exec]\n".to_string(),
            "approval_required",
            "exec cannot be held for approval",
        ),
        (
            "id: a\nmode: execute\nscope:\n  connect: [\"10.0.0.0/8:443\"]\n".to_string(),
            "scope.connect",
            "allowlist layer",
        ),
        (
            "id: a\nmode: execute\nscope:\n  connect: [\"unix:/run/x.sock\"]\n".to_string(),
            "scope.connect",
            "unix",
        ),
    ];
    for (yaml, clause, needle) in cases {
        let (c, why) = refused(&task(&yaml));
        assert_eq!(c, clause, "{yaml}: {why}");
        assert!(why.contains(needle), "{yaml}: {why}");
    }
    // Missing layers refuse everything.
    let t = task("id: a\nmode: read\n");
    for l in [
        Layers {
            landlock_abi: 0,
            seccomp: true,
            cgroups: true,
            approval: true,
            lsm: false,
            lsm_absent: "test",
        },
        Layers {
            landlock_abi: 5,
            seccomp: true,
            cgroups: true,
            approval: true,
            lsm: false,
            lsm_absent: "test",
        },
        Layers {
            landlock_abi: 7,
            seccomp: false,
            cgroups: true,
            approval: true,
            lsm: false,
            lsm_absent: "test",
        },
    ] {
        assert!(
            matches!(confine(&t, &l, &[], &Protected::default()), Err(EnforceError::Refused { .. })),
            "{l:?}"
        );
    }
}

#[test]
fn agentmons_own_files_are_never_writable() {
    let dir = tempfile::tempdir().unwrap();
    let d = std::fs::canonicalize(dir.path()).unwrap();
    let t = task(&format!(
        "id: a\nmode: execute\nscope:\n  write: [\"{}/**\"]\n  delete: [\"{}/**\"]\n",
        d.display(),
        d.display()
    ));
    let p = Protected { paths: vec![d.join("events.jsonl")] };
    let e = confine(&t, &layers(), &[], &p).unwrap_err();
    assert!(e.to_string().contains("events.jsonl"), "{e}");
}

#[test]
fn accepted_plans_build() {
    let dir = tempfile::tempdir().unwrap();
    let d = std::fs::canonicalize(dir.path()).unwrap();
    let ok = [
        format!(
            "id: a\nmode: execute\nscope:\n  write: [\"{0}/**\"]\n  delete: [\"{0}/**\"]\n  exec: [\"/usr/bin/git\", \"/usr/bin/python3*\"]\n",
            d.display()
        ),
        format!("id: a\nmode: execute\nscope:\n  write: [\"{0}/**\"]\n", d.display()),
        "id: a\nmode: read\nscope:\n  exec: [\"/usr/bin/**\"]\n".to_string(),
        format!("id: a\nmode: propose\nscope:\n  propose_dir: {}\n", d.display()),
    ];
    for y in ok {
        confine(&task(&y), &layers(), &[], &Protected::default()).unwrap_or_else(|e| panic!("{y}: {e}"));
    }
    // Gated operations get the notification filter; without the layer, refused.
    let gated = task(&format!(
        "id: a\nmode: execute\nscope:\n  write: [\"{0}/**\"]\n  delete: [\"{0}/**\"]\napproval_required: [delete, chmod]\n",
        d.display()
    ));
    let c = confine(&gated, &layers(), &[], &Protected::default()).unwrap();
    assert!(c.gate.as_ref().is_some_and(|p| p.len() > 8), "{c:?}");
    let no = Layers { approval: false, ..layers() };
    assert!(
        confine(&gated, &no, &[], &Protected::default())
            .unwrap_err()
            .to_string()
            .contains("user notification")
    );
    // With the cgroup layer, a network scope is accepted.
    let net = Layers { cgroups: true, ..layers() };
    let t = task("id: a\nmode: read\nscope:\n  connect: [\"127.0.0.1:8080\", \"10.0.0.0/8:443\"]\n");
    confine(&t, &net, &[], &Protected::default()).unwrap();
}

#[test]
fn elf_interpreter_is_found() {
    let me = std::env::current_exe().unwrap();
    let interp = landlock::elf_interpreter(&me).expect("a dynamically linked test binary");
    assert!(interp.to_string_lossy().contains("ld-linux"), "{}", interp.display());
    assert_eq!(landlock::elf_interpreter(Path::new("/etc/passwd")), None);
}
