//! Tasks: the context an agent declares — who acts, for whom, in which mode, on
//! what — against which every side effect of its processes is judged.
//! The manifest format is documented in docs/tasks.md.

pub mod grant;
pub mod manifest;
pub mod scope;

use std::path::PathBuf;

use crate::event::{Kind, Timestamp};
use scope::{Endpoint, PathSet};

pub use manifest::{ManifestError, load, parse, parse_unresolved};

/// What a task may do at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// Look only: no writes, deletes or renames; execs only from scope.exec.
    Read,
    /// Write only under scope.propose_dir; no deletes.
    Propose,
    /// The scope applies; approval_required operations need approval.
    Execute,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Read => "read",
            Mode::Propose => "propose",
            Mode::Execute => "execute",
        }
    }
}

/// Operations a task can mark as needing explicit approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    Write,
    Create,
    Delete,
    Rename,
    Truncate,
    Chmod,
    Chown,
    Link,
    Mkdir,
    Exec,
    Connect,
}

impl Op {
    pub const NAMES: [&'static str; 11] = [
        "write", "create", "delete", "rename", "truncate", "chmod", "chown", "link", "mkdir", "exec",
        "connect",
    ];
    const ALL: [Op; 11] = [
        Op::Write,
        Op::Create,
        Op::Delete,
        Op::Rename,
        Op::Truncate,
        Op::Chmod,
        Op::Chown,
        Op::Link,
        Op::Mkdir,
        Op::Exec,
        Op::Connect,
    ];

    pub fn parse(s: &str) -> Option<Op> {
        Self::NAMES.iter().position(|n| *n == s).map(|i| Self::ALL[i])
    }

    pub fn as_str(self) -> &'static str {
        Self::NAMES[Self::ALL.iter().position(|o| *o == self).unwrap_or(0)]
    }

    /// The operation an event kind performs, if any.
    pub fn of(kind: Kind) -> Option<Op> {
        Some(match kind {
            Kind::FileWrite => Op::Write,
            Kind::FileCreate => Op::Create,
            Kind::FileDelete => Op::Delete,
            Kind::FileRename => Op::Rename,
            Kind::FileTruncate => Op::Truncate,
            Kind::FileChmod => Op::Chmod,
            Kind::FileChown => Op::Chown,
            Kind::FileLink => Op::Link,
            Kind::DirCreate => Op::Mkdir,
            Kind::Exec | Kind::MemfdExec => Op::Exec,
            Kind::Connect | Kind::Send => Op::Connect,
            _ => return None,
        })
    }
}

/// What agentmon does to a task's processes when it can no longer hold the task to
/// its declaration: its expiry passed, or its record cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Record it (and, at expiry, end the task); the processes run on.
    Continue,
    /// Freeze the tree (kept for forensics; thawed when records can be written again).
    Freeze,
    /// Kill the tree.
    Kill,
}

impl Stop {
    pub const NAMES: [&'static str; 3] = ["continue", "freeze", "kill"];

    pub fn parse(s: &str) -> Option<Stop> {
        Some(match s {
            "continue" => Stop::Continue,
            "freeze" => Stop::Freeze,
            "kill" => Stop::Kill,
            _ => return None,
        })
    }
}

/// A task's impact thresholds (`limits:`): at most so much, in all, over the task
/// and its sub-tasks, then `on_exceed` (see `policy::limits`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub files_changed: Option<u64>,
    pub deletes: Option<u64>,
    pub processes: Option<u64>,
    pub connections: Option<u64>,
    pub destinations: Option<u64>,
    pub on_exceed: crate::policy::Action,
}

