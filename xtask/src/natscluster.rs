//! `cargo xtask bench-nats`, the failover run: the throughput run's spool sent to a
//! 3-node JetStream cluster on loopback (an R3 stream), the node the publisher is
//! connected to (found by its `/connz`) killed a third of the way through and
//! started again once all is acknowledged; then every message is read back from the
//! stream and counted by its `Nats-Msg-Id`: none may be missing or there twice.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant},
};

use agentmon::nats::{NatsArgs, Subjects, publish::Publisher};
use anyhow::{Context, bail};
use futures_util::StreamExt;

const NODES: usize = 3;

/// What the failover run saw.
pub struct Failover {
    /// Events per second, from start to the last ack, the failover included.
    pub rate: f64,
    /// Acknowledged when the node was killed, and the rate until then.
    pub killed_at: u64,
    pub before: f64,
    /// From the kill to the first ack after it.
    pub stall: Duration,
    /// Messages in the stream, and distinct `Nats-Msg-Id`s among them.
    pub stored: usize,
    pub distinct: usize,
    /// Ids spooled that the stream does not hold.
    pub missing: usize,
    /// Acks that said the stream already had the message (resent after the kill,
    /// dropped by the stream's dedupe).
    pub resent: u64,
}

struct Node {
    config: PathBuf,
    client: u16,
    http: u16,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self) -> anyhow::Result<()> {
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("nats-server (scripts/setup.sh installs it)")?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether a client connection named `name` is on this node.
    fn serves(&self, name: &str) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.http)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(b"GET /connz?limit=1024 HTTP/1.0\r\nHost: localhost\r\n\r\n").is_err() {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        let Some((_, json)) = body.split_once("\r\n\r\n") else { return false };
        serde_json::from_str::<serde_json::Value>(json).is_ok_and(|v| {
            v["connections"].as_array().into_iter().flatten().any(|c| c["name"].as_str() == Some(name))
        })
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn cluster(dir: &Path) -> anyhow::Result<Vec<Node>> {
    let routes = (0..NODES).map(|_| free_port()).collect::<anyhow::Result<Vec<_>>>()?;
    let all: Vec<String> = routes.iter().map(|p| format!("\"nats-route://127.0.0.1:{p}\"")).collect();
    let mut nodes = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        let (client, http) = (free_port()?, free_port()?);
        let config = dir.join(format!("n{i}.conf"));
        std::fs::write(
            &config,
            format!(
                "server_name: n{i}\nlisten: \"127.0.0.1:{client}\"\nhttp: \"127.0.0.1:{http}\"\n\
                 jetstream {{ store_dir: \"{}\" }}\ncluster {{\n  name: bench\n  listen: \"127.0.0.1:{route}\"\n  \
                 routes: [{}]\n}}\n",
                dir.join(format!("n{i}-store")).display(),
                all.join(", ")
            ),
        )?;
        let mut n = Node { config, client, http, child: None };
        n.start()?;
        nodes.push(n);
    }
    Ok(nodes)
}

/// Whether the cluster can make an R3 stream now (its meta leader elected, every
/// peer joined): a probe stream made and removed.
async fn ready(url: &str) -> bool {
    let Ok(client) = async_nats::connect(url).await else { return false };
    let js = async_nats::jetstream::new(client);
    let cfg = async_nats::jetstream::stream::Config {
        name: "PROBE".into(),
        subjects: vec!["probe.bench".into()],
        num_replicas: NODES,
        ..Default::default()
    };
    js.get_or_create_stream(cfg).await.is_ok() && js.delete_stream("PROBE").await.is_ok()
}

pub fn failover(dir: &Path, n: u64) -> anyhow::Result<Failover> {
    let mut nodes = cluster(dir)?;
    let urls: Vec<String> = nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.client)).collect();
    let list = urls.join(",");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let t = Instant::now();
    while !rt.block_on(ready(&urls[0])) {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("the 3-node cluster never became ready");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let host = "bench-failover";
    let subjects = Subjects::new(host);
    let (shared, ids) = crate::natsbench::filled(&dir.join("spool-failover"), &subjects, n)?;
    let args = NatsArgs { nats: Some(list), nats_replicas: NODES, ..Default::default() };
    let start = Instant::now();
    let mut p = Publisher::start(args, subjects.clone(), shared.clone())?;
    let name = format!("agentmon {host}");
    while p.status.published.load(Relaxed) < n / 3 {
        if start.elapsed() > Duration::from_secs(300) {
            bail!("a third not acknowledged after 5 minutes");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed_at = p.status.published.load(Relaxed);
    let before = killed_at as f64 / start.elapsed().as_secs_f64();
    let victim = nodes.iter().position(|node| node.serves(&name)).context("no node serves the publisher")?;
    nodes[victim].kill();
    let (killed, acked) = (Instant::now(), p.status.published.load(Relaxed));
    let mut stall = None;
    while !shared.caught_up() {
        if stall.is_none() && p.status.published.load(Relaxed) > acked {
            stall = Some(killed.elapsed());
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("not all acknowledged after 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let resent = p.status.duplicates.load(Relaxed);
    p.close(Duration::from_secs(5));
    nodes[victim].start()?;
    // Read from a node that stayed up; the killed one may still be catching up, and a
    // consumer may take a few tries while the stream settles.
    let reader = &urls[(victim + 1) % NODES];
    let mut tries = 0;
    let got = loop {
        match rt.block_on(read_ids(reader, &subjects.stream(), n as usize)) {
            Ok(ids) => break ids,
            Err(e) if tries < 10 => {
                tries += 1;
                eprintln!("  reading the stream back: {e}; again");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    };
    let distinct: HashSet<&String> = got.iter().collect();
    let missing = ids.iter().filter(|id| !distinct.contains(id)).count();
    Ok(Failover {
        rate,
        killed_at,
        before,
        stall: stall.unwrap_or_else(|| killed.elapsed()),
        stored: got.len(),
        distinct: distinct.len(),
        missing,
        resent,
    })
}

/// Every message's `Nats-Msg-Id` in `stream` (at least `n` are expected).
async fn read_ids(url: &str, stream: &str, n: usize) -> anyhow::Result<Vec<String>> {
    use async_nats::jetstream::consumer::pull::OrderedConfig;
    let js = async_nats::jetstream::new(async_nats::connect(url).await?);
    let mut s = js.get_stream(stream).await?;
    let stored = s.info().await?.state.messages as usize;
    let consumer = s.create_consumer(OrderedConfig::default()).await?;
    let mut msgs = consumer.messages().await?;
    let mut ids = Vec::with_capacity(stored);
    while ids.len() < stored.max(n) {
        let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(10), msgs.next()).await else { break };
        let m = m?;
        let id = m.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.to_string());
        ids.push(id.unwrap_or_default());
    }
    Ok(ids)
}
