//! Absolute, resolved paths from kernel operands.
//!
//! The kernel gives either an exact path (walked from the file itself: symlinks and
//! `..` already resolved) or the string the process passed plus the directory it is
//! relative to (walked from the dirfd or cwd). For the latter, intermediate symlinks
//! and `..` are resolved here by canonicalising the parent directory when it still
//! exists; otherwise the path is normalised lexically. The final component is never
//! followed: unlink/rename/chmod act on the link itself.

use std::path::{Component, Path, PathBuf};

use crate::decode::Operand;

/// Directory path from walk components (leaf first).
pub fn join_base(base: &[String]) -> String {
    if base.is_empty() {
        return "/".into();
    }
    let mut s = String::new();
    for c in base.iter().rev() {
        s.push('/');
        s.push_str(c);
    }
    s
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
}

/// Resolves an operand. `exact` means the kernel walked the file itself.
pub fn resolve(op: &Operand, exact: bool) -> (String, Resolution) {
    if exact {
        return (join_base(&op.base), Resolution::Exact);
    }
    let joined = if op.given.starts_with('/') {
        op.given.clone()
    } else if op.given.is_empty() {
        return (join_base(&op.base), Resolution::Exact);
    } else {
        format!("{}/{}", join_base(&op.base), op.given)
    };
    resolve_str(&joined)
}

/// Resolves an absolute path string as the kernel would for a call that does not
/// follow its last component.
pub fn resolve_str(joined: &str) -> (String, Resolution) {
    // /proc/self, /dev/fd and friends would resolve in agentmon's context, not the
    // agent's: never canonicalise under them.
    if joined.starts_with("/proc/") || joined.starts_with("/dev/fd/") || joined.starts_with("/dev/std") {
        return (normalize(joined), Resolution::Lexical);
    }
    let path = Path::new(joined);
    let trimmed = joined.trim_end_matches('/');
    let last = Path::new(trimmed).components().next_back();
    match last {
        Some(Component::Normal(name)) => {
            let parent = Path::new(trimmed).parent().unwrap_or(Path::new("/"));
            match std::fs::canonicalize(parent) {
                Ok(mut real) => {
                    real.push(name);
                    (real.to_string_lossy().into_owned(), Resolution::Canonical)
                }
                Err(_) => (normalize(joined), Resolution::Lexical),
            }
        }
        _ => match std::fs::canonicalize(path) {
            Ok(real) => (real.to_string_lossy().into_owned(), Resolution::Canonical),
            Err(_) => (normalize(joined), Resolution::Lexical),
        },
    }
}

/// Convenience for tests: canonical path of an existing file or directory.
pub fn real(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(given: &str, base: &[&str]) -> Operand {
        Operand { given: given.into(), base: base.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn joins_walk_components_leaf_first() {
        assert_eq!(join_base(&[]), "/");
        assert_eq!(join_base(&["c".into(), "b".into(), "a".into()]), "/a/b/c");
        assert_eq!(resolve(&op("", &["x", "tmp"]), true).0, "/tmp/x");
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
        // link/f -> real/f
        let (p, how) = resolve(&op("link/f", &b), false);
        assert_eq!((p.as_str(), how), (root.join("real/f").to_str().unwrap(), Resolution::Canonical));
        // other/../link/f -> real/f
        assert_eq!(resolve(&op("other/../link/f", &b), false).0, root.join("real/f").to_str().unwrap());
        // The last component is not followed.
        assert_eq!(resolve(&op("link", &b), false).0, root.join("link").to_str().unwrap());
        // Paths that would resolve in agentmon's own context are kept lexical.
        assert_eq!(resolve_str("/dev/fd/3"), ("/dev/fd/3".to_string(), Resolution::Lexical));
        assert_eq!(resolve_str("/proc/self/fd/../exe").0, "/proc/self/exe");
        // A vanished parent falls back to lexical normalisation.
        let (p, how) = resolve(&op("gone/x/../y", &b), false);
        assert_eq!((p.as_str(), how), (root.join("gone/y").to_str().unwrap(), Resolution::Lexical));
    }
}
