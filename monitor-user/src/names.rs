//! Names for the numbers the kernel reports (flags, errno, signals, requests).

use std::borrow::Cow;

use crate::event::Name;

/// errno name of a negative syscall return.
pub fn errno(ret: i64) -> Option<Name> {
    if ret >= 0 {
        return None;
    }
    let e = (-ret) as i32;
    let s: &'static str = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ETIMEDOUT => "ETIMEDOUT",
        _ => return Some(Cow::Owned(format!("{:?}", nix::errno::Errno::from_raw(e)))),
    };
    Some(Cow::Borrowed(s))
}

pub fn signal(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("SIG{sig}"))
}

const O_FLAGS: &[(u64, &str)] = &[
    (0o1, "O_WRONLY"),
    (0o2, "O_RDWR"),
    (0o100, "O_CREAT"),
    (0o200, "O_EXCL"),
    (0o1000, "O_TRUNC"),
    (0o2000, "O_APPEND"),
    (0o200000, "O_DIRECTORY"),
    (0o400000, "O_NOFOLLOW"),
    (0o20000000, "O_TMPFILE"),
];

/// Open flags as names; `O_RDONLY` when no access bits are set.
pub fn open_flags(flags: u64) -> impl Iterator<Item = Name> {
    let ro = (flags & 0o3 == 0).then_some(Cow::Borrowed("O_RDONLY"));
    ro.into_iter().chain(
        O_FLAGS
            .iter()
            // O_TMPFILE includes O_DIRECTORY's bit.
            .filter(move |(bit, _)| !(*bit == 0o200000 && flags & 0o20000000 != 0))
            .filter(move |(bit, _)| flags & bit == *bit)
            .map(|(_, n)| Cow::Borrowed(*n)),
    )
}

pub fn rename_flags(flags: u64) -> impl Iterator<Item = Name> {
    [(1, "RENAME_NOREPLACE"), (2, "RENAME_EXCHANGE"), (4, "RENAME_WHITEOUT")]
        .into_iter()
        .filter(move |(b, _)| flags & b != 0)
        .map(|(_, n)| Cow::Borrowed(n))
}

pub fn at_flags(flags: u64) -> impl Iterator<Item = Name> {
    [
        (0x100, "AT_SYMLINK_NOFOLLOW"),
        (0x200, "AT_REMOVEDIR"),
        (0x400, "AT_SYMLINK_FOLLOW"),
        (0x1000, "AT_EMPTY_PATH"),
    ]
    .into_iter()
    .filter(move |(b, _)| flags & b != 0)
    .map(|(_, n)| Cow::Borrowed(n))
}

pub fn sock_type(t: u64) -> Option<&'static str> {
    match t & 0xf {
        1 => Some("stream"),
        2 => Some("dgram"),
        3 => Some("raw"),
        5 => Some("seqpacket"),
        _ => None,
    }
}

const IORING_OPS: &[&str] = &[
    "NOP",
    "READV",
    "WRITEV",
    "FSYNC",
    "READ_FIXED",
    "WRITE_FIXED",
    "POLL_ADD",
    "POLL_REMOVE",
    "SYNC_FILE_RANGE",
    "SENDMSG",
    "RECVMSG",
    "TIMEOUT",
    "TIMEOUT_REMOVE",
    "ACCEPT",
    "ASYNC_CANCEL",
    "LINK_TIMEOUT",
    "CONNECT",
    "FALLOCATE",
    "OPENAT",
    "CLOSE",
    "FILES_UPDATE",
    "STATX",
    "READ",
    "WRITE",
    "FADVISE",
    "MADVISE",
    "SEND",
    "RECV",
    "OPENAT2",
    "EPOLL_CTL",
    "SPLICE",
    "PROVIDE_BUFFERS",
    "REMOVE_BUFFERS",
    "TEE",
    "SHUTDOWN",
    "RENAMEAT",
    "UNLINKAT",
    "MKDIRAT",
    "SYMLINKAT",
    "LINKAT",
    "MSG_RING",
    "FSETXATTR",
    "SETXATTR",
    "FGETXATTR",
    "GETXATTR",
    "SOCKET",
    "URING_CMD",
    "SEND_ZC",
    "SENDMSG_ZC",
    "READ_MULTISHOT",
    "WAITID",
    "FUTEX_WAIT",
    "FUTEX_WAKE",
    "FUTEX_WAITV",
    "FIXED_FD_INSTALL",
    "FTRUNCATE",
    "BIND",
    "LISTEN",
    "RECV_ZC",
    "EPOLL_WAIT",
    "READV_FIXED",
    "WRITEV_FIXED",
    "PIPE",
];

