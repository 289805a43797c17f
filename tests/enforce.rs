//! Enforcement on the real kernel: out-of-scope writes, deletes, execs and
//! connects fail under `enforcement: enforce` and are reported `denied`; the same
//! actions succeed but are flagged when observing; tamper attempts fail; an
//! in-scope workload (git, python) runs unharmed.

use std::{collections::HashMap, path::Path, time::Duration};

use agentmon::event::{Dst, Event, Kind};

use crate::{
    R,
    support::{self, SCENARIO_ENV, ensure, eq, run_agentmon_with, wait, workdir},
};

const EACCES: i32 = libc::EACCES;
const EPERM: i32 = libc::EPERM;

pub(crate) fn setup(name: &str, enforce: bool) -> Result<(std::path::PathBuf, std::path::PathBuf), String> {
    let d = workdir(name);
    std::fs::create_dir_all(d.join("repo")).map_err(|e| e.to_string())?;
    std::fs::write(d.join("victim.txt"), b"keep me").map_err(|e| e.to_string())?;
    std::fs::write(d.join("tool.sh"), b"#!/bin/sh\nexit 0\n").map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.join("tool.sh"), std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let t = d.join("task.yaml");
    std::fs::write(
        &t,
        format!(
            "id: {name}\nmode: execute\nenforcement: {}\nscope:\n  write: [\"{r}/**\"]\n  delete: [\"{r}/**\"]\n  \
             exec: [\"{me}\", \"/usr/bin/**\"]\n",
            if enforce { "enforce" } else { "observe" },
            r = d.join("repo").display(),
            me = me.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok((d, t))
}

pub(crate) fn run_attempts(
    d: &Path,
    task: &Path,
    actions: &[String],
) -> Result<(support::Run, HashMap<String, i32>), String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = vec![me.display().to_string(), d.display().to_string()];
    cmd.extend(actions.iter().cloned());
    let events = d.join("events.jsonl");
    let run = run_agentmon_with(&["--task", task.to_str().unwrap()], &cmd, &[(SCENARIO_ENV, "attempts")], d)?;
    let _ = events;
    ensure(run.code == 0, || format!("agent exited {}: {}\n{}", run.code, run.stderr, run.summary()))?;
    Ok((run, attempt_results(d)?))
}

/// The `attempts` scenario's results under `d`: action -> errno (0: it worked).
pub(crate) fn attempt_results(d: &Path) -> Result<HashMap<String, i32>, String> {
    let text = std::fs::read_to_string(d.join("repo/results.txt")).map_err(|e| format!("no results: {e}"))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(-1)))
        .collect())
}

fn root_pid(run: &support::Run) -> Result<u32, String> {
    run.events.iter().find(|e| e.kind == Kind::Exec).map(|e| e.pid).ok_or_else(|| run.summary())
}

const CORE: [&str; 8] =
    ["write_in", "chmod_in", "write_out", "chmod_out", "delete_out", "exec_out", "tcp", "udp"];

/// errno of a TCP connect outside the scope: Landlock's port rule answers EACCES;
/// on the BPF LSM tier the task cgroup's guard alone decides, with EPERM.
pub(crate) fn tcp_denied() -> i32 {
    if support::bpf_lsm() { EPERM } else { EACCES }
}

pub fn enforce_denies_out_of_scope() -> R {
    let (d, task) = setup("enforce", true)?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&task, &d)?);
    }
    let mut actions: Vec<String> = CORE.iter().map(|s| s.to_string()).collect();
    actions.extend(["xattr_out", "chown_out", "link_out_in", "execveat_out"].map(String::from));
    let (run, res) = run_attempts(&d, &task, &actions)?;
    let start = run.of(Kind::TaskStart).into_iter().next().ok_or_else(|| run.summary())?;
    eq("enforcing tier", start.detail.get("tier").and_then(|v| v.as_str()), Some(support::tier()))?;
    let want = [
        ("write_in", 0),
        // Mode changes: held by the gate (Landlock tier) or checked in the kernel
        // (BPF LSM tier); in scope they go through, outside it they are refused.
        ("chmod_in", 0),
        ("chmod_out", EACCES),
        ("write_out", EACCES),
        ("delete_out", EACCES),
        ("exec_out", EACCES),
        ("tcp", tcp_denied()),
        ("udp", EPERM),
        // Extended attributes outside the scope: refused by the seccomp filter on
        // the Landlock tier (none may change), by the xattr hooks on the LSM tier.
        ("xattr_out", if support::bpf_lsm() { EACCES } else { EPERM }),
        ("chown_out", EACCES),
        // Landlock refuses a link that would widen the file's rights with EXDEV.
        ("link_out_in", if support::bpf_lsm() { EACCES } else { libc::EXDEV }),
        // A program outside scope.exec run by its descriptor, not a path.
        ("execveat_out", EACCES),
    ];
    for (k, v) in want {
        eq(&format!("{k} errno"), res.get(k).copied(), Some(v))?;
    }
    ensure(d.join("victim.txt").exists(), || "the out-of-scope delete happened".into())?;
    use std::os::unix::fs::PermissionsExt;
    let mode =
        std::fs::metadata(d.join("victim.txt")).map_err(|e| e.to_string())?.permissions().mode() & 0o777;
    ensure(mode != 0o666, || "the out-of-scope chmod happened".into())?;
    let ch = run.find(Kind::FileChmod, &d.join("victim.txt"))?;
    eq("chmod verdict", (ch.verdict.as_deref(), ch.error.as_deref()), (Some("denied"), Some("EACCES")))?;
    let ok = run.find(Kind::FileChmod, &d.join("repo/ok.txt"))?;
    eq("in-scope chmod", (ok.verdict.as_deref(), ok.error.as_deref()), (Some("in_scope"), None))?;
    ensure(!d.join("outside.txt").exists(), || "the out-of-scope write happened".into())?;
    // Each blocked side effect is an event with verdict denied and the clause.
    let w = run.find(Kind::FileCreate, &d.join("outside.txt"))?;
    eq("write verdict", w.verdict.as_deref(), Some("denied"))?;
    eq("write error", w.error.as_deref(), Some("EACCES"))?;
    let del = run.find(Kind::FileDelete, &d.join("victim.txt"))?;
    eq("delete verdict", del.verdict.as_deref(), Some("denied"))?;
    let tool = d.join("tool.sh");
    let ex = run
        .of(Kind::Exec)
        .into_iter()
        .find(|e| e.path.as_deref() == tool.to_str() && e.syscall.as_deref() != Some("execveat"))
        .ok_or_else(|| format!("no exec record of {}:\n{}", tool.display(), run.summary()))?;
    eq("exec verdict", (ex.verdict.as_deref(), ex.error.as_deref()), (Some("denied"), Some("EACCES")))?;
    ensure(ex.reason.as_deref().is_some_and(|r| r.starts_with("scope.exec")), || format!("{:?}", ex.reason))?;
    let by_fd = run
        .of(Kind::Exec)
        .into_iter()
        .find(|e| e.syscall.as_deref() == Some("execveat"))
        .ok_or_else(|| format!("no exec record of the execveat:\n{}", run.summary()))?;
    eq(
        "execveat by descriptor: (path, verdict, error)",
        (by_fd.path.as_deref(), by_fd.verdict.as_deref(), by_fd.error.as_deref()),
        (d.join("tool.sh").to_str(), Some("denied"), Some("EACCES")),
    )?;
    let tcp_errno = if support::bpf_lsm() { "EPERM" } else { "EACCES" };
    let c = run
        .of(Kind::Connect)
        .into_iter()
        .find(|e| e.error.as_deref() == Some(tcp_errno))
        .ok_or_else(|| run.summary())?;
    eq("connect verdict", c.verdict.as_deref(), Some("denied"))?;
    let x = run.find(Kind::FileXattr, &d.join("victim.txt"))?;
    eq("xattr verdict", x.verdict.as_deref(), Some("denied"))?;
    ensure(run.alerts.iter().any(|a| &*a.verdict == "denied"), || "no denied alert".into())?;
    Ok(())
}