/// A validated, compiled task.
#[derive(Debug, Clone)]
pub struct Task {
    pub id: String,
    /// Enforce the scope in the kernel (`enforcement: enforce`), not only judge it.
    pub enforce: bool,
    /// SPIFFE id of the agent.
    pub agent: Option<String>,
    /// The human or service the agent acts for.
    pub principal: Option<String>,
    /// What the principal asked for (the prompt that started the task).
    pub prompt: Option<String>,
    /// Who granted the task (a verified grant), where grants are required.
    pub granted: Option<grant::Granted>,
    pub mode: Mode,
    pub expires: Option<Timestamp>,
    /// At expiry (None: the host's choice; see runner::setup).
    pub on_expiry: Option<Stop>,
    /// When an output agentmon records to fails (a full disk); see
    /// [`Task::output_failure`].
    pub on_output_failure: Option<Stop>,
    pub read: PathSet,
    pub write: PathSet,
    pub delete: PathSet,
    pub exec: PathSet,
    pub connect: Vec<Endpoint>,
    pub listen: Vec<Endpoint>,
    pub propose_dir: Option<PathBuf>,
    pub approval: Vec<Op>,
    /// `sensitive_reads: deny`: when enforced, reads of the sensitive set outside
    /// `read` are refused (not only judged).
    pub deny_sensitive_reads: bool,
    /// Credentials issued for the task (opaque ids), revoked by a broker when it
    /// ends or is stopped (the NATS revoke message names them).
    pub credentials: Vec<String>,
    /// Ids of the tasks this one was delegated from here, nearest first.
    pub parents: Vec<String>,
    /// Ids of the tasks up its grant's chain, on other hosts, nearest first: after
    /// `parents` in its events' `task_chain`, never counted as local tasks.
    pub remote_parents: Vec<String>,
    /// Delegated from a task that runs on a grant (its authority is that grant's).
    pub under_grant: bool,
    /// Impact thresholds.
    pub limits: Option<Limits>,
    /// The manifest it came from, and the SHA-256 of its text (hex): what a grant
    /// covers, recorded whether or not the task has one.
    pub source: PathBuf,
    pub manifest_sha256: String,
}

impl Task {
    /// Where this task, enforced, may write (its write and delete scopes in mode
    /// execute, beneath its propose_dir in mode propose, nowhere in mode read, as
    /// the enforcement layers grant): the directories each grant starts from, by
    /// clause (a pattern's fixed prefix).
    pub fn write_roots(&self) -> Vec<(&'static str, PathBuf)> {
        let prefix = |p: &String| {
            let d = PathBuf::from(scope::literal_prefix(p));
            if d.as_os_str().is_empty() { PathBuf::from("/") } else { d }
        };
        match self.mode {
            Mode::Read => Vec::new(),
            Mode::Propose => self.propose_dir.iter().map(|d| ("scope.propose_dir", d.clone())).collect(),
            Mode::Execute => {
                let w = self.write.patterns.iter().map(|p| ("scope.write", prefix(p)));
                w.chain(self.delete.patterns.iter().map(|p| ("scope.delete", prefix(p)))).collect()
            }
        }
    }

