//! `cargo xtask bench-tiers`: what a process outside every task pays while agentmon
//! runs, on each observation tier (`AGENTMON_OBSERVE_TIER`): the loops bare, with
//! agentmon on the syscall tracepoints, on fexit, and on fexit while a task is
//! enforced (so that the BPF LSM hooks are attached, where the kernel has them),
//! interleaved over rounds in one run (medians, ratios to bare); then every
//! program the untracked loop ran, with its run time per call by the kernel's
//! accounting. Guests run it with `--no-build` (`scripts/vm.sh run deb13 --
//! …/xtask bench-tiers --no-build`): this build machine's kernel loads no fexit
//! programs.

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

/// What agentmon runs as for each measured mode: its observation tier, and whether
/// its idle command is an enforced task's. The BPF LSM hooks are attached only
/// while a task is enforced (kernel::loader::hooks), so what their early return
/// costs an outsider shows apart from the observation hooks'.
struct Setup {
    mode: &'static str,
    observe: &'static str,
    enforced: bool,
}

const SETUPS: [Setup; 3] = [
    Setup { mode: "agentmon on tracepoint, loop untracked", observe: "tracepoint", enforced: false },
    Setup { mode: "agentmon on fexit, loop untracked", observe: "fexit", enforced: false },
    Setup { mode: "agentmon on fexit, a task enforced, loop untracked", observe: "fexit", enforced: true },
];

/// The modes of the timed rounds: bare, then beside agentmon as each setup.
const MODES: [&str; 4] = ["bare", SETUPS[0].mode, SETUPS[1].mode, SETUPS[2].mode];

impl Setup {
    fn env(&self) -> Vec<(&'static str, &'static str)> {
        vec![("AGENTMON_OBSERVE_TIER", self.observe)]
    }

    /// agentmon beside the loop, as this setup says.
    fn start(&self, agentmon: &Path, dir: &Path) -> anyhow::Result<crate::peers::Background> {
        let task = dir.join("enforced.yaml");
        if self.enforced {
            let sleep = std::fs::canonicalize("/bin/sleep")?;
            std::fs::write(
                &task,
                format!(
                    "id: bench-enforced\nmode: execute\nenforcement: enforce\nscope:\n  exec: [\"{}\"]\n",
                    sleep.display()
                ),
            )?;
        }
        crate::peers::agentmon_idle_with(agentmon, dir, &self.env(), self.enforced.then_some(task.as_path()))
    }
}

/// Whether agentmon starts as `s` here, or why not (its last words).
fn available(agentmon: &Path, s: &Setup) -> anyhow::Result<Result<(), String>> {
    let out = Command::new(agentmon).arg("probe").envs(s.env()).output()?;
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
    let iters = |w: &str| if w == "read" { o.iters * 10 } else { o.iters };
    let looped = |w: &str| {
        vec![looper.display().to_string(), w.to_string(), iters(w).to_string(), dir.display().to_string()]
    };
    let mut setups = Vec::new();
    for s in &SETUPS {
        match available(&agentmon, s)? {
            Ok(()) => setups.push(s),
            Err(why) => println!("- {} does not load here: {why}", s.mode),
        }
    }
    let mut results: BTreeMap<(&'static str, &'static str), Vec<f64>> = BTreeMap::new();
    for round in 1..=o.rounds {
        eprintln!("round {round}/{}", o.rounds);
        for w in WORKLOADS {
            results.entry(("bare", w)).or_default().push(measure(&looped(w))?);
        }
        for s in &setups {
            let _bg = s.start(&agentmon, &dir)?;
            for w in WORKLOADS {
                results.entry((s.mode, w)).or_default().push(measure(&looped(w))?);
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
    // Each program's own cost per untracked call (the tracked test and return), apart
    // from the timed rounds: the accounting costs two clock reads per run. Every
    // program that ran about once per iteration or more is the loop's (the rest of
    // the host's calls are few beside it).
    let stats = crate::floor::RunStats::enable()?;
    println!("\n| workload | agentmon | program | runs | untracked ns/call |\n|---|---|---|---:|---:|");
    for s in &setups {
        let _bg = s.start(&agentmon, &dir)?;
        for w in WORKLOADS {
            let ran = stats.ran(iters(w) / 2, || measure(&looped(w)).map(|_| ()))?;
            if ran.is_empty() {
                println!("| {w} | {} | none | | |", s.mode);
            }
            for (p, n, ns) in ran {
                println!("| {w} | {} | {p} | {n} | {ns:.0} |", s.mode);
            }
        }
    }
    Ok(())
}
