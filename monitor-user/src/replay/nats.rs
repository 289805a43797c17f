//! The NATS source: a host's JetStream stream (`AGENTMON_<host>`), events from
//! `agentmon.<host>.events.>` and alerts from `agentmon.<host>.alerts`.
//!
//! Messages are read with the stream's message-get API (`STREAM.MSG.GET` with
//! `next_by_subj`), one request each, from the first sequence up to the stream's last
//! message when the read began. With `--since` the server finds the first sequence:
//! an ephemeral consumer (`DeliverPolicy::ByStartTime`, no acks, in memory, deleted at
//! once) reports where it would start and how many messages match. (A consumer's
//! message stream would need the `futures` traits, which this crate does not depend
//! on; pull requests through the core client's request API do not work, their
//! replies carry the message's own subject.) Works with nats-server 2.9: one filter
//! subject, no direct get.

use std::time::Duration;

use anyhow::{Context, anyhow};
use async_nats::{
    ConnectOptions,
    jetstream::{
        self,
        consumer::{AckPolicy, DeliverPolicy, pull},
        stream::RawMessageErrorKind,
    },
};

use super::{Recording, ReplayArgs};
use crate::{event::Timestamp, nats::Subjects};

/// How long one pull (or any JetStream API call) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `nats://[user:pass@]host:port[/STREAM]` (or `tls://`); several servers
/// comma-separated, the stream named once (on any of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsUrl {
    /// The server list, as `--nats` takes it.
    pub server: String,
    pub stream: Option<String>,
}

impl NatsUrl {
    pub fn parse(s: &str) -> Option<Self> {
        let mut servers = Vec::new();
        let mut stream: Option<String> = None;
        for entry in s.split(',').map(str::trim) {
            let scheme = ["nats://", "tls://"].into_iter().find(|p| entry.starts_with(p))?;
            let rest = &entry[scheme.len()..];
            let (addr, st) = match rest.split_once('/') {
                Some((a, st)) => (a, Some(st.trim_matches('/')).filter(|st| !st.is_empty())),
                None => (rest, None),
            };
            if let Some(st) = st {
                // Two different streams named: not one recording.
                if stream.as_deref().is_some_and(|s| s != st) {
                    return None;
                }
                stream = Some(st.to_string());
            }
            servers.push(format!("{scheme}{addr}"));
        }
        Some(Self { server: servers.join(","), stream })
    }

    /// The server list without credentials, for messages.
    pub fn display(&self) -> String {
        crate::nats::config::redact(&self.server)
    }
}

async fn connect(url: &NatsUrl, args: &ReplayArgs) -> anyhow::Result<async_nats::Client> {
    let auths = [args.nats_creds.is_some(), args.nats_user.is_some(), args.nats_token.is_some()];
    if auths.into_iter().filter(|a| *a).count() > 1 {
        anyhow::bail!("give only one of --nats-creds, --nats-user/--nats-password and --nats-token");
    }
    let mut opts = match &args.nats_creds {
        Some(f) => ConnectOptions::with_credentials_file(f)
            .await
            .with_context(|| format!("--nats-creds {}", f.display()))?,
        None => ConnectOptions::new(),
    };
    if let (Some(u), Some(p)) = (&args.nats_user, &args.nats_password) {
        opts = opts.user_and_password(u.clone(), p.clone());
    }
    if let Some(t) = &args.nats_token {
        opts = opts.token(t.clone());
    }
    opts.name("agentmon-replay")
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(REQUEST_TIMEOUT))
        .connect(
            crate::nats::config::servers(&url.server)
                .map_err(|e| anyhow::anyhow!("{}: {e}", url.display()))?,
        )
        .await
        .with_context(|| format!("cannot connect to {}", url.display()))
}

