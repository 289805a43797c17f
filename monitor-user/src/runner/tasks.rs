//! Top-level tasks of a daemon: `agentmon exec` registering its held command
//! (Start), and an operator binding a tree that already runs (Attach).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{RunError, control::Ctl, task_cgroup};
use crate::{
    ctl::{self, Reply},
    enforce::Layers,
    judge::Bound,
    proctable::Proc,
    sink::{JsonLines, Sink, TaskFilter},
    task::Task,
};

/// What a daemon knows that a single `exec` does not.
pub struct Host {
    pub layers: Layers,
    /// Files a task's scope may never cover (the daemon's own outputs and config).
    pub protected: Vec<PathBuf>,
    /// Where each running task is recorded, so a restarted daemon resumes it.
    pub state_dir: PathBuf,
    /// How long a held call waits for an approver.
    pub approval_timeout: std::time::Duration,
}

/// A running task as recorded in the state directory.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Saved {
    id: String,
    manifest: String,
    file: String,
    root: u32,
    enforce: bool,
    events: Option<String>,
    cgroup: Option<PathBuf>,
    /// When the task expires (kept absolute: a restart does not extend it).
    #[serde(default)]
    expires: Option<crate::event::Timestamp>,
    /// Its end was recorded: a restart does not resume it.
    #[serde(default)]
    ended: bool,
}

impl Host {
    fn saved(&self, id: &str) -> PathBuf {
        self.state_dir.join(format!("{id}.json"))
    }

    fn save(&self, s: &Saved) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.state_dir)?;
        let tmp = self.state_dir.join(format!(".{}.tmp", s.id));
        std::fs::write(&tmp, serde_json::to_vec(s)?)?;
        std::fs::rename(tmp, self.saved(&s.id))
    }

    /// The task's end was recorded: a restart must not resume it.
    pub fn mark_ended(&self, id: &str) {
        let path = self.saved(id);
        if let Some(mut s) = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Saved>(&b).ok())
            && !s.ended
        {
            s.ended = true;
            if let Err(e) = self.save(&s) {
                tracing::warn!("{}: {e}", path.display());
            }
        }
    }

    /// The task is gone: nothing of it to resume.
    pub fn drop_saved(&self, id: &str) {
        let _ = std::fs::remove_file(self.saved(id));
    }
}

#[derive(Clone)]
pub struct StartReq {
    pub manifest: String,
    pub file: String,
    pub pid: u32,
    pub enforce: bool,
    pub events: Option<String>,
    /// Attach to a running tree instead of a held child.
    pub attach: bool,
}

/// Binds a new top-level task. Operators only (checked by the caller).
pub fn start(cx: Ctl<'_>, host: &Host, peer: u32, r: StartReq) -> Reply {
    let what = if r.attach { "attach" } else { "start" };
    if r.attach {
        if !Path::new(&format!("/proc/{}", r.pid)).exists() {
            return Reply::err(format!("{what}: no process {}", r.pid));
        }
    } else if ctl::ppid_of(r.pid) != Some(peer) {
        return Reply::err(format!("{what}: pid {} is not the caller's child", r.pid));
    }
    if r.pid == std::process::id() || cx.sensors.task_of(r.pid).is_some() {
        return Reply::err(format!("{what}: pid {} is agentmon or already in a task", r.pid));
    }
    let now = cx.p.enr.clock().now_wall();
    let mut task = match crate::task::parse(&r.manifest, Path::new(&r.file), now) {
        Ok(t) => t,
        Err(e) => return Reply::err(e.to_string()),
    };
    task.enforce |= r.enforce;
    if cx.p.judge.task(&task.id).is_some() {
        return Reply::err(format!("{what}: task {} is running here, or ended with processes left", task.id));
    }
    // An observed task is not sandboxed: what it may write is judged, not limited.
    if let Some(p) = host.protected.iter().find(|p| task.enforce && task.write.reaches(p)) {
        return Reply::err(format!(
            "{}: scope.write covers {}, which agentmon writes or trusts (the agent could edit its own record)",
            r.file,
            p.display()
        ));
    }
    if r.attach && task.enforce {
        // Nothing can be added to a running process's sandbox (Landlock, seccomp).
        return Reply::err(format!(
            "{}: attach binds a running tree in observe mode (kill and freeze work, the launch-time \
             sandbox cannot be added); drop enforcement or start the task with agentmon exec",
            r.file
        ));
    }
    if task.enforce && !host.layers.cgroups {
        return Reply::err("enforce mode needs per-task cgroups, which this host does not offer");
    }
    match bind(cx, host, task, r, None) {
        Ok(id) => Reply { ok: true, task: Some(id), ..Default::default() },
        Err(e) => Reply::err(e.to_string()),
    }
}

