//! `agentmon exec` arguments, and the output options (sinks) it shares with the daemon.

use std::{path::PathBuf, time::Duration};

use crate::{
    nats::{NatsArgs, NatsOptions},
    runner::{AuditOptions, ExecOptions, Outputs, RulesChoice},
    sensitive::{DEFAULT_PATTERNS, SensitiveSet},
    sink::Format,
};

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Write events (JSON lines) to FILE instead of stdout; `-` is stdout.
    #[arg(long, short = 'e', value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// Bind the command to this task manifest (YAML; see docs/tasks.md). Inside a
    /// task already watched by agentmon, this makes a sub-task, which must lie
    /// within the parent's scope.
    #[arg(long, value_name = "FILE")]
    pub task: Option<PathBuf>,
    /// Enforce the task's scope in the kernel (as `enforcement: enforce` in the
    /// manifest). A scope the active layers cannot enforce is refused.
    #[arg(long, requires = "task")]
    pub enforce: bool,
    /// Judge events with the rules in DIR (reloaded when it changes) instead of the
    /// built-in baseline.
    #[arg(long, value_name = "DIR", conflicts_with = "no_rules")]
    pub rules: Option<PathBuf>,
    /// Judge events by the task's scope only, with no rules.
    #[arg(long)]
    pub no_rules: bool,
    /// Add a sensitive path glob: read-only opens of matching files are reported.
    #[arg(long = "sensitive", value_name = "GLOB")]
    pub sensitive: Vec<String>,
    /// Do not use the built-in sensitive set (only --sensitive globs).
    #[arg(long)]
    pub no_default_sensitive: bool,
    /// Lose events when the ring buffer is full rather than pause the task until
    /// agentmon has caught up (losses are counted and reported either way).
    #[arg(long)]
    pub no_backpressure: bool,
    /// Kernel ring buffer size in MiB (a power of two).
    #[arg(long, default_value_t = 16, value_parser = ringbuf_mb)]
    pub ringbuf_mb: u32,
    /// How long a call held for approval waits before it is denied.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration)]
    pub approval_timeout: Duration,
    /// Keep the text of prompt records (`agentmon step prompt`), redacted and
    /// bounded, not only its SHA-256 and length.
    #[arg(long)]
    pub prompt_text: bool,
    /// With --prompt-text: the most text kept per prompt, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 4096, requires = "prompt_text")]
    pub prompt_max_bytes: usize,
    /// With --prompt-text: also redact what this regular expression matches
    /// (besides the built-in secret shapes; repeatable).
    #[arg(long, value_name = "REGEX", requires = "prompt_text")]
    pub prompt_redact: Vec<String>,
    /// Do not print the start-up and survivor notes on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    #[command(flatten)]
    pub out: OutputArgs,
    /// Register the task with the agentmon daemon at SOCKET instead of watching it
    /// here (default: $AGENTMON_DAEMON, else the daemon's socket if a daemon runs).
    // The variable is read in `options`, not by clap: clap would count it as given,
    // so an exported one would conflict with --standalone and pass for an explicit
    // request.
    #[arg(long, value_name = "SOCKET", conflicts_with = "standalone")]
    pub daemon: Option<PathBuf>,
    /// Watch the task here even if a daemon runs.
    #[arg(long)]
    pub standalone: bool,
    /// The task's grant (default: the manifest's path with `.grant` added, when it
    /// exists): who gave the task its authority (`agentmon grant`).
    #[arg(long, value_name = "FILE", requires = "task")]
    pub grant: Option<PathBuf>,
    /// Ed25519 public keys (hex, one per line) that may grant tasks: the task runs
    /// only with a grant by one of them that covers exactly its manifest.
    #[arg(long, visible_alias = "trust", value_name = "FILE", requires = "task")]
    pub grant_keys: Option<PathBuf>,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

