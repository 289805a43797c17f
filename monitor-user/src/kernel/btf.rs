//! Kernel struct offsets from this kernel's BTF.
//!
//! Rust eBPF programs have no CO-RE field relocations, so the loader does the
//! equivalent itself: it looks every field the kernel programs read up in
//! `/sys/kernel/btf/vmlinux` and passes the offsets in the `CONFIG` global. A field
//! that cannot be found stops the load with its struct and field named.

use std::path::Path;

use btf_rs::{Btf, Struct, Type};
use monitor_common::{IouOffsets, Offsets};

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read kernel BTF at {path}: {source} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)")]
    Read { path: String, source: btf_rs::Error },
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {strukt} has no field {field}")]
    NoField { strukt: String, field: String },
    #[error("kernel BTF: {0}")]
    Other(String),
}

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn load() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        // Read whole, then parsed in memory: btf-rs's file reader seeks at every type
        // (125,000 lseeks for Debian's 5 MiB vmlinux BTF, each a syscall that costs
        // at every agentmon start, most in guests under emulation).
        let btf = std::fs::read(path)
            .map_err(btf_rs::Error::from)
            .and_then(|bytes| Btf::from_bytes(&bytes))
            .map_err(|source| BtfError::Read { path: path.display().to_string(), source })?;
        Ok(Self { btf })
    }

    fn find_struct(&self, name: &str) -> Result<Struct, BtfError> {
        let types = self.btf.resolve_types_by_name(name).map_err(|_| BtfError::NoStruct(name.to_string()))?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| BtfError::NoStruct(name.to_string()))
    }

    /// Strips typedefs and qualifiers to the underlying type.
    fn underlying(&self, mut t: Type) -> Type {
        for _ in 0..16 {
            let next = match &t {
                Type::Typedef(x) => self.btf.resolve_chained_type(x),
                Type::Const(x) | Type::Volatile(x) | Type::Restrict(x) => self.btf.resolve_chained_type(x),
                Type::TypeTag(x) => self.btf.resolve_chained_type(x),
                _ => return t,
            };
            match next {
                Ok(n) => t = n,
                Err(_) => return t,
            }
        }
        t
    }

    /// Bit offset and type of member `name` of `st`, looking through anonymous
    /// struct/union members (mm_struct, sock_common and others nest fields there).
    fn member(&self, st: &Struct, name: &str, depth: u32) -> Option<(u32, Type)> {
        if depth > 8 {
            return None;
        }
        for m in &st.members {
            let mname = self.btf.resolve_name(m).unwrap_or_default();
            if mname == name {
                let t = self.btf.resolve_chained_type(m).ok()?;
                return Some((m.bit_offset(), t));
            }
            if mname.is_empty() {
                let t = self.underlying(self.btf.resolve_chained_type(m).ok()?);
                if let Type::Struct(inner) | Type::Union(inner) = t
                    && let Some((off, t)) = self.member(&inner, name, depth + 1)
                {
                    return Some((m.bit_offset() + off, t));
                }
            }
        }
        None
    }

    /// Byte offset of `path` (e.g. `"d_name.name"`) within struct `strukt`.
    pub fn offset(&self, strukt: &str, path: &str) -> Result<u32, BtfError> {
        let no_field = || BtfError::NoField { strukt: strukt.into(), field: path.into() };
        let mut st = self.find_struct(strukt)?;
        let mut bits = 0u32;
        let parts: Vec<&str> = path.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let (off, t) = self.member(&st, part, 0).ok_or_else(no_field)?;
            bits += off;
            if i + 1 < parts.len() {
                match self.underlying(t) {
                    Type::Struct(s) | Type::Union(s) => st = s,
                    _ => return Err(no_field()),
                }
            }
        }
        if !bits.is_multiple_of(8) {
            return Err(BtfError::Other(format!("{strukt}.{path} is a bitfield")));
        }
        Ok(bits / 8)
    }

    /// Number of arguments of raw tracepoint `name` (`btf_trace_<name>` minus the
    /// context pointer), to check a tp_btf program's expectations.
    pub fn tp_btf_args(&self, name: &str) -> Result<usize, BtfError> {
        let tdname = format!("btf_trace_{name}");
        let t = self
            .btf
            .resolve_types_by_name(&tdname)
            .ok()
            .and_then(|v| v.into_iter().next())
            .ok_or_else(|| BtfError::Other(format!("no raw tracepoint {name} ({tdname})")))?;
        let t = self.underlying(t);
        let proto = match t {
            Type::Ptr(p) => {
                self.btf.resolve_chained_type(&p).map_err(|e| BtfError::Other(format!("{tdname}: {e}")))?
            }
            other => other,
        };
        match proto {
            Type::FuncProto(fp) => Ok(fp.parameters.len().saturating_sub(1)),
            other => Err(BtfError::Other(format!("{tdname} is a {}, not a function", other.name()))),
        }
    }

    /// Does the kernel have LSM hook `hook` (its `bpf_lsm_<hook>` attach point)?
    pub fn has_lsm_hook(&self, hook: &str) -> bool {
        self.btf.resolve_types_by_name(&format!("bpf_lsm_{hook}")).is_ok_and(|v| !v.is_empty())
    }

    /// The number of parameters of function `name` (an fexit attach point), or None
    /// when the kernel has no such function.
    pub fn function_params(&self, name: &str) -> Option<usize> {
        let f = self.btf.resolve_types_by_name(name).ok()?.into_iter().find_map(|t| match t {
            Type::Func(f) => Some(f),
            _ => None,
        })?;
        match self.btf.resolve_chained_type(&f).ok()? {
            Type::FuncProto(fp) => Some(fp.parameters.len()),
            _ => None,
        }
    }

    /// All offsets the kernel programs use.
    pub fn offsets(&self) -> Result<Offsets, BtfError> {
        let o = |s: &str, f: &str| self.offset(s, f);
        Ok(Offsets {
            task_tgid: o("task_struct", "tgid")?,
            task_start_time: o("task_struct", "start_time")?,
            task_group_leader: o("task_struct", "group_leader")?,
            task_exit_code: o("task_struct", "exit_code")?,
            task_signal: o("task_struct", "signal")?,
            signal_live: o("signal_struct", "live.counter")?,
            task_fs: o("task_struct", "fs")?,
            task_files: o("task_struct", "files")?,
            task_mm: o("task_struct", "mm")?,
            task_cred: o("task_struct", "cred")?,
            task_real_cred: o("task_struct", "real_cred")?,
            fs_pwd: o("fs_struct", "pwd")?,
            path_mnt: o("path", "mnt")?,
            path_dentry: o("path", "dentry")?,
            dentry_parent: o("dentry", "d_parent")?,
            dentry_name: o("dentry", "d_name")?,
            qstr_name: o("qstr", "name")?,
            mount_mnt: o("mount", "mnt")?,
            mount_parent: o("mount", "mnt_parent")?,
            mount_mountpoint: o("mount", "mnt_mountpoint")?,
            vfsmount_root: o("vfsmount", "mnt_root")?,
            files_fdt: o("files_struct", "fdt")?,
            fdt_max_fds: o("fdtable", "max_fds")?,
            fdt_fd: o("fdtable", "fd")?,
            file_path: o("file", "f_path")?,
            file_mode: o("file", "f_mode")?,
            file_inode: o("file", "f_inode")?,
            file_private: o("file", "private_data")?,
            inode_nlink: o("inode", "__i_nlink")?,
            inode_ino: o("inode", "i_ino")?,
            dentry_inode: o("dentry", "d_inode")?,
            dentry_sb: o("dentry", "d_sb")?,
            sb_dev: o("super_block", "s_dev")?,
            inode_mode: o("inode", "i_mode")?,
            mm_arg_start: o("mm_struct", "arg_start")?,
            mm_arg_end: o("mm_struct", "arg_end")?,
            bprm_file: o("linux_binprm", "file")?,
            bprm_filename: o("linux_binprm", "filename")?,
            bprm_fdpath: o("linux_binprm", "fdpath")?,
            bprm_interp: o("linux_binprm", "interp")?,
            socket_type: o("socket", "type")?,
            socket_sk: o("socket", "sk")?,
            sk_family: o("sock_common", "skc_family")?,
            sk_num: o("sock_common", "skc_num")?,
            sk_rcv_saddr: o("sock_common", "skc_rcv_saddr")?,
            sk_v6_rcv_saddr: o("sock_common", "skc_v6_rcv_saddr")?,
            sb_magic: o("super_block", "s_magic")?,
            proc_inode_pid: o("proc_inode", "pid")?,
            proc_inode_vfs: o("proc_inode", "vfs_inode")?,
            pid_tasks: o("pid", "tasks")?,
            task_pid_links: o("task_struct", "pid_links")?,
            task_cgroups: o("task_struct", "cgroups")?,
            css_set_dfl_cgrp: o("css_set", "dfl_cgrp")?,
            cgroup_kn: o("cgroup", "kn")?,
            kernfs_node_id: o("kernfs_node", "id")?,
            // A #define, not in BTF: include/linux/fs.h FMODE_CREATED. The
            // file_create integration test fails if this kernel disagrees.
            fmode_created: 1 << 20,
            regs_args: self.syscall_arg_regs()?,
            regs_nr: self.offset("pt_regs", "orig_ax")?,
            regs_ret: self.offset("pt_regs", "ax")?,
            ti_status: self.offset("task_struct", "thread_info")? + self.offset("thread_info", "status")?,
        })
    }

    /// Offsets of the io_uring request fields that name paths (a kernel built
    /// without io_uring, or whose commands changed shape: the error names what is
    /// missing, and the programs reading them are not loaded).
    pub fn iou_offsets(&self) -> Result<IouOffsets, BtfError> {
        let o = |s: &str, f: &str| self.offset(s, f);
        Ok(IouOffsets {
            req_opcode: o("io_kiocb", "opcode")?,
            req_cmd: o("io_kiocb", "cmd")?,
            filename_name: o("filename", "name")?,
            open_dfd: o("io_open", "dfd")?,
            open_file_slot: o("io_open", "file_slot")?,
            open_filename: o("io_open", "filename")?,
            open_flags: o("io_open", "how.flags")?,
            open_mode: o("io_open", "how.mode")?,
            unlink_dfd: o("io_unlink", "dfd")?,
            unlink_flags: o("io_unlink", "flags")?,
            unlink_filename: o("io_unlink", "filename")?,
            rename_old_dfd: o("io_rename", "old_dfd")?,
            rename_new_dfd: o("io_rename", "new_dfd")?,
            rename_oldpath: o("io_rename", "oldpath")?,
            rename_newpath: o("io_rename", "newpath")?,
            rename_flags: o("io_rename", "flags")?,
            mkdir_dfd: o("io_mkdir", "dfd")?,
            mkdir_mode: o("io_mkdir", "mode")?,
            mkdir_filename: o("io_mkdir", "filename")?,
            link_old_dfd: o("io_link", "old_dfd")?,
            link_new_dfd: o("io_link", "new_dfd")?,
            link_oldpath: o("io_link", "oldpath")?,
            link_newpath: o("io_link", "newpath")?,
            link_flags: o("io_link", "flags")?,
            cqe_res: o("io_uring_cqe", "res")?,
        })
    }

    /// Offsets in `struct pt_regs` of the registers that carry syscall arguments.
    #[cfg(target_arch = "x86_64")]
    fn syscall_arg_regs(&self) -> Result<[u32; 6], BtfError> {
        let mut out = [0u32; 6];
        for (i, r) in ["di", "si", "dx", "r10", "r8", "r9"].iter().enumerate() {
            out[i] = self.offset("pt_regs", r)?;
        }
        Ok(out)
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn syscall_arg_regs(&self) -> Result<[u32; 6], BtfError> {
        Err(BtfError::Other("syscall argument registers are only mapped for x86_64".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs against the running kernel's BTF; every Linux host agentmon supports has it.
    #[test]
    fn resolves_every_offset_on_this_kernel() {
        let btf = KernelBtf::load().expect("kernel BTF");
        let o = btf.offsets().expect("offsets");
        // struct path is { vfsmount *mnt; dentry *dentry; } on every kernel.
        assert_eq!((o.path_mnt, o.path_dentry), (0, 8));
        // Anonymous-member lookups really descended (mm_struct nests arg_start).
        assert!(o.mm_arg_end > o.mm_arg_start);
        assert_eq!(btf.tp_btf_args("sched_process_fork").unwrap(), 2);
        assert!(matches!(btf.offset("task_struct", "no_such_field"), Err(BtfError::NoField { .. })));
        // The request's command is the union at its start; the commands' filenames
        // follow their file and dirfds.
        let i = btf.iou_offsets().expect("io_uring offsets");
        assert_eq!((i.req_cmd, i.filename_name), (0, 0));
        assert!(i.req_opcode >= 8 && i.open_filename > i.open_dfd && i.rename_newpath > i.rename_oldpath);
    }
}
