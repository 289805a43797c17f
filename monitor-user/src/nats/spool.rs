//! The on-disk spool: every message for NATS is appended here first and the
//! publisher sends from it, advancing an acknowledged position. It has two lanes,
//! each in order: priority records (what happened to a task and to the stream:
//! loss, task start and end, kill, revoke, action, approval) and bulk events; the
//! publisher sends every priority record before the next bulk one, so a kill or
//! revoke is never queued behind a backlog of events. A broker
//! outage therefore only makes the spool longer; a restart resumes from the last
//! acknowledged message (redelivered ones are dropped by the stream's `Nats-Msg-Id`
//! dedupe). The spool is bounded: a message that does not fit is counted, never
//! silently dropped (the sink turns the count into a `loss` event).
//!
//! Layout: per lane a directory of segment files `<16 digits>.seg` (bulk in the
//! spool directory itself, priority in its `priority/`), each a sequence of
//! records `[u32 len][u16 subject len][subject][u16 id len][id][payload]` (len
//! counts what follows it, little-endian), and `acked` holding `<segment> <offset>`.
//! The writer always starts a new segment, so an older segment is final and a torn
//! record at its end (a crash mid-write) is skipped and counted.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    os::{fd::AsRawFd, unix::fs::FileExt},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

/// Segments roll over at this size.
const SEGMENT_BYTES: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("spool {path}: every spool directory under it is in use by another agentmon")]
    Busy { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io { path: path.into(), source }
}

/// A position in the spool: segment number and byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub seg: u64,
    pub off: u64,
}

/// Which lane a record takes: priority records are sent first, and may use the
/// spool's reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Bulk,
    Priority,
}

impl Class {
    /// In the order the publisher takes them.
    pub const ALL: [Class; 2] = [Class::Priority, Class::Bulk];

    fn lane(self) -> usize {
        self as usize
    }
}

/// One lane's positions.
#[derive(Debug)]
struct Lane {
    dir: PathBuf,
    /// How far the writer has written whole records to the file.
    flushed: Mutex<Pos>,
    /// How far the broker has acknowledged.
    acked: Mutex<Pos>,
}

/// What the writer and the publisher share.
#[derive(Debug)]
pub struct Shared {
    pub dir: PathBuf,
    pub max_bytes: u64,
    /// Bytes in segments not yet deleted, both lanes.
    pub bytes: AtomicU64,
    /// Messages refused because the spool was full (since start).
    pub dropped: AtomicU64,
    /// Records found torn in old segments (a crash mid-write).
    pub torn: AtomicU64,
    lanes: [Lane; 2],
    pub wake: tokio::sync::Notify,
}

