//! Privilege and tamper records (monitor-ebpf/src/privilege.rs): ptrace, bpf,
//! the set*id family and capset; attempts against agentmon or the task's
//! confinement.

use std::borrow::Cow;

use monitor_common::{kind, op};
use serde_json::json;

use super::Next;
use crate::{
    decode::RawEvent,
    event::{Event, Kind},
    names,
};

pub(super) fn privilege(raw: &RawEvent, ev: &mut Event) -> Next {
    let (h, b) = (&raw.hdr, &raw.body);
    match h.kind {
        kind::PTRACE => {
            ev.kind = Kind::Ptrace;
            ev.detail.insert(Cow::Borrowed("request"), json!(names::ptrace_request(b.args[0])));
            ev.detail.insert(Cow::Borrowed("target_pid"), json!(b.args[1] as i32));
        }
        kind::BPF => {
            ev.kind = Kind::Bpf;
            ev.detail.insert(Cow::Borrowed("cmd"), json!(names::bpf_cmd(b.args[0])));
        }
        kind::PRIVILEGE => {
            ev.kind = Kind::Privilege;
            let ids: Vec<i64> = b.args[..3].iter().map(|a| *a as u32 as i32 as i64).collect();
            match h.op {
                op::CAPSET => {
                    ev.detail.insert(Cow::Borrowed("effective"), json!(format!("{:#x}", b.args[0])));
                    ev.detail.insert(Cow::Borrowed("permitted"), json!(format!("{:#x}", b.args[1])));
                    ev.detail.insert(Cow::Borrowed("inheritable"), json!(format!("{:#x}", b.args[2])));
                }
                op::SETUID | op::SETGID | op::SETFSUID | op::SETFSGID => {
                    ev.detail.insert(Cow::Borrowed("id"), json!(ids[0]));
                }
                op::SETREUID | op::SETREGID => {
                    ev.detail.insert(Cow::Borrowed("ids"), json!(&ids[..2]));
                }
                _ => {
                    ev.detail.insert(Cow::Borrowed("ids"), json!(ids));
                }
            }
        }
        kind::TAMPER => {
            ev.kind = Kind::Tamper;
            tamper_detail(ev, h.op, &b.args);
        }
        _ => unreachable!("dispatched by kind"),
    }
    Next::Finish
}

/// What a TAMPER record's call was after (`args`: its first three arguments).
fn tamper_detail(ev: &mut Event, o: u16, args: &[u64; 5]) {
    let me = std::process::id() as i32;
    let (what, reason) = match o {
        op::KILL | op::TKILL | op::TGKILL => {
            let (target, sig) = if o == op::TGKILL { (args[0], args[2]) } else { (args[0], args[1]) };
            let (target, sig) = (target as i32, sig as i32);
            ev.detail.insert(Cow::Borrowed("target_pid"), json!(target));
            ev.detail.insert(Cow::Borrowed("signal"), json!(names::signal(sig)));
            if target == -1 || target.unsigned_abs() == me.unsigned_abs() {
                ("signal to agentmon", format!("{} to agentmon", names::signal(sig)))
            } else {
                ("signal", format!("{} to pid {target} was refused", names::signal(sig)))
            }
        }
        op::SIGNAL_GENERATE => {
            // Generated for agentmon, whichever call and whichever of its threads.
            let sig = args[1] as i32;
            ev.detail.insert(Cow::Borrowed("target_pid"), json!(args[0] as i32));
            ev.detail.insert(Cow::Borrowed("signal"), json!(names::signal(sig)));
            ev.detail.insert(Cow::Borrowed("to_process"), json!(args[2] != 0));
            ("signal to agentmon", format!("{} to agentmon", names::signal(sig)))
        }
        op::PIDFD_SEND_SIGNAL => ("signal", "a signal through a pidfd was refused".into()),
        op::SOCKET => {
            ev.detail.insert(Cow::Borrowed("family"), json!(args[0] as i32));
            ("socket", format!("a socket of family {} was refused", args[0] as i32))
        }
        op::IOURING_SETUP_CALL => ("io_uring", "an io_uring (which bypasses syscall monitoring)".into()),
        op::MEMFD_CREATE => ("fileless exec", "a memfd that could hold code to run from memory".into()),
        op::PROCESS_VM_READV | op::PROCESS_VM_WRITEV | op::PIDFD_GETFD => {
            ev.detail.insert(Cow::Borrowed("target_pid"), json!(args[0] as i32));
            ("another process", format!("{} on pid {}", op::name(o), args[0] as i32))
        }
        op::OPEN_BY_HANDLE_AT | op::NAME_TO_HANDLE_AT => {
            ("file handle", "a file reached by a handle, not a path".into())
        }
        op::UNSHARE | op::CLONE => {
            ev.detail.insert(Cow::Borrowed("flags"), json!(format!("{:#x}", args[0])));
            ("namespace", format!("{} into a new mount or user namespace was refused", op::name(o)))
        }
        op::SETNS => ("namespace", "setns: entering another namespace".into()),
        op::OPEN_TREE | op::FSCONFIG | op::FSMOUNT | op::FSPICK | op::MOUNT_SETATTR => {
            ("mount", format!("{}: the mount API, which no task needs", op::name(o)))
        }
        op::MKNOD | op::MKNODAT => {
            let mode = if o == op::MKNOD { args[1] } else { args[2] };
            let what = if mode & 0o170000 == 0o060000 { "block" } else { "character" };
            ev.detail.insert(Cow::Borrowed("mode"), json!(super::file::octal(mode)));
            ("device node", format!("a {what} device node (a door to the device)"))
        }
        op::SOCKETPAIR => ("socket", "a datagram socket pair was refused".into()),
        op::SECCOMP => {
            ev.detail.insert(Cow::Borrowed("flags"), json!(format!("{:#x}", args[1])));
            ("seccomp listener", "a seccomp filter with a listener of its own was refused".into())
        }
        op::CLONE3 => {
            ev.detail.insert(Cow::Borrowed("flags"), json!(format!("{:#x}", args[0])));
            ("namespace", "clone3 into a new namespace or another cgroup was refused".into())
        }
        _ => ("kernel", format!("{}: a call no task needs", op::name(o))),
    };
    ev.detail.insert(Cow::Borrowed("attempt"), json!(what));
    ev.reason = Some(reason);
}
