//! `cargo xtask bench-enforce`: what enforcement costs. The foundation loops bare,
//! under an observed task and under the same task enforced (Landlock, seccomp, the
//! cgroup guard), interleaved over rounds in one run; then the approval gate: a
//! create+unlink loop bare, enforced without a gate, and gated under a standing
//! approval (the per-call cost of holding, resolving and performing), and the
//! operator round trip of `agentmon approve` for held calls.
//!
//! Tasks run with `--no-rules`: the loops are what the shipped rules exist to flag
//! (a tight delete loop is `fs.mass-delete`, outside the scope a freeze); the
//! rules' own cost is in `cargo xtask bench`.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::bench::{build, measure, median, nix_is_root, ratio_table};

#[derive(clap::Args)]
pub struct Options {
    /// Loop iterations per measurement.
    #[arg(long, default_value_t = 100_000)]
    iters: u64,
    /// Interleaved rounds; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Held calls approved one by one for the operator round trip.
    #[arg(long, default_value_t = 20)]
    approvals: u64,
}

const WORKLOADS: [&str; 4] = ["open-ro", "open-wr", "connect", "unlink"];
const MODES: [&str; 4] = ["bare", "agentmon observe", "agentmon enforce", "agentmon enforce + gate"];

fn manifest(dir: &Path, looper: &Path, enforce: bool, gate: bool) -> anyhow::Result<std::path::PathBuf> {
    let name = format!("task-{}-{}.yaml", if enforce { "enforce" } else { "observe" }, gate);
    let path = dir.join(name);
    // The loop works in work/; agentmon's events and the manifests stay outside the scope.
    let d = dir.join("work");
    let d = d.display();
    std::fs::write(
        &path,
        format!(
            "id: bench\nmode: execute\nenforcement: {}\nscope:\n  write: [\"{d}/**\"]\n  delete: [\"{d}/**\"]\n  \
             exec: [\"{}\"]\n  connect: [\"127.0.0.1:*\"]\n{}",
            if enforce { "enforce" } else { "observe" },
            looper.display(),
            if gate { "approval_required: [delete]\n" } else { "" }
        ),
    )?;
    Ok(path)
}

