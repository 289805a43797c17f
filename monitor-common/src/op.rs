//! Which syscall or hook produced an event. Numbers are stable (never reused).

macro_rules! ops {
    ($($name:ident = $n:expr, $s:literal;)*) => {
        $(pub const $name: u16 = $n;)*
        /// Name of an op as shown in events (the syscall name).
        pub const fn name(op: u16) -> &'static str {
            match op { $($n => $s,)* _ => "unknown" }
        }
    };
}

ops! {
    FORK = 1, "fork";
    EXEC = 2, "exec";
    EXIT = 3, "exit";
    EXECVE = 4, "execve";
    EXECVEAT = 5, "execveat";

    OPEN = 10, "open";
    OPENAT = 11, "openat";
    OPENAT2 = 12, "openat2";
    CREAT = 13, "creat";
    UNLINK = 14, "unlink";
    UNLINKAT = 15, "unlinkat";
    RMDIR = 16, "rmdir";
    RENAME = 17, "rename";
    RENAMEAT = 18, "renameat";
    RENAMEAT2 = 19, "renameat2";
    TRUNCATE = 20, "truncate";
    FTRUNCATE = 21, "ftruncate";
    CHMOD = 22, "chmod";
    FCHMOD = 23, "fchmod";
    FCHMODAT = 24, "fchmodat";
    FCHMODAT2 = 25, "fchmodat2";
    CHOWN = 26, "chown";
    FCHOWN = 27, "fchown";
    LCHOWN = 28, "lchown";
    FCHOWNAT = 29, "fchownat";
    LINK = 30, "link";
    LINKAT = 31, "linkat";
    SYMLINK = 32, "symlink";
    SYMLINKAT = 33, "symlinkat";
    MKDIR = 34, "mkdir";
    MKDIRAT = 35, "mkdirat";

    CONNECT = 50, "connect";
    SENDTO = 51, "sendto";
    SENDMSG = 52, "sendmsg";
    SENDMMSG = 53, "sendmmsg";
    BIND = 54, "bind";
    LISTEN = 55, "listen";

    IOURING_SETUP = 70, "io_uring_setup";
    IOURING_SUBMIT = 71, "io_uring_submit";
    // Requests submitted through io_uring that name paths (monitor-ebpf iouring.rs):
    // named by their opcode, as the ring was asked.
    IOU_OPENAT = 72, "IORING_OP_OPENAT";
    IOU_OPENAT2 = 73, "IORING_OP_OPENAT2";
    IOU_UNLINKAT = 74, "IORING_OP_UNLINKAT";
    IOU_RENAMEAT = 75, "IORING_OP_RENAMEAT";
    IOU_MKDIRAT = 76, "IORING_OP_MKDIRAT";
    IOU_SYMLINKAT = 77, "IORING_OP_SYMLINKAT";
    IOU_LINKAT = 78, "IORING_OP_LINKAT";

    PTRACE = 80, "ptrace";
    BPF = 81, "bpf";
    SETUID = 82, "setuid";
    SETGID = 83, "setgid";
    SETREUID = 84, "setreuid";
    SETREGID = 85, "setregid";
    SETRESUID = 86, "setresuid";
    SETRESGID = 87, "setresgid";
    SETFSUID = 88, "setfsuid";
    SETFSGID = 89, "setfsgid";
    CAPSET = 90, "capset";

    KILL = 100, "kill";
    TKILL = 101, "tkill";
    TGKILL = 102, "tgkill";
    PIDFD_SEND_SIGNAL = 103, "pidfd_send_signal";
    SOCKET = 104, "socket";
    MOUNT = 105, "mount";
    UMOUNT2 = 106, "umount2";
    PIVOT_ROOT = 107, "pivot_root";
    FSOPEN = 108, "fsopen";
    MOVE_MOUNT = 109, "move_mount";
    INIT_MODULE = 110, "init_module";
    FINIT_MODULE = 111, "finit_module";
    DELETE_MODULE = 112, "delete_module";
    KEXEC_LOAD = 113, "kexec_load";
    KEXEC_FILE_LOAD = 114, "kexec_file_load";
    PERF_EVENT_OPEN = 115, "perf_event_open";
    PROCESS_VM_READV = 116, "process_vm_readv";
    PROCESS_VM_WRITEV = 117, "process_vm_writev";
    PIDFD_GETFD = 118, "pidfd_getfd";
    OPEN_BY_HANDLE_AT = 119, "open_by_handle_at";
    NAME_TO_HANDLE_AT = 120, "name_to_handle_at";
    IOURING_SETUP_CALL = 121, "io_uring_setup";
    MEMFD_CREATE = 122, "memfd_create";
    // The signal_generate tracepoint: a signal that reached agentmon.
    SIGNAL_GENERATE = 123, "signal_generate";
    OPEN_TREE = 124, "open_tree";
    FSCONFIG = 125, "fsconfig";
    FSMOUNT = 126, "fsmount";
    FSPICK = 127, "fspick";
    MOUNT_SETATTR = 128, "mount_setattr";
    SETNS = 129, "setns";

    SETXATTR = 130, "setxattr";
    LSETXATTR = 131, "lsetxattr";
    FSETXATTR = 132, "fsetxattr";
    REMOVEXATTR = 133, "removexattr";
    LREMOVEXATTR = 134, "lremovexattr";
    FREMOVEXATTR = 135, "fremovexattr";
    USERFAULTFD = 136, "userfaultfd";
    UNSHARE = 137, "unshare";
    CLONE = 138, "clone";
    MKNOD = 139, "mknod";
    MKNODAT = 140, "mknodat";
    SOCKETPAIR = 141, "socketpair";
    CLONE3 = 142, "clone3";
    SECCOMP = 143, "seccomp";
}
