//! `agentmon remote`: the SOC side of remote control. Signs a command with the
//! operator's Ed25519 key and sends it as a NATS request to one host.

use std::{path::PathBuf, time::Duration};

use crate::{
    ctl::Reply,
    nats::{NatsArgs, Subjects, control::Command},
};

#[derive(Debug, clap::Args)]
pub struct RemoteArgs {
    /// kill, freeze, thaw, approve, deny, approvals or status.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(crate::nats::control::OPS))]
    pub op: String,
    /// The task id (kill, freeze, thaw) or approval id (approve, deny).
    pub target: Option<String>,
    /// The host to command (its subject name), or `*` for every host: each answers
    /// for itself (for a task or approval, only the host that holds it).
    #[arg(long, value_name = "NAME")]
    pub host: String,
    /// With `--host '*'`: how long to gather answers.
    #[arg(long, value_name = "DURATION", value_parser = super::duration, default_value = "3s")]
    pub wait: Duration,
    /// The operator's signing key (hex seed, mode 0600; created on first use; give
    /// its `.pub` to the hosts in --nats-ctl-keys).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// With approve: a standing approval for this long.
    #[arg(long = "for", value_name = "DURATION", value_parser = super::duration)]
    pub hold_for: Option<Duration>,
    /// With approve or deny: why (signed with the command, recorded with the
    /// decision beside the signer's key).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    #[command(flatten)]
    pub nats: NatsArgs,
}

pub async fn run(a: RemoteArgs) -> anyhow::Result<i32> {
    if a.nats.nats.is_none() {
        anyhow::bail!("--nats URL is needed");
    }
    let servers = a.nats.servers()?;
    let key = crate::audit::load_or_create_key(&a.key)?;
    let needs = match a.op.as_str() {
        "kill" | "freeze" | "thaw" => Some("a task id"),
        "approve" | "deny" => Some("an approval id"),
        _ => None,
    };
    if let Some(what) = needs
        && a.target.is_none()
    {
        anyhow::bail!("{} needs {what}", a.op);
    }
    if a.reason.is_some() && !matches!(a.op.as_str(), "approve" | "deny") {
        anyhow::bail!("--reason is for approve and deny");
    }
    let (task, approval) = match a.op.as_str() {
        "approve" | "deny" => (None, a.target.clone()),
        _ => (a.target.clone(), None),
    };
    let cmd = Command::signed(
        &key,
        &a.op,
        &a.host,
        task,
        approval,
        a.hold_for.map(|d| d.as_secs().max(1)),
        a.reason.clone(),
    );
    let client = a.nats.options("agentmon remote").await?.connect(servers).await?;
    if a.host == crate::nats::subjects::ALL_HOSTS {
        return fleet(&client, &a, &cmd).await;
    }
    let subject = Subjects::new(&a.host).ctl(&a.op);
    let msg = tokio::time::timeout(
        Duration::from_secs(15),
        client.request(subject.clone(), serde_json::to_vec(&cmd)?.into()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no answer on {subject} within 15 s"))?
    .map_err(|e| anyhow::anyhow!("{subject}: {e}"))?;
    let reply: Reply = serde_json::from_slice(&msg.payload)
        .map_err(|e| anyhow::anyhow!("{subject}: unreadable reply: {e}"))?;
    if reply.ok {
        if let Some(d) = &reply.data {
            println!("{}", serde_json::to_string_pretty(d)?);
        }
        if let Some(m) = &reply.message {
            println!("{m}");
        }
        Ok(0)
    } else {
        eprintln!("agentmon: {}: {}", a.host, reply.error.unwrap_or_else(|| "refused".into()));
        Ok(1)
    }
}

/// A command to every host: the answers gathered for `--wait`, one per host, as a
/// JSON object by host name. Exit 0 when at least one host did it.
async fn fleet(client: &async_nats::Client, a: &RemoteArgs, cmd: &Command) -> anyhow::Result<i32> {
    use futures_util::StreamExt;
    let subject = Subjects::fleet_ctl(&a.op);
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await?;
    client.publish_with_reply(subject.clone(), inbox, serde_json::to_vec(cmd)?.into()).await?;
    client.flush().await?;
    let mut by_host = serde_json::Map::new();
    let mut any_ok = false;
    let deadline = tokio::time::Instant::now() + a.wait;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, answers.next()).await {
        let Ok(r) = serde_json::from_slice::<crate::nats::control::FleetReply>(&msg.payload) else {
            eprintln!("agentmon: {subject}: an unreadable answer was ignored");
            continue;
        };
        any_ok |= r.reply.ok;
        by_host.insert(r.host, serde_json::to_value(&r.reply)?);
    }
    if by_host.is_empty() {
        eprintln!("agentmon: no host answered on {subject} within {}", humantime::format_duration(a.wait));
        return Ok(1);
    }
    println!("{}", serde_json::to_string_pretty(&by_host)?);
    Ok(if any_ok { 0 } else { 1 })
}
