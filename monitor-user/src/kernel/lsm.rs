//! The BPF LSM tier's maps and links, as userspace sees them: an enforced task's
//! grants go in before its command runs and come out when it ends (see
//! `monitor_common::lsm` for their layout, `monitor-ebpf/src/lsm.rs` for the hooks).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use aya::maps::{HashMap, MapData};
use monitor_common::lsm::{ExecOk, FsKey, LsmTask};

use super::loader::LoadError;

/// The LSM hooks (program name = hook name).
///
/// Hooks the running kernel may lack, because what they check passes another hook
/// there: `file_truncate` (6.2; before, O_TRUNC and ftruncate went through
/// `path_truncate`), `inode_set_acl`/`inode_remove_acl` (6.2; before, POSIX ACLs
/// were extended attributes). Any other hook missing (a kernel without
/// CONFIG_SECURITY_PATH) means this tier cannot hold the scope: loading fails.
pub const HOOKS: &[&str] = &[
    "file_open",
    "path_mknod",
    "path_mkdir",
    "path_symlink",
    "path_unlink",
    "path_rmdir",
    "path_rename",
    "path_link",
    "path_truncate",
    "file_truncate",
    "path_chmod",
    "path_chown",
    "inode_setxattr",
    "inode_removexattr",
    "inode_set_acl",
    "inode_remove_acl",
    "bprm_check_security",
    "task_kill",
];

/// Hooks a kernel may lack without a gap (see [`HOOKS`]).
pub const OPTIONAL_HOOKS: &[&str] = &["file_truncate", "inode_set_acl", "inode_remove_acl"];

/// Does the running kernel call BPF LSM programs (`bpf` in the active LSM list)?
pub fn kernel_runs_bpf_lsm() -> bool {
    std::fs::read_to_string("/sys/kernel/security/lsm").is_ok_and(|s| s.trim().split(',').any(|l| l == "bpf"))
}

pub struct LsmMaps {
    pub(super) fs_rules: HashMap<MapData, FsKey, u32>,
    pub(super) tasks: HashMap<MapData, u32, LsmTask>,
    pub(super) exec_ok: HashMap<MapData, u32, ExecOk>,
    /// Shared with the workers that open a file to learn its identity
    /// ([`Self::ident_within`]); locked only for each map call, never across an open.
    pub(super) ident: std::sync::Arc<std::sync::Mutex<HashMap<MapData, u32, FsKey>>>,
    /// Whether the hooks are attached (`Sensors::arm_lsm`): `file_open` answers
    /// [`Self::ident`] only then.
    pub(super) armed: super::loader::Armed,
    /// Whether the sensitive set is matched exactly in the kernel (else why not):
    /// tasks that refuse sensitive reads need it.
    pub sensitive_exact: Result<(), String>,
    /// The FS_RULES keys written per task, to take them out again.
    pub(super) written: BTreeMap<u32, Vec<FsKey>>,
    /// agentmon's own files (task 0, [`Self::protect`]): never taken out.
    pub(super) own: std::collections::HashSet<FsKey>,
    /// Files protected (task 0) for tasks, their events files
    /// ([`Self::protect_for`]), and the tasks they are protected for.
    pub(super) lent: std::collections::HashMap<FsKey, BTreeSet<u32>>,
}

fn op(name: &'static str, e: aya::maps::MapError) -> LoadError {
    LoadError::MapOp { name, msg: e.to_string() }
}

impl LsmMaps {
    /// The identity the hooks know `p` by: agentmon opens it and `file_open` says.
    /// stat's (dev, ino) is not always the kernel's (overlayfs reports a file's
    /// lower or upper inode, the hooks see the overlay's). A file that cannot be
    /// opened (a socket) falls back to stat's.
    ///
    /// `strict`: no symlink anywhere in `p` (a grant is opened by its canonical path;
    /// one swapped for a symlink since must not carry the grant elsewhere). Else
    /// links are followed (an approved exec's `/proc/self/fd/N`).
    pub fn ident(&mut self, p: &Path, strict: bool) -> std::io::Result<FsKey> {
        ident_at(&self.ident, &self.armed, p, strict)
    }

