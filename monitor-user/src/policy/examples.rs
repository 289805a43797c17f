//! Rule examples: small event descriptions in the rule file that must (or must not)
//! match. `agentmon rules check` runs every one; so does the test suite.

use std::sync::Arc;

use serde::Deserialize;

use super::{RuleSet, engine::Windows, rules::parse_kind};
use crate::event::{Dst, Event, Kind, Timestamp};

/// An example event: only `kind` is required.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExample {
    pub kind: String,
    pub path: Option<String>,
    pub new_path: Option<String>,
    pub exe: Option<String>,
    pub comm: Option<String>,
    #[serde(default)]
    pub argv: Vec<String>,
    /// `IP:PORT`, `[IPv6]:PORT` or `unix:/path`.
    pub dst: Option<String>,
    #[serde(default)]
    pub flags: Vec<String>,
    pub parent_exe: Option<String>,
    #[serde(default)]
    pub parent_is_root: bool,
    /// Whether the task's scope judged the event out of scope.
    #[serde(default)]
    pub outside_scope: bool,
    /// Feed the event this many times (for rate rules).
    pub repeat: Option<u32>,
}

/// What the matcher sees besides the event.
#[derive(Debug, Clone, Default)]
pub struct ExampleCtx {
    pub parent_exe: Option<String>,
    pub parent_is_root: bool,
    pub outside_scope: bool,
}

fn parse_dst(s: &str) -> Result<Dst, String> {
    if let Some(p) = s.strip_prefix("unix:") {
        return Ok(Dst::Unix { unix: p.to_string() });
    }
    let sa: std::net::SocketAddr =
        s.parse().map_err(|_| format!("dst {s:?} is not IP:PORT or unix:/path"))?;
    Ok(Dst::Ip { ip: sa.ip().to_string(), port: sa.port() })
}

impl RawExample {
    pub fn to_event(&self) -> Result<(Event, ExampleCtx), String> {
        let kind: Kind =
            parse_kind(&self.kind).ok_or_else(|| format!("unknown event kind {:?}", self.kind))?;
        let mut ev = Event::new(kind, Timestamp(0), Arc::from("example"));
        ev.pid = 100;
        ev.tid = 100;
        ev.comm = self.comm.clone().unwrap_or_else(|| "agent".into());
        ev.exe = self.exe.as_deref().map(Arc::from);
        ev.path = self.path.clone();
        ev.new_path = self.new_path.clone();
        ev.argv = (!self.argv.is_empty()).then(|| self.argv.clone());
        ev.dst = self.dst.as_deref().map(parse_dst).transpose()?;
        ev.flags = self.flags.iter().map(|f| f.clone().into()).collect();
        let cx = ExampleCtx {
            parent_exe: self.parent_exe.clone(),
            parent_is_root: self.parent_is_root,
            outside_scope: self.outside_scope,
        };
        Ok((ev, cx))
    }
}

/// A failed example: `file:line: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExampleFailure {
    pub file: String,
    pub line: u64,
    pub msg: String,
}

impl std::fmt::Display for ExampleFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.msg)
    }
}

/// Runs every rule's examples against that rule alone.
pub fn check(set: &RuleSet) -> Vec<ExampleFailure> {
    let mut out = Vec::new();
    for rule in &set.rules {
        for (want, line, ex) in &rule.examples {
            let fail =
                |msg: String| ExampleFailure { file: rule.file.display().to_string(), line: *line, msg };
            let (ev, cx) = match ex.to_event() {
                Ok(x) => x,
                Err(e) => {
                    out.push(fail(format!("rule {}: example: {e}", rule.id)));
                    continue;
                }
            };
            let mut win = Windows::default();
            let mut hit = false;
            for i in 0..ex.repeat.unwrap_or(1).max(1) {
                let mut ev = ev.clone();
                ev.ts = Timestamp(i as i128 * 1_000_000);
                hit = super::engine::rule_matches(rule, 0, &ev, &cx, None, &mut win).is_some();
            }
            if hit != *want {
                let what = if *want { "should match but does not" } else { "should not match but does" };
                out.push(fail(format!("rule {}: example {what}", rule.id)));
            }
        }
    }
    out
}
