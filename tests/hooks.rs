//! The BPF LSM hooks cost every process on the host a trampoline per hooked call,
//! and act for enforced tasks alone: a daemon attaches them while a task is
//! enforced on that tier and detaches them once none has been for its linger
//! (kernel::loader::hooks). Attached too late, or not again after a detach, an
//! enforced task would run unchecked; this holds them to both.

use std::{
    path::{Path, PathBuf},
    process::Child,
    time::Duration,
};

use agentmon::event::{Event, Kind};

use crate::{
    R,
    daemon::{attempts_under, daemon_paths, enforced_task, events, start_daemon, stop, taken_up},
    enforce::attempt_results,
    support::{self, ensure, eq, wait},
};

/// BPF_LSM_MAC (include/uapi/linux/bpf.h): a tracing link's attach type for an LSM
/// program, in the link's fdinfo.
const LSM_MAC: &str = "27";

/// The BPF LSM links process `pid` holds (its link descriptors whose fdinfo says
/// `attach_type: 27`).
fn lsm_links_of(pid: u32) -> Result<usize, String> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))?.flatten() {
        let Ok(info) = std::fs::read_to_string(e.path()) else { continue };
        let field = |k: &str| info.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
        if field("link_type:") == Some("tracing") && field("attach_type:") == Some(LSM_MAC) {
            n += 1;
        }
    }
    Ok(n)
}

/// An enforced task (`id`) run through the daemon, its agent waiting for the file
/// `go` before it writes outside its scope and inside it.
struct Agent {
    id: &'static str,
    exec: Child,
    go: PathBuf,
}

impl Agent {
    /// Starts it; returns once its command runs under the task.
    fn start(d: &Path, id: &'static str) -> Result<Self, String> {
        let (sock, all) = daemon_paths(d);
        let (t, me) = enforced_task(d, id)?;
        let go = d.join(format!("go-{id}"));
        let wait_go = format!("wait={}", go.display());
        let exec = attempts_under(&sock, &t, &me, d, &[&wait_go, "write_out", "write_in"])
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut a = Self { id, exec, go };
        let running =
            |evs: &[Event]| evs.iter().any(|e| e.kind == Kind::Exec && e.task.as_deref() == Some(id));
        if !wait(Duration::from_secs(30) * support::slowdown(), || {
            events(&all).is_ok_and(|evs| running(&evs))
        }) {
            let _ = a.exec.kill();
            return Err(format!("task {id} was never bound"));
        }
        Ok(a)
    }

    /// Lets it write; what its writes outside and inside its scope got.
    fn finish(mut self, d: &Path) -> Result<(i32, i32), String> {
        std::fs::write(&self.go, b"").map_err(|e| e.to_string())?;
        let code = self.exec.wait().map_err(|e| e.to_string())?.code();
        eq(&format!("exit of task {}", self.id), code, Some(0))?;
        let res = attempt_results(d)?;
        let errno = |a: &str| res.get(a).copied().unwrap_or(-1);
        Ok((errno("write_out"), errno("write_in")))
    }
}

/// No hook while nothing is enforced; every hook while a task is; none again once
/// the last enforced task has gone (a linger of 1 s); all of them again for the
/// next one, which is held as the first was; and a restarted daemon's own for a
/// task a killed one enforced. Where the BPF LSM tier is not used,
/// no LSM link is ever made, and Landlock holds the scope.
pub fn lsm_hooks_are_attached_only_while_a_task_is_enforced() -> R {
    let d = support::workdir("lsm-hooks");
    if !support::can_enforce() {
        let (t, _) = enforced_task(&d, "first")?;
        return Ok(support::enforce_refused_here(&t, &d)?);
    }
    let mut daemon = start_daemon(&d, "lsm_linger: 1s\n")?;
    let result = (|| -> Result<(), String> {
        let lsm = support::bpf_lsm();
        // Its programs are loaded once its socket answers: it holds no LSM link.
        eq("LSM links held with no task", lsm_links_of(daemon.id())?, 0)?;
        let first = Agent::start(&d, "first")?;
        let held = lsm_links_of(daemon.id())?;
        let (out, inside) = first.finish(&d)?;
        eq("write_out errno (first task)", out, libc::EACCES)?;
        eq("write_in errno (first task)", inside, 0)?;
        if !lsm {
            eq("LSM links held on the fallback tier", held, 0)?;
            return Ok(());
        }
        // Every hook of kernel::lsm::HOOKS this kernel has (3 are optional).
        ensure(held >= 15, || format!("{held} LSM links held while an enforced task ran"))?;
        // Forgotten at the daemon's next sweep (every 10 s), detached a linger after.
        let limit = Duration::from_secs(40) * support::slowdown();
        let gone = wait(limit, || lsm_links_of(daemon.id()).is_ok_and(|n| n == 0));
        ensure(gone, || {
            format!(
                "{:?} LSM links still held {limit:?} after the enforced task ended",
                lsm_links_of(daemon.id())
            )
        })?;
        let second = Agent::start(&d, "second")?;
        eq("LSM links held for the second task", lsm_links_of(daemon.id())?, held)?;
        let (out, inside) = second.finish(&d)?;
        eq("write_out errno (second task, after a detach)", out, libc::EACCES)?;
        eq("write_in errno (second task)", inside, 0)?;
        // A daemon killed while a task is enforced: the next one attaches its own
        // hooks as it loads (the killed one's, pinned, are retired once it has
        // resumed the task), and they hold the task.
        let third = Agent::start(&d, "third")?;
        // The registering exec hands the task's gate to the daemon: a moment for it.
        std::thread::sleep(Duration::from_millis(500) * support::slowdown());
        let _ = daemon.kill();
        let _ = daemon.wait();
        daemon = start_daemon(&d, "")?;
        taken_up(&daemon_paths(&d).0);
        eq("LSM links held by the restarted daemon", lsm_links_of(daemon.id())?, held)?;
        let (out, inside) = third.finish(&d)?;
        eq("write_out errno (third task, after a restart)", out, libc::EACCES)?;
        eq("write_in errno (third task)", inside, 0)?;
        Ok(())
    })();
    let said = stop(daemon)?;
    result.map_err(|e| format!("{e}\nthe daemon said: {said}"))?;
    ensure(!d.join("outside.txt").exists(), || "an out-of-scope write happened".into())?;
    Ok(())
}
