//! Event sinks. Every sink takes the same events; adding one touches this module.

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use crate::event::{Alert, Event};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot open event file {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("writing events to {name}: {source}")]
    Write { name: String, source: io::Error },
}

pub trait Sink: Send {
    /// What the output is, for loss records (`/var/log/agentmon/events.jsonl`, `nats`).
    fn name(&self) -> String;
    fn send(&mut self, ev: &Event) -> Result<(), SinkError>;
    fn alert(&mut self, a: &Alert) -> Result<(), SinkError>;
    fn flush(&mut self) -> Result<(), SinkError>;
    /// The end of a batch of events read together: a cheap hand-over (not a
    /// durable flush) for sinks that others wait on.
    fn batch_end(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    /// Records the sink took (answered Ok) and later had to drop, since the last
    /// call: a buffer that could never be written. Counted as lost by the fan-out.
    fn lost(&mut self) -> u64 {
        0
    }
    /// Events the sink raised about itself (a full spool), for the other sinks.
    fn alarms(&mut self) -> Vec<Event> {
        Vec::new()
    }
    /// The incomplete last line cut from the sink's file when it was opened (once).
    fn torn(&mut self) -> Option<crate::torn::TornTail> {
        None
    }
    /// Flushes for good (at exit): what is not delivered must be kept durably.
    fn close(&mut self) -> Result<(), SinkError> {
        self.flush()
    }
}

/// Every configured output; each event goes to all of them in the same order.
///
/// An output that fails (a full disk, a closed pipe) never stops the others nor the
/// runtime: what it could not take is counted, and [`Fanout::reports`] turns the
/// counts into `loss` events naming the output, for every output still writing.
/// When it writes again, its own stream gets the record of what it missed.
#[derive(Default)]
pub struct Fanout {
    outs: Vec<Output>,
}

struct Output {
    sink: Box<dyn Sink>,
    /// The task this output belongs to (its own events file), dropped with it.
    key: Option<std::sync::Arc<str>>,
    health: Health,
}

/// What an output failed to take.
#[derive(Debug, Default, Clone)]
struct Health {
    /// The last call failed: the error.
    failing: Option<String>,
    /// Records not written since the last report.
    unreported: u64,
    /// Records not written since it last worked.
    missed: u64,
    /// When it started failing.
    since: Option<crate::event::Timestamp>,
}

/// A failing output, for the runtime's fail-closed decision and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failing {
    pub output: String,
    pub error: String,
}

impl Fanout {
    pub fn new(sinks: Vec<Box<dyn Sink>>) -> Self {
        let mut f = Self::default();
        for s in sinks {
            f.push(s);
        }
        f
    }

    pub fn push(&mut self, s: Box<dyn Sink>) {
        self.outs.push(Output { sink: s, key: None, health: Health::default() });
    }

    /// An output of task `key` (its own events file).
    pub fn push_keyed(&mut self, key: std::sync::Arc<str>, s: Box<dyn Sink>) {
        self.outs.push(Output { sink: s, key: Some(key), health: Health::default() });
    }

    /// Closes and removes the outputs of task `key`.
    pub fn remove_keyed(&mut self, key: &str) {
        let mut i = 0;
        while i < self.outs.len() {
            if self.outs[i].key.as_deref() == Some(key) {
                let mut o = self.outs.remove(i);
                if let Err(e) = o.sink.close() {
                    tracing::error!("closing the events file of task {key}: {e}");
                }
            } else {
                i += 1;
            }
        }
    }

