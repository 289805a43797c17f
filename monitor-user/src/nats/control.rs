//! Remote control over NATS request/reply on `agentmon.<host>.ctl.<op>`.
//!
//! Subject permissions on the server decide who may send; on top of that every
//! command is signed with an Ed25519 key this host trusts (`--nats-ctl-keys`), names
//! this host, carries a timestamp (±[`MAX_SKEW`]) and a nonce. So a permission
//! mistake on the server alone lets no one in, a command recorded for one host
//! cannot be played to another, and a replayed or retried command gets the first
//! answer again instead of acting twice (idempotent). A verified command is
//! handed to this agentmon's own control socket, as a local operator's would be.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::{Subjects, config::NatsArgs};
use crate::{
    ctl::{self, Reply, Request},
    event::Timestamp,
};

/// How far a command's timestamp may be from our clock.
pub const MAX_SKEW: Duration = Duration::from_secs(60);
/// Domain separation for the signed bytes.
const CONTEXT: &[u8] = b"agentmon-ctl/1\n";
/// The longest reason an approver may give.
pub const MAX_REASON: usize = 1024;

pub const OPS: [&str; 7] = ["kill", "freeze", "thaw", "approve", "deny", "approvals", "status"];

/// A signed control command (the request payload).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Command {
    pub op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Approval id (approve, deny).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// Standing approval, seconds (approve).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_s: Option<u64>,
    /// Why, in the approver's words (approve, deny): recorded with the decision, as
    /// signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The host's subject token: a command is for one host.
    pub host: String,
    /// RFC 3339.
    pub ts: String,
    pub nonce: String,
    /// Signer's public key, hex.
    pub key: String,
    /// Ed25519 over `agentmon-ctl/1\n` + the canonical JSON of the command without `sig`, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

impl Command {
    /// The bytes a signature covers: sorted keys, no whitespace, no `sig`.
    fn signed_bytes(&self) -> Vec<u8> {
        crate::signed::bytes(CONTEXT, self)
    }

    /// A signed command for `op` on `host`.
    pub fn signed(
        key: &SigningKey,
        op: &str,
        host: &str,
        task: Option<String>,
        approval: Option<String>,
        for_s: Option<u64>,
        reason: Option<String>,
    ) -> Self {
        let mut buf = [0u8; 30];
        let mut c = Command {
            op: op.into(),
            task,
            approval,
            for_s,
            reason,
            // `*`: every host (sent on the fleet subject).
            host: if host == super::subjects::ALL_HOSTS { host.into() } else { super::subjects::token(host) },
            ts: Timestamp::now().format(&mut buf).to_string(),
            nonce: uuid::Uuid::now_v7().to_string(),
            key: hex::encode(key.verifying_key().to_bytes()),
            sig: None,
        };
        c.sign(key);
        c
    }

    /// (Re)signs the command as it is now.
    pub fn sign(&mut self, key: &SigningKey) {
        self.key = hex::encode(key.verifying_key().to_bytes());
        self.sig = None;
        self.sig = Some(hex::encode(key.sign(&self.signed_bytes()).to_bytes()));
    }
}

/// The keys allowed to send commands: one hex public key per line (`#` comments).
pub fn load_keys(path: &Path) -> Result<Vec<VerifyingKey>, String> {
    crate::signed::load_keys(path)
}

/// Checks a command and turns it into a control-socket request.
pub struct Gatekeeper {
    pub keys: Vec<VerifyingKey>,
    pub host: String,
    /// Nonce → first answer, for idempotent retries.
    seen: HashMap<String, (Instant, Reply)>,
}

impl Gatekeeper {
    pub fn new(keys: Vec<VerifyingKey>, host: &str) -> Self {
        Self { keys, host: super::subjects::token(host), seen: HashMap::new() }
    }

    /// The answer already given to this nonce, if any.
    pub fn answered(&mut self, nonce: &str) -> Option<Reply> {
        self.seen.retain(|_, (t, _)| t.elapsed() < 3 * MAX_SKEW);
        self.seen.get(nonce).map(|(_, r)| r.clone())
    }

    pub fn remember(&mut self, nonce: &str, r: &Reply) {
        self.seen.insert(nonce.into(), (Instant::now(), r.clone()));
    }

