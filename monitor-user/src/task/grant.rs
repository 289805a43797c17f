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

use crate::{event::Timestamp, task::Task};

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
            crate::task::parse_unresolved(text, std::path::Path::new(&format!("grant chain link {n}")), now)
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
) -> Result<Option<Granted>, String> {
    let Some(keys) = keys else { return Ok(None) };
    if grant.is_none() && !required {
        return Ok(None);
    }
    let text = grant.ok_or("no grant: tasks here start only with a grant (agentmon grant) by a grant key")?;
    parse(text)
        .and_then(|g| match g {
            File::One(g) => g.verify(manifest, keys, now),
            File::Chain(c) => c.verify(manifest, keys, now),
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
mod tests {
    use super::*;

    const M: &str = "id: t\nmode: execute\nscope:\n  write: [\"/srv/**\"]\n";

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    #[test]
    fn a_grant_covers_its_manifest_its_keys_and_its_time() {
        let now = Timestamp(1_795_000_000_000_000_000);
        let later = Timestamp(now.0 + 3_600_000_000_000);
        let g = Grant::sign(&key(1), M, "alice", later);
        let keys = [key(1).verifying_key()];
        let ok = g.verify(M, &keys, now).unwrap();
        assert_eq!(ok.by, "alice");
        // Another manifest, an edited one, another signer, after its time.
        assert!(g.verify(&M.replace("/srv", "/"), &keys, now).unwrap_err().contains("another manifest"));
        assert!(g.verify(M, &[key(2).verifying_key()], now).unwrap_err().contains("may not grant"));
        assert!(g.verify(M, &keys, Timestamp(later.0 + 1)).unwrap_err().contains("ran out"));
        let mut widened = g.clone();
        widened.by = "root".into();
        assert!(widened.verify(M, &keys, now).unwrap_err().contains("bad signature"));
        let mut extended = g.clone();
        extended.not_after = "2099-01-01T00:00:00Z".into();
        assert!(extended.verify(M, &keys, now).unwrap_err().contains("bad signature"));
        // Through check: keys configured means a grant is needed.
        let text = serde_json::to_string(&g).unwrap();
        assert!(check(M, None, None, true, now).unwrap().is_none());
        assert!(check(M, None, Some(&keys), true, now).unwrap_err().contains("no grant"));
        assert!(check(M, Some("{}"), Some(&keys), true, now).unwrap_err().contains("not one"));
        assert_eq!(check(M, Some(&text), Some(&keys), true, now).unwrap().unwrap().by, "alice");
        // Signing not required: no grant starts unsigned, a bad one is refused still.
        assert!(check(M, None, Some(&keys), false, now).unwrap().is_none());
        assert!(check(M, Some("{}"), Some(&keys), false, now).unwrap_err().contains("not one"));
        assert_eq!(check(M, Some(&text), Some(&keys), false, now).unwrap().unwrap().by, "alice");
    }

    const LEAD: &str = "id: lead\nmode: execute\nenforcement: enforce\nagent: spiffe://a/lead\n\
                        principal: alice\nexpires_in: 2h\nscope:\n  write: [\"/srv/**\"]\n";
    const SUB: &str = "id: sub\nmode: execute\nexpires_in: 1h\nscope:\n  write: [\"/srv/sub/**\"]\n";

    fn hexkey(n: u8) -> String {
        hex::encode(key(n).verifying_key().to_bytes())
    }

    /// alice (1) grants LEAD, delegating to bob (2); bob grants SUB under it.
    fn two(now: Timestamp) -> Chain {
        let root = Grant::sign_under(
            &key(1),
            LEAD,
            "alice",
            Timestamp(now.0 + 7_200_000_000_000),
            None,
            vec![hexkey(2)],
        );
        let sub = Grant::sign_under(
            &key(2),
            SUB,
            "bob",
            Timestamp(now.0 + 3_600_000_000_000),
            Some(root.id()),
            vec![],
        );
        Chain::under(File::One(root), LEAD.into(), sub)
    }

    #[test]
    fn a_chain_holds_from_a_trusted_root_down_each_delegated_link() {
        let now = Timestamp(1_795_000_000_000_000_000);
        let c = two(now);
        let alice = [key(1).verifying_key()];
        let g = c.verify(SUB, &alice, now).unwrap();
        assert_eq!(
            (g.by.as_str(), g.key.as_str(), g.id.as_str()),
            ("bob", hexkey(2).as_str(), c.grant.id().as_str())
        );
        assert_eq!(
            g.chain,
            vec![Ancestor {
                task: "lead".into(),
                by: "alice".into(),
                key: hexkey(1),
                grant: c.links[0].grant.id(),
                not_after: c.links[0].grant.not_after.clone(),
            }]
        );
        // What a local sub-task takes from its parent, it takes from the remote one.
        let mut t = crate::task::parse_unresolved(SUB, std::path::Path::new("sub.yaml"), now).unwrap();
        t.take_grant(Some(g));
        assert!(t.enforce);
        assert_eq!(t.agent.as_deref(), Some("spiffe://a/lead"));
        assert_eq!(t.principal.as_deref(), Some("alice"));
        let lead = format!("lead@{}", &c.links[0].grant.id()[..16]);
        assert_eq!((t.parents.len(), t.remote_parents.clone()), (0, vec![lead]));
        // A local sub-task of it runs on that grant too (its events are not unsigned).
        let mut local = crate::task::parse_unresolved(SUB, std::path::Path::new("s.yaml"), now).unwrap();
        assert!(!local.under_grant);
        local.inherit(&t);
        assert!(local.under_grant && local.granted.is_none());
        // Through check, as a grant file's text.
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(check(SUB, Some(&text), Some(&alice), true, now).unwrap().unwrap().chain.len(), 1);
        // A root grant keeps the bytes grants had before delegation existed.
        let plain = serde_json::to_value(Grant::sign(&key(1), M, "alice", now)).unwrap();
        assert!(plain.get("parent").is_none() && plain.get("delegates").is_none());
    }

    #[test]
    fn every_way_to_forge_or_widen_a_chain_is_refused_by_link() {
        let now = Timestamp(1_795_000_000_000_000_000);
        let alice = [key(1).verifying_key()];
        let err = |c: &Chain, m: &str| c.verify(m, &alice, now).unwrap_err();
        let good = two(now);
        let resign = |c: &Chain, k: u8, m: &str, by: &str, until: i128, parent: Option<String>| {
            let mut c = c.clone();
            c.grant = Grant::sign_under(&key(k), m, by, Timestamp(now.0 + until), parent, vec![]);
            c
        };
        let pid = Some(good.links[0].grant.id());
        // The root by a key this host does not take.
        assert!(
            good.verify(SUB, &[key(2).verifying_key()], now)
                .unwrap_err()
                .starts_with("link 1 of 2: signed by")
        );
        // The sub-task signed by a key the root does not delegate to.
        let m = resign(&good, 3, SUB, "mallory", 3_600_000_000_000, pid.clone());
        assert!(
            err(&m, SUB).contains("link 2 of 2: signed by key") && err(&m, SUB).contains("does not delegate")
        );
        // A delegate widening the task.
        let wide = SUB.replace("/srv/sub/**", "/etc/**");
        let w = resign(&good, 2, &wide, "bob", 3_600_000_000_000, pid.clone());
        assert!(
            err(&w, &wide).contains("not within its parent's: scope.write \"/etc/**\""),
            "{}",
            err(&w, &wide)
        );
        // Dropping the parent's enforcement is no escape: it is inherited (above).
        // Outliving the parent's grant.
        let late = resign(&good, 2, SUB, "bob", 9_000_000_000_000, pid.clone());
        assert!(err(&late, SUB).contains("later than its parent grant's"));
        // Spliced under another grant, or under none.
        let other = Grant::sign_under(&key(1), LEAD, "alice", Timestamp(now.0 + 1), None, vec![hexkey(2)]);
        let spliced = resign(&good, 2, SUB, "bob", 3_600_000_000_000, Some(other.id()));
        assert!(err(&spliced, SUB).contains("names another parent grant"));
        let orphan = resign(&good, 2, SUB, "bob", 3_600_000_000_000, None);
        assert!(err(&orphan, SUB).contains("names another parent grant"));
        // The parent's manifest edited in the file (its grant covers other text).
        let mut edited = good.clone();
        edited.links[0].manifest = LEAD.replace("/srv/**", "/**");
        assert!(err(&edited, SUB).starts_with("link 1 of 2: it grants another manifest"));
        // The root grant's delegates edited.
        let mut more = good.clone();
        more.links[0].grant.delegates.push(hexkey(3));
        assert!(err(&more, SUB).contains("bad signature"));
        // Another manifest than the sub-task's grant covers.
        assert!(err(&good, &SUB.replace("/srv/sub", "/srv/sub2")).contains("another manifest"));
        // After the root ran out.
        assert!(
            good.verify(SUB, &alice, Timestamp(now.0 + 7_300_000_000_000)).unwrap_err().starts_with("link 1")
        );
        // A delegated grant alone, without the chain that gives it authority.
        let alone = serde_json::to_string(&good.grant).unwrap();
        let e = check(SUB, Some(&alone), Some(&alice), true, now).unwrap_err();
        assert!(e.contains("holds only with its chain"), "{e}");
        // No ancestors, or too many.
        let mut none = good.clone();
        none.links.clear();
        assert!(err(&none, SUB).contains("at least"));
        let mut deep = good.clone();
        deep.links = vec![good.links[0].clone(); MAX_ANCESTORS + 1];
        assert!(err(&deep, SUB).contains("more than"));
    }

    #[test]
    fn a_delegate_passes_on_only_what_it_was_given() {
        let now = Timestamp(1_795_000_000_000_000_000);
        let alice = [key(1).verifying_key()];
        let mut two = two(now);
        // bob's grant delegates to carol (4); carol grants a third level.
        two.grant = Grant::sign_under(
            &key(2),
            SUB,
            "bob",
            Timestamp(now.0 + 3_600_000_000_000),
            Some(two.links[0].grant.id()),
            vec![hexkey(4)],
        );
        let third = "id: third\nmode: execute\nexpires_in: 30m\nscope:\n  write: [\"/srv/sub/x/**\"]\n";
        let g3 = Grant::sign_under(
            &key(4),
            third,
            "carol",
            Timestamp(now.0 + 60_000_000_000),
            Some(two.grant.id()),
            vec![],
        );
        let three = Chain::under(File::Chain(Box::new(two.clone())), SUB.into(), g3);
        let g = three.verify(third, &alice, now).unwrap();
        let ids: Vec<&str> = g.chain.iter().map(|a| a.task.as_str()).collect();
        assert_eq!(ids, ["lead", "sub"]);
        let mut t = crate::task::parse_unresolved(third, std::path::Path::new("t.yaml"), now).unwrap();
        t.take_grant(Some(g));
        let q: Vec<&str> = t.remote_parents.iter().map(|p| p.split('@').next().unwrap()).collect();
        assert_eq!(q, ["sub", "lead"]);
        assert!(t.enforce && t.agent.as_deref() == Some("spiffe://a/lead"));
        // carol cannot sign directly under the root (alice delegated to bob only).
        let direct = Chain::under(
            File::One(two.links[0].grant.clone()),
            LEAD.into(),
            Grant::sign_under(
                &key(4),
                third,
                "carol",
                Timestamp(now.0 + 1),
                Some(two.links[0].grant.id()),
                vec![],
            ),
        );
        assert!(direct.verify(third, &alice, now).unwrap_err().contains("does not delegate"));
    }

    #[test]
    fn a_remote_sub_task_ends_with_its_parents_grant_and_keeps_its_limits() {
        let now = Timestamp(1_795_000_000_000_000_000);
        let alice = [key(1).verifying_key()];
        let hour = Timestamp(now.0 + 3_600_000_000_000);
        let parent = "id: p\nmode: execute\nscope:\n  write: [\"/srv/**\"]\nlimits:\n  deletes: 10\n  on_exceed: freeze\n";
        // Enforced by its grant alone (no manifest says so): so are its sub-tasks.
        let root = Grant::sign_under(&key(1), parent, "alice", hour, None, vec![hexkey(2)]).enforced(&key(1));
        let under = |child: &str| {
            let g = Grant::sign_under(&key(2), child, "bob", hour, Some(root.id()), vec![]);
            Chain::under(File::One(root.clone()), parent.into(), g).verify(child, &alice, now)
        };
        let child =
            |limits: &str| format!("id: c\nmode: execute\nscope:\n  write: [\"/srv/c/**\"]\n{limits}");
        assert!(under(&child("")).unwrap_err().contains("declares them too"));
        let e = under(&child("limits:\n  deletes: 20\n  on_exceed: freeze\n")).unwrap_err();
        assert!(e.contains("limits.deletes 20 is not within the parent's (10)"), "{e}");
        let e = under(&child("limits:\n  deletes: 5\n  on_exceed: alert\n")).unwrap_err();
        assert!(e.contains("milder"), "{e}");
        let ok = child("limits:\n  deletes: 5\n  on_exceed: kill\n");
        let g = under(&ok).unwrap();
        let mut t = crate::task::parse_unresolved(&ok, std::path::Path::new("c.yaml"), now).unwrap();
        assert!(!t.enforce && t.expires.is_none());
        t.take_grant(Some(g));
        assert!(t.enforce, "the root grant's enforcement reaches the sub-task");
        // No expiry of its own or its parent's: it ends with the parent's grant.
        let mut b = [0u8; 30];
        assert_eq!(t.expires.map(|e| e.format(&mut b).to_string()), Some(root.not_after.clone()));
    }
}
