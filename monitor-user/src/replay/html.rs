//! `--format html`: one self-contained file for a responder to look at — a timeline
//! per task with its tool calls as spans and what was flagged on them, the process
//! tree with every side effect under its process, filters by task, tool call, kind
//! and verdict, and the chain of any event (grant, task, step, approval) on click.
//!
//! The recording is the agent's own words (paths, command lines, names): it is
//! embedded as JSON data, never as markup — `<` is escaped inside it so that no
//! string can end the data block — and the script puts every value into the page as
//! text. The page's policy allows only its own script and style (by hash) and no
//! network at all, so a string that got through would still not run or call out.

use std::{collections::HashMap, io::Write};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{
    chain::Index,
    render::severities,
    tree::{Entry, Tree},
};
use crate::event::{Alert, Event, Timestamp};

const SCRIPT: &str = include_str!("report.js");
const STYLE: &str = include_str!("report.css");

/// A line of the process tree: an event (`e`, its index) or a process.
#[derive(Serialize)]
struct Line<'a> {
    d: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    e: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p: Option<Proc<'a>>,
}

#[derive(Serialize)]
struct Proc<'a> {
    pid: u32,
    comm: &'a str,
    exe: Option<&'a str>,
    task: Option<&'a str>,
    born: String,
    /// Its fork event's index.
    fork: Option<usize>,
}

#[derive(Serialize)]
struct Data<'a> {
    source: &'a str,
    /// The events shown, then the records their chains need from outside the
    /// filter (a task's start before `--since`): `shown` of them are shown.
    events: Vec<&'a Event>,
    shown: usize,
    /// Milliseconds of each event after the first shown.
    ms: Vec<f64>,
    /// What each event did, as the other formats say it (`render::what`).
    what: Vec<String>,
    /// Severity of the alert on an event, by its index.
    severity: HashMap<usize, &'a str>,
    lines: Vec<Line<'a>>,
    /// By event index: its chain, (role, index) outermost first.
    chains: HashMap<usize, Vec<(&'static str, usize)>>,
    /// The chain open at first (`--chain`).
    open: Option<usize>,
}

/// JSON that cannot end the `<script>` element it sits in, nor open a comment: every
/// `<`, `>` and `&` as a `\u` escape (valid in JSON strings, the only place they
/// can be), and the two line separators JavaScript once treated as line ends.
fn inert_json<T: Serialize>(v: &T) -> serde_json::Result<String> {
    let s = serde_json::to_string(v)?;
    let mut out = String::with_capacity(s.len() + s.len() / 16);
    for c in s.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn sha256_b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(s.as_bytes()))
}

