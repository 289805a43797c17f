//! The BPF LSM hooks' links, attached only while a task is enforced on that tier.
//!
//! The hooks act for enforced tasks alone, yet while attached each costs every
//! process on the host a trampoline on every call it hooks: in the Debian 13 guest
//! an open by a process outside every task took 1.32× with them, 1.09× with fexit
//! alone (BENCHMARKS.md). So their programs are verified at start (a start still says
//! whether the tier works) and attached when the first task is enforced here.
//!
//! What keeps this sound is order, all of it on the loop's thread (`&mut Sensors`):
//! - attached before a task is put in LSM_TASK, and before agentmon asks `file_open`
//!   for a file's identity (a grant, a protected file): [`Armed`] refuses those
//!   questions while detached, rather than answer with stat's identity, which is not
//!   the hooks' on overlayfs;
//! - detached only once LSM_TASK has been empty for the linger (only agentmon writes
//!   it), so no enforced process is ever between hooks;
//! - a restarted daemon that finds tasks in a pinned LSM_TASK attaches at its load,
//!   before the previous daemon's links are retired.
//!
//! Detaching waits a grace period per hook (kernel::detach): it is done on a thread,
//! and the next attach waits for that thread, because the kernel refuses a program
//! linked twice to one hook (EBUSY).
//!
//! The truncate hooks ([`ALWAYS`]) stay attached from the load on: they also tell
//! the open's exit, for every tracked process, that the kernel truncates in this
//! call (TRUNC_OPEN), which openat2's flags in the caller's memory cannot be trusted
//! to say. They run on truncations only.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    programs::{
        Lsm,
        links::{FdLink, PinnedLink},
        lsm::LsmLink,
    },
};

use super::{LoadError, Sensors};
use crate::kernel::pin::Pins;

/// Hooks attached for as long as the programs are (see above).
pub(super) const ALWAYS: &[&str] = &["path_truncate", "file_truncate"];

/// Whether the hooks are attached: shared with the identity look-ups
/// (`LsmMaps::ident`), which run in workers too.
#[derive(Clone, Debug, Default)]
pub struct Armed(Arc<AtomicBool>);

impl Armed {
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn set(&self, on: bool) {
        self.0.store(on, Ordering::SeqCst)
    }
}

pub(super) enum Held {
    Own(LsmLink),
    /// A daemon's: pinned so that its tasks stay held when it goes.
    Pinned(PinnedLink),
}

#[derive(Default)]
pub(super) struct Hooks {
    /// The loaded hook programs attached while a task is enforced (program name =
    /// hook name).
    names: Vec<String>,
    links: Vec<Held>,
    /// [`ALWAYS`]'s, attached at load (held, never detached here).
    #[expect(dead_code, reason = "held: dropping a link detaches its program")]
    always: Vec<Held>,
    /// The last detach, still waiting for its grace periods.
    detaching: Option<std::thread::JoinHandle<()>>,
    /// Since when no task has been enforced here, while attached.
    idle_since: Option<Instant>,
    pub armed: Armed,
}

impl Hooks {
    pub fn new(names: Vec<String>, always: Vec<Held>) -> Self {
        Self { names, always, ..Default::default() }
    }

    /// Detaches. The pins go at once (a daemon that exits next must not leave the
    /// hooks pinned); the links, whose closes wait, on a thread (where none can be
    /// made: here).
    fn detach(&mut self) {
        self.armed.set(false);
        self.idle_since = None;
        let links = unpinned(std::mem::take(&mut self.links));
        // A refused thread drops its closure, and the links with it, here.
        match std::thread::Builder::new().name("lsm-detach".into()).spawn(move || drop(links)) {
            Ok(t) => self.detaching = Some(t),
            Err(e) => tracing::debug!("a thread to detach the BPF LSM hooks: {e}"),
        }
    }
}

/// `links` with their pins removed: closing them detaches them.
fn unpinned(links: Vec<Held>) -> Vec<FdLink> {
    links
        .into_iter()
        .filter_map(|l| match l {
            Held::Own(l) => Some(l.into()),
            // A pin already gone (removed with the daemon's) gives its link back
            // closed: detached with it.
            Held::Pinned(p) => p
                .unpin()
                .map_err(|e| tracing::warn!("unpinning a BPF LSM hook: {e}: it may stay attached"))
                .ok(),
        })
        .collect()
}

