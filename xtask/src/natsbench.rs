//! `cargo xtask bench-nats`: NATS delivery. (1) Sustained acknowledged publish
//! throughput of agentmon's publisher: a spool filled with real-sized events sent to
//! a local nats-server with JetStream, until the last one is acknowledged. (2)
//! End-to-end latency: a workload writes a file every 10 ms under `agentmon exec
//! --nats`; a subscriber takes each event off NATS and compares its arrival with the
//! event's `ts` (the syscall's time in the kernel).

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use agentmon::{
    event::{Event, Kind, Timestamp},
    nats::{NatsArgs, Subjects, publish::Publisher, spool::Writer},
};
use anyhow::{Context, bail};
use futures_util::StreamExt;

use crate::bench::{build, nix_is_root};

#[derive(clap::Args)]
pub struct Options {
    /// Events in the throughput run.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Events timed in the latency run (one every 10 ms).
    #[arg(long, default_value_t = 500)]
    samples: u64,
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server(dir: &Path) -> anyhow::Result<(Server, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.join("store"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("nats-server (scripts/setup.sh installs it)")?;
    let s = Server(child);
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t.elapsed() > Duration::from_secs(10) {
            bail!("nats-server did not come up");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((s, format!("nats://127.0.0.1:{port}")))
}

/// A file_write event of the size agentmon writes.
fn sample() -> Vec<u8> {
    let mut e = Event::new(Kind::FileWrite, Timestamp::now(), Arc::from("bench-host"));
    e.pid = 4242;
    e.tid = 4242;
    e.ppid = Some(4241);
    e.comm = "python3".into();
    e.exe = Some(Arc::from("/usr/bin/python3.11"));
    e.task = Some(Arc::from("fix-bug-123"));
    e.syscall = Some("openat".into());
    e.path = Some("/home/agent/work/repo/src/module/file.py".into());
    e.flags = vec!["O_WRONLY".into(), "O_TRUNC".into()];
    e.verdict = Some("in_scope".into());
    e.action = Some("none".into());
    e.ret = Some(3);
    e.start = Some(12_345_678_901_234);
    let mut v = Vec::new();
    agentmon::jsonw::write_event(&mut v, &e);
    v
}

fn throughput(url: &str, dir: &Path, n: u64) -> anyhow::Result<(f64, usize)> {
    let subjects = Subjects::new("bench-tput");
    let mut w = Writer::open(&dir.join("spool"), 64 << 30)?;
    let payload = sample();
    let subject = subjects.events(Some("fix-bug-123"));
    for _ in 0..n {
        w.append(&subject, &uuid::Uuid::now_v7().to_string(), &payload)?;
    }
    w.flush()?;
    let shared = w.shared();
    let args = NatsArgs { nats: Some(url.into()), ..Default::default() };
    let start = Instant::now();
    let mut p = Publisher::start(args, subjects, shared.clone())?;
    while !shared.caught_up() {
        if start.elapsed() > Duration::from_secs(600) {
            bail!("not all acknowledged after 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let secs = start.elapsed().as_secs_f64();
    p.close(Duration::from_secs(5));
    Ok((n as f64 / secs, payload.len()))
}

fn latency(url: &str, dir: &Path, samples: u64) -> anyhow::Result<Vec<f64>> {
    let (agentmon, looper) = build()?;
    let host = "bench-latency";
    let subjects = Subjects::new(host);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let client = rt.block_on(async_nats::connect(url))?;
    let mut sub = rt.block_on(client.subscribe(subjects.all_events()))?;
    rt.block_on(client.flush())?;
    let work = dir.join("work");
    std::fs::create_dir_all(&work)?;
    let mut child = Command::new(agentmon)
        .args(["exec", "-q", "--no-rules", "-e", "/dev/null", "--nats", url, "--nats-host", host, "--spool"])
        .arg(dir.join("spool-lat"))
        .arg("--")
        .arg(looper)
        .args(["paced", &samples.to_string()])
        .arg(&work)
        .stdout(Stdio::null())
        .spawn()?;
    let mut lat = Vec::new();
    rt.block_on(async {
        while (lat.len() as u64) < samples {
            let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(30), sub.next()).await else { break };
            let now = Timestamp::now();
            let Ok(ev) = serde_json::from_slice::<Event>(&m.payload) else { continue };
            if ev.kind == Kind::FileCreate || ev.kind == Kind::FileWrite {
                lat.push((now.0 - ev.ts.0) as f64 / 1e6);
            }
        }
    });
    child.wait()?;
    if (lat.len() as u64) < samples {
        bail!("only {} of {samples} events arrived on NATS", lat.len());
    }
    Ok(lat)
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

pub fn run(o: Options) -> anyhow::Result<()> {
    if !nix_is_root() {
        bail!("the latency run loads the kernel programs: run as root");
    }
    let tmp = tempfile::tempdir()?;
    let (_srv, url) = server(tmp.path())?;
    eprintln!("throughput: {} events through the spool to JetStream", o.events);
    let (rate, size) = throughput(&url, tmp.path(), o.events)?;
    eprintln!("latency: {} events, one every 10 ms", o.samples);
    let mut lat = latency(&url, tmp.path(), o.samples)?;
    lat.sort_by(|a, b| a.total_cmp(b));
    println!("### NATS delivery (nats-server {}, JetStream file store, loopback)\n", server_version());
    println!(
        "- acknowledged publish throughput from the spool: {rate:.0} events/s ({} events of {size} bytes, \
         256 in flight)",
        o.events
    );
    println!(
        "- syscall → delivered on NATS ({} events): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat[lat.len() - 1]
    );
    Ok(())
}

fn server_version() -> String {
    Command::new("nats-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
