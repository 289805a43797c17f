//! Capabilities an enforced task never keeps, whoever runs it. A root agent keeps
//! the rest (it may own files, bind low ports, kill its own processes), but each of
//! these reaches past every layer: network configuration (routes, nftables DNAT, tc
//! rewriting a packet the cgroup guard let out), raw sockets and devices, kernel
//! modules, namespaces and mounts, tracing other processes, BPF and perf, the clock
//! every record is stamped with, the audit rules, MAC policy, the kernel log.
//!
//! Dropped in the task's root between fork and exec (after its filters): from the
//! bounding set, so that no exec gives them back (enforced tasks also have
//! no_new_privs), from the ambient set, and from the effective, permitted and
//! inheritable sets. Only syscalls: async-signal-safe.

/// include/uapi/linux/capability.h
pub const DROPPED: &[u32] = &[
    12, // CAP_NET_ADMIN
    13, // CAP_NET_RAW
    16, // CAP_SYS_MODULE
    17, // CAP_SYS_RAWIO
    19, // CAP_SYS_PTRACE
    21, // CAP_SYS_ADMIN
    22, // CAP_SYS_BOOT
    25, // CAP_SYS_TIME
    30, // CAP_AUDIT_CONTROL
    32, // CAP_MAC_OVERRIDE
    33, // CAP_MAC_ADMIN
    34, // CAP_SYSLOG
    38, // CAP_PERFMON
    39, // CAP_BPF
    40, // CAP_CHECKPOINT_RESTORE
];

const CAP_SETPCAP: u32 = 8;
const VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops [`DROPPED`] from the calling process; false if a call failed.
///
/// # Safety
/// Only syscalls; meant for the forked child before exec.
pub unsafe fn drop_all() -> bool {
    let mut hdr = Header { version: VERSION_3, pid: 0 };
    let mut d = [Data::default(); 2];
    unsafe {
        if libc::syscall(libc::SYS_capget, &raw mut hdr, d.as_mut_ptr()) != 0 {
            return false;
        }
        let has = |d: &[Data; 2], c: u32| d[(c / 32) as usize].permitted & (1 << (c % 32)) != 0;
        let setpcap = has(&d, CAP_SETPCAP);
        for &c in DROPPED {
            if libc::prctl(libc::PR_CAPBSET_DROP, c as libc::c_ulong, 0, 0, 0) != 0 {
                // EPERM without CAP_SETPCAP: a process that cannot shrink its bounding
                // set, and with no_new_privs cannot use it either (its current sets
                // are cleared below). EINVAL: a capability this kernel does not know.
                let e = *libc::__errno_location();
                if !(e == libc::EINVAL || (e == libc::EPERM && !setpcap)) {
                    return false;
                }
            }
        }
        if libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 {
            return false;
        }
        for &c in DROPPED {
            let (w, bit) = ((c / 32) as usize, 1u32 << (c % 32));
            d[w].effective &= !bit;
            d[w].permitted &= !bit;
            d[w].inheritable &= !bit;
        }
        let mut hdr = Header { version: VERSION_3, pid: 0 };
        libc::syscall(libc::SYS_capset, &raw mut hdr, d.as_ptr()) == 0
    }
}
