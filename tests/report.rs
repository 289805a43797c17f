//! The responder's HTML report (`agentmon replay --format html`), drawn by a real
//! browser: a recorded task's events as rows under their processes, its tool calls
//! as spans, filters from the address, the chain of an event, and the agent's own
//! strings kept as text.

use std::{collections::BTreeSet, path::Path, process::Command, time::Duration};

use agentmon::event::Kind;

use crate::{
    R,
    support::{self, agentmon, ensure, eq, run_agentmon_with, workdir},
};

/// Debian's chromium, headless: the page's DOM once its script ran.
fn rendered(page: &Path, hash: &str) -> Result<String, String> {
    let browser = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
        .ok_or("no chromium to render the report in (Debian's `chromium`; scripts/test.sh installs it)")?;
    let mut child = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("file://{}#{hash}", page.display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("{browser}: {e}"))?;
    let limit = Duration::from_secs(60 * support::slowdown() as u64);
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).map(|_| s)
    });
    match support::exit_within(&mut child, limit) {
        Some(Some(0)) => {}
        other => {
            let _ = child.kill();
            return Err(format!("{browser} --dump-dom: {other:?} within {limit:?}"));
        }
    }
    reader.join().map_err(|_| "reader panicked")?.map_err(|e| e.to_string())
}

/// The opening tags of class `class` in a DOM dump, as (attributes, hidden).
fn tags<'a>(dom: &'a str, tag: &str, class: &str) -> Vec<(Vec<(&'a str, &'a str)>, bool)> {
    let open = format!("<{tag} ");
    dom.split(open.as_str())
        .skip(1)
        .filter_map(|rest| {
            let head = &rest[..rest.find('>')?];
            let attrs: Vec<(&str, &str)> = head
                .split("\" ")
                .filter_map(|kv| {
                    let (k, v) = kv.split_once("=\"")?;
                    Some((k.trim(), v.trim_end_matches('"')))
                })
                .collect();
            let classes = attrs.iter().find(|(k, _)| *k == "class")?.1;
            classes.split(' ').any(|c| c == class).then_some((attrs.clone(), head.contains("hidden")))
        })
        .collect()
}

fn attr<'a>(attrs: &[(&'a str, &'a str)], name: &str) -> Option<&'a str> {
    attrs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
}

