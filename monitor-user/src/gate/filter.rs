//! The gated syscalls and the seccomp filter that sends them to agentmon
//! (SECCOMP_RET_USER_NOTIF), installed in the task's root between fork and exec.
//!
//! Hand-written: a dozen BPF instructions. seccompiler (used for the denials) has no
//! user-notification action, and libseccomp would add a C library for this.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::task::Op;

/// How a gated syscall names its target(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `path` in arg `p` (relative to the cwd).
    Path { p: usize },
    /// `dirfd` in arg `d`, `path` in arg `p`, flags in arg `f` (if any).
    At { d: usize, p: usize, f: Option<usize> },
    /// An open fd in arg `fd`.
    Fd { fd: usize },
    /// rename-like: two (dirfd, path) pairs and optional flags.
    Two { d1: Option<usize>, p1: usize, d2: Option<usize>, p2: usize, f: Option<usize> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gated {
    pub name: &'static str,
    pub nr: i64,
    pub op: Op,
    pub shape: Shape,
    /// The final component is not followed (unlink, rename, lchown).
    pub nofollow: bool,
    /// Argument indices of the values the call applies (length; mode; uid, gid).
    pub vals: &'static [usize],
}

const fn g(name: &'static str, nr: i64, op: Op, shape: Shape, nofollow: bool) -> Gated {
    let vals: &'static [usize] = match op {
        Op::Truncate | Op::Chmod => match shape {
            Shape::At { .. } => &[2],
            _ => &[1],
        },
        Op::Chown => match shape {
            Shape::At { .. } => &[2, 3],
            _ => &[1, 2],
        },
        _ => &[],
    };
    Gated { name, nr, op, shape, nofollow, vals }
}

/// Every syscall an approval gate can hold, by operation.
pub const GATED: &[Gated] = &[
    g("unlink", libc::SYS_unlink, Op::Delete, Shape::Path { p: 0 }, true),
    g("rmdir", libc::SYS_rmdir, Op::Delete, Shape::Path { p: 0 }, true),
    g("unlinkat", libc::SYS_unlinkat, Op::Delete, Shape::At { d: 0, p: 1, f: Some(2) }, true),
    g("rename", libc::SYS_rename, Op::Rename, Shape::Two { d1: None, p1: 0, d2: None, p2: 1, f: None }, true),
    g(
        "renameat",
        libc::SYS_renameat,
        Op::Rename,
        Shape::Two { d1: Some(0), p1: 1, d2: Some(2), p2: 3, f: None },
        true,
    ),
    g(
        "renameat2",
        libc::SYS_renameat2,
        Op::Rename,
        Shape::Two { d1: Some(0), p1: 1, d2: Some(2), p2: 3, f: Some(4) },
        true,
    ),
    g("truncate", libc::SYS_truncate, Op::Truncate, Shape::Path { p: 0 }, false),
    g("ftruncate", libc::SYS_ftruncate, Op::Truncate, Shape::Fd { fd: 0 }, false),
    g("chmod", libc::SYS_chmod, Op::Chmod, Shape::Path { p: 0 }, false),
    g("fchmod", libc::SYS_fchmod, Op::Chmod, Shape::Fd { fd: 0 }, false),
    g("fchmodat", libc::SYS_fchmodat, Op::Chmod, Shape::At { d: 0, p: 1, f: None }, false),
    g("fchmodat2", 452, Op::Chmod, Shape::At { d: 0, p: 1, f: Some(3) }, false),
    g("chown", libc::SYS_chown, Op::Chown, Shape::Path { p: 0 }, false),
    g("lchown", libc::SYS_lchown, Op::Chown, Shape::Path { p: 0 }, true),
    g("fchown", libc::SYS_fchown, Op::Chown, Shape::Fd { fd: 0 }, false),
    g("fchownat", libc::SYS_fchownat, Op::Chown, Shape::At { d: 0, p: 1, f: Some(4) }, false),
    // Held and let go on (CONTINUE) once approved: only where the BPF LSM tier checks
    // that the file the kernel then runs is the one approved (see `gateable`).
    g("execve", libc::SYS_execve, Op::Exec, Shape::Path { p: 0 }, false),
    g("execveat", libc::SYS_execveat, Op::Exec, Shape::At { d: 0, p: 1, f: Some(4) }, false),
];

/// Operations a gate can hold on the Landlock tier. Others in `approval_required`
/// cannot be enforced there.
pub const GATEABLE: [Op; 5] = [Op::Delete, Op::Rename, Op::Truncate, Op::Chmod, Op::Chown];

