//! A task's compiled scope: path globs per operation class and network endpoints,
//! with the containment tests that delegation uses.

use std::{
    net::{IpAddr, ToSocketAddrs},
    path::{Path, PathBuf},
};

use globset::GlobBuilder;
use ipnet::IpNet;

use crate::{
    globs::{self, Globs},
    realpath::Wait,
};

/// Path patterns of one class (read, write, delete, exec). Patterns are absolute
/// globs; `**` crosses directories, `*` does not. The literal prefix of each pattern
/// is canonicalised when the task is loaded, so a scope written through a symlink
/// matches the resolved paths events carry.
#[derive(Debug, Clone, Default)]
pub struct PathSet {
    pub patterns: Vec<String>,
    set: Globs,
}

/// Characters that make a path component a glob.
pub fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}

/// The longest leading run of non-glob components (`/srv/repo` of `/srv/repo/**/x`).
pub fn literal_prefix(pattern: &str) -> &str {
    let mut end = 0;
    for (i, c) in pattern.char_indices() {
        if matches!(c, '*' | '?' | '[' | '{') {
            return &pattern[..end];
        }
        if c == '/' {
            end = i;
        }
    }
    pattern
}

/// How a manifest's paths are resolved when it is loaded.
#[derive(Debug, Clone, Copy)]
pub enum Resolve {
    /// Here, however long their file systems take (the command line, replay: whoever
    /// asks waits on its own file systems).
    Here,
    /// Bounded (agentmon's loop: a start, a delegation): a path whose file system
    /// does not answer in time refuses the manifest.
    Within(Wait),
    /// Bounded, and a path not answered in time kept as written (a restarted
    /// daemon's task, held to the scope recorded at its start anyway).
    Lenient(Wait),
}

/// A path of a manifest that could not be resolved in time.
#[derive(Debug, thiserror::Error)]
#[error("{dir}: {err}")]
pub struct Unanswered {
    pub dir: String,
    pub err: crate::realpath::Error,
}

impl Resolve {
    /// `dir` canonical; None when it cannot be resolved (it does not exist yet: the
    /// text is kept), an error when its file system kept it from being resolved.
    pub fn dir(&self, dir: &str) -> Result<Option<PathBuf>, Unanswered> {
        let w = match self {
            Resolve::Here => None,
            Resolve::Within(w) | Resolve::Lenient(w) => Some(w),
        };
        match crate::realpath::canonicalize(Path::new(dir), w) {
            Ok(real) => Ok(Some(real)),
            Err(err) if err.stalled() && matches!(self, Resolve::Within(_)) => {
                Err(Unanswered { dir: dir.into(), err })
            }
            Err(err) => {
                if err.stalled() {
                    tracing::warn!("{dir}: {err}: kept as written");
                }
                Ok(None)
            }
        }
    }
}

/// Resolves symlinks in a pattern's literal directory prefix when it exists.
fn canonical_pattern(pattern: &str, how: &Resolve) -> Result<String, Unanswered> {
    let prefix = literal_prefix(pattern);
    let (dir, rest) = if prefix.len() == pattern.len() {
        // No glob: resolve the parent, keep the last component (it may not exist yet).
        match pattern.rsplit_once('/') {
            Some((d, _)) if !d.is_empty() => (d, &pattern[d.len()..]),
            _ => return Ok(pattern.to_string()),
        }
    } else {
        (prefix, &pattern[prefix.len()..])
    };
    if dir.is_empty() {
        return Ok(pattern.to_string());
    }
    Ok(match how.dir(dir)? {
        Some(real) => format!("{}{rest}", real.display()),
        None => pattern.to_string(),
    })
}

