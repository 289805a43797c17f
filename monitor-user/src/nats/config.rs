//! Where the broker is and how to authenticate to it: flags (or environment for
//! secrets), turned into async-nats connect options.

use std::{path::PathBuf, time::Duration};

/// Environment variables that may carry a NATS secret (a password, a token, a URL
/// with credentials in it). The watched command never inherits them: what agentmon
/// is given to publish with is not the agent's.
pub const SECRET_ENV: &[&str] = &["AGENTMON_NATS", "AGENTMON_NATS_PASSWORD", "AGENTMON_NATS_TOKEN"];

/// NATS options shared by `exec`, `replay` and `remote`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct NatsArgs {
    /// Publish to this NATS server (e.g. nats://127.0.0.1:4222); comma-separate several.
    #[arg(long, value_name = "URL", env = "AGENTMON_NATS")]
    pub nats: Option<String>,
    /// A NATS credentials file (JWT + nkey seed).
    #[arg(long, value_name = "FILE", help_heading = "NATS")]
    pub nats_creds: Option<PathBuf>,
    /// User name (with --nats-password).
    #[arg(long, value_name = "USER", help_heading = "NATS", requires = "nats_password")]
    pub nats_user: Option<String>,
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "AGENTMON_NATS_PASSWORD",
        hide_env_values = true,
        help_heading = "NATS"
    )]
    pub nats_password: Option<String>,
    #[arg(
        long,
        value_name = "TOKEN",
        env = "AGENTMON_NATS_TOKEN",
        hide_env_values = true,
        help_heading = "NATS"
    )]
    pub nats_token: Option<String>,
    /// A file holding an nkey seed (SU...).
    #[arg(long, value_name = "FILE", help_heading = "NATS")]
    pub nats_nkey: Option<PathBuf>,
    /// CA certificate to verify the server with (implies TLS).
    #[arg(long, value_name = "PEM", help_heading = "NATS")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    #[arg(long, value_name = "PEM", help_heading = "NATS", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<PathBuf>,
    #[arg(long, value_name = "PEM", help_heading = "NATS", requires = "nats_tls_cert")]
    pub nats_tls_key: Option<PathBuf>,
    /// The host's Ed25519 key (hex seed, created 0600 on first use with `FILE.pub`
    /// beside it): revoke and kill messages are signed with it, for brokers to check.
    #[arg(long, value_name = "FILE", help_heading = "NATS")]
    pub nats_sign_key: Option<PathBuf>,
    /// The host's stream: copies kept by the cluster (1 on a single server, 3 for a
    /// cluster that survives a node's loss).
    #[arg(long, value_name = "N", default_value_t = 1, help_heading = "NATS stream")]
    pub nats_replicas: usize,
    /// The host's stream: drop messages older than this (e.g. 30d; none by default).
    #[arg(long, value_name = "DURATION", value_parser = crate::cli::exec::retention, help_heading = "NATS stream")]
    pub nats_max_age: Option<Duration>,
    /// The host's stream: at most this many bytes (e.g. 10G; no limit by default).
    #[arg(long, value_name = "SIZE", value_parser = crate::cli::exec::size, help_heading = "NATS stream")]
    pub nats_max_bytes: Option<u64>,
    /// The host's stream, when full (max-bytes): `old` drops the oldest messages,
    /// `new` refuses new ones (agentmon keeps them in its spool and says so).
    #[arg(long, value_name = "POLICY", value_enum, default_value_t = Discard::Old, help_heading = "NATS stream")]
    pub nats_discard: Discard,
}

/// What a full stream gives up.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discard {
    #[default]
    Old,
    New,
}

/// The stream settings agentmon creates the host's stream with, and checks an
/// existing one against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    pub replicas: usize,
    pub max_age: Duration,
    /// -1: no limit (the server's notation).
    pub max_bytes: i64,
    pub discard: Discard,
}

