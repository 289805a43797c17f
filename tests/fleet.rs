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

/// `agentmon remote --host '*'`: one command to every host. Each answers for
/// itself: a task's kill only from the host that runs it (the others stay silent),
/// status from all; a signature for one host is refused fleet-wide.
pub fn nats_fleet_control() -> R {
    use agentmon::nats::control::{Command as Signed, FleetReply};
    let url = suite_url()?;
    let base = workdir("fleet-control");
    let key_path = base.join("keys/operator.key");
    std::fs::create_dir_all(base.join("keys")).map_err(|e| e.to_string())?;
    let key = agentmon::audit::load_or_create_key(&key_path).map_err(|e| e.to_string())?;
    let allowed = base.join("ctl-keys");
    std::fs::copy(agentmon::audit::public_key_path(&key_path), &allowed).map_err(|e| e.to_string())?;
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let hosts = [format!("fleet-a-{tag}"), format!("fleet-b-{tag}")];
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut children = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let d = base.join(i.to_string());
        std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
        let t = d.join("task.yaml");
        let id = if i == 0 { "job-a" } else { "job-b" };
        std::fs::write(&t, format!("id: {id}\nmode: execute\nscope:\n  exec: [\"{}\"]\n", me.display()))
            .map_err(|e| e.to_string())?;
        let spool = d.join("spool");
        let flags = [
            "--task",
            t.to_str().unwrap(),
            "--nats",
            &url,
            "--nats-host",
            h,
            "--nats-ctl-keys",
            allowed.to_str().unwrap(),
            "--spool",
            spool.to_str().unwrap(),
        ];
        let cmd = [me.display().to_string(), d.display().to_string()];
        let c =
            support::exec_command(&d.join("events.jsonl"), &flags, &cmd, &[(SCENARIO_ENV, "wait_for")], &d)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| e.to_string())?;
        children.push((d, c));
    }
    let fleet = |args: &[&str]| -> Result<(i32, serde_json::Value), String> {
        let out = std::process::Command::new(agentmon())
            .arg("remote")
            .args(args)
            .args(["--host", "*", "--wait", "2s", "--key", key_path.to_str().unwrap(), "--nats", &url])
            .output()
            .map_err(|e| e.to_string())?;
        let code = out.status.code().unwrap_or(-1);
        let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        Ok((code, v))
    };
    let result = (|| -> Result<(), String> {
        // Both hosts up and answering.
        let mut status = serde_json::Value::Null;
        support::wait(std::time::Duration::from_secs(20), || {
            status = fleet(&["status"]).map(|(_, v)| v).unwrap_or_default();
            hosts.iter().all(|h| status[h]["ok"].as_bool() == Some(true))
        });
        for (h, id) in hosts.iter().zip(["job-a", "job-b"]) {
            let tasks = status[h]["data"]["tasks"].as_array().cloned().unwrap_or_default();
            ensure(tasks.iter().any(|t| t["task"].as_str() == Some(id)), || {
                format!("status of {h}: {status}")
            })?;
        }
        // The kill of job-b: done by host b; host a, which does not run it, is silent.
        let (code, out) = fleet(&["kill", "job-b"])?;
        eq(&format!("fleet kill exit ({out})"), code, 0)?;
        eq("host b did it", out[&hosts[1]]["ok"].as_bool(), Some(true))?;
        ensure(out.get(&hosts[0]).is_none(), || {
            format!("host a answered for a task it does not run: {out}")
        })?;
        // A task no host runs: nobody did it.
        let (code, out) = fleet(&["kill", "no-such-task"])?;
        eq(&format!("unknown task exit ({out})"), code, 1)?;
        ensure(hosts.iter().all(|h| out.get(h).is_none()), || format!("{out}"))?;
        // Signed for host a only: refused on the fleet subject by every host.
        let one = Signed::signed(&key, "kill", &hosts[0], Some("job-a".into()), None, None, None);
        let r =
            support::nats::request(&url, &Subjects::fleet_ctl("kill"), serde_json::to_vec(&one).unwrap())?;
        let r: FleetReply = serde_json::from_value(r).map_err(|e| e.to_string())?;
        ensure(!r.reply.ok && r.reply.error.as_deref().is_some_and(|e| e.contains("is for host")), || {
            format!("{r:?}")
        })?;
        Ok(())
    })();
    let mut codes = Vec::new();
    for (d, c) in children {
        let _ = std::fs::write(d.join("go"), "");
        codes.push(c.wait_with_output().map_err(|e| e.to_string())?.status.code());
    }
    result?;
    eq("exit codes (job-a finished, job-b killed)", codes, vec![Some(0), Some(128 + 9)])?;
    Ok(())
}
