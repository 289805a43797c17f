//! Answers requests on the control socket: delegation and steps from inside a
//! task, everything else from an operator outside every task.

use super::{
    callers::{Caller, Incoming, Noise},
    engine::Engine,
    keeper::Keeper,
    subtask,
    tasks::{self, StartReq},
};
use crate::{
    contain::{Act, By},
    ctl::{self, Reply, Request, StepPhase},
    event::Step,
    gate::Who,
    noise::Caller as Refusing,
};

/// Answers a request read by [`super::callers::Reader`], and sends the answer (in a
/// task of its own). `noise` bounds what callers without rights can make agentmon
/// write.
pub fn answer(inc: Incoming, e: &mut Engine, noise: &mut Noise) {
    let Incoming { stream, caller, req, writers, fds, mailbox } = inc;
    // Taken by a request answered later (a delegation waiting for lookups).
    let mut stream = Some(stream);
    let reply = match (mailbox, &req) {
        (Some(mc), Ok(r)) => match from_mailbox(mc, &caller, r, e) {
            Ok(()) => serve(&caller, &writers, req, fds, e, noise, &mut stream),
            Err(why) => {
                if let Some(held) = noise.allow(Refusing::Task(mc)) {
                    let said = with_held(&why, held);
                    e.tamper(caller.pid, Some(mc), &format!("mailbox request {}", r.op_name()), &said, true);
                }
                Some(Reply::err(why))
            }
        },
        _ => serve(&caller, &writers, req, fds, e, noise, &mut stream),
    };
    if let (Some(reply), Some(stream)) = (reply, stream) {
        ctl::reply_later(stream, reply);
    }
}

/// A task's mailbox carries only its own processes' delegations and steps: the
/// writer's credentials there are the kernel's unless a root agent forged them
/// (CAP_SYS_ADMIN may), so they never carry more than the task's own rights.
fn from_mailbox(mc: u32, caller: &Caller, req: &Request, e: &Engine) -> Result<(), String> {
    if !matches!(req, Request::Delegate { .. } | Request::Step { .. } | Request::Prompt { .. }) {
        return Err(format!(
            "{} refused: a task's mailbox carries only delegations, steps and prompts",
            req.op_name()
        ));
    }
    let top = e.p.enr.task_name(mc).ok_or("the mailbox's task is gone")?;
    let inside = e.sensors.task_of(caller.pid).is_some_and(|c| e.p.contain.cookies_under(&top).contains(&c));
    if !inside {
        return Err(format!(
            "{} refused: pid {} is not a process of task {top}, whose mailbox it wrote to",
            req.op_name(),
            caller.pid
        ));
    }
    Ok(())
}

/// Answers one control request (None: later, on `stream`, which it took).
fn serve(
    caller: &Caller,
    writers: &[u32],
    req: Result<Request, String>,
    fds: Vec<std::os::fd::OwnedFd>,
    e: &mut Engine,
    noise: &mut Noise,
    stream: &mut Option<tokio::net::UnixStream>,
) -> Option<Reply> {
    if let Ok(Request::Delegate { manifest, file, pid, confined }) = req {
        return match not_its_writers(caller, writers, "delegate", e, noise) {
            None => {
                subtask::delegate(e, subtask::Ask { peer: caller.pid, manifest, file, pid, confined }, stream)
            }
            refused => refused,
        };
    }
    Some(serve_now(caller, writers, req, fds, e, noise, stream))
}

/// The refusal (recorded) of a request written by someone other than its connector.
fn not_its_writers(
    caller: &Caller,
    writers: &[u32],
    what: &str,
    e: &mut Engine,
    noise: &mut Noise,
) -> Option<Reply> {
    let uid = caller.uid;
    if let Err(why) = caller.speaks_for(writers) {
        let (actor, its) = caller.actor(writers, &e.sensors);
        if let Some(held) = noise.allow(its.map_or(Refusing::User(uid), Refusing::Task)) {
            let said = with_held(&why, held);
            e.tamper(actor, its.filter(|c| *c != 0), &format!("control request {what}"), &said, true);
        }
        return Some(Reply::err(format!("{what} refused: {why}")));
    }
    None
}

