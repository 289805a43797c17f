//! Network records (monitor-ebpf/src/net.rs): connect, send, bind, listen.

use std::{
    borrow::Cow,
    net::{Ipv4Addr, Ipv6Addr},
};

use monitor_common::{kind, op, pflags};
use serde_json::json;

use super::Next;
use crate::{
    decode::{RawEvent, cstr},
    event::{Dst, Event, Kind, Name},
    names,
};

const AF_UNIX: u64 = 1;
const AF_INET: u64 = 2;
const AF_INET6: u64 = 10;

pub(super) fn net(raw: &RawEvent, ev: &mut Event) -> Next {
    let (h, b) = (&raw.hdr, &raw.body);
    match h.kind {
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
            // sendmmsg: the message's index; a record flagged truncated (no
            // destination) stands for destinations past those the kernel records.
            if h.op == op::SENDMMSG && b.pflags & pflags::TRUNCATED == 0 {
                ev.detail.insert(Cow::Borrowed("message"), json!(b.args[4]));
                if b.pflags & pflags::UNSENT != 0 {
                    ev.flags.push(Cow::Borrowed(crate::event::UNSENT));
                }
            }
        }
        _ => unreachable!("dispatched by kind"),
    }
    Next::Finish
}

fn inet_proto(t: &'static str) -> Name {
    Cow::Borrowed(match t {
        "stream" => "tcp",
        "dgram" => "udp",
        t => t,
    })
}

/// Destination from the packed socket args; unix paths from `extra`.
pub(super) fn dst(args: &[u64; 5], extra: &[u8], abstract_: bool) -> (Option<Dst>, Option<Name>) {
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