/// Reads the host's stream.
pub async fn read(
    url: &NatsUrl,
    args: &ReplayArgs,
    host: &str,
    since: Option<Timestamp>,
) -> anyhow::Result<Recording> {
    let client = connect(url, args).await?;
    let subjects = Subjects::new(host);
    let name = url.stream.clone().unwrap_or_else(|| subjects.stream());
    let at = format!("{}/{name}", url.display());
    let js = jetstream::new(client);
    let stream = js.get_stream(&name).await.with_context(|| format!("{at}: no stream {name}"))?;
    let deliver = match since {
        Some(t) => DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from_unix_timestamp_nanos(t.0)
                .map_err(|e| anyhow!("--since {t}: {e}"))?,
        },
        None => DeliverPolicy::All,
    };
    let mut rec = Recording::default();
    // Sub-tasks publish under their own subject: --task is filtered later, not here.
    read_subject(&stream, &subjects.all_events(), &deliver, &at, &mut rec).await?;
    if let Err(e) = read_subject(&stream, &subjects.alerts(), &deliver, &at, &mut rec).await {
        rec.warnings.push(format!("alerts not read: {e:#}"));
    }
    Ok(rec)
}

/// The first sequence to read for `filter`, or None when nothing is pending. With
/// --since, the server finds it: an ephemeral consumer starting at that time reports
/// the sequence before its first message and how many match.
async fn start_seq(
    stream: &jetstream::stream::Stream,
    filter: &str,
    deliver: &DeliverPolicy,
) -> anyhow::Result<Option<u64>> {
    if *deliver == DeliverPolicy::All {
        return Ok(Some(1));
    }
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: filter.to_string(),
            deliver_policy: *deliver,
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot create a consumer for {filter}"))?;
    let info = consumer.cached_info();
    let (start, pending) = (info.delivered.stream_sequence + 1, info.num_pending);
    let _ = stream.delete_consumer(&info.name).await;
    Ok((pending > 0).then_some(start))
}

