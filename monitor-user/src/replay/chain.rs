//! The chain behind one recorded side effect, from the authority down to the call:
//! the tasks it was delegated from, its task's start (grant, purpose), the prompt
//! its tool call served, the tool call (step) it came from, the approval it waited
//! for, and the event itself. What a
//! responder asks first of a change: who allowed it, why, through which call.

use std::collections::HashMap;

use crate::event::{Event, Kind};

/// One link of a chain: what the event is to the side effect, and the event.
#[derive(Debug, Clone, Copy)]
pub struct Link<'a> {
    pub role: &'static str,
    pub event: &'a Event,
}

/// What the chains are found in: the whole recording (a chain reaches outside any
/// filter: the task's start may be before `--since`).
pub struct Index<'a> {
    events: &'a [Event],
    /// Task id -> its task_start records, in time order.
    starts: HashMap<&'a str, Vec<usize>>,
    /// Task id -> its prompt records, in time order.
    prompts: HashMap<&'a str, Vec<usize>>,
    /// (task, call id) -> its step begin records, in time order.
    begins: HashMap<(&'a str, &'a str), Vec<usize>>,
    /// Approval id -> the records that carry it (request, decision, the call's own).
    approvals: HashMap<&'a str, Vec<usize>>,
    by_id: HashMap<uuid::Uuid, usize>,
}

fn approval_of(e: &Event) -> Option<&str> {
    e.detail.get("approval").and_then(|v| v.as_str())
}

/// The approval whose standing grant decided `e`'s (`detail.standing` of a decision).
fn approval_of_standing(e: &Event) -> Option<&str> {
    e.detail.get("standing").and_then(|v| v.as_str())
}

impl<'a> Index<'a> {
    /// `events` in time order (as [`super::Recording`] keeps them).
    pub fn new(events: &'a [Event]) -> Self {
        let mut ix = Index {
            events,
            starts: HashMap::new(),
            prompts: HashMap::new(),
            begins: HashMap::new(),
            approvals: HashMap::new(),
            by_id: HashMap::new(),
        };
        for (i, e) in events.iter().enumerate() {
            ix.by_id.insert(e.id, i);
            let task = e.task.as_deref();
            match (e.kind, task) {
                (Kind::TaskStart, Some(t)) => ix.starts.entry(t).or_default().push(i),
                (Kind::Step, Some(t)) => match (e.detail.get("phase").and_then(|p| p.as_str()), &e.step) {
                    (Some("begin"), Some(s)) => ix.begins.entry((t, s.call_id.as_str())).or_default().push(i),
                    (Some("prompt"), _) => ix.prompts.entry(t).or_default().push(i),
                    _ => {}
                },
                _ => {}
            }
            if let Some(a) = approval_of(e) {
                ix.approvals.entry(a).or_default().push(i);
            }
        }
        ix
    }

