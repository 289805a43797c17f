//! Command line: parses arguments and dispatches; returns the process exit status.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::{
    ctl,
    kernel::loader::{SensorConfig, Sensors},
    runner::{self, ExecOptions, RulesChoice},
    sensitive::{DEFAULT_PATTERNS, SensitiveSet},
    sink::Format,
};

/// agentmon traces what an AI agent's processes do in the kernel — execs, file
/// writes, deletes, renames, network connections — and reports every side effect as
/// a JSON event.
#[derive(Debug, Parser)]
#[command(name = "agentmon", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log filter for agentmon's own diagnostics (stderr), e.g. `info` or `agentmon=debug`.
    #[arg(long, global = true, env = "AGENTMON_LOG", default_value = "warn")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command as a tracked task and report every side effect of its process tree.
    ///
    /// Exits with the command's exit status (128 + signal if it was killed); 125 if
    /// agentmon itself failed, 126/127 if the command could not be executed or found.
    #[command(arg_required_else_help = true)]
    Exec {
        /// Write events (JSON lines) to FILE instead of stdout; `-` is stdout.
        #[arg(long, short = 'e', value_name = "FILE")]
        events: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
        /// Bind the command to this task manifest (YAML; see docs/tasks.md). Inside a
        /// task already watched by agentmon, this makes a sub-task, which must lie
        /// within the parent's scope.
        #[arg(long, value_name = "FILE")]
        task: Option<PathBuf>,
        /// Enforce the task's scope in the kernel (as `enforcement: enforce` in the
        /// manifest). A scope the active layers cannot enforce is refused.
        #[arg(long, requires = "task")]
        enforce: bool,
        /// Judge events with the rules in DIR (reloaded when it changes) instead of the
        /// built-in baseline.
        #[arg(long, value_name = "DIR", conflicts_with = "no_rules")]
        rules: Option<PathBuf>,
        /// Judge events by the task's scope only, with no rules.
        #[arg(long)]
        no_rules: bool,
        /// Add a sensitive path glob: read-only opens of matching files are reported.
        #[arg(long = "sensitive", value_name = "GLOB")]
        sensitive: Vec<String>,
        /// Do not use the built-in sensitive set (only --sensitive globs).
        #[arg(long)]
        no_default_sensitive: bool,
        /// Kernel ring buffer size in MiB (a power of two).
        #[arg(long, default_value_t = 16, value_parser = ringbuf_mb)]
        ringbuf_mb: u32,
        /// How long a call held for approval waits before it is denied.
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration)]
        approval_timeout: std::time::Duration,
        /// Do not print the start-up and survivor notes on stderr.
        #[arg(long, short = 'q')]
        quiet: bool,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
    /// Check that this host can run agentmon: load and attach every kernel program,
    /// report what is available, and exit.
    Probe,
    /// Work with policy rules.
    #[command(subcommand)]
    Rules(RulesCmd),
    /// Kill every process of a running task at once (and record it as an action).
    Kill(ContainArgs),
    /// Freeze every process of a running task, kept for forensics until `thaw` or `kill`.
    Freeze(ContainArgs),
    /// Let a frozen task run again.
    Thaw(ContainArgs),
    /// Let a call held for approval proceed (agentmon performs exactly what the
    /// request showed).
    Approve {
        /// The approval id (from the `approval_request` event or `agentmon approvals`).
        id: String,
        /// Also approve the same task's later calls of the same operation under the
        /// same directory for this long (e.g. `10m`).
        #[arg(long = "for", value_name = "DURATION", value_parser = duration)]
        hold_for: Option<std::time::Duration>,
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Refuse a call held for approval: it fails with EPERM.
    Deny {
        id: String,
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// List the calls held for approval by every agentmon here.
    Approvals {
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
pub struct ContainArgs {
    /// The task id (as in its manifest).
    pub task: String,
    /// Control socket of the agentmon watching the task (default: ask every agentmon
    /// running here).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum RulesCmd {
    /// Validate every rule file of DIR and run each rule's examples. Prints problems
    /// as `file:line: message`; exits 1 if there is any error.
    Check {
        /// Directory of rule files (*.yaml).
        #[arg(default_value = "rules")]
        dir: PathBuf,
    },
}

fn ringbuf_mb(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(1..=1024).contains(&n) || !n.is_power_of_two() {
        return Err(format!("{n} must be a power of two between 1 and 1024"));
    }
    Ok(n)
}

fn duration(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 30s, 10m)"))?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

fn sensitive_set(extra: &[String], no_default: bool) -> anyhow::Result<SensitiveSet> {
    let mut pats: Vec<String> =
        if no_default { Vec::new() } else { DEFAULT_PATTERNS.iter().map(|s| s.to_string()).collect() };
    pats.extend(extra.iter().cloned());
    Ok(SensitiveSet::new(&pats)?)
}

/// Runs the parsed command line; the result is the process exit status.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    match cli.command {
        Command::Exec {
            events,
            format,
            task,
            enforce,
            rules,
            no_rules,
            sensitive,
            no_default_sensitive,
            ringbuf_mb,
            approval_timeout,
            quiet,
            cmd,
        } => {
            let task = match task {
                None => None,
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| anyhow::anyhow!("cannot read task manifest {}: {e}", path.display()))?;
                    let now = crate::enrich::Clock::now().now_wall();
                    match crate::task::parse(&text, &path, now) {
                        Ok(mut t) => {
                            t.enforce |= enforce;
                            Some((t, text))
                        }
                        Err(e) => {
                            eprintln!("agentmon: {e}");
                            return Ok(125);
                        }
                    }
                }
            };
            let rules = match (rules, no_rules) {
                (Some(d), _) => RulesChoice::Dir(d),
                (None, true) => RulesChoice::None,
                (None, false) => RulesChoice::Shipped,
            };
            let opts = ExecOptions {
                cmd,
                events,
                task,
                rules,
                format,
                sensitive: sensitive_set(&sensitive, no_default_sensitive)?,
                ringbuf_bytes: ringbuf_mb << 20,
                approval_timeout,
                quiet,
            };
            match rt.block_on(runner::exec(opts)) {
                Ok(code) => Ok(code),
                Err(e) => {
                    eprintln!("agentmon: {e}");
                    Ok(e.exit_code())
                }
            }
        }
        Command::Rules(RulesCmd::Check { dir }) => {
            let report = crate::policy::check::check_dir(&dir, &SensitiveSet::default_set());
            for w in &report.warnings {
                eprintln!("{w}");
            }
            for e in &report.errors {
                println!("{e}");
            }
            if report.errors.is_empty() {
                println!("{}: {} rules, all examples hold", dir.display(), report.rules);
                Ok(0)
            } else {
                println!("{}: {} error(s)", dir.display(), report.errors.len());
                Ok(1)
            }
        }
        Command::Kill(a) => contain(&rt, a, |task| ctl::Request::Kill { task }),
        Command::Freeze(a) => contain(&rt, a, |task| ctl::Request::Freeze { task }),
        Command::Thaw(a) => contain(&rt, a, |task| ctl::Request::Thaw { task }),
        Command::Approve { id, hold_for, socket } => {
            let a = ContainArgs { task: id, socket };
            contain(&rt, a, |id| ctl::Request::Approve { id, for_s: hold_for.map(|d| d.as_secs().max(1)) })
        }
        Command::Deny { id, socket } => {
            contain(&rt, ContainArgs { task: id, socket }, |id| ctl::Request::Deny { id })
        }
        Command::Approvals { socket } => {
            let sockets = socket.map(|s| vec![s]).unwrap_or_else(ctl::sockets);
            for s in sockets {
                match rt.block_on(ctl::call(&s, &ctl::Request::Approvals {})) {
                    Ok(r) if r.ok => print!("{}", r.message.unwrap_or_default()),
                    Ok(r) => eprintln!("agentmon: {}: {}", s.display(), r.error.unwrap_or_default()),
                    Err(e) => eprintln!("agentmon: {e}"),
                }
            }
            Ok(0)
        }
        Command::Probe => {
            let s = Sensors::load(&SensorConfig::default())?;
            println!("kernel programs attached: {} (in {} ms)", s.attached.len(), s.load_ms);
            for (name, at) in &s.attached {
                println!("  {name:<28} {at}");
            }
            if !s.absent.is_empty() {
                println!("syscalls absent on this kernel (not needed): {}", s.absent.join(", "));
            }
            println!("enforcement layers:");
            for l in crate::enforce::Layers::probe().describe() {
                println!("  {l}");
            }
            Ok(0)
        }
    }
}

fn contain(
    rt: &tokio::runtime::Runtime,
    a: ContainArgs,
    req: impl FnOnce(String) -> ctl::Request,
) -> anyhow::Result<i32> {
    match rt.block_on(ctl::contain(a.socket.as_deref(), &req(a.task))) {
        Ok(r) if r.ok => {
            println!("{}", r.message.unwrap_or_default());
            Ok(0)
        }
        Ok(r) => {
            eprintln!("agentmon: {}", r.error.unwrap_or_else(|| "refused".into()));
            Ok(1)
        }
        Err(e) => {
            eprintln!("agentmon: {e}");
            Ok(1)
        }
    }
}
