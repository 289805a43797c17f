//! `agentmon replay`: reads a recording back — an events file, an audit chain or a
//! host's NATS JetStream stream — and shows what happened as a timeline, a process
//! tree or JSON lines; with `--rules` it judges the recording again under another
//! policy and shows what that policy would have flagged differently (what-if).
//! Documented in docs/replay.md.

mod chain;
mod html;
mod nats;
mod render;
mod source;
mod standin;
#[cfg(test)]
mod tests;
mod tree;
mod whatif;
#[cfg(test)]
mod whatif_tests;

use std::{io::Write, path::PathBuf, sync::Arc};

use anyhow::{Context, bail};

use crate::event::{Alert, Event, Kind, Timestamp};

pub use source::{Recording, read_file};

/// Output format of `agentmon replay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ReplayFormat {
    /// A timeline: one aligned line per event.
    #[default]
    Table,
    /// One event per line, as agentmon writes them (what-if: one change per line).
    Json,
    /// The process tree, each process with its side effects under it.
    Tree,
    /// One self-contained page to look at: timeline, process tree, filters, chains
    /// (write it with `-o FILE`).
    Html,
}

/// Replay a recording: show what a task did, or what another policy would have said.
#[derive(clap::Args, Debug, Clone)]
pub struct ReplayArgs {
    /// The recording: an events file (JSON lines, as `agentmon exec --events` writes),
    /// an audit chain file, `-` for stdin, or `nats://HOST:PORT[/STREAM]` (the stream
    /// defaults to `AGENTMON_<host>`).
    #[arg(long, value_name = "SOURCE")]
    pub from: String,
    /// Only this task's events, and those of the sub-tasks delegated from it.
    #[arg(long, value_name = "ID")]
    pub task: Option<String>,
    /// Only events at or after T: RFC 3339 (`2026-11-28T15:31:00Z`) or a duration
    /// before now (`10m`, `2h`).
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// Only events at or before T (as --since).
    #[arg(long, value_name = "T")]
    pub until: Option<String>,
    /// Only the events of this tool call (its `call_id`), its step records included.
    #[arg(long, value_name = "CALL_ID")]
    pub step: Option<String>,
    /// Only events of these kinds (`file_delete,approval`; repeatable).
    #[arg(long, value_name = "KIND", value_delimiter = ',', value_parser = parse_kind)]
    pub kind: Vec<Kind>,
    /// Only events with these verdicts (`denied,out_of_scope`; repeatable).
    #[arg(long, value_name = "VERDICT", value_delimiter = ',')]
    pub verdict: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReplayFormat::Table)]
    pub format: ReplayFormat,
    /// The chain behind the event with this id: the tasks it was delegated from, its
    /// task's start (grant, prompt), its tool call, its approval, and the event (with
    /// html: the report opens on it).
    #[arg(long, value_name = "EVENT_ID")]
    pub chain: Option<uuid::Uuid>,
    /// Write the report to FILE instead of standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// What-if: judge every recorded event again with the rules in DIR and show what
    /// would change.
    #[arg(long, value_name = "DIR")]
    pub rules: Option<PathBuf>,
    /// What-if: judge the task's events by this manifest's scope too (with --rules).
    #[arg(long, value_name = "FILE", requires = "rules")]
    pub task_file: Option<PathBuf>,
    /// NATS: whose stream to read (default: this host's name).
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    /// NATS: credentials file (JWT and NKey seed).
    #[arg(long, value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// NATS: user name (with --nats-password).
    #[arg(long, value_name = "USER", requires = "nats_password")]
    pub nats_user: Option<String>,
    /// NATS: password.
    #[arg(long, value_name = "PASSWORD", env = "AGENTMON_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// NATS: authentication token.
    #[arg(long, value_name = "TOKEN", env = "AGENTMON_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
}

impl ReplayArgs {
    /// Arguments reading `from` with everything else at its default.
    pub fn new(from: impl Into<String>) -> Self {
        Self {
            from: from.into(),
            task: None,
            since: None,
            until: None,
            step: None,
            kind: Vec::new(),
            verdict: Vec::new(),
            format: ReplayFormat::Table,
            chain: None,
            output: None,
            rules: None,
            task_file: None,
            host: None,
            nats_creds: None,
            nats_user: None,
            nats_password: None,
            nats_token: None,
        }
    }
}

/// An event kind by its name in events (`file_delete`).
fn parse_kind(s: &str) -> Result<Kind, String> {
    serde_json::from_value(serde_json::Value::String(s.trim().to_string())).map_err(|_| {
        let names: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        format!("{s:?} is not an event kind ({})", names.join(", "))
    })
}

