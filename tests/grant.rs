//! Task grants on the real runs: where grant keys are set, a task starts only with
//! a grant by one of them over exactly its manifest — standalone (refused before
//! the command runs) and through the daemon (refused, and the attempt recorded) —
//! and its start names who granted it.

use std::{path::Path, process::Command};

use agentmon::event::Kind;

use crate::{
    R,
    daemon::{daemon_paths, start_daemon, stop},
    support::{self, agentmon, ensure, eq, parse_stream, workdir},
};

fn exec(d: &Path, flags: &[&str], task: &Path, marker: &Path) -> Result<(i32, String), String> {
    let out = Command::new(agentmon())
        .args(["exec", "--quiet", "--events"])
        .arg(d.join("events.jsonl"))
        .args(flags)
        .arg("--task")
        .arg(task)
        .args(["--", "/usr/bin/touch"])
        .arg(marker)
        .output()
        .map_err(|e| e.to_string())?;
    Ok((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned()))
}

fn grant(task: &Path, key: &Path, by: &str, out: Option<&Path>) -> Result<(), String> {
    let mut c = Command::new(agentmon());
    c.arg("grant").arg(task).arg("--key").arg(key).args(["--by", by, "--valid-for", "1h"]);
    if let Some(o) = out {
        c.arg("--out").arg(o);
    }
    let o = c.output().map_err(|e| e.to_string())?;
    ensure(o.status.success(), || format!("agentmon grant: {}", String::from_utf8_lossy(&o.stderr)))
}

