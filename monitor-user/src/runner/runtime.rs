//! The one event loop of every deployment. `agentmon exec` is a runtime with one
//! launched task whose exit ends the loop; `agentmon daemon` is a runtime that runs
//! until SIGTERM, with selectors and metrics. Both read the ring, hold approval
//! gates, answer the control socket, expire tasks and report losses here, once.

use std::time::Duration;

use aya::maps::{MapData, RingBuf};

use nix::{sys::signal::Signal, sys::wait::WaitStatus, unistd::Pid};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use super::{
    RunError,
    callers::Reader,
    engine::Engine,
    outputs::NatsHandles,
    select::{Scanner, Selectors},
};
use crate::{ctl, gate::Gate, judge::RulesWatch, kernel::loader::POLL_INTERVAL, metrics::Metrics};

/// What a daemon adds to the loop.
#[derive(Default)]
pub struct Extras {
    /// Processes attached automatically under the default task.
    pub selectors: Option<Selectors>,
    pub metrics: Option<Metrics>,
    pub nats: Option<NatsHandles>,
    /// Ended tasks whose state record says so already.
    pub marked: std::collections::HashSet<std::sync::Arc<str>>,
    /// Ended tasks with no process tracked, since when (`runner::finish`).
    pub quiet: std::collections::HashMap<std::sync::Arc<str>, std::time::Instant>,
    /// Tasks frozen because an output failed (thawed when outputs work again).
    pub failed_closed: std::collections::HashSet<std::sync::Arc<str>>,
}

pub struct Runtime {
    pub e: Engine,
    ring: AsyncFd<RingBuf<MapData>>,
    pub server: ctl::Server,
    requests: Reader,
    watch: Option<RulesWatch>,
    extras: Extras,
    ticks: u64,
    watchdog: super::watchdog::Watchdog,
    signals: Signals,
}

/// SIGINT, SIGTERM, SIGHUP, SIGQUIT, caught from the first thing a deployment
/// does: one arriving while the kernel programs load (seconds) or before the loop
/// runs is held, and the loop then stops cleanly, instead of the default action
/// killing agentmon half set up. With a child, each is forwarded to it instead.
pub struct Signals([tokio::signal::unix::Signal; 4]);

impl Signals {
    pub fn catch() -> std::io::Result<Self> {
        shield_self();
        Ok(Self([
            tokio::signal::unix::signal(SignalKind::interrupt())?,
            tokio::signal::unix::signal(SignalKind::terminate())?,
            tokio::signal::unix::signal(SignalKind::hangup())?,
            tokio::signal::unix::signal(SignalKind::quit())?,
        ]))
    }
}

/// What agentmon does to itself against an agent that shares its terminal or its
/// owner. The stop signals a terminal sends a background writer or reader (SIGTTOU,
/// SIGTTIN) are ignored. An agent sharing agentmon's terminal can take it (its
/// process group in the foreground, TOSTOP set): the kernel would then stop
/// agentmon at its next diagnostic, a signal no hook and no Landlock scoping sees.
/// Ignored, a write goes through. (SIGTSTP, ^Z, keeps its default: ignored, an
/// operator's ^Z stopped the command and left the terminal waiting on agentmon.)
/// So are the signals the kernel sends for a limit reached (SIGXFSZ, SIGXCPU), whose
/// default kills and dumps: another process of agentmon's owner may shrink its
/// limits (runner/standing.rs puts them back, a tick later); a write past the file
/// size limit then fails EFBIG instead. And agentmon is not dumpable: no core file
/// with its keys, whatever limit and signal an agent arranges (and its /proc files
/// need CAP_SYS_PTRACE of anyone, its owner included).
/// The command launched gets the defaults back (launch.rs).
pub fn shield_self() {
    for s in [Signal::SIGTTOU, Signal::SIGTTIN, Signal::SIGXFSZ, Signal::SIGXCPU] {
        // SAFETY: SIG_IGN installs no handler.
        let _ = unsafe { nix::sys::signal::signal(s, nix::sys::signal::SigHandler::SigIgn) };
    }
    // SAFETY: a flag of this process.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        tracing::warn!("agentmon could not make itself undumpable: {}", std::io::Error::last_os_error());
    }
}

/// How often the housekeeping runs (losses, expiry, reloads, flushes).
const TICK: Duration = Duration::from_millis(500);

