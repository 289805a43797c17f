//! Notices when agentmon itself stops running: traced (a `PTRACE_ATTACH` stops the
//! thread it names, here the event loop's), stopped (SIGSTOP), or starved. A thread
//! of its own checks the loop's heartbeat every half second and, when the loop has
//! been still for [`STILL`] in a tracing or stopped state, says so at once on stderr
//! and notes who traces it; the loop, when it runs again, records the gap as a
//! tamper record with its alert. A SIGSTOP stops this thread too, and a loop blocked
//! in a call is not stopped: then a gap longer than [`STILL_UNEXPLAINED`] is what
//! is reported, when the loop runs again. Its priority, policy and limits being
//! changed (runner/standing.rs) is checked every tick and reported too.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

/// How long the loop may be still, traced or stopped, before it counts as stopped.
pub const STILL: Duration = Duration::from_secs(2);
/// How long it may be still with no such evidence (blocked or starved: a kill's
/// sweep, a slow disk) before that is reported too.
pub const STILL_UNEXPLAINED: Duration = Duration::from_secs(10);

/// What the watchdog saw while the loop was still.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stall {
    /// The process tracing agentmon, if one was (/proc/self/status TracerPid).
    pub tracer: Option<u32>,
    /// The loop thread's state letter then (`t`: traced, `T`: stopped).
    pub state: Option<char>,
}

pub struct Watchdog {
    /// Cleared when the loop is done: the thread stops looking.
    active: Arc<std::sync::atomic::AtomicBool>,
    started: Instant,
    /// Milliseconds since `started` of the loop's last beat.
    beat: Arc<AtomicU64>,
    seen: Arc<Mutex<Option<Stall>>>,
    last: Instant,
    /// agentmon's priority, policy and limits at start, checked every tick.
    pub standing: super::standing::Standing,
}

fn status_field(text: &str, key: &str) -> Option<u32> {
    text.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse().ok()).filter(|p| *p != 0)
}

impl Watchdog {
    /// Starts the watching thread; the loop runs on the calling thread.
    pub fn start() -> Self {
        let started = Instant::now();
        let beat = Arc::new(AtomicU64::new(0));
        let seen: Arc<Mutex<Option<Stall>>> = Arc::default();
        let loop_tid = nix::unistd::gettid().as_raw();
        let active = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (b, s, a) = (beat.clone(), seen.clone(), active.clone());
        let spawned = std::thread::Builder::new().name("agentmon-watchdog".into()).spawn(move || {
            while a.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                let still = (started.elapsed().as_millis() as u64).saturating_sub(b.load(Relaxed));
                let mut seen = s.lock().unwrap_or_else(|p| p.into_inner());
                if still < STILL.as_millis() as u64 || seen.is_some() || !a.load(Relaxed) {
                    continue;
                }
                let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
                let stat = std::fs::read_to_string(format!("/proc/self/task/{loop_tid}/stat")).unwrap_or_default();
                let state = stat.rfind(')').and_then(|i| stat[i + 1..].trim_start().chars().next());
                let stall = Stall { tracer: status_field(&status, "TracerPid:"), state };
                // Blocked in a call (S, D) is not stopped: only the gap's length tells then.
                if stall.tracer.is_none() && !matches!(state, Some('t' | 'T')) {
                    continue;
                }
                eprintln!(
                    "agentmon: ALERT: agentmon's event loop has not run for {} ms (state {:?}, traced by {:?}); \
                     the kernel keeps counting what is not read",
                    still, stall.state, stall.tracer
                );
                *seen = Some(stall);
            }
        });
        if let Err(e) = spawned {
            tracing::error!(
                "the watchdog thread did not start: {e} (a stopped agentmon is noticed only when it runs again)"
            );
        }
        Self { active, started, beat, seen, last: Instant::now(), standing: super::standing::Standing::now() }
    }

    /// The loop is running.
    pub fn beat(&self) {
        self.beat.store(self.started.elapsed().as_millis() as u64, Relaxed);
    }

    /// Called by the loop's housekeeping: how long it was still since the last call
    /// (when longer than [`STILL`]) and what the watchdog saw meanwhile.
    pub fn gap(&mut self) -> Option<(Duration, Stall)> {
        let since = self.last.elapsed();
        self.last = Instant::now();
        self.beat();
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner()).take();
        (since >= STILL_UNEXPLAINED || seen.is_some()).then(|| (since, seen.unwrap_or_default()))
    }

    /// The loop is done: what follows (detaching the programs) is no stall.
    pub fn stop(&self) {
        self.active.store(false, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracer_pid_from_status() {
        let text = "Name:\tagentmon\nState:\tt (tracing stop)\nTracerPid:\t4242\n";
        assert_eq!(status_field(text, "TracerPid:"), Some(4242));
        assert_eq!(status_field("TracerPid:\t0\n", "TracerPid:"), None);
    }

    #[test]
    fn a_long_still_loop_is_a_gap() {
        let mut w = Watchdog::start();
        assert_eq!(w.gap(), None);
        w.last = Instant::now() - STILL - Duration::from_millis(10);
        assert_eq!(w.gap(), None, "a short still loop with no sign of a stop is not reported");
        w.last = Instant::now() - STILL_UNEXPLAINED - Duration::from_millis(10);
        let (d, stall) = w.gap().expect("a gap");
        assert!(d >= STILL_UNEXPLAINED);
        assert_eq!(stall, Stall::default());
        assert_eq!(w.gap(), None);
    }
}
