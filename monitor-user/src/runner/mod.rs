//! `agentmon exec`: load the sensors, launch the command as a tracked task, judge
//! and stream its tree's events until it exits, then return its exit status.
//!
//! Inside a task already watched by another agentmon (`AGENTMON_CTL` set), `exec
//! --task` instead asks that agentmon to bind the command to the sub-task
//! (delegation, see [`crate::ctl`]) and only launches and waits.

mod control;
mod daemon;
mod outputs;
mod pipeline;
pub mod select;
mod tasks;

pub use daemon::{DaemonOptions, daemon};

pub use outputs::{AuditOptions, Outputs};

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use nix::{sys::signal::Signal, sys::wait::WaitStatus, unistd::Pid};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use self::pipeline::Pipeline;
use crate::{
    contain::Containment,
    ctl::{self, CTL_ENV, TASK_ENV},
    enforce::{self, Confinement, Layers, Protected, cgroup::TaskCgroup},
    enrich::Enricher,
    gate::Gate,
    judge::{Bound, Judge, RulesWatch},
    kernel::loader::{POLL_INTERVAL, SensorConfig, Sensors},
    launch::{self, LaunchError},
    policy::{RuleError, RuleSet, shipped},
    proctable::Proc,
    sensitive::SensitiveSet,
    sink::{Fanout, JsonLines, Sink},
    task::Task,
};

/// Task cookie of the task an `exec` runs; delegated sub-tasks get the next ones.
pub const EXEC_TASK: u32 = 1;

/// Where the rules come from.
#[derive(Debug, Clone)]
pub enum RulesChoice {
    /// The baseline built into the binary (rules/ of the source tree).
    Shipped,
    /// A directory, reloaded when it changes.
    Dir(PathBuf),
    /// No rules: only the task's scope is judged (if there is a task).
    None,
}

#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub cmd: Vec<String>,
    pub events: Option<PathBuf>,
    pub format: crate::sink::Format,
    pub sensitive: SensitiveSet,
    pub ringbuf_bytes: u32,
    pub quiet: bool,
    pub task: Option<(Task, String)>,
    pub rules: RulesChoice,
    /// How long a held call waits for an approver before it is denied.
    pub approval_timeout: Duration,
    /// The audit chain and NATS, when configured.
    pub outputs: Outputs,
    /// A running daemon to register the task with (instead of running embedded).
    pub daemon: Option<PathBuf>,
}

/// Plans the confinement of an enforced task (None when observing), or refuses it.
fn plan_confinement(opts: &ExecOptions, layers: &Layers) -> Result<Option<Confinement>, RunError> {
    let Some((task, _)) = opts.task.as_ref().filter(|(t, _)| t.enforce) else { return Ok(None) };
    let program = launch::resolve_program(opts.cmd.first().map(String::as_str).unwrap_or(""))?;
    let mut protected = Protected::default();
    protected.paths.extend(opts.events.iter().cloned());
    protected.paths.push(task.source.clone());
    if let RulesChoice::Dir(d) = &opts.rules {
        protected.paths.push(d.clone());
    }
    protected.paths.extend(std::env::current_exe().ok());
    protected.paths.extend(opts.outputs.protected());
    let protected = Protected {
        paths: protected
            .paths
            .iter()
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
            .collect(),
    };
    Ok(Some(enforce::confine(task, layers, &enforce::launch_files(&program), &protected)?))
}

fn report_layers(opts: &ExecOptions, layers: &Layers) {
    if opts.quiet {
        return;
    }
    eprintln!("agentmon: enforcement layers on this host:");
    for l in layers.describe() {
        eprintln!("  {l}");
    }
    for o in opts.outputs.describe() {
        eprintln!("agentmon: output: {o}");
    }
    if let Some((t, _)) = &opts.task {
        let how =
            if t.enforce { "enforced by the active layers" } else { "observed and judged, not enforced" };
        eprintln!("agentmon: task {}: {how}", t.id);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Load(#[from] crate::kernel::loader::LoadError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("invalid rules:\n{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Rules(Vec<RuleError>),
    #[error("delegation refused: {0}")]
    Delegation(String),
    #[error(transparent)]
    Enforce(#[from] enforce::EnforceError),
    #[error("{0}")]
    Output(String),
    #[error("the daemon refused the task: {0}")]
    Daemon(String),
}

impl RunError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Launch(e) => e.exit_code(),
            _ => 125,
        }
    }
}

