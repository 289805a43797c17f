//! Types shared by agentmon's kernel programs (`monitor-ebpf`) and userspace
//! (`monitor-user`). Everything here is `#[repr(C)]` plain data: the kernel writes
//! it into the ring buffer and maps, userspace reads it back byte for byte.
//!
//! Wire format of one ring-buffer record:
//!
//! ```text
//! EventHeader (72 bytes) | Body (56 bytes) | tail (Body::tail_len bytes)
//! tail = operand 1 | operand 2 | extra (Body::extra_len raw bytes)
//! operand = user string NUL | n walk components, each NUL-terminated, leaf first
//! ```
//!
//! An operand is a path as the kernel saw it: the string the process passed (may be
//! relative or empty) and, when that string is not absolute, the components of the
//! directory it is relative to (dirfd or cwd), walked up the dentry tree to the root
//! of the mount namespace. Userspace joins and normalises them.
#![no_std]

pub mod config;
pub mod hash;
pub mod kind;
pub mod lsm;
pub mod op;
pub mod packet;

pub use config::{IouOffsets, KConfig, Offsets, TpOffsets};

/// Bytes reserved for the variable tail of an event. The kernel stops writing
/// (and sets [`pflags::TRUNCATED`]) when an operand would not fit.
pub const TAIL_MAX: usize = 4096;
/// Mask applied to tail offsets so the verifier can bound every write.
pub const TAIL_MASK: usize = TAIL_MAX - 1;
/// Longest single string the kernel copies (a user path, one dentry name).
pub const STR_MAX: usize = 512;
/// Bytes of the argv block copied for exec events.
pub const ARGV_MAX: usize = 512;
/// Path components walked per operand before giving up (flagged as truncated:
/// userspace then never presents the part it has as an absolute path).
pub const WALK_MAX: usize = 128;
/// Length of `comm`, as in the kernel.
pub const COMM_LEN: usize = 16;

/// Common header of every event the kernel emits.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// `bpf_ktime_get_ns()` when the event was emitted (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Start time of the process (thread-group leader), CLOCK_MONOTONIC ns.
    /// With `tgid` it is the process key: pids are reused, (tgid, start) is not.
    pub start_ns: u64,
    /// Syscall return value (negative errno) for syscall events, else 0.
    pub ret: i64,
    /// The cgroup v2 id of the process when it made the event
    /// (`bpf_get_current_cgroup_id`): its container and pod, by name in userspace.
    pub cgroup_id: u64,
    /// Event kind, see [`kind`].
    pub kind: u16,
    /// Which syscall or hook produced it, see [`op`].
    pub op: u16,
    pub tgid: u32,
    pub tid: u32,
    /// Task cookie the process is tracked under (see [`Tracked`]).
    pub task: u32,
    /// The calling thread's real user and group ids (as `bpf_get_current_uid_gid`).
    pub uid: u32,
    pub gid: u32,
    pub comm: [u8; COMM_LEN],
}

/// Kind-specific fixed part that follows the header.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Body {
    /// Numeric arguments; meaning per kind is documented in [`kind`].
    pub args: [u64; 5],
    /// See [`pflags`].
    pub pflags: u16,
    /// Walk components stored after operand 1's user string.
    pub n1: u16,
    /// Walk components stored after operand 2's user string.
    pub n2: u16,
    /// Number of operands present (0, 1 or 2).
    pub nops: u16,
    /// Raw bytes after the operands (argv block, unix socket path).
    pub extra_len: u32,
    /// Total tail bytes (operands + extra).
    pub tail_len: u32,
}

pub const HEADER_SIZE: usize = core::mem::size_of::<EventHeader>();
pub const BODY_SIZE: usize = core::mem::size_of::<Body>();
pub const FIXED_SIZE: usize = HEADER_SIZE + BODY_SIZE;

