//! The agent (or any local user) working against agentmon's control plane and
//! confinement: rights carried by a connection handed to someone else, a flood of
//! idle connections, planted and stale sockets, enforce scopes that reach agentmon
//! or the kernel's interfaces, a process that leaves its task's cgroup. Each must
//! fail, and each refusal be an event.

use std::{
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use agentmon::event::{Event, Kind};

use crate::{
    R,
    support::{self, SCENARIO_ENV, agentmon, audited, ensure, eq, fill, wait, workdir},
};

/// uid of `nobody`: a local user with no rights over agentmon.
const NOBODY: u32 = 65534;

fn write(p: &Path, text: &str) -> Result<(), String> {
    std::fs::write(p, text).map_err(|e| format!("{}: {e}", p.display()))
}

fn observed_task(d: &Path, id: &str) -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let t = d.join("task.yaml");
    write(
        &t,
        &format!(
            "id: {id}\nmode: execute\nscope:\n  write: [\"{}/**\"]\n  exec: [\"{}\"]\n",
            d.display(),
            me.display()
        ),
    )?;
    Ok(t)
}

/// `agentmon exec --task T` of scenario `name` (args: DIR, `args`), in the background.
fn start(d: &Path, task: &Path, name: &str, args: &[&str]) -> Result<Child, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = vec![me.display().to_string(), d.display().to_string()];
    cmd.extend(args.iter().map(|a| a.to_string()));
    let stderr = std::fs::File::create(d.join("stderr")).map_err(|e| e.to_string())?;
    support::exec_command(
        &d.join("events.jsonl"),
        &["--task", task.to_str().unwrap()],
        &cmd,
        &[(SCENARIO_ENV, name)],
        d,
    )
    .stdout(Stdio::null())
    .stderr(stderr)
    .spawn()
    .map_err(|e| format!("cannot run agentmon: {e}"))
}

fn finish(mut c: Child, d: &Path) -> Result<(i32, Vec<Event>), String> {
    let st = c.wait().map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(d.join("events.jsonl")).map_err(|e| e.to_string())?;
    Ok((st.code().unwrap_or(-1), support::parse_stream(&text)?.0))
}

fn stderr(d: &Path) -> String {
    std::fs::read_to_string(d.join("stderr")).unwrap_or_default()
}

/// The test binary as scenario `name` with `args`, as uid `nobody`.
fn as_nobody(name: &str, args: &[&str]) -> Result<Child, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    Command::new(me)
        .args(args)
        .env(SCENARIO_ENV, name)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {name} as nobody: {e}"))
}

/// `agentmon ARGS` to completion: (exit code, stdout, stderr).
fn cli(args: &[&str]) -> Result<(i32, String, String), String> {
    let out = Command::new(agentmon()).args(args).stdin(Stdio::null()).output().map_err(|e| e.to_string())?;
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok((out.status.code().unwrap_or(-1), s(&out.stdout), s(&out.stderr)))
}