    /// The clause by which this task, enforced, may write `p` or something beneath
    /// it (see [`Task::write_roots`]), judged from its patterns.
    pub fn writes_reach(&self, p: &std::path::Path) -> Option<&'static str> {
        match self.mode {
            Mode::Read => None,
            Mode::Propose => self
                .propose_dir
                .as_ref()
                .filter(|d| p.starts_with(d) || d.starts_with(p))
                .map(|_| "scope.propose_dir"),
            Mode::Execute if self.write.reaches(p) => Some("scope.write"),
            Mode::Execute if self.delete.reaches(p) => Some("scope.delete"),
            Mode::Execute => None,
        }
    }

    /// Is `child` within this task (delegation)? The mode may only narrow, every
    /// path and endpoint must be covered, the expiry may not be later, and every
    /// approval required here stays required. Returns what is not covered.
    pub fn contains(&self, child: &Task) -> Result<(), String> {
        if child.mode > self.mode {
            return Err(format!(
                "mode {} is wider than the parent's {}",
                child.mode.as_str(),
                self.mode.as_str()
            ));
        }
        for (name, mine, theirs) in [
            ("read", &self.read, &child.read),
            ("write", &self.write, &child.write),
            ("delete", &self.delete, &child.delete),
            ("exec", &self.exec, &child.exec),
        ] {
            mine.covers_all(theirs)
                .map_err(|p| format!("scope.{name} {p:?} is not within the parent's scope.{name}"))?;
        }
        for (name, mine, theirs) in
            [("connect", &self.connect, &child.connect), ("listen", &self.listen, &child.listen)]
        {
            for ep in theirs {
                if !mine.iter().any(|m| m.covers(ep)) {
                    let ep = ep.to_string();
                    return Err(format!("scope.{name} {ep:?} is not within the parent's scope.{name}"));
                }
            }
        }
        if let Some(pd) = &child.propose_dir
            && !self.write.matches(&pd.to_string_lossy())
            && self.propose_dir.as_ref().is_none_or(|p| !pd.starts_with(p))
        {
            return Err(format!("scope.propose_dir {} is outside what the parent may write", pd.display()));
        }
        match (self.expires, child.expires) {
            (Some(p), Some(c)) if c > p => return Err("expires after the parent task".into()),
            (Some(_), None) => return Err("must expire no later than the parent task".into()),
            _ => {}
        }
        for op in &self.approval {
            if !child.approval.contains(op) {
                return Err(format!("drops approval_required {}", op.as_str()));
            }
        }
        // Its revoke and kill messages name its agent and principal, and its
        // credentials: none of them is the agent's to choose (a broker would cut
        // another identity's access, or the parent's own).
        for (name, mine, theirs) in
            [("agent", &self.agent, &child.agent), ("principal", &self.principal, &child.principal)]
        {
            if let Some(t) = theirs
                && theirs != mine
            {
                let parents = mine.as_deref().map_or("none".to_string(), |m| format!("{m:?}"));
                return Err(format!("{name} {t:?} is not the parent's ({parents})"));
            }
        }
        if let Some(c) = child.credentials.first() {
            return Err(format!(
                "credentials {c:?}: a sub-task names none (its parent's are revoked at the parent's end)"
            ));
        }
        Ok(())
    }

    /// What a sub-task takes from the task it is delegated from (checked with
    /// [`Task::contains`]): inside an enforced task everything is enforced (the
    /// parent's sandbox is inherited anyway), sensitive reads refused if the parent
    /// refuses them, its agent and principal (contains() refused any other), and the
    /// chain of parents.
    pub fn inherit(&mut self, parent: &Task) {
        self.enforce |= parent.enforce;
        self.deny_sensitive_reads |= parent.deny_sensitive_reads;
        self.agent.clone_from(&parent.agent);
        self.principal.clone_from(&parent.principal);
        self.parents = std::iter::once(parent.id.clone()).chain(parent.parents.iter().cloned()).collect();
        self.remote_parents.clone_from(&parent.remote_parents);
        self.under_grant = parent.granted.is_some() || parent.under_grant;
    }

    /// The grant it starts under, and what its ancestors on other hosts pass on.
    pub fn take_grant(&mut self, g: Option<grant::Granted>) {
        if let Some(g) = &g {
            g.apply(self);
        }
        self.granted = g;
    }

    /// What an output failure does to the task: as declared, else freeze under
    /// enforcement (fail closed) and continue when observing.
    pub fn output_failure(&self) -> Stop {
        self.on_output_failure.unwrap_or(if self.enforce { Stop::Freeze } else { Stop::Continue })
    }

    /// What the expiry does to the task, as declared (None: the host's choice). An
    /// enforced task never runs on past it: the layers granted to its running
    /// processes cannot be taken back, so `continue` is a freeze for it.
    pub fn expiry_stop(&self) -> Option<Stop> {
        match self.on_expiry {
            Some(Stop::Continue) if self.enforce => Some(Stop::Freeze),
            s => s,
        }
    }

    /// Why a new start of this task is refused for its `on_expiry`, if it is.
    pub fn refused_expiry(&self) -> Option<&'static str> {
        (self.enforce && self.on_expiry == Some(Stop::Continue)).then_some(
            "\"continue\" is for observed tasks: an enforced task stops at its expiry (freeze or kill)",
        )
    }

    pub fn expired(&self, at: Timestamp) -> bool {
        self.expires.is_some_and(|e| at > e)
    }
}

#[cfg(test)]
mod tests;