/// Which recorded events are shown.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub task: Option<String>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    /// A tool call's id.
    pub step: Option<String>,
    /// Empty: every kind.
    pub kinds: Vec<Kind>,
    /// Empty: every verdict.
    pub verdicts: Vec<String>,
}

impl Filter {
    /// The event's task is the one asked for, or was delegated from it; its time is
    /// within the bounds (inclusive).
    pub fn keep(&self, e: &Event) -> bool {
        if let Some(t) = &self.task {
            let own = e.task.as_deref() == Some(t.as_str());
            let delegated = e.task_chain.as_ref().is_some_and(|c| c.iter().any(|p| **p == **t));
            if !own && !delegated {
                return false;
            }
        }
        if self.step.as_ref().is_some_and(|c| e.step.as_ref().is_none_or(|s| s.call_id != *c)) {
            return false;
        }
        if !self.kinds.is_empty() && !self.kinds.contains(&e.kind) {
            return false;
        }
        if !self.verdicts.is_empty()
            && !e.verdict.as_deref().is_some_and(|v| self.verdicts.iter().any(|w| w == v))
        {
            return false;
        }
        self.since.is_none_or(|s| e.ts >= s) && self.until.is_none_or(|u| e.ts <= u)
    }
}

/// The wall clock now.
fn wall_now() -> Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp(d.as_nanos() as i128)
}

/// `--since`/`--until`: an RFC 3339 time, or a duration meaning that long before `now`.
pub fn parse_time(flag: &str, s: &str, now: Timestamp) -> anyhow::Result<Timestamp> {
    let s = s.trim();
    if let Some(t) = Timestamp::parse(s) {
        return Ok(t);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(s)
        && let Ok(d) = t.duration_since(std::time::UNIX_EPOCH)
    {
        return Ok(Timestamp(d.as_nanos() as i128));
    }
    match humantime::parse_duration(s) {
        Ok(d) => Ok(Timestamp(now.0 - d.as_nanos() as i128)),
        Err(_) => bail!(
            "--{flag} {s:?}: neither an RFC 3339 time (2026-11-28T15:31:00Z) nor a duration before now (10m, 2h)"
        ),
    }
}

/// This host's name (the default `--host`).
fn this_host() -> String {
    hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "localhost".into())
}

/// Reads the recording `args` names, deduplicated and in time order.
pub async fn load(args: &ReplayArgs, since: Option<Timestamp>) -> anyhow::Result<Recording> {
    let mut rec = if let Some(url) = nats::NatsUrl::parse(&args.from) {
        let host = args.host.clone().unwrap_or_else(this_host);
        nats::read(&url, args, &host, since).await?
    } else {
        if args.host.is_some() {
            tracing::warn!("--host only applies to a nats:// source");
        }
        read_file(&args.from)?
    };
    rec.normalize();
    Ok(rec)
}

/// Runs `agentmon replay`, writing the report to `out` (warnings go to stderr).
pub async fn run(args: ReplayArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let now = wall_now();
    let since = args.since.as_deref().map(|s| parse_time("since", s, now)).transpose()?;
    let until = args.until.as_deref().map(|s| parse_time("until", s, now)).transpose()?;
    if let (Some(s), Some(u)) = (since, until)
        && s > u
    {
        bail!("--since {s} is after --until {u}");
    }
    if args.rules.is_some() && (args.format == ReplayFormat::Html || args.chain.is_some()) {
        bail!("--rules (what-if) reports as table, json or tree, and not with --chain");
    }
    // A broken policy fails before a long read.
    let rules = args.rules.as_deref().map(whatif::load_rules).transpose()?;
    // A chain reaches before --since: from NATS, read from the start then.
    let rec = load(&args, since.filter(|_| args.chain.is_none())).await?;
    // What the reports name as their source: never a URL's credentials.
    let source = match nats::NatsUrl::parse(&args.from) {
        Some(u) => u.display() + &u.stream.as_deref().map(|s| format!("/{s}")).unwrap_or_default(),
        None => args.from.clone(),
    };
    for w in &rec.warnings {
        eprintln!("agentmon replay: warning: {w}");
    }
    let filter = Filter {
        task: args.task.clone(),
        since,
        until,
        step: args.step.clone(),
        kinds: args.kind.clone(),
        verdicts: args.verdict.clone(),
    };
    let written = match rules {
        Some(rules) => {
            let task = match &args.task_file {
                Some(f) => Some(whatif::load_task(f, &rec.events, args.task.as_deref())?),
                None => None,
            };
            let policy = whatif::Policy { rules, task };
            whatif::report(policy, &rec, &filter, args.format, out)
        }
        None => match args.chain {
            Some(id) => chain_of(&rec, &source, id, args.format, out),
            None => show(&rec, &filter, &source, args.format, out),
        },
    };
    written.context("writing the replay")
}