/// Answers one request now, or (a kill with processes left) takes `stream` to
/// answer when the kill is over.
fn serve_now(
    caller: &Caller,
    writers: &[u32],
    req: Result<Request, String>,
    mut fds: Vec<std::os::fd::OwnedFd>,
    e: &mut Engine,
    noise: &mut Noise,
    stream: &mut Option<tokio::net::UnixStream>,
) -> Reply {
    let (peer, uid) = (caller.pid, caller.uid);
    let req = match req {
        Ok(r) => r,
        Err(err) => {
            if let Some(held) = noise.allow(Refusing::User(uid)) {
                tracing::warn!("control request from pid {peer} (uid {uid}) rejected: {err} (+{held} more)");
            }
            return Reply::err(err);
        }
    };
    let what = req.op_name();
    let task = caller.task_now(&e.sensors);
    if let Some(r) = not_its_writers(caller, writers, what, e, noise) {
        return r;
    }
    if let Request::Step { phase, task, tool, call_id, traceparent } = req {
        let st = Step { tool, call_id, trace_id: None, span_id: None };
        return step(e, noise, caller, phase, task, st, traceparent);
    }
    if let Request::Prompt { task, text, cut } = req {
        return prompt(e, noise, caller, task, &text, cut);
    }
    // Everything else is for operators: never a process inside a task.
    if let Some(c) = task {
        if let Some(held) = noise.allow(Refusing::Task(c)) {
            let why = format!("only operators outside every task may ask this (+{held} more refused)");
            e.tamper(peer, Some(c).filter(|c| *c != 0), &format!("control request {what}"), &why, true);
        }
        return Reply::err(format!("{what} refused: the caller is inside a watched task"));
    }
    if uid != 0 && uid != nix::unistd::geteuid().as_raw() {
        if let Some(held) = noise.allow(Refusing::User(uid)) {
            let why = format!("uid {uid} is neither root nor agentmon's user (+{held} more refused)");
            e.tamper(peer, None, &format!("control request {what}"), &why, true);
        }
        return Reply::err(format!("{what} refused: uid {uid} may not control agentmon's tasks"));
    }
    let (task, act, via) = match req {
        Request::Delegate { .. } | Request::Step { .. } | Request::Prompt { .. } => {
            unreachable!("handled above")
        }
        Request::Start {
            manifest,
            file,
            pid,
            enforce,
            events,
            grant,
            launch,
            lsm,
            kept_mailbox,
            closed_fds,
            prepared,
        } => {
            let launch = launch.into_iter().map(std::path::PathBuf::from).collect();
            // The registering exec keeps copies of the task's descriptors for a
            // restarted daemon (the mailbox now, the gate once it is handed over).
            let keeper = kept_mailbox.map(|fd| Keeper {
                pid: peer,
                start: caller.start,
                mailbox: Some(fd),
                gate: None,
            });
            let r = tasks::start(
                e,
                peer,
                StartReq {
                    manifest,
                    file,
                    pid,
                    enforce,
                    events,
                    attach: false,
                    grant,
                    launch,
                    lsm: Some(lsm),
                    keeper,
                    closed_fds,
                    asker: caller.uid,
                    prepared: prepared.map(|c| (c, (peer, caller.start))),
                },
            );
            // The task's control mailbox, sent with the request.
            if r.ok
                && let Some(fd) = fds.pop()
            {
                let cookie = r.task.as_deref().and_then(|t| e.p.contain.cookie(t)).unwrap_or(0);
                match super::callers::Mailbox::new(fd, cookie) {
                    Ok(m) => e.mailboxes.push(m),
                    Err(err) => tracing::warn!("task {:?}: its control mailbox: {err}", r.task),
                }
            }
            return r;
        }
        Request::End { task, kill } => return end(e, &task, kill, peer, uid, stream),
        Request::Gate { task, kept } => {
            let (true, Some(fd)) = (e.setup.state.is_some(), fds.pop()) else {
                return Reply::err("gate: a daemon takes a task's approval listener, sent with the request");
            };
            if e.p.judge.task(&task).is_none() {
                return Reply::err(format!("{} task called {task}", ctl::NOT_MINE));
            }
            // Offered again by its exec (no answer came: a stop, a slow daemon) when
            // this daemon already reads it (taken then, or back from the exec at a
            // resume): a second reader of one listener would answer calls twice. A
            // gate the resume could not take back is taken now.
            let key: (std::sync::Arc<str>, u32) = (task.as_str().into(), peer);
            if e.gated.contains(&key) {
                return Reply { ok: true, task: Some(task), ..Default::default() };
            }
            return match crate::gate::Gate::new(fd, e.setup.approval_timeout) {
                Ok(g) => {
                    e.p.gates.push(g);
                    e.gated.insert(key);
                    if let (Some(st), Some(kept)) = (&e.setup.state, kept) {
                        st.update(&task, |s| match s.keeper.as_mut().filter(|k| k.pid == peer) {
                            Some(k) => {
                                k.gate = Some(kept);
                                true
                            }
                            None => false,
                        });
                    }
                    Reply { ok: true, task: Some(task), ..Default::default() }
                }
                Err(e) => Reply::err(format!("gate: {e}")),
            };
        }
        Request::Attach { manifest, file, pid, events, grant } => {
            return tasks::start(
                e,
                peer,
                StartReq {
                    manifest,
                    file,
                    pid,
                    enforce: false,
                    events,
                    attach: true,
                    grant,
                    launch: Vec::new(),
                    lsm: None,
                    keeper: None,
                    closed_fds: Vec::new(),
                    asker: caller.uid,
                    prepared: None,
                },
            );
        }
        Request::Prepare {} => {
            return match e.prepare((peer, caller.start)) {
                Ok(p) => Reply { ok: true, prepared: Some(p), ..Default::default() },
                Err(why) => Reply::err(format!("prepare: {why}")),
            };
        }
        Request::Kill { task, via } => (task, Act::Kill, via),
        Request::Freeze { task, via } => (task, Act::Freeze, via),
        Request::Thaw { task, via } => (task, Act::Thaw, via),
        Request::Approve { id, for_s, via, reason } => {
            // The CLI bounds it; a raw or remote request must not overflow the clock.
            let longest = crate::task::manifest::MAX_LIFETIME.as_secs();
            if for_s.is_some_and(|s| s > longest) {
                return Reply::err(format!("approve: for_s is over {longest} (366 days)"));
            }
            let who = Who::Operator { pid: peer, uid, via, reason };
            return approval(e, &id, true, who, for_s.map(std::time::Duration::from_secs));
        }
        Request::Deny { id, via, reason } => {
            return approval(e, &id, false, Who::Operator { pid: peer, uid, via, reason }, None);
        }
        Request::Status {} => {
            let tracked = e.sensors.tracked();
            let data = serde_json::json!({
                "pid": std::process::id(),
                "host": e.p.enr.host(),
                "tasks": e.p.contain.status(&tracked),
                "approvals": e.p.gates.iter().map(|g| g.list()).collect::<String>(),
            });
            return Reply { ok: true, data: Some(data), ..Default::default() };
        }
        Request::Approvals {} => {
            let list = e.p.gates.iter().map(|g| g.list()).collect::<String>();
            return Reply { ok: true, message: Some(list), ..Default::default() };
        }
    };
    let (host, now) = (e.p.enr.host(), e.p.enr.clock().now_wall());
    let out = e.p.contain.act(
        &mut e.sensors,
        &task,
        act,
        By::Operator { pid: peer, uid, via: via.as_deref() },
        host,
        now,
    );
    if let Some(ev) = &out.event {
        e.out.send(ev);
        e.out.flush();
    }
    if out.pending
        && let Some(s) = stream.take()
    {
        e.after_kill.push(AfterKill { task: task.as_str().into(), stream: s, end: None });
    }
    match out.result {
        Ok(msg) => Reply { ok: true, task: Some(task), message: Some(msg), ..Default::default() },
        Err(e) => Reply { task: Some(task), ..Reply::err(e) },
    }
}

