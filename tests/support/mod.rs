//! Runs scenarios under the real `agentmon exec` and parses the events it writes.
//!
//! The scenarios are in this same test binary: it re-executes itself with
//! `AGENTMON_SCENARIO=<name>`, so every action is a precise syscall sequence and no
//! helper binary has to be found on disk.

#![allow(dead_code)]

mod hung;
pub mod nats;

use hung::Drained;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use agentmon::event::{ALERT_SCHEMA, Alert, Event, Kind};

pub const SCENARIO_ENV: &str = "AGENTMON_SCENARIO";
/// Opt-out a user may set to run the suite without root; never set by CI.
pub const SKIP_ENV: &str = "AGENTMON_SKIP_KERNEL_TESTS";

/// The observation tier a daemon must choose here, when the runner knows it:
/// `scripts/vm.sh` says `fexit` in its guests (stock distribution kernels), so that
/// a fexit tier that stopped loading fails instead of falling back unseen.
pub fn expected_observe() -> Option<String> {
    std::env::var("AGENTMON_TEST_OBSERVE").ok()
}

pub fn agentmon() -> &'static str {
    env!("CARGO_BIN_EXE_agentmon")
}

pub struct Run {
    pub events: Vec<Event>,
    pub alerts: Vec<Alert>,
    pub code: i32,
    pub stderr: String,
}

impl Run {
    pub fn of(&self, kind: Kind) -> Vec<&Event> {
        self.events.iter().filter(|e| e.kind == kind).collect()
    }

    /// The single event of `kind` with `path`, or a failure listing what was seen.
    pub fn find(&self, kind: Kind, path: &Path) -> Result<&Event, String> {
        let p = path.to_str().unwrap();
        let hits: Vec<&Event> =
            self.events.iter().filter(|e| e.kind == kind && e.path.as_deref() == Some(p)).collect();
        match hits.as_slice() {
            [one] => Ok(one),
            [] => Err(format!("no {kind:?} event for {p}; saw:\n{}", self.summary())),
            many => Err(format!("{} {kind:?} events for {p}, expected one", many.len())),
        }
    }

    /// The first tamper record of `attempt` (its `detail.attempt`).
    pub fn tamper(&self, attempt: &str) -> Option<&Event> {
        tamper_of(&self.events, attempt).into_iter().next()
    }

    pub fn summary(&self) -> String {
        self.events
            .iter()
            .map(|e| {
                format!(
                    "  {:?} pid={} ppid={:?} comm={} exe={:?} path={:?} new={:?} dst={:?} err={:?} flags={:?}\n",
                    e.kind, e.pid, e.ppid, e.comm, e.exe, e.path, e.new_path, e.dst, e.error, e.flags
                )
            })
            .collect()
    }
}

/// Runs scenario `name` (with `args`) as a task under `agentmon exec`.
/// The tamper records of `attempt` (their `detail.attempt`) among `evs`.
pub fn tamper_of<'a>(evs: &'a [Event], attempt: &str) -> Vec<&'a Event> {
    evs.iter()
        .filter(|e| {
            e.kind == Kind::Tamper && e.detail.get("attempt").and_then(|v| v.as_str()) == Some(attempt)
        })
        .collect()
}

/// Runs scenario `name` (given `d`) under `agentmon exec` as the task `manifest`
/// (written to d/task.yaml).
pub fn run_as_task(d: &Path, manifest: &str, name: &str) -> Result<Run, String> {
    let file = d.join("task.yaml");
    std::fs::write(&file, manifest).map_err(|e| e.to_string())?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let cmd = vec![me.display().to_string(), d.display().to_string()];
    run_agentmon_with(&["--task", file.to_str().unwrap()], &cmd, &[(SCENARIO_ENV, name)], d)
}

pub fn run_scenario(name: &str, args: &[&str], dir: &Path) -> Result<Run, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = vec![me.to_str().unwrap().to_string()];
    cmd.extend(args.iter().map(|s| s.to_string()));
    run_agentmon(&cmd, &[(SCENARIO_ENV, name)], dir)
}