/// Resumes the tasks a previous daemon recorded whose processes still run: they are
/// tracked again, in their cgroup (with its network guard if enforced). What they did
/// while no daemon ran was not seen; the `task_start` says `resumed`.
pub fn resume(mut cx: Ctl<'_>, host: &Host) -> Vec<String> {
    let mut done = Vec::new();
    let Ok(dir) = std::fs::read_dir(&host.state_dir) else { return done };
    for e in dir.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        // Only records agentmon wrote: root's, not writable by others.
        use std::os::unix::fs::MetadataExt;
        let trusted = std::fs::symlink_metadata(&path).is_ok_and(|m| {
            m.is_file() && m.uid() == nix::unistd::geteuid().as_raw() && m.mode() & 0o022 == 0
        });
        let saved: Option<Saved> = trusted
            .then(|| std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()))
            .flatten();
        let Some(s) = saved else {
            tracing::warn!("{}: unreadable or untrusted task record, removed", path.display());
            let _ = std::fs::remove_file(&path);
            continue;
        };
        let ours = crate::enforce::cgroup::v2_root().map(|r| r.join("agentmon"));
        if s.ended || s.cgroup.as_ref().is_some_and(|c| ours.as_ref().is_none_or(|o| !c.starts_with(o))) {
            host.drop_saved(&s.id);
            continue;
        }
        let cg = s.cgroup.clone().and_then(|p| crate::enforce::cgroup::TaskCgroup::adopt(p).ok());
        let pids = cg.as_ref().map(|c| c.pids()).unwrap_or_default();
        if pids.is_empty() {
            // Ended while no daemon ran (its cgroup goes with `cg`).
            host.drop_saved(&s.id);
            continue;
        }
        let now = cx.p.enr.clock().now_wall();
        let mut task = match crate::task::parse(&s.manifest, Path::new(&s.file), now) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("resuming task {}: {e}", s.id);
                continue;
            }
        };
        task.enforce |= s.enforce;
        task.expires = s.expires;
        let r = StartReq {
            manifest: s.manifest,
            file: s.file,
            pid: s.root,
            enforce: s.enforce,
            events: s.events,
            attach: true,
        };
        let root = r.pid;
        match bind(cx.reborrow(), host, task, r, Some((cg.expect("pids came from it"), pids))) {
            Ok(id) => {
                // Its root exited while no daemon ran: the end is recorded now.
                if !Path::new(&format!("/proc/{root}")).exists()
                    && let Some(ev) =
                        cx.p.task_ended(&Arc::from(id.as_str()), "its root exited while no daemon ran")
                    && let Err(e) = cx.sink.send(&ev)
                {
                    tracing::error!("recording the end of task {id}: {e}");
                }
                done.push(id)
            }
            Err(e) => tracing::error!("resuming task {}: {e}", s.id),
        }
    }
    done
}

