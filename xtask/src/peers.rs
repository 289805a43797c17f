//! Monitors run around the benchmark loop: agentmon (tracked and untracked) and the
//! peers, each watching the same syscalls for the loop process.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// Syscalls every monitor watches: opens with write intent, and connect.
pub const AUDIT_KEY: &str = "agentmon-bench";

/// A background monitor process (stopped on drop).
pub struct Background {
    child: Child,
    cleanup: Vec<Vec<String>>,
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for cmd in &self.cleanup {
            let _ =
                Command::new(&cmd[0]).args(&cmd[1..]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not become ready in {timeout:?}")
}

/// agentmon running with its probes attached, tracking only an idle `sleep`.
pub fn agentmon_idle(agentmon: &Path, dir: &Path) -> anyhow::Result<Background> {
    agentmon_idle_with(agentmon, dir, &[], None)
}

/// [`agentmon_idle`] with these variables in agentmon's environment.
/// With `task`, the `sleep` runs under that task manifest (for one that is enforced).
pub fn agentmon_idle_with(
    agentmon: &Path,
    dir: &Path,
    env: &[(&str, &str)],
    task: Option<&Path>,
) -> anyhow::Result<Background> {
    let events = dir.join("idle-events.jsonl");
    let _ = std::fs::remove_file(&events);
    let mut cmd = Command::new(agentmon);
    cmd.envs(env.iter().copied()).args(["exec", "-q", "-e"]).arg(&events);
    if let Some(t) = task {
        cmd.arg("--task").arg(t);
    }
    let child =
        cmd.args(["--", "sleep", "100000"]).stdout(Stdio::null()).spawn().context("start agentmon")?;
    wait_until("agentmon", Duration::from_secs(60), || {
        std::fs::read_to_string(&events).is_ok_and(|t| t.contains("\"kind\":\"exec\""))
    })?;
    Ok(Background { child, cleanup: vec![vec!["pkill".into(), "-f".into(), "sleep 100000".into()]] })
}

/// bpftrace watching the loop's write-intent opens (path, flags, result) and connects.
pub fn bpftrace(loop_comm: &str) -> anyhow::Result<Background> {
    bpftrace_script(&format!(
        r#"
tracepoint:syscalls:sys_enter_openat /comm == "{c}" && (args->flags & 0x243)/ {{ @p[tid] = args->filename; @f[tid] = args->flags; }}
tracepoint:syscalls:sys_exit_openat /@p[tid] != 0/ {{ printf("open %d %s %x %d\n", pid, str(@p[tid]), @f[tid], args->ret); delete(@p[tid]); delete(@f[tid]); }}
tracepoint:syscalls:sys_enter_connect /comm == "{c}"/ {{ @a[tid] = args->uservaddr; }}
tracepoint:syscalls:sys_exit_connect /@a[tid] != 0/ {{ printf("connect %d %d\n", pid, args->ret); delete(@a[tid]); }}
BEGIN {{ printf("ready\n"); }}
"#,
        c = loop_comm
    ))
}

/// bpftrace watching every process's execs, write-intent opens, deletes, renames and
/// connects, as a host-wide monitor would (the real programs' peer).
pub fn bpftrace_host() -> anyhow::Result<Background> {
    bpftrace_script(
        r#"
tracepoint:syscalls:sys_enter_execve { printf("exec %d %s\n", pid, str(args->filename)); }
tracepoint:syscalls:sys_enter_openat /args->flags & 0x243/ { @p[tid] = args->filename; @f[tid] = args->flags; }
tracepoint:syscalls:sys_exit_openat /@p[tid] != 0/ { printf("open %d %s %x %d\n", pid, str(@p[tid]), @f[tid], args->ret); delete(@p[tid]); delete(@f[tid]); }
tracepoint:syscalls:sys_enter_unlinkat { printf("unlink %d %s\n", pid, str(args->pathname)); }
tracepoint:syscalls:sys_enter_renameat2 { printf("rename %d %s %s\n", pid, str(args->oldname), str(args->newname)); }
tracepoint:syscalls:sys_enter_connect { printf("connect %d\n", pid); }
BEGIN { printf("ready\n"); }
"#,
    )
}

fn bpftrace_script(script: &str) -> anyhow::Result<Background> {
    let out = std::env::temp_dir().join("agentmon-bench-bpftrace.out");
    let f = std::fs::File::create(&out)?;
    let child = Command::new("bpftrace")
        .args(["-e", script])
        .stdout(f)
        .stderr(Stdio::null())
        .spawn()
        .context("start bpftrace (apt install bpftrace)")?;
    wait_until("bpftrace", Duration::from_secs(60), || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.contains("ready"))
    })?;
    Ok(Background { child, cleanup: vec![] })
}

/// A BPF program that does nothing on the loop's own syscall exit tracepoints
/// (bpftrace, a predicate that is never true): what hooking those syscalls costs.
pub fn tracepoint_floor() -> anyhow::Result<Background> {
    bpftrace_floor(&["sys_exit_openat", "sys_exit_connect"], "floor")
}

/// The same on a syscall the loop never makes (`acct`): what any syscall tracepoint
/// costs every syscall of every process once one is attached.
pub fn other_syscall_floor() -> anyhow::Result<Background> {
    bpftrace_floor(&["sys_exit_acct"], "floor-other")
}

fn bpftrace_floor(tps: &[&str], tag: &str) -> anyhow::Result<Background> {
    let mut script: String =
        tps.iter().map(|tp| format!("tracepoint:syscalls:{tp} /pid == 0/ {{ @n = 1; }}\n")).collect();
    script.push_str("BEGIN { printf(\"ready\\n\"); }\n");
    let out = std::env::temp_dir().join(format!("agentmon-bench-{tag}.out"));
    let f = std::fs::File::create(&out)?;
    let child = Command::new("bpftrace").args(["-e", &script]).stdout(f).stderr(Stdio::null()).spawn()?;
    wait_until("bpftrace", Duration::from_secs(60), || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.contains("ready"))
    })?;
    Ok(Background { child, cleanup: vec![] })
}