/// Why a path set could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PathSetError {
    #[error("bad glob: {0}")]
    Glob(#[from] globs::Error),
    #[error(transparent)]
    Unanswered(#[from] Unanswered),
}

impl PathSet {
    /// Compiles validated absolute patterns, their literal prefixes resolved as
    /// `how` says.
    pub fn new(patterns: &[String], how: &Resolve) -> Result<Self, PathSetError> {
        let real = patterns.iter().map(|p| canonical_pattern(p, how)).collect::<Result<_, _>>()?;
        Ok(Self::resolved(real)?)
    }

    /// Compiles patterns resolved before (a task's, as recorded when it started):
    /// the file system is not asked again, so a symlink planted since cannot move
    /// them.
    pub fn resolved(patterns: Vec<String>) -> Result<Self, globs::Error> {
        let mut all = Vec::new();
        for c in &patterns {
            all.push(GlobBuilder::new(c).literal_separator(true).build()?);
            // A directory pattern `/a/**` also covers `/a` itself.
            if let Some(dir) = c.strip_suffix("/**") {
                all.push(GlobBuilder::new(dir).literal_separator(true).build()?);
            }
        }
        Ok(Self { patterns, set: Globs::new(&all)? })
    }

    /// Whether some path this set lets a task write is `p` or lies under it (when `p`
    /// is a directory), judged from the patterns, not from sample paths: a pattern
    /// whose fixed prefix leads to `p` (`/var/lib/agentmon/s*/**` reaches
    /// `/var/lib/agentmon/spool`) or lies inside it (`/var/lib/agentmon/spool/0/**`).
    pub fn reaches(&self, p: &Path) -> bool {
        let depth = |x: &Path| x.components().count();
        self.patterns.iter().any(|pat| {
            if !is_glob(pat) {
                return Path::new(pat).starts_with(p) || p.starts_with(pat);
            }
            let lit = Path::new(literal_prefix(pat));
            if lit.starts_with(p) {
                return true;
            }
            if !p.starts_with(lit) {
                return false;
            }
            // Below the prefix: `**` reaches anything; otherwise the pattern matches p
            // itself, or is deeper than p and so may match something under it.
            let me = GlobBuilder::new(pat).literal_separator(true).build().map(|g| g.compile_matcher());
            pat.contains("**") || me.is_ok_and(|m| m.is_match(p)) || depth(Path::new(pat.as_str())) > depth(p)
        })
    }

    pub fn matches(&self, path: &str) -> bool {
        self.set.is_match(path)
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Does every path `other` can match also match here? Decided on the patterns:
    /// `p` covers `q` when they are equal, when `p` matches `q` read as a literal path,
    /// or when `p` is `D/**` and `q` lies under `D`. Conservative: it may say no to a
    /// subset it cannot prove, never yes to one that is not.
    pub fn covers_all(&self, other: &PathSet) -> Result<(), String> {
        for q in &other.patterns {
            if !self.patterns.iter().any(|p| pattern_covers(p, q)) {
                return Err(q.clone());
            }
        }
        Ok(())
    }
}

pub fn pattern_covers(p: &str, q: &str) -> bool {
    if p == q {
        return true;
    }
    if let Some(dir) = p.strip_suffix("/**") {
        let lit = literal_prefix(q);
        if lit == dir || lit.starts_with(&format!("{dir}/")) {
            return true;
        }
    }
    !is_glob(q)
        && GlobBuilder::new(p).literal_separator(true).build().is_ok_and(|g| g.compile_matcher().is_match(q))
}

/// Allowed ports: one, a range, or any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub lo: u16,
    pub hi: u16,
}

impl Ports {
    pub const ANY: Ports = Ports { lo: 0, hi: u16::MAX };

    pub fn contains(&self, p: u16) -> bool {
        self.lo <= p && p <= self.hi
    }

    pub fn covers(&self, o: &Ports) -> bool {
        self.lo <= o.lo && o.hi <= self.hi
    }
}

/// As a manifest writes them: `443`, `8000-8099`, `*`.
impl std::fmt::Display for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.lo, self.hi) {
            (0, u16::MAX) => f.write_str("*"),
            (lo, hi) if lo == hi => write!(f, "{lo}"),
            (lo, hi) => write!(f, "{lo}-{hi}"),
        }
    }
}

/// As a manifest writes them, so that an error names the entry the way it was
/// written (a network as `10.0.0.0/8:443`, one address without its `/32`).
impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Net { net, ports } => {
                let whole = net.prefix_len() == net.max_prefix_len();
                match (net, whole) {
                    (IpNet::V4(n), true) => write!(f, "{}:{ports}", n.addr()),
                    (IpNet::V4(n), false) => write!(f, "{n}:{ports}"),
                    (IpNet::V6(n), true) => write!(f, "[{}]:{ports}", n.addr()),
                    (IpNet::V6(n), false) => write!(f, "[{n}]:{ports}"),
                }
            }
            Endpoint::Host { name, ports, .. } => write!(f, "{name}:{ports}"),
            Endpoint::Unix { path } => write!(f, "unix:{path}"),
        }
    }
}

