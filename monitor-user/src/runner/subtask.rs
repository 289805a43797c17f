//! Sub-tasks: a process inside a task asks (`agentmon exec --task` nested) for a
//! narrower task for its child ([`delegate`]); a restarted daemon binds the recorded
//! sub-tasks again ([`resume`]), after their parents. A sub-task shares its parent's
//! cgroup and events file, and has its own cookie, scope and LSM grants: were it
//! not resumed, its processes would be let go, or judged by the parent's wider scope.

use std::{path::Path, sync::Arc};

use crate::{
    realpath::Wait,
    task::scope::{Asker, Resolve},
};

use super::{engine::Engine, setup::Saved, tasks::mark_resumed};
use crate::{
    ctl::{self, Reply},
    event::Timestamp,
    judge::Bound,
    task::Task,
};

/// A delegation request: the caller (`peer`), the sub-task's manifest and the held
/// child `pid` to bind to it.
pub struct Ask {
    pub peer: u32,
    pub manifest: String,
    pub file: String,
    pub pid: u32,
    pub confined: bool,
}

/// Delegations whose host names are being looked up, off the loop: each is
/// answered when its lookups end ([`looked_up`]), its caller's connection kept
/// until then.
pub struct Waiting {
    next: u64,
    asks: std::collections::HashMap<u64, Parked>,
    tx: tokio::sync::mpsc::UnboundedSender<(u64, Looked)>,
    pub rx: tokio::sync::mpsc::UnboundedReceiver<(u64, Looked)>,
}

type Looked = Result<Vec<Vec<std::net::IpAddr>>, String>;

/// A delegation waiting: asked by a process of task `cookie` (under top-level task
/// `top`), for `names`, to be answered on `conn`.
struct Parked {
    ask: Ask,
    cookie: u32,
    top: Arc<str>,
    names: Vec<String>,
    conn: tokio::net::UnixStream,
}

/// Says the parent's scope changed during the lookups: a race, not an attempt.
const CHANGED: &str = "the parent task's scope changed while the names were looked up; ask again";

/// How long a delegation waits for its sub-task's host names by default.
pub const DELEGATION_LOOKUPS: std::time::Duration = std::time::Duration::from_secs(2);

/// Delegations waiting for lookups at once, in all and per top-level task (its
/// sub-tasks' with it): more are refused (each holds a thread while its names are
/// looked up).
const MAX_WAITING: usize = 16;
const MAX_WAITING_PER_TASK: usize = 2;

impl Default for Waiting {
    fn default() -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Self { next: 0, asks: Default::default(), tx, rx }
    }
}

/// Binds the caller's held child to the sub-task it asks for, or, when the
/// sub-task's host names must be looked up, starts the lookups and keeps the
/// connection (`stream` taken) to answer when they end. A process inside a task
/// that is refused (a wider scope, a bad manifest, a name taken) is a tamper
/// record: the agent asked for authority its task does not give. None: answered
/// later.
pub fn delegate(e: &mut Engine, ask: Ask, stream: &mut Option<tokio::net::UnixStream>) -> Option<Reply> {
    let Some(cookie) = e.sensors.task_of(ask.peer) else {
        return Some(Reply::err(format!("pid {} is not inside a task watched here", ask.peer)));
    };
    let mut asked = None;
    let r = delegate_from(e, cookie, &ask, |names| {
        asked = Some(names.to_vec());
        Err(String::new())
    });
    match (r, asked) {
        (Err(_), Some(names)) => match wait_for(e, ask, cookie, names, stream) {
            Ok(()) => None,
            Err((ask, why)) => Some(refused(e, &ask, cookie, why)),
        },
        (Ok(r), _) => Some(r),
        (Err(why), None) => Some(refused(e, &ask, cookie, why)),
    }
}

fn refused(e: &mut Engine, ask: &Ask, cookie: u32, why: String) -> Reply {
    e.tamper(ask.peer, Some(cookie), &format!("delegation ({})", ask.file), &why, true);
    Reply::err(why)
}

