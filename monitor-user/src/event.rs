//! The event schema: one JSON object per line, stable field names. Documented in
//! docs/events.md; a change of meaning bumps [`SCHEMA`].

use std::{borrow::Cow, collections::BTreeMap, sync::Arc};

use serde::{Deserialize, Serialize};

/// A static name most of the time; owned only when read back from JSON.
pub type Name = Cow<'static, str>;

pub const SCHEMA: &str = "agentmon.event/1";

/// How a path that was not read whole starts (deeper than the kernel walks, or
/// longer than it copies): it is never presented, nor judged, as an absolute path.
pub const UNRESOLVED_PREFIX: &str = "…";
/// In `flags`: an open the BPF LSM tier refused for what the file is (a key, in the
/// sensitive set outside `scope.read`, a raw disk), known by inode; `path` is the
/// name it was asked by, which may be a symlink or a hard link that says nothing of it.
pub const REFUSED_FOR_FILE: &str = "refused_for_file";
/// In `flags`: a request asked of an io_uring ring (`syscall` its `IORING_OP_*`):
/// recorded as the kernel took it in, with the paths it names (what it asks for,
/// judged so; no `ret`, no `error`), or, for an open of agentmon's own key or /proc
/// file, as it completed (`ret` the descriptor).
pub const IO_URING: &str = "io_uring";
/// In `flags`: a sendmmsg's message the call failed on. It was attempted and not
/// sent; the kernel keeps no error for it (the call returns how many were sent).
pub const UNSENT: &str = "unsent";

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
    /// An extended attribute set or removed (`detail.name`).
    FileXattr,
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
    /// agentmon acted on a task (kill, freeze, thaw, revoke).
    Action,
    /// A held syscall waits for an approver.
    ApprovalRequest,
    /// A held syscall was approved, denied, timed out or cancelled.
    Approval,
    /// A task was bound to a process tree (exec, delegation).
    TaskStart,
    /// A task's root process exited (or the task was killed).
    TaskEnd,
    /// A step (tool call) of a task began or ended (`detail.phase`).
    Step,
    /// An attempt against agentmon or a task's confinement: a control request from
    /// inside a task or from a user without the right, a call the task may never
    /// make (signals to agentmon, mount, module loading, ...), a process that left
    /// its task's cgroup, agentmon itself stopped or traced.
    Tamper,
    /// The rules in force changed (hot reload: `detail.added`, `detail.removed`), or
    /// a reload was refused (`detail.errors`) and the old rules stay.
    Rules,
}

impl Kind {
    /// Every kind, in declaration order (`k as usize` indexes it).
    pub const ALL: [Kind; 32] = [
        Kind::Exec,
        Kind::Fork,
        Kind::Exit,
        Kind::FileWrite,
        Kind::FileCreate,
        Kind::FileDelete,
        Kind::FileRename,
        Kind::FileTruncate,
        Kind::FileChmod,
        Kind::FileChown,
        Kind::FileXattr,
        Kind::FileLink,
        Kind::DirCreate,
        Kind::Connect,
        Kind::Send,
        Kind::Bind,
        Kind::Listen,
        Kind::IoUring,
        Kind::Ptrace,
        Kind::Bpf,
        Kind::MemfdExec,
        Kind::Privilege,
        Kind::SensitiveRead,
        Kind::Loss,
        Kind::Action,
        Kind::ApprovalRequest,
        Kind::Approval,
        Kind::TaskStart,
        Kind::TaskEnd,
        Kind::Step,
        Kind::Tamper,
        Kind::Rules,
    ];

    /// agentmon's own records (and the gate's), not side effects: never judged.
    pub fn is_own_record(self) -> bool {
        matches!(
            self,
            Kind::Loss
                | Kind::Action
                | Kind::ApprovalRequest
                | Kind::Approval
                | Kind::TaskStart
                | Kind::TaskEnd
                | Kind::Step
                | Kind::Rules
        )
    }

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
            Kind::FileXattr => "file_xattr",
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
            Kind::Action => "action",
            Kind::ApprovalRequest => "approval_request",
            Kind::Approval => "approval",
            Kind::TaskStart => "task_start",
            Kind::TaskEnd => "task_end",
            Kind::Step => "step",
            Kind::Tamper => "tamper",
            Kind::Rules => "rules",
        }
    }
}

/// A step of a task: one tool call of the agent, with its trace context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub tool: String,
    pub call_id: String,
    /// W3C trace id (32 hex digits), from a `traceparent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The caller's span id (16 hex digits), from a `traceparent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
}