/// An operator waiting for a kill with processes left: answered when it is over,
/// and the task then ended if they asked (`end`: their pid and uid).
pub struct AfterKill {
    task: std::sync::Arc<str>,
    stream: tokio::net::UnixStream,
    end: Option<(u32, u32)>,
}

/// Sweeps the kills under way; records those now late and answers whoever waits
/// for those over.
pub fn settle_kills(e: &mut Engine) {
    if !e.p.contain.dying() {
        return;
    }
    let (host, now) = (e.host(), e.p.enr.clock().now_wall());
    let done = e.p.contain.settle_kills(&e.sensors, host, now);
    kills_over(e, done);
}

/// Records the late kills of `done` and answers whoever waits for them.
pub fn kills_over(e: &mut Engine, done: Vec<crate::contain::Killed>) {
    for k in done {
        if let Some(ev) = &k.event {
            e.out.send(ev);
        }
        let (waiting, rest) = std::mem::take(&mut e.after_kill).into_iter().partition(|w| w.task == k.id);
        e.after_kill = rest;
        for w in waiting {
            let task = Some(k.id.to_string());
            let reply = match (&k.result, w.end) {
                (Ok(_), Some((peer, uid))) => ended(e, &k.id, peer, uid),
                (Ok(msg), None) => Reply { ok: true, task, message: Some(msg.clone()), ..Default::default() },
                (Err(err), _) => Reply { task, ..Reply::err(err.clone()) },
            };
            ctl::reply_later(w.stream, reply);
        }
    }
    e.out.flush();
}