    /// Runs `f` on every output; a failure is counted against that output only.
    /// `records`: how many records the call carries (0 for a flush).
    fn each(&mut self, records: u64, mut f: impl FnMut(&mut dyn Sink) -> Result<(), SinkError>) {
        let now = || crate::event::Timestamp::now();
        for o in &mut self.outs {
            let result = f(o.sink.as_mut());
            // Taken earlier, dropped now: lost as surely as a refused record.
            let dropped = o.sink.lost();
            if dropped > 0 {
                tracing::error!(
                    "output {}: {dropped} records it had taken were never written",
                    o.sink.name()
                );
                o.health.since.get_or_insert_with(now);
                o.health.failing.get_or_insert_with(|| format!("{dropped} buffered records were dropped"));
                o.health.unreported += dropped;
                o.health.missed += dropped;
            }
            match result {
                // A failing output is declared working again only by the probe in
                // `report_losses` (a record written and flushed): a record taken
                // into a buffer says nothing about the disk behind it.
                Ok(()) => {}
                Err(e) => {
                    if o.health.failing.is_none() {
                        tracing::error!(
                            "output {} failed: {e} (agentmon keeps watching; losses are reported)",
                            o.sink.name()
                        );
                        o.health.since = Some(now());
                    }
                    o.health.failing = Some(e.to_string());
                    o.health.unreported += records;
                    o.health.missed += records;
                }
            }
        }
    }

    pub fn send(&mut self, ev: &Event) {
        self.each(1, |s| s.send(ev));
    }

    pub fn alert(&mut self, a: &Alert) {
        self.each(1, |s| s.alert(a));
    }

    /// The end of a batch of records read together (see [`Sink::batch_end`]).
    pub fn batch_end(&mut self) {
        self.each(0, |s| s.batch_end());
    }

    /// Flushes every output and hands each one's alarms (a full spool) to the others.
    pub fn flush(&mut self) {
        self.each(0, |s| s.flush());
        let mut alarms = Vec::new();
        for (i, o) in self.outs.iter_mut().enumerate() {
            for ev in o.sink.alarms() {
                tracing::error!("{}", ev.reason.as_deref().unwrap_or("an output raised an alarm"));
                alarms.push((i, ev));
            }
        }
        for (from, ev) in alarms {
            for (j, o) in self.outs.iter_mut().enumerate() {
                if j != from
                    && let Err(e) = o.sink.send(&ev)
                {
                    o.health.failing = Some(e.to_string());
                    o.health.unreported += 1;
                    o.health.missed += 1;
                }
            }
        }
        self.each(0, |s| s.flush());
    }

    /// Flushes and closes every output (at exit); the failures, by output.
    pub fn close(&mut self) -> Vec<Failing> {
        self.flush();
        let mut failed = Vec::new();
        for o in &mut self.outs {
            if let Err(e) = o.sink.close() {
                failed.push(Failing { output: o.sink.name(), error: e.to_string() });
            }
        }
        failed
    }

    /// The main outputs (not a task's own events file) failing now.
    pub fn failing(&self) -> Vec<Failing> {
        self.outs
            .iter()
            .filter(|o| o.key.is_none())
            .filter_map(|o| {
                let error = o.health.failing.clone()?;
                Some(Failing { output: o.sink.name(), error })
            })
            .collect()
    }

