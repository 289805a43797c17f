//! The BPF LSM hooks cost every process on the host a trampoline per hooked call,
//! and act for enforced tasks alone: a daemon attaches them while a task is
//! enforced on that tier and detaches them once none has been for its linger
//! (kernel::loader::hooks). Attached too late, or not again after a detach, an
//! enforced task would run unchecked; this holds them to both.

use std::{
    collections::BTreeSet,
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

/// include/uapi/linux/bpf.h
const BPF_PROG_GET_FD_BY_ID: i64 = 13;
const BPF_OBJ_GET_INFO_BY_FD: i64 = 15;
const BPF_LINK_GET_FD_BY_ID: i64 = 30;
const BPF_LINK_GET_NEXT_ID: i64 = 31;
const BPF_LINK_TYPE_TRACING: u32 = 2;
const BPF_LSM_MAC: u32 = 27;

/// bpf(2) with attribute `attr`; the descriptor or 0, or the error.
fn bpf<T>(cmd: i64, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: every command used here reads and writes within the attribute passed.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<T>()) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r) }
}

/// The attribute of BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The object `fd`'s info (struct bpf_link_info or bpf_prog_info, as bytes); closes `fd`.
fn info_of(fd: i64) -> std::io::Result<[u8; 256]> {
    let mut info = [0u8; 256];
    let mut attr =
        InfoAttr { bpf_fd: fd as u32, info_len: info.len() as u32, info: info.as_mut_ptr() as u64 };
    let r = bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr);
    // SAFETY: the descriptor the caller got from bpf(2), closed once.
    unsafe { libc::close(fd as i32) };
    r.map(|_| info)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The programs of process `pid`: every `prog_id` its descriptors name.
fn programs_of(pid: u32) -> Result<BTreeSet<u32>, String> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut progs = BTreeSet::new();
    for e in std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))?.flatten() {
        let Ok(info) = std::fs::read_to_string(e.path()) else { continue };
        progs.extend(info.lines().filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse::<u32>().ok()));
    }
    Ok(progs)
}

/// The names of the programs of process `pid` that the kernel has linked to an LSM
/// hook: every such link on the host, held by a descriptor or by a pin alone.
fn lsm_hooks_of(pid: u32) -> Result<Vec<String>, String> {
    lsm_hooks(&programs_of(pid)?)
}

/// The names of the programs `progs` that the kernel has linked to an LSM hook.
fn lsm_hooks(progs: &BTreeSet<u32>) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut id = 0;
    loop {
        let mut attr = [id, 0u32, 0, 0];
        match bpf(BPF_LINK_GET_NEXT_ID, &mut attr) {
            Ok(_) => id = attr[1],
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(format!("BPF_LINK_GET_NEXT_ID: {e}")),
        }
        // A link detached meanwhile is gone: skipped.
        let Ok(fd) = bpf(BPF_LINK_GET_FD_BY_ID, &mut [id, 0u32, 0, 0]) else { continue };
        let Ok(link) = info_of(fd) else { continue };
        // struct bpf_link_info: type, id, prog_id, then (8-aligned) tracing.attach_type.
        let prog = u32_at(&link, 8);
        if u32_at(&link, 0) != BPF_LINK_TYPE_TRACING
            || u32_at(&link, 16) != BPF_LSM_MAC
            || !progs.contains(&prog)
        {
            continue;
        }
        let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut [prog, 0u32, 0, 0])
            .map_err(|e| format!("program {prog}: {e}"))?;
        // struct bpf_prog_info: name[16] at 64.
        let info = info_of(fd).map_err(|e| format!("program {prog}: {e}"))?;
        let name = &info[64..80];
        let end = name.iter().position(|b| *b == 0).unwrap_or(16);
        names.push(String::from_utf8_lossy(&name[..end]).into_owned());
    }
    names.sort();
    Ok(names)
}