/// A control connection made by a task process that then exits, and one made by a
/// process outside every task but written by a task process, carry no operator
/// rights; both refusals are tamper events.
pub fn control_rights_stay_with_the_connector() -> R {
    let d = workdir("rights");
    let task = observed_task(&d, "rights")?;
    let c = start(&d, &task, "rights", &["rights"])?;
    ensure(wait(Duration::from_secs(60), || d.join("pass.sock").exists()), || {
        format!("no pass.sock: {}", stderr(&d))
    })?;
    let ctl = std::fs::read_to_string(d.join("ctl-path")).map_err(|e| e.to_string())?;
    // Operator connections (root, outside every task), handed to the agent: one
    // for each request it will try (thaw, approve, kill, end).
    let mine = (0..4)
        .map(|_| std::os::unix::net::UnixStream::connect(ctl.trim()).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    // The file appears at bind, a moment before the scenario listens: retry.
    let mut pass = Err("never tried".to_string());
    wait(Duration::from_secs(30), || {
        pass = std::os::unix::net::UnixStream::connect(d.join("pass.sock")).map_err(|e| e.to_string());
        pass.is_ok()
    });
    let pass = pass?;
    {
        use std::os::fd::AsRawFd;
        let iov = [std::io::IoSlice::new(b"x")];
        let fds: Vec<i32> = mine.iter().map(|s| s.as_raw_fd()).collect();
        nix::sys::socket::sendmsg::<()>(
            pass.as_raw_fd(),
            &iov,
            &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
            nix::sys::socket::MsgFlags::empty(),
            None,
        )
        .map_err(|e| e.to_string())?;
    }
    let (code, evs) = finish(c, &d)?;
    eq("scenario exit", code, 0)?;
    let res = std::fs::read_to_string(d.join("rights.txt")).map_err(|e| e.to_string())?;
    for line in res.lines() {
        ensure(line.contains("refused"), || format!("a passed connection was obeyed: {line}"))?;
    }
    eq("results", res.lines().count(), 5)?;
    // One record per refused request, each naming it: thaw by both routes, and the
    // approval, kill and end over the passed connections.
    let mut refused = Vec::new();
    for (op, n) in [("thaw", 2), ("approve", 1), ("kill", 1), ("end", 1)] {
        let these = support::tamper_of(&evs, &format!("control request {op}"));
        eq(&format!("tamper events for {op}"), these.len(), n)?;
        refused.extend(these);
    }
    for t in &refused {
        eq("tamper verdict", t.verdict.as_deref(), Some("denied"))?;
        eq("tamper task", t.task.as_deref(), Some("rights"))?;
    }
    ensure(refused.iter().any(|t| t.reason.as_deref().is_some_and(|r| r.contains("exited"))), || {
        format!("{:?}", refused.iter().map(|t| &t.reason).collect::<Vec<_>>())
    })?;
    ensure(
        refused.iter().filter(|t| t.reason.as_deref().is_some_and(|r| r.contains("written by pid"))).count()
            == 4,
        || format!("{:?}", refused.iter().map(|t| &t.reason).collect::<Vec<_>>()),
    )?;
    ensure(!evs.iter().any(|e| e.kind == Kind::Action), || "an action was taken for the agent".into())?;
    Ok(())
}

/// A local user holding hundreds of idle connections does not keep root out, and
/// does not make agentmon write a line per connection.
pub fn control_socket_holds_under_a_flood() -> R {
    let d = workdir("flood");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).map_err(|e| e.to_string())?;
    let task = observed_task(&d, "flood")?;
    let c = start(&d, &task, "wait_for", &[])?;
    let sock = format!("/run/agentmon/exec-{}.sock", c.id());
    ensure(wait(Duration::from_secs(60), || Path::new(&sock).exists()), || {
        format!("no socket: {}", stderr(&d))
    })?;
    // agentmon's own descriptors (programs, maps, links: ~200 and growing with its
    // handlers) before the flood: the flood must add at most its own connections
    // being read, never the descriptors it sends.
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", c.id())).map(|d| d.count()).unwrap_or(0);
    let before = fds();
    let mut flood = as_nobody("hold", &[&sock, "300", d.to_str().unwrap()])?;
    let held = wait(Duration::from_secs(60), || d.join("held").exists());
    let r = (|| {
        ensure(held, || "the flood never connected".into())?;
        for args in [["freeze", "flood"], ["thaw", "flood"]] {
            let (code, out, err) = cli(&[args[0], args[1], "--socket", &sock])?;
            ensure(code == 0, || format!("{} under a flood: exit {code}: {out}{err}", args[0]))?;
        }
        let (_, out, err) = cli(&["status", "--socket", &sock])?;
        ensure(out.contains("\"flood\""), || format!("status under a flood: {out}{err}"))?;
        // The descriptors the flood sent (ten with every other connection, 1,500 in
        // all) were closed, not kept; a few of its connections may still be read.
        let open = fds();
        ensure(open <= before + 40, || {
            format!("agentmon holds {open} descriptors after the flood, {before} before it")
        })
    })();
    let _ = flood.kill();
    let _ = flood.wait();
    write(&d.join("go"), "")?;
    let (code, evs) = finish(c, &d)?;
    r?;
    eq("scenario exit", code, 0)?;
    let log = stderr(&d);
    let lines = log.lines().filter(|l| l.contains("control")).count();
    // Bounded: a burst of refusal records for the user, then one a second, and a
    // summary of refused connections every ten seconds (not one line each).
    ensure(lines <= 12, || format!("{lines} log lines about the flood:\n{log}"))?;
    ensure(evs.iter().any(|e| e.kind == Kind::Action && e.action.as_deref() == Some("freeze")), || {
        "no freeze action recorded".into()
    })?;
    Ok(())
}

