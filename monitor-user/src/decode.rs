//! Decodes ring-buffer records (see monitor_common's wire format) into [`RawEvent`].
//! Records come from our own kernel programs, but the decoder still trusts nothing:
//! a short or inconsistent record is an error naming what is wrong, never a panic.

use std::borrow::Cow;

use monitor_common::{BODY_SIZE, Body, EventHeader, FIXED_SIZE, HEADER_SIZE};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than the {FIXED_SIZE}-byte fixed part")]
    Short(usize),
    #[error("record tail_len {tail} exceeds the {avail} bytes present")]
    Tail { tail: usize, avail: usize },
    #[error("record declares {0} operands (max 2)")]
    Operands(u16),
    #[error("record extra_len {extra} exceeds the tail ({tail})")]
    Extra { extra: usize, tail: usize },
    #[error("operand {0}: missing string or component (tail exhausted)")]
    Operand(u16),
}

/// A path operand as the kernel recorded it, borrowed from the record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Operand<'a> {
    /// The string the process passed (may be relative or empty).
    pub given: Cow<'a, str>,
    /// Components of the directory it is relative to, leaf first, each followed by
    /// NUL (empty if `given` is absolute or the operand is relative to nothing).
    base: &'a [u8],
}

impl<'a> Operand<'a> {
    pub fn new(given: &'a str, base: &'a [u8]) -> Self {
        Self { given: Cow::Borrowed(given), base }
    }

    /// Components root first.
    pub fn components(&self) -> impl Iterator<Item = Cow<'a, str>> {
        let b = self.base.strip_suffix(&[0]).unwrap_or(self.base);
        b.rsplit(|c| *c == 0).filter(move |_| !self.base.is_empty()).map(String::from_utf8_lossy)
    }

    pub fn has_base(&self) -> bool {
        !self.base.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct RawEvent<'a> {
    pub hdr: EventHeader,
    pub body: Body,
    pub ops: Vec<Operand<'a>>,
    pub extra: &'a [u8],
}

impl RawEvent<'_> {
    pub fn comm(&self) -> String {
        cstr(&self.hdr.comm)
    }
}

/// Text of a NUL-terminated byte string (lossy UTF-8).
pub fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Splits off the next NUL-terminated string.
fn next_str<'a>(tail: &mut &'a [u8]) -> Option<&'a [u8]> {
    let end = tail.iter().position(|c| *c == 0)?;
    let (s, rest) = tail.split_at(end);
    *tail = &rest[1..];
    Some(s)
}

pub fn decode(rec: &[u8]) -> Result<RawEvent<'_>, DecodeError> {
    if rec.len() < FIXED_SIZE {
        return Err(DecodeError::Short(rec.len()));
    }
    // SAFETY: lengths checked; both types are repr(C) integer aggregates, and
    // read_unaligned copes with the ring buffer's 8-byte alignment.
    let hdr: EventHeader = unsafe { std::ptr::read_unaligned(rec.as_ptr().cast()) };
    let body: Body = unsafe { std::ptr::read_unaligned(rec[HEADER_SIZE..].as_ptr().cast()) };
    debug_assert_eq!(HEADER_SIZE + BODY_SIZE, FIXED_SIZE);
    let avail = rec.len() - FIXED_SIZE;
    let tail_len = body.tail_len as usize;
    if tail_len > avail {
        return Err(DecodeError::Tail { tail: tail_len, avail });
    }
    if body.nops > 2 {
        return Err(DecodeError::Operands(body.nops));
    }
    let extra_len = body.extra_len as usize;
    if extra_len > tail_len {
        return Err(DecodeError::Extra { extra: extra_len, tail: tail_len });
    }
    let tail = &rec[FIXED_SIZE..FIXED_SIZE + tail_len];
    let (mut strs, extra) = tail.split_at(tail_len - extra_len);
    let mut ops = Vec::with_capacity(body.nops as usize);
    for i in 1..=body.nops {
        let n = if i == 1 { body.n1 } else { body.n2 };
        let given = next_str(&mut strs).ok_or(DecodeError::Operand(i))?;
        let before = strs;
        for _ in 0..n {
            next_str(&mut strs).ok_or(DecodeError::Operand(i))?;
        }
        let base = &before[..before.len() - strs.len()];
        ops.push(Operand { given: String::from_utf8_lossy(given), base });
    }
    Ok(RawEvent { hdr, body, ops, extra })
}

