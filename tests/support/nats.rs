//! NATS for the tests: the suite's broker (started by scripts/test.sh), private
//! brokers a test can stop and restart, and reading a stream back.

#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The broker scripts/test.sh starts; a test that needs it fails without it.
pub fn suite_url() -> Result<String, String> {
    std::env::var("AGENTMON_TEST_NATS").map_err(|_| {
        "AGENTMON_TEST_NATS is not set: run the tests with scripts/test.sh, which starts nats-server \
         (or start one with JetStream and set it, e.g. nats://127.0.0.1:4222)"
            .to_string()
    })
}

/// A nats-server of the test's own, on a free port, with its store in `dir`.
pub struct Server {
    pub port: u16,
    pub store: PathBuf,
    child: Option<Child>,
}

/// A port free now, below the kernel's ephemeral range (32768 and up): a broker a
/// test stops and starts again on its port keeps it, where one from that range
/// could be handed to another test's connection meanwhile (seen: a cluster node
/// that "did not come up" again).
pub fn free_port() -> u16 {
    loop {
        // (A v7 id's last bits are random.)
        let port = 20_000 + (uuid::Uuid::now_v7().as_u128() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Server {
    /// A port for a server not started yet (to test an absent broker first).
    pub fn planned(dir: &Path) -> Self {
        Self { port: free_port(), store: dir.join("nats-store"), child: None }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn start(&mut self) -> Result<(), String> {
        self.start_with(None, &[])
    }

    /// Starts with a configuration file (and environment for its `$VARS`).
    pub fn start_with(&mut self, config: Option<&Path>, env: &[(&str, &str)]) -> Result<(), String> {
        let mut cmd = Command::new("nats-server");
        match config {
            // The configuration names its own store.
            Some(c) => cmd.arg("-c").arg(c),
            None => cmd.arg("-js").arg("-sd").arg(&self.store),
        };
        let child = cmd
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start nats-server (installed by scripts/setup.sh): {e}"))?;
        self.child = Some(child);
        let t = Instant::now();
        // A JetStream node recovering its store under a loaded machine takes a while.
        while t.elapsed() < Duration::from_secs(30) * crate::support::slowdown() {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("nats-server on port {} did not come up", self.port))
    }

    /// Stops the server (SIGTERM) and waits for it to go.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One stored message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub seq: u64,
    pub subject: String,
    pub id: Option<String>,
    pub json: serde_json::Value,
}

/// User and password, or anonymous.
pub type Auth<'a> = Option<(&'a str, &'a str)>;

pub async fn connect(url: &str, auth: Auth<'_>) -> Result<async_nats::Client, String> {
    let o = match auth {
        Some((u, p)) => async_nats::ConnectOptions::with_user_and_password(u.into(), p.into()),
        None => async_nats::ConnectOptions::new(),
    };
    o.connect(url).await.map_err(|e| format!("connect {url}: {e}"))
}

/// Every message of `stream`, in stream order.
pub fn read_stream(url: &str, stream: &str) -> Result<Vec<Msg>, String> {
    read_stream_as(url, None, stream)
}

pub fn read_stream_as(url: &str, auth: Auth<'_>, stream: &str) -> Result<Vec<Msg>, String> {
    let o = match auth {
        Some((u, p)) => async_nats::ConnectOptions::with_user_and_password(u.into(), p.into()),
        None => async_nats::ConnectOptions::new(),
    };
    read_stream_with(url, o, stream)
}

/// Every message of `stream`, connecting with `opts` (token, nkey, TLS, ...).
pub fn read_stream_with(
    url: &str,
    opts: async_nats::ConnectOptions,
    stream: &str,
) -> Result<Vec<Msg>, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let client = opts.connect(url).await.map_err(|e| format!("connect {url}: {e}"))?;
        let js = async_nats::jetstream::new(client);
        let mut s = js.get_stream(stream).await.map_err(|e| format!("stream {stream}: {e}"))?;
        let info = s.info().await.map_err(|e| e.to_string())?.clone();
        let mut out = Vec::new();
        for seq in info.state.first_sequence..=info.state.last_sequence {
            let m = match s.get_raw_message(seq).await {
                Ok(m) => m,
                // Deleted messages leave gaps.
                Err(_) => continue,
            };
            let id = m.headers.get("Nats-Msg-Id").map(|v| v.to_string());
            let json = serde_json::from_slice(&m.payload)
                .map_err(|e| format!("seq {seq} on {}: not JSON: {e}", m.subject))?;
            out.push(Msg { seq, subject: m.subject.to_string(), id, json });
        }
        Ok(out)
    })
}

/// Sends `payload` as a request to `subject` and returns the reply's JSON.
pub fn request(url: &str, subject: &str, payload: Vec<u8>) -> Result<serde_json::Value, String> {
    request_as(url, None, subject, payload, Duration::from_secs(10))
}

pub fn request_as(
    url: &str,
    auth: Auth<'_>,
    subject: &str,
    payload: Vec<u8>,
    limit: Duration,
) -> Result<serde_json::Value, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let client = connect(url, auth).await?;
        let m = tokio::time::timeout(limit, client.request(subject.to_string(), payload.into()))
            .await
            .map_err(|_| format!("no reply on {subject}"))?
            .map_err(|e| format!("{subject}: {e}"))?;
        serde_json::from_slice(&m.payload).map_err(|e| format!("reply is not JSON: {e}"))
    })
}

