//! Task grants: who gave a task its authority. A manifest is the agent's word; a
//! grant is a principal's Ed25519 signature over the manifest's exact bytes, a name
//! and a time limit, written beside it (`task.yaml.grant`) by `agentmon grant`.
//! Where agentmon is given grant keys (`--grant-keys`, the daemon's `grant_keys`),
//! a top-level task starts only with a grant by one of them that covers exactly its
//! manifest and has not run out; the task's start records who granted it.
//!
//! Signed bytes: `agentmon-grant/1\n` followed by the grant without `sig` as compact
//! JSON with sorted keys (as the remote control commands).
//!
//! Delegation across hosts: a grant may name `delegates`, keys that may grant
//! sub-tasks under it. A sub-task's grant, signed by one of them, names its parent
//! grant by [`Grant::id`], and travels as a [`Chain`]: every ancestor grant with the
//! manifest it covers, root first, then its own. The receiving host checks the root
//! against its own grant keys and each link against its parent: signed by a key the
//! parent delegates, its task within the parent's ([`Task::contains`], as a local
//! delegation), its `not_after` no later. A sub-task so started inherits what a
//! local one would (enforcement, sensitive reads, agent and principal), and its
//! events' `task_chain` names the remote parents.
//!
//! A manifest's `expires_in` is read at the check, so a parent's relative expiry is
//! compared as a duration: use `expires_at` in a manifest whose sub-tasks run
//! elsewhere to bound them in time.

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    event::Timestamp,
    task::{Task, scope::Resolve},
};

pub const SCHEMA: &str = "agentmon.grant/1";
pub const CHAIN_SCHEMA: &str = "agentmon.grant-chain/1";
const CONTEXT: &[u8] = b"agentmon-grant/1\n";
/// Ancestors a chain may carry: deep enough for any real delegation, and a bound
/// on the work (a manifest parsed and compared per link) an untrusted file asks.
pub const MAX_ANCESTORS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub schema: String,
    /// SHA-256 of the manifest's bytes, hex: the grant covers that text, no other.
    pub manifest_sha256: String,
    /// Who grants (a person or service, as the signer names themself).
    pub by: String,
    /// RFC 3339: no task starts under this grant after it.
    pub not_after: String,
    /// The signer's public key, hex.
    pub key: String,
    /// The grant this one is delegated under ([`Grant::id`]); None for a root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Keys (hex) that may grant sub-tasks under this grant, on any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delegates: Vec<String>,
    /// The task is enforced, whatever its manifest says (and so are the sub-tasks
    /// granted under it, on any host).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enforce: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

/// One ancestor of a delegated grant: the grant and the manifest it covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub grant: Grant,
    pub manifest: String,
}

/// A delegated grant with its ancestors, root first (the grant file of a sub-task
/// started on another host than its parent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chain {
    pub schema: String,
    pub links: Vec<Link>,
    pub grant: Grant,
}

/// An ancestor as the task's records name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ancestor {
    pub task: String,
    pub by: String,
    pub key: String,
    /// Its grant's [`Grant::id`] (the parent host's `task_start` records the same).
    pub grant: String,
    /// Its grant's `not_after`: a task granted under it ends by then.
    #[serde(default)]
    pub not_after: String,
}

impl Ancestor {
    /// How its task is named among this host's: its id qualified by its grant
    /// (`lead@1f2e…`, 16 hex digits), which no local task id can be (they have no
    /// `@`): a delegate choosing its ancestors' ids cannot pose as a task here.
    pub fn qualified(&self) -> String {
        format!("{}@{}", self.task, self.grant.get(..16).unwrap_or(&self.grant))
    }
}

/// What a task delegated from another host takes from its nearest parent, as a
/// local sub-task does ([`Task::inherit`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Under {
    pub enforce: bool,
    pub deny_sensitive_reads: bool,
    pub agent: Option<String>,
    pub principal: Option<String>,
}

/// What a verified grant says, for the task's records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Granted {
    pub by: String,
    pub key: String,
    pub not_after: String,
    /// The grant's [`Grant::id`] (a sub-task's grant on another host names it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// The grant enforces the task.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enforce: bool,
    /// Its ancestors, root first (a grant delegated under others).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<Ancestor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub under: Option<Under>,
}

