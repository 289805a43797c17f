//! Whether this kernel may preempt a BPF program in the middle of its run.
//!
//! fexit and BPF LSM programs run with migration disabled, not preemption. On a
//! kernel that preempts tasks inside the kernel (`preempt=full`, `lazy`, RT), a
//! program preempted mid-run shares its per-CPU state with the next program that
//! runs on its CPU: an event built there can carry another call's operands, and an
//! LSM check kept per CPU could finish on another task's climb up the directory
//! tree (an agent's two threads on one CPU had one's write judged by the other's
//! path): the hooks keep a check's state per thread (monitor-ebpf lsm/state.rs), so
//! the BPF LSM tier holds there. But the kernel skips an fexit program it finds
//! already running on the CPU, counting the skip only in the program's
//! `recursion_misses`: an event lost and never said. Measured in the Debian 12 and 13
//! guests booted `preempt=full`, four file creators on one CPU: 5,596 and 10,627 of
//! 12,000 creates recorded on fexit, none counted lost, one record undecodable; all
//! 12,000 on the syscall tracepoints, whose programs run with preemption off. So on
//! such a kernel fexit does not observe.

use std::path::Path;

/// The preemption model, as the kernel says it runs (or why it is not known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Model {
    /// `none` or `voluntary`: a task in the kernel is preempted only where it
    /// allows it, never inside a BPF program.
    Safe(String),
    /// `full`, `lazy`, `rt`, or one not known.
    Preempts(String),
}

impl std::fmt::Display for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Model::Safe(how) => write!(f, "{how}: BPF programs run whole"),
            Model::Preempts(how) => write!(
                f,
                "{how}: BPF programs may be preempted mid-run, so fexit does not observe (the BPF LSM hooks \
                 keep each check's state per thread)"
            ),
        }
    }
}

/// Where a PREEMPT_DYNAMIC kernel says its model: `none voluntary (full) lazy`.
const DEBUGFS: &str = "/sys/kernel/debug/sched/preempt";

/// This kernel's model: its running model where the kernel says it (debugfs),
/// else from its build (`uname -v`, the config) and the `preempt=` boot argument.
/// Read once per process (the tiers are chosen once, at start).
pub fn model() -> Model {
    read_once().0.clone()
}

/// The running model of a PREEMPT_DYNAMIC kernel as [`model`] read it (None where
/// the kernel did not say it): what the tiers were chosen for. Root can switch it
/// later (runner/standing.rs puts it back).
pub fn chosen_for() -> Option<&'static str> {
    read_once().1.as_deref()
}

fn read_once() -> &'static (Model, Option<String>) {
    static MODEL: std::sync::OnceLock<(Model, Option<String>)> = std::sync::OnceLock::new();
    MODEL.get_or_init(|| {
        let version = nix::sys::utsname::uname()
            .map(|u| u.version().to_string_lossy().into_owned())
            .unwrap_or_default();
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let dynamic = std::fs::read_to_string(DEBUGFS)
            .ok()
            .or_else(|| mounted_debugfs().then(|| std::fs::read_to_string(DEBUGFS).ok()).flatten());
        let model = classify(&version, dynamic.as_deref(), &cmdline, config);
        let running = version
            .split_whitespace()
            .any(|w| w == "PREEMPT_DYNAMIC")
            .then(|| dynamic.as_deref().and_then(running_in).map(String::from))
            .flatten();
        (model, running)
    })
}

/// The running model in the debugfs line: the one in parentheses.
fn running_in(line: &str) -> Option<&str> {
    line.split_whitespace().find_map(|w| w.strip_prefix('(')?.strip_suffix(')'))
}

/// Whether a model (a debugfs word: `none`, `voluntary`, `full`, `lazy`) preempts
/// kernel code.
pub fn word_preempts(model: &str) -> bool {
    !matches!(model, "none" | "voluntary")
}

/// The kernel's `sched/preempt`, opened once (root): read again at each check and
/// written through the same descriptor, so that what is mounted over
/// `/sys/kernel/debug` later (a tmpfs with a file of its own, a symlink) is neither
/// read nor written; and debugfs, held open, cannot simply be unmounted.
pub struct ModelFile(std::fs::File);

