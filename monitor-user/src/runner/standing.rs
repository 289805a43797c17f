//! agentmon's own CPU and I/O priority, scheduling policy and resource limits, as
//! it started with them. A process of the same owner needs nothing more to change
//! them (setpriority, ioprio_set, sched_setscheduler on agentmon's pid or one of its
//! threads' ids, prlimit64): an observed root agent could starve agentmon
//! (SCHED_IDLE, nice 19, the idle I/O class) or shrink its limits. Enforced tasks
//! are refused those calls (gate::filter::AIMED); against everyone else the loop's
//! housekeeping compares, every tick, and puts back what changed, and the change is
//! a tamper record. agentmon does not hook these calls (the LSM hooks task_setnice,
//! task_setioprio, task_setscheduler and task_prlimit would see them, with the
//! caller, where BPF LSM is active: not built yet), so who made one is not known,
//! and a change undone within a tick is not seen. (A CPU limit below what agentmon
//! has used gets it killed before the next tick: only the enforced tier's refusal
//! holds against that. The signals of the other limits are ignored, runtime.rs.)

/// Priority and policy are per thread; these are the main thread's at start, which
/// every thread inherits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sched {
    nice: i32,
    policy: i32,
    rt_priority: i32,
    ioprio: i64,
}

/// The limits whose change blinds agentmon, gets it killed or dumps its memory.
const LIMITS: [(libc::__rlimit_resource_t, &str); 11] = [
    (libc::RLIMIT_CPU, "RLIMIT_CPU"),
    (libc::RLIMIT_FSIZE, "RLIMIT_FSIZE"),
    (libc::RLIMIT_DATA, "RLIMIT_DATA"),
    (libc::RLIMIT_STACK, "RLIMIT_STACK"),
    (libc::RLIMIT_CORE, "RLIMIT_CORE"),
    (libc::RLIMIT_NPROC, "RLIMIT_NPROC"),
    (libc::RLIMIT_NOFILE, "RLIMIT_NOFILE"),
    (libc::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK"),
    (libc::RLIMIT_AS, "RLIMIT_AS"),
    (libc::RLIMIT_SIGPENDING, "RLIMIT_SIGPENDING"),
    (libc::RLIMIT_RTTIME, "RLIMIT_RTTIME"),
];

const IOPRIO_WHO_PROCESS: libc::c_long = 1;

pub struct Standing {
    sched: Sched,
    limits: [(u64, u64); LIMITS.len()],
    /// What the last check found that could not be put back: said once, not every tick.
    stuck: Vec<String>,
    /// The kernel's preemption model agentmon chose its tiers for (a PREEMPT_DYNAMIC
    /// kernel's), the file it is read and set through, and what the last check said
    /// of it that was left as it was (said once, not every tick).
    preempt: Option<(&'static str, crate::kernel::preempt::ModelFile)>,
    preempt_said: Option<String>,
}

impl Sched {
    /// Thread `tid`'s, or None if it has gone.
    fn of(tid: i32) -> Option<Self> {
        // getpriority may return -1 as a value: errno tells.
        unsafe { *libc::__errno_location() = 0 };
        let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
        if nice == -1 && unsafe { *libc::__errno_location() } != 0 {
            return None;
        }
        // SCHED_RESET_ON_FORK only says what a child gets: a hold that could not
        // clear it (no CAP_SYS_NICE, kernel/preempt.rs) leaves it on.
        let policy = unsafe { libc::sched_getscheduler(tid) } & !libc::SCHED_RESET_ON_FORK;
        let mut p = libc::sched_param { sched_priority: 0 };
        let ioprio = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid as libc::c_long) };
        if policy < 0 || unsafe { libc::sched_getparam(tid, &mut p) } != 0 || ioprio < 0 {
            return None;
        }
        Some(Sched { nice, policy, rt_priority: p.sched_priority, ioprio })
    }

    /// Gives thread `tid` these back (agentmon runs as root: CAP_SYS_NICE), its
    /// policy only if `policy` (a held thread's is its hold's until it ends).
    fn restore(&self, tid: i32, policy: bool) -> std::io::Result<()> {
        let p = libc::sched_param { sched_priority: self.rt_priority };
        let ok = unsafe {
            (!policy || libc::sched_setscheduler(tid, self.policy, &p) == 0)
                && libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, self.nice) == 0
                && libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, tid as libc::c_long, self.ioprio)
                    == 0
        };
        if ok { Ok(()) } else { Err(std::io::Error::last_os_error()) }
    }
}

