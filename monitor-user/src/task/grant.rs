//! Task grants: who gave a task its authority. A manifest is the agent's word; a
//! grant is a principal's Ed25519 signature over the manifest's exact bytes, a name
//! and a time limit, written beside it (`task.yaml.grant`) by `agentmon grant`.
//! Where agentmon is given grant keys (`--grant-keys`, the daemon's `grant_keys`),
//! a top-level task starts only with a grant by one of them that covers exactly its
//! manifest and has not run out; the task's start records who granted it.
//!
//! Signed bytes: `agentmon-grant/1\n` followed by the grant without `sig` as compact
//! JSON with sorted keys (as the remote control commands).

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::event::Timestamp;

pub const SCHEMA: &str = "agentmon.grant/1";
const CONTEXT: &[u8] = b"agentmon-grant/1\n";

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

/// What a verified grant says, for the task's records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Granted {
    pub by: String,
    pub key: String,
    pub not_after: String,
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
        let mut buf = [0u8; 30];
        let mut g = Grant {
            schema: SCHEMA.into(),
            manifest_sha256: sha256_hex(manifest.as_bytes()),
            by: by.into(),
            not_after: not_after.format(&mut buf).to_string(),
            key: hex::encode(key.verifying_key().to_bytes()),
            sig: None,
        };
        g.sig = Some(hex::encode(key.sign(&g.signed_bytes()).to_bytes()));
        g
    }

    /// Checks that this grant, by one of `keys`, covers exactly `manifest` at `now`.
    pub fn verify(&self, manifest: &str, keys: &[VerifyingKey], now: Timestamp) -> Result<Granted, String> {
        if self.schema != SCHEMA {
            return Err(format!("schema {:?} is not {SCHEMA}", self.schema));
        }
        let key = crate::signed::public_key(&self.key)?;
        if !keys.contains(&key) {
            return Err(format!("signed by key {}, which may not grant tasks here", self.key));
        }
        let sig = crate::signed::signature(self.sig.as_deref())?;
        key.verify(&self.signed_bytes(), &sig)
            .map_err(|_| "bad signature (the grant was edited)".to_string())?;
        if self.manifest_sha256 != sha256_hex(manifest.as_bytes()) {
            return Err("it grants another manifest (this one was edited after it was granted)".into());
        }
        let until = Timestamp::parse(&self.not_after).ok_or("not_after: not an RFC 3339 time")?;
        if now > until {
            return Err(format!("it ran out at {}", self.not_after));
        }
        Ok(Granted { by: self.by.clone(), key: self.key.clone(), not_after: self.not_after.clone() })
    }
}

/// The grant file beside a manifest.
pub fn path_for(manifest: &std::path::Path) -> std::path::PathBuf {
    let mut p = manifest.as_os_str().to_owned();
    p.push(".grant");
    p.into()
}

/// Checks a task's start against the grant keys: none configured, any task starts;
/// otherwise `grant` (the grant file's text) must verify for `manifest`.
pub fn check(
    manifest: &str,
    grant: Option<&str>,
    keys: Option<&[VerifyingKey]>,
    now: Timestamp,
) -> Result<Option<Granted>, String> {
    let Some(keys) = keys else { return Ok(None) };
    let text = grant.ok_or("no grant: tasks here start only with a grant (agentmon grant) by a grant key")?;
    let g: Grant = serde_json::from_str(text.trim()).map_err(|e| format!("the grant is not one: {e}"))?;
    g.verify(manifest, keys, now).map(Some).map_err(|e| format!("the grant does not hold: {e}"))
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
        assert!(check(M, None, None, now).unwrap().is_none());
        assert!(check(M, None, Some(&keys), now).unwrap_err().contains("no grant"));
        assert!(check(M, Some("{}"), Some(&keys), now).unwrap_err().contains("not one"));
        assert_eq!(check(M, Some(&text), Some(&keys), now).unwrap().unwrap().by, "alice");
    }
}