/// Where events go besides the JSON lines: the audit chain and NATS.
#[derive(Debug, clap::Args)]
pub struct OutputArgs {
    /// Append every event, alert and action to this tamper-evident audit chain
    /// (docs/audit.md).
    #[arg(long, value_name = "FILE", help_heading = "Audit")]
    pub audit: Option<PathBuf>,
    /// The chain's Ed25519 checkpoint key (created on first use, mode 0600).
    #[arg(long, value_name = "FILE", default_value = "/var/lib/agentmon/audit.key", help_heading = "Audit")]
    pub audit_key: PathBuf,
    /// Sign a checkpoint every N records (and at every flush).
    #[arg(long, value_name = "N", default_value_t = 1000, help_heading = "Audit")]
    pub checkpoint_every: u64,
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Host name in subjects (`agentmon.<host>.…`); default: this host's name.
    #[arg(long, value_name = "NAME", help_heading = "NATS")]
    pub nats_host: Option<String>,
    /// Messages for NATS wait here while the server is unreachable.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/agentmon/spool", help_heading = "NATS")]
    pub spool: PathBuf,
    /// The most the spool may hold (e.g. 512M, 2G); beyond it messages are dropped
    /// and a `loss` event says how many.
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = size, help_heading = "NATS")]
    pub spool_max: u64,
    /// Also publish OCSF 1.x copies of events and alerts (docs/ocsf.md).
    #[arg(long, help_heading = "NATS")]
    pub ocsf: bool,
    /// Accept remote control commands signed by these Ed25519 public keys (one hex
    /// key per line) on `agentmon.<host>.ctl.*`. Without it remote control is off.
    #[arg(long, value_name = "FILE", help_heading = "NATS")]
    pub nats_ctl_keys: Option<PathBuf>,
}

impl OutputArgs {
    pub fn outputs(self) -> anyhow::Result<Outputs> {
        let host = self.nats_host.clone().unwrap_or_else(|| {
            hostname::get().ok().and_then(|h| h.into_string().ok()).unwrap_or("localhost".into())
        });
        let ctl_keys = match &self.nats_ctl_keys {
            Some(p) if self.nats.nats.is_some() => {
                Some(crate::nats::control::load_keys(p).map_err(anyhow::Error::msg)?)
            }
            Some(_) => anyhow::bail!("--nats-ctl-keys needs --nats"),
            None => None,
        };
        if self.nats.nats.is_some() {
            // Checked before anything runs: a list that does not parse would only
            // ever fill the spool.
            self.nats.servers()?;
            self.nats.stream()?;
        }
        let sign_key = if self.nats.nats.is_some() { self.nats.sign_key()? } else { None };
        let nats = self.nats.nats.is_some().then(|| NatsOptions {
            args: self.nats.clone(),
            host,
            spool: self.spool.clone(),
            spool_max: self.spool_max,
            ocsf: self.ocsf,
            sign_key,
        });
        let audit = self.audit.map(|path| AuditOptions {
            path,
            key: self.audit_key,
            checkpoint_every: self.checkpoint_every,
        });
        Ok(Outputs { nats, ctl_keys, audit })
    }
}

impl ExecArgs {
    /// The options `runner::exec` takes; `Err(code)` when the task manifest is bad
    /// (already reported).
    pub fn options(self) -> anyhow::Result<Result<ExecOptions, i32>> {
        let grant = match (&self.grant, &self.task) {
            (Some(g), _) => Some(
                std::fs::read_to_string(g)
                    .map_err(|e| anyhow::anyhow!("cannot read grant {}: {e}", g.display()))?,
            ),
            (None, Some(t)) => std::fs::read_to_string(crate::task::grant::path_for(t)).ok(),
            (None, None) => None,
        };
        let grant_keys = match &self.grant_keys {
            Some(p) => Some(crate::nats::control::load_keys(p).map_err(anyhow::Error::msg)?),
            None => None,
        };
        let task = match &self.task {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read task manifest {}: {e}", path.display()))?;
                let now = crate::enrich::Clock::now().now_wall();
                match crate::task::parse(&text, path, now) {
                    Ok(mut t) => {
                        t.enforce |= self.enforce;
                        // Before anything runs: a task without the authority it needs never starts.
                        match crate::task::grant::check(
                            &text,
                            grant.as_deref(),
                            grant_keys.as_deref(),
                            true,
                            now,
                            crate::task::scope::Resolve::Here,
                        ) {
                            Ok(g) => t.take_grant(g),
                            Err(why) => {
                                eprintln!("agentmon: {}: task {}: {why}", path.display(), t.id);
                                return Ok(Err(125));
                            }
                        }
                        Some((t, text))
                    }
                    Err(e) => {
                        eprintln!("agentmon: {e}");
                        return Ok(Err(125));
                    }
                }
            }
        };
        let from_env = std::env::var_os("AGENTMON_DAEMON").filter(|v| !v.is_empty()).map(PathBuf::from);
        if task.is_none() && !self.standalone {
            // Only a task can be registered with the daemon. Asked for on the command
            // line, watching the command here instead would silently change who
            // watches it: refuse. From the environment, say so.
            if self.daemon.is_some() {
                anyhow::bail!(
                    "--daemon registers a task with the daemon: give the task manifest with --task FILE \
                     (without --task, agentmon exec watches the command itself)"
                );
            }
            if from_env.is_some() && !self.quiet {
                eprintln!("agentmon: no --task, so AGENTMON_DAEMON is not used: watching the command here");
            }
        }
        let rules = match (self.rules, self.no_rules) {
            (Some(d), _) => RulesChoice::Dir(d),
            (None, true) => RulesChoice::None,
            (None, false) => RulesChoice::Shipped,
        };
        Ok(Ok(ExecOptions {
            cmd: self.cmd,
            events: self.events,
            task,
            rules,
            format: self.format,
            sensitive: sensitive_set(&self.sensitive, self.no_default_sensitive)?,
            ringbuf_bytes: self.ringbuf_mb << 20,
            approval_timeout: self.approval_timeout,
            backpressure: !self.no_backpressure,
            prompts: crate::prompt::PromptPolicy::new(
                self.prompt_text,
                self.prompt_max_bytes,
                &self.prompt_redact,
            )
            .map_err(|e| anyhow::anyhow!("--prompt-redact: {e}"))?,
            quiet: self.quiet,
            outputs: self.out.outputs()?,
            daemon: match (self.standalone, self.daemon.or(from_env)) {
                (true, _) => None,
                (false, Some(d)) => Some(d),
                (false, None) => {
                    let d = PathBuf::from(crate::ctl::DAEMON_SOCKET);
                    std::os::unix::net::UnixStream::connect(&d).is_ok().then_some(d)
                }
            },
            grant,
            grant_keys_file: self.grant_keys.clone(),
        }))
    }
}