fn bind(
    cx: Ctl<'_>,
    host: &Host,
    task: Task,
    r: StartReq,
    resumed: Option<(crate::enforce::cgroup::TaskCgroup, Vec<u32>)>,
) -> Result<String, RunError> {
    let resuming = resumed.is_some();
    let c = *cx.next;
    *cx.next += 1;
    let id: Arc<str> = Arc::from(task.id.as_str());
    // A per-task events file (the `--events` of the exec that registered).
    if let Some(path) = &r.events {
        let lines = JsonLines::file(Path::new(path))?;
        cx.sink.push_keyed(id.clone(), Box::new(TaskFilter::new(id.clone(), lines)));
    }
    let (adopted, mut pids) = match resumed {
        Some((cg, pids)) => (Some(cg), pids),
        None if r.attach => (None, Vec::new()),
        None => (None, vec![r.pid]),
    };
    if r.attach && adopted.is_none() {
        // A process forked between a scan and the tracking of its parent is not
        // inherited: scan until a scan finds nothing new. Processes of other tasks
        // stay theirs.
        for _ in 0..8 {
            let new: Vec<u32> = tree(r.pid)
                .into_iter()
                .filter(|p| !pids.contains(p) && cx.sensors.task_of(*p).is_none())
                .collect();
            if new.is_empty() {
                break;
            }
            for &pid in &new {
                cx.sensors.track(pid, c)?;
            }
            pids.extend(new);
        }
    } else {
        for &pid in &pids {
            cx.sensors.track(pid, c)?;
        }
    }
    // A process found in /proc that exited before it was tracked leaves an entry no
    // exit will remove (and that a reused pid would inherit).
    for pid in pids.clone() {
        if !Path::new(&format!("/proc/{pid}")).exists() && pid != r.pid {
            cx.sensors.untrack(pid)?;
            pids.retain(|p| *p != pid);
        }
    }
    let cgroup = match adopted {
        Some(cg) => {
            if task.enforce {
                let allow =
                    crate::enforce::cgroup::allow_entries(c, &task.connect).map_err(RunError::Daemon)?;
                cx.sensors.guard(&cg.open()?, cg.id, c, &allow)?;
            }
            Some(cg)
        }
        None => {
            let cg = task_cgroup(cx.sensors, &task, r.pid, &host.layers, c)?;
            if let Some(cg) = &cg {
                for &pid in pids.iter().skip(1) {
                    if let Err(e) = cg.add(pid) {
                        tracing::warn!("task {id}: pid {pid} not moved into {}: {e}", cg.path.display());
                    }
                }
            }
            cg
        }
    };
    let saved = Saved {
        id: task.id.clone(),
        manifest: r.manifest.clone(),
        file: r.file.clone(),
        root: r.pid,
        enforce: task.enforce,
        events: r.events.clone(),
        cgroup: cgroup.as_ref().map(|c| c.path.clone()),
        expires: task.expires,
        ended: false,
    };
    let p = cx.p;
    p.enr.bind_task(c, id.clone());
    for &pid in &pids {
        p.enr.procs.seed(pid, proc_of(pid, c));
    }
    p.ended.remove(&id);
    p.contain.register(id.clone(), c, cgroup, task.enforce);
    p.judge.bind(Bound::new(Arc::new(task), r.pid));
    if let Some(mut ev) = p.task_started(&id) {
        if resuming {
            ev.detail.insert("resumed".into(), serde_json::json!(true));
        }
        cx.sink.send(&ev)?;
    }
    if let Err(e) = host.save(&saved) {
        tracing::warn!(
            "recording task {id} in {}: {e} (a restart will not resume it)",
            host.state_dir.display()
        );
    }
    Ok(id.to_string())
}

/// `pid` and its descendants now (children first found through /proc).
fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let procs: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| Some((p, ctl::ppid_of(p)?)))
        .collect();
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        all.extend(procs.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    all
}

/// What /proc says of a process bound after it started.
fn proc_of(pid: u32, task: u32) -> Proc {
    let read = |f: &str| std::fs::read(format!("/proc/{pid}/{f}")).ok();
    Proc {
        ppid: ctl::ppid_of(pid),
        comm: read("comm").map(|c| String::from_utf8_lossy(&c).trim_end().to_string()).unwrap_or_default(),
        exe: std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| Arc::from(p.to_string_lossy().as_ref())),
        argv: read("cmdline").map(|c| {
            c.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        }),
        task,
        ..Default::default()
    }
}
