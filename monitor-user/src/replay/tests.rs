use std::{borrow::Cow, io::Write as _, sync::Arc};

use super::*;
use crate::event::{ALERT_SCHEMA, AlertReason, Kind, TaskInfo};

/// 2026-11-28T15:00:00Z
const BASE: i128 = 1_795_878_000_000_000_000;

pub(super) fn at(secs: i128) -> Timestamp {
    Timestamp(BASE + secs * 1_000_000_000)
}

pub(super) fn ev(kind: Kind, secs: i128, pid: u32, task: &str) -> Event {
    let mut e = Event::new(kind, at(secs), "h".into());
    e.pid = pid;
    e.tid = pid;
    e.comm = "sh".into();
    e.task = Some(task.into());
    e.start = Some(1000 + pid as u64);
    e.verdict = Some(Cow::Borrowed("in_scope"));
    e.action = Some(Cow::Borrowed("none"));
    e
}

/// Tool call `id` of the Bash tool.
fn bash_call(id: &str) -> Option<Arc<crate::event::Step>> {
    Some(Arc::new(crate::event::Step {
        tool: "Bash".into(),
        call_id: id.into(),
        trace_id: None,
        span_id: None,
    }))
}

pub(super) fn write_ev(pid: u32, secs: i128, path: &str) -> Event {
    let mut e = ev(Kind::FileWrite, secs, pid, "t1");
    e.path = Some(path.into());
    e
}

pub(super) fn alert_for(e: &Event, severity: &str) -> Alert {
    Alert {
        schema: Cow::Borrowed(ALERT_SCHEMA),
        kind: Cow::Borrowed("alert"),
        id: uuid::Uuid::now_v7(),
        ts: e.ts,
        host: e.host.clone(),
        severity: severity.to_string().into(),
        verdict: e.verdict.clone().unwrap_or_default(),
        action: e
            .action
            .as_deref()
            .and_then(crate::policy::Action::parse)
            .unwrap_or(crate::policy::Action::None),
        rule: e.rule.clone(),
        reason: e.reason.clone().unwrap_or_default(),
        reasons: vec![AlertReason {
            verdict: serde_json::from_value(serde_json::json!(e.verdict)).unwrap(),
            action: e.action.as_deref().and_then(crate::policy::Action::parse).unwrap_or_default(),
            severity: crate::policy::Severity::parse(severity).unwrap(),
            rule: e.rule.clone(),
            clause: None,
            message: "m".into(),
        }],
        task: Some(TaskInfo {
            id: "t1".into(),
            agent: None,
            principal: None,
            mode: "execute".into(),
            parents: vec![],
        }),
        event: e.clone(),
    }
}

pub(super) fn line<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap() + "\n"
}

pub(super) fn temp_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