    /// Parses and verifies `payload` received on the subject for `op`: a host's own
    /// subject, or (`fleet`) the fleet's, where only commands signed for every host,
    /// `*`, are taken.
    pub fn check(
        &self,
        op: &str,
        payload: &[u8],
        now: Timestamp,
        fleet: bool,
    ) -> Result<(Command, Request), String> {
        let c: Command = serde_json::from_slice(payload).map_err(|e| format!("malformed command: {e}"))?;
        if c.op != op {
            return Err(format!("command op {:?} sent on the subject for {op:?}", c.op));
        }
        let key = crate::signed::public_key(&c.key)?;
        if !self.keys.contains(&key) {
            return Err(format!("key {} is not allowed to control this host", c.key));
        }
        let sig = crate::signed::signature(c.sig.as_deref())?;
        key.verify(&c.signed_bytes(), &sig).map_err(|_| "bad signature".to_string())?;
        // A signature for one host never works on another, nor fleet-wide, and back.
        let want = if fleet { super::subjects::ALL_HOSTS } else { self.host.as_str() };
        if c.host != want {
            return Err(format!("command is for host {:?}, this is {want:?}", c.host));
        }
        let ts = Timestamp::parse(&c.ts).ok_or("ts: not an RFC 3339 time")?;
        if (ts.0 - now.0).unsigned_abs() > MAX_SKEW.as_nanos() {
            return Err(format!("ts {} is more than {}s from this host's clock", c.ts, MAX_SKEW.as_secs()));
        }
        let need = |v: &Option<String>, what: &str| v.clone().ok_or(format!("{op}: {what} missing"));
        match &c.reason {
            Some(_) if !matches!(op, "approve" | "deny") => {
                return Err(format!("{op}: a reason is for approve and deny"));
            }
            Some(r) if r.len() > MAX_REASON => {
                return Err(format!("{op}: reason longer than {MAX_REASON} bytes"));
            }
            _ => {}
        }
        let via = Some(format!("NATS command signed by key {} (nonce {})", c.key, c.nonce));
        let req = match op {
            "kill" => Request::Kill { task: need(&c.task, "task")?, via },
            "freeze" => Request::Freeze { task: need(&c.task, "task")?, via },
            "thaw" => Request::Thaw { task: need(&c.task, "task")?, via },
            "approve" => Request::Approve {
                id: need(&c.approval, "approval")?,
                for_s: c.for_s,
                via,
                reason: c.reason.clone(),
            },
            "deny" => Request::Deny { id: need(&c.approval, "approval")?, via, reason: c.reason.clone() },
            "approvals" => Request::Approvals {},
            "status" => Request::Status {},
            other => return Err(format!("unknown op {other:?} (known: {})", OPS.join(", "))),
        };
        Ok((c, req))
    }
}

/// Commands being answered: from the request to the reply's flush.
static ANSWERING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

struct Answering;