/// A daemon's control socket flooded by another user: an operator still registers
/// a task (`agentmon exec --daemon`), and the flood's requests come to nothing.
pub fn daemon_takes_tasks_under_a_flood() -> R {
    let d = workdir("flood-daemon");
    // The daemon's socket directory may be written by agentmon's user only; the
    // flood says it holds its connections in a directory of its own.
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    let h = d.join("flood");
    std::fs::create_dir_all(&h).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&h, std::fs::Permissions::from_mode(0o777)).map_err(|e| e.to_string())?;
    let task = observed_task(&d, "under-flood")?;
    let (sock, all) = crate::daemon::daemon_paths(&d);
    let daemon = crate::daemon::start_daemon(&d, "")?;
    let sock_s = sock.display().to_string();
    let flood = as_nobody("hold", &[&sock_s, "300", h.to_str().unwrap()]);
    let r = (|| {
        let mut flood = flood?;
        let held = wait(Duration::from_secs(60), || h.join("held").exists());
        let out = Command::new(agentmon())
            .args([
                "exec",
                "--quiet",
                "--daemon",
                &sock_s,
                "--task",
                task.to_str().unwrap(),
                "--",
                "/bin/true",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string());
        let _ = flood.kill();
        let _ = flood.wait();
        ensure(held, || "the flood never connected".into())?;
        let out = out?;
        eq(
            &format!("exec under a flood ({})", String::from_utf8_lossy(&out.stderr)),
            out.status.code(),
            Some(0),
        )
    })();
    std::thread::sleep(Duration::from_millis(700));
    let said = crate::daemon::stop(daemon)?;
    r.map_err(|e| format!("{e}\n{said}"))?;
    let evs = crate::daemon::events(&all)?;
    ensure(
        evs.iter().any(|e| e.kind == Kind::TaskStart && e.task.as_deref() == Some("under-flood")),
        || format!("no task_start of the task registered under the flood: {said}"),
    )?;
    Ok(())
}

/// The CLI never asks a socket it cannot trust: one planted by another user (where
/// older versions looked, or given with --socket) gets nothing, and a stale socket
/// left by a dead agentmon is skipped without a misleading error.
pub fn cli_talks_only_to_agentmon() -> R {
    let d = workdir("planted");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).map_err(|e| e.to_string())?;
    let tmp = Path::new("/tmp/agentmon");
    std::fs::create_dir_all(tmp).map_err(|e| e.to_string())?;
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o1777)).map_err(|e| e.to_string())?;
    let planted = tmp.join(format!("evil-{}.sock", std::process::id()));
    let given = d.join("evil.sock");
    let (log1, log2) = (d.join("got1"), d.join("got2"));
    let mut fakes = vec![
        as_nobody("fake_agentmon", &[planted.to_str().unwrap(), log1.to_str().unwrap()])?,
        as_nobody("fake_agentmon", &[given.to_str().unwrap(), log2.to_str().unwrap()])?,
    ];
    let stale = Path::new("/run/agentmon").join(format!("stale-{}.sock", std::process::id()));
    let r = (|| {
        ensure(wait(Duration::from_secs(5), || planted.exists() && given.exists()), || {
            "no fake sockets".into()
        })?;
        std::fs::create_dir_all("/run/agentmon").map_err(|e| e.to_string())?;
        drop(std::os::unix::net::UnixListener::bind(&stale).map_err(|e| e.to_string())?);
        let (_, out, err) = cli(&["status"])?;
        ensure(!out.contains("FAKE-TASK"), || format!("status listed a planted agentmon: {out}"))?;
        ensure(!err.contains(&stale.display().to_string()), || {
            format!("status complained of a stale socket: {err}")
        })?;
        let (_, out, err) = cli(&["status", "--socket", given.to_str().unwrap()])?;
        ensure(!out.contains("FAKE-TASK") && err.contains("not agentmon's"), || format!("{out}{err}"))?;
        let (code, out, err) = cli(&["approve", "a-1", "--socket", given.to_str().unwrap()])?;
        ensure(code != 0 && !out.contains("FAKE-APPROVED"), || format!("approve obeyed a fake: {out}{err}"))?;
        let (code, _, err) = cli(&["kill", "no-such-task-anywhere"])?;
        eq("kill of an unknown task", code, 1)?;
        ensure(!err.contains("cannot reach") && !err.contains("stale"), || format!("kill said: {err}"))?;
        for log in [&log1, &log2] {
            let got = std::fs::read_to_string(log).unwrap_or_default();
            ensure(got.is_empty(), || format!("a fake agentmon was sent: {got}"))?;
        }
        Ok::<(), String>(())
    })();
    for f in &mut fakes {
        let _ = f.kill();
        let _ = f.wait();
    }
    let _ = std::fs::remove_file(&planted);
    let _ = std::fs::remove_file(&stale);
    Ok(r?)
}

