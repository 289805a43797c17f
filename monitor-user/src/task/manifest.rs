//! Task manifests (YAML): parsing and validation. Every error names the file, the
//! line and the field; nothing of an invalid manifest is used.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{
    Mode, Op, Task,
    scope::{
        Endpoint, PathSet, PathSetError, Resolve, canonical_dir, is_glob, parse_endpoint, pattern_covers,
    },
};
use crate::event::Timestamp;

/// A manifest error: where, which field, what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {field}: {msg}")]
pub struct ManifestError {
    pub file: String,
    pub line: u64,
    pub field: String,
    pub msg: String,
    /// A path's file system did not answer in time, the asker's own lookups held
    /// ([`crate::realpath::Error::blamed`]): someone kept agentmon waiting (a
    /// refused attempt worth a record, not a typing mistake).
    pub stalled: bool,
}

type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    id: S<String>,
    agent: Option<S<String>>,
    principal: Option<S<String>>,
    /// What the principal asked for, in their words (recorded with the task).
    prompt: Option<S<String>>,
    mode: S<String>,
    expires_in: Option<S<String>>,
    expires_at: Option<S<String>>,
    #[serde(default)]
    scope: RawScope,
    #[serde(default)]
    approval_required: Vec<S<String>>,
    /// observe (default) or enforce.
    enforcement: Option<S<String>>,
    on_expiry: Option<S<String>>,
    on_output_failure: Option<S<String>>,
    /// judge (default) or deny: under enforcement, reads of the sensitive set
    /// outside scope.read are refused (BPF LSM tier).
    sensitive_reads: Option<S<String>>,
    /// Credentials issued for the task (opaque ids: ARNs, token ids), named in the
    /// revoke message a broker acts on when the task ends or is stopped.
    #[serde(default)]
    credentials: Vec<S<String>>,
    limits: Option<S<RawLimits>>,
}

/// `limits:`, see `task::Limits`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    files_changed: Option<S<u64>>,
    deletes: Option<S<u64>>,
    processes: Option<S<u64>>,
    connections: Option<S<u64>>,
    destinations: Option<S<u64>>,
    /// Not counted: write(2) is not hooked (its cost would fall on every process).
    bytes_written: Option<S<serde::de::IgnoredAny>>,
    on_exceed: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScope {
    #[serde(default)]
    read: Vec<S<String>>,
    #[serde(default)]
    write: Vec<S<String>>,
    #[serde(default)]
    delete: Vec<S<String>>,
    #[serde(default)]
    exec: Vec<S<String>>,
    #[serde(default)]
    connect: Vec<S<String>>,
    #[serde(default)]
    listen: Vec<S<String>>,
    propose_dir: Option<S<String>>,
}

struct Ctx<'a> {
    file: &'a str,
    how: Resolve,
}

impl Ctx<'_> {
    fn err<T>(&self, at: &S<T>, field: &str, msg: impl Into<String>) -> ManifestError {
        ManifestError {
            file: self.file.into(),
            line: at.referenced.line(),
            field: field.into(),
            msg: msg.into(),
            stalled: false,
        }
    }

    fn paths(&self, field: &str, v: &[S<String>]) -> Result<PathSet, ManifestError> {
        for p in v {
            let s = &p.value;
            if !s.starts_with('/') {
                return Err(self.err(p, field, format!("{s:?} is not an absolute path")));
            }
            if s.split('/').any(|c| c == "..") {
                return Err(self.err(p, field, format!("{s:?} contains '..'")));
            }
        }
        let raw: Vec<String> = v.iter().map(|p| p.value.clone()).collect();
        PathSet::new(&raw, &self.how).map_err(|e| match e {
            PathSetError::Glob(_) => {
                let at = v.iter().find(|p| globset::Glob::new(&p.value).is_err()).unwrap_or(&v[0]);
                self.err(at, field, e.to_string())
            }
            PathSetError::Unanswered(u) => {
                let at = v.iter().find(|p| p.value.starts_with(&u.dir)).unwrap_or(&v[0]);
                ManifestError { stalled: u.err.blamed(), ..self.err(at, field, u.to_string()) }
            }
        })
    }
}

