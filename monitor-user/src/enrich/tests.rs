use std::net::Ipv6Addr;

use super::{net::dst, *};
use crate::decode::{decode, tests::record};
use crate::event::Dst;

fn enricher() -> Enricher {
    Enricher::new(SensitiveSet::default_set(), HashMap::from([(1, Arc::from("t1"))]))
}

#[test]
fn open_classification() {
    let mut e = enricher();
    let mut rec = record(kind::OPEN, op::OPENAT, &[("", &["f", "tmp"])], b"", [0o1101, 0o644, 0, 0, 0]);
    // pflags: OP1_FROM_FD | CREATED
    rec[monitor_common::HEADER_SIZE + 40] = (pflags::OP1_FROM_FD | pflags::CREATED) as u8;
    let ev = e.event(&decode(&rec).unwrap()).unwrap();
    assert_eq!(
        (ev.kind, ev.path.as_deref(), ev.mode.as_deref()),
        (Kind::FileCreate, Some("/tmp/f"), Some("0644"))
    );
    assert_eq!(ev.task.as_deref(), Some("t1"));
    // Same open of an existing file: truncate.
    rec[monitor_common::HEADER_SIZE + 40] = pflags::OP1_FROM_FD as u8;
    assert_eq!(e.event(&decode(&rec).unwrap()).unwrap().kind, Kind::FileTruncate);
    // Read-only prefilter hit that is not in the set: dropped.
    let mut ro = record(kind::OPEN, op::OPENAT, &[("", &["config", "app", "etc"])], b"", [0; 5]);
    ro[monitor_common::HEADER_SIZE + 40] = (pflags::OP1_FROM_FD | pflags::SENSITIVE) as u8;
    assert!(e.event(&decode(&ro).unwrap()).is_none());
    let mut ro = record(kind::OPEN, op::OPENAT, &[("", &["shadow", "etc"])], b"", [0; 5]);
    ro[monitor_common::HEADER_SIZE + 40] = (pflags::OP1_FROM_FD | pflags::SENSITIVE) as u8;
    assert_eq!(e.event(&decode(&ro).unwrap()).unwrap().kind, Kind::SensitiveRead);
}

#[test]
fn an_open_refused_for_its_file_is_reported_by_any_name() {
    let mut e = enricher();
    let at = monitor_common::HEADER_SIZE + 40;
    // An O_RDWR open through a symlink whose name is in no pattern, refused by the LSM
    // tier as the sensitive set: a read of the file refused, the name beside it.
    let ops: &[(&str, &[&str])] = &[("", &["config", ".kube", "home"]), ("link", &["repo"])];
    let mut ro = record(kind::OPEN, op::OPENAT, ops, b"", [0o2, 0, 0, 0, 0]);
    let pf = pflags::OP1_FROM_FD | pflags::SENSITIVE | pflags::REFUSED_FOR_FILE;
    ro[at..at + 2].copy_from_slice(&pf.to_le_bytes());
    let ev = e.event(&decode(&ro).unwrap()).expect("reported");
    assert_eq!((ev.kind, ev.path.as_deref()), (Kind::SensitiveRead, Some("/home/.kube/config")));
    assert_eq!(ev.detail.get("requested_path").and_then(|p| p.as_str()), Some("/repo/link"));
    assert!(ev.flags.iter().any(|f| f == crate::event::REFUSED_FOR_FILE));
    // A write refused by the hook is the write of the file it refused.
    ro[at..at + 2].copy_from_slice(&(pflags::OP1_FROM_FD | pflags::REFUSED_FOR_FILE).to_le_bytes());
    let ev = e.event(&decode(&ro).unwrap()).expect("reported");
    assert_eq!((ev.kind, ev.path.as_deref()), (Kind::FileWrite, Some("/home/.kube/config")));
    // One of agentmon's keys so refused: a tamper record naming the key.
    let pf = pflags::OP1_FROM_FD | pflags::SENSITIVE | pflags::SECRET | pflags::REFUSED_FOR_FILE;
    ro[at..at + 2].copy_from_slice(&pf.to_le_bytes());
    let ev = e.event(&decode(&ro).unwrap()).expect("reported");
    assert_eq!(
        (ev.kind, ev.path.as_deref(), ev.detail.get("attempt").and_then(|a| a.as_str())),
        (Kind::Tamper, Some("/home/.kube/config"), Some("agentmon's private key read"))
    );
}

