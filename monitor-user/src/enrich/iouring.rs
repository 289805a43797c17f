//! io_uring records (monitor-ebpf/src/iouring.rs): a ring made, a request submitted.

use std::borrow::Cow;

use monitor_common::kind;
use serde_json::json;

use super::Next;
use crate::{
    decode::RawEvent,
    event::{Event, Kind},
    names,
};

pub(super) fn iouring(raw: &RawEvent, ev: &mut Event) -> Next {
    let (h, b) = (&raw.hdr, &raw.body);
    match h.kind {
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
        _ => unreachable!("dispatched by kind"),
    }
    Next::Finish
}
