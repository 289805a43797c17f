//! Approval gates on the real kernel: held calls approved, denied, timed out, a
//! standing approval (`--for`), and a racing thread that rewrites the path after
//! the request, which must not get an unapproved delete through.

use std::{
    collections::HashMap,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use agentmon::event::{Event, Kind};

use crate::{
    R,
    support::{self, SCENARIO_ENV, agentmon, ensure, eq, parse_stream, workdir},
};

fn detail<'a>(e: &'a Event, k: &str) -> Option<&'a str> {
    e.detail.get(k).and_then(|v| v.as_str())
}

/// The events written so far (a partly written last line is left for later).
fn events_now(file: &Path) -> Vec<Event> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let complete = text.rfind('\n').map(|i| &text[..=i]).unwrap_or("");
    parse_stream(complete).map(|(e, _)| e).unwrap_or_default()
}

/// Waits for the `n`th approval request (0-based); a synchronisation point.
fn request(file: &Path, n: usize, agent: &mut Child) -> Result<Event, String> {
    let start = Instant::now();
    // (Generous: under emulation, in the kernel matrix's guests, starting alone takes seconds.)
    while start.elapsed() < Duration::from_secs(60) {
        let reqs: Vec<Event> =
            events_now(file).into_iter().filter(|e| e.kind == Kind::ApprovalRequest).collect();
        if let Some(e) = reqs.into_iter().nth(n) {
            return Ok(e);
        }
        if let Ok(Some(st)) = agent.try_wait() {
            return Err(format!("agentmon exited ({st}) before approval request {n}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("no approval request {n}"))
}

/// The gated scenario with `steps`, under agentmon exec with `task`.
pub(crate) fn spawn_gated(
    d: &Path,
    task: &Path,
    events: &Path,
    timeout: &str,
    steps: &[&str],
) -> Result<Child, String> {
    spawn_gated_with(d, task, events, timeout, steps, &[])
}

/// [`spawn_gated`], with more of agentmon exec's `flags`.
fn spawn_gated_with(
    d: &Path,
    task: &Path,
    events: &Path,
    timeout: &str,
    steps: &[&str],
    flags: &[&str],
) -> Result<Child, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    Command::new(agentmon())
        .args(["exec", "--quiet", "--approval-timeout", timeout])
        .args(flags)
        .arg("--events")
        .arg(events)
        .args(["--task", task.to_str().unwrap(), "--"])
        .arg(&me)
        .arg(d)
        .args(steps)
        .env(SCENARIO_ENV, "gated")
        .current_dir(d)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())
}

/// Ends the run: the agent killed if the test's part failed, else it must exit 0.
pub(crate) fn settle(mut agent: Child, result: Result<(), String>) -> Result<(), String> {
    if result.is_err() {
        let _ = agent.kill();
    }
    let out = agent.wait_with_output().map_err(|e| e.to_string())?;
    result?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    eq("agent exit", out.status.code(), Some(0)).map_err(|e| format!("{e}: {stderr}"))
}

fn ctl(args: &[&str]) -> Result<(), String> {
    let out = Command::new(agentmon()).args(args).output().map_err(|e| e.to_string())?;
    ensure(out.status.success(), || {
        format!(
            "agentmon {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Sends `req` as it is to every agentmon control socket; their replies.
fn raw_requests(req: &serde_json::Value) -> Result<Vec<serde_json::Value>, String> {
    use std::io::{BufRead, Write};
    let mut replies = Vec::new();
    for sock in agentmon::ctl::sockets() {
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(&sock) else { continue };
        // Every agentmon here is asked: another test's, ending meanwhile, resets the
        // connection or closes it unanswered (seen in a guest). The one asked about
        // answers; the test checks that it did.
        if writeln!(s, "{req}").is_err() {
            continue;
        }
        s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        let mut line = String::new();
        match std::io::BufReader::new(s).read_line(&mut line) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => continue,
            Err(e) => return Err(format!("{}: {e}", sock.display())),
        }
        replies.push(serde_json::from_str(&line).map_err(|e| format!("{}: {e}: {line:?}", sock.display()))?);
    }
    Ok(replies)
}

/// An approved exec runs exactly the file that was approved: the test swaps the
/// symlink the agent execs after the request shows `true`, then approves; the kernel
/// resolves the name again, finds `false`, and the BPF LSM tier refuses it. Where
/// that tier is not active, a task gating exec is refused, saying so.
pub fn exec_approval_cannot_be_raced() -> R {
    let d = workdir("exec-gate");
    std::fs::create_dir_all(d.join("repo")).map_err(|e| e.to_string())?;
    let (yes, no) = (which("true")?, which("false")?);
    let link = d.join("repo/run");
    std::os::unix::fs::symlink(&yes, &link).map_err(|e| e.to_string())?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let task = d.join("task.yaml");
    std::fs::write(
        &task,
        format!(
            "id: exec-gated\nmode: execute\nenforcement: enforce\nscope:\n  write: [\"{r}/**\"]\n  \
             exec: [\"{me}\", \"{yes}\", \"{no}\"]\napproval_required: [exec]\n",
            r = d.join("repo").display(),
            me = me.display(),
            yes = yes.display(),
            no = no.display(),
        ),
    )
    .map_err(|e| e.to_string())?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&task, &d)?);
    }
    if !support::bpf_lsm() {
        return Ok(exec_gating_refused(&task, &d)?);
    }
    let events = d.join("events.jsonl");
    let timeout = format!("{}s", 4 * support::slowdown());
    let mut agent =
        spawn_gated(&d, &task, &events, &timeout, &["exec=repo/run", "exec=repo/run", "exec=repo/run"])?;
    let result = (|| -> Result<(), String> {
        let id = |e: &Event| detail(e, "approval").map(str::to_string).ok_or("no approval id".to_string());
        // 1: approved as shown, runs `true`.
        let r0 = request(&events, 0, &mut agent)?;
        eq(
            "request 0",
            (r0.path.clone(), detail(&r0, "operation")),
            (Some(yes.display().to_string()), Some("exec")),
        )?;
        ctl(&["approve", &id(&r0)?])?;
        // 2: approved as `true`, but the name points at `false` by the time it runs.
        let r1 = request(&events, 1, &mut agent)?;
        eq("request 1", r1.path.clone(), Some(yes.display().to_string()))?;
        std::fs::remove_file(&link).map_err(|e| e.to_string())?;
        std::os::unix::fs::symlink(&no, &link).map_err(|e| e.to_string())?;
        ctl(&["approve", &id(&r1)?])?;
        // 3: denied.
        let r2 = request(&events, 2, &mut agent)?;
        ctl(&["deny", &id(&r2)?])?;
        Ok(())
    })();
    settle(agent, result)?;
    let text = std::fs::read_to_string(d.join("repo/results.txt")).map_err(|e| e.to_string())?;
    let codes: Vec<String> = text.lines().map(String::from).collect();
    // true ran (0); the swapped file was refused in the kernel (EACCES), `false` never
    // ran (it would exit 1); the denied one failed in the gate (EPERM).
    let want = vec![
        "exec 0".to_string(),
        format!("exec {}", 100 + libc::EACCES),
        format!("exec {}", 100 + libc::EPERM),
    ];
    eq("exec results", codes, want)?;
    let evs = events_now(&events);
    let refused = evs
        .iter()
        .find(|e| e.kind == Kind::Exec && e.error.as_deref() == Some("EACCES"))
        .ok_or_else(|| "no failed exec event for the swapped file".to_string())?;
    eq("refused exec verdict", refused.verdict.as_deref(), Some("denied"))?;
    eq("refused exec: approved file", detail(refused, "approved_path"), Some(yes.to_str().unwrap()))?;
    ensure(refused.reason.as_deref().is_some_and(|r| r.contains("was for")), || {
        format!("{:?}", refused.reason)
    })?;
    Ok(())
}

/// A program held for approval cannot be changed by its task from the moment it is
/// held (BPF LSM tier): a writer appending to it is refused before the approver
/// decides, and what runs is what the approver was shown.
pub fn held_program_is_frozen() -> R {
    let d = workdir("exec-frozen");
    std::fs::create_dir_all(d.join("repo")).map_err(|e| e.to_string())?;
    let script = d.join("repo/tool.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let task = d.join("task.yaml");
    std::fs::write(
        &task,
        format!(
            "id: exec-frozen\nmode: execute\nenforcement: enforce\nscope:\n  write: [\"{r}/**\"]\n  \
             exec: [\"{me}\", \"{r}/**\", \"/usr/bin/**\", \"/bin/**\"]\napproval_required: [exec]\n",
            r = d.join("repo").display(),
            me = me.display(),
        ),
    )
    .map_err(|e| e.to_string())?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&task, &d)?);
    }
    if !support::bpf_lsm() {
        return Ok(exec_gating_refused(&task, &d)?);
    }
    let events = d.join("events.jsonl");
    let timeout = format!("{}s", 30 * support::slowdown());
    let mut agent =
        spawn_gated(&d, &task, &events, &timeout, &["write_on=repo/tool.sh", "exec=repo/tool.sh"])?;
    let results = || std::fs::read_to_string(d.join("repo/results.txt")).unwrap_or_default();
    let result = (|| -> Result<(), String> {
        let r = request(&events, 0, &mut agent)?;
        eq("request", r.path.clone(), Some(script.display().to_string()))?;
        // Held: the writer stops (refused, the results say) before anyone decides.
        let stopped =
            support::wait(Duration::from_secs(10) * support::slowdown(), || results().contains("writer "));
        let shown = std::fs::read(&script).map_err(|e| e.to_string())?;
        ensure(stopped, || "the writer never stopped while the exec was held".into())?;
        ctl(&["approve", detail(&r, "approval").ok_or("no approval id")?])?;
        ensure(
            support::wait(Duration::from_secs(10) * support::slowdown(), || results().contains("exec ")),
            || "the approved exec never finished".into(),
        )?;
        eq("program as shown when it ran", std::fs::read(&script).map_err(|e| e.to_string())?, shown)?;
        Ok(())
    })();
    settle(agent, result)?;
    let text = results();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    eq("results", lines, vec!["exec 0", &format!("writer {}", libc::EACCES)])?;
    Ok(())
}

