//! The sinks an agentmon writes to besides its JSON lines: the audit chain and NATS
//! (with its remote control).

use std::{path::PathBuf, sync::Arc};

use ed25519_dalek::VerifyingKey;

use super::RunError;
use crate::{
    audit::AuditChain,
    metrics::Metrics,
    nats::{NatsOptions, NatsSink},
    sink::{Fanout, JsonLines},
};

/// What the metrics read of the NATS output.
pub struct NatsHandles {
    pub status: Arc<crate::nats::publish::Status>,
    pub spool: Arc<crate::nats::spool::Shared>,
}

impl NatsHandles {
    pub fn report(&self, m: &Metrics) {
        use std::sync::atomic::Ordering::Relaxed;
        m.set_nats_connected(self.status.connected.load(Relaxed));
        m.set_nats_published(self.status.published.load(Relaxed));
        m.set_spool_bytes(self.spool.depth());
        m.set_spool_dropped(self.spool.dropped.load(Relaxed) + self.spool.torn.load(Relaxed));
    }
}

#[derive(Debug, Clone)]
pub struct AuditOptions {
    pub path: PathBuf,
    pub key: PathBuf,
    pub checkpoint_every: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Outputs {
    pub nats: Option<NatsOptions>,
    /// Keys allowed to send remote control commands over NATS.
    pub ctl_keys: Option<Vec<VerifyingKey>>,
    pub audit: Option<AuditOptions>,
}

impl Outputs {
    /// Files and directories a task must never be able to write.
    pub fn protected(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        if let Some(a) = &self.audit {
            v.push(a.path.clone());
            v.push(a.key.clone());
            v.push(crate::audit::public_key_path(&a.key));
        }
        if let Some(n) = &self.nats {
            v.push(n.spool.clone());
            // The host's signing key: read, it forges kill and revoke messages.
            if let Some(k) = &n.args.nats_sign_key {
                v.push(k.clone());
                v.push(crate::audit::public_key_path(k));
            }
        }
        v
    }

    /// agentmon's private keys: reading one is reported as tampering.
    pub fn secrets(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.audit.iter().map(|a| a.key.clone()).collect();
        if let Some(n) = &self.nats {
            let a = &n.args;
            v.extend(
                [&a.nats_sign_key, &a.nats_creds, &a.nats_nkey, &a.nats_tls_key]
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
        }
        v
    }

    /// Opens every sink, the JSON lines first.
    pub fn open(&self, lines: JsonLines) -> Result<(Fanout, Option<NatsHandles>), RunError> {
        let mut f = Fanout::new(vec![Box::new(lines)]);
        if let Some(a) = &self.audit {
            if let Some(d) = a.key.parent() {
                std::fs::create_dir_all(d)?;
            }
            let chain = AuditChain::open(&a.path, &a.key, a.checkpoint_every)
                .map_err(|e| RunError::Output(format!("audit chain: {e}")))?;
            f.push(Box::new(chain));
        }
        let mut handles = None;
        if let Some(n) = &self.nats {
            let s = NatsSink::open(n.clone()).map_err(|e| RunError::Output(format!("NATS: {e}")))?;
            handles = Some(NatsHandles { status: s.status(), spool: s.spool() });
            f.push(Box::new(s));
        }
        Ok((f, handles))
    }

    /// One line per output, for the start-up report.
    pub fn describe(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(a) = &self.audit {
            v.push(format!("audit chain {} (key {})", a.path.display(), a.key.display()));
        }
        if let Some(n) = &self.nats {
            let s = crate::nats::Subjects::new(&n.host);
            v.push(format!(
                "NATS {} as {} (stream {}, spool {}{})",
                crate::nats::config::redact(n.args.nats.as_deref().unwrap_or_default()),
                s.host(),
                s.stream(),
                n.spool.display(),
                if n.ocsf { ", with OCSF copies" } else { "" }
            ));
            v.push(match &self.ctl_keys {
                Some(k) => format!("NATS remote control on {} ({} keys)", s.ctl_all(), k.len()),
                None => "NATS remote control off (no --nats-ctl-keys)".into(),
            });
        }
        v
    }
}