/// Starts the lookups of a delegation's `names` and keeps it, with its caller's
/// connection, until they end.
fn wait_for(
    e: &mut Engine,
    ask: Ask,
    cookie: u32,
    names: Vec<String>,
    stream: &mut Option<tokio::net::UnixStream>,
) -> Result<(), (Ask, String)> {
    let top: Arc<str> = match e.p.enr.task_name(cookie).and_then(|id| e.p.judge.task(&id)) {
        Some(b) => b.local_chain().last().unwrap_or(&b.id).clone(),
        None => return Err((ask, "the caller's task has no manifest here".into())),
    };
    let w = &mut e.delegations;
    let mine = w.asks.values().filter(|a| a.top == top).count();
    if w.asks.len() >= MAX_WAITING || mine >= MAX_WAITING_PER_TASK {
        let why = format!(
            "{}: its host names cannot be looked up now: {} delegations wait for lookups already",
            ask.file,
            if mine >= MAX_WAITING_PER_TASK { mine } else { w.asks.len() }
        );
        return Err((ask, why));
    }
    let Some(conn) = stream.take() else { return Err((ask, "no connection to answer on".into())) };
    let (id, tx, looked, limit) = (w.next, w.tx.clone(), names.clone(), e.setup.delegation_lookups);
    w.next += 1;
    let spawned = std::thread::Builder::new().name("agentmon-delegation-lookup".into()).spawn(move || {
        let _ = tx.send((id, crate::task::scope::resolve_within(&looked, limit, Asker::Agent)));
    });
    match spawned {
        Ok(_) => {
            w.asks.insert(id, Parked { ask, cookie, top, names, conn });
            Ok(())
        }
        Err(err) => Err((ask, format!("a lookup thread: {err}"))),
    }
}

/// The lookups of waiting delegation `id` ended: binds it (everything checked
/// again: the caller, its child and the parent may have changed meanwhile) and
/// answers its caller.
pub fn looked_up(e: &mut Engine, id: u64, got: Looked) {
    let Some(Parked { ask, cookie, names, conn, .. }) = e.delegations.asks.remove(&id) else { return };
    let reply = match e.sensors.task_of(ask.peer) {
        Some(c) if c == cookie => {
            let r = delegate_from(e, cookie, &ask, |now| {
                if now == names.as_slice() { got } else { Err(CHANGED.into()) }
            });
            match r {
                Ok(r) => r,
                Err(why) if why.ends_with(CHANGED) => Reply::err(why),
                Err(why) => refused(e, &ask, cookie, why),
            }
        }
        _ => Reply::err(format!("pid {} left its task while its names were looked up", ask.peer)),
    };
    ctl::reply_later(conn, reply);
}

fn delegate_from(
    e: &mut Engine,
    cookie: u32,
    ask: &Ask,
    lookup: impl FnOnce(&[String]) -> Result<Vec<Vec<std::net::IpAddr>>, String>,
) -> Result<Reply, String> {
    let Ask { peer, manifest, file, pid, confined } = ask;
    let (peer, file, pid, confined) = (*peer, file.as_str(), *pid, *confined);
    let p = &e.p;
    if ctl::ppid_of(pid) != Some(peer) || e.sensors.task_of(pid) != Some(cookie) {
        return Err(format!("pid {pid} is not a child of the caller in its task"));
    }
    let Some(parent) = p.enr.task_name(cookie).and_then(|id| p.judge.task(&id)).cloned() else {
        return Err("the caller's task has no manifest here; delegation needs a parent task".into());
    };
    // A killed task's processes are going: what they delegate now would be under a
    // cookie the kill does not cover.
    if p.contain.was_killed(&parent.id) {
        return Err(format!("task {} was killed: it delegates no more", parent.id));
    }
    // Its paths are the agent's choice: their file systems are waited for, bounded,
    // in its top-level task's share (however many sub-tasks it makes).
    let paths = Resolve::Within(Wait::task(p.enr.top(cookie), super::tasks::START_PATHS));
    let mut child = crate::task::parse_unresolved(manifest, Path::new(file), p.enr.clock().now_wall(), paths)
        .map_err(|err| err.to_string())?;
    // What refuses it whatever its names resolve to, before they are looked up.
    if p.judge.task(&child.id).is_some() || e.setup.state.as_ref().is_some_and(|st| st.has(&child.id)) {
        return Err(format!("{file}: a task called {} is already running here", child.id));
    }
    // Its command is held until the answer: one a restart would lose is refused now.
    if let Some(Err(why)) = e.setup.state.as_ref().map(|st| st.can_record(&child.id)) {
        return Err(format!("{file}: {why}"));
    }
    let enforce = child.enforce || parent.task.enforce;
    if enforce && !confined {
        return Err(format!(
            "{file}: the sub-task of enforced task {} must run confined by its own scope, and its command is \
             not ({} was cleared?)",
            parent.id,
            ctl::ENFORCED_ENV
        ));
    }
    // A sub-task's calls are held by the gate its root inherited: the parent's.
    let gated = |o: &crate::task::Op| !p.gates.is_empty() && parent.task.approval.contains(o);
    if enforce && let Some(op) = child.approval.iter().find(|o| !gated(o)) {
        return Err(format!(
            "{file}: approval_required: {} is not held by the parent task's approval gate, which sub-tasks \
             share; add it to the parent's approval_required",
            op.as_str()
        ));
    }
    child_hosts(&mut child, &parent.task, lookup).map_err(|why| format!("{file}: {why}"))?;
    if let Err(why) = parent.task.contains(&child) {
        return Err(format!("{file}: {why}"));
    }
    child.inherit(&parent.task);
    // Enforced by its parent too: the same refusal as a top-level start's.
    if let Some(why) = child.refused_expiry() {
        return Err(format!("{file}: on_expiry: {why}"));
    }
    let c = e.cookie();
    let chain = child.parents.clone();
    let sub = Sub { manifest, file, up: cookie, c, root: pid, ended: false };
    let id = bind(e, child, &sub, &[pid], None).map_err(|err| err.to_string())?;
    Ok(Reply { ok: true, task: Some(id.to_string()), chain, ..Default::default() })
}