impl ModelFile {
    /// The file, if it is debugfs's (None: not a PREEMPT_DYNAMIC kernel, no debugfs,
    /// or debugfs refused, as under lockdown; then no one can switch the model).
    pub fn open() -> Option<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(DEBUGFS)
            .ok()?;
        let debugfs = nix::sys::statfs::fstatfs(&f)
            .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::DEBUGFS_MAGIC);
        debugfs.then_some(Self(f))
    }

    /// Another file in its place, for other modules' tests.
    #[cfg(test)]
    pub fn over(f: std::fs::File) -> Self {
        Self(f)
    }

    /// The model the kernel runs now.
    pub fn running(&self) -> std::io::Result<String> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 128];
        let n = self.0.read_at(&mut buf, 0)?;
        let line = String::from_utf8_lossy(&buf[..n]);
        running_in(&line).map(String::from).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("no model in {line:?}"))
        })
    }

    /// Sets the kernel's running model to `model` (a plain write: the kernel's
    /// handler reads no offset, and its seq_file refuses pwrite).
    pub fn set(&self, model: &str) -> std::io::Result<()> {
        use std::io::Write;
        (&self.0).write_all(model.as_bytes())
    }
}

/// Mounts debugfs where it is missing (root only; as systemd does at boot). Not
/// where it is mounted already without `sched/` (a kernel built without
/// SCHED_DEBUG): each start would stack one more mount.
fn mounted_debugfs() -> bool {
    let target = Path::new("/sys/kernel/debug");
    let mounted = nix::sys::statfs::statfs(target)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::DEBUGFS_MAGIC);
    !mounted
        && !target.join("sched").exists()
        && nix::mount::mount(
            Some("debugfs"),
            target,
            Some("debugfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .is_ok()
}

/// The kernel's build configuration: its own (`/proc/config.gz`), else the copy
/// its package put in /boot.
fn config() -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    if let Ok(f) = std::fs::File::open("/proc/config.gz")
        && flate2::read::GzDecoder::new(f).read_to_string(&mut text).is_ok()
    {
        return Some(text);
    }
    let release = nix::sys::utsname::uname().ok()?.release().to_string_lossy().into_owned();
    std::fs::read_to_string(format!("/boot/config-{release}")).ok()
}

/// The model from what the kernel says of itself: `uname -v` (`PREEMPT_RT`,
/// `PREEMPT_DYNAMIC`, `PREEMPT`), the debugfs line of a dynamic kernel, the
/// `preempt=` boot argument and the build's config (read only when nothing else
/// says: it is decompressed).
pub fn classify(
    version: &str,
    dynamic: Option<&str>,
    cmdline: &str,
    config: impl FnOnce() -> Option<String>,
) -> Model {
    let words: Vec<&str> = version.split_whitespace().collect();
    if words.contains(&"PREEMPT_RT") {
        return Model::Preempts("a real-time kernel (PREEMPT_RT)".into());
    }
    let mode = |m: &str, how: &str| {
        let said = format!("preempt={m} ({how})");
        if word_preempts(m) { Model::Preempts(said) } else { Model::Safe(said) }
    };
    if words.contains(&"PREEMPT_DYNAMIC") {
        // The running model is the one in parentheses.
        if let Some(m) = dynamic.and_then(running_in) {
            return mode(m, "the kernel's sched/preempt");
        }
        // The kernel takes the last one given.
        if let Some(m) = cmdline.split_whitespace().filter_map(|a| a.strip_prefix("preempt=")).next_back() {
            return mode(m, "the boot argument");
        }
        let built = config().and_then(|c| {
            let on = |k: &str| c.lines().any(|l| l.trim() == format!("{k}=y"));
            [
                ("CONFIG_PREEMPT_NONE", "none"),
                ("CONFIG_PREEMPT_VOLUNTARY", "voluntary"),
                ("CONFIG_PREEMPT_LAZY", "lazy"),
                ("CONFIG_PREEMPT", "full"),
            ]
            .into_iter()
            .find(|(k, _)| on(k))
            .map(|(_, m)| m)
        });
        return match built {
            Some(m) => mode(m, "the kernel's build default"),
            None => Model::Preempts(
                "a PREEMPT_DYNAMIC kernel whose model could not be read (no debugfs sched/preempt, no preempt= \
                 argument, no /boot config)"
                    .into(),
            ),
        };
    }
    // Built with one model: `SMP PREEMPT` is full preemption; without the word the
    // kernel does not preempt kernel code.
    if words.contains(&"PREEMPT") {
        Model::Preempts("a kernel built with full preemption (PREEMPT)".into())
    } else {
        Model::Safe("a kernel built without kernel preemption".into())
    }
}