/// An approver's decision on a held call.
fn approval(
    e: &mut Engine,
    id: &str,
    approve: bool,
    who: Who,
    hold_for: Option<std::time::Duration>,
) -> Reply {
    let Some(g) = e.p.gates.iter_mut().find(|g| g.holds(id)) else {
        return Reply::err(format!("{} pending approval {id}", ctl::NOT_MINE));
    };
    let (ev, result) = g.decide(id, approve, who, hold_for, e.sensors.lsm.as_mut());
    if let Some(ev) = &ev {
        e.out.send(ev);
        e.out.flush();
    }
    match result {
        Ok(msg) => Reply { ok: true, message: Some(msg), ..Default::default() },
        Err(e) => Reply::err(e),
    }
}

/// A step begins or ends. A process inside a task may only annotate its own task
/// (or the sub-tasks delegated from it); an operator outside, any task. A refusal
/// of a caller in a task is a `tamper` record ([`refused_note`]).
fn step(
    e: &mut Engine,
    noise: &mut Noise,
    caller: &Caller,
    phase: StepPhase,
    task: Option<String>,
    mut st: Step,
    traceparent: Option<String>,
) -> Reply {
    let task = match annotated(e, caller, task, "step") {
        Ok(t) => t,
        Err(why) => return refused_note(e, noise, caller, "step", why),
    };
    if st.tool.is_empty() || st.call_id.is_empty() || st.tool.len() > 256 || st.call_id.len() > 256 {
        return refused_note(
            e,
            noise,
            caller,
            "step",
            "step: tool and call_id must be 1 to 256 bytes".into(),
        );
    }
    if let Some(tp) = traceparent {
        match Step::parse_traceparent(&tp) {
            Ok((t, s)) => (st.trace_id, st.span_id) = (Some(t), Some(s)),
            Err(err) => return refused_note(e, noise, caller, "step", format!("step: {err}")),
        }
    }
    match e.p.step(&task, phase, st) {
        Ok(ev) => {
            e.record(&ev);
            Reply { ok: true, task: Some(task), ..Default::default() }
        }
        Err(err) => refused_note(e, noise, caller, "step", err.to_string()),
    }
}

/// The refusal of a step or prompt: said to the caller, and, when the caller is in
/// a task (the agent), recorded as a `tamper` record of it, a few per task at most.
/// A caller outside every task is only answered: a hook of a session no agentmon
/// watches asks every agentmon on the host, and all but one say "not here".
fn refused_note(e: &mut Engine, noise: &mut Noise, caller: &Caller, what: &str, why: String) -> Reply {
    if let Some(c) = caller.task_now(&e.sensors)
        && let Some(held) = noise.allow(Refusing::Task(c))
    {
        e.tamper(caller.pid, Some(c).filter(|c| *c != 0), what, &with_held(&why, held), true);
    }
    Reply::err(why)
}

/// A refusal's reason, with how many like it the rate limit held back before it.
fn with_held(why: &str, held: u64) -> String {
    if held > 0 { format!("{why} (+{held} more refused)") } else { why.to_string() }
}

