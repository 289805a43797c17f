//! `cargo xtask bench`: the foundation loops bare, under agentmon (tracked, and
//! running while the loop is untracked), and under bpftrace, auditd and `strace -f`,
//! interleaved over several rounds in one run; reported as medians and ratios to bare.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

use crate::{floor, peers, pipeline, programs};

#[derive(clap::Args)]
pub struct Options {
    /// Loop iterations per measurement (strace runs a tenth of them).
    #[arg(long, default_value_t = 200_000)]
    iters: u64,
    /// Interleaved rounds; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Skip the peers (bpftrace, auditd, strace).
    #[arg(long)]
    no_peers: bool,
    /// Skip the real programs (`cargo xtask bench-programs` runs them alone).
    #[arg(long)]
    no_programs: bool,
}

const WORKLOADS: [&str; 4] = ["open-ro", "open-wr", "connect", "read"];
const MODES: [&str; 9] = [
    "bare",
    "tracepoint on another syscall (floor)",
    "no-op on the same tracepoints (floor)",
    "raw sys_exit, pid read (floor)",
    "agentmon untracked",
    "agentmon tracked",
    "bpftrace",
    "auditd",
    "strace -f",
];

pub(crate) fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().expect("target dir").to_path_buf()
}

pub(crate) fn build() -> anyhow::Result<(PathBuf, PathBuf)> {
    let st = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "monitor-user",
            "-p",
            "xtask",
            "--bin",
            "agentmon",
            "--bin",
            "bench-loop",
        ])
        .status()
        .context("cargo build")?;
    if !st.success() {
        bail!("build failed");
    }
    let dir = target_dir();
    Ok((dir.join("agentmon"), dir.join("bench-loop")))
}

/// As root, agentmon and the loop: built, or (`no_build`: a guest cannot build)
/// the ones next to this binary.
pub(crate) fn loaders(no_build: bool) -> anyhow::Result<(PathBuf, PathBuf)> {
    if !nix_is_root() {
        bail!("loading BPF programs needs root");
    }
    if no_build {
        let d = target_dir();
        return Ok((d.join("agentmon"), d.join("bench-loop")));
    }
    build()
}

/// Runs a loop command line; returns ns per iteration as the loop measured it.
pub(crate) fn measure(cmd: &[String]) -> anyhow::Result<f64> {
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("{cmd:?}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("{cmd:?} exited {:?}: {text}", out.status);
    }
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("ns_per_iter=")?.parse().ok())
        .with_context(|| format!("no ns_per_iter in output of {cmd:?}: {text}"))
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Pipeline {
    delivered: u64,
    lost: u64,
    events_per_sec: f64,
}

/// Counts the tracked open-wr run's events: delivered file_write events and lost opens.
fn count_events(path: &Path, loop_ns: f64) -> anyhow::Result<Pipeline> {
    let text = std::fs::read_to_string(path)?;
    let mut delivered = 0;
    let mut lost = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        match v["kind"].as_str() {
            Some("file_write" | "file_create") => delivered += 1,
            Some("loss") => lost += v["lost"]["open"].as_u64().unwrap_or(0),
            _ => {}
        }
    }
    let secs = loop_ns * (delivered + lost) as f64 / 1e9;
    Ok(Pipeline { delivered, lost, events_per_sec: delivered as f64 / secs })
}

