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

/// Runs `f` with the `--daemon` flags of a daemon in `dir` configured with
/// `config`, stops it, and returns what it recorded.
fn with_daemon(
    dir: &Path,
    config: &str,
    f: impl FnOnce(&[&str]) -> Result<(), String>,
) -> Result<Vec<agentmon::event::Event>, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let daemon = start_daemon(dir, config)?;
    let (sock, all) = daemon_paths(dir);
    let result = f(&["--daemon", sock.to_str().unwrap()]);
    let stopped = stop(daemon);
    result?;
    stopped?;
    Ok(parse_stream(&std::fs::read_to_string(&all).map_err(|e| e.to_string())?)?.0)
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

/// Whether any event of task `sub` is marked as running on no grant.
fn made_unsigned(evs: &[agentmon::event::Event]) -> bool {
    evs.iter().any(|e| e.task.as_deref() == Some("sub") && e.unsigned)
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
    eq("a granted task's events are not unsigned", evs.iter().any(|e| e.unsigned), false)?;
    eq(
        "the manifest's hash",
        start.detail.get("manifest_sha256").and_then(|v| v.as_str()).map(String::from),
        Some(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(manifest.as_bytes()))),
    )?;
    // Where no grant is asked for, every event of the task says it runs on none.
    let loose = d.join("loose.jsonl");
    let ran_loose = Command::new(agentmon())
        .args(["exec", "--quiet", "--standalone", "--events"])
        .arg(&loose)
        .arg("--task")
        .arg(&t)
        .args(["--", "/usr/bin/touch"])
        .arg(out.join("loose"))
        .output()
        .map_err(|e| e.to_string())?;
    let said = String::from_utf8_lossy(&ran_loose.stderr);
    eq(&format!("ungranted exec: {said}"), ran_loose.status.code(), Some(0))?;
    let levs = parse_stream(&std::fs::read_to_string(&loose).map_err(|e| e.to_string())?)?.0;
    let of_task: Vec<&agentmon::event::Event> = levs.iter().filter(|e| e.task.is_some()).collect();
    ensure(of_task.len() >= 3 && of_task.iter().all(|e| e.unsigned), || {
        format!(
            "{} events of the ungranted task, unsigned: {:?}",
            of_task.len(),
            of_task.iter().map(|e| (e.kind, e.unsigned)).collect::<Vec<_>>()
        )
    })?;
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
    let evs = with_daemon(&d, &format!("grant_keys: {}\n", keys.display()), |via| {
        let (code, err) = exec(&d, via, &t, &ran)?;
        eq(&format!("granted through the daemon: {err}"), code, 0)?;
        let bare = d.join("bare.yaml");
        std::fs::write(&bare, manifest.replace("id: granted", "id: bare")).map_err(|e| e.to_string())?;
        let unmarked = out.join("bare-ran");
        let (code, err) = exec(&d, via, &bare, &unmarked)?;
        ensure(code != 0 && err.contains("no grant"), || {
            format!("ungranted via daemon: exit {code}: {err}")
        })?;
        ensure(!unmarked.exists(), || "the daemon ran an ungranted task".into())?;
        Ok(())
    })?;
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
    // `require_signed: false` (a host moving to grants): a task without a grant
    // starts, marked unsigned; a grant given is checked all the same.
    let lax = format!("grant_keys: {}\nrequire_signed: false\n", keys.display());
    let evs = with_daemon(&d.join("lax"), &lax, |via| {
        let unsigned = d.join("unsigned.yaml");
        std::fs::write(&unsigned, manifest.replace("id: granted", "id: unsigned"))
            .map_err(|e| e.to_string())?;
        let (code, err) = exec(&d, via, &unsigned, &out.join("unsigned-ran"))?;
        eq(&format!("no grant, not required: {err}"), code, 0)?;
        let flags = [via, &["--grant", other.to_str().unwrap()]].concat();
        let (code, err) = exec(&d, &flags, &t, &out.join("mallory-ran"))?;
        ensure(code != 0 && err.contains("may not grant"), || {
            format!("a bad grant, not required: exit {code}: {err}")
        })
    })?;
    let marks: Vec<bool> =
        evs.iter().filter(|e| e.task.as_deref() == Some("unsigned")).map(|e| e.unsigned).collect();
    ensure(marks.len() >= 2 && marks.iter().all(|u| *u), || {
        format!("the unsigned task's records: {marks:?}")
    })?;
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

