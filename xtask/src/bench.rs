//! `cargo xtask bench`: the foundation loops bare, under agentmon (tracked, and
//! running while the loop is untracked), and under bpftrace, auditd and `strace -f`,
//! interleaved over several rounds in one run; reported as medians and ratios to bare.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

use crate::{peers, pipeline};

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
}

const WORKLOADS: [&str; 3] = ["open-ro", "open-wr", "connect"];
const MODES: [&str; 7] = [
    "bare",
    "no-op tracepoint (floor)",
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
    let loop_args = |w: &str, n: u64| vec![w.to_string(), n.to_string(), dir.display().to_string()];
    let mut results: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    let mut pipe = Vec::new();

    for round in 1..=o.rounds {
        eprintln!("round {round}/{}", o.rounds);
        for w in WORKLOADS {
            let mut c = vec![lp.clone()];
            c.extend(loop_args(w, o.iters));
            results.entry(("bare", w)).or_default().push(measure(&c)?);
        }
        {
            let _bg = peers::agentmon_idle(&agentmon, dir)?;
            for w in WORKLOADS {
                let mut c = vec![lp.clone()];
                c.extend(loop_args(w, o.iters));
                results.entry(("agentmon untracked", w)).or_default().push(measure(&c)?);
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
                let _bg = peers::tracepoint_floor()?;
                for w in WORKLOADS {
                    let mut c = vec![lp.clone()];
                    c.extend(loop_args(w, o.iters));
                    results.entry(("no-op tracepoint (floor)", w)).or_default().push(measure(&c)?);
                }
            }
            {
                let _bg = peers::bpftrace("bench-loop")?;
                for w in WORKLOADS {
                    let mut c = vec![lp.clone()];
                    c.extend(loop_args(w, o.iters));
                    results.entry(("bpftrace", w)).or_default().push(measure(&c)?);
                }
            }
            {
                let _bg = peers::auditd(&looper)?;
                for w in WORKLOADS {
                    let mut c = vec![lp.clone()];
                    c.extend(loop_args(w, o.iters));
                    results.entry(("auditd", w)).or_default().push(measure(&c)?);
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
    Ok(())
}

pub(crate) fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn report(o: &Options, results: &mut BTreeMap<(&str, &str), Vec<f64>>, pipe: &[Pipeline], userspace: f64) {
    let mut med: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    for (k, v) in results.iter_mut() {
        med.insert(*k, median(v));
    }
    println!("### Overhead (median of {} rounds, {} iterations; ratio to bare)\n", o.rounds, o.iters);
    println!("| mode | {} |", WORKLOADS.map(|w| format!("{w} ns/iter (ratio)")).join(" | "));
    println!("|---|{}", "---|".repeat(WORKLOADS.len()));
    for m in MODES {
        if !WORKLOADS.iter().any(|w| med.contains_key(&(m, *w))) {
            continue;
        }
        let cells: Vec<String> = WORKLOADS
            .iter()
            .map(|w| match (med.get(&(m, *w)), med.get(&("bare", *w))) {
                (Some(x), Some(b)) => format!("{x:.0} ({:.2}×)", x / b),
                _ => "-".into(),
            })
            .collect();
        println!("| {m} | {} |", cells.join(" | "));
    }
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
    println!(
        "- userspace pipeline alone (decode + enrich + judge + JSON, one core): {userspace:.0} events/s"
    );
}
