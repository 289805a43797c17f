//! Userspace pipeline throughput without the kernel: the production record path
//! (`Pipeline::record`: decode -> process table and enrichment -> the task's step
//! and held calls' decisions -> policy judgement with the shipped rules) -> JSON,
//! on records shaped like real ones.

use std::{collections::HashMap, time::Instant};

use agentmon::{
    decode::encode,
    enrich::Enricher,
    runner::Pipeline,
    sensitive::SensitiveSet,
    sink::{JsonLines, Sink},
};
use monitor_common::{kind, op, pflags};

/// Events per second through the pipeline (one core).
pub fn events_per_sec(n: usize) -> anyhow::Result<f64> {
    let mut write = encode(
        kind::OPEN,
        op::OPENAT,
        &[("", &["main.rs", "src", "repo", "srv"])],
        b"",
        [0o1101, 0o644, 0, 0, 0],
    );
    // pflags: resolved from the fd, as the kernel sends successful opens.
    write[monitor_common::HEADER_SIZE + 40] = pflags::OP1_FROM_FD as u8;
    let v4 = u32::from_le_bytes([10, 0, 0, 7]) as u64;
    let connect = encode(kind::CONNECT, op::CONNECT, &[], b"", [2 | 443 << 16 | 1 << 32, v4, 0, 3, 0]);
    let rename = encode(
        kind::RENAME,
        op::RENAMEAT2,
        &[("a.tmp", &["build", "repo", "srv"]), ("a.o", &["build", "repo", "srv"])],
        b"",
        [0; 5],
    );
    let records = [write, connect, rename];
    // (none of these three matches a shipped rule: the common case)
    let enr = Enricher::new(SensitiveSet::default_set(), HashMap::from([(1, std::sync::Arc::from("bench"))]));
    let judge = agentmon::judge::Judge::new(Some(
        agentmon::policy::shipped::rules().map_err(|e| anyhow::anyhow!("{e:?}"))?,
    ));
    let mut pipeline = Pipeline::new(enr, judge);
    let mut sink = JsonLines::to_writer("null", std::io::sink());
    let start = Instant::now();
    for i in 0..n {
        if let Some((ev, alert)) = pipeline.record(&records[i % records.len()]) {
            sink.send(&ev)?;
            if let Some(a) = alert {
                sink.alert(&a)?;
            }
        }
    }
    sink.flush()?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Policy engine throughput (one core): the shipped rules and a realistic task,
/// over a mix of in-scope, out-of-scope and rule-matching events.
pub fn judged_per_sec(n: usize) -> anyhow::Result<f64> {
    use agentmon::{
        event::{Dst, Event, Kind, Timestamp},
        policy::{Ctx, Engine, Windows, shipped},
    };
    let task = agentmon::task::parse(
        "id: bench\nmode: execute\nexpires_in: 1h\nscope:\n  read: [\"/srv/repo/**\"]\n  write: [\"/srv/repo/**\"]\n  \
         delete: [\"/srv/repo/build/**\"]\n  exec: [\"/usr/bin/git\", \"/usr/bin/python3*\"]\n  \
         connect: [\"10.0.0.0/8:443\", \"127.0.0.1:8080\"]\napproval_required: [rename]\n",
        std::path::Path::new("bench.yaml"),
        Timestamp(0),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let engine = Engine::new(shipped::rules().map_err(|e| anyhow::anyhow!("{e:?}"))?);
    let mk = |kind: Kind, path: Option<&str>, exe: Option<&str>, dst: Option<Dst>| {
        let mut e = Event::new(kind, Timestamp(1), std::sync::Arc::from("h"));
        e.path = path.map(String::from);
        e.exe = exe.map(std::sync::Arc::from);
        e.dst = dst;
        e.argv = exe.map(|x| vec![x.to_string(), "status".into()]);
        e
    };
    let events = [
        mk(Kind::FileWrite, Some("/srv/repo/src/main.rs"), None, None),
        mk(Kind::FileCreate, Some("/srv/repo/target/debug/x.o"), None, None),
        mk(Kind::FileWrite, Some("/home/alice/.bashrc"), None, None),
        mk(Kind::Exec, Some("/usr/bin/git"), Some("/usr/bin/git"), None),
        mk(Kind::Connect, None, None, Some(Dst::Ip { ip: "10.1.2.3".into(), port: 443 })),
        mk(Kind::SensitiveRead, Some("/srv/repo/.env"), None, None),
        mk(Kind::FileDelete, Some("/srv/repo/build/a.o"), None, None),
        mk(Kind::Fork, None, None, None),
    ];
    let cx = Ctx { task: Some(&task), ..Default::default() };
    let mut win = Windows::default();
    let mut violations = 0usize;
    let start = Instant::now();
    for i in 0..n {
        let v = engine.judge(&events[i % events.len()], &cx, &mut win);
        violations += v.reasons.len();
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    anyhow::ensure!(violations > 0, "the mix must exercise rules");
    Ok(rate)
}
