//! The timeline (`table`) and JSON-lines renderings, and the one-line summaries of an
//! event the other views share.

use std::{collections::HashMap, fmt::Write as _, io::Write};

use crate::event::{Alert, Dst, Event, Kind, Timestamp};

/// `2026-11-28 15:31:39.607` (UTC).
pub fn datetime(ts: Timestamp) -> String {
    let s = ts.to_string();
    format!("{} {}", &s[..10], &s[11..23])
}

/// `15:31:39.607` (UTC).
pub fn time_of_day(ts: Timestamp) -> String {
    ts.to_string()[11..23].to_string()
}

/// An argument as a shell would need it: quoted when it is empty or has spaces or quotes.
fn quote(a: &str) -> String {
    if a.is_empty() || a.chars().any(|c| c.is_whitespace() || "\"'\\$`".contains(c)) {
        format!("{a:?}")
    } else {
        a.to_string()
    }
}

pub fn dst(d: &Dst) -> String {
    match d {
        Dst::Ip { ip, port } if ip.contains(':') => format!("[{ip}]:{port}"),
        Dst::Ip { ip, port } => format!("{ip}:{port}"),
        Dst::Unix { unix } => unix.clone(),
    }
}

fn detail(e: &Event, key: &str) -> Option<String> {
    e.detail.get(key).map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
}

/// What an event acted on, in a few words: the path (`path -> new_path`), the
/// destination, the command line, the exit status, ...
pub fn what(e: &Event) -> String {
    let path = || e.path.clone().unwrap_or_default();
    let mut s = match e.kind {
        Kind::Exec | Kind::MemfdExec => match &e.argv {
            Some(a) if !a.is_empty() => a.iter().map(|x| quote(x)).collect::<Vec<_>>().join(" "),
            _ => e.path.clone().or_else(|| e.exe.as_deref().map(str::to_string)).unwrap_or_default(),
        },
        Kind::Fork => match e.ppid {
            Some(p) => format!("child of {p}"),
            None => "new process".into(),
        },
        Kind::Exit => match (&e.signal, e.status) {
            (Some(sig), _) => format!("killed by {sig}"),
            (None, Some(st)) => format!("status {st}"),
            (None, None) => String::new(),
        },
        Kind::FileRename | Kind::FileLink => {
            format!("{} -> {}", path(), e.new_path.as_deref().unwrap_or("?"))
        }
        Kind::Connect | Kind::Send | Kind::Bind | Kind::Listen => {
            let mut s = e.dst.as_ref().map(dst).unwrap_or_else(|| "?".into());
            if let Some(p) = &e.proto {
                let _ = write!(s, " ({p})");
            }
            s
        }
        Kind::Loss => e.lost.iter().flatten().map(|(k, n)| format!("{k}={n}")).collect::<Vec<_>>().join(" "),
        Kind::Action => {
            let mut s = e.action.as_deref().unwrap_or("?").to_string();
            if let Some(by) = detail(e, "by") {
                let _ = write!(s, " by {by}");
            }
            s
        }
        Kind::ApprovalRequest | Kind::Approval => {
            let mut s = format!("{} {}", e.syscall.as_deref().unwrap_or("?"), path());
            if let Some(d) = detail(e, "decision") {
                let _ = write!(s, ": {d}");
            }
            s
        }
        Kind::Ptrace => format!(
            "{} pid {}",
            detail(e, "request").unwrap_or_default(),
            detail(e, "target_pid").unwrap_or_default()
        ),
        Kind::Bpf => detail(e, "cmd").unwrap_or_default(),
        Kind::Step => match &e.step {
            Some(st) => format!("step {} {} {}", detail(e, "phase").unwrap_or_default(), st.tool, st.call_id),
            // A prompt: its text if kept, else its hash.
            None => match (detail(e, "prompt"), detail(e, "prompt_sha256")) {
                (Some(p), _) => {
                    let short: String = p.chars().take(120).collect();
                    format!("prompt {short:?}{}", if short.len() < p.len() { "…" } else { "" })
                }
                (None, Some(h)) => format!("prompt sha256:{}", h.get(..16).unwrap_or(&h)),
                (None, None) => "step".into(),
            },
        },
        Kind::TaskStart => {
            let mut s = format!("task {}", e.task.as_deref().unwrap_or("?"));
            for k in ["mode", "enforcement"] {
                if let Some(v) = detail(e, k) {
                    let _ = write!(s, " {k}={v}");
                }
            }
            s
        }
        Kind::TaskEnd => {
            format!("task {}: {}", e.task.as_deref().unwrap_or("?"), e.reason.as_deref().unwrap_or("ended"))
        }
        Kind::IoUring => {
            let mut s = e.flags.join(",");
            if let Some(op) = detail(e, "opcode") {
                let _ = write!(s, " {op}");
            }
            s
        }
        Kind::Privilege => {
            let args: Vec<String> = e.detail.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{} {}", e.syscall.as_deref().unwrap_or("?"), args.join(" "))
        }
        _ => path(),
    };
    if let Some(err) = &e.error {
        let _ = write!(s, " [{err}]");
    }
    // Data (a file name with a newline) never starts a row of its own.
    crate::sink::one_line(&s).into_owned()
}

