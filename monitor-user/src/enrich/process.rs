//! Process records (monitor-ebpf/src/process.rs): fork, exec, exit.

use std::{borrow::Cow, sync::Arc};

use monitor_common::{kind, pflags};

use super::{Enricher, Next};
use crate::{
    decode::RawEvent,
    event::{Event, Kind},
    names,
    proctable::ProcKey,
};

/// Splits a NUL-separated argv block.
fn argv(extra: &[u8]) -> Vec<String> {
    let extra = extra.strip_suffix(&[0]).unwrap_or(extra);
    extra.split(|b| *b == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

impl Enricher {
    pub(super) fn process(&mut self, raw: &RawEvent, key: ProcKey, comm: &str, ev: &mut Event) -> Next {
        let (h, b) = (&raw.hdr, &raw.body);
        match h.kind {
            kind::FORK => {
                let child = ProcKey { tgid: b.args[0] as u32, start_ns: b.args[1] };
                self.procs.ensure(key, comm, h.task);
                self.procs.fork(key, child);
                ev.kind = Kind::Fork;
                ev.pid = child.tgid;
                ev.tid = child.tgid;
                ev.start = Some(child.start_ns);
                ev.ppid = Some(h.tgid);
                ev.exe = self.procs.get(&child).and_then(|p| p.exe.clone());
                ev.syscall = None;
                return Next::Ready;
            }
            kind::EXEC => {
                ev.kind = if b.pflags & pflags::FILELESS != 0 { Kind::MemfdExec } else { Kind::Exec };
                if b.pflags & pflags::STDIN_SOCKET != 0 {
                    ev.flags.push(Cow::Borrowed("stdin_socket"));
                }
                if b.pflags & pflags::STDOUT_SOCKET != 0 {
                    ev.flags.push(Cow::Borrowed("stdout_socket"));
                }
                if b.pflags & pflags::BY_DESCRIPTOR != 0 {
                    ev.flags.push(Cow::Borrowed("by_descriptor"));
                }
                ev.path = self.path(raw, 1);
                if h.ret == -(libc::ENOENT as i64) || h.ret == -(libc::ENOTDIR as i64) {
                    // execvp's PATH search tries every directory: misses are not events.
                    return Next::Drop;
                }
                if h.ret < 0 {
                    // A failed exec: the image did not change.
                    ev.ret = Some(h.ret);
                    ev.error = names::errno(h.ret);
                } else {
                    ev.syscall = None;
                    let exe = raw
                        .ops
                        .first()
                        .map(|o| Arc::from(self.paths.resolve(o, true, self.top(raw.hdr.task)).0));
                    let args = (b.extra_len > 0).then(|| argv(raw.extra));
                    self.procs.ensure(key, comm, h.task);
                    self.procs.exec(key, comm, exe, args.clone());
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
            _ => unreachable!("dispatched by kind"),
        }
        Next::Finish
    }
}
