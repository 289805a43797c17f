//! Turns decoded kernel records into schema events: resolves paths, fills process
//! identity from the process table, names numbers, and classifies opens.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    net::{Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use monitor_common::{kind, op, pflags};
use serde_json::json;

use crate::{
    decode::{RawEvent, cstr},
    event::{Dst, Event, Kind, Name, Timestamp},
    kernel::loader::Counts,
    names,
    paths::Resolver,
    proctable::{ProcKey, ProcTable},
    sensitive::SensitiveSet,
};

const O_ACCMODE: u64 = 0o3;
const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;
const AF_UNIX: u64 = 1;
const AF_INET: u64 = 2;
const AF_INET6: u64 = 10;

/// Wall-clock conversion for CLOCK_MONOTONIC kernel timestamps.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    offset_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("monotonic clock");
        let real = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME).expect("realtime clock");
        let ns = |t: nix::sys::time::TimeSpec| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128;
        Self { offset_ns: ns(real) - ns(mono) }
    }

    /// Wall-clock time of a CLOCK_MONOTONIC kernel timestamp.
    pub fn wall(&self, mono_ns: u64) -> Timestamp {
        Timestamp(mono_ns as i128 + self.offset_ns)
    }

    pub fn now_wall(&self) -> Timestamp {
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("monotonic clock");
        self.wall(mono.tv_sec() as u64 * 1_000_000_000 + mono.tv_nsec() as u64)
    }
}

pub struct Enricher {
    pub procs: ProcTable,
    paths: Resolver,
    sensitive: SensitiveSet,
    host: Arc<str>,
    clock: Clock,
    /// Task cookie -> task id.
    tasks: HashMap<u32, Arc<str>>,
    last_lost: BTreeMap<u16, u64>,
    /// Records the decoder rejected since the last loss event.
    pub decode_errors: u64,
    /// uid -> user name, looked up once per uid (the user database may be remote).
    users: HashMap<u32, Option<Arc<str>>>,
}

pub fn kind_name(k: u16) -> &'static str {
    match k {
        kind::FORK => "fork",
        kind::EXEC => "exec",
        kind::EXIT => "exit",
        kind::OPEN => "open",
        kind::UNLINK => "file_delete",
        kind::RENAME => "file_rename",
        kind::TRUNCATE => "file_truncate",
        kind::CHMOD => "file_chmod",
        kind::CHOWN => "file_chown",
        kind::XATTR => "file_xattr",
        kind::LINK => "file_link",
        kind::MKDIR => "dir_create",
        kind::CONNECT => "connect",
        kind::SEND => "send",
        kind::BIND => "bind",
        kind::LISTEN => "listen",
        kind::IOURING_SETUP => "io_uring_setup",
        kind::IOURING_SUBMIT => "io_uring_submit",
        kind::PTRACE => "ptrace",
        kind::BPF => "bpf",
        kind::PRIVILEGE => "privilege",
        kind::TAMPER => "tamper",
        _ => "other",
    }
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
            ev.detail.insert(Cow::Borrowed("mode"), json!(octal(mode)));
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

/// Devices whose opens for writing are not side effects worth an event.
fn is_quiet_device(p: &str) -> bool {
    matches!(p, "/dev/null" | "/dev/zero" | "/dev/tty" | "/dev/full" | "/dev/random" | "/dev/urandom")
        || p.starts_with("/dev/pts/")
}

fn octal(m: u64) -> String {
    format!("{:04o}", m & 0o7777)
}

