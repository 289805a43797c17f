//! Calls seccomp answered before they reached their syscall's function: refused by
//! a filter (an enforced task's, or a container's), or answered by agentmon's gate
//! (refused, or performed by agentmon for the agent). The kernel skips the call, so
//! on the fexit tier its `fx_` program never runs; the syscall tracepoints still see
//! it at sys_exit. Here the call's `sk_` program (the same body, see `on_exit!`) is
//! run instead, by a tail call on the syscall's number, so that every refused
//! attempt is an event on both tiers.
//!
//! `__secure_computing` runs only for processes with a seccomp filter, at each of
//! their syscalls: only they pay for this program (the tracked test and return).

use aya_ebpf::{
    macros::{fexit, map},
    maps::ProgramArray,
    programs::FExitContext,
};

use crate::kern::{is_tracked, syscall_nr};

/// Syscall number -> its `sk_` program (the loader fills it on the fexit tier).
#[map]
static SKIPPED: ProgramArray = ProgramArray::with_max_entries(SKIPPED_ENTRIES, 0);

/// Above every syscall number hooked (x86_64's are below 470).
const SKIPPED_ENTRIES: u32 = 512;

/// fexit/__secure_computing(const struct seccomp_data *sd): -1 when the call is
/// skipped; reads the result (argument 1) and the task's saved orig_ax.
#[fexit]
pub fn seccomp_skip(ctx: FExitContext) -> i32 {
    skipped(&ctx, ctx.arg::<u64>(1))
}

/// fexit/__secure_computing(void) (the form of newer kernels): the result is
/// argument 0. The loader loads the one whose form this kernel has.
#[fexit]
pub fn seccomp_skip_v0(ctx: FExitContext) -> i32 {
    skipped(&ctx, ctx.arg::<u64>(0))
}

#[inline(always)]
fn skipped(ctx: &FExitContext, ret: u64) -> i32 {
    // An int: -1 in the low half.
    if ret as u32 != u32::MAX || !is_tracked() {
        return 0;
    }
    let nr = syscall_nr();
    if (0..SKIPPED_ENTRIES as i64).contains(&nr) {
        // Does not return when the slot holds a program; an empty one (a syscall
        // not hooked) falls through.
        unsafe { SKIPPED.tail_call(ctx, nr as u32) };
    }
    0
}