/// Line and bare message of a YAML error (the library prefixes its own location).
pub fn yaml_error(e: &serde_saphyr::Error) -> (u64, String) {
    let line = e.location().map(|l| l.line()).unwrap_or(0);
    let first = e.to_string().lines().next().unwrap_or("invalid YAML").to_string();
    let msg = first.strip_prefix("error: ").unwrap_or(&first);
    let msg = match msg.strip_prefix("line ").and_then(|m| m.split_once(": ")) {
        Some((_, rest)) => rest,
        None => msg,
    };
    (line, msg.to_string())
}

/// The longest a task may be declared to live: a longer expiry is a mistake (or an
/// attempt to have none), and times far off overflow what records can say.
pub const MAX_LIFETIME: std::time::Duration = std::time::Duration::from_secs(366 * 86_400);

/// The longest prompt a manifest may carry: it goes into every record of the task's
/// start (events, audit chain, NATS).
const MAX_PROMPT: usize = 16 * 1024;

/// At most this many credentials, each at most [`MAX_CREDENTIAL`] bytes: they go
/// into every revoke message.
const MAX_CREDENTIALS: usize = 64;
const MAX_CREDENTIAL: usize = 512;

/// The manifest's `credentials`: opaque ids, printable, distinct, bounded.
fn credentials(cx: &Ctx, raw: &[S<String>]) -> Result<Vec<String>, ManifestError> {
    if let Some(c) = raw.get(MAX_CREDENTIALS) {
        return Err(cx.err(c, "credentials", format!("at most {MAX_CREDENTIALS} credentials")));
    }
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for c in raw {
        let v = c.value.trim();
        if v.is_empty() || v.len() > MAX_CREDENTIAL || v.chars().any(char::is_control) {
            return Err(cx.err(
                c,
                "credentials",
                format!("{:?}: a credential is 1-{MAX_CREDENTIAL} printable bytes", c.value),
            ));
        }
        if out.iter().any(|o| o == v) {
            return Err(cx.err(c, "credentials", format!("{v:?} is named twice")));
        }
        out.push(v.to_string());
    }
    Ok(out)
}

/// Parses a manifest's text. `file` names it in errors; `now` anchors `expires_in`.
pub fn parse(text: &str, file: &Path, now: Timestamp) -> Result<Task, ManifestError> {
    let mut task = parse_unresolved(text, file, now, Resolve::Here)?;
    super::scope::resolve_hosts(&mut task.connect);
    Ok(task)
}

