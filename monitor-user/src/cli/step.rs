//! `agentmon step begin|end`: agent hooks announce the tool call that is running, so
//! every side effect until `end` is tied to it; `agentmon step prompt`: the prompt
//! the next calls serve.

use std::{io::Read, path::PathBuf};

use crate::ctl::{self, CTL_ENV, Request, StepPhase, TASK_ENV};

/// What is announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StepOp {
    /// A tool call begins (`--tool`, `--call-id`).
    Begin,
    /// A tool call ended.
    End,
    /// The prompt the next tool calls serve (`--text`, a hook's input, or stdin).
    Prompt,
}

#[derive(Debug, clap::Args)]
pub struct StepArgs {
    #[arg(value_enum)]
    pub phase: StepOp,
    /// The task (default: $AGENTMON_TASK, set for a task's processes).
    #[arg(long, value_name = "ID", env = TASK_ENV)]
    pub task: Option<String>,
    /// The tool's name (e.g. Bash, Write, an MCP tool).
    #[arg(long, value_name = "NAME")]
    pub tool: Option<String>,
    /// The tool call's id (e.g. Claude Code's tool_use_id, an MCP request id).
    #[arg(long, value_name = "ID")]
    pub call_id: Option<String>,
    /// `prompt`: its text (else a hook's input with --claude-hook, else stdin).
    #[arg(long, value_name = "TEXT")]
    pub text: Option<String>,
    /// W3C trace context of the call (default: $TRACEPARENT).
    #[arg(long, value_name = "TP", env = "TRACEPARENT")]
    pub traceparent: Option<String>,
    /// Read the tool and call id (or, for `prompt`, the prompt) from a Claude Code
    /// hook's JSON input on stdin (`tool_name`, `tool_use_id`; `prompt`).
    #[arg(long)]
    pub claude_hook: bool,
    /// Control socket (default: $AGENTMON_CTL inside a task, else every agentmon here).
    #[arg(long, value_name = "PATH", env = CTL_ENV)]
    pub socket: Option<PathBuf>,
}

/// String fields of a Claude Code hook's input.
fn from_hook<const N: usize>(input: &str, keys: [&str; N]) -> anyhow::Result<[String; N]> {
    let v: serde_json::Value =
        serde_json::from_str(input).map_err(|e| anyhow::anyhow!("hook input on stdin is not JSON: {e}"))?;
    let mut out = [const { String::new() }; N];
    for (o, k) in out.iter_mut().zip(keys) {
        *o = v
            .get(k)
            .and_then(|x| x.as_str())
            .map(String::from)
            .ok_or_else(|| anyhow::anyhow!("hook input has no string field {k:?}"))?;
    }
    Ok(out)
}

/// Standard input, up to `max` bytes (a hook's input, a prompt's text).
fn stdin(max: u64) -> anyhow::Result<String> {
    let mut input = String::new();
    std::io::stdin().take(max).read_to_string(&mut input)?;
    Ok(input)
}

pub fn run(rt: &tokio::runtime::Runtime, a: StepArgs) -> anyhow::Result<i32> {
    let req = match a.phase {
        StepOp::Prompt => {
            let text = match (a.text, a.claude_hook) {
                (Some(t), _) => t,
                (None, true) => {
                    let [p] = from_hook(&stdin(16 << 20)?, ["prompt"])?;
                    p
                }
                (None, false) => stdin(16 << 20)?,
            };
            // A prompt longer than a request carries: its first part, and its length.
            let (text, cut) = crate::prompt::cut(&text, crate::prompt::MAX_PROMPT_BYTES);
            Request::Prompt { task: a.task, text: text.to_string(), cut }
        }
        StepOp::Begin | StepOp::End => {
            let (tool, call_id) = if a.claude_hook {
                let [t, c] = from_hook(&stdin(1 << 20)?, ["tool_name", "tool_use_id"])?;
                (a.tool.unwrap_or(t), a.call_id.unwrap_or(c))
            } else {
                match (a.tool, a.call_id) {
                    (Some(t), Some(c)) => (t, c),
                    _ => anyhow::bail!("step begin and end need --tool and --call-id (or --claude-hook)"),
                }
            };
            let phase = if a.phase == StepOp::Begin { StepPhase::Begin } else { StepPhase::End };
            Request::Step { phase, task: a.task, tool, call_id, traceparent: a.traceparent }
        }
    };
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
        let [t, c] = super::from_hook(input, ["tool_name", "tool_use_id"]).unwrap();
        assert_eq!((t.as_str(), c.as_str()), ("Bash", "toolu_01"));
        let keys = ["tool_name", "tool_use_id"];
        assert!(
            super::from_hook(r#"{"tool_name":"Bash"}"#, keys)
                .unwrap_err()
                .to_string()
                .contains("tool_use_id")
        );
        assert!(super::from_hook("nope", keys).is_err());
        let prompt = r#"{"session_id":"s","hook_event_name":"UserPromptSubmit","prompt":"fix the bug"}"#;
        assert_eq!(super::from_hook(prompt, ["prompt"]).unwrap(), ["fix the bug".to_string()]);
    }
}
