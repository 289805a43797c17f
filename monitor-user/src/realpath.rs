//! Canonical paths that never keep agentmon's loop waiting on a file system
//! someone else serves.
//!
//! `std::fs::canonicalize` looks every component up, and a lookup on a FUSE mount
//! waits for whoever serves it. A user's server that stopped answering stopped
//! agentmon's loop, for every task, for as long as it liked: a sub-task an agent
//! delegated (or an operator's task whose manifest an agent wrote) whose scope
//! named a directory there, or an agent's failed call beneath one, whose directory
//! the enricher resolves. Here a
//! path is resolved from the kernel's caches alone first (`openat2` with
//! `RESOLVE_CACHED`, which fails with EAGAIN rather than ask a file system), and only
//! when that cannot be done, by a [`worker`] thread waited for at most a bound: a
//! path on a file system that does not answer in time is [`Error::Unanswered`].

use std::{
    io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::errno::Errno;

use crate::worker::{self, Stuck};

/// Why a path has no canonical form here.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// It could not be resolved (it does not exist, a component is no directory).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Its file system was asked, and did not answer in time (the lookup goes on,
    /// in its worker, until it does).
    #[error("its file system did not answer within {} ms (a FUSE or network mount that does not respond)", .0.as_millis())]
    Unanswered(Duration),
    /// Not asked: lookups of the same asker already wait on file systems that do
    /// not answer (ETIMEDOUT), or every worker does (EAGAIN).
    #[error("not looked up: {} of its earlier lookups still wait on a file system that does not answer", match .0 {
        Errno::ETIMEDOUT => "some",
        _ => "too many",
    })]
    Refused(Errno),
}

impl Error {
    /// Whether the path may exist but was not resolved: its file system, or every
    /// worker being held, kept agentmon from it.
    pub fn stalled(&self) -> bool {
        !matches!(self, Error::Io(_))
    }

    /// Whether the asker's own lookups did ([`Self::stalled`], and not for want of
    /// a worker held by others: EAGAIN blames no one).
    pub fn blamed(&self) -> bool {
        matches!(self, Error::Unanswered(_) | Error::Refused(Errno::ETIMEDOUT))
    }
}

/// Whose lookups a bound is for, and until when they may be waited for.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    /// The asker's share of the [`worker::RESOLVERS`] pool: a uid for a task's
    /// start, [`Wait::task`] for a task's events and delegations.
    pub who: u32,
    pub until: Instant,
}

impl Wait {
    pub fn new(who: u32, bound: Duration) -> Self {
        Self { who, until: Instant::now() + bound }
    }

    /// Task `cookie`'s share, for its events and its delegations (uids, the
    /// starts' shares, stay below 2^31).
    pub fn task(cookie: u32, bound: Duration) -> Self {
        Self::new(0x8000_0000 | cookie, bound)
    }
}

/// `p` canonical (absolute, every symlink and `..` resolved, as `realpath`),
/// without waiting on a file system past `w.until` (None: here, however long:
/// the command line, agentmon's own configuration).
pub fn canonicalize(p: &Path, w: Option<&Wait>) -> Result<PathBuf, Error> {
    let Some(w) = w else { return Ok(std::fs::canonicalize(p)?) };
    match cached(p) {
        // EINVAL, ENOSYS: a kernel without RESOLVE_CACHED (5.12) or openat2 (5.6).
        Err(Errno::EAGAIN | Errno::EINVAL | Errno::ENOSYS) => {}
        r => return r.map_err(|e| Error::Io(e.into())),
    }
    let left = w.until.saturating_duration_since(Instant::now());
    let owned = p.to_path_buf();
    match worker::RESOLVERS.run(w.who, left, move || std::fs::canonicalize(owned)) {
        Ok(r) => Ok(r?),
        Err(Stuck::Late) => Err(Error::Unanswered(left)),
        Err(Stuck::Refused(e)) => Err(Error::Refused(e)),
        Err(Stuck::Failed) => Err(Error::Io(io::Error::other("the lookup failed"))),
    }
}

/// A file's path (absolute, against the working directory), as [`canonicalize`]
/// resolves it: the whole path when it exists, else its directory's (a file not
/// made yet); as given when neither exists.
pub fn canonical_file(p: &Path, w: Option<&Wait>) -> Result<PathBuf, Error> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf())
    };
    match canonicalize(&abs, w) {
        Ok(real) => return Ok(real),
        Err(e) if e.stalled() => return Err(e),
        Err(_) => {}
    }
    match (abs.parent(), abs.file_name()) {
        (Some(d), Some(n)) => match canonicalize(d, w) {
            Ok(d) => Ok(d.join(n)),
            Err(e) if e.stalled() => Err(e),
            Err(_) => Ok(abs),
        },
        _ => Ok(abs),
    }
}

/// `p` resolved from the kernel's caches alone: EAGAIN when a file system would
/// have to be asked (a component not cached, or one whose file system revalidates
/// it, as FUSE does once its entry's time is up).
pub fn cached(p: &Path) -> Result<PathBuf, Errno> {
    use nix::fcntl::{AT_FDCWD, OFlag, OpenHow, ResolveFlag, openat2};
    // (nix does not name RESOLVE_CACHED, Linux 5.12.)
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::from_bits_retain(libc::RESOLVE_CACHED));
    let fd = openat2(AT_FDCWD, p, how)?;
    // The path the kernel names the open file by (d_path: asks no file system).
    // What the kernel's name does not settle (no /proc; removed meanwhile, or a
    // name that ends so; not absolute) is left to a lookup: EAGAIN.
    let real = std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd)))
        .map_err(|_| Errno::EAGAIN)?;
    if real.as_os_str().as_bytes().ends_with(b" (deleted)") || !real.is_absolute() {
        return Err(Errno::EAGAIN);
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_like_realpath_from_the_caches() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(root.join("real/sub")).unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("link")).unwrap();
        let w = Wait::new(1, Duration::from_secs(1));
        for (asked, want) in [
            (root.join("link/sub"), root.join("real/sub")),
            (root.join("real/sub/../sub/."), root.join("real/sub")),
            (root.join("link"), root.join("real")),
        ] {
            // Looked up once, so that the caches hold it.
            assert_eq!(std::fs::canonicalize(&asked).unwrap(), want);
            assert_eq!(cached(&asked).unwrap(), want, "{}", asked.display());
            assert_eq!(canonicalize(&asked, Some(&w)).unwrap(), want);
        }
        let gone = canonicalize(&root.join("no/such"), Some(&w)).unwrap_err();
        assert!(matches!(&gone, Error::Io(e) if e.kind() == io::ErrorKind::NotFound), "{gone:?}");
        assert!(!gone.stalled());
        // A file not made yet: its directory's path, resolved.
        for w in [None, Some(&w)] {
            assert_eq!(canonical_file(&root.join("link/new.jsonl"), w).unwrap(), root.join("real/new.jsonl"));
            assert_eq!(canonical_file(&root.join("no/such"), w).unwrap(), root.join("no/such"));
        }
    }
}