/// Host names a delegated manifest may name.
const MAX_HOSTS: usize = 16;

/// Gives `child`'s host names their addresses. They are the agent's choice, and a
/// lookup is a message to whoever serves the name (data in a name leaves by DNS)
/// that blocks until answered: a name the parent allows by name takes the
/// parent's addresses, no lookup; a name only a parent's address range could
/// cover is looked up (`lookup`: bounded in count and time, off the loop); with no
/// range to cover it, none is made and the containment check refuses it.
fn child_hosts(
    child: &mut Task,
    parent: &Task,
    lookup: impl FnOnce(&[String]) -> Result<Vec<Vec<std::net::IpAddr>>, String>,
) -> Result<(), String> {
    use crate::task::scope::Endpoint;
    let names = child.connect.iter().filter(|e| matches!(e, Endpoint::Host { .. })).count();
    if names > MAX_HOSTS {
        return Err(format!("connect names {names} hosts; a sub-task may name at most {MAX_HOSTS}"));
    }
    let known = |n: &str| {
        parent.connect.iter().find_map(|p| match p {
            Endpoint::Host { name, addrs, .. } if name.eq_ignore_ascii_case(n) => Some(addrs.clone()),
            _ => None,
        })
    };
    let mut need = Vec::new();
    for ep in &mut child.connect {
        if let Endpoint::Host { name, addrs, .. } = ep {
            match known(name) {
                Some(a) => *addrs = a,
                None => need.push(name.clone()),
            }
        }
    }
    if need.is_empty() || !parent.connect.iter().any(|p| matches!(p, Endpoint::Net { .. })) {
        return Ok(());
    }
    let mut got = lookup(&need)?.into_iter();
    for ep in &mut child.connect {
        if let Endpoint::Host { name, addrs, .. } = ep
            && addrs.is_empty()
            && need.contains(name)
        {
            *addrs = got.next().unwrap_or_default();
        }
    }
    Ok(())
}

/// A sub-task being bound: its manifest, the parent's cookie `up`, its own `c` and
/// root, and whether its end was recorded (bound again, with no new `task_start`,
/// for the processes it left behind).
struct Sub<'a> {
    manifest: &'a str,
    file: &'a str,
    up: u32,
    c: u32,
    root: u32,
    ended: bool,
}