/// Without the BPF LSM tier a task that gates exec is refused before it runs.
pub(crate) fn exec_gating_refused(task: &Path, d: &Path) -> Result<(), String> {
    let out = Command::new(agentmon())
        .args(["exec", "--quiet", "--task"])
        .arg(task)
        .args(["--", "/bin/true"])
        .current_dir(d)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure(out.status.code() == Some(125) && err.contains("exec cannot be held for approval"), || {
        format!("a task gating exec was not refused without the BPF LSM tier: {:?} {err}", out.status)
    })
}

fn which(name: &str) -> Result<PathBuf, String> {
    ["/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .and_then(|p| std::fs::canonicalize(p).ok())
        .ok_or_else(|| format!("no {name}"))
}

fn setup(name: &str) -> Result<(PathBuf, PathBuf), String> {
    // Its own directory per test: two tests run at once.
    let d = workdir(name);
    let build = d.join("repo/build");
    std::fs::create_dir_all(&build).map_err(|e| e.to_string())?;
    for f in ["a.txt", "b.txt", "c.txt", "d.txt", "g.txt", "f.txt"] {
        std::fs::write(build.join(f), f).map_err(|e| e.to_string())?;
    }
    std::fs::write(d.join("repo/precious.txt"), b"keep").map_err(|e| e.to_string())?;
    std::fs::set_permissions(build.join("f.txt"), std::fs::Permissions::from_mode(0o644))
        .map_err(|e| e.to_string())?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let task = d.join("task.yaml");
    std::fs::write(
        &task,
        format!(
            "id: gated\nmode: execute\nenforcement: enforce\nscope:\n  write: [\"{r}/**\"]\n  delete: [\"{r}/**\"]\n  \
             exec: [\"{me}\"]\napproval_required: [delete, rename, chmod]\n",
            r = d.join("repo").display(),
            me = me.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok((d, task))
}

pub fn approve_deny_timeout_and_race() -> R {
    let (d, task) = setup("approval")?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&task, &d)?);
    }
    let events = d.join("events.jsonl");
    let steps = [
        "delete=repo/build/a.txt",
        "delete=repo/build/b.txt",
        "race=repo/build/c.txt:repo/precious.txt",
        "rename=repo/build/d.txt:repo/build/e.txt",
        "rename=repo/build/g.txt:repo/build/h.txt",
        "chmod=repo/build/f.txt",
    ];
    // Long enough for an approver's CLI to start and answer, short enough to wait
    // out for the last request (emulated guests start processes slowly).
    let timeout = format!("{}s", 2 * support::slowdown());
    let mut agent = spawn_gated(&d, &task, &events, &timeout, &steps)?;
    let result = (|| -> Result<(), String> {
        let id =
            |e: &Event| detail(e, "approval").map(str::to_string).ok_or("request without an id".to_string());
        let r0 = request(&events, 0, &mut agent)?;
        eq("request 0 path", r0.path.clone(), Some(d.join("repo/build/a.txt").display().to_string()))?;
        eq("request 0 operation", detail(&r0, "operation"), Some("delete"))?;
        ensure(d.join("repo/build/a.txt").exists(), || "a.txt went before approval".into())?;
        ctl(&["approve", &id(&r0)?, "--reason", "build output, safe to remove"])?;
        let r1 = request(&events, 1, &mut agent)?;
        ctl(&["deny", &id(&r1)?])?;
        // The race: the request shows c.txt; then the buffer says precious.txt.
        let r2 = request(&events, 2, &mut agent)?;
        eq("request 2 path", r2.path.clone(), Some(d.join("repo/build/c.txt").display().to_string()))?;
        std::fs::write(d.join("repo/swap"), b"1").map_err(|e| e.to_string())?;
        let swapped = (0..500).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            d.join("repo/swapped").exists()
        });
        ensure(swapped, || "the racing thread never swapped the path".into())?;
        ctl(&["approve", &id(&r2)?])?;
        let r3 = request(&events, 3, &mut agent)?;
        eq(
            "request 3 new path",
            r3.new_path.clone(),
            Some(d.join("repo/build/e.txt").display().to_string()),
        )?;
        // A standing approval longer than a task may live is refused, by the CLI and
        // by agentmon itself (580000000000y overflowed its clock: it panicked).
        let out = Command::new(agentmon())
            .args(["approve", &id(&r3)?, "--for", "580000000000y"])
            .output()
            .map_err(|e| e.to_string())?;
        ensure(
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("longest allowed"),
            || format!("approve --for 580000000000y: {}", String::from_utf8_lossy(&out.stderr)),
        )?;
        let replies = raw_requests(&serde_json::json!({"op": "approve", "id": id(&r3)?, "for_s": u64::MAX}))?;
        ensure(replies.iter().all(|r| r["ok"] != true), || {
            format!("a raw for_s u64::MAX was taken: {replies:?}")
        })?;
        ensure(
            replies.iter().any(|r| r["error"].as_str().is_some_and(|e| e.contains("for_s is over"))),
            || format!("no refusal of for_s: {replies:?}"),
        )?;
        ctl(&["approve", &id(&r3)?, "--for", "1m"])?;
        // g -> h is covered by the standing approval; the chmod is left to time out.
        let r4 = request(&events, 4, &mut agent)?;
        eq(
            "request 4 (chmod) path",
            r4.path.clone(),
            Some(d.join("repo/build/f.txt").display().to_string()),
        )?;
        Ok(())
    })();
    settle(agent, result)?;

    let text = std::fs::read_to_string(d.join("repo/results.txt")).map_err(|e| e.to_string())?;
    let results: Vec<(String, i32)> = text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(-1)))
        .collect();
    let want: Vec<(String, i32)> = [
        ("delete", 0),
        ("delete", libc::EPERM),
        ("race", 0),
        ("rename", 0),
        ("rename", 0),
        ("chmod", libc::EPERM),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), *v))
    .collect();
    eq("results", results, want)?;
    // The filesystem: exactly what was approved happened.
    let b = d.join("repo/build");
    let exists: HashMap<&str, bool> = ["a.txt", "b.txt", "c.txt", "d.txt", "e.txt", "g.txt", "h.txt"]
        .iter()
        .map(|f| (*f, b.join(f).exists()))
        .collect();
    let want: HashMap<&str, bool> = [
        ("a.txt", false),
        ("b.txt", true),
        ("c.txt", false),
        ("d.txt", false),
        ("e.txt", true),
        ("g.txt", false),
        ("h.txt", true),
    ]
    .into_iter()
    .collect();
    eq("files", exists, want)?;
    ensure(d.join("repo/precious.txt").exists(), || "the swapped-in path was deleted: TOCTOU".into())?;
    let mode = std::fs::metadata(b.join("f.txt")).map_err(|e| e.to_string())?.permissions().mode() & 0o777;
    eq("f.txt mode after the timeout", mode, 0o644)?;

    let evs = events_now(&events);
    let decisions: Vec<(Option<&str>, Option<&str>)> = evs
        .iter()
        .filter(|e| e.kind == Kind::Approval)
        .map(|e| (detail(e, "decision"), detail(e, "by")))
        .collect();
    eq(
        "decisions",
        decisions,
        vec![
            (Some("approved"), Some("operator")),
            (Some("denied"), Some("operator")),
            (Some("approved"), Some("operator")),
            (Some("approved"), Some("operator")),
            (Some("approved"), Some("standing")),
            (Some("timeout"), Some("timeout")),
        ],
    )?;
    // Who decided, as a person, and why, in their words.
    let first = evs.iter().find(|e| e.kind == Kind::Approval).ok_or("no approval")?;
    let operator = first.detail.get("operator").ok_or("no operator")?;
    eq("approver uid", operator.get("uid").and_then(|v| v.as_u64()), Some(0))?;
    eq("approver user", operator.get("user").and_then(|v| v.as_str()), Some("root"))?;
    eq("approver's reason", detail(first, "operator_reason"), Some("build output, safe to remove"))?;
    // The syscall events say what was done: the approved delete in scope, the denied
    // one denied, and the raced one names the file actually deleted.
    let del = |p: &str| {
        evs.iter()
            .find(|e| e.kind == Kind::FileDelete && e.path.as_deref() == Some(b.join(p).to_str().unwrap()))
            .ok_or_else(|| format!("no file_delete of {p}"))
    };
    let a = del("a.txt")?;
    eq("a.txt", (a.verdict.as_deref(), detail(a, "decision")), (Some("in_scope"), Some("approved")))?;
    let bb = del("b.txt")?;
    eq("b.txt", (bb.verdict.as_deref(), bb.error.as_deref()), (Some("denied"), Some("EPERM")))?;
    let c = del("c.txt")?;
    eq("raced delete", detail(c, "decision"), Some("approved"))?;
    eq(
        "raced delete: the agent's buffer said",
        detail(c, "requested_path"),
        Some(d.join("repo/precious.txt").to_str().unwrap()),
    )?;
    Ok(())
}

