//! Layer: outright syscall denials for enforced tasks, as a seccomp-BPF filter
//! (EPERM). Syscalls no task may use (they escape monitoring or control the
//! kernel), and socket families the task's scope does not need.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

/// Denied for every enforced task: io_uring bypasses syscall monitoring; the rest
/// trace other processes, load kernel code or change the kernel's mounts.
pub const DENIED: &[(&str, i64)] = &[
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("fsopen", libc::SYS_fsopen),
    ("move_mount", libc::SYS_move_mount),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    // Would let a root agent copy agentmon's fds (the approval listener among them).
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    // Pages the agent serves itself: the classic tool for widening a kernel race
    // (container runtimes' default profiles refuse it too); also /dev/userfaultfd's
    // ioctl (gate::filter::REFUSED).
    ("userfaultfd", libc::SYS_userfaultfd),
    // Extended attributes: no layer keeps them to the write scope on this tier, so
    // an enforced task may change none (stricter than declared, never weaker).
    ("setxattr", libc::SYS_setxattr),
    ("lsetxattr", libc::SYS_lsetxattr),
    ("fsetxattr", libc::SYS_fsetxattr),
    ("removexattr", libc::SYS_removexattr),
    ("lremovexattr", libc::SYS_lremovexattr),
    ("fremovexattr", libc::SYS_fremovexattr),
    // Their *at forms (Linux 6.13), by number: older kernels answer ENOSYS anyway.
    ("setxattrat", 463),
    ("removexattrat", 466),
    // A file's flags and project id by path (Linux 6.17): FS_IOC_FSSETXATTR's way
    // (gate::filter::REFUSED).
    ("file_setattr", 469),
    // The new mount API: a detached copy of a tree (open_tree) has a root of its own,
    // above which no scope or sensitive pattern can be seen.
    ("open_tree", 428),
    ("fsconfig", 431),
    ("fsmount", 432),
    ("fspick", 433),
    ("mount_setattr", 442),
    ("setns", libc::SYS_setns),
];

/// Can this kernel install seccomp filters?
pub fn available() -> bool {
    // PR_GET_SECCOMP answers 0 (not in seccomp mode) where seccomp is built in.
    unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) >= 0 }
}

/// Can this kernel hold syscalls for a supervisor (SECCOMP_RET_USER_NOTIF)?
pub fn user_notif_available() -> bool {
    let action: u32 = libc::SECCOMP_RET_USER_NOTIF;
    // SAFETY: SECCOMP_GET_ACTION_AVAIL reads one u32.
    unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_GET_ACTION_AVAIL, 0, &raw const action) == 0 }
}

/// Which socket families the task may not create.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sockets {
    /// No UDP sockets (a task with no network scope). Raw IP sockets are never allowed.
    pub no_datagram: bool,
    /// No unix sockets (a task that declares no unix endpoint).
    pub no_unix: bool,
}

fn cond(arg: u8, op: SeccompCmpOp, v: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, v).map_err(|e| e.to_string())
}

/// Calls of [`DENIED`] the BPF LSM tier keeps to the scope instead (extended
/// attributes: its hooks check them against the write scope).
pub const LSM_KEEPS: &[&str] = &[
    "setxattr",
    "lsetxattr",
    "fsetxattr",
    "removexattr",
    "lremovexattr",
    "fremovexattr",
    "setxattrat",
    "removexattrat",
];

