//! Approval gates: the operations an enforced task lists in `approval_required`
//! block in the kernel (seccomp user notification) until an approver decides.
//!
//! A held call is resolved and pinned ([`notify`]), judged like an event (scope and
//! rules, before it happens): out of scope or denied by a rule, it fails at once with
//! EACCES; otherwise agentmon emits an `approval_request` and waits for `agentmon
//! approve ID [--for D]` or `agentmon deny ID`, or the timeout, which denies. An
//! approved call is performed by agentmon on what was pinned; a denied one fails
//! with EPERM. Each decision is an `approval` event, and the call's own syscall
//! event carries the approval id and decision.

pub mod abi;
pub mod filter;
mod foreign;
pub mod notify;
mod refused;
mod stall;

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    os::fd::{AsRawFd, OwnedFd},
    sync::Arc,
    time::{Duration, Instant},
};

use nix::errno::Errno;
use serde_json::json;
use tokio::io::unix::AsyncFd;

use self::{
    notify::{Call, Creds, Notif, Unresolved},
    stall::Wait,
};
use crate::worker;
use crate::{
    enrich::Enricher,
    event::{Event, Kind},
    judge::Judge,
    kernel::{loader::Sensors, lsm::LsmMaps},
    policy::{Action, VerdictKind},
    task::Op,
};

/// Open steps (tool calls) of each task, oldest first.
pub type Steps = HashMap<Arc<str>, Vec<Arc<crate::event::Step>>>;

/// Held calls taken per wakeup (the rest wait for the next turn of the loop).
const TAKE_BATCH: usize = 32;

/// Who decided.
#[derive(Debug, Clone)]
pub enum Who {
    Operator {
        pid: u32,
        uid: u32,
        /// Whom the operator relays for (a signed remote command).
        via: Option<String>,
        /// Why, in the approver's words.
        reason: Option<String>,
    },
    /// A standing approval (`approve --for`), by the id that granted it.
    Standing(String),
    Timeout,
}

struct Pending {
    notif: u64,
    call: Call,
    creds: Creds,
    task: Arc<str>,
    op: Op,
    /// The request event: process fields and paths for the decision event.
    request: Event,
    deadline: Instant,
}

/// `approve --for`: later calls of the same task and operation under the same
/// directory are approved without asking, until `until`.
struct Standing {
    task: Arc<str>,
    op: Op,
    under: String,
    until: Instant,
    id: String,
}

/// How a held call was decided (its `approval` record's `detail.decision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approved,
    Denied,
    Timeout,
    /// The process stopped waiting (it exited or was killed).
    Cancelled,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approved => "approved",
            Decision::Denied => "denied",
            Decision::Timeout => "timeout",
            Decision::Cancelled => "cancelled",
        }
    }
}

/// What deciding a held call did: its `approval` record, the decision, and what
/// carrying it out gave (None when nothing was carried out: cancelled).
struct Outcome {
    ev: Event,
    decision: Decision,
    result: Option<Result<(), Errno>>,
}

/// A decided call whose syscall event has not been seen yet.
struct Decided {
    id: String,
    decision: Decision,
    kind: Kind,
    path: Option<String>,
    new_path: Option<String>,
}

/// What a held call asks, as an approver reads it: the agent's names (paths,
/// comm) on one line with control and direction characters escaped, so that a
/// file name cannot redraw the line as a harmless request.
fn wants(task: &str, op: Op, req: &Event) -> String {
    let one = crate::sink::one_line;
    format!(
        "task {} wants to {} {}{} (pid {} {})",
        one(task),
        op.as_str(),
        one(req.path.as_deref().unwrap_or("")),
        req.new_path.as_deref().map(|p| format!(" -> {}", one(p))).unwrap_or_default(),
        req.pid,
        one(&req.comm)
    )
}

