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
    /// 4096-bit filter over the SENSITIVE hashes (bit `h & 4095`): a read-only open
    /// whose basename hashes miss it needs no map lookup at all.
    pub sensitive_bloom: [u64; 64],
    pub off: Offsets,
    pub tp: TpOffsets,
}

impl Default for KConfig {
    fn default() -> Self {
        KConfig {
            self_tgid: 0,
            sensitive_prefix_lens: [0; 4],
            wakeup_bytes: 0,
            epoch: 0,
            lsm: 0,
            sensitive_bloom: [0; 64],
            off: Offsets::default(),
            tp: TpOffsets::default(),
        }
    }
}

/// Bit of `h` in [`KConfig::sensitive_bloom`]: (word, mask).
#[inline(always)]
pub const fn bloom_bit(h: u64) -> (usize, u64) {
    let b = (h & 4095) as usize;
    (b >> 6, 1u64 << (b & 63))
}