/// Operations a gate can hold on a tier: `exec` too where the BPF LSM tier is
/// active (its `bprm_check_security` hook refuses a file other than the approved one;
/// without it, a path swapped after the approval would run unapproved).
pub fn gateable(lsm: bool) -> Vec<Op> {
    let mut v = GATEABLE.to_vec();
    if lsm {
        v.push(Op::Exec);
    }
    v
}

pub fn lookup(nr: i64) -> Option<&'static Gated> {
    GATED.iter().find(|s| s.nr == nr)
}

use super::abi::{AUDIT_ARCH_X86_64, X32_SYSCALL_BIT};

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt: 0, jf: 0, k }
}

fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16, jt, jf, k }
}

/// What an i386 call (`int 0x80`) or an x32 call meets: syscall tracepoints see
/// neither, so a task making them would act unseen. Enforced tasks are killed for
/// them ([`KILL`]: the process's exit with SIGSYS is what is seen); observed ones
/// send them to agentmon ([`REPORT`]), which records and lets them proceed.
pub const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;
pub const REPORT: u32 = libc::SECCOMP_RET_USER_NOTIF;

/// Native x86-64 calls fall through; the others get `foreign` ([`KILL`] or [`REPORT`]).
pub fn abi_prologue(foreign: u32) -> Vec<libc::sock_filter> {
    let ld = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    // offsetof(struct seccomp_data, nr) = 0, arch = 4.
    vec![
        stmt(ld, 4),
        jeq(AUDIT_ARCH_X86_64, 1, 0),
        stmt(ret, foreign),
        stmt(ld, 0),
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: X32_SYSCALL_BIT,
        },
        stmt(ret, foreign),
    ]
}

/// An observed task's filter: its i386 and x32 calls to agentmon, to be reported
/// (the tracepoints miss them); every native call allowed at once.
pub fn watch_program() -> Vec<libc::sock_filter> {
    let mut p = abi_prologue(REPORT);
    p.push(stmt((libc::BPF_RET | libc::BPF_K) as u16, libc::SECCOMP_RET_ALLOW));
    p
}

/// A request no enforced task may make, by syscall: the command (its low 32 bits,
/// as the kernel reads it) in argument 1.
#[derive(Debug)]
pub struct Refused {
    pub name: &'static str,
    pub nr: i64,
    /// (command, its name, what making it attempts).
    pub cmds: &'static [(u32, &'static str, &'static str)],
}

/// Refused by the gate, which records each (the syscall tracepoints of calls this
/// frequent are not attached for everyone's sake). include/uapi/asm-generic/fcntl.h,
/// sockios.h, ioctls.h, linux/userfaultfd.h.
pub const REFUSED: [Refused; 2] = [
    // Routes by which a file's owner signals a process of its choosing: a root agent
    // could aim SIGIO at agentmon, which no signal hook sees before it is sent.
    Refused {
        name: "fcntl",
        nr: libc::SYS_fcntl,
        cmds: &[
            (libc::F_SETOWN as u32, "F_SETOWN", "signal routing"),
            (10, "F_SETSIG", "signal routing"),
            (15, "F_SETOWN_EX", "signal routing"),
            // A lease needs only the file's owner: a root agent's read lease on
            // agentmon's file holds agentmon's next open of it for writing for
            // lease-break-time (45 s by default).
            (1024, "F_SETLEASE", "lease"),
        ],
    },
    Refused {
        name: "ioctl",
        nr: libc::SYS_ioctl,
        cmds: &[
            (0x8901, "FIOSETOWN", "signal routing"),
            (0x8902, "SIOCSPGRP", "signal routing"),
            // Typing into the terminal agentmon and its operator share (TIOCLINUX
            // can paste the console's selection): a ^C, ^\ or a command for the
            // operator's shell.
            (0x5412, "TIOCSTI", "terminal input"),
            (0x541c, "TIOCLINUX", "terminal input"),
            // /dev/userfaultfd's way to what the userfaultfd syscall gives.
            (0xaa00, "USERFAULTFD_IOC_NEW", "userfaultfd"),
            // A file's flags and project id, through any descriptor, even read-only:
            // a root agent owns agentmon's files (its records fail on an immutable or
            // append-only one; CAP_LINUX_IMMUTABLE is dropped too) and a project
            // quota could fill under them. linux/fs.h (the 32-bit SETFLAGS form too).
            (0x4008_6602, "FS_IOC_SETFLAGS", "file flags"),
            (0x4004_6602, "FS_IOC32_SETFLAGS", "file flags"),
            (0x401c_5820, "FS_IOC_FSSETXATTR", "file flags"),
            // Through a descriptor opened only to read, past every layer: a file made
            // read-only for good (fs-verity), a directory whose new files need a key
            // nobody has (fscrypt), and btrfs subvolumes made, snapshotted, deleted or
            // made read-only (no mkdir or unlink hook sees them). linux/fsverity.h,
            // linux/fscrypt.h, linux/btrfs.h.
            (0x4080_6685, "FS_IOC_ENABLE_VERITY", "file system"),
            (0x800c_6613, "FS_IOC_SET_ENCRYPTION_POLICY", "file system"),
            (0x5000_9401, "BTRFS_IOC_SNAP_CREATE", "file system"),
            (0x5000_940e, "BTRFS_IOC_SUBVOL_CREATE", "file system"),
            (0x5000_940f, "BTRFS_IOC_SNAP_DESTROY", "file system"),
            (0x5000_9417, "BTRFS_IOC_SNAP_CREATE_V2", "file system"),
            (0x5000_9418, "BTRFS_IOC_SUBVOL_CREATE_V2", "file system"),
            (0x4008_941a, "BTRFS_IOC_SUBVOL_SETFLAGS", "file system"),
            (0x5000_943f, "BTRFS_IOC_SNAP_DESTROY_V2", "file system"),
        ],
    },
];