/// Held calls' ids: `<run>-<n>`, `n` counted across every gate of this agentmon
/// (counted per gate, two tasks' first calls were both `…-1`, and an operator's
/// approval for one was performed on whichever gate was found first), `<run>` 48
/// random bits drawn once per agentmon (a v7 UUID's random tail; it was the pid, which identically
/// provisioned hosts share: a fleet-wide `remote approve --host '*' ID` performed
/// every host's call of that id, not only the one the operator saw).
static HELD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn next_id() -> String {
    let run = RUN.get_or_init(|| format!("{:012x}", uuid::Uuid::now_v7().as_u128() & 0xffff_ffff_ffff));
    let n = HELD.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    format!("{run}-{n}")
}

pub struct Gate {
    listener: AsyncFd<OwnedFd>,
    pub timeout: Duration,
    pending: BTreeMap<String, Pending>,
    standing: Vec<Standing>,
    decided: HashMap<u32, Decided>,
    /// Every process holding the filter has exited.
    pub closed: bool,
    /// The task's command was started: its root's exec, the first one a gate ever
    /// holds (the filter is installed just before it), is let go without asking.
    launched: bool,
    /// Records of refused requests, limited per request (a flood of one kind is
    /// never summarised as another): each costs the agent one syscall. The last
    /// refusal recorded of each request is what a summary of the unrecorded ones
    /// of that request repeats.
    refusals: crate::noise::Tally<&'static str, Event>,
    /// Whose share of the workers this gate's steps count against ([`worker`]):
    /// a task's, so that no agent, however many processes it forks, takes every
    /// worker from the other tasks.
    id: u32,
    /// How long its steps kept the loop waiting.
    budget: worker::Budget,
}

/// Lets approved exec `call` of thread `tid` go on: the BPF LSM tier's
/// `bprm_check_security` will run it only if the file is the one resolved when the
/// call was held (its identity as the hooks know it).
fn approve_exec(lsm: Option<&mut LsmMaps>, gate: u32, tid: u32, call: &Call) -> Result<i64, Errno> {
    let Some(lsm) = lsm else { return Err(Errno::EPERM) };
    let k = exec_ident(lsm, gate, call).map_err(|e| {
        tracing::warn!("approved exec: the file's identity: {e}");
        if e.stalled() { Errno::ETIMEDOUT } else { Errno::EPERM }
    })?;
    let ok = monitor_common::lsm::ExecOk { ino: k.ino, dev: k.dev, _pad: 0, bprm: 0 };
    lsm.approve_exec(tid, ok).map_err(|e| {
        tracing::warn!("approved exec: {e}");
        Errno::EPERM
    })?;
    Ok(0)
}

/// From the moment an exec is held, its program is frozen for the task (BPF LSM
/// tier): the approver decides on what will run, not on what the task may rewrite
/// between the look and the run. Open writers are no way round it either: the
/// kernel refuses to execute a file open for writing (ETXTBSY).
fn freeze_program(sensors: &mut Sensors, gate: u32, tgid: u32, call: &Call) -> Result<(), Unfrozen> {
    let other = |e: &str| Unfrozen::Other(e.into());
    let c = sensors.task_of(tgid).ok_or_else(|| other("the caller is no longer tracked"))?;
    let lsm = sensors.lsm.as_mut().ok_or_else(|| other("no BPF LSM tier"))?;
    let k = exec_ident(lsm, gate, call).map_err(|e| match e {
        e if e.stalled() => Unfrozen::Stalled(e),
        e => other(&format!("the file's identity: {e}")),
    })?;
    lsm.freeze(c, k).map_err(|e| other(&e.to_string()))
}

/// Why a held exec's program could not be frozen.
enum Unfrozen {
    /// Its file system kept agentmon waiting (a stall, recorded as one).
    Stalled(crate::realpath::Error),
    Other(String),
}

