//! `cargo xtask bench-tiers`: what a process outside every task pays while agentmon
//! runs, on each observation tier (`AGENTMON_OBSERVE_TIER`): the loops bare, with
//! agentmon on the syscall tracepoints and with agentmon on fexit, interleaved over
//! rounds in one run (medians, ratios to bare); then the handler's own run time per
//! untracked call by the kernel's accounting. Guests run it with `--no-build`
//! (`scripts/vm.sh run deb13 -- …/xtask bench-tiers --no-build`): this build
//! machine's kernel loads no fexit programs.

use std::{collections::BTreeMap, path::Path, process::Command};

use crate::bench::{measure, ratio_table};

#[derive(clap::Args)]
pub struct Options {
    /// Loop iterations per measurement.
    #[arg(long, default_value_t = 100_000)]
    iters: u64,
    /// Interleaved rounds; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Use the agentmon and bench-loop next to this binary (a guest cannot build).
    #[arg(long)]
    no_build: bool,
}

const WORKLOADS: [&str; 4] = ["open-ro", "open-wr", "connect", "read"];
const TIERS: [&str; 2] = ["tracepoint", "fexit"];

/// The modes of the timed rounds: bare, then beside agentmon on each tier.
const MODES: [&str; 3] =
    ["bare", "agentmon on tracepoint, loop untracked", "agentmon on fexit, loop untracked"];

fn mode(tier: &str) -> &'static str {
    if tier == "fexit" { MODES[2] } else { MODES[1] }
}

/// The handler each workload's call runs on each tier.
fn program(w: &str, tier: &str) -> &'static str {
    match (w, tier) {
        ("connect", "fexit") => "fx_connect",
        ("connect", _) => "sys_exit_connect",
        ("read", _) => "",
        (_, "fexit") => "fx_openat",
        _ => "sys_exit_openat",
    }
}

/// Whether agentmon starts on `tier` here, or why not (its last words).
fn available(agentmon: &Path, tier: &str) -> anyhow::Result<Result<(), String>> {
    let out = Command::new(agentmon).arg("probe").env("AGENTMON_OBSERVE_TIER", tier).output()?;
    if out.status.success() {
        return Ok(Ok(()));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Ok(Err(err.lines().last().unwrap_or("no reason given").to_string()))
}

pub fn run(o: Options) -> anyhow::Result<()> {
    let (agentmon, looper) = crate::bench::loaders(o.no_build)?;
    let tmp = tempfile::tempdir()?;
    let dir = std::fs::canonicalize(tmp.path())?;
    let looped = |w: &str| {
        let n = if w == "read" { o.iters * 10 } else { o.iters };
        vec![looper.display().to_string(), w.to_string(), n.to_string(), dir.display().to_string()]
    };
    let mut tiers = Vec::new();
    for t in TIERS {
        match available(&agentmon, t)? {
            Ok(()) => tiers.push(t),
            Err(why) => println!("- the {t} tier does not load here: {why}"),
        }
    }
    let mut results: BTreeMap<(&'static str, &'static str), Vec<f64>> = BTreeMap::new();
    for round in 1..=o.rounds {
        eprintln!("round {round}/{}", o.rounds);
        for w in WORKLOADS {
            results.entry(("bare", w)).or_default().push(measure(&looped(w))?);
        }
        for t in &tiers {
            let _bg = crate::peers::agentmon_idle_with(&agentmon, &dir, &[("AGENTMON_OBSERVE_TIER", t)])?;
            for w in WORKLOADS {
                results.entry((mode(t), w)).or_default().push(measure(&looped(w))?);
            }
        }
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("### Untracked loops while agentmon runs, per observation tier: kernel {}", kernel.trim());
    println!(
        "\n{} iterations (read: ten times as many), median of {} rounds, ratio to bare\n",
        o.iters, o.rounds
    );
    ratio_table(&mut results, &MODES, &WORKLOADS, "ns/iter");
    // The handler's own cost per untracked call (the tracked test and return), apart
    // from the timed rounds: the accounting costs two clock reads per run.
    let stats = crate::floor::RunStats::enable()?;
    println!("\n| workload | tier | program | untracked ns/call |\n|---|---|---|---:|");
    for t in &tiers {
        let _bg = crate::peers::agentmon_idle_with(&agentmon, &dir, &[("AGENTMON_OBSERVE_TIER", t)])?;
        for w in WORKLOADS.iter().filter(|w| !program(w, t).is_empty()) {
            let p = program(w, t);
            let ns = stats.per_call(p, || measure(&looped(w)).map(|_| ()))?;
            println!("| {w} | {t} | {p} | {ns:.0} |");
        }
    }
    Ok(())
}