impl Shared {
    pub fn flushed(&self, c: Class) -> Pos {
        *self.lanes[c.lane()].flushed.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn acked(&self, c: Class) -> Pos {
        *self.lanes[c.lane()].acked.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_flushed(&self, c: Class, pos: Pos) {
        *self.lanes[c.lane()].flushed.lock().unwrap_or_else(|e| e.into_inner()) = pos;
    }

    /// Everything written has been acknowledged.
    pub fn caught_up(&self) -> bool {
        Class::ALL.iter().all(|&c| self.acked(c) >= self.flushed(c))
    }

    /// Bytes written but not yet acknowledged (approximately: whole segments count
    /// until they are deleted).
    pub fn depth(&self) -> u64 {
        self.bytes.load(Relaxed)
    }

    fn seg_path(&self, c: Class, seg: u64) -> PathBuf {
        self.lanes[c.lane()].dir.join(format!("{seg:016}.seg"))
    }

    /// Records the broker's acknowledgement of lane `c` up to `pos`, deleting the
    /// segments before it, and persists it.
    pub fn ack(&self, c: Class, pos: Pos) -> Result<(), SpoolError> {
        let prev = {
            let mut a = self.lanes[c.lane()].acked.lock().unwrap_or_else(|e| e.into_inner());
            if pos <= *a {
                return Ok(());
            }
            std::mem::replace(&mut *a, pos)
        };
        for seg in prev.seg..pos.seg {
            let p = self.seg_path(c, seg);
            if let Ok(m) = fs::metadata(&p) {
                self.bytes.fetch_sub(m.len().min(self.bytes.load(Relaxed)), Relaxed);
                fs::remove_file(&p).map_err(io_err(&p))?;
            }
        }
        self.persist_ack(c, pos)
    }

    fn persist_ack(&self, c: Class, pos: Pos) -> Result<(), SpoolError> {
        write_acked(&self.lanes[c.lane()].dir, pos)
    }
}

fn write_acked(dir: &Path, pos: Pos) -> Result<(), SpoolError> {
    let tmp = dir.join("acked.tmp");
    fs::write(&tmp, format!("{} {}\n", pos.seg, pos.off)).map_err(io_err(&tmp))?;
    let dst = dir.join("acked");
    fs::rename(&tmp, &dst).map_err(io_err(&dst))
}

/// The part of a spool of `max_bytes` that only priority records may fill.
pub fn reserve(max_bytes: u64) -> u64 {
    max_bytes / 8
}

/// Appends records; owned by the pipeline.
pub struct Writer {
    shared: Arc<Shared>,
    /// Per lane: the segment written, its length, and its file.
    outs: [(u64, u64, BufWriter<File>); 2],
    /// Per lane: the sizes of the records appended since its last flush (what a
    /// failed write may have left in the buffer).
    pending: [Vec<u64>; 2],
    /// Held for the writer's life: one agentmon per spool directory.
    _lock: File,
}

/// One message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub subject: String,
    pub id: String,
    pub payload: Vec<u8>,
}

impl Writer {
    /// Opens the first spool directory under `root` that no other agentmon holds
    /// (`0`, `1`, ...), adopting what a previous run left in it.
    pub fn open(root: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        fs::create_dir_all(root).map_err(io_err(root))?;
        for n in 0..64 {
            let dir = root.join(n.to_string());
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            let lp = dir.join("lock");
            let lock =
                OpenOptions::new().create(true).truncate(false).write(true).open(&lp).map_err(io_err(&lp))?;
            // SAFETY: flock on a file descriptor we own.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                continue;
            }
            return Self::adopt(dir, lock, max_bytes);
        }
        Err(SpoolError::Busy { path: root.into() })
    }

    fn adopt(dir: PathBuf, lock: File, max_bytes: u64) -> Result<Self, SpoolError> {
        let priority = dir.join("priority");
        fs::create_dir_all(&priority).map_err(io_err(&priority))?;
        let (bulk, bulk_bytes) = Self::adopt_lane(dir.clone())?;
        let (prio, prio_bytes) = Self::adopt_lane(priority)?;
        let shared = Arc::new(Shared {
            max_bytes,
            bytes: AtomicU64::new(bulk_bytes + prio_bytes),
            dropped: AtomicU64::new(0),
            torn: AtomicU64::new(0),
            lanes: [bulk, prio],
            wake: tokio::sync::Notify::new(),
            dir,
        });
        let out = |c: Class| -> Result<_, SpoolError> {
            let seg = shared.flushed(c).seg;
            Ok((seg, 0, Self::create(&shared, c, seg)?))
        };
        let outs = [out(Class::Bulk)?, out(Class::Priority)?];
        Ok(Self { shared, outs, pending: Default::default(), _lock: lock })
    }