/// One allowed destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// An address or network and ports.
    Net { net: IpNet, ports: Ports },
    /// A host name and ports; allowed at the addresses it resolved to at load.
    Host { name: String, ports: Ports, addrs: Vec<IpAddr> },
    /// A unix socket path glob.
    Unix { path: String },
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are the IPv4 address: an agent
/// cannot pass a v4 allowlist (or deny rule) by dialling the mapped form.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl Endpoint {
    /// A host endpoint's name and the addresses it has now; None for the others.
    pub fn host(&self) -> Option<(&str, &[IpAddr])> {
        match self {
            Endpoint::Host { name, addrs, .. } => Some((name, addrs)),
            _ => None,
        }
    }

    pub fn allows_ip(&self, ip: IpAddr, port: u16) -> bool {
        let ip = canonical_ip(ip);
        match self {
            Endpoint::Net { net, ports } => ports.contains(port) && net.contains(&ip),
            Endpoint::Host { ports, addrs, .. } => ports.contains(port) && addrs.contains(&ip),
            Endpoint::Unix { .. } => false,
        }
    }

    pub fn allows_unix(&self, path: &str) -> bool {
        match self {
            Endpoint::Unix { path: p } => {
                p == path || GlobBuilder::new(p).build().is_ok_and(|g| g.compile_matcher().is_match(path))
            }
            _ => false,
        }
    }

    /// Is everything `o` allows also allowed by `self`?
    pub fn covers(&self, o: &Endpoint) -> bool {
        match (self, o) {
            (Endpoint::Net { net: a, ports: pa }, Endpoint::Net { net: b, ports: pb }) => {
                pa.covers(pb) && a.contains(b)
            }
            (Endpoint::Net { net, ports }, Endpoint::Host { ports: pb, addrs, .. }) => {
                ports.covers(pb) && !addrs.is_empty() && addrs.iter().all(|ip| net.contains(ip))
            }
            (Endpoint::Host { name: a, ports: pa, .. }, Endpoint::Host { name: b, ports: pb, .. }) => {
                a.eq_ignore_ascii_case(b) && pa.covers(pb)
            }
            (Endpoint::Unix { path: a }, Endpoint::Unix { path: b }) => pattern_covers(a, b),
            _ => false,
        }
    }
}

/// Parses one `scope.connect` entry: `IP:PORT`, `CIDR:PORT`, `[IPv6]:PORT`,
/// `[CIDR6]:PORT`, `HOST:PORT`, `unix:/path`. PORT is `N`, `N-M` or `*`.
pub fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        if !path.starts_with('/') && !path.starts_with('@') {
            return Err(format!("unix socket path {path:?} must be absolute (or @abstract)"));
        }
        return Ok(Endpoint::Unix { path: path.to_string() });
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(|| format!("{s:?}: expected [IPv6]:PORT"))?;
        (h, p)
    } else {
        s.rsplit_once(':').ok_or_else(|| format!("{s:?}: expected HOST:PORT (use * for any port)"))?
    };
    let ports = parse_ports(port).map_err(|e| format!("{s:?}: {e}"))?;
    if host.is_empty() {
        return Err(format!("{s:?}: empty host"));
    }
    if host.contains('/') {
        let net: IpNet = host.parse().map_err(|e| format!("{s:?}: bad CIDR {host:?}: {e}"))?;
        let net = match net {
            IpNet::V6(n) if n.addr().to_ipv4_mapped().is_some() && n.prefix_len() >= 96 => {
                IpNet::new(canonical_ip(IpAddr::V6(n.addr())), n.prefix_len() - 96)
                    .map_err(|e| e.to_string())?
            }
            n => n,
        };
        return Ok(Endpoint::Net { net: net.trunc(), ports });
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Endpoint::Net { net: IpNet::from(canonical_ip(ip)), ports });
    }
    if !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') || host.starts_with('-') {
        return Err(format!("{s:?}: {host:?} is neither an IP address, a CIDR nor a host name"));
    }
    Ok(Endpoint::Host { name: host.to_ascii_lowercase(), ports, addrs: Vec::new() })
}

