//! Binding top-level tasks: the command `agentmon exec` launched (held until it is
//! tracked), a daemon's task registered by an exec (Start), a running tree bound by
//! an operator or a selector (Attach), and a task a restarted daemon resumes.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    RunError,
    engine::Engine,
    enroll::{attach_tree, enroll_in, guard_entries, proc_of, task_cgroup},
    setup::{Saved, Setup},
    tasklog,
};
use crate::{
    ctl::{self, Reply},
    enforce::{self, cgroup::TaskCgroup},
    event::Timestamp,
    judge::Bound,
    policy::RuleSet,
    realpath::Wait,
    sink::TaskFilter,
    task::{Task, scope::Resolve},
};

/// How long a task's start may wait for its host names' addresses.
pub(super) const START_LOOKUPS: std::time::Duration = std::time::Duration::from_secs(3);
/// How long a task's start (or delegation) may wait for its paths to be resolved:
/// whoever starts one may name a directory on a file system that never answers.
pub(super) const START_PATHS: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Clone)]
pub struct StartReq {
    pub manifest: String,
    pub file: String,
    pub pid: u32,
    pub enforce: bool,
    pub events: Option<String>,
    /// Attach to a running tree instead of a held child.
    pub attach: bool,
    /// The task's grant (the grant file's text), where grants are required.
    pub grant: Option<String>,
    /// The files the command itself executes (granted to an enforced task on the
    /// BPF LSM tier).
    pub launch: Vec<PathBuf>,
    /// The tier the command was confined for, when another process did it (a
    /// registered exec): an enforced task runs only if this agentmon enforces the same.
    pub lsm: Option<bool>,
    /// The registering exec's copies of the task's gate and mailbox.
    pub keeper: Option<super::keeper::Keeper>,
    /// Descriptors from agentmon's caller that the enforced command was not given
    /// (launch::inherited): said in its `task_start`.
    pub closed_fds: Vec<String>,
    /// The uid of whoever asked: its share of the lookups agentmon waits for
    /// (`realpath`), so that one user's file system that does not answer cannot
    /// take every start's. A resumed task's is its own (`Wait::task`).
    pub asker: u32,
    /// The cgroup prepared for it (`runner::prepared`), by cookie, and who asked for
    /// it (only that caller's start takes it).
    pub prepared: Option<(u32, super::prepared::Asker)>,
}

/// How the task's processes came to be bound.
pub enum Binding {
    /// A held child, launched for the task (by this agentmon or an exec).
    Launched,
    /// A tree that already runs.
    Attached,
    /// A task a previous daemon recorded: its cgroup and the processes in it, how
    /// long no daemon watched it, its cookie when the kernel kept tracking it
    /// meanwhile (the maps were taken over), and whether its end was recorded (then
    /// it is bound, with no new `task_start`, for the processes it left behind).
    /// `log`: which file its events file was.
    Resumed {
        cgroup: TaskCgroup,
        log: Option<super::tasklog::FileId>,
        pids: Vec<u32>,
        gap: Option<(Timestamp, Timestamp)>,
        kept: Option<u32>,
        ended: bool,
    },
}

