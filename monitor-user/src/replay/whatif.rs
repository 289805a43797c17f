//! What-if: every recorded event judged again under another policy (a rules
//! directory, optionally a task manifest), and what would have been different.
//!
//! The events are judged in time order with the state the live judge keeps rebuilt as
//! it goes: a process table filled from the recorded fork/exec/exit events (for rules
//! on the parent's executable or on the task's root) and the rate windows. Only the
//! task of `--task-file` is judged by a scope; for every other task the scope's
//! recorded judgement stands (see [`standin`]): from the event's alert, which lists
//! every reason, or, without one, from the event when no rule decided it (an event a
//! rule decided and that has no alert counts as in scope).

use std::{borrow::Cow, collections::HashMap, io::Write, path::Path, sync::Arc};

use anyhow::{Context, anyhow};
use serde::Serialize;

use super::{Filter, Recording, ReplayFormat, render, standin, tree};
use crate::{
    event::{Dst, Event, Kind},
    judge::{Bound, Judge},
    policy::{RuleSet, VerdictKind},
    proctable::{ProcKey, ProcTable},
    task::Task,
};

/// The policy to judge the recording by.
pub struct Policy {
    pub rules: RuleSet,
    pub task: Option<Task>,
}

pub fn load_rules(dir: &Path) -> anyhow::Result<RuleSet> {
    RuleSet::load_dir(dir).map_err(|errs| {
        let list: Vec<String> = errs.iter().map(ToString::to_string).collect();
        anyhow!("--rules {}: {}", dir.display(), list.join("; "))
    })
}

/// Loads the manifest for the what-if. Its `expires_in` counts from the task's first
/// recorded event (when the live run parsed it). With `--task ID` naming another
/// task, the manifest judges that task's events.
pub fn load_task(file: &Path, events: &[Event], only: Option<&str>) -> anyhow::Result<Task> {
    let text = std::fs::read_to_string(file).with_context(|| format!("--task-file {}", file.display()))?;
    let first = |id: &str| events.iter().find(|e| e.task.as_deref() == Some(id)).map(|e| e.ts);
    let anchor = events.first().map(|e| e.ts).unwrap_or_else(super::wall_now);
    let mut t = crate::task::parse(&text, file, anchor)?;
    let id = only.unwrap_or(&t.id).to_string();
    if let Some(at) = first(&id) {
        t = crate::task::parse(&text, file, at)?;
    }
    if t.id != id {
        eprintln!(
            "agentmon replay: judging the events of task {id} by the manifest {} (id {})",
            file.display(),
            t.id
        );
        t.id = id;
    } else if first(&id).is_none() {
        eprintln!("agentmon replay: warning: no recorded event belongs to task {id} of {}", file.display());
    }
    Ok(t)
}

/// The policy fields of an event, as compared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Judged {
    pub verdict: String,
    pub action: String,
    pub rule: Option<String>,
    pub reason: Option<String>,
}

impl Judged {
    /// An event nothing judged counts as in scope with no action.
    pub fn of(e: &Event) -> Self {
        Self {
            verdict: e.verdict.as_deref().unwrap_or("in_scope").into(),
            action: e.action.as_deref().unwrap_or("none").into(),
            rule: e.rule.clone(),
            reason: e.reason.clone(),
        }
    }

    /// Would it be alerted on: not in scope, or a rule matched.
    pub fn flagged(&self) -> bool {
        self.verdict != "in_scope" || self.rule.is_some()
    }

    fn same(&self, o: &Judged) -> bool {
        (&self.verdict, &self.action, &self.rule) == (&o.verdict, &o.action, &o.rule)
    }

    pub fn text(&self) -> String {
        let rule = self.rule.as_ref().map(|r| format!(" ({r})")).unwrap_or_default();
        format!("{}/{}{rule}", self.verdict, self.action)
    }
}

/// Kinds the judge leaves alone (agentmon's own records and the gate's): not compared.
fn judged_kind(k: Kind) -> bool {
    !k.is_own_record()
}