/// Why BPF programs may be preempted mid-run here (None: they are not).
pub fn preempts() -> Option<String> {
    match model() {
        Model::Safe(_) => None,
        Model::Preempts(why) => Some(why),
    }
}

/// Real-time priority for the calling thread while it makes BPF map calls, on a
/// kernel that preempts ([`hold`]).
///
/// The kernel makes map calls from userspace with its CPU's BPF guard held
/// (`bpf_disable_instrumentation`: `bpf_prog_active`, with migration, not
/// preemption, disabled), and a syscall tracepoint's program that finds the guard
/// held is skipped (`trace_call_bpf`): counted nowhere before 6.7, in the program's
/// `recursion_misses` after. Where the kernel preempts kernel code, a tracked process
/// that preempts agentmon inside a map call runs its syscalls on that CPU past
/// agentmon's programs (measured in the Debian 12 guest booted `preempt=full`; the
/// witness makes each a loss record, monitor-ebpf witness.rs). As SCHED_FIFO,
/// agentmon is preempted there by no process of the ordinary classes.
#[must_use = "the priority lasts as long as the Hold"]
pub struct Hold {
    raised: bool,
    /// Given back on the thread that raised it.
    _thread: std::marker::PhantomData<*const ()>,
}

thread_local! {
    /// Holds open on this thread, and the policy to go back to.
    static HELD: std::cell::Cell<(u32, Option<(i32, i32)>)> = const { std::cell::Cell::new((0, None)) };
}

/// The lowest real-time priority: above every ordinary process, below the
/// kernel's threaded interrupts (a process at a real-time priority of its own, which
/// takes CAP_SYS_NICE, can still preempt agentmon: then the witness says so).
const FIFO_PRIORITY: i32 = 1;

/// include/uapi/linux/sched.h (not in libc for this target).
const SCHED_DEADLINE: i32 = 6;

/// Why agentmon cannot raise itself (a service started with systemd's
/// RestrictRealtime, no CAP_SYS_NICE): said once, and not tried again.
static REFUSED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Raises this thread to SCHED_FIFO until the returned [`Hold`] is dropped, on a
/// kernel that preempts (else nothing: the guard is never held across a preemption
/// there). Nested holds share the first one's raise.
pub fn hold() -> Hold {
    if preempts().is_none() || REFUSED.get().is_some() {
        return Hold { raised: false, _thread: std::marker::PhantomData };
    }
    raise()
}

/// Why map calls run at an ordinary priority on this preempting kernel, once one
/// was tried (None: they do not, or none was tried yet).
pub fn refused() -> Option<&'static str> {
    REFUSED.get().map(String::as_str)
}

/// [`hold`] whatever the kernel, for other modules' tests.
#[cfg(test)]
pub fn raise_for_test() -> Hold {
    raise()
}

/// [`hold`] whatever the kernel.
fn raise() -> Hold {
    let held = |raised| Hold { raised, _thread: std::marker::PhantomData };
    HELD.with(|h| {
        let (depth, prev) = h.get();
        if depth > 0 {
            h.set((depth + 1, prev));
            return held(true);
        }
        let refuse = |what: &str| {
            let err = std::io::Error::last_os_error();
            let why = format!("{what}: {err}");
            if REFUSED.set(why.clone()).is_ok() {
                tracing::error!(
                    "agentmon cannot raise itself to real-time priority for its BPF map calls ({why}): on this \
                     preempting kernel a tracked process that preempts one runs its syscalls past agentmon's \
                     programs, each then a loss record"
                );
            }
            held(false)
        };
        // SAFETY: plain system calls on the calling thread with a valid sched_param.
        let policy = unsafe { libc::sched_getscheduler(0) };
        let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
        if policy < 0 || unsafe { libc::sched_getparam(0, &mut param) } != 0 {
            return refuse("reading its scheduling policy");
        }
        // Already at a real-time policy (the operator's choice, round-robin or
        // deadline included): kept as it is, nothing to give back.
        let base = policy & !libc::SCHED_RESET_ON_FORK;
        if base == SCHED_DEADLINE
            || (matches!(base, libc::SCHED_FIFO | libc::SCHED_RR) && param.sched_priority >= FIFO_PRIORITY)
        {
            h.set((1, None));
            return held(true);
        }
        let prev = (policy, param.sched_priority);
        param.sched_priority = FIFO_PRIORITY;
        // Listed first: a standing check between the raise and the listing would take
        // the raise for tampering.
        let me = nix::unistd::gettid().as_raw();
        raised_threads().insert(me);
        // SAFETY: as above. A child forked meanwhile does not inherit the priority.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param) } != 0 {
            let refused = refuse("sched_setscheduler(SCHED_FIFO)");
            raised_threads().remove(&me);
            return refused;
        }
        h.set((1, Some(prev)));
        held(true)
    })
}