fn parse_ports(p: &str) -> Result<Ports, String> {
    if p == "*" {
        return Ok(Ports::ANY);
    }
    let num = |x: &str| x.parse::<u16>().map_err(|_| format!("bad port {x:?} (0-65535)"));
    match p.split_once('-') {
        Some((a, b)) => {
            let (lo, hi) = (num(a)?, num(b)?);
            if lo > hi {
                return Err(format!("port range {p:?} is empty"));
            }
            Ok(Ports { lo, hi })
        }
        None => {
            let n = num(p)?;
            Ok(Ports { lo: n, hi: n })
        }
    }
}

/// Resolves host-name endpoints (at load; the enforcement layer refreshes them).
pub fn resolve_hosts(eps: &mut [Endpoint]) {
    for ep in eps {
        if let Endpoint::Host { name, addrs, .. } = ep {
            *addrs = (name.as_str(), 0)
                .to_socket_addrs()
                .map(|it| it.map(|a| canonical_ip(a.ip())).collect())
                .unwrap_or_default();
            addrs.sort();
            addrs.dedup();
        }
    }
}

/// Lookups of [`resolve_within`] still running (one thread each, until the
/// resolver gives up): bounded, so that names that never answer cannot pile up.
static LOOKUPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
const MAX_LOOKUPS: usize = 64;

/// Lookups of names an agent chose (a delegated sub-task's) that may run at once,
/// counted apart and within the [`MAX_LOOKUPS`]: the rest stays for the operators'
/// (a task's start, a refresh of their names).
pub const AGENTS_LOOKUPS: usize = 16;
static AGENTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Whose names a lookup is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asker {
    /// An operator's, started while fewer than `cap` lookups run (at most
    /// [`MAX_LOOKUPS`]).
    Operator { cap: usize },
    /// An agent's, started while fewer than [`AGENTS_LOOKUPS`] of the agents' run.
    Agent,
}

impl Asker {
    pub const ANY: Asker = Asker::Operator { cap: MAX_LOOKUPS };
}

/// The addresses of each of `names`, waiting at most `limit` for all: each lookup
/// runs in a thread of its own, off the caller's loop. A name not answered in time
/// is an error, as are lookups past what `who` may have running.
pub fn resolve_within(
    names: &[String],
    limit: std::time::Duration,
    who: Asker,
) -> Result<Vec<Vec<IpAddr>>, String> {
    resolve_each_within(names, limit, who)?
        .into_iter()
        .zip(names)
        .map(|(a, n)| a.ok_or_else(|| format!("host {n} did not resolve within {}s", limit.as_secs_f32())))
        .collect()
}

/// [`resolve_within`], a name not answered in time None rather than the whole an
/// error (the error: more lookups would be running than `who` may have).
pub fn resolve_each_within(
    names: &[String],
    limit: std::time::Duration,
    who: Asker,
) -> Result<Vec<Option<Vec<IpAddr>>>, String> {
    reserve(names.len(), who)?;
    let (tx, rx) = std::sync::mpsc::channel();
    for (i, name) in names.iter().enumerate() {
        let tx = tx.clone();
        spawn_reserved(name.clone(), who, move |a| {
            let _ = tx.send((i, a));
        });
    }
    drop(tx);
    let deadline = std::time::Instant::now() + limit;
    let mut got = vec![None; names.len()];
    for _ in names {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, a)) => got[i] = Some(a),
            Err(_) => break,
        }
    }
    Ok(got)
}

/// Looks `name` up in a thread of its own and gives `done` its addresses (none if
/// it has none), unless more lookups are running than `who` may have.
pub fn lookup(
    name: String,
    who: Asker,
    done: impl FnOnce(Vec<IpAddr>) + Send + 'static,
) -> Result<(), String> {
    reserve(1, who)?;
    spawn_reserved(name, who, done);
    Ok(())
}