/// Checks a request for a new top-level task (operators only, checked by the caller)
/// and binds it.
pub fn start(e: &mut Engine, peer: u32, r: StartReq) -> Reply {
    let what = if r.attach { "attach" } else { "start" };
    if e.setup.state.is_none() {
        return Reply::err(
            "this agentmon watches the one task it launched (agentmon exec); tasks are started and \
             attached by agentmon daemon",
        );
    }
    if r.attach {
        if !Path::new(&format!("/proc/{}", r.pid)).exists() {
            return Reply::err(format!("{what}: no process {}", r.pid));
        }
    } else if ctl::ppid_of(r.pid) != Some(peer) {
        return Reply::err(format!("{what}: pid {} is not the caller's child", r.pid));
    }
    // Untracked in a task's cgroup (past max_tracked, escaped): still the task's; a
    // task of its own would take it out of that cgroup. (One made in the cgroup its
    // caller prepared for this start is in no task yet.)
    let made_in = r.prepared.is_some_and(|(c, who)| who.0 == peer && e.reserved.holds(c, who, r.pid));
    if r.pid == std::process::id()
        || e.sensors.task_of(r.pid).is_some()
        || (!made_in && super::callers::in_task_cgroup(r.pid))
    {
        return Reply::err(format!("{what}: pid {} is agentmon or already in a task", r.pid));
    }
    let now = e.p.enr.clock().now_wall();
    // The paths may be an agent's choice (a manifest it wrote), on a file system a
    // process serves: the loop waits for them only so long.
    let paths = Wait::new(r.asker, START_PATHS);
    let mut task =
        match crate::task::parse_unresolved(&r.manifest, Path::new(&r.file), now, Resolve::Within(paths)) {
            Ok(t) => t,
            Err(err) if err.stalled => return stalled(e, peer, &r.file, err.to_string()),
            Err(err) => return Reply::err(err.to_string()),
        };
    let log = match r.events.as_deref().map(|l| crate::realpath::canonical_file(Path::new(l), Some(&paths))) {
        None => None,
        Some(Ok(l)) => Some(l),
        Some(Err(err)) => {
            let why = format!("events file {}: {err}", r.events.as_deref().unwrap_or_default());
            if !err.blamed() {
                return Reply::err(format!("{}: {why}", r.file));
            }
            return stalled(e, peer, &r.file, why);
        }
    };
    task.enforce |= r.enforce;
    // Who gave the task its authority: where grant keys are set, only a grant by one
    // of them does (agentmon's own selectors start tasks of its configuration).
    if peer != std::process::id() {
        match crate::task::grant::check(
            &r.manifest,
            r.grant.as_deref(),
            e.setup.grant_keys.as_deref(),
            e.setup.require_signed,
            now,
            // Its links' paths compared as written when their file system keeps
            // agentmon waiting (the task's own were resolved above).
            Resolve::Lenient(paths),
        ) {
            Ok(g) => {
                let enforced = task.enforce;
                task.take_grant(g);
                // Its chain enforces it (an enforced parent on another host): the
                // launcher, which confines the command, must have known.
                if task.enforce && !enforced && !r.attach {
                    return Reply::err(format!(
                        "{}: task {}: its grant's chain enforces it (an enforced parent task): start it \
                         with --enforce",
                        r.file, task.id
                    ));
                }
            }
            Err(why) => {
                let why = format!("{}: task {}: {why}", r.file, task.id);
                let cookie = e.sensors.task_of(peer);
                e.tamper(peer, cookie, "starting a task without a valid grant", &why, true);
                return Reply::err(why);
            }
        }
    }
    if e.p.judge.task(&task.id).is_some() {
        return Reply::err(format!("{what}: task {} is running here, or ended with processes left", task.id));
    }
    // Looked up once the caller may start it, with a bound (the loop waits): a name
    // that does not answer in time allows nothing until a refresh finds it
    // (runner/hosts.rs).
    let slow = crate::task::scope::resolve_hosts_within(&mut task.connect, START_LOOKUPS);
    if !slow.is_empty() {
        tracing::warn!("{}: task {}: host names not answered in time: {}", r.file, task.id, slow.join(", "));
    }
    if e.setup.state.as_ref().is_some_and(|st| st.has(&task.id)) {
        // Its record would be overwritten: the kernel's hold on its processes with it.
        return Reply::err(format!("{what}: task {} has a record here that was not resumed", task.id));
    }
    // A launched task's root is held until the answer (refused, it is killed): one a
    // restart would lose is refused before anything is taken on. An attached tree
    // runs anyway; it is better watched unrecorded (said, at bind) than not at all.
    if !r.attach
        && let Some(Err(why)) = e.setup.state.as_ref().map(|st| st.can_record(&task.id))
    {
        // In every output too: a full state directory refuses every new task here.
        let cookie = e.sensors.task_of(peer);
        e.tamper(peer, cookie, "task record", &why, true);
        return Reply::err(format!("{}: {why}", r.file));
    }
    if let Err(err) = admissible(&task, &e.setup, e.p.judge.rules(), log.as_deref()) {
        return Reply::err(err.to_string());
    }
    if let Err(why) = apart(e, &task, log.as_deref()) {
        return Reply::err(format!("{}: task {}: {why}", r.file, task.id));
    }
    if task.enforce
        && let Some(planned) = r.lsm
        && planned != e.setup.layers.lsm
    {
        let tier = |lsm: bool| if lsm { "the BPF LSM tier" } else { "Landlock" };
        return Reply::err(format!(
            "{}: task {}: its command was confined for {}, but this agentmon enforces with {} ({}): run both \
             with the same {}",
            r.file,
            task.id,
            tier(planned),
            tier(e.setup.layers.lsm),
            e.setup.layers.tier(),
            enforce::TIER_ENV
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
    let how = if r.attach { Binding::Attached } else { Binding::Launched };
    match bind(e, task, r, how) {
        Ok(id) => Reply { ok: true, task: Some(id), ..Default::default() },
        Err(err) => Reply::err(err.to_string()),
    }
}

/// A start refused because a file system it named kept agentmon waiting: said in
/// every output (someone made the loop wait, on purpose or not).
fn stalled(e: &mut Engine, peer: u32, file: &str, why: String) -> Reply {
    let why = format!("{file}: {why}");
    let cookie = e.sensors.task_of(peer);
    e.tamper(peer, cookie, "stalling agentmon", &why, true);
    Reply::err(why)
}

/// Keeps tasks' records apart: no running enforced task may write where a new
/// task's events file is, and a new enforced task may write where no running
/// task's is (the agent could rewrite another task's record; on the Landlock tier
/// nothing else keeps it from that file). By what each task's mode grants; the
/// running tasks' files as they were opened (no symlink on their paths). `log`:
/// the new task's events file, resolved.
fn apart(e: &Engine, task: &Task, log: Option<&Path>) -> Result<(), String> {
    if let Some(l) = log {
        for id in e.p.task_ids() {
            let Some(b) = e.p.judge.task(&id).filter(|b| b.task.enforce) else { continue };
            if let Some(clause) = b.task.writes_reach(l) {
                return Err(format!(
                    "its events file {} is within the {clause} of running enforced task {id}, which could \
                     rewrite it",
                    l.display()
                ));
            }
        }
    }
    if !task.enforce {
        return Ok(());
    }
    for (id, l) in &e.p.logs {
        if let Some(clause) = task.writes_reach(l) {
            return Err(format!(
                "its {clause} holds {}, the events file of running task {id}, which the agent could rewrite",
                l.display()
            ));
        }
    }
    Ok(())
}

/// Refuses an enforced task this agentmon cannot hold to its scope and rules: one
/// whose write or delete scope reaches agentmon's own files or the kernel
/// interfaces that would let it escape, that needs a layer this host lacks, or
/// that a `deny` rule could not be carried out for before the effect
/// (policy/inline.rs). `log`: the task's own events file, agentmon's like the rest.
pub fn admissible(
    task: &Task,
    setup: &Setup,
    rules: &RuleSet,
    log: Option<&Path>,
) -> Result<(), enforce::EnforceError> {
    if !task.enforce {
        // An observed task is not sandboxed: what it may write is judged, not limited.
        return Ok(());
    }
    if let Err(why) = crate::policy::inline::deny_rules(rules.rules.iter(), task) {
        return Err(enforce::EnforceError::Refused { task: task.id.clone(), clause: "rules", why });
    }
    if let Some(why) = task.refused_expiry() {
        return Err(enforce::EnforceError::Refused {
            task: task.id.clone(),
            clause: "on_expiry",
            why: why.into(),
        });
    }
    let refuse = |clause: &'static str, why: String| enforce::EnforceError::Refused {
        task: task.id.clone(),
        clause,
        why,
    };
    if !setup.layers.cgroups {
        return Err(refuse(
            "enforcement",
            "enforce mode needs per-task cgroups (rule actions kill and freeze act on the task's cgroup), \
             which this host does not offer"
                .into(),
        ));
    }
    // By what the task's mode grants: a propose_dir is written to as a write scope is.
    for (clause, dir) in task.write_roots() {
        if let Some((at, fstype)) = enforce::mounts::kernel_fs_reached(&dir) {
            return Err(refuse(
                clause,
                format!(
                    "{} reaches {} ({fstype}), a kernel interface through which the task could leave its \
                     cgroup, unload agentmon's programs or change other processes",
                    dir.display(),
                    at.display()
                ),
            ));
        }
    }
    for p in setup.protected.iter().map(PathBuf::as_path).chain(log) {
        if let Some(clause) = task.writes_reach(p) {
            return Err(refuse(
                clause,
                format!(
                    "covers {}, which agentmon writes or trusts (the agent could edit its own record, leave \
                     its cgroup or blind the sensors)",
                    p.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Binds `task` to the processes of `r`: tracking in the kernel, its cgroup (with the
/// network guard if enforced), its own events file, the judge and containment; then
/// records `task_start` and (in a daemon) the task's state.
pub fn bind(e: &mut Engine, task: Task, r: StartReq, how: Binding) -> Result<String, RunError> {
    // A launched root's prepared cgroup, taken where its cgroup is made (a start
    // refused before leaves it to expire once its launcher ends the child).
    let prepared = match &how {
        Binding::Launched => r.prepared.filter(|(c, who)| e.reserved.has(*c, *who)),
        _ => None,
    };
    let c = match (&how, prepared) {
        (Binding::Resumed { kept: Some(c), .. }, _) => *c,
        (_, Some((c, _))) => c,
        _ => e.cookie(),
    };
    let id: Arc<str> = Arc::from(task.id.as_str());
    // A per-task events file (the `--events` of the exec that registered). A new
    // task's that cannot be opened refuses the task; a resumed task's is reported
    // once the task is bound (its processes are never let go for it).
    let resumed = matches!(how, Binding::Resumed { .. });
    let how_log = match &how {
        Binding::Resumed { log, .. } => tasklog::Open::Again(*log),
        _ => tasklog::Open::New,
    };
    // What could not be given back to a resumed task: reported once it is bound.
    let mut gaps: Vec<(&str, String)> = Vec::new();
    let mut log = None;
    if let Some(path) = &r.events {
        match tasklog::open_within(Path::new(path), how_log, &Wait::new(r.asker, START_PATHS)) {
            Ok((lines, file)) => {
                e.out.push_keyed(id.clone(), Box::new(TaskFilter::new(id.clone(), lines)));
                log = Some(file);
            }
            Err(err) if how_log != tasklog::Open::New => gaps.push((
                "events file",
                format!("{err}; the task's events go to agentmon's other outputs only"),
            )),
            Err(err) => {
                if err.stalled() {
                    let cookie = e.sensors.task_of(r.pid);
                    e.tamper(r.pid, cookie, "stalling agentmon", &format!("{}: {err}", r.file), true);
                }
                return Err(err.into());
            }
        }
    }
    if task.enforce && e.setup.layers.lsm {
        // Before a process of the task can run under the cookie; its events file
        // is agentmon's (the scope was checked not to reach it by name). The hooks
        // first: file_open names the file.
        e.sensors.arm_lsm()?;
        if let (Some(path), Some(maps)) =
            (r.events.as_ref().filter(|_| log.is_some()), e.sensors.lsm.as_mut())
        {
            // A new task is refused without it; a resumed task's processes must stay bound.
            let protected = maps
                .ident_within(
                    Path::new(path),
                    true,
                    &crate::worker::RESOLVERS,
                    &Wait::new(r.asker, START_PATHS),
                )
                .map_err(|e| e.to_string())
                .and_then(|k| maps.protect_for(c, k).map_err(|e| e.to_string()));
            match protected {
                Ok(()) => {}
                Err(err) if resumed => {
                    gaps.push(("events file", format!("{path}: not protected by inode: {err}")))
                }
                Err(err) => return Err(RunError::Output(format!("{path}: cannot be protected: {err}"))),
            }
        }
        let skipped = enroll_in(&mut e.sensors, &e.setup, c, &task, &r.launch, (0, c), resumed)?;
        gaps.extend(skipped.into_iter().map(|why| ("scope paths", why)));
    }
    let observed = matches!(how, Binding::Resumed { kept: Some(_), .. });
    let (adopted, mut pids, gap, ended) = match how {
        Binding::Resumed { cgroup, pids, gap, ended, .. } => (Some(cgroup), pids, gap, ended),
        Binding::Attached => (None, attach_tree(&mut e.sensors, r.pid, c)?, None, false),
        Binding::Launched => {
            e.sensors.track(r.pid, c)?;
            (None, vec![r.pid], None, false)
        }
    };
    if adopted.is_some() {
        for &pid in &pids {
            // Kept tracking (its flags, a kill mark) is left as the kernel has it.
            match e.sensors.task_of(pid) {
                Some(t) if t == c => {}
                // Gone meanwhile (a sub-task's short-lived process): nothing to retag.
                Some(_) => {
                    let _ = e.sensors.retag(pid, c);
                }
                None => e.sensors.track(pid, c)?,
            }
        }
    }
    // A process found in /proc that exited before it was tracked leaves an entry no
    // exit will remove (and that a reused pid would inherit).
    for pid in pids.clone() {
        if !Path::new(&format!("/proc/{pid}")).exists() && pid != r.pid {
            e.sensors.untrack(pid)?;
            pids.retain(|p| *p != pid);
        }
    }
    // And whether its root was made there (not moved there: runner/prepared.rs).
    let (cgroup, born_in) = match adopted {
        Some(cg) => {
            if task.enforce {
                let allow = guard_entries(&task, c, e.p.judge.rules())?;
                e.sensors.guard(&cg.open()?, cg.id, c, &allow)?;
            }
            (Some(cg), false)
        }
        None => {
            let allow = if task.enforce { guard_entries(&task, c, e.p.judge.rules())? } else { Vec::new() };
            let made = prepared.and_then(|(c, who)| e.reserved.take(c, who));
            let (cg, born_in) = match task_cgroup(&mut e.sensors, &task, r.pid, &e.setup, c, &allow, made)? {
                Some((cg, made_in)) => (Some(cg), made_in),
                None => (None, false),
            };
            if let Some(cg) = &cg {
                for &pid in pids.iter().skip(1) {
                    if let Err(err) = cg.add(pid) {
                        tracing::warn!("task {id}: pid {pid} not moved into {}: {err}", cg.path.display());
                    }
                }
            }
            (cg, born_in)
        }
    };
    let saved = Saved {
        id: task.id.clone(),
        manifest: r.manifest.clone(),
        file: r.file.clone(),
        root: r.pid,
        enforce: task.enforce,
        // One that could not be opened again is not tried again.
        events: r.events.clone().filter(|_| log.is_some()),
        events_file: log,
        scope: Some(super::resume::Paths::of(&task)),
        cgroup: cgroup.as_ref().map(|c| c.path.clone()),
        origin_cgroup: cgroup.as_ref().and_then(|c| c.origin.clone()),
        expires: task.expires,
        ended,
        launch: r.launch.iter().map(|p| p.display().to_string()).collect(),
        cookie: Some(c),
        parent: None,
        keeper: r.keeper.clone(),
        granted: task.granted.clone(),
    };
    let cgroup_made = cgroup.is_some();
    let tier = task.enforce.then_some(if e.setup.layers.lsm { "bpf-lsm" } else { "landlock" });
    let p = &mut e.p;
    p.enr.bind_task(c, id.clone());
    if let Some((cg, origin)) = cgroup.as_ref().and_then(|cg| Some((cg, cg.origin.as_deref()?))) {
        p.enr.cgroups.origin(cg.id, origin);
    }
    for &pid in &pids {
        p.enr.procs.seed(pid, proc_of(pid, c));
    }
    if ended {
        p.ended.insert(id.clone());
    } else {
        p.ended.remove(&id);
    }
    p.contain.register(id.clone(), c, cgroup, task.enforce);
    p.judge.bind(Bound::new(Arc::new(task), r.pid));
    if let Some(path) = r.events.as_ref().filter(|_| log.is_some()) {
        p.logs.insert(id.clone(), path.into());
    }
    if !ended && let Some(mut ev) = p.task_started(&id) {
        if resumed {
            mark_resumed(&mut ev, gap, observed);
        }
        if let Some(tier) = tier {
            // Which tier holds it to its scope: what it could and could not do follows.
            ev.detail.insert("tier".into(), serde_json::json!(tier));
        }
        // Which programs saw its calls (the same events either way).
        ev.detail.insert("observe".into(), serde_json::json!(e.sensors.observe.tier.as_str()));
        // Whether its io_uring requests are recorded with their paths (judged), or
        // by opcode only.
        ev.detail.insert(
            "io_uring".into(),
            serde_json::json!(e.sensors.iou_paths.as_ref().map_or("opcode", |()| "paths")),
        );
        if !r.closed_fds.is_empty() {
            ev.detail.insert("closed_fds".into(), serde_json::json!(r.closed_fds));
        }
        if !resumed && !r.attach && cgroup_made {
            // Made there, it started without the wait a move costs (runner/prepared.rs).
            ev.detail.insert("root_made_in_cgroup".into(), serde_json::json!(born_in));
        }
        e.record(&ev);
    }
    // (A launched task was refused before anything if it could not be recorded;
    // this is one attached, or resumed, or a disk filled meanwhile: said, as a gap.)
    if let Some(Err(why)) = e.setup.state.as_ref().map(|st| st.record(&saved)) {
        gaps.push(("task record", why));
    }
    for (what, why) in gaps {
        e.tamper(r.pid, Some(c), what, &why, false);
    }
    Ok(id.to_string())
}

/// A resumed task's `task_start`: `resumed`, and the gap in which no daemon ran
/// (`observed`: the kernel kept tracking the task then).
pub fn mark_resumed(ev: &mut crate::event::Event, gap: Option<(Timestamp, Timestamp)>, observed: bool) {
    ev.detail.insert("resumed".into(), serde_json::json!(true));
    if let Some((from, to)) = gap {
        ev.detail.insert(
            "gap".into(),
            serde_json::json!({
                "from": from,
                "to": to,
                "seconds": ((to.0 - from.0).max(0) / 1_000_000_000) as u64,
                "observed": observed,
            }),
        );
        ev.reason = Some(if observed {
            format!(
                "resumed by a restarted daemon: the kernel kept tracking and enforcing the task from {from} \
                 to {to}; what it did then is reported from the ring (what the ring could not hold, in a loss \
                 record), except what a killed daemon had read after {from} and not yet written"
            )
        } else {
            format!(
                "resumed by a restarted daemon: what the task did between {from} and {to} was not observed"
            )
        });
    }
}
