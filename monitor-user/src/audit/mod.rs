//! The tamper-evident audit chain: an append-only JSON-lines file in which every
//! record carries the SHA-256 hash of the one before it, with periodic Ed25519-signed
//! checkpoints. Format, guarantees and limits: docs/audit.md.
//!
//! [`AuditChain`] writes a chain (and is a [`crate::sink::Sink`]); [`verify`] checks one.

mod chain;
mod key;
mod report;
mod verify;

#[cfg(test)]
mod tests;

use std::{io, path::PathBuf};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub use chain::AuditChain;
pub use key::{checkpoint_message, load_or_create_key, public_key_hex, public_key_path, read_public_key};
pub use report::{Problem, ProblemKind, VerifyReport};
pub use verify::{verify, verify_with_key};

/// `prev` of the first record (seq 0): 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// First line of the message a checkpoint signs; the version of the record format.
pub const CHECKPOINT_CONTEXT: &str = "agentmon-audit-checkpoint/1";

/// Records between two checkpoints when the caller does not say.
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 1000;

/// The `type` of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    TaskStart,
    TaskEnd,
    /// Reserved for an agent's tool-call steps; the body is free-form.
    Step,
    /// An [`crate::event::Event`] (approvals and actions are events too).
    Event,
    /// An [`crate::event::Alert`].
    Alert,
    /// A signature over the hash of the record before it.
    Checkpoint,
}

impl RecordType {
    pub const ALL: [RecordType; 6] = [
        RecordType::TaskStart,
        RecordType::TaskEnd,
        RecordType::Step,
        RecordType::Event,
        RecordType::Alert,
        RecordType::Checkpoint,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::TaskStart => "task_start",
            RecordType::TaskEnd => "task_end",
            RecordType::Step => "step",
            RecordType::Event => "event",
            RecordType::Alert => "alert",
            RecordType::Checkpoint => "checkpoint",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit log {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("reading audit log {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing audit log {path} at seq {seq}: {source}")]
    Write { path: PathBuf, seq: u64, source: io::Error },
    #[error("audit log {path}: record seq {seq} cannot be serialised: {source}")]
    Json { path: PathBuf, seq: u64, source: serde_json::Error },
    #[error("audit log {path}: an earlier write failed; refusing to append after a possibly torn record")]
    Poisoned { path: PathBuf },
    #[error("audit log {path} is in use by another writer")]
    Locked { path: PathBuf },
    #[error(
        "audit log {path} does not verify ({problem}); refusing to append: keep it as evidence and \
         start a new log"
    )]
    Corrupt { path: PathBuf, problem: String },
    #[error("checkpoint_every must be at least 1")]
    CheckpointEvery,
    #[error("key file {path}: {source}")]
    Key { path: PathBuf, source: io::Error },
    #[error("key file {path} has mode {mode:04o}: group or others can access it (chmod 600 {path})")]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("key file {path} is owned by uid {owner}, not by the user running agentmon (uid {uid})")]
    KeyOwner { path: PathBuf, owner: u32, uid: u32 },
    #[error("key file {path}: {message}")]
    KeyFormat { path: PathBuf, message: String },
    #[error("public key file {path} does not match the signing key {key} (its public key is {expected})")]
    PublicKeyMismatch { path: PathBuf, key: PathBuf, expected: String },
    #[error("cannot get random bytes for a new key {path}: {message}")]
    Random { path: PathBuf, message: String },
}

/// Appends the canonical form of `v` to `out`: compact (no whitespace), object keys
/// sorted by their UTF-8 bytes at every level, strings and numbers as serde_json
/// writes them. The sort is done here rather than relying on serde_json's
/// BTreeMap-backed `Map`, which another crate's `preserve_order` feature would change.
pub fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => write_object(m, None, out),
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(x, out);
            }
            out.push(b']');
        }
        // Scalars cannot fail to serialise, and writing to a Vec cannot fail.
        scalar => {
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

fn write_object(m: &Map<String, Value>, skip: Option<&str>, out: &mut Vec<u8>) {
    let mut keys: Vec<&String> = m.keys().filter(|k| Some(k.as_str()) != skip).collect();
    keys.sort_unstable();
    out.push(b'{');
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = serde_json::to_writer(&mut *out, k);
        out.push(b':');
        write_canonical(&m[k], out);
    }
    out.push(b'}');
}

/// The `hash` of a record: hex SHA-256 of the canonical JSON of the record without
/// its `hash` field.
pub fn record_hash(record: &Map<String, Value>) -> String {
    let mut buf = Vec::with_capacity(512);
    write_object(record, Some("hash"), &mut buf);
    hex::encode(Sha256::digest(&buf))
}

/// A lowercase hex SHA-256, as `prev` and `hash` are written.
pub(crate) fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The record `{seq, prev, ts, type, body}` with its `hash`, as one canonical line
/// (with the newline); returns the line and the hash.
pub(crate) fn build_record(
    seq: u64,
    prev: &str,
    ts: &str,
    kind: RecordType,
    body: Value,
    line: &mut Vec<u8>,
) -> String {
    let mut m = Map::new();
    m.insert("seq".into(), seq.into());
    m.insert("prev".into(), prev.into());
    m.insert("ts".into(), ts.into());
    m.insert("type".into(), kind.as_str().into());
    m.insert("body".into(), body);
    let hash = record_hash(&m);
    m.insert("hash".into(), hash.clone().into());
    line.clear();
    write_object(&m, None, line);
    line.push(b'\n');
    hash
}
