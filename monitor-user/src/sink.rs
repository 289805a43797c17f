//! Event sinks. Every sink takes the same events; adding one touches this module.

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use crate::event::Event;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot open event file {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("writing events to {name}: {source}")]
    Write { name: String, source: io::Error },
}

pub trait Sink: Send {
    fn send(&mut self, ev: &Event) -> Result<(), SinkError>;
    fn flush(&mut self) -> Result<(), SinkError>;
}

/// JSON lines to a file (appended) or stdout.
pub struct JsonLines {
    name: String,
    out: BufWriter<Box<dyn Write + Send>>,
}

impl JsonLines {
    pub fn stdout() -> Self {
        Self { name: "stdout".into(), out: BufWriter::with_capacity(1 << 16, Box::new(io::stdout())) }
    }

    pub fn file(path: &Path) -> Result<Self, SinkError> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| SinkError::Open { path: path.into(), source })?;
        Ok(Self { name: path.display().to_string(), out: BufWriter::with_capacity(1 << 16, Box::new(f)) })
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
        serde_json::to_writer(&mut self.out, ev).map_err(|e| self.err(e.into()))?;
        self.out.write_all(b"\n").map_err(|e| self.err(e))
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|e| self.err(e))
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
            s.send(&Event::new(k, "t".into(), "h".into())).unwrap();
        }
        s.flush().unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let kinds: Vec<Kind> =
            text.lines().map(|l| serde_json::from_str::<Event>(l).unwrap().kind).collect();
        assert_eq!(kinds, vec![Kind::Exec, Kind::Exit]);
        assert!(matches!(JsonLines::open(Some(Path::new("/nonexistent/dir/x"))), Err(SinkError::Open { .. })));
    }
}
