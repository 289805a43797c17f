//! Capabilities an enforced task never keeps, whoever runs it. A root agent keeps
//! the rest (it may own files, bind low ports, kill its own processes), but each of
//! these reaches past every layer: network configuration (routes, nftables DNAT, tc
//! rewriting a packet the cgroup guard let out), raw sockets and devices, kernel
//! modules, namespaces and mounts, tracing other processes, BPF and perf, the clock
//! every record is stamped with, the audit rules, MAC policy, the kernel log; and
//! each of these blinds agentmon from inside the task: an immutable or append-only
//! flag on its own files (its writes then fail), a real-time priority that starves
//! it of CPU, the blocks a filesystem reserves for root (which agentmon, as root,
//! keeps for its records when the agent fills the disk); file capabilities would
//! outlive the task in a binary it wrote.
//!
//! Dropped in the task's root between fork and exec (before its filters): from the
//! bounding set, so that no exec gives them back (enforced tasks also have
//! no_new_privs), and from the ambient set; from the effective, permitted and
//! inheritable sets by the exec that follows, or by a capset where the exec would
//! not clear them (one in the inheritable set, or one the bounding set keeps for
//! want of CAP_SETPCAP). A process that holds none of them, or whose exec clears
//! them, makes no call that changes its capabilities: a sub-task delegated from
//! inside a task leaves no capset in its parent's record. Only syscalls:
//! async-signal-safe.

/// include/uapi/linux/capability.h
pub const DROPPED: &[u32] = &[
    9,  // CAP_LINUX_IMMUTABLE
    12, // CAP_NET_ADMIN
    13, // CAP_NET_RAW
    16, // CAP_SYS_MODULE
    17, // CAP_SYS_RAWIO
    19, // CAP_SYS_PTRACE
    20, // CAP_SYS_PACCT
    21, // CAP_SYS_ADMIN
    22, // CAP_SYS_BOOT
    23, // CAP_SYS_NICE
    24, // CAP_SYS_RESOURCE
    25, // CAP_SYS_TIME
    26, // CAP_SYS_TTY_CONFIG
    30, // CAP_AUDIT_CONTROL
    31, // CAP_SETFCAP
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

/// One 32-bit half of a thread's capability sets, as capget and capset take them.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct Data {
    pub effective: u32,
    pub permitted: u32,
    pub inheritable: u32,
}

/// The calling thread's capability sets (capget, version 3). Only a system call:
/// safe between fork and exec.
pub fn get() -> Option<[Data; 2]> {
    let mut hdr = Header { version: VERSION_3, pid: 0 };
    let mut d = [Data::default(); 2];
    // SAFETY: both pointers are to live values of the layout the kernel expects.
    let r = unsafe { libc::syscall(libc::SYS_capget, &raw mut hdr, d.as_mut_ptr()) };
    (r == 0).then_some(d)
}

/// Sets the calling thread's capability sets (capset, version 3); false if refused.
/// Only a system call: safe between fork and exec.
pub fn set(d: &[Data; 2]) -> bool {
    let mut hdr = Header { version: VERSION_3, pid: 0 };
    // SAFETY: as in [`get`].
    unsafe { libc::syscall(libc::SYS_capset, &raw mut hdr, d.as_ptr()) == 0 }
}

/// Drops [`DROPPED`] from the calling process; false if a call failed.
///
/// # Safety
/// Only syscalls; meant for the forked child before exec.
pub unsafe fn drop_all() -> bool {
    let Some(mut d) = get() else { return false };
    unsafe {
        // The kernel checks CAP_SETPCAP in the effective set.
        let setpcap = d[0].effective & (1 << CAP_SETPCAP) != 0;
        // Some listed capability stays in the bounding set.
        let mut bounded = false;
        for &c in DROPPED {
            // 1: in the bounding set; 0: not; EINVAL: a capability this kernel does
            // not know.
            if libc::prctl(libc::PR_CAPBSET_READ, c as libc::c_ulong, 0, 0, 0) != 1 {
                continue;
            }
            // EPERM without CAP_SETPCAP: a process that cannot shrink its bounding
            // set, and with no_new_privs cannot use it either (its current sets are
            // cleared below).
            if libc::prctl(libc::PR_CAPBSET_DROP, c as libc::c_ulong, 0, 0, 0) != 0 {
                if !(*libc::__errno_location() == libc::EPERM && !setpcap) {
                    return false;
                }
                bounded = true;
            }
        }
        // Only these: a service's other ambient capabilities (CAP_NET_BIND_SERVICE
        // given to an unprivileged agent) stay.
        for &c in DROPPED {
            let c = c as libc::c_ulong;
            if libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_IS_SET, c, 0, 0) == 1
                && libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_LOWER, c, 0, 0) != 0
            {
                return false;
            }
        }
        let (mut held, mut inheritable) = (false, false);
        for &c in DROPPED {
            let (w, bit) = ((c / 32) as usize, 1u32 << (c % 32));
            held |= (d[w].effective | d[w].permitted | d[w].inheritable) & bit != 0;
            inheritable |= d[w].inheritable & bit != 0;
            d[w].effective &= !bit;
            d[w].permitted &= !bit;
            d[w].inheritable &= !bit;
        }
        // The exec that follows computes the new permitted set as (inheritable & the
        // file's inheritable) | (the file's permitted & bounding) | ambient, root's
        // file sets counting as full: with none of these in the bounding, ambient or
        // inheritable set, it holds none of them, and effective follows. Then no
        // capset: a sub-task delegated from inside an observed root task leaves
        // none in its parent's record (it would be a priv.setid-capset alert).
        // Otherwise no_new_privs keeps the exec's permitted set within the current
        // one, which the capset clears.
        if !held || !(inheritable || bounded) {
            return true;
        }
        set(&d)
    }
}
