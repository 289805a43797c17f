//! Calls the kernel refused an enforced task (Landlock, the BPF LSM hooks, the
//! seccomp filter, the network guard), as records: each is one cheap syscall for the
//! agent and a record and alert for agentmon, so a loop of refused calls filled the
//! outputs (43,727 refused opens in 3 s from one thread here) and drowned what else
//! the task did.
//!
//! Past a burst, they are counted per task, kind, syscall and matching rule (a flood
//! of refused opens never hides a refused unlink, nor one task's another's), and the
//! first refusal of each target (every argument the record names: path, new path,
//! destination, mode, target process, signal, ids...) is still recorded, up to
//! [`TARGETS`] per call (a flood at one file never hides an attempt at another); what
//! an approval decided is always recorded. The count is said by the next record of
//! the key (`detail.unrecorded_before`), or by a record repeating the most severe
//! held back, the latest of those (`detail.unrecorded`, with its alert): when the
//! record that ends the batch is less severe, at a tick once the limit allows, at
//! once when the task ends (before its `task_end`), and when agentmon stops.
//! Everything is judged first: rules count every call, and a refusal a rule's
//! containment acted on is always recorded (the pipeline).

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    hash::BuildHasher,
    sync::Arc,
};

use serde_json::json;

use crate::{
    event::{Alert, Event, Kind, Timestamp},
    noise::{Noise, Tally, summary},
};

/// A burst of this many refused calls per task, kind and syscall is recorded one by
/// one (an agent trying a few paths outside its scope: each its own record)...
const BURST: f64 = 64.0;
/// ...then this many a second.
const PER_SEC: f64 = 8.0;
/// Past the burst, the first refusal of each target is recorded still, for this many
/// targets per key (an agent making up names cannot make every one a record).
const TARGETS: usize = 1024;

