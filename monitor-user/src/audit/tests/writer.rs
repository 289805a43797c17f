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

/// A writer killed in the middle of a record (a write of more than a page stops at
/// a page on SIGKILL): the next writer cuts the fragment off, keeps it beside the
/// log, records the cut in the chain, and the chain verifies. Before, the daemon
/// refused to start with this audit log until someone truncated it by hand.
#[test]
fn reopening_cuts_a_torn_last_line_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let (log, key) = sample(dir.path());
    let ls = lines(&log);
    let full: String = ls.iter().map(|l| format!("{l}\n")).collect();
    let last_start = (full.len() - ls.last().unwrap().len() - 1) as u64;
    std::fs::write(&log, &full[..full.len() - 5]).unwrap();
    let c = AuditChain::open(&log, &key, 4).unwrap();
    let mut f = crate::sink::Fanout::new(vec![Box::new(c)]);
    let said = f.report_losses(&std::sync::Arc::from("h"), Timestamp(1));
    assert!(f.report_losses(&std::sync::Arc::from("h"), Timestamp(1)).is_empty(), "reported once");
    drop(f);
    assert_eq!(said.len(), 1);
    let t = &said[0].detail["torn"];
    assert_eq!(t["offset"], last_start);
    assert_eq!(t["bytes"], ls.last().unwrap().len() as u64 - 4);
    let kept = std::fs::read_to_string(t["kept"].as_str().unwrap()).unwrap();
    assert_eq!(kept, &full[last_start as usize..full.len() - 5]);
    let r = verify(&log, Some(&public_key_path(&key))).unwrap();
    assert!(r.is_ok(), "{r}");
    let recs = lines(&log);
    let loss =
        recs.iter().map(|l| serde_json::from_str::<Value>(l).unwrap()).find(|v| v["body"]["kind"] == "loss");
    let loss = loss.expect("the cut is a record of the chain");
    assert_eq!(loss["body"]["detail"]["torn"]["offset"], last_start);
    // A file holding nothing but a fragment (killed during its first write).
    std::fs::write(&log, &full[..30]).unwrap();
    let mut c = AuditChain::open(&log, &key, 4).unwrap();
    assert_eq!(c.next_seq(), 0);
    assert_eq!(Sink::torn(&mut c).map(|t| (t.offset, t.bytes)), Some((0, 30)));
}

#[test]
fn reopening_refuses_a_tampered_log() {
    let dir = tempfile::tempdir().unwrap();
    let (log, key) = sample(dir.path());
    let ls = lines(&log);
    let full: String = ls.iter().map(|l| format!("{l}\n")).collect();
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
    assert_eq!(std::fs::read(&log).unwrap().len(), 0, "buffered");
    // The end of a batch writes it out, unsigned: a kill -9 then loses nothing of it.
    sink.batch_end().unwrap();
    assert_eq!(lines(&log).len(), 2, "written at the end of the batch");
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
