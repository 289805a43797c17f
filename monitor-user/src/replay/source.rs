//! Recordings on disk: agentmon's JSON-lines events files (events and alerts
//! interleaved) and audit chain files (`{"seq","prev","type","body","hash"}` records).
//! The format is told from the first line. The audit chain is read, not verified.

use std::{collections::HashSet, io::Read, path::Path};

use anyhow::{Context, anyhow, bail};
use serde_json::Value;

use crate::event::{ALERT_SCHEMA, Alert, Event, SCHEMA};

/// What a source holds: events (the timeline) and alerts (kept for display).
#[derive(Debug, Default)]
pub struct Recording {
    pub events: Vec<Event>,
    pub alerts: Vec<Alert>,
    /// Problems that did not stop the read (a torn last line, a gap in the chain).
    pub warnings: Vec<String>,
    /// Copies dropped by [`Recording::normalize`] (same id seen again).
    pub duplicates: usize,
}

impl Recording {
    /// Drops repeated ids (the first copy wins: redelivery, overlapping files) and puts
    /// the events in time order (stable: equal times keep their recorded order).
    pub fn normalize(&mut self) {
        let before = self.events.len() + self.alerts.len();
        let mut seen = HashSet::new();
        self.events.retain(|e| seen.insert(e.id));
        let mut seen = HashSet::new();
        self.alerts.retain(|a| seen.insert(a.id));
        self.duplicates += before - self.events.len() - self.alerts.len();
        self.events.sort_by_key(|e| e.ts);
        self.alerts.sort_by_key(|a| a.ts);
    }

    /// Adds one agentmon JSON object (an event or an alert) read from `line`.
    pub(super) fn push_json(&mut self, v: Value) -> anyhow::Result<()> {
        let schema = v.get("schema").and_then(Value::as_str).unwrap_or_default().to_string();
        let is_alert = schema == ALERT_SCHEMA || v.get("kind").and_then(Value::as_str) == Some("alert");
        if is_alert {
            self.alerts.push(serde_json::from_value(v).context("not a valid alert")?);
        } else if schema == SCHEMA {
            self.events.push(serde_json::from_value(v).context("not a valid event")?);
        } else if schema.is_empty() {
            bail!("not an agentmon event or alert (no \"schema\")");
        } else {
            bail!("schema {schema:?} is not {SCHEMA} or {ALERT_SCHEMA}");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// Events and alerts, one JSON object per line.
    Events,
    /// Audit chain records.
    Audit,
}

/// Reads a recording from `path` (`-`: stdin).
pub fn read_file(path: &str) -> anyhow::Result<Recording> {
    let mut data = Vec::new();
    if path == "-" {
        std::io::stdin().read_to_end(&mut data).context("reading stdin")?;
        return parse("<stdin>", &data);
    }
    let p = Path::new(path);
    data = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
    parse(path, &data)
}

/// Parses a recording's bytes; `name` is used in messages (`name:line: ...`).
pub fn parse(name: &str, data: &[u8]) -> anyhow::Result<Recording> {
    let mut rec = Recording::default();
    let mut format = None;
    let mut chain = Chain::default();
    let torn_tail = !data.is_empty() && !data.ends_with(b"\n");
    let lines: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    let last = lines.len() - 1;
    let mut blank = Vec::new();
    for (i, raw) in lines.iter().enumerate() {
        let line = raw.trim_ascii();
        if line.is_empty() {
            // The split's piece after a final newline is no line; any other blank is said.
            if i != last {
                blank.push(i + 1);
            }
            continue;
        }
        let lineno = i + 1;
        let res = serde_json::from_slice::<Value>(line).map_err(|e| anyhow!("{e}")).and_then(|v| {
            let f = *format.get_or_insert_with(|| detect(&v));
            match f {
                Format::Events => rec.push_json(v),
                Format::Audit => chain.record(v, &mut rec),
            }
        });
        match res {
            Ok(()) => {}
            Err(e) if i == last && torn_tail => rec.warnings.push(format!(
                "{name}:{lineno}: the last line is incomplete (no newline: was the writer cut off?) and was skipped: {e:#}"
            )),
            Err(e) => return Err(anyhow!("{name}:{lineno}: {e:#}")),
        }
    }
    for g in chain.gaps {
        rec.warnings.push(format!("{name}: audit chain: {g}"));
    }
    if !blank.is_empty() {
        let shown: Vec<String> = blank.iter().take(10).map(|n| n.to_string()).collect();
        rec.warnings.push(format!(
            "{name}: {} blank lines skipped (line {}{}): a writer does not leave them",
            blank.len(),
            shown.join(", "),
            if blank.len() > 10 { ", ..." } else { "" }
        ));
    }
    Ok(rec)
}

/// Audit chain records have a sequence number and a hash; anything else is an events file.
fn detect(first: &Value) -> Format {
    if first.get("seq").is_some() && first.get("hash").is_some() { Format::Audit } else { Format::Events }
}

/// Reading state of an audit chain.
#[derive(Default)]
struct Chain {
    last_seq: Option<u64>,
    gaps: Vec<String>,
}

impl Chain {
    /// One record: `event` and `alert` bodies are kept, the other types (task_start,
    /// task_end, step, checkpoint, ...) only advance the sequence.
    fn record(&mut self, v: Value, rec: &mut Recording) -> anyhow::Result<()> {
        let seq = v
            .get("seq")
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow!("audit record without a numeric \"seq\""))?;
        let ty =
            v.get("type").and_then(Value::as_str).ok_or_else(|| anyhow!("audit record without \"type\""))?;
        if let Some(prev) = self.last_seq
            && seq != prev + 1
        {
            self.gaps.push(format!("seq {seq} follows {prev} (records missing or out of order)"));
        }
        self.last_seq = Some(seq);
        let body = || v.get("body").cloned().ok_or_else(|| anyhow!("audit record {seq} has no \"body\""));
        match ty {
            "event" => rec.events.push(
                serde_json::from_value(body()?)
                    .with_context(|| format!("audit record {seq}: not a valid event"))?,
            ),
            "alert" => rec.alerts.push(
                serde_json::from_value(body()?)
                    .with_context(|| format!("audit record {seq}: not a valid alert"))?,
            ),
            _ => {}
        }
        Ok(())
    }
}
