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
    /// Since when the tasks are paused, and which.
    paused: Option<(Instant, Vec<Arc<str>>)>,
    /// Pauses since the last report: per task, how many and how long.
    tally: BTreeMap<Arc<str>, (u32, Duration)>,
    /// Records taken, across drains: one in 64 is sampled.
    taken: u64,
    /// Whose the records sampled since the ring was last calm were (per task), and
    /// how many: a pause stops the tasks that make the storm, not the others.
    samples: HashMap<Arc<str>, u32>,
    sampled: u32,
}

impl Pressure {
    /// Backpressure on a ring buffer of `bytes`.
    pub fn new(bytes: u64) -> Pressure {
        Pressure {
            high: bytes / 4,
            low: bytes / 16,
            paused: None,
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
        self.sampled = self.sampled.saturating_add(1);
        if let Some(t) = task {
            let n = self.samples.entry(t.clone()).or_default();
            *n = n.saturating_add(1);
        }
        true
    }

    /// Pauses the tasks making the storm when `waiting` bytes fill the ring past
    /// its high mark, thaws them once it is down to the low one. `held`: tasks
    /// with calls held for approval, never paused (the freezer would interrupt the
    /// held call, which the kernel then starts again as a new request).
    pub fn check(&mut self, waiting: u64, contain: &mut Containment, held: &dyn Fn() -> Vec<Arc<str>>) {
        if waiting <= self.low {
            self.resume(contain);
            // Calm: what is sampled from here is the next storm's.
            self.samples.clear();
            self.sampled = 0;
            return;
        }
        if waiting < self.high || self.paused.is_some() {
            return;
        }
        let makers = contain.makers(&self.samples, self.sampled, &held());
        if makers.is_empty() {
            // Nothing sampled yet to pause: asked again at the next sample.
            return;
        }
        let ids = contain.pause(&makers);
        tracing::debug!("{waiting} bytes waiting in the ring: paused {ids:?}");
        self.paused = Some((Instant::now(), ids));
    }

    /// Thaws what is paused (at the end of a run too: a task is never left frozen).
    pub fn resume(&mut self, contain: &mut Containment) {
        let Some((since, ids)) = self.paused.take() else { return };
        contain.resume();
        let took = since.elapsed();
        for id in ids {
            let t = self.tally.entry(id).or_default();
            t.0 += 1;
            t.1 += took;
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
