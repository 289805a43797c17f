//! Revoke on NATS: what a broker acts on to cut a task's credentials. A rule whose
//! action is `revoke` cuts an enforced task's credentials without stopping it; the
//! task's end revokes them again; each message names the credentials the manifest
//! declared and is signed with the host's key.

use agentmon::{event::Kind, nats::Subjects};

use crate::{
    R,
    support::{
        self, SCENARIO_ENV, ensure, eq,
        nats::{read_stream, signed_by, suite_url},
        run_agentmon_with, workdir,
    },
};

pub fn a_rule_revokes_without_stopping() -> R {
    let url = suite_url()?;
    let d = workdir("nats-revoke");
    let h = format!("revoke-{}-{}", std::process::id(), uuid::Uuid::now_v7().simple());
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let (out, rules) = (d.join("out"), d.join("rules"));
    for dir in [&out, &rules] {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let task = d.join("task.yaml");
    std::fs::write(
        &task,
        format!(
            "id: nats-revoke\nmode: execute\nenforcement: enforce\ncredentials: [\"vault:lease/abc\"]\nscope:\n  \
             write: [\"{}/**\"]\n  exec: [\"{}\"]\n",
            out.display(),
            me.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&task, &d)?);
    }
    std::fs::write(
        rules.join("revoke.yaml"),
        "rules:\n  - id: test.revoke\n    description: the agent made f1\n    severity: high\n    match:\n      \
         kinds: [file_create]\n      paths: [\"**/out/f1\"]\n    action: revoke\n    examples:\n      match:\n        \
         - {kind: file_create, path: /x/out/f1}\n      no_match:\n        - {kind: file_create, path: /x/out/f2}\n",
    )
    .map_err(|e| e.to_string())?;
    let (key, spool) = (d.join("host.key"), d.join("spool"));
    let flags = [
        "--task",
        task.to_str().unwrap(),
        "--rules",
        rules.to_str().unwrap(),
        "--nats",
        &url,
        "--nats-host",
        &h,
        "--spool",
        spool.to_str().unwrap(),
        "--nats-sign-key",
        key.to_str().unwrap(),
    ];
    let cmd = [me.display().to_string(), d.display().to_string(), "3".into(), "10".into()];
    let run = run_agentmon_with(&flags, &cmd, &[(SCENARIO_ENV, "stream")], &d)?;
    // Not stopped: it made every file and exited as it meant to.
    eq(&format!("exit code ({})", run.stderr), run.code, 0)?;
    ensure((0..3).all(|i| out.join(format!("f{i}")).exists()), || "the task was stopped".into())?;
    let actions = run.of(Kind::Action);
    let [a] = actions.as_slice() else {
        return Err(format!("want one action event, got {actions:?}").into());
    };
    eq(
        "action (what, rule, by)",
        (a.action.as_deref(), a.rule.as_deref(), a.detail.get("by").and_then(|v| v.as_str())),
        (Some("revoke"), Some("test.revoke"), Some("policy")),
    )?;
    ensure(!a.detail.contains_key("error"), || format!("{:?}", a.detail))?;

    let subjects = Subjects::new(&h);
    let msgs = read_stream(&url, &subjects.stream())?;
    let revokes: Vec<&serde_json::Value> =
        msgs.iter().filter(|m| m.subject == subjects.revoke()).map(|m| &m.json).collect();
    let reasons: Vec<&str> = revokes.iter().filter_map(|m| m["reason"].as_str()).collect();
    eq("revokes (reasons)", reasons.as_slice(), ["a rule asked for it", "task ended"].as_slice())?;
    eq("the rule's revoke names it", revokes[0]["rule"].as_str(), Some("test.revoke"))?;
    let public = std::fs::read_to_string(d.join("host.key.pub")).map_err(|e| e.to_string())?;
    for m in &revokes {
        eq("credentials", &m["credentials"], &serde_json::json!(["vault:lease/abc"]))?;
        signed_by(m, public.trim())?;
    }
    ensure(!msgs.iter().any(|m| m.subject == subjects.kill()), || "a kill signal for a revoke".into())?;
    Ok(())
}