/// The task a step or prompt annotates: the one named, if the caller is inside it
/// (or a task delegated from it) or an operator outside every task; else the
/// caller's own.
fn annotated(e: &Engine, caller: &Caller, task: Option<String>, what: &str) -> Result<String, String> {
    let uid = caller.uid;
    let now = caller.task_now(&e.sensors);
    // Untracked in a task's cgroup (past max_tracked): the task's, and no operator.
    if now == Some(0) {
        return Err(format!("{what} refused: pid {} is in a task's cgroup, untracked", caller.pid));
    }
    let own = now.and_then(|c| e.p.enr.task_name(c));
    let Some(task) = task.or_else(|| own.as_ref().map(|t| t.to_string())) else {
        return Err(format!("{what}: which task? (--task, or call from inside a task)"));
    };
    match &own {
        Some(o) => {
            let within =
                e.p.judge.task(&task).is_some_and(|b| b.id == *o || b.local_chain().iter().any(|p| p == o));
            if !within {
                return Err(format!("{what} refused: the caller is in task {o}, not {task}"));
            }
        }
        None if uid != 0 && uid != nix::unistd::geteuid().as_raw() => {
            return Err(format!("{what} refused: uid {uid} may not annotate agentmon's tasks"));
        }
        None => {}
    }
    Ok(task)
}

/// `prompt`: the record of the prompt a task's next steps serve.
fn prompt(
    e: &mut Engine,
    noise: &mut Noise,
    caller: &Caller,
    task: Option<String>,
    text: &str,
    cut: Option<u64>,
) -> Reply {
    let task = match annotated(e, caller, task, "prompt") {
        Ok(t) => t,
        Err(why) => return refused_note(e, noise, caller, "prompt", why),
    };
    if text.len() > crate::prompt::MAX_PROMPT_BYTES || cut.is_some_and(|c| c <= text.len() as u64) {
        let why = format!(
            "prompt: at most {} bytes of text, and a whole length beyond it when cut",
            crate::prompt::MAX_PROMPT_BYTES
        );
        return refused_note(e, noise, caller, "prompt", why);
    }
    match e.p.prompt(&task, text, cut, &e.setup.prompts) {
        Ok(ev) => {
            e.record(&ev);
            Reply { ok: true, task: Some(task), ..Default::default() }
        }
        Err(err) => refused_note(e, noise, caller, "prompt", err.to_string()),
    }
}

/// Ends a task at an operator's request (killing it first if asked: ended when the
/// kill is over, answered on `stream` then).
fn end(
    e: &mut Engine,
    task: &str,
    kill: bool,
    peer: u32,
    uid: u32,
    stream: &mut Option<tokio::net::UnixStream>,
) -> Reply {
    let Some(id) = e.p.task_ids().into_iter().find(|t| &**t == task) else {
        return Reply::err(format!("{} task called {task}", ctl::NOT_MINE));
    };
    if kill {
        let (host, now) = (e.p.enr.host(), e.p.enr.clock().now_wall());
        let out = e.p.contain.act(
            &mut e.sensors,
            &id,
            Act::Kill,
            By::Operator { pid: peer, uid, via: None },
            host,
            now,
        );
        if let Some(ev) = &out.event {
            e.out.send(ev);
        }
        if let Err(err) = out.result {
            return Reply { task: Some(id.to_string()), ..Reply::err(err) };
        }
        if out.pending
            && let Some(s) = stream.take()
        {
            e.out.flush();
            e.after_kill.push(AfterKill { task: id, stream: s, end: Some((peer, uid)) });
            return Reply::default();
        }
    }
    ended(e, &id, peer, uid)
}

/// The task's end at an operator's request.
fn ended(e: &mut Engine, id: &std::sync::Arc<str>, peer: u32, uid: u32) -> Reply {
    match e.p.task_ended(id, &format!("ended by an operator (pid {peer}, uid {uid})")) {
        Some(ev) => {
            e.p.unsaid_of(&mut e.out, id, ev.ts);
            e.out.send(&ev);
            e.out.flush();
            Reply {
                ok: true,
                task: Some(id.to_string()),
                message: Some(format!("task {id} ended")),
                ..Default::default()
            }
        }
        None => Reply {
            ok: true,
            task: Some(id.to_string()),
            message: Some(format!("task {id} had already ended")),
            ..Default::default()
        },
    }
}
