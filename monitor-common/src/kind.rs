//! Event kind numbers, in bands by family. A number is never reused for a different
//! meaning: retire it and take the next one.
//!
//! `args` of [`crate::Body`] per kind:
//!
//! | kind | args |
//! |---|---|
//! | FORK | [0] child tgid, [1] child start ns |
//! | EXEC | [0] argv bytes in extra; operand 1 = exe (resolved file), operand 2 = filename as invoked |
//! | EXIT | [0] exit_code (wait status: code << 8 \| signal) |
//! | OPEN | [0] open flags, [1] mode, [2] f_mode of the new file (0 if failed) |
//! | UNLINK | [0] flags (AT_REMOVEDIR) |
//! | RENAME | [0] renameat2 flags; operand 2 = new path |
//! | TRUNCATE | [0] length |
//! | CHMOD | [0] mode, [1] flags |
//! | CHOWN | [0] uid, [1] gid, [2] flags |
//! | LINK | [0] 1 if symlink; operand 1 = new link, operand 2 = target |
//! | MKDIR | [0] mode |
//! | XATTR | [0] 1 if removed (removexattr family), [1] flags; operand 2 = the attribute's name |
//! | CONNECT, SEND, BIND | [0] family \| port << 16 \| sock type << 32, [1..3] address bytes, [3] fd |
//! | LISTEN | like CONNECT, the socket's local address; [4] backlog |
//! | IOURING_SETUP | [0] ring fd, [1] sq entries, [2] setup flags |
//! | IOURING_SUBMIT | [0] opcode, [1] request flags, [2] 1 if from the SQPOLL thread |
//! | PTRACE | [0] request, [1] target pid |
//! | BPF | [0] command |
//! | PRIVILEGE | [0..3] ids as passed (uid/gid triples); op tells which call |
//! | TAMPER | [0..3] the call's first three arguments as passed; op tells which call |
//! | UNSEEN | [0] the number of a syscall whose tracepoint program the kernel skipped; ret is its result |

// Process, 1xx.
pub const FORK: u16 = 100;
pub const EXEC: u16 = 101;
pub const EXIT: u16 = 102;
// File side effects, 2xx.
pub const OPEN: u16 = 200;
pub const UNLINK: u16 = 201;
pub const RENAME: u16 = 202;
pub const TRUNCATE: u16 = 203;
pub const CHMOD: u16 = 204;
pub const CHOWN: u16 = 205;
pub const LINK: u16 = 206;
pub const MKDIR: u16 = 207;
pub const XATTR: u16 = 208;
// Network, 3xx.
pub const CONNECT: u16 = 300;
pub const SEND: u16 = 301;
pub const BIND: u16 = 302;
pub const LISTEN: u16 = 303;
// io_uring, 4xx.
pub const IOURING_SETUP: u16 = 400;
pub const IOURING_SUBMIT: u16 = 401;
// Privilege-relevant, 5xx.
pub const PTRACE: u16 = 500;
pub const BPF: u16 = 501;
pub const PRIVILEGE: u16 = 502;
/// A call against agentmon (a signal to it) or one no task needs (mount, modules,
/// another process's memory or descriptors, file handles), or a refused socket.
pub const TAMPER: u16 = 503;
// Observation gaps, 6xx.
/// A tracked process's hooked syscall whose tracepoint program the kernel skipped
/// (its CPU's BPF guard was held by a map call preempted there, any process's).
pub const UNSEEN: u16 = 600;

/// Every kernel kind, in counter-slot order.
pub const ALL: [u16; 23] = [
    FORK,
    EXEC,
    EXIT,
    OPEN,
    UNLINK,
    RENAME,
    TRUNCATE,
    CHMOD,
    CHOWN,
    LINK,
    MKDIR,
    CONNECT,
    SEND,
    BIND,
    LISTEN,
    IOURING_SETUP,
    IOURING_SUBMIT,
    PTRACE,
    BPF,
    PRIVILEGE,
    TAMPER,
    XATTR,
    UNSEEN,
];

/// Dense counter slot of a kind (see `COUNTERS`); unknown kinds share the last slot.
pub const fn slot(kind: u16) -> u32 {
    match kind {
        FORK => 0,
        EXEC => 1,
        EXIT => 2,
        OPEN => 3,
        UNLINK => 4,
        RENAME => 5,
        TRUNCATE => 6,
        CHMOD => 7,
        CHOWN => 8,
        LINK => 9,
        MKDIR => 10,
        CONNECT => 11,
        SEND => 12,
        BIND => 13,
        LISTEN => 14,
        IOURING_SETUP => 15,
        IOURING_SUBMIT => 16,
        PTRACE => 17,
        BPF => 18,
        PRIVILEGE => 19,
        TAMPER => 20,
        XATTR => 21,
        UNSEEN => 22,
        _ => crate::COUNTER_SLOTS - 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_dense_and_distinct() {
        for (i, k) in ALL.iter().enumerate().filter(|(_, k)| **k != 0) {
            assert_eq!(slot(*k), i as u32, "kind {k}");
        }
    }
}