/// Runs `agentmon exec -- cmd` and parses its events.
pub fn run_agentmon(cmd: &[String], env: &[(&str, &str)], dir: &Path) -> Result<Run, String> {
    run_agentmon_with(&[], cmd, env, dir)
}

/// Parses a JSON-lines stream of events and alerts.
pub fn parse_stream(text: &str) -> Result<(Vec<Event>, Vec<Alert>), String> {
    let mut events = Vec::new();
    let mut alerts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("line {} is not JSON: {e}: {line}", i + 1))?;
        if v["schema"] == ALERT_SCHEMA {
            alerts.push(
                serde_json::from_value(v)
                    .map_err(|e| format!("line {} is not an alert: {e}: {line}", i + 1))?,
            );
        } else {
            events.push(
                serde_json::from_value(v)
                    .map_err(|e| format!("line {} is not an event: {e}: {line}", i + 1))?,
            );
        }
    }
    Ok((events, alerts))
}

/// `agentmon exec --quiet --events EVENTS FLAGS -- cmd` in `dir`, with `env` and no stdin.
pub fn exec_command(
    events: &Path,
    flags: &[&str],
    cmd: &[String],
    env: &[(&str, &str)],
    dir: &Path,
) -> Command {
    let mut c = Command::new(agentmon());
    c.args(["exec", "--quiet", "--events"])
        .arg(events)
        .args(flags)
        .arg("--")
        .args(cmd)
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null());
    c
}

