//! io_uring. Requests submitted through a ring do not pass the syscall tracepoints,
//! so the ring's creation and every submitted opcode are reported from the io_uring
//! tracepoints. They fire in the submitting task (or the ring's SQPOLL thread, which
//! belongs to the same process), so the tracked filter applies as usual.
//! Field offsets come from the tracepoints' format files (loader).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use monitor_common::{kind, op};

use crate::kern::{Ev, conf, tracked};

#[inline(always)]
fn field<T: Default>(ctx: &TracePointContext, off: u32) -> T {
    unsafe { ctx.read_at::<T>(off as usize).unwrap_or_default() }
}

/// io_uring:io_uring_create — reads fd, sq_entries, flags.
#[tracepoint]
pub fn io_uring_create(ctx: TracePointContext) -> u32 {
    let _ = try_create(&ctx);
    0
}

fn try_create(ctx: &TracePointContext) -> Option<()> {
    let t = tracked()?;
    let mut ev = Ev::new(kind::IOURING_SETUP, op::IOURING_SETUP, &t, 0)?;
    ev.arg(0, field::<i32>(ctx, conf!(tp.iou_create_fd)) as i64 as u64);
    ev.arg(1, field::<u32>(ctx, conf!(tp.iou_create_sq_entries)) as u64);
    ev.arg(2, field::<u32>(ctx, conf!(tp.iou_create_flags)) as u64);
    ev.emit();
    Some(())
}

/// io_uring:io_uring_submit_req (6.3+) — reads opcode, flags (u64), sq_thread.
#[tracepoint]
pub fn io_uring_submit_req(ctx: TracePointContext) -> u32 {
    let _ = try_submit(&ctx);
    0
}

/// io_uring:io_uring_submit_sqe (before 6.3; the loader attaches whichever exists)
/// — reads opcode, flags (u32), sq_thread.
#[tracepoint]
pub fn io_uring_submit_sqe(ctx: TracePointContext) -> u32 {
    let _ = try_submit(&ctx);
    0
}

fn try_submit(ctx: &TracePointContext) -> Option<()> {
    let t = tracked()?;
    let mut ev = Ev::new(kind::IOURING_SUBMIT, op::IOURING_SUBMIT, &t, 0)?;
    ev.arg(0, field::<u8>(ctx, conf!(tp.iou_submit_opcode)) as u64);
    let flags = if conf!(tp.iou_submit_flags_size) == 8 {
        field::<u64>(ctx, conf!(tp.iou_submit_flags))
    } else {
        field::<u32>(ctx, conf!(tp.iou_submit_flags)) as u64
    };
    ev.arg(1, flags);
    ev.arg(2, field::<u8>(ctx, conf!(tp.iou_submit_sq_thread)) as u64);
    ev.emit();
    Some(())
}
