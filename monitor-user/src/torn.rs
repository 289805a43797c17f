//! A line-oriented file whose last line was left incomplete: a writer killed in the
//! middle of a record (a write of more than a page can stop at a page boundary on
//! SIGKILL). Anything appended after such a fragment would be glued to it and make
//! one unreadable line, so the fragment is cut off before appending, kept in a file
//! of its own beside the log (evidence is moved, never destroyed), and reported as
//! a `loss` record in every output — the log it was cut from included.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Seek, SeekFrom, Write},
    os::{
        fd::BorrowedFd,
        unix::fs::{FileExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::event::{Event, Kind, Timestamp};

/// A fragment cut from the end of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Where the fragment started (the log's length now).
    pub offset: u64,
    pub bytes: u64,
    /// The file the fragment was moved to.
    pub kept: PathBuf,
}

/// The longest fragment cut: longer than any record agentmon writes. A file whose
/// last line is longer is no log of agentmon's (a path that names another file):
/// it is left as it is and refused.
pub const MAX_FRAGMENT: u64 = 1 << 20;

/// Where `file`'s incomplete last line starts, if it has one. Only regular files
/// are looked at; a fragment longer than [`MAX_FRAGMENT`] is an error.
pub fn find(file: &File) -> io::Result<Option<u64>> {
    let m = file.metadata()?;
    if !m.is_file() {
        return Ok(None);
    }
    let len = m.len();
    let mut end = len;
    let mut buf = vec![0u8; 64 << 10];
    while end > 0 {
        if len - end > MAX_FRAGMENT {
            return Err(io::Error::other(format!(
                "its last line is incomplete and longer than {MAX_FRAGMENT} bytes, longer than any record: not \
                 a log agentmon writes? Left as it is"
            )));
        }
        let n = end.min(buf.len() as u64);
        let chunk = &mut buf[..n as usize];
        file.read_exact_at(chunk, end - n)?;
        if end == len && chunk.last() == Some(&b'\n') {
            return Ok(None);
        }
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(end - n + i as u64 + 1));
        }
        end -= n;
    }
    Ok((len > 0).then_some(0))
}

/// Moves `path`'s bytes from `offset` on into `<path>.torn-<offset>-<ns>` (created
/// new, mode 0600, never through a planted link) and truncates the log there.
/// `dir`: the directory the log was opened in, where the fragment is created (a
/// path another user can change may lead elsewhere by then).
pub fn cut(file: &File, path: &Path, offset: u64, dir: Option<BorrowedFd>) -> io::Result<TornTail> {
    let mut fragment = Vec::new();
    let mut r = file;
    r.seek(SeekFrom::Start(offset))?;
    r.read_to_end(&mut fragment)?;
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".torn-{offset}-{}", Timestamp::now().0));
    let kept = path.with_file_name(&name);
    let mut k = match dir {
        Some(d) => {
            use nix::{fcntl::OFlag, sys::stat::Mode};
            let flags =
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            File::from(nix::fcntl::openat(d, name.as_os_str(), flags, Mode::from_bits_truncate(0o600))?)
        }
        None => OpenOptions::new().write(true).create_new(true).mode(0o600).open(&kept)?,
    };
    k.write_all(&fragment)?;
    k.sync_all()?;
    file.set_len(offset)?;
    file.sync_all()?;
    tracing::warn!(
        "{}: its last line was incomplete ({} bytes at offset {offset}: a writer stopped mid-record); cut and kept in {}",
        path.display(),
        fragment.len(),
        kept.display()
    );
    Ok(TornTail { offset, bytes: fragment.len() as u64, kept })
}

/// [`find`] and [`cut`] in one.
pub fn repair(file: &File, path: &Path, dir: Option<BorrowedFd>) -> io::Result<Option<TornTail>> {
    match find(file)? {
        Some(offset) => cut(file, path, offset, dir).map(Some),
        None => Ok(None),
    }
}

impl TornTail {
    /// The `loss` record of the cut: one record (the fragment) of output `name`.
    pub fn record(&self, host: &Arc<str>, now: Timestamp, name: &str) -> Event {
        let mut ev = Event::new(Kind::Loss, now, host.clone());
        ev.pid = std::process::id();
        ev.tid = ev.pid;
        ev.comm = "agentmon".into();
        ev.lost = Some([(format!("output:{name}"), 1)].into());
        ev.reason = Some(format!(
            "the last line of {name} was incomplete ({} bytes at offset {}: its writer stopped mid-record); \
             cut before appending and kept in {}",
            self.bytes,
            self.offset,
            self.kept.display()
        ));
        ev.detail.insert("output".into(), serde_json::json!(name));
        ev.detail.insert(
            "torn".into(),
            serde_json::json!({"offset": self.offset, "bytes": self.bytes, "kept": self.kept}),
        );
        ev
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(dir: &Path, data: &[u8]) -> (PathBuf, File) {
        let p = dir.join("log");
        std::fs::write(&p, data).unwrap();
        let f = OpenOptions::new().read(true).append(true).open(&p).unwrap();
        (p, f)
    }

    #[test]
    fn finds_only_an_incomplete_last_line() {
        let dir = tempfile::tempdir().unwrap();
        for (data, want) in [
            (&b""[..], None),
            (b"a\n", None),
            (b"a\nb\n", None),
            (b"a\n{\"x\":", Some(2)),
            (b"{\"x\":", Some(0)),
        ] {
            let (_, f) = file_with(dir.path(), data);
            assert_eq!(find(&f).unwrap(), want, "{:?}", String::from_utf8_lossy(data));
        }
        // A fragment longer than one read.
        let mut big = b"first\n".to_vec();
        big.extend(std::iter::repeat_n(b'x', 200_000));
        let (p, f) = file_with(dir.path(), &big);
        assert_eq!(find(&f).unwrap(), Some(6));
        // Too long to be a record: refused, the file left as it is.
        let mut huge = b"first\n".to_vec();
        huge.extend(std::iter::repeat_n(b'x', MAX_FRAGMENT as usize + (128 << 10)));
        let (_, f) = file_with(dir.path(), &huge);
        assert!(repair(&f, &p, None).unwrap_err().to_string().contains("longer than any record"));
        assert_eq!(std::fs::metadata(&p).unwrap().len(), huge.len() as u64);
    }

    #[test]
    fn cut_keeps_the_fragment_and_leaves_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let (p, f) = file_with(dir.path(), b"{\"a\":1}\n{\"b\":");
        let t = repair(&f, &p, None).unwrap().unwrap();
        assert_eq!((t.offset, t.bytes), (8, 5));
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\":1}\n");
        assert_eq!(std::fs::read(&t.kept).unwrap(), b"{\"b\":");
        assert!(repair(&f, &p, None).unwrap().is_none(), "whole lines are left alone");
        let ev = t.record(&Arc::from("h"), Timestamp(1), "events.jsonl");
        assert_eq!(ev.lost.unwrap()["output:events.jsonl"], 1);
        assert_eq!(ev.detail["torn"]["bytes"], 5);
    }
}
