//! `cargo xtask storm`: a storm of file side effects while the host is busy. A daemon
//! (release build, the shipped rules, the ring size given) serves PROCS tasks, each a
//! process creating and deleting a file in its scope for SECONDS; another process,
//! outside every task, keeps one core busy all along. Counted from the daemon's
//! events file: every create and delete seen against the pairs the loops report
//! making, the kernel's `loss` records, and the alerts the burst raised.

use std::{
    collections::BTreeMap,
    io::BufRead,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

use crate::bench::{build, nix_is_root};

#[derive(clap::Args)]
pub struct Options {
    /// How long each storm process runs.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Storm processes, each a task of its own.
    #[arg(long, default_value_t = 4)]
    procs: u64,
    /// The daemon's ring buffer in MiB (agentmon's default: 16).
    #[arg(long, default_value_t = 16)]
    ring_mib: u32,
    /// Leave the host idle (no process keeping a core busy).
    #[arg(long)]
    no_busy: bool,
    /// Run the daemon with `backpressure: false` (losses instead of pauses).
    #[arg(long)]
    no_backpressure: bool,
    /// Run the storm twice in one run: with backpressure, then without.
    #[arg(long, conflicts_with = "no_backpressure")]
    compare: bool,
}

#[derive(Default)]
struct Count {
    creates: u64,
    deletes: u64,
    lost: u64,
    loss_records: u64,
    alerts: BTreeMap<String, u64>,
    lines: u64,
    /// Backpressure: pauses, and their time in all (ms), summed over the tasks.
    pauses: u64,
    paused_ms: u64,
    /// When the first task started (ns), and each loss record: (ns, lost).
    started: Option<u64>,
    losses: Vec<(u64, u64)>,
}

fn ts(v: &serde_json::Value) -> u64 {
    v["ts"].as_str().and_then(agentmon::event::Timestamp::parse).map_or(0, |t| t.0 as u64)
}

fn count(events: &Path) -> anyhow::Result<Count> {
    let mut c = Count::default();
    let f = std::io::BufReader::new(std::fs::File::open(events).context("the daemon's events file")?);
    for line in f.lines() {
        let line = line?;
        c.lines += 1;
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("events line {}: not JSON", c.lines))?;
        if v["schema"] == agentmon::event::ALERT_SCHEMA {
            *c.alerts.entry(v["rule"].as_str().unwrap_or("?").to_string()).or_default() += 1;
            continue;
        }
        let storm = v["task"].as_str().is_some_and(|t| t.starts_with("storm-"));
        match v["kind"].as_str() {
            Some("file_create" | "file_write") if storm => c.creates += 1,
            Some("file_delete") if storm => c.deletes += 1,
            Some("action") if v["action"] == "pause" => {
                c.pauses += v["detail"]["times"].as_u64().unwrap_or(0);
                c.paused_ms += v["detail"]["ms"].as_u64().unwrap_or(0);
            }
            Some("loss") => {
                c.loss_records += 1;
                if let Some(m) = v["lost"].as_object() {
                    let n = m.values().filter_map(|n| n.as_u64()).sum::<u64>();
                    c.lost += n;
                    c.losses.push((ts(&v), n));
                }
            }
            Some("task_start") if c.started.is_none() => c.started = Some(ts(&v)),
            _ => {}
        }
    }
    Ok(c)
}

pub fn run(mut o: Options) -> anyhow::Result<()> {
    if !nix_is_root() {
        bail!("the daemon loads the kernel programs: run as root");
    }
    let (agentmon, looper) = build()?;
    once(&agentmon, &looper, &o)?;
    if o.compare {
        o.no_backpressure = true;
        println!();
        once(&agentmon, &looper, &o)?;
    }
    Ok(())
}

fn once(agentmon: &std::path::Path, looper: &std::path::Path, o: &Options) -> anyhow::Result<()> {
    let (agentmon, looper) = (agentmon.to_path_buf(), looper.to_path_buf());
    let tmp = tempfile::tempdir()?;
    let d = std::fs::canonicalize(tmp.path())?;
    let events = d.join("daemon-events.jsonl");
    let (daemon, sock) = crate::peers::daemon_with(
        &agentmon,
        &d,
        &format!("ringbuf_mb: {}\nbackpressure: {}\n", o.ring_mib, !o.no_backpressure),
    )?;
    // Outside every task: a shell spinning on one core for the whole storm.
    let busy = if o.no_busy {
        None
    } else {
        Some(crate::peers::Background::spawn(Command::new("sh").args(["-c", "while :; do :; done"]))?)
    };
    let mut runs = Vec::new();
    for i in 0..o.procs {
        let work = d.join(format!("work-{i}"));
        std::fs::create_dir_all(&work)?;
        let task = d.join(format!("storm-{i}.yaml"));
        std::fs::write(
            &task,
            format!(
                "id: storm-{i}\nmode: execute\nscope:\n  write: [\"{w}/**\"]\n  delete: [\"{w}/**\"]\n  \
                 exec: [\"{l}\"]\n",
                w = work.display(),
                l = looper.display()
            ),
        )?;
        runs.push(
            crate::peers::in_task(&agentmon, &sock, &task)
                .arg(&looper)
                .args(["storm", &o.seconds.to_string()])
                .arg(&work)
                .stdout(Stdio::piped())
                .spawn()
                .context("agentmon exec")?,
        );
    }
    let mut pairs = 0;
    for c in runs {
        let out = c.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("a storm task failed ({}): {text}", out.status);
        }
        pairs += text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("iterations=")?.parse::<u64>().ok())
            .with_context(|| format!("no iterations= from a storm loop: {text}"))?;
    }
    drop(busy);
    // The daemon writes what the ring still holds within its next polls, then ends.
    std::thread::sleep(std::time::Duration::from_secs(3));
    daemon.terminate(std::time::Duration::from_secs(10))?;
    let c = count(&events)?;
    println!(
        "### Storm ({} tasks creating and deleting files for {} s, ring {} MiB, shipped rules, backpressure {}, {})\n",
        o.procs,
        o.seconds,
        o.ring_mib,
        if o.no_backpressure { "off" } else { "on" },
        if o.no_busy { "host otherwise idle" } else { "one core kept busy by another process" }
    );
    println!(
        "- operations: {pairs} creates and {pairs} deletes ({:.0} a second)",
        2.0 * pairs as f64 / o.seconds as f64
    );
    println!(
        "- seen: {} creates, {} deletes; missing {}; lost by the kernel's count {} in {} loss records",
        c.creates,
        c.deletes,
        (2 * pairs).saturating_sub(c.creates + c.deletes),
        c.lost,
        c.loss_records
    );
    if !c.losses.is_empty() {
        let at = |ns: u64| ns.saturating_sub(c.started.unwrap_or(ns)) as f64 / 1e9;
        println!(
            "- loss records (s after the first task started: events lost): {}",
            c.losses.iter().map(|&(t, n)| format!("{:.1}: {n}", at(t))).collect::<Vec<_>>().join(", ")
        );
    }
    println!(
        "- backpressure: {} pauses, {:.1} s paused in all (summed over the tasks)",
        c.pauses,
        c.paused_ms as f64 / 1e3
    );
    println!(
        "- alerts: {}; lines written: {}",
        if c.alerts.is_empty() {
            "none".to_string()
        } else {
            c.alerts.iter().map(|(r, n)| format!("{r} {n}")).collect::<Vec<_>>().join(", ")
        },
        c.lines
    );
    Ok(())
}
