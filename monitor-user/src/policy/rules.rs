//! Rules: the host's baseline policy as YAML files (schema in docs/rules.md).
//! Loading validates everything and compiles matchers; an invalid file is an error
//! naming `file:line`, and nothing of a rule set with an error is used.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use globset::{Glob, GlobBuilder};
use ipnet::IpNet;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{Action, Severity, examples::RawExample};
use crate::{
    event::Kind,
    globs::{GlobIndex, Globs},
    task::{
        manifest::yaml_error,
        scope::{Ports, canonical_ip},
    },
};

type S<T> = Spanned<T>;

/// A rule error: `file:line: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {msg}")]
pub struct RuleError {
    pub file: String,
    pub line: u64,
    pub msg: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    rules: Vec<S<RawRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: S<String>,
    description: S<String>,
    severity: S<String>,
    #[serde(rename = "match")]
    matcher: S<RawMatch>,
    action: S<String>,
    #[serde(default)]
    tags: Vec<S<String>>,
    examples: Option<S<RawExamples>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExamples {
    #[serde(rename = "match", default)]
    pub matching: Vec<S<RawExample>>,
    #[serde(default)]
    pub no_match: Vec<S<RawExample>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PortSpec {
    N(u32),
    S(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    kinds: Vec<S<String>>,
    #[serde(default)]
    paths: Vec<S<String>>,
    #[serde(default)]
    not_paths: Vec<S<String>>,
    #[serde(default)]
    dst: Vec<S<String>>,
    #[serde(default)]
    not_dst: Vec<S<String>>,
    #[serde(default)]
    ports: Vec<S<PortSpec>>,
    #[serde(default)]
    unix: Vec<S<String>>,
    #[serde(default)]
    exe: Vec<S<String>>,
    #[serde(default)]
    comm: Vec<S<String>>,
    #[serde(default)]
    argv: Vec<S<String>>,
    #[serde(default)]
    flags: Vec<S<String>>,
    #[serde(default)]
    parent_exe: Vec<S<String>>,
    parent_is_root: Option<bool>,
    outside_scope: Option<bool>,
    rate: Option<S<RawRate>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    count: u32,
    within: String,
}

/// Compiled conditions; all present ones must hold (lists are alternatives).
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    pub kinds: Vec<Kind>,
    pub paths: Option<Globs>,
    pub not_paths: Option<Globs>,
    pub dst: Vec<IpNet>,
    pub not_dst: Vec<IpNet>,
    pub ports: Vec<Ports>,
    pub unix: Option<Globs>,
    pub exe: Option<Globs>,
    pub comm: Vec<String>,
    pub argv: Option<Globs>,
    pub flags: Vec<String>,
    pub parent_exe: Option<Globs>,
    pub parent_is_root: Option<bool>,
    pub outside_scope: Option<bool>,
    /// At least `count` matching events within the window (per task).
    pub rate: Option<(u32, Duration)>,
    /// The `paths` and `not_paths` globs one by one, for the per-kind automaton
    /// ([`RuleSet::path_hits`]).
    pub(super) path_globs: Vec<Glob>,
    pub(super) not_path_globs: Vec<Glob>,
    /// The `paths` and `exe` patterns as written (for the enforceability check).
    pub path_patterns: Vec<String>,
    pub exe_patterns: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub description: String,
    pub severity: Severity,
    pub action: Action,
    pub tags: Vec<String>,
    pub matcher: Matcher,
    pub file: PathBuf,
    pub line: u64,
    pub(super) examples: Vec<(bool, u64, RawExample)>,
}

/// Every rule of a directory, indexed by event kind.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    by_kind: Vec<Vec<u16>>,
    any_kind: Vec<u16>,
    /// Per kind, every `paths` and `not_paths` glob of the rules for it.
    paths_by_kind: Vec<KindPaths>,
}

/// The `paths` and `not_paths` globs of every rule for one kind in one automaton, so
/// that an event's path is matched once, not once per rule: glob i is rule
/// `owner[i].0`'s, a `not_paths` one if `owner[i].1`.
#[derive(Debug, Clone, Default)]
struct KindPaths {
    set: GlobIndex,
    owner: Vec<(u16, bool)>,
}

impl KindPaths {
    fn new(rules: &[Rule], of: &[u16]) -> Result<Self, crate::globs::Error> {
        let mut all = Vec::new();
        let mut owner = Vec::new();
        for &i in of {
            let m = &rules[i as usize].matcher;
            for (globs, not) in [(&m.path_globs, false), (&m.not_path_globs, true)] {
                for g in globs {
                    all.push(g.clone());
                    owner.push((i, not));
                }
            }
        }
        Ok(KindPaths { set: GlobIndex::new(&all)?, owner })
    }
}

/// Which rules' `paths` conditions an event's path and new path meet, from one pass
/// of the kind's automaton over each ([`RuleSet::path_hits`]).
#[derive(Debug)]
pub struct PathHits<'a> {
    owner: &'a [(u16, bool)],
    path: Vec<usize>,
    new_path: Vec<usize>,
}

