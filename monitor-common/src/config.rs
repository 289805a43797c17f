//! Load-time configuration of the kernel programs, written by the loader into the
//! `CONFIG` global before the programs are verified.
//!
//! Kernel struct layouts differ between kernels and builds, and Rust eBPF has no CO-RE
//! field relocations, so userspace reads every offset the programs need from this
//! kernel's BTF (`/sys/kernel/btf/vmlinux`) and every tracepoint field offset from
//! tracefs `format` files, and passes them here. Nothing is hard-coded.

/// Byte offsets of kernel struct fields (from BTF).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Offsets {
    pub task_tgid: u32,
    pub task_start_time: u32,
    pub task_group_leader: u32,
    pub task_exit_code: u32,
    pub task_signal: u32,
    /// `signal_struct.live.counter`: threads of the process not yet exiting.
    pub signal_live: u32,
    pub task_fs: u32,
    pub task_files: u32,
    pub task_mm: u32,
    /// `task_struct.cred` and `.real_cred`: they differ only while the kernel works
    /// with borrowed credentials (override_creds: overlayfs on its layers).
    pub task_cred: u32,
    pub task_real_cred: u32,
    pub fs_pwd: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_parent: u32,
    pub dentry_name: u32,
    pub qstr_name: u32,
    /// Offset of the `struct vfsmount mnt` embedded in `struct mount`.
    pub mount_mnt: u32,
    pub mount_parent: u32,
    pub mount_mountpoint: u32,
    pub vfsmount_root: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_path: u32,
    pub file_mode: u32,
    pub file_inode: u32,
    pub file_private: u32,
    pub inode_nlink: u32,
    pub inode_ino: u32,
    pub dentry_inode: u32,
    pub dentry_sb: u32,
    pub sb_dev: u32,
    pub inode_mode: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub bprm_file: u32,
    pub bprm_filename: u32,
    /// `linux_binprm.fdpath` (the `/dev/fd/N[/NAME]` the kernel names a program run
    /// by descriptor) and `.interp` (the name the interpreter is given: a script's
    /// interpreter path once binfmt_script ran, else `filename` itself).
    pub bprm_fdpath: u32,
    pub bprm_interp: u32,
    pub socket_type: u32,
    pub socket_sk: u32,
    pub sk_family: u32,
    pub sk_num: u32,
    pub sk_rcv_saddr: u32,
    pub sk_v6_rcv_saddr: u32,
    /// `super_block.s_magic`: which file system a file is on (procfs).
    pub sb_magic: u32,
    /// `proc_inode.pid` and `.vfs_inode`: the process a /proc file is of.
    pub proc_inode_pid: u32,
    pub proc_inode_vfs: u32,
    /// `pid.tasks` (PIDTYPE_PID first) and `task_struct.pid_links`: a pid's task.
    pub pid_tasks: u32,
    pub task_pid_links: u32,
    /// `task_struct.cgroups`, `css_set.dfl_cgrp`, `cgroup.kn`, `kernfs_node.id`: a
    /// process's cgroup v2 id (what bpf_get_current_cgroup_id gives of the caller).
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// FMODE_CREATED as defined by this kernel.
    pub fmode_created: u32,
    /// Offsets in `struct pt_regs` of syscall arguments 0..5 (x86_64: di, si, dx,
    /// r10, r8, r9). Handlers read a syscall's arguments there at sys_exit.
    pub regs_args: [u32; 6],
    /// `pt_regs.orig_ax` and `.ax` (x86_64): the syscall's number and, once it has
    /// returned or been refused, its result (a call seccomp refused never reaches
    /// its function: see monitor-ebpf skip.rs).
    pub regs_nr: u32,
    pub regs_ret: u32,
    /// `task_struct.thread_info.status` (x86_64): TS_COMPAT while an i386 call runs.
    pub ti_status: u32,
}