impl Runtime {
    pub fn new(
        mut e: Engine,
        server: ctl::Server,
        watch: Option<RulesWatch>,
        extras: Extras,
        signals: Signals,
    ) -> Result<Self, RunError> {
        let events = e.sensors.take_events().expect("ring buffer taken once");
        match super::pressure::level(&events) {
            Ok((level, bytes)) => {
                e.p.level = Some(level);
                if e.setup.backpressure {
                    e.p.pressure = Some(super::pressure::Pressure::new(bytes));
                }
            }
            // Drains are then unbounded and nothing is paused: losses are counted.
            Err(err) => {
                tracing::error!("the ring buffer's fill level cannot be read ({err}): no backpressure")
            }
        }
        // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd owns the RingBuf.
        let ring = unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        e.p.judge.set_own_socket(&server.path);
        let watchdog = super::watchdog::Watchdog::start();
        Ok(Self { e, ring, server, requests: Reader::default(), watch, extras, ticks: 0, watchdog, signals })
    }

    /// Reads every record the kernel has ready.
    pub fn drain(&mut self) {
        self.e.drain(self.ring.get_mut());
    }

    /// Answers the held calls waiting now (outside [`Self::run`]: while a launched
    /// root's own exec may be held).
    pub fn serve_gates(&mut self) {
        self.drain();
        self.e.p.held_calls(&mut self.e.sensors, &mut self.e.out);
    }

    /// Takes a held-call listener (the root of a launched task sent it).
    pub fn hold(&mut self, listener: std::os::fd::OwnedFd) -> std::io::Result<()> {
        self.e.p.gates.push(Gate::new(listener, self.e.setup.approval_timeout)?);
        Ok(())
    }

