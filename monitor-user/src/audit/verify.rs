//! Checks an audit chain: every line, every link, every checkpoint signature, and
//! that the chain ends with a checkpoint (docs/audit.md, "What verify detects").

use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::Path,
};

use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::{Map, Value};

use super::{
    AuditError, GENESIS, RecordType, checkpoint_message, is_hash,
    key::parse_public_key,
    public_key_hex, read_public_key, record_hash,
    report::{ProblemKind, VerifyReport},
    write_object,
};

/// Verifies the chain at `path`. With `pubkey` (a `.pub` file), every checkpoint must
/// be signed by that key; without, by the key it names (and the report is not
/// `trusted`). `Err` only when a file cannot be read; chain problems are in the report.
pub fn verify(path: &Path, pubkey: Option<&Path>) -> Result<VerifyReport, AuditError> {
    let trusted = pubkey.map(read_public_key).transpose()?;
    verify_with_key(path, trusted.as_ref())
}

pub fn verify_with_key(path: &Path, trusted: Option<&VerifyingKey>) -> Result<VerifyReport, AuditError> {
    let f = File::open(path).map_err(|source| AuditError::Open { path: path.into(), source })?;
    verify_reader(path, BufReader::with_capacity(1 << 16, f), trusted)
}

pub(crate) fn verify_reader(
    path: &Path,
    mut r: impl BufRead,
    trusted: Option<&VerifyingKey>,
) -> Result<VerifyReport, AuditError> {
    let mut c = Checker {
        trusted,
        report: VerifyReport { path: path.into(), trusted: trusted.is_some(), ..Default::default() },
        line: 0,
        offset: 0,
        prev: Some((None, GENESIS.into())),
        first_key: None,
        untrusted: false,
        buf: Vec::with_capacity(1024),
    };
    let mut raw = Vec::with_capacity(1024);
    loop {
        raw.clear();
        let (n, whole) = read_line_bounded(&mut r, &mut raw, MAX_LINE)
            .map_err(|source| AuditError::Read { path: path.into(), source })?;
        if n == 0 {
            break;
        }
        if whole {
            c.line(&raw);
        } else {
            c.too_long(n);
        }
    }
    Ok(c.finish())
}

/// The longest line read whole: anything longer is garbage, not a record (and a
/// file without newlines must not be read into memory at once).
const MAX_LINE: usize = 16 << 20;

/// Reads one line (with its newline) into `buf`, keeping at most `max` bytes:
/// (bytes consumed, whether the line was kept whole).
pub(crate) fn read_line_bounded(
    r: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<(usize, bool)> {
    let mut n = 0;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok((n, buf.len() == n));
        }
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if buf.len() + take <= max {
            buf.extend_from_slice(&chunk[..take]);
        }
        r.consume(take);
        n += take;
        if done {
            return Ok((n, buf.len() == n));
        }
    }
}

struct Checker<'k> {
    trusted: Option<&'k VerifyingKey>,
    report: VerifyReport,
    line: u64,
    offset: u64,
    /// seq and hash of the previous record; `None` after a line that could not be
    /// read (the next line is taken as it is rather than reported again).
    prev: Option<(Option<u64>, String)>,
    first_key: Option<VerifyingKey>,
    /// A checkpoint was signed by another key than the trusted one.
    untrusted: bool,
    buf: Vec<u8>,
}

/// The fields of a record.
struct Fields<'a> {
    seq: u64,
    prev: &'a str,
    kind: RecordType,
    body: &'a Value,
    hash: &'a str,
}

const FIELDS: [&str; 6] = ["body", "hash", "prev", "seq", "ts", "type"];

