//! Turns decoded kernel records into schema events: resolves paths, fills process
//! identity from the process table, names numbers, and classifies opens. One
//! decoder per sensor family, as the kernel side is split (monitor-ebpf/src/*):
//! [`process`], [`file`], [`net`], [`iouring`], [`privilege`].

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use monitor_common::{kind, op, pflags};

use crate::{
    decode::RawEvent,
    event::{Event, Kind, Timestamp},
    kernel::loader::Counts,
    names,
    paths::Resolver,
    proctable::{ProcKey, ProcTable},
    sensitive::SensitiveSet,
};

mod file;
mod iouring;
mod net;
mod privilege;
mod process;

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
    /// Each sub-task's top-level task ([`Self::top`]).
    tops: HashMap<u32, u32>,
    last_lost: BTreeMap<u16, u64>,
    /// Records the decoder rejected since the last loss event.
    pub decode_errors: u64,
    /// uid -> user name, looked up once per uid (the user database may be remote).
    users: HashMap<u32, Option<Arc<str>>>,
    /// cgroup id -> its path, container and pod.
    pub cgroups: crate::cgroupname::CgroupNames,
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
        kind::UNSEEN => "unseen_syscall",
        _ => "other",
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
            tops: HashMap::new(),
            last_lost: BTreeMap::new(),
            decode_errors: 0,
            users: HashMap::new(),
            cgroups: Default::default(),
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
        self.tops.remove(&c);
    }

    /// Names the task behind a new cookie.
    pub fn bind_task(&mut self, c: u32, id: Arc<str>) {
        self.tasks.insert(c, id);
    }

    /// Names a sub-task delegated from task `up`.
    pub fn bind_sub(&mut self, c: u32, id: Arc<str>, up: u32) {
        self.tasks.insert(c, id);
        self.tops.insert(c, self.top(up));
    }

    /// The top-level task of task `c` (itself, if it is one): a sub-task's lookups
    /// take its share of the waits (the enricher's budget, the resolvers), so that
    /// an agent that delegates many does not get many shares.
    pub fn top(&self, c: u32) -> u32 {
        self.tops.get(&c).copied().unwrap_or(c)
    }

    /// Resolved path of operand `i` (operand 0 is exact when taken from an fd). A
    /// path the kernel could not copy whole (deeper than it walks, longer than it
    /// copies), or a relative one it found no directory for, is never shown as the
    /// absolute path it is not: it starts with `…`, and judging treats it as unknown
    /// (out of scope).
    fn path(&mut self, raw: &RawEvent, i: usize) -> Option<String> {
        let o = raw.ops.get(i)?;
        if raw.body.pflags & pflags::TRUNCATED != 0 {
            return Some(format!("{}{}", crate::event::UNRESOLVED_PREFIX, crate::paths::join_lexical(o)));
        }
        // A relative name whose directory the kernel could not find (its descriptor
        // closed, or the walk failed): not a name under `/`, and never judged as one.
        if raw.body.pflags & pflags::UNRESOLVED != 0 && !o.has_base() && !o.given.starts_with('/') {
            return Some(format!("{}{}", crate::event::UNRESOLVED_PREFIX, o.given));
        }
        let exact = i == 0 && raw.body.pflags & pflags::OP1_FROM_FD != 0;
        Some(self.paths.resolve(o, exact, self.top(raw.hdr.task)).0)
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
        if let Some(n) = self.cgroups.get(h.cgroup_id) {
            ev.cgroup = Some(n.path.clone());
            ev.container = n.container.clone();
            ev.pod = n.pod.clone();
        }
        ev.task = self.tasks.get(&h.task).cloned();
        ev.start = (h.start_ns != 0).then_some(h.start_ns);
        ev.syscall = Some(Cow::Borrowed(op::name(h.op)));
        // A request submitted through io_uring has no result in its record.
        let submitted = b.pflags & pflags::SUBMITTED != 0;
        let is_syscall =
            !matches!(h.op, op::FORK | op::EXEC | op::EXIT | op::IOURING_SETUP | op::IOURING_SUBMIT)
                && !submitted;
        if (op::IOU_OPENAT..=op::IOU_LINKAT).contains(&h.op) {
            ev.flags.push(Cow::Borrowed(crate::event::IO_URING));
        }
        if is_syscall {
            ev.ret = Some(h.ret);
            ev.error = names::errno(h.ret);
        }
        if b.pflags & pflags::TRUNCATED != 0 {
            ev.flags.push(Cow::Borrowed("truncated"));
        }

        let next = match h.kind {
            kind::FORK | kind::EXEC | kind::EXIT => self.process(raw, key, &comm, &mut ev),
            kind::OPEN
            | kind::UNLINK
            | kind::RENAME
            | kind::TRUNCATE
            | kind::CHMOD
            | kind::XATTR
            | kind::CHOWN
            | kind::LINK
            | kind::MKDIR => self.file(raw, &mut ev),
            kind::CONNECT | kind::SEND | kind::BIND | kind::LISTEN => net::net(raw, &mut ev),
            kind::IOURING_SETUP | kind::IOURING_SUBMIT => iouring::iouring(raw, &mut ev),
            kind::PTRACE | kind::BPF | kind::PRIVILEGE | kind::TAMPER => privilege::privilege(raw, &mut ev),
            kind::UNSEEN => unseen(raw, &mut ev),
            other => {
                tracing::warn!("unknown kernel event kind {other}");
                Next::Drop
            }
        };
        match next {
            Next::Drop => return None,
            Next::Ready => return Some(ev),
            Next::Finish => {}
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

/// What a family's decoder says of its record.
enum Next {
    /// Not an event after all.
    Drop,
    /// Complete as it is (the process table is already up to date).
    Ready,
    /// To be finished with the process's identity.
    Finish,
}

#[cfg(test)]
mod tests;

/// A tracked process's syscall whose tracepoint program the kernel skipped (its
/// CPU's BPF guard held by a preempted map call; monitor-ebpf witness.rs): what it
/// did is not known, so it is a loss of that process's task, with the call's number,
/// its first four arguments and its result.
fn unseen(raw: &RawEvent, ev: &mut Event) -> Next {
    let nr = raw.body.args[0];
    ev.kind = Kind::Loss;
    ev.syscall = None;
    ev.lost = Some([(kind_name(kind::UNSEEN).to_string(), 1)].into());
    ev.detail.insert(Cow::Borrowed("syscall_nr"), serde_json::json!(nr));
    // As the registers held them: numbers (flags, descriptors), or addresses in the
    // process's memory, never read (the call is over; the memory may have changed).
    ev.detail.insert(Cow::Borrowed("syscall_args"), serde_json::json!(&raw.body.args[1..5]));
    ev.reason = Some(format!(
        "syscall {nr} of this process ran unobserved: the kernel skipped agentmon's program for it while \
         that CPU's BPF programs were held off (a BPF map call preempted there, by any process)"
    ));
    Next::Finish
}
