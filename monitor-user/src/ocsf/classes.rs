//! The class-specific part of each event kind: which OCSF 1.3.0 class and activity,
//! and the class's own attributes. The common envelope is built in `mod.rs`.

use serde_json::{Map, Value, json};

use super::objects::{self, DIR_INBOUND, DIR_OUTBOUND, DIR_UNKNOWN};
use crate::event::{Event, Kind};

/// An OCSF event class (uid = category_uid * 1000 + class number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    pub uid: u32,
    pub name: &'static str,
    pub category_uid: u32,
    pub category_name: &'static str,
}

pub const FILE_SYSTEM_ACTIVITY: Class =
    Class { uid: 1001, name: "File System Activity", category_uid: 1, category_name: "System Activity" };
pub const KERNEL_ACTIVITY: Class =
    Class { uid: 1003, name: "Kernel Activity", category_uid: 1, category_name: "System Activity" };
pub const PROCESS_ACTIVITY: Class =
    Class { uid: 1007, name: "Process Activity", category_uid: 1, category_name: "System Activity" };
pub const EVENT_LOG_ACTIVITY: Class =
    Class { uid: 1008, name: "Event Log Activity", category_uid: 1, category_name: "System Activity" };
pub const DETECTION_FINDING: Class =
    Class { uid: 2004, name: "Detection Finding", category_uid: 2, category_name: "Findings" };
pub const NETWORK_ACTIVITY: Class =
    Class { uid: 4001, name: "Network Activity", category_uid: 4, category_name: "Network Activity" };

/// `activity_id` and its caption (for 99 Other, agentmon's own name).
pub type Activity = (u32, &'static str);

/// What a kind contributes to its OCSF event.
pub struct Body {
    pub class: Class,
    pub activity: Activity,
    /// Class attributes: `process`, `file`, `dst_endpoint`, `kernel`, ...
    pub fields: Map<String, Value>,
    /// `actor.process` when it is not the process that made the call.
    pub actor_process: Option<Map<String, Value>>,
    /// Native fields with no attribute in the class.
    pub unmapped: Map<String, Value>,
    /// Severity and status when not derived from verdict and error.
    pub severity_id: Option<u32>,
    pub status: Option<(u32, &'static str)>,
}

impl Body {
    fn new(class: Class, activity: Activity) -> Self {
        Body {
            class,
            activity,
            fields: Map::new(),
            actor_process: None,
            unmapped: Map::new(),
            severity_id: None,
            status: None,
        }
    }

    fn put(&mut self, key: &str, v: impl Into<Value>) {
        self.fields.insert(key.into(), v.into());
    }
}

/// The class of `ev`, or `None` for agentmon's own control records.
pub fn body(ev: &Event) -> Option<Body> {
    Some(match ev.kind {
        Kind::Exec | Kind::MemfdExec | Kind::Fork | Kind::Exit | Kind::Ptrace | Kind::Privilege => {
            process_activity(ev)
        }
        Kind::FileCreate
        | Kind::DirCreate
        | Kind::FileWrite
        | Kind::FileTruncate
        | Kind::FileDelete
        | Kind::FileRename
        | Kind::FileChmod
        | Kind::FileChown
        | Kind::FileXattr
        | Kind::FileLink
        | Kind::SensitiveRead => file_activity(ev),
        Kind::Connect | Kind::Send | Kind::Bind | Kind::Listen => network_activity(ev),
        Kind::IoUring | Kind::Bpf | Kind::Tamper => kernel_activity(ev),
        Kind::Loss => event_log_activity(ev),
        // Not observed activity but agentmon's own records: its acts, the approval
        // workflow, task lifecycle. No OCSF 1.3.0 class fits without inventing a
        // target (docs/ocsf.md).
        Kind::Action
        | Kind::ApprovalRequest
        | Kind::Approval
        | Kind::TaskStart
        | Kind::TaskEnd
        | Kind::Step
        | Kind::Rules => {
            return None;
        }
    })
}

fn detail_str<'e>(ev: &'e Event, key: &str) -> Option<&'e str> {
    ev.detail.get(key).and_then(Value::as_str)
}