/// Binds `child` to `pids` (tracked under the parent's cookie, or under its own
/// when the kernel kept it): its LSM grants, tracking, attribution, containment and
/// the judge; then its `task_start` and its record. `resumed`: the gap and whether
/// the kernel observed it.
fn bind(
    e: &mut Engine,
    child: Task,
    s: &Sub,
    pids: &[u32],
    resumed: Option<(Option<(Timestamp, Timestamp)>, bool)>,
) -> Result<Arc<str>, super::RunError> {
    let parent = child.parents.first().cloned().unwrap_or_default();
    // What could not be given back to a resumed sub-task: reported once it is bound.
    let mut gaps = Vec::new();
    if child.enforce && e.setup.layers.lsm {
        // Its own scope (within the parent's, checked at delegation); its command must
        // be in its exec scope, as no launch files are granted to a sub-task.
        let lineage = (s.up, e.p.enr.top(s.up));
        let skipped =
            super::enroll::enroll_in(&mut e.sensors, &e.setup, s.c, &child, &[], lineage, resumed.is_some())?;
        gaps.extend(skipped);
    }
    let saved = Saved {
        id: child.id.clone(),
        manifest: s.manifest.into(),
        file: s.file.into(),
        root: s.root,
        enforce: child.enforce,
        events: None,
        events_file: None,
        scope: Some(super::resume::Paths::of(&child)),
        cgroup: None,
        origin_cgroup: None,
        expires: child.expires,
        ended: s.ended,
        launch: Vec::new(),
        cookie: Some(s.c),
        parent: Some(parent.clone()),
        keeper: None,
        granted: None,
    };
    for &pid in pids {
        match e.sensors.task_of(pid) {
            Some(t) if t == s.c => {}
            Some(_) => e.sensors.retag(pid, s.c)?,
            None => e.sensors.track(pid, s.c)?,
        }
    }
    let id: Arc<str> = Arc::from(child.id.as_str());
    let p = &mut e.p;
    p.enr.bind_sub(s.c, id.clone(), s.up);
    if resumed.is_some() {
        for &pid in pids {
            p.enr.procs.seed(pid, super::enroll::proc_of(pid, s.c));
        }
    }
    if s.ended {
        p.ended.insert(id.clone());
    } else {
        p.ended.remove(&id);
    }
    p.contain.register_sub(id.clone(), s.c, Arc::from(parent.as_str()), child.enforce);
    p.judge.bind(Bound::new(Arc::new(child), s.root));
    if !s.ended
        && let Some(mut ev) = p.task_started(&id)
    {
        if let Some((gap, observed)) = resumed {
            mark_resumed(&mut ev, gap, observed);
        }
        e.record(&ev);
    }
    for why in gaps {
        e.tamper(s.root, Some(s.c), "scope paths", &why, false);
    }
    // (A delegation was refused before anything if it could not be recorded; this
    // is one resumed, or a disk filled meanwhile: said, as a gap.)
    if let Some(Err(why)) = e.setup.state.as_ref().map(|st| st.record(&saved)) {
        e.tamper(s.root, Some(s.c), "task record", &why, false);
    }
    Ok(id)
}

/// Binds the recorded sub-tasks again, each after the task it was delegated from
/// (`records`: the state directory's, read once). With the maps taken over, a
/// sub-task's processes are those the kernel kept under its cookie; otherwise its
/// root and the root's descendants among its parent's processes (a sub-task's
/// orphan is then found only as its parent's: docs/daemon.md). Returns the ids
/// resumed (not those ended, bound again for what they left behind).
pub fn resume(e: &mut Engine, records: Vec<Saved>, gap: Option<(Timestamp, Timestamp)>) -> Vec<String> {
    let mut done = Vec::new();
    let mut waiting: Vec<Saved> = records.into_iter().filter(|s| s.parent.is_some()).collect();
    // Parents first, at any depth: a pass binds those whose parent is bound now.
    loop {
        let (ready, later): (Vec<Saved>, Vec<Saved>) = waiting
            .into_iter()
            .partition(|s| s.parent.as_deref().is_some_and(|p| e.p.contain.cookie(p).is_some()));
        waiting = later;
        if ready.is_empty() {
            break;
        }
        for s in ready {
            match resume_one(e, &s, gap) {
                Ok(Some(id)) if s.ended => {
                    tracing::warn!("sub-task {id} had ended; the processes it left behind stay bound to it")
                }
                Ok(Some(id)) => done.push(id.to_string()),
                Ok(None) => {
                    if let Some(st) = &e.setup.state {
                        st.drop_saved(&s.id);
                    }
                }
                Err(err) => tracing::error!("resuming sub-task {}: {err}", s.id),
            }
        }
    }
    let tracked = e.sensors.tracked();
    for s in waiting {
        // Its parent was not resumed: with processes the kernel keeps under its cookie
        // it keeps that hold (see `drop_unclaimed`); with none, nothing is left of it.
        if s.cookie.is_some_and(|c| tracked.iter().any(|(_, t)| *t == c)) {
            tracing::warn!("sub-task {}: its parent {:?} was not resumed", s.id, s.parent);
        } else if let Some(st) = &e.setup.state {
            st.drop_saved(&s.id);
        }
    }
    done
}