pub fn observe_flags_but_allows() -> R {
    let (d, task) = setup("observe", false)?;
    // Metadata changes and a run by descriptor first: delete_out removes the victim.
    let meta = ["xattr_out", "chown_out", "execveat_out", "execveat_elf", "execveat_dir"];
    let mut actions: Vec<String> = meta.iter().chain(CORE.iter()).map(|s| s.to_string()).collect();
    // The agent may not contain (here: thaw or kill) tasks through the control socket.
    // Both must be refused: a kill that went through ends the run; a thaw shows in the result.
    actions.extend(["ctl=kill:observe".to_string(), "ctl=thaw:observe".to_string()]);
    let (run, res) = run_attempts(&d, &task, &actions)?;
    // A tmpfs before 6.6 keeps no user xattrs (the guests' /tmp): EOPNOTSUPP.
    let xattr_errno = res.get("xattr_out").copied().filter(|e| *e == libc::EOPNOTSUPP);
    for k in meta.iter().chain(CORE.iter()) {
        let want = if *k == "xattr_out" { xattr_errno.or(Some(0)) } else { Some(0) };
        eq(&format!("{k} errno (observe)"), res.get(*k).copied(), want)?;
    }
    eq("containment from inside the task", res.get("ctl").copied(), Some(EPERM))?;
    // Allowed, but each is seen and judged outside the scope.
    let victim = d.join("victim.txt");
    let outside = |what: &str, e: &agentmon::event::Event, error: Option<&str>| {
        ensure(
            matches!(e.verdict.as_deref(), Some("violation" | "out_of_scope")) && e.error.as_deref() == error,
            || format!("{what}: {:?} {:?}", e.verdict, e.error),
        )
    };
    outside("chmod", run.find(Kind::FileChmod, &victim)?, None)?;
    outside("chown", run.find(Kind::FileChown, &victim)?, None)?;
    outside("xattr", run.find(Kind::FileXattr, &victim)?, xattr_errno.map(|_| "EOPNOTSUPP"))?;
    // Run by descriptor, a program is named `/dev/fd/N[/NAME]` by the kernel: the
    // record names the file — a script read through its descriptor, one named under a
    // directory's, an ELF whose descriptor was closed on exec.
    let true_ = std::fs::canonicalize("/usr/bin/true").map_err(|e| e.to_string())?;
    let by_fd: Vec<_> =
        run.of(Kind::Exec).into_iter().filter(|e| e.flags.iter().any(|f| f == "by_descriptor")).collect();
    let mut paths: Vec<&str> = by_fd.iter().filter_map(|e| e.path.as_deref()).collect();
    paths.sort();
    let script = d.join("tool.sh");
    let mut want = vec![script.to_str().unwrap(), script.to_str().unwrap(), true_.to_str().unwrap()];
    want.sort();
    eq(&format!("execs by descriptor:\n{}", run.summary()), paths, want)?;
    for e in by_fd {
        if e.path.as_deref() == script.to_str() {
            outside("exec by descriptor", e, None)?;
        } else {
            // In scope.exec (/usr/bin/**): before, it was `/dev/fd/N`, out of it.
            eq("ELF by descriptor verdict", e.verdict.as_deref(), Some("in_scope"))?;
        }
    }
    ensure(run.of(Kind::Action).is_empty(), || "an action was taken for the agent".into())?;
    let w = run.find(Kind::FileCreate, &d.join("outside.txt"))?;
    eq("write verdict", w.verdict.as_deref(), Some("violation"))?;
    let del = run.find(Kind::FileDelete, &d.join("victim.txt"))?;
    ensure(matches!(del.verdict.as_deref(), Some("violation" | "out_of_scope")), || {
        format!("{:?}", del.verdict)
    })?;
    let ex = run
        .of(Kind::Exec)
        .into_iter()
        .find(|e| e.path.as_deref() == d.join("tool.sh").to_str() && e.flags.is_empty())
        .ok_or_else(|| format!("no exec record of tool.sh by its name:\n{}", run.summary()))?;
    ensure(matches!(ex.verdict.as_deref(), Some("out_of_scope" | "violation")), || {
        format!("{:?}", ex.verdict)
    })?;
    let a = run.alerts.iter().find(|a| a.event.id == ex.id).ok_or("no alert for the exec")?;
    ensure(a.reasons.iter().any(|r| r.clause.as_deref() == Some("scope.exec")), || {
        format!("{:?}", a.reasons)
    })?;
    Ok(())
}

/// `sensitive_reads: deny`: reads of the sensitive set outside `scope.read` fail
/// before they happen (BPF LSM tier), matched by whole pattern, not by basename (a
/// file called `config` outside `.kube/` is read as usual). Without that tier the
/// task is refused, saying so.
pub fn sensitive_reads_denied_when_asked() -> R {
    let d = workdir("deny-reads");
    for dir in ["repo", "home/.kube", "proj", "allowed"] {
        std::fs::create_dir_all(d.join(dir)).map_err(|e| e.to_string())?;
    }
    let files = ["home/.kube/config", "home/.env", "proj/config", "allowed/.env"];
    for f in files {
        std::fs::write(d.join(f), b"secret").map_err(|e| e.to_string())?;
    }
    let task = support::read_write_task(&d, "deny-reads", true)?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&task, &d)?);
    }
    if !support::bpf_lsm() {
        let out = std::process::Command::new(support::agentmon())
            .args(["exec", "--quiet", "--task"])
            .arg(&task)
            .args(["--", "/bin/true"])
            .current_dir(&d)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&out.stderr);
        return Ok(ensure(out.status.code() == Some(125) && err.contains("sensitive_reads"), || {
            format!("a task refusing sensitive reads ran without the BPF LSM tier: {:?} {err}", out.status)
        })?);
    }
    // Symlinks named like nothing sensitive to a file outside scope.read, one inside
    // scope.read (read), one inside scope.write (opened to read and write): refused by
    // the file, and reported as its read, naming it and the name asked by. Before, the
    // first left no record (a failed open is known by its name only), and the second
    // was a write to the symlink's name, judged in scope.
    let (link, rw_link) = (d.join("allowed/notes"), d.join("repo/notes"));
    for l in [&link, &rw_link] {
        std::os::unix::fs::symlink(d.join("home/.kube/config"), l).map_err(|e| e.to_string())?;
    }
    let mut actions: Vec<String> = files.iter().map(|f| format!("read={}", d.join(f).display())).collect();
    actions.push(format!("read={}", link.display()));
    actions.push(format!("read_write={}", rw_link.display()));
    let (run, res) = run_attempts(&d, &task, &actions)?;
    let got = |f: &str| res.get(&format!("read:{}", d.join(f).display())).copied();
    eq("a symlink to .kube/config", got("allowed/notes"), Some(EACCES))?;
    eq(
        "a symlink to .kube/config opened to read and write",
        res.get(&format!("read_write:{}", rw_link.display())).copied(),
        Some(EACCES),
    )?;
    let kube = d.join("home/.kube/config").display().to_string();
    for l in [&link, &rw_link] {
        let asked = l.display().to_string();
        let through: Vec<_> = run
            .events
            .iter()
            .filter(|e| e.detail.get("requested_path").and_then(|p| p.as_str()) == Some(asked.as_str()))
            .collect();
        let [through] = through[..] else {
            return Err(
                format!("not one event for the read refused through {asked}:\n{}", run.summary()).into()
            );
        };
        // (denied: judged out of scope, though the name asked by is inside scope.read
        // or scope.write.)
        eq(
            &format!("read refused through {asked} (kind, path, verdict, error)"),
            (through.kind, through.path.as_deref(), through.verdict.as_deref(), through.error.as_deref()),
            (Kind::SensitiveRead, Some(kube.as_str()), Some("denied"), Some("EACCES")),
        )?;
    }
    eq(".kube/config", got("home/.kube/config"), Some(EACCES))?;
    eq(".env", got("home/.env"), Some(EACCES))?;
    eq("a file called config elsewhere", got("proj/config"), Some(0))?;
    eq(".env inside scope.read", got("allowed/.env"), Some(0))?;
    let refused = run
        .events
        .iter()
        .find(|e| e.path.as_deref() == Some(d.join("home/.kube/config").to_str().unwrap()))
        .ok_or_else(|| format!("no event for the refused read:\n{}", run.summary()))?;
    eq(
        "refused read",
        (refused.verdict.as_deref(), refused.error.as_deref()),
        (Some("denied"), Some("EACCES")),
    )?;
    Ok(())
}