/// Task, kind, syscall, and the rule that matched (if one did).
type Key = (Arc<str>, Kind, Cow<'static, str>, Option<String>);

/// What a record decided by an approval carries: never a flood's to hide.
const DECIDED: [&str; 3] = ["approval", "decision", "approval_mismatch"];

/// A key without the rule: the targets seen are counted per call, whatever rules
/// its targets match (a rule's match has a burst of its own, not more targets).
type Call = (Arc<str>, Kind, Cow<'static, str>);

/// What a caller gets to know of one call: whether it is recorded, and a summary to
/// write before it (the count of the calls held back, repeating the most severe of
/// them when the recorded call is less severe: it must not stand in for that one).
#[derive(Debug)]
pub struct Admit {
    pub record: bool,
    pub before: Option<(Event, Option<Alert>)>,
}

impl Admit {
    /// Recorded, with nothing before it.
    pub const RECORD: Admit = Admit { record: true, before: None };
}

/// The refused calls of enforced tasks, limited (see the module's head).
pub struct KernelRefusals {
    tally: Tally<Key, (Event, Option<Alert>)>,
    /// The targets each call's records named (hashes), up to [`TARGETS`].
    seen: HashMap<Call, HashSet<u64>>,
    hasher: std::hash::RandomState,
}

impl Default for KernelRefusals {
    fn default() -> Self {
        Self::with_rate(BURST, PER_SEC)
    }
}

impl KernelRefusals {
    fn with_rate(burst: f64, per_sec: f64) -> Self {
        Self {
            tally: Tally::new(Noise::with_rate(burst, per_sec)),
            seen: HashMap::new(),
            hasher: std::hash::RandomState::new(),
        }
    }

    /// Whether judged `ev` is recorded: a call enforcement refused past the limit is
    /// counted instead, and kept as the model of the summary if it is the most
    /// severe held back.
    pub fn admit(&mut self, ev: &mut Event, alert: &mut Option<Alert>) -> Admit {
        // Every record passes here: what is not a refusal costs one comparison.
        if ev.verdict.as_deref() != Some("denied") || DECIDED.iter().any(|k| ev.detail.contains_key(*k)) {
            return Admit::RECORD;
        }
        let Some(task) = ev.task.clone() else { return Admit::RECORD };
        let syscall = ev.syscall.clone().unwrap_or(Cow::Borrowed(""));
        let call = (task, ev.kind, syscall);
        let key = (call.0.clone(), call.1, call.2.clone(), ev.rule.clone());
        let new_target = {
            // Every argument the record names: a path, a destination, a process, a
            // signal, an id, a mode... (detail keys in order: a BTreeMap).
            let named: Vec<(&str, String)> = ev.detail.iter().map(|(k, v)| (&**k, v.to_string())).collect();
            let target = self.hasher.hash_one((&ev.path, &ev.new_path, &ev.dst, &ev.mode, named));
            let seen = self.seen.entry(call).or_default();
            seen.len() < TARGETS && seen.insert(target)
        };
        let held = match self.tally.noise.allow(key.clone()) {
            Some(held) => held,
            None if new_target => {
                // Recorded past the limit: not one of those it counts.
                self.tally.noise.unhold(&key);
                self.tally.noise.take(&key)
            }
            None => {
                // The summary repeats the most severe held back (the latest of
                // those): a harmless call at the end of a flood does not stand in
                // for the one that mattered. (One held: this one, the first since
                // the last record; the model kept is an older batch's.)
                let keep = match self.tally.last.get(&key) {
                    Some((_, was)) if self.tally.noise.held(&key) > 1 => severity(alert) >= severity(was),
                    _ => true,
                };
                if keep {
                    self.tally.last.insert(key, (ev.clone(), alert.clone()));
                }
                return Admit { record: false, before: None };
            }
        };
        if held == 0 {
            return Admit::RECORD;
        }
        // The batch held back ends here. Its model is this batch's (held > 0).
        if let Some((model, model_alert)) = self.tally.last.get(&key)
            && severity(model_alert) > severity(alert)
        {
            let before = said((model.clone(), model_alert.clone()), ev.ts, held);
            return Admit { record: true, before: Some(before) };
        }
        ev.detail.insert("unrecorded_before".into(), json!(held));
        if let Some(a) = alert {
            a.event.detail.insert("unrecorded_before".into(), json!(held));
        }
        Admit::RECORD
    }

    /// Summaries of what was held back: of the tasks `gone(task)` says (ended, or
    /// agentmon stops) at once, of the others once the limit allows.
    pub fn unsaid(&mut self, now: Timestamp, gone: impl Fn(&str) -> bool) -> Vec<(Event, Option<Alert>)> {
        let said = self.tally.unsaid(|(task, ..)| gone(task));
        said.into_iter().map(|(_, model, held)| self::said(model, now, held)).collect()
    }

    /// Forgets task `id` (it ended and has no process left). Not before: a process
    /// that outlives its task's root is still held to the limit and the targets
    /// seen.
    pub fn forget(&mut self, id: &str) {
        self.seen.retain(|(task, ..), _| &**task != id);
        self.tally.last.retain(|(task, ..), _| &**task != id);
        self.tally.noise.forget(|(task, ..)| &**task == id);
    }

    /// Summaries due now, the ended tasks' at once (`all`: everyone's).
    pub fn due(
        &mut self,
        now: Timestamp,
        ended: &HashSet<Arc<str>>,
        all: bool,
    ) -> Vec<(Event, Option<Alert>)> {
        self.unsaid(now, |task| all || ended.contains(task))
    }
}

/// Model `(ev, alert)` restated as the summary of `held` calls, made `now`, with its
/// alert.
fn said((ev, mut alert): (Event, Option<Alert>), now: Timestamp, held: u64) -> (Event, Option<Alert>) {
    let ev = summary(ev, now, held);
    if let Some(a) = &mut alert {
        a.id = uuid::Uuid::now_v7();
        a.ts = now;
        a.event = ev.clone();
    }
    (ev, alert)
}

/// How severe an alert is: its strongest reason's (none: below every alert).
fn severity(alert: &Option<Alert>) -> Option<crate::policy::Severity> {
    alert.as_ref().and_then(|a| a.reasons.iter().map(|r| r.severity).max())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::AlertReason,
        policy::{Action, Severity, VerdictKind},
    };

    /// A limit that gives no token back: what a test sees does not depend on how
    /// fast the machine runs it.
    fn frozen() -> KernelRefusals {
        KernelRefusals::with_rate(BURST, 0.0)
    }

    fn denied(task: &str, kind: Kind, syscall: &'static str, path: &str) -> Event {
        let mut ev = Event::new(kind, Timestamp(1), Arc::from("h"));
        ev.task = Some(Arc::from(task));
        ev.syscall = Some(Cow::Borrowed(syscall));
        ev.verdict = Some(Cow::Borrowed("denied"));
        ev.path = Some(path.into());
        ev
    }

    fn alert_of(ev: &Event, severity: Severity) -> Option<Alert> {
        Some(Alert {
            schema: Cow::Borrowed(crate::event::ALERT_SCHEMA),
            kind: Cow::Borrowed("alert"),
            id: uuid::Uuid::now_v7(),
            ts: ev.ts,
            host: "h".into(),
            severity: Cow::Borrowed(severity.as_str()),
            verdict: Cow::Borrowed("denied"),
            action: Action::Alert,
            rule: None,
            reason: String::new(),
            reasons: vec![AlertReason {
                verdict: VerdictKind::Denied,
                action: Action::Alert,
                severity,
                rule: None,
                clause: Some(Cow::Borrowed("write")),
                message: String::new(),
            }],
            task: None,
            event: ev.clone(),
        })
    }

    /// The count a record says it stands for: 1 and its `unrecorded_before`, or its
    /// `unrecorded` (a summary).
    fn stands_for(ev: &Event) -> u64 {
        let n = |k: &str| ev.detail.get(k).and_then(|v| v.as_u64());
        n("unrecorded").unwrap_or_else(|| 1 + n("unrecorded_before").unwrap_or(0))
    }

    /// Admits `ev` (with `alert`): the records written, in order.
    fn admit(r: &mut KernelRefusals, ev: &Event, alert: Option<Alert>) -> Vec<(Event, Option<Alert>)> {
        let (mut e, mut a) = (ev.clone(), alert);
        let out = r.admit(&mut e, &mut a);
        out.before.into_iter().chain(out.record.then_some((e, a))).collect()
    }

    /// What a flood of `n` refused calls of `ev`'s key writes.
    fn flood(r: &mut KernelRefusals, ev: &Event, n: u64) -> Vec<(Event, Option<Alert>)> {
        (0..n).flat_map(|_| admit(r, ev, None)).collect()
    }

    fn total(records: &[(Event, Option<Alert>)]) -> u64 {
        records.iter().map(|(e, _)| stands_for(e)).sum()
    }

    fn ended(id: &str) -> HashSet<Arc<str>> {
        [Arc::from(id)].into()
    }

    #[test]
    fn a_flood_of_refused_calls_is_counted_not_recorded_one_by_one() {
        let mut r = frozen();
        let ev = denied("t", Kind::FileWrite, "openat", "/etc/x");
        let written = flood(&mut r, &ev, 10_000);
        assert_eq!(written.len(), BURST as usize);
        // Another syscall, kind, task or rule has its own burst: a flood hides nothing else.
        assert_eq!(admit(&mut r, &denied("t", Kind::FileDelete, "unlinkat", "/etc/y"), None).len(), 1);
        assert_eq!(admit(&mut r, &denied("u", Kind::FileWrite, "openat", "/etc/x"), None).len(), 1);
        let mut ruled = ev.clone();
        ruled.rule = Some("fs.etc".into());
        assert_eq!(admit(&mut r, &ruled, None).len(), 1);
        // What an approval decided is always its own record.
        let mut decided = ev.clone();
        decided.detail.insert("decision".into(), json!("denied"));
        assert_eq!(admit(&mut r, &decided, None).len(), 1);
        // Nothing said while the limit has no token; at once when the task ends
        // (stamped as given), once.
        assert!(r.due(Timestamp(2), &HashSet::new(), false).is_empty());
        let sums = r.due(Timestamp(2), &ended("t"), false);
        assert_eq!(sums.len(), 1);
        assert_eq!(total(&written) + total(&sums), 10_000, "every refused call accounted for");
        assert_eq!((sums[0].0.path.as_deref(), sums[0].0.ts), (Some("/etc/x"), Timestamp(2)));
        assert!(r.due(Timestamp(3), &ended("t"), true).is_empty(), "said once");
    }

    #[test]
    fn a_flood_at_one_target_hides_no_attempt_at_another() {
        let mut r = frozen();
        let flooded = denied("t", Kind::FileWrite, "openat", "/etc/x");
        let mut written = flood(&mut r, &flooded, 1_000);
        let other = admit(&mut r, &denied("t", Kind::FileWrite, "openat", "/etc/shadow"), None);
        assert_eq!(other.len(), 1, "a new target past the limit is recorded");
        assert_eq!(stands_for(&other[0].0), 1 + 1_000 - BURST as u64, "and says the count before it");
        written.extend(other);
        written.extend(flood(&mut r, &flooded, 1_000));
        assert!(admit(&mut r, &denied("t", Kind::FileWrite, "openat", "/etc/shadow"), None).is_empty());
        // A call's other arguments tell targets apart: a process, an id, a mode.
        let mut kill = denied("t", Kind::Ptrace, "kill", "");
        kill.path = None;
        kill.detail.insert("target_pid".into(), json!(1));
        flood(&mut r, &kill, 1_000);
        let mut at_agentmon = kill.clone();
        at_agentmon.detail.insert("target_pid".into(), json!(4242));
        assert_eq!(admit(&mut r, &at_agentmon, None).len(), 1, "a signal at another process");
        let mut setuid = denied("t", Kind::Privilege, "setuid", "");
        setuid.path = None;
        setuid.detail.insert("id".into(), json!(1000));
        flood(&mut r, &setuid, 1_000);
        let mut root = setuid.clone();
        root.detail.insert("id".into(), json!(0));
        assert_eq!(admit(&mut r, &root, None).len(), 1, "setuid(0) amid setuid(1000)");
        let sums = r.due(Timestamp(2), &ended("t"), false);
        let writes: Vec<_> = sums.into_iter().filter(|(s, _)| s.kind == Kind::FileWrite).collect();
        assert_eq!(total(&written) + total(&writes), 2_002, "every refusal accounted for once");
        // Made-up names: each new one is recorded up to TARGETS, then counted.
        let mut r = frozen();
        let made_up: Vec<_> = (0..5_000)
            .flat_map(|i| admit(&mut r, &denied("t", Kind::FileWrite, "openat", &format!("/etc/{i}")), None))
            .collect();
        assert_eq!(made_up.len(), TARGETS);
        let sums = r.due(Timestamp(2), &ended("t"), false);
        assert_eq!(total(&made_up) + total(&sums), 5_000);
        // A rule's match has a burst of its own, not a new set of targets.
        let mut r = frozen();
        let mut n = 0;
        for rule in ["a", "b", "c"] {
            for i in 0..2_000 {
                let mut ev = denied("t", Kind::FileWrite, "openat", &format!("/etc/{rule}{i}"));
                ev.rule = Some(rule.into());
                n += admit(&mut r, &ev, None).len();
            }
        }
        assert_eq!(n, TARGETS + 2 * BURST as usize, "{n} records");
    }

    #[test]
    fn the_summary_repeats_the_most_severe_held_back() {
        let mut r = frozen();
        let ev = denied("t", Kind::FileWrite, "openat", "/etc/x");
        flood(&mut r, &ev, 1_000);
        let bad = denied("t", Kind::FileWrite, "openat", "/etc/x");
        assert!(admit(&mut r, &bad, alert_of(&bad, Severity::Critical)).is_empty());
        // A harmless call last does not stand in for it...
        let junk = denied("t", Kind::FileWrite, "openat", "/etc/x");
        assert!(admit(&mut r, &junk, alert_of(&junk, Severity::Low)).is_empty());
        let sums = r.due(Timestamp(2), &ended("t"), false);
        let (s, a) = &sums[0];
        assert_eq!(a.as_ref().map(|a| a.severity.clone()), Some(Cow::Borrowed("critical")));
        assert_eq!(a.as_ref().map(|a| a.event.id), Some(s.id), "the alert is the summary's");
        // ...nor does a less severe record that ends the batch: the summary comes first.
        let mut r = frozen();
        flood(&mut r, &ev, 1_000);
        assert!(admit(&mut r, &bad, alert_of(&bad, Severity::Critical)).is_empty());
        let low = denied("t", Kind::FileWrite, "openat", "/etc/new");
        let w = admit(&mut r, &low, alert_of(&low, Severity::Low));
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!(w[0].1.as_ref().map(|a| a.severity.clone()), Some(Cow::Borrowed("critical")));
        assert_eq!((stands_for(&w[0].0), stands_for(&w[1].0)), (1_000 - BURST as u64 + 1, 1));
    }

    #[test]
    fn an_ended_task_s_processes_stay_limited() {
        // A process that outlives its task's root goes on refusing made-up names:
        // the targets seen are kept until the task is forgotten.
        let mut r = frozen();
        let mut recorded = 0;
        for tick in 0..4 {
            for i in 0..2_000 {
                let ev = denied("t", Kind::FileWrite, "openat", &format!("/etc/{tick}-{i}"));
                recorded += admit(&mut r, &ev, None).len();
            }
            r.due(Timestamp(tick), &ended("t"), false);
        }
        assert_eq!(recorded, TARGETS, "records after the end");
        r.forget("t");
        assert!(
            r.seen.is_empty()
                && r.tally.last.is_empty()
                && !r.tally.noise.holds(&(Arc::from("t"), Kind::FileWrite, Cow::Borrowed("openat"), None))
        );
        // Forgotten: a new task of that name starts afresh.
        assert_eq!(flood(&mut r, &denied("t", Kind::FileWrite, "openat", "/x"), 100).len(), BURST as usize);
    }

    #[test]
    fn what_is_not_a_refusal_is_always_recorded() {
        let mut r = frozen();
        let mut ev = denied("t", Kind::FileWrite, "openat", "/etc/x");
        ev.verdict = Some(Cow::Borrowed("out_of_scope"));
        assert_eq!(flood(&mut r, &ev, 1_000).len(), 1_000);
        let mut ev = denied("t", Kind::FileWrite, "openat", "/etc/x");
        ev.task = None;
        assert_eq!(flood(&mut r, &ev, 1_000).len(), 1_000);
    }
}