/// The filter of an enforced task. `lsm`: the BPF LSM tier enforces its files,
/// so extended attributes and memfds are left to its hooks.
pub fn filter(sockets: Sockets, lsm: bool) -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED
        .iter()
        .filter(|(name, _)| !(lsm && LSM_KEEPS.contains(name)))
        .map(|(_, nr)| (*nr, Vec::new()))
        .collect();
    let mut socket_rules = Vec::new();
    let rule = |c: Vec<SeccompCondition>| SeccompRule::new(c).map_err(|e| e.to_string());
    // Families other than unix, IPv4, IPv6 and netlink (which getaddrinfo needs): never.
    // Packet sockets sniff and forge traffic; vsock, RDS, TIPC, Bluetooth, CAN and the
    // rest reach other hosts or devices where no cgroup hook looks.
    let family_rule = |arg: u8| -> Result<SeccompRule, String> {
        rule(
            [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6, libc::AF_NETLINK]
                .iter()
                .map(|f| cond(arg, SeccompCmpOp::Ne, *f as u64))
                .collect::<Result<_, _>>()?,
        )
    };
    socket_rules.push(family_rule(0)?);
    if sockets.no_unix {
        socket_rules.push(rule(vec![cond(0, SeccompCmpOp::Eq, libc::AF_UNIX as u64)?])?);
    }
    for family in [libc::AF_INET, libc::AF_INET6] {
        // The cgroup guard sees TCP connects and UDP sends only. Raw IP sockets, and
        // every other type (SCTP's SOCK_SEQPACKET, DCCP, ...), bypass it: never.
        // SOCK_PACKET (10) on AF_INET is made an AF_PACKET socket by __sock_create.
        for ty in [libc::SOCK_RAW, libc::SOCK_RDM, libc::SOCK_SEQPACKET, libc::SOCK_DCCP, 10] {
            socket_rules.push(rule(vec![
                cond(0, SeccompCmpOp::Eq, family as u64)?,
                cond(1, SeccompCmpOp::MaskedEq(0xf), ty as u64)?,
            ])?);
        }
        // Nor any protocol but TCP for streams (MPTCP, SCTP) and UDP for datagrams:
        // an ICMP "ping" socket (SOCK_DGRAM, IPPROTO_ICMP; open to every group on
        // Debian) sends its payload to any address with only connect() guarded.
        for (ty, proto) in [(libc::SOCK_STREAM, libc::IPPROTO_TCP), (libc::SOCK_DGRAM, libc::IPPROTO_UDP)] {
            socket_rules.push(rule(vec![
                cond(0, SeccompCmpOp::Eq, family as u64)?,
                cond(1, SeccompCmpOp::MaskedEq(0xf), ty as u64)?,
                cond(2, SeccompCmpOp::Ne, 0)?,
                cond(2, SeccompCmpOp::Ne, proto as u64)?,
            ])?);
        }
    }
    if sockets.no_datagram {
        for family in [libc::AF_INET, libc::AF_INET6] {
            socket_rules.push(rule(vec![
                cond(0, SeccompCmpOp::Eq, family as u64)?,
                cond(1, SeccompCmpOp::MaskedEq(0xf), libc::SOCK_DGRAM as u64)?,
            ])?);
        }
    }
    rules.insert(libc::SYS_socket, socket_rules);
    // Options that send a packet elsewhere than the address the cgroup guard checked:
    // an IPv6 routing header (a segment routing header needs no privilege: the packet
    // goes to the segment the caller names), the option headers that may carry one,
    // the RFC 2292 forms, and IPv4 options (source routing).
    let rerouting = [
        (libc::IPPROTO_IPV6, libc::IPV6_RTHDR),
        (libc::IPPROTO_IPV6, libc::IPV6_RTHDRDSTOPTS),
        (libc::IPPROTO_IPV6, libc::IPV6_DSTOPTS),
        (libc::IPPROTO_IPV6, libc::IPV6_HOPOPTS),
        (libc::IPPROTO_IPV6, libc::IPV6_2292RTHDR),
        (libc::IPPROTO_IPV6, libc::IPV6_2292DSTOPTS),
        (libc::IPPROTO_IPV6, libc::IPV6_2292HOPOPTS),
        (libc::IPPROTO_IPV6, libc::IPV6_2292PKTOPTIONS),
        (libc::IPPROTO_IP, libc::IP_OPTIONS),
    ];
    rules.insert(
        libc::SYS_setsockopt,
        rerouting
            .iter()
            .map(|(level, name)| {
                rule(vec![
                    cond(1, SeccompCmpOp::Eq, *level as u64)?,
                    cond(2, SeccompCmpOp::Eq, *name as u64)?,
                ])
            })
            .collect::<Result<_, _>>()?,
    );
    // New mount or user namespaces (private mounts, namespace-local root).
    let ns = [libc::CLONE_NEWNS as u64, libc::CLONE_NEWUSER as u64];
    let ns_rules = |arg: u8| -> Result<Vec<SeccompRule>, String> {
        ns.iter().map(|f| rule(vec![cond(arg, SeccompCmpOp::MaskedEq(*f), *f)?])).collect()
    };
    rules.insert(libc::SYS_unshare, ns_rules(0)?);
    // A seccomp filter of the task's own with a listener: once agentmon's gate
    // listener is gone (agentmon ended before a process the task left behind), the
    // kernel would let a new one be made, and a filter's notification goes to the
    // newest listener, which could let through what the gate refuses. Filters
    // without one are the task's business. (The gate's own filter is installed
    // before this one.)
    rules.insert(
        libc::SYS_seccomp,
        vec![rule(vec![
            cond(0, SeccompCmpOp::Eq, libc::SECCOMP_SET_MODE_FILTER as u64)?,
            cond(
                1,
                SeccompCmpOp::MaskedEq(libc::SECCOMP_FILTER_FLAG_NEW_LISTENER),
                libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            )?,
        ])?],
    );
    rules.insert(libc::SYS_clone, ns_rules(0)?);
    // Device nodes: a block or character device made in the scope is a door to the
    // device (mknod's mode is argument 1, mknodat's 2).
    let dev_rules = |arg: u8| -> Result<Vec<SeccompRule>, String> {
        [libc::S_IFBLK, libc::S_IFCHR]
            .iter()
            .map(|t| rule(vec![cond(arg, SeccompCmpOp::MaskedEq(libc::S_IFMT as u64), *t as u64)?]))
            .collect()
    };
    rules.insert(libc::SYS_mknod, dev_rules(1)?);
    rules.insert(libc::SYS_mknodat, dev_rules(2)?);
    // A datagram socket pair can still send to any unix socket path (sendto with an
    // address): only stream pairs (the mailbox's replies), as a unix socket of its
    // own is refused too.
    let mut pair_rules = vec![family_rule(0)?];
    if sockets.no_unix {
        pair_rules.push(rule(vec![cond(1, SeccompCmpOp::MaskedEq(0xf), libc::SOCK_DGRAM as u64)?])?);
    }
    rules.insert(libc::SYS_socketpair, pair_rules);
    // Landlock does not limit anonymous files: a memfd holding code could be run from
    // memory (fexecve, /proc/self/fd/N) with nothing in scope.exec. A memfd must be
    // sealed against execution at birth (MFD_NOEXEC_SEAL, Linux 6.3+).
    // The BPF LSM tier refuses to execute any file with no name or no links.
    const MFD_NOEXEC_SEAL: u64 = 0x8;
    if !lsm {
        rules.insert(
            libc::SYS_memfd_create,
            vec![rule(vec![cond(1, SeccompCmpOp::MaskedEq(MFD_NOEXEC_SEAL), 0)?])?],
        );
    }
    let f = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )
    .map_err(|e| e.to_string())?;
    let mut prog: BpfProgram = f.try_into().map_err(|e: seccompiler::BackendError| e.to_string())?;
    // seccompiler checks the arch (i386 is killed) but not the x32 bit, so x32 calls,
    // which syscall tracepoints do not see, would pass its list by number: put the
    // gate's ABI check first. Jumps are relative, so prepending keeps the rest intact.
    let abi = crate::gate::filter::abi_prologue(crate::gate::filter::KILL)
        .into_iter()
        .map(|i| seccompiler::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: i.k });
    // clone3 takes its flags in memory a filter cannot read, and CLONE_INTO_CGROUP
    // would start a child outside the task's cgroup (past the network guard and
    // containment): ENOSYS, on which the C library falls back to clone. The prologue
    // leaves the syscall number loaded.
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    let no_clone3 = [
        seccompiler::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_clone3 as u32,
        },
        seccompiler::sock_filter {
            code: ret,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        },
    ];
    // The fcntl and ioctl requests no task may make (gate::filter::REFUSED): TRACE,
    // which the task's gate filter outranks with USER_NOTIF (agentmon refuses and
    // records each); with no gate in the task's stack, and no tracer, the kernel
    // answers ENOSYS. (ERRNO would outrank the gate's notification: unrecorded.)
    let refusals = crate::gate::filter::refusals(libc::SECCOMP_RET_TRACE)
        .into_iter()
        .map(|i| seccompiler::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: i.k });
    prog.splice(0..0, abi.chain(no_clone3).chain(refusals));
    Ok(prog)
}
