//! Tests of the audit chain. Each tamper test (tamper.rs) edits a chain the way an
//! attacker would and checks that verify reports it where it happened; writer.rs
//! tests reopening and the sink.

mod tamper;
mod writer;

use std::path::{Path, PathBuf};

use ed25519_dalek::Signer;
use serde_json::{Map, Value, json};

use super::*;
use crate::{
    event::{ALERT_SCHEMA, Alert, Event, Kind, Timestamp},
    sink::Sink,
};

fn event(i: u32) -> Event {
    let mut e = Event::new(Kind::FileWrite, Timestamp(1_780_000_000_000_000_000 + i as i128), "h".into());
    e.pid = 100 + i;
    e.comm = "agent".into();
    e.path = Some(format!("/work/f{i}"));
    e.verdict = Some("out_of_scope".into());
    e.rule = Some("no-writes".into());
    e.reason = Some("scope.write: outside".into());
    e
}

fn alert(e: &Event) -> Alert {
    Alert {
        schema: ALERT_SCHEMA.into(),
        kind: "alert".into(),
        id: uuid::Uuid::now_v7(),
        ts: e.ts,
        host: "h".into(),
        severity: "high".into(),
        verdict: "out_of_scope".into(),
        action: crate::policy::Action::Alert,
        rule: None,
        reason: "scope.write: outside".into(),
        reasons: vec![],
        task: None,
        event: e.clone(),
    }
}

/// A chain with a checkpoint every 4 records: task_start, 8 events, an alert, 3 steps,
/// task_end (18 lines: checkpoints at seq 4, 9, 14 and 17, on close); returns (log, key).
fn sample(dir: &Path) -> (PathBuf, PathBuf) {
    let (log, key) = (dir.join("audit.jsonl"), dir.join("audit.key"));
    let mut c = AuditChain::open(&log, &key, 4).unwrap();
    c.task_start(json!({"task": "t1", "agent": "claude"})).unwrap();
    for i in 0..8 {
        c.event(&event(i)).unwrap();
    }
    c.alert(&alert(&event(9))).unwrap();
    c.step(json!({"tool": "bash", "input": "ls"})).unwrap();
    c.step(json!({"tool": "read", "input": "f0"})).unwrap();
    c.step(json!({"tool": "edit", "input": "f1"})).unwrap();
    c.task_end(json!({"task": "t1", "status": 0})).unwrap();
    c.close().unwrap();
    (log, key)
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p).unwrap().lines().map(String::from).collect()
}

fn put(p: &Path, ls: &[String]) {
    std::fs::write(p, ls.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
}

fn rec(l: &str) -> Map<String, Value> {
    serde_json::from_str(l).unwrap()
}

fn text(m: &Map<String, Value>) -> String {
    let mut b = Vec::new();
    write_object(m, None, &mut b);
    String::from_utf8(b).unwrap()
}

fn rehashed(mut m: Map<String, Value>) -> String {
    m.insert("hash".into(), record_hash(&m).into());
    text(&m)
}

/// What an attacker without the key does after editing line `from`: renumbers and
/// re-links every record from there on (checkpoints' covered seq and hash too).
fn rechain(ls: &mut [String], from: usize) {
    for i in from..ls.len() {
        let (seq, prev) = match i {
            0 => (0, GENESIS.to_string()),
            _ => {
                let p = rec(&ls[i - 1]);
                (p["seq"].as_u64().unwrap() + 1, p["hash"].as_str().unwrap().to_string())
            }
        };
        let mut m = rec(&ls[i]);
        m.insert("seq".into(), seq.into());
        m.insert("prev".into(), prev.clone().into());
        if m["type"] == "checkpoint" {
            m["body"]["covers_seq"] = (seq - 1).into();
            m["body"]["covers_hash"] = prev.into();
        }
        ls[i] = rehashed(m);
    }
}

/// Index of the `n`th record that is not a checkpoint.
fn nth_record(ls: &[String], n: usize) -> usize {
    ls.iter().enumerate().filter(|(_, l)| rec(l)["type"] != "checkpoint").nth(n).unwrap().0
}

fn kinds(r: &VerifyReport) -> Vec<ProblemKind> {
    r.problems.iter().map(|p| p.kind).collect()
}

fn check(log: &Path) -> VerifyReport {
    verify(log, None).unwrap()
}

#[test]
fn clean_chain_verifies_with_and_without_pubkey() {
    let dir = tempfile::tempdir().unwrap();
    let (log, key) = sample(dir.path());
    let ls = lines(&log);
    let r = check(&log);
    assert!(r.is_ok(), "{r}");
    assert!(!r.trusted && r.to_string().contains("UNTRUSTED"), "{r}");
    assert_eq!(r.records, ls.len() as u64);
    assert_eq!(r.checkpoints, 4); // after 4, 8 and 12 records, and on close
    assert_eq!(r.last_seq, Some(ls.len() as u64 - 1));
    assert_eq!(r.signed_through, Some(ls.len() as u64 - 2));
    let pub_path = public_key_path(&key);
    let r = verify(&log, Some(&pub_path)).unwrap();
    assert!(r.is_ok() && r.trusted, "{r}");
    assert_eq!(r.key.as_deref(), Some(std::fs::read_to_string(&pub_path).unwrap().trim()));

    // The documented format: seq from 0, prev of the first is 64 zeros, hash is the
    // SHA-256 of serde_json's compact, key-sorted text of the record without `hash`.
    let mut prev = GENESIS.to_string();
    for (i, l) in ls.iter().enumerate() {
        let mut v: Value = serde_json::from_str(l).unwrap();
        let m = v.as_object_mut().unwrap();
        assert_eq!(m.keys().collect::<Vec<_>>(), ["body", "hash", "prev", "seq", "ts", "type"]);
        assert_eq!(m["seq"], i as u64);
        assert_eq!(m["prev"], prev.as_str());
        let hash = m.remove("hash").unwrap();
        let want = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(serde_json::to_vec(&v).unwrap()));
        assert_eq!(hash, want.as_str());
        prev = want;
    }
    let last = rec(ls.last().unwrap());
    assert_eq!(last["type"], "checkpoint");
    let b = &last["body"];
    assert_eq!(b["covers_seq"], ls.len() as u64 - 2);
    assert_eq!(b["covers_hash"], last["prev"]);
    let k = read_public_key(&pub_path).unwrap();
    let sig = hex::decode(b["sig"].as_str().unwrap()).unwrap();
    let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
    let msg =
        format!("agentmon-audit-checkpoint/1\n{}\n{}", b["covers_seq"], b["covers_hash"].as_str().unwrap());
    k.verify_strict(msg.as_bytes(), &sig).unwrap();
}