/// The agent cannot signal or ptrace agentmon, write its files, load BPF, use
/// io_uring or leave its cgroup.
pub fn tamper_attempts_fail() -> R {
    let (d, task) = setup("tamper", true)?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&task, &d)?);
    }
    let rules = d.join("rules");
    std::fs::create_dir_all(&rules).map_err(|e| e.to_string())?;
    let events = d.join("events-tamper.jsonl");
    std::fs::write(&events, b"").map_err(|e| e.to_string())?;
    let cgroup = ["/sys/fs/cgroup/unified/cgroup.procs", "/sys/fs/cgroup/cgroup.procs"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("no cgroup v2 cgroup.procs")?;
    let actions: Vec<String> = vec![
        "signal_agentmon".into(),
        "ptrace_agentmon".into(),
        "getfd_agentmon".into(),
        format!("write_file={}", events.display()),
        format!("write_file={}", task.display()),
        format!("create_in={}", rules.display()),
        "bpf".into(),
        "io_uring".into(),
        format!("leave_cgroup={cgroup}"),
        "unix=/run/agentmon/none.sock".into(),
        "compat_creat".into(),
        "x32_getpid".into(),
        "memfd_exec".into(),
        "write_in".into(),
        "xattr_in".into(),
        format!("write_bound={}", d.join("repo/mirror").display()),
        "rmdir_scope".into(),
        "open_tree".into(),
        "unshare_ns".into(),
        "clone3_ns".into(),
        "seccomp_listener".into(),
        "sigio_agentmon".into(),
        "tiocsti".into(),
        "tiocsti_high".into(),
        "mknod_blk".into(),
        format!("exec_ldso={}", d.join("outside-true").display()),
        "perf_event_open".into(),
        "mount".into(),
        "process_vm_writev".into(),
        "setns".into(),
        "userfaultfd".into(),
        "socketpair_dgram".into(),
        "file_flags".into(),
        "fs_ioctls".into(),
        "renice_parent".into(),
        "renice_pgrp".into(),
        "renice_self".into(),
        "ioprio_parent".into(),
        "sched_parent".into(),
        "prlimit_parent".into(),
        "prlimit_self".into(),
    ];
    // The task's manifest (agentmon protects it), bind-mounted into the task's write
    // scope by someone else: the same file under a path the scope covers.
    std::fs::copy("/bin/true", d.join("outside-true")).map_err(|e| e.to_string())?;
    std::fs::write(d.join("repo/mirror"), b"").map_err(|e| e.to_string())?;
    let mirror = support::BindMount::new(&task, &d.join("repo/mirror"))?;
    // A process outside every task: not the agent's to signal.
    let mut outsider =
        std::process::Command::new("sleep").arg("60").spawn().map_err(|e| format!("sleep: {e}"))?;
    let mut actions = actions;
    actions.push(format!("signal_pid={}", outsider.id()));
    let attempt = run_attempts(&d, &task, &actions);
    let _ = outsider.kill();
    let _ = outsider.wait();
    drop(mirror);
    let (run, res) = attempt?;
    let lsm = support::bpf_lsm();
    let want = [
        ("signal_agentmon", EPERM),
        ("signal_pid", EPERM),
        ("ptrace_agentmon", EPERM),
        ("getfd_agentmon", EPERM),
        ("write_file", EACCES),
        ("create_in", EACCES),
        ("bpf", EPERM),
        ("io_uring", EPERM),
        ("leave_cgroup", EACCES),
        ("unix", EPERM),
        // A 32-bit syscall, which syscall tracepoints do not report: killed by the
        // filter, and the (in-scope) file it would have created is not there.
        ("compat_creat", 1000 + libc::SIGSYS),
        // ... and an x32 one killed the same way (the kernel alone says ENOSYS here).
        ("x32_getpid", 1000 + libc::SIGSYS),
        // Code with no file: Landlock does not limit anonymous files, so a memfd that
        // could be executed is refused when it is made; the LSM tier lets it be made
        // and refuses to execute it.
        ("memfd_exec", if lsm { EACCES } else { EPERM }),
        // Landlock tier: no layer keeps extended attributes to the scope, none may be
        // changed. LSM tier: kept to the write scope.
        ("xattr_in", if lsm { 0 } else { EPERM }),
        // A protected file through a bind mount: the LSM tier knows it by its inode;
        // Landlock goes by the path, which the scope covers (docs/enforcement.md).
        ("write_bound", if lsm { EACCES } else { 0 }),
        // The ELF loader is granted on the Landlock tier (every dynamic program
        // needs it), and runs any file given to it; the LSM tier does not grant it.
        ("exec_ldso", if lsm { EACCES } else { 0 }),
        // Its scope's root itself: delete: repo/** is for what is beneath it.
        ("rmdir_scope", EACCES),
        ("open_tree", EPERM),
        ("unshare_ns", EPERM),
        // The filter answers every clone3 ENOSYS (the C library falls back to clone).
        ("clone3_ns", libc::ENOSYS),
        // With agentmon's gate listener alive the kernel says EBUSY; refused anyway.
        ("seccomp_listener", EPERM),
        ("sigio_agentmon", EPERM),
        ("tiocsti", EPERM),
        ("tiocsti_high", EPERM),
        ("mknod_blk", EPERM),
        ("perf_event_open", EPERM),
        ("mount", EPERM),
        ("process_vm_writev", EPERM),
        ("setns", EPERM),
        ("userfaultfd", EPERM),
        ("socketpair_dgram", EPERM),
        ("file_flags", EPERM),
        ("fs_ioctls", EPERM),
        // agentmon's priority, I/O class, policy and limits (the same owner is all
        // the kernel asks): refused; the caller's own: allowed.
        ("renice_parent", EPERM),
        ("renice_pgrp", EPERM),
        ("renice_self", 0),
        ("ioprio_parent", EPERM),
        ("sched_parent", EPERM),
        ("prlimit_parent", EPERM),
        ("prlimit_self", 0),
    ];
    for (k, v) in want {
        // The guests' /tmp (overlayfs on 6.1) has no user extended attributes: allowed
        // there means the file system's own EOPNOTSUPP, not a refusal.
        if k == "xattr_in" && v == 0 && res.get(k) == Some(&libc::EOPNOTSUPP) {
            continue;
        }
        eq(&format!("{k} errno"), res.get(k).copied(), Some(v))?;
    }
    ensure(!d.join("repo/compat.txt").exists(), || "the 32-bit creat created its file".into())?;
    ensure(std::fs::read(&events).map_err(|e| e.to_string())?.is_empty(), || {
        "the events file was written by the agent".into()
    })?;
    // Every refused attempt is an event, refused ('denied') and with its errno.
    let denied = |kind: Kind, syscall: &str, errno: &str| {
        run.events.iter().any(|e| {
            e.kind == kind
                && e.syscall.as_deref() == Some(syscall)
                && e.error.as_deref() == Some(errno)
                && e.verdict.as_deref() == Some("denied")
        })
    };
    for (kind, syscall, errno) in [
        (Kind::Tamper, "kill", "EPERM"),
        (Kind::Ptrace, "ptrace", "EPERM"),
        (Kind::Tamper, "pidfd_getfd", "EPERM"),
        (Kind::Bpf, "bpf", "EPERM"),
        (Kind::Tamper, "io_uring_setup", "EPERM"),
        (Kind::Tamper, "socket", "EPERM"),
        if lsm { (Kind::Exec, "execveat", "EACCES") } else { (Kind::Tamper, "memfd_create", "EPERM") },
        (Kind::FileWrite, "openat", "EACCES"),
        (Kind::FileCreate, "openat", "EACCES"),
        (Kind::Tamper, "perf_event_open", "EPERM"),
        (Kind::Tamper, "mount", "EPERM"),
        (Kind::Tamper, "process_vm_writev", "EPERM"),
        (Kind::Tamper, "open_tree", "EPERM"),
        (Kind::Tamper, "setns", "EPERM"),
        (Kind::Tamper, "userfaultfd", "EPERM"),
        (Kind::Tamper, "unshare", "EPERM"),
        // glibc makes mknod(3) the mknodat call.
        (Kind::Tamper, "mknodat", "EPERM"),
        (Kind::Tamper, "socketpair", "EPERM"),
        // F_SETOWN at agentmon; TIOCSTI (twice: the second with high bits set).
        (Kind::Tamper, "fcntl", "EPERM"),
        (Kind::Tamper, "ioctl", "EPERM"),
        (Kind::Tamper, "clone3", "ENOSYS"),
        (Kind::Tamper, "seccomp", "EPERM"),
    ] {
        ensure(denied(kind, syscall, errno), || {
            format!("no denied {kind:?} event of {syscall} ({errno}):\n{}", run.summary())
        })?;
    }
    let terminal = support::tamper_of(&run.events, "terminal input");
    ensure(
        terminal.len() == 2
            && terminal.iter().all(|e| {
                e.detail.get("request").and_then(|r| r.as_str()) == Some("TIOCSTI")
                    && e.task.is_some()
                    && e.comm.starts_with("kernel")
            }),
        || format!("TIOCSTI refusals recorded: {terminal:?}"),
    )?;
    let flags = support::tamper_of(&run.events, "file flags");
    let requests: Vec<_> =
        flags.iter().filter_map(|e| e.detail.get("request").and_then(|r| r.as_str())).collect();
    eq("file flag refusals recorded", requests, vec!["FS_IOC_SETFLAGS", "FS_IOC_FSSETXATTR"])?;
    let aimed = |attempt: &str| {
        let mut calls: Vec<String> = support::tamper_of(&run.events, attempt)
            .iter()
            .filter_map(|e| e.syscall.as_deref().map(String::from))
            .collect();
        calls.sort();
        calls
    };
    eq(
        "scheduling refusals recorded",
        aimed("scheduling"),
        vec![
            "ioprio_set".to_string(),
            "sched_setscheduler".into(),
            "setpriority".into(),
            "setpriority".into(),
        ],
    )?;
    eq("limit refusals recorded", aimed("process limits"), vec!["prlimit64".to_string()])?;
    eq("file-system refusals recorded", support::tamper_of(&run.events, "file system").len(), 9)?;
    eq("lease refusals recorded", aimed("lease"), vec!["fcntl".to_string()])?;
    let sigio = support::tamper_of(&run.events, "signal routing");
    ensure(
        sigio.iter().any(|e| e.detail.get("request").and_then(|r| r.as_str()) == Some("F_SETOWN")),
        || format!("F_SETOWN refusal recorded: {sigio:?}"),
    )?;
    let sigsys = run.of(Kind::Exit).iter().filter(|e| e.signal.as_deref() == Some("SIGSYS")).count();
    eq("processes killed for 32-bit and x32 calls", sigsys, 2)?;
    Ok(())
}