/// Builds a record as the kernel programs do (for tests, fuzzing and benchmarks).
pub fn encode(k: u16, o: u16, ops: &[(&str, &[&str])], extra: &[u8], args: [u64; 5]) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut ns = [0u16; 2];
    for (i, (given, base)) in ops.iter().enumerate() {
        tail.extend_from_slice(given.as_bytes());
        tail.push(0);
        for c in *base {
            tail.extend_from_slice(c.as_bytes());
            tail.push(0);
        }
        ns[i] = base.len() as u16;
    }
    tail.extend_from_slice(extra);
    let mut comm = [0u8; monitor_common::COMM_LEN];
    comm[..4].copy_from_slice(b"test");
    let hdr = EventHeader {
        ts_ns: 1,
        start_ns: 2,
        ret: 0,
        cgroup_id: 0,
        kind: k,
        op: o,
        tgid: 10,
        tid: 11,
        task: 1,
        uid: 0,
        gid: 0,
        comm,
    };
    let body = Body {
        args,
        pflags: 0,
        n1: ns[0],
        n2: ns[1],
        nops: ops.len() as u16,
        extra_len: extra.len() as u32,
        tail_len: tail.len() as u32,
    };
    let mut rec = vec![0u8; FIXED_SIZE];
    // SAFETY: rec holds FIXED_SIZE bytes = header + body; unaligned writes of repr(C) data.
    unsafe {
        std::ptr::write_unaligned(rec.as_mut_ptr().cast(), hdr);
        std::ptr::write_unaligned(rec[HEADER_SIZE..].as_mut_ptr().cast(), body);
    }
    rec.extend_from_slice(&tail);
    rec
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use monitor_common::{kind, op};

    pub use super::encode as record;

    #[test]
    fn decodes_two_operands_and_extra() {
        let rec = record(
            kind::RENAME,
            op::RENAMEAT,
            &[("a.txt", &["src", "tmp"]), ("/abs/b.txt", &[])],
            b"xy",
            [0; 5],
        );
        let ev = decode(&rec).unwrap();
        assert_eq!(ev.comm(), "test");
        assert_eq!(ev.ops[0].given, "a.txt");
        assert_eq!(ev.ops[0].components().collect::<Vec<_>>(), vec!["tmp", "src"]);
        assert_eq!(ev.ops[1].components().count(), 0);
        assert_eq!(ev.ops[1].given, "/abs/b.txt");
        assert_eq!(ev.extra, b"xy");
    }

    #[test]
    fn rejects_malformed_records_without_panicking() {
        assert_eq!(decode(&[0u8; 10]).unwrap_err(), DecodeError::Short(10));
        let mut rec = record(kind::UNLINK, op::UNLINK, &[("x", &["d"])], b"", [0; 5]);
        rec.truncate(rec.len() - 1);
        assert!(matches!(decode(&rec), Err(DecodeError::Tail { .. })));
        // Claims more components than present.
        let mut rec = record(kind::UNLINK, op::UNLINK, &[("x", &["d"])], b"", [0; 5]);
        rec[HEADER_SIZE + 42] = 9; // n1
        assert_eq!(decode(&rec).unwrap_err(), DecodeError::Operand(1));
        // Every truncation of a valid record is an error or a valid event, never a panic.
        let rec = record(kind::LINK, op::LINKAT, &[("n", &["a", "b"]), ("t", &[])], b"zz", [0; 5]);
        for n in 0..rec.len() {
            let _ = decode(&rec[..n]);
        }
    }
}