    /// [`Self::ident`] in a worker of `pool`, waited for as `w` says: the open may
    /// be a request to a file system a user serves, which may never answer (an
    /// exec held for approval of a program on such a mount; a scope there).
    pub fn ident_within(
        &self,
        p: &Path,
        strict: bool,
        pool: &'static crate::worker::Pool,
        w: &crate::realpath::Wait,
    ) -> Result<FsKey, crate::realpath::Error> {
        use crate::{realpath::Error, worker::Stuck};
        let (map, armed, owned) = (self.ident.clone(), self.armed.clone(), p.to_path_buf());
        let left = w.until.saturating_duration_since(std::time::Instant::now());
        match pool.run(w.who, left, move || ident_at(&map, &armed, &owned, strict)) {
            Ok(r) => Ok(r?),
            Err(Stuck::Late) => Err(Error::Unanswered(left)),
            Err(Stuck::Refused(e)) => Err(Error::Refused(e)),
            Err(Stuck::Failed) => Err(Error::Io(std::io::Error::other("the open failed"))),
        }
    }

    /// Puts task `task`'s grants in, then the task itself: the hooks enforce
    /// nothing for it until the last write, and everything from then on.
    pub fn enroll(&mut self, task: u32, mut l: LsmTask, grants: &[(FsKey, u32)]) -> Result<(), LoadError> {
        l.rules = task;
        let mut merged: BTreeMap<(u64, u32), u32> = BTreeMap::new();
        for (k, r) in grants {
            *merged.entry((k.ino, k.dev)).or_default() |= r;
        }
        let keys = self.written.entry(task).or_default();
        for ((ino, dev), r) in merged {
            let k = FsKey { ino, dev, task };
            self.fs_rules.insert(&k, &r, 0).map_err(|e| op("FS_RULES", e))?;
            keys.push(k);
        }
        self.tasks.insert(&task, &l, 0).map_err(|e| op("LSM_TASK", e))
    }

    /// Whether any task is enforced on this tier (LSM_TASK is not empty). A map
    /// that cannot be read counts as enrolled: the hooks stay.
    pub fn enrolled(&self) -> bool {
        self.tasks.keys().next().is_some()
    }

    /// The highest task cookie enrolled (0: none).
    pub fn max_cookie(&self) -> u32 {
        self.tasks.keys().filter_map(|k| k.ok()).max().unwrap_or(0)
    }

    /// Takes task `task` and the grants written under it out.
    pub fn forget(&mut self, task: u32) {
        let _ = self.tasks.remove(&task);
        for k in self.written.remove(&task).unwrap_or_default() {
            let _ = self.fs_rules.remove(&k);
        }
        let mut freed = Vec::new();
        for (k, owners) in &mut self.lent {
            if owners.remove(&task) && owners.is_empty() {
                freed.push(*k);
            }
        }
        for k in freed {
            self.lent.remove(&k);
            // Left protected, the file's inode, once reused, would be refused to
            // every enforced task.
            if !self.own.contains(&k) {
                let _ = self.fs_rules.remove(&k);
            }
        }
    }

