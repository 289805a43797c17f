//! Subject and stream names. Everything a host publishes is under `agentmon.<host>.`;
//! one JetStream stream per host keeps it, except the control subjects (requests
//! must not be captured: the stream would answer them with a publish ack).

/// A subject token: NATS tokens cannot hold `.`, `*`, `>` or whitespace, so those
/// (and anything outside `[A-Za-z0-9_-]`) become `_`. Payloads carry the real names.
pub fn token(s: &str) -> String {
    let t: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if t.is_empty() { "_".into() } else { t }
}

/// Token for events bound to no task.
pub const NO_TASK: &str = "_none";

/// The root of fleet-wide control subjects.
pub const FLEET: &str = "agentmon-fleet";

/// A fleet-wide command's `host`.
pub const ALL_HOSTS: &str = "*";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    host: String,
    prefix: String,
}

impl Subjects {
    pub fn new(host: &str) -> Self {
        let host = token(host);
        Self { prefix: format!("agentmon.{host}"), host }
    }

    /// The host's subject token.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `agentmon.<host>.events.<task>`: every event of the task.
    pub fn events(&self, task: Option<&str>) -> String {
        format!("{}.events.{}", self.prefix, task.map(token).unwrap_or_else(|| NO_TASK.into()))
    }

    /// All events of the host (a filter).
    pub fn all_events(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    /// `agentmon.<host>.alerts`: policy alerts.
    pub fn alerts(&self) -> String {
        format!("{}.alerts", self.prefix)
    }

    /// `agentmon.<host>.actions`: what agentmon did (kill, freeze, thaw, approvals).
    pub fn actions(&self) -> String {
        format!("{}.actions", self.prefix)
    }

    /// `agentmon.<host>.kill`: kill signals (a task was killed or frozen).
    pub fn kill(&self) -> String {
        format!("{}.kill", self.prefix)
    }

    /// `agentmon.<host>.revoke`: a task ended or was killed; brokers revoke its credentials.
    pub fn revoke(&self) -> String {
        format!("{}.revoke", self.prefix)
    }

    /// `agentmon.<host>.ocsf.events.<task>` and `agentmon.<host>.ocsf.alerts`: OCSF copies.
    pub fn ocsf_events(&self, task: Option<&str>) -> String {
        format!("{}.ocsf.events.{}", self.prefix, task.map(token).unwrap_or_else(|| NO_TASK.into()))
    }

    pub fn ocsf_alerts(&self) -> String {
        format!("{}.ocsf.alerts", self.prefix)
    }

    /// `agentmon.<host>.ctl.<op>`: remote control requests (not kept in the stream).
    pub fn ctl(&self, op: &str) -> String {
        format!("{}.ctl.{}", self.prefix, token(op))
    }

    pub fn ctl_all(&self) -> String {
        format!("{}.ctl.*", self.prefix)
    }

    /// `agentmon-fleet.ctl.<op>`: a command to every host (signed for host `*`);
    /// each answers for itself, and for a task only the host that runs it. A root of
    /// its own, so that no host name can collide with it.
    pub fn fleet_ctl(op: &str) -> String {
        format!("{FLEET}.ctl.{}", token(op))
    }

    pub fn fleet_ctl_all() -> String {
        format!("{FLEET}.ctl.*")
    }

    /// The host's stream: `AGENTMON_<host>`.
    pub fn stream(&self) -> String {
        format!("AGENTMON_{}", self.host)
    }

    /// What the stream keeps: everything the host publishes but control requests.
    pub fn stream_subjects(&self) -> Vec<String> {
        let p = &self.prefix;
        vec![
            format!("{p}.events.>"),
            format!("{p}.alerts"),
            format!("{p}.actions"),
            format!("{p}.kill"),
            format!("{p}.revoke"),
            format!("{p}.ocsf.>"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let s = Subjects::new("web-1.example.com");
        assert_eq!(s.host(), "web-1_example_com");
        assert_eq!(s.events(Some("fix.bug 1")), "agentmon.web-1_example_com.events.fix_bug_1");
        assert_eq!(s.events(None), "agentmon.web-1_example_com.events._none");
        assert_eq!(s.ctl("kill"), "agentmon.web-1_example_com.ctl.kill");
        assert_eq!(s.ctl("a.>"), "agentmon.web-1_example_com.ctl.a__");
        assert_eq!(Subjects::fleet_ctl("kill"), "agentmon-fleet.ctl.kill");
        // No host's subjects can be the fleet's.
        assert!(!Subjects::new("agentmon-fleet").ctl("kill").starts_with("agentmon-fleet."));
        assert_eq!(s.stream(), "AGENTMON_web-1_example_com");
        assert!(!s.stream_subjects().iter().any(|x| x.contains(".ctl")));
        assert_eq!(token(""), "_");
        assert_eq!(token("*"), "_");
    }
}
