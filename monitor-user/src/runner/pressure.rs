//! Backpressure. A task's processes can make events faster than agentmon records
//! them (a storm of file operations while other work shares the cores): the ring
//! buffer fills and the kernel drops what no longer fits. Losing the record of what
//! an agent did is worse than slowing the agent, so before the ring is full agentmon
//! pauses the tasks making the storm (their cgroups' freezer: each process stops at
//! its next return to user space; processes outside every task are never touched)
//! and thaws them once it has caught up. Pauses are reported as `action` records
//! (`pause`), one per task and report tick, with how many and how long.
//!
//! The fill level is read from the ring's own positions (the consumer and producer
//! pages the kernel shares with the reader), mapped a second time read-only: two
//! loads, no system call. The same positions bound each drain to what was in the
//! ring when it began, so that a storm cannot hold the loop (and the control socket,
//! approvals, ticks) in one endless drain.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    os::fd::{AsRawFd, BorrowedFd},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    contain::Containment,
    event::{Event, Timestamp},
};

/// The ring's consumer and producer pages, mapped read-only.
pub struct Level {
    base: *mut libc::c_void,
    page: usize,
}

// SAFETY: the mapping is read through atomics only and lives as long as the value.
unsafe impl Send for Level {}

impl Level {
    fn map(fd: BorrowedFd<'_>) -> std::io::Result<Level> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // SAFETY: a new shared read-only mapping of the map's first two pages (the
        // kernel allows any read-only mapping of a ring buffer map); checked below.
        let base = unsafe {
            libc::mmap(std::ptr::null_mut(), 2 * page, libc::PROT_READ, libc::MAP_SHARED, fd.as_raw_fd(), 0)
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Level { base, page })
    }

    /// Where the reader is (the kernel's `unsigned long` consumer position).
    pub fn consumer(&self) -> usize {
        // SAFETY: a page-aligned word inside the mapping, updated atomically.
        unsafe { (*(self.base as *const AtomicUsize)).load(Ordering::Acquire) }
    }

    /// Where the kernel has reserved up to.
    pub fn producer(&self) -> usize {
        // SAFETY: as above, at the start of the second page.
        unsafe { (*(self.base.add(self.page) as *const AtomicUsize)).load(Ordering::Acquire) }
    }

    /// Bytes the kernel has written that the reader has not yet consumed.
    pub fn backlog(&self) -> u64 {
        self.producer().wrapping_sub(self.consumer()) as u64
    }
}

impl Drop for Level {
    fn drop(&mut self) {
        // SAFETY: unmaps what map() mapped, once.
        unsafe { libc::munmap(self.base, 2 * self.page) };
    }
}

/// The fill level of the ring buffer `ring`, and its size (read from the kernel: a
/// ring taken over from a previous daemon keeps the size it was made with).
pub fn level(ring: &aya::maps::RingBuf<aya::maps::MapData>) -> std::io::Result<(Level, u64)> {
    use std::os::fd::AsFd;
    let fd = ring.as_fd();
    let bytes = aya::maps::MapData::from_fd(fd.try_clone_to_owned()?)
        .and_then(|m| m.info())
        .map(|i| i.max_entries())
        .map_err(std::io::Error::other)?;
    Ok((Level::map(fd)?, u64::from(bytes)))
}

pub struct Pressure {
    /// Pause at or above this many bytes waiting (a quarter of the ring: the rest
    /// covers the reader's own wait for a core on a busy host), resume at or below
    /// `low` (a sixteenth): far enough apart that a pause is worth its cost.
    high: u64,
    low: u64,
    /// The tasks paused, each since when.
    paused: HashMap<Arc<str>, Instant>,
    /// Makers the freezer was not asked for since the ring was last calm (frozen
    /// already by a rule or an operator, or the request failed): not asked again.
    declined: HashSet<Arc<str>>,
    /// Backpressure has given up until the ring is calm again (a pause held for
    /// `max_pause`, [`MAX_PAUSE`], without the ring draining).
    gave_up: bool,
    max_pause: Duration,
    /// Pauses since the last report: per task, how many and how long.
    tally: BTreeMap<Arc<str>, (u32, Duration)>,
    /// Records taken, across drains: one in 64 is sampled.
    taken: u64,
    /// Whose the records sampled lately were (per task, halved every [`WINDOW`]
    /// samples), and how many: a pause stops the tasks that make the storm, not the
    /// others, and a task that starts its storm while others are paused is paused
    /// in its turn.
    samples: HashMap<Arc<str>, u32>,
    sampled: u32,
}

/// Samples after which the counts are halved: the makers are those of the last
/// few tens of thousands of records, not of the whole storm.
const WINDOW: u32 = 512;

/// The longest a pause lasts while the ring does not drain to its low mark. Past it,
/// what fills the ring is not what is paused (a task with a call held for approval,
/// one without a cgroup, a process that left its cgroup): every task is thawed and
/// none paused again until the ring is calm, so that no tenant stays frozen for
/// another's storm; what the ring cannot hold meanwhile is lost, and counted.
const MAX_PAUSE: Duration = Duration::from_secs(2);

impl Pressure {
    /// Backpressure on a ring buffer of `bytes`.
    pub fn new(bytes: u64) -> Pressure {
        Pressure {
            high: bytes / 4,
            low: bytes / 16,
            paused: HashMap::new(),
            declined: HashSet::new(),
            gave_up: false,
            max_pause: MAX_PAUSE,
            tally: BTreeMap::new(),
            taken: 0,
            samples: HashMap::new(),
            sampled: 0,
        }
    }

