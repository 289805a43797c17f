use super::*;
use crate::sink::{Fanout, JsonLines};

/// Options for a sink whose broker is away (nothing listens on port 1: the
/// publisher keeps retrying), spooling under `dir`.
fn away(dir: &std::path::Path, spool_max: u64, sign_key: Option<ed25519_dalek::SigningKey>) -> NatsOptions {
    NatsOptions {
        args: NatsArgs { nats: Some("nats://127.0.0.1:1".into()), ..Default::default() },
        host: "h".into(),
        spool: dir.join("spool"),
        spool_max,
        ocsf: false,
        sign_key,
    }
}

/// A spool too small for the stream while the broker is away: the overflow is
/// counted and reported once as a loss event in the other sinks.
#[test]
fn full_spool_is_a_loss_event_in_the_other_sinks() {
    let dir = tempfile::tempdir().unwrap();
    let o = away(dir.path(), 8192, None);
    let nats = NatsSink::open(o).unwrap();
    let shared = nats.spool();
    let lines = dir.path().join("events.jsonl");
    let mut f = Fanout::new(vec![Box::new(JsonLines::file(&lines).unwrap()), Box::new(nats)]);
    let mut ev = Event::new(Kind::FileWrite, Timestamp::now(), "h".into());
    ev.path = Some(format!("/{}", "x".repeat(300)));
    for _ in 0..100 {
        f.send(&ev);
    }
    f.flush();
    let dropped = shared.dropped.load(Relaxed);
    assert!(dropped > 50, "only {dropped} dropped");
    f.flush();
    assert_eq!(f.close(), Vec::new());
    let text = std::fs::read_to_string(&lines).unwrap();
    let losses: Vec<Event> = text
        .lines()
        .map(|l| serde_json::from_str::<Event>(l).unwrap())
        .filter(|e| e.kind == Kind::Loss)
        .collect();
    assert_eq!(losses.len(), 1, "one report, not one per flush");
    assert_eq!(losses[0].lost.as_ref().unwrap()["nats_spool"], dropped);
    assert_eq!(losses[0].detail["sink"], "nats");
}

/// With the spool full of bulk events (the broker away), what happened to the
/// task (its end, the revoke) and the loss record still go in, from the
/// reserve, and the loss record in the spool counts every drop.
#[test]
fn task_records_and_loss_survive_a_full_spool() {
    let dir = tempfile::tempdir().unwrap();
    let o = away(dir.path(), 16384, None);
    let nats = NatsSink::open(o).unwrap();
    let shared = nats.spool();
    let mut f = Fanout::new(vec![Box::new(nats)]);
    let mut ev = Event::new(Kind::FileWrite, Timestamp::now(), "h".into());
    ev.task = Some("t".into());
    ev.path = Some(format!("/{}", "x".repeat(300)));
    for _ in 0..200 {
        f.send(&ev);
    }
    let dropped = shared.dropped.load(Relaxed);
    assert!(dropped > 100, "only {dropped} dropped");
    let mut end = Event::new(Kind::TaskEnd, Timestamp::now(), "h".into());
    end.task = Some("t".into());
    f.send(&end);
    f.flush();
    assert_eq!(shared.dropped.load(Relaxed), dropped, "a task record was dropped");
    let subjects = Subjects::new("h");
    let records = spooled_records(&shared);
    assert!(records.iter().any(|r| r.id == end.id.to_string()), "no task_end in the spool");
    assert!(records.iter().any(|r| r.subject == subjects.revoke()), "no revoke in the spool");
    let losses: Vec<Event> = records
        .iter()
        .filter_map(|r| serde_json::from_slice::<Event>(&r.payload).ok())
        .filter(|e| e.kind == Kind::Loss)
        .collect();
    assert_eq!(losses.len(), 1);
    assert_eq!(losses[0].lost.as_ref().unwrap()["nats_spool"], dropped);
    drop(f);
}

/// What the spool holds, each lane in order, priority first (as it is sent).
fn spooled_records(shared: &Arc<Shared>) -> Vec<crate::nats::spool::Record> {
    let mut records = Vec::new();
    for c in Class::ALL {
        let mut r = crate::nats::spool::Reader::new(shared.clone(), c);
        while let Some((rec, _)) = r.next_record().unwrap() {
            records.push(rec);
        }
    }
    records
}

/// A sink with a signing key, its broker away: what it puts in the spool.
fn spooled(
    sign: bool,
    evs: &[Event],
) -> (Vec<crate::nats::spool::Record>, Option<ed25519_dalek::VerifyingKey>) {
    let dir = tempfile::tempdir().unwrap();
    let key = sign.then(|| ed25519_dalek::SigningKey::from_bytes(&[7; 32]));
    let public = key.as_ref().map(|k| k.verifying_key());
    let o = away(dir.path(), 1 << 20, key);
    let nats = NatsSink::open(o).unwrap();
    let shared = nats.spool();
    let mut f = Fanout::new(vec![Box::new(nats)]);
    for ev in evs {
        f.send(ev);
    }
    f.flush();
    let records = spooled_records(&shared);
    drop(f);
    (records, public)
}

