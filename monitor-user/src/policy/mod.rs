//! The policy engine: events and tasks in, verdicts out. Pure — no I/O, no clock:
//! the caller passes the time and the process context — so it is tested hard and
//! replayed exactly (a recorded event judged again gives the same verdict).
//!
//! A verdict combines two judges: the task's scope ([`scope`]) and the host's rules
//! ([`rules`]). The stronger result wins: `violation` > `out_of_scope` >
//! `needs_approval` > `in_scope`, and every reason that contributed is kept.

pub mod check;
pub mod engine;
pub mod examples;
pub mod inline;
pub mod limits;
pub mod rules;
pub mod scope;
pub mod shipped;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use engine::{Ctx, Engine, Windows};
pub use rules::{Rule, RuleError, RuleSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    InScope,
    NeedsApproval,
    OutOfScope,
    Violation,
    /// An enforcement layer stopped it (the call failed with EACCES/EPERM).
    Denied,
}

impl VerdictKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictKind::InScope => "in_scope",
            VerdictKind::NeedsApproval => "needs_approval",
            VerdictKind::OutOfScope => "out_of_scope",
            VerdictKind::Violation => "violation",
            VerdictKind::Denied => "denied",
        }
    }
}

/// What should happen. Observe mode records it; the enforcement layers act on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    #[default]
    None,
    Alert,
    /// Alert, and have the broker revoke the task's credentials (on NATS), the task
    /// left running: for findings that should cut access without stopping work.
    Revoke,
    RequireApproval,
    Deny,
    Freeze,
    Kill,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::None => "none",
            Action::Alert => "alert",
            Action::Revoke => "revoke",
            Action::RequireApproval => "require_approval",
            Action::Deny => "deny",
            Action::Freeze => "freeze",
            Action::Kill => "kill",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "alert" => Action::Alert,
            "revoke" => Action::Revoke,
            "require_approval" => Action::RequireApproval,
            "deny" => Action::Deny,
            "freeze" => Action::Freeze,
            "kill" => Action::Kill,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        Some(match s {
            "info" => Severity::Info,
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => return None,
        })
    }
}

/// Why a verdict was reached: a rule, or a clause of the task's scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    pub verdict: VerdictKind,
    pub action: Action,
    pub severity: Severity,
    /// Rule id, when a rule decided.
    pub rule: Option<String>,
    /// Scope clause (`scope.write`, `mode`, `expires`, `approval_required`), when the task's scope decided.
    pub clause: Option<&'static str>,
    pub message: String,
    /// A rate rule's match inside a burst already reported (the n-th since): no
    /// alert of its own. 0 otherwise.
    pub burst: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub verdict: VerdictKind,
    pub action: Action,
    pub severity: Severity,
    /// Strongest first.
    pub reasons: Vec<Reason>,
}

impl Verdict {
    pub const IN_SCOPE: Verdict = Verdict {
        verdict: VerdictKind::InScope,
        action: Action::None,
        severity: Severity::Info,
        reasons: Vec::new(),
    };

    /// Adds a reason; the verdict, action and severity become the strongest seen.
    pub fn add(&mut self, r: Reason) {
        self.verdict = self.verdict.max(r.verdict);
        self.action = self.action.max(r.action);
        self.severity = self.severity.max(r.severity);
        let at = self.reasons.iter().position(|x| (x.verdict, x.severity) < (r.verdict, r.severity));
        match at {
            Some(i) => self.reasons.insert(i, r),
            None => self.reasons.push(r),
        }
    }

    /// Worth an alert record: outside the task, a rule hit, or waiting for approval
    /// — unless all it says is that a burst already reported goes on.
    pub fn alerts(&self) -> bool {
        if !self.reasons.is_empty() && self.reasons.iter().all(|r| r.burst > 0) {
            return false;
        }
        self.verdict != VerdictKind::InScope || self.action >= Action::Alert
    }
}