/// Writes the report of `shown` (the filtered events, in time order), whose chains
/// are found in `all` (the whole recording).
pub fn write<'a>(
    source: &'a str,
    all: &'a [Event],
    shown: &[&'a Event],
    alerts: &[&Alert],
    open: Option<uuid::Uuid>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let ix = Index::new(all);
    let mut events: Vec<&Event> = shown.to_vec();
    let mut at: HashMap<uuid::Uuid, usize> = events.iter().enumerate().map(|(i, e)| (e.id, i)).collect();
    let mut chains = HashMap::new();
    for (i, e) in shown.iter().enumerate() {
        let Some(links) = ix.chain(e.id) else { continue };
        if links.len() < 2 {
            continue;
        }
        let mut c = Vec::with_capacity(links.len());
        for l in links {
            let j = match at.get(&l.event.id) {
                Some(&j) => j,
                None => {
                    events.push(l.event);
                    at.insert(l.event.id, events.len() - 1);
                    events.len() - 1
                }
            };
            c.push((l.role, j));
        }
        chains.insert(i, c);
    }
    let t0 = shown.first().map(|e| e.ts).unwrap_or(Timestamp(0));
    let ms = events.iter().map(|e| (e.ts.0 - t0.0) as f64 / 1e6).collect();
    let what = events.iter().map(|e| super::render::what(e)).collect();
    let sev = severities(alerts);
    let severity = shown.iter().enumerate().filter_map(|(i, e)| Some((i, *sev.get(&e.id)?))).collect();
    let tree = Tree::of(shown);
    let lines = tree
        .lines()
        .into_iter()
        .map(|(d, en)| match en {
            Entry::Ev(i) => Line { d, e: Some(i), p: None },
            // Not in these lines: the page shows each call as a span of its own.
            Entry::Step(_) => unreachable!("lines() has no step heads"),
            Entry::Proc(n) => {
                let node = &tree.nodes[n];
                Line {
                    d,
                    e: None,
                    p: Some(Proc {
                        pid: node.pid,
                        comm: &node.comm,
                        exe: node.exe.as_deref(),
                        task: tree.task_shown(n).map(|t| &**t),
                        born: node.born.to_string(),
                        fork: node.fork,
                    }),
                }
            }
        })
        .collect();
    let open = open.and_then(|id| at.get(&id).copied());
    let data = Data { source, events, shown: shown.len(), ms, what, severity, lines, chains, open };
    let json = inert_json(&data)?;
    write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; script-src 'sha256-{}'; \
         style-src 'sha256-{}'\">\n\
         <meta name=\"viewport\" content=\"width=device-width\">\n<title>agentmon replay</title>\n\
         <style>{STYLE}</style></head>\n<body>\n<noscript>This report is drawn by its script.</noscript>\n\
         <script type=\"application/json\" id=\"data\">{json}</script>\n<script>{SCRIPT}</script>\n</body></html>\n",
        sha256_b64(SCRIPT),
        sha256_b64(STYLE),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::Kind,
        replay::tests::{alert_for, ev, write_ev},
    };

    /// The recording is the agent's words: nothing in it becomes markup or script.
    #[test]
    fn the_agents_strings_stay_data() {
        let hostile =
            "/tmp/</script><script>window.pwned=1</script><!--<img src=x onerror=alert(1)>&amp;\u{2028}";
        let mut start = ev(Kind::TaskStart, 0, 1, "t1");
        start.detail.insert("prompt".into(), serde_json::json!("</SCRIPT ><script>x()</script>"));
        let mut exec = ev(Kind::Exec, 1, 2, "t1");
        exec.argv = Some(vec!["sh".into(), "-c".into(), "<img src=x onerror=alert(2)>".into()]);
        let mut w = write_ev(2, 2, hostile);
        w.verdict = Some("violation".into());
        let alert = alert_for(&w, "high");
        let all = vec![start, exec, w];
        let shown: Vec<&Event> = all.iter().collect();
        let mut out = Vec::new();
        write("events.jsonl", &all, &shown, &[&alert], Some(all[2].id), &mut out).unwrap();
        let page = String::from_utf8(out).unwrap();
        let lower = page.to_lowercase();
        assert_eq!(lower.matches("<script").count(), 2, "the data block and the report's own script");
        assert_eq!(lower.matches("</script").count(), 2);
        assert!(!lower.contains("<img") && !lower.contains("<!--"), "{page}");
        // The data block is the recording, exactly.
        let data = page.split("id=\"data\">").nth(1).unwrap().split("</script>").next().unwrap();
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["events"][2]["path"], hostile);
        assert_eq!(v["events"][0]["detail"]["prompt"], "</SCRIPT ><script>x()</script>");
        assert_eq!((v["shown"].as_u64(), v["open"].as_u64()), (Some(3), Some(2)));
        assert_eq!(v["severity"]["2"], "high");
        assert_eq!(v["chains"]["2"], serde_json::json!([["task", 0], ["event", 2]]));
        // The policy names the script that is there, and nothing can be fetched.
        let script = page.split("<script>").nth(1).unwrap().split("</script>").next().unwrap();
        assert_eq!(script, SCRIPT);
        assert!(page.contains(&format!("default-src 'none'; script-src 'sha256-{}'", sha256_b64(SCRIPT))));
    }

    /// A chain reaches records the filter left out (a task start before --since).
    #[test]
    fn a_chain_brings_its_links_from_outside_the_filter() {
        let start = ev(Kind::TaskStart, 0, 1, "t1");
        let w = write_ev(2, 5, "/x");
        let all = vec![start, w];
        let shown = vec![&all[1]];
        let mut out = Vec::new();
        write("f", &all, &shown, &[], None, &mut out).unwrap();
        let page = String::from_utf8(out).unwrap();
        let data = page.split("id=\"data\">").nth(1).unwrap().split("</script>").next().unwrap();
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["shown"], 1);
        assert_eq!(v["events"].as_array().unwrap().len(), 2);
        assert_eq!(v["events"][1]["kind"], "task_start");
        assert_eq!(v["chains"]["0"], serde_json::json!([["task", 1], ["event", 0]]));
    }
}
