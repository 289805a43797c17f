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
//! syscall tracepoints' programs at every syscall exit; each of those marks the
//! syscall it ran for and its thread (TP_RAN). The loader tells the witness which
//! syscalls have a program (TP_HOOKED, from every `sys_exit_*` it attached). A
//! tracked process's 64-bit syscall that has a program but left no mark was
//! skipped: an UNSEEN record with its number and result. Attached only where the
//! kernel preempts (KConfig::witness), after the tracepoints (their probe runs
//! first). Both probes run in one stretch with preemption off up to 6.12; kernels
//! whose syscall tracepoints may fault (6.13 on) are not checked here.

use aya_ebpf::{
    EbpfContext,
    macros::btf_tracepoint,
    programs::{BtfTracePointContext, TracePointContext},
};
use monitor_common::kind;

use crate::{
    TP_HOOKED, TP_RAN,
    kern::{Ev, conf, kread, syscall_nr, tracked},
};

/// arch/x86/include/asm/thread_info.h: an i386 call is in progress.
const TS_COMPAT: u32 = 0x0002;

/// Syscall numbers the witness knows (x86_64's highest is below 500).
pub const NR_MAX: u32 = 1024;

/// The mark of syscall `nr`'s program run by the current thread: its thread id and
/// the number + 1 (another thread's mark, left on this CPU, is not this call's).
#[inline(always)]
fn mark(nr: i64) -> u64 {
    let tid = aya_ebpf::helpers::bpf_get_current_pid_tgid() & 0xffff_ffff;
    (tid << 32) | ((nr as u64).wrapping_add(1) & 0xffff_ffff)
}

/// A syscall tracepoint's program ran: its mark (sys_exit_*: `__syscall_nr` at 8,
/// after the common fields; checked with `ret` at 16 by the loader's format check).
#[inline(always)]
pub fn ran(ctx: &TracePointContext) {
    if conf!(witness) == 0 {
        return;
    }
    let nr = unsafe { *(ctx.as_ptr() as *const i32).add(2) };
    if let Some(p) = TP_RAN.get_ptr_mut(0) {
        unsafe { *p = mark(nr as i64) };
    }
}

/// sys_exit (tp_btf: regs, ret): a tracked process's hooked syscall whose program
/// left no mark is an UNSEEN record; the mark is taken either way.
#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_witness(ctx: BtfTracePointContext) -> i32 {
    let Some(p) = TP_RAN.get_ptr_mut(0) else { return 0 };
    let left = unsafe { core::ptr::replace(p, 0) };
    let nr = syscall_nr();
    if !(0..NR_MAX as i64).contains(&nr) || left == mark(nr) {
        return 0;
    }
    if TP_HOOKED.get(nr as u32).copied() != Some(1) {
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
        ev.emit();
    }
    0
}
