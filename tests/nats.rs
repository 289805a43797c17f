//! NATS on the real broker: every event, alert, OCSF copy, task start/end and
//! revoke in the stream exactly once and as written locally (read back by this
//! crate and by an independent Python client); nothing lost across a broker outage
//! and an agentmon restart; signed remote control, and its refusals.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use agentmon::{
    event::{Event, Kind},
    nats::{Subjects, control::Command as Signed, sink::class_of, spool::Class},
};

use crate::{
    R,
    support::{
        self, SCENARIO_ENV, agentmon, ensure, eq,
        nats::{Msg, Server, read_stream, read_stream_with, request, request_as, suite_url},
        run_agentmon_with, wait, workdir,
    },
};

/// A host name no other test (or earlier run) uses: its stream is new.
fn host(name: &str) -> String {
    format!("{name}-{}-{}", std::process::id(), uuid::Uuid::now_v7().simple())
}

fn task_file(d: &Path, id: &str, write: &str) -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let t = d.join("task.yaml");
    std::fs::write(
        &t,
        format!(
            "id: {id}\nagent: spiffe://test/agent/{id}\nprincipal: alice\nprompt: \"fix the build, then stop\"\n\
             mode: execute\ncredentials: [\"arn:aws:iam::1:role/{id}\"]\nscope:\n  \
             write: [\"{write}\"]\n  exec: [\"{}\"]\n",
            me.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok(t)
}

fn me_in(d: &Path, args: &[&str]) -> Result<Vec<String>, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    Ok([me.display().to_string(), d.display().to_string()]
        .into_iter()
        .chain(args.iter().map(|s| s.to_string()))
        .collect())
}

/// Starts `agentmon exec --task TASK FLAGS -- cmd` with its events to `events`.
fn spawn_exec(
    events: &Path,
    task: &Path,
    flags: &[&str],
    cmd: &[String],
    env: &[(&str, &str)],
    dir: &Path,
) -> Result<std::process::Child, String> {
    let task = task.to_str().ok_or("task path is not UTF-8")?;
    let flags: Vec<&str> = ["--task", task].into_iter().chain(flags.iter().copied()).collect();
    support::exec_command(events, &flags, cmd, env, dir)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())
}

fn on<'m>(msgs: &'m [Msg], subject: &str) -> Vec<&'m Msg> {
    msgs.iter().filter(|m| m.subject == subject).collect()
}

/// Each local event is in the stream once, on its task's subject, unchanged.
fn events_match(local: &[Event], msgs: &[Msg], subjects: &Subjects) -> Result<(), String> {
    let mut by_id: HashMap<&str, Vec<&Msg>> = HashMap::new();
    for m in msgs {
        by_id.entry(m.id.as_deref().unwrap_or("")).or_default().push(m);
    }
    for e in local {
        let id = e.id.to_string();
        let hits = by_id.get(id.as_str()).cloned().unwrap_or_default();
        ensure(hits.len() == 1, || format!("{:?} event {id}: {} messages with its id", e.kind, hits.len()))?;
        eq("subject", hits[0].subject.as_str(), subjects.events(e.task.as_deref()).as_str())?;
        let got: Event = serde_json::from_value(hits[0].json.clone()).map_err(|e| e.to_string())?;
        eq("event as published", &got, e)?;
    }
    Ok(())
}

