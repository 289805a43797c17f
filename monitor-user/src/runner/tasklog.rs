//! A task's own events file (`agentmon exec --daemon … --events FILE`). The root
//! daemon opens it at a path an operator chose, often in a tree the task's agent can
//! write, and every restarted daemon opens it again. Swapped meanwhile for a symlink,
//! the daemon would append to (and cut the torn tail of) whatever it points at; for
//! a directory, the task's resume failed and its processes were let go; for a FIFO,
//! the daemon's writes would block its loop. So:
//! - no symbolic link may be anywhere on the path (the registering exec resolves
//!   them), and the file and a torn tail's fragment are opened in the directory
//!   found so, never by the path again;
//! - it must be a regular file with one name (a hard link would be another's file);
//! - a restarted daemon opens only the file the task was given (device and inode,
//!   recorded), never creating one. What cannot be opened so is not opened: the
//!   task's events still reach every other output, and the caller reports it;
//! - it may not be on a FUSE file system: the daemon writes it on its loop, and a
//!   server that stopped answering would stop the daemon for every task. It is
//!   opened in a worker ([`open_within`]): its path's lookups may be a FUSE
//!   server's to answer too.

use std::{
    fs::File,
    os::{
        fd::{AsFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    fcntl::{OFlag, OpenHow, ResolveFlag, openat2},
    sys::stat::Mode,
};
use serde::{Deserialize, Serialize};

use crate::sink::JsonLines;

/// Which file it is: its device, inode and birth time (an inode number is reused
/// once its file is deleted; 0 where the file system keeps no birth time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    #[serde(default)]
    pub born_ns: u64,
}

impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "device {} inode {} born at {} ns", self.dev, self.ino, self.born_ns)
    }
}

impl FileId {
    fn of(f: &File) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        // SAFETY: statx is plain data; zero is a valid value.
        let mut x: libc::statx = unsafe { std::mem::zeroed() };
        let mask = libc::STATX_INO | libc::STATX_BTIME;
        // SAFETY: an open descriptor, an empty path with AT_EMPTY_PATH, a buffer of
        // the right type.
        let r = unsafe { libc::statx(f.as_raw_fd(), c"".as_ptr(), libc::AT_EMPTY_PATH, mask, &mut x) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let born = x.stx_mask & libc::STATX_BTIME != 0;
        Ok(Self {
            dev: libc::makedev(x.stx_dev_major, x.stx_dev_minor),
            ino: x.stx_ino,
            born_ns: if born {
                x.stx_btime.tv_sec as u64 * 1_000_000_000 + x.stx_btime.tv_nsec as u64
            } else {
                0
            },
        })
    }
}

/// How the file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// A new task's: created if missing.
    New,
    /// A resumed task's: it must exist and, where recorded, be the same file.
    Again(Option<FileId>),
}

#[derive(Debug, thiserror::Error)]
pub enum TaskLogError {
    #[error("{path}: a symbolic link is on its path (an agent could point the daemon at another file)")]
    Symlink { path: PathBuf },
    #[error("{path}: {source}")]
    Open { path: PathBuf, source: Errno },
    #[error("{path} is not a regular file (a directory, FIFO, device or socket)")]
    NotRegular { path: PathBuf },
    #[error("{path} has {links} names (hard links): it may be another file's")]
    Linked { path: PathBuf, links: u64 },
    #[error("{path} is not the file the task was given ({was}; now {now}): replaced while no daemon ran")]
    Replaced { path: PathBuf, was: FileId, now: FileId },
    #[error(
        "{path} is on a FUSE file system, served by a process: agentmon writes events files on its loop, and \
         that server could stop it for every task"
    )]
    Served { path: PathBuf },
    #[error("{path}: {err}")]
    Stalled { path: PathBuf, err: crate::realpath::Error },
}

impl TaskLogError {
    /// Whether opening it kept agentmon waiting on a file system, the asker's
    /// own lookups held ([`crate::realpath::Error::blamed`]).
    pub fn stalled(&self) -> bool {
        matches!(self, TaskLogError::Stalled { err, .. } if err.blamed())
    }
}

/// [`open`] in a worker, waited for as `w` says.
pub fn open_within(
    path: &Path,
    how: Open,
    w: &crate::realpath::Wait,
) -> Result<(JsonLines, FileId), TaskLogError> {
    use crate::{realpath::Error, worker::Stuck};
    let left = w.until.saturating_duration_since(std::time::Instant::now());
    let p = path.to_path_buf();
    let stalled = |err| TaskLogError::Stalled { path: path.into(), err };
    match crate::worker::RESOLVERS.run(w.who, left, move || open(&p, how)) {
        Ok(r) => r,
        Err(Stuck::Late) => Err(stalled(Error::Unanswered(left))),
        Err(Stuck::Refused(e)) => Err(stalled(Error::Refused(e))),
        Err(Stuck::Failed) => Err(TaskLogError::Open { path: path.into(), source: Errno::EIO }),
    }
}

