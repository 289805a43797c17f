use std::{borrow::Cow, collections::BTreeMap, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{http::Limits, *};
use crate::event::{ALERT_SCHEMA, Timestamp};

fn ev(kind: Kind) -> Event {
    Event::new(kind, Timestamp(0), "h".into())
}

fn alert(severity: &'static str) -> Alert {
    Alert {
        schema: Cow::Borrowed(ALERT_SCHEMA),
        kind: Cow::Borrowed("alert"),
        id: uuid::Uuid::now_v7(),
        ts: Timestamp(0),
        host: "h".into(),
        severity: Cow::Borrowed(severity),
        verdict: Cow::Borrowed("violation"),
        action: crate::policy::Action::Alert,
        rule: Some("r1".into()),
        reason: "because".into(),
        reasons: Vec::new(),
        task: None,
        event: ev(Kind::Exec),
    }
}

/// The samples of an exposition, series (`name{labels}`) to value, after checking
/// that every line is well formed: a `# HELP`/`# TYPE`/`# UNIT` comment, or
/// `name{key="value",…} number` with a plain name and unescaped-safe label values;
/// `# EOF` last; no series twice.
fn samples(text: &str) -> BTreeMap<String, f64> {
    assert!(text.ends_with("# EOF\n"), "no EOF marker: {text}");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(c) = line.strip_prefix('#') {
            let word = c.split(' ').nth(1).unwrap_or_default();
            assert!(matches!(word, "HELP" | "TYPE" | "UNIT" | "EOF"), "odd comment {line:?}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => {
                (n, Some(l.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line:?}"))))
            }
            None => (series, None),
        };
        assert!(
            name.starts_with("agentmon_") && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "odd name {line:?}"
        );
        for l in labels.into_iter().flat_map(|l| l.split(',')) {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("odd label {l:?} in {line:?}"));
            assert!(k.bytes().all(|b| b.is_ascii_lowercase()), "odd label name {line:?}");
            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).expect("quoted label value");
            assert!(!v.is_empty() && !v.contains(['"', '\\', '\n']), "odd label value {line:?}");
        }
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("odd value {line:?}"));
        assert!(out.insert(series.to_string(), value).is_none(), "series twice: {line:?}");
    }
    out
}

/// Asserts the exposition has exactly this sample line, once.
#[track_caller]
fn assert_line(text: &str, want: &str) {
    let n = text.lines().filter(|l| *l == want).count();
    assert_eq!(n, 1, "{want:?} appears {n} times in:\n{text}");
}