/// A call no enforced task may aim at a process other than the caller: refused
/// unless its arguments take one of the `own` forms (each a list of 32-bit words
/// of `struct seccomp_data`, as offsets, and the values they must hold).
#[derive(Debug)]
pub struct Aimed {
    pub name: &'static str,
    pub nr: i64,
    pub own: &'static [&'static [(u32, u32)]],
    pub attempt: &'static str,
}

/// offsetof(struct seccomp_data, args[i]), its low and high words (little-endian).
const fn lo(i: u32) -> u32 {
    16 + 8 * i
}
const fn hi(i: u32) -> u32 {
    20 + 8 * i
}

/// Same-owner checks are all these calls make: a root agent could lower agentmon's
/// priority or I/O class, make it SCHED_IDLE, or set its CPU limit (the kernel then
/// kills it, past every signal hook), and the same for any root process on the
/// host. Allowed: the caller itself (pid 0; glibc's setrlimit, nice(1), ionice(1)
/// and chrt(1) running a command all use it), and reading another's limits. A pid
/// is an int to these calls: its low word.
pub const AIMED: [Aimed; 6] = [
    Aimed {
        name: "sched_setscheduler",
        nr: libc::SYS_sched_setscheduler,
        own: &[&[(lo(0), 0)]],
        attempt: "scheduling",
    },
    Aimed {
        name: "sched_setparam",
        nr: libc::SYS_sched_setparam,
        own: &[&[(lo(0), 0)]],
        attempt: "scheduling",
    },
    Aimed {
        name: "sched_setattr",
        nr: libc::SYS_sched_setattr,
        own: &[&[(lo(0), 0)]],
        attempt: "scheduling",
    },
    // setpriority(which, who, prio): PRIO_PROCESS (0) of the caller; PRIO_USER 0 is
    // every process of the caller's uid.
    Aimed {
        name: "setpriority",
        nr: libc::SYS_setpriority,
        own: &[&[(lo(0), 0), (lo(1), 0)]],
        attempt: "scheduling",
    },
    // ioprio_set(which, who, ioprio): IOPRIO_WHO_PROCESS (1) of the caller.
    Aimed {
        name: "ioprio_set",
        nr: libc::SYS_ioprio_set,
        own: &[&[(lo(0), 1), (lo(1), 0)]],
        attempt: "scheduling",
    },
    // prlimit64(pid, resource, new, old): the caller's, or no new limit (a read).
    Aimed {
        name: "prlimit64",
        nr: libc::SYS_prlimit64,
        own: &[&[(lo(0), 0)], &[(lo(2), 0), (hi(2), 0)]],
        attempt: "process limits",
    },
];

/// A refused request: its syscall, its command (None: a call of [`AIMED`]), and what
/// making it attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub syscall: &'static str,
    pub request: Option<&'static str>,
    pub attempt: &'static str,
}

