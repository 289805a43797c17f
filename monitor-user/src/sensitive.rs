//! The sensitive-read set: read-only opens are not events, except of these paths
//! (credentials, keys, `.env`). The kernel cannot match globs cheaply, so each glob's
//! last component is turned into a basename prefilter (exact name, `prefix*` or
//! `*.ext`) that the kernel checks by hash; userspace then matches the full glob on
//! the resolved path and drops prefilter hits that do not match.

use monitor_common::{
    hash,
    lsm::{SENS_DEPTH, SENS_PATTERNS, SensPattern},
};

/// Shipped default. `~` is not expanded: `**/` covers every home.
pub const DEFAULT_PATTERNS: &[&str] = &[
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/sudoers",
    "**/.ssh/id_*",
    "/etc/ssh/ssh_host_*",
    "**/.env",
    "**/.env.*",
    "**/.aws/credentials",
    "**/.kube/config",
    "**/.docker/config.json",
    "**/.netrc",
    "**/.git-credentials",
    "**/.pypirc",
    "**/.npmrc",
    "**/.config/gcloud/credentials.db",
    "**/.config/gcloud/application_default_credentials.json",
    "**/*.key",
    "**/.config/google-chrome/*/Login Data",
    "**/.config/google-chrome/*/Cookies",
    "**/.config/chromium/*/Login Data",
    "**/.mozilla/firefox/*/logins.json",
    "**/.mozilla/firefox/*/key4.db",
    "**/.mozilla/firefox/*/cookies.sqlite",
];

const MAX_PREFIX_LENS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum SensitiveError {
    #[error("sensitive pattern {pattern:?}: {msg}")]
    Pattern { pattern: String, msg: String },
}

/// Kernel prefilter of one pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Prefilter {
    Exact(String),
    Prefix(String),
    Ext(String),
}

#[derive(Debug, Clone)]
pub struct SensitiveSet {
    patterns: Vec<String>,
    globs: crate::globs::Globs,
    /// Hashes for the kernel's SENSITIVE map.
    pub hashes: Vec<u64>,
    /// Distinct prefix lengths (0 = unused), for the CONFIG global.
    pub prefix_lens: [u8; MAX_PREFIX_LENS],
    /// agentmon's own private keys (canonical paths): read, they forge what agentmon
    /// signs. Always reported, whatever the patterns; not in the kernel's exact
    /// matcher (a path may be deeper than it takes).
    secrets: Vec<String>,
}

fn has_meta(s: &str) -> bool {
    s.contains(['*', '?', '[', ']', '{', '}'])
}

fn prefilter(pattern: &str) -> Result<Prefilter, String> {
    let last = pattern.rsplit('/').next().unwrap_or(pattern);
    if last.is_empty() {
        return Err("must name a file, not end in /".into());
    }
    if last.len() > 63 {
        return Err("last component longer than 63 bytes".into());
    }
    if !has_meta(last) {
        return Ok(Prefilter::Exact(last.into()));
    }
    if let Some(p) = last.strip_suffix('*')
        && !p.is_empty()
        && !has_meta(p)
    {
        return Ok(Prefilter::Prefix(p.into()));
    }
    if let Some(e) = last.strip_prefix("*.")
        && !e.is_empty()
        && !has_meta(e)
        && !e.contains('.')
    {
        return Ok(Prefilter::Ext(format!(".{e}")));
    }
    Err("the last path component must be a literal name, `prefix*` or `*.ext`".into())
}

/// One pattern for the kernel's exact match (see [`SensitiveSet::exact`]).
fn exact_pattern(p: &str) -> Result<SensPattern, SensitiveError> {
    let err = |msg: &str| SensitiveError::Pattern { pattern: p.into(), msg: msg.into() };
    let (anchored, rest) = match p.strip_prefix("**/") {
        Some(r) => (false, r),
        None => (true, p.strip_prefix('/').ok_or_else(|| err("must be absolute or start with **/"))?),
    };
    let mut comps: Vec<&str> = rest.split('/').collect();
    let leaf = comps.pop().ok_or_else(|| err("no file name"))?;
    if comps.len() > SENS_DEPTH {
        return Err(err(&format!(
            "at most {SENS_DEPTH} directories above the file can be matched in the kernel"
        )));
    }
    let mut out = SensPattern { n: comps.len() as u32, anchored: anchored as u32, ..Default::default() };
    out.leaf = match prefilter(leaf).map_err(|m| err(&m))? {
        Prefilter::Exact(s) => hash::fnv(hash::SEED_EXACT, s.as_bytes()),
        Prefilter::Ext(s) => hash::fnv(hash::SEED_EXT, s.as_bytes()),
        Prefilter::Prefix(s) => hash::fnv(hash::SEED_PREFIX, s.as_bytes()),
    };
    // Going up from the leaf: the nearest directory first.
    for (j, c) in comps.iter().rev().enumerate() {
        out.up[j] = match *c {
            "*" => 0,
            c if c.is_empty() || has_meta(c) || c.len() > 63 => {
                return Err(err("directories must be literal names (at most 63 bytes) or *"));
            }
            c => hash::fnv(hash::SEED_EXACT, c.as_bytes()),
        };
    }
    Ok(out)
}

