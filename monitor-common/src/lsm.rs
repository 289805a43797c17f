//! The BPF LSM tier: what userspace grants an enforced task and what the LSM hooks
//! (`monitor-ebpf/src/lsm.rs`) check before the kernel acts.
//!
//! A grant is a right on an inode, named by (device, inode number) as the kernel
//! keeps them (`super_block.s_dev`, `inode.i_ino`), under a task cookie. A hook
//! that needs a right walks from the object up to the root of the mount namespace
//! (crossing mounts, as Landlock does) and allows the call if some ancestor, or the
//! object itself, carries the right for the caller's task:
//!
//! ```text
//! FS_RULES  { ino: u64, dev: u32, task: u32 } -> rights (bits of `right`)
//! LSM_TASK  task cookie                        -> LsmTask { flags, rules }
//! EXEC_OK   tid                                -> ExecOk  (an approved exec)
//! ```
//!
//! Entries under task 0 are agentmon's own files (`right::PROTECTED`): no enforced
//! task may change them, whatever it was granted, and they are looked for on the
//! file system's own parent chain too, so a bind mount does not hide them.

/// Key of `FS_RULES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FsKey {
    pub ino: u64,
    /// `s_dev` in the kernel's encoding (major << 20 | minor).
    pub dev: u32,
    /// Task cookie; 0 for agentmon's protected files.
    pub task: u32,
}

/// Rights in `FS_RULES` values.
pub mod right {
    /// Open for writing, create files, directories, nodes and links, truncate, change
    /// mode, owner and extended attributes, be the target of a rename.
    pub const WRITE: u32 = 1 << 0;
    /// Remove a name (unlink, rmdir, the source of a rename).
    pub const REMOVE: u32 = 1 << 1;
    /// Execute (the file, or every file beneath the directory).
    pub const EXEC: u32 = 1 << 2;
    /// Read files of the sensitive set (beneath `scope.read`).
    pub const READ_SENSITIVE: u32 = 1 << 3;
    /// Under task 0: agentmon's own file or directory; never writable by a task.
    pub const PROTECTED: u32 = 1 << 4;
    /// Remove this very name (an exact delete pattern); REMOVE on a directory is for
    /// what is beneath it, not the directory itself (as Landlock).
    pub const REMOVE_EXACT: u32 = 1 << 5;
    /// Under task 0, with PROTECTED: agentmon's private key; never readable by an
    /// enforced task (with it the task would sign as agentmon).
    pub const SECRET: u32 = 1 << 6;
}

/// Flags of [`LsmTask`].
pub mod lflags {
    /// Writes, creates, removals, metadata changes are checked against the grants.
    pub const FILES: u32 = 1 << 0;
    /// Executions are checked against the EXEC grants; anonymous files never run.
    pub const EXEC: u32 = 1 << 1;
    /// Reads of the sensitive set outside READ_SENSITIVE grants are refused.
    pub const DENY_SENSITIVE: u32 = 1 << 2;
    /// Signals only to processes of the same task.
    pub const SIGNALS: u32 = 1 << 3;
    /// Every exec must match an approval in `EXEC_OK` (the exec gate).
    pub const EXEC_APPROVED: u32 = 1 << 4;
}

/// Value of `LSM_TASK`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LsmTask {
    /// [`lflags`].
    pub flags: u32,
    /// Task cookie whose grants apply (a sub-task that is not enforced itself keeps
    /// its enforced parent's).
    pub rules: u32,
    /// The task this one was delegated from (0: none): it may signal this one.
    pub up: u32,
    pub _pad: u32,
}

/// Value of `EXEC_OK`: the file an approved exec may run. The gate writes it
/// before letting the held call go on; `bprm_check_security` compares the file the
/// kernel is about to run with it, so a path swapped after the approval runs nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecOk {
    pub ino: u64,
    pub dev: u32,
    pub _pad: u32,
    /// The `linux_binprm` of the exec that matched (0 until one did): later rounds
    /// of the same exec (a script's interpreter) pass, other execs do not.
    pub bprm: u64,
}

/// Value of `REFUSED_OPEN` (thread id ->): an open that `file_open` refused, with the
/// file it reached. The open's exit (failed with EACCES) takes it when its own saved
/// arguments are these (the same call), and names the file the kernel refused, not
/// the name the caller passed: a symlink or a hard link says nothing of the file, and
/// another thread may rewrite the name before the exit reads it. A failed read-only
/// open is otherwise reported by its name only. A failed exec drops the entry its
/// refused open left; other calls whose opens the hook refuses (io_uring, a fanotify
/// read) leave one no open exit matches, which the LRU map drops.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refused {
    /// The caller's first three syscall arguments when the hook ran.
    pub args: [u64; 3],
    /// The refused file's `f_path` (kernel pointers, for the exit's path walk) and
    /// its dentry's inode then: the walk is made only if the dentry still has it
    /// (nothing holds the dentry once the open failed).
    pub dentry: u64,
    pub mnt: u64,
    pub inode: u64,
    /// The refused file's `f_mode`: what it was opened for, as the kernel took it
    /// (openat2's flags in the caller's memory may say otherwise by the exit).
    pub fmode: u32,
    /// `pflags` the open's event takes ([`crate::pflags::REFUSED_FOR_FILE`] with them).
    pub pflags: u16,
    pub _pad: u16,
}

/// Value of `TRUNC_OPEN` (thread id ->): a call in which the kernel truncated a file
/// (the BPF LSM tier's truncate hooks), for openat2's exit: its saved arguments and
/// the truncated file's dentry, which must be the opened file's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TruncMark {
    pub args: [u64; 3],
    pub dentry: u64,
}

/// Parent components a sensitive pattern may name besides its leaf.
pub const SENS_DEPTH: usize = 6;
/// Sensitive patterns the LSM tier can match exactly (entries of `SENS_PAT`).
pub const SENS_PATTERNS: u32 = 32;

/// One pattern of the sensitive set, for an exact match in the kernel (refusing
/// reads, where the basename prefilter would refuse far too much): the leaf's hash
/// as in `SENSITIVE` (exact name, `*.ext` or `prefix*`), then the exact-name hash
/// of each parent component going up (0: any name, a `*` component), and whether
/// the pattern is anchored at `/` (else it starts with `**/`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SensPattern {
    /// 0: an unused entry.
    pub leaf: u64,
    pub up: [u64; SENS_DEPTH],
    /// Parent components named.
    pub n: u32,
    pub anchored: u32,
}

/// The kernel's encoding of a device number (`MKDEV`), from userspace's `st_dev`.
pub const fn kernel_dev(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & 0xfffff)
}