    /// Writes a `loss` record for every output that dropped records since the last
    /// report (to the outputs that are writing), and tries each failing output with
    /// the record of what it missed: written and flushed, it works again. Returns
    /// the records written.
    pub fn report_losses(&mut self, host: &std::sync::Arc<str>, now: crate::event::Timestamp) -> Vec<Event> {
        let mut out = Vec::new();
        for i in 0..self.outs.len() {
            let Some(t) = self.outs[i].sink.torn() else { continue };
            // To every output that writes, the one it was cut from included.
            let mut ev = t.record(host, now, &self.outs[i].sink.name());
            // A task's own events file: the record is that task's, so it gets it too.
            ev.task = self.outs[i].key.clone();
            self.each(1, |s| s.send(&ev));
            out.push(ev);
        }
        for i in 0..self.outs.len() {
            let (name, h) = (self.outs[i].sink.name(), self.outs[i].health.clone());
            if h.unreported > 0 {
                self.outs[i].health.unreported = 0;
                let ev = output_loss(host, now, &name, h.unreported, h.failing.as_deref(), h.since);
                // To the others: the failing one would only count it again.
                for (j, o) in self.outs.iter_mut().enumerate() {
                    if j != i
                        && o.health.failing.is_none()
                        && let Err(e) = o.sink.send(&ev)
                    {
                        o.health.failing = Some(e.to_string());
                        o.health.since.get_or_insert(now);
                        o.health.unreported += 1;
                        o.health.missed += 1;
                    }
                }
                out.push(ev);
            }
        }
        for o in self.outs.iter_mut().filter(|o| o.health.failing.is_some()) {
            let (name, missed) = (o.sink.name(), o.health.missed);
            let mut ev = output_loss(host, now, &name, missed, None, o.health.since);
            ev.reason = Some(format!(
                "{name} works again; {missed} records before this one could not be written to it"
            ));
            match o.sink.send(&ev).and_then(|()| o.sink.flush()) {
                Ok(()) => {
                    tracing::warn!("output {name} works again ({missed} records were not written to it)");
                    o.health = Health::default();
                    out.push(ev);
                }
                // The probe is agentmon's own: not counted as a record lost.
                Err(e) => o.health.failing = Some(e.to_string()),
            }
        }
        out
    }
}

/// The `loss` record of an output that could not take `n` records.
fn output_loss(
    host: &std::sync::Arc<str>,
    now: crate::event::Timestamp,
    name: &str,
    n: u64,
    error: Option<&str>,
    since: Option<crate::event::Timestamp>,
) -> Event {
    let mut ev = Event::new(crate::event::Kind::Loss, now, host.clone());
    ev.pid = std::process::id();
    ev.tid = ev.pid;
    ev.comm = "agentmon".into();
    ev.lost = Some([(format!("output:{name}"), n)].into());
    ev.reason = Some(match error {
        Some(e) => format!("{n} records could not be written to {name}: {e}"),
        None => format!("{n} records could not be written to {name}"),
    });
    ev.detail.insert("output".into(), serde_json::json!(name));
    if let Some(e) = error {
        ev.detail.insert("error".into(), serde_json::json!(e));
    }
    if let Some(t) = since {
        ev.detail.insert("failing_since".into(), serde_json::json!(t));
    }
    ev
}

/// Output format of [`JsonLines`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line (the schema in docs/events.md).
    #[default]
    Json,
    /// One human-readable line per event.
    Text,
}

/// Event lines to a file (appended) or stdout.
pub struct JsonLines {
    name: String,
    format: Format,
    out: BufWriter<Box<dyn Write + Send>>,
    line: Vec<u8>,
    /// An incomplete last line cut from the file at open, until reported.
    torn: Option<crate::torn::TornTail>,
}

