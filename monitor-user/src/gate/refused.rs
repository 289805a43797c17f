//! The requests no enforced task may make ([`super::filter::REFUSED`]: signal routing,
//! terminal input, /dev/userfaultfd, file flags; [`super::filter::AIMED`]: another
//! process's priority or limits): the task's gate filter sends them here rather
//! than the denial filter refusing them, so that each refusal is a record. The
//! command or target is in a register, not in the agent's memory: nothing to read, nothing to
//! race; the call is answered EPERM before the record is made.

use std::borrow::Cow;

use serde_json::json;

use super::{filter::Refusal, notify::Notif};
use crate::{enrich::Enricher, event::Event, judge::Judge, kernel::loader::Sensors};

/// The tamper record of refused request `req` (syscall, command, attempt) of `n`,
/// as the kernel's own refusal records read: `denied`, with the errno.
pub fn event(
    n: &Notif,
    Refusal { syscall, request, attempt }: Refusal,
    sensors: &Sensors,
    enr: &Enricher,
    judge: &Judge,
) -> Event {
    let mut ev = super::caller_tamper(n, sensors, enr, judge);
    ev.syscall = Some(Cow::Borrowed(syscall));
    ev.error = Some(Cow::Borrowed("EPERM"));
    ev.verdict = Some(Cow::Borrowed("denied"));
    ev.action = Some(Cow::Borrowed("alert"));
    let what = match attempt {
        "terminal input" => "typing into a terminal",
        "userfaultfd" => "a userfaultfd from /dev/userfaultfd",
        "file flags" => "changing a file's flags or project id",
        "file system" => "a file-system operation no layer sees (verity, encryption, btrfs subvolumes)",
        "lease" => "a lease that would hold another's open of the file",
        "scheduling" => "the priority of a process other than the caller",
        "process limits" => "the limits of a process other than the caller",
        _ => "routing a file's signals to a process of its choosing",
    };
    ev.detail.insert("attempt".into(), json!(attempt));
    match request {
        Some(request) => {
            ev.reason = Some(format!("tamper: {syscall} {request}: {what} was refused"));
            ev.detail.insert("request".into(), json!(request));
            ev.detail.insert("fd".into(), json!(n.args[0] as i32));
        }
        None => {
            // A call aimed at another process (filter::AIMED): whom, as it said.
            ev.reason = Some(format!("tamper: {syscall}: {what} was refused"));
            let args: Vec<i64> = n.args[..3].iter().map(|a| *a as u32 as i32 as i64).collect();
            ev.detail.insert("args".into(), json!(args));
        }
    }
    ev
}
