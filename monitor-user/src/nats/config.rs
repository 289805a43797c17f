//! Where the broker is and how to authenticate to it: flags (or environment for
//! secrets), turned into async-nats connect options.

use std::{path::PathBuf, time::Duration};

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
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--nats-nkey {path}: {source}")]
    Nkey { path: PathBuf, source: std::io::Error },
    #[error("--nats-creds {path}: {source}")]
    Creds { path: PathBuf, source: std::io::Error },
    #[error("{flag}: give only one way to authenticate (creds, user/password, token or nkey)")]
    TwoAuths { flag: &'static str },
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
    fn credentials_are_not_logged() {
        assert_eq!(super::redact("nats://u:secret@h:4222,nats://h2"), "nats://h:4222,nats://h2");
        assert_eq!(super::redact("u:p@h:4222"), "h:4222");
        assert_eq!(super::redact("nats://h:4222"), "nats://h:4222");
    }
}
