//! A rate limit on the records and log lines a caller can cause by being refused
//! (control requests, refused requests of enforced tasks, calls the kernel refused
//! them): each is cheap for the caller and a record for agentmon, so a flood of them
//! must not fill the disk or the stream. What is held back is counted, and the next
//! record says how many.

use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
    time::Instant,
};

/// Whose refusals a budget counts: a task's (by cookie; 0: a process in a task's
/// cgroup the kernel does not track) or a user's (by uid). Apart, a user cannot
/// spend a task's budget, nor a task another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Caller {
    Task(u32),
    User(u32),
}

/// A rate limit on the records and log lines a caller can cause by being refused:
/// a burst of [`NOISE_BURST`], then one a second, per key (a [`Caller`]; a refused
/// request's name), unless made [`Noise::with_rate`].
#[derive(Debug)]
pub struct Noise<K = Caller> {
    by: HashMap<K, Bucket>,
    burst: f64,
    per_sec: f64,
    /// Past this many callers kept, the map is pruned.
    cap: usize,
}

/// Callers kept before the map is pruned.
const CALLERS: usize = 4096;

impl<K> Default for Noise<K> {
    fn default() -> Self {
        Self::with_rate(NOISE_BURST, 1.0)
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    held: u64,
}

const NOISE_BURST: f64 = 5.0;

/// How long a held count waits for its caller's next record before it may be
/// forgotten (only when more than [`CALLERS`] are kept).
const FORGET_HELD: std::time::Duration = std::time::Duration::from_secs(3600);

impl<K> Noise<K> {
    /// A burst of `burst`, then `per_sec` a second, per key.
    pub fn with_rate(burst: f64, per_sec: f64) -> Self {
        Self { by: HashMap::new(), burst, per_sec, cap: CALLERS }
    }
}

impl<K: Hash + Eq> Noise<K> {
    /// Whether to write now for `who`; if so, how many of its were held back since
    /// the last one.
    pub fn allow(&mut self, who: K) -> Option<u64> {
        let (burst, rate) = (self.burst, self.per_sec);
        if self.by.len() > self.cap {
            // Callers whose limit is whole again are forgotten (as new, they get
            // the same), and a count not yet said only once its caller has been gone
            // an hour (refused control requests of a caller that never came back:
            // nothing would have said it). Callers still limited stay: forgetting
            // them would give a flood a new burst.
            self.by.retain(|_, b| {
                let idle = b.at.elapsed();
                let whole = b.tokens + idle.as_secs_f64() * rate >= burst;
                if b.held > 0 { idle < FORGET_HELD } else { !whole }
            });
            // Not again until it has doubled: pruning is not every call's cost.
            self.cap = (2 * self.by.len()).max(CALLERS);
        }
        let b = self.by.entry(who).or_insert(Bucket { tokens: burst, at: Instant::now(), held: 0 });
        b.tokens = (b.tokens + b.at.elapsed().as_secs_f64() * rate).min(burst);
        b.at = Instant::now();
        if b.tokens < 1.0 {
            b.held += 1;
            return None;
        }
        b.tokens -= 1.0;
        Some(std::mem::take(&mut b.held))
    }

    /// What `who` held back since its last record, if the limit lets one record
    /// through now (a summary: nothing new was refused, so nothing is counted).
    pub fn release(&mut self, who: &K) -> Option<u64> {
        let (burst, rate) = (self.burst, self.per_sec);
        let b = self.by.get_mut(who)?;
        b.tokens = (b.tokens + b.at.elapsed().as_secs_f64() * rate).min(burst);
        b.at = Instant::now();
        if b.tokens < 1.0 {
            return None;
        }
        b.tokens -= 1.0;
        Some(std::mem::take(&mut b.held))
    }

    /// Gives back `n` held (counted, not said) to `who`'s count: what a record that
    /// could not be made would have said.
    pub fn hold_again(&mut self, who: &K, n: u64) {
        if let Some(b) = self.by.get_mut(who) {
            b.held += n;
        }
    }

    /// Gives `who` back the token a record that could not be made took.
    pub fn refund(&mut self, who: &K) {
        if let Some(b) = self.by.get_mut(who) {
            b.tokens = (b.tokens + 1.0).min(self.burst);
        }
    }

    /// Takes back the last one counted for `who` (it did not happen after all).
    pub fn unhold(&mut self, who: &K) {
        if let Some(b) = self.by.get_mut(who) {
            b.held = b.held.saturating_sub(1);
        }
    }

    /// What `who` held back since its last record, taken whatever the limit says.
    pub fn take(&mut self, who: &K) -> u64 {
        self.by.get_mut(who).map(|b| std::mem::take(&mut b.held)).unwrap_or(0)
    }

    /// Forgets the callers `gone` names (a task that ended with no process left).
    pub fn forget(&mut self, gone: impl Fn(&K) -> bool) {
        self.by.retain(|k, _| !gone(k));
    }

    /// Whether `who` has held anything back since its last record.
    pub fn holds(&self, who: &K) -> bool {
        self.held(who) > 0
    }