/// Opens task log `path` as [`Open`] says; its lines and which file it is.
pub fn open(path: &Path, how: Open) -> Result<(JsonLines, FileId), TaskLogError> {
    let at = |source: Errno| match source {
        Errno::ELOOP | Errno::EXDEV => TaskLogError::Symlink { path: path.into() },
        Errno::EISDIR | Errno::ENXIO => TaskLogError::NotRegular { path: path.into() },
        source => TaskLogError::Open { path: path.into(), source },
    };
    let (Some(parent), Some(name)) = (path.parent().filter(|p| p.is_absolute()), path.file_name()) else {
        return Err(TaskLogError::Open { path: path.into(), source: Errno::EINVAL });
    };
    let no_links = ResolveFlag::RESOLVE_NO_SYMLINKS;
    let dir: OwnedFd = openat2(
        nix::fcntl::AT_FDCWD,
        parent,
        OpenHow::new().flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC).resolve(no_links),
    )
    .map_err(at)?;
    // Non-blocking: a FIFO planted there must not hold the open (it is refused below).
    let flags = OFlag::O_RDWR | OFlag::O_APPEND | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    // (openat2 takes a mode only with O_CREAT.)
    let open_how = match how {
        Open::New => OpenHow::new().flags(flags | OFlag::O_CREAT).mode(Mode::from_bits_truncate(0o644)),
        Open::Again(_) => OpenHow::new().flags(flags),
    };
    let f = openat2(dir.as_fd(), name, open_how.resolve(no_links)).map_err(at)?;
    let f = File::from(f);
    let io = |e: std::io::Error| at(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)));
    let m = f.metadata().map_err(io)?;
    if !m.is_file() {
        return Err(TaskLogError::NotRegular { path: path.into() });
    }
    if crate::enforce::mounts::on_fuse(f.as_fd()).map_err(io)? {
        return Err(TaskLogError::Served { path: path.into() });
    }
    if m.nlink() > 1 {
        return Err(TaskLogError::Linked { path: path.into(), links: m.nlink() });
    }
    let now = FileId::of(&f).map_err(io)?;
    if let Open::Again(Some(was)) = how
        && was != now
    {
        return Err(TaskLogError::Replaced { path: path.into(), was, now });
    }
    Ok((JsonLines::opened(f, path, Some(dir.as_fd())), now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(p: &Path, how: Open) -> String {
        match open(p, how) {
            Ok(_) => panic!("{} was opened", p.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_new_log_is_created_and_known_again() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().canonicalize().unwrap().join("t.jsonl");
        let (_, id) = open(&p, Open::New).unwrap();
        let (_, again) = open(&p, Open::Again(Some(id))).unwrap();
        assert_eq!(id, again);
        // A record without the identity (an older daemon's) still opens it.
        open(&p, Open::Again(None)).unwrap();
    }

    #[test]
    fn what_an_agent_could_plant_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let d = d.path().canonicalize().unwrap();
        let victim = d.join("victim");
        std::fs::write(&victim, b"keep\nunterminated").unwrap();
        let p = d.join("t.jsonl");
        let (_, id) = open(&p, Open::New).unwrap();
        // Swapped for a symlink: never followed, never written through.
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        for how in [Open::New, Open::Again(Some(id))] {
            assert!(refused(&p, how).contains("symbolic link"));
        }
        // A symlinked directory on the path.
        std::fs::create_dir(d.join("real")).unwrap();
        std::os::unix::fs::symlink(d.join("real"), d.join("via")).unwrap();
        assert!(refused(&d.join("via/t.jsonl"), Open::New).contains("symbolic link"));
        assert!(!d.join("real/t.jsonl").exists());
        // A directory, a FIFO (opening it must not block).
        std::fs::remove_file(&p).unwrap();
        std::fs::create_dir(&p).unwrap();
        assert!(refused(&p, Open::Again(Some(id))).contains("not a regular file"));
        std::fs::remove_dir(&p).unwrap();
        nix::unistd::mkfifo(&p, Mode::from_bits_truncate(0o600)).unwrap();
        assert!(refused(&p, Open::New).contains("not a regular file"));
        std::fs::remove_file(&p).unwrap();
        // A second name of another file.
        std::fs::hard_link(&victim, &p).unwrap();
        assert!(refused(&p, Open::New).contains("hard links"));
        std::fs::remove_file(&p).unwrap();
        // Gone: a resumed task's is not created again; another file in its place.
        assert!(refused(&p, Open::Again(Some(id))).contains("No such file"));
        assert!(!p.exists());
        std::fs::write(&p, b"").unwrap();
        assert!(refused(&p, Open::Again(Some(id))).contains("replaced while no daemon ran"));
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep\nunterminated");
    }

    #[test]
    fn a_torn_tail_is_kept_beside_the_log() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().canonicalize().unwrap().join("t.jsonl");
        std::fs::write(&p, b"{\"a\":1}\n{\"b\"").unwrap();
        let (mut lines, _) = open(&p, Open::Again(None)).unwrap();
        let t = crate::sink::Sink::torn(&mut lines).expect("the fragment was cut");
        assert_eq!(t.kept.parent(), p.parent());
        assert_eq!(std::fs::read(&t.kept).unwrap(), b"{\"b\"");
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\":1}\n");
    }
}
