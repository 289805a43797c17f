//! The x86_64 numbers of the syscalls agentmon's tracepoint programs exit from
//! (`sys_exit_NAME`): the witness of skipped programs (monitor-ebpf witness.rs) is
//! told them at load, so that a skip of a call nothing has made since is seen too.
//! A tracepoint is named after its SYSCALL_DEFINE, which `umount` alone does not
//! share with its number (`__NR_umount2`).

/// The number of syscall `name` (a `sys_exit_` tracepoint's name without the
/// prefix), or None when this table lacks it: the witness's TP_HOOKED index and
/// the fexit tier's SKIPPED slot (`sk_NAME`).
#[cfg(target_arch = "x86_64")]
pub fn number(name: &str) -> Option<u32> {
    use libc::*;
    let nr = match name {
        "bind" => SYS_bind,
        "bpf" => SYS_bpf,
        "capset" => SYS_capset,
        "chmod" => SYS_chmod,
        "chown" => SYS_chown,
        "clone" => SYS_clone,
        "clone3" => SYS_clone3,
        "connect" => SYS_connect,
        "creat" => SYS_creat,
        "delete_module" => SYS_delete_module,
        "execve" => SYS_execve,
        "execveat" => SYS_execveat,
        "fchmod" => SYS_fchmod,
        "fchmodat" => SYS_fchmodat,
        "fchmodat2" => SYS_fchmodat2,
        "fchown" => SYS_fchown,
        "fchownat" => SYS_fchownat,
        "finit_module" => SYS_finit_module,
        "fremovexattr" => SYS_fremovexattr,
        "fsconfig" => SYS_fsconfig,
        "fsetxattr" => SYS_fsetxattr,
        "fsmount" => SYS_fsmount,
        "fsopen" => SYS_fsopen,
        "fspick" => SYS_fspick,
        "ftruncate" => SYS_ftruncate,
        "init_module" => SYS_init_module,
        "io_uring_setup" => SYS_io_uring_setup,
        "kexec_file_load" => SYS_kexec_file_load,
        "kexec_load" => SYS_kexec_load,
        "kill" => SYS_kill,
        "lchown" => SYS_lchown,
        "link" => SYS_link,
        "linkat" => SYS_linkat,
        "listen" => SYS_listen,
        "lremovexattr" => SYS_lremovexattr,
        "lsetxattr" => SYS_lsetxattr,
        "memfd_create" => SYS_memfd_create,
        "mkdir" => SYS_mkdir,
        "mkdirat" => SYS_mkdirat,
        "mknod" => SYS_mknod,
        "mknodat" => SYS_mknodat,
        "mount" => SYS_mount,
        "mount_setattr" => SYS_mount_setattr,
        "move_mount" => SYS_move_mount,
        "name_to_handle_at" => SYS_name_to_handle_at,
        "open" => SYS_open,
        "open_by_handle_at" => SYS_open_by_handle_at,
        "open_tree" => SYS_open_tree,
        "openat" => SYS_openat,
        "openat2" => SYS_openat2,
        "perf_event_open" => SYS_perf_event_open,
        "pidfd_getfd" => SYS_pidfd_getfd,
        "pidfd_send_signal" => SYS_pidfd_send_signal,
        "pivot_root" => SYS_pivot_root,
        "process_vm_readv" => SYS_process_vm_readv,
        "process_vm_writev" => SYS_process_vm_writev,
        "ptrace" => SYS_ptrace,
        "removexattr" => SYS_removexattr,
        "rename" => SYS_rename,
        "renameat" => SYS_renameat,
        "renameat2" => SYS_renameat2,
        "rmdir" => SYS_rmdir,
        "seccomp" => SYS_seccomp,
        "sendmmsg" => SYS_sendmmsg,
        "sendmsg" => SYS_sendmsg,
        "sendto" => SYS_sendto,
        "setfsgid" => SYS_setfsgid,
        "setfsuid" => SYS_setfsuid,
        "setgid" => SYS_setgid,
        "setns" => SYS_setns,
        "setregid" => SYS_setregid,
        "setresgid" => SYS_setresgid,
        "setresuid" => SYS_setresuid,
        "setreuid" => SYS_setreuid,
        "setuid" => SYS_setuid,
        "setxattr" => SYS_setxattr,
        "socket" => SYS_socket,
        "socketpair" => SYS_socketpair,
        "symlink" => SYS_symlink,
        "symlinkat" => SYS_symlinkat,
        "tgkill" => SYS_tgkill,
        "tkill" => SYS_tkill,
        "truncate" => SYS_truncate,
        "umount" => SYS_umount2,
        "unlink" => SYS_unlink,
        "unlinkat" => SYS_unlinkat,
        "unshare" => SYS_unshare,
        "userfaultfd" => SYS_userfaultfd,
        _ => return None,
    };
    u32::try_from(nr).ok()
}

#[cfg(not(target_arch = "x86_64"))]
pub fn number(_name: &str) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_the_kernels() {
        assert_eq!(super::number("openat"), Some(257));
        assert_eq!(super::number("umount"), Some(166));
        assert_eq!(super::number("fchmodat2"), Some(452));
        assert_eq!(super::number("no_such_call"), None);
    }
}