    /// How many `who` has held back since its last record.
    pub fn held(&self, who: &K) -> u64 {
        self.by.get(who).map_or(0, |b| b.held)
    }
}

/// A [`Noise`] limit with, per key, the model of the summary that says how many
/// were held back: the refusal last recorded, or the last held back (a record
/// repeating it, with the count).
#[derive(Debug)]
pub struct Tally<K, M> {
    pub noise: Noise<K>,
    pub last: BTreeMap<K, M>,
}

impl<K, M> Default for Tally<K, M> {
    fn default() -> Self {
        Self::new(Noise::default())
    }
}

impl<K, M> Tally<K, M> {
    pub fn new(noise: Noise<K>) -> Self {
        Self { noise, last: BTreeMap::new() }
    }
}

impl<K: Hash + Ord + Clone, M: Clone> Tally<K, M> {
    /// The keys with refusals held back, their model and count: those `at_once(key)`
    /// says at once (the caller is gone, agentmon stops), the others once the limit
    /// lets one more record through (asked every tick). The model of a key said
    /// at once is forgotten: nothing more will come of that caller.
    pub fn unsaid(&mut self, at_once: impl Fn(&K) -> bool) -> Vec<(K, M, u64)> {
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (k, last) in &self.last {
            let now = at_once(k);
            if now {
                gone.push(k.clone());
            }
            if !self.noise.holds(k) {
                continue;
            }
            let held = if now { Some(self.noise.take(k)) } else { self.noise.release(k) };
            if let Some(held) = held {
                out.push((k.clone(), last.clone(), held));
            }
        }
        for k in gone {
            self.last.remove(&k);
        }
        out
    }
}

/// `last` restated as the summary of `held` refusals not recorded one by one: a new
/// record, made `now`, saying the count (`detail.unrecorded`).
pub fn summary(
    mut last: crate::event::Event,
    now: crate::event::Timestamp,
    held: u64,
) -> crate::event::Event {
    last.id = uuid::Uuid::now_v7();
    last.ts = now;
    last.detail.remove("unrecorded_before");
    last.detail.insert("unrecorded".into(), serde_json::json!(held));
    last
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn noise_is_limited_per_caller() {
        let mut n = Noise::default();
        for _ in 0..5 {
            assert_eq!(n.allow(Some(7)), Some(0));
        }
        assert_eq!(n.allow(Some(7)), None);
        assert_eq!(n.allow(Some(7)), None);
        // Another caller has its own burst.
        assert_eq!(n.allow(Some(8)), Some(0));
        // A user and a task with the same number are two callers.
        let mut c = Noise::<Caller>::default();
        for _ in 0..5 {
            assert_eq!(c.allow(Caller::User(7)), Some(0));
        }
        assert_eq!(c.allow(Caller::User(7)), None);
        assert_eq!(c.allow(Caller::Task(7)), Some(0));
        assert!(n.holds(&Some(7)) && !n.holds(&Some(8)));
        n.by.get_mut(&Some(7)).unwrap().at = Instant::now() - Duration::from_secs(2);
        assert_eq!(n.allow(Some(7)), Some(2));
        assert!(!n.holds(&Some(7)));
        assert_eq!(n.allow(Some(7)), Some(0), "the second second's token");
        assert_eq!(n.allow(Some(7)), None);
        assert_eq!(n.take(&Some(7)), 1, "taken whatever the limit");
        assert!(!n.holds(&Some(7)));
        // What did not happen after all is taken back; what a record could not say
        // goes back to the count.
        assert_eq!(n.allow(Some(7)), None);
        n.unhold(&Some(7));
        assert!(!n.holds(&Some(7)));
        n.hold_again(&Some(7), 3);
        assert_eq!(n.take(&Some(7)), 3);
        // A record not made gives its token back.
        let mut r = Noise::default();
        for _ in 0..5 {
            assert_eq!(r.allow(Some(1)), Some(0));
        }
        r.refund(&Some(1));
        assert_eq!(r.allow(Some(1)), Some(0), "the refunded token");
        assert_eq!(r.allow(Some(1)), None);
    }

    #[test]
    fn a_summary_waiting_for_the_limit_counts_nothing() {
        // The gate asks every tick whether a summary of the held refusals may go
        // out; a tick the limit says no to is no refusal (CI on deb13 counted 301
        // F_SETOWN refusals for 300: a slow flood spans ticks).
        let mut n = Noise::default();
        for _ in 0..5 {
            assert_eq!(n.allow(Some(7)), Some(0));
        }
        assert_eq!(n.allow(Some(7)), None);
        for _ in 0..3 {
            assert_eq!(n.release(&Some(7)), None, "no token yet");
        }
        n.by.get_mut(&Some(7)).unwrap().at = Instant::now() - Duration::from_secs(1);
        assert_eq!(n.release(&Some(7)), Some(1), "the one refusal held, no more");
        assert!(!n.holds(&Some(7)));
        assert_eq!(n.release(&Some(8)), None, "a caller never seen");
    }
}