pub fn grants_decide_who_may_start_a_task() -> R {
    let d = workdir("grant");
    let out = d.join("out");
    std::fs::create_dir_all(d.join("keys")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let (k, o) = (d.join("keys/alice.key"), d.join("keys/mallory.key"));
    let alice = agentmon::audit::load_or_create_key(&k).map_err(|e| e.to_string())?;
    agentmon::audit::load_or_create_key(&o).map_err(|e| e.to_string())?;
    let keydir = d.join("keydir");
    std::fs::create_dir_all(&keydir).map_err(|e| e.to_string())?;
    let keys = keydir.join("grant-keys");
    std::fs::copy(agentmon::audit::public_key_path(&k), &keys).map_err(|e| e.to_string())?;
    let manifest = format!(
        "id: granted\nmode: execute\nprincipal: alice\nscope:\n  write: [\"{}/**\"]\n  exec: [\"/usr/bin/touch\"]\n",
        out.display()
    );
    let t = d.join("task.yaml");
    std::fs::write(&t, &manifest).map_err(|e| e.to_string())?;
    let k_flags = ["--standalone", "--grant-keys", keys.to_str().unwrap()];
    let ran = out.join("ran");

    // No grant: refused before the command runs.
    let (code, err) = exec(&d, &k_flags, &t, &ran)?;
    ensure(code == 125 && err.contains("no grant"), || format!("ungranted: exit {code}: {err}"))?;
    ensure(!ran.exists(), || "the ungranted task's command ran".into())?;
    // Granted by alice: runs, and its start says so.
    grant(&t, &k, "alice", None)?;
    let (code, err) = exec(&d, &k_flags, &t, &ran)?;
    eq(&format!("granted exit: {err}"), code, 0)?;
    ensure(ran.exists(), || "the granted task's command did not run".into())?;
    let text = std::fs::read_to_string(d.join("events.jsonl")).map_err(|e| e.to_string())?;
    let evs = parse_stream(&text)?.0;
    let start = evs.iter().find(|e| e.kind == Kind::TaskStart).ok_or("no task_start")?;
    let g = start.detail.get("grant").ok_or_else(|| format!("no grant in {:?}", start.detail))?;
    eq("granted by", g["by"].as_str(), Some("alice"))?;
    eq(
        "granting key",
        g["key"].as_str().map(str::to_string),
        Some(hex::encode(alice.verifying_key().to_bytes())),
    )?;
    // The manifest edited after the grant: refused.
    std::fs::write(&t, format!("{manifest}# widened later\n")).map_err(|e| e.to_string())?;
    std::fs::remove_file(&ran).map_err(|e| e.to_string())?;
    let (code, err) = exec(&d, &k_flags, &t, &ran)?;
    ensure(code == 125 && err.contains("edited after"), || format!("edited: exit {code}: {err}"))?;
    std::fs::write(&t, &manifest).map_err(|e| e.to_string())?;
    // Granted by a key the host does not take: refused.
    let other = d.join("mallory.grant");
    grant(&t, &o, "mallory", Some(&other))?;
    let flags = [&k_flags[..], &["--grant", other.to_str().unwrap()]].concat();
    let (code, err) = exec(&d, &flags, &t, &ran)?;
    ensure(code == 125 && err.contains("may not grant"), || format!("other key: exit {code}: {err}"))?;
    ensure(!ran.exists(), || "a task granted by an unknown key ran".into())?;
    // Enforced, and granted a scope over the grant keys: refused all the same (with
    // them writable it could add a key and grant itself anything later).
    let keyhole = d.join("keyhole.yaml");
    std::fs::write(
        &keyhole,
        format!(
            "id: keyhole\nmode: execute\nenforcement: enforce\nscope:\n  write: [\"{}/**\"]\n  exec: [\"/usr/bin/touch\"]\n",
            keydir.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    grant(&keyhole, &k, "alice", None)?;
    let (code, err) = exec(&d, &k_flags, &keyhole, &keydir.join("x"))?;
    let why = !support::can_enforce() || err.contains("agentmon writes or trusts");
    ensure(code == 125 && err.contains("cannot enforce") && why, || {
        format!("a scope over the grant keys: exit {code}: {err}")
    })?;

    // Through a daemon with grant keys: the granted task runs, an ungranted one is
    // refused and the attempt is in the daemon's record.
    let daemon = start_daemon(&d, &format!("grant_keys: {}\n", keys.display()))?;
    let (sock, all) = daemon_paths(&d);
    let result = (|| -> Result<(), String> {
        let via = ["--daemon", sock.to_str().unwrap()];
        let (code, err) = exec(&d, &via, &t, &ran)?;
        eq(&format!("granted through the daemon: {err}"), code, 0)?;
        let bare = d.join("bare.yaml");
        std::fs::write(&bare, manifest.replace("id: granted", "id: bare")).map_err(|e| e.to_string())?;
        let unmarked = out.join("bare-ran");
        let (code, err) = exec(&d, &via, &bare, &unmarked)?;
        ensure(code != 0 && err.contains("no grant"), || {
            format!("ungranted via daemon: exit {code}: {err}")
        })?;
        ensure(!unmarked.exists(), || "the daemon ran an ungranted task".into())?;
        Ok(())
    })();
    let stopped = stop(daemon);
    result?;
    stopped?;
    let evs = parse_stream(&std::fs::read_to_string(&all).map_err(|e| e.to_string())?)?.0;
    ensure(
        evs.iter().any(|e| {
            e.kind == Kind::TaskStart
                && e.task.as_deref() == Some("granted")
                && e.detail.get("grant").is_some_and(|g| g["by"] == "alice")
        }),
        || "the daemon's task_start does not name the grant".into(),
    )?;
    ensure(
        evs.iter().any(|e| {
            e.kind == Kind::Tamper
                && e.detail.get("attempt").and_then(|v| v.as_str())
                    == Some("starting a task without a valid grant")
        }),
        || "the daemon did not record the ungranted start".into(),
    )?;
    Ok(())
}

/// A granted task resumed by a restarted daemon: its new `task_start` names who
/// granted it, as the first did (before, the resumed start had no grant, and a
/// responder reading the stream from the restart saw an ungranted task).
pub fn a_resumed_task_names_its_grant() -> R {
    let d = workdir("grant-resumed");
    let out = d.join("out");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let k = d.join("keys/alice.key");
    std::fs::create_dir_all(d.join("keys")).map_err(|e| e.to_string())?;
    agentmon::audit::load_or_create_key(&k).map_err(|e| e.to_string())?;
    let keys = d.join("grant-keys");
    std::fs::copy(agentmon::audit::public_key_path(&k), &keys).map_err(|e| e.to_string())?;
    let t = d.join("task.yaml");
    std::fs::write(
        &t,
        format!("id: regranted\nmode: execute\nscope:\n  write: [\"{}/**\"]\n", out.display()),
    )
    .map_err(|e| e.to_string())?;
    grant(&t, &k, "alice", None)?;
    let config = format!("grant_keys: {}\n", keys.display());
    let first = start_daemon(&d, &config)?;
    let (sock, all) = daemon_paths(&d);
    let go = out.join("go");
    let child = Command::new(agentmon())
        .args(["exec", "--quiet", "--daemon"])
        .arg(&sock)
        .arg("--task")
        .arg(&t)
        .args(["--", "/bin/sh", "-c", &format!("while [ ! -e {} ]; do sleep 0.1; done", go.display())])
        .spawn()
        .map_err(|e| e.to_string())?;
    let limit = std::time::Duration::from_secs(20) * support::slowdown();
    let starts = || -> Vec<agentmon::event::Event> {
        let text = std::fs::read_to_string(&all).unwrap_or_default();
        let evs = parse_stream(&text).map(|(e, _)| e).unwrap_or_default();
        evs.into_iter()
            .filter(|e| e.kind == Kind::TaskStart && e.task.as_deref() == Some("regranted"))
            .collect()
    };
    let started = support::wait(limit, || !starts().is_empty() && d.join("state/regranted.json").exists());
    let said1 = stop(first)?;
    let second = start_daemon(&d, &config)?;
    let resumed = support::wait(limit, || starts().len() >= 2);
    std::fs::write(&go, "").map_err(|e| e.to_string())?;
    let status = support::exit_within(&mut { child }, limit);
    let said2 = stop(second)?;
    ensure(started, || format!("the task never started: {said1}"))?;
    ensure(resumed, || format!("the task was not resumed: {said2}"))?;
    eq("exec exit", status, Some(Some(0)))?;
    let grants: Vec<(Option<bool>, Option<String>)> = starts()
        .iter()
        .map(|e| {
            (
                e.detail.get("resumed").and_then(|v| v.as_bool()),
                e.detail.get("grant").and_then(|g| g["by"].as_str()).map(String::from),
            )
        })
        .collect();
    eq(
        "task_starts (resumed, granted by)",
        grants,
        vec![(None, Some("alice".into())), (Some(true), Some("alice".into()))],
    )?;
    Ok(())
}
