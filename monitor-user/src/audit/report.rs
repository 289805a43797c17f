//! What [`super::verify`] reports: the problems it found and where.

use std::{fmt, path::PathBuf};

/// Problems kept in a report; the rest are only counted.
const MAX_PROBLEMS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// The last line has no newline: an interrupted write or a cut file.
    Torn,
    /// Not JSON, or not a record (missing or mistyped field, unknown type).
    Malformed,
    /// `hash` is not the hash of the record: the record was edited.
    HashMismatch,
    /// The line is not written as the writer writes it (re-serialised or hand-edited).
    NotCanonical,
    /// `seq` does not follow the previous record's.
    SeqGap,
    /// `prev` is not the previous record's hash.
    PrevMismatch,
    /// A checkpoint whose body is malformed or does not cover the record before it.
    BadCheckpoint,
    /// A checkpoint signature that does not verify.
    BadSignature,
    /// A checkpoint signed by a key other than the trusted one.
    UntrustedKey,
    /// Without a trusted key: a checkpoint signed by a different key than the first.
    KeyChanged,
    /// No records at all.
    Empty,
    /// Records after the last valid checkpoint: a truncated tail or unsigned records.
    UnsignedTail,
}

/// One problem, where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line number (`None` for problems of the whole file).
    pub line: Option<u64>,
    /// Byte offset of the line's start.
    pub offset: u64,
    /// The record's seq, when it has one.
    pub seq: Option<u64>,
    pub kind: ProblemKind,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = self.line {
            write!(f, "line {l}: ")?;
        }
        // A seq gap's message names the seq itself.
        if let Some(s) = self.seq.filter(|_| self.kind != ProblemKind::SeqGap) {
            write!(f, "seq {s}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// What [`verify`] found. The chain is intact when [`VerifyReport::is_ok`].
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub path: PathBuf,
    /// Well-formed records read.
    pub records: u64,
    /// seq and hash of the last well-formed record.
    pub last_seq: Option<u64>,
    pub last_hash: Option<String>,
    /// Checkpoints whose signature verified.
    pub checkpoints: u64,
    /// The seq the last valid checkpoint covers: every record up to it is signed.
    pub signed_through: Option<u64>,
    /// The checkpoints' signer (hex public key).
    pub key: Option<String>,
    /// A trusted key was given and every checkpoint was signed by it.
    pub trusted: bool,
    /// In file order; at most 100, see `omitted`.
    pub problems: Vec<Problem>,
    pub omitted: u64,
    /// Not problems: facts a reader should know (late-signed records).
    pub notes: Vec<String>,
    /// seq of the last valid checkpoint record.
    pub(crate) last_checkpoint: Option<u64>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn first_problem(&self) -> Option<&Problem> {
        self.problems.first()
    }

    pub(crate) fn problem(
        &mut self,
        line: Option<u64>,
        offset: u64,
        seq: Option<u64>,
        kind: ProblemKind,
        message: String,
    ) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(Problem { line, offset, seq, kind, message });
        } else {
            self.omitted += 1;
        }
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        if let Some(p) = self.first_problem() {
            let more = self.problems.len() as u64 - 1 + self.omitted;
            write!(f, "{path}: FAILED: {p}")?;
            if more > 0 {
                write!(f, " (and {more} more problems)")?;
            }
            return Ok(());
        }
        let last = self.last_seq.unwrap_or(0);
        let key = self.key.as_deref().unwrap_or("-");
        let trust =
            if self.trusted { "trusted" } else { "UNTRUSTED: no public key given to check it against" };
        write!(
            f,
            "{path}: OK: {} records (seq 0..{last}), {} signed checkpoints, key {key} ({trust})",
            self.records, self.checkpoints
        )
    }
}
