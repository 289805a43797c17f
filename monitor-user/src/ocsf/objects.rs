//! OCSF 1.3.0 objects built from one event: process, file, network endpoint,
//! connection info, kernel resource.

use std::net::IpAddr;

use serde_json::{Map, Value, json};

use crate::event::{Dst, Event, Kind};

/// `file.type_id` values used here (OCSF 1.3.0 `file.type_id`).
pub const FILE_UNKNOWN: u32 = 0;
pub const FILE_REGULAR: u32 = 1;
pub const FILE_FOLDER: u32 = 2;
pub const FILE_SYMLINK: u32 = 7;
pub const FILE_OTHER: u32 = 99;

fn file_type(id: u32) -> &'static str {
    match id {
        FILE_REGULAR => "Regular File",
        FILE_FOLDER => "Folder",
        3 => "Character Device",
        4 => "Block Device",
        5 => "Local Socket",
        6 => "Named Pipe",
        FILE_SYMLINK => "Symbolic Link",
        FILE_OTHER => "Other",
        _ => "Unknown",
    }
}

/// `file` for an absolute path: `name` (required) is the last component, `parent_folder`
/// the rest, `ext` the name's extension when it looks like one (not for dotfiles, nor
/// all digits: `python3.12`, `libc.so.6`).
pub fn file(path: &str, type_id: u32) -> Map<String, Value> {
    let trimmed = path.trim_end_matches('/');
    let (parent, name) = match trimmed.rsplit_once('/') {
        Some(("", name)) => (Some("/"), name),
        Some((parent, name)) => (Some(parent), name),
        None => (None, trimmed),
    };
    let name = if name.is_empty() { path } else { name };
    let mut f = Map::new();
    f.insert("path".into(), json!(path));
    f.insert("name".into(), json!(name));
    if let Some(p) = parent {
        f.insert("parent_folder".into(), json!(p));
    }
    if let Some((stem, ext)) = name.rsplit_once('.')
        && !stem.is_empty()
        && ext.bytes().any(|b| b.is_ascii_alphabetic())
    {
        f.insert("ext".into(), json!(ext));
    }
    f.insert("type_id".into(), json!(type_id));
    f.insert("type".into(), json!(file_type(type_id)));
    f
}

/// The process that made the call: `pid`, `tid`, `name` (comm), `file` (exe),
/// `parent_process`, `uid` (`pid:start`, unique per boot), `user` (the real uid and its
/// name), and for execs `cmd_line`.
pub fn process(ev: &Event) -> Map<String, Value> {
    let mut p = Map::new();
    p.insert("pid".into(), json!(ev.pid));
    if ev.tid != 0 {
        p.insert("tid".into(), json!(ev.tid));
    }
    identity(ev, &mut p);
    if let Some(ppid) = ev.ppid {
        p.insert("parent_process".into(), json!({ "pid": ppid }));
    }
    if let Some(uid) = ev.uid {
        let mut u = serde_json::Map::new();
        u.insert("uid".into(), json!(uid.to_string()));
        if let Some(name) = &ev.user {
            u.insert("name".into(), json!(name));
        }
        p.insert("user".into(), Value::Object(u));
    }
    if matches!(ev.kind, Kind::Exec | Kind::MemfdExec)
        && let Some(argv) = &ev.argv
    {
        p.insert("cmd_line".into(), json!(argv.join(" ")));
    }
    p
}

/// `name`, `file` and `uid` of the event's process (shared by parent and child of a fork).
pub fn identity(ev: &Event, p: &mut Map<String, Value>) {
    if !ev.comm.is_empty() {
        p.insert("name".into(), json!(ev.comm));
    }
    if let Some(exe) = &ev.exe {
        // A fileless exec runs something with no name on disk.
        let ty = if ev.kind == Kind::MemfdExec { FILE_OTHER } else { FILE_REGULAR };
        let mut f = file(exe, ty);
        if ty == FILE_OTHER {
            f.insert("type".into(), json!("memfd or deleted file"));
        }
        p.insert("file".into(), Value::Object(f));
    }
    if let Some(start) = ev.start {
        p.insert("uid".into(), json!(format!("{}:{start}", ev.pid)));
    }
}

/// A process known only by its pid.
pub fn pid_only(pid: impl Into<i64>) -> Map<String, Value> {
    let mut p = Map::new();
    p.insert("pid".into(), json!(pid.into()));
    p
}

/// `network_endpoint` for a native `dst`, and the unix socket path when it is one
/// (OCSF endpoints have no socket path: it goes in `name`, and in `unmapped.unix`).
pub fn endpoint(dst: &Dst) -> (Map<String, Value>, Option<&str>) {
    let mut e = Map::new();
    match dst {
        Dst::Ip { ip, port } => {
            e.insert("ip".into(), json!(ip));
            e.insert("port".into(), json!(port));
            (e, None)
        }
        Dst::Unix { unix } => {
            e.insert("name".into(), json!(unix));
            (e, Some(unix))
        }
    }
}

/// `network_connection_info.direction_id` values used here.
pub const DIR_UNKNOWN: u32 = 0;
pub const DIR_INBOUND: u32 = 1;
pub const DIR_OUTBOUND: u32 = 2;

/// `connection_info`: direction (required), IANA protocol name and number for
/// tcp/udp, IP version, and boundary Localhost for loopback and unix sockets. Returns
/// whether `proto` was mapped (if not, the caller keeps it in `unmapped`).
pub fn connection_info(ev: &Event, direction_id: u32) -> (Map<String, Value>, bool) {
    let mut c = Map::new();
    c.insert("direction_id".into(), json!(direction_id));
    let direction = match direction_id {
        DIR_INBOUND => "Inbound",
        DIR_OUTBOUND => "Outbound",
        _ => "Unknown",
    };
    c.insert("direction".into(), json!(direction));
    let iana = match ev.proto.as_deref() {
        Some("tcp") => Some(("tcp", 6)),
        Some("udp") => Some(("udp", 17)),
        _ => None,
    };
    if let Some((name, num)) = iana {
        c.insert("protocol_name".into(), json!(name));
        c.insert("protocol_num".into(), json!(num));
    }
    let local = match &ev.dst {
        Some(Dst::Ip { ip, .. }) => match ip.parse::<IpAddr>() {
            Ok(addr) => {
                let (id, ver) = if addr.is_ipv4() {
                    (4, "Internet Protocol version 4 (IPv4)")
                } else {
                    (6, "Internet Protocol version 6 (IPv6)")
                };
                c.insert("protocol_ver_id".into(), json!(id));
                c.insert("protocol_ver".into(), json!(ver));
                addr.is_loopback()
            }
            Err(_) => false,
        },
        Some(Dst::Unix { .. }) => true,
        None => false,
    };
    if local {
        c.insert("boundary_id".into(), json!(1));
        c.insert("boundary".into(), json!("Localhost"));
    }
    (c, iana.is_some() || ev.proto.is_none())
}

/// `kernel` resource: a system call (`type_id` 2), named by the command when known.
pub fn kernel(name: &str, system_call: Option<&str>) -> Map<String, Value> {
    let mut k = Map::new();
    k.insert("name".into(), json!(name));
    k.insert("type_id".into(), json!(2));
    k.insert("type".into(), json!("System Call"));
    if let Some(s) = system_call {
        k.insert("system_call".into(), json!(s));
    }
    k
}
