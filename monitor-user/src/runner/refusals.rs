//! Calls the kernel refused an enforced task (Landlock, the BPF LSM hooks, the
//! seccomp filter, the network guard), as records: each is one cheap syscall for the
//! agent and a record and alert for agentmon, so a loop of refused calls filled the
//! outputs (43,727 refused opens in 3 s from one thread here) and drowned what else
//! the task did. Past a burst, they are counted per task, kind and syscall (a flood
//! of refused opens never hides a refused unlink, nor one task's another's), and the
//! first refusal of each target (path, new path, destination) is still recorded, up
//! to [`TARGETS`] per key (a flood at one file never hides an attempt at another):
//! the next record of the key says how many were not recorded one by one
//! (`detail.unrecorded_before`), or a record repeating one held back — the most severe,
//! the latest of those — says it (`detail.unrecorded`, with its alert) once the limit
//! allows, at once when the task ends (before its `task_end`) and when agentmon stops. Everything is judged first: rules count every call,
//! and a refusal a rule's containment acted on is always recorded (the pipeline).

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

/// What in a record's detail names the target of a call that has no path.
const TARGET_DETAIL: [&str; 3] = ["target_pid", "signal", "family"];

/// The refused calls of enforced tasks, limited (see the module's head).
pub struct KernelRefusals {
    tally: Tally<Key, (Event, Option<Alert>)>,
    /// The targets each key's records named (hashes), up to [`TARGETS`].
    seen: HashMap<Key, HashSet<u64>>,
    hasher: std::hash::RandomState,
}

impl Default for KernelRefusals {
    fn default() -> Self {
        Self {
            tally: Tally::new(Noise::with_rate(BURST, PER_SEC)),
            seen: HashMap::new(),
            hasher: std::hash::RandomState::new(),
        }
    }
}