fn task_event(kind: Kind, task: &str) -> Event {
    let mut ev = Event::new(kind, Timestamp::now(), "h".into());
    ev.task = Some(task.into());
    ev
}

fn action(task: &str, act: &'static str) -> Event {
    let mut ev = task_event(Kind::Action, task);
    ev.action = Some(Cow::Borrowed(act));
    ev.rule = Some("net.exfil".into());
    ev
}

/// Whether `m` carries a valid signature by `key` over its canonical form, made
/// here as docs/nats.md tells a broker to make it.
fn verifies(m: &serde_json::Value, key: &ed25519_dalek::VerifyingKey) -> bool {
    use ed25519_dalek::Verifier;
    let mut body = m.clone();
    let sig = body.as_object_mut().unwrap().remove("sig");
    let Some(sig) = sig.as_ref().and_then(|s| s.as_str()).and_then(|s| hex::decode(s).ok()) else {
        return false;
    };
    let Ok(sig) = <[u8; 64]>::try_from(sig) else { return false };
    let mut signed = format!("{}\n", m["schema"].as_str().unwrap()).into_bytes();
    signed.extend(serde_json::to_vec(&body).unwrap());
    m["key"] == hex::encode(key.as_bytes())
        && key.verify(&signed, &ed25519_dalek::Signature::from_bytes(&sig)).is_ok()
}

/// A revoke names the task's declared credentials and is signed with the host's
/// key; it is sent at the end, on a kill or freeze (done or failed), and for a
/// rule's `revoke`; not on a thaw, nor for agentmon's own fail-closed freeze.
/// Before, a revoke carried no credentials and no signature, and a freeze, a failed
/// kill or a rule sent none.
#[test]
fn revokes_name_the_credentials_and_are_signed() {
    let mut start = task_event(Kind::TaskStart, "t");
    start.detail.insert("credentials".into(), serde_json::json!(["arn:aws:iam::1:role/t", "vault:abc"]));
    let mut failed = action("t", "kill");
    failed.detail.insert("error".into(), serde_json::json!("cgroup.kill: EBUSY"));
    // agentmon's own fail-closed freeze (an output failing): the agent can cause it.
    let mut own = action("t", "freeze");
    own.detail.insert("by".into(), serde_json::json!("output_failure"));
    // The same freeze, not done in time and made a kill: still agentmon's own.
    let late = |asked_by: &str| {
        let mut ev = action("t", "kill");
        ev.detail.insert("by".into(), serde_json::json!("freeze_timeout"));
        ev.detail.insert("asked_by".into(), serde_json::json!(asked_by));
        ev
    };
    // A kill that did not end every process in time, reported again: agentmon's
    // own when its kill was, else the credentials go again (nothing to signal).
    let late_kill = |asked_by: &str| {
        let mut ev = late(asked_by);
        ev.detail.insert("by".into(), serde_json::json!("kill_timeout"));
        ev.detail.insert("error".into(), serde_json::json!("processes still alive"));
        ev
    };
    let evs = [
        start,
        action("t", "revoke"),
        action("t", "freeze"),
        action("t", "thaw"),
        own,
        late("output_failure"),
        failed,
        late_kill("output_failure"),
        late_kill("policy"),
        action("t", "kill"),
        task_event(Kind::TaskEnd, "t"),
        // An expiry's freeze made a kill after the task's end: it still names the
        // task's credentials and agent.
        late("expiry"),
    ];
    let (records, key) = spooled(true, &evs);
    let key = key.unwrap();
    let subjects = Subjects::new("h");
    let revokes: Vec<serde_json::Value> = records
        .iter()
        .filter(|r| r.subject == subjects.revoke())
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect();
    let reasons: Vec<&str> = revokes.iter().map(|m| m["reason"].as_str().unwrap()).collect();
    assert_eq!(
        reasons,
        [
            "a rule asked for it",
            "task frozen",
            "task could not be stopped",
            "task could not be stopped",
            "task killed",
            "task ended",
            "task killed"
        ]
    );
    for m in &revokes {
        assert_eq!(m["credentials"], serde_json::json!(["arn:aws:iam::1:role/t", "vault:abc"]), "{m}");
        assert!(verifies(m, &key), "a revoke that does not verify: {m}");
        let mut forged = m.clone();
        forged["credentials"] = serde_json::json!(["arn:aws:iam::1:role/someone-else"]);
        assert!(!verifies(&forged, &key), "a changed revoke still verifies: {forged}");
    }
    assert_eq!(revokes[0]["rule"], "net.exfil");
    let kills: Vec<serde_json::Value> = records
        .iter()
        .filter(|r| r.subject == subjects.kill())
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect();
    assert_eq!(kills.len(), 5, "two freezes and three kills, done (not the failed kill): {kills:?}");
    assert!(kills.iter().all(|m| verifies(m, &key)), "{kills:?}");

    // Without a key: neither field, and nothing else changes.
    let (records, _) = spooled(false, &evs[..2]);
    let m: serde_json::Value =
        serde_json::from_slice(&records.iter().find(|r| r.subject == subjects.revoke()).unwrap().payload)
            .unwrap();
    assert!(m.get("sig").is_none() && m.get("key").is_none(), "{m}");
}
