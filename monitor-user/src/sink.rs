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
    fn send(&mut self, ev: &Event) -> Result<(), SinkError>;
    fn alert(&mut self, a: &Alert) -> Result<(), SinkError>;
    fn flush(&mut self) -> Result<(), SinkError>;
    /// The end of a batch of events read together: a cheap hand-over (not a
    /// durable flush) for sinks that others wait on.
    fn batch_end(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    /// Events the sink raised about itself (a full spool), for the other sinks.
    fn alarms(&mut self) -> Vec<Event> {
        Vec::new()
    }
    /// Flushes for good (at exit): what is not delivered must be kept durably.
    fn close(&mut self) -> Result<(), SinkError> {
        self.flush()
    }
}

/// Every configured sink; each event goes to all of them in the same order.
#[derive(Default)]
pub struct Fanout {
    sinks: Vec<Box<dyn Sink>>,
    /// Which sinks belong to a task (removed when it is forgotten).
    keys: Vec<Option<std::sync::Arc<str>>>,
}

impl Fanout {
    pub fn new(sinks: Vec<Box<dyn Sink>>) -> Self {
        let keys = vec![None; sinks.len()];
        Self { sinks, keys }
    }

    pub fn push(&mut self, s: Box<dyn Sink>) {
        self.sinks.push(s);
        self.keys.push(None);
    }

    /// A sink of task `key` (its own events file).
    pub fn push_keyed(&mut self, key: std::sync::Arc<str>, s: Box<dyn Sink>) {
        self.sinks.push(s);
        self.keys.push(Some(key));
    }

    /// Closes and removes the sinks of task `key`.
    pub fn remove_keyed(&mut self, key: &str) -> Result<(), SinkError> {
        let mut first = Ok(());
        let mut i = 0;
        while i < self.sinks.len() {
            if self.keys[i].as_deref() == Some(key) {
                let mut s = self.sinks.remove(i);
                self.keys.remove(i);
                if let Err(e) = s.close()
                    && first.is_ok()
                {
                    first = Err(e);
                }
            } else {
                i += 1;
            }
        }
        first
    }

    /// Hands a sink's alarms to every other sink.
    fn relay_alarms(&mut self) -> Result<(), SinkError> {
        for i in 0..self.sinks.len() {
            for ev in self.sinks[i].alarms() {
                tracing::error!("{}", ev.reason.as_deref().unwrap_or("a sink raised an alarm"));
                for (j, s) in self.sinks.iter_mut().enumerate() {
                    if j != i {
                        s.send(&ev)?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl Fanout {
    /// Runs `f` on every sink, whatever the others do. A task's own sink that fails is
    /// closed and dropped (said in the log; the task's events still reach the main
    /// outputs); the first failure of a main output is returned.
    fn each(&mut self, mut f: impl FnMut(&mut dyn Sink) -> Result<(), SinkError>) -> Result<(), SinkError> {
        let mut first = Ok(());
        let mut i = 0;
        while i < self.sinks.len() {
            match (f(self.sinks[i].as_mut()), &self.keys[i]) {
                (Ok(()), _) => i += 1,
                (Err(e), Some(task)) => {
                    tracing::error!("the events file of task {task} failed and is closed: {e}");
                    let mut s = self.sinks.remove(i);
                    self.keys.remove(i);
                    let _ = s.close();
                }
                (Err(e), None) => {
                    if first.is_ok() {
                        first = Err(e);
                    }
                    i += 1;
                }
            }
        }
        first
    }
}

impl Sink for Fanout {
    fn send(&mut self, ev: &Event) -> Result<(), SinkError> {
        self.each(|s| s.send(ev))
    }

    fn alert(&mut self, a: &Alert) -> Result<(), SinkError> {
        self.each(|s| s.alert(a))
    }

    fn batch_end(&mut self) -> Result<(), SinkError> {
        self.each(|s| s.batch_end())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.each(|s| s.flush())?;
        self.relay_alarms()?;
        self.each(|s| s.flush())
    }

    fn close(&mut self) -> Result<(), SinkError> {
        self.flush()?;
        // Every sink is closed even if one fails; the first error is returned.
        let mut first = None;
        for s in &mut self.sinks {
            if let Err(e) = s.close() {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
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
}

/// A compact human-readable rendering of an event.
pub fn text_line(ev: &Event) -> String {
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
        }
    }

    /// Lines to any writer (benchmarks, tests).
    pub fn to_writer(name: &str, w: impl Write + Send + 'static) -> Self {
        Self {
            name: name.into(),
            format: Format::Json,
            out: BufWriter::with_capacity(1 << 16, Box::new(w)),
            line: Vec::with_capacity(1024),
        }
    }

    pub fn with_format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    pub fn file(path: &Path) -> Result<Self, SinkError> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| SinkError::Open { path: path.into(), source })?;
        Ok(Self {
            name: path.display().to_string(),
            format: Format::Json,
            out: BufWriter::with_capacity(1 << 16, Box::new(f)),
            line: Vec::with_capacity(1024),
        })
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
                    a.action
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
    fn send(&mut self, ev: &Event) -> Result<(), SinkError> {
        if self.mine(ev) { self.inner.send(ev) } else { Ok(()) }
    }

    fn alert(&mut self, a: &Alert) -> Result<(), SinkError> {
        if self.mine(&a.event) { self.inner.alert(a) } else { Ok(()) }
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.inner.flush()
    }

    fn close(&mut self) -> Result<(), SinkError> {
        self.inner.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Kind;

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
    }
}
