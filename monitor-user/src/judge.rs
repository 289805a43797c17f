//! Applies the policy engine in the pipeline: finds each event's task and process
//! context, writes the verdict into the event, and builds the alert when one is due.

use std::{
    borrow::Cow,
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use crate::{
    event::{ALERT_SCHEMA, Alert, AlertReason, Event, Kind, TaskInfo},
    policy::{
        Action, Ctx, Engine, Reason, RuleSet, Severity, Verdict, VerdictKind, Windows, rules::rule_files,
    },
    proctable::{ProcKey, ProcTable},
    task::Task,
};

/// A task bound to a process tree.
#[derive(Debug, Clone)]
pub struct Bound {
    pub task: Arc<Task>,
    pub id: Arc<str>,
    /// Parent task ids, nearest first: this host's, then those up its grant's chain
    /// on other hosts (its events' `task_chain`).
    pub chain: Arc<[Arc<str>]>,
    /// How many of `chain` are this host's tasks.
    local: usize,
    /// It runs on no grant (every event of it says so).
    pub unsigned: bool,
    /// The process the task was started with.
    pub root: u32,
    root_launched: bool,
}

impl Bound {
    pub fn new(task: Arc<Task>, root: u32) -> Self {
        let id: Arc<str> = Arc::from(task.id.as_str());
        let ids = task.parents.iter().chain(&task.remote_parents);
        let chain: Arc<[Arc<str>]> = ids.map(|p| Arc::from(p.as_str())).collect();
        let local = task.parents.len();
        let unsigned = task.granted.is_none() && !task.under_grant;
        Self { task, id, chain, local, unsigned, root, root_launched: false }
    }

    pub fn info(&self) -> TaskInfo {
        TaskInfo {
            id: self.id.clone(),
            agent: self.task.agent.clone(),
            principal: self.task.principal.clone(),
            mode: Cow::Borrowed(self.task.mode.as_str()),
            parents: self.chain.iter().map(|p| p.to_string()).collect(),
        }
    }

    /// Marks `ev` as the task's: its chain of parents, and whether it runs on no
    /// grant.
    pub fn stamp(&self, ev: &mut Event) {
        ev.task_chain = (!self.chain.is_empty()).then(|| self.chain.clone());
        ev.unsigned = self.unsigned;
    }

    /// The tasks up its chain that run here (their limits and lives are this host's).
    pub fn local_chain(&self) -> &[Arc<str>] {
        &self.chain[..self.local]
    }
}

pub struct Judge {
    engine: Engine,
    windows: Windows,
    tasks: HashMap<Arc<str>, Bound>,
    /// What each task with limits (and its sub-tasks) has done so far.
    usage: HashMap<Arc<str>, crate::policy::limits::Usage>,
    /// No rules and no task: events get no verdict fields.
    active: bool,
    /// agentmon's own control socket: tasks reach it to delegate, which their scope
    /// need not declare.
    own_socket: Option<String>,
}

impl Judge {
    pub fn new(rules: Option<RuleSet>) -> Self {
        let active = rules.is_some();
        Self {
            engine: Engine::new(rules.unwrap_or_default()),
            windows: Windows::default(),
            tasks: HashMap::new(),
            usage: HashMap::new(),
            active,
            own_socket: None,
        }
    }

    pub fn set_own_socket(&mut self, path: &Path) {
        self.own_socket = Some(path.display().to_string());
    }

    pub fn bind(&mut self, b: Bound) {
        self.active = true;
        self.tasks.insert(b.id.clone(), b);
    }

    pub fn task(&self, id: &str) -> Option<&Bound> {
        self.tasks.get(id)
    }

    /// Gives bound task `id` its scope anew (its host names' new addresses).
    pub fn set_task(&mut self, id: &str, task: Arc<Task>) {
        if let Some(b) = self.tasks.get_mut(id) {
            b.task = task;
        }
    }

    pub fn unbind(&mut self, id: &str) {
        self.tasks.remove(id);
        self.usage.remove(id);
        self.windows.forget(id);
    }

    /// Counts `ev` against the limits of its task and of every task it was
    /// delegated from: the reasons of the limits it passes, each with the task whose
    /// limit it was (the one its action is for).
    fn limits(&mut self, ev: &Event) -> Vec<(Arc<str>, Reason)> {
        let Some(b) = ev.task.as_ref().and_then(|id| self.tasks.get(id)) else { return Vec::new() };
        let limited = |id: &Arc<str>| self.tasks.get(id).is_some_and(|t| t.task.limits.is_some());
        if !limited(&b.id) && !b.local_chain().iter().any(limited) {
            return Vec::new();
        }
        let ids: Vec<Arc<str>> =
            std::iter::once(b.id.clone()).chain(b.local_chain().iter().cloned()).collect();
        let own = b.id.clone();
        let mut out = Vec::new();
        for id in ids {
            let Some(limits) = self.tasks.get(&id).and_then(|t| t.task.limits.as_ref()) else { continue };
            if let Some(mut r) = self.usage.entry(id.clone()).or_default().count(limits, ev) {
                if id != own {
                    r.message = format!("{} (with task {id}'s sub-tasks)", r.message);
                }
                out.push((id, r));
            }
        }
        out
    }

    pub fn task_ids(&self) -> Vec<Arc<str>> {
        self.tasks.keys().cloned().collect()
    }

    pub fn set_rules(&mut self, rules: RuleSet) {
        self.engine.rules = rules;
        self.active = true;
    }

    /// The rules in force.
    pub fn rules(&self) -> &RuleSet {
        &self.engine.rules
    }

    /// Ids of the rules in force.
    pub fn rule_ids(&self) -> Vec<String> {
        self.engine.rules.rules.iter().map(|r| r.id.clone()).collect()
    }

    pub fn rule_count(&self) -> usize {
        self.engine.rules.len()
    }

    /// Judges `ev` in place; returns the alert to emit, if any.
    pub fn apply(&mut self, ev: &mut Event, procs: &ProcTable) -> Option<Alert> {
        if !self.active || ev.kind.is_own_record() {
            return None;
        }
        if let Some(b) = ev.task.as_ref().and_then(|id| self.tasks.get(id)) {
            b.stamp(ev);
        }
        if let (Some(own), Some(crate::event::Dst::Unix { unix })) = (&self.own_socket, &ev.dst)
            && own == unix
        {
            annotate(ev, &Verdict::IN_SCOPE);
            return None;
        }
        let bound = ev.task.as_ref().and_then(|id| self.tasks.get_mut(id));
        let (launch, root) = match bound {
            Some(b) => {
                let launch =
                    ev.kind == Kind::Exec && ev.pid == b.root && ev.error.is_none() && !b.root_launched;
                if launch {
                    b.root_launched = true;
                }
                (launch, Some(b.root))
            }
            None => (false, None),
        };
        let bound = ev.task.as_ref().and_then(|id| self.tasks.get(id));
        let cx = context(bound, ev, procs, launch, root);
        let mut v = self.engine.judge(ev, &cx, &mut self.windows);
        // A limit of a task this one was delegated from: its action is for that task
        // (containment stops the owner's tree, sub-tasks included).
        let mut owner = None;
        for (id, r) in self.limits(ev) {
            if ev.task.as_deref() != Some(&*id) && r.action > Action::Alert {
                owner = Some(id);
            }
            v.add(r);
        }
        if let Some(id) = owner {
            ev.detail.insert(Cow::Borrowed("limit_of"), serde_json::json!(&*id));
        }
        let bound = ev.task.as_ref().and_then(|id| self.tasks.get(id));
        // A held call an approver let through (agentmon performed it): in scope now.
        if v.verdict == VerdictKind::NeedsApproval
            && ev.detail.get("decision").and_then(|d| d.as_str()) == Some("approved")
        {
            let id = ev.detail.get("approval").and_then(|d| d.as_str()).unwrap_or("?");
            v.verdict = VerdictKind::InScope;
            v.action = Action::None;
            for r in v.reasons.iter_mut().filter(|r| r.verdict == VerdictKind::NeedsApproval) {
                r.verdict = VerdictKind::InScope;
                r.action = Action::None;
                r.message = format!("{} (approved: {id})", r.message);
            }
            v.reasons.sort_by_key(|r| std::cmp::Reverse(r.verdict));
        }
        // Under enforcement, an out-of-scope call that failed with EACCES/EPERM was
        // stopped by a layer (Landlock, seccomp, a gate's refusal): say so.
        let refused =
            matches!(ev.detail.get("decision").and_then(|d| d.as_str()), Some("denied" | "timeout"));
        if ev.detail.contains_key("approval_mismatch") && bound.is_some() {
            let id = ev.detail.get("approval").and_then(|d| d.as_str()).unwrap_or("?");
            let was = ev.detail.get("approved_path").and_then(|d| d.as_str()).unwrap_or("?");
            v.add(Reason {
                verdict: VerdictKind::Denied,
                action: Action::Alert,
                severity: Severity::High,
                rule: None,
                clause: Some("approval_required"),
                message: format!(
                    "approval {id} was for {was}; the file the kernel was about to run in its place was \
                     refused"
                ),
                burst: 0,
            });
        }
        if bound.is_some_and(|b| b.task.enforce)
            && (v.verdict >= VerdictKind::OutOfScope
                || refused
                || ev.detail.contains_key("approval_mismatch"))
            && refused_by_a_layer(ev)
        {
            v.verdict = VerdictKind::Denied;
        }
        let info = bound.map(Bound::info);
        annotate(ev, &v);
        v.alerts().then(|| alert(ev, &v, info))
    }

    /// The alert for a tamper record agentmon made itself (a refused control request,
    /// a process that left its cgroup): its verdict and reason as recorded.
    pub fn tamper_alert(&self, ev: &Event) -> Alert {
        let info = ev.task.as_ref().and_then(|id| self.tasks.get(id)).map(Bound::info);
        let verdict = if ev.verdict.as_deref() == Some("denied") {
            VerdictKind::Denied
        } else {
            VerdictKind::Violation
        };
        let mut v = Verdict { reasons: Vec::new(), ..Verdict::IN_SCOPE };
        v.add(Reason {
            verdict,
            action: Action::Alert,
            severity: Severity::High,
            rule: None,
            clause: Some("tamper"),
            message: ev.reason.clone().unwrap_or_else(|| "an attempt against agentmon".into()),
            burst: 0,
        });
        alert(ev, &v, info)
    }

    /// The verdict `ev` would get, recording nothing (rate windows untouched): for a
    /// held syscall, before it happens.
    pub fn preview(&self, ev: &Event, procs: &ProcTable) -> Verdict {
        let bound = ev.task.as_ref().and_then(|id| self.tasks.get(id));
        let cx = context(bound, ev, procs, false, bound.map(|b| b.root));
        self.engine.judge(ev, &cx, &mut Windows::default())
    }
}

/// The process context of `ev` for the engine.
fn context<'a>(
    bound: Option<&'a Bound>,
    ev: &Event,
    procs: &'a ProcTable,
    launch: bool,
    root: Option<u32>,
) -> Ctx<'a> {
    // The parent of the acting process (for fork events the actor is the parent).
    let me = ProcKey { tgid: ev.pid, start_ns: ev.start.unwrap_or(0) };
    let parent = if ev.kind == Kind::Fork {
        ev.ppid.and_then(|p| procs.live_key(p))
    } else {
        procs.get(&me).and_then(|p| p.parent)
    };
    let parent_proc = parent.and_then(|k| procs.get(&k));
    Ctx {
        task: bound.map(|b| &*b.task),
        launch,
        parent_exe: parent_proc.and_then(|p| p.exe.as_deref()),
        parent_is_root: parent.is_some_and(|k| Some(k.tgid) == root),
    }
}

