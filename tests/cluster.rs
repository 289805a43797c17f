//! A 3-node JetStream cluster on loopback, as a fleet's SOC runs it, two agentmon
//! hosts publishing to R3 streams, twice: the node a host is connected to killed
//! mid-run (delivered by failover while it is down), then the cluster's quorum lost
//! mid-run (the connected nodes and the streams' leaders) and back only once the
//! tasks ended (delivered as the exec closes). An independent client (nats-py)
//! reads the streams: every event of each host exactly once (0 lost, 0 duplicated,
//! by Nats-Msg-Id), with its task records and the revoke of its end.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use agentmon::{event::Kind, nats::Subjects};

use crate::{
    R,
    support::{
        self, SCENARIO_ENV, ensure, eq, exec_command,
        nats::{Server, free_port},
        workdir,
    },
};

const NODES: usize = 3;

/// Node `i`'s configuration: its store, the cluster's routes, its monitoring port.
fn node_config(d: &Path, i: usize, routes: &[u16], http: u16) -> Result<PathBuf, String> {
    let all: Vec<String> = routes.iter().map(|p| format!("\"nats-route://127.0.0.1:{p}\"")).collect();
    let c = d.join(format!("n{i}.conf"));
    std::fs::write(
        &c,
        format!(
            "server_name: n{i}\nhttp: \"127.0.0.1:{http}\"\njetstream {{ store_dir: \"{}\" }}\ncluster {{\n  \
             name: fleet\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
            d.join(format!("n{i}-store")).display(),
            routes[i],
            all.join(", ")
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok(c)
}

/// Whether the node whose monitoring port is `http` has a client connection
/// named `name` (its /connz).
fn serves(http: u16, name: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", http)) else { return false };
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

/// Whether the cluster at `url` can make an R3 stream now (its JetStream meta
/// leader is elected and every peer has joined): a probe stream made and removed.
fn ready(url: &str) -> bool {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return false };
    rt.block_on(async {
        let Ok(client) = async_nats::connect(url).await else { return false };
        let js = async_nats::jetstream::new(client);
        let cfg = async_nats::jetstream::stream::Config {
            name: "PROBE".into(),
            subjects: vec!["probe.cluster".into()],
            num_replicas: NODES,
            ..Default::default()
        };
        js.get_or_create_stream(cfg).await.is_ok() && js.delete_stream("PROBE").await.is_ok()
    })
}

/// The leader of stream `name` (a node's server_name), asked at `url`.
fn leader(url: &str, name: &str) -> Result<Option<String>, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let client = async_nats::connect(url).await.map_err(|e| format!("connect {url}: {e}"))?;
        let js = async_nats::jetstream::new(client);
        let mut s = js.get_stream(name).await.map_err(|e| format!("stream {name}: {e}"))?;
        let info = s.info().await.map_err(|e| e.to_string())?;
        Ok(info.cluster.as_ref().and_then(|c| c.leader.clone()))
    })
}

/// What the node at `url` says of stream `name`: replicas, state, cluster.
fn describe(url: &str, name: &str) -> String {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return String::new();
    };
    rt.block_on(async {
        let Ok(client) = async_nats::connect(url).await else { return format!("{url}: no connection") };
        let js = async_nats::jetstream::new(client);
        match js.get_stream(name).await {
            Ok(mut s) => match s.info().await {
                Ok(i) => format!(
                    "replicas {}, messages {} ({}..{}), cluster {:?}",
                    i.config.num_replicas,
                    i.state.messages,
                    i.state.first_sequence,
                    i.state.last_sequence,
                    i.cluster
                ),
                Err(e) => format!("info: {e}"),
            },
            Err(e) => format!("stream: {e}"),
        }
    })
}

/// The messages of stream `name` as nats-py reads them: Nats-Msg-Id -> count,
/// and the subjects seen.
fn read_independently(url: &str, name: &str) -> Result<(HashMap<String, usize>, Vec<String>), String> {
    let py = std::env::var("AGENTMON_TEST_PYTHON")
        .map_err(|_| "AGENTMON_TEST_PYTHON is not set: run the tests with scripts/test.sh".to_string())?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/support/consume.py");
    let out = Command::new(&py).arg(&script).args([url, name]).output().map_err(|e| format!("{py}: {e}"))?;
    ensure(out.status.success(), || format!("consume.py: {}", String::from_utf8_lossy(&out.stderr)))?;
    let mut ids = HashMap::new();
    let mut subjects = Vec::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(l).map_err(|e| format!("consume.py: {e}"))?;
        *ids.entry(v["id"].as_str().unwrap_or_default().to_string()).or_default() += 1;
        subjects.push(v["subject"].as_str().unwrap_or_default().to_string());
    }
    Ok((ids, subjects))
}

