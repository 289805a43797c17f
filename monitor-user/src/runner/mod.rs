//! The runtime and its two deployments. `agentmon exec` ([`exec`]) is the runtime
//! with one launched task; `agentmon daemon` ([`daemon`]) serves every task of the
//! host. Both run [`runtime::Runtime`]'s one loop over one [`engine::Engine`].
//!
//! Inside a task already watched by another agentmon (`AGENTMON_CTL` set), `exec
//! --task` instead asks that agentmon to bind the command to the sub-task
//! (delegation, see [`crate::ctl`]) and only launches and waits; with a daemon, it
//! registers the command with the daemon.

mod alarms;
mod callers;
mod daemon;
mod engine;
mod enroll;
mod exec;
mod fdtable;
mod finish;
mod hosts;
mod keeper;
mod outputs;
mod pipeline;
mod prepared;
mod pressure;
mod refusals;
mod resume;
mod runtime;
pub mod select;
mod serve;
mod setup;
pub(crate) mod standing;
mod subtask;
mod tasklog;
mod tasks;
mod watchdog;

use std::path::PathBuf;

pub use daemon::{DaemonOptions, daemon};
pub use exec::{ExecOptions, exec};
pub use outputs::{AuditOptions, Outputs};
pub use pipeline::Pipeline;
pub use setup::{LSM_LINGER, OnExpiry};
pub use subtask::DELEGATION_LOOKUPS;

use crate::{
    launch::LaunchError,
    policy::{RuleSet, check, shipped},
    sensitive::SensitiveSet,
};

/// Task cookie of the first task bound; later ones get the next ones.
pub const EXEC_TASK: u32 = 1;

/// Where the rules come from.
#[derive(Debug, Clone)]
pub enum RulesChoice {
    /// The baseline built into the binary (rules/ of the source tree).
    Shipped,
    /// A directory, reloaded when it changes.
    Dir(PathBuf),
    /// No rules: only the task's scope is judged (if there is a task).
    None,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Load(#[from] crate::kernel::loader::LoadError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("invalid rules:\n{}", .0.join("\n"))]
    Rules(Vec<String>),
    #[error("delegation refused: {0}")]
    Delegation(String),
    #[error(transparent)]
    Enforce(#[from] crate::enforce::EnforceError),
    #[error("the task's events file: {0}")]
    TaskLog(#[from] tasklog::TaskLogError),
    #[error("{0}")]
    Output(String),
    #[error("the daemon refused the task: {0}")]
    Daemon(String),
    #[error("cannot reach the daemon at {socket}: {why}; the command was not run")]
    Unreachable { socket: PathBuf, why: String },
    #[error(
        "the daemon accepted the task but could not take its approval gate ({0}; did it stop?): the command was \
         stopped, as its gated calls would have waited for an answer forever"
    )]
    GateLost(String),
}

impl RunError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Launch(e) => e.exit_code(),
            _ => 125,
        }
    }
}

/// The rules, checked as `agentmon rules check` checks them (examples included).
fn load_rules(choice: &RulesChoice, sensitive: &SensitiveSet) -> Result<Option<RuleSet>, RunError> {
    match choice {
        RulesChoice::Shipped => shipped::rules()
            .map(Some)
            .map_err(|e| RunError::Rules(e.iter().map(ToString::to_string).collect())),
        RulesChoice::Dir(d) => check::load(d, sensitive).map(Some).map_err(RunError::Rules),
        RulesChoice::None => Ok(None),
    }
}

/// The rules directory's watcher, when the rules come from one.
fn rules_watch(choice: &RulesChoice, sensitive: &SensitiveSet) -> Option<crate::judge::RulesWatch> {
    match choice {
        RulesChoice::Dir(d) => Some(crate::judge::RulesWatch::new(d, sensitive)),
        _ => None,
    }
}