#[test]
fn counts_events_by_kind_verdict_and_action() {
    let m = Metrics::new();
    m.event(&ev(Kind::FileWrite));
    let mut e = ev(Kind::FileWrite);
    e.verdict = Some(Cow::Borrowed("out_of_scope"));
    e.action = Some(Cow::Borrowed("deny"));
    m.event(&e);
    let mut kill = ev(Kind::Action);
    kill.action = Some(Cow::Borrowed("kill"));
    m.event(&kill);
    m.event(&kill);
    // A late kill's record reports on a kill counted already: an event, not an action.
    let mut late = kill.clone();
    late.detail.insert("by".into(), serde_json::json!("kill_timeout"));
    m.event(&late);
    let mut thaw = ev(Kind::Action);
    thaw.action = Some(Cow::Owned("thaw".to_string()));
    m.event(&thaw);

    let text = m.encode();
    let s = samples(&text);
    assert_line(&text, r#"agentmon_events_total{kind="file_write"} 2"#);
    assert_line(&text, r#"agentmon_events_total{kind="action"} 4"#);
    assert_line(&text, r#"agentmon_events_total{kind="exec"} 0"#);
    assert_line(&text, r#"agentmon_verdicts_total{verdict="out_of_scope"} 1"#);
    assert_line(&text, r#"agentmon_verdicts_total{verdict="in_scope"} 0"#);
    assert_line(&text, r#"agentmon_actions_total{action="kill"} 2"#);
    assert_line(&text, r#"agentmon_actions_total{action="thaw"} 1"#);
    assert_line(&text, r#"agentmon_actions_total{action="freeze"} 0"#);
    // The policy's `deny` on a file event is what it asked for, not an action taken.
    assert!(!s.keys().any(|k| k.contains("deny")), "{text}");
    // Every kind has its series from the start, and nothing else is counted.
    let kinds: Vec<_> = s.keys().filter(|k| k.starts_with("agentmon_events_total{")).collect();
    assert_eq!(kinds.len(), Kind::ALL.len());
    let total: f64 = s.iter().filter(|(k, _)| k.starts_with("agentmon_events_total{")).map(|(_, v)| v).sum();
    assert_eq!(total, 6.0);
    assert!(text.contains("# TYPE agentmon_events counter\n"), "{text}");
}

#[test]
fn every_kind_and_known_value_has_its_own_counter() {
    // The fast path indexes kinds by `k as usize`: it must hit the kind's own series.
    let m = Metrics::new();
    for (i, k) in Kind::ALL.iter().enumerate() {
        for _ in 0..=i {
            m.event(&ev(*k));
        }
    }
    let s = samples(&m.encode());
    for (i, k) in Kind::ALL.iter().enumerate() {
        assert_eq!(s[&format!("agentmon_events_total{{kind=\"{}\"}}", k.as_str())], (i + 1) as f64, "{k:?}");
    }
    // The known label sets are the enums' whole sets: a new variant fails to compile
    // here until it is added to the list in metrics/mod.rs.
    let _ = |v: VerdictKind| match v {
        VerdictKind::InScope
        | VerdictKind::NeedsApproval
        | VerdictKind::OutOfScope
        | VerdictKind::Violation
        | VerdictKind::Denied => VERDICTS.len() == 5,
    };
    let _ = |a: Act| match a {
        Act::Kill | Act::Freeze | Act::Thaw | Act::Revoke | Act::Pause => ACTIONS.len() == 5,
    };
    let _ = |s: Severity| match s {
        Severity::Info | Severity::Low | Severity::Medium | Severity::High | Severity::Critical => {
            SEVERITIES.len() == 5
        }
    };
    let text = m.encode();
    for v in VERDICTS {
        assert_line(&text, &format!("agentmon_verdicts_total{{verdict=\"{}\"}} 0", v.as_str()));
    }
    for s in SEVERITIES {
        assert_line(&text, &format!("agentmon_alerts_total{{severity=\"{}\"}} 0", s.as_str()));
    }
}

#[test]
fn alerts_and_the_sink_count() {
    let m = Metrics::new();
    m.alert(&alert("high"));
    let mut sink: Box<dyn Sink> = Box::new(MetricsSink(m.clone()));
    sink.alert(&alert("high")).unwrap();
    sink.alert(&alert("low")).unwrap();
    sink.send(&ev(Kind::Connect)).unwrap();
    sink.flush().unwrap();
    sink.close().unwrap();
    let text = m.encode();
    assert_line(&text, r#"agentmon_alerts_total{severity="high"} 2"#);
    assert_line(&text, r#"agentmon_alerts_total{severity="low"} 1"#);
    assert_line(&text, r#"agentmon_alerts_total{severity="critical"} 0"#);
    assert_line(&text, r#"agentmon_events_total{kind="connect"} 1"#);
}

#[test]
fn cumulative_counters_only_rise() {
    let m = Metrics::new();
    // No loss yet: the family is left out of the exposition.
    assert!(!m.encode().contains("agentmon_kernel_events_lost"));
    m.set_lost("open", 5);
    m.set_lost("connect", 1);
    assert_line(&m.encode(), r#"agentmon_kernel_events_lost_total{kind="open"} 5"#);
    m.set_lost("open", 3);
    assert_line(&m.encode(), r#"agentmon_kernel_events_lost_total{kind="open"} 5"#);
    m.set_lost("open", 9);
    m.set_lost("open", 9);
    let text = m.encode();
    assert_line(&text, r#"agentmon_kernel_events_lost_total{kind="open"} 9"#);
    assert_line(&text, r#"agentmon_kernel_events_lost_total{kind="connect"} 1"#);

    m.set_spool_dropped(4);
    m.set_spool_dropped(2);
    m.set_nats_published(100);
    m.set_nats_published(7);
    let text = m.encode();
    assert_line(&text, "agentmon_spool_dropped_total 4");
    assert_line(&text, "agentmon_nats_published_total 100");
}

#[test]
fn gauges_follow_their_setters() {
    let m = Metrics::new();
    let text = m.encode();
    for g in [
        "agentmon_spool_bytes",
        "agentmon_nats_connected",
        "agentmon_probes_attached",
        "agentmon_tasks",
        "agentmon_tracked_processes",
        "agentmon_approvals_pending",
    ] {
        assert_line(&text, &format!("{g} 0"));
        assert!(text.contains(&format!("# TYPE {g} gauge\n")), "{text}");
    }
    assert!(text.contains("# UNIT agentmon_spool_bytes bytes\n"), "{text}");
    m.set_spool_bytes(u64::MAX);
    m.set_nats_connected(true);
    m.set_probes_attached(41);
    m.set_tasks(3);
    m.set_tracked_processes(12);
    m.set_approvals_pending(1);
    m.set_tasks(2);
    let text = m.encode();
    samples(&text);
    assert_line(&text, &format!("agentmon_spool_bytes {}", i64::MAX));
    assert_line(&text, "agentmon_nats_connected 1");
    assert_line(&text, "agentmon_probes_attached 41");
    assert_line(&text, "agentmon_tasks 2");
    assert_line(&text, "agentmon_tracked_processes 12");
    assert_line(&text, "agentmon_approvals_pending 1");
    m.set_nats_connected(false);
    assert_line(&m.encode(), "agentmon_nats_connected 0");
}

#[test]
fn odd_label_values_are_cleaned_and_bounded() {
    let m = Metrics::new();
    let mut e = ev(Kind::Exec);
    e.verdict = Some(Cow::Owned("we\"ird\\\n{x}=".to_string()));
    m.event(&e);
    m.event(&e);
    e.verdict = Some(Cow::Owned(String::new()));
    m.event(&e);
    m.set_lost(&"x".repeat(1000), 1);
    for i in 0..MAX_EXTRA + 10 {
        m.set_lost(&format!("k{i}"), 1);
    }
    let text = m.encode();
    let s = samples(&text);
    assert_line(&text, r#"agentmon_verdicts_total{verdict="we_ird___x__"} 2"#);
    assert_line(&text, r#"agentmon_verdicts_total{verdict="unknown"} 1"#);
    let long = format!("agentmon_kernel_events_lost_total{{kind=\"{}\"}}", "x".repeat(64));
    assert_eq!(s[&long], 1.0);
    // The long value took one of the extra series; the rest past the bound are `other`
    // (raised to the largest total given, 1).
    let lost = s.keys().filter(|k| k.starts_with("agentmon_kernel_events_lost_total{")).count();
    assert_eq!(lost, MAX_EXTRA + 1);
    assert_eq!(s[r#"agentmon_kernel_events_lost_total{kind="other"}"#], 1.0);
    assert_eq!(s[&format!("agentmon_kernel_events_lost_total{{kind=\"k{}\"}}", MAX_EXTRA - 2)], 1.0);
    assert!(!s.contains_key(&format!("agentmon_kernel_events_lost_total{{kind=\"k{}\"}}", MAX_EXTRA - 1)));
}

#[test]
fn metrics_are_shared_across_threads() {
    let m = Metrics::new();
    std::thread::scope(|sc| {
        for _ in 0..4 {
            let m = m.clone();
            sc.spawn(move || {
                for _ in 0..1000 {
                    m.event(&ev(Kind::Send));
                }
            });
        }
    });
    assert_line(&m.encode(), r#"agentmon_events_total{kind="send"} 4000"#);
}

// --- the endpoint ---

const TEST_LIMITS: Limits = Limits {
    read_timeout: Duration::from_millis(300),
    linger: Duration::from_millis(300),
    ..Limits::DEFAULT
};

async fn start() -> (SocketAddr, Metrics) {
    let l = bind("127.0.0.1:0".parse().unwrap(), false).await.unwrap();
    let addr = l.local_addr().unwrap();
    let m = Metrics::new();
    tokio::spawn(http::serve_with(l, m.clone(), TEST_LIMITS));
    (addr, m)
}

struct Reply {
    status: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Sends `raw` and reads the answer until the server closes (bounded in time).
async fn request(addr: SocketAddr, raw: &[u8]) -> Reply {
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(raw).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        out
    })
    .await
    .expect("the endpoint answered and closed in time");
    let text = String::from_utf8(got).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head: {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().to_string();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(": ").unwrap_or_else(|| panic!("odd header {l:?}"));
            (k.to_string(), v.to_string())
        })
        .collect();
    Reply { status, headers, body: body.to_string() }
}

#[tokio::test]
async fn serves_metrics_on_get_and_head() {
    let (addr, m) = start().await;
    m.event(&ev(Kind::FileDelete));
    m.set_tasks(2);
    let r = request(addr, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n").await;
    assert_eq!(r.status, "HTTP/1.1 200 OK");
    assert_eq!(r.header("content-type"), Some(CONTENT_TYPE));
    assert_eq!(r.header("content-length"), Some(r.body.len().to_string().as_str()));
    assert_eq!(r.body, m.encode());
    samples(&r.body);
    assert_line(&r.body, r#"agentmon_events_total{kind="file_delete"} 1"#);
    assert_line(&r.body, "agentmon_tasks 2");

    // A query string is ignored; HTTP/1.0 and bare-LF heads are understood.
    let r = request(addr, b"GET /metrics?x=1 HTTP/1.0\n\n").await;
    assert_eq!(r.status, "HTTP/1.1 200 OK");
    let r = request(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.status, "HTTP/1.1 200 OK");
    assert_eq!(r.body, "");
    assert_eq!(r.header("content-length"), Some(m.encode().len().to_string().as_str()));
}

#[tokio::test]
async fn healthz_says_whether_the_event_loop_runs() {
    let (addr, m) = start().await;
    m.beat();
    let r = request(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
    assert_eq!((r.status.as_str(), r.body.as_str()), ("HTTP/1.1 200 OK", "ok\n"));
    // Still for longer than it may be (stopped, traced, stuck).
    m.beat_ago(http::LIVE + std::time::Duration::from_secs(2));
    let r = request(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.status, "HTTP/1.1 503 Service Unavailable");
    assert!(r.body.starts_with("agentmon's event loop has not run for 7"), "{}", r.body);
    let r = request(addr, b"HEAD /healthz HTTP/1.1\r\n\r\n").await;
    assert_eq!((r.status.as_str(), r.body.as_str()), ("HTTP/1.1 503 Service Unavailable", ""));
    m.beat();
    let r = request(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.status, "HTTP/1.1 200 OK");
}

#[test]
fn the_build_is_a_metric() {
    let text = Metrics::new().encode();
    let want = format!("agentmon_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    assert!(text.lines().any(|l| l == want), "{text}");
}

#[tokio::test]
async fn other_paths_methods_and_garbage_are_refused() {
    let (addr, _m) = start().await;
    let r = request(addr, b"GET /x HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.status, "HTTP/1.1 404 Not Found");
    let r = request(addr, b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.status, "HTTP/1.1 404 Not Found");
    let r = request(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello").await;
    assert_eq!(r.status, "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    // A body the endpoint never reads still lets the client get the answer.
    let mut big = b"PUT /metrics HTTP/1.1\r\nContent-Length: 20000\r\n\r\n".to_vec();
    big.resize(big.len() + 20_000, b'a');
    let r = request(addr, &big).await;
    assert_eq!(r.status, "HTTP/1.1 405 Method Not Allowed");
    let r = request(addr, b"GET /metrics\r\n\r\n").await;
    assert_eq!(r.status, "HTTP/1.1 400 Bad Request");
    let r = request(addr, b"GET /metrics HTTP/2.0\r\n\r\n").await;
    assert_eq!(r.status, "HTTP/1.1 505 HTTP Version Not Supported");
    let r = request(addr, b"\xff\xfe /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.status, "HTTP/1.1 400 Bad Request");
}

#[tokio::test]
async fn an_unfinished_or_oversized_request_is_cut_off() {
    let (addr, m) = start().await;
    // The head never ends: 408 after the read timeout, and the connection closes.
    let r = request(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await;
    assert_eq!(r.status, "HTTP/1.1 408 Request Timeout");
    // Nothing at all.
    let r = request(addr, b"").await;
    assert_eq!(r.status, "HTTP/1.1 408 Request Timeout");
    // More than 8 KiB of head.
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
    big.resize(9 * 1024, b'a');
    let r = request(addr, &big).await;
    assert_eq!(r.status, "HTTP/1.1 431 Request Header Fields Too Large");
    // A client that connects and leaves does not stop the endpoint.
    drop(TcpStream::connect(addr).await.unwrap());
    m.set_tasks(5);
    let r = request(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert_line(&r.body, "agentmon_tasks 5");
}

#[tokio::test]
async fn slow_clients_do_not_block_others() {
    let (addr, _m) = start().await;
    // A few clients that never finish their request hold connections; a scrape
    // alongside them is answered at once, not after their timeouts.
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /met").await.unwrap();
        idle.push(s);
    }
    let t = std::time::Instant::now();
    let r = request(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.status, "HTTP/1.1 200 OK");
    assert!(t.elapsed() < TEST_LIMITS.read_timeout, "{:?}", t.elapsed());
}

#[tokio::test]
async fn remote_addresses_need_allow_remote() {
    for a in ["0.0.0.0:0", "192.0.2.1:9464", "[::]:0", "[2001:db8::1]:9464"] {
        let err = bind(a.parse().unwrap(), false).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{a}");
        assert!(err.to_string().contains("allow_remote"), "{err}");
        let err = serve(a.parse().unwrap(), Metrics::new(), false).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{a}");
    }
    // Loopback, including the IPv4-mapped form, is allowed (checked without binding
    // IPv6, which a test machine may lack).
    for a in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"] {
        assert!(http::is_local(a.parse().unwrap()), "{a}");
    }
    for a in ["0.0.0.0", "::", "::ffff:10.0.0.1", "10.1.2.3", "fe80::1"] {
        assert!(!http::is_local(a.parse().unwrap()), "{a}");
    }
    let l = bind("127.0.0.1:0".parse().unwrap(), false).await.unwrap();
    assert!(l.local_addr().unwrap().ip().is_loopback());
}
