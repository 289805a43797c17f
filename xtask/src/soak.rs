//! `cargo xtask soak`: the daemon under a long stream of short-lived processes. A
//! daemon (release build) serves TASKS tasks registered by `agentmon exec`; each runs
//! /bin/true over and over until PROCESSES have run in all, spread over MINUTES. The
//! daemon's RSS is sampled throughout; at the end every process's exec must be in
//! the daemon's events, and no `loss` event may have been written.

use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::bail;

use crate::bench::{build, nix_is_root};

#[derive(clap::Args)]
pub struct Options {
    #[arg(long, default_value_t = 100_000)]
    processes: u64,
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    #[arg(long, default_value_t = 4)]
    tasks: u64,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix(" kB")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

pub fn run(o: Options) -> anyhow::Result<()> {
    if !nix_is_root() {
        bail!("the daemon loads the kernel programs: run as root");
    }
    let (agentmon, looper) = build()?;
    let tmp = tempfile::tempdir()?;
    let d = std::fs::canonicalize(tmp.path())?;
    let events = d.join("daemon-events.jsonl");
    let (daemon, sock) = crate::peers::daemon(&agentmon, &d)?;
    let pid = daemon.pid();
    let rss_start = rss_kib(pid);
    let per_task = o.processes / o.tasks;
    let rate = per_task as f64 / (o.minutes * 60.0);
    eprintln!(
        "soak: {} tasks x {per_task} processes at {rate:.0}/s each for {:.1} min; daemon RSS {rss_start} KiB",
        o.tasks, o.minutes
    );
    let mut runs = Vec::new();
    for i in 0..o.tasks {
        let task = d.join(format!("t{i}.yaml"));
        std::fs::write(
            &task,
            format!(
                "id: soak-{i}\nmode: execute\nscope:\n  exec: [\"{}\", \"/bin/true\", \"/usr/bin/true\"]\n",
                looper.display()
            ),
        )?;
        runs.push(
            crate::peers::in_task(&agentmon, &sock, &task)
                .arg(&looper)
                .args(["spawn", &per_task.to_string()])
                .env("BENCH_RATE", rate.to_string())
                .stdout(Stdio::null())
                .spawn()?,
        );
    }
    let mut samples = vec![(0.0, rss_start)];
    let started = Instant::now();
    while runs.iter_mut().any(|c| c.try_wait().ok().flatten().is_none()) {
        std::thread::sleep(Duration::from_secs(5));
        if samples.last().is_some_and(|(s, _)| started.elapsed().as_secs_f64() - s >= 30.0) {
            samples.push((started.elapsed().as_secs_f64(), rss_kib(pid)));
        }
    }
    for c in &mut runs {
        if !c.wait()?.success() {
            bail!("a soak task failed");
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let rss_end = rss_kib(pid);
    samples.push((started.elapsed().as_secs_f64(), rss_end));
    let _ = nix_kill_term(pid);
    let (execs, losses, total) = count(&events, &looper)?;
    println!(
        "### Soak ({} processes in {} tasks over {:.1} min)\n",
        per_task * o.tasks,
        o.tasks,
        started.elapsed().as_secs_f64() / 60.0
    );
    println!(
        "- daemon RSS: start {rss_start} KiB, end {rss_end} KiB, max {} KiB",
        samples.iter().map(|s| s.1).max().unwrap_or(0)
    );
    println!(
        "- RSS samples (s: KiB): {}",
        samples.iter().map(|(s, r)| format!("{s:.0}: {r}")).collect::<Vec<_>>().join(", ")
    );
    println!(
        "- events written: {total}; exec events of /bin/true: {execs} of {} run; loss events: {losses}",
        per_task * o.tasks
    );
    Ok(())
}

fn nix_kill_term(pid: u32) -> std::io::Result<()> {
    // SAFETY: kill(2) on the daemon we started.
    if unsafe { libc::kill(pid as i32, libc::SIGTERM) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    std::thread::sleep(Duration::from_secs(3));
    Ok(())
}

/// (exec events of /bin/true, loss events, all lines) in the daemon's events file.
fn count(events: &Path, _looper: &Path) -> anyhow::Result<(u64, u64, u64)> {
    use std::io::BufRead;
    let f = std::io::BufReader::new(std::fs::File::open(events)?);
    let (mut execs, mut losses, mut total) = (0, 0, 0);
    for line in f.lines() {
        let line = line?;
        total += 1;
        let v: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(_) => continue,
        };
        match v["kind"].as_str() {
            Some("exec")
                if v["exe"].as_str().is_some_and(|e| e.ends_with("/true")) && v["error"].is_null() =>
            {
                execs += 1
            }
            Some("loss") => losses += 1,
            _ => {}
        }
    }
    Ok((execs, losses, total))
}