/// An `agentmon daemon` (shipped rules, events to a file in `dir`) and its socket.
pub fn daemon(agentmon: &Path, dir: &Path) -> anyhow::Result<(Background, PathBuf)> {
    daemon_with(agentmon, dir, "")
}

/// `agentmon exec` of task `task` through the daemon at `sock`, up to the `--` that
/// the command follows.
pub fn in_task(agentmon: &Path, sock: &Path, task: &Path) -> Command {
    let mut c = Command::new(agentmon);
    c.args(["exec", "--quiet", "--daemon"]).arg(sock).arg("--task").arg(task).arg("--");
    c
}

/// The same with more lines of configuration.
pub fn daemon_with(agentmon: &Path, dir: &Path, extra: &str) -> anyhow::Result<(Background, PathBuf)> {
    let (sock, events) = (dir.join("agentmon.sock"), dir.join("daemon-events.jsonl"));
    let config = dir.join("agentmon.yaml");
    std::fs::write(
        &config,
        format!(
            "socket: {}\nevents: {}\nrules: shipped\nstate_dir: {}\n{extra}",
            sock.display(),
            events.display(),
            dir.join("state").display()
        ),
    )?;
    let child = Command::new(agentmon)
        .args(["daemon", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("agentmon daemon")?;
    let bg = Background { child, cleanup: vec![] };
    wait_until("the daemon's socket", Duration::from_secs(30), || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    })?;
    Ok((bg, sock))
}

impl Background {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs `cmd` in the background, without output.
    pub fn spawn(cmd: &mut Command) -> anyhow::Result<Background> {
        let child =
            cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().with_context(|| format!("{cmd:?}"))?;
        Ok(Background { child, cleanup: vec![] })
    }

    /// SIGTERM, then waits up to `limit` for the process to end (killed after).
    pub fn terminate(mut self, limit: Duration) -> anyhow::Result<()> {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{:?} did not end in {limit:?} after SIGTERM", self.child.id())
    }
}

/// Is audit enabled now (`auditctl -s`: `enabled 1`, or 2 when locked)?
pub fn audit_enabled() -> bool {
    Command::new("auditctl").arg("-s").output().is_ok_and(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.trim().strip_prefix("enabled ").is_some_and(|v| v.trim() != "0"))
    })
}

pub fn auditctl(args: &[&str]) -> anyhow::Result<()> {
    let st = Command::new("auditctl").args(args).stdout(Stdio::null()).status().context("auditctl")?;
    if !st.success() {
        bail!("auditctl {args:?} failed");
    }
    Ok(())
}

/// auditd with rules for the loop executable's write-intent opens and connects.
pub fn auditd(loop_exe: &Path) -> anyhow::Result<Background> {
    let exe = format!("exe={}", loop_exe.display());
    auditd_with(&[
        &["-S", "open,openat,openat2,creat", "-F", "perm=w", "-F", &exe],
        &["-S", "connect", "-F", &exe],
    ])
}

/// auditd with rules for every process's execs, write-intent opens, deletes, renames
/// and connects, as a host-wide monitor would (the real programs' peer).
pub fn auditd_host() -> anyhow::Result<Background> {
    auditd_with(&[
        &["-S", "execve,execveat"],
        &["-S", "open,openat,openat2,creat", "-F", "perm=w"],
        &["-S", "unlink,unlinkat,rename,renameat,renameat2"],
        &["-S", "connect"],
    ])
}

/// auditd with one `always,exit` rule (64-bit calls, the bench's key) per entry.
fn auditd_with(rules: &[&[&str]]) -> anyhow::Result<Background> {
    // Read before auditd starts: it enables auditing itself.
    let was_enabled = audit_enabled();
    // auditd daemonises; run it in the foreground (-n) so we own it.
    let child = Command::new("auditd")
        .arg("-n")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start auditd (apt install auditd)")?;
    wait_until("auditd", Duration::from_secs(30), || {
        Command::new("auditctl").arg("-s").output().is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout).contains("pid")
                && !String::from_utf8_lossy(&o.stdout).contains("pid 0")
        })
    })?;
    let rules: Vec<Vec<String>> = rules
        .iter()
        .map(|extra| {
            let mut r = vec!["always,exit".to_string(), "-F".into(), "arch=b64".into()];
            r.extend(extra.iter().map(|s| s.to_string()));
            r.extend(["-k".into(), AUDIT_KEY.into()]);
            r
        })
        .collect();
    let mut cleanup = Vec::new();
    for r in &rules {
        let mut add = vec!["-a"];
        add.extend(r.iter().map(String::as_str));
        auditctl(&add)?;
        let mut del = vec!["auditctl".to_string(), "-d".into()];
        del.extend(r.iter().cloned());
        cleanup.push(del);
    }
    // Put auditing back as it was when done.
    auditctl(&["-e", "1"])?;
    cleanup.push(vec!["auditctl".into(), "-e".into(), if was_enabled { "1" } else { "0" }.into()]);
    Ok(Background { child, cleanup })
}

/// The loop command line under strace.
pub fn strace_cmd(loop_exe: &Path, args: &[String]) -> Vec<String> {
    let mut v: Vec<String> =
        ["strace", "-f", "-qq", "-e", "trace=open,openat,openat2,creat,connect", "-o", "/dev/null"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    v.push(loop_exe.display().to_string());
    v.extend(args.iter().cloned());
    v
}

pub fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(cmd)).find(|p| p.is_file())
}