/// A file reached by a handle (open_by_handle_at), not a path: observed, the
/// open is reported with the file's path and judged (outside the scope here;
/// before, only the call was recorded, with no path);
/// enforced, the call is refused, and both are tamper records.
pub fn file_handles_are_seen() -> R {
    for enforce in [false, true] {
        let (d, task) = setup(if enforce { "handle-enforced" } else { "handle-observed" }, enforce)?;
        if enforce && !support::can_enforce() {
            return Ok(support::enforce_refused_here(&task, &d)?);
        }
        // On a tmpfs: the guests' /tmp (overlayfs) gives no file handles.
        let fs = support::Tmpfs::new(&d.join("handles"), "size=1m")?;
        let victim = d.join("handles/victim.txt");
        std::fs::write(&victim, b"keep me").map_err(|e| e.to_string())?;
        let attempt = run_attempts(&d, &task, &[format!("handle_write={}", victim.display())]);
        let kept = std::fs::read(&victim).map_err(|e| e.to_string());
        drop(fs);
        let (run, res) = attempt?;
        let by_handle = support::tamper_of(&run.events, "file handle")
            .into_iter()
            .find(|e| e.syscall.as_deref() == Some("open_by_handle_at"))
            .ok_or_else(|| format!("no tamper record of open_by_handle_at:\n{}", run.summary()))?;
        if enforce {
            eq("enforced: handle write", res.get("handle_write").copied(), Some(EPERM))?;
            eq("enforced: the call's verdict", by_handle.verdict.as_deref(), Some("denied"))?;
            eq("victim", kept?, b"keep me".to_vec())?;
        } else {
            eq("observed: handle write", res.get("handle_write").copied(), Some(0))?;
            let w = run.find(Kind::FileWrite, &victim)?;
            eq("the open's call", w.syscall.as_deref(), Some("open_by_handle_at"))?;
            // Out of the scope, as a write there by path is: the shipped rule's.
            eq(
                "its verdict",
                (w.verdict.as_deref(), w.rule.as_deref()),
                (Some("violation"), Some("scope.write-outside")),
            )?;
        }
    }
    Ok(())
}

/// In observe mode nothing stops a root agent from tracing agentmon: the trace is
/// an event, and agentmon's stopped loop is a tamper record with the tracer's pid.
pub fn stopped_agentmon_is_reported() -> R {
    let (d, task) = setup("stopped", false)?;
    let (run, res) = run_attempts(&d, &task, &["stop_agentmon".to_string()])?;
    eq("ptrace attach (observe)", res.get("stop_agentmon").copied(), Some(0))?;
    let agent = root_pid(&run)?;
    let traced = run.of(Kind::Ptrace);
    ensure(
        traced.iter().any(|e| e.detail.get("request").and_then(|v| v.as_str()) == Some("PTRACE_ATTACH")),
        || run.summary(),
    )?;
    let stop = run
        .tamper("stopping agentmon")
        .ok_or_else(|| format!("no record of the stopped loop:\n{}", run.summary()))?;
    eq("tracer", stop.detail.get("tracer_pid").and_then(|v| v.as_u64()), Some(agent as u64))?;
    ensure(stop.detail.get("stopped_ms").and_then(|v| v.as_u64()).is_some_and(|ms| ms >= 2000), || {
        format!("{:?}", stop.detail)
    })?;
    ensure(run.alerts.iter().any(|a| a.event.id == stop.id), || "no alert for the stopped loop".into())?;
    Ok(())
}

/// In observe mode nothing stops a root agent from lowering agentmon's priority or
/// limits (the same owner is all the kernel asks): agentmon puts them back within a
/// tick, and the change is a tamper record with its alert. Before, agentmon ran on
/// at nice 19, its file size limit at 1 GiB, and nothing said so.
pub fn agentmons_priority_is_kept() -> R {
    let (d, task) = setup("demoted", false)?;
    let (run, res) = run_attempts(&d, &task, &["demote_agentmon".to_string()])?;
    eq("agentmon's priority and limit put back (observe)", res.get("demote_agentmon").copied(), Some(0))?;
    let changed: Vec<String> = support::tamper_of(&run.events, "starving agentmon")
        .into_iter()
        .flat_map(|e| e.detail.get("changed").and_then(|c| c.as_array()).cloned().unwrap_or_default())
        .filter_map(|c| c.as_str().map(String::from))
        .collect();
    ensure(changed.iter().any(|c| c.contains(": nice ")), || {
        format!("no nice change recorded: {changed:?}")
    })?;
    ensure(changed.iter().any(|c| c.starts_with("RLIMIT_FSIZE")), || {
        format!("no limit change recorded: {changed:?}")
    })?;
    let rec = run.tamper("starving agentmon").ok_or_else(|| run.summary())?;
    ensure(run.alerts.iter().any(|a| a.event.id == rec.id), || "no alert for the change".into())?;
    Ok(())
}