/// The threads a hold has raised now (their ids): runner/standing.rs takes their
/// real-time policy for no tampering.
fn raised_threads() -> std::sync::MutexGuard<'static, std::collections::BTreeSet<i32>> {
    static RAISED: std::sync::Mutex<std::collections::BTreeSet<i32>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    RAISED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether thread `tid` of this process is raised by a hold now.
pub fn raised(tid: i32) -> bool {
    raised_threads().contains(&tid)
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.raised {
            return;
        }
        HELD.with(|h| {
            let (depth, prev) = h.get();
            if depth > 1 {
                h.set((depth - 1, prev));
                return;
            }
            h.set((0, None));
            if let Some((policy, priority)) = prev {
                let param = libc::sched_param { sched_priority: priority };
                // SAFETY: as in `raise`; the thread's own policy from before. Clearing
                // SCHED_RESET_ON_FORK takes CAP_SYS_NICE, which a raise allowed by
                // RLIMIT_RTPRIO alone does not have: then the policy goes back with the
                // flag kept (it only resets a child's policy to this one).
                let set = |p: i32| unsafe { libc::sched_setscheduler(0, p, &param) } == 0;
                if !set(policy) && !set(policy | libc::SCHED_RESET_ON_FORK) {
                    tracing::error!(
                        "agentmon could not give back its real-time priority after a BPF map call: {}",
                        std::io::Error::last_os_error()
                    );
                }
                raised_threads().remove(&nix::unistd::gettid().as_raw());
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread of its own (its scheduling policy is the thread's), as
    /// root: real-time policies need it, and CI runs the unit tests so.
    fn on_a_thread_as_root(f: impl FnOnce() + Send + 'static) {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "real-time policies need root: run the unit tests as root"
        );
        std::thread::spawn(f).join().unwrap();
    }

    /// The thread is SCHED_FIFO while a hold lasts, nested holds included, and
    /// back to its own policy after (as root: CI runs the unit tests so).
    #[test]
    fn a_hold_raises_the_thread_and_gives_it_back() {
        on_a_thread_as_root(|| {
            // SAFETY: sched_getscheduler of the calling thread.
            let policy = || unsafe { libc::sched_getscheduler(0) } & !libc::SCHED_RESET_ON_FORK;
            let before = policy();
            {
                let _a = raise();
                assert_eq!(policy(), libc::SCHED_FIFO);
                {
                    let _b = raise();
                    assert_eq!(policy(), libc::SCHED_FIFO);
                }
                assert_eq!(policy(), libc::SCHED_FIFO, "an inner hold gave the priority back early");
            }
            assert_eq!(policy(), before);
        });
    }

    /// Without CAP_SYS_NICE (a raise that RLIMIT_RTPRIO alone allows), a hold still
    /// gives the thread its own policy back: clearing SCHED_RESET_ON_FORK takes the
    /// capability, and the thread stayed SCHED_FIFO after every map call. (Raised
    /// here with the capability, which is dropped before the give-back: CI's root
    /// may lack CAP_SYS_RESOURCE, which raising the RTPRIO hard limit takes.)
    #[test]
    fn a_hold_without_cap_sys_nice_gives_the_priority_back() {
        /// include/uapi/linux/capability.h
        const CAP_SYS_NICE: u32 = 23;
        on_a_thread_as_root(|| {
            // SAFETY: the calling thread's policy.
            let policy = || unsafe { libc::sched_getscheduler(0) } & !libc::SCHED_RESET_ON_FORK;
            let before = policy();
            {
                let _a = raise();
                assert_eq!(policy(), libc::SCHED_FIFO);
                let mut caps = crate::enforce::caps::get().expect("capget");
                caps[0].effective &= !(1 << CAP_SYS_NICE);
                assert!(crate::enforce::caps::set(&caps), "this thread could not drop CAP_SYS_NICE");
            }
            assert_eq!(policy(), before, "the thread kept its real-time priority after the hold");
            assert!(!raised(nix::unistd::gettid().as_raw()), "the thread is still listed as raised");
            // SCHED_RESET_ON_FORK, left on, is no change for the standing check.
            let mut s = crate::runner::standing::Standing::now();
            assert_eq!(s.restore_in(&[nix::unistd::gettid().as_raw()]), Vec::<String>::new());
        });
    }

    /// A thread already at a real-time policy of its own (the operator's choice) keeps
    /// it through a hold: SCHED_RR at 5 was lowered to SCHED_FIFO 1 for each hold.
    #[test]
    fn a_real_time_thread_keeps_its_own_policy() {
        on_a_thread_as_root(|| {
            let now = || {
                let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
                // SAFETY: the calling thread's policy and parameters.
                let policy = unsafe { libc::sched_getscheduler(0) } & !libc::SCHED_RESET_ON_FORK;
                assert_eq!(unsafe { libc::sched_getparam(0, &mut param) }, 0);
                (policy, param.sched_priority)
            };
            let rr = libc::sched_param { sched_priority: 5 };
            // SAFETY: this test's own thread, a valid sched_param.
            assert_eq!(
                unsafe { libc::sched_setscheduler(0, libc::SCHED_RR | libc::SCHED_RESET_ON_FORK, &rr) },
                0
            );
            {
                let _a = raise();
                assert_eq!(now(), (libc::SCHED_RR, 5), "a hold changed the thread's own real-time policy");
            }
            assert_eq!(now(), (libc::SCHED_RR, 5));
        });
    }

    #[test]
    fn the_running_model_decides() {
        let dynamic = "#1 SMP PREEMPT_DYNAMIC Debian 6.12.117-1 (2026-01-01)";
        let cfg = "CONFIG_PREEMPT_VOLUNTARY=y\nCONFIG_PREEMPT_DYNAMIC=y\n";
        // Debian's default, said by debugfs, by nothing but the build, overridden.
        assert!(matches!(
            classify(dynamic, Some("none (voluntary) full "), "", || Some(cfg.to_string())),
            Model::Safe(_)
        ));
        assert!(matches!(classify(dynamic, None, "ro quiet", || Some(cfg.to_string())), Model::Safe(_)));
        assert!(matches!(
            classify(dynamic, Some("none voluntary (full) "), "", || Some(cfg.to_string())),
            Model::Preempts(_)
        ));
        assert!(matches!(
            classify(dynamic, None, "preempt=full", || Some(cfg.to_string())),
            Model::Preempts(_)
        ));
        assert!(matches!(
            classify(dynamic, None, "preempt=none preempt=full", || Some(cfg.to_string())),
            Model::Preempts(_)
        ));
        assert!(matches!(
            classify(dynamic, None, "preempt=full preempt=none", || Some(cfg.to_string())),
            Model::Safe(_)
        ));
        assert!(matches!(
            classify(dynamic, Some("none voluntary full (lazy)"), "", || Some(cfg.to_string())),
            Model::Preempts(_)
        ));
        // The config is decompressed only when nothing else says.
        let unread = || -> Option<String> { panic!("the config was read") };
        assert!(matches!(classify(dynamic, Some("none (voluntary) full "), "", unread), Model::Safe(_)));
        assert!(matches!(classify(dynamic, None, "preempt=full", unread), Model::Preempts(_)));
        // A build default of full preemption (CONFIG_PREEMPT=y), or nothing to go by.
        assert!(matches!(
            classify(dynamic, None, "", || Some("CONFIG_PREEMPT=y\n".to_string())),
            Model::Preempts(_)
        ));
        assert!(matches!(classify(dynamic, None, "", || None), Model::Preempts(_)));
        // Static builds.
        assert!(matches!(classify("#1 SMP PREEMPT_RT Mon", None, "", || None), Model::Preempts(_)));
        assert!(matches!(classify("#1 SMP PREEMPT Mon", None, "", || None), Model::Preempts(_)));
        assert!(matches!(classify("#1 SMP Mon", None, "", || None), Model::Safe(_)));
    }
}
