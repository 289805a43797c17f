//! Ed25519 signatures over canonical JSON, shared by remote control commands and
//! task grants: the signed bytes are a context line followed by the object without
//! its `sig`, as compact JSON with sorted keys; keys and signatures travel as hex.

use ed25519_dalek::{Signature, VerifyingKey};
use serde::Serialize;

/// `context` followed by `v` as compact JSON with sorted keys and no `sig` field.
pub fn bytes<T: Serialize>(context: &[u8], v: &T) -> Vec<u8> {
    let mut v = serde_json::to_value(v).expect("a signed object is JSON");
    if let Some(o) = v.as_object_mut() {
        o.remove("sig");
    }
    let mut out = context.to_vec();
    // serde_json's map is ordered by key: a Value comes out sorted.
    out.extend(serde_json::to_vec(&v).expect("a value serialises"));
    out
}

/// A hex Ed25519 public key.
pub fn public_key(hex_key: &str) -> Result<VerifyingKey, String> {
    hex::decode(hex_key)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        .ok_or_else(|| "key: not a hex Ed25519 public key".into())
}

/// A hex Ed25519 signature.
pub fn signature(hex_sig: Option<&str>) -> Result<Signature, String> {
    hex_sig
        .and_then(|s| hex::decode(s).ok())
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b))
        .ok_or_else(|| "sig: missing or not a hex Ed25519 signature".into())
}

/// Public keys, one hex key per line (`#` comments); an empty list is an error.
pub fn load_keys(path: &std::path::Path) -> Result<Vec<VerifyingKey>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let l = line.split('#').next().unwrap_or("").trim();
        if l.is_empty() {
            continue;
        }
        let k = public_key(l)
            .map_err(|_| format!("{}:{}: not a hex Ed25519 public key", path.display(), n + 1))?;
        keys.push(k);
    }
    if keys.is_empty() {
        return Err(format!("{}: no keys", path.display()));
    }
    Ok(keys)
}
