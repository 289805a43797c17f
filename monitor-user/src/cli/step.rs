//! `agentmon step begin|end`: agent hooks announce the tool call that is running, so
//! every side effect until `end` is tied to it.

use std::{io::Read, path::PathBuf};

use crate::ctl::{self, CTL_ENV, Request, StepPhase, TASK_ENV};

#[derive(Debug, clap::Args)]
pub struct StepArgs {
    #[arg(value_enum)]
    pub phase: StepPhase,
    /// The task (default: $AGENTMON_TASK, set for a task's processes).
    #[arg(long, value_name = "ID", env = TASK_ENV)]
    pub task: Option<String>,
    /// The tool's name (e.g. Bash, Write, an MCP tool).
    #[arg(long, value_name = "NAME", required_unless_present = "claude_hook")]
    pub tool: Option<String>,
    /// The tool call's id (e.g. Claude Code's tool_use_id, an MCP request id).
    #[arg(long, value_name = "ID", required_unless_present = "claude_hook")]
    pub call_id: Option<String>,
    /// W3C trace context of the call (default: $TRACEPARENT).
    #[arg(long, value_name = "TP", env = "TRACEPARENT")]
    pub traceparent: Option<String>,
    /// Read the tool and call id from a Claude Code hook's JSON input on stdin
    /// (`tool_name`, `tool_use_id`).
    #[arg(long)]
    pub claude_hook: bool,
    /// Control socket (default: $AGENTMON_CTL inside a task, else every agentmon here).
    #[arg(long, value_name = "PATH", env = CTL_ENV)]
    pub socket: Option<PathBuf>,
}

/// Tool name and call id from a Claude Code hook's input.
fn from_hook(input: &str) -> anyhow::Result<(String, String)> {
    let v: serde_json::Value =
        serde_json::from_str(input).map_err(|e| anyhow::anyhow!("hook input on stdin is not JSON: {e}"))?;
    let field = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .map(String::from)
            .ok_or_else(|| anyhow::anyhow!("hook input has no string field {k:?}"))
    };
    Ok((field("tool_name")?, field("tool_use_id")?))
}

pub fn run(rt: &tokio::runtime::Runtime, a: StepArgs) -> anyhow::Result<i32> {
    let (tool, call_id) = if a.claude_hook {
        let mut input = String::new();
        std::io::stdin().take(1 << 20).read_to_string(&mut input)?;
        let (t, c) = from_hook(&input)?;
        (a.tool.unwrap_or(t), a.call_id.unwrap_or(c))
    } else {
        (a.tool.unwrap_or_default(), a.call_id.unwrap_or_default())
    };
    let req = Request::Step { phase: a.phase, task: a.task, tool, call_id, traceparent: a.traceparent };
    let answer = match &a.socket {
        Some(s) => rt.block_on(ctl::call_from_task(s, &req)),
        None => rt.block_on(ctl::contain(None, &req)),
    };
    super::answered(answer, |_| {})
}

#[cfg(test)]
mod tests {
    #[test]
    fn claude_hook_input() {
        let input = r#"{"session_id":"s","hook_event_name":"PreToolUse","tool_name":"Bash","tool_input":{"command":"ls"},"tool_use_id":"toolu_01"}"#;
        let (t, c) = super::from_hook(input).unwrap();
        assert_eq!((t.as_str(), c.as_str()), ("Bash", "toolu_01"));
        assert!(super::from_hook(r#"{"tool_name":"Bash"}"#).unwrap_err().to_string().contains("tool_use_id"));
        assert!(super::from_hook("nope").is_err());
    }
}