/// An enforced task whose write scope reaches agentmon's control sockets, cgroupfs,
/// bpffs or procfs, directly, through a symlink or through a mount beneath it, is
/// refused: it could delete the control plane or leave its cgroup.
pub fn enforce_refuses_scopes_over_agentmon() -> R {
    let d = workdir("escapes");
    let link = d.join("cg");
    std::os::unix::fs::symlink("/sys/fs/cgroup", &link).map_err(|e| e.to_string())?;
    let mnt = d.join("mnt");
    std::fs::create_dir_all(mnt.join("cg")).map_err(|e| e.to_string())?;
    nix::mount::mount(
        Some("none"),
        &mnt.join("cg"),
        Some("cgroup2"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| format!("mounting cgroup2 for the test: {e}"))?;
    let scopes = [
        "/sys/fs/cgroup/**".to_string(),
        "/run/agentmon/**".into(),
        "/sys/fs/bpf/**".into(),
        "/proc/**".into(),
        "/**".into(),
        format!("{}/**", link.display()),
        format!("{}/**", mnt.display()),
    ];
    let r = (|| {
        for (i, scope) in scopes.iter().enumerate() {
            let t = d.join(format!("t{i}.yaml"));
            write(
                &t,
                &format!(
                    "id: esc{i}\nmode: execute\nenforcement: enforce\nscope:\n  write: [\"{scope}\"]\n  exec: [\"/usr/bin/**\"]\n"
                ),
            )?;
            let events = d.join(format!("events{i}.jsonl"));
            let out = support::exec_command(
                &events,
                &["--task", t.to_str().unwrap()],
                &["/usr/bin/true".into()],
                &[],
                &d,
            )
            .output()
            .map_err(|e| e.to_string())?;
            let err = String::from_utf8_lossy(&out.stderr);
            ensure(
                out.status.code() == Some(125)
                    && err.contains("cannot enforce task")
                    && err.contains("scope.write")
                    && (err.contains("agentmon writes or trusts") || err.contains("a kernel interface")),
                || format!("write scope {scope}: exit {:?}: {err}", out.status.code()),
            )?;
        }
        // The host's NATS signing key: an agent that reads or replaces it forges
        // kill and revoke messages (nothing listens on port 1: refused before any
        // connection).
        let keys = d.join("keys");
        std::fs::create_dir_all(&keys).map_err(|e| e.to_string())?;
        let t = d.join("tkey.yaml");
        write(
            &t,
            &format!(
                "id: esckey\nmode: execute\nenforcement: enforce\nscope:\n  write: [\"{}/**\"]\n  \
                 exec: [\"/usr/bin/**\"]\n",
                keys.display()
            ),
        )?;
        let key = keys.join("host.key");
        let out = support::exec_command(
            &d.join("events-key.jsonl"),
            &[
                "--task",
                t.to_str().unwrap(),
                "--nats",
                "nats://127.0.0.1:1",
                "--nats-sign-key",
                key.to_str().unwrap(),
            ],
            &["/usr/bin/true".into()],
            &[],
            &d,
        )
        .output()
        .map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure(
            out.status.code() == Some(125)
                && err.contains("cannot enforce task")
                && err.contains("agentmon writes or trusts"),
            || format!("write scope over the signing key: exit {:?}: {err}", out.status.code()),
        )?;
        Ok::<(), String>(())
    })();
    let _ = nix::mount::umount(&mnt.join("cg"));
    Ok(r?)
}

/// A task process that moves itself out of its task's cgroup is brought back: a
/// freeze covers it, and the move is a tamper event.
pub fn left_cgroup_is_brought_back() -> R {
    left_then(&workdir("left"), false)?;
    left_then(&workdir("left-kill"), true)
}

/// The task's root leaves its cgroup for the root cgroup; then the operator freezes
/// (and thaws) or kills the task: the action reaches it all the same.
fn left_then(d: &Path, kill: bool) -> R {
    let task = observed_task(d, "left")?;
    let procs = ["/sys/fs/cgroup/unified/cgroup.procs", "/sys/fs/cgroup/cgroup.procs"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("no cgroup v2 cgroup.procs")?;
    let c = start(d, &task, "leave_cgroup", &[procs])?;
    let sock = format!("/run/agentmon/exec-{}.sock", c.id());
    let r = (|| {
        // The file is made, then written: its pid is there once it parses.
        let left = || std::fs::read_to_string(d.join("left")).ok().and_then(|s| s.trim().parse::<u32>().ok());
        ensure(wait(Duration::from_secs(60), || left().is_some()), || format!("never left: {}", stderr(d)))?;
        let pid = left().ok_or("no pid in the left file")?;
        if kill {
            let (code, out, err) = cli(&["kill", "left", "--socket", &sock])?;
            eq(&format!("kill: {out}{err}"), code, 0)?;
            return Ok::<u32, String>(pid);
        }
        let (code, out, err) = cli(&["freeze", "left", "--socket", &sock])?;
        eq(&format!("freeze: {out}{err}"), code, 0)?;
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|e| e.to_string())?;
        let at = cg.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("").to_string();
        // agentmon's directory, or beneath the cgroup the test runs in (a session's).
        let task_cg =
            at.starts_with("/agentmon/") || at.rsplit('/').next().is_some_and(|n| n.starts_with("agentmon-"));
        ensure(task_cg, || format!("pid {pid} is in {at}, not its task's cgroup"))?;
        let root = Path::new(procs).parent().unwrap();
        let events = || {
            std::fs::read_to_string(root.join(at.trim_start_matches('/')).join("cgroup.events"))
                .unwrap_or_default()
        };
        // The reply may come before the kernel reports every process stopped.
        ensure(wait(Duration::from_secs(10), || events().lines().any(|l| l == "frozen 1")), || {
            format!("not frozen: {}", events())
        })?;
        let (code, out, err) = cli(&["thaw", "left", "--socket", &sock])?;
        eq(&format!("thaw: {out}{err}"), code, 0)?;
        Ok(pid)
    })();
    write(&d.join("go"), "")?;
    let (code, evs) = finish(c, d)?;
    let pid = r?;
    eq("scenario exit", code, if kill { 128 + 9 } else { 0 })?;
    if kill {
        let act = evs.iter().find(|e| e.kind == Kind::Action).ok_or("no action record of the kill")?;
        // The root (which left) died of the kill: exit 137 above.
        eq("action", act.action.as_deref(), Some("kill"))?;
    }
    let regrouped = evs.iter().any(|e| {
        e.kind == Kind::Action
            && e.detail.get("regrouped").is_some_and(|v| v.to_string().contains(&format!("\"pid\":{pid}")))
    });
    let tamper = support::tamper_of(&evs, "leaving the task's cgroup").iter().any(|e| e.pid == pid);
    ensure(regrouped || tamper, || "the escape was not recorded".into())?;
    Ok(())
}

/// A path deeper than agentmon's old 40-component walk is reported whole and judged
/// on its real location; one deeper than the kernel walks at all is never presented
/// (nor judged) as the absolute path its tail spells: a deep tree whose last
/// components mimic the task's scope forges no `in_scope`.
pub fn deep_paths_are_never_forged() -> R {
    let d = workdir("deep");
    let task = d.join("task.yaml");
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let ok = d.join("ok");
    std::fs::create_dir_all(&ok).map_err(|e| e.to_string())?;
    write(
        &task,
        &format!(
            "id: deep\nmode: execute\nscope:\n  write: [\"{}/**\"]\n  exec: [\"{}\"]\n",
            ok.display(),
            me.display()
        ),
    )?;
    let chain = |n: usize| (0..n).map(|i| format!("c{i}")).collect::<Vec<_>>().join("/");
    // The components of ok/, as the forged tails spell them.
    let ok_comps: Vec<String> = ok.iter().skip(1).map(|c| c.to_string_lossy().into_owned()).collect();
    let forged = |walk: usize| {
        let k = walk - ok_comps.len() - 1;
        format!("{}/{}/pwn{walk}.txt", ok_comps.join("/"), chain(k))
    };
    let walk = monitor_common::WALK_MAX;
    let specs = [
        format!("ok|{}/inside.txt", chain(60)),
        // The reproduction: the last 40 components spell a path in scope.
        format!("evil/x/a/b/c|{}", forged(40)),
        // At the kernel's walk limit: the tail spells the scope exactly.
        format!("evil/y/z|{}", forged(walk)),
    ];
    let mut args = vec![me.display().to_string(), d.display().to_string()];
    args.extend(specs.iter().cloned());
    let run = support::run_agentmon_with(
        &["--task", task.to_str().unwrap()],
        &args,
        &[(SCENARIO_ENV, "deep")],
        &d,
    )?;
    eq(&format!("scenario exit: {}", run.stderr), run.code, 0)?;
    let creates = run.of(Kind::FileCreate);
    let named =
        |leaf: &str| creates.iter().find(|e| e.path.as_deref().is_some_and(|p| p.ends_with(leaf))).copied();
    let inside = named("/inside.txt").ok_or_else(|| run.summary())?;
    eq(
        "deep in-scope path",
        inside.path.clone(),
        Some(format!("{}/{}/inside.txt", ok.display(), chain(60))),
    )?;
    eq("deep in-scope verdict", inside.verdict.as_deref(), Some("in_scope"))?;
    ensure(!run.alerts.iter().any(|a| a.event.id == inside.id), || {
        "a deep in-scope write raised an alert".into()
    })?;
    let repro = named("/pwn40.txt").ok_or_else(|| run.summary())?;
    ensure(
        repro.path.as_deref().is_some_and(|p| p.starts_with(&format!("{}/evil/x/a/b/c/", d.display()))),
        || format!("the 40-deep forgery is not reported where it is: {:?}", repro.path),
    )?;
    ensure(repro.verdict.as_deref() != Some("in_scope"), || {
        "the 40-deep forgery was judged in scope".into()
    })?;
    let limit = named(&format!("/pwn{walk}.txt")).ok_or_else(|| run.summary())?;
    ensure(limit.path.as_deref().is_some_and(|p| p.starts_with(agentmon::event::UNRESOLVED_PREFIX)), || {
        format!("a path deeper than the walk was presented as {:?}", limit.path)
    })?;
    ensure(limit.flags.iter().any(|f| f == "truncated"), || format!("{:?}", limit.flags))?;
    ensure(limit.verdict.as_deref() != Some("in_scope"), || {
        "the forgery at the walk limit was judged in scope".into()
    })?;
    ensure(run.alerts.iter().any(|a| a.event.id == limit.id), || "no alert for an unresolvable path".into())?;
    Ok(())
}

/// One run of a writing agent while the disk under its events file and NATS spool
/// fills up and frees again (broker away): agentmon keeps observing, the audit
/// chain (on another disk) records every event and the losses of the other
/// outputs, each output says what it missed once it works again; an enforced task
/// is frozen while its record cannot be written, and thawed after.
/// Runs `f` with a work directory `name` and, in it, `full`: a 1 MiB file system
/// (unmounted after).
fn with_small_fs(name: &str, f: impl FnOnce(&Path, &Path) -> Result<(), String>) -> R {
    let d = workdir(name);
    let full = d.join("full");
    let fs = support::Tmpfs::new(&full, "size=1m")?;
    let r = f(&d, &full);
    drop(fs);
    Ok(r?)
}

/// The events file `events`, once it worked again: it says what it missed, and
/// holds the task's end.
fn says_what_it_missed(events: &Path) -> Result<(), String> {
    let own = support::parse_stream(&std::fs::read_to_string(events).map_err(|e| e.to_string())?)?.0;
    ensure(
        own.iter()
            .any(|e| e.kind == Kind::Loss && e.reason.as_deref().is_some_and(|r| r.contains("works again"))),
        || "the events file does not say what it missed".into(),
    )?;
    ensure(own.iter().any(|e| e.kind == Kind::TaskEnd), || "no task_end in the events file".into())
}

/// Task `id` (with the manifest line `line`) that writes under `d/out` and runs this
/// test binary (the `stream` scenario): (d/out, this binary, the manifest).
fn streaming_task(d: &Path, id: &str, line: &str) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    let out = d.join("out");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let task = d.join("task.yaml");
    write(
        &task,
        &format!(
            "id: {id}\nmode: execute\n{line}\nscope:\n  write: [\"{}/**\"]\n  exec: [\"{}\"]\n",
            out.display(),
            me.display()
        ),
    )?;
    Ok((out, me, task))
}