/// The hooks attached for as long as the programs are (kernel::loader::hooks::ALWAYS:
/// file_truncate from 6.2 on).
fn always(names: &[String]) -> bool {
    names.iter().any(|n| n == "path_truncate")
        && names.iter().all(|n| n == "path_truncate" || n == "file_truncate")
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

/// Only the truncate hooks while nothing is enforced; every hook while a task is;
/// only the truncate hooks again once the last enforced task has gone (a linger of
/// 1 s); all of them again for the next one, which is held as the first was; and a
/// restarted daemon's own for a task a killed one enforced. Counted by the kernel's
/// list of links, whoever holds them (a descriptor or a pin). Where the BPF LSM tier
/// is not used, no LSM link is ever made, and Landlock holds the scope.
pub fn lsm_hooks_are_attached_only_while_a_task_is_enforced() -> R {
    let d = support::workdir("lsm-hooks");
    if !support::can_enforce() {
        let (t, _) = enforced_task(&d, "first")?;
        return Ok(support::enforce_refused_here(&t, &d)?);
    }
    let mut daemon = start_daemon(&d, "lsm_linger: 1s\n")?;
    let result = (|| -> Result<(), String> {
        let lsm = support::bpf_lsm();
        // Its programs are loaded once its socket answers.
        let idle = lsm_hooks_of(daemon.id())?;
        let first = Agent::start(&d, "first")?;
        let held = lsm_hooks_of(daemon.id())?;
        let (out, inside) = first.finish(&d)?;
        eq("write_out errno (first task)", out, libc::EACCES)?;
        eq("write_in errno (first task)", inside, 0)?;
        if !lsm {
            eq("LSM hooks on the fallback tier", (idle, held), (vec![], vec![]))?;
            return Ok(());
        }
        ensure(always(&idle), || format!("LSM hooks attached with no task enforced: {idle:?}"))?;
        // Every hook of kernel::lsm::HOOKS this kernel has (3 are optional).
        ensure(held.len() >= 15 && held.iter().any(|n| n == "file_open"), || {
            format!("LSM hooks attached while an enforced task ran: {held:?}")
        })?;
        // Forgotten at the daemon's next sweep (every 10 s), detached a linger after.
        let limit = Duration::from_secs(40) * support::slowdown();
        let detached = wait(limit, || lsm_hooks_of(daemon.id()).is_ok_and(|n| n == idle));
        ensure(detached, || {
            format!("{:?} still attached {limit:?} after the enforced task ended", lsm_hooks_of(daemon.id()))
        })?;
        let second = Agent::start(&d, "second")?;
        eq("LSM hooks attached for the second task", lsm_hooks_of(daemon.id())?, held.clone())?;
        let (out, inside) = second.finish(&d)?;
        eq("write_out errno (second task, after a detach)", out, libc::EACCES)?;
        eq("write_in errno (second task)", inside, 0)?;
        // A daemon killed while a task is enforced: the next one attaches its own
        // hooks as it loads (the killed one's, pinned, are retired once it has
        // resumed the task), and they hold the task.
        let third = Agent::start(&d, "third")?;
        // The registering exec hands the task's gate to the daemon: a moment for it.
        std::thread::sleep(Duration::from_millis(500) * support::slowdown());
        let killed = programs_of(daemon.id())?;
        let _ = daemon.kill();
        let _ = daemon.wait();
        daemon = start_daemon(&d, "")?;
        taken_up(&daemon_paths(&d).0);
        eq("LSM hooks of the restarted daemon", lsm_hooks_of(daemon.id())?, held)?;
        // The killed daemon's, pinned, are retired once the task is resumed.
        let limit = Duration::from_secs(40) * support::slowdown();
        ensure(wait(limit, || lsm_hooks(&killed).is_ok_and(|n| n.is_empty())), || {
            format!("the killed daemon's LSM hooks still attached after {limit:?}: {:?}", lsm_hooks(&killed))
        })?;
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

/// A fork that escaped tracking (TRACKED full: a daemon with `max_tracked: 16`, a
/// task holding 40 processes; the escape is a loss record) is held to its enforced
/// task's scope by its cgroup on the BPF LSM tier, and still after every tracked
/// process of its task has ended, the daemon has swept, and a daemon killed then
/// has been followed by another: the task's grants (and its state record) are kept
/// while its cgroup has processes, and let go once it has none (the hooks detach a
/// linger after). Before, the sweep forgot the task (it counted tracked processes
/// only), and the child wrote out of scope. Elsewhere Landlock, inherited, holds it.
pub fn escaped_forks_stay_enforced_after_their_task_ends() -> R {
    let d = support::workdir("lsm-escaped-late");
    let (t, me) = enforced_task(&d, "outlived")?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&t, &d)?);
    }
    let (sock, all) = daemon_paths(&d);
    let mut daemon = start_daemon(&d, "max_tracked: 16\nlsm_linger: 1s\n")?;
    let result = (|| -> Result<(), String> {
        let out = attempts_under(&sock, &t, &me, &d, &["escaped_outlives=40"])
            .output()
            .map_err(|e| e.to_string())?;
        eq(&format!("task exit ({})", String::from_utf8_lossy(&out.stderr)), out.status.code(), Some(0))?;
        let scaled = |s: u64| Duration::from_secs(s) * support::slowdown().min(2);
        // Two of the daemon's sweeps (every 10 s) and its linger; then a daemon
        // killed and another started, and one of its sweeps.
        std::thread::sleep(scaled(25));
        let _ = daemon.kill();
        let _ = daemon.wait();
        daemon = start_daemon(&d, "")?;
        taken_up(&sock);
        std::thread::sleep(scaled(12));
        std::fs::write(d.join("late-cue"), b"").map_err(|e| e.to_string())?;
        // Its errno, once written whole (the file exists a moment before).
        let late = || std::fs::read_to_string(d.join("repo/late.txt")).ok()?.trim().parse::<i32>().ok();
        ensure(wait(Duration::from_secs(30) * support::slowdown(), || late().is_some()), || {
            "the escaped child never tried its write".into()
        })?;
        eq(
            "errno of the escaped child's write, its task's tracked processes gone",
            late(),
            Some(libc::EACCES),
        )?;
        let forks_lost: u64 = events(&all)?
            .iter()
            .filter(|e| e.kind == Kind::Loss)
            .filter_map(|e| e.lost.as_ref().and_then(|l| l.get("fork").copied()))
            .sum();
        ensure(forks_lost > 0, || "no fork escaped tracking (no loss record counts one)".into())?;
        if support::bpf_lsm() {
            // The child has exited: its cgroup is empty, its task let go.
            let limit = Duration::from_secs(40) * support::slowdown();
            ensure(wait(limit, || lsm_hooks_of(daemon.id()).is_ok_and(|n| always(&n))), || {
                format!(
                    "{:?} still attached {limit:?} after the escaped child ended",
                    lsm_hooks_of(daemon.id())
                )
            })?;
        }
        Ok(())
    })();
    let said = stop(daemon)?;
    result.map_err(|e| format!("{e}\nthe daemon said: {said}"))?;
    ensure(!d.join("outside-late.txt").exists(), || "the escaped child wrote out of scope".into())?;
    Ok(())
}