impl SensitiveSet {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, SensitiveError> {
        let mut b = Vec::new();
        let mut hashes = Vec::new();
        let mut lens: Vec<u8> = Vec::new();
        for p in patterns {
            let p = p.as_ref();
            let err = |msg: String| SensitiveError::Pattern { pattern: p.into(), msg };
            if !p.starts_with('/') && !p.starts_with("**/") {
                return Err(err("must be absolute or start with **/".into()));
            }
            let glob = globset::GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .map_err(|e| err(e.to_string()))?;
            b.push(glob);
            match prefilter(p).map_err(err)? {
                Prefilter::Exact(s) => hashes.push(hash::fnv(hash::SEED_EXACT, s.as_bytes())),
                Prefilter::Ext(s) => hashes.push(hash::fnv(hash::SEED_EXT, s.as_bytes())),
                Prefilter::Prefix(s) => {
                    let n = s.len() as u8;
                    if !lens.contains(&n) {
                        if lens.len() == MAX_PREFIX_LENS {
                            return Err(err(format!(
                                "at most {MAX_PREFIX_LENS} distinct `prefix*` lengths are supported"
                            )));
                        }
                        lens.push(n);
                    }
                    hashes.push(hash::fnv(hash::SEED_PREFIX, s.as_bytes()));
                }
            }
        }
        let globs = crate::globs::Globs::new(&b)
            .map_err(|e| SensitiveError::Pattern { pattern: "(set)".into(), msg: e.to_string() })?;
        let mut prefix_lens = [0u8; MAX_PREFIX_LENS];
        prefix_lens[..lens.len()].copy_from_slice(&lens);
        hashes.sort_unstable();
        hashes.dedup();
        Ok(Self {
            patterns: patterns.iter().map(|p| p.as_ref().to_string()).collect(),
            globs,
            hashes,
            prefix_lens,
            secrets: Vec::new(),
        })
    }

    /// The set, also reporting reads of `secrets` (absolute paths): the kernel's
    /// prefilter takes their file names, userspace their whole paths.
    pub fn with_secrets(mut self, secrets: &[std::path::PathBuf]) -> Self {
        for p in secrets {
            let Some(name) = p.file_name() else { continue };
            self.hashes.push(hash::fnv(hash::SEED_EXACT, name.as_encoded_bytes()));
            self.secrets.push(p.to_string_lossy().into_owned());
        }
        self.hashes.sort_unstable();
        self.hashes.dedup();
        self.secrets.sort();
        self.secrets.dedup();
        self
    }

    /// Is `path` (resolved, absolute) one of agentmon's private keys?
    pub fn is_secret(&self, path: &str) -> bool {
        self.secrets.binary_search_by(|s| s.as_str().cmp(path)).is_ok()
    }

    pub fn default_set() -> Self {
        Self::new(DEFAULT_PATTERNS).expect("default sensitive patterns are valid")
    }

