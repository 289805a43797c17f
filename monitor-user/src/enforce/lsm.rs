//! The BPF LSM tier's plan for a task: its scope as rights on inodes, which the
//! kernel's security hooks check before each effect (`monitor-ebpf/src/lsm.rs`).
//!
//! The scope's forms are Landlock's (`DIR/**`, an exact existing path, a glob in
//! the last component of an exec pattern), so a manifest means the same on both
//! tiers. What this tier does beyond Landlock: a delete scope of its own (removing
//! is not tied to renaming), mode, owner and extended attributes kept to the write
//! scope in the kernel (no round trip to agentmon), no exec of anonymous or deleted
//! files, agentmon's own files refused through bind mounts too, and the ELF loader
//! is not granted as a program (Landlock must allow it, which lets `ld.so FILE`
//! run any file).

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use monitor_common::lsm::{FsKey, kernel_dev, lflags, right};

use super::landlock::{QUIET_DEVICES, Refusal, Target, exec_files, propose_dir, target};
use crate::task::{Mode, Task};

/// What the kernel is given for one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// [`lflags`].
    pub flags: u32,
    /// (file or directory, rights): made identities (as the hooks know them) when
    /// the task is enrolled (`kernel::lsm::LsmMaps::ident`).
    pub grants: Vec<(PathBuf, u32)>,
}

/// `p`'s identity by stat (following symlinks, as a path grant does): what the
/// kernel knows it by on most file systems; see `LsmMaps::ident` for the others.
pub fn key(p: &Path) -> std::io::Result<FsKey> {
    let m = std::fs::metadata(p)?;
    let dev = m.dev();
    Ok(FsKey { ino: m.ino(), dev: kernel_dev(libc::major(dev), libc::minor(dev)), task: 0 })
}

fn grant(out: &mut Vec<(PathBuf, u32)>, t: &Target, rights: u32) -> Result<(), Refusal> {
    let p = match t {
        Target::Beneath(d) => d,
        Target::Exact(f) => f,
    };
    if !p.exists() {
        return Err(("scope", format!("{} does not exist at launch", p.display())));
    }
    out.push((p.clone(), rights));
    Ok(())
}

/// The plan of enforced `task`; `launch` are the files its command itself executes
/// (the program and its `#!` interpreters).
pub fn plan(task: &Task, launch: &[PathBuf]) -> Result<Plan, Refusal> {
    let mut grants = Vec::new();
    match task.mode {
        Mode::Read => {}
        Mode::Propose => grant(&mut grants, &Target::Beneath(propose_dir(task)?), right::WRITE)?,
        Mode::Execute => {
            for p in &task.write.patterns {
                grant(&mut grants, &target("scope.write", p)?, right::WRITE)?;
            }
            for p in &task.delete.patterns {
                let t = target("scope.delete", p)?;
                let r = if matches!(t, Target::Exact(_)) { right::REMOVE_EXACT } else { right::REMOVE };
                grant(&mut grants, &t, r)?;
            }
        }
    }
    for dev in QUIET_DEVICES.iter().map(Path::new).filter(|p| p.exists()) {
        grant(&mut grants, &Target::Exact(dev.to_path_buf()), right::WRITE)?;
    }
    for p in &task.exec.patterns {
        for t in exec_files(p)? {
            grant(&mut grants, &t, right::EXEC)?;
        }
    }
    for f in launch.iter().filter(|p| p.exists()) {
        grant(&mut grants, &Target::Exact(f.clone()), right::EXEC)?;
    }
    if task.deny_sensitive_reads {
        for p in &task.read.patterns {
            grant(&mut grants, &target("scope.read", p)?, right::READ_SENSITIVE)?;
        }
    }
    Ok(Plan { flags: flags(task), grants })
}

/// What the hooks hold `task` to ([`lflags`]): its text's alone, no file looked at.
pub fn flags(task: &Task) -> u32 {
    let mut flags = lflags::FILES | lflags::EXEC | lflags::SIGNALS;
    if task.deny_sensitive_reads {
        flags |= lflags::DENY_SENSITIVE;
    }
    if task.approval.contains(&crate::task::Op::Exec) {
        flags |= lflags::EXEC_APPROVED;
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(yaml: &str) -> Task {
        crate::task::parse(yaml, Path::new("t.yaml"), crate::event::Timestamp(0)).expect("manifest")
    }

    #[test]
    fn scope_becomes_rights_on_inodes() {
        let d = tempfile::tempdir().unwrap();
        let (w, x) = (d.path().join("w"), d.path().join("w/x"));
        std::fs::create_dir(&w).unwrap();
        std::fs::write(&x, b"").unwrap();
        let t = task(&format!(
            "id: t\nmode: execute\nenforcement: enforce\nscope:\n  write: [\"{w}/**\"]\n  delete: [\"{x}\"]\n  \
             exec: [\"/bin/sh\"]\n",
            w = w.display(),
            x = x.display()
        ));
        let p = plan(&t, &[]).unwrap();
        assert_eq!(p.flags, lflags::FILES | lflags::EXEC | lflags::SIGNALS);
        // The manifest resolves symlinks in its patterns (/bin/sh may be /usr/bin/dash).
        let real = |q: &Path| std::fs::canonicalize(q).unwrap();
        let rights_of = |path: &Path| {
            p.grants.iter().filter(|(g, _)| real(g) == real(path)).map(|(_, r)| *r).fold(0, |a, b| a | b)
        };
        assert_eq!(rights_of(&w), right::WRITE);
        // A delete scope narrower than the write scope is expressible here.
        assert_eq!(rights_of(&x), right::REMOVE_EXACT);
        assert_eq!(rights_of(Path::new("/bin/sh")), right::EXEC);
        assert_eq!(rights_of(Path::new("/dev/null")), right::WRITE);
        assert_eq!(rights_of(d.path()), 0);
    }

    #[test]
    fn forms_landlock_cannot_express_are_refused_here_too() {
        let t = task("id: t\nmode: execute\nenforcement: enforce\nscope:\n  write: [\"/tmp/**/x\"]\n");
        let (clause, why) = plan(&t, &[]).unwrap_err();
        assert_eq!(clause, "scope.write");
        assert!(why.contains("/tmp/**/x"), "{why}");
    }

    #[test]
    fn a_read_mode_task_gets_no_write_or_remove_rights() {
        let t = task("id: t\nmode: read\nenforcement: enforce\n");
        let p = plan(&t, &[]).unwrap();
        let devices: Vec<PathBuf> = QUIET_DEVICES.iter().map(PathBuf::from).collect();
        assert!(p.grants.iter().all(|(g, r)| *r & right::REMOVE == 0 && (*r == 0 || devices.contains(g))));
    }

    #[test]
    fn device_numbers_are_in_the_kernel_encoding() {
        // sda1 (8:1) is 0x00800001 in the kernel, 0x0801 to stat.
        assert_eq!(kernel_dev(8, 1), 0x0080_0001);
        assert_eq!(kernel_dev(259, 3), (259 << 20) | 3);
    }
}
