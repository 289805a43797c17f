//! Calls the kernel refused an enforced task (Landlock, the BPF LSM hooks, the
//! seccomp filter, the network guard), as records: each is one cheap syscall for the
//! agent and a record and alert for agentmon, so a loop of refused calls filled the
//! outputs (43,727 refused opens in 3 s from one thread here) and drowned what else
//! the task did. Past a burst, they are counted per task, kind and syscall (a flood
//! of refused opens never hides a refused unlink, nor one task's another's), and the
//! first refusal of each target (path, new path, destination) is still recorded, up
//! to [`TARGETS`] per key (a flood at one file never hides an attempt at another):
//! the next record of the key says how many were not recorded one by one
//! (`detail.unrecorded_before`), or a record repeating the last one held back says it
//! (`detail.unrecorded`, with its alert) once the limit allows, at the latest when the
//! task ends or agentmon stops. Everything is judged first: rules count every call,
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

type Key = (Arc<str>, Kind, Cow<'static, str>);

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
        if ev.verdict.as_deref() != Some("denied") {
            return true;
        }
        let syscall = ev.syscall.clone().unwrap_or(Cow::Borrowed(""));
        let key = (task, ev.kind, syscall);
        let new_target = {
            let target = self.hasher.hash_one((&ev.path, &ev.new_path, &ev.dst));
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
                self.tally.last.insert(key, (ev.clone(), alert.clone()));
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
        let said = self.tally.unsaid(|(task, _, _)| gone(task));
        self.seen.retain(|(task, _, _), _| !gone(task));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(task: &str, kind: Kind, syscall: &'static str, path: &str) -> Event {
        let mut ev = Event::new(kind, Timestamp(1), Arc::from("h"));
        ev.task = Some(Arc::from(task));
        ev.syscall = Some(Cow::Borrowed(syscall));
        ev.verdict = Some(Cow::Borrowed("denied"));
        ev.path = Some(path.into());
        ev
    }

    /// What a flood of `n` refused calls of `ev`'s key leaves: the records made and
    /// the count they say, which must add up to `n`.
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

    #[test]
    fn a_flood_of_refused_calls_is_counted_not_recorded_one_by_one() {
        let mut r = KernelRefusals::default();
        let ev = denied("t", Kind::FileWrite, "openat", "/etc/x");
        let (recorded, said) = flood(&mut r, &ev, 10_000);
        assert!(recorded <= BURST as u64 + 2, "{recorded} records for a flood");
        // Another syscall, kind or task has its own burst: a flood hides nothing else.
        let mut other = denied("t", Kind::FileDelete, "unlinkat", "/etc/y");
        assert!(r.admit(&mut other, &mut None));
        let mut other = denied("u", Kind::FileWrite, "openat", "/etc/x");
        assert!(r.admit(&mut other, &mut None));
        // Not said yet: the limit has no token; the task's end says it at once.
        let ended: HashSet<Arc<str>> = [Arc::from("t")].into();
        let sums = r.due(Timestamp(2), &HashSet::new(), false);
        assert!(sums.is_empty(), "{sums:?}");
        let sums = r.due(Timestamp(2), &ended, false);
        assert_eq!(sums.len(), 1);
        let (s, _) = &sums[0];
        let held = s.detail["unrecorded"].as_u64().unwrap();
        assert_eq!(said + held, 10_000, "every refused call accounted for");
        assert_eq!(s.path.as_deref(), Some("/etc/x"));
        assert_eq!(s.ts, Timestamp(2));
        assert!(r.due(Timestamp(3), &ended, true).is_empty(), "said once");
    }

    #[test]
    fn a_flood_at_one_target_hides_no_attempt_at_another() {
        let mut r = KernelRefusals::default();
        let flooded = denied("t", Kind::FileWrite, "openat", "/etc/x");
        let (_, a) = flood(&mut r, &flooded, 1_000);
        let mut other = denied("t", Kind::FileWrite, "openat", "/etc/shadow");
        assert!(r.admit(&mut other, &mut None), "a new target past the limit is recorded");
        let said_before = other.detail.get("unrecorded_before").and_then(|v| v.as_u64()).unwrap_or(0);
        let (_, b) = flood(&mut r, &flooded, 1_000);
        let mut again = denied("t", Kind::FileWrite, "openat", "/etc/shadow");
        let again_recorded = r.admit(&mut again, &mut None);
        assert!(!again_recorded, "the same target again is counted");
        let ended: HashSet<Arc<str>> = [Arc::from("t")].into();
        let held: u64 = r
            .due(Timestamp(2), &ended, false)
            .iter()
            .map(|(s, _)| s.detail["unrecorded"].as_u64().unwrap())
            .sum();
        assert_eq!(a + 1 + said_before + b + held, 2_002, "every refusal accounted for once");
        // Made-up names: each new one is recorded up to TARGETS, then counted.
        let mut r = KernelRefusals::default();
        let recorded = (0..5_000)
            .filter(|i| r.admit(&mut denied("t", Kind::FileWrite, "openat", &format!("/etc/{i}")), &mut None))
            .count();
        // (A token the limit gave back while the loop ran is one more.)
        assert!((TARGETS..TARGETS + 3).contains(&recorded), "{recorded} of 5,000 made-up names recorded");
        let sums = r.due(Timestamp(2), &ended, false);
        assert_eq!(sums[0].0.detail["unrecorded"].as_u64(), Some(5_000 - recorded as u64));
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
