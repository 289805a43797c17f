//! The task-scope judge: is this side effect within what the task declared?
//! Documented clause by clause in docs/tasks.md.

use std::net::IpAddr;

use super::{Action, Reason, Severity, VerdictKind};
use crate::{
    event::{Dst, Event, Kind, REFUSED_FOR_FILE, UNRESOLVED_PREFIX},
    task::{Mode, Op, Task, scope::Endpoint},
};

fn out(clause: &'static str, message: String) -> Option<Reason> {
    Some(Reason {
        verdict: VerdictKind::OutOfScope,
        action: Action::Alert,
        severity: Severity::Medium,
        rule: None,
        clause: Some(clause),
        message,
        burst: 0,
    })
}

/// Where a write may land in this task's mode.
fn writable(task: &Task, path: &str) -> Option<Reason> {
    match task.mode {
        Mode::Read => out("mode", format!("task mode is read: no writes ({path})")),
        Mode::Propose => match &task.propose_dir {
            Some(d) if std::path::Path::new(path).starts_with(d) => None,
            _ => out("scope.propose_dir", format!("{path} is outside the propose directory")),
        },
        Mode::Execute if task.write.matches(path) => None,
        Mode::Execute => out("scope.write", format!("{path} is outside scope.write")),
    }
}

fn dst_allowed(eps: &[Endpoint], dst: &Dst) -> bool {
    match dst {
        Dst::Ip { ip, port } => {
            ip.parse::<IpAddr>().is_ok_and(|ip| eps.iter().any(|e| e.allows_ip(ip, *port)))
        }
        Dst::Unix { unix } => eps.iter().any(|e| e.allows_unix(unix)),
    }
}

/// Judges `ev` against `task`. None: within scope. `launch` marks the task root's
/// own first exec (the command agentmon started), which is the task, not a step of it.
pub fn judge(ev: &Event, task: &Task, launch: bool) -> Option<Reason> {
    if task.expired(ev.ts) {
        return out("expires", format!("task {} expired", task.id));
    }
    // A path not read whole is unknown: never judged by the part that was read.
    if let Some(p) = [&ev.path, &ev.new_path].into_iter().flatten().find(|p| p.starts_with(UNRESOLVED_PREFIX))
    {
        return out(
            "path",
            format!(
                "{p}: the path could not be resolved (deeper or longer than the kernel copies, or its directory's \
                 file system did not answer); judged out of scope"
            ),
        );
    }
    let path = ev.path.as_deref().unwrap_or("");
    // The BPF LSM tier refused the file itself: out of the scope it was checked
    // against, whatever a glob here says of its path.
    if ev.flags.iter().any(|f| f == REFUSED_FOR_FILE) {
        let clause = match ev.kind {
            Kind::SensitiveRead => Some("scope.read"),
            Kind::FileWrite | Kind::FileCreate | Kind::FileTruncate => Some("scope.write"),
            _ => None,
        };
        if let Some(c) = clause {
            return out(c, format!("{path} is outside {c} (refused by the kernel for the file itself)"));
        }
    }
    let verdict = match ev.kind {
        Kind::Exec | Kind::MemfdExec => {
            // The file named in execve, and (for a script) the interpreter the kernel ran:
            // both must be allowed, as the Landlock layer checks both. A failed exec did
            // not change the image, so only the named file counts.
            let named_ok = path.is_empty() || task.exec.matches(path);
            let exe = if ev.ret.is_some_and(|r| r < 0) { path } else { ev.exe.as_deref().unwrap_or(path) };
            if launch || (named_ok && task.exec.matches(exe)) {
                None
            } else if !named_ok {
                out("scope.exec", format!("{path} is not in scope.exec"))
            } else {
                out("scope.exec", format!("{exe} is not in scope.exec"))
            }
        }
        Kind::FileWrite
        | Kind::FileCreate
        | Kind::FileTruncate
        | Kind::FileChmod
        | Kind::FileChown
        | Kind::FileXattr
        | Kind::FileLink
        | Kind::DirCreate => writable(task, path),
        Kind::FileRename => {
            let to = ev.new_path.as_deref().unwrap_or("");
            writable(task, path).or_else(|| writable(task, to))
        }
        Kind::FileDelete => match task.mode {
            Mode::Read | Mode::Propose => {
                out("mode", format!("task mode is {}: no deletes ({path})", task.mode.as_str()))
            }
            Mode::Execute if task.delete.matches(path) => None,
            Mode::Execute => out("scope.delete", format!("{path} is outside scope.delete")),
        },
        Kind::SensitiveRead if task.read.matches(path) => None,
        Kind::SensitiveRead => out("scope.read", format!("{path} is outside scope.read")),
        Kind::Connect | Kind::Send => match &ev.dst {
            Some(d) if dst_allowed(&task.connect, d) => None,
            Some(d) => out("scope.connect", format!("{} is not in scope.connect", show(d))),
            // One sendmmsg to more destinations than the kernel records: the rest are
            // unknown, never taken to be the ones before.
            None if ev.flags.iter().any(|f| f == "truncated") => out(
                "scope.connect",
                "a sendmmsg sent to more destinations than are recorded per call; the rest were not read"
                    .into(),
            ),
            None => None,
        },
        Kind::Bind | Kind::Listen => match &ev.dst {
            // An ephemeral client port, or a socket file the task may write.
            Some(Dst::Ip { port: 0, .. }) if ev.kind == Kind::Bind => None,
            Some(Dst::Unix { unix }) if unix.starts_with('/') => writable(task, unix),
            Some(d) if dst_allowed(&task.listen, d) => None,
            Some(d) => out("scope.listen", format!("listening on {} is not in scope.listen", show(d))),
            None => None,
        },
        Kind::IoUring | Kind::Ptrace | Kind::Bpf | Kind::Privilege => {
            out("capabilities", format!("{} is not something a task may declare", ev.kind.as_str()))
        }
        Kind::Tamper => Some(Reason {
            verdict: VerdictKind::Violation,
            action: Action::Alert,
            severity: Severity::High,
            rule: None,
            clause: Some("tamper"),
            message: ev
                .reason
                .clone()
                .unwrap_or_else(|| "an attempt against agentmon or the task's confinement".into()),
            burst: 0,
        }),
        Kind::Fork
        | Kind::Exit
        | Kind::Loss
        | Kind::Action
        | Kind::ApprovalRequest
        | Kind::Approval
        | Kind::TaskStart
        | Kind::TaskEnd
        | Kind::Step
        | Kind::Rules => None,
    };
    if verdict.is_some() {
        return verdict;
    }
    // In scope: does the task want this kind of step approved first?
    let op = Op::of(ev.kind)?;
    if task.mode == Mode::Execute && task.approval.contains(&op) && !(launch && op == Op::Exec) {
        return Some(Reason {
            verdict: VerdictKind::NeedsApproval,
            action: Action::RequireApproval,
            severity: Severity::Info,
            rule: None,
            clause: Some("approval_required"),
            message: format!("{} needs approval", op.as_str()),
            burst: 0,
        });
    }
    None
}

fn show(d: &Dst) -> String {
    match d {
        Dst::Ip { ip, port } if ip.contains(':') => format!("[{ip}]:{port}"),
        Dst::Ip { ip, port } => format!("{ip}:{port}"),
        Dst::Unix { unix } => format!("unix:{unix}"),
    }
}