/// Root can switch a PREEMPT_DYNAMIC kernel's preemption model at any time; one
/// that preempts kernel code may preempt agentmon's fexit programs mid-run (and
/// hide syscalls from its tracepoints with no witness), the observation tier agentmon
/// chose for a model that did not. An observed root
/// agent switches it: where agentmon started under a model that does not preempt
/// (Debian's voluntary), it puts it back within a tick; where it started under one
/// that does (its tiers hold under any), the switch is left as it is (two agentmons
/// started under different models must not switch it back and forth). Either way
/// the switch is a tamper record with its alert. Before, agentmon ran on under the
/// new model and nothing said so. Where the kernel lets no one read the model (no
/// debugfs, or debugfs refused, as on this build host), the switch must fail.
pub fn switching_the_preemption_model_is_put_back() -> R {
    const MODEL: &str = "/sys/kernel/debug/sched/preempt";
    let (d, task) = setup("repreempt", false)?;
    // Then again behind a tmpfs over /sys/kernel/debug whose file says nothing
    // changed, the switch made through debugfs mounted elsewhere: agentmon reads the
    // file it opened at its start.
    let hidden = format!("switch_preemption_hidden={}", d.join("debugfs").display());
    let (run, res) = run_attempts(&d, &task, &["switch_preemption".to_string(), hidden])?;
    let code = res.get("switch_preemption").copied();
    eq("the hidden switch ended as the plain one", res.get("switch_preemption_hidden").copied(), code)?;
    let switched = support::tamper_of(&run.events, "switching the kernel's preemption");
    if let Some(e @ (libc::EPERM | libc::EACCES | libc::ENOENT)) = code {
        // The agent is root, as this test is: what it could not read, neither can this.
        let here = std::fs::read_to_string(MODEL);
        ensure(here.is_err(), || {
            format!("the agent could not read the model (errno {e}), but root can: {here:?}")
        })?;
        eprintln!("switching_the_preemption_model_is_put_back: this kernel refused the switch (errno {e})");
        ensure(switched.is_empty(), || format!("a switch that did not happen was reported: {switched:?}"))?;
        return Ok(());
    }
    let put_back = agentmon::kernel::preempt::preempts().is_none();
    // scenarios::NOT_BACK: the model was still switched 20 s later (the agent then
    // put it back itself).
    eq(
        "the model put back by agentmon (observe)",
        code,
        Some(if put_back { 0 } else { crate::scenarios::NOT_BACK }),
    )?;
    let changed: Vec<String> = switched
        .iter()
        .flat_map(|e| e.detail.get("changed").and_then(|c| c.as_array()).cloned().unwrap_or_default())
        .filter_map(|c| c.as_str().map(String::from))
        .collect();
    let said = if put_back { "(put back)" } else { "(left: agentmon's tiers hold under it)" };
    let records =
        changed.iter().filter(|c| c.starts_with("the kernel's preemption model ") && c.ends_with(said));
    eq(&format!("records of the two switches ending {said:?} ({changed:?})"), records.count(), 2)?;
    let rec = run.tamper("switching the kernel's preemption").ok_or_else(|| run.summary())?;
    ensure(run.alerts.iter().any(|a| a.event.id == rec.id), || "no alert for the switch".into())?;
    Ok(())
}

/// In observe mode the i386 and x32 calls that syscall tracepoints miss are reported
/// (a tamper record with its alert, before they run, with the path the agent asked
/// for) and let through: observe mode changes nothing the agent does.
pub fn observed_compat_calls_are_reported() -> R {
    let (d, task) = setup("compat", false)?;
    let actions = [
        "compat_creat".to_string(),
        "x32_getpid".to_string(),
        "compat_creat_stalled".to_string(),
        "compat_dup".to_string(),
    ];
    let (run, res) = run_attempts(&d, &task, &actions)?;
    eq("32-bit creat (observe)", res.get("compat_creat").copied(), Some(0))?;
    eq("32-bit dup (observe)", res.get("compat_dup").copied(), Some(0))?;
    // No syscall tracepoint runs for an i386 call: where the kernel preempts, the
    // witness of skipped programs took i386 dup (41) for x86_64's socket (41).
    let unseen: Vec<&agentmon::event::Event> = run
        .events
        .iter()
        .filter(|e| e.lost.as_ref().is_some_and(|l| l.contains_key("unseen_syscall")))
        .collect();
    ensure(unseen.is_empty(), || format!("i386 calls taken for skipped 64-bit ones: {unseen:?}"))?;
    // Its path in a page the agent serves 3 s late (userfaultfd): agentmon's read of
    // the agent's memory is not held by it (a remote read of a missing page fails
    // at once: the call is recorded without its path), and the call still happens.
    eq("32-bit creat, its page served late (observe)", res.get("compat_creat_stalled").copied(), Some(0))?;
    let creats: Vec<&agentmon::event::Event> = run
        .events
        .iter()
        .filter(|e| e.kind == Kind::Tamper && e.syscall.as_deref() == Some("creat"))
        .collect();
    eq("i386 creat records", creats.len(), 2)?;
    ensure(creats.iter().any(|e| !e.detail.contains_key("requested_path")), || {
        format!("the late page's path was read: {:?}", creats.iter().map(|e| &e.detail).collect::<Vec<_>>())
    })?;
    ensure(d.join("repo/compat.txt").exists(), || {
        "the observed 32-bit creat did not create its file".into()
    })?;
    let foreign = |abi: &str, syscall: &str| {
        run.events
            .iter()
            .find(|e| {
                e.kind == Kind::Tamper
                    && e.detail.get("abi").and_then(|v| v.as_str()) == Some(abi)
                    && e.syscall.as_deref() == Some(syscall)
            })
            .ok_or_else(|| format!("no record of the {abi} {syscall}:\n{}", run.summary()))
    };
    let creat = foreign("i386", "creat")?;
    let want = d.join("repo/compat.txt").display().to_string();
    eq("requested path", creat.detail.get("requested_path").and_then(|v| v.as_str()), Some(want.as_str()))?;
    eq("task", creat.task.as_deref(), Some("compat"))?;
    eq("verdict", creat.verdict.as_deref(), Some("violation"))?;
    eq("i386 number", creat.detail.get("nr").and_then(|v| v.as_i64()), Some(8))?;
    ensure(run.alerts.iter().any(|a| a.event.id == creat.id), || "no alert for the 32-bit creat".into())?;
    let x32 = foreign("x32", "getpid")?;
    eq("x32 number", x32.detail.get("nr").and_then(|v| v.as_i64()), Some(0x4000_0000 | libc::SYS_getpid))?;
    eq("task", x32.task.as_deref(), Some("compat"))?;
    let killed = run.of(Kind::Exit).iter().filter(|e| e.signal.as_deref() == Some("SIGSYS")).count();
    eq("processes killed in observe mode", killed, 0)?;
    Ok(())
}

/// An observed agent's i386 call whose path lies in a file's page on the agent's
/// own FUSE mount, answered 3 s late: agentmon reads the agent's memory off its
/// loop and gives up after 500 ms (the record says the path went unread), so the
/// agent cannot stop it for every task. Before, the loop waited on the agent's file
/// system (here 3 s; for ever if it never answers). Under enforcement, the same for
/// a held call's name in such a page, and for a path whose lookup is answered late.
pub fn memory_the_agent_serves_cannot_stop_agentmon() -> R {
    let (d, task) = setup("fuse-stall", false)?;
    let mnt = d.join("mnt");
    std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
    ensure(Path::new("/dev/fuse").exists(), || {
        "/dev/fuse is missing: this test needs FUSE (modprobe fuse)".into()
    })?;
    let actions = [format!("compat_creat_fuse={}", mnt.display())];
    let run = run_attempts(&d, &task, &actions);
    // The agent's server is gone with it: the mount is dead, take it away.
    support::unmount(&mnt);
    let (run, res) = run?;
    eq("32-bit creat through the agent's FUSE page", res.get("compat_creat_fuse").copied(), Some(0))?;
    let creat = run
        .events
        .iter()
        .find(|e| e.kind == Kind::Tamper && e.syscall.as_deref() == Some("creat"))
        .ok_or_else(|| format!("no record of the i386 creat:\n{}", run.summary()))?;
    eq("unread after (ms)", creat.detail.get("unread_ms").and_then(|v| v.as_u64()), Some(500))?;
    ensure(!creat.detail.contains_key("requested_path"), || "the path was read".into())?;

    // Under enforcement, a delete held for approval whose path lies in such a page
    // (the task cannot mount: a file system served late by someone else, here by
    // a process outside the task) is refused with EFAULT after 500 ms (no approver
    // is asked about a name agentmon could not read), and said.
    if !support::can_enforce() {
        return Ok(());
    }
    let (d, task) = setup("fuse-held", true)?;
    let text = std::fs::read_to_string(&task).map_err(|e| e.to_string())?;
    std::fs::write(&task, format!("{text}approval_required: [delete]\n")).map_err(|e| e.to_string())?;
    std::fs::write(d.join("repo/held.txt"), b"x").map_err(|e| e.to_string())?;
    let mnt = d.join("mnt");
    support::serve_fuse(&d, &mnt, None)?;
    // And a chmod of a path through that file system, whose lookup it answers
    // late: refused with ETIMEDOUT after 500 ms. Before, agentmon resolved the path
    // on its loop and waited for the lookup.
    let actions = [
        format!("unlink_mapped={}", mnt.join("f").display()),
        format!("chmod={}", mnt.join("slow").display()),
    ];
    let run = run_attempts(&d, &task, &actions);
    support::unmount(&mnt);
    let (run, res) = run?;
    eq("held unlink, its name in a page served late", res.get("unlink_mapped").copied(), Some(libc::EFAULT))?;
    ensure(d.join("repo/held.txt").exists(), || "the held file was deleted".into())?;
    let stalled = run
        .tamper("stalling agentmon")
        .ok_or_else(|| format!("no tamper record of the held call:\n{}", run.summary()))?;
    eq("its call", stalled.syscall.as_deref(), Some("unlink"))?;
    eq("its task", stalled.task.as_deref(), Some("fuse-held"))?;
    ensure(run.alerts.iter().any(|a| a.event.id == stalled.id), || "no alert for the held call".into())?;
    eq("chmod through a lookup answered late", res.get("chmod").copied(), Some(libc::ETIMEDOUT))?;
    let looked = run
        .events
        .iter()
        .find(|e| {
            e.kind == Kind::Tamper
                && matches!(e.syscall.as_deref(), Some("chmod" | "fchmodat" | "fchmodat2"))
                && e.detail.get("attempt").and_then(|v| v.as_str()) == Some("stalling agentmon")
        })
        .ok_or_else(|| format!("no tamper record of the chmod:\n{}", run.summary()))?;
    eq("its task", looked.task.as_deref(), Some("fuse-held"))?;
    ensure(run.alerts.iter().any(|a| a.event.id == looked.id), || "no alert for the chmod".into())?;
    Ok(())
}

