//! Backpressure. A task's processes can make events faster than agentmon records
//! them (a storm of file operations while other work shares the cores): the ring
//! buffer fills and the kernel drops what no longer fits. Losing the record of what
//! an agent did is worse than slowing the agent, so before the ring is full agentmon
//! pauses the tasks (their cgroups' freezer: each process stops at its next return to
//! user space; processes outside every task are never touched) and thaws them once
//! it has caught up. Pauses are reported as `action` records (`pause`), one per task
//! and report tick, with how many and how long.
//!
//! The fill level is read from the ring's own positions (the consumer and producer
//! pages the kernel shares with the reader), mapped a second time read-only: two
//! loads, no system call, so it is checked every few records while draining.

use std::{
    collections::BTreeMap,
    os::fd::{AsRawFd, BorrowedFd},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    contain::Containment,
    event::{Event, Timestamp},
};

/// The ring's consumer and producer pages, mapped read-only.
struct Positions {
    base: *mut libc::c_void,
    page: usize,
}

// SAFETY: the mapping is read through atomics only and lives as long as the value.
unsafe impl Send for Positions {}

impl Positions {
    fn map(fd: BorrowedFd<'_>) -> std::io::Result<Positions> {
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
        Ok(Positions { base, page })
    }

    /// Bytes the kernel has written that the reader has not yet consumed.
    fn backlog(&self) -> u64 {
        // SAFETY: both positions are page-aligned u64s inside the mapping; the kernel
        // updates them atomically.
        let (consumer, producer) = unsafe {
            (
                (*(self.base as *const AtomicU64)).load(Ordering::Acquire),
                (*(self.base.add(self.page) as *const AtomicU64)).load(Ordering::Acquire),
            )
        };
        producer.saturating_sub(consumer)
    }
}

impl Drop for Positions {
    fn drop(&mut self) {
        // SAFETY: unmaps what map() mapped, once.
        unsafe { libc::munmap(self.base, 2 * self.page) };
    }
}

/// Backpressure on the ring buffer `ring` (its size read from the kernel: a ring
/// taken over from a previous daemon keeps the size it was made with).
pub fn watch(ring: &aya::maps::RingBuf<aya::maps::MapData>) -> std::io::Result<Pressure> {
    use std::os::fd::AsFd;
    let fd = ring.as_fd();
    let bytes = aya::maps::MapData::from_fd(fd.try_clone_to_owned()?)
        .and_then(|m| m.info())
        .map(|i| i.max_entries())
        .map_err(std::io::Error::other)?;
    Pressure::new(fd, u64::from(bytes))
}

pub struct Pressure {
    ring: Positions,
    /// Pause at or above this many bytes waiting (a quarter of the ring: the rest
    /// covers the reader's own wait for a core on a busy host), resume at or below
    /// `low` (a sixteenth): far enough apart that a pause is worth its cost.
    high: u64,
    low: u64,
    /// Since when the tasks are paused, and which.
    paused: Option<(Instant, Vec<Arc<str>>)>,
    /// Pauses since the last report: per task, how many and how long.
    tally: BTreeMap<Arc<str>, (u32, Duration)>,
    /// Whose records the samples since the last pause were (one record in 64), and
    /// how many samples: a pause stops the tasks that make the storm, not the others.
    samples: std::collections::HashMap<Arc<str>, u32>,
    sampled: u32,
}

impl Pressure {
    /// Watches the ring buffer behind `fd`, `bytes` long.
    pub fn new(fd: BorrowedFd<'_>, bytes: u64) -> std::io::Result<Pressure> {
        Ok(Pressure {
            ring: Positions::map(fd)?,
            high: bytes / 4,
            low: bytes / 16,
            paused: None,
            tally: BTreeMap::new(),
            samples: Default::default(),
            sampled: 0,
        })
    }

    /// A record taken from the ring was task `task`'s (None: of no task).
    pub fn sample(&mut self, task: Option<&Arc<str>>) {
        self.sampled += 1;
        if let Some(t) = task {
            *self.samples.entry(t.clone()).or_default() += 1;
        }
    }

    /// Pauses the tasks when the ring is filling, thaws them when it has drained.
    pub fn check(&mut self, contain: &mut Containment) {
        let waiting = self.ring.backlog();
        match &self.paused {
            None if waiting >= self.high => {
                // Also with nothing to pause (tasks without cgroups): checked again
                // only once it has drained, not every few records meanwhile.
                let makers = makers(std::mem::take(&mut self.samples), std::mem::take(&mut self.sampled));
                let ids = contain.pause(makers.as_deref());
                if !ids.is_empty() {
                    tracing::debug!("{waiting} bytes waiting in the ring: {} tasks paused", ids.len());
                }
                self.paused = Some((Instant::now(), ids));
            }
            Some(_) if waiting <= self.low => self.resume(contain),
            _ => {}
        }
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

/// The tasks that made at least a tenth of the `sampled` records (`samples`: per
/// task); None (every task) while too few were sampled to tell.
fn makers(samples: std::collections::HashMap<Arc<str>, u32>, sampled: u32) -> Option<Vec<Arc<str>>> {
    (sampled >= 16).then(|| samples.into_iter().filter(|(_, n)| n * 10 >= sampled).map(|(t, _)| t).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tasks_that_fill_the_ring_are_the_ones_paused() {
        let s = |v: &[(&str, u32)]| v.iter().map(|(t, n)| (Arc::<str>::from(*t), *n)).collect();
        assert_eq!(makers(s(&[("a", 3)]), 3), None, "too few samples: every task");
        let mut m = makers(s(&[("storm", 89), ("busy", 10), ("idle", 1)]), 100).unwrap();
        m.sort();
        assert_eq!(m, vec![Arc::<str>::from("busy"), Arc::from("storm")]);
        // Records of no task (agentmon's own) count in the total only.
        assert_eq!(makers(s(&[("a", 1)]), 100), Some(vec![]));
    }
}
