//! The audit chain and replay of a real run: `agentmon exec --audit` writes a chain
//! that `agentmon audit verify` accepts (and rejects once a record is edited or the
//! tail cut); `agentmon replay` rebuilds the same events from the events file, the
//! audit chain and NATS, and re-judges them under other rules.

use std::{path::Path, process::Command};

use agentmon::event::{Event, Kind};

use crate::{
    R,
    support::{
        self, SCENARIO_ENV, agentmon, audited, ensure, eq, fill, nats::suite_url, run_agentmon_with, workdir,
    },
};

fn cli(args: &[&str]) -> Result<(i32, String, String), String> {
    let out = Command::new(agentmon()).args(args).output().map_err(|e| e.to_string())?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn replayed(args: &[&str]) -> Result<Vec<Event>, String> {
    let mut a = vec!["replay", "--format", "json"];
    a.extend_from_slice(args);
    let (code, out, err) = cli(&a)?;
    ensure(code == 0, || format!("replay {args:?}: exit {code}: {err}"))?;
    out.lines().map(|l| serde_json::from_str(l).map_err(|e| format!("replay output {l}: {e}"))).collect()
}

fn ids(evs: &[Event]) -> Vec<String> {
    let mut v: Vec<String> = evs.iter().map(|e| e.id.to_string()).collect();
    v.sort();
    v
}

pub fn audit_chain_and_replay() -> R {
    let url = suite_url()?;
    let d = workdir("audit-replay");
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let task = d.join("task.yaml");
    std::fs::write(
        &task,
        format!(
            "id: audited\nmode: execute\nscope:\n  write: [\"{}/out/f*\"]\n  exec: [\"{}\"]\n",
            d.display(),
            me.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let (chain, key, spool) = (d.join("audit.jsonl"), d.join("keys/audit.key"), d.join("spool"));
    let host = format!("audit-{}", uuid::Uuid::now_v7().simple());
    let flags = [
        "--task",
        task.to_str().unwrap(),
        "--audit",
        chain.to_str().unwrap(),
        "--audit-key",
        key.to_str().unwrap(),
        "--nats",
        &url,
        "--nats-host",
        &host,
        "--spool",
        spool.to_str().unwrap(),
    ];
    let cmd = [me.display().to_string(), d.display().to_string(), "4".into(), "5".into()];
    let run = run_agentmon_with(&flags, &cmd, &[(SCENARIO_ENV, "stream")], &d)?;
    eq("exit code", run.code, 0)?;

    // The chain verifies against the key's public half, and holds the whole run.
    let pubkey = agentmon::audit::public_key_path(&key);
    let (code, out, err) =
        cli(&["audit", "verify", chain.to_str().unwrap(), "--pubkey", pubkey.to_str().unwrap()])?;
    eq("verify exit", (code, err.as_str()), (0, ""))?;
    ensure(out.contains("intact") && out.contains("trusted key"), || format!("verify said: {out}"))?;
    let text = std::fs::read_to_string(&chain).map_err(|e| e.to_string())?;
    let records: Vec<serde_json::Value> =
        text.lines().map(serde_json::from_str).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let kinds: Vec<&str> =
        records.iter().filter(|r| r["type"] == "event").filter_map(|r| r["body"]["kind"].as_str()).collect();
    eq("first recorded kind", kinds.first().copied(), Some("task_start"))?;
    eq("last recorded kind", kinds.last().copied(), Some("task_end"))?;
    eq("events in the chain", kinds.len(), run.events.len())?;
    eq("alerts in the chain", records.iter().filter(|r| r["type"] == "alert").count(), run.alerts.len())?;
    ensure(records.last().is_some_and(|r| r["type"] == "checkpoint"), || {
        "the chain does not end signed".into()
    })?;

    // An edited record, then a cut tail: each found, exit 1.
    let lines: Vec<&str> = text.lines().collect();
    let edited = d.join("edited.jsonl");
    let target = lines.iter().position(|l| l.contains("\"file_create\"")).ok_or("no file_create record")?;
    let mut copy: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    copy[target] = copy[target].replacen("/out/f", "/out/g", 1);
    std::fs::write(&edited, copy.join("\n") + "\n").map_err(|e| e.to_string())?;
    let (code, out, _) = cli(&["audit", "verify", edited.to_str().unwrap()])?;
    ensure(code == 1 && out.contains(&format!("line {}", target + 1)), || {
        format!("edited record: exit {code}: {out}")
    })?;
    let cut = d.join("cut.jsonl");
    std::fs::write(&cut, lines[..lines.len() - 2].join("\n") + "\n").map_err(|e| e.to_string())?;
    let (code, out, _) = cli(&["audit", "verify", cut.to_str().unwrap()])?;
    ensure(code == 1, || format!("cut tail: exit {code}: {out}"))?;
    huge_garbage_is_reported(&d, lines[0])?;

    // Replay rebuilds the same events from each source.
    let want = ids(&run.events);
    let events_file = d.join(format!("events-{}.jsonl", std::process::id()));
    eq(
        "replay of the events file",
        ids(&replayed(&["--from", events_file.to_str().unwrap()])?),
        want.clone(),
    )?;
    eq("replay of the audit chain", ids(&replayed(&["--from", chain.to_str().unwrap()])?), want.clone())?;
    eq("replay from NATS", ids(&replayed(&["--from", &url, "--host", &host])?), want)?;
    let only = replayed(&["--from", chain.to_str().unwrap(), "--task", "nobody"])?;
    eq("replay of another task", only.len(), 0)?;

    // What-if: a rule that flags every file creation changes their verdicts.
    let rules = d.join("rules");
    std::fs::create_dir_all(&rules).map_err(|e| e.to_string())?;
    std::fs::write(
        rules.join("r.yaml"),
        "rules:\n  - id: test.no-new-files\n    description: no new files\n    severity: high\n    match:\n      \
         kinds: [file_create]\n    action: alert\n    examples:\n      match:\n        - {kind: file_create, path: /x}\n      \
         no_match:\n        - {kind: file_delete, path: /x}\n",
    )
    .map_err(|e| e.to_string())?;
    let (code, out, err) = cli(&[
        "replay",
        "--from",
        chain.to_str().unwrap(),
        "--rules",
        rules.to_str().unwrap(),
        "--format",
        "json",
    ])?;
    eq("what-if exit", (code, err.as_str()), (0, ""))?;
    let lines: Vec<serde_json::Value> =
        out.lines().map(serde_json::from_str).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let creates = run.of(Kind::FileCreate).len();
    let changed: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["now"]["rule"] == "test.no-new-files").collect();
    ensure(creates > 0 && changed.len() == creates, || {
        format!("what-if: {} changes for {creates} creations: {out}", changed.len())
    })?;
    support::ensure(Path::new(&chain).exists(), || "chain vanished".into())?;
    Ok(())
}

/// Records the audit chain took into its buffer (answered Ok) and then could not
/// write, the disk under it being full, are lost: they are counted, and once the
/// chain writes again it says itself how many it missed — exactly as many as are
/// absent from it — and still verifies.
/// After the chain's first record, 1 GiB of NULs with no line end (sparse): verify
/// reports the line and never holds it whole. Its heap is limited to 256 MiB here;
/// reading the line whole made it abort on allocation.
fn huge_garbage_is_reported(d: &Path, first: &str) -> R {
    use std::{io::Write, os::unix::process::CommandExt};
    let huge = d.join("huge.jsonl");
    let mut f = std::fs::File::create(&huge).map_err(|e| e.to_string())?;
    writeln!(f, "{first}").map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    f.set_len(len + (1 << 30)).map_err(|e| e.to_string())?;
    drop(f);
    let mut c = Command::new(agentmon());
    c.args(["audit", "verify"]).arg(&huge);
    // SAFETY: only setrlimit runs between fork and exec.
    unsafe {
        c.pre_exec(|| {
            let l = libc::rlimit { rlim_cur: 256 << 20, rlim_max: 256 << 20 };
            match libc::setrlimit(libc::RLIMIT_DATA, &l) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        })
    };
    let out = c.output().map_err(|e| e.to_string())?;
    let said = String::from_utf8_lossy(&out.stdout);
    let _ = std::fs::remove_file(&huge);
    Ok(ensure(
        out.status.code() == Some(1) && said.contains("line 2") && said.contains("longer than any record"),
        || {
            format!(
                "verify of 1 GiB of garbage: {:?}: {said}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        },
    )?)
}

pub fn audit_chain_counts_what_a_full_disk_dropped() -> R {
    use std::sync::Arc;

    use agentmon::{audit::AuditChain, event::Timestamp, sink::Fanout};
    let d = workdir("audit-full");
    let disk = d.join("disk");
    std::fs::create_dir_all(&disk).map_err(|e| e.to_string())?;
    nix::mount::mount(Some("tmpfs"), &disk, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=256k"))
        .map_err(|e| format!("mounting a small tmpfs: {e}"))?;
    let path = disk.join("audit.jsonl");
    let r = (|| {
        let chain = AuditChain::open(&path, &d.join("audit.key"), 100_000).map_err(|e| e.to_string())?;
        let mut out = Fanout::new(vec![Box::new(chain)]);
        let host: Arc<str> = "audit-full".into();
        let ev = |i: usize| {
            let mut e = Event::new(Kind::FileWrite, Timestamp::now(), host.clone());
            e.path = Some(format!("/work/f{i}"));
            e
        };
        const SENT: usize = 75;
        for i in 0..20 {
            out.send(&ev(i));
        }
        out.flush();
        let filler = fill(&disk)?;
        // Taken into the chain's buffer: Ok to the sender; then the flush fails.
        for i in 20..70 {
            out.send(&ev(i));
        }
        out.flush();
        std::fs::remove_file(&filler).map_err(|e| e.to_string())?;
        for i in 70..SENT {
            out.send(&ev(i));
        }
        out.flush();
        out.report_losses(&host, Timestamp::now());
        let failed = out.close();
        ensure(failed.is_empty(), || format!("closing: {failed:?}"))?;
        let evs = audited(&path)?;
        let landed = evs.iter().filter(|e| e.kind == Kind::FileWrite).count();
        ensure(landed < SENT, || "nothing was lost: the disk never filled".into())?;
        let key = format!("output:audit chain {}", path.display());
        let said: u64 = evs
            .iter()
            .filter(|e| e.kind == Kind::Loss)
            .filter_map(|e| e.lost.as_ref().and_then(|l| l.get(&key)).copied())
            .max()
            .ok_or_else(|| format!("no loss record of the chain in it ({landed} of {SENT} landed)"))?;
        eq("records the chain says it missed", said, (SENT - landed) as u64)?;
        let (code, _, err) = cli(&["audit", "verify", path.to_str().unwrap()])?;
        eq(&format!("audit verify: {err}"), code, 0)?;
        Ok::<(), String>(())
    })();
    let _ = nix::mount::umount(&disk);
    Ok(r?)
}

/// An agent that reads agentmon's private key can sign as agentmon (audit records,
/// revokes, kill signals). An observed task, and an enforced one on the Landlock
/// tier (reads are not limited there), can read it: agentmon must say so at once,
/// whatever the sensitive patterns (the key here has no `.key` to match
/// `**/*.key`). On the BPF LSM tier an enforced task's read is refused. A file of
/// the same name elsewhere is nothing. Before, the read was not an event at all,
/// and on the LSM tier it succeeded.
pub fn reading_agentmons_key_is_tampering() -> R {
    key_read("observed", false)?;
    if support::can_enforce() { key_read("enforced", true) } else { Ok(()) }
}

/// A NATS token given as a flag is readable by every local user in agentmon's
/// /proc/PID/cmdline (an agent could then publish as agentmon). Once parsed, agentmon
/// hides it there and says to use the environment. Before, the task read it.
pub fn secrets_on_the_command_line_are_hidden() -> R {
    let d = workdir("argv-secret");
    std::fs::create_dir_all(d.join("out")).map_err(|e| e.to_string())?;
    let token = "tok-0f9e8d7c6b5a";
    let spool = d.join("spool");
    // No broker at this address: the events wait in the spool, which is beside the point.
    let flags = ["--nats", "nats://127.0.0.1:9", "--spool", spool.to_str().unwrap(), "--nats-token", token];
    let seen = d.join("out/cmdline");
    let cmd = [
        "/usr/bin/sh".to_string(),
        "-c".into(),
        format!("/usr/bin/tr '\\0' ' ' < /proc/$PPID/cmdline > {}", seen.display()),
    ];
    let run = run_agentmon_with(&flags, &cmd, &[], &d)?;
    let cmdline = std::fs::read_to_string(&seen).map_err(|e| format!("{e}; stderr: {}", run.stderr))?;
    ensure(cmdline.contains("--nats-token") && cmdline.contains("exec"), || {
        format!("not agentmon's command line: {cmdline:?}")
    })?;
    ensure(!cmdline.contains(token), || format!("the token is readable in agentmon's cmdline: {cmdline:?}"))?;
    ensure(cmdline.contains(&"*".repeat(token.len())), || format!("the token's place: {cmdline:?}"))?;
    ensure(run.stderr.contains("AGENTMON_NATS_TOKEN"), || {
        format!("no warning naming the environment: {}", run.stderr)
    })?;
    // Given in the environment, as the warning says, it is not the agent's either
    // (before, the command inherited agentmon's whole environment).
    let seen = d.join("out/environ");
    let cmd = ["/usr/bin/sh".to_string(), "-c".into(), format!("/usr/bin/env > {}", seen.display())];
    let flags = ["--nats", "nats://127.0.0.1:9", "--spool", spool.to_str().unwrap()];
    let run = run_agentmon_with(&flags, &cmd, &[("AGENTMON_NATS_TOKEN", token)], &d)?;
    let environ = std::fs::read_to_string(&seen).map_err(|e| format!("{e}; stderr: {}", run.stderr))?;
    ensure(environ.contains("PATH=") && !environ.contains(token), || {
        format!("the command's environment holds the token (or is not its environment): {environ}")
    })?;
    Ok(())
}

fn key_read(name: &str, enforce: bool) -> R {
    let d = workdir(&format!("audit-key-read-{name}"));
    let task = d.join("task.yaml");
    std::fs::create_dir_all(d.join("out")).map_err(|e| e.to_string())?;
    std::fs::write(
        &task,
        format!(
            "id: keyread\nmode: execute\n{}scope:\n  write: [\"{}/out/**\"]\n  exec: [\"/usr/bin/**\"]\n",
            if enforce { "enforcement: enforce\n" } else { "" },
            d.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let (chain, key, decoy) = (d.join("audit.jsonl"), d.join("keys/signing"), d.join("other/signing"));
    std::fs::create_dir_all(d.join("other")).map_err(|e| e.to_string())?;
    std::fs::write(&decoy, "not a key").map_err(|e| e.to_string())?;
    let flags = [
        "--task",
        task.to_str().unwrap(),
        "--audit",
        chain.to_str().unwrap(),
        "--audit-key",
        key.to_str().unwrap(),
    ];
    // Observed, it is also opened to read and write (O_RDWR reads it as well), and
    // read by other names: a hard link, and a bind mount of its directory in a mount
    // namespace of its own (the file's name and path are not the key's there).
    let (link, bound) = (d.join("out/notes.txt"), d.join("out/m/signing"));
    // A symlink to it, read, and opened to read and write: the name the open asks by
    // says nothing of the key, and on the BPF LSM tier a refused open has no file of
    // its own (before, no record of either).
    let sym = d.join("out/sym");
    let others = if enforce {
        format!(
            "/usr/bin/ln -s {k} {sym}; /usr/bin/cat {sym} > /dev/null; (exec 3<> {sym}) 2> /dev/null; ",
            k = key.display(),
            sym = sym.display()
        )
    } else {
        format!(
            "exec 3<> {k}; /usr/bin/ln {k} {link}; /usr/bin/cat {link} > /dev/null; \
             /usr/bin/head -c 1 /proc/$PPID/mem > /dev/null 2>&1; echo $PPID > {ppid}; \
             /usr/bin/cat /proc/$PPID/comm >> {ppid}; /usr/bin/cat /proc/$PPID/environ > /dev/null; \
             /usr/bin/cat /proc/$PPID/maps /proc/$PPID/status /proc/$PPID/stat > /dev/null; \
             /usr/bin/mkdir -p {out}/$PPID; echo x > {out}/$PPID/mem; /usr/bin/cat {out}/$PPID/mem > /dev/null; \
             /usr/bin/mkdir {m}; /usr/bin/unshare -m /usr/bin/sh -c \
             '/usr/bin/mount --bind {keys} {m} && /usr/bin/cat {bound} > /dev/null'; ",
            k = key.display(),
            link = link.display(),
            m = d.join("out/m").display(),
            keys = d.join("keys").display(),
            bound = bound.display(),
            ppid = d.join("out/ppid").display(),
            out = d.join("out").display(),
        )
    };
    // A file outside the write scope opened O_PATH|O_TRUNC (truncates nothing) and
    // O_RDONLY|O_CREAT (exists: creates nothing) is no side effect.
    let no_effect = format!(
        "/usr/bin/python3 -c \"import os; os.close(os.open('{decoy}', os.O_PATH | os.O_TRUNC | os.O_CREAT)); \
         os.close(os.open('{decoy}', os.O_RDONLY | os.O_CREAT))\"; ",
        decoy = decoy.display()
    );
    let script = format!(
        "/usr/bin/cat {k} > /dev/null; echo $? > {o}; {others}{no_effect}/usr/bin/cat {decoy} > /dev/null",
        k = key.display(),
        o = d.join("out/status").display(),
        decoy = decoy.display()
    );
    let cmd = ["/usr/bin/sh".to_string(), "-c".into(), script];
    let run = run_agentmon_with(&flags, &cmd, &[], &d)?;
    eq(&format!("{name}: exit code ({})", run.stderr), run.code, 0)?;
    let p = |x: &std::path::Path| x.display().to_string();
    let key_path = p(&key);
    let (read, memory, environ, layout) = (
        "agentmon's private key read",
        "agentmon's memory opened",
        "agentmon's environment read",
        "agentmon's /proc file read",
    );
    // (Observed, the mount namespace is a tamper record of its own.)
    let tampers: Vec<&Event> = run
        .of(Kind::Tamper)
        .into_iter()
        .filter(|e| [read, memory, environ, layout].iter().any(|a| e.detail["attempt"] == *a))
        .collect();
    eq(
        &format!("{name}: tamper records (path, task, attempt)"),
        tampers
            .iter()
            .map(|e| {
                (
                    e.path.clone(),
                    e.task.as_deref().map(String::from),
                    e.detail["attempt"].as_str().map(String::from),
                )
            })
            .collect::<Vec<_>>(),
        if enforce {
            // Through the symlink too, the record names the key (opened, or the file
            // the hook refused). Its O_RDWR open is the key's read refused on the LSM
            // tier; Landlock refuses it as a write, before any read.
            let n = if support::tier() == "bpf-lsm" { 3 } else { 2 };
            vec![(key_path.clone(), read); n]
        } else {
            // The command's parent is agentmon (the process that holds the keys).
            let ppid = std::fs::read_to_string(d.join("out/ppid")).map_err(|e| e.to_string())?;
            eq("observed: the command's parent", ppid.lines().nth(1), Some("agentmon"))?;
            // Its /proc files (not a file of the same name in a directory named so).
            let proc = |f: &str| format!("/proc/{}/{f}", ppid.lines().next().unwrap_or_default());
            vec![
                (key_path.clone(), read),
                (key_path.clone(), read),
                (p(&link), read),
                (proc("mem"), memory),
                (proc("environ"), environ),
                // Its memory's layout; not its status (any `ps`).
                (proc("maps"), layout),
                (p(&bound), read),
            ]
        }
        .into_iter()
        .map(|(k, a)| (Some(k), Some("keyread".to_string()), Some(a.to_string())))
        .collect::<Vec<_>>(),
    )?;
    ensure(run.alerts.iter().any(|a| a.event.id == tampers[0].id && a.severity == "high"), || {
        format!("{name}: no high alert for the key's read: {:?}", run.alerts)
    })?;
    let refused = enforce && support::tier() == "bpf-lsm";
    let status = std::fs::read_to_string(d.join("out/status")).map_err(|e| e.to_string())?;
    eq(&format!("{name} on the {} tier: the read refused", support::tier()), status.trim() != "0", refused)?;
    for t in &tampers[..2] {
        eq(
            &format!("{name}: the read's error ({:?})", t.path),
            t.error.as_deref(),
            refused.then_some("EACCES"),
        )?;
    }
    if refused {
        // Refused through the symlink: the name asked by beside the key's.
        let sym = serde_json::json!(p(&sym));
        let asked: Vec<_> = tampers.iter().filter_map(|t| t.detail.get("requested_path")).collect();
        eq(&format!("{name}: the names asked by"), asked, vec![&sym, &sym])?;
    }
    let decoy_path = decoy.display().to_string();
    ensure(!run.events.iter().any(|e| e.path.as_deref() == Some(decoy_path.as_str())), || {
        format!("{name}: the read of a file of the same name was reported")
    })?;
    Ok(())
}
