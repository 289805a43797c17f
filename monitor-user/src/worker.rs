//! Work that can wait on something an agent or a local user controls, done off
//! agentmon's loop.
//!
//! Reading a held call's arguments in the agent's memory, resolving its paths,
//! and performing the operation can each wait on something the agent controls:
//! a page of a file it serves itself, a lookup or a `setattr` on its own FUSE
//! mount. So can resolving the paths a task names when it starts or is delegated
//! (an agent delegating a sub-task may name a directory on a FUSE mount that never
//! answers). Done on the loop, that stopped agentmon for
//! every task. Each such step runs in a worker thread and is waited for at most a
//! bound; a worker stuck past it stays with whoever holds it until they let go,
//! and counts against their share ([`MAX_EACH`]) and the whole ([`MAX`]): past its
//! share the asker's next step is refused at once (its own stall, ETIMEDOUT), past
//! the whole anyone's is (EAGAIN, no one blamed).
//!
//! The threads are kept and reused: a thread spawned for every memory read and
//! every operation was a sixth of the daemon's time under an enforced `tar x`.
//! Three pools, so that a thread which took an agent's filesystem credentials to
//! perform its call never reads another's memory or resolves its paths, and so
//! that tasks' starts and held calls never take each other's shares.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
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

/// A step; it calls its argument once its result is handed over (or dropped, if
/// no one waits for it any more), so that the worker is listed idle only when
/// nothing of the step is left in it.
type Job = Box<dyn FnOnce(&dyn Fn()) + Send>;

/// Why a step gave no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stuck {
    /// It did not end within the wait (it goes on, and ends when it can).
    Late,
    /// It was not run: the gate's share is taken by its steps still stuck
    /// (ETIMEDOUT: its own stall), or every worker is (EAGAIN: no one blamed), or
    /// no thread could be had (EAGAIN).
    Refused(Errno),
    /// It panicked.
    Failed,
}

pub struct Pool {
    name: &'static str,
    /// Each idle worker's own queue.
    idle: Mutex<Vec<SyncSender<Job>>>,
    /// The gate each running step is for (stuck ones included).
    busy: Mutex<Vec<u32>>,
}

/// A step's place in [`Pool::busy`], given back however the step ends (a panic,
/// a job dropped unrun), so that no share is lost for good; and given back by
/// whoever receives its result, as it does: the worker lets go of its own copy
/// only when it next runs, and a caller that ran on first (one CPU) found the
/// steps it had finished still counted against it.
struct Counted {
    pool: &'static Pool,
    who: u32,
    given: Arc<AtomicBool>,
}

impl Counted {
    fn give_back(pool: &Pool, who: u32, given: &AtomicBool) {
        if given.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut busy = lock(&pool.busy);
        if let Some(i) = busy.iter().position(|&p| p == who) {
            busy.swap_remove(i);
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        Counted::give_back(self.pool, self.who, &self.given);
    }
}

/// Reading the agent's memory and resolving what its call names.
pub static READERS: Pool = Pool::new("agentmon-read");
/// Performing held calls with the agent's filesystem credentials.
pub static PERFORMERS: Pool = Pool::new("agentmon-act");
/// Resolving the paths of a task being started or delegated (the asker: its uid).
pub static RESOLVERS: Pool = Pool::new("agentmon-resolve");

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    const fn new(name: &'static str) -> Pool {
        Pool { name, idle: Mutex::new(Vec::new()), busy: Mutex::new(Vec::new()) }
    }

    /// Runs `f` for gate `who` in a worker; its result, or why there is none.
    pub fn run<T: Send + 'static>(
        &'static self,
        who: u32,
        wait: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Stuck> {
        let counted = {
            let mut busy = lock(&self.busy);
            if busy.iter().filter(|&&p| p == who).count() >= MAX_EACH {
                return Err(Stuck::Refused(Errno::ETIMEDOUT));
            }
            if busy.len() >= MAX {
                return Err(Stuck::Refused(Errno::EAGAIN));
            }
            busy.push(who);
            Counted { pool: self, who, given: Arc::new(AtomicBool::new(false)) }
        };
        let given = counted.given.clone();
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |done: &dyn Fn()| {
            let r = f();
            // Unsent (the loop gave up), the result is dropped here, still counted:
            // dropping it may wait on the agent too.
            drop(tx.send(r));
            drop(counted);
            done();
        });
        self.dispatch(job).map_err(Stuck::Refused)?;
        match rx.recv_timeout(wait) {
            Ok(r) => {
                Counted::give_back(self, who, &given);
                Ok(r)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(Stuck::Late),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(Stuck::Failed),
        }
    }

