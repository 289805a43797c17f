//! The process tree, rebuilt from fork/exec/exit events: every process under the one
//! that forked it, with its side effects in time order, children placed where they
//! were forked. A process is keyed by pid and start time (pids are reused).
//!
//! ```text
//!   09:59:59.990 task_start task fix-1 mode=execute enforcement=observe
//!   10:00:00.000 [1000] python3 /usr/bin/python3  task fix-1
//!     10:00:00.001 exec python3 agent.py
//!     10:00:00.190 step Bash:toolu_01 (ended 10:00:00.400)
//!       10:00:00.200 [1001] sh /usr/bin/dash  <Bash:toolu_01>
//!         10:00:00.201 exec sh -c "rm /etc/hosts"  <Bash:toolu_01>
//! !       10:00:00.300 file_delete /etc/hosts  <Bash:toolu_01>  out_of_scope/alert (-) [high]
//! ```
//!
//! The first column marks verdicts: `!` out of scope, violation or denied; `?` needs
//! approval. `<tool:call_id>` names the tool call (step) an event came from; in each
//! process, what a tool call did is nested under a `step` line (its begin record's
//! time, and its end's), and a child process forked by it with its whole subtree.
//! Step records that cover nothing here (a prompt, a call with no side effect) stay
//! at the top, in time order, as the task's records do.

use std::{collections::HashMap, fmt::Write as _, io::Write, sync::Arc};

use super::render::{mark, time_of_day, verdict, what};
use crate::event::{Alert, Event, Kind, Timestamp};
use crate::sink::one_line;

/// A line of the tree: an event (its index), a process (its node), or the head of
/// what one tool call did in a process (its step, by [`Tree::steps`] index).
#[derive(Clone, Copy)]
pub(super) enum Entry {
    Ev(usize),
    Proc(usize),
    Step(usize),
}

/// A tool call as the tree shows it.
pub(super) struct StepHead {
    pub tool: Arc<str>,
    pub call_id: Arc<str>,
    /// Its begin and end records, when recorded.
    pub begin: Option<usize>,
    pub end: Option<usize>,
    /// Some event of it is in a process (its records are shown at its head then).
    covered: bool,
}

pub(super) struct Node {
    pub pid: u32,
    start: Option<u64>,
    pub comm: String,
    pub exe: Option<Arc<str>>,
    pub task: Option<Arc<str>>,
    /// When it was forked (or first seen).
    pub born: Timestamp,
    /// Its fork event, if recorded.
    pub fork: Option<usize>,
    entries: Vec<Entry>,
}

#[derive(Default)]
pub(super) struct Tree {
    pub nodes: Vec<Node>,
    /// The current process of each pid.
    live: HashMap<u32, usize>,
    top: Vec<Entry>,
    parent_task: HashMap<usize, Option<Arc<str>>>,
    /// The tool calls seen, and each event's (by event index).
    pub steps: Vec<StepHead>,
    step_of: HashMap<usize, usize>,
    /// The call open now under each (task, tool, call id): a call id used again
    /// after its end, or by another task, is another call.
    open_steps: HashMap<StepKey, usize>,
}

type StepKey = (Option<Arc<str>>, String, String);

impl Tree {
    /// The tree of `events` (in time order).
    pub fn of(events: &[&Event]) -> Self {
        let mut t = Tree::default();
        for (i, e) in events.iter().enumerate() {
            t.add(i, e);
        }
        t
    }

    /// Its lines depth first, each with its depth; without recursion: a long fork
    /// chain must not exhaust the stack.
    pub fn lines(&self) -> Vec<(usize, Entry)> {
        let mut out = Vec::new();
        let mut stack: Vec<(Entry, usize)> = self.top.iter().rev().map(|en| (*en, 0)).collect();
        while let Some((en, depth)) = stack.pop() {
            out.push((depth, en));
            if let Entry::Proc(n) = en {
                stack.extend(self.nodes[n].entries.iter().rev().map(|c| (*c, depth + 1)));
            }
        }
        out
    }