    /// The last of `at` (indexes in time order) recorded at or before event `e`
    /// (and not `e` itself). A binary search: an agent can make many of them.
    fn last_before(&self, at: Option<&Vec<usize>>, e: &Event) -> Option<&'a Event> {
        let at = at?;
        let end = at.partition_point(|&i| self.events[i].ts <= e.ts);
        at[..end].iter().rev().map(|&i| &self.events[i]).find(|s| s.id != e.id)
    }

    /// A task's start for `e`: the last before it, else the first (a kernel time a
    /// little before the start's wall-clock time is still the task's).
    fn start_of(&self, task: &str, e: &Event) -> Option<&'a Event> {
        let starts = self.starts.get(task);
        self.last_before(starts, e)
            .or_else(|| starts?.first().map(|&i| &self.events[i]).filter(|s| s.id != e.id))
    }

    /// The chain of the event with id `id`, outermost first; None if no such event.
    pub fn chain(&self, id: uuid::Uuid) -> Option<Vec<Link<'a>>> {
        let e = &self.events[*self.by_id.get(&id)?];
        let mut links = Vec::new();
        // Delegated: the farthest task first (task_chain is nearest first).
        for parent in e.task_chain.iter().flat_map(|c| c.iter().rev()) {
            if let Some(s) = self.start_of(parent, e) {
                links.push(Link { role: "delegated by", event: s });
            }
        }
        if let Some(t) = e.task.as_deref()
            && e.kind != Kind::TaskStart
            && let Some(s) = self.start_of(t, e)
        {
            links.push(Link { role: "task", event: s });
        }
        let begin = match (e.task.as_deref(), e.step.as_ref()) {
            (Some(t), Some(st)) => self.last_before(self.begins.get(&(t, st.call_id.as_str())), e),
            _ => None,
        };
        // The prompt its tool call served: the task's last before the call began.
        if let Some(t) = e.task.as_deref()
            && let Some(p) = self.last_before(self.prompts.get(t), begin.unwrap_or(e))
            && p.id != e.id
        {
            links.push(Link { role: "prompt", event: p });
        }
        if let Some(b) = begin {
            links.push(Link { role: "step", event: b });
        }
        let approval = approval_of(e).and_then(|a| self.approvals.get(a));
        let carried =
            |k: Kind| approval.into_iter().flatten().map(|&i| &self.events[i]).find(|x| x.kind == k);
        for (k, role) in [(Kind::ApprovalRequest, "approval request"), (Kind::Approval, "approval")] {
            if let Some(x) = carried(k).filter(|x| x.id != e.id) {
                links.push(Link { role, event: x });
            }
        }
        // Decided by a standing approval: the operator's decision that granted it.
        let decision = if e.kind == Kind::Approval { Some(e) } else { carried(Kind::Approval) };
        if let Some(first) = decision
            .and_then(approval_of_standing)
            .and_then(|s| self.approvals.get(s))
            .into_iter()
            .flatten()
            .map(|&i| &self.events[i])
            .find(|x| x.kind == Kind::Approval && x.id != e.id)
        {
            let at = links.iter().position(|l| l.role.starts_with("approval")).unwrap_or(links.len());
            links.insert(at, Link { role: "standing approval", event: first });
        }
        links.push(Link { role: "event", event: e });
        // An approval's own chain ends at the call it decided, when that was recorded.
        if matches!(e.kind, Kind::ApprovalRequest | Kind::Approval)
            && let Some(call) = approval
                .into_iter()
                .flatten()
                .map(|&i| &self.events[i])
                .find(|x| !matches!(x.kind, Kind::ApprovalRequest | Kind::Approval))
        {
            links.push(Link { role: "the call", event: call });
        }
        Some(links)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::event::Step;

    fn ev(kind: Kind, task: &str, t: i128) -> Event {
        crate::replay::tests::ev(kind, t, 100, task)
    }

    fn step(e: &mut Event, call: &str) {
        e.step =
            Some(Arc::new(Step { tool: "Bash".into(), call_id: call.into(), trace_id: None, span_id: None }));
    }

    #[test]
    fn a_side_effect_chains_to_its_grant_step_and_approval() {
        let mut parent = ev(Kind::TaskStart, "lead", 1);
        parent.detail.insert("grant".into(), json!({"by": "ops"}));
        let old_start = ev(Kind::TaskStart, "fix", 2);
        let mut start = ev(Kind::TaskStart, "fix", 3);
        start.task_chain = Some(Arc::from(vec![Arc::<str>::from("lead")]));
        let mut other_begin = ev(Kind::Step, "fix", 4);
        step(&mut other_begin, "toolu_2");
        other_begin.detail.insert("phase".into(), json!("begin"));
        let mut early = ev(Kind::Step, "fix", 4);
        early.detail.insert("phase".into(), json!("prompt"));
        let mut prompt = ev(Kind::Step, "fix", 4);
        prompt.detail.insert("phase".into(), json!("prompt"));
        // A prompt after the call began is the next call's, not this one's.
        let mut late = ev(Kind::Step, "fix", 7);
        late.detail.insert("phase".into(), json!("prompt"));
        let mut begin = ev(Kind::Step, "fix", 5);
        step(&mut begin, "toolu_1");
        begin.detail.insert("phase".into(), json!("begin"));
        let mut req = ev(Kind::ApprovalRequest, "fix", 6);
        req.detail.insert("approval".into(), json!("a-1"));
        let mut ok = ev(Kind::Approval, "fix", 7);
        ok.detail.insert("approval".into(), json!("a-1"));
        let mut del = ev(Kind::FileDelete, "fix", 8);
        step(&mut del, "toolu_1");
        del.detail.insert("approval".into(), json!("a-1"));
        del.task_chain = Some(Arc::from(vec![Arc::<str>::from("lead")]));
        // Another task's approval with another id: not in the chain.
        let mut stray = ev(Kind::Approval, "fix", 9);
        stray.detail.insert("approval".into(), json!("a-2"));
        let all =
            vec![parent, old_start, start, other_begin, begin, req, ok, del, stray, early, prompt, late];
        let ix = Index::new(&all);
        let roles = |id| -> Vec<(&str, uuid::Uuid)> {
            ix.chain(id).unwrap().iter().map(|l| (l.role, l.event.id)).collect()
        };
        assert_eq!(
            roles(all[7].id),
            vec![
                ("delegated by", all[0].id),
                ("task", all[2].id),
                ("prompt", all[10].id),
                ("step", all[4].id),
                ("approval request", all[5].id),
                ("approval", all[6].id),
                ("event", all[7].id),
            ]
        );
        // From the decision: the same links, and the call it decided last.
        let from_decision = roles(all[6].id);
        assert_eq!(from_decision.first(), Some(&("task", all[2].id)));
        assert_eq!(from_decision.last(), Some(&("the call", all[7].id)));
        // A call decided by a standing approval chains to the decision that granted it.
        let mut held = ev(Kind::Approval, "fix", 10);
        held.detail.insert("approval".into(), json!("a-3"));
        held.detail.insert("standing".into(), json!("a-1"));
        let mut call = ev(Kind::FileDelete, "fix", 10);
        call.detail.insert("approval".into(), json!("a-3"));
        let (held_id, call_id) = (held.id, call.id);
        let mut more = all.clone();
        more.extend([held, call]);
        let ix2 = Index::new(&more);
        let roles2: Vec<(&str, uuid::Uuid)> =
            ix2.chain(call_id).unwrap().iter().map(|l| (l.role, l.event.id)).collect();
        assert_eq!(
            roles2[roles2.len() - 3..],
            [("standing approval", all[6].id), ("approval", held_id), ("event", call_id)]
        );
        // A task start's chain is the tasks it was delegated from; an unknown id has none.
        assert_eq!(roles(all[2].id), vec![("delegated by", all[0].id), ("event", all[2].id)]);
        assert_eq!(roles(all[0].id), vec![("event", all[0].id)]);
        assert!(ix.chain(uuid::Uuid::nil()).is_none());
    }
}