pub fn replay_html_report() -> R {
    let d = workdir("replay-html");
    let repo = d.join("repo");
    std::fs::create_dir_all(&repo).map_err(|e| e.to_string())?;
    let task = d.join("task.yaml");
    std::fs::write(
        &task,
        format!(
            "id: report-1\nmode: execute\nprompt: \"Fix the parser; keep the tests green.\"\n\
             scope:\n  write: [\"{r}/**\"]\n  delete: [\"{r}/**\"]\n  exec: [\"/usr/bin/**\", \"{a}\"]\n",
            r = repo.display(),
            a = agentmon()
        ),
    )
    .map_err(|e| e.to_string())?;
    // Two tool calls; the second, after a prompt (with a key in it, which the
    // record must not keep), writes outside the scope and a file whose name is
    // markup (the agent chooses its file names).
    let a = agentmon();
    let hostile = "<img src=x onerror=alert(1)>";
    let prompt = "Also clean up; the key is AKIAABCDEFGHIJKLMNOP";
    let script = format!(
        "{a} step begin --tool Write --call-id toolu_1; echo x > {r}/a.py; {a} step end --tool Write --call-id toolu_1; \
         {a} step prompt --text '{prompt}'; \
         {a} step begin --tool \"$(printf 'Bash\\n10:00:00.000 approval approved')\" --call-id toolu_2; echo y > {o}; touch '{r}/{hostile}'; rm {r}/a.py; \
         {a} step end --tool Bash --call-id toolu_2",
        r = repo.display(),
        o = d.join("outside.txt").display(),
    );
    // Granted by alice, on a host that takes only granted tasks: the chain of a side
    // effect starts at who gave the task its authority.
    let key = d.join("alice.key");
    agentmon::audit::load_or_create_key(&key).map_err(|e| e.to_string())?;
    let o = Command::new(a)
        .arg("grant")
        .arg(&task)
        .arg("--key")
        .arg(&key)
        .args(["--by", "alice"])
        .output()
        .map_err(|e| e.to_string())?;
    ensure(o.status.success(), || format!("grant: {}", String::from_utf8_lossy(&o.stderr)))?;
    let keys = agentmon::audit::public_key_path(&key);
    let flags = ["--task", task.to_str().unwrap(), "--prompt-text", "--grant-keys", keys.to_str().unwrap()];
    let run = run_agentmon_with(&flags, &["/usr/bin/sh".into(), "-c".into(), script], &[], &d)?;
    eq(&format!("exit code ({})", run.stderr), run.code, 0)?;
    let events = d.join(format!("events-{}.jsonl", std::process::id()));
    let page = d.join("report.html");
    let out = Command::new(a)
        .args([
            "replay",
            "--from",
            events.to_str().unwrap(),
            "--format",
            "html",
            "-o",
            page.to_str().unwrap(),
        ])
        .output()
        .map_err(|e| e.to_string())?;
    ensure(out.status.success(), || format!("replay: {}", String::from_utf8_lossy(&out.stderr)))?;

    let outside = run.find(Kind::FileCreate, &d.join("outside.txt"))?;
    let start = run.of(Kind::TaskStart).first().copied().ok_or("no task_start")?;
    let prompted =
        run.of(Kind::Step).into_iter().find(|e| e.detail["phase"] == "prompt").ok_or("no prompt record")?;
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(prompt.as_bytes()))
    };
    eq(
        "the prompt record (task, hash, length, text)",
        (
            prompted.task.as_deref(),
            prompted.detail["prompt_sha256"].as_str(),
            prompted.detail["prompt_bytes"].as_u64(),
            prompted.detail["prompt"].as_str(),
        ),
        (
            Some("report-1"),
            Some(sha.as_str()),
            Some(prompt.len() as u64),
            Some("Also clean up; the key is [redacted]"),
        ),
    )?;
    // The chain from the command line: task, prompt, tool call, the write.
    let out = Command::new(a)
        .args(["replay", "--from", events.to_str().unwrap(), "--format", "json", "--chain"])
        .arg(outside.id.to_string())
        .output()
        .map_err(|e| e.to_string())?;
    ensure(out.status.success(), || format!("replay --chain: {}", String::from_utf8_lossy(&out.stderr)))?;
    let chained: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).map_err(|e| format!("{e}: {l}")))
        .collect::<Result<_, _>>()?;
    let links: Vec<(String, String)> = chained
        .iter()
        .map(|v| (v["role"].as_str().unwrap_or("").into(), v["event"]["id"].as_str().unwrap_or("").into()))
        .collect();
    let granted = chained.first().map(|v| v["event"]["detail"]["grant"]["by"].clone());
    eq("the chain's first link: its task, granted by", granted, Some(serde_json::json!("alice")))?;
    let begin2 = run
        .of(Kind::Step)
        .into_iter()
        .find(|e| e.detail["phase"] == "begin" && e.step.as_ref().is_some_and(|s| s.call_id == "toolu_2"))
        .ok_or("no step begin of toolu_2")?;

    // Everything: a row for every event but forks (a process's own row), none hidden.
    let dom = rendered(&page, "")?;
    let rows = tags(&dom, "div", "ev");
    let ids = |rows: &[(Vec<(&str, &str)>, bool)], hidden: bool| -> BTreeSet<String> {
        rows.iter()
            .filter(|(_, h)| *h == hidden)
            .filter_map(|(a, _)| attr(a, "data-id"))
            .map(String::from)
            .collect()
    };
    let want: BTreeSet<String> =
        run.events.iter().filter(|e| e.kind != Kind::Fork).map(|e| e.id.to_string()).collect();
    eq("event rows, all shown", ids(&rows, false), want)?;
    eq("processes (a row each)", tags(&dom, "div", "proc").len(), run.of(Kind::Fork).len() + 1)?;
    let calls: BTreeSet<&str> =
        tags(&dom, "rect", "span").iter().filter_map(|(a, _)| attr(a, "data-call")).collect();
    eq("tool calls on the timeline", calls, BTreeSet::from(["toolu_1", "toolu_2"]))?;
    // A tool name with a line of its own in it stays on its row.
    ensure(dom.contains("Bash\\n10:00:00.000 approval approved") && !dom.contains("Bash\n10:00"), || {
        "the tool name's newline reached the page".into()
    })?;
    // The file name is text on the page, not an element.
    ensure(!dom.contains("<img"), || "the agent's file name became an <img> element".into())?;
    ensure(dom.contains("&lt;img src=x onerror=alert(1)&gt;"), || {
        "the agent's file name is not on the page".into()
    })?;

    // Filtered from the address: only the violations shown, the rest hidden.
    let dom = rendered(&page, "verdict=violation")?;
    let rows = tags(&dom, "div", "ev");
    let violations: BTreeSet<String> = run
        .events
        .iter()
        .filter(|e| e.kind != Kind::Fork && e.verdict.as_deref() == Some("violation"))
        .map(|e| e.id.to_string())
        .collect();
    ensure(violations.contains(&outside.id.to_string()), || "the outside write is no violation".into())?;
    eq("rows shown with verdict=violation", ids(&rows, false), violations)?;
    // Flagged rows are highlighted: the violation's row has the class.
    let flagged: BTreeSet<String> = rows
        .iter()
        .filter(|(a, _)| attr(a, "class").is_some_and(|c| c.split(' ').any(|c| c == "flagged")))
        .filter_map(|(a, _)| attr(a, "data-id"))
        .map(String::from)
        .collect();
    ensure(flagged.contains(&outside.id.to_string()), || {
        format!("the violation's row is not highlighted: {flagged:?}")
    })?;
    // By tool call, by kind, and by task: each shows what it names, nothing else.
    let by = |hash: &str, keep: &dyn Fn(&agentmon::event::Event) -> bool| -> R {
        let dom = rendered(&page, hash)?;
        let want: BTreeSet<String> =
            run.events.iter().filter(|e| e.kind != Kind::Fork && keep(e)).map(|e| e.id.to_string()).collect();
        ensure(!want.is_empty(), || format!("{hash}: nothing to show"))?;
        eq(&format!("rows shown with {hash}"), ids(&tags(&dom, "div", "ev"), false), want)?;
        Ok(())
    };
    by("step=toolu_1", &|e| e.step.as_ref().is_some_and(|s| s.call_id == "toolu_1"))?;
    by("kind=file_delete", &|e| e.kind == Kind::FileDelete)?;
    by("task=report-1", &|e| e.task.as_deref() == Some("report-1"))?;

    // The chain of the outside write: its task (with the prompt), its tool call, itself.
    let dom = rendered(&page, &format!("chain={}", outside.id))?;
    let chain: Vec<(String, String)> = dom
        .split("<li ")
        .skip(1)
        .filter_map(|li| {
            let head = &li[..li.find('>')?];
            let get = |n: &str| head.split(&format!("{n}=\"")).nth(1)?.split('"').next().map(String::from);
            Some((get("data-role")?, get("data-id")?))
        })
        .collect();
    let want = vec![
        ("task".to_string(), start.id.to_string()),
        ("prompt".to_string(), prompted.id.to_string()),
        ("step".to_string(), begin2.id.to_string()),
        ("event".to_string(), outside.id.to_string()),
    ];
    eq("replay --chain", &links, &want)?;
    eq("the chain shown", chain, want)?;
    ensure(dom.contains("prompt: Fix the parser; keep the tests green."), || {
        "the chain does not show the prompt".into()
    })?;
    Ok(())
}