impl Refusal {
    /// What refusals are counted by: the command, or the call.
    pub fn key(&self) -> &'static str {
        self.request.unwrap_or(self.syscall)
    }
}

/// The refused request a call makes, if it is one. `args`: the call's arguments as
/// the kernel gave them.
pub fn refused(nr: i64, args: &[u64; 6]) -> Option<Refusal> {
    if let Some(a) = AIMED.iter().find(|a| a.nr == nr) {
        let word = |off: u32| {
            let v = args[((off - 16) / 8) as usize];
            if off.is_multiple_of(8) { v as u32 } else { (v >> 32) as u32 }
        };
        let own = a.own.iter().any(|form| form.iter().all(|&(off, v)| word(off) == v));
        return (!own).then_some(Refusal { syscall: a.name, request: None, attempt: a.attempt });
    }
    let r = REFUSED.iter().find(|r| r.nr == nr)?;
    let (_, name, attempt) = r.cmds.iter().find(|c| c.0 as u64 == args[1] & 0xffff_ffff)?;
    Some(Refusal { syscall: r.name, request: Some(name), attempt })
}

/// The checks of [`REFUSED`]: a call making one returns `action`; any other falls
/// through with the accumulator changed (what follows loads what it reads).
pub fn refusals(action: u32) -> Vec<libc::sock_filter> {
    let ld = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    // offsetof(struct seccomp_data, args[1]): its low word on little-endian x86-64.
    const ARG1_LO: u32 = 24;
    let mut p = Vec::new();
    for r in &REFUSED {
        let n = r.cmds.len();
        p.push(stmt(ld, 0));
        // Another syscall: over the argument load, the compares, the JA and the RET.
        p.push(jeq(r.nr as u32, 0, (n + 3) as u8));
        p.push(stmt(ld, ARG1_LO));
        for (i, (cmd, ..)) in r.cmds.iter().enumerate() {
            // Match: over the remaining compares and the JA, to the RET.
            p.push(jeq(*cmd, (n - i) as u8, 0));
        }
        p.push(stmt((libc::BPF_JMP | libc::BPF_JA) as u16, 1));
        p.push(stmt(ret, action));
    }
    for a in &AIMED {
        // ld nr; jeq; then per form: (ld word; jeq value) each, a mismatch on to the
        // next form, a whole match over the RET; no form matched: the RET.
        let words: usize = a.own.iter().map(|f| 2 * f.len() + 1).sum();
        p.push(stmt(ld, 0));
        p.push(jeq(a.nr as u32, 0, (words + 1) as u8));
        let mut left = words;
        for form in a.own {
            let len = 2 * form.len() + 1;
            for (i, &(off, v)) in form.iter().enumerate() {
                p.push(stmt(ld, off));
                // A mismatch: over the rest of this form (its compares and the JA).
                p.push(jeq(v, 0, (len - 2 * i - 2) as u8));
            }
            // Matched: over the remaining forms and the RET.
            left -= len;
            p.push(stmt((libc::BPF_JMP | libc::BPF_JA) as u16, (left + 1) as u32));
        }
        p.push(stmt(ret, action));
    }
    p
}

/// The filter: [`abi_prologue`], the [`REFUSED`] requests and the gated syscalls of
/// `ops` to the listener, the rest allowed.
pub fn program(ops: &[Op]) -> Vec<libc::sock_filter> {
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    let nrs: Vec<u32> = GATED.iter().filter(|s| ops.contains(&s.op)).map(|s| s.nr as u32).collect();
    let mut p = abi_prologue(KILL);
    p.extend(refusals(libc::SECCOMP_RET_USER_NOTIF));
    p.push(stmt((libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, 0));
    let n = nrs.len();
    for (i, nr) in nrs.iter().enumerate() {
        // Match: jump over the remaining compares and the ALLOW to the NOTIF.
        p.push(jeq(*nr, (n - i) as u8, 0));
    }
    p.push(stmt(ret, libc::SECCOMP_RET_ALLOW));
    p.push(stmt(ret, libc::SECCOMP_RET_USER_NOTIF));
    p
}

/// Child side, between fork and exec: installs `prog` with a new listener and hands
/// the listener to agentmon over `chan` (SCM_RIGHTS), then closes it: the task must
/// never hold its own listener. Only syscalls; async-signal-safe. A child with
/// CAP_SYS_ADMIN (agentmon's, run by root) installs it as it is, so an observed
/// command keeps its setuid programs; otherwise no_new_privs comes first, as the
/// kernel requires. (An enforced root task still has CAP_SYS_ADMIN here, which its
/// exec drops; its denial filter, installed after this, sets no_new_privs.)
///
/// # Safety
/// To be called in the forked child only, with `prog` and `chan` prepared before the fork.
pub unsafe fn install_and_send(prog: &[libc::sock_filter], chan: RawFd) -> bool {
    unsafe {
        let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr() as *mut _ };
        let install = || {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                &raw const fprog,
            )
        };
        let mut fd = install();
        if fd < 0 && *libc::__errno_location() == libc::EACCES {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return false;
            }
            fd = install();
        }
        if fd < 0 {
            return false;
        }
        let fd = fd as RawFd;
        let ok = send_fd(chan, fd);
        libc::close(fd);
        ok
    }
}