pub fn ioring_op(op: u64) -> String {
    IORING_OPS.get(op as usize).map(|s| format!("IORING_OP_{s}")).unwrap_or_else(|| format!("IORING_OP_{op}"))
}

pub fn ptrace_request(r: u64) -> String {
    let n = match r {
        0 => "PTRACE_TRACEME",
        1 => "PTRACE_PEEKTEXT",
        2 => "PTRACE_PEEKDATA",
        3 => "PTRACE_PEEKUSER",
        4 => "PTRACE_POKETEXT",
        5 => "PTRACE_POKEDATA",
        6 => "PTRACE_POKEUSER",
        7 => "PTRACE_CONT",
        8 => "PTRACE_KILL",
        9 => "PTRACE_SINGLESTEP",
        12 => "PTRACE_GETREGS",
        13 => "PTRACE_SETREGS",
        16 => "PTRACE_ATTACH",
        17 => "PTRACE_DETACH",
        24 => "PTRACE_SYSCALL",
        0x4200 => "PTRACE_SETOPTIONS",
        0x4201 => "PTRACE_GETEVENTMSG",
        0x4202 => "PTRACE_GETSIGINFO",
        0x4206 => "PTRACE_SEIZE",
        0x4207 => "PTRACE_INTERRUPT",
        _ => return format!("PTRACE_{r}"),
    };
    n.into()
}

const BPF_CMDS: &[&str] = &[
    "MAP_CREATE",
    "MAP_LOOKUP_ELEM",
    "MAP_UPDATE_ELEM",
    "MAP_DELETE_ELEM",
    "MAP_GET_NEXT_KEY",
    "PROG_LOAD",
    "OBJ_PIN",
    "OBJ_GET",
    "PROG_ATTACH",
    "PROG_DETACH",
    "PROG_TEST_RUN",
    "PROG_GET_NEXT_ID",
    "MAP_GET_NEXT_ID",
    "PROG_GET_FD_BY_ID",
    "MAP_GET_FD_BY_ID",
    "OBJ_GET_INFO_BY_FD",
    "PROG_QUERY",
    "RAW_TRACEPOINT_OPEN",
    "BTF_LOAD",
    "BTF_GET_FD_BY_ID",
    "TASK_FD_QUERY",
    "MAP_LOOKUP_AND_DELETE_ELEM",
    "MAP_FREEZE",
    "BTF_GET_NEXT_ID",
    "MAP_LOOKUP_BATCH",
    "MAP_LOOKUP_AND_DELETE_BATCH",
    "MAP_UPDATE_BATCH",
    "MAP_DELETE_BATCH",
    "LINK_CREATE",
    "LINK_UPDATE",
    "LINK_GET_FD_BY_ID",
    "LINK_GET_NEXT_ID",
    "ENABLE_STATS",
    "ITER_CREATE",
    "LINK_DETACH",
    "PROG_BIND_MAP",
    "TOKEN_CREATE",
];

pub fn bpf_cmd(c: u64) -> String {
    BPF_CMDS.get(c as usize).map(|s| format!("BPF_{s}")).unwrap_or_else(|| format!("BPF_{c}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(errno(-13).as_deref(), Some("EACCES"));
        assert_eq!(errno(-(libc::ELOOP as i64)).as_deref(), Some("ELOOP"));
        assert_eq!(errno(0), None);
        assert_eq!(signal(9), "SIGKILL");
        let v = |i: Box<dyn Iterator<Item = Name>>| i.collect::<Vec<_>>();
        assert_eq!(v(Box::new(open_flags(0o1101))), vec!["O_WRONLY", "O_CREAT", "O_TRUNC"]);
        assert_eq!(v(Box::new(open_flags(0))), vec!["O_RDONLY"]);
        assert_eq!(v(Box::new(open_flags(0o20200002))), vec!["O_RDWR", "O_TMPFILE"]);
        assert_eq!(v(Box::new(at_flags(0x200))), vec!["AT_REMOVEDIR"]);
        assert_eq!(ioring_op(18), "IORING_OP_OPENAT");
        assert_eq!(ioring_op(999), "IORING_OP_999");
        assert_eq!(bpf_cmd(5), "BPF_PROG_LOAD");
        assert_eq!(ptrace_request(16), "PTRACE_ATTACH");
    }
}