/// Takes `n` lookups of the pool for `who`, or says why not.
fn reserve(n: usize, who: Asker) -> Result<(), String> {
    use std::sync::atomic::Ordering::SeqCst;
    let cap = match who {
        Asker::Operator { cap } => cap.min(MAX_LOOKUPS),
        Asker::Agent => {
            if AGENTS.fetch_add(n, SeqCst) + n > AGENTS_LOOKUPS {
                AGENTS.fetch_sub(n, SeqCst);
                return Err(format!(
                    "more than {AGENTS_LOOKUPS} lookups of agents' host names are still running"
                ));
            }
            MAX_LOOKUPS
        }
    };
    if LOOKUPS.fetch_add(n, SeqCst) + n > cap {
        LOOKUPS.fetch_sub(n, SeqCst);
        if who == Asker::Agent {
            AGENTS.fetch_sub(n, SeqCst);
        }
        return Err(format!("more than {cap} host name lookups are still running"));
    }
    Ok(())
}

/// One lookup [`reserve`]d for `who`.
fn spawn_reserved(name: String, who: Asker, done: impl FnOnce(Vec<IpAddr>) + Send + 'static) {
    std::thread::spawn(move || {
        let mut ep = [Endpoint::Host { name, ports: Ports::ANY, addrs: Vec::new() }];
        resolve_hosts(&mut ep);
        LOOKUPS.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        if who == Asker::Agent {
            AGENTS.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
        if let Endpoint::Host { addrs, .. } = &mut ep[0] {
            done(std::mem::take(addrs));
        }
    });
}

/// The host names of `eps`, looked up as [`resolve_each_within`] does: a name not
/// answered in time, or with too many lookups running, is left with no address
/// (it allows nothing) and named in the result.
pub fn resolve_hosts_within(eps: &mut [Endpoint], limit: std::time::Duration) -> Vec<String> {
    let names: Vec<String> = eps.iter().filter_map(Endpoint::host).map(|(n, _)| n.to_string()).collect();
    if names.is_empty() {
        return Vec::new();
    }
    let got = resolve_each_within(&names, limit, Asker::ANY).unwrap_or_else(|_| vec![None; names.len()]);
    let mut unanswered = Vec::new();
    let mut got = got.into_iter();
    for ep in eps {
        if let Endpoint::Host { name, addrs, .. } = ep {
            match got.next().flatten() {
                Some(a) => *addrs = a,
                None => {
                    addrs.clear();
                    unanswered.push(name.clone());
                }
            }
        }
    }
    unanswered
}

/// An absolute path (for `propose_dir`), canonicalised when it exists.
pub fn canonical_dir(p: &str, how: &Resolve) -> Result<PathBuf, Unanswered> {
    Ok(how.dir(p)?.unwrap_or_else(|| PathBuf::from(p)))
}

#[cfg(test)]
mod tests {

    #[test]
    fn lookups_are_bounded_in_count() {
        let s = std::time::Duration::from_secs;
        use super::Asker;
        let got = super::resolve_within(&["localhost".into()], s(5), Asker::ANY).unwrap();
        assert!(got[0].contains(&"127.0.0.1".parse().unwrap()), "{got:?}");
        let many: Vec<String> = (0..65).map(|i| format!("h{i}.invalid")).collect();
        let e = super::resolve_within(&many, s(1), Asker::ANY).unwrap_err();
        assert!(e.contains("more than 64"), "{e}");
        // The agents' share is counted apart: operators' lookups do not use it up.
        let e = super::resolve_within(&many[..17], s(1), Asker::Agent).unwrap_err();
        assert!(e.contains("more than 16 lookups of agents'"), "{e}");
        super::reserve(20, Asker::Operator { cap: 64 }).unwrap();
        super::reserve(16, Asker::Agent).unwrap();
        assert!(super::reserve(1, Asker::Agent).is_err());
        assert!(super::reserve(1, Asker::Operator { cap: 36 }).is_err());
        super::reserve(1, Asker::ANY).unwrap();
        // Given back: other tests share the pool.
        super::LOOKUPS.fetch_sub(37, std::sync::atomic::Ordering::SeqCst);
        super::AGENTS.fetch_sub(16, std::sync::atomic::Ordering::SeqCst);
    }

    #[test]
    fn reaches_judges_patterns_not_samples() {
        let set = |p: &[&str]| {
            PathSet::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>(), &Resolve::Here).unwrap()
        };
        let spool = Path::new("/var/lib/agentmon/spool");
        assert!(set(&["/var/lib/agentmon/spool/0/**"]).reaches(spool), "inside the directory");
        assert!(set(&["/var/lib/agentmon/s*/x"]).reaches(spool), "a glob that leads into it");
        assert!(set(&["/var/**"]).reaches(spool));
        assert!(set(&["/var/lib/agentmon"]).reaches(spool), "a directory above it");
        assert!(!set(&["/var/lib/other/**"]).reaches(spool));
        assert!(!set(&["/home/u/proj/*.py"]).reaches(Path::new("/home/u/proj/events.jsonl")));
        assert!(set(&["/home/u/proj/*.jsonl"]).reaches(Path::new("/home/u/proj/events.jsonl")));
        assert!(!set(&["/var/lib/agentmon/spool-old"]).reaches(spool), "components, not string prefixes");
    }
    use super::*;

    fn set(p: &[&str]) -> PathSet {
        PathSet::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>(), &Resolve::Here).unwrap()
    }

    #[test]
    fn globs_match_directories_and_names() {
        let s = set(&["/srv/repo/**", "/usr/bin/python3*"]);
        assert!(s.matches("/srv/repo"));
        assert!(s.matches("/srv/repo/a/b.rs"));
        assert!(!s.matches("/srv/repository/x"));
        assert!(s.matches("/usr/bin/python3.11"));
        assert!(!s.matches("/usr/bin/python3.11/x"));
    }

    #[test]
    fn containment() {
        assert!(pattern_covers("/srv/repo/**", "/srv/repo/build/**"));
        assert!(pattern_covers("/srv/repo/**", "/srv/repo"));
        assert!(!pattern_covers("/srv/repo/build/**", "/srv/repo/**"));
        assert!(!pattern_covers("/srv/repo/**", "/srv/repository/**"));
        assert!(pattern_covers("/usr/bin/*", "/usr/bin/git"));
        assert!(!pattern_covers("/usr/bin/*", "/usr/bin/*/x"));
        let parent = set(&["/srv/repo/**"]);
        assert!(parent.covers_all(&set(&["/srv/repo/src/**", "/srv/repo/a.txt"])).is_ok());
        assert_eq!(parent.covers_all(&set(&["/etc/**"])).unwrap_err(), "/etc/**");
    }

    #[test]
    fn endpoints_read_as_written() {
        for s in [
            "10.0.0.0/8:443",
            "127.0.0.1:8080",
            "[::1]:*",
            "[fd00::/8]:1-1024",
            "api.example.com:443",
            "unix:/run/a/*.sock",
        ] {
            assert_eq!(parse_endpoint(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn endpoints() {
        let e = parse_endpoint("10.0.0.0/8:443").unwrap();
        assert!(e.allows_ip("10.1.2.3".parse().unwrap(), 443));
        assert!(e.allows_ip("::ffff:10.1.2.3".parse().unwrap(), 443), "v4-mapped is the v4 address");
        assert!(!e.allows_ip("10.1.2.3".parse().unwrap(), 80));
        assert!(!e.allows_ip("11.0.0.1".parse().unwrap(), 443));
        let any = parse_endpoint("127.0.0.1:*").unwrap();
        assert!(any.allows_ip("127.0.0.1".parse().unwrap(), 1));
        let v6 = parse_endpoint("[fd00::/8]:1000-2000").unwrap();
        assert!(v6.allows_ip("fd12::1".parse().unwrap(), 1500));
        assert!(
            parse_endpoint("[::ffff:10.0.0.0/104]:443").unwrap().allows_ip("10.9.9.9".parse().unwrap(), 443)
        );
        assert!(matches!(parse_endpoint("api.example.com:443"), Ok(Endpoint::Host { .. })));
        for bad in
            ["10.0.0.0/33:443", "1.2.3.4", "1.2.3.4:99999", "1.2.3.4:9-1", "bad host:1", "unix:rel", ":80"]
        {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
        let wide = parse_endpoint("10.0.0.0/8:*").unwrap();
        assert!(wide.covers(&parse_endpoint("10.1.0.0/16:443").unwrap()));
        assert!(!parse_endpoint("10.1.0.0/16:443").unwrap().covers(&wide));
        let u = parse_endpoint("unix:/run/app/*.sock").unwrap();
        assert!(u.allows_unix("/run/app/x.sock"));
        assert!(!u.allows_unix("/run/docker.sock"));
    }
}