impl PathHits<'_> {
    /// Rule `rule`'s `paths` condition: a path that one of its `paths` globs matches
    /// and none of its `not_paths` globs does.
    pub fn hit(&self, rule: u16) -> bool {
        let side = |m: &[usize]| {
            m.iter().any(|&g| self.owner[g] == (rule, false))
                && !m.iter().any(|&g| self.owner[g] == (rule, true))
        };
        side(&self.path) || side(&self.new_path)
    }
}

fn kind_index(k: Kind) -> usize {
    k as usize
}

const KINDS: [Kind; Kind::ALL.len()] = Kind::ALL;

pub fn parse_kind(s: &str) -> Option<Kind> {
    KINDS.iter().copied().find(|k| k.as_str() == s)
}

fn valid_tag(t: &str) -> bool {
    if let Some(n) = t.strip_prefix("ASI") {
        return n.len() == 2 && n.parse::<u8>().is_ok_and(|n| (1..=10).contains(&n));
    }
    if let Some(rest) = t.strip_prefix('T') {
        let (base, sub) = rest.split_once('.').unwrap_or((rest, ""));
        return base.len() == 4
            && base.bytes().all(|b| b.is_ascii_digit())
            && (sub.is_empty() || (sub.len() == 3 && sub.bytes().all(|b| b.is_ascii_digit())));
    }
    false
}

struct Cx<'a> {
    file: &'a Path,
}

impl Cx<'_> {
    fn err<T>(&self, at: &S<T>, msg: impl Into<String>) -> RuleError {
        RuleError { file: self.file.display().to_string(), line: at.referenced.line(), msg: msg.into() }
    }

    fn globs(&self, v: &[S<String>], what: &str, paths: bool) -> Result<Option<Globs>, RuleError> {
        let list = self.glob_list(v, what, paths)?;
        if list.is_empty() {
            return Ok(None);
        }
        Globs::new(&list).map(Some).map_err(|e| self.err(&v[0], format!("{what}: {e}")))
    }

    fn glob_list(&self, v: &[S<String>], what: &str, paths: bool) -> Result<Vec<Glob>, RuleError> {
        v.iter()
            .map(|g| {
                if paths && !g.value.starts_with('/') && !g.value.starts_with("**/") {
                    return Err(
                        self.err(g, format!("{what} {:?} must be absolute or start with **/", g.value))
                    );
                }
                GlobBuilder::new(&g.value)
                    .literal_separator(paths)
                    .build()
                    .map_err(|e| self.err(g, format!("{what}: {e}")))
            })
            .collect()
    }
}