fn fields(m: &Map<String, Value>) -> Result<Fields<'_>, String> {
    if let Some(k) = m.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!("unexpected field `{k}`"));
    }
    let get = |k: &str| m.get(k).ok_or_else(|| format!("no `{k}` field"));
    let seq = get("seq")?.as_u64().ok_or("`seq` is not an unsigned integer")?;
    let text = |k: &str| -> Result<&str, String> {
        get(k)?.as_str().ok_or_else(|| format!("`{k}` is not a string"))
    };
    let (prev, hash) = (text("prev")?, text("hash")?);
    if !is_hash(prev) || !is_hash(hash) {
        return Err("`prev` and `hash` must be 64 lowercase hex digits".into());
    }
    let ts = text("ts")?;
    if crate::event::Timestamp::parse(ts).is_none() {
        return Err(format!("`ts` is not an RFC 3339 time: {ts}"));
    }
    let ty = text("type")?;
    let kind = RecordType::parse(ty).ok_or_else(|| format!("unknown record type `{ty}`"))?;
    Ok(Fields { seq, prev, kind, body: get("body")?, hash })
}

impl Checker<'_> {
    /// A line too long to be a record: reported, skipped.
    fn too_long(&mut self, len: usize) {
        self.line += 1;
        let (line, offset) = (self.line, self.offset);
        self.offset += len as u64;
        self.lost(line, offset, format!("a line of {len} bytes: longer than any record ({MAX_LINE} bytes)"));
    }

    fn line(&mut self, raw: &[u8]) {
        self.line += 1;
        let (line, offset) = (self.line, self.offset);
        self.offset += raw.len() as u64;
        let Some(text) = raw.strip_suffix(b"\n") else {
            let msg = "incomplete last line (no newline): an interrupted write or a cut file".into();
            self.report.problem(Some(line), offset, None, ProblemKind::Torn, msg);
            return;
        };
        let m = match serde_json::from_slice::<Value>(text) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return self.lost(line, offset, "not a JSON object".into()),
            Err(e) => return self.lost(line, offset, format!("not JSON: {e}")),
        };
        let f = match fields(&m) {
            Ok(f) => f,
            Err(e) => return self.lost(line, offset, format!("not an audit record: {e}")),
        };
        self.report.records += 1;
        let mut found: Vec<(ProblemKind, String)> = Vec::new();

        // The record itself.
        let hash = record_hash(&m);
        if hash != f.hash {
            found.push((ProblemKind::HashMismatch, "hash mismatch (record edited)".into()));
        } else {
            self.buf.clear();
            write_object(&m, None, &mut self.buf);
            if self.buf != text {
                let msg = "not in canonical form (re-serialised or edited by hand)".into();
                found.push((ProblemKind::NotCanonical, msg));
            }
        }

        // Its link to the one before.
        if let Some((prev_seq, prev_hash)) = &self.prev {
            let want = prev_seq.map_or(0, |s| s + 1);
            if f.seq != want {
                let msg = match prev_seq {
                    Some(p) => format!("seq {} after {p} (record deleted, inserted or reordered)", f.seq),
                    None => format!("first record has seq {}, not 0 (records deleted from the start)", f.seq),
                };
                found.push((ProblemKind::SeqGap, msg));
            } else if f.prev != prev_hash {
                let msg = match prev_seq {
                    Some(p) => format!(
                        "prev does not match the hash of seq {p} (records reordered or inserted, or seq {p} \
                         edited and re-hashed)"
                    ),
                    None => "prev of the first record is not 64 zeros".into(),
                };
                found.push((ProblemKind::PrevMismatch, msg));
            }
        }

        if f.kind == RecordType::Checkpoint {
            match self.checkpoint(&f) {
                // Only a checkpoint that is itself intact vouches for the records before
                // it. One signed by the wrong key is reported as such, not again as a
                // missing checkpoint at the end.
                Ok(key_problem) => {
                    if found.is_empty() {
                        self.report.checkpoints += 1;
                        self.report.signed_through = f.seq.checked_sub(1);
                        self.report.last_checkpoint = Some(f.seq);
                    }
                    found.extend(key_problem);
                }
                Err(p) => found.push(p),
            }
        }
        for (kind, msg) in found {
            self.report.problem(Some(line), offset, Some(f.seq), kind, msg);
        }
        self.report.last_seq = Some(f.seq);
        self.report.last_hash = Some(f.hash.into());
        // The next record links to the hash this one states: an edited record is
        // reported once (here), a re-hashed one at the next link.
        self.prev = Some((Some(f.seq), f.hash.into()));
    }

    fn lost(&mut self, line: u64, offset: u64, msg: String) {
        self.report.problem(Some(line), offset, None, ProblemKind::Malformed, msg);
        self.prev = None;
    }

    /// Checks a checkpoint's body and signature: `Err` if it is not a valid signature
    /// over the record before it, `Ok(Some)` if it is but by the wrong key.
    fn checkpoint(&mut self, f: &Fields) -> Result<Option<(ProblemKind, String)>, (ProblemKind, String)> {
        let bad = |m: &str| (ProblemKind::BadCheckpoint, format!("checkpoint {m}"));
        let b = f.body.as_object().ok_or_else(|| bad("body is not an object"))?;
        const KEYS: [&str; 5] = ["covers_hash", "covers_seq", "key", "recovered_from", "sig"];
        if let Some(k) = b.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(bad(&format!("has an unexpected field `{k}`")));
        }
        let covers_seq =
            b.get("covers_seq").and_then(Value::as_u64).ok_or_else(|| bad("has no covers_seq"))?;
        let covers_hash =
            b.get("covers_hash").and_then(Value::as_str).ok_or_else(|| bad("has no covers_hash"))?;
        if f.seq.checked_sub(1) != Some(covers_seq) || covers_hash != f.prev {
            return Err(bad("does not cover the record before it"));
        }
        let key_hex = b.get("key").and_then(Value::as_str).ok_or_else(|| bad("has no key"))?;
        let key = parse_public_key(key_hex).ok_or_else(|| bad("key is not an Ed25519 public key"))?;
        let mut sig = [0u8; 64];
        let sig_hex = b.get("sig").and_then(Value::as_str).ok_or_else(|| bad("has no sig"))?;
        hex::decode_to_slice(sig_hex, &mut sig).map_err(|_| bad("sig is not 128 hex digits"))?;
        let recovered = match b.get("recovered_from") {
            None => None,
            Some(v) => {
                Some(v.as_u64().filter(|&r| r <= covers_seq).ok_or_else(|| bad("has a bad recovered_from"))?)
            }
        };
        let msg = checkpoint_message(covers_seq, covers_hash);
        if key.verify_strict(&msg, &Signature::from_bytes(&sig)).is_err() {
            let m = format!(
                "checkpoint signature does not verify (forged checkpoint, or the records up to seq {covers_seq} were rewritten)"
            );
            return Err((ProblemKind::BadSignature, m));
        }
        if let Some(r) = recovered {
            self.report.notes.push(format!(
                "seq {r}..{covers_seq} were signed when the log was reopened after the writer stopped \
                 (line {}), not as they were written",
                self.line
            ));
        }
        let first = *self.first_key.get_or_insert(key);
        if self.report.key.is_none() {
            self.report.key = Some(key_hex.into());
        }
        match self.trusted {
            Some(t) if key != *t => {
                self.untrusted = true;
                let m = format!(
                    "checkpoint signed by key {key_hex}, not by the trusted key {}",
                    public_key_hex(t)
                );
                Ok(Some((ProblemKind::UntrustedKey, m)))
            }
            None if key != first => {
                let m = format!(
                    "checkpoint signed by key {key_hex}, but earlier ones by {}",
                    public_key_hex(&first)
                );
                Ok(Some((ProblemKind::KeyChanged, m)))
            }
            _ => Ok(None),
        }
    }

    fn finish(mut self) -> VerifyReport {
        let r = &mut self.report;
        let (line, offset) = (None, self.offset);
        match (r.last_seq, r.last_checkpoint) {
            (None, _) => r.problem(line, offset, None, ProblemKind::Empty, "no records".into()),
            (Some(last), Some(cp)) if last == cp => {}
            (Some(last), cp) => {
                let msg = match cp {
                    Some(cp) => format!(
                        "truncated tail or unsigned records after seq {cp}: seq {}..{last} are not covered \
                         by a signed checkpoint",
                        cp + 1
                    ),
                    None => format!(
                        "truncated tail or unsigned records: no valid signed checkpoint; seq 0..{last} are \
                         not covered by a signature"
                    ),
                };
                r.problem(line, offset, None, ProblemKind::UnsignedTail, msg);
            }
        }
        r.trusted = r.trusted && r.checkpoints > 0 && !self.untrusted;
        self.report
    }
}