    /// Runs until `child` exits (its status), or without one until SIGINT/SIGTERM.
    /// Terminal signals reach a child through its process group; SIGINT, SIGTERM,
    /// SIGHUP and SIGQUIT sent to agentmon are forwarded to it.
    pub async fn run(&mut self, child: Option<Pid>) -> Result<Option<WaitStatus>, RunError> {
        let mut waiter =
            child.map(|pid| tokio::task::spawn_blocking(move || nix::sys::wait::waitpid(pid, None)));
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut tick = tokio::time::interval(TICK);
        let mut scanner = Scanner::default();
        let mut scan = tokio::time::interval(Duration::from_millis(250));
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut sweep = tokio::time::interval(crate::contain::KILL_SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let stop = |sig: Signal| match child {
            Some(pid) => {
                let _ = nix::sys::signal::kill(pid, sig);
                false
            }
            None => sig != Signal::SIGHUP,
        };
        let status = loop {
            let Self { e, ring, server, requests, extras, watch, ticks, watchdog, signals } = self;
            let Signals([sigint, sigterm, sighup, sigquit]) = signals;
            tokio::select! {
                r = ring.readable_mut() => {
                    let mut guard = r?;
                    e.drain_turn(guard.get_inner_mut());
                    guard.clear_ready();
                    tokio::task::yield_now().await;
                }
                // The kernel does not wake us (its programs write without a wakeup).
                _ = poll.tick() => {
                    watchdog.beat();
                    // Bounded (see Pipeline::drain): under a storm the next drain is
                    // due at once; the yield lets the other arms' wake-ups in first.
                    e.drain_turn(ring.get_mut());
                    tokio::task::yield_now().await;
                }
                _ = tick.tick() => {
                    *ticks += 1;
                    if let Some((still, stall)) = watchdog.gap() {
                        super::alarms::stopped(e, still, &stall);
                    }
                    let changed = watchdog.standing.restore_changed();
                    if !changed.is_empty() {
                        super::alarms::demoted(e, &changed);
                    }
                    if let Some(line) = watchdog.standing.preemption_changed() {
                        super::alarms::repreempted(e, &line);
                    }
                    // Which processes the kernel tracks, then every event they made
                    // before: a task is let go only once its last process's events
                    // are in (they were in the ring when it exited).
                    // (The map is walked only while some ended task waits to go.)
                    let tracked = (!e.p.ended.is_empty()).then(|| e.sensors.tracked());
                    e.drain(ring.get_mut());
                    housekeeping(e, watch.as_mut(), extras, *ticks, tracked.as_deref());
                }
                r = gate_ready(&e.p.gates) => {
                    r?;
                    // Events first: the caller's exec and forks name the process in the request.
                    e.drain(ring.get_mut());
                    e.p.held_calls(&mut e.sensors, &mut e.out);
                }
                _ = gate_deadline(&e.p.gates) => e.p.expire_approvals(&mut e.out),
                conn = server.listener.accept() => match conn {
                    Ok((stream, _)) => requests.accept(stream, &e.sensors),
                    Err(err) => {
                        // Out of descriptors (EMFILE): the backlog stays readable, so
                        // without a pause this arm would spin.
                        tracing::warn!("control socket: accept: {err}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                (i, r) = super::callers::mailbox_ready(&e.mailboxes) => {
                    if let Err(err) = r {
                        tracing::warn!("task mailbox: {err}");
                        e.mailboxes[i].closed = true;
                    }
                    e.drain(ring.get_mut());
                    for inc in e.mailboxes[i].take(&e.sensors) {
                        super::serve::answer(inc, e, &mut requests.noise);
                    }
                    e.mailboxes.retain(|m| !m.closed);
                    e.out.batch_end();
                }
                Some((id, got)) = e.delegations.rx.recv() => {
                    e.drain(ring.get_mut());
                    super::subtask::looked_up(e, id, got);
                    e.out.batch_end();
                }
                Some(inc) = requests.rx.recv() => {
                    // Pending events first: the caller's fork must be in the process table.
                    e.drain(ring.get_mut());
                    super::serve::answer(inc, e, &mut requests.noise);
                    e.out.batch_end();
                }
                _ = scan.tick(), if extras.selectors.is_some() => {
                    let Some(sel) = &extras.selectors else { continue };
                    // Their forks and execs so far first: a child of a matched process
                    // that is already tracked is not a new match.
                    e.drain(ring.get_mut());
                    for id in scanner.scan(sel, e) {
                        tracing::info!("selector: attached task {id}");
                    }
                    e.out.batch_end();
                }
                // Kills with processes left (a file system holds them): swept here,
                // not on the arm that asked.
                _ = sweep.tick(), if e.p.contain.dying() => {
                    super::serve::settle_kills(e);
                    e.out.batch_end();
                }
                st = wait(&mut waiter) => break Some(st.map_err(std::io::Error::other)?),
                _ = sigint.recv() => if stop(Signal::SIGINT) { break None },
                _ = sigterm.recv() => if stop(Signal::SIGTERM) { break None },
                _ = sighup.recv() => if stop(Signal::SIGHUP) { break None },
                _ = sigquit.recv() => if stop(Signal::SIGQUIT) { break None },
            }
        };
        // A loop stopped until just before the end is still a stopped loop.
        if let Some((still, stall)) = self.watchdog.gap() {
            super::alarms::stopped(&mut self.e, still, &stall);
        }
        self.watchdog.stop();
        Ok(match status {
            Some(Ok(st)) => Some(st),
            Some(Err(err)) => {
                tracing::error!("waitpid: {err}");
                None
            }
            None => None,
        })
    }

    /// Sees the kills under way through (their grace at most: nothing else waits for
    /// the loop now), records them and answers whoever waits for them.
    pub fn finish_kills(&mut self) {
        let e = &mut self.e;
        let (host, clock) = (e.host(), e.p.enr.clock());
        let done = e.p.contain.finish_kills(&e.sensors, host, || clock.now_wall());
        super::serve::kills_over(e, done);
    }

    /// Drains what is left, reports the last losses and closes the outputs. With
    /// `end_tasks`, every task still open gets its `task_end` (`why`) first.
    pub fn shutdown(mut self, end_tasks: Option<&str>) {
        self.drain();
        let e = &mut self.e;
        // Written after the last drain began (processes outliving their task's root):
        // a daemon's ring is pinned for its successor; an exec's goes with it.
        if let Some(left) = e.p.level.as_ref().map(|l| l.backlog()).filter(|&b| b > 0) {
            tracing::warn!("{left} bytes of records were still in the ring at the end");
        }
        e.p.unsaid_refusals(&mut e.out, true);
        self.finish_kills();
        let e = &mut self.e;
        super::alarms::dropped(e);
        // Never left frozen by agentmon's own pause.
        if let Some(p) = &mut e.p.pressure {
            p.resume(&mut e.p.contain);
        }
        loss(e);
        if let Some(why) = end_tasks {
            for id in e.p.task_ids() {
                if let Some(ev) = e.p.task_ended(&id, why) {
                    e.out.send(&ev);
                }
            }
        }
        let (host, now) = (e.host(), e.p.enr.clock().now_wall());
        e.out.report_losses(&host, now);
        for f in e.out.close() {
            tracing::error!("closing {}: {} (what it holds may be lost)", f.output, f.error);
        }
    }
}

/// Reports what the kernel lost since the last report; a daemon records the totals
/// reported, so that a successor taking the counters over does not report them again.
fn loss(e: &mut Engine) {
    if let Some(p) = &mut e.p.pressure {
        for ev in p.report(&e.p.enr.host(), e.p.enr.clock().now_wall()) {
            e.out.send(&ev);
        }
    }
    if let Some(ev) = e.p.enr.loss(&e.sensors.counts()) {
        e.out.send(&ev);
        if let Some(st) = &e.setup.state {
            st.save_lost(e.p.enr.lost_reported());
        }
    }
}

/// The cookies processes are tracked under, and those of the tasks up their chains:
/// a task whose own processes are gone lives on in its sub-tasks' (they share its
/// events file, which stays protected for them).
fn live_with_parents(e: &Engine) -> std::collections::BTreeSet<u32> {
    let mut live: std::collections::BTreeSet<u32> = e.sensors.tracked().into_iter().map(|(_, c)| c).collect();
    let ups: Vec<u32> = live
        .iter()
        .filter_map(|c| e.p.enr.task_name(*c))
        .filter_map(|id| e.p.judge.task(&id))
        .flat_map(|b| b.local_chain().iter().filter_map(|p| e.p.contain.cookie(p)))
        .collect();
    live.extend(ups);
    live
}

/// Housekeeping, every [`TICK`].
fn housekeeping(
    e: &mut Engine,
    watch: Option<&mut RulesWatch>,
    extras: &mut Extras,
    ticks: u64,
    tracked: Option<&[(u32, u32)]>,
) {
    if let Err(err) = e.sensors.settle_pending() {
        tracing::warn!("{err}");
    }
    loss(e);
    if let Some(w) = watch {
        reload(w, e);
    }
    e.p.expire(&mut e.sensors, e.setup.on_expiry, &mut e.out);
    let (host, now) = (e.host(), e.p.enr.clock().now_wall());
    for ev in e.p.contain.settle_freezes(&mut e.sensors, host.clone(), now) {
        e.out.send(&ev);
    }
    // After the expiries: a pause a killed daemon left is thawed only if nothing
    // (an expiry, a rule on the events waiting in the ring) claimed it since.
    for ev in e.p.contain.thaw_left_pauses(host, now) {
        e.out.send(&ev);
    }
    e.p.unsaid_refusals(&mut e.out, false);
    super::alarms::dropped(e);
    // Host names in scopes: new addresses are added every minute (by default; looked up
    // off the loop).
    if ticks.is_multiple_of((e.setup.hosts_refresh.as_millis() / TICK.as_millis()).max(1) as u64) {
        super::hosts::Refresh::start(e);
    }
    super::hosts::Refresh::finish(e);
    // A task with no process left needs its LSM grants no more.
    if ticks.is_multiple_of(20) {
        let mut live = live_with_parents(e);
        // Forks that escaped tracking are in no TRACKED entry.
        live.extend(super::finish::held_by_cgroups(&e.sensors, |_| true));
        if let Some(l) = e.sensors.lsm.as_mut() {
            l.sweep(&live);
        }
        e.sensors.lsm_idle(e.setup.lsm_linger, std::time::Instant::now());
        e.reserved.expire(std::time::Instant::now());
        super::fdtable::make_room();
        // A guard and its kernel state are kept while its cgroup exists, asked of the
        // kernel by id (a nested task cgroup is anywhere, and one whose task did not
        // resume is bound to none). Where ids cannot be asked, by agentmon's listing
        // and the tasks bound here; where nothing can be told, nothing goes.
        let ids = e.sensors.guard_cgroups();
        let listed = crate::enforce::cgroup::ours();
        let bound: std::collections::BTreeSet<u64> = e.p.contain.cgroup_ids().collect();
        let gone: std::collections::BTreeSet<u64> =
            match (crate::enforce::cgroup::gone(ids.iter().copied()), &listed) {
                (Some(by_id), l) => {
                    by_id.into_iter().filter(|c| l.as_ref().is_none_or(|l| !l.contains(c))).collect()
                }
                (None, Some(l)) => {
                    ids.iter().copied().filter(|c| !l.contains(c) && !bound.contains(c)).collect()
                }
                (None, None) => Default::default(),
            };
        // Pinned guards: kept unless gone, when agentmon's directory could be listed
        // (nothing is concluded from a listing that failed).
        if let Some(l) = &listed {
            let mut keep: std::collections::BTreeSet<u64> =
                ids.iter().copied().filter(|c| !gone.contains(c)).collect();
            keep.extend(l.iter().copied().chain(bound));
            e.sensors.keep_guards(&keep);
        }
        if let Some(left) = e.sensors.forget_guards(&gone, extras.metrics.is_some())
            && let Some(m) = &extras.metrics
        {
            m.set_network_guards(left.guards, left.allow);
        }
    }
    // A task process that moved itself out of its cgroup is brought back, and said.
    if ticks.is_multiple_of(4) {
        for id in e.p.contain.top_level() {
            for (pid, at) in e.p.contain.regroup(&e.sensors, &id) {
                let task = e.sensors.task_of(pid);
                let why = format!("it had moved itself to cgroup {at}; moved back into its task's cgroup");
                e.tamper(pid, task, "leaving the task's cgroup", &why, false);
            }
        }
    }
    fail_closed(e, &mut extras.failed_closed);
    super::finish::forget_finished(e, &mut extras.marked, &mut extras.quiet, tracked);
    let (host, now) = (e.host(), e.p.enr.clock().now_wall());
    e.out.report_losses(&host, now);
    if let Some(m) = &extras.metrics {
        report(m, e, extras.nats.as_ref());
    }
    e.out.flush();
    // Everything seen until `now` is written: a daemon that dies from here on
    // leaves a gap that starts now (its successor reports it).
    if let Some(st) = &e.setup.state {
        st.beat(now);
    }
}

/// While a main output fails, each task whose `on_output_failure` says so is frozen
/// or killed (enforced tasks by default: what they do could not be recorded); when
/// every output works again, those frozen are thawed.
fn fail_closed(e: &mut Engine, frozen: &mut std::collections::HashSet<std::sync::Arc<str>>) {
    use crate::{
        contain::{Act, By},
        task::Stop,
    };
    let failing = e.out.failing();
    let (host, now) = (e.host(), e.p.enr.clock().now_wall());
    let Some(f) = failing.first() else {
        for id in std::mem::take(frozen) {
            let o = e.p.contain.act(&mut e.sensors, &id, Act::Thaw, By::Outputs(None), host.clone(), now);
            if let Some(ev) = o.event {
                e.out.send(&ev);
            }
        }
        return;
    };
    for id in e.p.task_ids() {
        if frozen.contains(&id) || e.p.ended.contains(&id) || e.p.contain.was_killed(&id) {
            continue;
        }
        let Some(stop) = e.p.judge.task(&id).map(|b| b.task.output_failure()) else { continue };
        let act = match stop {
            Stop::Continue => continue,
            Stop::Freeze if e.p.contain.cgroup(&id).is_some() => Act::Freeze,
            // A sub-task is frozen with its parent (which has the same choice or
            // a weaker one): kill only when asked to.
            Stop::Freeze => continue,
            Stop::Kill => Act::Kill,
        };
        let by = By::Outputs(Some((&f.output, &f.error)));
        let o = e.p.contain.act(&mut e.sensors, &id, act, by, host.clone(), now);
        // Only a freeze this made is undone when the outputs work again (one a rule
        // or an operator made stays).
        if act == Act::Freeze && o.result.is_ok() && o.event.is_some() {
            frozen.insert(id.clone());
        }
        match &o.result {
            Ok(m) => tracing::error!("{m}: {} cannot be written", f.output),
            Err(err) => tracing::error!("task {id}: {} on output failure failed: {err}", act.as_str()),
        }
        if let Some(ev) = o.event {
            e.out.send(&ev);
        }
    }
}

/// Resolves when the child exits (never, without one).
async fn wait<T>(w: &mut Option<tokio::task::JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match w {
        Some(h) => h.await,
        None => std::future::pending().await,
    }
}

/// Resolves when a gate has held calls to take (never, without an open gate).
async fn gate_ready(gates: &[Gate]) -> std::io::Result<()> {
    let open: Vec<_> = gates.iter().filter(|g| !g.closed).map(|g| Box::pin(g.ready())).collect();
    if open.is_empty() {
        return std::future::pending().await;
    }
    futures_util::future::select_all(open).await.0
}

/// Resolves at the earliest approval deadline (never, with none pending).
async fn gate_deadline(gates: &[Gate]) {
    match gates.iter().filter_map(Gate::next_deadline).min() {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Reloads changed rules; an invalid edit keeps the old rules. Either way a `rules`
/// record says what happened; a reload that drops rules also raises an alert (a
/// weakened policy is what an attacker who reached the rules would leave).
fn reload(w: &mut RulesWatch, e: &mut Engine) {
    let Some(r) = w.poll() else { return };
    let before = e.p.judge.rule_ids();
    let mut ev = crate::event::Event::new(crate::event::Kind::Rules, e.p.enr.clock().now_wall(), e.host());
    ev.pid = std::process::id();
    ev.tid = ev.pid;
    ev.comm = "agentmon".into();
    // New deny rules must hold for the enforced tasks already running.
    let r = r.and_then(|set| {
        let mut refused = Vec::new();
        for id in e.p.task_ids() {
            let (Some(b), Some(c)) = (e.p.judge.task(&id), e.p.contain.cookie(&id)) else { continue };
            if !b.task.enforce || e.p.ended.contains(&id) {
                continue;
            }
            match crate::policy::inline::deny_rules(set.rules.iter(), &b.task) {
                Ok(inline) => {
                    let deny = crate::enforce::cgroup::deny_entries(c, &inline.net);
                    if let Err(err) = e.sensors.allow_more(&deny) {
                        refused.push(format!("task {id}: its denied addresses: {err}"));
                    }
                }
                Err(why) => refused.push(format!("running enforced task {id}: {why}")),
            }
        }
        if refused.is_empty() { Ok(set) } else { Err(refused) }
    });
    match r {
        Ok(set) => {
            let after: Vec<String> = set.rules.iter().map(|r| r.id.clone()).collect();
            let added: Vec<&String> = after.iter().filter(|id| !before.contains(id)).collect();
            let removed: Vec<&String> = before.iter().filter(|id| !after.contains(id)).collect();
            ev.reason = Some(format!("rules reloaded: {} in force", after.len()));
            ev.detail.insert("count".into(), serde_json::json!(after.len()));
            ev.detail.insert("added".into(), serde_json::json!(added));
            ev.detail.insert("removed".into(), serde_json::json!(removed));
            eprintln!(
                "agentmon: rules reloaded ({} rules; {} added, {} removed)",
                after.len(),
                added.len(),
                removed.len()
            );
            let dropped = !removed.is_empty();
            if dropped {
                ev.reason = Some(format!(
                    "rules reloaded: {} rules removed ({}), {} in force",
                    removed.len(),
                    removed.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                    after.len()
                ));
            }
            e.p.judge.set_rules(set);
            e.out.send(&ev);
            if dropped {
                ev.verdict = Some("violation".into());
                e.out.alert(&e.p.judge.tamper_alert(&ev));
            }
        }
        Err(errs) => {
            eprintln!("agentmon: rules not reloaded, keeping the {} rules in force:", before.len());
            for err in &errs {
                eprintln!("  {err}");
            }
            ev.reason = Some(format!(
                "rules not reloaded ({} problems); the {} rules in force stay",
                errs.len(),
                before.len()
            ));
            ev.detail.insert("errors".into(), serde_json::json!(errs));
            e.out.send(&ev);
        }
    }
}

/// The gauges and kernel counters, every tick.
fn report(m: &Metrics, e: &Engine, nats: Option<&NatsHandles>) {
    m.beat();
    m.set_probes_attached(e.sensors.attached.len());
    m.set_tasks(e.p.task_ids().len().saturating_sub(e.p.ended.len()));
    m.set_tracked_processes(e.sensors.tracked().len());
    m.set_approvals_pending(e.p.approvals_pending());
    for (k, n) in e.sensors.counts().lost {
        m.set_lost(crate::enrich::kind_name(k), n);
    }
    if let Some(n) = nats {
        n.report(m);
    }
}
