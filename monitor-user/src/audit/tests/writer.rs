//! The writer: reopening a chain and the sink.

use super::*;

#[test]
fn reopening_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (log, key) = sample(dir.path());
    let n = lines(&log).len() as u64;
    let mut c = AuditChain::open(&log, &key, 4).unwrap();
    assert_eq!(c.next_seq(), n);
    assert_eq!(c.step(json!({"tool": "edit"})).unwrap(), n);
    c.close().unwrap();
    let r = verify(&log, Some(&public_key_path(&key))).unwrap();
    assert!(r.is_ok() && r.notes.is_empty(), "{r}");
    assert_eq!(r.last_seq, Some(n + 1));
    // The writer stopped before its checkpoint: the records are signed on reopening,
    // and the checkpoint says so.
    let ls = lines(&log);
    put(&log, &ls[..ls.len() - 1]);
    let c = AuditChain::open(&log, &key, 4).unwrap();
    assert_eq!(c.next_seq(), n + 2);
    drop(c);
    let r = verify(&log, Some(&public_key_path(&key))).unwrap();
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.notes.len(), 1, "{:?}", r.notes);
    assert!(r.notes[0].contains(&format!("seq {n}..{n} were signed when the log was reopened")));
}

#[test]
fn reopening_refuses_a_torn_or_tampered_log() {
    let dir = tempfile::tempdir().unwrap();
    let (log, key) = sample(dir.path());
    let ls = lines(&log);
    let full: String = ls.iter().map(|l| format!("{l}\n")).collect();
    let last_start = (full.len() - ls.last().unwrap().len() - 1) as u64;
    std::fs::write(&log, &full[..full.len() - 5]).unwrap();
    match AuditChain::open(&log, &key, 4) {
        Err(AuditError::TornTail { line, offset, .. }) => {
            assert_eq!((line, offset), (ls.len() as u64, last_start))
        }
        other => panic!("{:?}", other.err()),
    }
    std::fs::write(&log, full.replacen("/work/f1", "/work/f2", 1)).unwrap();
    let e = AuditChain::open(&log, &key, 4).err().unwrap();
    assert!(matches!(&e, AuditError::Corrupt { .. }) && e.to_string().contains("hash mismatch"), "{e}");
    // Another key's log is not continued.
    std::fs::write(&log, &full).unwrap();
    let e = AuditChain::open(&log, &dir.path().join("other.key"), 4).err().unwrap();
    assert!(e.to_string().contains("not by the trusted key"), "{e}");
    // One writer at a time; refusals leave the file as it was.
    let c = AuditChain::open(&log, &key, 4).unwrap();
    assert!(matches!(AuditChain::open(&log, &key, 4), Err(AuditError::Locked { .. })));
    drop(c);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), full);
    assert!(matches!(AuditChain::open(&log, &key, 0), Err(AuditError::CheckpointEvery)));
}

#[test]
fn sink_records_events_and_alerts_and_checkpoints_on_flush() {
    let dir = tempfile::tempdir().unwrap();
    let (log, key) = (dir.path().join("a.jsonl"), dir.path().join("k"));
    let mut c = AuditChain::open(&log, &key, 3).unwrap();
    let mut e = event(1);
    // Floats must hash the same when read back.
    for (k, f) in [("a", 0.1 + 0.2), ("b", 1e300), ("c", 5e-324), ("d", -123.456e-7)] {
        e.detail.insert(k.into(), f.into());
    }
    let a = alert(&e);
    let sink: &mut dyn Sink = &mut c;
    sink.send(&e).unwrap();
    sink.alert(&a).unwrap();
    assert_eq!(std::fs::read(&log).unwrap().len(), 0, "buffered until a checkpoint");
    sink.send(&e).unwrap();
    assert_eq!(lines(&log).len(), 4, "checkpoint after 3 records");
    sink.send(&e).unwrap();
    sink.flush().unwrap();
    assert_eq!(lines(&log).len(), 6);
    sink.flush().unwrap();
    assert_eq!(lines(&log).len(), 6, "no checkpoint without new records");
    drop(c);
    let ls = lines(&log);
    let (r0, r1) = (rec(&ls[0]), rec(&ls[1]));
    assert_eq!((r0["type"].as_str(), r1["type"].as_str()), (Some("event"), Some("alert")));
    assert_eq!(serde_json::from_value::<Event>(r0["body"].clone()).unwrap(), e);
    assert_eq!(serde_json::from_value::<Alert>(r1["body"].clone()).unwrap(), a);
    assert_eq!(r0["body"]["rule"], "no-writes");
    let r = verify(&log, Some(&public_key_path(&key))).unwrap();
    assert!(r.is_ok() && r.trusted, "{r}");
}
