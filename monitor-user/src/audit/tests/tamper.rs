//! An attacker edits the file: verify finds it.

use super::*;

#[test]
fn edited_record_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = sample(dir.path());
    let mut ls = lines(&log);
    let i = nth_record(&ls, 3);
    let mut m = rec(&ls[i]);
    m["body"]["path"] = "/innocent".into();
    ls[i] = text(&m); // the old hash kept
    put(&log, &ls);
    let r = check(&log);
    assert_eq!(kinds(&r), [ProblemKind::HashMismatch], "{r}");
    let p = r.first_problem().unwrap();
    assert_eq!(p.to_string(), format!("line {}: seq {i}: hash mismatch (record edited)", i + 1));
}

#[test]
fn edited_record_with_recomputed_hash_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = sample(dir.path());
    let mut ls = lines(&log);
    let i = nth_record(&ls, 5);
    let mut m = rec(&ls[i]);
    m["body"]["verdict"] = "in_scope".into();
    ls[i] = rehashed(m);
    put(&log, &ls);
    let r = check(&log);
    assert_eq!(kinds(&r), [ProblemKind::PrevMismatch], "{r}");
    assert_eq!(r.first_problem().unwrap().line, Some(i as u64 + 2));
    assert!(r.to_string().contains("prev does not match the hash of seq"), "{r}");
    // Re-linking everything after it leaves the next checkpoint's signature wrong.
    rechain(&mut ls, i + 1);
    put(&log, &ls);
    let r = check(&log);
    assert_eq!(r.first_problem().map(|p| p.kind), Some(ProblemKind::BadSignature), "{r}");
    assert!(!kinds(&r).contains(&ProblemKind::PrevMismatch), "{r}");
}

#[test]
fn deleted_record_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = sample(dir.path());
    let orig = lines(&log);
    let i = nth_record(&orig, 6);
    let mut ls = orig.clone();
    ls.remove(i);
    put(&log, &ls);
    let r = check(&log);
    assert_eq!(kinds(&r), [ProblemKind::SeqGap], "{r}");
    let want = format!("line {}: seq {} after {} (record deleted", i + 1, i + 1, i - 1);
    assert!(r.to_string().contains(&want), "{r}");
    // The first record.
    put(&log, &orig[1..]);
    assert!(check(&log).to_string().contains("first record has seq 1"));
    // Renumbered and re-linked: the signatures give it away.
    rechain(&mut ls, i);
    put(&log, &ls);
    let r = check(&log);
    assert_eq!(r.first_problem().map(|p| p.kind), Some(ProblemKind::BadSignature), "{r}");
}

#[test]
fn inserted_record_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = sample(dir.path());
    let mut ls = lines(&log);
    let i = nth_record(&ls, 2);
    let before = rec(&ls[i]);
    let mut m = before.clone();
    m["seq"] = (before["seq"].as_u64().unwrap() + 1).into();
    m["prev"] = before["hash"].clone();
    m["body"]["path"] = "/forged".into();
    ls.insert(i + 1, rehashed(m));
    put(&log, &ls);
    let r = check(&log);
    assert_eq!(r.first_problem().map(|p| (p.kind, p.line)), Some((ProblemKind::SeqGap, Some(i as u64 + 3))));
    rechain(&mut ls, i + 2);
    put(&log, &ls);
    let r = check(&log);
    assert_eq!(r.first_problem().map(|p| p.kind), Some(ProblemKind::BadSignature), "{r}");
}

#[test]
fn swapped_records_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = sample(dir.path());
    let orig = lines(&log);
    let i = nth_record(&orig, 1);
    assert_eq!(nth_record(&orig, 2), i + 1);
    let mut ls = orig.clone();
    ls.swap(i, i + 1);
    put(&log, &ls);
    let r = check(&log);
    assert_eq!(r.first_problem().map(|p| (p.kind, p.line)), Some((ProblemKind::SeqGap, Some(i as u64 + 1))));
    // With their seqs swapped back and re-hashed, the links do not match.
    for (j, seq) in [(i, i), (i + 1, i + 1)] {
        let mut m = rec(&ls[j]);
        m["seq"] = seq.into();
        ls[j] = rehashed(m);
    }
    put(&log, &ls);
    let r = check(&log);
    assert_eq!(
        r.first_problem().map(|p| (p.kind, p.line)),
        Some((ProblemKind::PrevMismatch, Some(i as u64 + 1)))
    );
    assert!(r.to_string().contains("reordered"), "{r}");
}