/// Field offsets of non-syscall tracepoints (from tracefs `format`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TpOffsets {
    pub iou_create_fd: u32,
    pub iou_create_sq_entries: u32,
    pub iou_create_flags: u32,
    pub iou_submit_opcode: u32,
    pub iou_submit_flags: u32,
    pub iou_submit_sq_thread: u32,
    /// Size of the submit tracepoint's `flags` (8 on io_uring_submit_req, 4 on the
    /// io_uring_submit_sqe of kernels before 6.?).
    pub iou_submit_flags_size: u32,
}

/// Byte offsets of the io_uring request fields that name paths (from BTF): the
/// request (`io_kiocb`), the command it carries for each path opcode
/// (io_uring/openclose.c, fs.c: `io_open`, `io_unlink`, `io_rename`, `io_mkdir`,
/// `io_link` for symlinks and links) and the `filename` its prep copied in. All
/// zero where this kernel's BTF lacks them: then the programs reading them are not
/// loaded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IouOffsets {
    pub req_opcode: u32,
    pub req_cmd: u32,
    pub filename_name: u32,
    pub open_dfd: u32,
    /// `io_open.file_slot`: nonzero when the file goes to the ring's own table
    /// (its result is then no descriptor of the process).
    pub open_file_slot: u32,
    pub open_filename: u32,
    /// `io_open.how.flags`, `.how.mode` (both u64).
    pub open_flags: u32,
    pub open_mode: u32,
    pub unlink_dfd: u32,
    pub unlink_flags: u32,
    pub unlink_filename: u32,
    pub rename_old_dfd: u32,
    pub rename_new_dfd: u32,
    pub rename_oldpath: u32,
    pub rename_newpath: u32,
    pub rename_flags: u32,
    pub mkdir_dfd: u32,
    /// u16 (umode_t).
    pub mkdir_mode: u32,
    pub mkdir_filename: u32,
    pub link_old_dfd: u32,
    pub link_new_dfd: u32,
    pub link_oldpath: u32,
    pub link_newpath: u32,
    pub link_flags: u32,
    /// `io_uring_cqe.res`: a completion's result, where the completion tracepoint
    /// passes the CQE.
    pub cqe_res: u32,
}

/// The whole `CONFIG` global.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KConfig {
    /// agentmon's own tgid: never tracked, never reported.
    pub self_tgid: u32,
    /// Lengths of the `prefix*` basename patterns in the sensitive set (0 = unused).
    pub sensitive_prefix_lens: [u8; 4],
    /// Wake the reader only once this many bytes are waiting in the ring buffer;
    /// below it the reader polls on a timer. Saves the traced process a wakeup per event.
    pub wakeup_bytes: u32,
    /// This load's number: its programs write to the ring only while `EPOCH` holds
    /// it, so a restarted daemon takes over pinned maps without a doubled event.
    pub epoch: u32,
    /// 1 when the BPF LSM tier's hooks are attached: then openat2's O_TRUNC is taken
    /// from its truncate hooks (what the kernel did), not from the caller's memory.
    pub lsm: u32,
    /// 1 when `sys_exit_witness` is attached (a kernel that preempts): each syscall
    /// tracepoint program marks that it ran, for the witness to see one skipped.
    pub witness: u32,
    /// 4096-bit filter over the SENSITIVE hashes (bit `h & 4095`): a read-only open
    /// whose basename hashes miss it needs no map lookup at all.
    pub sensitive_bloom: [u64; 64],
    pub off: Offsets,
    pub tp: TpOffsets,
    pub iou: IouOffsets,
}

impl Default for KConfig {
    fn default() -> Self {
        KConfig {
            self_tgid: 0,
            sensitive_prefix_lens: [0; 4],
            wakeup_bytes: 0,
            epoch: 0,
            lsm: 0,
            witness: 0,
            sensitive_bloom: [0; 64],
            off: Offsets::default(),
            tp: TpOffsets::default(),
            iou: IouOffsets::default(),
        }
    }
}

/// Bit of `h` in [`KConfig::sensitive_bloom`]: (word, mask).
#[inline(always)]
pub const fn bloom_bit(h: u64) -> (usize, u64) {
    let b = (h & 4095) as usize;
    (b >> 6, 1u64 << (b & 63))
}