fn process_activity(ev: &Event) -> Body {
    let launch = (1, "Launch");
    let mut b;
    match ev.kind {
        Kind::Exec | Kind::MemfdExec => {
            b = Body::new(PROCESS_ACTIVITY, launch);
            let mut p = objects::process(ev);
            // The launcher is the parent: the image that called execve is gone.
            b.actor_process = ev.ppid.map(objects::pid_only);
            match (&ev.path, &ev.error) {
                // A failed exec launched nothing and still runs the old image: the
                // process's file is the one it tried to run.
                (Some(path), Some(_)) => {
                    p.insert("file".into(), Value::Object(objects::file(path, objects::FILE_UNKNOWN)));
                    if let Some(exe) = &ev.exe {
                        b.unmapped.insert("exe".into(), json!(exe));
                    }
                }
                // A script: the file named in the call, run by the interpreter (exe).
                (Some(path), None) if Some(path.as_str()) != ev.exe.as_deref() => {
                    b.unmapped.insert("path".into(), json!(path));
                }
                _ => {}
            }
            b.put("process", p);
        }
        Kind::Fork => {
            // pid is the child (start, exe: the child's), ppid the parent that forked.
            b = Body::new(PROCESS_ACTIVITY, launch);
            let mut child = objects::pid_only(ev.pid);
            objects::identity(ev, &mut child);
            if let Some(ppid) = ev.ppid {
                child.insert("parent_process".into(), json!({ "pid": ppid }));
                let mut parent = objects::pid_only(ppid);
                if !ev.comm.is_empty() {
                    parent.insert("name".into(), json!(ev.comm));
                }
                if let Some(f) = child.get("file") {
                    parent.insert("file".into(), f.clone());
                }
                b.actor_process = Some(parent);
            }
            b.put("process", child);
        }
        Kind::Exit => {
            b = Body::new(PROCESS_ACTIVITY, (2, "Terminate"));
            b.put("process", objects::process(ev));
            if let Some(code) = ev.status {
                b.put("exit_code", code);
            }
        }
        Kind::Ptrace => {
            let request = detail_str(ev, "request").unwrap_or("");
            let writes = matches!(
                request,
                "PTRACE_POKETEXT" | "PTRACE_POKEDATA" | "PTRACE_POKEUSER" | "PTRACE_SETREGS"
            );
            b = Body::new(PROCESS_ACTIVITY, if writes { (4, "Inject") } else { (3, "Open") });
            if writes {
                b.put("injection_type_id", 99);
                b.put("injection_type", "ptrace");
            }
            let target = ev.detail.get("target_pid").and_then(Value::as_i64).filter(|p| *p > 0);
            let target = match (request, ev.ppid, target) {
                // The tracee asks its parent to trace it: the parent is the other side.
                ("PTRACE_TRACEME", Some(ppid), _) => objects::pid_only(ppid),
                (_, _, Some(pid)) => objects::pid_only(pid),
                _ => objects::process(ev),
            };
            b.put("process", target);
        }
        _ => {
            // Privilege. capset changes capabilities, not ids: Other.
            let capset = ev.syscall.as_deref() == Some("capset");
            b = Body::new(
                PROCESS_ACTIVITY,
                if capset { (99, "Set Capabilities") } else { (5, "Set User ID") },
            );
            b.put("process", objects::process(ev));
        }
    }
    b
}

fn file_activity(ev: &Event) -> Body {
    use objects::{FILE_FOLDER, FILE_REGULAR, FILE_SYMLINK, FILE_UNKNOWN};
    let has = |flag: &str| ev.flags.iter().any(|f| f == flag);
    let (activity, ty) = match ev.kind {
        Kind::FileCreate => ((1, "Create"), FILE_REGULAR),
        Kind::DirCreate => ((1, "Create"), FILE_FOLDER),
        Kind::FileLink => ((1, "Create"), if has("symlink") { FILE_SYMLINK } else { FILE_UNKNOWN }),
        Kind::SensitiveRead => ((2, "Read"), FILE_UNKNOWN),
        Kind::FileWrite | Kind::FileTruncate => ((3, "Update"), FILE_UNKNOWN),
        Kind::FileDelete => {
            let dir = has("AT_REMOVEDIR") || ev.syscall.as_deref() == Some("rmdir");
            ((4, "Delete"), if dir { FILE_FOLDER } else { FILE_UNKNOWN })
        }
        Kind::FileRename => ((5, "Rename"), FILE_UNKNOWN),
        Kind::FileXattr => ((6, "Set Attributes"), FILE_UNKNOWN),
        // Mode bits and ownership are the file's access control: Set Security.
        _ => ((7, "Set Security"), FILE_UNKNOWN),
    };
    let mut b = Body::new(FILE_SYSTEM_ACTIVITY, activity);
    if let Some(path) = &ev.path {
        b.put("file", objects::file(path, ty));
    }
    match ev.kind {
        Kind::FileRename => {
            if let Some(new) = &ev.new_path {
                b.put("file_result", objects::file(new, ty));
            }
        }
        Kind::FileChown => {
            let uid = ev.detail.get("uid").and_then(Value::as_i64).filter(|u| *u >= 0);
            if let (Some(path), Some(uid)) = (&ev.path, uid) {
                let mut f = objects::file(path, ty);
                f.insert("owner".into(), json!({ "uid": uid.to_string() }));
                b.put("file_result", f);
            }
        }
        Kind::FileLink => {
            if let Some(target) = &ev.new_path {
                b.unmapped.insert("new_path".into(), json!(target));
            }
        }
        _ => {}
    }
    b
}