#[test]
fn truncated_tail_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = sample(dir.path());
    let ls = lines(&log);
    let n = ls.len();
    let cps: Vec<usize> = (0..n).filter(|&j| rec(&ls[j])["type"] == "checkpoint").collect();
    let cp = cps[cps.len() - 2]; // the last checkpoint but one
    assert_eq!((n, cp), (18, 14));
    for keep in [n - 1, n - 2] {
        put(&log, &ls[..keep]);
        let r = check(&log);
        assert_eq!(kinds(&r), [ProblemKind::UnsignedTail], "{r}");
        let want = format!("truncated tail or unsigned records after seq {cp}: seq {}..{}", cp + 1, keep - 1);
        assert!(r.to_string().contains(&want), "{r}");
    }
    // An old checkpoint replayed at the end of the cut file: its signature is good,
    // but it does not cover the record before it.
    let mut cut = ls[..n - 2].to_vec();
    let mut m = rec(&ls[cps[0]]);
    let last = rec(cut.last().unwrap());
    m["seq"] = (last["seq"].as_u64().unwrap() + 1).into();
    m["prev"] = last["hash"].clone();
    cut.push(rehashed(m));
    put(&log, &cut);
    let r = check(&log);
    assert_eq!(kinds(&r), [ProblemKind::BadCheckpoint, ProblemKind::UnsignedTail], "{r}");
    assert!(r.to_string().contains("does not cover the record before it"), "{r}");
    // No checkpoint at all.
    put(&log, &ls[..2]);
    assert!(check(&log).to_string().contains("no valid signed checkpoint; seq 0..1"));
    // A torn last line.
    let mut torn = ls.iter().map(|l| format!("{l}\n")).collect::<String>();
    torn.truncate(torn.len() - 20);
    std::fs::write(&log, &torn).unwrap();
    let r = check(&log);
    assert_eq!(kinds(&r), [ProblemKind::Torn, ProblemKind::UnsignedTail], "{r}");
    assert_eq!(r.first_problem().unwrap().line, Some(n as u64));
    // Empty.
    std::fs::write(&log, "").unwrap();
    assert_eq!(kinds(&check(&log)), [ProblemKind::Empty]);
    // Cut right after a checkpoint, the file is a valid shorter chain (docs/audit.md).
    put(&log, &ls[..cp + 1]);
    assert!(check(&log).is_ok());
}

#[test]
fn checkpoint_signed_by_another_key_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let (log, key) = sample(dir.path());
    let other = dir.path().join("other.key");
    let other_key = load_or_create_key(&other).unwrap();
    let r = verify(&log, Some(&public_key_path(&other))).unwrap();
    assert_eq!(kinds(&r), [ProblemKind::UntrustedKey; 4], "{r}");
    assert!(!r.trusted && r.to_string().contains("not by the trusted key"), "{r}");
    // One checkpoint re-signed by another key: a key change even without --pubkey.
    let mut ls = lines(&log);
    let j = ls.len() - 1;
    let mut m = rec(&ls[j]);
    let msg = checkpoint_message(
        m["body"]["covers_seq"].as_u64().unwrap(),
        m["body"]["covers_hash"].as_str().unwrap(),
    );
    m["body"]["sig"] = hex::encode(other_key.sign(&msg).to_bytes()).into();
    m["body"]["key"] = public_key_hex(&other_key.verifying_key()).into();
    ls[j] = rehashed(m);
    put(&log, &ls);
    assert_eq!(kinds(&check(&log)), [ProblemKind::KeyChanged]);
    let r = verify(&log, Some(&public_key_path(&key))).unwrap();
    assert_eq!(kinds(&r), [ProblemKind::UntrustedKey], "{r}");
    // A whole chain written with another key verifies only without --pubkey.
    let forged = dir.path().join("forged.jsonl");
    let mut c = AuditChain::open(&forged, &other, 10).unwrap();
    c.task_start(json!({})).unwrap();
    c.close().unwrap();
    assert!(check(&forged).is_ok());
    assert_eq!(kinds(&verify(&forged, Some(&public_key_path(&key))).unwrap()), [ProblemKind::UntrustedKey]);
}

#[test]
fn malformed_and_non_canonical_lines_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = sample(dir.path());
    let orig = lines(&log);
    let mut ls = orig.clone();
    ls[2] = ls[2].replacen("\"seq\":", "\"seq\": ", 1);
    put(&log, &ls);
    assert_eq!(kinds(&check(&log)), [ProblemKind::NotCanonical]);
    let mut ls = orig.clone();
    ls[2] = "garbage".into();
    put(&log, &ls);
    let r = check(&log);
    assert_eq!(kinds(&r), [ProblemKind::Malformed], "{r}");
    assert!(r.to_string().starts_with(&format!("{}: FAILED: line 3: not JSON", log.display())), "{r}");
    let mut ls = orig;
    let mut m = rec(&ls[2]);
    m.insert("extra".into(), 1.into());
    ls[2] = rehashed(m);
    put(&log, &ls);
    assert!(check(&log).to_string().contains("unexpected field `extra`"));
}

#[test]
fn a_huge_line_is_reported_without_being_held() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = sample(dir.path());
    let mut ls = lines(&log);
    // Longer than any record: reported as malformed; the next record is checked on.
    ls[2] = "x".repeat(20 << 20);
    put(&log, &ls);
    let r = check(&log);
    assert_eq!(kinds(&r), [ProblemKind::Malformed], "{}", &r.to_string()[..200]);
    assert!(r.to_string().contains("longer than any record"));
    let mut buf = Vec::new();
    let mut reader = std::io::BufReader::new(&b"abc\ndefghij\nk"[..]);
    let read = |r: &mut std::io::BufReader<&[u8]>, b: &mut Vec<u8>| {
        b.clear();
        super::super::verify::read_line_bounded(r, b, 5).unwrap()
    };
    assert_eq!(read(&mut reader, &mut buf), (4, true));
    assert_eq!(read(&mut reader, &mut buf), (8, false));
    assert_eq!(read(&mut reader, &mut buf), (1, true));
    assert_eq!(read(&mut reader, &mut buf), (0, true));
}