pub fn nats_stream_and_independent_client() -> R {
    let url = suite_url()?;
    let d = workdir("nats-stream");
    let h = host("stream");
    let subjects = Subjects::new(&h);
    // progress is outside the write scope: every write of it is an alert.
    let task = task_file(&d, "nats-stream", &format!("{}/out/f*", d.display()))?;
    let spool = d.join("spool");
    let sign_key = d.join("host.key");
    let flags = [
        "--task",
        task.to_str().unwrap(),
        "--nats",
        &url,
        "--nats-host",
        &h,
        "--ocsf",
        "--spool",
        spool.to_str().unwrap(),
        "--nats-sign-key",
        sign_key.to_str().unwrap(),
    ];
    let run = run_agentmon_with(&flags, &me_in(&d, &["5", "10"])?, &[(SCENARIO_ENV, "stream")], &d)?;
    eq("exit code", run.code, 0)?;
    let msgs = read_stream(&url, &subjects.stream())?;
    let mut ids: Vec<&str> = msgs.iter().filter_map(|m| m.id.as_deref()).collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    eq("distinct Nats-Msg-Id", ids.len(), n)?;
    ensure(msgs.iter().all(|m| m.id.is_some()), || "a message without Nats-Msg-Id".into())?;

    events_match(&run.events, &msgs, &subjects)?;
    eq("task_start events", run.of(Kind::TaskStart).len(), 1)?;
    eq("task_end events", run.of(Kind::TaskEnd).len(), 1)?;
    let start = run.of(Kind::TaskStart)[0];
    eq(
        "task_start agent",
        start.detail.get("agent").and_then(|v| v.as_str()),
        Some("spiffe://test/agent/nats-stream"),
    )?;
    // What was asked, recorded with the task (and on NATS: events_match above).
    eq(
        "task_start prompt",
        start.detail.get("prompt").and_then(|v| v.as_str()),
        Some("fix the build, then stop"),
    )?;

    ensure(!run.alerts.is_empty(), || "the out-of-scope writes raised no alert".into())?;
    let alerts = on(&msgs, &subjects.alerts());
    eq("alerts on NATS", alerts.len(), run.alerts.len())?;
    for a in &run.alerts {
        ensure(alerts.iter().any(|m| m.id.as_deref() == Some(a.id.to_string().as_str())), || {
            format!("alert {} not on {}", a.id, subjects.alerts())
        })?;
    }

    // OCSF copies: file creations as File System Activity, alerts as Detection Findings.
    let ocsf = on(&msgs, &subjects.ocsf_events(Some("nats-stream")));
    let creates = run.of(Kind::FileCreate);
    ensure(!creates.is_empty(), || "no file_create events".into())?;
    for e in creates {
        let m = ocsf
            .iter()
            .find(|m| m.json["metadata"]["uid"] == e.id.to_string())
            .ok_or_else(|| format!("no OCSF copy of {}", e.id))?;
        eq("class_uid", m.json["class_uid"].as_u64(), Some(1001))?;
        eq("activity_id (create)", m.json["activity_id"].as_u64(), Some(1))?;
        eq("file path", m.json["file"]["path"].as_str(), e.path.as_deref())?;
    }
    let findings = on(&msgs, &subjects.ocsf_alerts());
    eq("OCSF findings", findings.len(), run.alerts.len())?;
    ensure(findings.iter().all(|m| m.json["class_uid"] == 2004), || {
        "a finding that is not class 2004".into()
    })?;
    // Every OCSF copy of this run (real kernel events, their findings) conforms, and
    // carries what a SOC pivots on.
    let copies: Vec<&serde_json::Value> =
        msgs.iter().filter(|m| m.subject.contains(".ocsf.")).map(|m| &m.json).collect();
    support::nats::ocsf_conforms(&d, &copies)?;
    ensure(findings.iter().all(|m| m.json["finding_info"]["analytic"]["uid"].is_string()), || {
        "a finding without an analytic uid".into()
    })?;
    ensure(ocsf.iter().all(|m| m.json["observables"].as_array().is_some_and(|o| !o.is_empty())), || {
        "an OCSF copy without observables".into()
    })?;

    // The task's end revokes its credentials.
    let revokes = on(&msgs, &subjects.revoke());
    eq("revoke messages", revokes.len(), 1)?;
    eq("revoke task", revokes[0].json["task"].as_str(), Some("nats-stream"))?;
    eq("revoke agent", revokes[0].json["agent"].as_str(), Some("spiffe://test/agent/nats-stream"))?;
    // Naming the credentials the manifest declared, signed with the host's key (made
    // on first use, its public half beside it) for a broker to check.
    eq(
        "revoke credentials",
        &revokes[0].json["credentials"],
        &serde_json::json!(["arn:aws:iam::1:role/nats-stream"]),
    )?;
    let public = std::fs::read_to_string(sign_key.with_extension("key.pub")).map_err(|e| e.to_string())?;
    support::nats::signed_by(&revokes[0].json, public.trim())?;

    // An independent client (nats-py) reads the same messages.
    let py = std::env::var("AGENTMON_TEST_PYTHON")
        .map_err(|_| "AGENTMON_TEST_PYTHON is not set: run the tests with scripts/test.sh".to_string())?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/support/consume.py");
    let out = Command::new(&py)
        .arg(&script)
        .args([&url, &subjects.stream()])
        .output()
        .map_err(|e| format!("{py}: {e}"))?;
    ensure(out.status.success(), || format!("consume.py: {}", String::from_utf8_lossy(&out.stderr)))?;
    let seen: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("consume.py output: {e}"))?;
    eq("messages seen by nats-py", seen.len(), msgs.len())?;
    for (p, m) in seen.iter().zip(&msgs) {
        eq("subject (nats-py)", p["subject"].as_str(), Some(m.subject.as_str()))?;
        eq("Nats-Msg-Id (nats-py)", p["id"].as_str(), m.id.as_deref())?;
        eq("payload (nats-py)", &p["data"], &m.json)?;
    }
    Ok(())
}