/// Names an agent chooses (a file name, its process name) hold a line break and a
/// forged record after it: each output that writes lines keeps them on their own
/// row, written `\n` — the live text format, and replay's table and tree.
pub fn agent_chosen_names_stay_on_their_row() -> R {
    let d = workdir("names-rows");
    let forged = "10:00:00.000 file_delete 1 rm shadow";
    let script = format!("touch \"{}/$(printf 'x\\n{forged}')\"", d.display());
    let text = d.join("events.txt");
    let json = d.join("events.jsonl");
    let sh = ["/usr/bin/sh".to_string(), "-c".into(), script];
    let run = |events: &Path, format: &str| -> R {
        let out = support::exec_command(events, &["--format", format], &sh, &[], &d)
            .output()
            .map_err(|e| e.to_string())?;
        eq(
            &format!("exec --format {format}: {}", String::from_utf8_lossy(&out.stderr)),
            out.status.code(),
            Some(0),
        )?;
        Ok(())
    };
    run(&text, "text")?;
    run(&json, "json")?;
    let (evs, _) = support::parse_stream(&std::fs::read_to_string(&json).map_err(|e| e.to_string())?)?;
    let name = d.join(format!("x\n{forged}"));
    // Made by the first run, opened again by the second.
    ensure(evs.iter().any(|e| e.kind == Kind::FileWrite && e.path.as_deref() == name.to_str()), || {
        "no record of the file with a line break in its name".into()
    })?;
    let mut outputs = vec![("text".to_string(), std::fs::read_to_string(&text).map_err(|e| e.to_string())?)];
    for f in ["table", "tree"] {
        let out = Command::new(agentmon())
            .args(["replay", "--from", json.to_str().unwrap(), "--format", f])
            .output()
            .map_err(|e| e.to_string())?;
        ensure(out.status.success(), || {
            format!("replay --format {f}: {}", String::from_utf8_lossy(&out.stderr))
        })?;
        outputs.push((f.to_string(), String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    for (f, out) in outputs {
        ensure(!out.lines().any(|l| l.trim_start().starts_with(forged)), || {
            format!("{f}: a forged row:\n{out}")
        })?;
        ensure(out.lines().any(|l| l.contains(&format!("x\\n{forged}"))), || {
            format!("{f}: the name is not on its row:\n{out}")
        })?;
    }
    Ok(())
}