fn ringbuf_mb(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(1..=1024).contains(&n) || !n.is_power_of_two() {
        return Err(format!("{n} must be a power of two between 1 and 1024"));
    }
    Ok(n)
}

/// A wait or a standing approval: no longer than a task may live (366 days). Far
/// longer ones would overflow the clock they are added to.
pub fn duration(s: &str) -> Result<Duration, String> {
    bounded(s, crate::task::manifest::MAX_LIFETIME, "366d")
}

/// How long a stream keeps messages: up to a century.
pub fn retention(s: &str) -> Result<Duration, String> {
    bounded(s, Duration::from_secs(100 * 366 * 86_400), "100y")
}

fn bounded(s: &str, max: Duration, said: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 30s, 10m)"))?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    if d > max {
        return Err(format!("{s:?} is longer than the longest allowed, {said}"));
    }
    Ok(d)
}

/// `4096`, `64K`, `512M`, `2G` (powers of 1024).
pub fn size(s: &str) -> Result<u64, String> {
    let t = s.trim().trim_end_matches(['B', 'b']).trim_end_matches(['i']);
    let (num, mul) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| format!("{s:?} is not a size (e.g. 512M, 2G)"))?;
    n.checked_mul(mul).filter(|v| *v >= 1 << 20).ok_or_else(|| format!("{s:?}: must be at least 1M"))
}

fn sensitive_set(extra: &[String], no_default: bool) -> anyhow::Result<SensitiveSet> {
    let mut pats: Vec<String> =
        if no_default { Vec::new() } else { DEFAULT_PATTERNS.iter().map(|s| s.to_string()).collect() };
    pats.extend(extra.iter().cloned());
    Ok(SensitiveSet::new(&pats)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_are_bounded() {
        assert_eq!(super::duration("10m"), Ok(std::time::Duration::from_secs(600)));
        assert_eq!(super::duration("366d"), Ok(std::time::Duration::from_secs(366 * 86_400)));
        // Added to the clock, 580000000000y overflowed it and the daemon panicked.
        for long in ["367d", "580000000000y"] {
            assert!(super::duration(long).unwrap_err().contains("longest allowed, 366d"), "{long}");
        }
        assert!(super::duration("0s").unwrap_err().contains("more than zero"));
        assert!(super::retention("30y").is_ok());
        assert!(super::retention("580000000000y").unwrap_err().contains("100y"));
    }

    #[test]
    fn sizes() {
        assert_eq!(super::size("2G"), Ok(2 << 30));
        assert_eq!(super::size("512MiB"), Ok(512 << 20));
        assert_eq!(super::size("1048576"), Ok(1 << 20));
        assert!(super::size("8192").is_err());
        assert!(super::size("lots").is_err());
    }
}
