//! The judge: an event, its task and its process context in; a verdict out.

use std::{collections::HashMap, collections::VecDeque, net::IpAddr};

use super::{
    Action, Reason, Verdict, VerdictKind,
    examples::ExampleCtx,
    rules::{PathHits, Rule, RuleSet},
    scope,
};
use crate::{
    event::{Dst, Event, Kind, Timestamp},
    task::{Task, scope::canonical_ip},
};

/// The context of an event that is not in the event itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ctx<'a> {
    /// The task the process is bound to, if any.
    pub task: Option<&'a Task>,
    /// The task root's own first exec (the command agentmon launched).
    pub launch: bool,
    /// Executable of the process's parent.
    pub parent_exe: Option<&'a str>,
    /// Is the parent the task's root process (the agent itself)?
    pub parent_is_root: bool,
}

/// Sliding windows of rate rules, per task and rule. The only state the engine
/// keeps; passed in by the caller so the engine itself stays a function.
#[derive(Debug, Default)]
pub struct Windows {
    hits: HashMap<(String, u16), Window>,
}

#[derive(Debug, Default)]
struct Window {
    /// The last `count` hits.
    q: VecDeque<Timestamp>,
    /// Matches since the rate was first exceeded, while it still is (a burst).
    burst: Option<u32>,
}

/// How a rule matched an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hit {
    /// A finding: a rule without a rate, or a rate rule's window just filled.
    New,
    /// A rate rule whose burst was already reported, the rate still exceeded: the
    /// n-th match since (one burst, one alert).
    Burst(u32),
}

impl Windows {
    /// Drops the windows of a task that is gone.
    pub fn forget(&mut self, task: &str) {
        self.hits.retain(|(t, _), _| t != task);
    }

    fn hit(
        &mut self,
        task: Option<&str>,
        rule: u16,
        at: Timestamp,
        count: u32,
        within: std::time::Duration,
    ) -> Option<Hit> {
        let w = self.hits.entry((task.unwrap_or("").to_string(), rule)).or_default();
        w.q.push_back(at);
        while w.q.len() > count as usize {
            w.q.pop_front();
        }
        let full = w.q.len() >= count as usize
            && w.q.front().is_some_and(|f| at.0 - f.0 <= within.as_nanos() as i128);
        match (full, &mut w.burst) {
            (false, b) => {
                *b = None;
                None
            }
            (true, Some(n)) => {
                *n += 1;
                Some(Hit::Burst(*n))
            }
            (true, b) => {
                *b = Some(0);
                Some(Hit::New)
            }
        }
    }
}

/// The matcher's view of the context.
#[derive(Clone, Copy, Default)]
pub(super) struct MatchCtx<'a> {
    pub(super) parent_exe: Option<&'a str>,
    pub(super) parent_is_root: bool,
    pub(super) outside_scope: bool,
    /// The event's paths matched once against every rule's (the engine); None: each
    /// rule matches them itself (a rule's examples).
    pub(super) paths: Option<&'a PathHits<'a>>,
}

impl<'a> From<&'a ExampleCtx> for MatchCtx<'a> {
    fn from(c: &'a ExampleCtx) -> Self {
        MatchCtx {
            parent_exe: c.parent_exe.as_deref(),
            parent_is_root: c.parent_is_root,
            outside_scope: c.outside_scope,
            paths: None,
        }
    }
}

/// Does `rule` (index `idx`) match, and how? Conditions are checked cheapest first.
pub(super) fn rule_matches<'a>(
    rule: &Rule,
    idx: u16,
    ev: &Event,
    cx: impl Into<MatchCtx<'a>>,
    task: Option<&str>,
    win: &mut Windows,
) -> Option<Hit> {
    conditions_hold(rule, idx, ev, cx.into()).then_some(())?;
    match rule.matcher.rate {
        Some((count, within)) => win.hit(task, idx, ev.ts, count, within),
        None => Some(Hit::New),
    }
}

