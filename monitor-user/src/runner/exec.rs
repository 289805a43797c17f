//! `agentmon exec`: the runtime with one launched task. The command is held until
//! its pid is tracked and its task bound, released, and watched until it exits;
//! agentmon then exits with its status.

use std::{
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    time::Duration,
};

use nix::{sys::signal::Signal, sys::wait::WaitStatus, unistd::Pid};

use super::{
    EXEC_TASK, Outputs, RulesChoice, RunError,
    callers::Mailbox,
    engine::Engine,
    load_rules, rules_watch,
    runtime::{Extras, Runtime, Signals},
    setup::Setup,
    tasks::{self, Binding, StartReq},
};
use crate::{
    ctl::{self, CTL_ENV, CTL_FD_ENV, ENFORCED_ENV, TASK_ENV},
    enforce::{self, Confinement, Layers, Protected},
    launch,
    proctable::Proc,
    sensitive::SensitiveSet,
    sink::JsonLines,
    task::Task,
};

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
    /// What prompt records keep (the daemon's own, for a registered task).
    pub prompts: crate::prompt::PromptPolicy,
    /// Pause the task while the ring buffer is filling (`runner::pressure`).
    pub backpressure: bool,
    /// The audit chain and NATS, when configured.
    pub outputs: Outputs,
    /// A running daemon to register the task with (instead of running embedded).
    pub daemon: Option<PathBuf>,
    /// The task's grant file's text (sent to a daemon, which checks it).
    pub grant: Option<String>,
    /// The keys that may grant tasks (protected like the outputs: a task that could
    /// add a key could grant itself).
    pub grant_keys_file: Option<PathBuf>,
}

impl ExecOptions {
    /// The files of this run a task must never write: its outputs, its manifest,
    /// the rules it is judged by.
    fn own_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.events.iter().cloned().collect();
        v.extend(self.task.iter().map(|(t, _)| t.source.clone()));
        if let RulesChoice::Dir(d) = &self.rules {
            v.push(d.clone());
        }
        v.extend(self.outputs.protected());
        v.extend(self.grant_keys_file.iter().cloned());
        v
    }
}

/// Plans the confinement of an enforced task, or refuses it. An observed command
/// gets only the filter that reports its i386 and x32 calls (where the kernel can
/// hold calls for agentmon; `agentmon probe` says when it cannot).
/// The files the command executes itself: its program and interpreters.
fn launch_of(opts: &ExecOptions) -> Result<Vec<PathBuf>, RunError> {
    let program = launch::resolve_program(opts.cmd.first().map(String::as_str).unwrap_or(""))?;
    Ok(enforce::launch_files(&program))
}

