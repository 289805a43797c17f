//! The writer: appends records to an audit chain and signs checkpoints.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufReader, BufWriter, Seek, SeekFrom, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use ed25519_dalek::{Signer, SigningKey};
use nix::fcntl::Flock;
use serde_json::{Value, json};

use super::{
    AuditError, GENESIS, ProblemKind, RecordType, build_record, checkpoint_message, load_or_create_key,
    public_key_hex, verify::verify_reader,
};
use crate::{
    event::{Alert, Event, Timestamp},
    sink::{Sink, SinkError},
};

/// An open audit chain. Records go through a buffer; [`AuditChain::commit`] (and
/// [`Sink::flush`]) signs a checkpoint over what was added and fsyncs the file.
/// Dropping the chain commits (errors are logged); [`AuditChain::close`] reports them.
pub struct AuditChain {
    path: PathBuf,
    out: BufWriter<File>,
    /// Held while the chain is open: one writer per file.
    _lock: Flock<File>,
    key: SigningKey,
    key_hex: String,
    checkpoint_every: u64,
    next_seq: u64,
    /// Hash of the last record written.
    prev: String,
    /// Records since the last checkpoint.
    unsigned: u64,
    line: Vec<u8>,
    /// A write failed (a full disk): part of a line may be in the file. Nothing is
    /// appended until [`AuditChain::recover`] has cut it off and resumed the chain.
    poisoned: bool,
    /// When recovery was last tried (at most once a second).
    tried: Option<std::time::Instant>,
    /// Records written into the buffer (Ok to the caller) that recovery dropped
    /// because they never reached the file; taken by [`Sink::lost`].
    dropped: u64,
    /// Checkpoints written since the file was last synced: the chain's own records,
    /// not counted in `dropped` when recovery drops them.
    own_unsynced: u64,
    closed: bool,
    /// An incomplete last line cut at open, until reported.
    torn: Option<crate::torn::TornTail>,
}

impl AuditChain {
    /// Opens (or creates) the chain at `path`, signing with the key at `key_path`
    /// (created on first use, see [`load_or_create_key`]); a checkpoint every
    /// `checkpoint_every` records ([`super::DEFAULT_CHECKPOINT_EVERY`] is a good value).
    pub fn open(path: &Path, key_path: &Path, checkpoint_every: u64) -> Result<Self, AuditError> {
        if checkpoint_every == 0 {
            return Err(AuditError::CheckpointEvery);
        }
        Self::open_with_key(path, load_or_create_key(key_path)?, checkpoint_every)
    }

