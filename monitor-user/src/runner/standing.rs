//! agentmon's own CPU and I/O priority, scheduling policy and resource limits, as
//! it started with them. A process of the same owner needs nothing more to change
//! them (setpriority, ioprio_set, sched_setscheduler on agentmon's pid or one of its
//! threads' ids, prlimit64): an observed root agent could starve agentmon
//! (SCHED_IDLE, nice 19, the idle I/O class) or shrink its limits. Enforced tasks
//! are refused those calls (gate::filter::AIMED); against everyone else the loop's
//! housekeeping compares, every tick, and puts back what changed, and the change is
//! a tamper record. No hook sees these calls, so who made one is not known.
//! (A CPU limit below what agentmon has used gets it killed before the next tick:
//! only the enforced tier's refusal holds against that.)

/// Priority and policy are per thread; these are the main thread's at start, which
/// every thread inherits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sched {
    nice: i32,
    policy: i32,
    rt_priority: i32,
    ioprio: i64,
}

/// The limits whose shrinking blinds agentmon or gets it killed.
const LIMITS: [(libc::__rlimit_resource_t, &str); 5] = [
    (libc::RLIMIT_CPU, "RLIMIT_CPU"),
    (libc::RLIMIT_FSIZE, "RLIMIT_FSIZE"),
    (libc::RLIMIT_NOFILE, "RLIMIT_NOFILE"),
    (libc::RLIMIT_AS, "RLIMIT_AS"),
    (libc::RLIMIT_NPROC, "RLIMIT_NPROC"),
];

const IOPRIO_WHO_PROCESS: libc::c_long = 1;

#[derive(Debug, Clone)]
pub struct Standing {
    sched: Sched,
    limits: [(u64, u64); LIMITS.len()],
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
        let policy = unsafe { libc::sched_getscheduler(tid) };
        let mut p = libc::sched_param { sched_priority: 0 };
        let ioprio = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid as libc::c_long) };
        if policy < 0 || unsafe { libc::sched_getparam(tid, &mut p) } != 0 || ioprio < 0 {
            return None;
        }
        Some(Sched { nice, policy, rt_priority: p.sched_priority, ioprio })
    }

    /// Gives thread `tid` these back (agentmon runs as root: CAP_SYS_NICE).
    fn restore(&self, tid: i32) {
        let p = libc::sched_param { sched_priority: self.rt_priority };
        unsafe {
            libc::sched_setscheduler(tid, self.policy, &p);
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, self.nice);
            libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, tid as libc::c_long, self.ioprio);
        }
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
        Standing { sched, limits: limits() }
    }

    /// What differs from the start, each put back: one line per change.
    pub fn restore_changed(&self) -> Vec<String> {
        let mut changed = Vec::new();
        for tid in threads() {
            let Some(now) = Sched::of(tid) else { continue };
            if now != self.sched {
                changed.push(format!("thread {tid}: {}", diff(&self.sched, &now)));
                self.sched.restore(tid);
            }
        }
        for (i, now) in limits().iter().enumerate() {
            let (r, name) = LIMITS[i];
            let was = self.limits[i];
            if *now != was {
                changed.push(format!("{name} {:?} -> {:?}", was, now));
                let l = libc::rlimit { rlim_cur: was.0, rlim_max: was.1 };
                unsafe { libc::setrlimit(r, &l) };
            }
        }
        changed
    }
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
    fn a_changed_thread_and_limit_are_said_and_put_back() {
        let s = Standing::now();
        // Raising one's own nice value and lowering one's own soft limit need no privilege.
        let tid = nix::unistd::gettid().as_raw();
        let nice = s.sched.nice;
        let other = if nice < 19 { nice + 1 } else { nice - 1 };
        unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, other) };
        let fsize = libc::rlimit { rlim_cur: 1 << 30, rlim_max: s.limits[1].1 };
        unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &fsize) };
        let changed = s.restore_changed();
        assert!(changed.iter().any(|c| c.starts_with(&format!("thread {tid}: nice"))), "{changed:?}");
        assert!(changed.iter().any(|c| c.starts_with("RLIMIT_FSIZE")), "{changed:?}");
        assert_eq!(s.restore_changed(), Vec::<String>::new(), "put back");
    }
}