/// Checks `records` against the OCSF 1.3.0 schema with an implementation that is
/// not agentmon's (tests/ocsf/validate.py: ocsf-json-schema + jsonschema, installed
/// by scripts/setup.sh); `d` holds the file it reads.
pub fn ocsf_conforms(d: &std::path::Path, records: &[&serde_json::Value]) -> Result<(), String> {
    let py = std::env::var("AGENTMON_TEST_PYTHON")
        .map_err(|_| "AGENTMON_TEST_PYTHON is not set: run the tests with scripts/test.sh".to_string())?;
    let file = d.join("ocsf.jsonl");
    let lines: Vec<String> = records.iter().map(|r| r.to_string()).collect();
    std::fs::write(&file, lines.join("\n")).map_err(|e| format!("{}: {e}", file.display()))?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/ocsf/validate.py");
    let out =
        std::process::Command::new(&py).arg(&script).arg(&file).output().map_err(|e| format!("{py}: {e}"))?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("validate.py: {e}; it said: {}", String::from_utf8_lossy(&out.stderr)))?;
    crate::support::eq("OCSF records validated", report["records"].as_u64(), Some(records.len() as u64))?;
    crate::support::ensure(report["errors"].as_array().is_some_and(|e| e.is_empty()), || {
        format!("OCSF 1.3.0 schema errors: {report:#}")
    })
}

/// Checks that message `m` is signed by the hex Ed25519 key `public`, as
/// docs/nats.md tells a broker to check it: `key` is that key, and `sig` verifies
/// over `<schema>\n` and `m` without `sig` as compact JSON with sorted keys.
pub fn signed_by(m: &serde_json::Value, public: &str) -> Result<(), String> {
    use ed25519_dalek::Verifier;
    crate::support::eq("the message's key", m["key"].as_str(), Some(public))?;
    let key = <[u8; 32]>::try_from(hex::decode(public).map_err(|e| e.to_string())?)
        .ok()
        .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok())
        .ok_or("not an Ed25519 public key")?;
    let sig = m["sig"].as_str().and_then(|s| hex::decode(s).ok()).and_then(|b| <[u8; 64]>::try_from(b).ok());
    let sig = sig.ok_or_else(|| format!("no signature: {m}"))?;
    let mut body = m.clone();
    body.as_object_mut().ok_or("not an object")?.remove("sig");
    let mut signed = format!("{}\n", m["schema"].as_str().unwrap_or_default()).into_bytes();
    signed.extend(serde_json::to_vec(&body).map_err(|e| e.to_string())?);
    key.verify(&signed, &ed25519_dalek::Signature::from_bytes(&sig))
        .map_err(|e| format!("the signature does not verify ({e}): {m}"))
}
