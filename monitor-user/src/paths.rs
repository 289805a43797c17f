//! Absolute, resolved paths from kernel operands.
//!
//! The kernel gives either an exact path (walked from the file itself: symlinks and
//! `..` already resolved) or the string the process passed plus the directory it is
//! relative to (walked from the dirfd or cwd). For the latter, intermediate symlinks
//! and `..` are resolved here by canonicalising the parent directory when it still
//! exists; otherwise the path is normalised lexically. The final component is never
//! followed: unlink/rename/chmod act on the link itself.

use std::{
    collections::HashMap,
    path::{Component, Path, PathBuf},
    time::{Duration, Instant},
};

use crate::decode::Operand;

/// Directory path from an operand's walk components.
pub fn join_base(op: &Operand) -> String {
    let mut s = String::with_capacity(64);
    for c in op.components() {
        s.push('/');
        s.push_str(&c);
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

/// The operand as the kernel gave it, joined without interpretation (no `..`
/// applied, nothing resolved): for paths that were not read whole.
pub fn join_lexical(op: &Operand) -> String {
    let g: &str = &op.given;
    if g.starts_with('/') {
        return g.to_string();
    }
    let mut p = join_base(op);
    if !g.is_empty() {
        if p != "/" {
            p.push('/');
        }
        p.push_str(g);
    }
    p
}

/// Lexical normalisation: drops `.` and empty components, applies `..`.
pub fn normalize(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    let mut s = String::with_capacity(p.len());
    for c in &out {
        s.push('/');
        s.push_str(c);
    }
    if s.is_empty() { "/".into() } else { s }
}

/// How a path was resolved (kept for tests and diagnostics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Walked from the file in the kernel.
    Exact,
    /// Parent directory canonicalised in userspace.
    Canonical,
    /// Lexical only (the parent no longer exists).
    Lexical,
    /// Its directory's file system did not answer in time (a FUSE server that
    /// stalls): shown lexically after [`crate::event::UNRESOLVED_PREFIX`], never
    /// judged as the path it may not be.
    Unanswered,
}

/// How long the enricher waits for a directory no cache can resolve.
pub const WAIT: Duration = Duration::from_millis(50);
/// How long a task's lookups may keep the enricher waiting in all, per
/// [`WINDOW`]: a file system that answers each just under [`WAIT`] would
/// otherwise slow every task's events to a trickle. Past it, the task's
/// directories no cache resolves are shown unresolved at once until the window
/// ends.
pub const SPEND: Duration = Duration::from_millis(250);
pub const WINDOW: Duration = Duration::from_secs(10);

/// A directory's canonical form, as far as it could be had.
enum Dir {
    Real(String),
    /// It does not exist (any more), or cannot be resolved.
    Gone,
    /// Its file system kept agentmon waiting.
    Unanswered,
}

/// Resolves operands, caching directory canonicalisations.
///
/// The cache holds successful lookups for at most [`CACHE_TTL`], and the enricher
/// clears it whenever a tracked process renames, links or deletes something (the
/// events that can change what a directory path resolves to), so it never answers
/// from before a change agentmon has seen.
#[derive(Default)]
pub struct Resolver {
    cache: HashMap<String, (String, Instant)>,
    /// Per top-level task's cookie (a sub-task's lookups are its top's): since
    /// when, and how long, its lookups kept the enricher waiting ([`SPEND`]).
    spent: HashMap<u32, (Instant, Duration)>,
}

const CACHE_TTL: Duration = Duration::from_secs(1);
const CACHE_MAX: usize = 4096;

impl Resolver {
    /// Resolves an operand of an event of top-level task `cookie` (its share of
    /// the lookups waited for). `exact` means the kernel walked the file itself.
    pub fn resolve(&mut self, op: &Operand, exact: bool, cookie: u32) -> (String, Resolution) {
        let g: &str = &op.given;
        if exact || g.is_empty() {
            return (join_base(op), Resolution::Exact);
        }
        // A plain name in a directory the kernel walked: nothing left to resolve (the
        // last component is never followed).
        if !g.starts_with('/') && !g.contains('/') && g != "." && g != ".." {
            let mut p = join_base(op);
            if p != "/" {
                p.push('/');
            }
            p.push_str(g);
            return (p, Resolution::Exact);
        }
        let joined = if g.starts_with('/') { g.to_string() } else { format!("{}/{}", join_base(op), g) };
        self.resolve_str(&joined, cookie)
    }

    /// Forgets cached directory resolutions.
    pub fn invalidate(&mut self) {
        self.cache.clear();
    }

    /// From the caches (agentmon's, then the kernel's), or by a lookup waited for
    /// at most [`WAIT`]: the directory may be on a file system the agent's side
    /// serves, and the loop must not wait on it.
    fn canonical_dir(&mut self, dir: &Path, cookie: u32) -> Dir {
        let Some(key) = dir.to_str() else { return Dir::Gone };
        if let Some((real, at)) = self.cache.get(key)
            && at.elapsed() < CACHE_TTL
        {
            return Dir::Real(real.clone());
        }
        let real = match crate::realpath::cached(dir) {
            Ok(real) => real,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSYS) => {
                let now = Instant::now();
                if !self.may_wait(cookie, now) {
                    return Dir::Unanswered;
                }
                let r = crate::realpath::canonicalize(dir, Some(&crate::realpath::Wait::task(cookie, WAIT)));
                self.waited(cookie, now);
                match r {
                    Ok(real) => real,
                    Err(e) if e.stalled() => return Dir::Unanswered,
                    Err(_) => return Dir::Gone,
                }
            }
            Err(_) => return Dir::Gone,
        };
        let real = real.to_string_lossy().into_owned();
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
        self.cache.insert(key.to_string(), (real.clone(), Instant::now()));
        Dir::Real(real)
    }

    /// Whether task `cookie`'s lookups may still keep the enricher waiting now.
    fn may_wait(&mut self, cookie: u32, now: Instant) -> bool {
        match self.spent.get(&cookie) {
            Some((since, _)) if now.duration_since(*since) >= WINDOW => {
                self.spent.remove(&cookie);
                true
            }
            Some((_, spent)) => *spent < SPEND,
            None => true,
        }
    }

    /// Task `cookie`'s lookup, begun at `began`, kept the enricher waiting until now.
    /// Every one a worker made counts, however quick: a file system that answers
    /// each just under a floor, with no entry the kernel may cache (a FUSE entry
    /// timeout of 0), would otherwise have kept the loop waiting without end.
    fn waited(&mut self, cookie: u32, began: Instant) {
        let took = began.elapsed();
        if self.spent.len() >= CACHE_MAX {
            self.spent.retain(|_, (since, _)| began.duration_since(*since) < WINDOW);
        }
        self.spent.entry(cookie).or_insert((began, Duration::ZERO)).1 += took;
    }

    /// Resolves an absolute path string as the kernel would for a call that does not
    /// follow its last component.
    pub fn resolve_str(&mut self, joined: &str, cookie: u32) -> (String, Resolution) {
        // /proc/self, /dev/fd and friends would resolve in agentmon's context, not the
        // agent's: never canonicalise under them.
        if joined.starts_with("/proc/") || joined.starts_with("/dev/fd/") || joined.starts_with("/dev/std") {
            return (normalize(joined), Resolution::Lexical);
        }
        let trimmed = joined.trim_end_matches('/');
        let (dir, name) = match Path::new(trimmed).components().next_back() {
            Some(Component::Normal(name)) => {
                (Path::new(trimmed).parent().unwrap_or(Path::new("/")), Some(name))
            }
            _ => (Path::new(joined), None),
        };
        match (self.canonical_dir(dir, cookie), name) {
            (Dir::Real(mut real), Some(name)) => {
                if real != "/" {
                    real.push('/');
                }
                real.push_str(&name.to_string_lossy());
                (real, Resolution::Canonical)
            }
            (Dir::Real(real), None) => (real, Resolution::Canonical),
            (Dir::Gone, _) => (normalize(joined), Resolution::Lexical),
            (Dir::Unanswered, _) => {
                (format!("{}{}", crate::event::UNRESOLVED_PREFIX, normalize(joined)), Resolution::Unanswered)
            }
        }
    }
}