    /// A lane's positions from what a previous run left in `dir`, and its bytes.
    fn adopt_lane(dir: PathBuf) -> Result<(Lane, u64), SpoolError> {
        // (segment, length)
        let mut segs = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let e = e.map_err(io_err(&dir))?;
            let name = e.file_name();
            if let Some(n) =
                name.to_str().and_then(|s| s.strip_suffix(".seg")).and_then(|s| s.parse::<u64>().ok())
            {
                segs.push((n, e.metadata().map(|m| m.len()).unwrap_or(0)));
            }
        }
        segs.sort_unstable();
        let mut bytes = segs.iter().map(|(_, len)| len).sum();
        let acked = fs::read_to_string(dir.join("acked"))
            .ok()
            .and_then(|s| {
                let mut it = s.split_whitespace().map(|x| x.parse::<u64>());
                Some(Pos { seg: it.next()?.ok()?, off: it.next()?.ok()? })
            })
            .unwrap_or(Pos { seg: segs.first().map(|s| s.0).unwrap_or(0), off: 0 });
        // Nothing may be read before the first segment that still exists.
        let mut acked = match segs.first() {
            Some(&(first, _)) if first > acked.seg => Pos { seg: first, off: 0 },
            _ => acked,
        };
        let seg = segs.last().map(|s| s.0 + 1).unwrap_or(acked.seg).max(acked.seg);
        // All of it acknowledged (up to the end of its last record; the segments
        // after that empty): it starts at the new segment. Else the lane would never
        // look caught up, and its last segment would stay, counted against the
        // bound, until a record written after it is acknowledged (a priority record
        // can be a long time coming).
        let done =
            segs.iter().all(|&(n, len)| n < acked.seg || (n == acked.seg && len <= acked.off) || len == 0);
        if done && acked < (Pos { seg, off: 0 }) {
            for &(n, len) in &segs {
                let p = dir.join(format!("{n:016}.seg"));
                fs::remove_file(&p).map_err(io_err(&p))?;
                bytes -= len;
            }
            acked = Pos { seg, off: 0 };
            write_acked(&dir, acked)?;
        }
        let lane = Lane { dir, flushed: Mutex::new(Pos { seg, off: 0 }), acked: Mutex::new(acked) };
        Ok((lane, bytes))
    }

    fn create(shared: &Shared, c: Class, seg: u64) -> Result<BufWriter<File>, SpoolError> {
        let p = shared.seg_path(c, seg);
        let f = OpenOptions::new().create(true).append(true).open(&p).map_err(io_err(&p))?;
        Ok(BufWriter::with_capacity(1 << 16, f))
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Appends a record; `false` if the spool is full (counted in `dropped`).
    pub fn append(&mut self, subject: &str, id: &str, payload: &[u8]) -> Result<bool, SpoolError> {
        self.append_as(Class::Bulk, subject, id, payload)
    }

    /// Appends one record of `class`: bulk records stop at the bound less the
    /// reserve ([`reserve`]), kept for the records that say what happened to the
    /// task and to the stream (loss, task start and end, revoke, actions,
    /// approvals). Ok(false): it did not fit, and is counted in `dropped`.
    pub fn append_as(
        &mut self,
        class: Class,
        subject: &str,
        id: &str,
        payload: &[u8],
    ) -> Result<bool, SpoolError> {
        let body = 2 + subject.len() + 2 + id.len() + payload.len();
        let total = 4 + body as u64;
        let limit = match class {
            Class::Bulk => self.shared.max_bytes - reserve(self.shared.max_bytes),
            Class::Priority => self.shared.max_bytes,
        };
        if self.shared.bytes.load(Relaxed) + total > limit {
            self.shared.dropped.fetch_add(1, Relaxed);
            return Ok(false);
        }
        // Space comes back a whole segment at a time: keep segments a fraction of the
        // bound, or a small spool would fill for good.
        let segment = SEGMENT_BYTES.min(self.shared.max_bytes / 4).max(4096);
        let len = self.outs[class.lane()].1;
        if len > 0 && len + total > segment {
            self.flush()?;
            self.roll(class)?;
        }
        let (seg, len, out) = &mut self.outs[class.lane()];
        let p = self.shared.seg_path(class, *seg);
        // One write per record: a write that fails (a full disk) takes none of it, so
        // the segment never holds half a record followed by whole ones.
        let mut rec = Vec::with_capacity(total as usize);
        rec.extend_from_slice(&(body as u32).to_le_bytes());
        rec.extend_from_slice(&(subject.len() as u16).to_le_bytes());
        rec.extend_from_slice(subject.as_bytes());
        rec.extend_from_slice(&(id.len() as u16).to_le_bytes());
        rec.extend_from_slice(id.as_bytes());
        rec.extend_from_slice(payload);
        if let Err(e) = out.write_all(&rec) {
            // Only a record larger than the buffer is written past it, and may be
            // torn: nothing may follow it in this segment (the reader skips a torn
            // end of an older segment and counts it).
            if rec.len() >= out.capacity() {
                self.roll(class)?;
            }
            return Err(io_err(&p)(e));
        }
        *len += total;
        self.pending[class.lane()].push(total);
        self.shared.bytes.fetch_add(total, Relaxed);
        Ok(true)
    }

    /// Starts lane `c`'s next segment.
    fn roll(&mut self, c: Class) -> Result<(), SpoolError> {
        let (seg, len, out) = &mut self.outs[c.lane()];
        let old = std::mem::replace(out, Self::create(&self.shared, c, *seg + 1)?);
        // What the old buffer still holds goes with it (flushed above when it could
        // be; after a failed write it cannot): the records wholly in it are lost, and
        // counted (one partly written is a torn record, counted when it is read).
        let pending = std::mem::take(&mut self.pending[c.lane()]);
        if let (_, Ok(left)) = old.into_parts()
            && !left.is_empty()
        {
            let left = left.len() as u64;
            self.shared.dropped.fetch_add(unwritten(&pending, left), Relaxed);
            self.shared.bytes.fetch_sub(left.min(self.shared.bytes.load(Relaxed)), Relaxed);
        }
        *seg += 1;
        *len = 0;
        self.shared.set_flushed(c, Pos { seg: *seg, off: 0 });
        Ok(())
    }

    /// Makes the appended records visible to the publisher and wakes it.
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        for c in Class::ALL {
            let (seg, len, out) = &mut self.outs[c.lane()];
            out.flush().map_err(io_err(&self.shared.seg_path(c, *seg)))?;
            self.pending[c.lane()].clear();
            self.shared.set_flushed(c, Pos { seg: *seg, off: *len });
        }
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Flushes and makes the records durable (at exit).
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        self.flush()?;
        for c in Class::ALL {
            let (seg, _, out) = &self.outs[c.lane()];
            out.get_ref().sync_data().map_err(io_err(&self.shared.seg_path(c, *seg)))?;
        }
        Ok(())
    }
}

