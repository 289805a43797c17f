//! Command line: parses arguments and dispatches; returns the process exit status.

pub mod argv;
mod audit;
mod daemon;
pub mod exec;
mod grant;
mod remote;
mod step;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use self::exec::duration;
use crate::{
    ctl,
    kernel::loader::{SensorConfig, Sensors},
    runner,
    sensitive::SensitiveSet,
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
    Exec(Box<exec::ExecArgs>),
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
    /// Record that a task is over (task_end; on NATS the revoke); its processes are
    /// still watched unless --kill.
    End {
        #[command(flatten)]
        a: ContainArgs,
        /// Kill the task's processes first.
        #[arg(long)]
        kill: bool,
    },
    /// Let a call held for approval proceed (agentmon performs exactly what the
    /// request showed).
    Approve {
        /// The approval id (from the `approval_request` event or `agentmon approvals`).
        id: String,
        /// Also approve the same task's later calls of the same operation under the
        /// same directory for this long (e.g. `10m`).
        #[arg(long = "for", value_name = "DURATION", value_parser = duration)]
        hold_for: Option<std::time::Duration>,
        /// Why (recorded with the decision, beside who decided).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Refuse a call held for approval: it fails with EPERM.
    Deny {
        id: String,
        /// Why (recorded with the decision, beside who decided).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// List the calls held for approval by every agentmon here.
    Approvals {
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Show the tasks every agentmon here watches: processes, state, held calls.
    Status {
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Work with audit chains.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Show what a task did, from an events file, an audit chain or NATS; with
    /// --rules, what a different policy would have said.
    Replay(Box<crate::replay::ReplayArgs>),
    /// Control an agentmon on another host over NATS with a signed command.
    Remote(Box<remote::RemoteArgs>),
    /// Serve every task on this host: load the kernel programs once; `agentmon exec`
    /// registers with it, `agentmon attach` binds running trees.
    Daemon(daemon::DaemonArgs),
    /// Bind a process tree that already runs to a task of the daemon (observe mode:
    /// events, verdicts, kill and freeze; no launch-time sandbox).
    Attach(daemon::AttachArgs),
    /// Mark the tool call that is running in a task (for agent hooks): the task's
    /// events until `step end` carry it.
    Step(step::StepArgs),
    /// Grant a task: sign its manifest, exactly as it is, with your key; the grant
    /// goes beside it (TASK.grant). Where hosts have grant keys, only granted tasks run.
    Grant(grant::GrantArgs),
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

/// `run`, then the control replies still being written (on the control socket,
/// then over NATS), for at most a second each.
async fn settled<T>(run: impl std::future::Future<Output = T>) -> T {
    let r = run.await;
    crate::ctl::replies_written(std::time::Duration::from_secs(1)).await;
    crate::nats::control::answers_sent(std::time::Duration::from_secs(1)).await;
    r
}

/// Runs the parsed command line; the result is the process exit status.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    // One thread: a readiness event (a held call, the ring's wake-up) reaches the
    // loop without a hand-over from a worker thread (a fifth of a held chmod's
    // cost). Tasks it spawns (control replies, the metrics responder) run whenever
    // the loop waits, which it does between bounded turns.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match cli.command {
        Command::Exec(args) => {
            let opts = match args.options()? {
                Ok(o) => o,
                Err(code) => return Ok(code),
            };
            match rt.block_on(settled(runner::exec(opts))) {
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
        Command::Kill(a) => contain(&rt, a, |task| ctl::Request::Kill { task, via: None }),
        Command::Freeze(a) => contain(&rt, a, |task| ctl::Request::Freeze { task, via: None }),
        Command::Thaw(a) => contain(&rt, a, |task| ctl::Request::Thaw { task, via: None }),
        Command::End { a, kill } => contain(&rt, a, |task| ctl::Request::End { task, kill }),
        Command::Approve { id, hold_for, reason, socket } => {
            let a = ContainArgs { task: id, socket };
            contain(&rt, a, |id| ctl::Request::Approve {
                id,
                for_s: hold_for.map(|d| d.as_secs().max(1)),
                via: None,
                reason: reason.clone(),
            })
        }
        Command::Deny { id, reason, socket } => contain(&rt, ContainArgs { task: id, socket }, |id| {
            ctl::Request::Deny { id, via: None, reason: reason.clone() }
        }),
        Command::Approvals { socket } => {
            for (s, answer) in rt.block_on(ask(socket, &ctl::Request::Approvals {})) {
                match answer {
                    Ok(r) if r.ok => print!("{}", r.message.unwrap_or_default()),
                    Ok(r) => eprintln!("agentmon: {}: {}", s.display(), r.error.unwrap_or_default()),
                    Err(e) => eprintln!("agentmon: {e}"),
                }
            }
            Ok(0)
        }
        Command::Status { socket } => {
            let mut all = Vec::new();
            for (s, answer) in rt.block_on(ask(socket, &ctl::Request::Status {})) {
                match answer {
                    Ok(r) if r.ok => all.extend(r.data),
                    Ok(r) => eprintln!("agentmon: {}: {}", s.display(), r.error.unwrap_or_default()),
                    Err(e) => eprintln!("agentmon: {e}"),
                }
            }
            println!("{}", serde_json::to_string_pretty(&all)?);
            Ok(0)
        }
        Command::Audit(cmd) => audit::run(cmd),
        Command::Replay(args) => {
            match args.output.clone() {
                Some(f) => {
                    // Whole or not at all, and never over what it reads.
                    crate::replay::check_output(&f, &args.from)?;
                    let mut report = Vec::new();
                    rt.block_on(crate::replay::run(*args, &mut report))?;
                    crate::replay::write_output(&f, &report)?;
                }
                None => rt.block_on(crate::replay::run(*args, &mut std::io::stdout().lock()))?,
            }
            Ok(0)
        }
        Command::Remote(args) => rt.block_on(remote::run(*args)),
        Command::Step(a) => step::run(&rt, a),
        Command::Grant(a) => grant::run(a),
        Command::Attach(a) => daemon::attach(&rt, a),
        Command::Daemon(a) => {
            let opts = daemon::options(a)?;
            match rt.block_on(settled(runner::daemon(opts))) {
                Ok(code) => Ok(code),
                Err(e) => {
                    eprintln!("agentmon daemon: {e}");
                    Ok(e.exit_code())
                }
            }
        }
        Command::Probe => {
            let layers = crate::enforce::Layers::probe();
            let mut s = Sensors::load(&SensorConfig { lsm: layers.lsm, ..SensorConfig::default() })?;
            println!("kernel programs attached: {} (in {} ms)", s.attached.len(), s.load_ms);
            if layers.lsm {
                // Attached here only to show that they can be: a task's enforcement
                // needs every one.
                let t = std::time::Instant::now();
                s.arm_lsm()?;
                println!(
                    "  the BPF LSM hooks attach (in {} ms); agentmon attaches them while a task is enforced",
                    t.elapsed().as_millis()
                );
            }
            for (name, at) in &s.attached {
                println!("  {name:<28} {at}");
            }
            if !s.absent.is_empty() {
                println!(
                    "tracepoints and hooks absent on this kernel (nothing there to miss): {}",
                    s.absent.join(", ")
                );
            }
            println!(
                "observation (a daemon's): {}; process lifecycle and signals: tp_btf. agentmon exec on its own \
                 observes through the tracepoints unless {}=fexit",
                s.observe,
                crate::kernel::observe::OBSERVE_ENV
            );
            println!("io_uring requests: {}", s.iou_said());
            println!("kernel preemption: {}", crate::kernel::preempt::model());
            if crate::kernel::preempt::preempts().is_some() {
                // The first map call tries the raise.
                drop(crate::kernel::preempt::hold());
                match crate::kernel::preempt::refused() {
                    // Tried in this process: a daemon under other limits (systemd's
                    // RestrictRealtime, a cgroup's real-time budget) may be refused,
                    // which its log says at its first map call.
                    None => println!(
                        "  agentmon's BPF map calls: at real-time priority (SCHED_FIFO), as this process could \
                         raise itself; a daemon started under other limits says in its log if it cannot"
                    ),
                    Some(why) => println!(
                        "  agentmon's BPF map calls: at an ordinary priority ({why}): a process that preempts \
                         one runs its syscalls past agentmon's programs, each then a loss record"
                    ),
                }
            }
            println!("enforcement layers:");
            for l in layers.describe() {
                println!("  {l}");
            }
            Ok(0)
        }
    }
}

/// `req` to the agentmon at `socket`, or to every live one here.
async fn ask(socket: Option<PathBuf>, req: &ctl::Request) -> Vec<(PathBuf, Result<ctl::Reply, String>)> {
    match socket {
        Some(s) => {
            let r = ctl::call(&s, req).await;
            vec![(s, r)]
        }
        None => ctl::each(req).await,
    }
}

fn contain(
    rt: &tokio::runtime::Runtime,
    a: ContainArgs,
    req: impl FnOnce(String) -> ctl::Request,
) -> anyhow::Result<i32> {
    answered(rt.block_on(ctl::contain(a.socket.as_deref(), &req(a.task))), |r| {
        println!("{}", r.message.as_deref().unwrap_or_default())
    })
}

/// The exit status for a control reply: 0 (after `ok`) when done, 1 with the reason
/// on stderr when refused or unreachable.
fn answered(r: Result<ctl::Reply, String>, ok: impl FnOnce(&ctl::Reply)) -> anyhow::Result<i32> {
    match r {
        Ok(r) if r.ok => {
            ok(&r);
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