/// Convenience for tests: canonical path of an existing file or directory.
pub fn real(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An operand with walk components `base` (leaf first), as the kernel records it.
    fn op(given: &'static str, base: &[&str]) -> Operand<'static> {
        let mut b = Vec::new();
        for c in base {
            b.extend_from_slice(c.as_bytes());
            b.push(0);
        }
        Operand::new(given, Box::leak(b.into_boxed_slice()))
    }

    #[test]
    fn joins_walk_components_leaf_first() {
        assert_eq!(join_base(&op("", &[])), "/");
        assert_eq!(join_base(&op("", &["c", "b", "a"])), "/a/b/c");
        let mut r = Resolver::default();
        assert_eq!(r.resolve(&op("", &["x", "tmp"]), true, 0).0, "/tmp/x");
        assert_eq!(
            r.resolve(&op("f.txt", &["x", "tmp"]), false, 0),
            ("/tmp/x/f.txt".into(), Resolution::Exact)
        );
        assert_eq!(r.resolve(&op("f.txt", &[]), false, 0).0, "/f.txt");
    }

    #[test]
    fn a_tasks_waits_are_bounded_per_window() {
        let mut r = Resolver::default();
        let t0 = Instant::now();
        assert!(r.may_wait(7, t0));
        r.spent.insert(7, (t0, SPEND));
        assert!(!r.may_wait(7, t0 + Duration::from_secs(1)), "spent: no more waits in the window");
        assert!(r.may_wait(8, t0), "another task's are its own");
        assert!(r.may_wait(7, t0 + WINDOW), "a new window");
        assert!(!r.spent.contains_key(&7));
        r.waited(7, Instant::now() - Duration::from_micros(900));
        assert!(r.spent[&7].1 >= Duration::from_micros(900), "a quick lookup counts too");
        r.waited(7, Instant::now() - Duration::from_millis(60));
        assert!(r.spent[&7].1 >= Duration::from_micros(60_900) && r.spent[&7].1 < SPEND);
        // Quick ones add up: 280 of 0.9 ms are past the budget.
        for _ in 0..280 {
            r.waited(8, Instant::now() - Duration::from_micros(900));
        }
        assert!(!r.may_wait(8, Instant::now()), "{:?}", r.spent[&8]);
    }

    #[test]
    fn normalizes_lexically() {
        assert_eq!(normalize("/a/./b//c/../d/"), "/a/b/d");
        assert_eq!(normalize("/../.."), "/");
        assert_eq!(normalize("/a/b/.."), "/a");
    }

    #[test]
    fn resolves_symlinked_parent_and_dotdot() {
        let dir = tempfile::tempdir().unwrap();
        let root = real(dir.path());
        std::fs::create_dir(root.join("real")).unwrap();
        std::fs::create_dir(root.join("other")).unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("link")).unwrap();
        let mut base: Vec<String> = root.iter().skip(1).map(|c| c.to_string_lossy().into_owned()).collect();
        base.reverse();
        let b: Vec<&str> = base.iter().map(String::as_str).collect();
        let mut r = Resolver::default();
        // link/f -> real/f
        let (p, how) = r.resolve(&op("link/f", &b), false, 0);
        assert_eq!((p.as_str(), how), (root.join("real/f").to_str().unwrap(), Resolution::Canonical));
        // other/../link/f -> real/f
        assert_eq!(r.resolve(&op("other/../link/f", &b), false, 0).0, root.join("real/f").to_str().unwrap());
        // The last component is not followed.
        assert_eq!(r.resolve(&op("./link", &b), false, 0).0, root.join("link").to_str().unwrap());
        // After the symlink is repointed, an invalidated cache sees the change.
        std::fs::remove_file(root.join("link")).unwrap();
        std::os::unix::fs::symlink(root.join("other"), root.join("link")).unwrap();
        r.invalidate();
        assert_eq!(r.resolve(&op("link/f", &b), false, 0).0, root.join("other/f").to_str().unwrap());
        // Paths that would resolve in agentmon's own context are kept lexical.
        assert_eq!(r.resolve_str("/dev/fd/3", 0), ("/dev/fd/3".to_string(), Resolution::Lexical));
        assert_eq!(r.resolve_str("/proc/self/fd/../exe", 0).0, "/proc/self/exe");
        // A vanished parent falls back to lexical normalisation.
        let (p, how) = r.resolve(&op("gone/x/../y", &b), false, 0);
        assert_eq!((p.as_str(), how), (root.join("gone/y").to_str().unwrap(), Resolution::Lexical));
    }
}