impl StreamSettings {
    /// Where `existing` differs from these settings: `field: existing X, configured Y`.
    pub fn mismatches(&self, existing: &async_nats::jetstream::stream::Config) -> Vec<String> {
        use async_nats::jetstream::stream::DiscardPolicy;
        let mut out = Vec::new();
        let discard = match existing.discard {
            DiscardPolicy::New => Discard::New,
            _ => Discard::Old,
        };
        let mut diff = |field: &str, have: String, want: String| {
            if have != want {
                out.push(format!("{field}: the stream has {have}, configured {want}"));
            }
        };
        diff("replicas", existing.num_replicas.max(1).to_string(), self.replicas.to_string());
        diff(
            "max_age",
            humantime::format_duration(existing.max_age).to_string(),
            humantime::format_duration(self.max_age).to_string(),
        );
        diff("max_bytes", existing.max_bytes.max(-1).to_string(), self.max_bytes.to_string());
        diff("discard", format!("{discard:?}").to_lowercase(), format!("{:?}", self.discard).to_lowercase());
        out
    }
}

/// `list` (`nats://a:4222,nats://b:4222`, spaces allowed) as server addresses; an
/// entry that does not parse is named.
pub fn servers(list: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    let entries: Vec<&str> = list.split(',').map(str::trim).collect();
    if entries.iter().all(|e| e.is_empty()) {
        return Err("no server given".into());
    }
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            if e.is_empty() {
                return Err(format!("entry {} of {:?} is empty", i + 1, redact(list)));
            }
            e.parse::<async_nats::ServerAddr>().map_err(|err| format!("server {:?}: {err}", redact(e)))
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--nats-nkey {path}: {source}")]
    Nkey { path: PathBuf, source: std::io::Error },
    #[error("--nats-creds {path}: {source}")]
    Creds { path: PathBuf, source: std::io::Error },
    #[error("{flag}: give only one way to authenticate (creds, user/password, token or nkey)")]
    TwoAuths { flag: &'static str },
    #[error("--nats: {msg}")]
    Servers { msg: String },
    #[error("NATS stream: {msg}")]
    Stream { msg: String },
    #[error("--nats-sign-key: {0}")]
    SignKey(String),
}

/// `url` without credentials in it (`nats://user:pass@host` → `nats://host`), for logs.
pub fn redact(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}{}", &u[..s + 3], &u[at + 1..]),
            (None, Some(at)) => u[at + 1..].to_string(),
            _ => u.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl NatsArgs {
    /// The host's signing key (`--nats-sign-key`), loaded or created.
    pub fn sign_key(&self) -> Result<Option<ed25519_dalek::SigningKey>, ConfigError> {
        self.nats_sign_key
            .as_deref()
            .map(|p| crate::audit::load_or_create_key(p).map_err(|e| ConfigError::SignKey(e.to_string())))
            .transpose()
    }

    /// The server list (`--nats`), checked.
    pub fn servers(&self) -> Result<Vec<async_nats::ServerAddr>, ConfigError> {
        servers(self.nats.as_deref().unwrap_or_default()).map_err(|msg| ConfigError::Servers { msg })
    }

    /// The host stream's settings, checked.
    pub fn stream(&self) -> Result<StreamSettings, ConfigError> {
        // 0: not set (a default-built NatsArgs), one copy.
        let replicas = self.nats_replicas.max(1);
        if replicas > 5 {
            return Err(ConfigError::Stream {
                msg: format!("replicas {replicas}: JetStream keeps 1 to 5 copies"),
            });
        }
        let max_bytes = match self.nats_max_bytes {
            None => -1,
            Some(b) => i64::try_from(b)
                .map_err(|_| ConfigError::Stream { msg: format!("max bytes {b}: too large") })?,
        };
        if self.nats_discard == Discard::New && max_bytes < 0 && self.nats_max_age.is_none() {
            return Err(ConfigError::Stream {
                msg: "discard new needs a limit (max bytes or max age)".into(),
            });
        }
        Ok(StreamSettings {
            replicas,
            max_age: self.nats_max_age.unwrap_or_default(),
            max_bytes,
            discard: self.nats_discard,
        })
    }

    /// Connect options (auth, TLS, timeouts); `name` identifies us to the server.
    pub async fn options(&self, name: &str) -> Result<async_nats::ConnectOptions, ConfigError> {
        let auths = [
            self.nats_creds.is_some(),
            self.nats_user.is_some(),
            self.nats_token.is_some(),
            self.nats_nkey.is_some(),
        ];
        if auths.iter().filter(|x| **x).count() > 1 {
            return Err(ConfigError::TwoAuths { flag: "--nats-*" });
        }
        let mut o = match &self.nats_creds {
            Some(p) => async_nats::ConnectOptions::with_credentials_file(p)
                .await
                .map_err(|source| ConfigError::Creds { path: p.clone(), source })?,
            None => async_nats::ConnectOptions::new(),
        };
        if let (Some(u), Some(p)) = (&self.nats_user, &self.nats_password) {
            o = o.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = &self.nats_token {
            o = o.token(t.clone());
        }
        if let Some(p) = &self.nats_nkey {
            let seed =
                std::fs::read_to_string(p).map_err(|source| ConfigError::Nkey { path: p.clone(), source })?;
            o = o.nkey(seed.trim().to_string());
        }
        if let Some(ca) = &self.nats_tls_ca {
            o = o.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(c), Some(k)) = (&self.nats_tls_cert, &self.nats_tls_key) {
            o = o.add_client_certificate(c.clone(), k.clone()).require_tls(true);
        }
        Ok(o.name(name).connection_timeout(Duration::from_secs(3)).ping_interval(Duration::from_secs(10)))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_lists_parse_or_name_the_bad_entry() {
        let two = super::servers("nats://a:4222, nats://b:4223").unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two[1].port(), 4223);
        assert_eq!(super::servers("nats://a:4222").unwrap().len(), 1);
        let bad = super::servers("nats://a:4222,nats://u:secret@b:99999").unwrap_err();
        assert!(bad.contains("nats://b:99999") && !bad.contains("secret"), "{bad}");
        assert!(super::servers("nats://a:4222,,nats://b:1").unwrap_err().contains("entry 2"));
        assert!(super::servers("").is_err());
    }

    #[test]
    fn stream_settings_are_checked_and_compared() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct A {
            #[command(flatten)]
            n: super::NatsArgs,
        }
        let parse =
            |args: &[&str]| A::try_parse_from(std::iter::once("x").chain(args.iter().copied())).map(|a| a.n);
        let s = parse(&["--nats-replicas", "3", "--nats-max-age", "30d", "--nats-max-bytes", "1G"]).unwrap();
        let s = s.stream().unwrap();
        assert_eq!((s.replicas, s.max_bytes), (3, 1 << 30));
        assert!(parse(&["--nats-replicas", "7"]).unwrap().stream().is_err());
        assert!(parse(&["--nats-discard", "new"]).unwrap().stream().is_err());
        let mut existing =
            async_nats::jetstream::stream::Config { num_replicas: 1, max_bytes: -1, ..Default::default() };
        let m = s.mismatches(&existing);
        assert_eq!(m.len(), 3, "{m:?}");
        assert!(m[0].starts_with("replicas: the stream has 1, configured 3"), "{m:?}");
        existing.num_replicas = 3;
        existing.max_age = std::time::Duration::from_secs(30 * 86400);
        existing.max_bytes = 1 << 30;
        assert!(s.mismatches(&existing).is_empty());
    }

    #[test]
    fn credentials_are_not_logged() {
        assert_eq!(super::redact("nats://u:secret@h:4222,nats://h2"), "nats://h:4222,nats://h2");
        assert_eq!(super::redact("u:p@h:4222"), "h:4222");
        assert_eq!(super::redact("nats://h:4222"), "nats://h:4222");
    }
}
