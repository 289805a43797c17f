//! `agentmon daemon [--config FILE]` and `agentmon attach`. The configuration file
//! is YAML; every option, its default and meaning is in deploy/agentmon.yaml.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::{
    ctl::{self, DAEMON_SOCKET},
    nats::{NatsArgs, NatsOptions},
    runner::{
        AuditOptions, DaemonOptions, Outputs, RulesChoice,
        select::{Selector, Selectors},
    },
    sensitive::{DEFAULT_PATTERNS, SensitiveSet},
    sink::Format,
};

#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// Configuration file (YAML; see deploy/agentmon.yaml). Without it, the defaults.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Control socket (overrides the file's `socket`).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    /// The root of the running tree to bind.
    #[arg(long)]
    pub pid: u32,
    /// The task manifest (observe mode: a running process cannot be sandboxed).
    #[arg(long, value_name = "FILE")]
    pub task: PathBuf,
    /// Also write this task's events to FILE.
    #[arg(long, short = 'e', value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", default_value = DAEMON_SOCKET)]
    pub socket: PathBuf,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Config {
    socket: Option<PathBuf>,
    events: Option<PathBuf>,
    format: Option<String>,
    /// `shipped`, `none`, or a directory.
    rules: Option<String>,
    sensitive: Vec<String>,
    default_sensitive: Option<bool>,
    ringbuf_mb: Option<u32>,
    /// Processes tracked at once, over all tasks.
    max_tracked: Option<u32>,
    state_dir: Option<PathBuf>,
    /// How long a held call waits for an approver (e.g. `60s`).
    approval_timeout: Option<String>,
    /// `end` (record the task's end and revoke) or `kill`.
    on_expiry: Option<String>,
    /// How often host names in tasks' scopes are looked up again (e.g. `60s`).
    hosts_refresh: Option<String>,
    /// How long a delegation waits for its sub-task's host names (e.g. `2s`).
    delegation_lookups: Option<String>,
    /// How long the BPF LSM hooks stay attached once no task is enforced (e.g. `60s`).
    lsm_linger: Option<String>,
    selectors: Vec<SelectorConfig>,
    default_task: Option<PathBuf>,
    metrics: Option<SocketAddr>,
    audit: Option<AuditConfig>,
    nats: Option<NatsConfig>,
    /// Ed25519 public keys (hex, one per line) that may grant tasks: with it, a task
    /// starts only with a grant by one of them (`agentmon grant`).
    grant_keys: Option<PathBuf>,
    /// With `grant_keys`: refuse tasks without a grant (default), or let them start
    /// marked unsigned (`false`: a host moving to grants).
    require_signed: Option<bool>,
    prompts: Option<PromptsConfig>,
    /// Pause tasks while the ring buffer is filling (default), or lose their events.
    backpressure: Option<bool>,
}