    /// Opens the chain with a key already loaded.
    ///
    /// An existing file is verified first, with this key as the trusted one: the
    /// chain continues only if every record and checkpoint checks out. Records after
    /// the last checkpoint (the writer stopped before signing them) are signed at once
    /// by a checkpoint marked `recovered_from`. A torn last line (a writer killed
    /// mid-record) is cut off and kept beside the log. Any other problem, or
    /// checkpoints by another key: refused.
    pub fn open_with_key(path: &Path, key: SigningKey, checkpoint_every: u64) -> Result<Self, AuditError> {
        if checkpoint_every == 0 {
            return Err(AuditError::CheckpointEvery);
        }
        let open_err = |source| AuditError::Open { path: path.into(), source };
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)
            .map_err(open_err)?;
        let lock = lock_waiting(&file, path)?;
        let mut chain = AuditChain {
            path: path.into(),
            out: BufWriter::with_capacity(1 << 16, file),
            _lock: lock,
            key_hex: public_key_hex(&key.verifying_key()),
            key,
            checkpoint_every,
            next_seq: 0,
            prev: GENESIS.into(),
            unsigned: 0,
            line: Vec::with_capacity(1024),
            poisoned: false,
            tried: None,
            dropped: 0,
            own_unsynced: 0,
            closed: false,
            torn: None,
        };
        if let Err(e) = chain.resume() {
            // Nothing to commit to a file that was refused.
            chain.closed = true;
            return Err(e);
        }
        Ok(chain)
    }

    /// Continues the chain in the file, if there is one.
    fn resume(&mut self) -> Result<(), AuditError> {
        let path = self.path.clone();
        let read_err = |source| AuditError::Read { path: path.clone(), source };
        let mut f = self.out.get_ref();
        if f.metadata().map_err(read_err)?.len() == 0 {
            return Ok(());
        }
        f.seek(SeekFrom::Start(0)).map_err(read_err)?;
        let vk = self.key.verifying_key();
        let report = verify_reader(&path, BufReader::with_capacity(1 << 16, f), Some(&vk))?;
        let mut torn = None;
        for p in &report.problems {
            match p.kind {
                ProblemKind::UnsignedTail => {}
                ProblemKind::Torn => torn = Some(p.offset),
                // Nothing but a fragment: a new chain once it is cut.
                ProblemKind::Empty if torn == Some(0) => {}
                _ => return Err(AuditError::Corrupt { path, problem: p.to_string() }),
            }
        }
        // Only an otherwise sound chain is continued past a torn last line (a writer
        // killed mid-record): the fragment is moved aside and the cut is recorded
        // in this chain as a `loss` record (see `Sink::torn`).
        if let Some(offset) = torn {
            self.torn = Some(crate::torn::cut(f, &path, offset, None).map_err(read_err)?);
        }
        let (Some(last), Some(hash)) = (report.last_seq, report.last_hash) else {
            if torn == Some(0) {
                return Ok(());
            }
            return Err(AuditError::Corrupt { path, problem: "no records in a non-empty file".into() });
        };
        self.next_seq = last + 1;
        self.prev = hash;
        let first_unsigned = report.last_checkpoint.map_or(0, |c| c + 1);
        self.unsigned = self.next_seq - first_unsigned;
        if self.unsigned > 0 {
            self.write_checkpoint(Some(first_unsigned))?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The seq the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Hash of the last record written (64 zeros before the first).
    pub fn last_hash(&self) -> &str {
        &self.prev
    }

    /// The signer's public key, hex (as in checkpoints and `<key>.pub`).
    pub fn public_key_hex(&self) -> &str {
        &self.key_hex
    }

    /// Appends a `task_start` record; returns its seq.
    pub fn task_start(&mut self, body: Value) -> Result<u64, AuditError> {
        self.append(RecordType::TaskStart, body)
    }

    /// Appends a `task_end` record; returns its seq.
    pub fn task_end(&mut self, body: Value) -> Result<u64, AuditError> {
        self.append(RecordType::TaskEnd, body)
    }

    /// Appends a `step` record (an agent's tool call; the body is free-form).
    pub fn step(&mut self, body: Value) -> Result<u64, AuditError> {
        self.append(RecordType::Step, body)
    }

    /// Appends an `event` record whose body is the event's JSON.
    pub fn event(&mut self, ev: &Event) -> Result<u64, AuditError> {
        let body = self.to_body(ev)?;
        self.append(RecordType::Event, body)
    }

    /// Appends an `alert` record whose body is the alert's JSON.
    pub fn alert(&mut self, a: &Alert) -> Result<u64, AuditError> {
        let body = self.to_body(a)?;
        self.append(RecordType::Alert, body)
    }

    fn to_body(&self, v: &impl serde::Serialize) -> Result<Value, AuditError> {
        serde_json::to_value(v).map_err(|source| AuditError::Json {
            path: self.path.clone(),
            seq: self.next_seq,
            source,
        })
    }

    /// Appends a record (not a checkpoint); signs a checkpoint after every
    /// `checkpoint_every` records.
    fn append(&mut self, kind: RecordType, body: Value) -> Result<u64, AuditError> {
        let seq = self.write(kind, body)?;
        self.unsigned += 1;
        if self.unsigned >= self.checkpoint_every {
            self.write_checkpoint(None)?;
        }
        Ok(seq)
    }

    /// Signs a checkpoint over the last record if any record came after the last
    /// checkpoint; returns the checkpoint's seq.
    pub fn checkpoint(&mut self) -> Result<Option<u64>, AuditError> {
        if self.unsigned == 0 {
            return Ok(None);
        }
        self.write_checkpoint(None).map(Some)
    }

    /// Checkpoints what was added, then writes the buffer out and fsyncs the file.
    pub fn commit(&mut self) -> Result<(), AuditError> {
        self.checkpoint()?;
        self.sync()
    }

    /// Commits and closes the chain.
    pub fn close(mut self) -> Result<(), AuditError> {
        self.closed = true;
        self.commit()
    }

    fn write_checkpoint(&mut self, recovered_from: Option<u64>) -> Result<u64, AuditError> {
        // Never called before the first record: there is one to cover.
        let covers_seq = self.next_seq - 1;
        let sig = self.key.sign(&checkpoint_message(covers_seq, &self.prev));
        let mut body = json!({
            "covers_seq": covers_seq,
            "covers_hash": self.prev,
            "key": self.key_hex,
            "sig": hex::encode(sig.to_bytes()),
        });
        if let Some(r) = recovered_from {
            body["recovered_from"] = r.into();
        }
        let seq = self.write(RecordType::Checkpoint, body)?;
        self.own_unsynced += 1;
        self.unsigned = 0;
        // A signed checkpoint is on disk before the writer goes on.
        self.sync()?;
        Ok(seq)
    }

    /// After a failed write: the records still in the buffer are dropped (they were
    /// never written whole), a torn last line is cut off, and the chain resumes from
    /// the last record in the file with a recovery checkpoint. The records dropped
    /// (taken, never written) are counted in `dropped`; the fan-out turns them into
    /// a `loss` record, in this chain too once it works.
    fn recover(&mut self) -> Result<(), AuditError> {
        if self.tried.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1)) {
            return Err(AuditError::Poisoned { path: self.path.clone() });
        }
        self.tried = Some(std::time::Instant::now());
        let path = self.path.clone();
        let read_err = |source| AuditError::Read { path: path.clone(), source };
        let file = self.out.get_ref().try_clone().map_err(read_err)?;
        let old = std::mem::replace(&mut self.out, BufWriter::with_capacity(1 << 16, file));
        drop(old.into_parts());
        let mut f = self.out.get_ref();
        f.seek(SeekFrom::Start(0)).map_err(read_err)?;
        let report =
            verify_reader(&path, BufReader::with_capacity(1 << 16, f), Some(&self.key.verifying_key()))?;
        if let Some(p) = report.problems.iter().find(|p| p.kind == ProblemKind::Torn) {
            f.set_len(p.offset).map_err(read_err)?;
        }
        // Every seq below next_seq was taken; those past the file's last never landed.
        let landed = report.last_seq.map_or(0, |s| s + 1);
        self.dropped += self.next_seq.saturating_sub(landed).saturating_sub(self.own_unsynced);
        self.own_unsynced = 0;
        self.poisoned = false;
        self.next_seq = 0;
        self.prev = GENESIS.into();
        self.unsigned = 0;
        if let Err(e) = self.resume() {
            self.poisoned = true;
            return Err(e);
        }
        tracing::warn!("audit chain {} resumed after a failed write", self.path.display());
        Ok(())
    }

    /// Writes one record as one complete line.
    fn write(&mut self, kind: RecordType, body: Value) -> Result<u64, AuditError> {
        if self.poisoned {
            self.recover()?;
        }
        let seq = self.next_seq;
        let ts = Timestamp(now_ns()).to_string();
        let hash = build_record(seq, &self.prev, &ts, kind, body, &mut self.line);
        if let Err(source) = self.out.write_all(&self.line) {
            // Part of the line may be in the file: nothing may follow it.
            self.poisoned = true;
            return Err(AuditError::Write { path: self.path.clone(), seq, source });
        }
        self.next_seq += 1;
        self.prev = hash;
        Ok(seq)
    }

    fn sync(&mut self) -> Result<(), AuditError> {
        if self.poisoned {
            return Err(AuditError::Poisoned { path: self.path.clone() });
        }
        let r = self.out.flush().and_then(|()| self.out.get_ref().sync_data());
        if r.is_ok() {
            self.own_unsynced = 0;
        }
        r.map_err(|source| {
            self.poisoned = true;
            AuditError::Write { path: self.path.clone(), seq: self.next_seq, source }
        })
    }
}