fn annotate(ev: &mut Event, v: &Verdict) {
    ev.verdict = Some(Cow::Borrowed(v.verdict.as_str()));
    ev.action = Some(Cow::Borrowed(v.action.as_str()));
    let top = v.reasons.first();
    ev.rule = top.and_then(|r| r.rule.clone());
    ev.reason = top.map(|r| match r.clause {
        Some(c) => format!("{c}: {}", r.message),
        None => r.message.clone(),
    });
}

/// Did the call fail as a layer refuses: EACCES or EPERM, or ENOSYS for clone3,
/// which the seccomp filter answers so that the C library falls back to clone.
fn refused_by_a_layer(ev: &Event) -> bool {
    // A message sendmmsg stopped on: the kernel dropped its error, and the cgroup
    // guard refuses every message to a destination out of scope.connect.
    if ev.kind == crate::event::Kind::Send && ev.flags.iter().any(|f| f == crate::event::UNSENT) {
        return true;
    }
    match ev.error.as_deref() {
        Some("EACCES" | "EPERM") => true,
        Some("ENOSYS") => ev.syscall.as_deref() == Some("clone3"),
        _ => false,
    }
}

fn alert(ev: &Event, v: &Verdict, task: Option<TaskInfo>) -> Alert {
    Alert {
        schema: Cow::Borrowed(ALERT_SCHEMA),
        kind: Cow::Borrowed("alert"),
        id: uuid::Uuid::now_v7(),
        ts: ev.ts,
        host: ev.host.clone(),
        severity: Cow::Borrowed(v.severity.as_str()),
        verdict: Cow::Borrowed(v.verdict.as_str()),
        action: v.action,
        rule: ev.rule.clone(),
        reason: ev.reason.clone().unwrap_or_default(),
        reasons: v
            .reasons
            .iter()
            .map(|r| AlertReason {
                verdict: r.verdict,
                action: r.action,
                severity: r.severity,
                rule: r.rule.clone(),
                clause: r.clause.map(Cow::Borrowed),
                message: r.message.clone(),
            })
            .collect(),
        task,
        event: ev.clone(),
    }
}