#[test]
fn a_path_not_read_whole_is_never_absolute() {
    let mut e = enricher();
    // The kernel's walk stopped: the components it has are the tail of the path.
    let mut rec =
        record(kind::OPEN, op::OPENAT, &[("", &["pwn.txt", "aw", "tmp"])], b"", [0o1101, 0o644, 0, 0, 0]);
    rec[monitor_common::HEADER_SIZE + 40] = (pflags::OP1_FROM_FD | pflags::CREATED | pflags::TRUNCATED) as u8;
    let ev = e.event(&decode(&rec).unwrap()).unwrap();
    assert_eq!(ev.path.as_deref(), Some("…/tmp/aw/pwn.txt"));
    assert!(ev.flags.iter().any(|f| f == "truncated"));
    let task = crate::task::parse(
        "id: t\nmode: execute\nscope:\n  write: [\"/tmp/aw/**\"]\n",
        std::path::Path::new("t.yaml"),
        crate::event::Timestamp(0),
    )
    .unwrap();
    let r = crate::policy::scope::judge(&ev, &task, false).expect("judged out of scope");
    assert_eq!(r.clause, Some("path"));
}

#[test]
fn a_name_whose_directory_was_not_found_is_never_under_the_root() {
    let mut e = enricher();
    // unlinkat(dirfd, "passwd") whose dirfd the kernel could not walk (closed by
    // another thread before the exit): it was `/passwd`, exact.
    let mut rec = record(kind::UNLINK, op::UNLINKAT, &[("passwd", &[])], b"", [0; 5]);
    rec[monitor_common::HEADER_SIZE + 40] = pflags::UNRESOLVED as u8;
    let ev = e.event(&decode(&rec).unwrap()).unwrap();
    assert_eq!(ev.path.as_deref(), Some("…passwd"));
    // An absolute name needs no directory.
    let mut rec = record(kind::UNLINK, op::UNLINKAT, &[("/tmp/x", &[])], b"", [0; 5]);
    rec[monitor_common::HEADER_SIZE + 40] = pflags::UNRESOLVED as u8;
    assert_eq!(e.event(&decode(&rec).unwrap()).unwrap().path.as_deref(), Some("/tmp/x"));
}

#[test]
fn network_destinations() {
    let v4 = u32::from_le_bytes([127, 0, 0, 1]) as u64;
    let (d, p) = dst(&[2 | 8080 << 16 | 1 << 32, v4, 0, 3, 0], b"", false);
    assert_eq!(d, Some(Dst::Ip { ip: "127.0.0.1".into(), port: 8080 }));
    assert_eq!(p.as_deref(), Some("tcp"));
    let mapped: Ipv6Addr = "::ffff:10.1.2.3".parse().unwrap();
    let o = mapped.octets();
    let lo = u64::from_le_bytes(o[..8].try_into().unwrap());
    let hi = u64::from_le_bytes(o[8..].try_into().unwrap());
    let (d, p) = dst(&[10 | 53 << 16 | 2 << 32, lo, hi, 3, 0], b"", false);
    assert_eq!(d, Some(Dst::Ip { ip: "::ffff:10.1.2.3".into(), port: 53 }));
    assert_eq!(p.as_deref(), Some("udp"));
    let (d, _) = dst(&[1, 0, 0, 3, 0], b"/run/docker.sock\0", false);
    assert_eq!(d, Some(Dst::Unix { unix: "/run/docker.sock".into() }));
    let (d, _) = dst(&[1, 0, 0, 3, 0], b"\0abstract", true);
    assert_eq!(d, Some(Dst::Unix { unix: "@abstract".into() }));
}

#[test]
fn exit_status_and_signal() {
    let mut e = enricher();
    let ev =
        e.event(&decode(&record(kind::EXIT, op::EXIT, &[], b"", [3 << 8, 0, 0, 0, 0])).unwrap()).unwrap();
    assert_eq!((ev.status, ev.signal.as_deref()), (Some(3), None));
    let ev = e.event(&decode(&record(kind::EXIT, op::EXIT, &[], b"", [9, 0, 0, 0, 0])).unwrap()).unwrap();
    assert_eq!((ev.status, ev.signal.as_deref()), (None, Some("SIGKILL")));
}

#[test]
fn loss_reports_deltas_only() {
    let mut e = enricher();
    let mut c = Counts::default();
    assert!(e.loss(&c).is_none());
    c.lost.insert(kind::OPEN, 5);
    let ev = e.loss(&c).unwrap();
    assert_eq!(ev.lost.unwrap().get("open"), Some(&5));
    assert!(e.loss(&c).is_none());
    c.lost.insert(kind::OPEN, 7);
    assert_eq!(e.loss(&c).unwrap().lost.unwrap().get("open"), Some(&2));
}