/// `s` on one line: control characters (a newline in a file name), the invisible
/// characters that reorder or hide text (bidi overrides, zero-width) and
/// backslashes escaped (`\n`, `\u{1b}`, `\u{202e}`, `\\`), so that data can never
/// start a row of its own or read as something else.
pub fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    let hidden = |c: char| {
        c.is_control()
            || matches!(
                c,
                '\u{200b}'..='\u{200f}'
                    | '\u{2028}'..='\u{202e}'
                    | '\u{2066}'..='\u{2069}'
                    | '\u{061c}'
                    | '\u{feff}'
            )
    };
    if !s.chars().any(|c| hidden(c) || c == '\\') {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if hidden(c) => {
                use std::fmt::Write as _;
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A compact human-readable rendering of an event, on one line whatever its data.
pub fn text_line(ev: &Event) -> String {
    let s = text_line_raw(ev);
    one_line(&s).into_owned()
}

fn text_line_raw(ev: &Event) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let mut buf = [0u8; 30];
    let ts = ev.ts.format(&mut buf);
    let time = ts.get(11..23).unwrap_or(ts);
    let _ = write!(s, "{time} {:<14} {:>7} {:<15}", ev.kind.as_str(), ev.pid, ev.comm);
    if let Some(p) = &ev.path {
        let _ = write!(s, " {p}");
    }
    if let Some(p) = &ev.new_path {
        let _ = write!(s, " -> {p}");
    }
    match &ev.dst {
        Some(crate::event::Dst::Ip { ip, port }) if ip.contains(':') => {
            let _ = write!(s, " [{ip}]:{port}");
        }
        Some(crate::event::Dst::Ip { ip, port }) => {
            let _ = write!(s, " {ip}:{port}");
        }
        Some(crate::event::Dst::Unix { unix }) => {
            let _ = write!(s, " unix:{unix}");
        }
        None => {}
    }
    if let Some(m) = &ev.mode {
        let _ = write!(s, " mode={m}");
    }
    if let Some(a) = &ev.argv {
        let _ = write!(s, " argv={a:?}");
    }
    if let Some(st) = ev.status {
        let _ = write!(s, " status={st}");
    }
    if let Some(sig) = &ev.signal {
        let _ = write!(s, " signal={sig}");
    }
    if let Some(e) = &ev.error {
        let _ = write!(s, " error={e}");
    }
    if ev.kind == crate::event::Kind::Action {
        let by = ev.detail.get("by").and_then(|v| v.as_str()).unwrap_or("?");
        let _ = write!(
            s,
            " {} task={} by={by}",
            ev.action.as_deref().unwrap_or("?"),
            ev.task.as_deref().unwrap_or("-")
        );
        if let Some(e) = ev.detail.get("error") {
            let _ = write!(s, " error={e}");
        }
    }
    if let Some(l) = &ev.lost {
        let _ = write!(s, " lost={l:?}");
    }
    s
}

impl JsonLines {
    pub fn stdout() -> Self {
        Self {
            name: "stdout".into(),
            format: Format::Json,
            out: BufWriter::with_capacity(1 << 16, Box::new(io::stdout())),
            line: Vec::with_capacity(1024),
            torn: None,
        }
    }

    /// Lines to any writer (benchmarks, tests).
    pub fn to_writer(name: &str, w: impl Write + Send + 'static) -> Self {
        Self {
            name: name.into(),
            format: Format::Json,
            out: BufWriter::with_capacity(1 << 16, Box::new(w)),
            line: Vec::with_capacity(1024),
            torn: None,
        }
    }

    pub fn with_format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    pub fn file(path: &Path) -> Result<Self, SinkError> {
        let open = |source| SinkError::Open { path: path.into(), source };
        let f = OpenOptions::new().read(true).create(true).append(true).open(path).map_err(open)?;
        Ok(Self::opened(f, path, None))
    }

    /// `f`, opened for reading and appending at `path` (checked by the caller) in
    /// directory `dir`, where a torn last line's fragment is kept.
    pub fn opened(f: std::fs::File, path: &Path, dir: Option<std::os::fd::BorrowedFd>) -> Self {
        // A line left incomplete by a killed writer would swallow the next record.
        // Not cut (a full disk cannot take the fragment, a foreign file): appended
        // to as before, never refused — an output that cannot open blinds agentmon.
        let torn = crate::torn::repair(&f, path, dir).unwrap_or_else(|e| {
            tracing::warn!("{}: {e}; its torn last line is left in place", path.display());
            None
        });
        Self {
            name: path.display().to_string(),
            format: Format::Json,
            out: BufWriter::with_capacity(1 << 16, Box::new(f)),
            line: Vec::with_capacity(1024),
            torn,
        }
    }

    /// `-` or no path means stdout.
    pub fn open(path: Option<&Path>) -> Result<Self, SinkError> {
        match path {
            None => Ok(Self::stdout()),
            Some(p) if p.as_os_str() == "-" => Ok(Self::stdout()),
            Some(p) => Self::file(p),
        }
    }

    fn err(&self, source: io::Error) -> SinkError {
        SinkError::Write { name: self.name.clone(), source }
    }
}

impl Sink for JsonLines {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn send(&mut self, ev: &Event) -> Result<(), SinkError> {
        self.line.clear();
        match self.format {
            Format::Json => crate::jsonw::write_event(&mut self.line, ev),
            Format::Text => self.line.extend_from_slice(text_line(ev).as_bytes()),
        }
        self.line.push(b'\n');
        let r = self.out.write_all(&self.line);
        r.map_err(|e| self.err(e))
    }

    fn alert(&mut self, a: &Alert) -> Result<(), SinkError> {
        self.line.clear();
        match self.format {
            Format::Json => serde_json::to_writer(&mut self.line, a).map_err(|e| self.err(e.into()))?,
            Format::Text => {
                let what = a.event.path.as_deref().unwrap_or(a.event.kind.as_str());
                let line = format!(
                    "  ALERT {} {} {}: {} ({what}) -> {}",
                    a.severity,
                    a.verdict,
                    a.rule.as_deref().unwrap_or("scope"),
                    a.reason,
                    a.action.as_str()
                );
                self.line.extend_from_slice(line.as_bytes());
            }
        }
        self.line.push(b'\n');
        let r = self.out.write_all(&self.line);
        r.map_err(|e| self.err(e))
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|e| self.err(e))
    }

    /// Each batch reaches the file at once: a reader following it sees events as
    /// they happen, and an agentmon killed outright loses at most the batch at hand.
    fn batch_end(&mut self) -> Result<(), SinkError> {
        self.flush()
    }

    fn torn(&mut self) -> Option<crate::torn::TornTail> {
        self.torn.take()
    }
}