fn exit_code(st: WaitStatus) -> i32 {
    match st {
        WaitStatus::Exited(_, c) => c,
        WaitStatus::Signaled(_, s, _) => 128 + s as i32,
        _ => 125,
    }
}

fn load_rules(choice: &RulesChoice) -> Result<Option<RuleSet>, RunError> {
    match choice {
        RulesChoice::Shipped => shipped::rules().map(Some).map_err(RunError::Rules),
        RulesChoice::Dir(d) => RuleSet::load_dir(d).map(Some).map_err(RunError::Rules),
        RulesChoice::None => Ok(None),
    }
}

pub async fn exec(opts: ExecOptions) -> Result<i32, RunError> {
    if let (Some(_), Some(sock)) = (&opts.task, std::env::var_os(CTL_ENV)) {
        return delegated(opts, PathBuf::from(sock)).await;
    }
    if let (Some(_), Some(sock)) = (&opts.task, opts.daemon.clone()) {
        return registered(opts, sock).await;
    }
    let rules = load_rules(&opts.rules)?;
    let layers = Layers::probe();
    report_layers(&opts, &layers);
    let confinement = plan_confinement(&opts, &layers)?;
    if let Some((t, _)) = opts.task.as_ref().filter(|(t, _)| t.enforce && !layers.cgroups) {
        return Err(enforce::EnforceError::Refused {
            task: t.id.clone(),
            clause: "enforcement",
            why: "enforce mode needs per-task cgroups (rule actions kill and freeze act on the task's cgroup), \
                  which this host does not offer"
                .into(),
        }
        .into());
    }
    let (mut sink, _nats) =
        opts.outputs.open(JsonLines::open(opts.events.as_deref())?.with_format(opts.format))?;
    let cfg = SensorConfig {
        ringbuf_bytes: opts.ringbuf_bytes,
        sensitive: opts.sensitive.clone(),
        ..SensorConfig::default()
    };
    let mut sensors = Sensors::load(&cfg)?;
    let server = ctl::Server::bind()?;
    if let (Some(n), Some(keys)) = (&opts.outputs.nats, &opts.outputs.ctl_keys) {
        crate::nats::control::start(n.args.clone(), n.host.clone(), keys.clone(), server.path.clone())?;
    }
    if !opts.quiet {
        eprintln!(
            "agentmon: {} kernel programs attached in {} ms; task {}; {} rules; events to {}",
            sensors.attached.len(),
            sensors.load_ms,
            opts.task
                .as_ref()
                .map(|(t, _)| format!("{} ({})", t.id, t.mode.as_str()))
                .unwrap_or("none".into()),
            rules.as_ref().map(RuleSet::len).unwrap_or(0),
            opts.events.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "stdout".into()),
        );
    }

    let mut env: Vec<(String, String)> = vec![(CTL_ENV.into(), server.path.display().to_string())];
    if let Some((t, _)) = &opts.task {
        env.push((TASK_ENV.into(), t.id.clone()));
    }
    let mut held = launch::spawn_held(&opts.cmd, &env, confinement)?;
    let pid = held.pid;
    let gate_chan = held.take_gate();
    let root = pid.as_raw() as u32;
    if let Err(e) = sensors.track(root, EXEC_TASK) {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
        return Err(e.into());
    }
    // The task gets its own cgroup (containment), and an enforced one the network
    // guard, before it runs.
    let cgroup = match &opts.task {
        Some((t, _)) => match task_cgroup(&mut sensors, t, root, &layers, EXEC_TASK) {
            Ok(cg) => cg,
            Err(e) => {
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(pid, None);
                return Err(e);
            }
        },
        None => None,
    };
    let guarded = cgroup.is_some() && opts.task.as_ref().is_some_and(|(t, _)| t.enforce);
    let mut names = HashMap::new();
    let mut judge = Judge::new(rules);
    judge.set_own_socket(&server.path);
    let mut contain = Containment::default();
    if let Some((t, _)) = opts.task.clone() {
        let id = Arc::<str>::from(t.id.as_str());
        names.insert(EXEC_TASK, id.clone());
        contain.register(id, EXEC_TASK, cgroup, t.enforce);
        judge.bind(Bound::new(Arc::new(t), root));
    }
    let mut p = Pipeline {
        enr: Enricher::new(opts.sensitive.clone(), names),
        judge,
        contain,
        gates: Vec::new(),
        ended: Default::default(),
        steps: Default::default(),
    };
    p.enr.procs.seed(
        root,
        Proc {
            ppid: Some(std::process::id()),
            comm: "agentmon".into(),
            argv: Some(opts.cmd.clone()),
            task: EXEC_TASK,
            ..Default::default()
        },
    );
    let mut watch = match &opts.rules {
        RulesChoice::Dir(d) => Some(RulesWatch::new(d)),
        _ => None,
    };
    if let Some(ev) = opts.task.as_ref().and_then(|(t, _)| p.task_started(&t.id)) {
        sink.send(&ev)?;
    }
    let events = sensors.take_events().expect("ring buffer taken once");
    // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd owns the RingBuf.
    let mut ring = unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)?;

    if let Err(e) = held.release() {
        // The failed exec is still reported (exec with an error, then exit).
        p.drain(ring.get_mut(), &mut sink, &mut sensors)?;
        finish(&mut p, &mut sink, "the command could not be started")?;
        return Err(e.into());
    }
    if let Some(chan) = gate_chan {
        // The root sent its approval listener before it exec'd.
        let listener = crate::gate::filter::recv_listener(&chan, 5000)?;
        p.gates.push(Gate::new(listener, opts.approval_timeout)?);
    }
    let mut next_task = EXEC_TASK + 1;
    let mut ticks: u64 = 0;
    let mut waiter = tokio::task::spawn_blocking(move || nix::sys::wait::waitpid(pid, None));
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut requests = control::Reader::default();
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut sighup = tokio::signal::unix::signal(SignalKind::hangup())?;
    let status = loop {
        tokio::select! {
            r = ring.readable_mut() => {
                let mut guard = r?;
                p.drain(guard.get_inner_mut(), &mut sink, &mut sensors)?;
                guard.clear_ready();
            }
            // The kernel wakes us only when a batch is waiting (see wakeup_bytes).
            _ = poll.tick() => p.drain(ring.get_mut(), &mut sink, &mut sensors)?,
            _ = tick.tick() => {
                ticks += 1;
                // Host names in the allowlist: new addresses are added every minute.
                if ticks.is_multiple_of(120)
                    && guarded
                    && let Some((t, _)) = &opts.task
                {
                    refresh_hosts(&mut sensors, t);
                }
                sensors.settle_pending()?;
                if let Some(ev) = p.enr.loss(&sensors.counts()) {
                    sink.send(&ev)?;
                }
                if let Some(w) = watch.as_mut() {
                    reload(w, &mut p.judge);
                }
                sink.flush()?;
            }
            r = gate_ready(&p.gates) => {
                r?;
                // Events first: the caller's exec and forks name the process in the request.
                p.drain(ring.get_mut(), &mut sink, &mut sensors)?;
                p.held_calls(&sensors, &mut sink)?;
            }
            _ = gate_deadline(&p.gates) => p.expire_approvals(&mut sink)?,
            conn = server.listener.accept() => {
                if let Ok((stream, _)) = conn {
                    requests.read(stream);
                }
            }
            Some(inc) = requests.rx.recv() => {
                // Pending events first: the caller's fork must be in the process table.
                p.drain(ring.get_mut(), &mut sink, &mut sensors)?;
                let cx = control::Ctl {
                    sensors: &mut sensors,
                    p: &mut p,
                    sink: &mut sink,
                    next: &mut next_task,
                    host: None,
                };
                control::answer(inc, cx);
                sink.batch_end()?;
            }
            st = &mut waiter => break st.map_err(std::io::Error::other)?,
            // The command is in our process group for terminal signals; forward
            // the others so `kill agentmon` stops the command too.
            _ = sigint.recv() => forward(pid, Signal::SIGINT),
            _ = sigterm.recv() => forward(pid, Signal::SIGTERM),
            _ = sighup.recv() => forward(pid, Signal::SIGHUP),
        }
    };
    // A killed tree dies all at once, but its processes' exits trail the root's by a
    // moment: wait for them so that their exit events are in the record.
    let killed = p.contain.killed();
    if !killed.is_empty() {
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(2)
            && sensors.tracked().iter().any(|(_, c)| killed.contains(c))
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // The root's exit event is in the ring before waitpid returns; take the rest.
    p.drain(ring.get_mut(), &mut sink, &mut sensors)?;
    if let Some(ev) = p.enr.loss(&sensors.counts()) {
        sink.send(&ev)?;
    }
    finish(&mut p, &mut sink, "agentmon stopped watching (its root's exit was not seen)")?;
    if let Some(cg) = opts.task.as_ref().and_then(|(t, _)| p.contain.cgroup(&t.id))
        && !cg.pids().is_empty()
    {
        tracing::warn!("the task's cgroup {} still has processes; it is left in place", cg.path.display());
    }
    let survivors: Vec<u32> = sensors.tracked().into_iter().map(|(p, _)| p).collect();
    if !survivors.is_empty() && !opts.quiet {
        eprintln!(
            "agentmon: the command exited but {} of its descendants still run and are no longer \
             observed: {:?}",
            survivors.len(),
            survivors
        );
    }
    Ok(match status {
        Ok(st) => exit_code(st),
        Err(e) => {
            tracing::error!("waitpid: {e}");
            125
        }
    })
}

