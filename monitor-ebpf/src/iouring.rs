//! io_uring. Requests submitted through a ring do not pass the syscall tracepoints,
//! so the ring's creation and every submitted opcode are reported from the io_uring
//! tracepoints. They fire in the submitting task (or the ring's SQPOLL thread, which
//! belongs to the same process), so the tracked filter applies as usual.
//! Field offsets come from the tracepoints' format files (loader).
//!
//! A request that names paths (open, unlink, rename, mkdir, symlink, link) is also
//! recorded as the side effect it asks for, with the paths its prep copied into the
//! kernel (`struct filename`: what the request will act on, whatever the agent's
//! memory says by then), from the raw tracepoint on the same submission, whose
//! argument is the request itself. Its outcome is not known then: the record is of
//! the request ([`pflags::SUBMITTED`]).

use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use monitor_common::{kind, op, pflags};

use crate::{
    file::{WRITE_INTENT, agentmon_proc, harmless_proc_file, secret, sensitive_name},
    kern::{Ev, NO_BASE, conf, fd_file, file_path, kptr, kread, off, tracked},
};

/// Offset of an io_uring request field, as u64.
macro_rules! iou {
    ($f:ident) => {
        conf!(iou.$f) as u64
    };
}

// include/uapi/linux/io_uring.h
const IORING_OP_OPENAT: u8 = 18;
const IORING_OP_OPENAT2: u8 = 28;
const IORING_OP_RENAMEAT: u8 = 35;
const IORING_OP_UNLINKAT: u8 = 36;
const IORING_OP_MKDIRAT: u8 = 37;
const IORING_OP_SYMLINKAT: u8 = 38;
const IORING_OP_LINKAT: u8 = 39;
const O_PATH: u64 = 0o10000000;
const FMODE_READ: u32 = 1;
const FMODE_PATH: u32 = 0x4000;

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

/// tp_btf/io_uring_submit_req(struct io_kiocb *req) (6.3+), after the request's prep.
/// Reads req->opcode and the command in req->cmd (see [`try_request`]).
#[btf_tracepoint(function = "io_uring_submit_req")]
pub fn iou_submit_req(ctx: BtfTracePointContext) -> i32 {
    let _ = try_request(ctx.arg(0));
    0
}

/// tp_btf/io_uring_submit_sqe(struct io_kiocb *req, bool force_nonblock) (before 6.3;
/// the loader loads whichever this kernel has).
#[btf_tracepoint(function = "io_uring_submit_sqe")]
pub fn iou_submit_sqe(ctx: BtfTracePointContext) -> i32 {
    let _ = try_request(ctx.arg(0));
    0
}

/// The side effect request `req` asks for, if it names paths. Reads its command's
/// dirfds, flags, mode and `struct filename *`s (their `name`: kernel strings),
/// resolved against the dirfds in the submitter's file table, which its io-wq
/// workers and SQPOLL thread share.
fn try_request(req: u64) -> Option<()> {
    let t = tracked()?;
    let opcode: u8 = unsafe { kread(req + iou!(req_opcode)) };
    let cmd = req + iou!(req_cmd);
    let name = |at: u64| unsafe { kptr(kptr(cmd, at), iou!(filename_name)) };
    let dfd = |at: u64| unsafe { kread::<i32>(cmd + at) } as i64;
    let mut ev = match opcode {
        IORING_OP_OPENAT | IORING_OP_OPENAT2 => {
            let flags: u64 = unsafe { kread(cmd + iou!(open_flags)) };
            // An O_PATH descriptor reads and writes nothing.
            if flags & O_PATH != 0 {
                return None;
            }
            let fname = name(iou!(open_filename));
            let write = flags & WRITE_INTENT != 0;
            // A read-only open only of the sensitive set's names (userspace confirms).
            if !write && !sensitive_name(fname, false) {
                return None;
            }
            let o = if opcode == IORING_OP_OPENAT { op::IOU_OPENAT } else { op::IOU_OPENAT2 };
            let mut ev = Ev::new(kind::OPEN, o, &t, 0)?;
            if !write {
                ev.flag(pflags::SENSITIVE);
            }
            ev.arg(0, flags);
            ev.arg(1, unsafe { kread::<u64>(cmd + iou!(open_mode)) });
            ev.operand(1, fname, false, dfd(iou!(open_dfd)));
            ev
        }
        IORING_OP_UNLINKAT => {
            let mut ev = Ev::new(kind::UNLINK, op::IOU_UNLINKAT, &t, 0)?;
            ev.arg(0, unsafe { kread::<i32>(cmd + iou!(unlink_flags)) } as u64);
            ev.operand(1, name(iou!(unlink_filename)), false, dfd(iou!(unlink_dfd)));
            ev
        }
        IORING_OP_RENAMEAT => {
            let mut ev = Ev::new(kind::RENAME, op::IOU_RENAMEAT, &t, 0)?;
            ev.arg(0, unsafe { kread::<i32>(cmd + iou!(rename_flags)) } as u64);
            ev.operand(1, name(iou!(rename_oldpath)), false, dfd(iou!(rename_old_dfd)));
            ev.operand(2, name(iou!(rename_newpath)), false, dfd(iou!(rename_new_dfd)));
            ev
        }
        IORING_OP_MKDIRAT => {
            let mut ev = Ev::new(kind::MKDIR, op::IOU_MKDIRAT, &t, 0)?;
            ev.arg(0, unsafe { kread::<u16>(cmd + iou!(mkdir_mode)) } as u64);
            ev.operand(1, name(iou!(mkdir_filename)), false, dfd(iou!(mkdir_dfd)));
            ev
        }
        // Operand 1 the new name; operand 2 the target as written (a symlink) or the
        // existing file (a link), as the link syscalls' records.
        IORING_OP_SYMLINKAT => {
            let mut ev = Ev::new(kind::LINK, op::IOU_SYMLINKAT, &t, 0)?;
            ev.arg(0, 1);
            ev.operand(1, name(iou!(link_newpath)), false, dfd(iou!(link_new_dfd)));
            ev.operand(2, name(iou!(link_oldpath)), false, NO_BASE);
            ev
        }
        IORING_OP_LINKAT => {
            let mut ev = Ev::new(kind::LINK, op::IOU_LINKAT, &t, 0)?;
            ev.arg(1, unsafe { kread::<i32>(cmd + iou!(link_flags)) } as u64);
            ev.operand(1, name(iou!(link_newpath)), false, dfd(iou!(link_new_dfd)));
            ev.operand(2, name(iou!(link_oldpath)), false, dfd(iou!(link_old_dfd)));
            ev
        }
        _ => return None,
    };
    ev.flag(pflags::SUBMITTED);
    ev.emit();
    Some(())
}

