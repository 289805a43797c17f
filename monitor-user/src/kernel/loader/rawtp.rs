//! Which tp_btf programs fit this kernel: each raw tracepoint's prototype, and
//! whether io_uring requests' paths can be read here.

use std::collections::BTreeMap;

use aya::programs::{BtfTracePoint, tp_btf::BtfTracePointLink};
use monitor_common::IouOffsets;

use super::LoadError;
use crate::kernel::btf::KernelBtf;

/// tp_btf programs: (program, tracepoint, arguments it reads). Where a tracepoint's
/// arguments changed between kernels there is one program per form, and the one
/// this kernel's prototype fits is loaded.
pub(super) const BTF_TPS: &[(&str, &str, usize)] = &[
    ("sched_process_fork", "sched_process_fork", 2),
    ("sched_process_exec", "sched_process_exec", 3),
    // (struct task_struct *p, bool group_dead) since 6.16; (p) before.
    ("sched_process_exit", "sched_process_exit", 2),
    ("sched_process_exit_v1", "sched_process_exit", 1),
    // (int sig, struct kernel_siginfo *info, struct task_struct *task, int group, int result)
    ("signal_generate", "signal_generate", 5),
    // (struct io_kiocb *req) since 6.3; (req, bool force_nonblock) before.
    ("iou_submit_req", "io_uring_submit_req", 1),
    ("iou_submit_sqe", "io_uring_submit_sqe", 2),
    // (ctx, req, struct io_uring_cqe *cqe) on newer kernels (6.18);
    // (ctx, req, user_data, res, cflags, extra1, extra2) on 6.1 and 6.12.
    ("iou_complete", "io_uring_complete", 3),
    ("iou_complete_v1", "io_uring_complete", 7),
    // (struct pt_regs *regs, long ret): where the kernel preempts, attached last.
    (WITNESS, "sys_exit", 2),
];

/// The program that sees a syscall tracepoint's program skipped (monitor-ebpf
/// witness.rs): attached only on a kernel that preempts, after the tracepoints.
pub(super) const WITNESS: &str = "sys_exit_witness";

/// Loads and attaches [`WITNESS`] on sys_exit, once told the numbers of the
/// syscalls whose exit has a program (`tracepoints`: the `sys_exit_*` attached).
pub(super) fn attach_witness(
    ebpf: &mut aya::Ebpf,
    btf: &aya::Btf,
    tracepoints: &[String],
) -> Result<BtfTracePointLink, LoadError> {
    let fail = |stage: &'static str, msg: String| LoadError::Program {
        prog: WITNESS.to_string(),
        attach: "tp_btf sys_exit".to_string(),
        stage,
        msg,
    };
    let mut hooked: aya::maps::Array<&mut aya::maps::MapData, u8> = ebpf
        .map_mut("TP_HOOKED")
        .ok_or_else(|| fail("find", "no map TP_HOOKED".into()))?
        .try_into()
        .map_err(|e: aya::maps::MapError| fail("classify", e.to_string()))?;
    // The tracepoints are attached and the witness not yet: a map call preempted
    // here would hide tracked processes' syscalls with nothing said (kernel::preempt).
    let rt = crate::kernel::preempt::hold();
    for tp in tracepoints {
        let name = tp.strip_prefix("sys_exit_").unwrap_or(tp);
        let nr = crate::kernel::sysnr::number(name)
            .ok_or_else(|| fail("number", format!("no syscall number known for {tp} (kernel::sysnr)")))?;
        hooked.set(nr, &1, 0).map_err(|e| fail("TP_HOOKED", format!("{tp} ({nr}): {e}")))?;
    }
    drop(rt);
    let tp: &mut BtfTracePoint = ebpf
        .program_mut(WITNESS)
        .ok_or_else(|| fail("find", "not in the object".into()))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| fail("classify", e.to_string()))?;
    tp.load("sys_exit", btf).map_err(|e| fail("load", super::verifier_tail(&e)))?;
    let id = tp.attach().map_err(|e| fail("attach", e.to_string()))?;
    tp.take_link(id).map_err(|e| fail("own link", e.to_string()))
}

