//! A task's start through a running daemon (`cargo xtask bench-start`): `agentmon
//! exec --daemon … -- /bin/true`, observed and enforced in turn, timed whole from the
//! outside, with a fresh daemon each round; optionally alternated with another build
//! (`--against`), so that both are measured in the same minutes of this noisy VM.
//! Reports the median, the 90th percentile, the worst and how many took over 20 ms
//! (issue 16's target), and how many `task_start`s say their root was made in its
//! cgroup (`detail.root_made_in_cgroup`) rather than moved there.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::Instant,
};

use anyhow::{Context, bail};

use crate::peers;

#[derive(clap::Args)]
pub struct Options {
    /// Rounds, each with a fresh daemon per build.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Starts of each mode per round.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Another agentmon binary, alternated with this build round by round.
    #[arg(long)]
    pub against: Option<PathBuf>,
    /// Use the release build already there (target/release/agentmon).
    #[arg(long)]
    pub no_build: bool,
}

/// An observed or enforced task `id` that may run /bin/true.
fn manifest(dir: &Path, id: &str, enforce: bool) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{id}.yaml"));
    let mode = if enforce { "enforce" } else { "observe" };
    std::fs::write(
        &path,
        format!(
            "id: {id}\nmode: execute\nenforcement: {mode}\nscope:\n  write: [\"{w}/**\"]\n  exec: [\"/usr/bin/**\", \
             \"/bin/**\"]\n",
            w = dir.join("work").display()
        ),
    )?;
    Ok(path)
}

/// One round of `binary`: its starts' times in ms by mode, and how many of its
/// `task_start`s said the root was made in its cgroup.
fn round(binary: &Path, dir: &Path, runs: usize, n: &mut usize) -> anyhow::Result<(Vec<(bool, f64)>, usize)> {
    std::fs::create_dir_all(dir.join("work"))?;
    let (daemon, sock) = peers::daemon(binary, dir)?;
    let mut times = Vec::new();
    for _ in 0..runs {
        for enforce in [false, true] {
            *n += 1;
            let task = manifest(dir, &format!("start-{n}"), enforce)?;
            let started = Instant::now();
            let out = peers::in_task(binary, &sock, &task)
                .arg("/bin/true")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .context("agentmon exec")?;
            let ms = started.elapsed().as_secs_f64() * 1e3;
            if !out.status.success() {
                bail!("agentmon exec exited {}: {}", out.status, String::from_utf8_lossy(&out.stderr));
            }
            times.push((enforce, ms));
        }
    }
    daemon.terminate(std::time::Duration::from_secs(10))?;
    let events = std::fs::read_to_string(dir.join("daemon-events.jsonl")).unwrap_or_default();
    let made_in = events.matches("\"root_made_in_cgroup\":true").count();
    Ok((times, made_in))
}

pub fn run(o: Options) -> anyhow::Result<()> {
    if !crate::bench::nix_is_root() {
        bail!("the daemon loads eBPF programs: run it as root");
    }
    let this = if o.no_build { PathBuf::from("target/release/agentmon") } else { crate::bench::build()?.0 };
    let mut builds = vec![("this build".to_string(), std::fs::canonicalize(&this)?)];
    if let Some(other) = &o.against {
        builds.push((format!("{}", other.display()), std::fs::canonicalize(other)?));
    }
    let tmp = tempfile::tempdir()?;
    let mut results: BTreeMap<(usize, bool), Vec<f64>> = BTreeMap::new();
    let mut made: BTreeMap<usize, usize> = BTreeMap::new();
    let mut n = 0;
    for r in 1..=o.rounds {
        eprintln!("start: round {r}/{}", o.rounds);
        for (b, (_, binary)) in builds.iter().enumerate() {
            let (times, made_in) = round(binary, &tmp.path().join(format!("{b}-{r}")), o.runs, &mut n)?;
            for (enforce, ms) in times {
                results.entry((b, enforce)).or_default().push(ms);
            }
            *made.entry(b).or_default() += made_in;
        }
    }
    println!(
        "\n### A task's start through a daemon (`/bin/true`, ms; {} rounds of {} each)\n",
        o.rounds, o.runs
    );
    println!("| build | mode | median | p90 | worst | over 20 ms | roots made in their cgroup |");
    println!("|---|---|---|---|---|---|---|");
    for ((b, enforce), mut v) in results {
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
        let over = v.iter().filter(|&&ms| ms > 20.0).count();
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {over} of {} | {} of {} (both modes) |",
            builds[b].0,
            if enforce { "enforce" } else { "observe" },
            at(0.5),
            at(0.9),
            v[v.len() - 1],
            v.len(),
            made[&b],
            2 * o.rounds * o.runs,
        );
    }
    Ok(())
}