/// How long opening waits for the chain's previous writer to let go: a writer
/// killed with SIGKILL holds its lock until its exit is complete, which takes
/// seconds while the kernel detaches its programs.
#[cfg(not(test))]
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(15);
#[cfg(test)]
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(300);

/// The chain's exclusive lock, waiting up to [`LOCK_WAIT`] for a writer that is
/// exiting; a writer still running after that keeps it (one writer per file).
fn lock_waiting(file: &File, path: &Path) -> Result<Flock<File>, AuditError> {
    let said =
        || tracing::warn!("{}: another writer holds the chain; waiting for it to exit", path.display());
    crate::lockfile::exclusive_waiting(file, LOCK_WAIT, said)
        .map_err(|source| AuditError::Open { path: path.into(), source })?
        .ok_or_else(|| AuditError::Locked { path: path.into() })
}

fn now_ns() -> i128 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

impl Drop for AuditChain {
    fn drop(&mut self) {
        if !self.closed
            && !self.poisoned
            && let Err(e) = self.commit()
        {
            tracing::warn!("closing the audit log: {e}");
        }
    }
}

impl Sink for AuditChain {
    fn name(&self) -> String {
        format!("audit chain {}", self.path.display())
    }

    fn send(&mut self, ev: &Event) -> Result<(), SinkError> {
        self.event(ev).map(drop).map_err(|e| self.sink_err(e))
    }

    fn alert(&mut self, a: &Alert) -> Result<(), SinkError> {
        AuditChain::alert(self, a).map(drop).map_err(|e| self.sink_err(e))
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.commit().map_err(|e| self.sink_err(e))
    }

    fn lost(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// Each batch reaches the file at once (written; signed and synced at the next
    /// commit): a writer killed outright loses at most the batch at hand, and the
    /// next writer signs what it finds (`recovered_from`).
    fn batch_end(&mut self) -> Result<(), SinkError> {
        if self.poisoned {
            return Err(self.sink_err(AuditError::Poisoned { path: self.path.clone() }));
        }
        if let Err(source) = self.out.flush() {
            self.poisoned = true;
            let e = AuditError::Write { path: self.path.clone(), seq: self.next_seq, source };
            return Err(self.sink_err(e));
        }
        Ok(())
    }

    fn torn(&mut self) -> Option<crate::torn::TornTail> {
        self.torn.take()
    }
}

impl AuditChain {
    fn sink_err(&self, e: AuditError) -> SinkError {
        let source = match e {
            AuditError::Write { source, .. } => source,
            e => io::Error::other(e),
        };
        SinkError::Write { name: self.path.display().to_string(), source }
    }
}