    /// [`Tree::lines`] with what each tool call did nested under a [`Entry::Step`]
    /// head, in each process: a run of its events and of the processes it forked
    /// (whose own lines of that call need no head again).
    pub fn lines_by_step(&self) -> Vec<(usize, Entry)> {
        let mut out = Vec::new();
        // The step records of calls shown at their heads.
        let at_head: std::collections::HashSet<usize> =
            self.steps.iter().filter(|s| s.covered).flat_map(|s| s.begin.into_iter().chain(s.end)).collect();
        // (line, depth, the call the line is already under)
        let mut stack: Vec<(Entry, usize, Option<usize>)> = self
            .top
            .iter()
            .rev()
            .filter(|en| !matches!(en, Entry::Ev(i) if at_head.contains(i)))
            .map(|en| (*en, 0, None))
            .collect();
        while let Some((en, depth, under)) = stack.pop() {
            out.push((depth, en));
            let Entry::Proc(n) = en else { continue };
            let mut kids = Vec::new();
            let mut cur = under;
            for c in &self.nodes[n].entries {
                let k = self.step_of_entry(*c);
                if k != cur {
                    cur = k;
                    if let Some(s) = k.filter(|s| Some(*s) != under) {
                        kids.push((Entry::Step(s), depth + 1, under));
                    }
                }
                let nested = cur.is_some() && cur != under;
                kids.push((*c, depth + 1 + nested as usize, cur.or(under)));
            }
            stack.extend(kids.into_iter().rev());
        }
        out
    }

    /// The tool call an entry belongs to: an event's, or the fork of a process.
    fn step_of_entry(&self, en: Entry) -> Option<usize> {
        match en {
            Entry::Ev(i) => self.step_of.get(&i).copied(),
            Entry::Proc(n) => self.nodes[n].fork.and_then(|f| self.step_of.get(&f).copied()),
            Entry::Step(_) => None,
        }
    }

    /// The call `st` of `task` open now; a new one when none is (or `fresh`: a
    /// begin record starts a new call).
    fn step_index(&mut self, task: &Option<Arc<str>>, st: &crate::event::Step, fresh: bool) -> usize {
        let key = (task.clone(), st.tool.clone(), st.call_id.clone());
        if !fresh && let Some(&s) = self.open_steps.get(&key) {
            return s;
        }
        self.steps.push(StepHead {
            tool: Arc::from(st.tool.as_str()),
            call_id: Arc::from(st.call_id.as_str()),
            begin: None,
            end: None,
            covered: false,
        });
        self.open_steps.insert(key, self.steps.len() - 1);
        self.steps.len() - 1
    }

    /// The task process `n` is shown with: its own when its parent's differs.
    pub fn task_shown(&self, n: usize) -> Option<&Arc<str>> {
        let inherited = self.parent_task.get(&n).cloned().flatten();
        self.nodes[n].task.as_ref().filter(|t| inherited.as_ref() != Some(*t))
    }

    fn new_node(&mut self, e: &Event, pid: u32, start: Option<u64>, parent: Option<usize>) -> usize {
        let i = self.nodes.len();
        self.nodes.push(Node {
            pid,
            start,
            comm: e.comm.clone(),
            exe: e.exe.clone(),
            task: e.task.clone(),
            born: e.ts,
            fork: None,
            entries: Vec::new(),
        });
        match parent {
            Some(p) => {
                self.nodes[p].entries.push(Entry::Proc(i));
                self.parent_task.insert(i, self.nodes[p].task.clone());
            }
            None => self.top.push(Entry::Proc(i)),
        }
        self.live.insert(pid, i);
        i
    }

    /// The process `pid` (started at `start`, when known); a new node, under its
    /// parent if that is known, when it was not seen before.
    fn process(&mut self, e: &Event, pid: u32, start: Option<u64>, ppid: Option<u32>) -> usize {
        if let Some(&i) = self.live.get(&pid) {
            let n = &mut self.nodes[i];
            if start.is_none() || n.start.is_none() || n.start == start {
                n.start = n.start.or(start);
                return i;
            }
        }
        let parent = ppid.and_then(|p| self.live.get(&p).copied());
        self.new_node(e, pid, start, parent)
    }