/// A signal that reaches agentmon is a tamper record whichever way it was sent: to
/// one of its threads by thread id, or to the process group it shares with the
/// agent (observe mode: nothing refuses them; SIGWINCH does no harm).
pub fn signals_reaching_agentmon_are_reported() -> R {
    let (d, task) = setup("signals", false)?;
    let actions = ["signal_agentmon_thread".to_string(), "signal_group".to_string()];
    let (run, res) = run_attempts(&d, &task, &actions)?;
    eq("tkill to an agentmon thread", res.get("signal_agentmon_thread").copied(), Some(0))?;
    eq("kill(0)", res.get("signal_group").copied(), Some(0))?;
    // The root's parent.
    let agentmon =
        run.events.iter().find(|e| e.kind == Kind::Exec).and_then(|e| e.ppid).ok_or_else(|| run.summary())?;
    let seen = |to_process: bool| {
        run.events.iter().find(|e| {
            e.kind == Kind::Tamper
                && e.detail.get("attempt").and_then(|v| v.as_str()) == Some("signal to agentmon")
                && e.detail.get("signal").and_then(|v| v.as_str()) == Some("SIGWINCH")
                && e.detail.get("to_process").and_then(|v| v.as_bool()) == Some(to_process)
        })
    };
    for (how, to_process) in [("to a thread", false), ("to the process group", true)] {
        let ev = seen(to_process)
            .ok_or_else(|| format!("no tamper record of the signal {how}:\n{}", run.summary()))?;
        eq("target", ev.detail.get("target_pid").and_then(|v| v.as_u64()), Some(agentmon as u64))?;
        eq("task", ev.task.as_deref(), Some("signals"))?;
        ensure(run.alerts.iter().any(|a| a.event.id == ev.id), || format!("no alert for the signal {how}"))?;
    }
    Ok(())
}

