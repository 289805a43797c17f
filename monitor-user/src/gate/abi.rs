//! System calls made through x86-64's other ABIs: i386 (`int 0x80`, from a 64-bit
//! process too) and x32 (the x32 bit on the call number). The kernel's per-syscall
//! tracepoints skip both, so an agent could act through them unseen. An enforced
//! task's filter kills for them; an observed task's filter sends them here
//! ([`super::filter::watch_program`]) to be reported before they run.

pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abi {
    I386,
    X32,
    /// An AUDIT_ARCH_* value x86-64 should never report.
    Other(u32),
}

/// A call the report names: its name, and which arguments are path names.
type Call = (&'static str, i64, &'static [usize]);

/// i386 numbers (arch/x86/entry/syscalls/syscall_32.tbl) of the calls with side
/// effects agentmon reports natively, and the ones it treats as tampering.
const I386: &[Call] = &[
    ("open", 5, &[0]),
    ("creat", 8, &[0]),
    ("link", 9, &[0, 1]),
    ("unlink", 10, &[0]),
    ("execve", 11, &[0]),
    ("mknod", 14, &[0]),
    ("chmod", 15, &[0]),
    ("lchown", 16, &[0]),
    ("ptrace", 26, &[]),
    ("kill", 37, &[]),
    ("rename", 38, &[0, 1]),
    ("mkdir", 39, &[0]),
    ("rmdir", 40, &[0]),
    ("symlink", 83, &[1]),
    ("truncate", 92, &[0]),
    ("ftruncate", 93, &[]),
    ("fchmod", 94, &[]),
    ("fchown", 95, &[]),
    ("socketcall", 102, &[]),
    ("chown", 182, &[0]),
    ("setxattr", 226, &[0]),
    ("openat", 295, &[1]),
    ("mkdirat", 296, &[1]),
    ("fchownat", 298, &[1]),
    ("unlinkat", 301, &[1]),
    ("renameat", 302, &[1, 3]),
    ("linkat", 303, &[1, 3]),
    ("symlinkat", 304, &[2]),
    ("fchmodat", 306, &[1]),
    ("open_by_handle_at", 342, &[]),
    ("renameat2", 353, &[1, 3]),
    ("memfd_create", 356, &[]),
    ("execveat", 358, &[1]),
    ("socket", 359, &[]),
    ("bind", 361, &[]),
    ("connect", 362, &[]),
    ("io_uring_setup", 425, &[]),
    ("openat2", 437, &[1]),
];

/// x32 calls use the native numbers (below 512; 512 and up are x32's own).
const NATIVE: &[Call] = &[
    ("open", libc::SYS_open, &[0]),
    ("creat", libc::SYS_creat, &[0]),
    ("link", libc::SYS_link, &[0, 1]),
    ("unlink", libc::SYS_unlink, &[0]),
    ("mknod", libc::SYS_mknod, &[0]),
    ("chmod", libc::SYS_chmod, &[0]),
    ("lchown", libc::SYS_lchown, &[0]),
    ("chown", libc::SYS_chown, &[0]),
    ("kill", libc::SYS_kill, &[]),
    ("rename", libc::SYS_rename, &[0, 1]),
    ("mkdir", libc::SYS_mkdir, &[0]),
    ("rmdir", libc::SYS_rmdir, &[0]),
    ("symlink", libc::SYS_symlink, &[1]),
    ("truncate", libc::SYS_truncate, &[0]),
    ("ftruncate", libc::SYS_ftruncate, &[]),
    ("fchmod", libc::SYS_fchmod, &[]),
    ("fchown", libc::SYS_fchown, &[]),
    ("setxattr", libc::SYS_setxattr, &[0]),
    ("openat", libc::SYS_openat, &[1]),
    ("mkdirat", libc::SYS_mkdirat, &[1]),
    ("fchownat", libc::SYS_fchownat, &[1]),
    ("unlinkat", libc::SYS_unlinkat, &[1]),
    ("renameat", libc::SYS_renameat, &[1, 3]),
    ("linkat", libc::SYS_linkat, &[1, 3]),
    ("symlinkat", libc::SYS_symlinkat, &[2]),
    ("fchmodat", libc::SYS_fchmodat, &[1]),
    ("open_by_handle_at", libc::SYS_open_by_handle_at, &[]),
    ("renameat2", libc::SYS_renameat2, &[1, 3]),
    ("memfd_create", libc::SYS_memfd_create, &[]),
    ("socket", libc::SYS_socket, &[]),
    ("bind", libc::SYS_bind, &[]),
    ("connect", libc::SYS_connect, &[]),
    ("getpid", libc::SYS_getpid, &[]),
    ("io_uring_setup", libc::SYS_io_uring_setup, &[]),
    ("openat2", libc::SYS_openat2, &[1]),
];

impl Abi {
    /// The ABI of a call the filter reported: None for a native x86-64 call.
    pub fn of(arch: u32, nr: i64) -> Option<Abi> {
        match arch {
            AUDIT_ARCH_X86_64 if (nr as u32) & X32_SYSCALL_BIT != 0 => Some(Abi::X32),
            AUDIT_ARCH_X86_64 => None,
            AUDIT_ARCH_I386 => Some(Abi::I386),
            other => Some(Abi::Other(other)),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Abi::I386 => "i386",
            Abi::X32 => "x32",
            Abi::Other(_) => "unknown",
        }
    }

    /// The call's name and its path-name arguments, where this table knows it.
    pub fn call(self, nr: i64) -> Option<(&'static str, &'static [usize])> {
        let (table, nr) = match self {
            Abi::I386 => (I386, nr),
            Abi::X32 => (NATIVE, nr & !(X32_SYSCALL_BIT as i64)),
            Abi::Other(_) => return None,
        };
        table.iter().find(|c| c.1 == nr).map(|c| (c.0, c.2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_arch_and_x32_bit() {
        assert_eq!(Abi::of(AUDIT_ARCH_X86_64, libc::SYS_openat), None);
        assert_eq!(Abi::of(AUDIT_ARCH_X86_64, X32_SYSCALL_BIT as i64 | libc::SYS_openat), Some(Abi::X32));
        assert_eq!(Abi::of(AUDIT_ARCH_I386, 8), Some(Abi::I386));
        assert_eq!(Abi::of(0x28, 1), Some(Abi::Other(0x28)));
    }

    #[test]
    fn names_calls_of_each_table() {
        assert_eq!(Abi::I386.call(8), Some(("creat", &[0usize][..])));
        assert_eq!(Abi::I386.call(302).map(|c| c.1), Some(&[1usize, 3][..]));
        let x32_getpid = X32_SYSCALL_BIT as i64 | libc::SYS_getpid;
        assert_eq!(Abi::X32.call(x32_getpid).map(|c| c.0), Some("getpid"));
        // 512 and up are x32's own calls, not the native ones of that number.
        assert_eq!(Abi::X32.call(X32_SYSCALL_BIT as i64 | 512), None);
        assert_eq!(Abi::Other(0).call(8), None);
        for t in [I386, NATIVE] {
            let mut nrs: Vec<i64> = t.iter().map(|c| c.1).collect();
            nrs.sort_unstable();
            nrs.dedup();
            assert_eq!(nrs.len(), t.len(), "a number listed twice");
        }
    }
}