/// The events and alerts of one task (and the tasks delegated from it) only.
pub struct TaskFilter<S> {
    task: std::sync::Arc<str>,
    inner: S,
}

impl<S: Sink> TaskFilter<S> {
    pub fn new(task: std::sync::Arc<str>, inner: S) -> Self {
        Self { task, inner }
    }

    fn mine(&self, ev: &Event) -> bool {
        ev.task.as_deref() == Some(&*self.task)
            || ev.task_chain.as_ref().is_some_and(|c| c.iter().any(|t| **t == *self.task))
    }
}

impl<S: Sink> Sink for TaskFilter<S> {
    fn name(&self) -> String {
        format!("{} (task {})", self.inner.name(), self.task)
    }

    fn send(&mut self, ev: &Event) -> Result<(), SinkError> {
        if self.mine(ev) { self.inner.send(ev) } else { Ok(()) }
    }

    fn alert(&mut self, a: &Alert) -> Result<(), SinkError> {
        if self.mine(&a.event) { self.inner.alert(a) } else { Ok(()) }
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.inner.flush()
    }

    fn batch_end(&mut self) -> Result<(), SinkError> {
        self.inner.batch_end()
    }

    fn torn(&mut self) -> Option<crate::torn::TornTail> {
        self.inner.torn()
    }

    fn close(&mut self) -> Result<(), SinkError> {
        self.inner.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Kind;

    /// A daemon killed mid-write leaves half a line; the next one appended its first
    /// record to it, which made one unreadable line (seen in CI). Now the fragment
    /// is cut off and the cut is a `loss` record in every output, its own included.
    #[test]
    fn a_torn_last_line_is_cut_and_reported_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let (torn, other) = (dir.path().join("ev.jsonl"), dir.path().join("other.jsonl"));
        std::fs::write(&torn, "{\"kind\":\"exec\"}\n{\"schema\":\"agentmon.ev").unwrap();
        let mut f = Fanout::new(vec![
            Box::new(JsonLines::file(&torn).unwrap()),
            Box::new(JsonLines::file(&other).unwrap()),
        ]);
        let said = f.report_losses(&"h".into(), crate::event::Timestamp(0));
        assert_eq!(said.len(), 1, "{said:?}");
        f.send(&Event::new(Kind::Exit, crate::event::Timestamp(0), "h".into()));
        assert!(f.report_losses(&"h".into(), crate::event::Timestamp(0)).is_empty(), "reported once");
        f.close();
        let text = std::fs::read_to_string(&torn).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let loss: Event = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(loss.kind, Kind::Loss);
        assert_eq!(loss.lost.unwrap()[&format!("output:{}", torn.display())], 1);
        assert_eq!(serde_json::from_str::<Event>(lines[2]).unwrap().kind, Kind::Exit);
        let kept = loss.detail["torn"]["kept"].as_str().unwrap();
        assert_eq!(std::fs::read_to_string(kept).unwrap(), "{\"schema\":\"agentmon.ev");
        let other: Vec<Event> = std::fs::read_to_string(&other)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(other.iter().map(|e| e.kind).collect::<Vec<_>>(), [Kind::Loss, Kind::Exit]);
    }

