//! NATS past one server: a server list (the first member down) still delivers; the
//! host's stream is created with the configured replicas and retention, and an
//! existing stream that differs is said in the record, not used silently; a list
//! that does not parse stops agentmon before the command runs.

use std::path::Path;

use agentmon::{event::Kind, nats::Subjects};

use crate::{
    R,
    support::{self, SCENARIO_ENV, agentmon, ensure, eq, nats::suite_url, run_agentmon_with, workdir},
};

/// The configuration of stream `name` on the server at `url`.
fn stream_config(url: &str, name: &str) -> Result<async_nats::jetstream::stream::Config, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let client = async_nats::connect(url).await.map_err(|e| format!("connect {url}: {e}"))?;
        let js = async_nats::jetstream::new(client);
        let mut s = js.get_stream(name).await.map_err(|e| format!("stream {name}: {e}"))?;
        Ok(s.info().await.map_err(|e| e.to_string())?.config.clone())
    })
}

fn task(d: &Path) -> Result<std::path::PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let t = d.join("task.yaml");
    std::fs::write(
        &t,
        format!(
            "id: fleet\nmode: execute\nscope:\n  write: [\"{}/out/**\"]\n  exec: [\"{}\"]\n",
            d.display(),
            me.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok(t)
}

pub fn nats_server_lists_and_stream_settings() -> R {
    let url = suite_url()?;
    let d = workdir("fleet-lists");
    let t = task(&d)?;
    let host = format!("fleet-{}-{}", std::process::id(), uuid::Uuid::now_v7().simple());
    let subjects = Subjects::new(&host);
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    // A second of writes: the publisher connects (and checks the stream) meanwhile.
    let cmd = [me.display().to_string(), d.display().to_string(), "20".into(), "50".into()];
    // Nothing listens on port 1: the list's first member is down.
    let list = format!("nats://127.0.0.1:1, {url}");
    let run_with = |extra: &[&str]| {
        let spool = d.join("spool");
        let mut flags = vec!["--task", t.to_str().unwrap(), "--nats", &list, "--nats-host", &host];
        flags.extend_from_slice(&["--spool", spool.to_str().unwrap()]);
        flags.extend_from_slice(extra);
        run_agentmon_with(&flags, &cmd, &[(SCENARIO_ENV, "stream")], &d)
    };
    let run = run_with(&["--nats-max-age", "1h", "--nats-max-bytes", "64M"])?;
    eq(&format!("exit code: {}", run.stderr), run.code, 0)?;
    let msgs = support::nats::read_stream(&url, &subjects.stream())?;
    for e in &run.events {
        ensure(msgs.iter().any(|m| m.id.as_deref() == Some(e.id.to_string().as_str())), || {
            format!("{:?} event {} not in the stream", e.kind, e.id)
        })?;
    }
    let cfg = stream_config(&url, &subjects.stream())?;
    eq(
        "stream settings (replicas, max_age, max_bytes)",
        (cfg.num_replicas, cfg.max_age.as_secs(), cfg.max_bytes),
        (1, 3600, 64 << 20),
    )?;
    ensure(!run.events.iter().any(|e| e.detail.contains_key("stream_mismatch")), || {
        "a mismatch reported for the stream agentmon created".into()
    })?;

    // The same host, configured otherwise: used as it is, and said in the record.
    let run = run_with(&["--nats-max-age", "2h", "--nats-max-bytes", "64M"])?;
    eq("exit code", run.code, 0)?;
    let said = run
        .events
        .iter()
        .find(|e| e.kind == Kind::Loss && e.detail.contains_key("stream_mismatch"))
        .ok_or_else(|| format!("no record of the mismatched stream:\n{}", run.summary()))?;
    let text = said.detail["stream_mismatch"].as_str().unwrap_or_default();
    ensure(text.contains("max_age: the stream has 1h, configured 2h"), || text.to_string())?;
    eq("max_age unchanged", stream_config(&url, &subjects.stream())?.max_age.as_secs(), 3600)?;

    // A list with an entry that does not parse: refused before the command runs.
    let marker = d.join("ran");
    let out = std::process::Command::new(agentmon())
        .args(["exec", "--quiet", "--nats", &format!("{url},nats://127.0.0.1:99999"), "--"])
        .args(["/bin/touch", marker.to_str().unwrap()])
        .output()
        .map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure(out.status.code().is_some_and(|c| c != 0), || {
        format!("a bad server list was accepted: {stderr}")
    })?;
    ensure(stderr.contains("nats://127.0.0.1:99999"), || format!("the bad entry is not named: {stderr}"))?;
    ensure(!marker.exists(), || "the command ran with an unusable server list".into())?;
    Ok(())
}