/// The identity of a held exec's program (the file the held call resolved to), as
/// the hooks know it: agentmon opens it, in a worker waited for as long as the
/// call's other steps are (the program may be on a FUSE mount whose server does
/// not answer an open).
fn exec_ident(
    lsm: &LsmMaps,
    gate: u32,
    call: &Call,
) -> Result<monitor_common::lsm::FsKey, crate::realpath::Error> {
    let Some(notify::Target::File { fd, .. }) = call.targets.first() else {
        return Err(crate::realpath::Error::Io(std::io::Error::other("no file")));
    };
    let p = std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    lsm.ident_within(&p, false, &worker::READERS, &crate::realpath::Wait::new(gate, notify::MEM_WAIT))
}

fn kind_of(op: Op) -> Kind {
    match op {
        Op::Delete => Kind::FileDelete,
        Op::Rename => Kind::FileRename,
        Op::Truncate => Kind::FileTruncate,
        Op::Chmod => Kind::FileChmod,
        Op::Exec => Kind::Exec,
        _ => Kind::FileChown,
    }
}

/// An event of `kind` about thread `tid` of process `tgid`, the caller of a held
/// call, with what the process table knows of it.
pub(super) fn caller_event(kind: Kind, tgid: u32, tid: u32, enr: &Enricher) -> Event {
    let mut ev = Event::new(kind, enr.clock().now_wall(), enr.host());
    ev.pid = tgid;
    ev.tid = tid;
    if let Some(p) = enr.procs.live_key(tgid).and_then(|k| enr.procs.get(&k)) {
        ev.ppid = p.ppid;
        ev.comm = p.comm.clone();
        ev.exe = p.exe.clone();
    }
    ev
}

/// A tamper record about held call `n`'s caller, of its task when agentmon judges
/// one: made while the caller still waits (answered, it may exit, and its tracking
/// entry with it).
pub(super) fn caller_tamper(n: &Notif, sensors: &Sensors, enr: &Enricher, judge: &Judge) -> Event {
    let tgid = notify::tgid_of(n.tid).unwrap_or(n.tid);
    let mut ev = caller_event(Kind::Tamper, tgid, n.tid, enr);
    if let Some(bound) = sensors.task_of(tgid).and_then(|c| enr.task_name(c)).and_then(|t| judge.task(&t)) {
        ev.task = Some(bound.id.clone());
        bound.stamp(&mut ev);
    }
    ev
}

pub(super) fn errno_name(e: Errno) -> String {
    crate::names::errno(-(e as i64)).map(|n| n.into_owned()).unwrap_or_default()
}

impl Gate {
    pub fn new(listener: OwnedFd, timeout: Duration) -> std::io::Result<Self> {
        let flags = nix::fcntl::fcntl(&listener, nix::fcntl::FcntlArg::F_GETFL)?;
        let nonblock = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&listener, nix::fcntl::FcntlArg::F_SETFL(nonblock))?;
        Ok(Self {
            // SAFETY: the AsyncFd owns the listener fd for as long as it is registered.
            listener: unsafe { AsyncFd::register_with_interest(listener, tokio::io::Interest::READABLE) }?,
            timeout,
            pending: BTreeMap::new(),
            standing: Vec::new(),
            decided: HashMap::new(),
            closed: false,
            launched: false,
            refusals: Default::default(),
            id: {
                static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
            budget: worker::Budget::new(),
        })
    }

    /// The refusals not recorded one by one since the last record, once the limit
    /// lets one more through (every tick), or at once with `now_or_never` (the gate
    /// closes, agentmon stops): a flood that stopped is still counted.
    pub fn refusals_unsaid(&mut self, now: crate::event::Timestamp, now_or_never: bool) -> Vec<Event> {
        let said = self.refusals.unsaid(|_| now_or_never);
        said.into_iter()
            .map(|(name, last, held)| {
                let mut ev = crate::noise::summary(last, now, held);
                ev.reason =
                    Some(format!("tamper: {held} more {name} requests refused since the last recorded"));
                ev
            })
            .collect()
    }

    /// The gate of a task a restarted daemon resumed: its command was launched long
    /// ago, so no exec is the launch's (each one is held as the task says).
    pub fn resumed(listener: OwnedFd, timeout: Duration) -> std::io::Result<Self> {
        Ok(Self { launched: true, ..Self::new(listener, timeout)? })
    }