/// A sub-task's lookups are its top-level task's (one share of the waits, the
/// enricher's budget and the resolvers, however many sub-tasks an agent makes, at
/// whatever depth): each sub-task had a share of its own, so an agent that
/// delegated forty could keep the loop waiting forty times as long.
#[test]
fn sub_tasks_wait_in_their_top_level_tasks_share() {
    let mut e = enricher();
    e.bind_sub(2, "t2".into(), 1);
    e.bind_sub(3, "t3".into(), 2);
    e.bind_task(4, "t4".into());
    assert_eq!([1, 2, 3, 4, 9].map(|c| e.top(c)), [1, 1, 1, 4, 9]);
    // The parent's end does not give its sub-task a share of its own.
    e.unbind_task(2);
    assert_eq!(e.top(3), 1);
    e.unbind_task(3);
    assert_eq!(e.top(3), 3);
    assert_eq!(e.task_name(3), None);
}

#[test]
fn io_uring_requests_are_the_side_effects_they_ask_for() {
    let mut e = enricher();
    let at = monitor_common::HEADER_SIZE + 40;
    // An open to create, as the ring took it in: a file_create, with no outcome.
    let mut rec =
        record(kind::OPEN, op::IOU_OPENAT2, &[("/repo/new.txt", &[])], b"", [0o1101, 0o640, 0, 0, 0]);
    rec[at..at + 2].copy_from_slice(&pflags::SUBMITTED.to_le_bytes());
    let ev = e.event(&decode(&rec).unwrap()).unwrap();
    assert_eq!(
        (ev.kind, ev.path.as_deref(), ev.mode.as_deref(), ev.syscall.as_deref()),
        (Kind::FileCreate, Some("/repo/new.txt"), Some("0640"), Some("IORING_OP_OPENAT2"))
    );
    assert_eq!((ev.ret, ev.error.as_deref()), (None, None));
    assert!(ev.flags.iter().any(|f| f == crate::event::IO_URING));
    // Without O_CREAT, a write; a read of the sensitive set, its read.
    let mut w = record(kind::OPEN, op::IOU_OPENAT, &[("/repo/a", &[])], b"", [0o1, 0, 0, 0, 0]);
    w[at..at + 2].copy_from_slice(&pflags::SUBMITTED.to_le_bytes());
    assert_eq!(e.event(&decode(&w).unwrap()).unwrap().kind, Kind::FileWrite);
    let mut r = record(kind::OPEN, op::IOU_OPENAT, &[("/repo/.env", &[])], b"", [0; 5]);
    r[at..at + 2].copy_from_slice(&(pflags::SUBMITTED | pflags::SENSITIVE).to_le_bytes());
    assert_eq!(e.event(&decode(&r).unwrap()).unwrap().kind, Kind::SensitiveRead);
    // A delete under a directory the kernel walked.
    let mut d = record(kind::UNLINK, op::IOU_UNLINKAT, &[("keep.txt", &["repo"])], b"", [0; 5]);
    d[at..at + 2].copy_from_slice(&pflags::SUBMITTED.to_le_bytes());
    let ev = e.event(&decode(&d).unwrap()).unwrap();
    assert_eq!((ev.kind, ev.path.as_deref(), ev.ret), (Kind::FileDelete, Some("/repo/keep.txt"), None));
    assert_eq!(ev.syscall.as_deref(), Some("IORING_OP_UNLINKAT"));
    // An open completed on agentmon's own /proc file: a tamper record with its outcome.
    let mut p = record(kind::OPEN, op::IOU_OPENAT, &[("", &["environ", "1234", "proc"])], b"", [0; 5]);
    p[at..at + 2].copy_from_slice(&(pflags::OP1_FROM_FD | pflags::AGENTMON_PROC).to_le_bytes());
    let ev = e.event(&decode(&p).unwrap()).unwrap();
    assert_eq!(
        (ev.kind, ev.path.as_deref(), ev.ret, ev.detail.get("attempt").and_then(|a| a.as_str())),
        (Kind::Tamper, Some("/proc/1234/environ"), Some(0), Some("agentmon's environment read"))
    );
    assert!(ev.flags.iter().any(|f| f == crate::event::IO_URING));
}

#[test]
fn a_syscall_the_kernel_ran_past_its_program_is_a_loss_of_its_task() {
    let mut e = enricher();
    let flags = (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC) as u64;
    let rec = record(kind::UNSEEN, 0, &[], b"", [257, (-100i64) as u64, 0x7ffd_0000, flags, 0o644]);
    let ev = e.event(&decode(&rec).unwrap()).expect("reported");
    assert_eq!((ev.kind, ev.task.as_deref(), ev.syscall.as_deref()), (Kind::Loss, Some("t1"), None));
    assert_eq!(ev.lost.as_ref().and_then(|l| l.get("unseen_syscall")), Some(&1));
    assert_eq!(ev.detail.get("syscall_nr").and_then(|v| v.as_u64()), Some(257));
    assert_eq!(
        ev.detail.get("syscall_args"),
        Some(&serde_json::json!([(-100i64) as u64, 0x7ffd_0000u64, flags, 0o644u64])),
        "the call's arguments, as its registers held them"
    );
}