/// Is this verdict one to point at? `!` out of scope, a violation, or denied; `?`
/// waiting for approval; ` ` otherwise.
pub fn mark(verdict: Option<&str>) -> char {
    match verdict {
        Some("violation" | "out_of_scope" | "denied") => '!',
        Some("needs_approval") => '?',
        _ => ' ',
    }
}

/// `violation/kill`, `in_scope`, or `-` when the event was not judged.
pub fn verdict(e: &Event) -> String {
    match (e.verdict.as_deref(), e.action.as_deref()) {
        (None, _) => "-".into(),
        (Some(v), None | Some("none")) => v.into(),
        (Some(v), Some(a)) => format!("{v}/{a}"),
    }
}

/// Alert severity by event id.
pub fn severities<'a>(alerts: &[&'a Alert]) -> HashMap<uuid::Uuid, &'a str> {
    alerts.iter().map(|a| (a.event.id, &*a.severity)).collect()
}

/// One JSON event per line.
pub fn json(events: &[&Event], out: &mut dyn Write) -> std::io::Result<()> {
    for e in events {
        serde_json::to_writer(&mut *out, e)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// The timeline: aligned columns, one line per event, then a summary line.
pub fn table(events: &[&Event], alerts: &[&Alert], out: &mut dyn Write) -> std::io::Result<()> {
    let multi_task = super::tasks_of(events.iter().copied()).len() > 1;
    // Which tool call each side effect came from, when the agent announced them.
    let stepped = events.iter().any(|e| e.step.is_some());
    let sev = severities(alerts);
    let mut head = vec!["TIME", "KIND", "PID", "COMM"];
    if multi_task {
        head.push("TASK");
    }
    if stepped {
        head.push("STEP");
    }
    head.extend(["WHAT", "VERDICT", "RULE"]);
    if !sev.is_empty() {
        head.push("ALERT");
    }
    let mut rows: Vec<Vec<String>> = vec![head.iter().map(|s| s.to_string()).collect()];
    for e in events {
        // What the agent names (comm, its task's id, its tool calls) on one line.
        let one = |s: &str| crate::sink::one_line(s).into_owned();
        let mut r = vec![datetime(e.ts), e.kind.as_str().into(), e.pid.to_string(), one(&e.comm)];
        if multi_task {
            r.push(one(e.task.as_deref().unwrap_or("-")));
        }
        if stepped {
            r.push(
                e.step
                    .as_ref()
                    .map(|s| one(&format!("{}:{}", s.tool, s.call_id)))
                    .unwrap_or_else(|| "-".into()),
            );
        }
        r.extend([what(e), verdict(e), e.rule.clone().unwrap_or_else(|| "-".into())]);
        if !sev.is_empty() {
            r.push(sev.get(&e.id).map_or("", |s| *s).into());
        }
        rows.push(r);
    }
    let what_col = head.iter().position(|h| *h == "WHAT").unwrap_or(0);
    let mut widths = vec![0usize; head.len()];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    // A very long command line or path overflows its column rather than pushing every
    // other line's verdict off screen; nothing is cut.
    widths[what_col] = widths[what_col].min(72);
    for r in &rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                let pad = widths[i].saturating_sub(c.chars().count());
                let _ = write!(line, "{c}{:pad$}  ", "");
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    let flagged = events.iter().filter(|e| mark(e.verdict.as_deref()) != ' ').count();
    let mut summary = format!("{} events, {flagged} flagged, {} alerts", events.len(), alerts.len());
    if !alerts.is_empty() {
        let mut by: Vec<(&str, usize)> = Vec::new();
        for a in alerts {
            match by.iter_mut().find(|(s, _)| *s == &*a.severity) {
                Some((_, n)) => *n += 1,
                None => by.push((&a.severity, 1)),
            }
        }
        let parts: Vec<String> = by.iter().map(|(s, n)| format!("{n} {s}")).collect();
        let _ = write!(summary, " ({})", parts.join(", "));
    }
    writeln!(out, "{summary}")
}