fn full_disk_run(enforce: bool) -> R {
    with_small_fs(if enforce { "full-enforced" } else { "full" }, |d, full| {
        let mode = if enforce { "enforcement: enforce" } else { "enforcement: observe" };
        let (out, me, task) = streaming_task(d, "full", mode)?;
        if enforce && !support::can_enforce() {
            return support::enforce_refused_here(&task, d);
        }
        let (events, chain, key) = (full.join("events.jsonl"), d.join("audit.jsonl"), d.join("audit.key"));
        let spool = full.join("spool");
        let cmd = [me.display().to_string(), d.display().to_string(), "300".into(), "30".into()];
        let flags = [
            "--task",
            task.to_str().unwrap(),
            "--audit",
            chain.to_str().unwrap(),
            "--audit-key",
            key.to_str().unwrap(),
            "--nats",
            "nats://127.0.0.1:1",
            "--spool",
            spool.to_str().unwrap(),
        ];
        let c = support::exec_command(&events, &flags, &cmd, &[(SCENARIO_ENV, "stream")], d)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("stderr")).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| e.to_string())?;
        ensure(wait(Duration::from_secs(60), || out.join("progress").exists()), || stderr(d))?;
        let filler = fill(full)?;
        // Full for a while (long enough for an enforced task to be frozen for it),
        // then free again well before the agent is done.
        let frozen = enforce
            && wait(Duration::from_secs(5), || {
                audited(&chain).is_ok_and(|evs| {
                    evs.iter().any(|e| e.kind == Kind::Action && e.action.as_deref() == Some("freeze"))
                })
            });
        std::thread::sleep(Duration::from_millis(3500));
        std::fs::remove_file(&filler).map_err(|e| e.to_string())?;
        let code = c.wait_with_output().map_err(|e| e.to_string())?.status.code().unwrap_or(-1);
        eq(&format!("exit (the command's); stderr:\n{}", stderr(d)), code, 0)?;
        let evs = audited(&chain)?;
        every_create_audited(&evs, 300)?;
        let lost_to = |name: &str| {
            evs.iter().any(|e| {
                e.kind == Kind::Loss
                    && e.detail.get("output").and_then(|v| v.as_str()).is_some_and(|o| o.starts_with(name))
            })
        };
        if !enforce {
            // (An enforced task is frozen before the outputs' buffers overflow: it
            // loses nothing.)
            ensure(lost_to(events.to_str().unwrap()), || {
                "no loss record for the events file in the audit chain".into()
            })?;
            ensure(lost_to("nats"), || "no loss record for the NATS spool in the audit chain".into())?;
        }
        let (vc, _, verr) = cli(&["audit", "verify", chain.to_str().unwrap()])?;
        eq(&format!("audit verify: {verr}"), vc, 0)?;
        says_what_it_missed(&events)?;
        if enforce {
            ensure(frozen, || {
                "the enforced task was not frozen while its record could not be written".into()
            })?;
            let thawed = evs.iter().any(|e| {
                e.kind == Kind::Action
                    && e.action.as_deref() == Some("thaw")
                    && e.detail.get("by").and_then(|v| v.as_str()) == Some("output_failure")
            });
            ensure(thawed, || "the task was not thawed when the outputs worked again".into())?;
        }
        Ok::<(), String>(())
    })
}