/// Ids of the events of a local events file, in order.
fn local_ids(events: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(events).map_err(|e| format!("{}: {e}", events.display()))?;
    let (evs, _) = support::parse_stream(&text)?;
    Ok(evs.iter().map(|e| e.id.to_string()).collect())
}

pub fn nats_outage_loses_nothing() -> R {
    let d = workdir("nats-outage");
    let h = host("outage");
    let subjects = Subjects::new(&h);
    let task = task_file(&d, "outage", &format!("{}/out/**", d.display()))?;
    let spool = d.join("spool");
    let mut srv = Server::planned(&d);
    let url = srv.url();
    let exec = |events: &Path, count: &str, gap: &str| -> Result<std::process::Child, String> {
        let flags = ["--nats", &url, "--nats-host", &h, "--spool", spool.to_str().unwrap()];
        spawn_exec(events, &task, &flags, &me_in(&d, &[count, gap])?, &[(SCENARIO_ENV, "stream")], &d)
    };
    // 1. No broker at all: everything waits in the spool when agentmon exits.
    let first = d.join("first.jsonl");
    let out = exec(&first, "10", "5")?.wait_with_output().map_err(|e| e.to_string())?;
    eq("first run exit", out.status.code(), Some(0))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure(stderr.contains("stay in the spool"), || format!("no note about the spool: {stderr}"))?;

    // 2. The broker comes up; a second agentmon sends the first one's spool, then
    // its own stream, through a broker stop and restart in the middle.
    srv.start()?;
    let second = d.join("second.jsonl");
    let child = exec(&second, "60", "40")?;
    let progress = || {
        std::fs::read_to_string(d.join("out/progress")).ok().and_then(|s| s.parse::<u32>().ok()).unwrap_or(0)
    };
    let midway = wait(Duration::from_secs(30), || progress() >= 15);
    srv.stop();
    let stopped_at = progress();
    std::thread::sleep(Duration::from_millis(1500));
    srv.start()?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    ensure(midway, || "the second run never got going".into())?;
    ensure(stopped_at < 60, || "the broker was stopped after the stream ended".into())?;
    eq("second run exit", out.status.code(), Some(0))?;

    let msgs = read_stream(&url, &subjects.stream())?;
    let events: Vec<&Msg> = msgs
        .iter()
        .filter(|m| m.subject.starts_with(&format!("agentmon.{}.events.", subjects.host())))
        .collect();
    // Each lane in order, each message once: the task's records (start, end, ...)
    // and the bulk events.
    let (first_prio, first_bulk) = lanes(&first)?;
    let (second_prio, second_bulk) = lanes(&second)?;
    for (lane, want) in [
        (Class::Priority, [first_prio.clone(), second_prio].concat()),
        (Class::Bulk, [first_bulk.clone(), second_bulk].concat()),
    ] {
        let got: Vec<String> =
            events.iter().filter_map(|m| m.id.clone()).filter(|id| want.contains(id)).collect();
        eq(&format!("{lane:?} events in the stream, in order, each once"), got, want)?;
    }
    eq("events in the stream", events.len(), local_ids(&first)?.len() + local_ids(&second)?.len())?;
    // What the first run left in the spool is sent task records first: its end
    // (and the revoke) do not wait behind its events.
    let seq = |ids: &[String]| {
        events
            .iter()
            .filter(|m| m.id.as_ref().is_some_and(|i| ids.contains(i)))
            .map(|m| m.seq)
            .collect::<Vec<_>>()
    };
    let (prio_last, bulk_first) = (seq(&first_prio).into_iter().max(), seq(&first_bulk).into_iter().min());
    ensure(prio_last < bulk_first, || {
        format!(
            "the first run's task records were sent behind its events (last at {prio_last:?}, first event at {bulk_first:?})"
        )
    })?;
    let revoke = msgs.iter().find(|m| m.subject == subjects.revoke()).ok_or("no revoke in the stream")?;
    ensure(Some(revoke.seq) < bulk_first, || "the first run's revoke was sent behind its events".into())?;
    Ok(())
}