pub fn run(o: Options) -> anyhow::Result<()> {
    if !nix_is_root() {
        bail!("the benchmark loads eBPF programs and auditd rules: run it as root");
    }
    let (agentmon, looper) = build()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let peers_ok =
        !o.no_peers && ["bpftrace", "auditd", "auditctl", "strace"].iter().all(|c| peers::which(c).is_some());
    if !o.no_peers && !peers_ok {
        bail!(
            "peers missing: install bpftrace, auditd and strace (scripts/setup.sh does), or pass --no-peers"
        );
    }
    let lp = looper.display().to_string();
    // A read is ten times cheaper than the other iterations: ten times as many keep
    // each run long enough to average out this VM's jitter.
    let loop_args = |w: &str, n: u64| {
        let n = if w == "read" { n * 10 } else { n };
        vec![w.to_string(), n.to_string(), dir.display().to_string()]
    };
    let mut results: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    let mut pipe = Vec::new();

    let audit_at_start = peers_ok && peers::audit_enabled();
    if peers_ok {
        // auditd is a peer, and once auditing has been enabled the kernel gives every
        // new process an audit context, which puts all of its syscalls on the slow
        // path. Enable it before the first round so every mode, bare included, runs
        // in that same state, not just the rounds after auditd's first turn.
        if !audit_at_start {
            peers::auditctl(&["-e", "1"])?;
            peers::auditctl(&["-e", "0"])?;
        }
    }
    let looped = |w: &str, n: u64| {
        let mut c = vec![lp.clone()];
        c.extend(loop_args(w, n));
        c
    };

    for round in 1..=o.rounds {
        eprintln!("round {round}/{}", o.rounds);
        for w in WORKLOADS {
            results.entry(("bare", w)).or_default().push(measure(&looped(w, o.iters))?);
        }
        {
            let _raw = floor::raw_sys_exit()?;
            for w in WORKLOADS {
                results
                    .entry(("raw sys_exit, pid read (floor)", w))
                    .or_default()
                    .push(measure(&looped(w, o.iters))?);
            }
        }
        {
            let _bg = peers::agentmon_idle(&agentmon, dir)?;
            for w in WORKLOADS {
                results.entry(("agentmon untracked", w)).or_default().push(measure(&looped(w, o.iters))?);
            }
        }
        for w in WORKLOADS {
            let events = dir.join(format!("tracked-{w}.jsonl"));
            let _ = std::fs::remove_file(&events);
            let mut c = vec![agentmon.display().to_string(), "exec".into(), "-q".into(), "-e".into()];
            c.push(events.display().to_string());
            c.push("--".into());
            c.push(lp.clone());
            c.extend(loop_args(w, o.iters));
            let ns = measure(&c)?;
            results.entry(("agentmon tracked", w)).or_default().push(ns);
            if w == "open-wr" {
                pipe.push(count_events(&events, ns)?);
            }
        }
        if peers_ok {
            {
                let _bg = peers::other_syscall_floor()?;
                for w in WORKLOADS {
                    let m = measure(&looped(w, o.iters))?;
                    results.entry(("tracepoint on another syscall (floor)", w)).or_default().push(m);
                }
            }
            {
                let _bg = peers::tracepoint_floor()?;
                for w in WORKLOADS {
                    let m = measure(&looped(w, o.iters))?;
                    results.entry(("no-op on the same tracepoints (floor)", w)).or_default().push(m);
                }
            }
            {
                let _bg = peers::bpftrace("bench-loop")?;
                for w in WORKLOADS {
                    results.entry(("bpftrace", w)).or_default().push(measure(&looped(w, o.iters))?);
                }
            }
            {
                let _bg = peers::auditd(&looper)?;
                for w in WORKLOADS {
                    results.entry(("auditd", w)).or_default().push(measure(&looped(w, o.iters))?);
                }
            }
            for w in WORKLOADS {
                let c = peers::strace_cmd(&looper, &loop_args(w, (o.iters / 10).max(1000)));
                results.entry(("strace -f", w)).or_default().push(measure(&c)?);
            }
        }
    }

    let userspace = pipeline::events_per_sec(1_000_000)?;
    let judged = pipeline::judged_per_sec(1_000_000)?;
    report(&o, &mut results, &pipe, userspace);
    println!(
        "- policy engine alone (shipped rules, a realistic task, one core): {judged:.0} events/s judged"
    );
    let costs = program_costs(&agentmon, dir, &looped, o.iters)?;
    println!("\n### agentmon's kernel handler per call (kernel run-time accounting)\n");
    println!("| workload | program | untracked ns/call | tracked ns/call |");
    println!("|---|---|---|---|");
    for c in &costs {
        println!("| {} | {} | {:.0} | {:.0} |", c.workload, c.program, c.untracked, c.tracked);
    }
    if peers_ok {
        println!(
            "\naudit: {} at start; enabled once before round 1 so every mode ran with audit contexts",
            if audit_at_start { "enabled" } else { "disabled" }
        );
    }
    if !o.no_programs {
        let p = programs::Options { rounds: o.rounds, no_peers: o.no_peers };
        programs::run_with(&agentmon, &p)?;
    }
    Ok(())
}

struct Cost {
    workload: &'static str,
    program: &'static str,
    untracked: f64,
    tracked: f64,
}