/// Sends `fd` with one data byte over the unix socket `chan`.
unsafe fn send_fd(chan: RawFd, fd: RawFd) -> bool {
    // >= CMSG_SPACE(sizeof(int)), aligned for cmsghdr.
    let mut cbuf = [0u64; 8];
    let mut byte = [1u8];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<RawFd>() as u32) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
        libc::sendmsg(chan, &msg, 0) == 1
    }
}

/// agentmon side: receives the listener the child sent (waits up to `ms`).
pub fn recv_listener(chan: &OwnedFd, ms: i32) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut pfd = [nix::poll::PollFd::new(
        unsafe { std::os::fd::BorrowedFd::borrow_raw(chan.as_raw_fd()) },
        nix::poll::PollFlags::POLLIN,
    )];
    if nix::poll::poll(&mut pfd, nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX))?
        == 0
    {
        return Err(std::io::Error::other("the task's root did not hand over its approval listener"));
    }
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut cmsg = nix::cmsg_space!(RawFd);
    let msg = recvmsg::<()>(chan.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just installed this fd for us.
            return Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) });
        }
    }
    Err(std::io::Error::other("the task's root sent no listener"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a classic BPF seccomp program (the instructions the filters here use) on
    /// (nr, args[1]) of a native call.
    fn run(p: &[libc::sock_filter], nr: i64, arg1: u64) -> u32 {
        run_args(p, nr, &[0, arg1, 0, 0, 0, 0])
    }

    fn run_args(p: &[libc::sock_filter], nr: i64, args: &[u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&(nr as u32).to_ne_bytes());
        data[4..8].copy_from_slice(&AUDIT_ARCH_X86_64.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = p[pc];
            match i.code as u32 {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                    let k = i.k as usize;
                    a = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
                }
                c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => {
                    pc += if a == i.k { i.jt } else { i.jf } as usize;
                }
                c if c == libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K => {
                    pc += if a >= i.k { i.jt } else { i.jf } as usize;
                }
                c if c == libc::BPF_JMP | libc::BPF_JA => pc += i.k as usize,
                c if c == libc::BPF_RET | libc::BPF_K => return i.k,
                c => panic!("instruction {c:#x} at {pc}"),
            }
            pc += 1;
        }
    }

    #[test]
    fn program_jumps_land_on_notif() {
        let p = program(&[Op::Delete, Op::Rename]);
        let notif = p.len() - 1;
        assert_eq!((p[notif - 1].k, p[notif].k), (libc::SECCOMP_RET_ALLOW, libc::SECCOMP_RET_USER_NOTIF));
        for s in GATED.iter() {
            let want = if matches!(s.op, Op::Delete | Op::Rename) {
                libc::SECCOMP_RET_USER_NOTIF
            } else {
                libc::SECCOMP_RET_ALLOW
            };
            assert_eq!(run(&p, s.nr, 0), want, "{}", s.name);
        }
        assert_eq!(run(&p, libc::SYS_getpid, 0), libc::SECCOMP_RET_ALLOW);
    }

    #[test]
    fn refused_requests_go_to_the_listener_whatever_the_high_bits() {
        let p = program(&[]);
        for r in &REFUSED {
            for (cmd, name, _) in r.cmds {
                for arg in [*cmd as u64, 0xdead_0000_0000 | *cmd as u64] {
                    assert_eq!(run(&p, r.nr, arg), libc::SECCOMP_RET_USER_NOTIF, "{} {name}", r.name);
                    assert_eq!(refused(r.nr, &[0, arg, 0, 0, 0, 0]).and_then(|x| x.request), Some(*name));
                }
            }
            // Other requests of the same call, and the same numbers in another call.
            assert_eq!(run(&p, r.nr, 0x5401), libc::SECCOMP_RET_ALLOW, "{} TCGETS", r.name);
        }
        assert_eq!(run(&p, libc::SYS_write, 0x5412), libc::SECCOMP_RET_ALLOW);
        assert_eq!(refused(libc::SYS_write, &[0, 0x5412, 0, 0, 0, 0]), None);
        let deny = refusals(libc::SECCOMP_RET_TRACE);
        assert_eq!(
            run(
                &[deny, vec![stmt((libc::BPF_RET | libc::BPF_K) as u16, 7)]].concat(),
                libc::SYS_ioctl,
                0x5412
            ),
            libc::SECCOMP_RET_TRACE
        );
    }

    #[test]
    fn calls_aimed_at_another_process_go_to_the_listener() {
        let p = program(&[]);
        let deny =
            [refusals(libc::SECCOMP_RET_TRACE), vec![stmt((libc::BPF_RET | libc::BPF_K) as u16, 7)]].concat();
        let pid = 4242;
        use libc::{SYS_ioprio_set as IOPRIO, SYS_prlimit64 as PRLIMIT, SYS_setpriority as PRIO};
        let cases: &[(i64, [u64; 6], bool)] = &[
            (libc::SYS_sched_setscheduler, [0, 5, 0x1000, 0, 0, 0], false),
            (libc::SYS_sched_setscheduler, [pid, 5, 0x1000, 0, 0, 0], true),
            // The kernel reads an int: 0, the caller.
            (libc::SYS_sched_setscheduler, [0xdead_0000_0000, 5, 0x1000, 0, 0, 0], false),
            (libc::SYS_sched_setparam, [pid, 0x1000, 0, 0, 0, 0], true),
            (libc::SYS_sched_setattr, [pid, 0x1000, 0, 0, 0, 0], true),
            (libc::SYS_sched_setattr, [0, 0x1000, 0, 0, 0, 0], false),
            (PRIO, [0, 0, 10, 0, 0, 0], false),
            (PRIO, [0, pid, 10, 0, 0, 0], true),
            (PRIO, [1, 0, 10, 0, 0, 0], true), // PRIO_PGRP
            (PRIO, [2, 0, 10, 0, 0, 0], true), // PRIO_USER: every process of the uid
            (IOPRIO, [1, 0, 0x6000, 0, 0, 0], false),
            (IOPRIO, [1, pid, 0x6000, 0, 0, 0], true),
            (IOPRIO, [3, 0, 0x6000, 0, 0, 0], true),
            (PRLIMIT, [0, 0, 0x1000, 0, 0, 0], false),
            (PRLIMIT, [pid, 0, 0, 0x2000, 0, 0], false), // a read
            (PRLIMIT, [pid, 0, 0x1000, 0, 0, 0], true),
            (PRLIMIT, [pid, 0, 0x7f00_0000_0000, 0, 0, 0], true), // only the high word
            (libc::SYS_getpid, [pid, 0, 0, 0, 0, 0], false),
        ];
        for (nr, args, refuse) in cases {
            let (want, deny_want) = if *refuse {
                (libc::SECCOMP_RET_USER_NOTIF, libc::SECCOMP_RET_TRACE)
            } else {
                (libc::SECCOMP_RET_ALLOW, 7)
            };
            assert_eq!(run_args(&p, *nr, args), want, "{nr} {args:?}");
            assert_eq!(run_args(&deny, *nr, args), deny_want, "{nr} {args:?}");
            assert_eq!(refused(*nr, args).is_some(), *refuse, "{nr} {args:?}");
        }
    }

    #[test]
    fn watch_program_reports_foreign_calls_only() {
        let p = watch_program();
        assert_eq!(p.len(), 7);
        // Both foreign branches return REPORT; the native path falls through to ALLOW.
        assert_eq!([p[2].k, p[5].k], [REPORT, REPORT]);
        assert_eq!(p[6].k, libc::SECCOMP_RET_ALLOW);
        assert_eq!(abi_prologue(KILL)[2].k, libc::SECCOMP_RET_KILL_PROCESS);
    }

    #[test]
    fn every_gateable_op_has_syscalls() {
        for op in gateable(true) {
            assert!(GATED.iter().any(|s| s.op == op), "{op:?}");
        }
        assert!(!gateable(false).contains(&Op::Exec));
        assert_eq!(lookup(libc::SYS_unlinkat).map(|s| s.name), Some("unlinkat"));
    }
}