    /// The kernel's first-stage filter over [`Self::hashes`].
    pub fn bloom(&self) -> [u64; 64] {
        let mut b = [0u64; 64];
        for h in &self.hashes {
            let (w, m) = monitor_common::config::bloom_bit(*h);
            b[w] |= m;
        }
        b
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// The set as the BPF LSM tier matches it exactly (to refuse reads: the
    /// basename prefilter alone would refuse every file called `config`). A pattern
    /// must be `/a/b/LEAF` or `**/a/b/LEAF`, with literal or `*` parent components
    /// (at most [`SENS_DEPTH`] of them) and a leaf as the prefilter takes it.
    pub fn exact(&self) -> Result<Vec<SensPattern>, SensitiveError> {
        if self.patterns.len() > SENS_PATTERNS as usize {
            return Err(SensitiveError::Pattern {
                pattern: "(set)".into(),
                msg: format!("at most {SENS_PATTERNS} patterns can be matched in the kernel"),
            });
        }
        self.patterns.iter().map(|p| exact_pattern(p)).collect()
    }

    /// Does the resolved absolute `path` match a pattern?
    pub fn matches(&self, path: &str) -> bool {
        self.globs.is_match(path) || self.is_secret(path)
    }

    /// The kernel prefilter, computed as the kernel does (for tests).
    pub fn kernel_prefilter_hit(&self, basename: &str) -> bool {
        let b = basename.as_bytes();
        if self.hashes.binary_search(&hash::fnv(hash::SEED_EXACT, b)).is_ok() {
            return true;
        }
        if let Some(i) = b.iter().rposition(|c| *c == b'.')
            && self.hashes.binary_search(&hash::fnv(hash::SEED_EXT, &b[i..])).is_ok()
        {
            return true;
        }
        self.prefix_lens.iter().filter(|l| **l > 0).any(|l| {
            let l = *l as usize;
            b.len() >= l && self.hashes.binary_search(&hash::fnv(hash::SEED_PREFIX, &b[..l])).is_ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agentmons_keys_are_reported_by_whole_path() {
        let set = SensitiveSet::new(&["/etc/shadow"])
            .unwrap()
            .with_secrets(&["/var/lib/agentmon/signing".into(), "/etc/agentmon/nats.nk".into()]);
        // The kernel reports every file of the name; userspace keeps the key alone.
        assert!(set.kernel_prefilter_hit("signing") && set.kernel_prefilter_hit("nats.nk"));
        assert!(set.matches("/var/lib/agentmon/signing") && set.is_secret("/var/lib/agentmon/signing"));
        assert!(!set.matches("/home/a/signing") && !set.is_secret("/home/a/signing"));
        assert!(set.matches("/etc/shadow") && !set.is_secret("/etc/shadow"));
        // The kernel's exact matcher (refusals on the LSM tier) is the patterns' alone.
        assert_eq!(set.exact().unwrap().len(), 1);
    }

    #[test]
    fn the_default_set_matches_exactly_in_the_kernel() {
        let set = SensitiveSet::default_set();
        let exact = set.exact().expect("every default pattern has an exact kernel form");
        assert_eq!(exact.len(), DEFAULT_PATTERNS.len());
        let kube = exact_pattern("**/.kube/config").unwrap();
        assert_eq!((kube.n, kube.anchored), (1, 0));
        assert_eq!(kube.up[0], hash::fnv(hash::SEED_EXACT, b".kube"));
        assert_eq!(kube.leaf, hash::fnv(hash::SEED_EXACT, b"config"));
        let chrome = exact_pattern("**/.config/google-chrome/*/Login Data").unwrap();
        assert_eq!(chrome.n, 3);
        assert_eq!(chrome.up[0], 0, "* matches any directory");
        assert_eq!(chrome.up[2], hash::fnv(hash::SEED_EXACT, b".config"));
        let host = exact_pattern("/etc/ssh/ssh_host_*").unwrap();
        assert_eq!((host.n, host.anchored), (2, 1));
        assert_eq!(host.leaf, hash::fnv(hash::SEED_PREFIX, b"ssh_host_"));
    }

    #[test]
    fn patterns_the_kernel_cannot_match_exactly_are_named() {
        for p in ["**/a/**/b.key", "/a/b/c/d/e/f/g/h.key", "**/a[xy]/b.key"] {
            let e = exact_pattern(p).unwrap_err().to_string();
            assert!(e.contains(p), "{e}");
        }
    }

    #[test]
    fn default_set_matches_credentials_and_not_code() {
        let s = SensitiveSet::default_set();
        for p in [
            "/etc/shadow",
            "/root/.ssh/id_ed25519",
            "/home/a/.aws/credentials",
            "/srv/repo/.env",
            "/srv/repo/.env.production",
            "/home/a/.kube/config",
            "/tmp/server.key",
        ] {
            assert!(s.matches(p), "{p}");
            let base = p.rsplit('/').next().unwrap();
            assert!(s.kernel_prefilter_hit(base), "prefilter {base}");
        }
        for p in ["/srv/repo/main.rs", "/home/a/.config/app/config", "/dev/null", "/etc/passwd"] {
            assert!(!s.matches(p), "{p}");
        }
        // Prefilter passes `config` anywhere; the glob then rejects it.
        assert!(s.kernel_prefilter_hit("config"));
        assert!(!s.kernel_prefilter_hit("null"));
        assert!(!s.kernel_prefilter_hit("main.rs"));
    }

    #[test]
    fn rejects_patterns_the_kernel_cannot_prefilter() {
        for bad in ["relative/.env", "/etc/*/x*y", "/srv/", "/a/*.tar.gz", "/a/[ab]c"] {
            assert!(SensitiveSet::new(&[bad]).is_err(), "{bad}");
        }
        let too_many = ["/a/b*", "/a/bc*", "/a/bcd*", "/a/bcde*", "/a/bcdef*"];
        assert!(SensitiveSet::new(&too_many).is_err());
    }
}