/// Of records of `sizes` written in order, those wholly in the last `left` bytes.
fn unwritten(sizes: &[u64], left: u64) -> u64 {
    let written = sizes.iter().sum::<u64>().saturating_sub(left);
    let mut start = 0;
    let mut n = 0;
    for size in sizes {
        n += u64::from(start >= written);
        start += size;
    }
    n
}

/// Reads one lane's records in order from a position; owned by the publisher.
pub struct Reader {
    shared: Arc<Shared>,
    class: Class,
    pos: Pos,
    file: Option<Segment>,
    /// How far what is skipped (torn, or refused by the server) has been counted: a
    /// rewind reads it again, but it is lost once.
    counted: Pos,
}

/// Bytes read from a segment at a time: one read for many records.
const CHUNK: u64 = 256 << 10;

/// An open segment, and what was last read of it.
struct Segment {
    seg: u64,
    file: File,
    /// Its length, once it is final (older than the writer's).
    len: Option<u64>,
    /// The segment's bytes from offset `at`.
    at: u64,
    buf: Vec<u8>,
}

impl Segment {
    /// Its bytes `[off, off + n)`, if they are all before `end` (reading ahead up to
    /// `end`: what is before it never changes).
    fn bytes(&mut self, off: u64, n: u64, end: u64) -> io::Result<Option<&[u8]>> {
        if off + n > end {
            return Ok(None);
        }
        if off < self.at || off + n > self.at + self.buf.len() as u64 {
            self.buf.resize(n.max(CHUNK).min(end - off) as usize, 0);
            self.file.read_exact_at(&mut self.buf, off)?;
            self.at = off;
        }
        let from = (off - self.at) as usize;
        Ok(Some(&self.buf[from..from + n as usize]))
    }

