//! Userspace pipeline throughput without the kernel: decode -> process table and
//! enrichment -> JSON serialisation, on records shaped like real ones.

use std::{collections::HashMap, time::Instant};

use agentmon::{
    decode::{decode, encode},
    enrich::Enricher,
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
    let mut enr =
        Enricher::new(SensitiveSet::default_set(), HashMap::from([(1, std::sync::Arc::from("bench"))]));
    let mut sink = JsonLines::to_writer("null", std::io::sink());
    let start = Instant::now();
    for i in 0..n {
        let raw = decode(&records[i % records.len()])?;
        if let Some(ev) = enr.event(&raw) {
            sink.send(&ev)?;
        }
    }
    sink.flush()?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}
