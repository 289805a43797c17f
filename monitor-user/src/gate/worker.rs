//! Work for a held call that can wait on the agent, done off agentmon's loop.
//!
//! Reading a held call's arguments in the agent's memory, resolving its paths,
//! and performing the operation can each wait on something the agent controls:
//! a page of a file it serves itself, a lookup or a `setattr` on its own FUSE
//! mount. Done on the loop, that stopped agentmon for every task. Each such step
//! runs in a worker thread and is waited for at most a bound; a worker stuck past
//! it stays with the agent until the agent lets go, and counts against that
//! process's share ([`MAX_EACH`]) and the whole ([`MAX`]): past its share a
//! process's next step is refused at once (its own stall, ETIMEDOUT), past the
//! whole anyone's is (EAGAIN, no one blamed).
//!
//! The threads are kept and reused: a thread spawned for every memory read and
//! every operation was a sixth of the daemon's time under an enforced `tar x`.
//! Two pools, so that a thread which took an agent's filesystem credentials to
//! perform its call never reads another's memory or resolves its paths.

use std::{
    sync::{
        Mutex,
        mpsc::{self, Receiver, SyncSender},
    },
    time::Duration,
};

use nix::errno::Errno;

/// Steps running at once per process, and in all, in one pool.
pub const MAX_EACH: usize = 2;
pub const MAX: usize = 64;
/// Idle threads kept per pool; more than that end when their step is done.
const KEEP: usize = 4;

/// A step; it calls its argument once its work is done, before it hands the
/// result over, so that the worker is idle again before the loop can ask for the
/// next step (else the loop, woken first, found none idle and spawned another).
type Job = Box<dyn FnOnce(&dyn Fn()) + Send>;

pub struct Pool {
    name: &'static str,
    /// Each idle worker's own queue.
    idle: Mutex<Vec<SyncSender<Job>>>,
    /// The process each running step is for (stuck ones included).
    busy: Mutex<Vec<u32>>,
}

/// Reading the agent's memory and resolving what its call names.
pub static READERS: Pool = Pool::new("agentmon-read");
/// Performing held calls with the agent's filesystem credentials.
pub static PERFORMERS: Pool = Pool::new("agentmon-act");

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    const fn new(name: &'static str) -> Pool {
        Pool { name, idle: Mutex::new(Vec::new()), busy: Mutex::new(Vec::new()) }
    }

    /// Runs `f` for process `who` in a worker; its result, or ETIMEDOUT if it has
    /// not ended within `wait` (it goes on, and ends when it can), ETIMEDOUT at
    /// once past `who`'s share, EAGAIN past the pool's.
    pub fn run<T: Send + 'static>(
        &'static self,
        who: u32,
        wait: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Errno> {
        {
            let mut busy = lock(&self.busy);
            if busy.iter().filter(|&&p| p == who).count() >= MAX_EACH {
                return Err(Errno::ETIMEDOUT);
            }
            if busy.len() >= MAX {
                return Err(Errno::EAGAIN);
            }
            busy.push(who);
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |done: &dyn Fn()| {
            let r = f();
            let mut busy = lock(&self.busy);
            if let Some(i) = busy.iter().position(|&p| p == who) {
                busy.swap_remove(i);
            }
            drop(busy);
            done();
            let _ = tx.send(r);
        });
        self.dispatch(job)?;
        rx.recv_timeout(wait).map_err(|_| Errno::ETIMEDOUT)
    }

    /// Hands `job` to an idle worker, or to a new one.
    fn dispatch(&'static self, job: Job) -> Result<(), Errno> {
        let mut job = job;
        loop {
            let Some(w) = lock(&self.idle).pop() else { break };
            // A worker that ended meanwhile gives the job back.
            match w.try_send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::TrySendError::Full(j) | mpsc::TrySendError::Disconnected(j)) => job = j,
            }
        }
        let (tx, rx) = mpsc::sync_channel::<Job>(1);
        tx.try_send(job).map_err(|_| Errno::EAGAIN)?;
        std::thread::Builder::new()
            .name(self.name.into())
            .spawn(move || self.work(tx, rx))
            .map(drop)
            .map_err(|_| Errno::EAGAIN)
    }

    fn work(&'static self, me: SyncSender<Job>, jobs: Receiver<Job>) {
        let kept = std::cell::Cell::new(true);
        while kept.get()
            && let Ok(job) = jobs.recv()
        {
            job(&|| {
                let mut idle = lock(&self.idle);
                kept.set(idle.len() < KEEP);
                if kept.get() {
                    idle.push(me.clone());
                }
            });
        }
    }

    #[cfg(test)]
    fn set_busy(&self, v: Vec<u32>) {
        *lock(&self.busy) = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static TEST: Pool = Pool::new("agentmon-test");

    #[test]
    fn steps_are_bounded_per_process_and_in_all_and_threads_are_reused() {
        let me = std::process::id();
        let tid = || nix::unistd::gettid().as_raw();
        let first = TEST.run(me, Duration::from_secs(5), tid).unwrap();
        // The worker went back to wait: the next step runs in the same thread.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(TEST.run(me, Duration::from_secs(5), tid), Ok(first));
        // A step that does not end in time: ETIMEDOUT, and its thread is not reused.
        let (go, wait) = mpsc::channel::<()>();
        let stuck = 4_000_001u32;
        assert_eq!(
            TEST.run(stuck, Duration::from_millis(20), move || {
                let _ = wait.recv();
            }),
            Err(Errno::ETIMEDOUT)
        );
        // The stuck process's share: one more may run, then it is refused at once.
        assert_eq!(TEST.run(stuck, Duration::from_secs(5), || 7), Ok(7));
        TEST.set_busy(vec![stuck; MAX_EACH]);
        assert_eq!(TEST.run(stuck, Duration::from_secs(5), || 7), Err(Errno::ETIMEDOUT));
        // Past the whole, anyone's is refused, no one blamed.
        TEST.set_busy((0..MAX as u32).map(|i| 4_100_000 + i).collect());
        assert_eq!(TEST.run(me, Duration::from_secs(5), || 7), Err(Errno::EAGAIN));
        TEST.set_busy(Vec::new());
        drop(go);
        assert_eq!(TEST.run(me, Duration::from_secs(5), || 7), Ok(7));
    }
}