    /// The record at `off` and the offset after it, if it is whole before `end`.
    fn record(&mut self, off: u64, end: u64) -> io::Result<Option<(Record, u64)>> {
        let Some(len) = self.bytes(off, 4, end)? else { return Ok(None) };
        let body = u32::from_le_bytes(len.try_into().expect("4 bytes")) as u64;
        if body < 4 {
            return Ok(None);
        }
        let Some(buf) = self.bytes(off + 4, body, end)? else { return Ok(None) };
        let parse = || -> Option<Record> {
            let sl = u16::from_le_bytes(buf.get(0..2)?.try_into().ok()?) as usize;
            let subject = std::str::from_utf8(buf.get(2..2 + sl)?).ok()?.to_string();
            let i = 2 + sl;
            let il = u16::from_le_bytes(buf.get(i..i + 2)?.try_into().ok()?) as usize;
            let id = std::str::from_utf8(buf.get(i + 2..i + 2 + il)?).ok()?.to_string();
            Some(Record { subject, id, payload: buf.get(i + 2 + il..)?.to_vec() })
        };
        Ok(parse().map(|r| (r, off + 4 + body)))
    }
}

impl Reader {
    pub fn new(shared: Arc<Shared>, class: Class) -> Self {
        let pos = shared.acked(class);
        Self { shared, class, pos, file: None, counted: pos }
    }

    /// Whether what ends at `at` is seen for the first time (to be counted once).
    pub fn first_time(&mut self, at: Pos) -> bool {
        let first = at > self.counted;
        self.counted = self.counted.max(at);
        first
    }

    pub fn class(&self) -> Class {
        self.class
    }

    /// Goes back to the acknowledged position (after a failed publish).
    pub fn rewind(&mut self) {
        self.pos = self.shared.acked(self.class);
        self.file = None;
    }

    pub fn pos(&self) -> Pos {
        self.pos
    }