/// git init/add/commit and a python script in scope run unharmed under enforcement.
pub fn in_scope_workload_runs() -> R {
    let d = workdir("workload");
    let repo = d.join("repo");
    std::fs::create_dir_all(&repo).map_err(|e| e.to_string())?;
    let t = d.join("task.yaml");
    std::fs::write(
        &t,
        format!(
            "id: workload\nmode: execute\nenforcement: enforce\nscope:\n  write: [\"{r}/**\"]\n  delete: [\"{r}/**\"]\n  \
             exec: [\"/usr/bin/**\", \"/usr/lib/git-core/**\"]\n",
            r = repo.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    // A tarball with a directory of mode 0750: GNU tar sets a directory's mode last,
    // with chmod("/proc/self/fd/N") on an O_PATH descriptor of it. (Numeric owners:
    // looking names up, glibc tries nscd's unix socket, which enforcement refuses.)
    let src = d.join("src/d");
    std::fs::create_dir_all(&src).map_err(|e| e.to_string())?;
    std::fs::write(src.join("f"), b"x").map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    for (p, m) in [(&src, 0o750), (&src.join("f"), 0o640)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).map_err(|e| e.to_string())?;
    }
    let tarball = d.join("d.tar");
    let st = std::process::Command::new("tar")
        .arg("cf")
        .arg(&tarball)
        .arg("-C")
        .arg(d.join("src"))
        .arg("d")
        .status();
    ensure(st.is_ok_and(|s| s.success()), || "tar cf failed".into())?;
    let script = "set -e; cd \"$1\"; git init -q .; echo 'print(sum(range(10)))' > s.py; \
                  /usr/bin/python3 s.py > out.txt; git add -A; \
                  git -c user.name=agent -c user.email=agent@test commit -qm 'agent work'; \
                  git log --oneline | wc -l > commits.txt; \
                  mkdir x; tar xf \"$2\" --numeric-owner -C x; stat -c %a x/d x/d/f > modes.txt";
    let cmd: Vec<String> = ["/bin/sh", "-c", script, "sh"]
        .iter()
        .map(|s| s.to_string())
        .chain([repo.display().to_string(), tarball.display().to_string()])
        .collect();
    let env = [("HOME", repo.to_str().unwrap()), ("PATH", "/usr/bin:/bin")];
    let run = run_agentmon_with(&["--task", t.to_str().unwrap()], &cmd, &env, &d)?;
    ensure(run.code == 0, || {
        format!("workload failed under enforcement (exit {}): {}\n{}", run.code, run.stderr, run.summary())
    })?;
    eq(
        "python output",
        std::fs::read_to_string(repo.join("out.txt")).map_err(|e| e.to_string())?,
        "45\n".into(),
    )?;
    eq(
        "commits",
        std::fs::read_to_string(repo.join("commits.txt")).map_err(|e| e.to_string())?.trim().to_string(),
        "1".into(),
    )?;
    eq(
        "modes tar set (the directory's through /proc/self/fd)",
        std::fs::read_to_string(repo.join("modes.txt")).map_err(|e| e.to_string())?,
        "750\n640\n".into(),
    )?;
    let denied: Vec<String> = run
        .events
        .iter()
        .filter(|e| e.verdict.as_deref() == Some("denied"))
        .map(|e| format!("{:?} {:?} {:?} {:?}", e.kind, e.path, e.reason, e.error))
        .collect();
    ensure(denied.is_empty(), || format!("something was denied: {denied:#?}"))?;
    Ok(())
}

/// A task the active layers cannot enforce is refused before anything runs.
pub fn unenforceable_task_refused() -> R {
    let d = workdir("refused");
    let t = d.join("task.yaml");
    std::fs::write(&t, "id: r\nmode: execute\nenforcement: enforce\napproval_required: [delete, exec]\n")
        .map_err(|e| e.to_string())?;
    let out = std::process::Command::new(support::agentmon())
        .args(["exec", "-q", "--task"])
        .arg(&t)
        .args(["--", "touch"])
        .arg(d.join("ran"))
        .output()
        .map_err(|e| e.to_string())?;
    eq("exit", out.status.code(), Some(125))?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure(err.contains("cannot enforce task r: approval_required"), || format!("refusal: {err}"))?;
    ensure(!d.join("ran").exists(), || "the command ran".into())?;
    Ok(())
}

/// The cgroup guard allows exactly the scope's destinations: an allowed port on
/// another address is refused in the kernel (EPERM), as is UDP outside the scope.
pub fn enforce_network_allowlist() -> R {
    let d = workdir("netguard");
    std::fs::create_dir_all(d.join("repo")).map_err(|e| e.to_string())?;
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = l.local_addr().map_err(|e| e.to_string())?.port();
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let t = d.join("task.yaml");
    std::fs::write(
        &t,
        format!(
            "id: netguard\nmode: execute\nenforcement: enforce\nscope:\n  write: [\"{r}/**\"]\n  delete: [\"{r}/**\"]\n  \
             exec: [\"{me}\"]\n  connect: [\"127.0.0.1:{port}\", \"127.0.0.1:5353\", \"[::1]:5353\"]\n",
            r = d.join("repo").display(),
            me = me.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&t, &d)?);
    }
    let actions = vec![
        format!("tcp_to=127.0.0.1:{port}"),
        format!("tcp_to=127.0.0.2:{port}"),
        "udp_to=127.0.0.1:5353".to_string(),
        "udp_to=127.0.0.1:53".to_string(),
        // An allowed message, then one the guard refuses: sendmmsg returns 1 and
        // drops the second's error.
        "udp_mmsg=127.0.0.1:5353,127.0.0.1:54".to_string(),
        // An ICMP "ping" socket's send, which no cgroup hook sees: refused at socket().
        "ping_to=127.0.0.9:0".to_string(),
        // Families that reach other hosts or the kernel's crypto past every hook:
        // vsock, the kernel crypto API.
        format!("socket_family={}", libc::AF_VSOCK),
        format!("socket_family={}", libc::AF_ALG),
        // Routing headers and IPv4 source routes, which send elsewhere than the
        // address the guard checked.
        "ipv6_rthdr".to_string(),
        "ip_options".to_string(),
        // The same per message, as ancillary data, to an allowed destination: the
        // packet's own header says where it goes.
        "retopts_to=127.0.0.1:5353".to_string(),
        // An option that asks for no capability (record route): only the egress
        // check stops it, and its drop is a record of its own (below).
        "recroute_to=127.0.0.1:5353".to_string(),
        // A root agent's network and system administration capabilities: gone
        // (routes, nftables and tc could rewrite what the guard let out).
        "has_cap=12".to_string(),
        "has_cap=21".to_string(),
        // ... and those that would blind agentmon from inside the task: an immutable
        // flag on its files, CPU starvation, root's reserved blocks; and file
        // capabilities that outlive the task.
        "has_cap=9".to_string(),
        "has_cap=23".to_string(),
        "has_cap=24".to_string(),
        "has_cap=31".to_string(),
        "rt_sched".to_string(),
        "rthdr2_to=[::1]:5353".to_string(),
    ];
    let _ping = PingForRoot::allow()?;
    let me_s = me.display().to_string();
    let mut cmd = vec![me_s, d.display().to_string()];
    cmd.extend(actions);
    let run = run_agentmon_with(&["--task", t.to_str().unwrap()], &cmd, &[(SCENARIO_ENV, "attempts")], &d)?;
    ensure(run.code == 0, || format!("exit {}: {}", run.code, run.stderr))?;
    let text = std::fs::read_to_string(d.join("repo/results.txt")).map_err(|e| e.to_string())?;
    let mut got: Vec<&str> = text.lines().collect();
    // A type 2 routing header is taken only where the kernel has CONFIG_IPV6_MIP6
    // (EINVAL elsewhere); taken, the packet is dropped: never sent.
    let rthdr2 = got.pop().unwrap_or_default();
    ensure(
        rthdr2 == format!("rthdr2_to {EPERM}") || rthdr2 == format!("rthdr2_to {}", libc::EINVAL),
        || format!("an IPv6 type 2 routing header given per message: {rthdr2}"),
    )?;
    eprintln!("{rthdr2}");
    eq(
        "tcp allowed, tcp other address, udp allowed, udp other port",
        got,
        vec![
            "tcp_to 0",
            &format!("tcp_to {EPERM}"),
            "udp_to 0",
            &format!("udp_to {EPERM}"),
            "udp_mmsg 1",
            &format!("ping_to {EPERM}"),
            &format!("socket_family {EPERM}"),
            &format!("socket_family {EPERM}"),
            &format!("ipv6_rthdr {EPERM}"),
            &format!("ip_options {EPERM}"),
            &format!("retopts_to {EPERM}"),
            &format!("recroute_to {EPERM}"),
            "has_cap 0",
            "has_cap 0",
            "has_cap 0",
            "has_cap 0",
            "has_cap 0",
            "has_cap 0",
            &format!("rt_sched {EPERM}"),
        ],
    )?;
    let c = run
        .of(Kind::Connect)
        .into_iter()
        .find(|e| e.error.as_deref() == Some("EPERM"))
        .ok_or_else(|| run.summary())?;
    eq("connect verdict", c.verdict.as_deref(), Some("denied"))?;
    let s = run
        .of(Kind::Send)
        .into_iter()
        .find(|e| e.error.as_deref() == Some("EPERM"))
        .ok_or_else(|| run.summary())?;
    eq("send verdict", s.verdict.as_deref(), Some("denied"))?;
    // The refused message of the sendmmsg is a record of its own: refused, unsent.
    let port = |e: &Event, p: u16| matches!(&e.dst, Some(Dst::Ip { port, .. }) if *port == p);
    let mmsg: Vec<_> =
        run.of(Kind::Send).into_iter().filter(|e| e.syscall.as_deref() == Some("sendmmsg")).collect();
    let refused = mmsg
        .iter()
        .find(|e| port(e, 54))
        .ok_or_else(|| format!("no record of the refused message:\n{}", run.summary()))?;
    eq(
        "refused message",
        (
            refused.verdict.as_deref(),
            refused.detail.get("message").and_then(|m| m.as_u64()),
            crate::has_flag(refused, "unsent"),
        ),
        (Some("denied"), Some(1), true),
    )?;
    let sent = mmsg
        .iter()
        .find(|e| port(e, 5353))
        .ok_or_else(|| format!("no record of the sent message:\n{}", run.summary()))?;
    eq(
        "sent message",
        (sent.verdict.as_deref(), crate::has_flag(sent, "unsent")),
        (Some("in_scope"), false),
    )?;
    // The packet the egress check dropped (recroute_to: its sender saw only EPERM,
    // recorded as an in-scope send) is a refused attempt of its own, named to the task.
    let dropped = run
        .tamper("rerouting packets")
        .ok_or_else(|| format!("no record of the dropped packets:\n{}", run.summary()))?;
    eq(
        "dropped packets",
        (dropped.verdict.as_deref(), dropped.task.as_deref(), dropped.pid),
        (Some("denied"), Some("netguard"), 0),
    )?;
    let n = dropped.detail.get("dropped_total").and_then(|n| n.as_u64()).unwrap_or(0);
    ensure(n >= 1, || format!("dropped_total {n}: {dropped:?}"))?;
    drop(l);
    Ok(())
}

/// Lets root's group make ICMP "ping" sockets (net.ipv4.ping_group_range, as Debian's
/// systemd sets it for every group) while it lives, and checks that this process can:
/// a refusal inside a task is then the task's confinement, not the host's setting.
struct PingForRoot(Option<String>);

impl PingForRoot {
    const RANGE: &str = "/proc/sys/net/ipv4/ping_group_range";

    fn allow() -> Result<Self, String> {
        let was = std::fs::read_to_string(Self::RANGE).map_err(|e| format!("{}: {e}", Self::RANGE))?;
        let lo = was.split_whitespace().next().and_then(|v| v.parse::<i64>().ok()).unwrap_or(1);
        let me = if lo > 0 {
            std::fs::write(Self::RANGE, "0 2147483647").map_err(|e| format!("{}: {e}", Self::RANGE))?;
            PingForRoot(Some(was))
        } else {
            PingForRoot(None)
        };
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP) };
        ensure(fd >= 0, || format!("a ping socket outside any task: {}", std::io::Error::last_os_error()))?;
        unsafe { libc::close(fd) };
        Ok(me)
    }
}

impl Drop for PingForRoot {
    fn drop(&mut self) {
        if let Some(was) = self.0.take() {
            let _ = std::fs::write(Self::RANGE, was.trim());
        }
    }
}

