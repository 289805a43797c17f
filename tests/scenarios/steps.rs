//! A scripted agent that announces its tool calls the way agent hooks do.

use std::{
    fs,
    io::Write,
    path::Path,
    process::{Command, Stdio},
};

fn step(agentmon: &str, args: &[&str], stdin: Option<&str>) -> Result<bool, String> {
    let mut c = Command::new(agentmon)
        .arg("step")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{agentmon}: {e}"))?;
    if let (Some(text), Some(mut i)) = (stdin, c.stdin.take()) {
        i.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
    }
    Ok(c.wait().map_err(|e| e.to_string())?.success())
}

/// args: AGENTMON. Writes out/a in step c1 (Write), records a prompt, then out/b and, from a forked child,
/// out/c in step c2 (Bash, with a traceparent, begun by a Claude Code hook input),
/// and deletes out/b in it,
/// out/after outside any step; a step for another task must be refused, and a 65th
/// step open at once.
pub fn steps(d: &Path, args: &[String]) -> Result<(), String> {
    let am = args.first().ok_or("steps AGENTMON")?.as_str();
    let out = d.join("out");
    fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let ok = |r: Result<bool, String>, what: &str| {
        r.and_then(|b| if b { Ok(()) } else { Err(format!("{what} failed")) })
    };
    ok(step(am, &["begin", "--tool", "Write", "--call-id", "c1"], None), "begin c1")?;
    fs::write(out.join("a"), "a").map_err(|e| e.to_string())?;
    ok(step(am, &["end", "--tool", "Write", "--call-id", "c1"], None), "end c1")?;
    // The prompt c2 serves, from a Claude Code UserPromptSubmit hook's input; a prompt
    // for another task must be refused.
    let prompt = r#"{"hook_event_name":"UserPromptSubmit","session_id":"s","prompt":"tidy up b"}"#;
    ok(step(am, &["prompt", "--claude-hook"], Some(prompt)), "prompt")?;
    if step(am, &["prompt", "--task", "someone-else", "--text", "x"], None)? {
        return Err("a prompt for another task was accepted".into());
    }
    let hook = r#"{"hook_event_name":"PreToolUse","tool_name":"Bash","tool_use_id":"c2","tool_input":{}}"#;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    ok(step(am, &["begin", "--claude-hook", "--traceparent", tp], Some(hook)), "begin c2")?;
    fs::write(out.join("b"), "b").map_err(|e| e.to_string())?;
    // SAFETY: the child only writes a file and exits.
    match unsafe { nix::unistd::fork() }.map_err(|e| e.to_string())? {
        nix::unistd::ForkResult::Child => {
            let code = if fs::write(out.join("c"), "c").is_ok() { 0 } else { 1 };
            std::process::exit(code);
        }
        nix::unistd::ForkResult::Parent { child } => {
            nix::sys::wait::waitpid(child, None).map_err(|e| e.to_string())?;
        }
    }
    // Held for approval when the task is enforced (and left to time out): the
    // request and the decision belong to step c2. Observed, it simply happens.
    let _ = fs::remove_file(out.join("b"));
    ok(step(am, &["end", "--tool", "Bash", "--call-id", "c2"], None), "end c2")?;
    fs::write(out.join("after"), "after").map_err(|e| e.to_string())?;
    if step(am, &["begin", "--task", "someone-else", "--tool", "X", "--call-id", "c3"], None)? {
        return Err("a step for another task was accepted".into());
    }
    if step(am, &["begin", "--tool", "X", "--call-id", "c4", "--traceparent", "garbage"], None)? {
        return Err("a malformed traceparent was accepted".into());
    }
    // Steps begun and never ended: 64 may be open at once, the next is refused.
    for i in 0..64 {
        ok(step(am, &["begin", "--tool", "X", "--call-id", &format!("open{i}")], None), "an open step")?;
    }
    if step(am, &["begin", "--tool", "X", "--call-id", "open64"], None)? {
        return Err("a 65th open step was accepted".into());
    }
    Ok(())
}