/// Reads every message on `filter` from the start sequence up to the stream's last
/// message at the time of the call (a live stream is not followed).
async fn read_subject(
    stream: &jetstream::stream::Stream,
    filter: &str,
    deliver: &DeliverPolicy,
    at: &str,
    rec: &mut Recording,
) -> anyhow::Result<()> {
    let last = stream.get_info().await.with_context(|| format!("{at}: stream info"))?.state.last_sequence;
    let Some(mut seq) = start_seq(stream, filter, deliver).await.with_context(|| at.to_string())? else {
        return Ok(());
    };
    while seq <= last {
        let m = match stream.raw_message_builder().sequence(seq).next_by_subject(filter).send().await {
            Ok(m) => m,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
            Err(e) => return Err(anyhow!("{at}: reading {filter} at sequence {seq}: {e}")),
        };
        if m.sequence > last {
            break;
        }
        let parsed =
            serde_json::from_slice(&m.payload).map_err(anyhow::Error::from).and_then(|v| rec.push_json(v));
        if let Err(e) = parsed {
            return Err(anyhow!("{at}: message {} on {}: {e:#}", m.sequence, m.subject));
        }
        seq = m.sequence + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{net::TcpStream, process::Stdio, time::Instant};

    use async_nats::jetstream::stream;

    use super::*;
    use crate::{
        event::{Alert, Event, Kind},
        replay::{ReplayFormat, run, wall_now},
    };

    /// A nats-server with JetStream on a free port, storing in a temporary directory;
    /// killed when dropped.
    struct Server {
        child: std::process::Child,
        port: u16,
        _dir: tempfile::TempDir,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Fails (never skips) without nats-server, as the project's other NATS tests do.
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nats-server (scripts/setup.sh installs it): {e}"));
        let srv = Server { child, port, _dir: dir };
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(10), "nats-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        srv
    }

    fn event(task: &str, ts: Timestamp, path: &str) -> Event {
        let mut e = Event::new(Kind::FileWrite, ts, "test-host.example".into());
        e.pid = 42;
        e.comm = "agent".into();
        e.task = Some(task.into());
        e.path = Some(path.into());
        e
    }

    async fn replay(args: ReplayArgs) -> anyhow::Result<String> {
        let mut out = Vec::new();
        run(args, &mut out).await?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn urls() {
        let u = NatsUrl::parse("nats://bob:pw@10.0.0.1:4222/AGENTMON_x").unwrap();
        assert_eq!(u.server, "nats://bob:pw@10.0.0.1:4222");
        assert_eq!(u.stream.as_deref(), Some("AGENTMON_x"));
        assert_eq!(u.display(), "nats://10.0.0.1:4222");
        assert_eq!(NatsUrl::parse("nats://h:1/").unwrap().stream, None);
        assert!(NatsUrl::parse("/var/log/agentmon.jsonl").is_none());
        let list = NatsUrl::parse("nats://a:1,nats://u:p@b:2/AGENTMON_x").unwrap();
        assert_eq!(
            (list.server.as_str(), list.stream.as_deref()),
            ("nats://a:1,nats://u:p@b:2", Some("AGENTMON_x"))
        );
        assert_eq!(list.display(), "nats://a:1,nats://b:2");
        assert!(NatsUrl::parse("nats://a:1/S1,nats://b:2/S2").is_none());
    }

    #[tokio::test]
    async fn replays_a_hosts_stream() {
        let srv = start();
        let url = format!("nats://127.0.0.1:{}", srv.port);
        let js = jetstream::new(async_nats::connect(url.as_str()).await.unwrap());
        let subj = Subjects::new("test-host.example");
        let cfg =
            stream::Config { name: subj.stream(), subjects: subj.stream_subjects(), ..Default::default() };
        js.create_stream(cfg).await.unwrap();
        let publish = |subject: String, payload: String| {
            let js = js.clone();
            async move { js.publish(subject, payload.into()).await.unwrap().await.unwrap() }
        };
        let secs = |s: i128| Timestamp(wall_now().0 + s * 1_000_000_000);
        // Published before --since, though the event claims a later time: the server
        // must not deliver it.
        let early = event("t1", secs(3600), "/early");
        publish(subj.events(Some("t1")), serde_json::to_string(&early).unwrap()).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let since = wall_now();
        let a = event("t1", secs(1), "/a");
        let b = event("t2", secs(2), "/b");
        let mut c = event("t1.sub", secs(3), "/c");
        c.task_chain = Some(std::sync::Arc::from(vec![std::sync::Arc::<str>::from("t1")]));
        let old = event("t1", secs(-7200), "/old"); // published now, happened before --since
        for e in [&c, &a, &b, &a, &old] {
            publish(subj.events(e.task.as_deref()), serde_json::to_string(e).unwrap()).await;
        }
        let mut alert: Alert = serde_json::from_value(serde_json::json!({
            "schema": "agentmon.alert/1", "kind": "alert", "id": uuid::Uuid::now_v7(), "ts": a.ts,
            "host": "test-host.example", "severity": "high", "verdict": "violation", "action": "alert",
            "rule": "r", "reason": "x", "reasons": [], "task": null, "event": a,
        }))
        .unwrap();
        alert.event.verdict = Some("violation".into());
        publish(subj.alerts(), serde_json::to_string(&alert).unwrap()).await;

        let mut args = ReplayArgs::new(url.clone());
        args.host = Some("test-host.example".into());
        args.format = ReplayFormat::Json;
        args.since = Some(since.to_string());
        let out = replay(args.clone()).await.unwrap();
        let got: Vec<Event> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(got, vec![a.clone(), b.clone(), c.clone()], "{out}");

        // The whole stream; --task takes the sub-task along.
        args.since = None;
        args.task = Some("t1".into());
        let out = replay(args.clone()).await.unwrap();
        let paths: Vec<String> =
            out.lines().map(|l| serde_json::from_str::<Event>(l).unwrap().path.unwrap()).collect();
        assert_eq!(paths, ["/old", "/a", "/c", "/early"]);

        // The alert is read from the alerts subject and shown with its event.
        args.format = ReplayFormat::Table;
        let out = replay(args.clone()).await.unwrap();
        let line = out.lines().find(|l| l.contains(" /a ")).unwrap();
        assert!(line.ends_with("high"), "{out}");

        let mut bad = ReplayArgs::new(format!("{url}/NO_SUCH_STREAM"));
        bad.host = args.host.clone();
        let err = format!("{:#}", replay(bad).await.unwrap_err());
        assert!(err.contains(&format!("{url}/NO_SUCH_STREAM")), "{err}");
        drop(srv);
    }
}