    /// Resolves when held calls may be waiting (or the listener closed).
    pub async fn ready(&self) -> std::io::Result<()> {
        let mut g = self.listener.readable().await?;
        g.clear_ready();
        Ok(())
    }

    fn fd(&self) -> i32 {
        self.listener.get_ref().as_raw_fd()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }

    /// Takes every held call waiting now; returns the events to record. `steps`: the
    /// open steps (tool calls) of each task, the newest of which a held call of the
    /// task belongs to (its request and decision carry it).
    pub fn take(
        &mut self,
        sensors: &mut Sensors,
        enr: &Enricher,
        judge: &Judge,
        steps: &Steps,
    ) -> Vec<Event> {
        let mut out = Vec::new();
        // At most a batch per wakeup: an agent calling chmod in a loop from several
        // threads must not keep the loop from the ring, the ticks and the operators.
        for _ in 0..TAKE_BATCH {
            // RECV blocks whatever O_NONBLOCK says: ask poll first.
            match notify::pending(self.fd()) {
                notify::Ready::Call => {}
                notify::Ready::Nothing => break,
                notify::Ready::Closed => {
                    // Every process holding the filter has exited.
                    self.closed = true;
                    break;
                }
            }
            let n = match notify::recv(self.fd()) {
                Ok(n) => n,
                // The calling thread died between the wake-up and our read.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => {
                    tracing::warn!("approval listener: {e}");
                    self.closed = true;
                    break;
                }
            };
            if let Some(mut ev) = self.held(n, sensors, enr, judge, steps) {
                if ev.step.is_none() {
                    ev.step = ev.task.as_ref().and_then(|t| steps.get(t)).and_then(|v| v.last().cloned());
                }
                out.push(ev);
            }
        }
        out
    }

    /// One held call: refuse, perform under a standing approval, or ask.
    fn held(
        &mut self,
        n: Notif,
        sensors: &mut Sensors,
        enr: &Enricher,
        judge: &Judge,
        steps: &Steps,
    ) -> Option<Event> {
        let fd = self.fd();
        // Whether the caller took the answer: one interrupted meanwhile (a signal)
        // no longer waits, and the kernel makes the call again, to be seen again.
        let answer = |r: Result<i64, Errno>| match notify::respond(fd, n.id, r) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!("answering held call {}: {e}", n.id);
                false
            }
        };
        if let Some(abi) = abi::Abi::of(n.arch, n.nr) {
            return self.foreign(n, abi, sensors, enr, judge);
        }
        if let Some(req) = filter::refused(n.nr, &n.args) {
            // Who asked, while the caller still waits (answered, it may exit, and its
            // tracking entry with it).
            // Nothing happened (EPERM): past a burst, refusals are counted, and the
            // next record says how many were not recorded one by one.
            // A refusal the caller never took is made again: counted then, not twice.
            let Some(held) = self.refusals.noise.allow(req.key()) else {
                if !answer(Err(Errno::EPERM)) {
                    self.refusals.noise.unhold(&req.key());
                }
                return None;
            };
            let mut ev = refused::event(&n, req, sensors, enr, judge);
            if !answer(Err(Errno::EPERM)) {
                // Not recorded: what it would have said goes back to the count, its
                // token back to the limit, and it stays the model of the summary
                // that says the count (even if no refusal of the kind is ever
                // recorded: a caller interrupted every time must not hide a flood).
                self.refusals.noise.hold_again(&req.key(), held);
                self.refusals.noise.refund(&req.key());
                self.refusals.last.entry(req.key()).or_insert(ev);
                return None;
            }
            if held > 0 {
                ev.detail.insert("unrecorded_before".into(), json!(held));
            }
            self.refusals.last.insert(req.key(), ev.clone());
            return Some(ev);
        }
        let Some(g) = filter::lookup(n.nr) else {
            answer(Err(Errno::EPERM));
            return None;
        };
        if !self.budget.allows(Instant::now()) {
            return self.stuck(n, g.name, Errno::ETIMEDOUT, Wait::Spent, answer, sensors, enr, judge);
        }
        let gate = self.id;
        let resolved = self.timed(|| notify::resolve_held(gate, n, g));
        // What we read belongs to the notifying thread only if it is still waiting.
        if !notify::valid(fd, n.id) {
            return None;
        }
        let (notify::Caller { tgid, creds }, call) = match resolved {
            Ok(r) => r,
            Err(Unresolved::Unread) => {
                let what = Wait::Late(
                    "arguments in its memory did not come in (a page the agent serves itself: a FUSE file?)",
                    notify::MEM_WAIT,
                );
                return self.stuck(n, g.name, Errno::EFAULT, what, answer, sensors, enr, judge);
            }
            Err(Unresolved::Unresolving) => {
                let what = Wait::Late(
                    "path did not resolve (a file system that answers late: the agent's own FUSE mount?)",
                    notify::MEM_WAIT,
                );
                return self.stuck(n, g.name, Errno::ETIMEDOUT, what, answer, sensors, enr, judge);
            }
            Err(Unresolved::Refused(e)) => {
                return self.stuck(n, g.name, e, Wait::Refused, answer, sensors, enr, judge);
            }
            Err(Unresolved::Failed(e)) => {
                answer(Err(e));
                return None;
            }
        };
        let task = sensors.task_of(tgid).and_then(|c| enr.task_name(c));
        let Some(bound) = task.as_ref().and_then(|t| judge.task(t)) else {
            tracing::warn!("held {} from pid {tgid}, which is in no task here: refused", g.name);
            answer(Err(Errno::EPERM));
            return None;
        };
        if g.op == Op::Exec && !std::mem::replace(&mut self.launched, true) {
            // The task's own command, which starting the task approved. (Its open
            // counts against the task's budget, as every wait on its files does.)
            let gate = self.id;
            match self.timed(|| approve_exec(sensors.lsm.as_mut(), gate, n.tid, &call)) {
                Ok(_) => {
                    if let Err(e) = notify::proceed(fd, n.id) {
                        tracing::debug!("letting the launch go on: {e}");
                    }
                }
                Err(e) => {
                    answer(Err(e));
                }
            }
            return None;
        }
        let mut ev = caller_event(kind_of(g.op), tgid, n.tid, enr);
        ev.task = Some(bound.id.clone());
        // Before the request is kept: its decision is of the same step.
        ev.step = steps.get(&bound.id).and_then(|v| v.last().cloned());
        bound.stamp(&mut ev);
        ev.syscall = Some(Cow::Borrowed(g.name));
        ev.path = call.targets.first().map(|t| t.path().to_string());
        ev.new_path = call.targets.get(1).map(|t| t.path().to_string());
        let v = judge.preview(&ev, &enr.procs);
        // Out of scope or against a rule that denies: no approver can make it right.
        let refuse = v.reasons.iter().any(|r| r.clause.is_some() && r.verdict >= VerdictKind::OutOfScope)
            || v.action >= Action::Deny;
        if refuse {
            answer(Err(Errno::EACCES));
            return None;
        }
        if !bound.task.approval.contains(&g.op) {
            // Held only so that its scope is checked before it happens (an enforced
            // task's chmod and chown): in scope, it is performed at once on what was
            // resolved, if the caller still waits; its own event, at the call's exit,
            // reports it.
            if !notify::valid(fd, n.id) {
                return None;
            }
            if !self.budget.allows(Instant::now()) {
                return self.stuck(n, g.name, Errno::ETIMEDOUT, Wait::Spent, answer, sensors, enr, judge);
            }
            return match self.perform(call, creds) {
                Ok(r) => {
                    answer(r);
                    None
                }
                Err(worker::Stuck::Late) => {
                    let what = Wait::Late(
                        "operation, performed by agentmon, did not end (a file system that answers late: the \
                         agent's own FUSE mount?); it may still take effect",
                        notify::ACT_WAIT,
                    );
                    self.stuck(n, g.name, Errno::ETIMEDOUT, what, answer, sensors, enr, judge)
                }
                Err(worker::Stuck::Refused(e)) => {
                    self.stuck(n, g.name, e, Wait::Refused, answer, sensors, enr, judge)
                }
                Err(worker::Stuck::Failed) => {
                    answer(Err(Errno::EIO));
                    None
                }
            };
        }
        let path = ev.path.clone().unwrap_or_default();
        let now = Instant::now();
        self.standing.retain(|s| s.until > now);
        let standing = self
            .standing
            .iter()
            .find(|s| s.task == bound.id && s.op == g.op && path.starts_with(&s.under))
            .map(|s| s.id.clone());
        let id = next_id();
        ev.verdict = Some(Cow::Borrowed(v.verdict.as_str()));
        ev.action = Some(Cow::Borrowed(v.action.as_str()));
        ev.rule = v.reasons.first().and_then(|r| r.rule.clone());
        ev.reason = v.reasons.first().map(|r| r.message.clone());
        let mut req = ev.clone();
        let deadline = if standing.is_some() { now } else { now + self.timeout };
        let vals = call.vals.clone();
        let p = Pending { notif: n.id, call, creds, task: bound.id.clone(), op: g.op, request: ev, deadline };
        if let Some(s) = standing {
            return Some(self.finish(id, p, true, Who::Standing(s), None, sensors.lsm.as_mut()).ev);
        }
        // Opening the program keeps agentmon waiting on the task's file system: within
        // its budget, counted against it (a server answering each open just under the
        // bound would otherwise hold the loop at every exec).
        if g.op == Op::Exec && !self.budget.allows(Instant::now()) {
            return self.stuck(n, g.name, Errno::ETIMEDOUT, Wait::Spent, answer, sensors, enr, judge);
        }
        let gate = self.id;
        if g.op == Op::Exec
            && let Err(e) = self.timed(|| freeze_program(sensors, gate, tgid, &p.call))
        {
            // Held while it could change, the approval would be of something else.
            return match e {
                Unfrozen::Stalled(crate::realpath::Error::Refused(e)) => {
                    self.stuck(n, g.name, e, Wait::Refused, answer, sensors, enr, judge)
                }
                Unfrozen::Stalled(_) => {
                    let what = Wait::Late("program, opened to freeze it, did not open", notify::MEM_WAIT);
                    self.stuck(n, g.name, Errno::ETIMEDOUT, what, answer, sensors, enr, judge)
                }
                Unfrozen::Other(e) => {
                    tracing::warn!("held exec of {path} refused: its program could not be frozen: {e}");
                    answer(Err(Errno::EPERM));
                    None
                }
            };
        }
        req.kind = Kind::ApprovalRequest;
        req.detail.insert("approval".into(), json!(id));
        req.detail.insert("operation".into(), json!(g.op.as_str()));
        req.detail.insert("timeout_s".into(), json!(self.timeout.as_secs()));
        if !vals.is_empty() {
            req.detail.insert("args".into(), json!(vals));
        }
        eprintln!(
            "agentmon: approval {id}: {}; `agentmon approve {id}` or `agentmon deny {id}` within {}s",
            wants(&bound.id, g.op, &req),
            self.timeout.as_secs()
        );
        self.pending.insert(id, p);
        Some(req)
    }

    /// Carries out a decision on pending request `id`; the event to record.
    fn finish(
        &mut self,
        id: String,
        p: Pending,
        approve: bool,
        who: Who,
        hold_for: Option<Duration>,
        lsm: Option<&mut LsmMaps>,
    ) -> Outcome {
        let fd = self.fd();
        let mut ev = p.request;
        ev.kind = Kind::Approval;
        ev.ts = crate::enrich::Clock::now().now_wall();
        ev.id = uuid::Uuid::now_v7();
        let decision = if !notify::valid(fd, p.notif) {
            Decision::Cancelled
        } else if approve {
            Decision::Approved
        } else if matches!(who, Who::Timeout) {
            Decision::Timeout
        } else {
            Decision::Denied
        };
        let mut carried = None;
        if decision != Decision::Cancelled {
            let exec = p.op == Op::Exec;
            let result = match (approve, exec) {
                (false, _) => Err(Errno::EPERM),
                (true, true) => {
                    let gate = self.id;
                    self.timed(|| approve_exec(lsm, gate, ev.tid, &p.call))
                }
                (true, false) => match self.perform(p.call, p.creds) {
                    Ok(r) => r,
                    // Said in the approval record's `result`; a late one may still
                    // take effect.
                    Err(worker::Stuck::Late) => Err(Errno::ETIMEDOUT),
                    Err(worker::Stuck::Refused(e)) => Err(e),
                    Err(worker::Stuck::Failed) => Err(Errno::EIO),
                },
            };
            carried = Some(result.map(|_| ()));
            ev.detail
                .insert("result".into(), json!(result.map(|_| "ok".to_string()).unwrap_or_else(errno_name)));
            // An approved exec goes on as the agent made it; the kernel checks the file.
            let sent = if exec && result.is_ok() {
                notify::proceed(fd, p.notif)
            } else {
                notify::respond(fd, p.notif, result)
            };
            if let Err(e) = sent {
                tracing::warn!("answering approval {id}: {e}");
            }
            self.decided.insert(
                ev.tid,
                Decided {
                    id: id.clone(),
                    decision,
                    kind: kind_of(p.op),
                    path: ev.path.clone(),
                    new_path: ev.new_path.clone(),
                },
            );
        }
        if approve && let Some(d) = hold_for {
            let under = ev
                .path
                .as_deref()
                .and_then(|p| p.rfind('/').map(|i| p[..=i].to_string()))
                .unwrap_or_default();
            self.standing.push(Standing {
                task: p.task.clone(),
                op: p.op,
                under,
                until: Instant::now() + d,
                id: id.clone(),
            });
            ev.detail.insert("for_s".into(), json!(d.as_secs()));
        }
        ev.detail.insert("approval".into(), json!(id));
        ev.detail.insert("decision".into(), json!(decision.as_str()));
        let by = match &who {
            Who::Operator { pid, uid, via, reason } => {
                // The person behind the uid, as this host knows them.
                let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(*uid)).ok().flatten();
                ev.detail
                    .insert("operator".into(), json!({"pid": pid, "uid": uid, "user": user.map(|u| u.name)}));
                if let Some(v) = via {
                    ev.detail.insert("via".into(), json!(v));
                }
                if let Some(r) = reason {
                    ev.detail.insert("operator_reason".into(), json!(r));
                }
                "operator".to_string()
            }
            Who::Standing(s) => {
                ev.detail.insert("standing".into(), json!(s));
                "standing".to_string()
            }
            Who::Timeout => "timeout".to_string(),
        };
        ev.detail.insert("by".into(), json!(by));
        Outcome { ev, decision, result: carried }
    }

    /// The tasks with calls held here.
    pub fn held_tasks(&self) -> impl Iterator<Item = Arc<str>> + '_ {
        self.pending.values().map(|p| p.task.clone())
    }

    /// Held calls waiting for an approver.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Whether request `id` is waiting here.
    pub fn holds(&self, id: &str) -> bool {
        self.pending.contains_key(id)
    }

    /// An approver's answer to request `id`.
    pub fn decide(
        &mut self,
        id: &str,
        approve: bool,
        who: Who,
        hold_for: Option<Duration>,
        lsm: Option<&mut LsmMaps>,
    ) -> (Option<Event>, Result<String, String>) {
        let Some(p) = self.pending.remove(id) else {
            return (None, Err(format!("{} pending approval {id}", crate::ctl::NOT_MINE)));
        };
        let out = self.finish(id.to_string(), p, approve, who, hold_for, lsm);
        let msg = match (out.decision, out.result) {
            (Decision::Cancelled, _) => {
                Err(format!("approval {id}: the process is no longer waiting (it exited or was killed)"))
            }
            (Decision::Approved, Some(Err(e))) => {
                Ok(format!("approval {id}: approved; the operation failed: {}", errno_name(e)))
            }
            (d, _) => Ok(format!("approval {id}: {}", d.as_str())),
        };
        (Some(out.ev), msg)
    }

    /// Times out overdue requests and drops those whose process stopped waiting.
    pub fn expire(&mut self) -> Vec<Event> {
        let now = Instant::now();
        let fd = self.fd();
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now || !notify::valid(fd, p.notif))
            .map(|(id, _)| id.clone())
            .collect();
        due.into_iter()
            .filter_map(|id| {
                let p = self.pending.remove(&id)?;
                Some(self.finish(id, p, false, Who::Timeout, None, None).ev)
            })
            .collect()
    }

    /// Marks the syscall event of a decided call: approval id and decision, and the
    /// path that was acted on (what the agent's memory says now may differ).
    pub fn annotate(&mut self, ev: &mut Event) {
        let Some(d) = self.decided.get(&ev.tid) else { return };
        if d.kind != ev.kind {
            return;
        }
        let Some(d) = self.decided.remove(&ev.tid) else { return };
        ev.detail.insert("approval".into(), json!(d.id));
        ev.detail.insert("decision".into(), json!(d.decision.as_str()));
        if d.kind == Kind::Exec && d.decision == Decision::Approved && ev.error.as_deref() == Some("EACCES") {
            // Approved, let go on, and refused in `bprm_check_security`: the file the
            // kernel resolved then was not the one approved (its name was swapped).
            ev.detail.insert("approved_path".into(), json!(d.path));
            ev.detail.insert("approval_mismatch".into(), json!(true));
            return;
        }
        if d.path.is_some() && ev.path != d.path {
            let was = std::mem::replace(&mut ev.path, d.path);
            ev.detail.insert("requested_path".into(), json!(was));
        }
        if d.new_path.is_some() && ev.new_path != d.new_path {
            let was = std::mem::replace(&mut ev.new_path, d.new_path);
            ev.detail.insert("requested_new_path".into(), json!(was));
        }
    }

    /// Pending requests, one line each, for `agentmon approvals`.
    pub fn list(&self) -> String {
        let now = Instant::now();
        self.pending
            .iter()
            .map(|(id, p)| {
                format!(
                    "{id}  {}  {}s left\n",
                    wants(&p.task, p.op, &p.request),
                    p.deadline.saturating_duration_since(now).as_secs()
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_calls_ids_are_unique_and_not_the_pid() {
        let (a, b) = (next_id(), next_id());
        assert_ne!(a, b);
        let (run, _) = a.rsplit_once('-').unwrap();
        assert_eq!(run.len(), 12, "{a}");
        assert!(u64::from_str_radix(run, 16).is_ok(), "{a}");
        assert_ne!(run, std::process::id().to_string());
        assert!(b.starts_with(run));
    }

    #[test]
    fn a_held_call_reads_as_what_it_is() {
        // A rename whose new name returns the cursor and erases the line, to redraw
        // it as a harmless request.
        let mut req = Event::new(crate::event::Kind::FileRename, crate::event::Timestamp(0), Arc::from("h"));
        req.pid = 7;
        req.comm = "agent\u{1b}[8m".into();
        req.path = Some("/w/.git".into());
        req.new_path = Some("/w/x\r\u{1b}[2Ktask t wants to rename /w/a.txt -> /w/b.txt".into());
        let line = wants("t", Op::Rename, &req);
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.starts_with("task t wants to rename /w/.git -> /w/x\\r\\u{1b}[2K"), "{line}");
        assert!(line.ends_with("(pid 7 agent\\u{1b}[8m)"), "{line}");
    }
}