fn network_activity(ev: &Event) -> Body {
    let (activity, direction) = match ev.kind {
        Kind::Connect => {
            let a = match ev.error.as_deref() {
                None | Some("EINPROGRESS") => (1, "Open"),
                Some("ECONNREFUSED") => (5, "Refuse"),
                Some(_) => (4, "Fail"),
            };
            (a, DIR_OUTBOUND)
        }
        Kind::Send => ((6, "Traffic"), DIR_OUTBOUND),
        Kind::Listen => ((7, "Listen"), DIR_INBOUND),
        // A bind may be a server's or an ephemeral client's.
        _ => ((99, "Bind"), DIR_UNKNOWN),
    };
    let mut b = Body::new(NETWORK_ACTIVITY, activity);
    // For bind/listen the native dst is the local address: the responder's.
    if let Some(dst) = &ev.dst {
        let (e, unix) = objects::endpoint(dst);
        b.put("dst_endpoint", e);
        if let Some(unix) = unix {
            b.unmapped.insert("unix".into(), json!(unix));
        }
    }
    let (c, proto_mapped) = objects::connection_info(ev, direction);
    b.put("connection_info", c);
    if !proto_mapped && let Some(p) = &ev.proto {
        b.unmapped.insert("proto".into(), json!(p));
    }
    b
}

fn kernel_activity(ev: &Event) -> Body {
    if ev.kind == Kind::Tamper {
        // A call against agentmon or the task's confinement (its finding is the alert).
        let mut b = Body::new(KERNEL_ACTIVITY, (4, "Invoke"));
        let call = ev.syscall.as_deref().or_else(|| detail_str(ev, "attempt")).unwrap_or("tamper");
        b.put("kernel", objects::kernel(call, ev.syscall.as_deref()));
        b.status =
            Some(if ev.verdict.as_deref() == Some("denied") { (2, "Failure") } else { (1, "Success") });
        return b;
    }
    if ev.kind == Kind::Bpf {
        let mut b = Body::new(KERNEL_ACTIVITY, (4, "Invoke"));
        b.put("kernel", objects::kernel(detail_str(ev, "cmd").unwrap_or("bpf"), Some("bpf")));
        return b;
    }
    // io_uring: a ring created (setup) or a request submitted (bypassing syscalls).
    if ev.flags.iter().any(|f| f == "setup") {
        let mut b = Body::new(KERNEL_ACTIVITY, (1, "Create"));
        b.put("kernel", objects::kernel("io_uring", Some("io_uring_setup")));
        b
    } else {
        let mut b = Body::new(KERNEL_ACTIVITY, (4, "Invoke"));
        b.put("kernel", objects::kernel(detail_str(ev, "opcode").unwrap_or("io_uring"), None));
        b
    }
}

/// Where a loss record's events were lost: the kernel's ring, one of agentmon's
/// outputs, or the NATS spool.
fn lost_from(ev: &Event) -> String {
    let keys = || ev.lost.iter().flat_map(|l| l.keys());
    if ev.detail.get("sink").and_then(Value::as_str) == Some("nats") || keys().any(|k| k == "nats_spool") {
        return "agentmon NATS spool".into();
    }
    match keys().find_map(|k| k.strip_prefix("output:")) {
        Some(name) => format!("agentmon output {name}"),
        None => "agentmon kernel event ring buffer".into(),
    }
}

fn event_log_activity(ev: &Event) -> Body {
    let mut b = Body::new(EVENT_LOG_ACTIVITY, (99, "Events Lost"));
    let total: u64 = ev.lost.iter().flat_map(|l| l.values()).sum();
    b.put("count", total);
    b.put("log_provider", "agentmon");
    b.put("log_name", lost_from(ev));
    b.put("status_detail", format!("{total} events lost"));
    b.severity_id = Some(3);
    b.status = Some((2, "Failure"));
    b
}