/// The tp_btf programs that read io_uring requests' paths: a kernel without either
/// form (no io_uring, an older prototype) or without their fields in BTF still runs
/// agentmon, its io_uring requests reported by opcode only, said
/// ([`super::Sensors::iou_paths`]).
pub(super) const IOU_TPS: [&str; 4] = ["iou_submit_req", "iou_submit_sqe", "iou_complete", "iou_complete_v1"];

pub(super) struct Fits {
    /// Per program: load it (its tracepoint's prototype fits) or skip it.
    pub fits: BTreeMap<&'static str, bool>,
    /// The io_uring request fields (zero where they are not known).
    pub iou: IouOffsets,
    /// Whether the io_uring programs can be loaded, or why requests are reported
    /// by opcode only.
    pub iou_paths: Result<(), String>,
}

/// Which form of each tracepoint this kernel has: another form of the same
/// tracepoint fitting is a skip, none fitting an error (but for the io_uring
/// programs, whose absence is said in [`Fits::iou_paths`]).
pub(super) fn fits(kbtf: &KernelBtf) -> Result<Fits, LoadError> {
    let mut fits: BTreeMap<&'static str, bool> = BTreeMap::new();
    for (prog, tp, want) in BTF_TPS {
        let fit = if IOU_TPS.contains(prog) {
            kbtf.tp_btf_args(tp).ok() == Some(*want)
        } else {
            kbtf.tp_btf_args(tp)? == *want
        };
        fits.insert(prog, fit);
    }
    for (prog, tp, want) in BTF_TPS {
        if !IOU_TPS.contains(prog) && !BTF_TPS.iter().any(|(p, t, _)| t == tp && fits[p]) {
            return Err(LoadError::TpProto {
                prog: prog.to_string(),
                tp: tp.to_string(),
                found: kbtf.tp_btf_args(tp)?,
                want: *want,
            });
        }
    }
    // Where io_uring requests' paths can be read: the request's fields, and a
    // submission tracepoint whose argument is the request.
    let iou = kbtf.iou_offsets();
    // Both a submission (the paths) and a completion (what an open opened).
    let fit = |progs: &[&str]| progs.iter().any(|p| fits[p]);
    let iou_paths = match &iou {
        Err(e) => Err(format!("by opcode only: {e}")),
        Ok(_) if !fit(&IOU_TPS[..2]) => {
            Err("by opcode only: this kernel has neither io_uring_submit_req(req) \
                                             nor io_uring_submit_sqe(req, force_nonblock) as a raw tracepoint"
                .to_string())
        }
        Ok(_) if !fit(&IOU_TPS[2..]) => Err(
            "by opcode only: this kernel's raw tracepoint io_uring_complete has a form agentmon does not \
                 know"
                .to_string(),
        ),
        Ok(_) => Ok(()),
    };
    Ok(Fits { fits, iou: iou.unwrap_or_default(), iou_paths })
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use object::{Object, ObjectSection, ObjectSymbol};

    /// Every syscall tracepoint program has its number for [`super::attach_witness`]:
    /// one without would fail every load on a kernel that preempts.
    #[test]
    fn every_syscall_program_has_its_number() {
        let elf = object::File::parse(super::super::OBJECT).expect("agentmon's eBPF object");
        let mut names = Vec::new();
        for sym in elf.symbols() {
            let in_tracepoints = sym
                .section_index()
                .and_then(|i| elf.section_by_index(i).ok())
                .is_some_and(|s| s.name() == Ok("tracepoint"));
            if let (true, Ok(name)) = (in_tracepoints, sym.name())
                && let Some(call) = name.strip_prefix("sys_exit_")
            {
                names.push(name.to_string());
                assert!(crate::kernel::sysnr::number(call).is_some(), "no syscall number for {name}");
            }
        }
        assert!(names.len() > 50, "syscall tracepoint programs found: {names:?}");
    }
}