/// The run time of agentmon's handler for each workload's syscall, per call, as the
/// kernel accounts it (BPF_ENABLE_STATS), from a daemon that keeps its programs
/// loaded between runs: once with the loop untracked, once tracked. Separate from
/// the timed rounds, since the accounting itself costs two clock reads per run.
fn program_costs(
    agentmon: &Path,
    dir: &Path,
    looped: &dyn Fn(&str, u64) -> Vec<String>,
    iters: u64,
) -> anyhow::Result<Vec<Cost>> {
    let stats = floor::RunStats::enable()?;
    let ddir = dir.join("daemon");
    std::fs::create_dir_all(&ddir)?;
    let (_daemon, sock) = peers::daemon(agentmon, &ddir)?;
    let exe = looped("read", 1).swap_remove(0);
    let per_call = |program: &str, cmd: &[String]| stats.per_call(program, || measure(cmd).map(|_| ()));
    let mut out = Vec::new();
    for (w, program) in
        [("open-ro", "sys_exit_openat"), ("open-wr", "sys_exit_openat"), ("connect", "sys_exit_connect")]
    {
        let n = (iters / 2).max(1000);
        let untracked = per_call(program, &looped(w, n))?;
        // A task per run: the daemon keeps an ended task's id until it has seen its
        // last process go.
        let task = ddir.join(format!("bench-{w}.yaml"));
        std::fs::write(
            &task,
            format!(
                "id: bench-{w}\nmode: execute\nscope:\n  exec: [\"{exe}\"]\n  write: [\"{}/**\"]\n",
                dir.display()
            ),
        )?;
        let mut c = vec![agentmon.display().to_string(), "exec".into(), "-q".into(), "--daemon".into()];
        c.push(sock.display().to_string());
        c.extend(["--task".into(), task.display().to_string()]);
        c.extend(["-e".into(), dir.join("costs.jsonl").display().to_string(), "--".into()]);
        c.extend(looped(w, n));
        let tracked = per_call(program, &c)?;
        out.push(Cost { workload: w, program, untracked, tracked });
    }
    Ok(out)
}

pub(crate) fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Medians of `results`, and their table: one row per mode that has any, one
/// column per workload, each cell `value (ratio to bare)`; `unit` heads the columns
/// (`ns/iter`, or `ms`, shown to a tenth).
pub(crate) fn ratio_table(
    results: &mut BTreeMap<(&'static str, &'static str), Vec<f64>>,
    modes: &[&'static str],
    workloads: &[&'static str],
    unit: &str,
) -> BTreeMap<(&'static str, &'static str), f64> {
    let med: BTreeMap<_, _> = results.iter_mut().map(|(k, v)| (*k, median(v))).collect();
    let places = if unit == "ms" { 1 } else { 0 };
    println!(
        "| mode | {} |",
        workloads.iter().map(|w| format!("{w} {unit} (ratio)")).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|{}", "---|".repeat(workloads.len()));
    for m in modes {
        if !workloads.iter().any(|w| med.contains_key(&(*m, *w))) {
            continue;
        }
        let cells: Vec<String> = workloads
            .iter()
            .map(|w| match (med.get(&(*m, *w)), med.get(&("bare", *w))) {
                (Some(x), Some(b)) => format!("{x:.places$} ({:.2}×)", x / b),
                _ => "-".into(),
            })
            .collect();
        println!("| {m} | {} |", cells.join(" | "));
    }
    med
}

fn report(
    o: &Options,
    results: &mut BTreeMap<(&'static str, &'static str), Vec<f64>>,
    pipe: &[Pipeline],
    userspace: f64,
) {
    println!(
        "### Overhead (median of {} rounds, {} iterations, read {}; ratio to bare)\n",
        o.rounds,
        o.iters,
        o.iters * 10
    );
    ratio_table(results, &MODES, &WORKLOADS, "ns/iter");
    println!("\n### Pipeline\n");
    for (i, p) in pipe.iter().enumerate() {
        println!(
            "- round {}: tracked open-wr loop delivered {} events, lost {}, {:.0} events/s end to end",
            i + 1,
            p.delivered,
            p.lost,
            p.events_per_sec
        );
    }
    println!("- userspace pipeline alone (Pipeline::record + JSON, one core): {userspace:.0} events/s");
}
