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
    collections::{BTreeMap, HashMap},
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

impl Pressure {
    /// Backpressure on a ring buffer of `bytes`.
    pub fn new(bytes: u64) -> Pressure {
        Pressure {
            high: bytes / 4,
            low: bytes / 16,
            paused: HashMap::new(),
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
            return;
        }
        if waiting < self.high {
            return;
        }
        let makers: Vec<_> = contain
            .makers(&self.samples, self.sampled, &held())
            .into_iter()
            .filter(|t| !self.paused.contains_key(t))
            .collect();
        if makers.is_empty() {
            // Nothing (more) sampled to pause: asked again at the next sample.
            return;
        }
        let ids = contain.pause(&makers);
        tracing::debug!("{waiting} bytes waiting in the ring: paused {ids:?}");
        let now = Instant::now();
        self.paused.extend(ids.into_iter().map(|id| (id, now)));
    }

    /// Thaws what is paused (at the end of a run too: a task is never left frozen).
    pub fn resume(&mut self, contain: &mut Containment) {
        if self.paused.is_empty() {
            return;
        }
        contain.resume();
        for (id, since) in self.paused.drain() {
            let t = self.tally.entry(id).or_default();
            t.0 += 1;
            t.1 += since.elapsed();
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

    #[test]
    fn a_storm_that_starts_while_others_are_paused_is_paused_too() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Containment::default();
        for (i, id) in ["a", "b", "c", "late"].into_iter().enumerate() {
            c.register(id.into(), i as u32 + 1, Some(fake_cgroup(d.path(), id, false)), false);
        }
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
    fn a_quiet_task_beside_a_storm_runs_on() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Containment::default();
        for (i, id) in ["storm", "quiet"].into_iter().enumerate() {
            c.register(id.into(), i as u32 + 1, Some(fake_cgroup(d.path(), id, false)), false);
        }
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