fn resume_one(
    e: &mut Engine,
    s: &Saved,
    gap: Option<(Timestamp, Timestamp)>,
) -> Result<Option<Arc<str>>, String> {
    let parent_id = s.parent.as_deref().unwrap_or_default();
    let up = e.p.contain.cookie(parent_id).ok_or("no parent")?;
    let parent =
        e.p.judge.task(parent_id).map(|b| b.task.clone()).ok_or("its parent has no manifest here")?;
    let kept = s.cookie.filter(|_| e.sensors.taken_over());
    let pids: Vec<u32> = match kept {
        Some(c) => e.sensors.tracked().into_iter().filter(|(_, t)| *t == c).map(|(p, _)| p).collect(),
        // Its root is gone: a process with that pid now is another one.
        None if s.ended => Vec::new(),
        None => {
            super::enroll::tree(s.root).into_iter().filter(|p| e.sensors.task_of(*p) == Some(up)).collect()
        }
    };
    if pids.is_empty() && (kept.is_none() || s.ended) {
        // Ended while no daemon ran, unobserved; or ended before, and nothing left.
        return Ok(None);
    }
    let now = e.p.enr.clock().now_wall();
    // Held to the scope recorded at delegation: a path not answered now is kept.
    let paths = Wait::task(e.p.enr.top(up), super::tasks::START_PATHS);
    let mut child =
        crate::task::parse_unresolved(&s.manifest, Path::new(&s.file), now, Resolve::Lenient(paths))
            .map_err(|err| err.to_string())?;
    // Accepted at delegation: a lookup that fails now (no DNS at boot) leaves the
    // name with no address rather than the sub-task unbound.
    let limit = e.setup.delegation_lookups;
    child_hosts(&mut child, &parent, |names| {
        Ok(crate::task::scope::resolve_within(names, limit, Asker::Agent).unwrap_or_else(|why| {
            tracing::warn!("sub-task {}: {why}; its host names allow no address until it ends", s.id);
            vec![Vec::new(); names.len()]
        }))
    })?;
    child.inherit(&parent);
    child.enforce |= s.enforce;
    child.expires = s.expires;
    let moved = super::resume::restore(&mut child, s.scope.as_ref());
    let c = kept.unwrap_or_else(|| e.cookie());
    let sub = Sub { manifest: &s.manifest, file: &s.file, up, c, root: s.root, ended: s.ended };
    let id = bind(e, child, &sub, &pids, Some((gap, kept.is_some()))).map_err(|err| err.to_string())?;
    if let Some(why) = moved {
        e.tamper(s.root, Some(c), "scope paths", &why, false);
    }
    Ok(Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(yaml: &str) -> Task {
        crate::task::parse_unresolved(yaml, Path::new("t.yaml"), Timestamp(0), Resolve::Here).unwrap()
    }

    fn none(_: &[String]) -> Result<Vec<Vec<std::net::IpAddr>>, String> {
        panic!("no lookup may be made here")
    }

    #[test]
    fn a_sub_tasks_host_names_are_looked_up_only_when_a_range_must_cover_them() {
        let mut parent = task("id: p\nmode: execute\nscope:\n  connect: [\"api.example.com:443\"]\n");
        if let crate::task::scope::Endpoint::Host { addrs, .. } = &mut parent.connect[0] {
            addrs.push("192.0.2.7".parse().unwrap());
        }
        // Allowed by name: the parent's addresses, no lookup.
        let mut child = task("id: c\nmode: execute\nscope:\n  connect: [\"API.example.com:443\"]\n");
        child_hosts(&mut child, &parent, none).unwrap();
        assert!(child.connect[0].allows_ip("192.0.2.7".parse().unwrap(), 443));
        assert!(parent.contains(&child).is_ok());
        // A name the parent does not allow, and no range that could: no lookup (the
        // name would carry data to whoever serves it), refused by containment.
        let mut child = task("id: c\nmode: execute\nscope:\n  connect: [\"s3cr3t.attacker.example:1\"]\n");
        child_hosts(&mut child, &parent, none).unwrap();
        assert!(parent.contains(&child).is_err());
        // Too many names.
        let many: Vec<String> = (0..17).map(|i| format!("\"h{i}.example:1\"")).collect();
        let mut child = task(&format!("id: c\nmode: execute\nscope:\n  connect: [{}]\n", many.join(", ")));
        assert!(child_hosts(&mut child, &parent, none).unwrap_err().contains("at most 16"));
        // Under a range, looked up (once, all names together) and checked.
        let parent = task("id: p\nmode: execute\nscope:\n  connect: [\"10.0.0.0/8:443\"]\n");
        let mut child = task("id: c\nmode: execute\nscope:\n  connect: [\"db.internal:443\"]\n");
        child_hosts(&mut child, &parent, |n| {
            assert_eq!(n, ["db.internal".to_string()]);
            Ok(vec![vec!["10.1.2.3".parse().unwrap()]])
        })
        .unwrap();
        assert!(parent.contains(&child).is_ok());
        let mut child = task("id: c\nmode: execute\nscope:\n  connect: [\"db.internal:443\"]\n");
        let e =
            child_hosts(&mut child, &parent, |_| Err("host db.internal did not resolve within 2s".into()));
        assert!(e.unwrap_err().contains("did not resolve"));
    }
}