/// [`parse`], its host names not looked up (a delegated manifest's are the agent's
/// choice: runner/subtask.rs looks up only those it must, bounded), its paths
/// resolved as `how` says (agentmon's loop never waits on a file system unbounded).
pub fn parse_unresolved(
    text: &str,
    file: &Path,
    now: Timestamp,
    how: Resolve,
) -> Result<Task, ManifestError> {
    let fname = file.display().to_string();
    let cx = Ctx { file: &fname, how };
    let raw: RawManifest = serde_saphyr::from_str(text).map_err(|e| {
        let (line, msg) = yaml_error(&e);
        ManifestError { file: fname.clone(), line, field: "(document)".into(), msg, stalled: false }
    })?;

    let id = raw.id.value.trim().to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) || id.len() > 128
    {
        return Err(cx.err(&raw.id, "id", "must be 1-128 characters of [A-Za-z0-9-_.]"));
    }
    if let Some(a) = &raw.agent
        && !a.value.starts_with("spiffe://")
    {
        return Err(cx.err(a, "agent", "must be a SPIFFE id (spiffe://trust-domain/path)"));
    }
    if let Some(p) = &raw.prompt
        && p.value.len() > MAX_PROMPT
    {
        return Err(cx.err(
            p,
            "prompt",
            format!(
                "{} bytes: at most {MAX_PROMPT} (give a summary, or a reference to the conversation)",
                p.value.len()
            ),
        ));
    }
    let mode = match raw.mode.value.as_str() {
        "read" => Mode::Read,
        "propose" => Mode::Propose,
        "execute" => Mode::Execute,
        other => return Err(cx.err(&raw.mode, "mode", format!("{other:?} is not read, propose or execute"))),
    };
    let expires = match (&raw.expires_in, &raw.expires_at) {
        (Some(a), Some(_)) => return Err(cx.err(a, "expires_in", "give expires_in or expires_at, not both")),
        (Some(d), None) => {
            let dur = humantime::parse_duration(&d.value)
                .map_err(|e| cx.err(d, "expires_in", format!("{:?}: {e} (e.g. 30m, 2h, 1h30m)", d.value)))?;
            if dur > MAX_LIFETIME {
                return Err(cx.err(
                    d,
                    "expires_in",
                    format!("{:?} is longer than a task may live (366 days)", d.value),
                ));
            }
            Some(Timestamp(now.0 + dur.as_nanos() as i128))
        }
        (None, Some(t)) => {
            let at = Timestamp::parse(&t.value).ok_or_else(|| {
                cx.err(
                    t,
                    "expires_at",
                    format!("{:?} is not an RFC 3339 time (2026-12-01T10:00:00Z)", t.value),
                )
            })?;
            if at.0 > now.0 + MAX_LIFETIME.as_nanos() as i128 {
                return Err(cx.err(t, "expires_at", format!("{:?} is more than 366 days away", t.value)));
            }
            Some(at)
        }
        (None, None) => None,
    };
    let stop = |v: &Option<S<String>>, field: &str| -> Result<Option<super::Stop>, ManifestError> {
        v.as_ref()
            .map(|s| {
                super::Stop::parse(&s.value).ok_or_else(|| {
                    cx.err(s, field, format!("{:?} is not one of {}", s.value, super::Stop::NAMES.join(", ")))
                })
            })
            .transpose()
    };
    let on_expiry = stop(&raw.on_expiry, "on_expiry")?;
    let on_output_failure = stop(&raw.on_output_failure, "on_output_failure")?;

    let sc = &raw.scope;
    let read = cx.paths("scope.read", &sc.read)?;
    let write = cx.paths("scope.write", &sc.write)?;
    let delete = cx.paths("scope.delete", &sc.delete)?;
    let exec = cx.paths("scope.exec", &sc.exec)?;
    // Deleting is writing: a delete scope outside the write scope contradicts it.
    for d in &sc.delete {
        if !sc.write.iter().any(|w| pattern_covers(&w.value, &d.value)) {
            return Err(cx.err(d, "scope.delete", format!("{:?} is outside scope.write", d.value)));
        }
    }
    let mut connect = Vec::new();
    for c in &sc.connect {
        connect.push(parse_endpoint(&c.value).map_err(|e| cx.err(c, "scope.connect", e))?);
    }
    let mut listen = Vec::new();
    for c in &sc.listen {
        let ep = parse_endpoint(&c.value).map_err(|e| cx.err(c, "scope.listen", e))?;
        if matches!(ep, Endpoint::Host { .. }) {
            return Err(cx.err(c, "scope.listen", "use an address, not a host name"));
        }
        listen.push(ep);
    }
    let propose_dir =
        match &sc.propose_dir {
            Some(p) if !p.value.starts_with('/') || is_glob(&p.value) => {
                return Err(cx.err(
                    p,
                    "scope.propose_dir",
                    format!("{:?} must be an absolute directory", p.value),
                ));
            }
            Some(p) => Some(canonical_dir(&p.value, &cx.how).map_err(|u| ManifestError {
                stalled: true,
                ..cx.err(p, "scope.propose_dir", u.to_string())
            })?),
            None => None,
        };
    if mode == Mode::Propose && propose_dir.is_none() {
        return Err(cx.err(&raw.mode, "scope.propose_dir", "mode propose needs scope.propose_dir"));
    }
    let mut approval = Vec::new();
    for a in &raw.approval_required {
        let op = Op::parse(&a.value).ok_or_else(|| {
            cx.err(a, "approval_required", format!("{:?} is not one of {}", a.value, Op::NAMES.join(", ")))
        })?;
        if !approval.contains(&op) {
            approval.push(op);
        }
    }

    let enforce = match &raw.enforcement {
        None => false,
        Some(e) if e.value == "observe" => false,
        Some(e) if e.value == "enforce" => true,
        Some(e) => return Err(cx.err(e, "enforcement", format!("{:?} is not observe or enforce", e.value))),
    };
    let deny_sensitive_reads = match &raw.sensitive_reads {
        None => false,
        Some(v) if v.value == "judge" => false,
        Some(v) if v.value == "deny" => true,
        Some(v) => return Err(cx.err(v, "sensitive_reads", format!("{:?} is not judge or deny", v.value))),
    };
    let credentials = credentials(&cx, &raw.credentials)?;
    let limits = raw.limits.as_ref().map(|l| limits(&cx, l)).transpose()?;
    let task = Task {
        id,
        credentials,
        enforce,
        deny_sensitive_reads,
        on_expiry,
        on_output_failure,
        agent: raw.agent.map(|a| a.value),
        principal: raw.principal.map(|p| p.value),
        prompt: raw.prompt.map(|p| p.value),
        granted: None,
        mode,
        expires,
        read,
        write,
        delete,
        exec,
        connect,
        listen,
        propose_dir,
        approval,
        parents: Vec::new(),
        remote_parents: Vec::new(),
        under_grant: false,
        limits,
        source: PathBuf::from(file),
        manifest_sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes())),
    };
    Ok(task)
}

