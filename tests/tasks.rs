//! Tasks and policy on the real kernel path: verdicts, alerts, delegation, rule
//! hot reload, and `agentmon rules check`.

use std::{path::Path, process::Command, time::Duration};

use agentmon::event::{Dst, Event, Kind};

use crate::{
    R,
    support::{self, SCENARIO_ENV, ensure, eq, run_agentmon_with, workdir},
};

fn verdict(e: &Event) -> Option<&str> {
    e.verdict.as_deref()
}

/// A scripted agent does in-scope and out-of-scope things; each verdict is asserted.
pub fn task_verdicts_and_alerts() -> R {
    let d = workdir("task-verdicts");
    let repo = d.join("repo");
    std::fs::create_dir_all(repo.join("build")).map_err(|e| e.to_string())?;
    for f in ["build/x.o", "keep.txt", ".env"] {
        std::fs::write(repo.join(f), b"x").map_err(|e| e.to_string())?;
    }
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let manifest = format!(
        "id: verdicts\nagent: spiffe://test/agent\nprincipal: ci@test\nmode: execute\nexpires_in: 10m\n\
         scope:\n  read: [\"{r}/**\"]\n  write: [\"{r}/**\"]\n  delete: [\"{r}/build/**\"]\n  \
         exec: [\"{me}\"]\napproval_required: [rename]\n",
        r = repo.display(),
        me = me.display()
    );
    let run = support::run_as_task(&d, &manifest, "task_agent")?;
    eq("exit", run.code, 0)?;
    let p = |f: &str| repo.join(f);
    let check = |kind: Kind, path: &Path, want: &str, rule: Option<&str>| -> R {
        let e = run.find(kind, path)?;
        eq(&format!("{kind:?} {} verdict", path.display()), verdict(e), Some(want))?;
        eq(&format!("{kind:?} {} rule", path.display()), e.rule.as_deref(), rule)?;
        eq("task", e.task.as_deref(), Some("verdicts"))?;
        ensure(e.reason.is_some() || want == "in_scope", || format!("no reason on {e:?}"))?;
        Ok(())
    };
    check(Kind::FileCreate, &p("in.txt"), "in_scope", None)?;
    check(Kind::FileCreate, &d.join("outside.txt"), "violation", Some("scope.write-outside"))?;
    check(Kind::FileRename, &p("in.txt"), "needs_approval", None)?;
    check(Kind::FileDelete, &p("build/x.o"), "in_scope", None)?;
    check(Kind::FileDelete, &p("keep.txt"), "violation", Some("scope.write-outside"))?;
    check(Kind::SensitiveRead, &p(".env"), "violation", Some("cred.dotenv"))?;
    let port: u16 = std::fs::read_to_string(d.join("closed-port"))
        .map_err(|e| e.to_string())?
        .parse()
        .map_err(|_| "port")?;
    let conn = run
        .of(Kind::Connect)
        .into_iter()
        .find(|e| e.dst == Some(Dst::Ip { ip: "127.0.0.1".into(), port }))
        .ok_or_else(|| run.summary())?;
    eq("connect verdict", verdict(conn), Some("out_of_scope"))?;
    ensure(conn.reason.as_deref().is_some_and(|r| r.starts_with("scope.connect")), || {
        format!("{:?}", conn.reason)
    })?;
    // The task's own launch exec is in scope; every event of the tree has a verdict
    // (agentmon's own records of the task's start and end are not judged).
    let own = [Kind::Loss, Kind::TaskStart, Kind::TaskEnd];
    ensure(run.events.iter().filter(|e| !own.contains(&e.kind)).all(|e| e.verdict.is_some()), || {
        "event without verdict".into()
    })?;
    eq("task records", [run.of(Kind::TaskStart).len(), run.of(Kind::TaskEnd).len()], [1, 1])?;
    // Alerts: one per non-in-scope event, carrying the event and the task.
    let judged: Vec<&Event> =
        run.events.iter().filter(|e| verdict(e).is_some_and(|v| v != "in_scope")).collect();
    eq("alerts", run.alerts.len(), judged.len())?;
    let a = run
        .alerts
        .iter()
        .find(|a| a.event.path.as_deref() == d.join("outside.txt").to_str())
        .ok_or("no alert")?;
    eq("alert severity", &*a.severity, "medium")?;
    let t = a.task.as_ref().ok_or("alert without task")?;
    eq(
        "alert task",
        (&*t.id, t.agent.as_deref(), &*t.mode),
        ("verdicts", Some("spiffe://test/agent"), "execute"),
    )?;
    ensure(a.reasons.iter().any(|r| r.clause.as_deref() == Some("scope.write")), || {
        format!("{:?}", a.reasons)
    })?;
    Ok(())
}