/// The ids of an events file's records, split by spool lane: (priority, bulk).
fn lanes(events: &Path) -> Result<(Vec<String>, Vec<String>), String> {
    let text = std::fs::read_to_string(events).map_err(|e| format!("{}: {e}", events.display()))?;
    let (evs, _) = support::parse_stream(&text)?;
    let (prio, bulk): (Vec<&Event>, Vec<&Event>) =
        evs.iter().partition(|e| class_of(e.kind) == Class::Priority);
    let ids = |v: Vec<&Event>| v.iter().map(|e| e.id.to_string()).collect();
    Ok((ids(prio), ids(bulk)))
}

fn status_of(url: &str, h: &str, key: &Path) -> Result<serde_json::Value, String> {
    let out = Command::new(agentmon())
        .args(["remote", "status", "--host", h, "--key"])
        .arg(key)
        .args(["--nats", url])
        .output()
        .map_err(|e| e.to_string())?;
    ensure(out.status.success(), || format!("remote status: {}", String::from_utf8_lossy(&out.stderr)))?;
    serde_json::from_slice(&out.stdout).map_err(|e| format!("remote status output: {e}"))
}

pub fn nats_remote_control() -> R {
    let url = suite_url()?;
    let d = workdir("nats-remote");
    let h = host("remote");
    let subjects = Subjects::new(&h);
    let task = task_file(&d, "remote", &format!("{}/**", d.display()))?;
    let key_path = d.join("keys/operator.key");
    std::fs::create_dir_all(d.join("keys")).map_err(|e| e.to_string())?;
    let key = agentmon::audit::load_or_create_key(&key_path).map_err(|e| e.to_string())?;
    let other = agentmon::audit::load_or_create_key(&d.join("keys/other.key")).map_err(|e| e.to_string())?;
    let allowed = d.join("ctl-keys");
    std::fs::copy(agentmon::audit::public_key_path(&key_path), &allowed).map_err(|e| e.to_string())?;
    let events = d.join("events.jsonl");
    let spool = d.join("spool");
    let flags = [
        "--nats",
        &url,
        "--nats-host",
        &h,
        "--nats-ctl-keys",
        allowed.to_str().unwrap(),
        "--spool",
        spool.to_str().unwrap(),
    ];
    let child = spawn_exec(&events, &task, &flags, &me_in(&d, &[])?, &[(SCENARIO_ENV, "wait_for")], &d)?;
    let result = (|| -> Result<(), String> {
        let mut status = Err("never asked".to_string());
        wait(Duration::from_secs(15), || {
            status = status_of(&url, &h, &key_path);
            status.is_ok()
        });
        let status = status?;
        eq("status: task", status["tasks"][0]["task"].as_str(), Some("remote"))?;
        ensure(status["tasks"][0]["processes"].as_array().is_some_and(|p| !p.is_empty()), || {
            format!("status shows no processes: {status}")
        })?;

        let subject = subjects.ctl("kill");
        let send = |c: &Signed| request(&url, &subject, serde_json::to_vec(c).unwrap());
        let refused = |what: &str, reply: serde_json::Value, says: &str| -> Result<(), String> {
            eq(&format!("{what}: ok"), reply["ok"].as_bool(), Some(false))?;
            let err = reply["error"].as_str().unwrap_or("");
            ensure(err.contains(says), || format!("{what}: error {err:?} does not say {says:?}"))
        };
        refused("malformed", request(&url, &subject, b"{not json".to_vec())?, "malformed command")?;
        let kill = |k| Signed::signed(k, "kill", &h, Some("remote".into()), None, None, None);
        refused("unknown key", send(&kill(&other))?, "not allowed")?;
        let mut forged = kill(&key);
        forged.task = Some("some-other-task".into());
        refused("edited after signing", send(&forged)?, "bad signature")?;
        refused(
            "another host",
            send(&Signed::signed(&key, "kill", "elsewhere", Some("remote".into()), None, None, None))?,
            "is for host",
        )?;
        let mut stale = kill(&key);
        stale.ts = "2020-01-01T00:00:00.000000000Z".into();
        stale.sign(&key);
        refused("stale", send(&stale)?, "from this host's clock")?;
        refused(
            "op on the wrong subject",
            request(&url, &subjects.ctl("thaw"), serde_json::to_vec(&kill(&key)).unwrap())?,
            "subject",
        )?;

        // The kill, then the same command again: one action, the same answer.
        let cmd = kill(&key);
        let first = send(&cmd)?;
        eq("kill: ok", first["ok"].as_bool(), Some(true))?;
        eq("repeated kill: same answer", send(&cmd)?, first)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::write(d.join("go"), "");
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    result?;
    eq("agentmon exit code (SIGKILL)", out.status.code(), Some(128 + 9))?;
    let text = std::fs::read_to_string(&events).map_err(|e| e.to_string())?;
    let (evs, _) = support::parse_stream(&text)?;
    let kills: Vec<&Event> = evs.iter().filter(|e| e.kind == Kind::Action).collect();
    eq("action events", kills.iter().map(|e| e.action.as_deref()).collect::<Vec<_>>(), vec![Some("kill")])?;
    let signer = agentmon::audit::public_key_hex(&key.verifying_key());
    ensure(kills[0].detail.get("via").and_then(|v| v.as_str()).is_some_and(|v| v.contains(&signer)), || {
        format!("the kill does not name its signer: {:?}", kills[0].detail)
    })?;
    let msgs = read_stream(&url, &subjects.stream())?;
    let signals = on(&msgs, &subjects.kill());
    eq("kill signals", signals.len(), 1)?;
    eq("kill signal task", signals[0].json["task"].as_str(), Some("remote"))?;
    eq("kill signal action", signals[0].json["action"].as_str(), Some("kill"))?;
    eq("kill signal agent", signals[0].json["agent"].as_str(), Some("spiffe://test/agent/remote"))?;
    let revokes = on(&msgs, &subjects.revoke());
    ensure(revokes.iter().any(|m| m.json["reason"] == "task killed"), || {
        format!("no revoke for the kill: {revokes:?}")
    })?;
    eq("actions subject", on(&msgs, &subjects.actions()).len(), 1)?;
    Ok(())
}

/// The shipped nats-server configuration: anonymous clients are refused, a host
/// publishes its events but cannot send control requests, the SOC can, and what
/// the host published is in the stream the SOC reads.
pub fn nats_sample_config_permissions() -> R {
    let d = workdir("nats-perms");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/agentmon.conf");
    let mut srv = Server::planned(&d);
    // The shipped file as is, but for where JetStream keeps its store.
    let text = std::fs::read_to_string(&shipped).map_err(|e| e.to_string())?;
    let default_store = "store_dir: /var/lib/nats/jetstream";
    ensure(text.contains(default_store), || format!("{} no longer has {default_store}", shipped.display()))?;
    let conf = d.join("agentmon.conf");
    std::fs::write(&conf, text.replace(default_store, &format!("store_dir: {}", srv.store.display())))
        .map_err(|e| e.to_string())?;
    srv.start_with(
        Some(&conf),
        &[("AGENTMON_HOST_WEB1_PASS", "host-secret"), ("AGENTMON_SOC_PASS", "soc-secret")],
    )?;
    let url = srv.url();
    let subjects = Subjects::new("web1");
    let task = task_file(&d, "perms", &format!("{}/**", d.display()))?;
    let key_path = d.join("operator.key");
    agentmon::audit::load_or_create_key(&key_path).map_err(|e| e.to_string())?;
    let allowed = d.join("ctl-keys");
    std::fs::copy(agentmon::audit::public_key_path(&key_path), &allowed).map_err(|e| e.to_string())?;
    let events = d.join("events.jsonl");
    let spool = d.join("spool");
    let flags = ["--nats", &url, "--nats-host", "web1", "--nats-user", "host-web1", "--nats-ctl-keys"];
    let flags: Vec<&str> =
        flags.into_iter().chain([allowed.to_str().unwrap(), "--spool", spool.to_str().unwrap()]).collect();
    let env = [("AGENTMON_NATS_PASSWORD", "host-secret"), (SCENARIO_ENV, "wait_for")];
    let child = spawn_exec(&events, &task, &flags, &me_in(&d, &[])?, &env, &d)?;
    let soc = Some(("soc", "soc-secret"));
    let result = (|| -> Result<(), String> {
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        ensure(rt.block_on(support::nats::connect(&url, None)).is_err(), || {
            "an anonymous client got in".into()
        })?;
        let cmd = serde_json::to_vec(&Signed::signed(
            &agentmon::audit::load_or_create_key(&key_path).map_err(|e| e.to_string())?,
            "status",
            "web1",
            None,
            None,
            None,
            None,
        ))
        .unwrap();
        let mut reply = Err(String::new());
        wait(Duration::from_secs(15), || {
            reply = request_as(&url, soc, &subjects.ctl("status"), cmd.clone(), Duration::from_secs(2));
            reply.is_ok()
        });
        let reply = reply.map_err(|e| format!("the SOC's status request: {e}"))?;
        eq("SOC status: ok", reply["ok"].as_bool(), Some(true))?;
        let host = Some(("host-web1", "host-secret"));
        let r = request_as(&url, host, &subjects.ctl("status"), cmd, Duration::from_secs(2));
        ensure(r.is_err(), || format!("the host itself could send a control request: {r:?}"))?;
        Ok(())
    })();
    let _ = std::fs::write(d.join("go"), "");
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    result?;
    eq("agentmon exit", out.status.code(), Some(0))?;
    let text = std::fs::read_to_string(&events).map_err(|e| e.to_string())?;
    let (evs, _) = support::parse_stream(&text)?;
    let msgs = support::nats::read_stream_as(&url, soc, &subjects.stream())?;
    events_match(&evs, &msgs, &subjects)?;
    Ok(())
}

fn sh(cmd: &str, dir: &Path) -> Result<(), String> {
    let out = Command::new("sh").arg("-c").arg(cmd).current_dir(dir).output().map_err(|e| e.to_string())?;
    ensure(out.status.success(), || format!("{cmd}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// Token, nkey and TLS (server verified against a CA): agentmon publishes through each,
/// and a wrong token leaves everything in the spool.
pub fn nats_token_nkey_tls() -> R {
    let d = workdir("nats-auth");
    let kp = nkeys::KeyPair::new_user();
    let seed = kp.seed().map_err(|e| e.to_string())?;
    let nk = d.join("user.nk");
    std::fs::write(&nk, &seed).map_err(|e| e.to_string())?;
    sh(
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=test-ca 2>/dev/null && \
         openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj /CN=localhost 2>/dev/null && \
         printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > san.ext && \
         openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 1 \
         -extfile san.ext 2>/dev/null",
        &d,
    )?;
    let ca = d.join("ca.pem");
    let cases: Vec<(&str, String, Vec<String>, async_nats::ConnectOptions)> = vec![
        (
            "token",
            "authorization { token: \"s3cret-token\" }".into(),
            vec!["--nats-token".into(), "s3cret-token".into()],
            async_nats::ConnectOptions::with_token("s3cret-token".into()),
        ),
        (
            "nkey",
            format!("authorization {{ users: [ {{ nkey: {} }} ] }}", kp.public_key()),
            vec!["--nats-nkey".into(), nk.display().to_string()],
            async_nats::ConnectOptions::with_nkey(seed.clone()),
        ),
        (
            "tls",
            format!(
                "tls {{ cert_file: \"{}\", key_file: \"{}\" }}",
                d.join("srv.pem").display(),
                d.join("srv.key").display()
            ),
            vec!["--nats-tls-ca".into(), ca.display().to_string()],
            async_nats::ConnectOptions::new().add_root_certificates(ca.clone()).require_tls(true),
        ),
    ];
    for (name, auth, flags, client) in cases {
        let dir = d.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut srv = Server::planned(&dir);
        let conf = dir.join("server.conf");
        std::fs::write(&conf, format!("jetstream {{ store_dir: \"{}\" }}\n{auth}\n", srv.store.display()))
            .map_err(|e| e.to_string())?;
        srv.start_with(Some(&conf), &[])?;
        let url = srv.url();
        let h = host(name);
        let spool = dir.join("spool");
        let mut args: Vec<&str> = vec!["--nats", &url, "--nats-host", &h, "--spool", spool.to_str().unwrap()];
        args.extend(flags.iter().map(String::as_str));
        let run = run_agentmon_with(&args, &["/bin/true".to_string()], &[], &dir)?;
        eq(&format!("{name}: exit"), run.code, 0)?;
        ensure(!run.stderr.contains("NATS:"), || format!("{name}: {}", run.stderr))?;
        let msgs = read_stream_with(&url, client, &Subjects::new(&h).stream())?;
        events_match(&run.events, &msgs, &Subjects::new(&h)).map_err(|e| format!("{name}: {e}"))?;
        if name == "token" {
            // A wrong token: nothing is sent, everything waits in the spool.
            let spool = dir.join("spool-wrong");
            let args = [
                "--nats",
                &url,
                "--nats-host",
                &h,
                "--spool",
                spool.to_str().unwrap(),
                "--nats-token",
                "wrong",
            ];
            let run = run_agentmon_with(&args, &["/bin/true".to_string()], &[], &dir)?;
            ensure(run.stderr.contains("stay in the spool"), || format!("wrong token: {}", run.stderr))?;
        }
    }
    Ok(())
}