fn plan_confinement(opts: &ExecOptions, setup: &Setup) -> Result<Option<Confinement>, RunError> {
    let Some((task, _)) = opts.task.as_ref().filter(|(t, _)| t.enforce) else {
        return Ok(setup.layers.approval.then(|| Confinement {
            landlock: None,
            seccomp: None,
            gate: Some(crate::gate::filter::watch_program()),
            drop_caps: false,
        }));
    };
    let protected = Protected { paths: setup.protected.clone() };
    Ok(Some(enforce::confine(task, &setup.layers, &launch_of(opts)?, &protected)?))
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

fn exit_code(st: WaitStatus) -> i32 {
    match st {
        WaitStatus::Exited(_, c) => c,
        WaitStatus::Signaled(_, s, _) => 128 + s as i32,
        _ => 125,
    }
}

/// Whether descriptor `fd` can be a task's mailbox as this process inherited it:
/// passed on at exec (every descriptor agentmon makes is close-on-exec) and a unix
/// seqpacket socket (callers::Mailbox::socketpair).
fn is_mailbox(fd: i32) -> bool {
    if fd <= 2 || unsafe { libc::fcntl(fd, libc::F_GETFD) } != 0 {
        return false;
    }
    launch::socket_option(fd, libc::SO_DOMAIN) == Some(libc::AF_UNIX)
        && launch::socket_option(fd, libc::SO_TYPE) == Some(libc::SOCK_SEQPACKET)
}

/// Says which of its caller's descriptors the enforced command was not given (its
/// `task_start` has them too, `detail.closed_fds`).
fn said_closed(closed: &[String]) {
    if !closed.is_empty() {
        tracing::warn!(
            "the enforced command does not get the descriptors agentmon's caller left open: {}",
            closed.join("; ")
        );
    }
}

pub async fn exec(opts: ExecOptions) -> Result<i32, RunError> {
    // Whichever way it runs, it shares a terminal and an owner with the agent.
    super::runtime::shield_self();
    if let (Some(_), Some(sock)) = (&opts.task, std::env::var_os(CTL_ENV)) {
        return delegated(opts, PathBuf::from(sock)).await;
    }
    if let (Some(_), Some(sock)) = (&opts.task, opts.daemon.clone()) {
        return registered(opts, sock).await;
    }
    let signals = Signals::catch()?;
    let rules = load_rules(&opts.rules, &opts.sensitive)?;
    let layers = Layers::probe();
    report_layers(&opts, &layers);
    let mut setup = Setup::new(layers, opts.own_files(), opts.approval_timeout);
    setup.prompts = opts.prompts.clone();
    setup.backpressure = opts.backpressure;
    if let Some((t, _)) = &opts.task {
        // Its events file is among the protected (setup's own files).
        tasks::admissible(t, &setup, rules.as_ref().unwrap_or(&Default::default()), None)?;
    }
    let confinement = plan_confinement(&opts, &setup)?;
    let (out, _nats) =
        opts.outputs.open(JsonLines::open(opts.events.as_deref())?.with_format(opts.format))?;
    // Once the outputs made them: a key's path resolves as the kernel will see it.
    setup.secrets = opts.outputs.secrets().iter().map(|p| super::setup::canonical(p)).collect();
    let rule_count = rules.as_ref().map(crate::policy::RuleSet::len).unwrap_or(0);
    let engine = Engine::load(opts.ringbuf_bytes, None, &opts.sensitive, rules, out, setup)?;
    let server = ctl::Server::bind()?;
    if let (Some(n), Some(keys)) = (&opts.outputs.nats, &opts.outputs.ctl_keys) {
        crate::nats::control::start(n.args.clone(), n.host.clone(), keys.clone(), server.path.clone())?;
    }
    if !opts.quiet {
        eprintln!(
            "agentmon: {} kernel programs attached in {} ms; task {}; {} rules; events to {}",
            engine.sensors.attached.len(),
            engine.sensors.load_ms,
            opts.task
                .as_ref()
                .map(|(t, _)| format!("{} ({})", t.id, t.mode.as_str()))
                .unwrap_or("none".into()),
            rule_count,
            opts.events.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "stdout".into()),
        );
        eprintln!("agentmon: observation: {}", engine.sensors.observe);
        eprintln!("agentmon: io_uring requests: {}", engine.sensors.iou_said());
    }
    let mut rt =
        Runtime::new(engine, server, rules_watch(&opts.rules, &opts.sensitive), Extras::default(), signals)?;

    let (ours, theirs) = Mailbox::socketpair()?;
    // The launched task's cookie is the first one bound (or the bare tracking's).
    rt.e.mailboxes.push(Mailbox::new(ours, rt.e.next_task)?);
    let mut env: Vec<(String, String)> = vec![
        (CTL_ENV.into(), rt.server.path.display().to_string()),
        (CTL_FD_ENV.into(), theirs.as_raw_fd().to_string()),
    ];
    if let Some((t, _)) = &opts.task {
        env.push((TASK_ENV.into(), t.id.clone()));
        if t.enforce {
            env.push((ENFORCED_ENV.into(), "1".into()));
        }
    }
    let enforced = opts.task.as_ref().is_some_and(|(t, _)| t.enforce);
    // The task's cgroup before its root, to make the root in (runner/prepared.rs);
    // under the cookie the mailbox above was given.
    let me = (std::process::id(), super::callers::start_of(std::process::id()).unwrap_or(0));
    let prepared = opts.task.as_ref().and_then(|_| {
        rt.e.prepare(me)
            .map_err(|why| tracing::debug!("the task's root is moved into its cgroup: {why}"))
            .ok()
    });
    let mut held = spawn_in(&opts.cmd, &env, confinement, theirs.as_raw_fd(), enforced, prepared.as_ref())?;
    said_closed(&held.closed);
    drop(theirs);
    // This process holds the task's gate and mailbox: no other process of our uid
    // may take them (ptrace, pidfd_getfd).
    undumpable();
    let pid = held.pid;
    let gate_chan = held.take_gate();
    let root = pid.as_raw() as u32;
    let bound = match opts.task.clone() {
        Some((task, text)) => {
            let r = StartReq {
                manifest: text,
                file: task.source.display().to_string(),
                pid: root,
                enforce: task.enforce,
                events: None,
                attach: false,
                // Checked when the options were made (before anything ran).
                grant: None,
                launch: if task.enforce { launch_of(&opts)? } else { Vec::new() },
                lsm: None,
                keeper: None,
                closed_fds: held.closed.clone(),
                asker: nix::unistd::getuid().as_raw(),
                prepared: prepared.map(|p| (p.cookie, me)),
            };
            tasks::bind(&mut rt.e, task, r, Binding::Launched).map(|_| EXEC_TASK)
        }
        None => {
            let c = rt.e.cookie();
            rt.e.sensors.track(root, c).map(|()| c).map_err(RunError::from)
        }
    };
    let cookie = match bound {
        Ok(c) => c,
        Err(err) => {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
            return Err(err);
        }
    };
    rt.e.p.enr.procs.seed(
        root,
        Proc {
            ppid: Some(std::process::id()),
            comm: "agentmon".into(),
            argv: Some(opts.cmd.clone()),
            task: cookie,
            ..Default::default()
        },
    );
    // The root sends its approval listener just before its exec, which the gate may
    // hold (a task gating exec): the gate is served until the exec is done.
    let mut gated: Result<(), RunError> = Ok(());
    let started = held.go().and_then(|()| {
        if let Some(chan) = &gate_chan {
            gated = crate::gate::filter::recv_listener(chan, 5000)
                .map_err(RunError::from)
                .and_then(|l| rt.hold(l).map_err(RunError::from));
        }
        held.exec_done(|| rt.serve_gates())
    });
    if let Err(err) = started {
        // The failed exec is still reported (exec with an error, then exit).
        rt.shutdown(Some("the command could not be started"));
        return Err(err.into());
    }
    // Its gated calls would wait forever without the listener: it must not run on.
    if let Err(err) = gated {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        rt.shutdown(Some("the approval gate's listener did not arrive"));
        return Err(err);
    }
    let status = rt.run(Some(pid)).await?;
    // A killed tree dies all at once, but its processes' exits trail the root's by a
    // moment: wait for them so that their exit events are in the record.
    let killed = rt.e.p.contain.killed();
    if !killed.is_empty() {
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(2)
            && rt.e.sensors.tracked().iter().any(|(_, c)| killed.contains(c))
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // The root's exit event is in the ring before waitpid returns; take the rest.
    rt.drain();
    if let Some(cg) = opts.task.as_ref().and_then(|(t, _)| rt.e.p.contain.cgroup(&t.id))
        && !cg.pids().is_empty()
    {
        tracing::warn!("the task's cgroup {} still has processes; it is left in place", cg.path.display());
    }
    let survivors: Vec<u32> = rt.e.sensors.tracked().into_iter().map(|(p, _)| p).collect();
    if !survivors.is_empty() && !opts.quiet {
        eprintln!(
            "agentmon: the command exited but {} of its descendants still run and are no longer \
             observed: {:?}",
            survivors.len(),
            survivors
        );
    }
    rt.shutdown(Some("agentmon stopped watching (its root's exit was not seen)"));
    Ok(status.map(exit_code).unwrap_or(125))
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
        // Inside an enforced task the sub-task is enforced too.
        t.enforce |= std::env::var_os(ENFORCED_ENV).is_some_and(|v| v == "1");
    }
    let confined = gated_by_parent.task.as_ref().is_some_and(|(t, _)| t.enforce);
    let setup = Setup::new(layers, opts.own_files(), opts.approval_timeout);
    // The parent's gate (inherited with its filter) holds the sub-task's calls: no
    // second one.
    let confinement = plan_confinement(&gated_by_parent, &setup)?.map(|c| Confinement { gate: None, ..c });
    let Some((task, text)) = opts.task else { unreachable!("checked by the caller") };
    // The mailbox (AGENTMON_CTL_FD), if this process has one, is inherited as it is
    // (an enforced command keeps no other descriptor: launch::inherited).
    let mailbox =
        std::env::var(CTL_FD_ENV).ok().and_then(|v| v.parse::<i32>().ok()).filter(|&fd| is_mailbox(fd));
    let env = [(TASK_ENV.into(), task.id.clone())];
    let held = launch::spawn_held(&opts.cmd, &env, confinement, mailbox, confined, None)?;
    said_closed(&held.closed);
    let pid = held.pid;
    let abort = |msg: String| {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
        RunError::Delegation(msg)
    };
    let reply =
        ctl::delegate(&socket, &task.source, text, pid.as_raw() as u32, confined).await.map_err(&abort)?;
    if !reply.ok {
        return Err(abort(reply.error.unwrap_or_else(|| "no reason given".into())));
    }
    if !opts.quiet {
        eprintln!(
            "agentmon: running as sub-task {} of {}; its events are in the parent's stream",
            reply.task.unwrap_or_default(),
            reply.chain.join(" <- ")
        );
    }
    held.release()?;
    let st = tokio::task::spawn_blocking(move || nix::sys::wait::waitpid(pid, None))
        .await
        .map_err(std::io::Error::other)?;
    Ok(st.map(exit_code).unwrap_or(125))
}

