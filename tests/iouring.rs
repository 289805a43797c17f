//! io_uring requests that name paths, on the real kernel path: recorded with the
//! paths the kernel acts on and judged against the task's scope, as the syscalls
//! making the same side effects are.

use agentmon::event::{Event, Kind};

use crate::{
    R,
    support::{ensure, eq, run_as_task, workdir},
};

/// An observed agent asks a ring to create, delete, rename, link and read files, in
/// and out of its scope, by absolute names and under a directory descriptor, once
/// through a SQPOLL ring (no syscall at all), and rewrites a submitted name in its
/// memory: each request is a record of the side effect, with the name the kernel
/// copied, and its verdict.
pub fn io_uring_requests_are_judged_by_their_paths() -> R {
    let d = workdir("iou-files");
    let repo = d.join("repo");
    std::fs::create_dir_all(repo.join("build")).map_err(|e| e.to_string())?;
    for f in ["old.txt", "keep.txt", "build/x.o", ".env", "plain.txt", "sq.txt"] {
        std::fs::write(repo.join(f), b"x").map_err(|e| e.to_string())?;
    }
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let manifest = format!(
        "id: iou\nagent: spiffe://test/agent\nprincipal: ci@test\nmode: execute\nexpires_in: 10m\n\
         scope:\n  read: [\"{r}/**\"]\n  write: [\"{r}/**\", \"{d}/results\"]\n  delete: [\"{r}/build/**\", \
         \"{r}/sq.txt\"]\n  exec: [\"{me}\"]\n",
        r = repo.display(),
        d = d.display(),
        me = me.display()
    );
    let run = run_as_task(&d, &manifest, "io_uring_files")?;
    eq("exit", run.code, 0)?;
    // The kernel did each: opens gave descriptors, the rest 0.
    let results = std::fs::read_to_string(d.join("results")).map_err(|e| format!("no results: {e}"))?;
    for line in results.lines() {
        let (name, r) = line.split_once(' ').ok_or_else(|| format!("bad line {line:?}"))?;
        ensure(r.parse::<i32>().is_ok_and(|r| r >= 0), || format!("{name}: the ring answered {r}"))?;
    }
    ensure(results.lines().count() == 14, || format!("not every request ran:\n{results}"))?;
    let agentmon = results.lines().find_map(|l| l.strip_prefix("ppid ")).ok_or("no ppid")?.to_string();
    ensure(!repo.join("keep.txt").exists(), || "keep.txt was not deleted".into())?;
    let p = |f: &str| repo.join(f);
    // Each: the opcode it was asked by, flagged io_uring, no outcome, its verdict.
    let check = |kind: Kind, path: &std::path::Path, op: &str, want: &str| -> Result<&Event, String> {
        let e = run.find(kind, path)?;
        let at = format!("{kind:?} {}", path.display());
        eq(&format!("{at} syscall"), e.syscall.as_deref(), Some(op))?;
        ensure(e.flags.iter().any(|f| f == "io_uring"), || format!("{at}: no io_uring flag: {:?}", e.flags))?;
        eq(&format!("{at} outcome"), (e.ret, e.error.as_deref()), (None, None))?;
        eq(&format!("{at} verdict"), e.verdict.as_deref(), Some(want))?;
        eq(&format!("{at} task"), e.task.as_deref(), Some("iou"))?;
        Ok(e)
    };
    let new = check(Kind::FileCreate, &p("new.txt"), "IORING_OP_OPENAT", "in_scope")?;
    eq("new.txt mode", new.mode.as_deref(), Some("0640"))?;
    let out = check(Kind::FileCreate, &d.join("outside.txt"), "IORING_OP_OPENAT2", "violation")?;
    eq("outside.txt rule", out.rule.as_deref(), Some("scope.write-outside"))?;
    // Under a directory descriptor, with the name the kernel copied at submission.
    let keep = check(Kind::FileDelete, &p("keep.txt"), "IORING_OP_UNLINKAT", "violation")?;
    eq("keep.txt rule", keep.rule.as_deref(), Some("scope.write-outside"))?;
    ensure(!run.events.iter().any(|e| e.path.as_deref().is_some_and(|p| p.contains("decoy"))), || {
        format!("a record names the rewritten name:\n{}", run.summary())
    })?;
    check(Kind::FileDelete, &p("build/x.o"), "IORING_OP_UNLINKAT", "in_scope")?;
    let ren = check(Kind::FileRename, &p("old.txt"), "IORING_OP_RENAMEAT", "in_scope")?;
    eq("rename new_path", ren.new_path.as_deref(), p("renamed.txt").to_str())?;
    let dir = check(Kind::DirCreate, &d.join("newdir"), "IORING_OP_MKDIRAT", "violation")?;
    eq("newdir mode", dir.mode.as_deref(), Some("0750"))?;
    let sym = check(Kind::FileLink, &p("link"), "IORING_OP_SYMLINKAT", "in_scope")?;
    eq(
        "symlink target",
        (sym.new_path.as_deref(), sym.flags.iter().any(|f| f == "symlink")),
        (Some("/etc/passwd"), true),
    )?;
    let hard = check(Kind::FileLink, &p("hard"), "IORING_OP_LINKAT", "in_scope")?;
    eq("link target", hard.new_path.as_deref(), p("renamed.txt").to_str())?;
    let env = check(Kind::SensitiveRead, &p(".env"), "IORING_OP_OPENAT", "violation")?;
    eq(".env rule", env.rule.as_deref(), Some("cred.dotenv"))?;
    ensure(!run.events.iter().any(|e| e.path.as_deref() == p("plain.txt").to_str()), || {
        format!("a read-only open outside the sensitive set is a record:\n{}", run.summary())
    })?;
    // agentmon's environment, opened through the ring by a name the sensitive set
    // does not know: known by the file it opened, at its completion.
    let environ = format!("/proc/{agentmon}/environ");
    let tamper: Vec<&Event> =
        run.of(Kind::Tamper).into_iter().filter(|e| e.path.as_deref() == Some(&environ)).collect();
    let [t] = tamper.as_slice() else {
        return Err(format!("not one tamper record of {environ}:\n{}", run.summary()).into());
    };
    eq(
        "environ attempt",
        t.detail.get("attempt").and_then(|v| v.as_str()),
        Some("agentmon's environment read"),
    )?;
    eq("environ syscall", t.syscall.as_deref(), Some("IORING_OP_OPENAT"))?;
    ensure(t.flags.iter().any(|f| f == "io_uring") && t.ret.is_some_and(|r| r >= 0), || format!("{t:?}"))?;
    let status = format!("/proc/{agentmon}/status");
    ensure(!run.events.iter().any(|e| e.path.as_deref() == Some(&status)), || {
        format!("what any process list reads is a record:\n{}", run.summary())
    })?;
    // Submitted by the ring's kernel thread: a thread of the agent's process.
    check(Kind::FileDelete, &p("sq.txt"), "IORING_OP_UNLINKAT", "in_scope")?;
    let start = run.of(Kind::TaskStart).into_iter().next().ok_or_else(|| run.summary())?;
    eq("task_start detail.io_uring", start.detail.get("io_uring").and_then(|v| v.as_str()), Some("paths"))?;
    Ok(())
}