/// Runs `agentmon exec FLAGS -- cmd` and parses its events and alerts.
pub fn run_agentmon_with(
    flags: &[&str],
    cmd: &[String],
    env: &[(&str, &str)],
    dir: &Path,
) -> Result<Run, String> {
    let events = dir.join(format!("events-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&events);
    run_command(exec_command(&events, flags, cmd, env, dir), &events)
}

/// How long one `agentmon exec` of a test may run before it is taken for hung, times
/// [`slowdown`]: a scenario takes seconds here and at most ~80 s in a guest.
pub const EXEC_LIMIT: std::time::Duration = std::time::Duration::from_secs(180);

/// Runs `c` (an [`exec_command`] writing `events`) and parses what it wrote. An agentmon
/// that has not ended within [`EXEC_LIMIT`] is a failure that names where its threads
/// and its children's wait (then they are killed), not a test that waits forever.
pub fn run_command(mut c: Command, events: &Path) -> Result<Run, String> {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run agentmon: {e}"))?;
    let _stdout = Drained::of(child.stdout.take());
    let err = Drained::of(child.stderr.take());
    let limit = EXEC_LIMIT * slowdown();
    let Some(code) = exit_within(&mut child, limit) else {
        let waits = hung::where_they_wait(child.id());
        // Said before the kill: a process stuck where SIGKILL does not reach (D
        // state) would keep the test from returning this.
        eprintln!("agentmon exec (pid {}) did not end within {} s:\n{waits}", child.id(), limit.as_secs());
        hung::kill_tree(child.id());
        let gone = exit_within(&mut child, std::time::Duration::from_secs(10)).is_some();
        return Err(format!(
            "agentmon exec did not end within {} s{}; where it and its children waited:\n{waits}\nits stderr so far:\n{}",
            limit.as_secs(),
            if gone { "" } else { " (nor within 10 s of SIGKILL)" },
            err.text(std::time::Duration::from_secs(5))
        ));
    };
    let code = code.unwrap_or(-1);
    // A process agentmon left (the agent's own) may hold the pipe after agentmon ended.
    let stderr = err.text(std::time::Duration::from_secs(10) * slowdown());
    let text = std::fs::read_to_string(events)
        .map_err(|e| format!("agentmon wrote no events ({e}); exit {code}; stderr:\n{stderr}"))?;
    let (events, alerts) = parse_stream(&text)?;
    Ok(Run { events, alerts, code, stderr })
}

/// An enforced task `id` for this test binary run as the agent in `d`: `d/repo`
/// made, its write scope, the binary its exec scope, then `more_scope` (indented
/// lines under `scope:`). The manifest's path and the binary.
pub fn enforced_self_task(d: &Path, id: &str, more_scope: &str) -> Result<(PathBuf, PathBuf), String> {
    std::fs::create_dir_all(d.join("repo")).map_err(|e| e.to_string())?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let t = d.join("task.yaml");
    std::fs::write(
        &t,
        format!(
            "id: {id}\nmode: execute\nenforcement: enforce\nscope:\n  write: [\"{r}/**\"]\n  exec: [\"{me}\"]\n{more_scope}",
            r = d.join("repo").display(),
            me = me.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok((t, me))
}

/// An enforced task `id` for this test binary run as the agent in `d`: reads under
/// `d/allowed`, writes under `d/repo`, the binary its exec scope, and with
/// `deny_sensitive` no reads of the sensitive set. The manifest's path.
pub fn read_write_task(d: &Path, id: &str, deny_sensitive: bool) -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let t = d.join("task.yaml");
    std::fs::write(
        &t,
        format!(
            "id: {id}\nmode: execute\nenforcement: enforce\n{}scope:\n  read: [\"{a}/**\"]\n  \
             write: [\"{r}/**\"]\n  exec: [\"{me}\"]\n",
            if deny_sensitive { "sensitive_reads: deny\n" } else { "" },
            a = d.join("allowed").display(),
            r = d.join("repo").display(),
            me = me.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok(t)
}

/// A fresh directory for one test, canonical (so paths compare with the kernel's).
pub fn workdir(name: &str) -> PathBuf {
    let base = std::env::temp_dir().join(format!("agentmon-test-{}", std::process::id())).join(name);
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    std::fs::canonicalize(&base).unwrap()
}

/// How much slower than this machine the kernel under test runs: `scripts/vm.sh`
/// sets AGENTMON_TEST_SLOWDOWN for its software-emulated guests. Deadlines the
/// tests choose (an approval timeout that a human would get in minutes) scale by it.
pub fn slowdown() -> u32 {
    std::env::var("AGENTMON_TEST_SLOWDOWN").ok().and_then(|v| v.parse().ok()).filter(|&n| n >= 1).unwrap_or(1)
}

/// The exit code of `child` once it ends within `limit` (`Some(None)`: killed by a
/// signal), or None if it is still running then (it is left running).
pub fn exit_within(child: &mut std::process::Child, limit: std::time::Duration) -> Option<Option<i32>> {
    let mut code = None;
    wait(limit, || {
        code = child.try_wait().ok().flatten().map(|s| s.code());
        code.is_some()
    });
    code
}

/// Takes the mount at `mnt` away (lazily: a FUSE server's mount, whatever still
/// uses it).
pub fn unmount(mnt: &Path) {
    let c = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

/// Mounts the test's FUSE file system at `mnt` (tests/scenarios/fuse.rs), served
/// by a child of this binary until the mount goes; `slow` says how `slow`'s
/// lookups are answered (`when`, `after-first`; none: 3 s late). Its `asked` and
/// `go` files are in `d`.
pub fn serve_fuse(d: &Path, mnt: &Path, slow: Option<&str>) -> Result<(), String> {
    ensure(Path::new("/dev/fuse").exists(), || {
        "/dev/fuse is missing: this test needs FUSE (modprobe fuse)".into()
    })?;
    std::fs::create_dir_all(mnt).map_err(|e| e.to_string())?;
    let served = std::process::Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .arg(d)
        .arg(mnt)
        .args(slow)
        .env(SCENARIO_ENV, "fuse_serve")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    ensure(served.status.success(), || format!("serving FUSE: {}", String::from_utf8_lossy(&served.stderr)))
}

/// Polls `cond` until it holds or `limit` passes; the last answer.
pub fn wait(limit: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    cond()
}

pub fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(msg()) }
}

pub fn eq<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    ensure(got == want, || format!("{what}: got {got:?}, want {want:?}"))
}

/// The running kernel's Landlock ABI (0: none).
pub fn landlock_abi() -> i64 {
    // landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<u8>(), 0usize, 1u32) }.max(0)
}

/// The Landlock ABI enforce mode needs (file scope, TCP ports, signal scoping).
pub const ENFORCE_ABI: i64 = 6;

/// Does agentmon enforce on the BPF LSM tier here (the kernel runs BPF LSM, is 6.2
/// or newer where it preempts kernel code, and the fallback tier was not asked for)?
pub fn bpf_lsm() -> bool {
    let runs = std::fs::read_to_string("/sys/kernel/security/lsm")
        .is_ok_and(|s| s.trim().split(',').any(|l| l == "bpf"));
    let old =
        aya::util::KernelVersion::current().map_or(true, |v| v < aya::util::KernelVersion::new(6, 2, 0));
    runs && !(old && agentmon::kernel::preempt::preempts().is_some())
        && std::env::var("AGENTMON_ENFORCE_TIER").map_or(true, |v| v != "fallback")
}

/// Can agentmon enforce here (on either tier)?
pub fn can_enforce() -> bool {
    bpf_lsm() || landlock_abi() >= ENFORCE_ABI
}

/// The tier enforced tasks' `task_start` names here.
pub fn tier() -> &'static str {
    if bpf_lsm() { "bpf-lsm" } else { "landlock" }
}

/// On a kernel whose Landlock is too old for enforce mode (Debian 12's 6.1 has ABI
/// 2), an enforced task must be refused before its command runs, saying why: this
/// checks that, for the test's own manifest, in place of the test.
pub fn enforce_refused_here(task: &Path, dir: &Path) -> Result<(), String> {
    let out = Command::new(agentmon())
        .args(["exec", "--quiet", "--task"])
        .arg(task)
        .args(["--", "/bin/true"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure(
        out.status.code() == Some(125) && err.contains("cannot enforce") && err.contains("Landlock"),
        || {
            format!(
                "Landlock ABI {}: an enforced task was not refused: {:?} {err}",
                landlock_abi(),
                out.status.code()
            )
        },
    )
}

/// A bind mount of `src` on `dst`, taken down when dropped.
pub struct BindMount(PathBuf);

impl BindMount {
    pub fn new(src: &Path, dst: &Path) -> Result<Self, String> {
        nix::mount::mount(Some(src), dst, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| format!("bind-mounting {} on {}: {e}", src.display(), dst.display()))?;
        Ok(Self(dst.to_path_buf()))
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A tmpfs mounted on a directory (made if need be) until dropped.
pub struct Tmpfs(BindMount);

impl Tmpfs {
    pub fn new(dir: &Path, opts: &str) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        nix::mount::mount(Some("tmpfs"), dir, Some("tmpfs"), nix::mount::MsFlags::empty(), Some(opts))
            .map_err(|e| format!("mounting a tmpfs ({opts}) on {}: {e}", dir.display()))?;
        Ok(Self(BindMount(dir.to_path_buf())))
    }
}

/// Fills `dir` (a small tmpfs) until the disk is full; the filler's path.
pub fn fill(dir: &Path) -> Result<PathBuf, String> {
    use std::io::Write;
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).map_err(|e| e.to_string())?;
    let block = vec![0u8; 4096];
    loop {
        match f.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return Ok(p),
            Err(e) => return Err(format!("filling {}: {e}", dir.display())),
        }
    }
}

/// The records of an audit chain's events (their bodies).
pub fn audited(chain: &Path) -> Result<Vec<Event>, String> {
    let text = std::fs::read_to_string(chain).map_err(|e| format!("{}: {e}", chain.display()))?;
    let mut out = Vec::new();
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).map_err(|e| format!("{e}: {l}"))?;
        if v["type"] == "event" {
            out.push(serde_json::from_value(v["body"].clone()).map_err(|e| format!("{e}: {l}"))?);
        }
    }
    Ok(out)
}