fn limits() -> [(u64, u64); LIMITS.len()] {
    LIMITS.map(|(r, _)| {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        unsafe { libc::getrlimit(r, &mut l) };
        (l.rlim_cur, l.rlim_max)
    })
}

fn threads() -> Vec<i32> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

impl Standing {
    /// What agentmon has now (its main thread's priority and policy).
    pub fn now() -> Self {
        let me = std::process::id() as i32;
        let sched =
            Sched::of(me).unwrap_or(Sched { nice: 0, policy: libc::SCHED_OTHER, rt_priority: 0, ioprio: 0 });
        Standing {
            sched,
            limits: limits(),
            stuck: Vec::new(),
            preempt: crate::kernel::preempt::chosen_for()
                .and_then(|m| Some((m, crate::kernel::preempt::ModelFile::open()?))),
            preempt_said: None,
        }
    }

    /// The kernel's preemption model, when it is no longer the one agentmon chose its
    /// tiers for: a line saying so. Root can switch a PREEMPT_DYNAMIC kernel's model at
    /// any time (debugfs `sched/preempt`). To one that preempts, from one that did
    /// not, agentmon's fexit programs may be preempted mid-run and its map calls may
    /// hide syscalls from it unwitnessed (kernel/preempt.rs; the BPF LSM hooks hold
    /// under any model, their checks' state per thread): that is put
    /// back. A switch its tiers hold under (to a model that does not preempt, or from
    /// one that did) is said once and left, so that two agentmons started under
    /// different models never switch it back and forth.
    pub fn preemption_changed(&mut self) -> Option<String> {
        use crate::kernel::preempt::word_preempts;
        let (was, file) = self.preempt.as_ref()?;
        let now = match file.running() {
            Ok(now) if now == *was => {
                self.preempt_said = None;
                return None;
            }
            Ok(now) => now,
            Err(e) => {
                let line = format!(
                    "the kernel's preemption model ({was} at agentmon's start) could not be read: {e}"
                );
                return self.say_once(line);
            }
        };
        let line = format!("the kernel's preemption model {was} -> {now}");
        if word_preempts(was) || !word_preempts(&now) {
            return self.say_once(format!("{line} (left: agentmon's tiers hold under it)"));
        }
        match file.set(was) {
            Ok(()) => {
                self.preempt_said = None;
                Some(format!("{line} (put back)"))
            }
            Err(e) => self.say_once(format!("{line} (not put back: {e})")),
        }
    }

    /// `line`, unless the last check said it.
    fn say_once(&mut self, line: String) -> Option<String> {
        (self.preempt_said.as_ref() != Some(&line)).then(|| {
            self.preempt_said = Some(line.clone());
            line
        })
    }

    /// What differs from the start, each put back: one line per change, saying so
    /// when it could not be. A change that could not be put back is said again
    /// only when what differs changes.
    pub fn restore_changed(&mut self) -> Vec<String> {
        self.restore_in(&threads())
    }

