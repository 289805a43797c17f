//! Many globs matched in one pass of one automaton.
//!
//! `globset::GlobSet` sorts its globs into strategies (literal, basename,
//! extension, prefix, suffix, a regex set) and tries each in turn: up to seven
//! searches, two hash computations and an allocation for the candidate, for every
//! path of every event. Here the same globs, as globset itself translates them to
//! regular expressions, are one anchored lazy DFA: a path is read once. Globs keep
//! globset's syntax and meaning (the translation is globset's); only the matching
//! moves.

use globset::Glob;
use regex_automata::{
    Anchored, Input, MatchKind, PatternSet,
    meta::{BuildError, Regex},
    util::syntax,
};

/// A glob that does not parse, or a set too large for the automaton's limits.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Glob(#[from] globset::Error),
    #[error("the globs make too large an automaton: {0}")]
    Build(#[from] Box<BuildError>),
}

/// A set of globs. The default matches nothing.
#[derive(Clone, Default)]
pub struct Globs {
    /// Stops at the first glob that matches: most paths match none.
    any: Option<Regex>,
}

/// A set of globs that also tells which matched; glob `i` is the `i`th given.
#[derive(Clone, Default)]
pub struct GlobIndex {
    any: Globs,
    /// Finds every glob that matches.
    all: Option<Regex>,
}

fn build(globs: &[Glob], kind: MatchKind) -> Result<Option<Regex>, Error> {
    if globs.is_empty() {
        return Ok(None);
    }
    // Every glob's regex starts with `^`: no literal-only strategy is chosen, whose
    // overlapping search names only the first pattern.
    let pats: Vec<&str> = globs.iter().map(|g| g.regex()).collect();
    Regex::builder()
        // As globset builds its own: paths are bytes, `*` crosses newlines.
        .syntax(syntax::Config::new().utf8(false).dot_matches_new_line(true))
        .configure(
            Regex::config()
                .match_kind(kind)
                .utf8_empty(false)
                .nfa_size_limit(Some(10 << 20))
                .hybrid_cache_capacity(10 << 20),
        )
        .build_many(&pats)
        .map(Some)
        .map_err(|e| Error::Build(Box::new(e)))
}

impl Globs {
    pub fn new(globs: &[Glob]) -> Result<Self, Error> {
        Ok(Globs { any: build(globs, MatchKind::LeftmostFirst)? })
    }

    /// Whether any glob matches `path`.
    pub fn is_match(&self, path: &str) -> bool {
        self.any.as_ref().is_some_and(|r| r.is_match(Input::new(path).anchored(Anchored::Yes)))
    }
}

impl GlobIndex {
    pub fn new(globs: &[Glob]) -> Result<Self, Error> {
        Ok(GlobIndex { any: Globs::new(globs)?, all: build(globs, MatchKind::All)? })
    }

    /// The index of every glob that matches `path`, in order.
    pub fn matches(&self, path: &str) -> Vec<usize> {
        let Some(all) = &self.all else { return Vec::new() };
        if !self.any.is_match(path) {
            return Vec::new();
        }
        let mut set = PatternSet::new(all.pattern_len());
        all.which_overlapping_matches(&Input::new(path).anchored(Anchored::Yes), &mut set);
        set.iter().map(|p| p.as_usize()).collect()
    }
}

// The automaton is no reading for a person: its size is.
impl std::fmt::Debug for Globs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Globs({})", self.any.as_ref().map_or(0, |r| r.pattern_len()))
    }
}

impl std::fmt::Debug for GlobIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GlobIndex({:?})", self.any)
    }
}

#[cfg(test)]
mod tests {
    use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

    use super::*;

    fn both(pats: &[&str], literal_separator: bool) -> (GlobIndex, GlobSet, Vec<Glob>) {
        let globs: Vec<Glob> = pats
            .iter()
            .map(|p| GlobBuilder::new(p).literal_separator(literal_separator).build().unwrap())
            .collect();
        let mut b = GlobSetBuilder::new();
        for g in &globs {
            b.add(g.clone());
        }
        (GlobIndex::new(&globs).unwrap(), b.build().unwrap(), globs)
    }