    fn add(&mut self, i: usize, e: &Event) {
        if let Some(st) = &e.step {
            match (e.kind, e.detail.get("phase").and_then(|p| p.as_str())) {
                (Kind::Step, Some("begin")) => {
                    let s = self.step_index(&e.task, st, true);
                    self.steps[s].begin = Some(i);
                }
                (Kind::Step, Some("end")) => {
                    let s = self.step_index(&e.task, st, false);
                    self.steps[s].end = Some(i);
                    self.open_steps.remove(&(e.task.clone(), st.tool.clone(), st.call_id.clone()));
                }
                (Kind::Step, _) => {}
                _ => {
                    let s = self.step_index(&e.task, st, false);
                    self.steps[s].covered = true;
                    self.step_of.insert(i, s);
                }
            }
        }
        match e.kind {
            // agentmon's own records and task lifecycle: at the top, between the trees.
            Kind::Loss | Kind::Action | Kind::TaskStart | Kind::TaskEnd | Kind::Step | Kind::Rules => {
                self.top.push(Entry::Ev(i))
            }
            Kind::Fork => {
                let parent = e.ppid.map(|p| self.process(e, p, None, None));
                let c = self.new_node(e, e.pid, e.start, parent);
                self.nodes[c].fork = Some(i);
            }
            _ => {
                let n = self.process(e, e.pid, e.start, e.ppid);
                self.nodes[n].entries.push(Entry::Ev(i));
                if matches!(e.kind, Kind::Exec | Kind::MemfdExec) && e.error.is_none() {
                    self.nodes[n].comm = e.comm.clone();
                    self.nodes[n].exe = e.exe.clone().or(self.nodes[n].exe.take());
                }
                if e.kind == Kind::Exit && self.live.get(&e.pid) == Some(&n) {
                    self.live.remove(&e.pid);
                }
            }
        }
    }
}

/// Renders the tree of `events`; `was` (what-if) holds, by event id, what changed.
/// Levels of nesting shown as indentation.
const MAX_INDENT: usize = 32;

pub fn render(
    events: &[&Event],
    alerts: &[&Alert],
    was: Option<&HashMap<uuid::Uuid, String>>,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let t = Tree::of(events);
    let sev = super::render::severities(alerts);
    let tail = |e: &Event| {
        let mut s = String::new();
        // The tool call it came from (the step records themselves say it in `what`).
        if let Some(st) = e.step.as_ref().filter(|_| e.kind != Kind::Step) {
            let _ = write!(s, "  <{}:{}>", one_line(&st.tool), one_line(&st.call_id));
        }
        if mark(e.verdict.as_deref()) != ' ' || e.rule.is_some() {
            let _ = write!(s, "  {} ({})", verdict(e), e.rule.as_deref().unwrap_or("-"));
        }
        if let Some(sv) = sev.get(&e.id) {
            let _ = write!(s, " [{sv}]");
        }
        if let Some(w) = was.and_then(|w| w.get(&e.id)) {
            let _ = write!(s, "  (was {w})");
        }
        s
    };
    for (depth, en) in t.lines_by_step() {
        // Past MAX_INDENT levels the depth is written as a number: a 20,000-deep fork
        // chain stays linear in size, not quadratic.
        let indent = if depth <= MAX_INDENT {
            "  ".repeat(depth)
        } else {
            format!("{}[depth {depth}] ", "  ".repeat(MAX_INDENT))
        };
        match en {
            Entry::Step(s) => {
                let st = &t.steps[s];
                let begin = st.begin.map(|b| events[b]);
                let m = mark(begin.and_then(|b| b.verdict.as_deref()));
                let at = begin.map_or_else(|| " ".repeat(12), |b| time_of_day(b.ts));
                let ended =
                    st.end.map_or(String::new(), |x| format!(" (ended {})", time_of_day(events[x].ts)));
                writeln!(
                    out,
                    "{m} {indent}{at} step {}:{}{ended}",
                    one_line(&st.tool),
                    one_line(&st.call_id)
                )?;
            }
            Entry::Ev(i) => {
                let e = events[i];
                let m = mark(e.verdict.as_deref());
                writeln!(
                    out,
                    "{m} {indent}{} {} {}{}",
                    time_of_day(e.ts),
                    e.kind.as_str(),
                    what(e),
                    tail(e)
                )?;
            }
            Entry::Proc(n) => {
                let node = &t.nodes[n];
                let fork = node.fork.map(|f| events[f]);
                let m = mark(fork.and_then(|f| f.verdict.as_deref()));
                // The agent names its processes (comm, exe): on one line, as paths are.
                let mut line =
                    format!("{m} {indent}{} [{}] {}", time_of_day(node.born), node.pid, one_line(&node.comm));
                if let Some(exe) = &node.exe {
                    let _ = write!(line, " {}", one_line(exe));
                }
                if let Some(task) = t.task_shown(n) {
                    let _ = write!(line, "  task {}", one_line(task));
                }
                if let Some(f) = fork {
                    line.push_str(&tail(f));
                }
                writeln!(out, "{}", line.trim_end())?;
            }
        }
    }
    let flagged = events.iter().filter(|e| mark(e.verdict.as_deref()) != ' ').count();
    writeln!(out, "{} processes, {} events, {flagged} flagged", t.nodes.len(), events.len())
}