/// Flags in [`Body::pflags`].
pub mod pflags {
    /// The tail ran out of room or a walk hit [`crate::WALK_MAX`].
    pub const TRUNCATED: u16 = 1 << 0;
    /// Exec of a file with no links (memfd or deleted file): fileless exec.
    pub const FILELESS: u16 = 1 << 1;
    /// Open of a read-only file that matched the sensitive-name prefilter.
    pub const SENSITIVE: u16 = 1 << 2;
    /// The open created the file (FMODE_CREATED on the new struct file).
    pub const CREATED: u16 = 1 << 3;
    /// Operand 1 was resolved from a file descriptor after the call, or from the file
    /// the BPF LSM tier refused ([`REFUSED_FOR_FILE`]): exact.
    pub const OP1_FROM_FD: u16 = 1 << 4;
    /// A dirfd or fd could not be resolved (bad fd, or the walk failed).
    pub const UNRESOLVED: u16 = 1 << 5;
    /// The unix socket address is abstract (leading NUL).
    pub const UNIX_ABSTRACT: u16 = 1 << 6;
    /// Exec: the new program's standard input is a socket (a reverse-shell sign).
    pub const STDIN_SOCKET: u16 = 1 << 7;
    /// Exec: its standard output is a socket.
    pub const STDOUT_SOCKET: u16 = 1 << 8;
    /// Open to read of one of agentmon's private keys, known by its inode (`SECRETS`),
    /// whatever name or mount it was opened by. Set with [`SENSITIVE`].
    pub const SECRET: u16 = 1 << 9;
    /// Open of a /proc file of agentmon's own process (`/proc/PID/mem`, `environ`,
    /// any of its threads), known by the process the file is of, not by its path.
    pub const AGENTMON_PROC: u16 = 1 << 10;
    /// A failed open that the BPF LSM tier's `file_open` refused: operand 1 is the
    /// file it refused (exact), operand 2 the name as passed (a symlink or a hard link
    /// to it); with [`SENSITIVE`] (a read of the sensitive set, a raw disk) and
    /// [`SECRET`] as the hook found.
    pub const REFUSED_FOR_FILE: u16 = 1 << 11;
    /// sendmmsg: the message the call failed on (it sent fewer than asked and the
    /// kernel drops that message's error): attempted, not sent.
    pub const UNSENT: u16 = 1 << 12;
    /// Exec: the program was named by a descriptor (`/dev/fd/N`, as execveat with
    /// AT_EMPTY_PATH or a name under a directory descriptor makes it); operand 2 is
    /// then that descriptor's file, or the name under its directory.
    pub const BY_DESCRIPTOR: u16 = 1 << 13;
    /// A request submitted through io_uring (its op an `IORING_OP_*`), recorded as
    /// the kernel took it in: the paths it names, not its outcome (ret is 0).
    pub const SUBMITTED: u16 = 1 << 14;
}

/// Flags in [`Tracked::flags`].
pub mod tflags {
    /// The task is being killed: every process of it gets SIGKILL from the kernel
    /// (bpf_send_signal) at its next hooked syscall, before it runs another
    /// instruction of its own. Set by userspace together with cgroup.kill.
    pub const DOOMED: u32 = 1;
}

/// Value of the `TRACKED` map, keyed by tgid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Tracked {
    /// Task cookie chosen by userspace; inherited by every descendant.
    pub task: u32,
    /// [`tflags`]; inherited by every descendant.
    pub flags: u32,
    /// Process start time (leader), filled in by the kernel at fork or exec.
    pub start_ns: u64,
}

/// Key data of the `NET_ALLOW` LPM trie: the task cookie (big-endian, so a
/// 32-bit prefix is exactly the task) then the IPv6 address (IPv4 as v4-mapped).
pub type NetKeyData = [u8; 20];

/// Port ranges a `NET_ALLOW` entry allows (inclusive, host order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NetPorts {
    pub n: u32,
    pub ranges: [[u16; 2]; 8],
}

/// Default entries of `TRACKED_BYTES` (64 pids each); the loader sizes it to pid_max.
pub const TRACKED_BYTES_ENTRIES: u32 = 32768 / 64;

/// Number of per-kind counter slots (see [`kind::slot`]).
pub const COUNTER_SLOTS: u32 = 32;

/// Indexes into the `COUNTERS` per-CPU array: `slot * 2 + EMITTED|LOST`.
pub mod counter {
    pub const EMITTED: u32 = 0;
    pub const LOST: u32 = 1;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are #[repr(C)] structs of integers with no implicit padding holes
    // that the kernel would read as meaningful.
    unsafe impl aya::Pod for super::Tracked {}
    unsafe impl aya::Pod for super::KConfig {}
    unsafe impl aya::Pod for super::NetPorts {}
    unsafe impl aya::Pod for super::lsm::FsKey {}
    unsafe impl aya::Pod for super::lsm::LsmTask {}
    unsafe impl aya::Pod for super::lsm::ExecOk {}
    unsafe impl aya::Pod for super::lsm::SensPattern {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_stable() {
        // The wire format is shared with the kernel; a size change must be deliberate.
        assert_eq!(HEADER_SIZE, 72);
        assert_eq!(BODY_SIZE, 56);
        assert_eq!(core::mem::size_of::<Tracked>(), 16);
    }
}
