//! Host names in tasks' connect scopes, looked up by the daemon at a task's start
//! and again every `hosts_refresh`. The daemon here runs in a mount namespace of
//! its own whose /etc/hosts the test rewrites and whose resolver never answers.
//! - A lookup ran on the daemon's loop (at a task's start, and every minute for
//!   every enforced task): a name whose server never answers stopped every task's
//!   events for as long as the resolver waited (here 16 s: a `stopping agentmon`
//!   record).
//! - The judge kept a task's first addresses (an observed task's names were not
//!   even looked up again): a name's new address, let through by the guard, was
//!   called out of scope.
//! - Now that it is not: a sub-task's name accepted because its parent's address
//!   range held its addresses at delegation must stay in that range.
//! - A delegation whose name must be looked up held the loop (2 s), and every
//!   other request with it: one asked while it waits is answered first.

use std::{
    ffi::OsStr,
    net::UdpSocket,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};

use agentmon::event::{Dst, Event, Kind};

use crate::{
    R,
    daemon::{daemon_paths, events, start_daemon_via, stop},
    support::{self, SCENARIO_ENV, agentmon, ensure, eq, wait, workdir},
};

/// The daemon's mount namespace: /etc/hosts and /etc/resolv.conf are `$1` and `$2`.
const NAMESPACE: &str =
    "mount --bind \"$1\" /etc/hosts && mount --bind \"$2\" /etc/resolv.conf && shift 2 && exec \"$@\"";

fn write(p: &Path, text: &str) -> Result<(), String> {
    std::fs::write(p, text).map_err(|e| format!("{}: {e}", p.display()))
}

/// The send event of task `task` to `ip:443`.
fn send_to<'a>(evs: &'a [Event], task: &str, ip: &str) -> Option<&'a Event> {
    evs.iter().find(|e| {
        e.kind == Kind::Send
            && e.task.as_deref() == Some(task)
            && matches!(&e.dst, Some(Dst::Ip { ip: i, port: 443 }) if i == ip)
    })
}

/// Writes task `id`'s manifest in `d`: writes under `d/repo`, runs this test
/// binary and agentmon, connects as `connect` says.
fn manifest(d: &Path, id: &str, enforce: bool, connect: &str) -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let t = d.join(format!("{id}.yaml"));
    let mode = if enforce { "enforce" } else { "observe" };
    write(
        &t,
        &format!(
            "id: {id}\nmode: execute\nenforcement: {mode}\nscope:\n  write: [\"{r}/**\"]\n  \
             exec: [\"{me}\", \"{am}\"]\n  connect: [{connect}]\n",
            r = d.join("repo").display(),
            me = me.display(),
            am = agentmon(),
        ),
    )?;
    Ok(t)
}

/// `agentmon exec` registering task `t` with the daemon at `sock`: this test binary
/// in `d` with `args`, as `scenario`.
fn under(sock: &Path, t: &Path, d: &Path, scenario: &str, args: &[&OsStr]) -> Result<Child, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    Command::new(agentmon())
        .args(["exec", "--quiet", "--daemon"])
        .arg(sock)
        .arg("--task")
        .arg(t)
        .arg("--")
        .arg(me)
        .arg(d)
        .args(args)
        .env(SCENARIO_ENV, scenario)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())
}

/// A DNS answer to `query` (one question): 127.0.9.3 for an A question, no record
/// for any other.
fn answer(query: &[u8]) -> Option<Vec<u8>> {
    let end = 12 + query.get(12..)?.iter().position(|b| *b == 0)? + 5;
    let question = query.get(12..end)?;
    let a = question[question.len() - 4..question.len() - 2] == [0, 1];
    let mut r = query[..2].to_vec();
    r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, a as u8, 0, 0, 0, 0]);
    r.extend_from_slice(question);
    if a {
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 9, 3]);
    }
    Some(r)
}

/// The resolver: takes every query and answers none, but slow.test's, which it
/// answers once `ready` exists (and says it was asked in `asked`), until `stop`.
fn resolver(s: UdpSocket, asked: PathBuf, ready: PathBuf, stop: Arc<AtomicBool>) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let mut held = Vec::new();
    let mut buf = [0u8; 512];
    while !stop.load(Relaxed) {
        if let Ok((n, from)) = s.recv_from(&mut buf)
            && buf[..n].windows(10).any(|w| w == b"\x04slow\x04test")
        {
            held.push((buf[..n].to_vec(), from));
            let _ = std::fs::write(&asked, b"");
        }
        if ready.exists() {
            for (q, from) in held.drain(..) {
                if let Some(r) = answer(&q) {
                    let _ = s.send_to(&r, from);
                }
            }
        }
    }
}