/// A nested `agentmon exec --task` within the parent's scope becomes a sub-task
/// (events carry its id and the chain); one that widens the scope is refused.
pub fn delegation() -> R {
    delegation_in(false, false)
}

/// Delegation from inside an enforced task, which may not create unix sockets: the
/// nested agentmon reaches the watching one through the task's inherited mailbox.
pub fn enforced_delegation() -> R {
    delegation_in(true, false)
}

/// An enforced sub-task of an observed root task: its confinement (capabilities
/// dropped by the nested agentmon, in a process the parent task watches) is no
/// event of the agent's. Before, it was a capset with a priv.setid-capset alert.
pub fn enforced_sub_task_of_an_observed_task() -> R {
    delegation_in(false, true)
}

fn delegation_in(enforce: bool, sub_enforced: bool) -> R {
    let d = workdir(match (enforce, sub_enforced) {
        (true, _) => "delegation-enforced",
        (false, true) => "delegation-enforced-sub",
        _ => "delegation",
    });
    let repo = d.join("repo");
    std::fs::create_dir_all(repo.join("sub")).map_err(|e| e.to_string())?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let am = support::agentmon();
    let parent = d.join("parent.yaml");
    std::fs::write(
        &parent,
        format!(
            "id: parent\nmode: execute\nexpires_in: 1h\nenforcement: {mode}\nscope:\n  write: [\"{r}/**\"]\n  \
             exec: [\"{me}\", \"{am}\"]\n",
            r = repo.display(),
            me = me.display(),
            mode = if enforce { "enforce" } else { "observe" }
        ),
    )
    .map_err(|e| e.to_string())?;
    if enforce && !support::can_enforce() {
        return Ok(support::enforce_refused_here(&parent, &d)?);
    }
    let good = d.join("good.yaml");
    std::fs::write(
        &good,
        format!(
            "id: child\nmode: execute\nexpires_in: 10m\nenforcement: {}\nscope:\n  write: [\"{}/sub/**\"]\n  \
             exec: [\"{}\"]\n",
            if sub_enforced { "enforce" } else { "observe" },
            repo.display(),
            me.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    if sub_enforced && !support::can_enforce() {
        return Ok(support::enforce_refused_here(&good, &d)?);
    }
    let bad = d.join("bad.yaml");
    std::fs::write(&bad, "id: greedy\nmode: execute\nexpires_in: 10m\nscope:\n  write: [\"/etc/**\"]\n")
        .map_err(|e| e.to_string())?;
    let cmd: Vec<String> = [
        me.display().to_string(),
        d.display().to_string(),
        am.into(),
        good.display().to_string(),
        bad.display().to_string(),
    ]
    .into();
    let run =
        run_agentmon_with(&["--task", parent.to_str().unwrap()], &cmd, &[(SCENARIO_ENV, "delegate")], &d)?;
    eq("exit", run.code, 0)?;
    // The nested agentmon's own set-up (its child's capabilities, which inside an
    // enforced task are already dropped) is no event of the agent's.
    let privilege: Vec<_> = run.of(Kind::Privilege);
    ensure(privilege.is_empty(), || format!("privilege records: {privilege:?}"))?;
    eq(
        "sub-task exit",
        std::fs::read_to_string(repo.join("good-rc")).map_err(|e| e.to_string())?,
        "Some(0)".into(),
    )?;
    let inside = run.find(Kind::FileCreate, &repo.join("sub/inside.txt"))?;
    eq("sub-task id", inside.task.as_deref(), Some("child"))?;
    eq(
        "chain",
        inside.task_chain.as_ref().map(|c| c.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        Some(vec!["parent".to_string()]),
    )?;
    eq("inside verdict", verdict(inside), Some("in_scope"))?;
    let outside = run.find(Kind::FileCreate, &repo.join("notsub.txt"))?;
    eq(
        "sub-task scope applies",
        (outside.task.as_deref(), verdict(outside)),
        (Some("child"), Some(if enforce || sub_enforced { "denied" } else { "violation" })),
    )?;
    ensure((enforce || sub_enforced) != repo.join("notsub.txt").exists(), || {
        "the sub-task's scope was not enforced".into()
    })?;
    // The widening sub-task: refused, its command never ran.
    eq(
        "refused exit",
        std::fs::read_to_string(repo.join("bad-rc")).map_err(|e| e.to_string())?,
        "Some(125)".into(),
    )?;
    let why = std::fs::read_to_string(repo.join("bad-stderr")).map_err(|e| e.to_string())?;
    ensure(why.contains("delegation refused") && why.contains("scope.write"), || {
        format!("refusal says: {why}")
    })?;
    ensure(!run.events.iter().any(|e| e.task.as_deref() == Some("greedy")), || {
        "refused task has events".into()
    })?;
    // ... and the refusal is in the record, with its alert: an agent asked for more
    // than its task gives.
    let attempt = format!("delegation ({})", bad.display());
    let refusal = run
        .events
        .iter()
        .find(|e| {
            e.kind == Kind::Tamper && e.detail.get("attempt").and_then(|v| v.as_str()) == Some(&attempt)
        })
        .ok_or_else(|| format!("no record of the refused delegation:\n{}", run.summary()))?;
    eq("refusal verdict", verdict(refusal), Some("denied"))?;
    eq("refusal task (the asker's)", refusal.task.as_deref(), Some("parent"))?;
    ensure(refusal.reason.as_deref().is_some_and(|r| r.contains("scope.write")), || {
        format!("refusal reason: {:?}", refusal.reason)
    })?;
    ensure(run.alerts.iter().any(|a| a.event.id == refusal.id), || {
        "no alert for the refused delegation".into()
    })?;
    Ok(())
}

fn rule(id: &str, paths: &str) -> String {
    format!(
        "rules:\n  - id: {id}\n    description: test rule {id}\n    severity: high\n    match:\n      kinds: [file_create]\n      \
         paths: [{paths}]\n    action: alert\n    examples:\n      match: [{{kind: file_create, path: /a/x1}}]\n      \
         no_match: [{{kind: file_create, path: /a/y}}]\n"
    )
}

/// Rules edited while agentmon runs take effect; an invalid edit keeps the old ones.
pub fn rules_hot_reload() -> R {
    let d = workdir("reload");
    let rules = d.join("rules");
    std::fs::create_dir_all(&rules).map_err(|e| e.to_string())?;
    std::fs::write(rules.join("t.yaml"), rule("first", "\"**/x1\"")).map_err(|e| e.to_string())?;
    let events = d.join("events.jsonl");
    let stderr = std::fs::File::create(d.join("stderr")).map_err(|e| e.to_string())?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(support::agentmon())
        .args(["exec", "-e"])
        .arg(&events)
        .arg("--rules")
        .arg(&rules)
        .arg("--")
        .arg(&me)
        .arg(&d)
        .env(SCENARIO_ENV, "two_steps")
        .stderr(stderr)
        .spawn()
        .map_err(|e| e.to_string())?;
    let wait_text = |file: &Path, needle: &str| {
        support::wait(Duration::from_secs(10) * support::slowdown(), || {
            std::fs::read_to_string(file).is_ok_and(|t| t.contains(needle))
        })
    };
    ensure(wait_text(&events, "\"kind\":\"exec\""), || "agentmon did not start".into())?;
    // A valid edit: a rule for x1 and x2.
    std::fs::write(rules.join("t.yaml"), rule("second", "\"**/x1\", \"**/x2\""))
        .map_err(|e| e.to_string())?;
    ensure(wait_text(&d.join("stderr"), "rules reloaded"), || "valid edit not reloaded".into())?;
    std::fs::write(d.join("go1"), b"").map_err(|e| e.to_string())?;
    ensure(wait_text(&events, "x1"), || "x1 not seen".into())?;
    // An invalid edit: refused with file:line, the rules in force stay.
    std::fs::write(rules.join("t.yaml"), "rules:\n  - id: broken\n    severity: loud\n")
        .map_err(|e| e.to_string())?;
    ensure(wait_text(&d.join("stderr"), "rules not reloaded"), || "invalid edit not reported".into())?;
    // A rule file replaced by a FIFO (which would block a reader), then an emptied
    // directory: refused, never "0 rules".
    let refusals = || {
        std::fs::read_to_string(d.join("stderr"))
            .map(|t| t.matches("rules not reloaded").count())
            .unwrap_or(0)
    };
    std::fs::remove_file(rules.join("t.yaml")).map_err(|e| e.to_string())?;
    nix::unistd::mkfifo(&rules.join("t.yaml"), nix::sys::stat::Mode::from_bits_truncate(0o644))
        .map_err(|e| e.to_string())?;
    ensure(support::wait(Duration::from_secs(10), || refusals() >= 2), || {
        "a FIFO for a rule file was not refused".into()
    })?;
    std::fs::remove_file(rules.join("t.yaml")).map_err(|e| e.to_string())?;
    ensure(support::wait(Duration::from_secs(10), || refusals() >= 3), || {
        "an emptied rules directory was not refused".into()
    })?;
    std::fs::write(d.join("go2"), b"").map_err(|e| e.to_string())?;
    let st = child.wait().map_err(|e| e.to_string())?;
    eq("exit", st.code(), Some(0))?;
    let (evs, _) = support::parse_stream(&std::fs::read_to_string(&events).map_err(|e| e.to_string())?)?;
    for x in ["x1", "x2"] {
        let e = evs
            .iter()
            .find(|e| e.kind == Kind::FileCreate && e.path.as_deref() == d.join(x).to_str())
            .ok_or(format!("no create of {x}"))?;
        eq(&format!("{x} rule"), e.rule.as_deref(), Some("second"))?;
    }
    let err = std::fs::read_to_string(d.join("stderr")).map_err(|e| e.to_string())?;
    let at = format!("{}:", rules.join("t.yaml").display());
    ensure(err.contains(&at), || format!("reload error does not name {at}: {err}"))?;
    // Every reload is a record: the one that dropped rule "first" with an alert, the
    // three refusals with their errors.
    let reloads: Vec<&agentmon::event::Event> = evs.iter().filter(|e| e.kind == Kind::Rules).collect();
    let removed = |e: &agentmon::event::Event| e.detail.get("removed").map(|v| v.to_string());
    ensure(reloads.iter().any(|e| removed(e).as_deref() == Some("[\"first\"]")), || format!("{reloads:?}"))?;
    let refused: Vec<String> =
        reloads.iter().filter_map(|e| e.detail.get("errors")).map(|v| v.to_string()).collect();
    eq("refused reloads", refused.len(), 3)?;
    ensure(refused[1].contains("not a regular file") && refused[2].contains("no rule files"), || {
        format!("{refused:?}")
    })?;
    let text = std::fs::read_to_string(&events).map_err(|e| e.to_string())?;
    let alerts = support::parse_stream(&text)?.1;
    ensure(alerts.iter().any(|a| a.event.kind == Kind::Rules), || "no alert for dropped rules".into())?;
    Ok(())
}

/// `agentmon rules check`: the shipped rules pass; errors are `file:line: message`.
pub fn rules_check_cli() -> R {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
    let out = Command::new(support::agentmon())
        .args(["rules", "check"])
        .arg(&shipped)
        .output()
        .map_err(|e| e.to_string())?;
    eq("shipped rules", out.status.code(), Some(0))?;
    let d = workdir("rules-check");
    std::fs::write(d.join("bad.yaml"), "rules:\n  - id: x\n    description: d\n    severity: high\n    match: {kinds: [connect], dst: [\"10.0.0.0/40\"]}\n    action: alert\n").map_err(|e| e.to_string())?;
    std::fs::write(d.join("wrong-example.yaml"), rule("y", "\"**/x9\"")).map_err(|e| e.to_string())?;
    // --rules takes only what `rules check` passes: a directory whose one fault is
    // a rule's failing example is refused at start, with the same message.
    let only = workdir("rules-check-example");
    std::fs::write(only.join("y.yaml"), rule("y", "\"**/x9\"")).map_err(|e| e.to_string())?;
    let with_rules = || {
        Command::new(support::agentmon())
            .args(["exec", "--quiet", "--rules"])
            .arg(&only)
            .args(["--", "/bin/true"])
            .output()
            .map_err(|e| e.to_string())
    };
    let out = with_rules()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure(
        out.status.code() == Some(125)
            && err.contains(&format!("{}:", only.join("y.yaml").display()))
            && err.contains("should match"),
        || format!("exec --rules with a failing example: {:?} {err}", out.status.code()),
    )?;
    // The same rule with a true example starts.
    std::fs::write(only.join("y.yaml"), rule("y", "\"**/x1\"")).map_err(|e| e.to_string())?;
    eq("exec --rules with its example fixed", with_rules()?.status.code(), Some(0))?;
    let out = Command::new(support::agentmon())
        .args(["rules", "check"])
        .arg(&d)
        .output()
        .map_err(|e| e.to_string())?;
    eq("bad rules exit", out.status.code(), Some(1))?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure(text.contains(&format!("{}:5: ", d.join("bad.yaml").display())), || {
        format!("no file:line for the CIDR: {text}")
    })?;
    ensure(
        text.contains(&format!("{}:", d.join("wrong-example.yaml").display()))
            && text.contains("should match"),
        || format!("failing example not reported: {text}"),
    )?;
    Ok(())
}

/// A shell with a socket for stdin/stdout is flagged, and the reverse-shell rule fires.
pub fn reverse_shell_flagged() -> R {
    let d = workdir("revshell");
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let run = run_agentmon_with(
        &[],
        &[me.display().to_string(), d.display().to_string()],
        &[(SCENARIO_ENV, "reverse_shell")],
        &d,
    )?;
    eq("exit", run.code, 0)?;
    let sh = run
        .of(Kind::Exec)
        .into_iter()
        .find(|e| e.exe.as_deref().is_some_and(|x| x.ends_with("sh")))
        .ok_or_else(|| run.summary())?;
    ensure(
        sh.flags.iter().any(|f| f == "stdin_socket") && sh.flags.iter().any(|f| f == "stdout_socket"),
        || format!("{:?}", sh.flags),
    )?;
    eq("rule", sh.rule.as_deref(), Some("exec.reverse-shell"))?;
    eq("action", sh.action.as_deref(), Some("kill"))?;
    Ok(())
}

/// Tool-call steps announced by the agent's hooks tag exactly the events in
/// between, forked children included; a step for another task and a malformed
/// traceparent are refused.
pub fn steps_tag_events() -> R {
    steps_in(false)
}

/// Steps announced from inside an enforced task (no unix sockets: the mailbox).
pub fn enforced_steps_tag_events() -> R {
    steps_in(true)
}

fn steps_in(enforce: bool) -> R {
    let d = workdir(if enforce { "steps-enforced" } else { "steps" });
    // Landlock rules name existing directories.
    std::fs::create_dir_all(d.join("out")).map_err(|e| e.to_string())?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let task = d.join("task.yaml");
    std::fs::write(
        &task,
        format!(
            "id: stepped\nmode: execute\nenforcement: {}\n{}scope:\n  write: [\"{}/out/**\"]\n  delete: [\"{}/out/**\"]\n  \
             exec: [\"{}\", \"{}\"]\n",
            if enforce { "enforce" } else { "observe" },
            if enforce { "approval_required: [delete]\n" } else { "" },
            d.display(),
            d.display(),
            me.display(),
            support::agentmon()
        ),
    )
    .map_err(|e| e.to_string())?;
    if enforce && !support::can_enforce() {
        return Ok(support::enforce_refused_here(&task, &d)?);
    }
    let cmd = [me.display().to_string(), d.display().to_string(), support::agentmon().to_string()];
    let run = support::run_agentmon_with(
        &["--task", task.to_str().unwrap(), "--approval-timeout", "1s"],
        &cmd,
        &[(support::SCENARIO_ENV, "steps")],
        &d,
    )?;
    eq("scenario exit", run.code, 0)?;
    let step_of = |name: &str| -> Result<Option<(String, String, Option<String>)>, String> {
        let p = d.join("out").join(name);
        let e = run.find(Kind::FileCreate, &p)?;
        Ok(e.step.as_ref().map(|s| (s.tool.clone(), s.call_id.clone(), s.trace_id.clone())))
    };
    eq("out/a", step_of("a")?, Some(("Write".into(), "c1".into(), None)))?;
    let c2 = Some(("Bash".into(), "c2".into(), Some("4bf92f3577b34da6a3ce929d0e0e4736".to_string())));
    eq("out/b", step_of("b")?, c2.clone())?;
    eq("out/c (forked child)", step_of("c")?, c2)?;
    eq("out/after", step_of("after")?, None)?;
    type Records = Vec<(String, String)>;
    let (records, open): (Records, Records) = run
        .of(Kind::Step)
        .iter()
        .map(|e| {
            let phase = e.detail.get("phase").and_then(|v| v.as_str()).unwrap_or("?");
            (phase.to_string(), e.step.as_ref().map(|s| s.call_id.clone()).unwrap_or_default())
        })
        .partition(|(_, call)| !call.starts_with("open"));
    eq("steps left open", open.len(), 64)?;
    // Every refused step and prompt is a tamper record of the caller's task.
    let refused: Vec<(String, String)> = run
        .of(Kind::Tamper)
        .into_iter()
        .filter(|e| e.task.as_deref() == Some("stepped"))
        .filter_map(|e| {
            let what = e.detail.get("attempt").and_then(|v| v.as_str())?;
            Some((what.to_string(), e.reason.clone().unwrap_or_default()))
        })
        .collect();
    for (what, why) in [
        ("prompt", "not someone-else"),
        ("step", "not someone-else"),
        ("step", "traceparent"),
        ("step", "steps open"),
    ] {
        ensure(refused.iter().any(|(w, r)| w == what && r.contains(why)), || {
            format!("no tamper record of the refused {what} ({why}): {refused:?}\n{}", run.summary())
        })?;
    }
    let want: Vec<(String, String)> =
        [("begin", "c1"), ("end", "c1"), ("prompt", ""), ("begin", "c2"), ("end", "c2")]
            .map(|(a, b)| (a.into(), b.into()))
            .into();
    eq("step records", records, want)?;
    // The prompt as the hook gave it: its hash and length, not its text (not asked for).
    let p = run.of(Kind::Step).into_iter().find(|e| e.detail["phase"] == "prompt").ok_or("no prompt")?;
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b"tidy up b"))
    };
    eq(
        "prompt record (task, sha256, bytes, text)",
        (
            p.task.as_deref(),
            p.detail["prompt_sha256"].as_str(),
            p.detail["prompt_bytes"].as_u64(),
            p.detail.get("prompt"),
        ),
        (Some("stepped"), Some(sha.as_str()), Some(9), None),
    )?;
    if enforce {
        // The held delete of out/b: its request and its decision (a timeout) are
        // records of step c2, like the calls around them.
        for kind in [Kind::ApprovalRequest, Kind::Approval] {
            let e =
                run.of(kind).into_iter().next().ok_or_else(|| format!("no {kind:?}:\n{}", run.summary()))?;
            eq(&format!("{kind:?} step"), e.step.as_ref().map(|s| s.call_id.as_str()), Some("c2"))?;
        }
    }
    Ok(())
}