    /// [`Self::restore_changed`] for these threads of agentmon's.
    pub(crate) fn restore_in(&mut self, threads: &[i32]) -> Vec<String> {
        let mut changed = Vec::new();
        let mut stuck = Vec::new();
        for &tid in threads {
            // A thread a hold has raised for a BPF map call, before or after the
            // read (kernel/preempt.rs): its real-time policy is agentmon's own, and
            // only its nice value and I/O priority are compared (and put back).
            let held = crate::kernel::preempt::raised(tid);
            let Some(mut now) = Sched::of(tid) else { continue };
            let held = held || crate::kernel::preempt::raised(tid);
            if held {
                (now.policy, now.rt_priority) = (self.sched.policy, self.sched.rt_priority);
            }
            if now != self.sched {
                let line = format!("thread {tid}: {}", diff(&self.sched, &now));
                match self.sched.restore(tid, !held) {
                    Ok(()) => changed.push(line),
                    Err(e) => stuck.push(format!("{line} (not put back: {e})")),
                }
            }
        }
        for (i, now) in limits().iter().enumerate() {
            let (r, name) = LIMITS[i];
            let was = self.limits[i];
            if *now != was {
                let line = format!("{name} {} -> {}", limit(was), limit(*now));
                let l = libc::rlimit { rlim_cur: was.0, rlim_max: was.1 };
                match unsafe { libc::setrlimit(r, &l) } {
                    0 => changed.push(line),
                    _ => stuck.push(format!("{line} (not put back: {})", std::io::Error::last_os_error())),
                }
            }
        }
        if stuck != self.stuck {
            changed.extend(stuck.iter().cloned());
            self.stuck = stuck;
        }
        changed
    }
}

fn limit((cur, max): (u64, u64)) -> String {
    let one = |v: u64| if v == libc::RLIM_INFINITY { "unlimited".to_string() } else { v.to_string() };
    format!("{}/{}", one(cur), one(max))
}

fn diff(was: &Sched, now: &Sched) -> String {
    let mut parts = Vec::new();
    if was.nice != now.nice {
        parts.push(format!("nice {} -> {}", was.nice, now.nice));
    }
    if (was.policy, was.rt_priority) != (now.policy, now.rt_priority) {
        parts.push(format!(
            "policy {}/{} -> {}/{}",
            policy(was.policy),
            was.rt_priority,
            policy(now.policy),
            now.rt_priority
        ));
    }
    if was.ioprio != now.ioprio {
        parts.push(format!("I/O priority {:#x} -> {:#x}", was.ioprio, now.ioprio));
    }
    parts.join(", ")
}