/// The exit code of `c` within `limit` (killed if it is still running then).
fn finish(c: &mut Child, limit: Duration) -> Option<i32> {
    let code = support::exit_within(c, limit);
    if code.is_none() {
        let _ = c.kill();
        let _ = c.wait();
    }
    code.flatten()
}

pub fn host_names_never_stall_or_widen() -> R {
    let d = workdir("hosts");
    // An observed task and its sub-task (sub-tasks have no network guard of their
    // own: judged); an enforced task where this host can enforce (its guard).
    let (o, g) = (d.join("o"), d.join("g"));
    std::fs::create_dir_all(o.join("repo/sub")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(o.join("repo/slow")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(g.join("repo")).map_err(|e| e.to_string())?;
    let enforce = support::can_enforce();
    // A resolver that takes every query and answers none (glibc waits 2 x 8 s), but
    // slow.test's once the other sub-task runs.
    let silent = UdpSocket::bind("127.0.0.2:53").map_err(|e| format!("binding 127.0.0.2:53: {e}"))?;
    let stop_dns = Arc::new(AtomicBool::new(false));
    let dns = {
        let (asked, ready, stop) = (o.join("asked"), o.join("repo/sub/ready"), stop_dns.clone());
        std::thread::spawn(move || resolver(silent, asked, ready, stop))
    };
    let hosts = d.join("hosts");
    write(&hosts, "127.0.0.1 localhost\n127.0.8.5 grow.test\n127.0.9.1 sub.test\n")?;
    let resolv = d.join("resolv.conf");
    write(&resolv, "nameserver 127.0.0.2\noptions timeout:8 attempts:2\n")?;
    let parent =
        manifest(&o, "hosts-parent", false, r#""127.0.9.0/24:443", "grow.test:443", "never.test:443""#)?;
    let guarded = manifest(&g, "hosts-guarded", enforce, r#""grow.test:443", "never.test:443""#)?;
    // Its only name is held by the parent's range.
    let child = o.join("child.yaml");
    write(
        &child,
        &format!(
            "id: hosts-child\nmode: execute\nscope:\n  write: [\"{}/sub/**\"]\n  exec: [\"{}\"]\n  \
             connect: [\"sub.test:443\"]\n",
            o.join("repo").display(),
            std::env::current_exe().map_err(|e| e.to_string())?.display()
        ),
    )?;
    // Its name only the parent's range could cover: looked up at delegation.
    let slow = o.join("slow.yaml");
    write(
        &slow,
        &format!(
            "id: hosts-slow\nmode: execute\nscope:\n  write: [\"{}/slow/**\"]\n  exec: [\"{}\"]\n  \
             connect: [\"slow.test:443\"]\n",
            o.join("repo").display(),
            std::env::current_exe().map_err(|e| e.to_string())?.display()
        ),
    )?;
    let via: Vec<&OsStr> =
        ["unshare", "-m", "sh", "-c", NAMESPACE, "sh"].into_iter().map(OsStr::new).collect();
    let via = [via, vec![hosts.as_os_str(), resolv.as_os_str()]].concat();
    let (sock, all) = daemon_paths(&d);
    // A deny rule on grow.test's first address: its guard entry is the allow
    // entry's net exactly (a tie the deny wins), which a refresh must not undo.
    let rules = d.join("rules");
    std::fs::create_dir_all(&rules).map_err(|e| e.to_string())?;
    write(
        &rules.join("deny.yaml"),
        "rules:\n  - id: test.no-8-5\n    description: test\n    severity: high\n    match:\n      \
         kinds: [connect, send]\n      dst: [\"127.0.8.5/32\"]\n    action: deny\n    examples:\n      \
         match: [{kind: send, dst: \"127.0.8.5:443\"}]\n      no_match: [{kind: send, dst: \"127.0.8.6:443\"}]\n",
    )?;
    let config = format!("hosts_refresh: 1s\ndelegation_lookups: 8s\nrules: {}\n", rules.display());
    let daemon = start_daemon_via(&d, &config, &via)?;
    let limit = Duration::from_secs(30) * support::slowdown();
    let run = (|| -> Result<(Option<i32>, Option<i32>), String> {
        let go = d.join("go");
        let mut family = under(
            &sock,
            &parent,
            &o,
            "hosts",
            &[OsStr::new(agentmon()), child.as_os_str(), slow.as_os_str()],
        )?;
        let wait_go = format!("wait={}", go.display());
        let mut alone = under(
            &sock,
            &guarded,
            &g,
            "attempts",
            &[OsStr::new(&wait_go), OsStr::new("udp_to=127.0.8.6:443"), OsStr::new("udp_to=127.0.8.5:443")],
        )?;
        let ready = wait(limit, || o.join("repo/sub/ready").exists());
        // The records change once the sub-task was accepted (sub.test in the
        // parent's range then); a few refreshes later the tasks send.
        write(&hosts, "127.0.0.1 localhost\n127.0.8.5 grow.test\n127.0.8.6 grow.test\n127.0.7.7 sub.test\n")?;
        std::thread::sleep(Duration::from_secs(3) * support::slowdown());
        write(&go, "")?;
        std::fs::copy(&go, o.join("go")).map_err(|e| e.to_string())?;
        let codes = (finish(&mut family, limit), finish(&mut alone, limit));
        ensure(ready, || "the sub-task never started".into())?;
        Ok(codes)
    })();
    let said = stop(daemon)?;
    stop_dns.store(true, Relaxed);
    let _ = dns.join();
    let (family, alone) = run?;
    eq("exit of the observed task", family, Some(0))?;
    eq("exit of the enforced task", alone, Some(0))?;
    let results = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    eq("sub-task exit", results(&o.join("repo/sub-rc")), "Some(0)".to_string())?;
    // The slow name's delegation waited, and the other was answered meanwhile (its
    // sub-task ran, and only then was slow.test answered).
    eq(
        &format!("slow sub-task exit ({:?})", support::tamper_of(&events(&all)?, "delegation (slow.yaml)")),
        results(&o.join("repo/slow-rc")),
        "Some(0)".to_string(),
    )?;
    ensure(o.join("repo/slow/ran").exists(), || "the slow sub-task never ran".into())?;
    let evs = events(&all)?;
    let slow_start =
        evs.iter().find(|e| e.kind == Kind::TaskStart && e.task.as_deref() == Some("hosts-slow"));
    ensure(slow_start.is_some(), || format!("no task_start of the slow sub-task\n{said}"))?;
    let stalled = support::tamper_of(&evs, "stopping agentmon");
    ensure(stalled.is_empty(), || format!("agentmon's loop stood still: {stalled:?}\n{said}"))?;
    let sent = |task: &str, ip: &str| {
        send_to(&evs, task, ip).ok_or_else(|| format!("no send of {task} to {ip}:443\n{said}"))
    };
    // The name gained an address: in both tasks' scope, and let through.
    eq("observed", results(&o.join("repo/results.txt")), "grown 0\n".to_string())?;
    eq("observed: new address", sent("hosts-parent", "127.0.8.6")?.verdict.as_deref(), Some("in_scope"))?;
    // The denied first address stays refused in the guard (EPERM) after the refreshes.
    let denied = if enforce { libc::EPERM } else { 0 };
    eq("enforced", results(&g.join("repo/results.txt")), format!("wait 0\nudp_to 0\nudp_to {denied}\n"))?;
    eq("enforced: new address", sent("hosts-guarded", "127.0.8.6")?.verdict.as_deref(), Some("in_scope"))?;
    // The sub-task's name moved out of the parent's range: its first address still
    // in scope, the new one not.
    eq("sub-task", results(&o.join("repo/sub/results.txt")), "first 0\nmoved 0\n".to_string())?;
    eq("sub-task: first address", sent("hosts-child", "127.0.9.1")?.verdict.as_deref(), Some("in_scope"))?;
    eq(
        "sub-task: moved address",
        sent("hosts-child", "127.0.7.7")?.verdict.as_deref(),
        Some("out_of_scope"),
    )?;
    // The refusal is said, once, for the sub-task.
    let told: Vec<&Event> = support::tamper_of(&evs, "host addresses")
        .into_iter()
        .filter(|e| e.reason.as_deref().is_some_and(|r| r.contains("sub.test now resolves to 127.0.7.7")))
        .collect();
    eq("records of the refused address", told.len(), 1)?;
    eq("its task", told[0].task.as_deref(), Some("hosts-child"))?;
    Ok(())
}