/// Records the end of every task still open and closes the sinks (what NATS has not
/// acknowledged stays in its spool).
fn finish(p: &mut Pipeline, sink: &mut Fanout, why: &str) -> Result<(), RunError> {
    for id in p.task_ids() {
        if let Some(ev) = p.task_ended(&id, why) {
            sink.send(&ev)?;
        }
    }
    sink.close()?;
    Ok(())
}

/// Creates the task's cgroup and moves the (held) root into it; an enforced task's
/// gets the network guard with its allowlist first. Without cgroups an observed task
/// runs without one (no freeze); an enforced task was refused before this.
fn task_cgroup(
    sensors: &mut Sensors,
    t: &Task,
    root: u32,
    layers: &Layers,
    cookie: u32,
) -> Result<Option<TaskCgroup>, RunError> {
    if !layers.cgroups {
        return Ok(None);
    }
    let cg = match TaskCgroup::create(&format!("{}-{cookie}", std::process::id())) {
        Ok(cg) => cg,
        Err(e) if !t.enforce => {
            tracing::warn!("task {} runs without a cgroup of its own (it cannot be frozen): {e}", t.id);
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    if t.enforce {
        let allow = enforce::cgroup::allow_entries(cookie, &t.connect).map_err(|why| {
            enforce::EnforceError::Refused { task: t.id.clone(), clause: "scope.connect", why }
        })?;
        sensors.guard(&cg.open()?, cg.id, cookie, &allow)?;
    }
    cg.add(root)?;
    Ok(Some(cg))
}

/// Re-resolves the host names of the task's connect scope and allows new addresses.
/// Addresses a name no longer resolves to stay allowed until the task ends.
fn refresh_hosts(sensors: &mut Sensors, t: &Task) {
    let mut eps = t.connect.clone();
    crate::task::scope::resolve_hosts(&mut eps);
    let hosts: Vec<_> =
        eps.into_iter().filter(|e| matches!(e, crate::task::scope::Endpoint::Host { .. })).collect();
    if let Ok(allow) = enforce::cgroup::allow_entries(EXEC_TASK, &hosts)
        && let Err(e) = sensors.allow_more(&allow)
    {
        tracing::warn!("refreshing host allowlist: {e}");
    }
}

/// Reloads changed rules; an invalid edit keeps the old rules and says why.
fn reload(w: &mut RulesWatch, judge: &mut Judge) {
    match w.poll() {
        None => {}
        Some(Ok(set)) => {
            eprintln!("agentmon: rules reloaded ({} rules)", set.len());
            judge.set_rules(set);
        }
        Some(Err(errs)) => {
            eprintln!("agentmon: rules not reloaded, keeping the {} rules in force:", judge.rule_count());
            for e in errs {
                eprintln!("  {e}");
            }
        }
    }
}

/// Delegated mode: the command runs as a sub-task of the task around us.
async fn delegated(opts: ExecOptions, socket: PathBuf) -> Result<i32, RunError> {
    // The watching agentmon owns the cgroups; a sub-task gets no network guard of its
    // own here, so an enforced sub-task that needs one is refused.
    let layers = Layers { cgroups: false, ..Layers::probe() };
    // Its gated calls are held by the parent's gate (the filter is inherited); the
    // parent refuses the delegation if that gate does not cover them.
    let mut gated_by_parent = opts.clone();
    if let Some((t, _)) = gated_by_parent.task.as_mut() {
        t.approval.clear();
    }
    let confinement = plan_confinement(&gated_by_parent, &layers)?;
    let Some((task, text)) = opts.task else { unreachable!("checked by the caller") };
    let held = launch::spawn_held(&opts.cmd, &[(TASK_ENV.into(), task.id.clone())], confinement)?;
    let pid = held.pid;
    let abort = |msg: String| {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
        RunError::Delegation(msg)
    };
    let reply = ctl::delegate(&socket, &task.source, text, pid.as_raw() as u32).await.map_err(&abort)?;
    if !reply.ok {
        return Err(abort(reply.error.unwrap_or_else(|| "no reason given".into())));
    }
    if !opts.quiet {
        eprintln!(
            "agentmon: running as sub-task {} of {:?}; its events are in the parent's stream",
            reply.task.unwrap_or_default(),
            reply.chain
        );
    }
    held.release()?;
    let st = tokio::task::spawn_blocking(move || nix::sys::wait::waitpid(pid, None))
        .await
        .map_err(std::io::Error::other)?;
    Ok(st.map(exit_code).unwrap_or(125))
}

/// With a daemon: the command runs as a top-level task of the daemon, which watches
/// it with its own outputs (and the `--events` file, for this task's events).
async fn registered(opts: ExecOptions, socket: PathBuf) -> Result<i32, RunError> {
    let Some((task, text)) = opts.task.clone() else { unreachable!("checked by the caller") };
    let layers = Layers::probe();
    let confinement = plan_confinement(&opts, &layers)?;
    let env = [(CTL_ENV.to_string(), socket.display().to_string()), (TASK_ENV.to_string(), task.id.clone())];
    let mut held = launch::spawn_held(&opts.cmd, &env, confinement)?;
    let pid = held.pid;
    let gate_chan = held.take_gate();
    let abort = |msg: String| {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
        RunError::Daemon(msg)
    };
    let events = match &opts.events {
        Some(p) if p.as_os_str() != "-" => Some(absolute(p).map_err(|e| abort(e.to_string()))?),
        _ => None,
    };
    let req = ctl::Request::Start {
        manifest: text,
        file: absolute(&task.source).unwrap_or(task.source.clone()).display().to_string(),
        pid: pid.as_raw() as u32,
        enforce: task.enforce,
        events: events.as_ref().map(|p| p.display().to_string()),
    };
    let reply = ctl::call(&socket, &req).await.map_err(&abort)?;
    if !reply.ok {
        return Err(abort(reply.error.unwrap_or_else(|| "no reason given".into())));
    }
    if !opts.quiet {
        eprintln!(
            "agentmon: task {} runs under the daemon at {}; its rules and outputs apply{}",
            task.id,
            socket.display(),
            events.map(|p| format!(" (and this task's events go to {})", p.display())).unwrap_or_default()
        );
    }
    held.release()?;
    if let Some(chan) = gate_chan {
        // The root sent its approval listener before it exec'd; the daemon holds the
        // task's gated calls (until it has the listener they wait in the kernel).
        let handed =
            crate::gate::filter::recv_listener(&chan, 5000).map_err(|e| e.to_string()).and_then(|l| {
                use std::os::fd::AsFd;
                ctl::call_with_fd(&socket, &ctl::Request::Gate { task: task.id.clone() }, l.as_fd())
            });
        match handed {
            Ok(r) if r.ok => {}
            other => {
                let why = match other {
                    Ok(r) => r.error.unwrap_or_default(),
                    Err(e) => e,
                };
                // Unanswered, its gated calls would wait forever: it must not run on.
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(pid, None);
                return Err(RunError::Daemon(format!("handing the approval gate to the daemon: {why}")));
            }
        }
    }
    let st = tokio::task::spawn_blocking(move || nix::sys::wait::waitpid(pid, None))
        .await
        .map_err(std::io::Error::other)?;
    Ok(st.map(exit_code).unwrap_or(125))
}

/// `p` made absolute against the working directory (the daemon's differs).
fn absolute(p: &std::path::Path) -> std::io::Result<PathBuf> {
    if p.is_absolute() { Ok(p.to_path_buf()) } else { Ok(std::env::current_dir()?.join(p)) }
}

/// Resolves when a gate has held calls to take (never, without an open gate).
pub(super) async fn gate_ready(gates: &[Gate]) -> std::io::Result<()> {
    let open: Vec<_> = gates.iter().filter(|g| !g.closed).map(|g| Box::pin(g.ready())).collect();
    if open.is_empty() {
        return std::future::pending().await;
    }
    futures_util::future::select_all(open).await.0
}

/// Resolves at the earliest approval deadline (never, with none pending).
pub(super) async fn gate_deadline(gates: &[Gate]) {
    match gates.iter().filter_map(Gate::next_deadline).min() {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

fn forward(pid: Pid, sig: Signal) {
    let _ = nix::sys::signal::kill(pid, sig);
}