/// `-o FILE` may be written: it is not the recording being read.
pub fn check_output(out: &std::path::Path, from: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if let (Ok(a), Ok(b)) = (std::fs::metadata(out), std::fs::metadata(from))
        && (a.dev(), a.ino()) == (b.dev(), b.ino())
    {
        bail!("--output {} is the recording --from reads", out.display());
    }
    Ok(())
}

/// Writes the report to `out` whole: into a new file beside it (readable by its
/// owner only: it holds the recording) renamed over it, so a failed run leaves
/// `out` as it was and a symlink planted at `out` is replaced, not followed.
pub fn write_output(out: &std::path::Path, report: &[u8]) -> anyhow::Result<()> {
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let mut f = tempfile::Builder::new()
        .prefix(".agentmon-replay-")
        .tempfile_in(dir)
        .with_context(|| format!("--output {}: cannot write in {}", out.display(), dir.display()))?;
    f.write_all(report)
        .and_then(|()| f.as_file().sync_all())
        .with_context(|| format!("--output {}", out.display()))?;
    f.persist(out).map_err(|e| anyhow::anyhow!("--output {}: {}", out.display(), e.error))?;
    Ok(())
}

/// The recording as it was judged, in `format`.
pub fn show(
    rec: &Recording,
    filter: &Filter,
    source: &str,
    format: ReplayFormat,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let events: Vec<&Event> = rec.events.iter().filter(|e| filter.keep(e)).collect();
    let alerts: Vec<&Alert> = rec.alerts.iter().filter(|a| filter.keep(&a.event)).collect();
    match format {
        ReplayFormat::Json => render::json(&events, out)?,
        ReplayFormat::Table => render::table(&events, &alerts, out)?,
        ReplayFormat::Tree => tree::render(&events, &alerts, None, out)?,
        ReplayFormat::Html => html::write(source, &rec.events, &events, &alerts, None, out)?,
    }
    out.flush()?;
    Ok(())
}

/// `--chain ID`: the chain behind one event, outermost first (the filters do not
/// apply: a chain reaches wherever its links were recorded).
fn chain_of(
    rec: &Recording,
    source: &str,
    id: uuid::Uuid,
    format: ReplayFormat,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let links = chain::Index::new(&rec.events)
        .chain(id)
        .with_context(|| format!("--chain {id}: no event with that id in {source}"))?;
    match format {
        ReplayFormat::Json => {
            for l in &links {
                writeln!(out, "{}", serde_json::json!({"role": l.role, "event": l.event}))?;
            }
        }
        ReplayFormat::Table | ReplayFormat::Tree => {
            let sev = render::severities(&rec.alerts.iter().collect::<Vec<_>>());
            for l in &links {
                let e = l.event;
                let mut line = format!(
                    "{:<16} {} {} {}  {}",
                    l.role,
                    render::datetime(e.ts),
                    e.kind.as_str(),
                    render::what(e),
                    render::verdict(e)
                );
                if let Some(st) = &e.step {
                    line.push_str(&format!("  <{}:{}>", st.tool, st.call_id));
                }
                if let Some(g) = e.detail.get("grant").and_then(|g| g.get("by")).and_then(|b| b.as_str()) {
                    line.push_str(&format!("  granted by {g}"));
                }
                if let Some(d) = e.detail.get("decision").and_then(|d| d.as_str()) {
                    line.push_str(&format!("  {d}"));
                }
                if let Some(s) = sev.get(&e.id) {
                    line.push_str(&format!(" [{s}]"));
                }
                writeln!(out, "{}", crate::sink::one_line(&line))?;
            }
        }
        ReplayFormat::Html => {
            let all: Vec<&Event> = rec.events.iter().collect();
            let alerts: Vec<&Alert> = rec.alerts.iter().collect();
            html::write(source, &rec.events, &all, &alerts, Some(id), out)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The distinct tasks of some events, in order of appearance.
fn tasks_of<'a>(events: impl Iterator<Item = &'a Event>) -> Vec<Arc<str>> {
    let mut v: Vec<Arc<str>> = Vec::new();
    for e in events {
        if let Some(t) = &e.task
            && !v.contains(t)
        {
            v.push(t.clone());
        }
    }
    v
}