/// Delegation across hosts: alice's grant of `lead` on one host delegates to bob,
/// whose grant of a sub-task travels as a chain to another host's daemon, which
/// trusts only alice. The sub-task runs there under the chain — its start names the
/// grant `lead` started under, its events carry `lead` in their `task_chain` — and
/// every forged or widened chain is refused before its command runs, the attempt
/// recorded.
pub fn a_grant_chain_carries_authority_to_another_host() -> R {
    use agentmon::task::grant::{Chain, File, Grant};
    let d = workdir("grant-chain");
    let out = d.join("out");
    std::fs::create_dir_all(out.join("sub")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(d.join("keys")).map_err(|e| e.to_string())?;
    let key = |n: &str| -> Result<(std::path::PathBuf, ed25519_dalek::SigningKey), String> {
        let p = d.join(format!("keys/{n}.key"));
        agentmon::audit::load_or_create_key(&p).map(|k| (p, k)).map_err(|e| e.to_string())
    };
    let ((alice, _), (bob, bob_key), (_, mallory_key)) = (key("alice")?, key("bob")?, key("mallory")?);
    let keys = d.join("grant-keys");
    std::fs::copy(agentmon::audit::public_key_path(&alice), &keys).map_err(|e| e.to_string())?;
    let write = |name: &str, text: &str| -> Result<std::path::PathBuf, String> {
        let p = d.join(name);
        std::fs::write(&p, text).map(|()| p).map_err(|e| e.to_string())
    };
    let lead_text = |id: &str, extra: &str| {
        format!(
            "id: {id}\nmode: execute\n{extra}agent: spiffe://example/lead\nprincipal: alice\nexpires_in: 1h\n\
             scope:\n  write: [\"{}/**\"]\n  exec: [\"/usr/bin/touch\"]\n",
            out.display()
        )
    };
    let sub_text = |id: &str, under: &str| {
        format!(
            "id: {id}\nmode: execute\nexpires_in: 30m\nscope:\n  write: [\"{under}/**\"]\n  exec: [\"/usr/bin/touch\"]\n"
        )
    };
    let grant_under = |task: &Path, key: &Path, by: &str, under: &Path| {
        Command::new(agentmon())
            .arg("grant")
            .arg(task)
            .arg("--key")
            .arg(key)
            .args(["--by", by, "--valid-for", "1h", "--under"])
            .arg(under)
            .output()
            .map_err(|e| e.to_string())
    };
    // Host A: alice grants `lead`, delegating to bob; it runs there.
    let lead = write("lead.yaml", &lead_text("lead", ""))?;
    let bob_pub = agentmon::audit::public_key_path(&bob);
    let grant_delegating = |task: &Path| -> Result<(), String> {
        let o = Command::new(agentmon())
            .arg("grant")
            .arg(task)
            .arg("--key")
            .arg(&alice)
            .args(["--by", "alice", "--delegate"])
            .arg(&bob_pub)
            .output()
            .map_err(|e| e.to_string())?;
        ensure(o.status.success(), || {
            format!("grant {}: {}", task.display(), String::from_utf8_lossy(&o.stderr))
        })
    };
    grant_delegating(&lead)?;
    let k_flags = ["--standalone", "--grant-keys", keys.to_str().unwrap()];
    let (code, err) = exec(&d, &k_flags, &lead, &out.join("lead-ran"))?;
    eq(&format!("lead: {err}"), code, 0)?;
    let evs = parse_stream(&std::fs::read_to_string(d.join("events.jsonl")).map_err(|e| e.to_string())?)?.0;
    let lead_start = evs.iter().find(|e| e.kind == Kind::TaskStart).ok_or("no task_start for lead")?;
    let lead_grant = lead_start.detail.get("grant").and_then(|g| g["id"].as_str()).map(String::from);
    ensure(lead_grant.as_ref().is_some_and(|g| g.len() == 64), || {
        format!("lead's grant id: {lead_grant:?}")
    })?;

    // bob grants `sub` under it: a chain. A wider one the command will not write.
    let sub_dir = out.join("sub");
    let sub = write("sub.yaml", &sub_text("sub", sub_dir.to_str().unwrap()))?;
    let o = grant_under(&sub, &bob, "bob", &lead)?;
    ensure(o.status.success(), || format!("grant sub: {}", String::from_utf8_lossy(&o.stderr)))?;
    let wide_text = sub_text("wide", "/etc");
    let wide = write("wide.yaml", &wide_text)?;
    let o = grant_under(&wide, &bob, "bob", &lead)?;
    let said = String::from_utf8_lossy(&o.stderr);
    ensure(!o.status.success() && said.contains("not within its parent's"), || {
        format!("grant wide: {said}")
    })?;
    // Made with the library instead: bob's chain over /etc, and mallory's (a key the
    // root does not delegate to) over a task that is within.
    let lead_grant_file =
        std::fs::read_to_string(agentmon::task::grant::path_for(&lead)).map_err(|e| e.to_string())?;
    let forge = |k: &ed25519_dalek::SigningKey, task: &Path, text: &str, by: &str| -> Result<(), String> {
        let File::One(root) = agentmon::task::grant::parse(&lead_grant_file)? else {
            return Err("lead's grant is not one grant".into());
        };
        let until = agentmon::event::Timestamp(agentmon::event::Timestamp::now().0 + 600_000_000_000);
        let g = Grant::sign_under(k, text, by, until, Some(root.id()), Vec::new());
        let c = Chain::under(File::One(root), lead_text("lead", ""), g);
        let path = agentmon::task::grant::path_for(task);
        std::fs::write(path, serde_json::to_string(&c).map_err(|e| e.to_string())?).map_err(|e| e.to_string())
    };
    forge(&bob_key, &wide, &wide_text, "bob")?;
    let stolen_text = sub_text("stolen", sub_dir.to_str().unwrap());
    let stolen = write("stolen.yaml", &stolen_text)?;
    forge(&mallory_key, &stolen, &stolen_text, "mallory")?;
    // An enforced lead: its sub-task is enforced too, wherever it runs.
    let strict = write("strict.yaml", &lead_text("strict", "enforcement: enforce\n"))?;
    grant_delegating(&strict)?;
    let loose = write("loose.yaml", &sub_text("loose", sub_dir.to_str().unwrap()))?;
    let o = grant_under(&loose, &bob, "bob", &strict)?;
    ensure(o.status.success(), || format!("grant loose: {}", String::from_utf8_lossy(&o.stderr)))?;

    // Host B: a daemon that trusts alice only.
    let evs = with_daemon(&d.join("host-b"), &format!("grant_keys: {}\n", keys.display()), |via| {
        let (code, err) = exec(&d, via, &sub, &sub_dir.join("ran"))?;
        eq(&format!("sub under the chain: {err}"), code, 0)?;
        for (t, marker, why) in [
            (&wide, Path::new("/etc/agentmon-grant-chain"), "not within its parent's"),
            (&stolen, &sub_dir.join("stolen"), "does not delegate"),
            (&loose, &sub_dir.join("loose"), "start it with --enforce"),
        ] {
            let (code, err) = exec(&d, via, t, marker)?;
            ensure(code != 0 && err.contains(why), || format!("{}: exit {code}: {err}", t.display()))?;
            ensure(!marker.exists(), || format!("{} ran", t.display()))?;
        }
        Ok(())
    })?;
    let start = evs
        .iter()
        .find(|e| e.kind == Kind::TaskStart && e.task.as_deref() == Some("sub"))
        .ok_or("no task_start for sub on host B")?;
    let g = start.detail.get("grant").ok_or("sub's start names no grant")?;
    eq("sub granted by", g["by"].as_str(), Some("bob"))?;
    eq("sub's chain: the task above", g["chain"][0]["task"].as_str(), Some("lead"))?;
    eq(
        "sub's chain: lead's grant, as host A recorded it",
        g["chain"][0]["grant"].as_str().map(String::from),
        lead_grant.clone(),
    )?;
    eq("sub's chain: granted by", g["chain"][0]["by"].as_str(), Some("alice"))?;
    eq(
        "sub's agent, its parent's",
        start.detail.get("agent").and_then(|v| v.as_str()),
        Some("spiffe://example/lead"),
    )?;
    eq("the sub-task's events run on a grant", made_unsigned(&evs), false)?;
    // Named with its grant: no task of this host can be named so.
    let made = evs
        .iter()
        .find(|e| e.kind == Kind::FileCreate && e.path.as_deref() == sub_dir.join("ran").to_str())
        .ok_or("no file_create of sub's marker on host B")?;
    eq(
        "the marker's task_chain",
        made.task_chain.as_ref().map(|c| c.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        lead_grant.as_ref().map(|g| vec![format!("lead@{}", &g[..16])]),
    )?;
    let refused: Vec<&str> = evs
        .iter()
        .filter(|e| {
            e.kind == Kind::Tamper
                && e.detail.get("attempt").and_then(|v| v.as_str())
                    == Some("starting a task without a valid grant")
        })
        .filter_map(|e| e.reason.as_deref())
        .collect();
    for why in ["not within its parent's", "does not delegate"] {
        ensure(refused.iter().any(|r| r.contains(why)), || {
            format!("host B recorded no refusal for {why:?}: {refused:?}")
        })?;
    }
    Ok(())
}