fn events_in(file: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let complete = text.rfind('\n').map(|i| &text[..=i]).unwrap_or("");
    complete.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn approve(agentmon: &Path, id: &str, hold_for: Option<&str>) -> anyhow::Result<()> {
    let mut c = Command::new(agentmon);
    c.args(["approve", id]);
    if let Some(d) = hold_for {
        c.args(["--for", d]);
    }
    let out = c.output()?;
    if !out.status.success() {
        bail!("agentmon approve {id}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Runs the gated unlink loop, approving each held call as soon as its request is
/// in the stream (`hold_for`: approve the warm-up with a standing approval instead).
/// Returns the loop's ns/iter and the request→decision latencies seen.
fn gated(
    agentmon: &Path,
    looper: &Path,
    dir: &Path,
    iters: u64,
    hold_for: Option<&str>,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let task = manifest(dir, looper, true, true)?;
    let events = dir.join("gated.jsonl");
    let _ = std::fs::remove_file(&events);
    let child = Command::new(agentmon)
        .args(["exec", "-q", "--no-rules", "--approval-timeout", "60s", "-e"])
        .arg(&events)
        .arg("--task")
        .arg(&task)
        .arg("--")
        .arg(looper)
        .args(["unlink", &iters.to_string()])
        .arg(dir.join("work"))
        .stdout(Stdio::piped())
        .spawn()
        .context("start agentmon")?;
    let mut answered = std::collections::HashSet::new();
    let start = Instant::now();
    let want = if hold_for.is_some() { 1 } else { iters + 1 };
    while (answered.len() as u64) < want {
        if start.elapsed() > Duration::from_secs(120) {
            bail!("gated loop: only {} of {want} requests seen", answered.len());
        }
        for ev in events_in(&events) {
            if ev["kind"] == "approval_request"
                && let Some(id) = ev["detail"]["approval"].as_str()
                && answered.insert(id.to_string())
            {
                approve(agentmon, id, hold_for)?;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ns = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ns_per_iter=")?.parse().ok())
        .with_context(|| format!("no ns_per_iter from the gated loop: {text}"))?;
    let ts =
        |v: &serde_json::Value| v["ts"].as_str().and_then(agentmon::event::Timestamp::parse).map(|t| t.0);
    let all = events_in(&events);
    let mut lat = Vec::new();
    for req in all.iter().filter(|e| e["kind"] == "approval_request") {
        let id = &req["detail"]["approval"];
        if let Some(dec) = all.iter().find(|e| e["kind"] == "approval" && e["detail"]["approval"] == *id)
            && let (Some(a), Some(b)) = (ts(req), ts(dec))
        {
            lat.push((b - a) as f64 / 1e6);
        }
    }
    Ok((ns, lat))
}

pub fn run(o: Options) -> anyhow::Result<()> {
    if !nix_is_root() {
        bail!("enforcement needs root (cgroups, BPF): run as root");
    }
    let (agentmon, looper) = build()?;
    let tmp = tempfile::tempdir()?;
    let dir = std::fs::canonicalize(tmp.path())?;
    let work = dir.join("work");
    std::fs::create_dir_all(&work)?;
    let lp = looper.display().to_string();
    let observe = manifest(&dir, &looper, false, false)?;
    let enforce = manifest(&dir, &looper, true, false)?;
    let mut results: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    let under = |task: &Path, w: &str, n: u64| -> Vec<String> {
        let mut c: Vec<String> = vec![
            agentmon.display().to_string(),
            "exec".into(),
            "-q".into(),
            "--no-rules".into(),
            "-e".into(),
        ];
        c.push(dir.join("events.jsonl").display().to_string());
        c.extend(["--task".into(), task.display().to_string(), "--".into(), lp.clone()]);
        c.extend([w.to_string(), n.to_string(), work.display().to_string()]);
        c
    };
    for round in 1..=o.rounds {
        eprintln!("round {round}/{}", o.rounds);
        for w in WORKLOADS {
            let bare = vec![lp.clone(), w.to_string(), o.iters.to_string(), work.display().to_string()];
            results.entry(("bare", w)).or_default().push(measure(&bare)?);
            results.entry(("agentmon observe", w)).or_default().push(measure(&under(&observe, w, o.iters))?);
            results.entry(("agentmon enforce", w)).or_default().push(measure(&under(&enforce, w, o.iters))?);
            let _ = std::fs::remove_file(dir.join("events.jsonl"));
        }
        let (ns, _) = gated(&agentmon, &looper, &dir, o.iters / 10, Some("1h"))?;
        results.entry(("agentmon enforce + gate", "unlink")).or_default().push(ns);
    }
    eprintln!("operator round trips ({} held calls)", o.approvals);
    let (_, mut lat) = gated(&agentmon, &looper, &dir, o.approvals, None)?;

    println!(
        "### Enforcement overhead (median of {} rounds, {} iterations; ratio to bare)\n",
        o.rounds, o.iters
    );
    let med = ratio_table(&mut results, &MODES, &WORKLOADS, "ns/iter");
    if let (Some(g), Some(e)) =
        (med.get(&("agentmon enforce + gate", "unlink")), med.get(&("agentmon enforce", "unlink")))
    {
        println!(
            "\n- approval gate, per held call under a standing approval (hold, resolve, judge, perform, answer): \
             {:.1} µs ({} calls per round)",
            (g - e) / 1e3,
            o.iters / 10
        );
    }
    if !lat.is_empty() {
        let p50 = median(&mut lat.clone());
        lat.sort_by(|a, b| a.total_cmp(b));
        println!(
            "- operator round trip, request event → approval event with `agentmon approve` run as soon as the \
             request is in the stream ({} calls): median {p50:.1} ms, max {:.1} ms",
            lat.len(),
            lat[lat.len() - 1]
        );
    }
    Ok(())
}