pub(super) async fn run_to_string(args: ReplayArgs) -> anyhow::Result<String> {
    let mut out = Vec::new();
    run(args, &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

#[test]
fn events_file_with_alerts_and_a_torn_last_line() {
    let a = write_ev(10, 1, "/srv/a");
    let mut b = write_ev(10, 2, "/etc/passwd");
    b.verdict = Some(Cow::Borrowed("violation"));
    b.rule = Some("r1".into());
    let text = line(&a) + &line(&b) + &line(&alert_for(&b, "high")) + r#"{"schema":"agentmon.event/1","id":"#;
    let rec = source::parse("ev.jsonl", text.as_bytes()).unwrap();
    assert_eq!(rec.events, vec![a, b]);
    assert_eq!(rec.alerts.len(), 1);
    assert_eq!(rec.warnings.len(), 1);
    assert!(rec.warnings[0].starts_with("ev.jsonl:4: the last line is incomplete"), "{:?}", rec.warnings);
    // A complete last line without a newline is fine.
    let rec = source::parse("x", line(&write_ev(1, 1, "/x")).trim_end().as_bytes()).unwrap();
    assert_eq!((rec.events.len(), rec.warnings.len()), (1, 0));
}

#[test]
fn a_malformed_line_is_an_error_naming_file_and_line() {
    let text = line(&write_ev(10, 1, "/a")) + "{not json\n" + &line(&write_ev(10, 2, "/b"));
    let f = temp_file(&text);
    let err = read_file(f.path().to_str().unwrap()).unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}:2: ", f.path().display())), "{err}");
    // Well-formed JSON that is not an agentmon record, too.
    let text = line(&write_ev(10, 1, "/a")) + "\n" + "{\"schema\":\"other/1\"}\n";
    let err = source::parse("f", text.as_bytes()).unwrap_err().to_string();
    assert!(err.starts_with("f:3: schema \"other/1\""), "{err}");
    // A torn line in the middle is not forgiven.
    let text = line(&write_ev(10, 1, "/a")) + "{\"schema\":\n" + &line(&write_ev(10, 2, "/b"));
    assert!(source::parse("f", text.as_bytes()).unwrap_err().to_string().starts_with("f:2:"));
}

#[test]
fn audit_chain_files_are_recognised() {
    let a = write_ev(10, 1, "/srv/a");
    let b = write_ev(10, 2, "/srv/b");
    let rec = |seq: u64, ty: &str, body: serde_json::Value| {
        line(&serde_json::json!({"seq": seq, "prev": "00", "type": ty, "body": body, "hash": "ab"}))
    };
    let text = rec(0, "task_start", serde_json::json!({"task": "t1"}))
        + &rec(1, "event", serde_json::to_value(&a).unwrap())
        + &rec(2, "alert", serde_json::to_value(alert_for(&a, "low")).unwrap())
        + &rec(4, "event", serde_json::to_value(&b).unwrap())
        + &rec(5, "checkpoint", serde_json::json!({"sig": "x"}));
    let r = source::parse("audit.jsonl", text.as_bytes()).unwrap();
    assert_eq!(r.events, vec![a, b]);
    assert_eq!(r.alerts.len(), 1);
    assert_eq!(
        r.warnings,
        vec!["audit.jsonl: audit chain: seq 4 follows 2 (records missing or out of order)"]
    );
    let bad = rec(0, "event", serde_json::json!({"kind": "exec"}));
    let err = source::parse("audit.jsonl", bad.as_bytes()).unwrap_err().to_string();
    assert!(err.starts_with("audit.jsonl:1: audit record 0: not a valid event"), "{err}");
}

#[test]
fn dedupes_by_id_and_orders_by_time() {
    let a = write_ev(10, 5, "/a");
    let b = write_ev(10, 1, "/b");
    let c = write_ev(10, 5, "/c"); // same time as a, recorded after it
    let text = line(&a) + &line(&b) + &line(&a) + &line(&c);
    let mut r = source::parse("f", text.as_bytes()).unwrap();
    r.normalize();
    let paths: Vec<_> = r.events.iter().map(|e| e.path.clone().unwrap()).collect();
    assert_eq!(paths, ["/b", "/a", "/c"]);
    assert_eq!(r.duplicates, 1);
}

#[test]
fn filters_by_task_sub_task_and_time() {
    let mut sub = write_ev(11, 3, "/sub");
    sub.task = Some("t3".into());
    sub.task_chain = Some(Arc::from(vec![Arc::<str>::from("t1")]));
    let mut other = write_ev(12, 2, "/other");
    other.task = Some("t2".into());
    let own = write_ev(10, 1, "/own");
    let f = Filter { task: Some("t1".into()), ..Default::default() };
    assert!(f.keep(&own) && f.keep(&sub) && !f.keep(&other));
    let f = Filter { task: None, since: Some(at(2)), until: Some(at(3)), ..Default::default() };
    assert!(!f.keep(&own) && f.keep(&other) && f.keep(&sub));

    let now = at(3600);
    assert_eq!(parse_time("since", "10m", now).unwrap(), at(3000));
    assert_eq!(parse_time("since", "2h", now).unwrap(), at(-3600));
    assert_eq!(parse_time("since", "2026-11-28T15:00:01Z", now).unwrap(), at(1));
    assert_eq!(parse_time("until", "2026-11-28T16:00:01+01:00", now).unwrap(), at(1));
    let err = parse_time("since", "yesterday-ish", now).unwrap_err().to_string();
    assert!(err.starts_with("--since \"yesterday-ish\""), "{err}");
}

/// "What did tool call c2 do, and what of it was blocked": filters by step, kind and
/// verdict, and a STEP column in the table.
#[test]
fn filters_by_step_kind_and_verdict() {
    let step = bash_call;
    let mut a = write_ev(10, 1, "/a");
    a.step = step("c1");
    let mut b = write_ev(10, 2, "/b");
    b.step = step("c2");
    b.verdict = Some("denied".into());
    let mut c = ev(Kind::FileDelete, 3, 10, "t1");
    c.path = Some("/c".into());
    c.step = step("c2");
    c.verdict = Some("in_scope".into());
    let f = Filter { step: Some("c2".into()), ..Default::default() };
    assert!(!f.keep(&a) && f.keep(&b) && f.keep(&c));
    let f = Filter { step: Some("c2".into()), verdicts: vec!["denied".into()], ..Default::default() };
    assert!(f.keep(&b) && !f.keep(&c));
    let f = Filter { kinds: vec![Kind::FileDelete], ..Default::default() };
    assert!(!f.keep(&a) && !f.keep(&b) && f.keep(&c));
    assert_eq!(parse_kind("file_delete"), Ok(Kind::FileDelete));
    assert!(parse_kind("file_nuke").unwrap_err().contains("file_delete"));
    let mut out = Vec::new();
    render::table(&[&a, &b], &[], &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.lines().next().unwrap().contains("STEP"), "{text}");
    assert!(text.contains("Bash:c1") && text.contains("Bash:c2"), "{text}");
    let mut out = Vec::new();
    tree::render(&[&a, &b], &[], None, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.lines().any(|l| l.contains("/b") && l.contains("<Bash:c2>")), "{text}");
}

#[tokio::test]
async fn json_output_round_trips_and_filters() {
    let mut other = write_ev(12, 2, "/other");
    other.task = Some("t2".into());
    let evs = [write_ev(10, 1, "/a"), other, write_ev(10, 3, "/c")];
    let f = temp_file(&evs.iter().map(line).collect::<String>());
    let mut args = ReplayArgs::new(f.path().to_str().unwrap());
    args.format = ReplayFormat::Json;
    args.task = Some("t1".into());
    let out = run_to_string(args.clone()).await.unwrap();
    let back: Vec<Event> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(back, vec![evs[0].clone(), evs[2].clone()]);
    args.task = None;
    args.since = Some("2026-11-28T15:00:02Z".into());
    let out = run_to_string(args.clone()).await.unwrap();
    assert_eq!(out.lines().count(), 2);
    args.since = Some("soon".into());
    let err = run_to_string(args).await.unwrap_err().to_string();
    assert!(err.contains("--since"), "{err}");
}

#[test]
fn table_is_a_timeline_with_aligned_columns() {
    let mut exec = ev(Kind::Exec, 1, 10, "t1");
    exec.argv = Some(vec!["sh".into(), "-c".into(), "mv a b".into()]);
    let mut mv = ev(Kind::FileRename, 2, 10, "t1");
    mv.path = Some("/srv/a".into());
    mv.new_path = Some("/etc/b".into());
    mv.verdict = Some(Cow::Borrowed("out_of_scope"));
    mv.action = Some(Cow::Borrowed("alert"));
    mv.rule = Some("r.mv".into());
    let mut conn = ev(Kind::Connect, 3, 10, "t1");
    conn.dst = Some(crate::event::Dst::Ip { ip: "10.0.0.1".into(), port: 443 });
    let al = alert_for(&mv, "high");
    let mut out = Vec::new();
    render::table(&[&exec, &mv, &conn], &[&al], &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[0].starts_with("TIME") && lines[0].contains("VERDICT") && lines[0].ends_with("ALERT"));
    assert!(lines[1].starts_with("2026-11-28 15:00:01.000  exec"), "{}", lines[1]);
    assert!(lines[1].contains(r#"sh -c "mv a b""#));
    assert!(lines[2].contains("/srv/a -> /etc/b") && lines[2].contains("r.mv") && lines[2].ends_with("high"));
    assert!(lines[3].contains("10.0.0.1:443"));
    let col = lines[0].find("VERDICT").unwrap();
    assert_eq!(lines[1].find("in_scope"), Some(col));
    assert_eq!(lines[2].find("out_of_scope/alert"), Some(col));
    assert_eq!(lines[4], "3 events, 1 flagged, 1 alerts (1 high)");
}

#[test]
fn tree_puts_children_and_their_side_effects_under_their_parent() {
    let mut root = ev(Kind::Exec, 0, 100, "t1");
    root.argv = Some(vec!["python3".into(), "agent.py".into()]);
    root.exe = Some("/usr/bin/python3".into());
    root.comm = "python3".into();
    let mut fork = ev(Kind::Fork, 1, 101, "t1");
    fork.ppid = Some(100);
    fork.comm = "python3".into();
    fork.exe = Some("/usr/bin/python3".into());
    let mut exec = ev(Kind::Exec, 2, 101, "t1");
    exec.exe = Some("/usr/bin/dash".into());
    exec.argv = Some(vec!["sh".into(), "-c".into(), "rm /etc/hosts".into()]);
    let mut del = ev(Kind::FileDelete, 3, 101, "t1");
    del.path = Some("/etc/hosts".into());
    del.verdict = Some(Cow::Borrowed("violation"));
    del.rule = Some("r.del".into());
    let mut exit = ev(Kind::Exit, 4, 101, "t1");
    exit.status = Some(0);
    let root_write = write_ev(100, 5, "/srv/out");
    let mut start = ev(Kind::TaskStart, -1, 100, "t1");
    (start.comm, start.start, start.verdict, start.action) = ("agentmon".into(), None, None, None);
    start.detail.insert("mode".into(), "execute".into());
    let evs = [&start, &root, &fork, &exec, &del, &exit, &root_write];
    let mut out = Vec::new();
    tree::render(&evs, &[], None, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let find = |s: &str| lines.iter().position(|l| l.contains(s)).unwrap_or_else(|| panic!("{s}: {text}"));
    let indent = |i: usize| lines[i][2..].len() - lines[i][2..].trim_start().len();
    let (p, c, d) = (find("[100] python3"), find("[101]"), find("file_delete /etc/hosts"));
    assert!(p < c && c < d, "{text}");
    assert!(indent(c) > indent(p) && indent(d) > indent(c), "{text}");
    assert!(lines[c].contains("[101] sh /usr/bin/dash"), "{text}");
    assert!(lines[d].starts_with('!') && lines[d].contains("violation (r.del)"), "{text}");
    assert!(lines[find("exec sh -c")].starts_with(' '));
    // The root's later write is back at the root's level, after the child's exit.
    let w = find("file_write /srv/out");
    assert!(w > find("exit status 0") && indent(w) == indent(c), "{text}");
    assert_eq!(lines[0], "  14:59:59.000 task_start task t1 mode=execute");
    assert_eq!(*lines.last().unwrap(), "2 processes, 7 events, 1 flagged");
}

#[test]
fn command_line() {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        replay: ReplayArgs,
    }
    let c = Cli::try_parse_from([
        "x",
        "--from",
        "nats://h:4222",
        "--task",
        "t",
        "--since",
        "10m",
        "--format",
        "tree",
    ])
    .unwrap();
    assert_eq!(c.replay.format, ReplayFormat::Tree);
    assert_eq!(c.replay.since.as_deref(), Some("10m"));
    assert_eq!(Cli::try_parse_from(["x", "--from", "f"]).unwrap().replay.format, ReplayFormat::Table);
    assert!(Cli::try_parse_from(["x", "--task", "t"]).is_err(), "--from is required");
    assert!(Cli::try_parse_from(["x", "--from", "f", "--task-file", "m.yaml"]).is_err(), "needs --rules");
}

#[test]
fn a_deep_fork_chain_renders_in_linear_size_and_a_newline_in_a_name_stays_in_its_row() {
    let depth = 5_000u32;
    let mut evs = vec![ev(Kind::Exec, 0, 1, "t1")];
    for p in 2..depth {
        let mut f = ev(Kind::Fork, p as i128, p, "t1");
        f.ppid = Some(p - 1);
        evs.push(f);
    }
    let mut w = write_ev(depth - 1, depth as i128, "/tmp/a\n  fake row");
    w.verdict = Some(Cow::Borrowed("in_scope"));
    evs.push(w);
    let refs: Vec<&Event> = evs.iter().collect();
    let mut out = Vec::new();
    tree::render(&refs, &[], None, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let longest = text.lines().map(str::len).max().unwrap();
    assert!(longest < 400, "a line of {longest} bytes");
    assert!(text.len() < depth as usize * 200, "{} bytes", text.len());
    assert!(text.contains("/tmp/a\\n  fake row"), "{}", &text[text.len() - 300..]);
    assert!(!text.lines().any(|l| l.starts_with("  fake row")));
}

#[test]
fn blank_lines_are_said() {
    let e = write_ev(1, 0, "/x");
    let text = format!("{}\n\n{}", line(&e), line(&e));
    let rec = source::parse("f.jsonl", text.as_bytes()).unwrap();
    // (line() ends with its newline: the two newlines between are lines 2 and 3.)
    assert_eq!(
        rec.warnings,
        vec!["f.jsonl: 2 blank lines skipped (line 2, 3): a writer does not leave them".to_string()]
    );
    let clean = source::parse("f.jsonl", line(&e).as_bytes()).unwrap();
    assert!(clean.warnings.is_empty(), "{:?}", clean.warnings);
}

/// `-o FILE`: never the recording itself; written whole, owner-only, and a symlink
/// planted where the report goes is replaced, not followed.
#[test]
fn a_report_file_is_written_whole_and_never_through_a_link() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let rec = d.path().join("events.jsonl");
    std::fs::write(&rec, "x").unwrap();
    let e = check_output(&rec, rec.to_str().unwrap()).unwrap_err().to_string();
    assert!(e.contains("is the recording"), "{e}");
    let victim = d.path().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    let out = d.path().join("report.html");
    std::os::unix::fs::symlink(&victim, &out).unwrap();
    write_output(&out, b"<html>").unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    assert!(!std::fs::symlink_metadata(&out).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&out).unwrap(), b"<html>");
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(write_output(&d.path().join("no/such/dir/r.html"), b"x").is_err());
    let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left.len(), 3, "no temporary file left: {left:?}");
}

/// What the agent names — its process names, its tool calls, its task ids — stays on
/// its row in the table and the tree, as paths do.
#[test]
fn names_the_agent_chooses_stay_on_their_row() {
    let mut e = write_ev(2, 1, "/x");
    e.comm = "sh\n! 10:00:00.000 file_delete /etc/hosts".into();
    e.step = Some(Arc::new(crate::event::Step {
        tool: "Bash\n10:00".into(),
        call_id: "c\u{202e}1".into(),
        trace_id: None,
        span_id: None,
    }));
    let mut fork = ev(Kind::Fork, 0, 2, "t1");
    fork.comm = e.comm.clone();
    fork.ppid = Some(1);
    let rec = Recording { events: vec![fork, e], ..Default::default() };
    for f in [ReplayFormat::Table, ReplayFormat::Tree] {
        let mut out = Vec::new();
        show(&rec, &Filter::default(), "f", f, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines = text.lines().count();
        assert!(!text.contains('\u{202e}') && text.contains("sh\\n! 10:00"), "{f:?}: {text}");
        // The tree heads the call's write with its step: one line more, as escaped.
        let want = if matches!(f, ReplayFormat::Tree) { 5 } else { 4 };
        assert_eq!(lines, want, "{f:?}: one line each: {text}");
    }
}

#[test]
fn tree_nests_what_a_tool_call_did_under_its_step() {
    let call = bash_call;
    let record = |phase: &str, secs: i128| {
        let mut s = ev(Kind::Step, secs, 100, "t1");
        (s.comm, s.start, s.verdict, s.action) = ("agentmon".into(), None, None, None);
        s.step = call("c1");
        s.detail.insert("phase".into(), phase.into());
        s
    };
    let mut prompt = ev(Kind::Step, 0, 100, "t1");
    (prompt.comm, prompt.start, prompt.verdict, prompt.action) = ("agentmon".into(), None, None, None);
    prompt.detail.insert("prompt_sha256".into(), "ab".repeat(32).into());
    let mut root = ev(Kind::Exec, 0, 100, "t1");
    root.comm = "python3".into();
    let begin = record("begin", 1);
    let mut fork = ev(Kind::Fork, 2, 101, "t1");
    fork.ppid = Some(100);
    fork.step = call("c1");
    let mut del = ev(Kind::FileDelete, 3, 101, "t1");
    del.path = Some("/srv/gone".into());
    del.step = call("c1");
    let mut own = write_ev(100, 4, "/srv/own");
    own.step = call("c1");
    let end = record("end", 5);
    let after = write_ev(100, 6, "/srv/after");
    let evs = [&prompt, &root, &begin, &fork, &del, &own, &end, &after];
    let mut out = Vec::new();
    tree::render(&evs, &[], None, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let find = |s: &str| lines.iter().position(|l| l.contains(s)).unwrap_or_else(|| panic!("{s}: {text}"));
    let indent = |i: usize| (lines[i][2..].len() - lines[i][2..].trim_start().len()) / 2;
    let (p, head, child, gone, mine, later) = (
        find("[100] python3"),
        find("step Bash:c1 (ended 15:00:05.000)"),
        find("[101]"),
        find("file_delete /srv/gone"),
        find("file_write /srv/own"),
        find("file_write /srv/after"),
    );
    // The call's head in the process it ran in; the child it forked and its own
    // write beneath it; the child's delete beneath the child, with no second head.
    assert!(indent(head) == indent(p) + 1 && lines[head].contains("15:00:01.000"), "{text}");
    assert!(indent(child) == indent(head) + 1 && indent(mine) == indent(head) + 1, "{text}");
    assert!(indent(gone) == indent(child) + 1, "{text}");
    assert_eq!(lines.iter().filter(|l| l.contains("step Bash:c1")).count(), 1, "{text}");
    // What came after the call is back at the process's level.
    assert_eq!(indent(later), indent(p) + 1, "{text}");
    // The begin and end records are the head; a prompt covers nothing: at the top.
    assert!(!text.contains("step begin") && !text.contains("step end"), "{text}");
    assert_eq!(indent(find("prompt sha256:abab")), 0, "{text}");
    // The same call id again after its end (or in another task) is another call:
    // its own head and times; one that did nothing here keeps its records at the top.
    let (begin2, end2) = (record("begin", 7), record("end", 9));
    let mut again = write_ev(100, 8, "/srv/again");
    again.step = call("c1");
    let (begin3, end3) = (record("begin", 10), record("end", 11));
    let evs = [&root, &begin, &own, &end, &begin2, &again, &end2, &begin3, &end3];
    let mut out = Vec::new();
    tree::render(&evs, &[], None, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("15:00:01.000 step Bash:c1 (ended 15:00:05.000)"), "{text}");
    assert!(text.contains("15:00:07.000 step Bash:c1 (ended 15:00:09.000)"), "{text}");
    assert!(text.contains("step begin Bash c1") && text.contains("step end Bash c1"), "{text}");
    assert_eq!(text.matches("step begin").count() + text.matches("step end").count(), 2, "{text}");
}