    /// Takes out every task (and grant) whose cookie is not in `known`: what a
    /// previous daemon enrolled for tasks no one resumed.
    pub fn keep_tasks(&mut self, known: &std::collections::BTreeSet<u32>) {
        let tasks: Vec<u32> =
            self.tasks.keys().filter_map(|k| k.ok()).filter(|c| !known.contains(c)).collect();
        for c in tasks {
            let _ = self.tasks.remove(&c);
        }
        let rules: Vec<FsKey> = self
            .fs_rules
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.task != 0 && !known.contains(&k.task))
            .collect();
        for k in rules {
            let _ = self.fs_rules.remove(&k);
        }
        // Events files protected for tasks no one resumed (a resumed task's is
        // protected for it again; agentmon's own files by every enrolment).
        let files: Vec<FsKey> = self
            .fs_rules
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.task == 0 && !self.own.contains(k) && !self.lent.contains_key(k))
            .collect();
        for k in files {
            let _ = self.fs_rules.remove(&k);
        }
    }

    /// Forgets every enrolled task with no process in `live`: those enrolled here,
    /// and those a previous daemon enrolled that no one resumed (kept at the resume
    /// while their processes ran), with their grants. Until then the hooks stay
    /// attached (kernel::loader::hooks).
    pub fn sweep(&mut self, live: &std::collections::BTreeSet<u32>) {
        let mut gone: BTreeSet<u32> = self.written.keys().copied().filter(|c| !live.contains(c)).collect();
        gone.extend(self.lent.values().flatten().filter(|c| !live.contains(c)));
        let orphans: BTreeSet<u32> = self
            .tasks
            .keys()
            .filter_map(|k| k.ok())
            .filter(|c| !live.contains(c) && !self.written.contains_key(c))
            .collect();
        if !orphans.is_empty() {
            let rules: Vec<FsKey> =
                self.fs_rules.keys().filter_map(|k| k.ok()).filter(|k| orphans.contains(&k.task)).collect();
            for k in rules {
                let _ = self.fs_rules.remove(&k);
            }
        }
        gone.extend(orphans);
        for c in gone {
            self.forget(c);
        }
    }

    /// Marks agentmon's own files (task 0): no enforced task may change them; nor
    /// read `secrets` (its private keys).
    pub fn protect(&mut self, keys: &[FsKey], secrets: &[FsKey]) -> Result<(), LoadError> {
        use monitor_common::lsm::right::{PROTECTED, SECRET};
        let marks =
            keys.iter().map(|k| (k, PROTECTED)).chain(secrets.iter().map(|k| (k, PROTECTED | SECRET)));
        for (k, rights) in marks {
            let k = FsKey { task: 0, ..*k };
            self.fs_rules.insert(&k, &rights, 0).map_err(|e| op("FS_RULES", e))?;
            self.own.insert(k);
        }
        Ok(())
    }

    /// Marks file `k` (task 0) as agentmon's while task `task` lives: its events
    /// file. Taken out with the last task it is marked for, unless it is one of
    /// agentmon's own files too.
    pub fn protect_for(&mut self, task: u32, k: FsKey) -> Result<(), LoadError> {
        let k = FsKey { task: 0, ..k };
        self.fs_rules.insert(&k, &monitor_common::lsm::right::PROTECTED, 0).map_err(|e| op("FS_RULES", e))?;
        self.lent.entry(k).or_default().insert(task);
        Ok(())
    }

    /// Task `task` (its rules' cookie) may no longer change the file `k`: a program
    /// held for approval stays what the approver is shown. Taken out with the task.
    pub fn freeze(&mut self, task: u32, k: FsKey) -> Result<(), LoadError> {
        let rules = self.tasks.get(&task, 0).map(|l| l.rules).unwrap_or(task);
        let key = FsKey { task: rules, ..k };
        let had = self.fs_rules.get(&key, 0).unwrap_or(0);
        self.fs_rules
            .insert(&key, &(had | monitor_common::lsm::right::PROTECTED), 0)
            .map_err(|e| op("FS_RULES", e))?;
        self.written.entry(rules).or_default().push(key);
        Ok(())
    }

    /// The next exec of thread `tid` may run only `ok`'s file.
    pub fn approve_exec(&mut self, tid: u32, ok: ExecOk) -> Result<(), LoadError> {
        self.exec_ok.insert(&tid, &ok, 0).map_err(|e| op("EXEC_OK", e))
    }
}

/// [`LsmMaps::ident`], wherever it runs (the map is keyed by the opening thread).
fn ident_at(
    map: &std::sync::Mutex<HashMap<MapData, u32, FsKey>>,
    armed: &super::loader::Armed,
    p: &Path,
    strict: bool,
) -> std::io::Result<FsKey> {
    use std::os::unix::ffi::OsStrExt;
    // Detached, no hook answers, and stat's identity is not the hooks' on overlayfs:
    // a grant or protection keyed on it would miss (kernel::loader::hooks).
    if !armed.get() {
        return Err(std::io::Error::other("the BPF LSM hooks are not attached"));
    }
    let tid = nix::unistd::gettid().as_raw() as u32;
    let lock = || map.lock().unwrap_or_else(|e| e.into_inner());
    lock().insert(&tid, &FsKey::default(), 0).map_err(std::io::Error::other)?;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // Read-only, non-blocking (a FIFO), never the controlling terminal.
    // SAFETY: open_how is plain data; zero is its default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC) as u64;
    how.resolve = if strict { libc::RESOLVE_NO_SYMLINKS } else { 0 };
    // SAFETY: a valid path and open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            &raw const how,
            size_of::<libc::open_how>(),
        )
    };
    let opened = if fd < 0 { Err(std::io::Error::last_os_error()) } else { Ok(fd) };
    let seen = {
        let mut m = lock();
        let seen = m.get(&tid, 0).ok();
        let _ = m.remove(&tid);
        seen
    };
    match opened {
        Ok(fd) => {
            // SAFETY: the descriptor was just opened here.
            unsafe { libc::close(fd as i32) };
            match seen {
                Some(k) if k != FsKey::default() => Ok(k),
                _ => crate::enforce::lsm::key(p),
            }
        }
        // A symlink where none may be: refused, never followed.
        Err(e) if strict && e.raw_os_error() == Some(libc::ELOOP) => Err(e),
        // A socket cannot be opened: stat's identity.
        Err(_) if !strict || p.exists() => crate::enforce::lsm::key(p),
        Err(e) => Err(e),
    }
}
