//! File records (monitor-ebpf/src/file.rs): opens by what they do, deletes,
//! renames, truncation, mode, owner, extended attributes, links, directories.

use std::borrow::Cow;

use monitor_common::{kind, pflags};
use serde_json::json;

use super::{Enricher, Next};
use crate::{
    decode::RawEvent,
    event::{Event, Kind},
    names,
};

const O_ACCMODE: u64 = 0o3;
const O_WRONLY: u64 = 0o1;
const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;

/// Devices whose opens for writing are not side effects worth an event.
fn is_quiet_device(p: &str) -> bool {
    matches!(p, "/dev/null" | "/dev/zero" | "/dev/tty" | "/dev/full" | "/dev/random" | "/dev/urandom")
        || p.starts_with("/dev/pts/")
}

pub(super) fn octal(m: u64) -> String {
    format!("{:04o}", m & 0o7777)
}

/// What an open of agentmon's own /proc file `path` is (attempt, why it matters), or
/// None for a read that is nothing (what any process list or monitor reads; the
/// kernel already left out the commonest: stat, statm, status, comm, cmdline).
fn agentmon_proc(path: Option<&str>, read_only: bool) -> Option<(&'static str, &'static str)> {
    match path.and_then(|p| p.rsplit('/').next()) {
        Some("mem") => Some(("agentmon's memory opened", "its private keys are in it: rotate them")),
        Some("environ") => {
            Some(("agentmon's environment read", "secrets passed to it in the environment: rotate them"))
        }
        _ if !read_only => Some(("agentmon's /proc file written", "what agentmon runs on can be changed so")),
        // Where its memory is, and what it is doing: the ground of an attack on it.
        Some("maps" | "smaps" | "smaps_rollup" | "pagemap" | "auxv" | "syscall" | "stack") => {
            Some(("agentmon's /proc file read", "the layout of its memory, where its keys are"))
        }
        _ => None,
    }
}

impl Enricher {
    pub(super) fn file(&mut self, raw: &RawEvent, ev: &mut Event) -> Next {
        let (h, b) = (&raw.hdr, &raw.body);
        match h.kind {
            kind::OPEN => {
                let flags = b.args[0];
                ev.flags.extend(names::open_flags(flags));
                ev.path = self.path(raw, 0);
                // The kernel knew the file as one of agentmon's keys (by inode: a hard
                // link or a bind mount is the same file under another path).
                let key = b.pflags & pflags::SECRET != 0;
                // Refused by the BPF LSM tier's file_open: `path` is the file it
                // refused, which the name asked by (a symlink, a hard link) need not
                // say; that name goes beside it.
                let by_hook = b.pflags & pflags::REFUSED_FOR_FILE != 0;
                if by_hook {
                    ev.flags.push(Cow::Borrowed(crate::event::REFUSED_FOR_FILE));
                    if let Some(asked) = self.path(raw, 1).filter(|a| Some(a) != ev.path.as_ref()) {
                        ev.detail.insert(Cow::Borrowed("requested_path"), json!(asked));
                    }
                }
                // O_CREAT of a file that exists makes nothing: a read, unless it
                // truncates (the kernel gives the access mode the file was opened with).
                // (A request submitted through io_uring: what it asks for.)
                let asked = h.ret < 0 || b.pflags & pflags::SUBMITTED != 0;
                let created = b.pflags & pflags::CREATED != 0 || (asked && flags & O_CREAT != 0);
                // A read the kernel refused as the sensitive set is that read, whatever
                // else the open asked for (O_RDWR, O_TRUNC, O_CREAT).
                let refused_read = by_hook && b.pflags & pflags::SENSITIVE != 0;
                let read_only = refused_read || (flags & O_ACCMODE == 0 && flags & O_TRUNC == 0 && !created);
                // One of agentmon's own /proc files (the kernel knew it by its process).
                let own = if b.pflags & pflags::AGENTMON_PROC != 0 {
                    // What any process list reads of it is nothing.
                    let Some(what) = agentmon_proc(ev.path.as_deref(), read_only) else { return Next::Drop };
                    Some(what)
                } else {
                    None
                };
                if read_only {
                    // Read-only: reported only for the sensitive set.
                    // A prefilter hit whose path was not read whole cannot be cleared.
                    let unknown =
                        ev.path.as_deref().is_some_and(|p| p.starts_with(crate::event::UNRESOLVED_PREFIX));
                    let sensitive = b.pflags & pflags::SENSITIVE != 0
                        && (key
                            || unknown
                            || by_hook
                            || ev.path.as_deref().is_some_and(|p| self.sensitive.matches(p)));
                    if !sensitive && own.is_none() {
                        return Next::Drop;
                    }
                    ev.kind = Kind::SensitiveRead;
                } else if created {
                    ev.kind = Kind::FileCreate;
                    ev.mode = Some(octal(b.args[1]));
                } else if ev.path.as_deref().is_some_and(is_quiet_device) {
                    // `> /dev/null`, the controlling tty: not side effects.
                    return Next::Drop;
                } else if flags & O_TRUNC != 0 {
                    ev.kind = Kind::FileTruncate;
                } else {
                    ev.kind = Kind::FileWrite;
                }
                // Opened to read, or to read and write (O_RDWR reads it too).
                if let Some((attempt, why)) = own {
                    ev.kind = Kind::Tamper;
                    ev.reason =
                        Some(format!("{attempt}: {} ({why})", ev.path.as_deref().unwrap_or_default()));
                    ev.detail.insert(Cow::Borrowed("attempt"), json!(attempt));
                } else if let Some(p) = ev
                    .path
                    .as_deref()
                    .filter(|p| key || (flags & O_ACCMODE != O_WRONLY && self.sensitive.is_secret(p)))
                {
                    // With it the agent signs as agentmon: audit records, revokes,
                    // kill signals. Nothing agentmon does can be trusted after it
                    // without a new key; the SOC must know at once.
                    let by = if self.sensitive.is_secret(p) { "" } else { " (another name for it)" };
                    ev.kind = Kind::Tamper;
                    ev.reason = Some(format!(
                        "read agentmon's private key {p}{by}: with it records and messages can be forged as \
                         agentmon's (rotate the key)"
                    ));
                    ev.detail.insert(Cow::Borrowed("attempt"), json!("agentmon's private key read"));
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
            _ => unreachable!("dispatched by kind"),
        }
        Next::Finish
    }
}
