//! Task cgroups made before their task's root: the launcher makes the root in its
//! cgroup (`launch::spawn_held`'s `into`, clone3's CLONE_INTO_CGROUP) instead of
//! agentmon moving it there as the task starts. A move takes the kernel's cgroup
//! lock for writing, which waits for an RCU grace period: 9-19 ms of most starts
//! through a daemon here, with nothing else to do meanwhile (issue 16's start target).
//!
//! A `prepare` request (or `agentmon exec` itself) makes the cgroup and gives out
//! its cookie; the start that names that cookie, from the same caller, takes it
//! ([`Reservations::take`]). A root the kernel would not make there (a caller that
//! may not write the cgroup) is moved into it as before. One no start took goes
//! once it is empty, a minute on.

use std::time::{Duration, Instant};

use crate::{
    ctl::Prepared,
    enforce::cgroup::{Grave, TaskCgroup},
};

/// Cgroups made and not taken yet, at most (a caller that never starts what it
/// prepares holds no more than these).
const MAX: usize = 64;

/// How long a prepared cgroup waits for its start.
const WAIT: Duration = Duration::from_secs(60);

/// Who prepared a cgroup: a pid and its start time (a pid reused meanwhile is
/// another asker).
pub type Asker = (u32, u64);

/// A cgroup made for a task about to start.
pub struct Reserved {
    pub cookie: u32,
    pub cg: TaskCgroup,
    /// Beneath its root's own cgroup (else agentmon's directory, as said when made).
    pub nested: bool,
    /// Who asked for it: only its start takes it.
    caller: Asker,
    made: Instant,
}

#[derive(Default)]
pub struct Reservations {
    list: Vec<Reserved>,
    /// Prepared cgroups let go of with their root in them (a start that failed
    /// after it took one), removed once empty.
    grave: Grave,
}

impl Reservations {
    /// Makes a cgroup for a task whose root `caller` is about to fork, under task
    /// cookie `cookie` (given out for it). Its answer names the cgroup by path.
    pub fn make(&mut self, caller: Asker, cookie: u32) -> Result<Prepared, String> {
        if self.list.len() >= MAX {
            return Err(format!("{MAX} cgroups are prepared and not started yet"));
        }
        let origin = crate::enforce::cgroup::of_pid(caller.0);
        let name = format!("{}-{cookie}", std::process::id());
        let (mut cg, why) = TaskCgroup::create_for(&name, origin.as_deref()).map_err(|e| e.to_string())?;
        if let Some(why) = &why {
            tracing::info!("a prepared task cgroup is agentmon's, not beneath its root's own: {why}");
        }
        cg.origin = origin;
        // Until its task has it: dropped with the root in it, removed once empty.
        cg.grave = Some(self.grave.clone());
        let answer = Prepared { cookie, cgroup: cg.path.display().to_string() };
        self.list.push(Reserved { cookie, cg, nested: why.is_none(), caller, made: Instant::now() });
        Ok(answer)
    }

    /// Where the cgroup prepared under `cookie` for `caller` is in the list.
    fn find(&self, cookie: u32, caller: Asker) -> Option<usize> {
        self.list.iter().position(|r| r.cookie == cookie && r.caller == caller)
    }

    /// Whether a cgroup is prepared under `cookie` for `caller`.
    pub fn has(&self, cookie: u32, caller: Asker) -> bool {
        self.find(cookie, caller).is_some()
    }

    /// Whether process `pid` is in the cgroup prepared under `cookie` for `caller`.
    pub fn holds(&self, cookie: u32, caller: Asker, pid: u32) -> bool {
        self.find(cookie, caller).is_some_and(|at| self.list[at].cg.holds(pid))
    }

    /// The cgroup prepared under `cookie` for `caller` (None: none is, or another
    /// caller asked for it).
    pub fn take(&mut self, cookie: u32, caller: Asker) -> Option<Reserved> {
        let at = self.find(cookie, caller)?;
        Some(self.list.swap_remove(at))
    }

    /// Lets go of those no start took within [`WAIT`], once empty (a child made
    /// there and never started exits with its launcher), and removes those a failed
    /// start let go of that are empty now.
    pub fn expire(&mut self, now: Instant) {
        self.list.retain(|r| now.duration_since(r.made) < WAIT || !r.cg.pids().is_empty());
        crate::enforce::cgroup::bury(&self.grave);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.list.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserved(cookie: u32, caller: Asker, made: Instant) -> Reserved {
        // A directory that is not a cgroup: dropping it removes it, as a cgroup's would.
        let dir = tempfile::tempdir().unwrap().keep();
        Reserved { cookie, cg: TaskCgroup::adopt(dir).unwrap(), nested: false, caller, made }
    }

    #[test]
    fn only_its_caller_takes_a_prepared_cgroup_and_only_once() {
        let mut r = Reservations::default();
        r.list.push(reserved(7, (100, 5), Instant::now()));
        assert!(r.take(7, (101, 5)).is_none(), "another caller's start took it");
        assert!(r.take(7, (100, 6)).is_none(), "a process that reused the caller's pid took it");
        assert!(r.take(8, (100, 5)).is_none());
        let got = r.take(7, (100, 5)).expect("its caller's start");
        assert_eq!(got.cookie, 7);
        assert!(r.take(7, (100, 5)).is_none(), "taken twice");
    }

    #[test]
    fn an_untaken_cgroup_goes_once_its_wait_is_over() {
        let mut r = Reservations::default();
        let now = Instant::now();
        r.list.push(reserved(1, (100, 5), now));
        let path = r.list[0].cg.path.clone();
        r.expire(now + WAIT / 2);
        assert_eq!(r.len(), 1);
        r.expire(now + WAIT);
        assert_eq!(r.len(), 0);
        assert!(!path.exists(), "its directory was left behind");
    }
}