/// A `deny` rule on an enforced task holds before the effect or the task is
/// refused: one about in-scope writes (no layer refuses those) refuses the task;
/// one about addresses the scope allows takes them out of its network allowlist.
pub fn deny_rules_hold_or_refuse() -> R {
    let (d, task) = setup("deny-rules", true)?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&task, &d)?);
    }
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let rules = d.join("rules");
    std::fs::create_dir_all(&rules).map_err(|e| e.to_string())?;
    let rule = |id: &str, m: &str, yes: &str, no: &str| {
        format!(
            "  - id: {id}\n    description: test\n    severity: high\n    match:\n{m}    action: deny\n    examples:\n      \
             match: [{yes}]\n      no_match: [{no}]\n"
        )
    };
    std::fs::write(
        rules.join("deny.yaml"),
        format!(
            "rules:\n{}",
            rule(
                "test.no-secrets",
                "      kinds: [file_create]\n      paths: [\"**/secret*\"]\n",
                "{kind: file_create, path: /x/secret.txt}",
                "{kind: file_create, path: /x/public.txt}"
            )
        ),
    )
    .map_err(|e| e.to_string())?;
    let out = support::exec_command(
        &d.join("refused.jsonl"),
        &["--task", d.join("task.yaml").to_str().unwrap(), "--rules", rules.to_str().unwrap()],
        &[me.display().to_string(), d.display().to_string(), "write_in".into()],
        &[(SCENARIO_ENV, "attempts")],
        &d,
    )
    .output()
    .map_err(|e| e.to_string())?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure(
        out.status.code() == Some(125) && err.contains("test.no-secrets") && err.contains("action deny"),
        || format!("a deny rule on in-scope writes: exit {:?}: {err}", out.status.code()),
    )?;
    ensure(!d.join("repo/ok.txt").exists(), || "the refused task ran".into())?;
    // A deny of an address inside the connect scope: refused in the kernel.
    std::fs::write(
        rules.join("deny.yaml"),
        format!(
            "rules:\n{}",
            rule(
                "test.no-127-2",
                "      kinds: [connect]\n      dst: [\"127.0.0.2/32\"]\n",
                "{kind: connect, dst: \"127.0.0.2:80\"}",
                "{kind: connect, dst: \"127.0.0.1:80\"}"
            )
        ),
    )
    .map_err(|e| e.to_string())?;
    let task = d.join("net.yaml");
    std::fs::write(
        &task,
        format!(
            "id: deny-net\nmode: execute\nenforcement: enforce\nscope:\n  write: [\"{}/**\"]\n  exec: [\"{}\"]\n  \
             connect: [\"127.0.0.0/8:*\"]\n",
            d.join("repo").display(),
            me.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let actions = ["tcp_to=127.0.0.1:1".to_string(), "tcp_to=127.0.0.2:1".to_string()];
    let mut cmd = vec![me.display().to_string(), d.display().to_string()];
    cmd.extend(actions.iter().cloned());
    let run = support::run_agentmon_with(
        &["--task", task.to_str().unwrap(), "--rules", rules.to_str().unwrap()],
        &cmd,
        &[(SCENARIO_ENV, "attempts")],
        &d,
    )?;
    eq(&format!("agent exit: {}", run.stderr), run.code, 0)?;
    let text = std::fs::read_to_string(d.join("repo/results.txt")).map_err(|e| e.to_string())?;
    eq("results", text, "tcp_to 0\ntcp_to 1\n".to_string())?;
    let denied = run
        .of(Kind::Connect)
        .into_iter()
        .find(|e| matches!(&e.dst, Some(agentmon::event::Dst::Ip { ip, .. }) if ip == "127.0.0.2"))
        .ok_or_else(|| run.summary())?;
    eq(
        "denied connect",
        (denied.verdict.as_deref(), denied.error.as_deref()),
        (Some("denied"), Some("EPERM")),
    )?;
    eq("by the rule", denied.rule.as_deref(), Some("test.no-127-2"))?;
    deny_rules_reloaded(&d, &task, &me, &rule)
}

/// Deny rules added while an enforced task runs: one it cannot hold (a deny of
/// in-scope writes) refuses the whole reload, said in a `rules` record, and the old
/// rules stay; one of an address inside its connect scope reaches the kernel, and
/// the task's next connect there is refused.
fn deny_rules_reloaded(
    d: &Path,
    task: &Path,
    me: &Path,
    rule: &dyn Fn(&str, &str, &str, &str) -> String,
) -> R {
    let rules = d.join("rules-reloaded");
    std::fs::create_dir_all(&rules).map_err(|e| e.to_string())?;
    // Whole files only (a reload must not read one half written): by rename.
    let write = |r: String| {
        let tmp = d.join("r.yaml.tmp");
        std::fs::write(&tmp, format!("rules:\n{r}")).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, rules.join("r.yaml")).map_err(|e| e.to_string())
    };
    write(rule(
        "test.no-127-4",
        "      kinds: [connect]\n      dst: [\"127.0.0.4/32\"]\n",
        "{kind: connect, dst: \"127.0.0.4:80\"}",
        "{kind: connect, dst: \"127.0.0.3:80\"}",
    ))?;
    let (cue1, cue2) = (d.join("cue-reload-1"), d.join("cue-reload-2"));
    let actions = [
        "tcp_to=127.0.0.3:1".to_string(),
        format!("wait={}", cue1.display()),
        "tcp_to=127.0.0.3:1".to_string(),
        format!("wait={}", cue2.display()),
        "tcp_to=127.0.0.3:1".to_string(),
    ];
    let mut cmd = vec![me.display().to_string(), d.display().to_string()];
    cmd.extend(actions.iter().cloned());
    let log = d.join("reloaded.jsonl");
    let mut c = support::exec_command(
        &log,
        &["--task", task.to_str().unwrap(), "--rules", rules.to_str().unwrap()],
        &cmd,
        &[(SCENARIO_ENV, "attempts")],
        d,
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .map_err(|e| e.to_string())?;
    // Whole lines only: agentmon may be writing the last one.
    let records = |k: Kind| -> Vec<agentmon::event::Event> {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        support::parse_stream(whole)
            .map(|(e, _)| e)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.kind == k)
            .collect()
    };
    let within = Duration::from_secs(30 * u64::from(support::slowdown()));
    let result = (|| -> R {
        ensure(wait(within, || !records(Kind::Connect).is_empty()), || "no first connect".into())?;
        write(rule(
            "test.no-secrets",
            "      kinds: [file_create]\n      paths: [\"**/secret*\"]\n",
            "{kind: file_create, path: /x/secret.txt}",
            "{kind: file_create, path: /x/public.txt}",
        ))?;
        let refused = |e: &agentmon::event::Event| e.detail.get("errors").map(|v| v.to_string());
        ensure(wait(within, || records(Kind::Rules).iter().any(|e| refused(e).is_some())), || {
            "no record of the refused reload".into()
        })?;
        let said = records(Kind::Rules).iter().find_map(refused).unwrap_or_default();
        ensure(said.contains("running enforced task deny-net") && said.contains("test.no-secrets"), || {
            said.clone()
        })?;
        std::fs::write(&cue1, b"").map_err(|e| e.to_string())?;
        ensure(wait(within, || records(Kind::Connect).len() >= 2), || "no second connect".into())?;
        write(rule(
            "test.no-127-3",
            "      kinds: [connect]\n      dst: [\"127.0.0.3/32\"]\n",
            "{kind: connect, dst: \"127.0.0.3:80\"}",
            "{kind: connect, dst: \"127.0.0.4:80\"}",
        ))?;
        let taken = |e: &agentmon::event::Event| {
            e.detail.get("added").is_some_and(|v| v.to_string().contains("test.no-127-3"))
        };
        ensure(wait(within, || records(Kind::Rules).iter().any(taken)), || {
            "the deny rule was not taken".into()
        })?;
        std::fs::write(&cue2, b"").map_err(|e| e.to_string())?;
        Ok(())
    })();
    if !wait(within, || matches!(c.try_wait(), Ok(Some(_)))) {
        let _ = c.kill();
    }
    let code = c.wait().map_err(|e| e.to_string())?.code();
    result?;
    eq("agent exit", code, Some(0))?;
    let text = std::fs::read_to_string(d.join("repo/results.txt")).map_err(|e| e.to_string())?;
    let tcp: Vec<&str> = text.lines().filter(|l| l.starts_with("tcp_to")).collect();
    // Allowed before, allowed after the refused reload, refused after the taken one.
    eq("connects", tcp, vec!["tcp_to 0", "tcp_to 0", "tcp_to 1"])?;
    let last = records(Kind::Connect).pop().ok_or("no connects")?;
    eq("last connect", (last.verdict.as_deref(), last.error.as_deref()), (Some("denied"), Some("EPERM")))?;
    eq("by the reloaded rule", last.rule.as_deref(), Some("test.no-127-3"))?;
    Ok(())
}