/// What prompt records keep: always the prompt's SHA-256 and length; its text when
/// `text` is true, redacted and bounded.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptsConfig {
    #[serde(default)]
    text: bool,
    max_bytes: Option<usize>,
    #[serde(default)]
    redact: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectorConfig {
    exe: Option<String>,
    argv: Option<String>,
    cgroup: Option<String>,
    /// A container's id (glob), told from the process's cgroup.
    container: Option<String>,
    /// A Kubernetes pod's uid (glob).
    pod: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditConfig {
    path: PathBuf,
    key: Option<PathBuf>,
    checkpoint_every: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NatsConfig {
    /// One server, a comma-separated list, or a YAML list.
    url: Servers,
    host: Option<String>,
    creds: Option<PathBuf>,
    user: Option<String>,
    /// Name of an environment variable holding the password (not the password).
    password_env: Option<String>,
    token_env: Option<String>,
    nkey: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    spool: Option<PathBuf>,
    spool_max_mb: Option<u64>,
    #[serde(default)]
    ocsf: bool,
    ctl_keys: Option<PathBuf>,
    stream: Option<StreamConfig>,
    /// The host's key for signing revoke and kill messages (created on first use).
    sign_key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Servers {
    One(String),
    List(Vec<String>),
}

/// The host's JetStream stream (created so, or checked against).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamConfig {
    replicas: Option<usize>,
    /// e.g. `30d`.
    max_age: Option<String>,
    max_mb: Option<u64>,
    discard: Option<crate::nats::config::Discard>,
}

fn load(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    serde_saphyr::from_str(&text).map_err(|e| {
        let (line, msg) = crate::task::manifest::yaml_error(&e);
        anyhow::anyhow!("{}:{line}: {msg}", path.display())
    })
}

fn env_secret(name: &Option<String>, what: &str) -> anyhow::Result<Option<String>> {
    match name {
        None => Ok(None),
        Some(n) => std::env::var(n).map(Some).map_err(|_| anyhow::anyhow!("nats.{what}: ${n} is not set")),
    }
}

pub fn options(a: DaemonArgs) -> anyhow::Result<DaemonOptions> {
    let cfg = match &a.config {
        Some(p) => load(p)?,
        None => Config::default(),
    };
    let file = a.config.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(defaults)".into());
    let format = match cfg.format.as_deref() {
        None | Some("json") => Format::Json,
        Some("text") => Format::Text,
        Some(o) => anyhow::bail!("{file}: format: {o:?} is not json or text"),
    };
    let rules = match cfg.rules.as_deref() {
        None | Some("shipped") => RulesChoice::Shipped,
        Some("none") => RulesChoice::None,
        Some(d) => RulesChoice::Dir(d.into()),
    };
    let ringbuf_mb = cfg.ringbuf_mb.unwrap_or(16);
    if !(1..=1024).contains(&ringbuf_mb) || !ringbuf_mb.is_power_of_two() {
        anyhow::bail!("{file}: ringbuf_mb: {ringbuf_mb} must be a power of two between 1 and 1024");
    }
    let mut pats: Vec<String> = if cfg.default_sensitive.unwrap_or(true) {
        DEFAULT_PATTERNS.iter().map(|s| s.to_string()).collect()
    } else {
        Vec::new()
    };
    pats.extend(cfg.sensitive.iter().cloned());
    let audit = cfg.audit.map(|a| AuditOptions {
        path: a.path,
        key: a.key.unwrap_or_else(|| "/var/lib/agentmon/audit.key".into()),
        checkpoint_every: a.checkpoint_every.unwrap_or(1000).max(1),
    });
    let (nats, ctl_keys) = match cfg.nats {
        None => (None, None),
        Some(n) => {
            let url = match n.url {
                Servers::One(u) => u,
                Servers::List(l) => l.join(","),
            };
            let stream = n.stream.unwrap_or(StreamConfig {
                replicas: None,
                max_age: None,
                max_mb: None,
                discard: None,
            });
            let max_age = match &stream.max_age {
                Some(a) => Some(
                    super::exec::retention(a)
                        .map_err(|e| anyhow::anyhow!("{file}: nats.stream.max_age: {e}"))?,
                ),
                None => None,
            };
            let args = NatsArgs {
                nats: Some(url),
                nats_replicas: stream.replicas.unwrap_or(1),
                nats_max_age: max_age,
                nats_max_bytes: stream.max_mb.map(|m| m << 20),
                nats_discard: stream.discard.unwrap_or_default(),
                nats_creds: n.creds,
                nats_password: env_secret(&n.password_env, "password_env")?,
                nats_user: n.user,
                nats_token: env_secret(&n.token_env, "token_env")?,
                nats_nkey: n.nkey,
                nats_tls_ca: n.tls_ca,
                nats_tls_cert: n.tls_cert,
                nats_tls_key: n.tls_key,
                nats_sign_key: n.sign_key,
            };
            args.servers().map_err(|e| anyhow::anyhow!("{file}: nats.url: {e}"))?;
            args.stream().map_err(|e| anyhow::anyhow!("{file}: nats.stream: {e}"))?;
            let keys = match &n.ctl_keys {
                Some(p) => Some(crate::nats::control::load_keys(p).map_err(anyhow::Error::msg)?),
                None => None,
            };
            let host = n.host.unwrap_or_else(|| {
                hostname::get().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into())
            });
            let sign_key = args.sign_key().map_err(|e| anyhow::anyhow!("{file}: nats.sign_key: {e}"))?;
            let o = NatsOptions {
                args,
                host,
                spool: n.spool.unwrap_or_else(|| "/var/lib/agentmon/spool".into()),
                spool_max: n.spool_max_mb.unwrap_or(1024).max(1) << 20,
                ocsf: n.ocsf,
                sign_key,
            };
            (Some(o), keys)
        }
    };
    let selectors = match (&cfg.selectors[..], &cfg.default_task) {
        ([], _) => None,
        (_, None) => {
            anyhow::bail!("{file}: selectors: a default_task is needed for the processes they select")
        }
        (sel, Some(t)) => {
            let rules = sel
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    Selector::new(crate::runner::select::Globs {
                        exe: s.exe.as_deref(),
                        argv: s.argv.as_deref(),
                        cgroup: s.cgroup.as_deref(),
                        container: s.container.as_deref(),
                        pod: s.pod.as_deref(),
                    })
                    .map_err(|e| anyhow::anyhow!("{file}: selectors[{i}].{e}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let manifest = std::fs::read_to_string(t)
                .map_err(|e| anyhow::anyhow!("{file}: default_task {}: {e}", t.display()))?;
            // Checked now, not at the first match.
            crate::task::parse(&manifest, t, crate::event::Timestamp::now())?;
            Some(Selectors { rules, task_file: t.clone(), manifest })
        }
    };
    Ok(DaemonOptions {
        socket: a.socket.or(cfg.socket).unwrap_or_else(|| DAEMON_SOCKET.into()),
        events: cfg.events,
        format,
        sensitive: SensitiveSet::new(&pats)?,
        ringbuf_bytes: ringbuf_mb << 20,
        max_tracked: match cfg.max_tracked {
            Some(n) if !(16..=4 << 20).contains(&n) => {
                anyhow::bail!("{file}: max_tracked: {n} must be between 16 and 4194304")
            }
            n => n,
        },
        rules,
        outputs: Outputs { nats, ctl_keys, audit },
        config: a.config,
        state_dir: cfg.state_dir.unwrap_or_else(|| "/run/agentmon/tasks".into()),
        metrics: cfg.metrics,
        selectors,
        grant_keys_file: cfg.grant_keys.clone(),
        require_signed: match (cfg.require_signed, &cfg.grant_keys) {
            (Some(_), None) => {
                anyhow::bail!("{file}: require_signed: needs grant_keys (the keys that may grant)")
            }
            (r, _) => r.unwrap_or(true),
        },
        grant_keys: match &cfg.grant_keys {
            Some(p) => Some(
                crate::nats::control::load_keys(p).map_err(|e| anyhow::anyhow!("{file}: grant_keys: {e}"))?,
            ),
            None => None,
        },
        approval_timeout: match cfg.approval_timeout.as_deref() {
            None => std::time::Duration::from_secs(60),
            Some(t) => super::duration(t).map_err(|e| anyhow::anyhow!("{file}: approval_timeout: {e}"))?,
        },
        backpressure: cfg.backpressure.unwrap_or(true),
        prompts: match &cfg.prompts {
            None => Default::default(),
            Some(p) => crate::prompt::PromptPolicy::new(p.text, p.max_bytes.unwrap_or(4096), &p.redact)
                .map_err(|e| anyhow::anyhow!("{file}: prompts.redact: {e}"))?,
        },
        on_expiry: match cfg.on_expiry.as_deref() {
            None | Some("end") => crate::runner::OnExpiry::End,
            Some("kill") => crate::runner::OnExpiry::Kill,
            Some(o) => anyhow::bail!("{file}: on_expiry: {o:?} is not end or kill"),
        },
        hosts_refresh: match cfg.hosts_refresh.as_deref() {
            None => std::time::Duration::from_secs(60),
            Some(t) => match super::duration(t) {
                Ok(d) if (1..=3600).contains(&d.as_secs()) => d,
                Ok(_) => anyhow::bail!("{file}: hosts_refresh: {t:?} must be between 1s and 1h"),
                Err(e) => anyhow::bail!("{file}: hosts_refresh: {e}"),
            },
        },
        lsm_linger: match cfg.lsm_linger.as_deref() {
            None => crate::runner::LSM_LINGER,
            Some(t) => match super::duration(t) {
                Ok(d) if d.as_secs() <= 24 * 3600 => d,
                Ok(_) => anyhow::bail!("{file}: lsm_linger: {t:?} must be at most 24h"),
                Err(e) => anyhow::bail!("{file}: lsm_linger: {e}"),
            },
        },
        delegation_lookups: match cfg.delegation_lookups.as_deref() {
            None => crate::runner::DELEGATION_LOOKUPS,
            Some(t) => match super::duration(t) {
                // The asking exec waits 10 s for its answer.
                Ok(d) if (1..=8).contains(&d.as_secs()) => d,
                Ok(_) => anyhow::bail!("{file}: delegation_lookups: {t:?} must be between 1s and 8s"),
                Err(e) => anyhow::bail!("{file}: delegation_lookups: {e}"),
            },
        },
    })
}

pub fn attach(rt: &tokio::runtime::Runtime, a: AttachArgs) -> anyhow::Result<i32> {
    let manifest =
        std::fs::read_to_string(&a.task).map_err(|e| anyhow::anyhow!("{}: {e}", a.task.display()))?;
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let events = match &a.events {
        Some(p) => {
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            Some(abs(dir).join(p.file_name().unwrap_or_default()).display().to_string())
        }
        None => None,
    };
    // The grant beside the manifest, if there is one (the daemon says if it needs it).
    let grant = std::fs::read_to_string(crate::task::grant::path_for(&a.task)).ok();
    let req = ctl::Request::Attach {
        manifest,
        file: abs(&a.task).display().to_string(),
        pid: a.pid,
        events,
        grant,
    };
    super::answered(rt.block_on(ctl::call(&a.socket, &req)), |r| {
        println!(
            "task {} attached to pid {} and its descendants",
            r.task.as_deref().unwrap_or_default(),
            a.pid
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped systemd unit keeps what a restarted daemon resumes from: systemd
    /// removes a RuntimeDirectory when the service stops unless told to keep it, and
    /// the shipped state_dir and sockets are in it (it removed the running tasks'
    /// records at every restart).
    #[test]
    fn the_shipped_unit_keeps_the_state_across_restarts() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/agentmon.service");
        let unit = std::fs::read_to_string(p).unwrap();
        let set =
            |k: &str| unit.lines().filter_map(|l| l.trim().strip_prefix(k)?.strip_prefix('=')).next_back();
        let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agentmon.yaml");
        let o = options(DaemonArgs { config: Some(cfg), socket: None }).unwrap();
        let run = Path::new("/run").join(set("RuntimeDirectory").unwrap());
        assert!(o.state_dir.starts_with(&run) && o.socket.starts_with(&run));
        assert_eq!(set("RuntimeDirectoryPreserve"), Some("yes"));
        // Its comment on SIGTERM says what the daemon does (docs/daemon.md).
        assert!(unit.contains("Running tasks are not ended") && !unit.contains("programs detached"));
    }

    /// The shipped, documented configuration is one the daemon accepts, with the
    /// defaults it documents.
    #[test]
    fn shipped_config_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agentmon.yaml");
        let o = options(DaemonArgs { config: Some(p), socket: None }).unwrap();
        assert_eq!(o.socket, Path::new(DAEMON_SOCKET));
        assert_eq!(o.approval_timeout, std::time::Duration::from_secs(60));
        assert_eq!(o.state_dir, Path::new("/run/agentmon/tasks"));
        assert!(
            o.on_expiry == crate::runner::OnExpiry::End && o.selectors.is_none() && o.outputs.nats.is_none()
        );
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "socket: /x\nno_such_option: 1\n").unwrap();
        let e = options(DaemonArgs { config: Some(bad.clone()), socket: None }).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:2", bad.display())), "{e}");
        std::fs::write(&bad, "selectors:\n  - exe: /usr/bin/x\n").unwrap();
        let e = options(DaemonArgs { config: Some(bad.clone()), socket: None }).unwrap_err().to_string();
        assert!(e.contains("default_task"), "{e}");
    }

    /// `nats.url` as a list (YAML or comma-separated) and the stream's settings;
    /// a bad entry or setting names the file and the key.
    #[test]
    fn nats_lists_and_stream_settings() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("d.yaml");
        let opts = |text: &str| {
            std::fs::write(&f, text).unwrap();
            options(DaemonArgs { config: Some(f.clone()), socket: None }).map_err(|e| e.to_string())
        };
        let spool = format!("  spool: {}\n", dir.path().join("spool").display());
        let o = opts(&format!(
            "nats:\n  url: [nats://a:4222, nats://b:4222]\n{spool}  stream:\n    replicas: 3\n    max_age: 30d\n    \
             max_mb: 10\n    discard: new\n"
        ))
        .unwrap();
        let n = o.outputs.nats.unwrap();
        assert_eq!(n.args.servers().unwrap().len(), 2);
        let st = n.args.stream().unwrap();
        assert_eq!((st.replicas, st.max_bytes, st.discard), (3, 10 << 20, crate::nats::config::Discard::New));
        assert_eq!(st.max_age, std::time::Duration::from_secs(30 * 86400));
        let e = opts(&format!("nats:\n  url: nats://a:4222,nats://b:0x\n{spool}")).unwrap_err();
        assert!(e.contains("nats.url") && e.contains("nats://b:0x"), "{e}");
        let e =
            opts(&format!("nats:\n  url: nats://a:4222\n{spool}  stream:\n    replicas: 9\n")).unwrap_err();
        assert!(e.contains("nats.stream") && e.contains("replicas 9"), "{e}");
        let e =
            opts(&format!("nats:\n  url: nats://a:4222\n{spool}  stream:\n    max_age: soon\n")).unwrap_err();
        assert!(e.contains("nats.stream.max_age"), "{e}");
    }

    /// The Kubernetes deployment's configuration is one the daemon accepts (its
    /// selectors by pod, its default task), and the DaemonSet gives agentmon what it
    /// needs from the node.
    #[test]
    fn kubernetes_deployment() {
        let k8s = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
        let dir = tempfile::tempdir().unwrap();
        let task = dir.path().join("default-task.yaml");
        std::fs::copy(k8s.join("default-task.yaml"), &task).unwrap();
        let cfg = std::fs::read_to_string(k8s.join("agentmon.yaml"))
            .unwrap()
            .replace("/etc/agentmon/default-task.yaml", task.to_str().unwrap());
        let f = dir.path().join("agentmon.yaml");
        std::fs::write(&f, cfg).unwrap();
        let o = options(DaemonArgs { config: Some(f), socket: None }).unwrap();
        let sel = o.selectors.expect("selectors");
        assert!(sel.rules.len() == 2 && sel.rules.iter().all(|s| s.pod.is_some()));
        let ds: serde_json::Value =
            serde_saphyr::from_str(&std::fs::read_to_string(k8s.join("daemonset.yaml")).unwrap()).unwrap();
        let spec = &ds["spec"]["template"]["spec"];
        assert_eq!(spec["hostPID"], true, "the kernel programs compare the host's pids");
        let c = &spec["containers"][0];
        assert_eq!(c["securityContext"]["privileged"], true);
        let mounts: Vec<&str> =
            c["volumeMounts"].as_array().unwrap().iter().filter_map(|m| m["mountPath"].as_str()).collect();
        for want in
            ["/sys/fs/bpf", "/sys/kernel/tracing", "/sys/fs/cgroup", "/sys/kernel/btf", "/etc/agentmon"]
        {
            assert!(mounts.contains(&want), "{want} not mounted: {mounts:?}");
        }
    }

    /// `prompts`: text kept as asked, with the host's own redactions; a bad pattern
    /// names the file and the key.
    #[test]
    fn prompt_settings() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("d.yaml");
        let opts = |text: &str| {
            std::fs::write(&f, text).unwrap();
            options(DaemonArgs { config: Some(f.clone()), socket: None }).map_err(|e| e.to_string())
        };
        assert!(!opts("{}").unwrap().prompts.text, "hash only by default");
        assert!(opts("{}").unwrap().backpressure, "backpressure by default");
        assert!(!opts("backpressure: false\n").unwrap().backpressure);
        assert!(opts("backpressure: 3\n").unwrap_err().contains("d.yaml:1: invalid boolean"));
        let p =
            opts("prompts:\n  text: true\n  max_bytes: 64\n  redact: [\"hunter[0-9]\"]\n").unwrap().prompts;
        assert!(p.text && p.max_bytes == 64);
        let kept = p.fields("pw hunter2", None).into_iter().find(|(k, _)| *k == "prompt").unwrap().1;
        assert_eq!(kept, "pw [redacted]");
        let e = opts("prompts:\n  text: true\n  redact: [\"(\"]\n").unwrap_err();
        assert!(e.contains("d.yaml") && e.contains("prompts.redact"), "{e}");
        let e = opts("prompts:\n  txt: true\n").unwrap_err();
        assert!(e.contains("d.yaml"), "{e}");
    }
}