impl KernelRefusals {
    /// Whether judged `ev` is recorded: a call enforcement refused past the limit is
    /// counted instead, and kept as the model of the summary.
    pub fn admit(&mut self, ev: &mut Event, alert: &mut Option<Alert>) -> bool {
        let Some(task) = ev.task.clone() else { return true };
        if ev.verdict.as_deref() != Some("denied") || DECIDED.iter().any(|k| ev.detail.contains_key(*k)) {
            return true;
        }
        let syscall = ev.syscall.clone().unwrap_or(Cow::Borrowed(""));
        let key = (task, ev.kind, syscall, ev.rule.clone());
        let new_target = {
            let named: Vec<_> =
                TARGET_DETAIL.iter().map(|k| ev.detail.get(*k).map(|v| v.to_string())).collect();
            let target = self.hasher.hash_one((&ev.path, &ev.new_path, &ev.dst, named));
            let seen = self.seen.entry(key.clone()).or_default();
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
                // for the one that mattered.
                // (One held: this one, the first since the last record; the model
                // kept is an older batch's.)
                let keep = match self.tally.last.get(&key) {
                    Some((_, was)) if self.tally.noise.held(&key) > 1 => severity(alert) >= severity(was),
                    _ => true,
                };
                if keep {
                    self.tally.last.insert(key, (ev.clone(), alert.clone()));
                }
                return false;
            }
        };
        if held > 0 {
            ev.detail.insert("unrecorded_before".into(), json!(held));
            if let Some(a) = alert {
                a.event.detail.insert("unrecorded_before".into(), json!(held));
            }
        }
        true
    }

    /// Summaries of what was held back: of the tasks `gone(task)` says (ended, or
    /// agentmon stops) at once, of the others once the limit allows.
    pub fn unsaid(&mut self, now: Timestamp, gone: impl Fn(&str) -> bool) -> Vec<(Event, Option<Alert>)> {
        let said = self.tally.unsaid(|(task, ..)| gone(task));
        said.into_iter()
            .map(|(_, (last, mut alert), held)| {
                let ev = summary(last, now, held);
                if let Some(a) = &mut alert {
                    a.id = uuid::Uuid::now_v7();
                    a.ts = now;
                    a.event = ev.clone();
                }
                (ev, alert)
            })
            .collect()
    }

    /// Forgets task `id` (it ended and has no process left). Not before: a process
    /// that outlives its task's root is still held to the limit and the targets
    /// seen.
    pub fn forget(&mut self, id: &str) {
        self.seen.retain(|(task, ..), _| &**task != id);
        self.tally.last.retain(|(task, ..), _| &**task != id);
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

/// How severe an alert is: its strongest reason's (none: below every alert).
fn severity(alert: &Option<Alert>) -> Option<crate::policy::Severity> {
    alert.as_ref().and_then(|a| a.reasons.iter().map(|r| r.severity).max())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::{
        event::AlertReason,
        policy::{Action, Severity, VerdictKind},
    };

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

    /// What a flood of `n` refused calls of `ev`'s key leaves: the records made and
    /// the count they say (each 1 and its `unrecorded_before`).
    fn flood(r: &mut KernelRefusals, ev: &Event, n: u64) -> (u64, u64) {
        let (mut recorded, mut said) = (0, 0);
        for _ in 0..n {
            let mut e = ev.clone();
            if r.admit(&mut e, &mut None) {
                recorded += 1;
                said += 1 + e.detail.get("unrecorded_before").and_then(|v| v.as_u64()).unwrap_or(0);
            }
        }
        (recorded, said)
    }

    /// The tokens the limit may have given back since `t` (a loaded machine runs
    /// the loops slowly), and one.
    fn refilled(t: Instant) -> u64 {
        (t.elapsed().as_secs_f64() * PER_SEC).ceil() as u64 + 1
    }

    fn said(sums: &[(Event, Option<Alert>)]) -> u64 {
        sums.iter().map(|(s, _)| s.detail["unrecorded"].as_u64().unwrap()).sum()
    }

    fn ended(id: &str) -> HashSet<Arc<str>> {
        [Arc::from(id)].into()
    }

    #[test]
    fn a_flood_of_refused_calls_is_counted_not_recorded_one_by_one() {
        let mut r = KernelRefusals::default();
        let ev = denied("t", Kind::FileWrite, "openat", "/etc/x");
        let t = Instant::now();
        let (recorded, said_by_records) = flood(&mut r, &ev, 10_000);
        assert!(recorded <= BURST as u64 + refilled(t), "{recorded} records for a flood");
        // Another syscall, kind, task or rule has its own burst: a flood hides nothing else.
        let mut other = denied("t", Kind::FileDelete, "unlinkat", "/etc/y");
        assert!(r.admit(&mut other, &mut None));
        let mut other = denied("u", Kind::FileWrite, "openat", "/etc/x");
        assert!(r.admit(&mut other, &mut None));
        let mut ruled = ev.clone();
        ruled.rule = Some("fs.etc".into());
        assert!(r.admit(&mut ruled, &mut None));
        // What an approval decided is always its own record.
        let mut decided = ev.clone();
        decided.detail.insert("decision".into(), json!("denied"));
        assert!(r.admit(&mut decided, &mut None));
        // Said at once when the task ends (stamped as given), once.
        let sums = r.due(Timestamp(2), &ended("t"), false);
        assert_eq!(sums.len(), 1);
        assert_eq!(said_by_records + said(&sums), 10_000, "every refused call accounted for");
        assert_eq!(sums[0].0.path.as_deref(), Some("/etc/x"));
        assert_eq!(sums[0].0.ts, Timestamp(2));
        assert!(r.due(Timestamp(3), &ended("t"), true).is_empty(), "said once");
    }

    #[test]
    fn a_summary_waits_for_the_limit_while_the_task_runs() {
        let mut r = KernelRefusals::default();
        let ev = denied("t", Kind::FileWrite, "openat", "/etc/x");
        flood(&mut r, &ev, 1_000);
        // The flood spent the tokens: nothing yet (unless the machine was slow).
        let t = Instant::now();
        let sums = r.due(Timestamp(2), &HashSet::new(), false);
        assert!(sums.is_empty() || t.elapsed().as_secs_f64() * PER_SEC >= 1.0, "{sums:?}");
    }

    #[test]
    fn a_flood_at_one_target_hides_no_attempt_at_another() {
        let mut r = KernelRefusals::default();
        let flooded = denied("t", Kind::FileWrite, "openat", "/etc/x");
        let (_, a) = flood(&mut r, &flooded, 1_000);
        let mut other = denied("t", Kind::FileWrite, "openat", "/etc/shadow");
        assert!(r.admit(&mut other, &mut None), "a new target past the limit is recorded");
        let before = other.detail.get("unrecorded_before").and_then(|v| v.as_u64()).unwrap_or(0);
        let (_, b) = flood(&mut r, &flooded, 1_000);
        let mut again = denied("t", Kind::FileWrite, "openat", "/etc/shadow");
        assert!(!r.admit(&mut again, &mut None), "the same target again is counted");
        // A signal's target is its process: another pid is another target.
        let mut kill = denied("t", Kind::Ptrace, "kill", "");
        kill.path = None;
        kill.detail.insert("target_pid".into(), json!(1));
        flood(&mut r, &kill, 1_000);
        let mut at_agentmon = kill.clone();
        at_agentmon.detail.insert("target_pid".into(), json!(4242));
        assert!(r.admit(&mut at_agentmon, &mut None), "a signal at another process is recorded");
        let sums = r.due(Timestamp(2), &ended("t"), false);
        let writes: Vec<_> = sums.iter().filter(|(s, _)| s.kind == Kind::FileWrite).cloned().collect();
        assert_eq!(a + 1 + before + b + said(&writes), 2_002, "every refusal accounted for once");
        // Made-up names: each new one is recorded up to TARGETS, then counted.
        let mut r = KernelRefusals::default();
        let t = Instant::now();
        let recorded = (0..5_000)
            .filter(|i| r.admit(&mut denied("t", Kind::FileWrite, "openat", &format!("/etc/{i}")), &mut None))
            .count() as u64;
        assert!(
            (TARGETS as u64..TARGETS as u64 + refilled(t)).contains(&recorded),
            "{recorded} of 5,000 recorded"
        );
        assert_eq!(said(&r.due(Timestamp(2), &ended("t"), false)), 5_000 - recorded);
    }

    #[test]
    fn the_summary_repeats_the_most_severe_held_back() {
        let mut r = KernelRefusals::default();
        let ev = denied("t", Kind::FileWrite, "openat", "/etc/x");
        flood(&mut r, &ev, 1_000);
        let mut bad = denied("t", Kind::FileWrite, "openat", "/etc/x");
        let mut bad_alert = alert_of(&bad, Severity::Critical);
        assert!(!r.admit(&mut bad, &mut bad_alert));
        // A harmless call last does not stand in for it.
        let mut junk = denied("t", Kind::FileWrite, "openat", "/etc/x");
        let mut junk_alert = alert_of(&junk, Severity::Low);
        assert!(!r.admit(&mut junk, &mut junk_alert));
        let sums = r.due(Timestamp(2), &ended("t"), false);
        let (s, a) = &sums[0];
        assert_eq!(a.as_ref().map(|a| a.severity.clone()), Some(Cow::Borrowed("critical")));
        assert_eq!(a.as_ref().map(|a| a.event.id), Some(s.id), "the alert is the summary's");
    }

    #[test]
    fn an_ended_task_s_processes_stay_limited() {
        // A process that outlives its task's root goes on refusing made-up names:
        // the targets seen are kept until the task is forgotten.
        let mut r = KernelRefusals::default();
        let mut made_up = 0;
        let mut recorded = 0;
        for tick in 0..4 {
            for _ in 0..2_000 {
                made_up += 1;
                let mut ev = denied("t", Kind::FileWrite, "openat", &format!("/etc/{made_up}"));
                recorded += u64::from(r.admit(&mut ev, &mut None));
            }
            r.due(Timestamp(tick), &ended("t"), false);
        }
        assert!(recorded < TARGETS as u64 + BURST as u64, "{recorded} records after the end");
        r.forget("t");
        assert!(r.seen.is_empty() && r.tally.last.is_empty());
    }

    #[test]
    fn what_is_not_a_refusal_is_always_recorded() {
        let mut r = KernelRefusals::default();
        let mut ev = denied("t", Kind::FileWrite, "openat", "/etc/x");
        ev.verdict = Some(Cow::Borrowed("out_of_scope"));
        assert_eq!(flood(&mut r, &ev, 1_000).0, 1_000);
        let mut ev = denied("t", Kind::FileWrite, "openat", "/etc/x");
        ev.task = None;
        assert_eq!(flood(&mut r, &ev, 1_000).0, 1_000);
    }
}