/// A task whose `on_output_failure` is `kill` (observed here: no layer is needed) is
/// killed once what it does cannot be recorded; agentmon records why in its audit
/// chain, on another file system, and ends with the command's status.
pub fn full_disk_kills_when_the_task_says_so() -> R {
    with_small_fs("full-kill", |d, full| {
        let (out, me, task) = streaming_task(d, "full-kill", "on_output_failure: kill")?;
        let (events, chain, key) = (full.join("events.jsonl"), d.join("audit.jsonl"), d.join("audit.key"));
        // 3,000 files 30 ms apart: 90 s unless it is stopped.
        let cmd = [me.display().to_string(), d.display().to_string(), "3000".into(), "30".into()];
        let flags = ["--task", task.to_str().unwrap(), "--audit", chain.to_str().unwrap()];
        let flags = [&flags[..], &["--audit-key", key.to_str().unwrap()]].concat();
        let mut c = support::exec_command(&events, &flags, &cmd, &[(SCENARIO_ENV, "stream")], d)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("stderr")).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| e.to_string())?;
        ensure(wait(Duration::from_secs(60), || out.join("progress").exists()), || stderr(d))?;
        let filler = fill(full)?;
        let code = support::exit_within(&mut c, Duration::from_secs(60) * support::slowdown());
        if code.is_none() {
            let _ = c.kill();
            let _ = c.wait();
        }
        std::fs::remove_file(&filler).map_err(|e| e.to_string())?;
        eq(&format!("exit (killed); stderr:\n{}", stderr(d)), code, Some(Some(128 + 9)))?;
        let made: usize =
            std::fs::read_to_string(out.join("progress")).unwrap_or_default().trim().parse().unwrap_or(0);
        ensure(made < 3000, || format!("the task ran to its end ({made} files)"))?;
        let evs = audited(&chain)?;
        let killed = evs.iter().find(|e| {
            e.kind == Kind::Action
                && e.action.as_deref() == Some("kill")
                && e.detail.get("by").and_then(|v| v.as_str()) == Some("output_failure")
        });
        ensure(killed.is_some(), || "no kill for the output failure in the audit chain".into())?;
        let end = evs.iter().find(|e| e.kind == Kind::TaskEnd);
        ensure(end.is_some(), || "no task_end in the audit chain".into())?;
        Ok::<(), String>(())
    })
}

