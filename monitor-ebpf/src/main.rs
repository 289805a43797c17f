//! agentmon kernel sensors.
//!
//! Every handler first asks "is the current process tracked?" (a byte in
//! `TRACKED_BYTES`, an inlined array access) and returns at once when it is not, so
//! untracked processes pay one array access per hooked syscall and nothing else.
//! Tracking is inherited at fork in the kernel (`process.rs`), so a tracked agent
//! cannot shed it by double-forking, setsid or reparenting.
//!
//! Syscalls are hooked at `sys_exit_*` only, where the result is known, file
//! descriptors can be resolved to paths, and the arguments are still in the task's
//! saved registers (see `kern::Args`).
#![no_std]
#![no_main]
// BPF inline assembly: the atomic add the target's Rust atomics lack (kern::add).
#![feature(asm_experimental_arch)]

mod file;
mod iouring;
mod kern;
mod lsm;
mod net;
mod netguard;
mod privilege;
mod process;
mod skip;
mod witness;

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use monitor_common::{
    COUNTER_SLOTS, KConfig, NetKeyData, NetPorts, TRACKED_BYTES_ENTRIES, Tracked,
    lsm::{ExecOk, FsKey, LsmTask, Refused, SENS_PATTERNS, SensPattern, TruncMark},
};

/// Set by the loader before verification (offsets from BTF and tracefs).
#[unsafe(no_mangle)]
static CONFIG: KConfig = unsafe { core::mem::zeroed() };

/// tgid -> task binding. Userspace inserts a task's root; fork inherits.
#[map]
static TRACKED: HashMap<u32, Tracked> = HashMap::with_max_entries(65536, 0);

/// One byte per tgid (64 per entry), non-zero while TRACKED has it: the cheap first
/// test every handler makes (an inlined array access) before any hash lookup.
/// Written only by the kernel; roots inserted by userspace are marked via PENDING.
/// Entries: pid_max / 64, set by the loader.
#[map]
static TRACKED_BYTES: Array<[u8; 64]> = Array::with_max_entries(TRACKED_BYTES_ENTRIES, 0);

/// [0] > 0 while userspace has inserted task roots not marked yet: then an unset
/// byte is confirmed against TRACKED (and set) instead of trusted.
#[map]
static PENDING: Array<u64> = Array::with_max_entries(1, 0);

/// Events to userspace. Size set by the loader.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Per-CPU buffer in which an event is assembled before it is copied out.
#[map]
static SCRATCH: PerCpuArray<kern::Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-kind emitted/lost counters: index = slot * 2 + {0 emitted, 1 lost}.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS * 2, 0);

/// Hashes of sensitive basenames/extensions/prefixes (see monitor_common::hash).
#[map]
static SENSITIVE: HashMap<u64, u8> = HashMap::with_max_entries(1024, 0);

/// Enforcement: cgroup id of an enforced task's cgroup -> its task cookie.
#[map]
static NET_TASK: HashMap<u64, u32> = HashMap::with_max_entries(4096, 0);

/// Enforcement: cgroup id a dropped packet's socket is in -> packets the egress
/// check dropped (netguard.rs `guard_egress`), per CPU. Userspace reads the totals
/// every tick and records what grew: a drop is a refused attempt.
#[map]
static NET_DROPS: PerCpuHashMap<u64, u64> = PerCpuHashMap::with_max_entries(4096, 0);

/// Enforcement: (task, address prefix) -> allowed ports (see netguard.rs).
#[map]
static NET_ALLOW: LpmTrie<NetKeyData, NetPorts> = LpmTrie::with_max_entries(65536, 0);

/// BPF LSM tier: (inode, task) -> rights (see monitor_common::lsm).
#[map]
static FS_RULES: HashMap<FsKey, u32> = HashMap::with_max_entries(65536, 0);

/// agentmon's private keys (task 0), by the identity the kernel knows them by: an
/// open of one to read is reported whatever name or mount it was reached by (a hard
/// link, a bind mount), on every tier.
#[map]
static SECRETS: HashMap<FsKey, u8> = HashMap::with_max_entries(64, 0);

/// BPF LSM tier: task cookie -> how it is enforced here.
#[map]
static LSM_TASK: HashMap<u32, LsmTask> = HashMap::with_max_entries(4096, 0);

/// BPF LSM tier: agentmon's thread id -> the identity of the next file it opens, as
/// the hooks see it (stat's can differ: overlayfs, btrfs subvolumes).
#[map]
static IDENT: HashMap<u32, FsKey> = HashMap::with_max_entries(64, 0);

/// A tracked thread's id -> the number (+1) of the syscall whose tracepoint program
/// just ran for it, taken (removed) by `sys_exit_witness` (see witness.rs). Per
/// thread, not per CPU: from 6.13 a thread may be preempted or moved between the two
/// probes. LRU: a mark left behind (a thread untracked between the probes, a load's
/// first calls before the witness) makes room.
#[map]
static TP_RAN: LruHashMap<u32, u32> = LruHashMap::with_max_entries(8192, 0);

/// Syscall number -> 1 where a syscall tracepoint program of agentmon's is attached
/// to its exit (filled by the loader from every `sys_exit_*` it attached): the calls
/// whose program can be skipped (see witness.rs).
#[map]
static TP_HOOKED: Array<u8> = Array::with_max_entries(witness::NR_MAX, 0);

/// The state of one sendmmsg's walk over its messages (see net::Mmsg).
#[map]
static MMSG: PerCpuArray<net::Mmsg> = PerCpuArray::with_max_entries(1, 0);

/// BPF LSM tier: the sensitive set, for an exact match (see SensPattern).
#[map]
static SENS_PAT: Array<SensPattern> = Array::with_max_entries(SENS_PATTERNS, 0);

/// BPF LSM tier: thread id -> the file its held exec was approved for.
#[map]
static EXEC_OK: HashMap<u32, ExecOk> = HashMap::with_max_entries(4096, 0);

/// BPF LSM tier: thread id -> an open `file_open` refused and its file, for the
/// open's exit to report the file whatever name it was reached by (see lsm::Refused).
/// Entries are taken at the call's exit, so the map holds the calls in flight: an
/// LRU only so that a leftover (a call whose exit is not an open's) never fills it.
#[map]
static REFUSED_OPEN: LruHashMap<u32, Refused> = LruHashMap::with_max_entries(16384, 0);

/// BPF LSM tier, every tracked process: thread id -> the saved arguments of a call
/// in which the kernel truncated a file (see lsm::truncating).
/// Taken at every open's and truncate's exit (see REFUSED_OPEN for why an LRU).
#[map]
static TRUNC_OPEN: LruHashMap<u32, TruncMark> = LruHashMap::with_max_entries(16384, 0);

/// Set once a fork escaped tracking (TRACKED full): from then on the BPF LSM hooks
/// also hold untracked processes in an enforced task's cgroup to that task.
#[map]
static ESCAPED: Array<u32> = Array::with_max_entries(1, 0);

/// The epoch whose programs write to the ring (`KConfig::epoch`): one word that a
/// restarted daemon sets once its own programs are attached to the pinned maps.
#[map]
static EPOCH: Array<u32> = Array::with_max_entries(1, 0);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