    /// A record of task `task` (None: of no task) was taken; true when it is time
    /// to [`Self::check`] (every 64th).
    pub fn took(&mut self, task: Option<&Arc<str>>) -> bool {
        self.taken += 1;
        if !self.taken.is_multiple_of(64) {
            return false;
        }
        if self.sampled >= WINDOW {
            self.sampled /= 2;
            self.samples.retain(|_, n| {
                *n /= 2;
                *n > 0
            });
        }
        self.sampled += 1;
        if let Some(t) = task {
            *self.samples.entry(t.clone()).or_default() += 1;
        }
        true
    }

    /// Pauses the tasks making the storm while `waiting` bytes fill the ring past
    /// its high mark (those already paused stay so, and a task that makes the storm
    /// while others are paused is paused too: the ring would fill again without
    /// them catching up), thaws them all once it is down to the low one. `held`:
    /// tasks with calls held for approval, never paused (the freezer would interrupt
    /// the held call, which the kernel then starts again as a new request).
    pub fn check(&mut self, waiting: u64, contain: &mut Containment, held: &dyn Fn() -> Vec<Arc<str>>) {
        if waiting <= self.low {
            self.resume(contain);
            // Calm: what is sampled from here is the next storm's.
            self.samples.clear();
            self.sampled = 0;
            self.declined.clear();
            self.gave_up = false;
            return;
        }
        if self.gave_up {
            return;
        }
        if self.paused.values().min().is_some_and(|since| since.elapsed() >= self.max_pause) {
            tracing::warn!(
                "{waiting} bytes still waiting in the ring after pausing {:?} for {:?}: thawed; \
                 no pause until the ring drains",
                self.paused.keys().collect::<Vec<_>>(),
                self.max_pause
            );
            self.resume(contain);
            self.gave_up = true;
            return;
        }
        // While some are paused, only a task with its tenth of a fair number of
        // samples is paused in its turn (not every one sampled once).
        if waiting < self.high || (!self.paused.is_empty() && self.sampled < 16) {
            return;
        }
        let makers: Vec<_> = contain
            .makers(&self.samples, self.sampled, &held())
            .into_iter()
            .filter(|t| !contain.is_paused(t) && !self.declined.contains(t))
            .collect();
        if makers.is_empty() {
            // Nothing (more) sampled to pause: asked again at the next sample.
            return;
        }
        let ids = contain.pause(&makers);
        tracing::debug!("{waiting} bytes waiting in the ring: paused {ids:?}");
        let now = Instant::now();
        self.declined.extend(makers.into_iter().filter(|t| !ids.contains(t)));
        // Newly paused (a task claimed by a freeze and thawed since starts over).
        self.paused.extend(ids.into_iter().map(|id| (id, now)));
    }

    /// Thaws what is paused (at the end of a run too: a task is never left frozen).
    /// A pause is reported for the tasks thawed (not those a rule, an operator or an
    /// expiry froze for good meanwhile).
    pub fn resume(&mut self, contain: &mut Containment) {
        if self.paused.is_empty() {
            return;
        }
        let thawed = contain.resume();
        for (id, since) in self.paused.drain() {
            if thawed.contains(&id) {
                let t = self.tally.entry(id).or_default();
                t.0 += 1;
                t.1 += since.elapsed();
            }
        }
    }