/// How long a task's approval gate is offered again to a daemon that did not answer
/// (one restarting: it resumes the task, then takes the gate).
const GATE_RETRY: Duration = Duration::from_secs(60);

/// Hands task `id`'s approval listener to the daemon: Ok(true) when it took it. A
/// daemon that stops before it answers (a restart, an upgrade) is not a refusal:
/// the gated calls wait in the kernel meanwhile, and the listener is offered again
/// until the daemon that resumes the task takes it. A refusal is final; one that
/// says the daemon does not know the task, once the task's root `root` has exited,
/// is Ok(false): the daemon that resumed the task saw its end (no process of it
/// left: it forgets a task only then) and forgot it, and the command's own status
/// is the answer.
fn hand_gate(socket: &Path, id: &str, l: &OwnedFd, root: Pid, quiet: bool) -> Result<bool, String> {
    let req = ctl::Request::Gate { task: id.to_string(), kept: Some(l.as_raw_fd()) };
    let until = std::time::Instant::now() + GATE_RETRY;
    let mut said = false;
    loop {
        match ctl::call_with_fd(socket, &req, l.as_fd()) {
            Ok(r) if r.ok => return Ok(true),
            Ok(r) if r.error.as_deref().is_some_and(|e| e.starts_with(ctl::NOT_MINE)) && exited(root) => {
                return Ok(false);
            }
            Ok(r) => return Err(r.error.unwrap_or_else(|| "no reason given".into())),
            Err(why) if std::time::Instant::now() >= until => return Err(why),
            Err(why) => {
                if !quiet && !std::mem::replace(&mut said, true) {
                    eprintln!(
                        "agentmon: the daemon did not take task {id}'s approval gate ({why}); offering it again \
                         for {}s while its held calls wait",
                        GATE_RETRY.as_secs()
                    );
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
}

/// Whether `pid`, a child of ours, has exited (left unreaped: its status is read
/// later).
fn exited(pid: Pid) -> bool {
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    matches!(waitid(Id::Pid(pid), flags), Ok(s) if s != WaitStatus::StillAlive)
}

/// With a daemon: the command runs as a top-level task of the daemon, which watches
/// it with its own outputs (and the `--events` file, for this task's events).
async fn registered(opts: ExecOptions, socket: PathBuf) -> Result<i32, RunError> {
    let Some((task, text)) = opts.task.clone() else { unreachable!("checked by the caller") };
    let layers = Layers::probe();
    let setup = Setup::new(layers, opts.own_files(), opts.approval_timeout);
    let confinement = plan_confinement(&opts, &setup)?;
    let (ours, theirs) = Mailbox::socketpair()?;
    let mut env = vec![
        (CTL_ENV.to_string(), socket.display().to_string()),
        (CTL_FD_ENV.to_string(), theirs.as_raw_fd().to_string()),
        (TASK_ENV.to_string(), task.id.clone()),
    ];
    if task.enforce {
        env.push((ENFORCED_ENV.to_string(), "1".into()));
    }
    // Its cgroup first, to make the root in (runner/prepared.rs): root may write
    // cgroups; for anyone else the daemon moves the root as it starts the task.
    let prepared = if nix::unistd::geteuid().is_root() {
        match ctl::call(&socket, &ctl::Request::Prepare {}).await {
            Ok(r) if r.ok => r.prepared,
            Ok(r) => {
                tracing::debug!("the task's root is moved into its cgroup: {}", r.error.unwrap_or_default());
                None
            }
            Err(why) => return Err(RunError::Unreachable { socket: socket.clone(), why }),
        }
    } else {
        None
    };
    let mut held =
        spawn_in(&opts.cmd, &env, confinement, theirs.as_raw_fd(), task.enforce, prepared.as_ref())?;
    said_closed(&held.closed);
    drop(theirs);
    // It keeps copies of the task's gate and mailbox for a restarted daemon (root's
    // daemon can take them; no other process of our uid may).
    undumpable();
    let pid = held.pid;
    let gate_chan = held.take_gate();
    let stop = || {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
    };
    let abort = |msg: String| {
        stop();
        RunError::Daemon(msg)
    };
    let events = match &opts.events {
        // With its symlinks resolved: the daemon follows none (runner/tasklog.rs).
        Some(p) if p.as_os_str() != "-" => Some(super::setup::canonical(p)),
        _ => None,
    };
    let req = ctl::Request::Start {
        manifest: text,
        file: absolute(&task.source).unwrap_or(task.source.clone()).display().to_string(),
        pid: pid.as_raw() as u32,
        enforce: task.enforce,
        events: events.as_ref().map(|p| p.display().to_string()),
        grant: opts.grant.clone(),
        launch: if task.enforce {
            launch_of(&opts)
                .map_err(|e| abort(e.to_string()))?
                .iter()
                .map(|p| p.display().to_string())
                .collect()
        } else {
            Vec::new()
        },
        lsm: setup.layers.lsm,
        kept_mailbox: Some(ours.as_raw_fd()),
        closed_fds: held.closed.clone(),
        prepared: prepared.map(|p| p.cookie),
    };
    // The task's mailbox goes with the request: the daemon answers it from now on.
    // Our copy stays open while the task runs, for a restarted daemon to take back
    // (runner/keeper.rs); so does the gate's below.
    let reply = ctl::call_with_fd(&socket, &req, ours.as_fd()).map_err(|why| {
        stop();
        RunError::Unreachable { socket: socket.clone(), why }
    })?;
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
    held.go()?;
    let mut kept_gate = None;
    if let Some(chan) = gate_chan {
        // The root sends its approval listener just before it execs; the daemon holds
        // the task's gated calls (until it has the listener they wait in the kernel),
        // the root's exec among them where the task gates exec.
        let handed = crate::gate::filter::recv_listener(&chan, 5000)
            .map_err(|e| e.to_string())
            .and_then(|l| hand_gate(&socket, &task.id, &l, pid, opts.quiet).map(|taken| taken.then_some(l)));
        match handed {
            Ok(l) => kept_gate = l,
            Err(why) => {
                // Unanswered, its gated calls would wait forever: it must not run on.
                stop();
                return Err(RunError::GateLost(why));
            }
        }
    }
    held.exec_done(|| {})?;
    let st = tokio::task::spawn_blocking(move || nix::sys::wait::waitpid(pid, None))
        .await
        .map_err(std::io::Error::other)?;
    // Kept until the task's root is done.
    drop((ours, kept_gate));
    Ok(st.map(exit_code).unwrap_or(125))
}

/// The task's held root (`launch::spawn_held`, keeping `mailbox`), made in its
/// `prepared` cgroup where it can be; else beside it, for agentmon to move it in (the
/// cgroup cannot be opened here, as from another cgroup namespace, or the kernel
/// refuses: not root, before 5.7).
fn spawn_in(
    cmd: &[String],
    env: &[(String, String)],
    confinement: Option<Confinement>,
    mailbox: std::os::fd::RawFd,
    enforced: bool,
    prepared: Option<&ctl::Prepared>,
) -> Result<launch::Held, launch::LaunchError> {
    let dir = prepared.and_then(|p| {
        std::fs::File::open(&p.cgroup)
            .map_err(|e| tracing::debug!("the task's root is moved into its cgroup: {}: {e}", p.cgroup))
            .ok()
    });
    launch::spawn_held(cmd, env, confinement, Some(mailbox), enforced, dir.as_ref().map(|d| d.as_fd()))
}

/// No core dumps, no ptrace or pidfd_getfd by processes of our uid without
/// CAP_SYS_PTRACE: this process holds a task's approval listener.
fn undumpable() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!("cannot make agentmon exec undumpable: {e}");
    }
}

/// `p` made absolute against the working directory (the daemon's differs).
fn absolute(p: &std::path::Path) -> std::io::Result<PathBuf> {
    if p.is_absolute() { Ok(p.to_path_buf()) } else { Ok(std::env::current_dir()?.join(p)) }
}