fn limits(cx: &Ctx, l: &S<RawLimits>) -> Result<super::Limits, ManifestError> {
    let v = &l.value;
    if let Some(b) = &v.bytes_written {
        return Err(cx.err(
            b,
            "limits.bytes_written",
            "agentmon does not count bytes written (write(2) is not hooked: every process would pay for it); \
             limit files_changed",
        ));
    }
    let n = |f: &Option<S<u64>>, name: &str| -> Result<Option<u64>, ManifestError> {
        match f {
            Some(s) if s.value == 0 => Err(cx.err(
                s,
                &format!("limits.{name}"),
                "0 allows nothing: leave it out or give a number above 0",
            )),
            Some(s) => Ok(Some(s.value)),
            None => Ok(None),
        }
    };
    let on_exceed = match &v.on_exceed {
        None => crate::policy::Action::Alert,
        Some(s) => crate::policy::limits::ON_EXCEED
            .iter()
            .find(|(name, _)| *name == s.value)
            .map(|(_, a)| *a)
            .ok_or_else(|| {
                cx.err(s, "limits.on_exceed", format!("{:?} is not alert, freeze or kill", s.value))
            })?,
    };
    let out = super::Limits {
        files_changed: n(&v.files_changed, "files_changed")?,
        deletes: n(&v.deletes, "deletes")?,
        processes: n(&v.processes, "processes")?,
        connections: n(&v.connections, "connections")?,
        destinations: n(&v.destinations, "destinations")?,
        on_exceed,
    };
    if out == (super::Limits { on_exceed, ..Default::default() }) {
        return Err(cx.err(
            l,
            "limits",
            "no limit given (files_changed, deletes, processes, connections, destinations)",
        ));
    }
    Ok(out)
}

/// Reads and parses a manifest file.
pub fn load(path: &Path, now: Timestamp) -> Result<Task, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
        file: path.display().to_string(),
        line: 0,
        field: "(file)".into(),
        msg: e.to_string(),
        stalled: false,
    })?;
    parse(&text, path, now)
}