/// The daemon's events file on a file system that fills up while a task runs: the
/// daemon keeps running and observing (its audit chain, on another file system,
/// holds every event and a loss record naming the events file), and the events
/// file says what it missed once it works again.
pub fn full_disk_keeps_the_daemon_watching() -> R {
    with_small_fs("full-daemon", |d, full| {
        let out = d.join("out");
        std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
        let task = observed_task(d, "full-daemon")?;
        let (events, chain, key) = (full.join("events.jsonl"), d.join("audit.jsonl"), d.join("audit.key"));
        let (sock, _) = crate::daemon::daemon_paths(d);
        // The daemon's configuration, written before start_daemon (which keeps it):
        // its events file on the small file system, its audit chain off it.
        let config = d.join("agentmon.yaml");
        write(
            &config,
            &format!(
                "socket: {}\nevents: {}\nrules: none\nstate_dir: {}\naudit:\n  path: {}\n  key: {}\n",
                sock.display(),
                events.display(),
                d.join("state").display(),
                chain.display(),
                key.display()
            ),
        )?;
        let daemon = crate::daemon::start_daemon(d, "")?;
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        let run = (|| {
            let c = Command::new(agentmon())
                .args(["exec", "--quiet", "--daemon"])
                .arg(&sock)
                .arg("--task")
                .arg(&task)
                .arg("--")
                .arg(&me)
                .args([d.to_str().unwrap(), "300", "30"])
                .env(SCENARIO_ENV, "stream")
                .stdin(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| e.to_string())?;
            ensure(wait(Duration::from_secs(60), || out.join("progress").exists()), || {
                "the task never ran".into()
            })?;
            let filler = fill(full)?;
            std::thread::sleep(Duration::from_millis(3500));
            std::fs::remove_file(&filler).map_err(|e| e.to_string())?;
            let o = c.wait_with_output().map_err(|e| e.to_string())?;
            eq(&format!("exec exit ({})", String::from_utf8_lossy(&o.stderr)), o.status.code(), Some(0))
        })();
        std::thread::sleep(Duration::from_millis(1200));
        let said = crate::daemon::stop(daemon);
        run?;
        let said = said?;
        let evs = audited(&chain)?;
        every_create_audited(&evs, 300).map_err(|e| format!("{e}\n{said}"))?;
        ensure(
            evs.iter().any(|e| {
                e.kind == Kind::Loss
                    && e.detail.get("output").and_then(|v| v.as_str()) == Some(events.to_str().unwrap())
            }),
            || format!("no loss record naming the events file in the audit chain: {said}"),
        )?;
        says_what_it_missed(&events)
    })
}