    /// The `pause` records of the pauses since the last call.
    pub fn report(&mut self, host: &Arc<str>, now: Timestamp) -> Vec<Event> {
        std::mem::take(&mut self.tally)
            .into_iter()
            .map(|(id, (times, took))| {
                Containment::paused_event(&id, times, took.as_millis() as u64, host.clone(), now)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contain::tests::fake_cgroup;

    fn frozen(d: &std::path::Path, id: &str) -> bool {
        std::fs::read_to_string(d.join(id).join("cgroup.freeze")).unwrap().trim() == "1"
    }

    /// `n` records of `task`, taken as the drain takes them (checking at each sample).
    fn take(p: &mut Pressure, c: &mut Containment, task: &str, n: u32, waiting: u64) {
        let t: Arc<str> = task.into();
        for _ in 0..n {
            if p.took(Some(&t)) {
                p.check(waiting, c, &Vec::new);
            }
        }
    }

    /// Top-level tasks `ids`, each with a cgroup of its own (running).
    fn tasks(d: &std::path::Path, ids: &[&str]) -> Containment {
        let mut c = Containment::default();
        for (i, id) in ids.iter().enumerate() {
            c.register((*id).into(), i as u32 + 1, Some(fake_cgroup(d, id, false)), false);
        }
        c
    }

    #[test]
    fn a_storm_that_starts_while_others_are_paused_is_paused_too() {
        let d = tempfile::tempdir().unwrap();
        let mut c = tasks(d.path(), &["a", "b", "c", "late"]);
        let mut p = Pressure::new(16 << 20);
        let (high, low) = (p.high, p.low);
        // Three tasks fill the ring past its high mark: they are paused.
        for id in ["a", "b", "c"] {
            take(&mut p, &mut c, id, 64 * 40, high - 1);
        }
        take(&mut p, &mut c, "a", 64, high);
        assert!(["a", "b", "c"].iter().all(|id| frozen(d.path(), id)));
        assert!(!frozen(d.path(), "late"));
        // While they are paused, the fourth makes the storm and the ring stays full:
        // it is paused in its turn (the ring would overflow before the low mark).
        take(&mut p, &mut c, "late", 64 * 200, high);
        assert!(frozen(d.path(), "late"), "a task storming while others are paused runs on");
        // Caught up: every one is thawed, and each pause is reported.
        take(&mut p, &mut c, "late", 64, low);
        assert!(["a", "b", "c", "late"].iter().all(|id| !frozen(d.path(), id)));
        let report = p.report(&"h".into(), Timestamp::now());
        assert_eq!(report.len(), 4);
    }

    #[test]
    fn a_task_storming_after_a_long_storm_is_paused_soon() {
        let d = tempfile::tempdir().unwrap();
        let mut c = tasks(d.path(), &["a", "b", "c", "late"]);
        let mut p = Pressure::new(16 << 20);
        let high = p.high;
        // A long storm below the high mark (5000 samples each), then the high mark.
        for _ in 0..50 {
            for id in ["a", "b", "c"] {
                take(&mut p, &mut c, id, 64 * 100, high - 1);
            }
        }
        take(&mut p, &mut c, "a", 64, high);
        assert!(["a", "b", "c"].iter().all(|id| frozen(d.path(), id)));
        // The late storm is the last few hundred samples' maker: paused within 100
        // (counted since the first storm began, it would need 1,700).
        take(&mut p, &mut c, "late", 64 * 100, high);
        assert!(frozen(d.path(), "late"), "the late storm waits for the first one's samples to age");
    }

    #[test]
    fn a_task_sampled_once_is_not_paused_beside_a_paused_storm() {
        let d = tempfile::tempdir().unwrap();
        let mut c = tasks(d.path(), &["storm", "quiet"]);
        let mut p = Pressure::new(16 << 20);
        let high = p.high;
        // Few samples at the high mark (a burst after a thaw): the storm is paused...
        take(&mut p, &mut c, "storm", 64 * 5, high);
        assert!(frozen(d.path(), "storm"));
        // ...and a task with one record among the next few samples is not.
        take(&mut p, &mut c, "quiet", 64, high);
        take(&mut p, &mut c, "storm", 64 * 3, high);
        assert!(!frozen(d.path(), "quiet"), "a quiet task paused for one sampled record");
    }

    #[test]
    fn a_pause_that_does_not_drain_the_ring_is_given_up() {
        let d = tempfile::tempdir().unwrap();
        let mut c = tasks(d.path(), &["storm", "other"]);
        let mut p = Pressure::new(16 << 20);
        p.max_pause = Duration::from_millis(20);
        let (high, low) = (p.high, p.low);
        take(&mut p, &mut c, "storm", 64 * 20, high);
        assert!(frozen(d.path(), "storm"));
        // What fills the ring is not paused (say, a task with a call held): after
        // max_pause, the paused are thawed and nothing is paused again...
        std::thread::sleep(Duration::from_millis(30));
        take(&mut p, &mut c, "other", 64, high);
        assert!(!frozen(d.path(), "storm"), "a tenant kept frozen for a storm a pause does not stop");
        take(&mut p, &mut c, "storm", 64 * 100, high);
        take(&mut p, &mut c, "other", 64 * 100, high);
        assert!(!frozen(d.path(), "storm") && !frozen(d.path(), "other"));
        assert_eq!(p.report(&"h".into(), Timestamp::now()).len(), 1);
        // ...until the ring has been calm.
        take(&mut p, &mut c, "storm", 64, low);
        take(&mut p, &mut c, "storm", 64 * 20, high);
        assert!(frozen(d.path(), "storm"));
    }

    #[test]
    fn a_quiet_task_beside_a_storm_runs_on() {
        let d = tempfile::tempdir().unwrap();
        let mut c = tasks(d.path(), &["storm", "quiet"]);
        let mut p = Pressure::new(16 << 20);
        let high = p.high;
        // One record in 100 is the quiet task's, over many windows of samples.
        for _ in 0..200 {
            take(&mut p, &mut c, "storm", 64 * 99, high);
            take(&mut p, &mut c, "quiet", 64, high);
        }
        assert!(frozen(d.path(), "storm"));
        assert!(!frozen(d.path(), "quiet"));
    }
}