    /// A task's own events file reaches the disk at the end of each batch, as the
    /// main file does: a daemon killed outright loses at most the batch at hand.
    #[test]
    fn a_task_file_is_written_at_each_batch_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("task.jsonl");
        let mut s = TaskFilter::new("t".into(), JsonLines::file(&p).unwrap());
        let mut ev = Event::new(Kind::Exec, crate::event::Timestamp(0), "h".into());
        ev.task = Some("t".into());
        s.send(&ev).unwrap();
        assert_eq!(std::fs::read(&p).unwrap().len(), 0, "buffered");
        s.batch_end().unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap().lines().count(), 1);
    }

    /// The fragment cannot be kept (here a name too long; on a full disk, no room):
    /// the file is left as it is and still written to — found on re-reading: the
    /// open failed, so a full disk with a torn events file kept agentmon from starting.
    #[test]
    fn a_torn_line_that_cannot_be_kept_never_stops_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e".repeat(250));
        std::fs::write(&p, "{\"kind\":\"exec\"}\n{\"sch").unwrap();
        let mut s = JsonLines::file(&p).unwrap();
        assert!(s.torn().is_none());
        s.send(&Event::new(Kind::Exit, crate::event::Timestamp(0), "h".into())).unwrap();
        s.flush().unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().starts_with("{\"kind\":\"exec\"}\n{\"sch{"));
    }

    #[test]
    fn writes_one_parseable_line_per_event() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ev.jsonl");
        let mut s = JsonLines::open(Some(&p)).unwrap();
        for k in [Kind::Exec, Kind::Exit] {
            s.send(&Event::new(k, crate::event::Timestamp(0), "h".into())).unwrap();
        }
        s.flush().unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let kinds: Vec<Kind> = text.lines().map(|l| serde_json::from_str::<Event>(l).unwrap().kind).collect();
        assert_eq!(kinds, vec![Kind::Exec, Kind::Exit]);
        assert!(matches!(
            JsonLines::open(Some(Path::new("/nonexistent/dir/x"))),
            Err(SinkError::Open { .. })
        ));
        let ts = crate::event::Timestamp::parse("2026-01-01T10:11:12.123456789Z").unwrap();
        let mut e = Event::new(Kind::FileRename, ts, "h".into());
        e.pid = 42;
        e.comm = "mv".into();
        e.path = Some("/a".into());
        e.new_path = Some("/b".into());
        e.error = Some("EXDEV".into());
        assert_eq!(text_line(&e), "10:11:12.123 file_rename         42 mv              /a -> /b error=EXDEV");
        // A newline in a file name cannot start a row of its own.
        e.path = Some("/a\n10:11:12.123 file_delete  1 x /etc".into());
        assert_eq!(text_line(&e).lines().count(), 1);
        assert!(text_line(&e).contains("/a\\n10:11"));
        assert_eq!(one_line("a\\b\u{1b}c"), "a\\\\b\\u{1b}c");
        assert_eq!(one_line("x\u{202e}fdp.exe"), "x\\u{202e}fdp.exe");
    }
}