    /// The next whole record and the position after it, or None when caught up.
    pub fn next_record(&mut self) -> Result<Option<(Record, Pos)>, SpoolError> {
        loop {
            let flushed = self.shared.flushed(self.class);
            if self.pos >= flushed {
                return Ok(None);
            }
            let path = self.shared.seg_path(self.class, self.pos.seg);
            if self.file.as_ref().is_none_or(|f| f.seg != self.pos.seg) {
                match File::open(&path) {
                    Ok(file) => {
                        self.file =
                            Some(Segment { seg: self.pos.seg, file, len: None, at: 0, buf: Vec::new() })
                    }
                    // A segment deleted or never written: go on to the next one.
                    Err(e) if e.kind() == io::ErrorKind::NotFound && self.pos.seg < flushed.seg => {
                        self.pos = Pos { seg: self.pos.seg + 1, off: 0 };
                        continue;
                    }
                    Err(e) => return Err(io_err(&path)(e)),
                }
            }
            let f = self.file.as_mut().expect("opened above");
            // The writer's current segment is readable up to `flushed`; older ones whole.
            let end = match f.len {
                Some(len) => len,
                None if self.pos.seg == flushed.seg => flushed.off,
                None => *f.len.insert(f.file.metadata().map_err(io_err(&path))?.len()),
            };
            match f.record(self.pos.off, end).map_err(io_err(&path))? {
                Some((rec, next)) => {
                    let at = Pos { seg: self.pos.seg, off: next };
                    self.pos = at;
                    return Ok(Some((rec, at)));
                }
                None if self.pos.seg < flushed.seg => {
                    if self.pos.off < end && self.first_time(Pos { seg: self.pos.seg, off: end }) {
                        self.shared.torn.fetch_add(1, Relaxed);
                    }
                    self.pos = Pos { seg: self.pos.seg + 1, off: 0 };
                }
                None => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(r: &mut Reader) -> Vec<(Record, Pos)> {
        std::iter::from_fn(|| r.next_record().unwrap()).collect()
    }

    #[test]
    fn in_order_ack_resume_and_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::open(dir.path(), 1 << 20).unwrap();
        for i in 0..10 {
            assert!(w.append("a.b", &format!("id{i}"), format!("payload {i}").as_bytes()).unwrap());
        }
        let mut r = Reader::new(w.shared(), Class::Bulk);
        assert!(r.next_record().unwrap().is_none(), "nothing is read before a flush");
        w.flush().unwrap();
        let got = drain(&mut r);
        assert_eq!(
            got.iter().map(|(r, _)| r.id.clone()).collect::<Vec<_>>(),
            (0..10).map(|i| format!("id{i}")).collect::<Vec<_>>()
        );
        assert_eq!(got[3].0.payload, b"payload 3");
        // Acknowledged up to the 4th; a failed publish goes back there.
        w.shared().ack(Class::Bulk, got[3].1).unwrap();
        r.rewind();
        assert_eq!(r.next_record().unwrap().unwrap().0.id, "id4");
        w.sync().unwrap();
        drop(r);
        drop(w);
        // A new writer adopts the spool: the unacknowledged records come first.
        let mut w = Writer::open(dir.path(), 1 << 20).unwrap();
        w.append("a.b", "id10", b"x").unwrap();
        w.flush().unwrap();
        let mut r = Reader::new(w.shared(), Class::Bulk);
        let ids: Vec<String> = drain(&mut r).into_iter().map(|(r, _)| r.id).collect();
        assert_eq!(ids, (4..11).map(|i| format!("id{i}")).collect::<Vec<_>>());
        // A second agentmon gets a directory of its own.
        let w2 = Writer::open(dir.path(), 1 << 20).unwrap();
        assert_ne!(w2.shared().dir, w.shared().dir);
        // Full: refused and counted.
        let mut small = Writer::open(&dir.path().join("small"), 100).unwrap();
        assert!(small.append("s", "1", &[0; 40]).unwrap());
        assert!(!small.append("s", "2", &[0; 60]).unwrap());
        assert_eq!(small.shared().dropped.load(Relaxed), 1);
    }

    #[test]
    fn acked_segments_are_deleted_and_torn_records_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::open(dir.path(), 64 << 20).unwrap();
        let big = vec![7u8; 1 << 20];
        for i in 0..20 {
            w.append("s", &i.to_string(), &big).unwrap();
        }
        w.flush().unwrap();
        let shared = w.shared();
        let mut r = Reader::new(shared.clone(), Class::Bulk);
        let got = drain(&mut r);
        assert_eq!(got.len(), 20);
        assert!(got.last().unwrap().1.seg >= 2, "rolled over into new segments");
        let before = shared.depth();
        shared.ack(Class::Bulk, got.last().unwrap().1).unwrap();
        assert!(shared.depth() < before / 2, "acknowledged segments are gone");
        let segs = fs::read_dir(&shared.dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "seg"))
            .count();
        assert_eq!(segs, 1);
        // A torn tail in a finished segment: skipped, counted, the next segment read.
        let dir2 = tempfile::tempdir().unwrap();
        {
            let mut w = Writer::open(dir2.path(), 1 << 20).unwrap();
            w.append("s", "whole", b"1").unwrap();
            w.append("s", "torn", b"2222").unwrap();
            w.sync().unwrap();
        }
        let seg = dir2.path().join("0").join(format!("{:016}.seg", 0));
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 2).unwrap();
        let mut w = Writer::open(dir2.path(), 1 << 20).unwrap();
        w.append("s", "after", b"3").unwrap();
        w.flush().unwrap();
        let mut r = Reader::new(w.shared(), Class::Bulk);
        let ids: Vec<String> = drain(&mut r).into_iter().map(|(r, _)| r.id).collect();
        assert_eq!(ids, ["whole", "after"]);
        assert_eq!(w.shared().torn.load(Relaxed), 1);
        // Read again after a failed publish: lost once, counted once.
        r.rewind();
        assert_eq!(drain(&mut r).len(), 2);
        assert_eq!(w.shared().torn.load(Relaxed), 1);
    }

    #[test]
    fn a_lane_acknowledged_to_its_end_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut w = Writer::open(dir.path(), 1 << 20).unwrap();
            w.append("s", "b", b"bulk").unwrap();
            w.append_as(Class::Priority, "s", "p", b"task end").unwrap();
            w.sync().unwrap();
            let shared = w.shared();
            for c in Class::ALL {
                let last = drain(&mut Reader::new(shared.clone(), c)).last().unwrap().1;
                shared.ack(c, last).unwrap();
            }
            assert!(shared.caught_up());
        }
        // Adopted: nothing left to send, nothing kept against the bound.
        let w = Writer::open(dir.path(), 1 << 20).unwrap();
        assert!(w.shared().caught_up(), "a spool acknowledged to its end looks behind");
        assert_eq!(w.shared().depth(), 0);
    }

    #[test]
    fn records_a_failed_write_left_in_the_buffer_are_counted() {
        // Records of 10, 20 and 30 bytes; what is left unwritten, from the end.
        assert_eq!(unwritten(&[10, 20, 30], 0), 0);
        assert_eq!(unwritten(&[10, 20, 30], 30), 1);
        // The second partly written: torn, counted when it is read.
        assert_eq!(unwritten(&[10, 20, 30], 35), 1);
        assert_eq!(unwritten(&[10, 20, 30], 50), 2);
        assert_eq!(unwritten(&[10, 20, 30], 60), 3);
    }

    #[test]
    fn priority_records_have_a_lane_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::open(dir.path(), 1 << 20).unwrap();
        for i in 0..5 {
            w.append("bulk", &format!("b{i}"), b"event").unwrap();
            if i % 2 == 0 {
                w.append_as(Class::Priority, "prio", &format!("p{i}"), b"record").unwrap();
            }
        }
        w.flush().unwrap();
        let shared = w.shared();
        let ids =
            |c| drain(&mut Reader::new(shared.clone(), c)).into_iter().map(|(r, _)| r.id).collect::<Vec<_>>();
        assert_eq!(ids(Class::Priority), ["p0", "p2", "p4"]);
        assert_eq!(ids(Class::Bulk), ["b0", "b1", "b2", "b3", "b4"]);
        assert!(!shared.caught_up());
        // Each lane is acknowledged on its own; the spool is caught up when both are.
        let last = |c| drain(&mut Reader::new(shared.clone(), c)).last().unwrap().1;
        shared.ack(Class::Priority, last(Class::Priority)).unwrap();
        assert!(!shared.caught_up());
        assert_eq!(ids(Class::Priority), Vec::<String>::new());
        w.append_as(Class::Priority, "prio", "p5", b"record").unwrap();
        w.sync().unwrap();
        drop(w);
        // Adopted after a restart: each lane from its own acknowledged position, and
        // the bytes of both count against the one bound.
        let w = Writer::open(dir.path(), 1 << 20).unwrap();
        let shared = w.shared();
        let ids =
            |c| drain(&mut Reader::new(shared.clone(), c)).into_iter().map(|(r, _)| r.id).collect::<Vec<_>>();
        assert_eq!(ids(Class::Priority), ["p5"]);
        assert_eq!(ids(Class::Bulk), ["b0", "b1", "b2", "b3", "b4"]);
        let on_disk: u64 = ["", "priority"]
            .iter()
            .flat_map(|d| fs::read_dir(shared.dir.join(d)).unwrap())
            .map(|e| e.unwrap())
            .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
            .map(|e| e.metadata().unwrap().len())
            .sum();
        assert_eq!(shared.depth(), on_disk);
        // The reserve is the priority lane's alone: bulk stops short of it.
        let mut small = Writer::open(&dir.path().join("small"), 800).unwrap();
        while small.append("s", "b", &[0; 80]).unwrap() {}
        assert!(small.shared().depth() <= 800 - reserve(800));
        assert!(small.append_as(Class::Priority, "s", "p", &[0; 80]).unwrap());
    }
}