fn rank(v: &str) -> VerdictKind {
    serde_json::from_value(serde_json::Value::String(v.into())).unwrap_or(VerdictKind::InScope)
}

/// agentmon's own control socket (`.../exec-<pid>.sock`): tasks reach it to delegate.
fn is_control_socket(p: &str) -> bool {
    let name = p.rsplit('/').next().unwrap_or(p);
    name.strip_prefix("exec-")
        .and_then(|r| r.strip_suffix(".sock"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The process table as the live enricher had it when `e` was judged.
fn track(procs: &mut ProcTable, e: &Event) {
    if matches!(e.kind, Kind::Loss | Kind::Action | Kind::TaskStart | Kind::TaskEnd | Kind::Step) {
        return;
    }
    let key = ProcKey { tgid: e.pid, start_ns: e.start.unwrap_or(0) };
    match e.kind {
        Kind::Fork => {
            if let Some(pp) = e.ppid {
                // The fork event names the parent by pid only; its comm and exe are
                // the parent's.
                let pk = procs.live_key(pp).unwrap_or(ProcKey { tgid: pp, start_ns: 0 });
                let p = procs.ensure(pk, &e.comm, 0);
                if p.exe.is_none() {
                    p.exe = e.exe.clone();
                }
                procs.fork(pk, key);
            } else {
                procs.ensure(key, &e.comm, 0);
            }
        }
        _ => {
            let parent = e.ppid.and_then(|pp| procs.live_key(pp)).filter(|k| k.tgid != e.pid);
            let p = procs.ensure(key, &e.comm, 0);
            if p.parent.is_none() {
                p.parent = parent;
                p.ppid = p.ppid.or(e.ppid);
            }
            if p.exe.is_none() {
                p.exe = e.exe.clone();
            }
            if matches!(e.kind, Kind::Exec | Kind::MemfdExec) && e.error.is_none() {
                procs.exec(key, &e.comm, e.exe.clone(), e.argv.clone());
            }
            if e.kind == Kind::Exit {
                procs.exit(key);
            }
        }
    }
}

/// The pid the task was started with: as its `task_start` says, else its first exec
/// (else its first event's process).
pub(super) fn root_pid(events: &[Event], id: &str) -> u32 {
    let mine = || events.iter().filter(|e| e.task.as_deref() == Some(id));
    mine()
        .find(|e| e.kind == Kind::TaskStart)
        .or_else(|| mine().find(|e| matches!(e.kind, Kind::Exec | Kind::MemfdExec)))
        .or_else(|| mine().next())
        .map(|e| if e.kind == Kind::Fork { e.ppid.unwrap_or(e.pid) } else { e.pid })
        .unwrap_or(0)
}

/// Every event of `rec`, judged again under `policy` (same order as `rec.events`).
pub fn rejudge(policy: Policy, rec: &Recording) -> Vec<Event> {
    let mut judge = Judge::new(Some(policy.rules));
    let bound: Option<Arc<str>> = policy.task.as_ref().map(|t| t.id.as_str().into());
    if let Some(t) = policy.task {
        let root = root_pid(&rec.events, &t.id);
        judge.bind(Bound::new(Arc::new(t), root));
    }
    let scope = standin::recorded_scopes(&rec.alerts);
    let mut stand_ins = standin::StandIns::default();
    let mut procs = ProcTable::default();
    let mut out = Vec::with_capacity(rec.events.len());
    for e in &rec.events {
        track(&mut procs, e);
        let mut now = e.clone();
        if judged_kind(e.kind) {
            (now.verdict, now.action, now.rule, now.reason) = (None, None, None, None);
            if let Some(Dst::Unix { unix }) = &e.dst
                && is_control_socket(unix)
            {
                judge.set_own_socket(Path::new(unix));
            }
            let was = Judged::of(e);
            // A task without a manifest here: its scope's recorded judgement stands.
            let real = e.task.clone().filter(|_| e.task != bound);
            let recorded = real
                .as_ref()
                .and_then(|_| scope.get(&e.id).cloned().or_else(|| was.rule.is_none().then(|| was.clone())));
            if let Some(real) = &real {
                let outside = recorded.as_ref().is_some_and(|s| rank(&s.verdict) >= VerdictKind::OutOfScope);
                now.task = Some(stand_ins.key(&mut judge, &rec.events, real, outside));
            }
            let _ = judge.apply(&mut now, &procs);
            now.task = e.task.clone();
            (now.task_chain, now.unsigned) = (e.task_chain.clone(), e.unsigned);
            if let Some(s) = recorded {
                // The stand-in's own finding is in the recorded words; a recorded
                // finding it cannot make (approval, expiry) is kept unless a rule
                // says more.
                let verdict = rank(now.verdict.as_deref().unwrap_or("in_scope"));
                let scope_decided = now.rule.is_none() && verdict > VerdictKind::InScope;
                if scope_decided || rank(&s.verdict) > verdict {
                    set(&mut now, s);
                }
            }
            // A call an enforcement layer stopped was stopped: if the new policy
            // flags it too, it shows as denied, as it was.
            if was.verdict == "denied"
                && now.verdict.as_deref().is_some_and(|v| rank(v) >= VerdictKind::OutOfScope)
            {
                now.verdict = Some(Cow::Borrowed("denied"));
            }
        }
        out.push(now);
    }
    out
}

fn set(e: &mut Event, j: Judged) {
    e.verdict = Some(Cow::Owned(j.verdict));
    e.action = Some(Cow::Owned(j.action));
    e.rule = j.rule;
    e.reason = j.reason;
}

/// Judges `rec` again and writes what changed, among the events `filter` keeps.
pub fn report(
    policy: Policy,
    rec: &Recording,
    filter: &Filter,
    format: ReplayFormat,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let now = rejudge(policy, rec);
    let (mut judged, mut newly, mut cleared) = (0usize, 0usize, 0usize);
    let mut changes = Vec::new();
    let mut kept = Vec::new();
    for (w, n) in rec.events.iter().zip(&now) {
        if !filter.keep(w) {
            continue;
        }
        kept.push(n);
        if !judged_kind(w.kind) {
            continue;
        }
        judged += 1;
        let (a, b) = (Judged::of(w), Judged::of(n));
        if !a.same(&b) {
            newly += usize::from(!a.flagged() && b.flagged());
            cleared += usize::from(a.flagged() && !b.flagged());
            changes.push((w, a, b));
        }
    }
    let summary = format!(
        "what-if: {judged} events judged again, {} changed: {newly} newly flagged, {cleared} no longer flagged",
        changes.len()
    );
    match format {
        ReplayFormat::Table => {
            for (e, a, b) in &changes {
                let (t, k, w) = (render::datetime(e.ts), e.kind.as_str(), render::what(e));
                writeln!(out, "{t} {k} {w}: was {} -> now {}", a.text(), b.text())?;
            }
            writeln!(out, "{summary}")?;
        }
        ReplayFormat::Json => {
            for (e, a, b) in &changes {
                let v = serde_json::json!({"id": e.id, "ts": e.ts, "kind": e.kind, "was": a, "now": b});
                writeln!(out, "{v}")?;
            }
            let s = serde_json::json!({"summary": {
                "judged": judged, "changed": changes.len(), "newly_flagged": newly, "no_longer_flagged": cleared,
            }});
            writeln!(out, "{s}")?;
        }
        ReplayFormat::Html => anyhow::bail!("what-if reports as table, json or tree"),
        ReplayFormat::Tree => {
            let was: HashMap<uuid::Uuid, String> = changes.iter().map(|(e, a, _)| (e.id, a.text())).collect();
            tree::render(&kept, &[], Some(&was), out)?;
            writeln!(out, "{summary}")?;
        }
    }
    out.flush()?;
    Ok(())
}