    /// What globset answers, but for one case: globset's basename and extension
    /// shortcuts never match a path whose last component is `..`, while the
    /// glob's own regex (and `Glob::compile_matcher`, which Landlock's checks use)
    /// does. agentmon's paths are resolved, and a scope may not hold `..`; there
    /// the answer is each glob's own matcher.
    fn want(set: &GlobSet, globs: &[Glob], p: &str) -> Vec<usize> {
        if p.ends_with("/..") || p == ".." {
            return (0..globs.len()).filter(|&i| globs[i].compile_matcher().is_match(p)).collect();
        }
        set.matches(p)
    }

    /// Every glob form the rules and scopes use agrees with globset's own matching,
    /// on paths chosen to sit at each form's edges.
    #[test]
    fn matches_as_globset_does() {
        let pats = [
            "/etc/passwd",
            "**/.ssh/**",
            "*.pem",
            "/home/*/.bashrc",
            "**/id_rsa*",
            "/srv/repo/**",
            "/srv/repo/src/*.rs",
            "**/.git/hooks/*",
            "/tmp/[ab]?.txt",
            "/var/{log,tmp}/**",
            "**",
            "/srv/repo/build/**/*.o",
        ];
        let paths = [
            "/etc/passwd",
            "/etc/passwd2",
            "/home/u/.ssh/id_rsa",
            "/home/u/.ssh",
            "/x/key.pem",
            "key.pem",
            "/home/u/.bashrc",
            "/home/u/v/.bashrc",
            "/srv/repo",
            "/srv/repo/",
            "/srv/repo/src/main.rs",
            "/srv/repo/src/a/main.rs",
            "/srv/repo/.git/hooks/pre-commit",
            "/tmp/a1.txt",
            "/tmp/c1.txt",
            "/var/log/x",
            "/var/lib/x",
            "/srv/repo/build/a/b/c.o",
            "/srv/repo/build/c.o",
            "/weird/\u{e9}\n/name",
            "",
        ];
        for literal_separator in [false, true] {
            let (got, set, _) = both(&pats, literal_separator);
            for p in paths {
                assert_eq!(got.matches(p), set.matches(p), "{p:?} (literal_separator {literal_separator})");
                assert_eq!(got.any.is_match(p), set.is_match(p), "{p:?}");
            }
        }
    }

    /// Globs and paths made from the pieces where glob forms meet (separators,
    /// `*` beside `**`, classes that exclude `/`, alternatives with an empty
    /// branch, escapes, dots, non-ASCII): the same answers as globset, glob by glob.
    #[test]
    fn generated_globs_agree_with_globset() {
        use proptest::prelude::*;
        let glob_piece = prop::sample::select(vec![
            "/", "*", "**", "?", "[!a/]", "[a-c]", "{a,}", "{.a,b/*}", "\\*", ".", "\u{e9}", "a", "b",
            "/**/", "*.",
        ]);
        let path_piece =
            prop::sample::select(vec!["/", "a", "b", "c", ".", "..", "\u{e9}", "*", "\n", "ab", ".a", "/a/"]);
        let globs = prop::collection::vec(prop::collection::vec(glob_piece, 1..6), 1..5);
        let paths = prop::collection::vec(prop::collection::vec(path_piece, 0..8), 1..12);
        let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
            cases: 3000,
            ..Default::default()
        });
        runner
            .run(&(globs, paths, any::<bool>()), |(globs, paths, sep)| {
                let pats: Vec<String> = globs.iter().map(|g| g.concat()).collect();
                let pats: Vec<&str> = pats.iter().map(String::as_str).collect();
                if pats.iter().any(|p| GlobBuilder::new(p).literal_separator(sep).build().is_err()) {
                    return Ok(());
                }
                let (got, set, globs) = both(&pats, sep);
                for p in paths.iter().map(|p| p.concat()) {
                    prop_assert_eq!(
                        got.matches(&p),
                        want(&set, &globs, &p),
                        "{:?} {:?} sep {}",
                        pats,
                        p,
                        sep
                    );
                    prop_assert_eq!(got.any.is_match(&p), !want(&set, &globs, &p).is_empty());
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn no_globs_match_nothing() {
        let g = GlobIndex::new(&[]).unwrap();
        assert!(g.all.is_none());
        assert!(!g.any.is_match("/x"));
        assert!(g.matches("/x").is_empty());
        assert!(!Globs::default().is_match(""));
    }
}