    /// Hands `job` to an idle worker, or to a new one.
    fn dispatch(&'static self, job: Job) -> Result<(), Errno> {
        if let Some(w) = lock(&self.idle).pop() {
            // A listed worker waits on its queue, which is empty.
            return w.try_send(job).map_err(|_| Errno::EAGAIN);
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

    #[cfg(test)]
    fn busy(&self) -> Vec<u32> {
        lock(&self.busy).clone()
    }
}

/// How long a gate's steps may keep the loop waiting, summed over a window. A
/// step is waited for at most its bound, but an agent answering just under it, call
/// after call, would hold the loop most of the time; past this budget the task's
/// held calls that need a step are refused at once until the window ends.
#[derive(Default)]
pub struct Budget {
    since: Option<std::time::Instant>,
    spent: Duration,
}

impl Budget {
    /// Steps shorter than this are not counted: the ordinary cost of a held call,
    /// or a network file system's slow moment (a step of a task whose mount is
    /// slow all the time counts, and may have its calls refused).
    const SLOW: Duration = Duration::from_millis(200);
    pub const SPEND: Duration = Duration::from_secs(1);
    pub const WINDOW: Duration = Duration::from_secs(10);

    pub const fn new() -> Budget {
        Budget { since: None, spent: Duration::ZERO }
    }

    /// Whether a step may be waited for at `now`.
    pub fn allows(&mut self, now: std::time::Instant) -> bool {
        if self.since.is_some_and(|s| now.duration_since(s) >= Self::WINDOW) {
            *self = Budget::new();
        }
        self.spent < Self::SPEND
    }

    /// A step, begun at `began`, was waited for until `now`.
    pub fn spend(&mut self, began: std::time::Instant, now: std::time::Instant) {
        let took = now.duration_since(began);
        if took >= Self::SLOW {
            self.since.get_or_insert(began);
            self.spent += took;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static TEST: Pool = Pool::new("agentmon-test");

    #[test]
    fn steps_are_bounded_per_gate_and_in_all_and_threads_are_reused() {
        let me = 1u32;
        let tid = || nix::unistd::gettid().as_raw();
        let first = TEST.run(me, Duration::from_secs(5), tid).unwrap();
        // The worker went back to wait: the next step runs in the same thread.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(TEST.run(me, Duration::from_secs(5), tid), Ok(first));
        // A step that does not end in time: late, and still counted.
        let (go, wait) = mpsc::channel::<()>();
        let stuck = 2u32;
        assert_eq!(
            TEST.run(stuck, Duration::from_millis(20), move || {
                let _ = wait.recv();
            }),
            Err(Stuck::Late)
        );
        assert_eq!(TEST.busy(), vec![stuck]);
        // The stuck gate's share: one more may run, then it is refused at once.
        assert_eq!(TEST.run(stuck, Duration::from_secs(5), || 7), Ok(7));
        TEST.set_busy(vec![stuck; MAX_EACH]);
        assert_eq!(TEST.run(stuck, Duration::from_secs(5), || 7), Err(Stuck::Refused(Errno::ETIMEDOUT)));
        // Past the whole, anyone's is refused, no one blamed.
        TEST.set_busy((0..MAX as u32).map(|i| 100 + i).collect());
        assert_eq!(TEST.run(me, Duration::from_secs(5), || 7), Err(Stuck::Refused(Errno::EAGAIN)));
        TEST.set_busy(vec![stuck]);
        drop(go);
        assert_eq!(TEST.run(me, Duration::from_secs(5), || 7), Ok(7));
        // A step that panics gives its place back.
        assert_eq!(
            TEST.run(me, Duration::from_secs(5), || -> u8 { panic!("in a step") }),
            Err(Stuck::Failed)
        );
        let start = std::time::Instant::now();
        while !TEST.busy().is_empty() && start.elapsed() < Duration::from_secs(5) {
            std::thread::yield_now();
        }
        assert_eq!(TEST.busy(), Vec::<u32>::new());
    }

    #[test]
    fn quick_steps_one_after_another_are_never_refused() {
        // A step's share was given back by its worker after the result was handed
        // over: on one CPU the waiting thread ran on first, and a third quick step
        // in a row found two finished ones still counted (ETIMEDOUT: "earlier
        // lookups still wait on a file system that does not answer"). The emulated
        // guests refused enforced tasks so. Pinned to one CPU here, as they run.
        static QUICK: Pool = Pool::new("agentmon-test-quick");
        let mut one = nix::sched::CpuSet::new();
        one.set(nix::sched::sched_getcpu().unwrap_or(0)).unwrap();
        std::thread::spawn(move || {
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one).unwrap();
            for i in 0..20_000 {
                assert_eq!(QUICK.run(3, Duration::from_secs(5), move || i), Ok(i), "step {i}");
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_gates_slow_steps_are_waited_for_up_to_a_budget_per_window() {
        let t0 = std::time::Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut b = Budget::new();
        // Ordinary steps cost nothing however many.
        for i in 0..10_000 {
            assert!(b.allows(ms(i / 10)));
            b.spend(ms(i / 10), ms(i / 10) + Duration::from_millis(1));
        }
        // Steps a little slow, as on a network file system: not counted.
        for i in 0..100 {
            b.spend(ms(1_000 + i), ms(1_000 + i + 150));
        }
        // An agent answering just under the 500 ms bound: three such steps, then no
        // more in that window.
        assert!(b.allows(ms(2_000)));
        b.spend(ms(2_000), ms(2_499));
        assert!(b.allows(ms(2_500)));
        b.spend(ms(2_500), ms(2_999));
        assert!(b.allows(ms(3_000)));
        b.spend(ms(3_000), ms(3_499));
        assert!(!b.allows(ms(3_500)));
        assert!(!b.allows(ms(11_999)));
        // The window (from the first slow step) ends: waited for again.
        assert!(b.allows(ms(12_000)));
    }

    #[test]
    fn a_result_no_one_waits_for_is_dropped_while_counted() {
        struct Slow(mpsc::Sender<Vec<u32>>);
        impl Drop for Slow {
            fn drop(&mut self) {
                // What the pool says while the dropped result is let go.
                let _ = self.0.send(DROPS.busy());
            }
        }
        static DROPS: Pool = Pool::new("agentmon-test-drop");
        let (tx, rx) = mpsc::channel();
        let r = DROPS.run(9, Duration::from_millis(10), move || {
            std::thread::sleep(Duration::from_millis(100));
            Slow(tx)
        });
        assert!(matches!(r, Err(Stuck::Late)));
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), vec![9]);
    }
}
