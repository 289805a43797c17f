//! `cargo xtask bench-hooks`: what each kernel program of agentmon costs per call,
//! by the kernel's own accounting (`BPF_ENABLE_STATS`), for an enforced task's
//! loops, on the enforcement tier this host chooses (or the fallback tier with
//! `AGENTMON_ENFORCE_TIER=fallback`). Run time per call is comparable between tiers
//! inside the same machine or guest, where wall-clock ratios are not (emulated
//! guests run syscalls several times slower).
//!
//! Each loop runs under `agentmon exec` in a shell that signals when the loop is
//! done and then waits, so the programs' counters are read while they are loaded.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

#[derive(clap::Args)]
pub struct Options {
    /// Loop iterations per workload.
    #[arg(long, default_value_t = 20_000)]
    iters: u64,
    /// Use the agentmon and bench-loop next to this binary (a guest cannot build).
    #[arg(long)]
    no_build: bool,
    /// The task refuses sensitive reads (`sensitive_reads: deny`): what the exact
    /// matcher costs an open whose name the prefilter takes (`open-named`).
    #[arg(long)]
    deny_reads: bool,
    /// Only these loops (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = WORKLOADS.map(String::from))]
    workloads: Vec<String>,
}

const WORKLOADS: [&str; 5] = ["open-ro", "open-named", "open-wr", "unlink", "spawn"];

fn manifest(dir: &Path, looper: &Path, deny_reads: bool) -> anyhow::Result<PathBuf> {
    let path = dir.join("task.yaml");
    let w = dir.join("work");
    std::fs::write(
        &path,
        format!(
            "id: hooks\nmode: execute\nenforcement: enforce\nscope:\n  write: [\"{w}/**\"]\n  delete: [\"{w}/**\"]\n  \
             exec: [\"{}\", \"/usr/bin/**\", \"/bin/**\"]\n{}",
            looper.display(),
            if deny_reads { "sensitive_reads: deny\n" } else { "" },
            w = w.display()
        ),
    )?;
    Ok(path)
}

/// (name, runs, ns per run) of every loaded program that ran, most runs first.
fn snapshot() -> Vec<(String, u64, f64)> {
    let mut v: Vec<(String, u64, f64)> = crate::floor::programs()
        .into_values()
        .filter(|(_, _, n)| *n > 0)
        .map(|(name, t, n)| (name, n, t as f64 / n as f64))
        .collect();
    v.sort_by_key(|a| std::cmp::Reverse(a.1));
    v
}

fn one(agentmon: &Path, looper: &Path, dir: &Path, task: &Path, w: &str, iters: u64) -> anyhow::Result<()> {
    let done = dir.join("work/.done");
    let _ = std::fs::remove_file(&done);
    let script = format!(
        "{} {w} {iters} {work} >/dev/null && : > {done} && sleep 5",
        looper.display(),
        work = dir.join("work").display(),
        done = done.display()
    );
    let mut child = Command::new(agentmon)
        .args(["exec", "-q", "--no-rules", "-e"])
        .arg(dir.join("events.jsonl"))
        .arg("--task")
        .arg(task)
        .args(["--", "/bin/sh", "-c", &script])
        .stdout(Stdio::null())
        .spawn()
        .context("start agentmon")?;
    let start = Instant::now();
    while !done.exists() {
        if start.elapsed() > Duration::from_secs(600) {
            let _ = child.kill();
            bail!("{w}: the loop did not finish in 10 minutes");
        }
        if let Some(st) = child.try_wait()? {
            bail!("{w}: agentmon exited ({st}) before the loop finished");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let progs = snapshot();
    child.wait()?;
    println!("\n#### {w} ({iters} iterations)\n\n| program | runs | ns per run |\n|---|---:|---:|");
    // The loop's hooks ran about once per iteration or more; the rest is noise.
    for (name, n, ns) in progs.iter().filter(|(_, n, _)| *n >= iters / 2) {
        println!("| {name} | {n} | {ns:.0} |");
    }
    let _ = std::fs::remove_file(dir.join("events.jsonl"));
    Ok(())
}

pub fn run(o: Options) -> anyhow::Result<()> {
    let (agentmon, looper) = crate::bench::loaders(o.no_build)?;
    let _stats = crate::floor::RunStats::enable()?;
    let tmp = tempfile::tempdir()?;
    let dir = std::fs::canonicalize(tmp.path())?;
    std::fs::create_dir_all(dir.join("work"))?;
    // The loop runs from a copy here: Landlock (the fallback tier) grants exec by
    // inode, and a guest's 9p root gives a file a new inode at each lookup, so the
    // grant made for the original did not match its exec (EACCES).
    std::fs::create_dir_all(dir.join("bin"))?;
    let looper = {
        let copy = dir.join("bin/bench-loop");
        std::fs::copy(&looper, &copy).with_context(|| format!("copy {}", looper.display()))?;
        copy
    };
    let task = manifest(&dir, &looper, o.deny_reads)?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let tier = match std::env::var("AGENTMON_ENFORCE_TIER").as_deref() {
        Ok("fallback") => "fallback (Landlock, seccomp, gate)",
        _ => "as chosen (BPF LSM where the kernel runs it)",
    };
    let reads = if o.deny_reads { ", sensitive reads denied" } else { "" };
    println!("### Kernel programs per call: kernel {}, tier {tier}{reads}", kernel.trim());
    for w in &o.workloads {
        one(&agentmon, &looper, &dir, &task, w, o.iters)?;
    }
    Ok(())
}