/// Attaches every hook in `names` of `ebpf`, pinned among `pins`' links when given:
/// all of them, or none (a task is enforced by every hook or refused).
pub(super) fn attach_all(
    ebpf: &mut Ebpf,
    names: &[String],
    pins: Option<&Pins>,
) -> Result<Vec<Held>, LoadError> {
    let mut held = Vec::with_capacity(names.len());
    for name in names {
        match attach_one(ebpf, name, pins.map(|p| p.link(name))) {
            Ok(h) => held.push(h),
            Err(e) => {
                drop(unpinned(held));
                return Err(e);
            }
        }
    }
    Ok(held)
}

fn attach_one(ebpf: &mut Ebpf, name: &str, pin: Option<PathBuf>) -> Result<Held, LoadError> {
    let fail = |stage: &'static str, msg: String| LoadError::Program {
        prog: name.to_string(),
        attach: format!("lsm {name}"),
        stage,
        msg,
    };
    let p: &mut Lsm = ebpf
        .program_mut(name)
        .ok_or_else(|| fail("find", "not in the object".into()))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| fail("find", e.to_string()))?;
    let id = p.attach().map_err(|e| fail("attach", e.to_string()))?;
    let link = p.take_link(id).map_err(|e| fail("own link", e.to_string()))?;
    Ok(match pin {
        Some(path) => Held::Pinned(FdLink::from(link).pin(path).map_err(|e| fail("pin", e.to_string()))?),
        None => Held::Own(link),
    })
}

impl Sensors {
    /// Attaches the BPF LSM hooks, if this load has them and they are not attached:
    /// before anything is enforced on that tier. Waits for a detach still under way.
    pub fn arm_lsm(&mut self) -> Result<(), LoadError> {
        let h = &mut self.hooks;
        h.idle_since = None;
        if h.armed.get() || h.names.is_empty() {
            return Ok(());
        }
        if let Some(t) = h.detaching.take() {
            let _ = t.join();
        }
        let started = Instant::now();
        h.links = attach_all(&mut self.ebpf, &h.names, self.pins.as_ref())?;
        h.armed.set(true);
        tracing::info!(
            "BPF LSM hooks attached ({} in {} ms): a task is enforced on that tier",
            h.links.len(),
            started.elapsed().as_millis()
        );
        Ok(())
    }

    /// Whether the BPF LSM hooks are attached now.
    pub fn lsm_armed(&self) -> bool {
        self.hooks.armed.get()
    }

    /// Detaches the BPF LSM hooks once no task has been enforced on that tier for
    /// `linger`: the first check that finds LSM_TASK empty starts the wait.
    pub fn lsm_idle(&mut self, linger: Duration, now: Instant) {
        if !self.hooks.armed.get() {
            return;
        }
        let empty = {
            let _rt = crate::kernel::preempt::hold();
            self.lsm.as_ref().is_some_and(|l| !l.enrolled())
        };
        if idle_for(&mut self.hooks.idle_since, empty, linger, now) {
            tracing::info!("BPF LSM hooks detached: no task is enforced on that tier");
            self.hooks.detach();
        }
    }

    /// A daemon stopping: hooks that enforce nothing are not left pinned behind it
    /// for the next daemon to retire (the others hold its tasks meanwhile).
    pub fn lsm_stopping(&mut self) {
        let enrolled = {
            let _rt = crate::kernel::preempt::hold();
            self.lsm.as_ref().is_some_and(|l| l.enrolled())
        };
        if self.hooks.armed.get() && !enrolled {
            self.hooks.detach();
        }
    }
}

/// Whether the hooks have been idle for `linger` at `now`, `empty` saying whether a
/// task is enforced now. The wait starts at the first check that finds none, and a
/// task enforced meanwhile starts it over.
fn idle_for(since: &mut Option<Instant>, empty: bool, linger: Duration, now: Instant) -> bool {
    if !empty {
        *since = None;
        return false;
    }
    let from = *since.get_or_insert(now);
    now.saturating_duration_since(from) >= linger
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_wait_out_the_linger_after_the_last_enforced_task() {
        let (t0, linger) = (Instant::now(), Duration::from_secs(60));
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut since = None;
        assert!(!idle_for(&mut since, false, linger, at(0)), "a task is enforced");
        assert!(!idle_for(&mut since, true, linger, at(10)), "the wait starts at the first empty check");
        assert!(!idle_for(&mut since, true, linger, at(69)));
        assert!(idle_for(&mut since, true, linger, at(70)));
        // A task enforced within the linger starts it over.
        let mut since = None;
        assert!(!idle_for(&mut since, true, linger, at(0)));
        assert!(!idle_for(&mut since, false, linger, at(30)));
        assert!(!idle_for(&mut since, true, linger, at(61)));
        assert!(!idle_for(&mut since, true, linger, at(120)));
        assert!(idle_for(&mut since, true, linger, at(121)));
    }
}