/// Watches a rules directory and reloads it when a file changes. Polls (once a
/// second from the caller): simple, and it works on every filesystem.
pub struct RulesWatch {
    dir: PathBuf,
    sensitive: crate::sensitive::SensitiveSet,
    seen: Vec<(PathBuf, u64, Option<SystemTime>)>,
}

impl RulesWatch {
    pub fn new(dir: &Path, sensitive: &crate::sensitive::SensitiveSet) -> Self {
        let mut w = Self { dir: dir.to_path_buf(), sensitive: sensitive.clone(), seen: Vec::new() };
        w.seen = w.fingerprint();
        w
    }

    fn fingerprint(&self) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
        rule_files(&self.dir)
            .unwrap_or_default()
            .into_iter()
            .map(|f| {
                let m = std::fs::metadata(&f).ok();
                // A file replaced by something else of the same size and time still changes.
                let kind = m.as_ref().map_or(0, |m| if m.is_file() { 1 } else { 2 });
                let (len, mtime) = m.map(|m| (m.len() << 2 | kind, m.modified().ok())).unwrap_or((0, None));
                (f, len, mtime)
            })
            .collect()
    }

    /// The new rules if the directory changed since the last call, checked as
    /// `agentmon rules check` checks them (or every problem, in which case the
    /// caller keeps the old rules).
    pub fn poll(&mut self) -> Option<Result<RuleSet, Vec<String>>> {
        let now = self.fingerprint();
        if now == self.seen {
            return None;
        }
        self.seen = now;
        Some(crate::policy::check::load(&self.dir, &self.sensitive))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Timestamp;

    fn task(yaml: &str) -> Arc<Task> {
        Arc::new(crate::task::parse(yaml, Path::new("t.yaml"), Timestamp(0)).unwrap())
    }

    /// A sub-task's side effects count against its parent's limits: delegating is
    /// no way around a budget.
    #[test]
    fn a_sub_tasks_deletes_count_against_its_parents_limit() {
        let mut j = Judge::new(None);
        j.bind(Bound::new(
            task("id: lead\nmode: execute\nscope:\n  write: [\"/w/**\"]\n  delete: [\"/w/**\"]\nlimits:\n  deletes: 1\n  on_exceed: kill\n"),
            1,
        ));
        let mut child =
            (*task("id: sub\nmode: execute\nscope:\n  write: [\"/w/**\"]\n  delete: [\"/w/**\"]\n")).clone();
        child.parents = vec!["lead".into()];
        j.bind(Bound::new(Arc::new(child), 2));
        let procs = ProcTable::new(16);
        let del = |p: &str| {
            let mut e = Event::new(Kind::FileDelete, Timestamp(1), "h".into());
            e.task = Some("sub".into());
            e.pid = 2;
            e.path = Some(p.into());
            e
        };
        let mut first = del("/w/a");
        j.apply(&mut first, &procs);
        assert_eq!(first.verdict.as_deref(), Some("in_scope"));
        let mut second = del("/w/b");
        let alert = j.apply(&mut second, &procs).expect("an alert");
        assert_eq!((second.verdict.as_deref(), second.action.as_deref()), (Some("violation"), Some("kill")));
        assert!(alert.reason.contains("task lead's sub-tasks"), "{}", alert.reason);
        assert_eq!(second.detail["limit_of"], "lead", "the kill is the parent's");
        let mut third = del("/w/c");
        j.apply(&mut third, &procs);
        assert_eq!(third.action.as_deref(), Some("none"), "said once");
    }

    /// A sendmmsg message the call stopped on has no error of its own (the kernel
    /// drops it): out of an enforced task's scope it is what the guard refused;
    /// observed, it is out of scope as any other.
    #[test]
    fn an_unsent_message_out_of_scope_is_denied_when_enforced() {
        let procs = ProcTable::new(16);
        for (enforce, want) in [(true, "denied"), (false, "out_of_scope")] {
            let mut j = Judge::new(None);
            let mode = if enforce { "enforce" } else { "observe" };
            j.bind(Bound::new(
                task(&format!(
                    "id: t\nmode: execute\nenforcement: {mode}\nscope:\n  connect: [\"127.0.0.1:53\"]\n"
                )),
                1,
            ));
            let send = |port: u16, unsent: bool| {
                let mut e = Event::new(Kind::Send, Timestamp(1), "h".into());
                e.task = Some("t".into());
                e.pid = 1;
                e.dst = Some(crate::event::Dst::Ip { ip: "127.0.0.1".into(), port });
                if unsent {
                    e.flags.push(Cow::Borrowed(crate::event::UNSENT));
                }
                e
            };
            let mut out = send(54, true);
            j.apply(&mut out, &procs);
            assert_eq!(out.verdict.as_deref(), Some(want), "{mode}");
            // Sent out of scope: no layer refused it.
            let mut sent = send(54, false);
            j.apply(&mut sent, &procs);
            assert_eq!(sent.verdict.as_deref(), Some("out_of_scope"), "{mode}");
            // Unsent in scope (a full buffer, say): still in scope.
            let mut ok = send(53, true);
            j.apply(&mut ok, &procs);
            assert_eq!(ok.verdict.as_deref(), Some("in_scope"), "{mode}");
        }
    }
}