impl Step {
    /// Validates a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`) into
    /// (trace id, span id).
    pub fn parse_traceparent(tp: &str) -> Result<(String, String), String> {
        let parts: Vec<&str> = tp.trim().split('-').collect();
        let hex = |s: &str, n: usize| {
            s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        };
        match parts.as_slice() {
            [v, t, s, f]
                if hex(v, 2)
                    && *v != "ff"
                    && hex(t, 32)
                    && hex(s, 16)
                    && hex(f, 2)
                    && t.bytes().any(|b| b != b'0')
                    && s.bytes().any(|b| b != b'0') =>
            {
                Ok((t.to_string(), s.to_string()))
            }
            _ => Err(format!("traceparent {tp:?} is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)")),
        }
    }
}

/// A network destination (or local address, for bind/listen).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dst {
    Ip { ip: String, port: u16 },
    Unix { unix: String },
}

/// One event. Fields that do not apply to a kind are omitted, except the ones every
/// event carries (`ppid`, `exe`, `task` are null when unknown).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub schema: Name,
    /// Unique id (UUIDv7, time-ordered); consumers dedupe on it.
    pub id: uuid::Uuid,
    /// RFC 3339 UTC with nanoseconds.
    pub ts: Timestamp,
    pub host: Arc<str>,
    pub kind: Kind,
    pub pid: u32,
    pub tid: u32,
    pub ppid: Option<u32>,
    pub comm: String,
    /// The calling thread's real user and group ids (events from the kernel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// The name this host gives `uid`, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Arc<str>>,
    /// The process's cgroup v2 path when it made the event (events from the kernel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<Arc<str>>,
    /// The container that cgroup is a runtime's, and the Kubernetes pod it is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Arc<crate::container::Container>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Arc<crate::container::Pod>>,
    pub exe: Option<Arc<str>>,
    pub task: Option<Arc<str>>,
    /// Tasks this task was delegated from, nearest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_chain: Option<Arc<[Arc<str>]>>,
    /// The task runs on no grant: neither its own nor one of a task it was
    /// delegated from (a host without grant keys, a selector's task).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unsigned: bool,
    /// The tool call (step) of the task the event happened in, as announced by the
    /// agent's hooks (`agentmon step begin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<Arc<Step>>,
    /// Policy verdict: in_scope, needs_approval, out_of_scope, violation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Name>,
    /// What the policy says should happen (none, alert, revoke, require_approval, deny, freeze, kill).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Name>,
    /// The rule that decided, if a rule did (null otherwise).
    #[serde(default)]
    pub rule: Option<String>,
    /// Why: the deciding rule's description or the scope clause's finding (null when
    /// nothing needed saying).
    #[serde(default)]
    pub reason: Option<String>,
    /// The syscall or hook that produced the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscall: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<Dst>,
    /// `tcp`, `udp`, `unix-stream`, ... for network events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<Name>,
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
    pub error: Option<Name>,
    /// Kind-specific details (uid/gid, ptrace request, io_uring opcode, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub detail: BTreeMap<Name, serde_json::Value>,
    /// For `loss`: events lost per kind since the previous loss event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<BTreeMap<String, u64>>,
    /// Process start time (CLOCK_MONOTONIC ns); with pid it identifies the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u64>,
}

impl Event {
    /// A bare event of `kind` with the fields every event has.
    pub fn new(kind: Kind, ts: Timestamp, host: Arc<str>) -> Self {
        Event {
            schema: Cow::Borrowed(SCHEMA),
            id: event_id(ts),
            ts,
            host,
            kind,
            pid: 0,
            tid: 0,
            ppid: None,
            comm: String::new(),
            uid: None,
            gid: None,
            user: None,
            cgroup: None,
            container: None,
            pod: None,
            exe: None,
            task: None,
            task_chain: None,
            unsigned: false,
            step: None,
            verdict: None,
            action: None,
            rule: None,
            reason: None,
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

/// An alert: a side effect outside its task's scope, a rule hit, or a step that
/// needs approval. Carries the whole event and the task. Schema `agentmon.alert/1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub schema: Name,
    /// Always `alert`, so one stream can carry events and alerts.
    pub kind: Name,
    pub id: uuid::Uuid,
    pub ts: Timestamp,
    pub host: Arc<str>,
    pub severity: Name,
    pub verdict: Name,
    /// Typed: what containment carries out is read from here, never parsed back
    /// from the event's text.
    pub action: crate::policy::Action,
    pub rule: Option<String>,
    pub reason: String,
    /// Every reason, strongest first.
    pub reasons: Vec<AlertReason>,
    pub task: Option<TaskInfo>,
    pub event: Event,
}

pub const ALERT_SCHEMA: &str = "agentmon.alert/1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertReason {
    pub verdict: crate::policy::VerdictKind,
    /// Typed, as the alert's own (the pipeline reads it: a rule's revoke).
    pub action: crate::policy::Action,
    pub severity: crate::policy::Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clause: Option<Name>,
    pub message: String,
}

/// Who acted: the task of an alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub id: Arc<str>,
    pub agent: Option<String>,
    pub principal: Option<String>,
    pub mode: Name,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<String>,
}