/// An approver at the SOC decides a held delete over NATS (`agentmon remote approve
/// --reason`): the decision records the signer's key and the reason, signed with the
/// command, as a local approver's does. Before, a remote decision carried no reason.
pub fn remote_approval_carries_its_reason() -> R {
    let url = support::nats::suite_url()?;
    let (d, task) = setup("approval-remote")?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&task, &d)?);
    }
    let key = d.join("operator.key");
    let signer = agentmon::audit::load_or_create_key(&key).map_err(|e| e.to_string())?;
    let allowed = d.join("ctl-keys");
    std::fs::copy(agentmon::audit::public_key_path(&key), &allowed).map_err(|e| e.to_string())?;
    let host = format!("approver-{}", uuid::Uuid::now_v7().simple());
    let (events, spool) = (d.join("events.jsonl"), d.join("spool"));
    let flags = [
        "--nats",
        &url,
        "--nats-host",
        &host,
        "--nats-ctl-keys",
        allowed.to_str().unwrap(),
        "--spool",
        spool.to_str().unwrap(),
    ];
    let timeout = format!("{}s", 60 * support::slowdown());
    let mut agent = spawn_gated_with(&d, &task, &events, &timeout, &["delete=repo/build/a.txt"], &flags)?;
    let reason = "release build output, ticket OPS-42";
    let result = (|| -> Result<(), String> {
        let r0 = request(&events, 0, &mut agent)?;
        let id = detail(&r0, "approval").ok_or("request without an id")?.to_string();
        // The host's control subscription may still be coming up: asked again.
        let mut said = String::new();
        let done = support::wait(Duration::from_secs(20) * support::slowdown(), || {
            let out = Command::new(agentmon())
                .args([
                    "remote", "approve", &id, "--host", &host, "--reason", reason, "--nats", &url, "--key",
                ])
                .arg(&key)
                .output();
            match out {
                Ok(o) if o.status.success() => true,
                Ok(o) => {
                    said = String::from_utf8_lossy(&o.stderr).into_owned();
                    std::thread::sleep(Duration::from_millis(300));
                    false
                }
                Err(e) => {
                    said = e.to_string();
                    false
                }
            }
        });
        ensure(done, || format!("remote approve never went through: {said}"))
    })();
    settle(agent, result)?;
    let evs = events_now(&events);
    let a = evs.iter().find(|e| e.kind == Kind::Approval).ok_or("no approval record")?;
    eq("decision, by", (detail(a, "decision"), detail(a, "by")), (Some("approved"), Some("operator")))?;
    eq("the approver's reason", detail(a, "operator_reason"), Some(reason))?;
    let via = detail(a, "via").unwrap_or_default();
    let signer_hex = hex::encode(signer.verifying_key().to_bytes());
    ensure(via.contains(&signer_hex), || format!("the decision does not name the signer's key: {via:?}"))?;
    ensure(!d.join("repo/build/a.txt").exists(), || "the approved delete did not happen".into())?;
    Ok(())
}