/// tp_btf/io_uring_complete(struct io_ring_ctx *ctx, void *req, struct io_uring_cqe
/// *cqe) (newer kernels: 6.18; not 6.12). Reads cqe->res; see [`try_complete`].
#[btf_tracepoint(function = "io_uring_complete")]
pub fn iou_complete(ctx: BtfTracePointContext) -> i32 {
    let cqe: u64 = ctx.arg(2);
    let _ = try_complete(ctx.arg(1), unsafe { kread::<i32>(cqe + iou!(cqe_res)) });
    0
}

/// tp_btf/io_uring_complete(void *ctx, void *req, u64 user_data, int res, unsigned
/// cflags, u64 extra1, u64 extra2) (6.1, 6.12). Reads res.
#[btf_tracepoint(function = "io_uring_complete")]
pub fn iou_complete_v1(ctx: BtfTracePointContext) -> i32 {
    let _ = try_complete(ctx.arg(1), ctx.arg::<u64>(3) as i32);
    0
}

/// An open request done: what its name could not tell at submission, the file it
/// opened, when that is one of agentmon's keys (by inode) or agentmon's own /proc
/// file (by process), whatever name or mount it was asked by. Completions of opens
/// are posted in the submitter's process (its thread, an io-wq worker or the SQPOLL
/// thread: one file table), so the result is a descriptor there (unless the
/// request put the file in the ring's own table, `file_slot`). Reads req->opcode,
/// the command's how.flags, how.mode, file_slot; the file's f_mode and dentry.
fn try_complete(req: u64, res: i32) -> Option<()> {
    let t = tracked()?;
    if res < 0 {
        return None;
    }
    let opcode: u8 = unsafe { kread(req + iou!(req_opcode)) };
    if opcode != IORING_OP_OPENAT && opcode != IORING_OP_OPENAT2 {
        return None;
    }
    let cmd = req + iou!(req_cmd);
    if unsafe { kread::<u32>(cmd + iou!(open_file_slot)) } != 0 {
        return None;
    }
    let file = unsafe { fd_file(res as i64) };
    let dentry = if file != 0 { unsafe { kptr(file + off!(file_path), off!(path_dentry)) } } else { 0 };
    if dentry == 0 {
        return None;
    }
    let fmode: u32 = unsafe { kread(file + off!(file_mode)) };
    // An O_PATH descriptor reads and writes nothing (as open_exit).
    if fmode & FMODE_PATH != 0 {
        return None;
    }
    let flags: u64 = unsafe { kread(cmd + iou!(open_flags)) };
    let pf = if agentmon_proc(dentry) {
        // What any `ps` reads of it is nothing (a write never is).
        if flags & WRITE_INTENT == 0 && harmless_proc_file(dentry) {
            return None;
        }
        pflags::AGENTMON_PROC
    } else if fmode & FMODE_READ != 0 && secret(dentry) {
        pflags::SENSITIVE | pflags::SECRET
    } else {
        return None;
    };
    let o = if opcode == IORING_OP_OPENAT { op::IOU_OPENAT } else { op::IOU_OPENAT2 };
    let mut ev = Ev::new(kind::OPEN, o, &t, res as i64)?;
    ev.flag(pf | pflags::OP1_FROM_FD);
    ev.arg(0, flags);
    ev.arg(1, unsafe { kread::<u64>(cmd + iou!(open_mode)) });
    ev.arg(2, fmode as u64);
    ev.operand_path(1, file_path(file));
    ev.emit();
    Some(())
}