impl Answering {
    fn new() -> Answering {
        ANSWERING.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Answering
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        ANSWERING.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Waits, at most `limit`, for the commands being answered: a remote `kill` that
/// ends an `agentmon exec` gets its reply before the process ends.
pub async fn answers_sent(limit: Duration) {
    let until = tokio::time::Instant::now() + limit;
    while ANSWERING.load(std::sync::atomic::Ordering::Acquire) > 0 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Serves signed commands until the process ends, on a thread of its own.
pub fn start(args: NatsArgs, host: String, keys: Vec<VerifyingKey>, socket: PathBuf) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("nats-control".into()).spawn(move || {
        rt.block_on(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                if let Err(e) = serve(&args, &host, &keys, &socket).await {
                    tracing::warn!("NATS remote control: {e}; retrying");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        })
    })?;
    Ok(())
}

async fn serve(args: &NatsArgs, host: &str, keys: &[VerifyingKey], socket: &Path) -> Result<(), String> {
    use futures_util::StreamExt;
    let subjects = Subjects::new(host);
    let url = args.nats.as_deref().unwrap_or_default();
    let opts =
        args.options(&format!("agentmon control {}", subjects.host())).await.map_err(|e| e.to_string())?;
    let servers = args.servers().map_err(|e| e.to_string())?;
    let client =
        opts.connect(servers).await.map_err(|e| format!("connect {}: {e}", super::config::redact(url)))?;
    let own = client.subscribe(subjects.ctl_all()).await.map_err(|e| e.to_string())?;
    let fleet = client.subscribe(Subjects::fleet_ctl_all()).await.map_err(|e| e.to_string())?;
    client.flush().await.map_err(|e| e.to_string())?;
    let mut sub = futures_util::stream::select(own, fleet);
    let mut v = Gatekeeper::new(keys.to_vec(), host);
    while let Some(msg) = sub.next().await {
        let op = msg.subject.rsplit('.').next().unwrap_or("").to_string();
        let Some(reply_to) = msg.reply.clone() else {
            tracing::warn!("NATS control: {op} without a reply subject ignored");
            continue;
        };
        let to_fleet = msg.subject.starts_with(super::subjects::FLEET);
        let _answering = Answering::new();
        let reply = answer(&mut v, &op, &msg.payload, socket, to_fleet).await;
        let body = if to_fleet {
            // Every host hears a fleet command: one that does not hold the task (or
            // approval) stays silent, the others say who they are.
            if reply.error.as_deref().is_some_and(|e| e.starts_with(ctl::NOT_MINE)) {
                continue;
            }
            serde_json::to_vec(&FleetReply { host: subjects.host().to_string(), reply }).unwrap_or_default()
        } else {
            serde_json::to_vec(&reply).unwrap_or_default()
        };
        if let Err(e) = client.publish(reply_to, body.into()).await {
            tracing::warn!("NATS control: replying: {e}");
        }
        let _ = client.flush().await;
    }
    Err("subscription ended".into())
}

/// A host's answer to a fleet-wide command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetReply {
    pub host: String,
    pub reply: Reply,
}

/// Verifies (on the fleet's subject with `fleet`), then acts once per nonce.
pub async fn answer(v: &mut Gatekeeper, op: &str, payload: &[u8], socket: &Path, fleet: bool) -> Reply {
    let (cmd, req) = match v.check(op, payload, Timestamp::now(), fleet) {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!("NATS control: {op} rejected: {e}");
            return Reply::err(e);
        }
    };
    if let Some(r) = v.answered(&cmd.nonce) {
        return r;
    }
    let r = ctl::call(socket, &req).await.unwrap_or_else(Reply::err);
    tracing::info!("NATS control: {op} by key {}: {}", cmd.key, if r.ok { "done" } else { "refused" });
    v.remember(&cmd.nonce, &r);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An approver's reason goes with the signed command to the decision; it is for
    /// approve and deny only, bounded, and covered by the signature.
    #[test]
    fn a_remote_approvers_reason_is_signed_and_recorded() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let gk = Gatekeeper::new(vec![key.verifying_key()], "web1");
        let now = Timestamp::now();
        let send = |op: &str, reason: Option<&str>| {
            let approval = matches!(op, "approve" | "deny").then(|| "a-1".to_string());
            let task = (op == "kill").then(|| "t".to_string());
            let c = Command::signed(&key, op, "web1", task, approval, None, reason.map(String::from));
            serde_json::to_vec(&c).unwrap()
        };
        match gk.check("approve", &send("approve", Some("safe to remove")), now, false) {
            Ok((_, Request::Approve { id, reason, .. })) => {
                assert_eq!((id.as_str(), reason.as_deref()), ("a-1", Some("safe to remove")))
            }
            other => panic!("approve: {other:?}"),
        }
        match gk.check("deny", &send("deny", Some("not now")), now, false) {
            Ok((_, Request::Deny { reason, .. })) => assert_eq!(reason.as_deref(), Some("not now")),
            other => panic!("deny: {other:?}"),
        }
        let err = gk.check("kill", &send("kill", Some("because")), now, false).unwrap_err();
        assert!(err.contains("for approve and deny"), "{err}");
        let long = "x".repeat(MAX_REASON + 1);
        let err = gk.check("approve", &send("approve", Some(&long)), now, false).unwrap_err();
        assert!(err.contains("longer than"), "{err}");
        // A reason changed on the way breaks the signature.
        let mut c: Command = serde_json::from_slice(&send("approve", Some("safe"))).unwrap();
        c.reason = Some("approved by the CISO".into());
        let err = gk.check("approve", &serde_json::to_vec(&c).unwrap(), now, false).unwrap_err();
        assert_eq!(err, "bad signature");
    }
}
