//! `agentmon grant TASK.yaml --key K --by NAME`: a principal gives a task its
//! authority by signing the manifest's exact text (see `task::grant`). With
//! `--under PARENT.yaml`, a delegate of the parent's grant grants a sub-task to run
//! on another host: the grant file is then the whole chain.

use std::{path::PathBuf, time::Duration};

use crate::task::grant::{Chain, Grant, path_for};

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
    /// Let the holders of these keys (files of hex public keys, one per line) grant
    /// sub-tasks under this grant, on any host.
    #[arg(long, value_name = "FILE")]
    pub delegate: Vec<PathBuf>,
    /// Grant a sub-task of this task, under its grant (your key must be one it
    /// delegates to); the task must be within it.
    #[arg(long, value_name = "PARENT.yaml")]
    pub under: Option<PathBuf>,
    /// The parent's grant file (default: beside the parent's manifest).
    #[arg(long, value_name = "FILE", requires = "under")]
    pub parent_grant: Option<PathBuf>,
    /// The task is enforced whatever its manifest says, and so is every sub-task
    /// granted under it (on another host, a parent's `--enforce` flag is not seen).
    #[arg(long)]
    pub enforce: bool,
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
    let mut delegates = Vec::new();
    for f in &a.delegate {
        let keys = crate::signed::load_keys(f).map_err(anyhow::Error::msg)?;
        delegates.extend(keys.iter().map(|k| hex::encode(k.to_bytes())));
    }
    if !a.delegate.is_empty() && !a.enforce && !task.enforce {
        eprintln!(
            "agentmon grant: warning: task {} is observed (neither its manifest nor --enforce enforces it): \
             the sub-tasks its delegates grant will be observed too, wherever they run",
            task.id
        );
    }
    let sign = |g: Grant| if a.enforce { g.enforced(&key) } else { g };
    let until = crate::event::Timestamp(now.0 + a.valid_for.as_nanos() as i128);
    let out = a.out.unwrap_or_else(|| path_for(&a.task));
    let (mut line, not_after) = match &a.under {
        None => {
            let g = sign(Grant::sign_under(&key, &text, a.by.trim(), until, None, delegates));
            (serde_json::to_string(&g)?, g.not_after)
        }
        Some(up) => {
            let read =
                |p: &PathBuf| std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()));
            let manifest = read(up)?;
            let gpath = a.parent_grant.clone().unwrap_or_else(|| path_for(up));
            let parent = crate::task::grant::parse(&read(&gpath)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", gpath.display()))?;
            let (pg, root) = match &parent {
                crate::task::grant::File::One(g) => (g.clone(), g.key.clone()),
                crate::task::grant::File::Chain(c) => {
                    let root =
                        c.links.first().ok_or_else(|| anyhow::anyhow!("{}: links: none", gpath.display()))?;
                    (c.grant.clone(), root.grant.key.clone())
                }
            };
            // Not past the parent's time: a later one would never hold.
            let until = match crate::event::Timestamp::parse(&pg.not_after) {
                Some(p) if p < until => p,
                _ => until,
            };
            let g = sign(Grant::sign_under(&key, &text, a.by.trim(), until, Some(pg.id()), delegates));
            let chain = Chain::under(parent, manifest, g);
            // Checked as a host trusting the root will: what would not hold is said now.
            let root = crate::signed::public_key(&root).map_err(anyhow::Error::msg)?;
            let at = format!("{} under {}", a.task.display(), up.display());
            chain.verify(&text, &[root], now).map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
            (serde_json::to_string(&chain)?, chain.grant.not_after.clone())
        }
    };
    line.push('\n');
    std::fs::write(&out, line).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    let under = a.under.as_ref().map_or(String::new(), |u| format!(" under {}", u.display()));
    println!("granted task {} by {}{under} until {not_after}: {}", task.id, a.by.trim(), out.display());
    Ok(0)
}
