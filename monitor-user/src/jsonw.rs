//! The JSON-lines encoder for [`Event`] on the hot path.
//!
//! serde_json escapes strings byte by byte; nearly every string in an event (paths,
//! names) needs no escaping, so this writer checks a whole string first and copies
//! it in one go. The output is the same JSON the serde derive produces (a test
//! compares them), so readers use `serde_json` as usual.

use std::io::Write as _;

use crate::event::{Dst, Event};

#[inline]
fn needs_escape(s: &str) -> bool {
    s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\')
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    if !needs_escape(s) {
        out.extend_from_slice(s.as_bytes());
    } else {
        for c in s.chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                '\u{08}' => out.extend_from_slice(b"\\b"),
                '\u{0c}' => out.extend_from_slice(b"\\f"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => {
                    let mut b = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                }
            }
        }
    }
    out.push(b'"');
}

fn str_array<'a>(out: &mut Vec<u8>, items: impl Iterator<Item = &'a str>) {
    out.push(b'[');
    for (i, s) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, s);
    }
    out.push(b']');
}

fn key(out: &mut Vec<u8>, k: &str) {
    out.push(b',');
    out.push(b'"');
    out.extend_from_slice(k.as_bytes());
    out.extend_from_slice(b"\":");
}

fn num(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn opt_str(out: &mut Vec<u8>, k: &str, v: Option<&str>) {
    key(out, k);
    match v {
        Some(s) => write_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Appends `ev` as one JSON object (no newline).
pub fn write_event(out: &mut Vec<u8>, ev: &Event) {
    out.extend_from_slice(b"{\"schema\":");
    write_str(out, &ev.schema);
    key(out, "id");
    out.push(b'"');
    out.extend_from_slice(ev.id.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()).as_bytes());
    out.push(b'"');
    key(out, "ts");
    out.push(b'"');
    out.extend_from_slice(ev.ts.format(&mut [0; 30]).as_bytes());
    out.push(b'"');
    key(out, "host");
    write_str(out, &ev.host);
    key(out, "kind");
    out.push(b'"');
    out.extend_from_slice(ev.kind.as_str().as_bytes());
    out.push(b'"');
    key(out, "pid");
    num(out, ev.pid);
    key(out, "tid");
    num(out, ev.tid);
    key(out, "ppid");
    match ev.ppid {
        Some(p) => num(out, p),
        None => out.extend_from_slice(b"null"),
    }
    key(out, "comm");
    write_str(out, &ev.comm);
    if let Some(u) = ev.uid {
        key(out, "uid");
        num(out, u);
    }
    if let Some(g) = ev.gid {
        key(out, "gid");
        num(out, g);
    }
    if let Some(u) = &ev.user {
        key(out, "user");
        write_str(out, u);
    }
    if let Some(c) = &ev.cgroup {
        key(out, "cgroup");
        write_str(out, c);
    }
    if let Some(c) = &ev.container {
        key(out, "container");
        let _ = serde_json::to_writer(&mut *out, &**c);
    }
    if let Some(p) = &ev.pod {
        key(out, "pod");
        let _ = serde_json::to_writer(&mut *out, &**p);
    }
    opt_str(out, "exe", ev.exe.as_deref());
    opt_str(out, "task", ev.task.as_deref());
    if let Some(c) = &ev.task_chain {
        key(out, "task_chain");
        str_array(out, c.iter().map(|s| &**s));
    }
    if ev.unsigned {
        key(out, "unsigned");
        out.extend_from_slice(b"true");
    }
    if let Some(st) = &ev.step {
        key(out, "step");
        let _ = serde_json::to_writer(&mut *out, &**st);
    }
    for (k, v) in [("verdict", ev.verdict.as_deref()), ("action", ev.action.as_deref())] {
        if let Some(v) = v {
            key(out, k);
            write_str(out, v);
        }
    }
    opt_str(out, "rule", ev.rule.as_deref());
    opt_str(out, "reason", ev.reason.as_deref());
    if let Some(s) = &ev.syscall {
        key(out, "syscall");
        write_str(out, s);
    }
    if let Some(s) = &ev.path {
        key(out, "path");
        write_str(out, s);
    }
    if let Some(s) = &ev.new_path {
        key(out, "new_path");
        write_str(out, s);
    }
    if let Some(d) = &ev.dst {
        key(out, "dst");
        match d {
            Dst::Ip { ip, port } => {
                out.extend_from_slice(b"{\"ip\":");
                write_str(out, ip);
                out.extend_from_slice(b",\"port\":");
                num(out, *port);
                out.push(b'}');
            }
            Dst::Unix { unix } => {
                out.extend_from_slice(b"{\"unix\":");
                write_str(out, unix);
                out.push(b'}');
            }
        }
    }
    if let Some(s) = &ev.proto {
        key(out, "proto");
        write_str(out, s);
    }
    if let Some(a) = &ev.argv {
        key(out, "argv");
        str_array(out, a.iter().map(String::as_str));
    }
    if !ev.flags.is_empty() {
        key(out, "flags");
        str_array(out, ev.flags.iter().map(|f| &**f));
    }
    if let Some(s) = &ev.mode {
        key(out, "mode");
        write_str(out, s);
    }
    for (k, v) in [("status", ev.status), ("ret", ev.ret)] {
        if let Some(v) = v {
            key(out, k);
            num(out, v);
        }
    }
    if let Some(s) = &ev.signal {
        key(out, "signal");
        write_str(out, s);
    }
    if let Some(s) = &ev.error {
        key(out, "error");
        write_str(out, s);
    }
    // Rare and small: leave them to serde_json.
    if !ev.detail.is_empty() {
        key(out, "detail");
        let _ = serde_json::to_writer(&mut *out, &ev.detail);
    }
    if let Some(l) = &ev.lost {
        key(out, "lost");
        let _ = serde_json::to_writer(&mut *out, l);
    }
    if let Some(s) = ev.start {
        key(out, "start");
        num(out, s);
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Kind, Timestamp};

    fn both(ev: &Event) -> (serde_json::Value, serde_json::Value) {
        let mut out = Vec::new();
        write_event(&mut out, ev);
        let ours: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        (ours, serde_json::to_value(ev).unwrap())
    }

    #[test]
    fn same_json_as_serde_for_every_field() {
        let mut e = Event::new(Kind::FileRename, Timestamp(1_795_880_499_607_000_123), "host\"1".into());
        e.pid = 7;
        e.tid = 8;
        e.ppid = Some(1);
        e.comm = "we\u{1}ird\\comm".into();
        e.uid = Some(1000);
        e.gid = Some(1001);
        e.user = Some("al\"ice".into());
        e.cgroup = Some("/kubepods/besteffort/pod1/\"x".into());
        e.container = Some(std::sync::Arc::new(crate::container::Container {
            id: "c1".into(),
            runtime: "docker".into(),
        }));
        e.pod = Some(std::sync::Arc::new(crate::container::Pod { uid: "u".into(), qos: "burstable".into() }));
        e.exe = Some("/usr/bin/x".into());
        e.task = Some("t".into());
        e.task_chain = Some(vec![std::sync::Arc::from("parent")].into());
        e.step = Some(std::sync::Arc::new(crate::event::Step {
            tool: "Bash".into(),
            call_id: "toolu_01".into(),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            span_id: None,
        }));
        e.verdict = Some("out_of_scope".into());
        e.action = Some("alert".into());
        e.rule = Some("r.1".into());
        e.reason = Some("outside \"scope\"".into());
        e.syscall = Some("renameat2".into());
        e.path = Some("/tmp/a \"quoted\"\nname".into());
        e.new_path = Some("/tmp/é".into());
        e.dst = Some(Dst::Ip { ip: "::1".into(), port: 53 });
        e.proto = Some("udp".into());
        e.argv = Some(vec!["a".into(), "b\tc".into()]);
        e.flags = vec!["O_WRONLY".into(), "truncated".into()];
        e.mode = Some("0644".into());
        e.status = Some(-3);
        e.ret = Some(-13);
        e.signal = Some("SIGKILL".into());
        e.error = Some("EACCES".into());
        e.detail.insert("uid".into(), serde_json::json!(0));
        e.lost = Some([("open".to_string(), 3)].into());
        e.start = Some(99);
        let (ours, theirs) = both(&e);
        assert_eq!(ours, theirs);
        // And the sparse shape: optional fields absent, nullable ones null.
        let bare = Event::new(Kind::Exit, Timestamp(0), "h".into());
        let (ours, theirs) = both(&bare);
        assert_eq!(ours, theirs);
        let mut u = bare.clone();
        u.dst = Some(Dst::Unix { unix: "@abs".into() });
        let (ours, theirs) = both(&u);
        assert_eq!(ours, theirs);
    }
}