/// Splits a NUL-separated argv block.
fn argv(extra: &[u8]) -> Vec<String> {
    let extra = extra.strip_suffix(&[0]).unwrap_or(extra);
    extra.split(|b| *b == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

fn inet_proto(t: &'static str) -> Name {
    Cow::Borrowed(match t {
        "stream" => "tcp",
        "dgram" => "udp",
        t => t,
    })
}

/// Destination from the packed socket args; unix paths from `extra`.
fn dst(args: &[u64; 5], extra: &[u8], abstract_: bool) -> (Option<Dst>, Option<Name>) {
    let family = args[0] & 0xffff;
    let port = ((args[0] >> 16) & 0xffff) as u16;
    let ty = names::sock_type(args[0] >> 32);
    match family {
        AF_INET => {
            let b = (args[1] as u32).to_le_bytes();
            let ip = Ipv4Addr::from(b).to_string();
            (Some(Dst::Ip { ip, port }), ty.map(inet_proto))
        }
        AF_INET6 => {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&args[1].to_le_bytes());
            b[8..].copy_from_slice(&args[2].to_le_bytes());
            let ip = Ipv6Addr::from(b).to_string();
            (Some(Dst::Ip { ip, port }), ty.map(inet_proto))
        }
        AF_UNIX => {
            let unix = if abstract_ {
                format!(
                    "@{}",
                    String::from_utf8_lossy(extra.get(1..).unwrap_or_default()).trim_end_matches('\0')
                )
            } else {
                cstr(extra)
            };
            (Some(Dst::Unix { unix }), ty.map(|t| Cow::Owned(format!("unix-{t}"))))
        }
        _ => (None, None),
    }
}

impl Enricher {
    pub fn new(sensitive: SensitiveSet, tasks: HashMap<u32, Arc<str>>) -> Self {
        Self {
            procs: ProcTable::default(),
            paths: Resolver::default(),
            sensitive,
            host: hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default().into(),
            clock: Clock::now(),
            tasks,
            last_lost: BTreeMap::new(),
            decode_errors: 0,
            users: HashMap::new(),
        }
    }

    /// The name this host gives `uid` (cached; a uid without one stays a number).
    fn user_name(&mut self, uid: u32) -> Option<Arc<str>> {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|u| Arc::<str>::from(u.name))
            })
            .clone()
    }

    /// Id of the task behind cookie `c`.
    pub fn task_name(&self, c: u32) -> Option<Arc<str>> {
        self.tasks.get(&c).cloned()
    }

    pub fn unbind_task(&mut self, c: u32) {
        self.tasks.remove(&c);
    }

    /// Names the task behind a new cookie (a delegated sub-task).
    pub fn bind_task(&mut self, c: u32, id: Arc<str>) {
        self.tasks.insert(c, id);
    }

    /// Resolved path of operand `i` (operand 0 is exact when taken from an fd). A
    /// path the kernel could not copy whole (deeper than it walks, longer than it
    /// copies) is never shown as the absolute path it is not: it starts with `…`,
    /// and judging treats it as unknown (out of scope).
    fn path(&mut self, raw: &RawEvent, i: usize) -> Option<String> {
        let o = raw.ops.get(i)?;
        if raw.body.pflags & pflags::TRUNCATED != 0 {
            return Some(format!("{}{}", crate::event::UNRESOLVED_PREFIX, crate::paths::join_lexical(o)));
        }
        let exact = i == 0 && raw.body.pflags & pflags::OP1_FROM_FD != 0;
        Some(self.paths.resolve(o, exact).0)
    }

    pub fn host(&self) -> Arc<str> {
        self.host.clone()
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Converts one record. None when the record is not an event after all (a
    /// sensitive-name prefilter hit whose full path does not match).
    pub fn event(&mut self, raw: &RawEvent) -> Option<Event> {
        let h = &raw.hdr;
        let b = &raw.body;
        let key = ProcKey { tgid: h.tgid, start_ns: h.start_ns };
        let comm = raw.comm();

        let mut ev = Event::new(Kind::Exec, self.clock.wall(h.ts_ns), self.host.clone());
        ev.pid = h.tgid;
        ev.tid = h.tid;
        ev.comm = comm.clone();
        ev.uid = Some(h.uid);
        ev.gid = Some(h.gid);
        ev.user = self.user_name(h.uid);
        ev.task = self.tasks.get(&h.task).cloned();
        ev.start = (h.start_ns != 0).then_some(h.start_ns);
        ev.syscall = Some(Cow::Borrowed(op::name(h.op)));
        let is_syscall =
            !matches!(h.op, op::FORK | op::EXEC | op::EXIT | op::IOURING_SETUP | op::IOURING_SUBMIT);
        if is_syscall {
            ev.ret = Some(h.ret);
            ev.error = names::errno(h.ret);
        }
        if b.pflags & pflags::TRUNCATED != 0 {
            ev.flags.push(Cow::Borrowed("truncated"));
        }

        match h.kind {
            kind::FORK => {
                let child = ProcKey { tgid: b.args[0] as u32, start_ns: b.args[1] };
                self.procs.ensure(key, &comm, h.task);
                self.procs.fork(key, child);
                ev.kind = Kind::Fork;
                ev.pid = child.tgid;
                ev.tid = child.tgid;
                ev.start = Some(child.start_ns);
                ev.ppid = Some(h.tgid);
                ev.exe = self.procs.get(&child).and_then(|p| p.exe.clone());
                ev.syscall = None;
                return Some(ev);
            }
            kind::EXEC => {
                ev.kind = if b.pflags & pflags::FILELESS != 0 { Kind::MemfdExec } else { Kind::Exec };
                if b.pflags & pflags::STDIN_SOCKET != 0 {
                    ev.flags.push(Cow::Borrowed("stdin_socket"));
                }
                if b.pflags & pflags::STDOUT_SOCKET != 0 {
                    ev.flags.push(Cow::Borrowed("stdout_socket"));
                }
                ev.path = self.path(raw, 1);
                if h.ret == -(libc::ENOENT as i64) || h.ret == -(libc::ENOTDIR as i64) {
                    // execvp's PATH search tries every directory: misses are not events.
                    return None;
                }
                if h.ret < 0 {
                    // A failed exec: the image did not change.
                    ev.ret = Some(h.ret);
                    ev.error = names::errno(h.ret);
                } else {
                    ev.syscall = None;
                    let exe = raw.ops.first().map(|o| Arc::from(self.paths.resolve(o, true).0));
                    let args = (b.extra_len > 0).then(|| argv(raw.extra));
                    self.procs.ensure(key, &comm, h.task);
                    self.procs.exec(key, &comm, exe, args.clone());
                    ev.argv = args;
                }
            }
            kind::EXIT => {
                ev.kind = Kind::Exit;
                ev.syscall = None;
                let code = b.args[0] as i32;
                if code & 0x7f != 0 {
                    ev.signal = Some(names::signal(code & 0x7f));
                    if code & 0x80 != 0 {
                        ev.flags.push(Cow::Borrowed("core_dumped"));
                    }
                } else {
                    ev.status = Some(((code >> 8) & 0xff) as i64);
                }
            }
            kind::OPEN => {
                let flags = b.args[0];
                ev.flags.extend(names::open_flags(flags));
                ev.path = self.path(raw, 0);
                if flags & O_ACCMODE == 0 && flags & (O_CREAT | O_TRUNC) == 0 {
                    // Read-only: reported only for the sensitive set.
                    // A prefilter hit whose path was not read whole cannot be cleared.
                    let unknown =
                        ev.path.as_deref().is_some_and(|p| p.starts_with(crate::event::UNRESOLVED_PREFIX));
                    if b.pflags & pflags::SENSITIVE == 0
                        || !(unknown || ev.path.as_deref().is_some_and(|p| self.sensitive.matches(p)))
                    {
                        return None;
                    }
                    ev.kind = Kind::SensitiveRead;
                } else if b.pflags & pflags::CREATED != 0 || (h.ret < 0 && flags & O_CREAT != 0) {
                    ev.kind = Kind::FileCreate;
                    ev.mode = Some(octal(b.args[1]));
                } else if ev.path.as_deref().is_some_and(is_quiet_device) {
                    // `> /dev/null`, the controlling tty: not side effects.
                    return None;
                } else if flags & O_TRUNC != 0 {
                    ev.kind = Kind::FileTruncate;
                } else {
                    ev.kind = Kind::FileWrite;
                }
            }
            kind::UNLINK => {
                ev.kind = Kind::FileDelete;
                ev.path = self.path(raw, 0);
                ev.flags.extend(names::at_flags(b.args[0]));
            }
            kind::RENAME => {
                ev.kind = Kind::FileRename;
                ev.path = self.path(raw, 0);
                ev.new_path = self.path(raw, 1);
                ev.flags.extend(names::rename_flags(b.args[0]));
            }
            kind::TRUNCATE => {
                ev.kind = Kind::FileTruncate;
                ev.path = self.path(raw, 0);
                ev.detail.insert(Cow::Borrowed("length"), json!(b.args[0] as i64));
            }
            kind::CHMOD => {
                ev.kind = Kind::FileChmod;
                ev.path = self.path(raw, 0);
                ev.mode = Some(octal(b.args[0]));
                ev.flags.extend(names::at_flags(b.args[1]));
            }
            kind::XATTR => {
                ev.kind = Kind::FileXattr;
                ev.path = self.path(raw, 0);
                let name = raw.ops.get(1).map(|o| o.given.to_string()).unwrap_or_default();
                ev.detail.insert(Cow::Borrowed("name"), json!(name));
                if b.args[0] == 1 {
                    ev.flags.push(Cow::Borrowed("remove"));
                }
            }
            kind::CHOWN => {
                ev.kind = Kind::FileChown;
                ev.path = self.path(raw, 0);
                ev.detail.insert(Cow::Borrowed("uid"), json!(b.args[0] as u32 as i32));
                ev.detail.insert(Cow::Borrowed("gid"), json!(b.args[1] as u32 as i32));
                ev.flags.extend(names::at_flags(b.args[2]));
            }
            kind::LINK => {
                ev.kind = Kind::FileLink;
                ev.path = self.path(raw, 0);
                let symlink = b.args[0] == 1;
                ev.flags.push(Cow::Borrowed(if symlink { "symlink" } else { "hardlink" }));
                // A symlink's target is kept as written; a hard link's is resolved.
                let target =
                    if symlink { raw.ops.get(1).map(|o| o.given.to_string()) } else { self.path(raw, 1) };
                ev.new_path = target;
                ev.flags.extend(names::at_flags(b.args[1]));
            }
            kind::MKDIR => {
                ev.kind = Kind::DirCreate;
                ev.path = self.path(raw, 0);
                ev.mode = Some(octal(b.args[0]));
            }
            kind::CONNECT | kind::SEND | kind::BIND | kind::LISTEN => {
                ev.kind = match h.kind {
                    kind::CONNECT => Kind::Connect,
                    kind::SEND => Kind::Send,
                    kind::BIND => Kind::Bind,
                    _ => Kind::Listen,
                };
                let (d, proto) = dst(&b.args, raw.extra, b.pflags & pflags::UNIX_ABSTRACT != 0);
                ev.dst = d;
                ev.proto = proto;
                ev.detail.insert(Cow::Borrowed("fd"), json!(b.args[3] as i32));
                if h.kind == kind::LISTEN {
                    ev.detail.insert(Cow::Borrowed("backlog"), json!(b.args[4] as i32));
                }
            }
            kind::IOURING_SETUP => {
                ev.kind = Kind::IoUring;
                ev.flags.push(Cow::Borrowed("setup"));
                ev.detail.insert(Cow::Borrowed("ring_fd"), json!(b.args[0] as i64));
                ev.detail.insert(Cow::Borrowed("sq_entries"), json!(b.args[1]));
                ev.detail.insert(Cow::Borrowed("setup_flags"), json!(format!("{:#x}", b.args[2])));
            }
            kind::IOURING_SUBMIT => {
                ev.kind = Kind::IoUring;
                ev.flags.push(Cow::Borrowed("submit"));
                ev.detail.insert(Cow::Borrowed("opcode"), json!(names::ioring_op(b.args[0])));
                if b.args[2] != 0 {
                    ev.flags.push(Cow::Borrowed("sqpoll"));
                }
            }
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
                tamper_detail(&mut ev, h.op, &b.args);
            }
            other => {
                tracing::warn!("unknown kernel event kind {other}");
                return None;
            }
        }

        if matches!(h.kind, kind::RENAME | kind::LINK | kind::UNLINK) {
            // What a directory path resolves to may have changed.
            self.paths.invalidate();
        }
        let p = self.procs.ensure(key, &comm, h.task);
        ev.ppid = p.ppid;
        ev.exe = p.exe.clone();
        if h.kind == kind::EXIT {
            self.procs.exit(key);
        }
        Some(ev)
    }

    /// The kernel's lost counts last reported (a restarted daemon that takes the
    /// counters over starts from them, so nothing is reported twice).
    pub fn lost_reported(&self) -> &BTreeMap<u16, u64> {
        &self.last_lost
    }

    pub fn seed_lost(&mut self, reported: BTreeMap<u16, u64>) {
        self.last_lost = reported;
    }

    /// A `loss` event if the kernel counted lost events (or the decoder rejected
    /// records) since the last call.
    pub fn loss(&mut self, counts: &Counts) -> Option<Event> {
        let mut lost = BTreeMap::new();
        for (k, n) in &counts.lost {
            let prev = self.last_lost.get(k).copied().unwrap_or(0);
            if *n > prev {
                lost.insert(kind_name(*k).to_string(), n - prev);
            }
            self.last_lost.insert(*k, *n);
        }
        if self.decode_errors > 0 {
            lost.insert("undecodable".into(), self.decode_errors);
            self.decode_errors = 0;
        }
        if lost.is_empty() {
            return None;
        }
        let mut ev = Event::new(Kind::Loss, self.clock.now_wall(), self.host.clone());
        ev.pid = std::process::id();
        ev.tid = ev.pid;
        ev.comm = "agentmon".into();
        ev.lost = Some(lost);
        Some(ev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode, tests::record};

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
    fn a_path_not_read_whole_is_never_absolute() {
        let mut e = enricher();
        // The kernel's walk stopped: the components it has are the tail of the path.
        let mut rec =
            record(kind::OPEN, op::OPENAT, &[("", &["pwn.txt", "aw", "tmp"])], b"", [0o1101, 0o644, 0, 0, 0]);
        rec[monitor_common::HEADER_SIZE + 40] =
            (pflags::OP1_FROM_FD | pflags::CREATED | pflags::TRUNCATED) as u8;
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
}
