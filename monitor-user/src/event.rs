//! The event schema: one JSON object per line, stable field names. Documented in
//! docs/events.md; a change of meaning bumps [`SCHEMA`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const SCHEMA: &str = "agentmon.event/1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Exec,
    Fork,
    Exit,
    FileWrite,
    FileCreate,
    FileDelete,
    FileRename,
    FileTruncate,
    FileChmod,
    FileChown,
    FileLink,
    DirCreate,
    Connect,
    Send,
    Bind,
    Listen,
    IoUring,
    Ptrace,
    Bpf,
    MemfdExec,
    Privilege,
    SensitiveRead,
    Loss,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Exec => "exec",
            Kind::Fork => "fork",
            Kind::Exit => "exit",
            Kind::FileWrite => "file_write",
            Kind::FileCreate => "file_create",
            Kind::FileDelete => "file_delete",
            Kind::FileRename => "file_rename",
            Kind::FileTruncate => "file_truncate",
            Kind::FileChmod => "file_chmod",
            Kind::FileChown => "file_chown",
            Kind::FileLink => "file_link",
            Kind::DirCreate => "dir_create",
            Kind::Connect => "connect",
            Kind::Send => "send",
            Kind::Bind => "bind",
            Kind::Listen => "listen",
            Kind::IoUring => "io_uring",
            Kind::Ptrace => "ptrace",
            Kind::Bpf => "bpf",
            Kind::MemfdExec => "memfd_exec",
            Kind::Privilege => "privilege",
            Kind::SensitiveRead => "sensitive_read",
            Kind::Loss => "loss",
        }
    }
}

/// A network destination (or local address, for bind/listen).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dst {
    Ip { ip: String, port: u16 },
    Unix { unix: String },
}

/// One event. Fields that do not apply to a kind are omitted, except the ones every
/// event carries (`ppid`, `exe`, `task` are null when unknown).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub schema: String,
    /// Unique id (UUIDv7, time-ordered); consumers dedupe on it.
    pub id: String,
    /// RFC 3339 UTC with nanoseconds.
    pub ts: String,
    pub host: String,
    pub kind: Kind,
    pub pid: u32,
    pub tid: u32,
    pub ppid: Option<u32>,
    pub comm: String,
    pub exe: Option<String>,
    pub task: Option<String>,
    /// The syscall or hook that produced the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscall: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<Dst>,
    /// `tcp`, `udp`, `unix-stream`, ... for network events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// Mode bits for creates/chmod/mkdir, octal text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Exit code (exit events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i64>,
    /// Return value of the syscall (syscall events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<i64>,
    /// Signal that killed the process (exit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// errno name when the syscall failed (`EACCES`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Kind-specific details (uid/gid, ptrace request, io_uring opcode, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub detail: BTreeMap<String, serde_json::Value>,
    /// For `loss`: events lost per kind since the previous loss event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<BTreeMap<String, u64>>,
    /// Process start time (CLOCK_MONOTONIC ns); with pid it identifies the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u64>,
}

impl Event {
    /// A bare event of `kind` with the fields every event has.
    pub fn new(kind: Kind, ts: String, host: String) -> Self {
        Event {
            schema: SCHEMA.into(),
            id: uuid::Uuid::now_v7().to_string(),
            ts,
            host,
            kind,
            pid: 0,
            tid: 0,
            ppid: None,
            comm: String::new(),
            exe: None,
            task: None,
            syscall: None,
            path: None,
            new_path: None,
            dst: None,
            proto: None,
            argv: None,
            flags: Vec::new(),
            mode: None,
            status: None,
            ret: None,
            signal: None,
            error: None,
            detail: BTreeMap::new(),
            lost: None,
            start: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_required_fields_and_round_trips() {
        let mut e = Event::new(Kind::FileWrite, "2026-01-01T00:00:00.000000001Z".into(), "h".into());
        e.pid = 5;
        e.path = Some("/tmp/x".into());
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        for k in ["ts", "kind", "pid", "ppid", "comm", "exe", "task", "id", "host", "schema"] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["kind"], "file_write");
        assert!(v["task"].is_null());
        assert!(v.get("dst").is_none());
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
        let d = serde_json::to_value(Dst::Ip { ip: "::1".into(), port: 80 }).unwrap();
        assert_eq!(d, serde_json::json!({"ip": "::1", "port": 80}));
    }
}