/// The stream scenario's `n` creates (`out/f0`..) each have one file_create record in
/// the audit chain; else which are missing, what was said of their names and every
/// loss record.
fn every_create_audited(evs: &[Event], n: usize) -> Result<(), String> {
    let index = |p: &str| p.rsplit_once("/out/f").and_then(|(_, i)| i.parse::<usize>().ok());
    let mut seen = vec![0usize; n];
    for e in evs.iter().filter(|e| e.kind == Kind::FileCreate) {
        if let Some(i) = e.path.as_deref().and_then(index).filter(|&i| i < n) {
            seen[i] += 1;
        }
    }
    if seen.iter().all(|&c| c == 1) {
        return Ok(());
    }
    let odd: Vec<String> =
        seen.iter().enumerate().filter(|(_, c)| **c != 1).map(|(i, c)| format!("f{i}: {c}")).collect();
    let said: Vec<String> = evs
        .iter()
        .filter(|e| {
            e.kind == Kind::Loss
                || e.path.as_deref().and_then(index).is_some_and(|i| i < n && seen[i] != 1)
                || (e.kind == Kind::FileCreate && e.path.as_deref().and_then(index).is_none())
        })
        .map(|e| serde_json::to_string(e).unwrap_or_default())
        .collect();
    Err(format!(
        "file creates in the audit chain: not one each of {n}: {}\nrecords of those names, \
         unnamed creates and losses:\n{}",
        odd.join(", "),
        said.join("\n")
    ))
}

pub fn full_disk_keeps_watching() -> R {
    full_disk_run(false)
}

pub fn full_disk_fails_closed_when_enforced() -> R {
    full_disk_run(true)
}