fn policy(p: i32) -> &'static str {
    match p & !libc::SCHED_RESET_ON_FORK {
        libc::SCHED_OTHER => "SCHED_OTHER",
        libc::SCHED_FIFO => "SCHED_FIFO",
        libc::SCHED_RR => "SCHED_RR",
        libc::SCHED_BATCH => "SCHED_BATCH",
        libc::SCHED_IDLE => "SCHED_IDLE",
        6 => "SCHED_DEADLINE",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_limit_is_said_and_put_back() {
        let mut s = Standing::now();
        // Lowering one's own soft limit, and raising it back to the hard one, need
        // no privilege.
        let i = LIMITS.iter().position(|(r, _)| *r == libc::RLIMIT_FSIZE).unwrap();
        let fsize = libc::rlimit { rlim_cur: 1 << 30, rlim_max: s.limits[i].1 };
        unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &fsize) };
        // No thread: the other tests' threads change their own policies.
        let changed = s.restore_in(&[]);
        let was = s.limits[i];
        assert_eq!(changed, vec![format!("RLIMIT_FSIZE {} -> {}", limit(was), limit((1 << 30, was.1)))]);
        assert_eq!(s.restore_in(&[]), Vec::<String>::new(), "put back");
    }

    /// A thread raised to SCHED_FIFO by a hold for its BPF map calls, on a kernel
    /// that preempts (kernel/preempt.rs), is agentmon's own doing: before, a tick that
    /// came during one put the thread back mid-call and made a tamper record of it.
    #[test]
    fn a_thread_held_for_its_map_calls_is_no_change() {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "real-time policies need root: run the unit tests as root"
        );
        let mut s = Standing::now();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let held = std::thread::spawn(move || {
            let _hold = crate::kernel::preempt::raise_for_test();
            // SAFETY: the calling thread's policy.
            let policy = unsafe { libc::sched_getscheduler(0) } & !libc::SCHED_RESET_ON_FORK;
            tx.send((nix::unistd::gettid().as_raw(), policy)).unwrap();
            done_rx.recv().unwrap();
            // The renice below was put back; the hold was not.
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            let policy = unsafe { libc::sched_getscheduler(0) } & !libc::SCHED_RESET_ON_FORK;
            (nice, policy)
        });
        let (tid, policy) = rx.recv().unwrap();
        assert_eq!(policy, libc::SCHED_FIFO, "the hold did not raise the thread");
        let changed = s.restore_in(&[tid]);
        // Its nice value is still watched while it is held.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19) };
        let reniced = s.restore_in(&[tid]);
        done_tx.send(()).unwrap();
        let after = held.join().unwrap();
        assert_eq!(changed, Vec::<String>::new(), "a held thread was taken for a change");
        assert_eq!(reniced, vec![format!("thread {tid}: nice {} -> 19", s.sched.nice)]);
        assert_eq!(
            after,
            (s.sched.nice, libc::SCHED_FIFO),
            "the renice was not put back, or the hold was undone"
        );
    }

    /// A model agentmon's tiers do not hold under (one that preempts, where the one
    /// it started under did not) is put back; one they hold under is said once and
    /// left: two agentmons started under different models must not switch it back and
    /// forth, each making a tamper record of the other's put-back.
    #[test]
    fn a_preemption_switch_is_put_back_only_where_the_tiers_need_it() {
        use std::io::{Read, Seek, Write};
        let check = |chosen: &'static str, line: &str| {
            let mut f = tempfile::tempfile().unwrap();
            f.write_all(line.as_bytes()).unwrap();
            // The kernel's handler reads no offset; a file's write lands at its own.
            f.rewind().unwrap();
            let mut s = Standing::now();
            s.preempt = Some((chosen, crate::kernel::preempt::ModelFile::over(f.try_clone().unwrap())));
            let said = [s.preemption_changed(), s.preemption_changed()];
            let mut now = String::new();
            f.rewind().unwrap();
            f.read_to_string(&mut now).unwrap();
            (said, now)
        };
        let (said, now) = check("voluntary", "none voluntary (full) lazy\n");
        assert_eq!(said[0].as_deref(), Some("the kernel's preemption model voluntary -> full (put back)"));
        assert!(now.starts_with("voluntary"), "not written back: {now:?}");
        let (said, now) = check("full", "none (voluntary) full lazy\n");
        assert_eq!(
            said,
            [
                Some(
                    "the kernel's preemption model full -> voluntary (left: agentmon's tiers hold under it)"
                        .into()
                ),
                None
            ],
            "said once, and not written"
        );
        assert_eq!(now, "none (voluntary) full lazy\n");
        let (said, _) = check("lazy", "none voluntary (full) lazy\n");
        assert!(said[0].as_deref().is_some_and(|l| l.ends_with("(left: agentmon's tiers hold under it)")));
        assert_eq!(check("voluntary", "none (voluntary) full\n").0, [None, None]);
    }

    #[test]
    fn what_changed_is_said_by_name() {
        let was = Sched { nice: 0, policy: libc::SCHED_OTHER, rt_priority: 0, ioprio: 0 };
        let now = Sched { nice: 19, policy: libc::SCHED_IDLE, rt_priority: 0, ioprio: 0x6000 };
        assert_eq!(
            diff(&was, &now),
            "nice 0 -> 19, policy SCHED_OTHER/0 -> SCHED_IDLE/0, I/O priority 0x0 -> 0x6000"
        );
        assert_eq!(limit((5, libc::RLIM_INFINITY)), "5/unlimited");
    }
}