/// Addresses or CIDRs; IPv4-mapped IPv6 networks become IPv4.
fn nets(cx: &Cx, id: &str, what: &str, v: &[S<String>]) -> Result<Vec<IpNet>, RuleError> {
    let mut out = Vec::new();
    for d in v {
        let net: IpNet =
            d.value.parse().or_else(|_| d.value.parse::<std::net::IpAddr>().map(IpNet::from)).map_err(
                |_| cx.err(d, format!("rule {id}: {what} {:?} is not an address or CIDR", d.value)),
            )?;
        let net = match net {
            IpNet::V6(n) if n.prefix_len() >= 96 && n.addr().to_ipv4_mapped().is_some() => {
                IpNet::new(canonical_ip(std::net::IpAddr::V6(n.addr())), n.prefix_len() - 96)
                    .map_err(|e| cx.err(d, e.to_string()))?
            }
            n => n,
        };
        out.push(net.trunc());
    }
    Ok(out)
}

fn compile(cx: &Cx, r: &S<RawRule>) -> Result<Rule, RuleError> {
    let raw = &r.value;
    let id = raw.id.value.clone();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(cx.err(&raw.id, format!("rule id {id:?} must be [A-Za-z0-9-_.]+")));
    }
    if raw.description.value.trim().is_empty() {
        return Err(cx.err(&raw.description, format!("rule {id}: description is empty")));
    }
    let severity = Severity::parse(&raw.severity.value).ok_or_else(|| {
        cx.err(
            &raw.severity,
            format!("rule {id}: severity {:?} is not info|low|medium|high|critical", raw.severity.value),
        )
    })?;
    let action = Action::parse(&raw.action.value).ok_or_else(|| {
        cx.err(
            &raw.action,
            format!(
                "rule {id}: action {:?} is not alert|deny|kill|freeze|require_approval",
                raw.action.value
            ),
        )
    })?;
    let mut tags = Vec::new();
    for t in &raw.tags {
        if !valid_tag(&t.value) {
            return Err(cx.err(
                t,
                format!("rule {id}: tag {:?} is not an OWASP ASI01-ASI10 or MITRE ATT&CK id", t.value),
            ));
        }
        tags.push(t.value.clone());
    }
    let m = &raw.matcher.value;
    let mut kinds = Vec::new();
    for k in &m.kinds {
        kinds.push(
            parse_kind(&k.value)
                .ok_or_else(|| cx.err(k, format!("rule {id}: unknown event kind {:?}", k.value)))?,
        );
    }
    let dst = nets(cx, &id, "dst", &m.dst)?;
    let not_dst = nets(cx, &id, "not_dst", &m.not_dst)?;
    let mut ports = Vec::new();
    for p in &m.ports {
        let bad = || cx.err(p, format!("rule {id}: bad port or range"));
        ports.push(match &p.value {
            PortSpec::N(n) => {
                let n = u16::try_from(*n).map_err(|_| bad())?;
                Ports { lo: n, hi: n }
            }
            PortSpec::S(s) => {
                let (a, b) = s.split_once('-').unwrap_or((s, s));
                let (lo, hi) = (a.parse::<u16>().map_err(|_| bad())?, b.parse::<u16>().map_err(|_| bad())?);
                if lo > hi {
                    return Err(bad());
                }
                Ports { lo, hi }
            }
        });
    }
    let rate = match &m.rate {
        Some(r) => {
            let within = humantime::parse_duration(&r.value.within)
                .map_err(|e| cx.err(r, format!("rule {id}: rate.within {:?}: {e}", r.value.within)))?;
            if r.value.count < 2 {
                return Err(cx.err(r, format!("rule {id}: rate.count must be at least 2")));
            }
            Some((r.value.count, within))
        }
        None => None,
    };
    let matcher = Matcher {
        kinds,
        paths: cx.globs(&m.paths, "paths", true)?,
        not_paths: cx.globs(&m.not_paths, "not_paths", true)?,
        dst,
        not_dst,
        ports,
        unix: cx.globs(&m.unix, "unix", false)?,
        exe: cx.globs(&m.exe, "exe", true)?,
        comm: m.comm.iter().map(|c| c.value.clone()).collect(),
        argv: cx.globs(&m.argv, "argv", false)?,
        flags: m.flags.iter().map(|f| f.value.clone()).collect(),
        parent_exe: cx.globs(&m.parent_exe, "parent_exe", true)?,
        parent_is_root: m.parent_is_root,
        outside_scope: m.outside_scope,
        rate,
        path_globs: cx.glob_list(&m.paths, "paths", true)?,
        not_path_globs: cx.glob_list(&m.not_paths, "not_paths", true)?,
        path_patterns: m.paths.iter().map(|p| p.value.clone()).collect(),
        exe_patterns: m.exe.iter().map(|p| p.value.clone()).collect(),
    };
    let has_condition = !matcher.kinds.is_empty()
        || matcher.paths.is_some()
        || !matcher.dst.is_empty()
        || matcher.unix.is_some()
        || matcher.exe.is_some()
        || matcher.argv.is_some();
    if !has_condition {
        return Err(
            cx.err(&raw.matcher, format!("rule {id}: match has no condition (it would match everything)"))
        );
    }
    let mut examples = Vec::new();
    match &raw.examples {
        Some(ex) if !ex.value.matching.is_empty() && !ex.value.no_match.is_empty() => {
            for (want, list) in [(true, &ex.value.matching), (false, &ex.value.no_match)] {
                for e in list {
                    examples.push((want, e.referenced.line(), e.value.clone()));
                }
            }
        }
        Some(ex) => {
            return Err(cx.err(ex, format!("rule {id}: examples need at least one match and one no_match")));
        }
        None => return Err(cx.err(&raw.id, format!("rule {id}: examples (match and no_match) are required"))),
    }
    Ok(Rule {
        id,
        description: raw.description.value.trim().to_string(),
        severity,
        action,
        tags,
        matcher,
        file: cx.file.to_path_buf(),
        line: r.referenced.line(),
        examples,
    })
}

