//! `agentmon grant TASK.yaml --key K --by NAME`: a principal gives a task its
//! authority by signing the manifest's exact text (see `task::grant`).

use std::{path::PathBuf, time::Duration};

use crate::task::grant::{Grant, path_for};

#[derive(Debug, clap::Args)]
pub struct GrantArgs {
    /// The task manifest, as it will run (any edit voids the grant).
    pub task: PathBuf,
    /// Your signing key (hex seed, mode 0600; created on first use; give its `.pub`
    /// line to the hosts' grant keys).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Who grants, as the task's records should name you.
    #[arg(long, value_name = "NAME")]
    pub by: String,
    /// How long the grant may be used to start the task.
    #[arg(long, value_name = "DURATION", value_parser = super::duration, default_value = "24h")]
    pub valid_for: Duration,
    /// Where to write the grant (default: the manifest's path with `.grant` added).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

pub fn run(a: GrantArgs) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(&a.task).map_err(|e| anyhow::anyhow!("{}: {e}", a.task.display()))?;
    let now = crate::enrich::Clock::now().now_wall();
    // Only a manifest that would run is granted (its errors name file and line).
    let task = crate::task::parse(&text, &a.task, now)?;
    if a.by.trim().is_empty() {
        anyhow::bail!("--by: say who grants the task");
    }
    let key = crate::audit::load_or_create_key(&a.key)?;
    let until = crate::event::Timestamp(now.0 + a.valid_for.as_nanos() as i128);
    let g = Grant::sign(&key, &text, a.by.trim(), until);
    let out = a.out.unwrap_or_else(|| path_for(&a.task));
    let mut line = serde_json::to_string(&g)?;
    line.push('\n');
    std::fs::write(&out, line).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    println!("granted task {} by {} until {}: {}", task.id, g.by, g.not_after, out.display());
    Ok(0)
}