/// A point in time, as Unix nanoseconds; serialised as RFC 3339 UTC with nine
/// fractional digits (written without allocating: it is on every event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i128);

impl Timestamp {
    /// The wall clock now.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Timestamp(d.as_nanos() as i128)
    }

    /// Seconds and nanoseconds since the epoch. In 64 bits while the time fits
    /// (until 2262): a 128-bit division is a library call, and this runs for
    /// every record.
    fn split(&self) -> (i64, u32) {
        match i64::try_from(self.0) {
            Ok(t) => (t.div_euclid(1_000_000_000), t.rem_euclid(1_000_000_000) as u32),
            Err(_) => (self.0.div_euclid(1_000_000_000) as i64, self.0.rem_euclid(1_000_000_000) as u32),
        }
    }

    /// Text form, e.g. `2026-11-28T15:31:39.607000000Z`, into `buf`.
    pub fn format<'b>(&self, buf: &'b mut [u8; 30]) -> &'b str {
        // The date and time of day change once a second, records come by the
        // thousand a second: the last second's text is kept per thread.
        thread_local! {
            static LAST: std::cell::Cell<Option<(i64, [u8; 20])>> = const { std::cell::Cell::new(None) };
        }
        let (secs, nanos) = self.split();
        match LAST.get() {
            Some((last, head)) if last == secs => buf[..20].copy_from_slice(&head),
            _ => {
                civil(secs, buf);
                LAST.set(buf[..20].try_into().ok().map(|head| (secs, head)));
            }
        }
        let mut v = nanos;
        for i in (20..29).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        buf[29] = b'Z';
        std::str::from_utf8(buf).unwrap_or("1970-01-01T00:00:00.000000000Z")
    }

    pub fn parse(s: &str) -> Option<Self> {
        let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
        Some(Timestamp(t.unix_timestamp_nanos()))
    }
}