/// Parses one rule file's text.
pub fn parse_file(text: &str, file: &Path) -> Result<Vec<Rule>, RuleError> {
    let raw: RawFile = serde_saphyr::from_str(text).map_err(|e| {
        let (line, msg) = yaml_error(&e);
        RuleError { file: file.display().to_string(), line, msg }
    })?;
    let cx = Cx { file };
    raw.rules.iter().map(|r| compile(&cx, r)).collect()
}

impl RuleSet {
    pub fn new(rules: Vec<Rule>) -> Result<Self, RuleError> {
        for (i, r) in rules.iter().enumerate() {
            if let Some(prev) = rules[..i].iter().find(|p| p.id == r.id) {
                return Err(RuleError {
                    file: r.file.display().to_string(),
                    line: r.line,
                    msg: format!("rule id {} already defined at {}:{}", r.id, prev.file.display(), prev.line),
                });
            }
        }
        let mut by_kind = vec![Vec::new(); KINDS.len()];
        let mut any_kind = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            if r.matcher.kinds.is_empty() {
                any_kind.push(i as u16);
            }
            for k in &r.matcher.kinds {
                by_kind[kind_index(*k)].push(i as u16);
            }
        }
        for v in &mut by_kind {
            v.extend_from_slice(&any_kind);
            v.sort_unstable();
            v.dedup();
        }
        let paths_by_kind = by_kind
            .iter()
            .map(|of| KindPaths::new(&rules, of))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| RuleError { file: "rules".into(), line: 0, msg: format!("paths: {e}") })?;
        Ok(Self { rules, by_kind, any_kind, paths_by_kind })
    }

    /// The rules for `kind` whose `paths` condition `path` or `new_path` meets: one
    /// automaton pass over each. None when the kind has no rule with paths.
    pub fn path_hits(&self, kind: Kind, path: Option<&str>, new_path: Option<&str>) -> Option<PathHits<'_>> {
        let k = self.paths_by_kind.get(kind_index(kind))?;
        if k.owner.is_empty() {
            return None;
        }
        let of = |p: Option<&str>| p.map(|p| k.set.matches(p)).unwrap_or_default();
        Some(PathHits { owner: &k.owner, path: of(path), new_path: of(new_path) })
    }

    /// Every `*.yaml`/`*.yml` file of `dir`, in name order. All errors are returned.
    pub fn load_dir(dir: &Path) -> Result<Self, Vec<RuleError>> {
        let files = rule_files(dir).map_err(|e| vec![e])?;
        let mut texts = Vec::new();
        let mut errs = Vec::new();
        for f in files {
            match read_rule_file(&f) {
                Ok(t) => texts.push((f, t)),
                Err(e) => errs.push(e),
            }
        }
        Self::from_texts(texts.iter().map(|(f, t)| (f.as_path(), t.as_str())), errs)
    }

    /// Rule files given as (name, text).
    pub fn from_texts<'a>(
        files: impl Iterator<Item = (&'a Path, &'a str)>,
        mut errs: Vec<RuleError>,
    ) -> Result<Self, Vec<RuleError>> {
        let mut rules = Vec::new();
        for (f, text) in files {
            match parse_file(text, f) {
                Ok(mut r) => rules.append(&mut r),
                Err(e) => errs.push(e),
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Self::new(rules).map_err(|e| vec![e])
    }

    /// Rules that can match `kind`, with their index.
    pub fn indexed_for_kind(&self, kind: Kind) -> impl Iterator<Item = (u16, &Rule)> {
        self.by_kind
            .get(kind_index(kind))
            .unwrap_or(&self.any_kind)
            .iter()
            .map(|i| (*i, &self.rules[*i as usize]))
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// The rule files of a directory, sorted.
pub fn rule_files(dir: &Path) -> Result<Vec<PathBuf>, RuleError> {
    let rd = std::fs::read_dir(dir).map_err(|e| RuleError {
        file: dir.display().to_string(),
        line: 0,
        msg: format!("cannot read rules directory: {e}"),
    })?;
    // Every *.yaml is a rule file, whatever it is: one that is not a regular file is
    // an error when read (never silently skipped: a rule file replaced by a FIFO or
    // a directory must not reload as fewer rules).
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// The largest rule file read.
const RULE_FILE_MAX: u64 = 4 << 20;

/// Reads a rule file: a regular file (opened without blocking, so a FIFO put in its
/// place cannot hang the reader), at most [`RULE_FILE_MAX`] bytes, UTF-8.
pub fn read_rule_file(p: &Path) -> Result<String, RuleError> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    let err = |msg: String| RuleError { file: p.display().to_string(), line: 0, msg };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(p)
        .map_err(|e| err(e.to_string()))?;
    let m = f.metadata().map_err(|e| err(e.to_string()))?;
    if !m.is_file() {
        return Err(err("not a regular file".into()));
    }
    if m.len() > RULE_FILE_MAX {
        return Err(err(format!("{} bytes: larger than a rule file may be ({RULE_FILE_MAX})", m.len())));
    }
    let mut text = String::new();
    f.take(RULE_FILE_MAX).read_to_string(&mut text).map_err(|e| err(e.to_string()))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_table_follows_the_enum() {
        for (i, k) in KINDS.iter().enumerate() {
            assert_eq!(kind_index(*k), i, "{k:?}");
            assert_eq!(parse_kind(k.as_str()), Some(*k));
        }
    }

    #[test]
    fn tags() {
        for ok in ["ASI01", "ASI10", "T1552", "T1552.004"] {
            assert!(valid_tag(ok), "{ok}");
        }
        for bad in ["ASI00", "ASI11", "ASI1", "T155", "T1552.4", "CVE-1"] {
            assert!(!valid_tag(bad), "{bad}");
        }
    }
}