/// An agent cleaning up inside its own delete scope (`rm -rf` of a 300-file tree)
/// with the shipped rules: it runs to completion, and the burst is one alert — not
/// a freeze (the task hung until an operator thawed it) and not one alert per
/// delete after the 50th. The deletes past the alert carry the rule and no action.
pub fn mass_delete_in_scope_runs_to_completion() -> R {
    let d = workdir("mass-delete");
    let tree = d.join("repo/tree");
    for i in 0..300 {
        let sub = tree.join(format!("d{}", i % 10));
        std::fs::create_dir_all(&sub).map_err(|e| e.to_string())?;
        std::fs::write(sub.join(format!("f{i}")), b"x").map_err(|e| e.to_string())?;
    }
    let rm = std::fs::canonicalize("/bin/rm").map_err(|e| e.to_string())?;
    let manifest = d.join("task.yaml");
    std::fs::write(
        &manifest,
        format!(
            "id: cleanup\nmode: execute\nenforcement: {mode}\nscope:\n  write: [\"{r}/**\"]\n  delete: [\"{r}/**\"]\n  \
             exec: [\"{rm}\"]\n",
            // Enforced where it can be: a freeze (of enforced tasks only) would hang it.
            mode = if support::can_enforce() { "enforce" } else { "observe" },
            r = d.join("repo").display(),
            rm = rm.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let events = d.join("events.jsonl");
    let cmd = [rm.display().to_string(), "-rf".into(), tree.display().to_string()];
    let mut child = support::exec_command(&events, &["--task", manifest.to_str().unwrap()], &cmd, &[], &d)
        .spawn()
        .map_err(|e| e.to_string())?;
    let limit = Duration::from_secs(60) * support::slowdown();
    let Some(code) = support::exit_within(&mut child, limit) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(
            format!("rm -rf inside the task's delete scope did not finish in {limit:?}: frozen?").into()
        );
    };
    eq("exit", code, Some(0))?;
    ensure(!tree.exists(), || "the tree is still there".into())?;
    let text = std::fs::read_to_string(&events).map_err(|e| e.to_string())?;
    let (evs, alerts) = support::parse_stream(&text)?;
    let deletes: Vec<&Event> = evs.iter().filter(|e| e.kind == Kind::FileDelete).collect();
    ensure(deletes.len() >= 300, || format!("{} file_delete events, want 300", deletes.len()))?;
    let mass: Vec<_> = alerts.iter().filter(|a| a.rule.as_deref() == Some("fs.mass-delete")).collect();
    eq("fs.mass-delete alerts", mass.len(), 1)?;
    eq("its action", mass[0].action.as_str(), "alert")?;
    eq("alerts in all", alerts.len(), 1)?;
    let after: Vec<&&Event> = deletes.iter().skip_while(|e| e.id != mass[0].event.id).skip(1).collect();
    ensure(after.len() >= 200, || format!("{} deletes after the alert", after.len()))?;
    for e in after {
        eq(
            "a later delete of the burst: (rule, verdict, action)",
            (e.rule.as_deref(), verdict(e), e.action.as_deref()),
            (Some("fs.mass-delete"), Some("violation"), Some("none")),
        )?;
    }
    Ok(())
}