/// A version 7 id for an event at `ts`: its milliseconds, then a 42-bit count
/// from a random start per thread and 32 fresh random bits. Unique in this process,
/// unlikely to meet another's, sorted by event time, and not guessable from one
/// seen (ids are the NATS stream's de-duplication keys: one known in advance could
/// be published first, and the real record dropped as a repeat). Without the clock
/// read of `Uuid::now_v7`, 7% of the record path.
pub fn event_id(ts: Timestamp) -> uuid::Uuid {
    thread_local! {
        static NEXT: std::cell::Cell<u64> = std::cell::Cell::new(rand::random());
    }
    let n = NEXT.get();
    NEXT.set(n.wrapping_add(1));
    let (secs, nanos) = ts.split();
    let millis = if secs < 0 {
        0
    } else {
        (secs as u64).saturating_mul(1000).saturating_add((nanos / 1_000_000) as u64)
    };
    // rand_a (12 bits): the count's high part; rand_b (62): its low 30 bits, then
    // the random 32. The bits the version and variant take are left clear.
    let (hi, lo) = ((n >> 30) & 0xfff, n & 0x3fff_ffff);
    let b = ((lo << 32) | rand::random::<u32>() as u64).to_be_bytes();
    let bytes = [(hi >> 8) as u8, hi as u8, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
    uuid::Builder::from_unix_timestamp_millis(millis.min((1 << 48) - 1), &bytes).into_uuid()
}

/// `YYYY-MM-DDTHH:MM:SS.` of `secs` since the epoch into `buf[..20]`.
fn civil(secs: i64, buf: &mut [u8; 30]) {
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400) as u32);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = (yoe + era * 400 + if m <= 2 { 1 } else { 0 }).clamp(0, 9999) as u32;
    let mut put = |at: usize, v: u32, width: usize| {
        let mut v = v;
        for i in (0..width).rev() {
            buf[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, y, 4);
    put(5, m, 2);
    put(8, d, 2);
    put(11, sod / 3600, 2);
    put(14, sod / 60 % 60, 2);
    put(17, sod % 60, 2);
    for (i, c) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':'), (19, b'.')] {
        buf[i] = c;
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.format(&mut [0; 30]))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.format(&mut [0; 30]))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: Cow<'de, str> = Deserialize::deserialize(d)?;
        Timestamp::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 time: {s}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_like_rfc3339_and_parse_back() {
        for (ns, text) in [
            (0i128, "1970-01-01T00:00:00.000000000Z"),
            (1_795_880_499_607_000_123, "2026-11-28T15:41:39.607000123Z"),
            (951_782_400_000_000_000, "2000-02-29T00:00:00.000000000Z"),
            // Before 1970, and past what 64 bits of nanoseconds hold (2262).
            (-1, "1969-12-31T23:59:59.999999999Z"),
            (10_000_000_000_000_000_123, "2286-11-20T17:46:40.000000123Z"),
        ] {
            assert_eq!(Timestamp(ns).to_string(), text);
            assert_eq!(Timestamp::parse(text), Some(Timestamp(ns)));
        }
        // Agrees with the time crate across a range of dates.
        for secs in (0..4_000_000_000i64).step_by(86_399 * 37) {
            let t = time::OffsetDateTime::from_unix_timestamp(secs).unwrap();
            let want = t.format(&time::format_description::well_known::Rfc3339).unwrap();
            let got = Timestamp(secs as i128 * 1_000_000_000).to_string();
            assert_eq!(got.replace(".000000000", ""), want, "{secs}");
        }
    }

    /// The text of the last second is reused: a record in the same second gets
    /// its own nanoseconds, one in the next second its own date.
    #[test]
    fn timestamps_in_one_second_share_only_the_second() {
        let base = 1_795_880_499_000_000_000i128;
        for (ns, text) in [
            (base + 5, "2026-11-28T15:41:39.000000005Z"),
            (base + 999_999_999, "2026-11-28T15:41:39.999999999Z"),
            (base + 1_000_000_000, "2026-11-28T15:41:40.000000000Z"),
            (base + 7, "2026-11-28T15:41:39.000000007Z"),
            (base + 7 + 86_400_000_000_000, "2026-11-29T15:41:39.000000007Z"),
        ] {
            assert_eq!(Timestamp(ns).to_string(), text);
        }
        // Seconds that are the smallest i64 are text too, not an empty cache's.
        let min = Timestamp(i64::MIN as i128 * 1_000_000_000);
        for _ in 0..2 {
            assert!(min.to_string().bytes().all(|b| b.is_ascii_graphic()), "{min}");
        }
    }

    /// Event ids are v7 ids of the event's own time, distinct for events of the
    /// same millisecond, and sort as their events' times do.
    #[test]
    fn event_ids_carry_the_event_time_and_differ() {
        let t = Timestamp(1_795_880_499_607_000_123);
        let ids: Vec<uuid::Uuid> = (0..1000).map(|_| event_id(t)).collect();
        let mut distinct = ids.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), ids.len());
        for id in &ids {
            assert_eq!(id.get_version(), Some(uuid::Version::SortRand));
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
            assert_eq!((secs, nanos), (1_795_880_499, 607_000_000));
        }
        let later = event_id(Timestamp(t.0 + 1_000_000));
        assert!(ids.iter().all(|id| *id < later));
        // Before 1970 and past 2^48 ms: the nearest time an id can carry.
        assert_eq!(event_id(Timestamp(-1)).get_timestamp().unwrap().to_unix(), (0, 0));
        let far = event_id(Timestamp(1_000_000_000_000 * 1_000_000_000)).get_timestamp().unwrap().to_unix();
        assert_eq!(far, (((1u64 << 48) - 1) / 1000, (((1u64 << 48) - 1) % 1000) as u32 * 1_000_000));
        // Another thread starts elsewhere: no run of ids is shared.
        let other = std::thread::spawn(move || event_id(t)).join().unwrap();
        assert!(!ids.contains(&other));
    }

    #[test]
    fn serializes_required_fields_and_round_trips() {
        let mut e = Event::new(Kind::FileWrite, Timestamp(1), "h".into());
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

    /// An alert's reasons are typed inside and the same words outside: a consumer
    /// of `agentmon.alert/1` sees no change, and a reason with an action agentmon
    /// does not know is refused, naming it, not read as no action.
    #[test]
    fn alert_reasons_are_typed_and_read_back() {
        use crate::policy::{Action, Severity, VerdictKind};
        let r = AlertReason {
            verdict: VerdictKind::OutOfScope,
            action: Action::RequireApproval,
            severity: Severity::High,
            rule: None,
            clause: Some(Cow::Borrowed("scope.delete")),
            message: "m".into(),
        };
        let v = serde_json::to_value(&r).unwrap();
        let want = serde_json::json!({"verdict": "out_of_scope", "action": "require_approval",
            "severity": "high", "clause": "scope.delete", "message": "m"});
        assert_eq!(v, want);
        assert_eq!(serde_json::from_value::<AlertReason>(v).unwrap(), r);
        let mut bad = want.clone();
        bad["action"] = "explode".into();
        let err = serde_json::from_value::<AlertReason>(bad).unwrap_err().to_string();
        assert!(err.contains("explode"), "{err}");
    }
}
