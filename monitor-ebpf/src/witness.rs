//! The syscall tracepoints' witness, on a kernel that preempts kernel code.
//!
//! A syscall tracepoint's program runs through `trace_call_bpf`, which skips it when
//! its CPU's BPF guard (`bpf_prog_active`) is held, counting the skip nowhere before
//! 6.7. A map call from userspace (lookup, update, delete) holds that guard with
//! migration disabled but preemption on (`bpf_disable_instrumentation`): where the
//! kernel preempts kernel code, any process preempted inside one leaves its CPU's
//! syscall programs off while others run there. Measured in the Debian 12 guest
//! booted `preempt=full`: a process looking a map up in a loop on the CPU of four
//! tracked file creators hid 105 of 8,000 creates, none counted lost.
//!
//! A raw tracepoint runs whatever that guard says (it has its own per-program
//! recursion check). `sys_exit_witness` (tp_btf sys_exit: regs, ret) runs after the
//! syscall tracepoints' programs at every syscall exit; each of those marks, for a
//! tracked thread, the syscall it ran for (TP_RAN, by thread id). The loader tells
//! the witness which syscalls have a program (TP_HOOKED, from every `sys_exit_*` it
//! attached). A tracked process's 64-bit syscall that has a program but left no
//! mark was skipped: an UNSEEN record with its number, first four arguments
//! (registers) and result. Attached only
//! where the kernel preempts (KConfig::witness), after the tracepoints (their probe
//! runs first). The mark is the thread's, not the CPU's: from 6.13 syscall
//! tracepoints may fault, and a thread can be preempted or moved to another CPU
//! between the two probes (a mark per CPU, measured in the Debian 13 backports
//! guest, 6.18 booted `preempt=full`: 57 of 8,000 creates both recorded and
//! reported unseen, another thread's mark or the other CPU's slot having been read).

use aya_ebpf::{
    EbpfContext,
    macros::btf_tracepoint,
    programs::{BtfTracePointContext, TracePointContext},
};
use monitor_common::kind;

use crate::{
    TP_HOOKED, TP_RAN,
    kern::{Args, Ev, conf, is_tracked, kread, syscall_nr, tracked},
};

/// arch/x86/include/asm/thread_info.h: an i386 call is in progress.
const TS_COMPAT: u32 = 0x0002;

/// Syscall numbers the witness knows (x86_64's highest is below 500).
pub const NR_MAX: u32 = 1024;

/// The current thread's id.
#[inline(always)]
fn tid() -> u32 {
    aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32
}

/// A syscall tracepoint's program ran: a tracked thread's mark (sys_exit_*:
/// `__syscall_nr` at 8, after the common fields; checked with `ret` at 16 by the
/// loader's format check).
#[inline(always)]
pub fn ran(ctx: &TracePointContext) {
    if conf!(witness) == 0 || !is_tracked() {
        return;
    }
    let nr = unsafe { *(ctx.as_ptr() as *const i32).add(2) };
    let _ = TP_RAN.insert(&tid(), &((nr as u32).wrapping_add(1)), 0);
}

/// sys_exit (tp_btf: regs, ret): a tracked process's hooked syscall whose program
/// left no mark is an UNSEEN record; the mark is taken either way.
#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_witness(ctx: BtfTracePointContext) -> i32 {
    let nr = syscall_nr();
    if !(0..NR_MAX as i64).contains(&nr) || TP_HOOKED.get(nr as u32).copied() != Some(1) || !is_tracked() {
        return 0;
    }
    // Taken either way: a later call of the same number must leave its own; and
    // removed, so that the map holds only marks in flight (none of a thread that is
    // gone, for a reused thread id to find, and nothing to evict).
    let id = tid();
    let left = unsafe { TP_RAN.get(&id) }.copied().unwrap_or(0);
    if left != 0 {
        let _ = TP_RAN.remove(&id);
    }
    if left == (nr as u32).wrapping_add(1) {
        return 0;
    }
    // An i386 call: no syscall tracepoint runs for one (agentmon sees it through the
    // task's seccomp filter, docs/events.md), and its number is of another table.
    let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() };
    if unsafe { kread::<u32>(task + conf!(off.ti_status) as u64) } & TS_COMPAT != 0 {
        return 0;
    }
    let Some(t) = tracked() else { return 0 };
    let ret: i64 = unsafe { ctx.arg(1) };
    if let Some(mut ev) = Ev::new(kind::UNSEEN, 0, &t, ret) {
        ev.arg(0, nr as u64);
        // Its first four arguments, as the caller's saved registers hold them (what
        // the call was: an open's flags tell a read from a create).
        let a = Args::current();
        ev.arg(1, a.get(0));
        ev.arg(2, a.get(1));
        ev.arg(3, a.get(2));
        ev.arg(4, a.get(3));
        ev.emit();
    }
    0
}