/// Every condition of `rule` but its rate holds for `ev`.
pub(super) fn conditions_hold(rule: &Rule, idx: u16, ev: &Event, cx: MatchCtx) -> bool {
    let m = &rule.matcher;
    if !m.kinds.is_empty() && !m.kinds.contains(&ev.kind) {
        return false;
    }
    if m.outside_scope.is_some_and(|want| want != cx.outside_scope)
        || m.parent_is_root.is_some_and(|want| want != cx.parent_is_root)
    {
        return false;
    }
    if !m.comm.is_empty() && !m.comm.contains(&ev.comm) {
        return false;
    }
    if !m.flags.is_empty() && !m.flags.iter().any(|f| ev.flags.iter().any(|g| g == f)) {
        return false;
    }
    if !m.dst.is_empty() || !m.ports.is_empty() || m.unix.is_some() {
        let ok = match &ev.dst {
            Some(Dst::Ip { ip, port }) => {
                let ip = ip.parse::<IpAddr>().ok().map(canonical_ip);
                let ip_ok = (m.dst.is_empty() || ip.is_some_and(|ip| m.dst.iter().any(|n| n.contains(&ip))))
                    && !ip.is_some_and(|ip| m.not_dst.iter().any(|n| n.contains(&ip)));
                let port_ok = m.ports.is_empty() || m.ports.iter().any(|p| p.contains(*port));
                ip_ok && port_ok && m.unix.is_none()
            }
            Some(Dst::Unix { unix }) => {
                m.dst.is_empty() && m.ports.is_empty() && m.unix.as_ref().is_some_and(|g| g.is_match(unix))
            }
            None => false,
        };
        if !ok {
            return false;
        }
    }
    if let Some(g) = &m.exe {
        // A failed exec did not change the image: its target is the file it named.
        let failed_exec = matches!(ev.kind, Kind::Exec | Kind::MemfdExec) && ev.ret.is_some_and(|r| r < 0);
        let exe = if failed_exec { ev.path.as_deref() } else { ev.exe.as_deref().or(ev.path.as_deref()) };
        let exe = exe.unwrap_or("");
        if !g.is_match(exe) {
            return false;
        }
    }
    if let Some(g) = &m.parent_exe
        && !cx.parent_exe.is_some_and(|p| g.is_match(p))
    {
        return false;
    }
    if let Some(g) = &m.argv {
        let joined = ev.argv.as_ref().map(|a| a.join(" ")).unwrap_or_default();
        if !g.is_match(&joined) {
            return false;
        }
    }
    if let Some(g) = &m.paths {
        if let Some(hits) = cx.paths {
            return hits.hit(idx);
        }
        let hit = |p: &Option<String>| {
            p.as_deref()
                .is_some_and(|p| g.is_match(p) && !m.not_paths.as_ref().is_some_and(|n| n.is_match(p)))
        };
        if !hit(&ev.path) && !hit(&ev.new_path) {
            return false;
        }
    }
    true
}

/// The policy engine: rules plus the scope judge.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    pub rules: RuleSet,
}

impl Engine {
    pub fn new(rules: RuleSet) -> Self {
        Self { rules }
    }

    /// Judges one event.
    pub fn judge(&self, ev: &Event, cx: &Ctx, win: &mut Windows) -> Verdict {
        let mut v = Verdict::IN_SCOPE;
        if let Some(task) = cx.task
            && let Some(r) = scope::judge(ev, task, cx.launch)
        {
            v.add(r);
        }
        let hits = self.rules.path_hits(ev.kind, ev.path.as_deref(), ev.new_path.as_deref());
        let mcx = MatchCtx {
            parent_exe: cx.parent_exe,
            parent_is_root: cx.parent_is_root,
            outside_scope: v.verdict == VerdictKind::OutOfScope,
            paths: hits.as_ref(),
        };
        let task_id = cx.task.map(|t| t.id.as_str());
        for (i, rule) in self.rules.indexed_for_kind(ev.kind) {
            let Some(hit) = rule_matches(rule, i, ev, mcx, task_id, win) else {
                continue;
            };
            let verdict = if rule.action == Action::RequireApproval {
                VerdictKind::NeedsApproval
            } else {
                VerdictKind::Violation
            };
            let (action, message, burst) = match hit {
                Hit::New => (rule.action, rule.description.clone(), 0),
                // Alerted and contained at the burst's start; a held or refused
                // call is still held or refused each time.
                Hit::Burst(n) => (
                    if matches!(rule.action, Action::RequireApproval | Action::Deny) {
                        rule.action
                    } else {
                        Action::None
                    },
                    format!("{} (the same burst: {n} more since its alert)", rule.description),
                    n,
                ),
            };
            v.add(Reason {
                verdict,
                action,
                severity: rule.severity,
                rule: Some(rule.id.clone()),
                clause: None,
                message,
                burst,
            });
        }
        v
    }
}