impl Granted {
    /// Gives `task` what its grant, and its ancestors, pass on: enforcement, the
    /// parents' identity, their ids (nearest first, qualified) for its events'
    /// `task_chain`, and an end no later than the parents' grants.
    pub fn apply(&self, task: &mut Task) {
        task.enforce |= self.enforce;
        if let Some(u) = &self.under {
            task.enforce |= u.enforce;
            task.deny_sensitive_reads |= u.deny_sensitive_reads;
            task.agent.clone_from(&u.agent);
            task.principal.clone_from(&u.principal);
        }
        task.remote_parents = self.chain.iter().rev().map(Ancestor::qualified).collect();
        // A parent's authority ends with its grant; a task granted under it with it.
        let ends = self.chain.iter().filter_map(|a| Timestamp::parse(&a.not_after)).min();
        if let Some(end) = ends {
            task.expires = Some(task.expires.map_or(end, |e| e.min(end)));
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Grant {
    fn signed_bytes(&self) -> Vec<u8> {
        crate::signed::bytes(CONTEXT, self)
    }

    /// `key`'s grant of `manifest` (its exact text) to `by`, until `not_after`.
    pub fn sign(key: &SigningKey, manifest: &str, by: &str, not_after: Timestamp) -> Self {
        Self::sign_under(key, manifest, by, not_after, None, Vec::new())
    }

    /// As [`Grant::sign`], delegated under the grant `parent` names ([`Grant::id`]),
    /// letting `delegates` grant sub-tasks under this one.
    pub fn sign_under(
        key: &SigningKey,
        manifest: &str,
        by: &str,
        not_after: Timestamp,
        parent: Option<String>,
        delegates: Vec<String>,
    ) -> Self {
        let mut buf = [0u8; 30];
        let mut g = Grant {
            schema: SCHEMA.into(),
            manifest_sha256: sha256_hex(manifest.as_bytes()),
            by: by.into(),
            not_after: not_after.format(&mut buf).to_string(),
            key: hex::encode(key.verifying_key().to_bytes()),
            parent,
            delegates,
            enforce: false,
            sig: None,
        };
        g.sig = Some(hex::encode(key.sign(&g.signed_bytes()).to_bytes()));
        g
    }

    /// This grant, made to enforce its task (and its sub-tasks), signed again by `key`.
    pub fn enforced(mut self, key: &SigningKey) -> Self {
        self.enforce = true;
        self.sig = Some(hex::encode(key.sign(&self.signed_bytes()).to_bytes()));
        self
    }

    /// What names this grant: the SHA-256 of its signed bytes, hex.
    pub fn id(&self) -> String {
        sha256_hex(&self.signed_bytes())
    }

    /// Checks that this grant, by one of `keys`, covers exactly `manifest` at `now`.
    /// A delegated grant holds only with its chain ([`Chain::verify`]).
    pub fn verify(&self, manifest: &str, keys: &[VerifyingKey], now: Timestamp) -> Result<Granted, String> {
        if self.parent.is_some() {
            return Err("it is delegated under another grant: it holds only with its chain \
                 (agentmon grant --under writes one)"
                .into());
        }
        self.verify_by(manifest, keys, now, "which may not grant tasks here")
    }

    fn verify_by(
        &self,
        manifest: &str,
        keys: &[VerifyingKey],
        now: Timestamp,
        untrusted: &str,
    ) -> Result<Granted, String> {
        if self.schema != SCHEMA {
            return Err(format!("schema {:?} is not {SCHEMA}", self.schema));
        }
        let key = crate::signed::public_key(&self.key)?;
        if !keys.contains(&key) {
            return Err(format!("signed by key {}, {untrusted}", self.key));
        }
        let sig = crate::signed::signature(self.sig.as_deref())?;
        key.verify(&self.signed_bytes(), &sig)
            .map_err(|_| "bad signature (the grant was edited)".to_string())?;
        if self.manifest_sha256 != sha256_hex(manifest.as_bytes()) {
            return Err("it grants another manifest (this one was edited after it was granted)".into());
        }
        let until = self.until()?;
        if now > until {
            return Err(format!("it ran out at {}", self.not_after));
        }
        for (i, d) in self.delegates.iter().enumerate() {
            crate::signed::public_key(d).map_err(|e| format!("delegates[{i}]: {e}"))?;
        }
        Ok(Granted {
            by: self.by.clone(),
            key: self.key.clone(),
            not_after: self.not_after.clone(),
            id: self.id(),
            enforce: self.enforce,
            chain: Vec::new(),
            under: None,
        })
    }

    fn until(&self) -> Result<Timestamp, String> {
        Timestamp::parse(&self.not_after).ok_or_else(|| "not_after: not an RFC 3339 time".into())
    }
}

impl Chain {
    /// `grant` delegated under `parent` (a grant file's content: its ancestors, if
    /// any, come along), which covers `parent_manifest`.
    pub fn under(parent: File, parent_manifest: String, grant: Grant) -> Self {
        let (mut links, pg) = match parent {
            File::One(g) => (Vec::new(), g),
            File::Chain(c) => (c.links, c.grant),
        };
        links.push(Link { grant: pg, manifest: parent_manifest });
        Chain { schema: CHAIN_SCHEMA.into(), links, grant }
    }

    /// Checks the whole chain for `manifest` at `now`: the root by one of `keys`,
    /// each later grant by a key its parent delegates, naming its parent, running
    /// out no later, over a task within its parent's. Errors name the link (1: the
    /// root).
    pub fn verify(&self, manifest: &str, keys: &[VerifyingKey], now: Timestamp) -> Result<Granted, String> {
        self.verify_with(manifest, keys, now, Resolve::Here)
    }

    /// [`Self::verify`], the links' paths resolved as `how` says (a daemon's loop:
    /// bounded, a link whose file system does not answer compared as written).
    pub fn verify_with(
        &self,
        manifest: &str,
        keys: &[VerifyingKey],
        now: Timestamp,
        how: Resolve,
    ) -> Result<Granted, String> {
        if self.schema != CHAIN_SCHEMA {
            return Err(format!("schema {:?} is not {CHAIN_SCHEMA}", self.schema));
        }
        let Some(root) = self.links.first() else {
            return Err("links: a chain names at least the grant it is delegated under".into());
        };
        if self.links.len() > MAX_ANCESTORS {
            return Err(format!("links: {} ancestors, more than {MAX_ANCESTORS}", self.links.len()));
        }
        let link = |n: usize, e: String| format!("link {n} of {}: {e}", self.links.len() + 1);
        root.grant.verify(&root.manifest, keys, now).map_err(|e| link(1, e))?;
        let parse = |n: usize, text: &str| {
            crate::task::parse_unresolved(
                text,
                std::path::Path::new(&format!("grant chain link {n}")),
                now,
                how,
            )
            .map_err(|e| link(n, format!("its manifest: {e}")))
        };
        let mut parent = parse(1, &root.manifest)?;
        parent.enforce |= root.grant.enforce;
        let mut chain = Vec::new();
        let mut prev = &root.grant;
        let rest = self.links[1..].iter().map(|l| (&l.grant, l.manifest.as_str()));
        for (i, (g, m)) in rest.chain(std::iter::once((&self.grant, manifest))).enumerate() {
            let n = i + 2;
            if g.parent.as_deref() != Some(prev.id().as_str()) {
                return Err(link(n, "it names another parent grant than the link before it".into()));
            }
            let keys = prev
                .delegates
                .iter()
                .map(|d| crate::signed::public_key(d))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| link(n - 1, format!("delegates: {e}")))?;
            let ok = g
                .verify_by(m, &keys, now, "to which its parent grant does not delegate")
                .map_err(|e| link(n, e))?;
            if g.until().map_err(|e| link(n, e))? > prev.until().map_err(|e| link(n - 1, e))? {
                let why = format!(
                    "not_after {} is later than its parent grant's ({})",
                    g.not_after, prev.not_after
                );
                return Err(link(n, why));
            }
            let mut task = parse(n, m)?;
            let within = parent.contains(&task).and_then(|()| limits_within(&parent, &task));
            within.map_err(|why| link(n, format!("its task is not within its parent's: {why}")))?;
            task.inherit(&parent);
            task.enforce |= g.enforce;
            chain.push(Ancestor {
                task: parent.id.clone(),
                by: prev.by.clone(),
                key: prev.key.clone(),
                grant: prev.id(),
                not_after: prev.not_after.clone(),
            });
            if n == self.links.len() + 1 {
                let under = Under {
                    enforce: parent.enforce,
                    deny_sensitive_reads: parent.deny_sensitive_reads,
                    agent: parent.agent.clone(),
                    principal: parent.principal.clone(),
                };
                return Ok(Granted { chain, under: Some(under), ..ok });
            }
            parent = task;
            prev = g;
        }
        unreachable!("the chain's own grant is its last link")
    }
}

/// The grant file beside a manifest.
pub fn path_for(manifest: &std::path::Path) -> std::path::PathBuf {
    let mut p = manifest.as_os_str().to_owned();
    p.push(".grant");
    p.into()
}

/// A task on another host than its parent is not counted against the parent's
/// `limits` (a local sub-task is): where the parent has them, it must declare each,
/// no higher, and act on them no more mildly.
fn limits_within(parent: &Task, child: &Task) -> Result<(), String> {
    let Some(p) = &parent.limits else { return Ok(()) };
    let Some(c) = &child.limits else {
        return Err("limits: the parent task has limits; a sub-task on another host declares them too".into());
    };
    for (name, mine, theirs) in [
        ("files_changed", p.files_changed, c.files_changed),
        ("deletes", p.deletes, c.deletes),
        ("processes", p.processes, c.processes),
        ("connections", p.connections, c.connections),
        ("destinations", p.destinations, c.destinations),
    ] {
        if let Some(m) = mine
            && theirs.is_none_or(|t| t > m)
        {
            let t = theirs.map_or("none".to_string(), |t| t.to_string());
            return Err(format!("limits.{name} {t} is not within the parent's ({m})"));
        }
    }
    if c.on_exceed < p.on_exceed {
        return Err(format!(
            "limits.on_exceed {} is milder than the parent's ({})",
            c.on_exceed.as_str(),
            p.on_exceed.as_str()
        ));
    }
    Ok(())
}

/// Checks a task's start against the grant keys: none configured, any task starts;
/// otherwise `grant` (the grant file's text: one grant, or a [`Chain`]) must verify
/// for `manifest` — or, where signing is not `required`, a task without one starts
/// unsigned (a grant given is checked all the same: a bad one never starts).
pub fn check(
    manifest: &str,
    grant: Option<&str>,
    keys: Option<&[VerifyingKey]>,
    required: bool,
    now: Timestamp,
    how: Resolve,
) -> Result<Option<Granted>, String> {
    let Some(keys) = keys else { return Ok(None) };
    if grant.is_none() && !required {
        return Ok(None);
    }
    let text = grant.ok_or("no grant: tasks here start only with a grant (agentmon grant) by a grant key")?;
    parse(text)
        .and_then(|g| match g {
            File::One(g) => g.verify(manifest, keys, now),
            File::Chain(c) => c.verify_with(manifest, keys, now, how),
        })
        .map(Some)
        .map_err(|e| format!("the grant does not hold: {e}"))
}

/// A grant file's content.
pub enum File {
    One(Grant),
    Chain(Box<Chain>),
}

/// A grant file's text, by its schema.
pub fn parse(text: &str) -> Result<File, String> {
    let not = |e: serde_json::Error| format!("the grant is not one: {e}");
    let v: serde_json::Value = serde_json::from_str(text.trim()).map_err(not)?;
    if v.get("schema").and_then(|s| s.as_str()) == Some(CHAIN_SCHEMA) {
        serde_json::from_value(v).map(|c| File::Chain(Box::new(c))).map_err(not)
    } else {
        serde_json::from_value(v).map(File::One).map_err(not)
    }
}

#[cfg(test)]
mod tests;