/// Two hosts' tasks publishing while nodes die: with `quorum`, only the node host 0
/// is connected to (the cluster keeps two of three: agentmon must fail over and
/// deliver while it is down, checked before it comes back); without, also each
/// stream's leader and, if need be, another (the tasks end while the cluster cannot
/// store: the exec's close waits for the nodes to come back).
fn round(d: &Path, nodes: &mut [Server], cluster: &Cluster, quorum: bool) -> R {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let label = if quorum { "failover" } else { "outage" };
    let hosts: Vec<String> = (0..2)
        .map(|i| format!("{label}{i}-{}-{}", std::process::id(), uuid::Uuid::now_v7().simple()))
        .collect();
    let list = nodes.iter().map(Server::url).collect::<Vec<_>>().join(",");
    let mut runs = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let w = d.join(format!("{label}{i}"));
        std::fs::create_dir_all(&w).map_err(|e| e.to_string())?;
        let t = w.join("task.yaml");
        std::fs::write(
            &t,
            format!(
                "id: {label}-{i}\nmode: execute\ncredentials: [\"vault:lease/{i}\"]\nscope:\n  \
                 write: [\"{}/out/**\"]\n  exec: [\"{}\"]\n",
                w.display(),
                me.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let (events, spool) = (w.join("events.jsonl"), w.join("spool"));
        let flags = [
            "--task",
            t.to_str().unwrap(),
            "--nats",
            &list,
            "--nats-host",
            h,
            "--nats-replicas",
            "3",
            "--spool",
            spool.to_str().unwrap(),
        ];
        // 150 files over 3 s or more, held after 75 until the nodes are killed
        // (finding them may take longer than the run: a busy machine).
        let cmd = [me.display().to_string(), w.display().to_string(), "150".into(), "20".into(), "75".into()];
        let child = exec_command(&events, &flags, &cmd, &[(SCENARIO_ENV, "stream")], &w)
            .spawn()
            .map_err(|e| e.to_string())?;
        runs.push((child, events, Subjects::new(h)));
    }
    let slow = support::slowdown();
    // The node host 0 is connected to (and, without quorum, host 1's and each
    // stream's leader).
    let mut doomed = Vec::new();
    for h in if quorum { &hosts[..1] } else { &hosts[..] } {
        let name = format!("agentmon {h}");
        let mut at = None;
        support::wait(Duration::from_secs(20) * slow, || {
            at = (0..NODES).find(|&i| serves(cluster.monitors[i], &name));
            at.is_some()
        });
        doomed.push(at.ok_or_else(|| format!("{name}: connected to no node"))?);
    }
    if !quorum {
        for (_, _, s) in &runs {
            let mut l = None;
            support::wait(Duration::from_secs(20) * slow, || {
                l = (0..NODES).find_map(|i| leader(&nodes[i].url(), &s.stream()).ok().flatten());
                l.is_some()
            });
            let l = l.ok_or_else(|| format!("{}: no leader within 20 s", s.stream()))?;
            let i = l.strip_prefix('n').and_then(|n| n.parse::<usize>().ok()).filter(|i| *i < NODES);
            doomed.push(i.ok_or_else(|| format!("leader {l:?} is none of the nodes"))?);
        }
        doomed.sort_unstable();
        doomed.dedup();
        if doomed.len() < 2 {
            doomed.push((doomed[0] + 1) % NODES);
        }
    }
    for &i in &doomed {
        nodes[i].kill();
    }
    for (i, (child, _, s)) in runs.iter_mut().enumerate() {
        ensure(child.try_wait().ok().flatten().is_none(), || {
            format!("{}: the host's task ended before the kills: nothing tested", s.stream())
        })?;
        std::fs::write(d.join(format!("{label}{i}/go-on")), b"").map_err(|e| e.to_string())?;
    }
    if !quorum {
        // The tasks end while the cluster cannot store; the nodes come back during
        // the exec's close.
        support::wait(Duration::from_secs(20) * slow, || {
            runs.iter().all(|(_, events, _)| {
                std::fs::read_to_string(events).is_ok_and(|t| t.contains("\"kind\":\"task_end\""))
            })
        });
        std::thread::sleep(Duration::from_secs(1));
        for &i in &doomed {
            nodes[i].start_with(Some(&cluster.configs[i]), &[])?;
        }
    }
    let mut outcomes = Vec::new();
    for (mut child, events, s) in runs {
        let code = support::exit_within(&mut child, Duration::from_secs(60) * slow);
        if code.is_none() {
            let _ = child.kill();
        }
        outcomes.push((code.flatten(), events, s));
    }
    // With quorum, read while the node is still down: delivered by failover.
    let reader = (0..NODES).find(|i| !doomed.contains(i)).unwrap_or(0);
    for (code, events, s) in &outcomes {
        eq(&format!("{label}: exec exit ({})", s.stream()), *code, Some(0))?;
        whole(&nodes[reader].url(), events, s, &format!("{label} (nodes {doomed:?} down)"))?;
    }
    if quorum {
        for &i in &doomed {
            nodes[i].start_with(Some(&cluster.configs[i]), &[])?;
        }
        // Back, and caught up: still every event once.
        for (_, events, s) in &outcomes {
            whole(&nodes[doomed[0]].url(), events, s, &format!("{label} (node {} back)", doomed[0]))?;
        }
    }
    eprintln!("cluster: {label}: killed and restarted nodes {doomed:?} mid-run");
    Ok(())
}

/// Every event of the host's events file in its stream exactly once (read by
/// nats-py at `url`, retried while replicas catch up), its task records and revoke.
fn whole(url: &str, events: &Path, s: &Subjects, label: &str) -> R {
    let text = std::fs::read_to_string(events).map_err(|e| e.to_string())?;
    let (evs, _) = support::parse_stream(&text)?;
    ensure(evs.len() > 150, || format!("only {} events recorded", evs.len()))?;
    let (mut got, mut why) = (None, String::new());
    for _ in 0..20 {
        match read_independently(url, &s.stream()) {
            Ok((ids, subjects)) => {
                let missing = evs.iter().filter(|e| !ids.contains_key(&e.id.to_string())).count();
                let done = missing == 0;
                got = Some((ids, subjects, missing));
                if done {
                    break;
                }
            }
            Err(e) => why = e,
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (ids, subjects, missing) =
        got.ok_or_else(|| format!("{label}: {} unreadable at {url}: {why}", s.stream()))?;
    eq(&format!("{label}: {}: events lost ({})", s.stream(), describe(url, &s.stream())), missing, 0)?;
    let doubled: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    ensure(doubled.is_empty(), || format!("{label}: {}: duplicated Nats-Msg-Ids: {doubled:?}", s.stream()))?;
    for k in [Kind::TaskStart, Kind::TaskEnd] {
        ensure(evs.iter().any(|e| e.kind == k && ids.contains_key(&e.id.to_string())), || {
            format!("{label}: {}: no {k:?} in the stream", s.stream())
        })?;
    }
    ensure(subjects.iter().any(|x| *x == s.revoke()), || format!("{label}: {}: no revoke", s.stream()))?;
    Ok(())
}

/// The cluster's node configurations and monitoring ports.
struct Cluster {
    configs: Vec<PathBuf>,
    monitors: Vec<u16>,
}

pub fn nats_cluster_keeps_every_event() -> R {
    support::nats::suite_url()?; // the suite provides NATS (and its tools)
    let d = workdir("cluster");
    let routes: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
    let monitors: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
    let mut nodes: Vec<Server> = (0..NODES).map(|i| Server::planned(&d.join(format!("n{i}")))).collect();
    let configs =
        (0..NODES).map(|i| node_config(&d, i, &routes, monitors[i])).collect::<Result<Vec<_>, _>>()?;
    for (n, c) in nodes.iter_mut().zip(&configs) {
        n.start_with(Some(c), &[])?;
    }
    // The SOC's cluster is up before the hosts publish to it.
    ensure(support::wait(Duration::from_secs(30) * support::slowdown(), || ready(&nodes[0].url())), || {
        "the 3-node cluster never formed".into()
    })?;
    let cluster = Cluster { configs, monitors };
    round(&d, &mut nodes, &cluster, true)?;
    round(&d, &mut nodes, &cluster, false)
}
