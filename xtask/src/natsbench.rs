//! `cargo xtask bench-nats`: NATS delivery. (1) Sustained acknowledged publish
//! throughput of agentmon's publisher: a spool filled with real-sized events sent to
//! a local nats-server with JetStream, until the last one is acknowledged, with the
//! CPU each side spent per message; beside it, in the same run, the pipeline's rate
//! (the publisher should keep up with it). (2) The same across a node kill of a
//! 3-node cluster (natscluster.rs): nothing lost, nothing twice. (3) End-to-end
//! latency: a workload writes a file every 10 ms under `agentmon exec --nats`; a
//! subscriber takes each event off NATS and compares its arrival with the event's
//! `ts` (the syscall's time in the kernel); `--samples 0` leaves it out.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use agentmon::{
    event::{Event, Kind, Timestamp},
    nats::{
        NatsArgs, Subjects,
        publish::Publisher,
        spool::{Shared, Writer},
    },
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

/// A spool at `dir` holding `n` real-sized events for `subjects`' host, and their ids.
pub(crate) fn filled(dir: &Path, subjects: &Subjects, n: u64) -> anyhow::Result<(Arc<Shared>, Vec<String>)> {
    let mut w = Writer::open(dir, 64 << 30)?;
    let payload = sample();
    let subject = subjects.events(Some("fix-bug-123"));
    let mut ids = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let id = uuid::Uuid::now_v7().to_string();
        w.append(&subject, &id, &payload)?;
        ids.push(id);
    }
    w.flush()?;
    // The writer's lock goes with it: the publisher only reads.
    Ok((w.shared(), ids))
}

/// The throughput run's figures.
struct Throughput {
    rate: f64,
    size: usize,
    /// CPU time per message of the publishing process and of the server.
    publisher_us: f64,
    server_us: f64,
}

fn throughput(url: &str, server_pid: u32, dir: &Path, n: u64) -> anyhow::Result<Throughput> {
    let subjects = Subjects::new("bench-tput");
    let (shared, _) = filled(&dir.join("spool"), &subjects, n)?;
    let args = NatsArgs { nats: Some(url.into()), ..Default::default() };
    let server = server_pid.to_string();
    let (me0, srv0) = (cpu_secs("self"), cpu_secs(&server));
    let start = Instant::now();
    let mut p = Publisher::start(args, subjects, shared.clone())?;
    while !shared.caught_up() {
        if start.elapsed() > Duration::from_secs(600) {
            bail!("not all acknowledged after 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let per = |secs: f64| secs * 1e6 / n as f64;
    let (publisher_us, server_us) = (per(cpu_secs("self") - me0), per(cpu_secs(&server) - srv0));
    p.close(Duration::from_secs(5));
    Ok(Throughput { rate, size: sample().len(), publisher_us, server_us })
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

/// User and system CPU time of process `pid` ("self" for this one), in seconds.
fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<f64> = stat
        .rsplit_once(") ")
        .map(|(_, r)| r.split(' ').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default();
    // utime and stime (fields 14 and 15): 10 and 11 counted from ppid (the state
    // letter before it is no number), in clock ticks.
    // SAFETY: sysconf reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    f.get(10..12).map(|t| (t[0] + t[1]) / hz).unwrap_or(0.0)
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

pub fn run(o: Options) -> anyhow::Result<()> {
    if !nix_is_root() {
        bail!("the latency run loads the kernel programs: run as root");
    }
    let tmp = tempfile::tempdir()?;
    let (srv, url) = server(tmp.path())?;
    eprintln!("throughput: {} events through the spool to JetStream", o.events);
    let t = throughput(&url, srv.0.id(), tmp.path(), o.events)?;
    eprintln!("pipeline: 1000000 records through decode, enrichment, policy and JSON");
    let pipeline = crate::pipeline::events_per_sec(1_000_000)?;
    eprintln!("failover: {} events to a 3-node cluster, the connected node killed", o.events);
    let f = crate::natscluster::failover(tmp.path(), o.events)?;
    println!("### NATS delivery (nats-server {}, JetStream file store, loopback)\n", server_version());
    println!(
        "- acknowledged publish throughput from the spool: {:.0} events/s ({} events of {} bytes, {} in \
         flight); CPU per message: publisher {:.1} µs, server {:.1} µs",
        t.rate,
        o.events,
        t.size,
        agentmon::nats::publish::WINDOW,
        t.publisher_us,
        t.server_us
    );
    println!(
        "- the kernel-to-JSON pipeline in the same run: {pipeline:.0} events/s; publish / pipeline = {:.2}",
        t.rate / pipeline
    );
    println!(
        "- failover (3 nodes, R3 stream): {:.0} events/s until the publisher's node was killed (at {} \
         acknowledged), the next ack {:.2} s after the kill, {:.0} events/s overall; in the stream {} \
         messages, {} distinct ids, {} of {} missing; {} resent and dropped as duplicates by the stream",
        f.before,
        f.killed_at,
        f.stall.as_secs_f64(),
        f.rate,
        f.stored,
        f.distinct,
        f.missing,
        o.events,
        f.resent
    );
    let failed = f.missing > 0 || f.stored != f.distinct;
    if o.samples > 0 {
        eprintln!("latency: {} events, one every 10 ms", o.samples);
        let mut lat = latency(&url, tmp.path(), o.samples)?;
        lat.sort_by(|a, b| a.total_cmp(b));
        println!(
            "- syscall → delivered on NATS ({} events): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            lat.len(),
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            lat[lat.len() - 1]
        );
    }
    if failed {
        bail!("the failover lost or duplicated messages");
    }
    Ok(())
}

fn server_version() -> String {
    Command::new("nats-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
