//! A daemon's kernel state kept in bpffs, so that tracking, enforcement and the
//! events of a gap outlive the daemon process (a kill -9, an upgrade restart).
//!
//! ```text
//! /sys/fs/bpf/agentmon/<state>/<build>/maps/<NAME>        the stateful maps
//! /sys/fs/bpf/agentmon/<state>/<build>/links/<epoch>/<p>  one load's attached programs
//! /sys/fs/bpf/agentmon/<state>/<build>/guards/<p>-<cgroup>  enforced tasks' network guards
//! ```
//! `<state>` names the daemon (its state directory), `<build>` the programs and their
//! configuration: maps are reused only by a daemon that would have made the same
//! ones. A restarted daemon loads its programs on the pinned maps, attaches them,
//! hands the ring to its own epoch (`EPOCH`, one word: the old programs fall silent
//! as the new ones start, no event doubled or missed), and only then, once its
//! tasks are resumed, removes the previous links: enforcement never lapses. A
//! network guard is attached once per task cgroup and kept by every load after.

use std::{
    io,
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

use super::loader::LoadError;

/// The maps whose content is state: the tracked processes, the task rules, the ring
/// and its counters. Per-CPU scratch and agentmon's own handshakes are per load.
pub const PINNED_MAPS: &[&str] = &[
    "TRACKED",
    "TRACKED_BYTES",
    "PENDING",
    "EVENTS",
    "COUNTERS",
    "EPOCH",
    "ESCAPED",
    "SENSITIVE",
    "NET_TASK",
    "NET_ALLOW",
    "NET_DROPS",
    "FS_RULES",
    "LSM_TASK",
    "EXEC_OK",
    "REFUSED_OPEN",
    "TRUNC_OPEN",
    "SENS_PAT",
];

/// Where bpffs is expected; mounted there if it is not.
const BPFFS: &str = "/sys/fs/bpf";

#[derive(Debug)]
pub struct Pins {
    /// `<state>`: every build's pins of this daemon.
    root: PathBuf,
    /// `<state>/<build>`.
    dir: PathBuf,
    /// This load's links directory.
    links: PathBuf,
    /// The maps were there already: a previous daemon's state is taken over.
    pub reused: bool,
}

fn pin_err(msg: String) -> LoadError {
    LoadError::MapOp { name: "bpffs", msg }
}

/// Mounts bpffs at its usual place if something else (or nothing) is there.
fn ensure_bpffs() -> Result<(), LoadError> {
    let is_bpffs = || {
        nix::sys::statfs::statfs(BPFFS).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
    };
    if is_bpffs() {
        return Ok(());
    }
    // Root's only (the kernel's default, 1777, lets anyone make names in it).
    nix::mount::mount(Some("bpf"), BPFFS, Some("bpf"), nix::mount::MsFlags::empty(), Some("mode=0700"))
        .map_err(|e| pin_err(format!("{BPFFS} is not bpffs and mounting it failed: {e}")))?;
    tracing::info!("mounted bpffs at {BPFFS}");
    Ok(())
}

/// Makes `dir` (under bpffs) a directory of root's that no one else may write,
/// whatever was there: on a bpffs anyone may write to, another user could have
/// made the name first — a file to stop the daemon from pinning, or a directory of
/// theirs to move its pins away. They cannot have made maps or links (that needs
/// CAP_BPF), so nothing of value is lost by removing it.
fn own_dir(dir: &Path) -> Result<(), LoadError> {
    own_dir_of(dir, 0)
}

/// [`own_dir`] for owner `uid` (root's in use; the test's own in a test).
fn own_dir_of(dir: &Path, uid: u32) -> Result<(), LoadError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let ours = |m: &std::fs::Metadata| m.is_dir() && m.uid() == uid && m.mode() & 0o022 == 0;
    match std::fs::symlink_metadata(dir) {
        Ok(m) if ours(&m) => return Ok(()),
        Ok(m) => {
            tracing::warn!(
                "{}: not agentmon's (uid {}, mode {:o}): removed",
                dir.display(),
                m.uid(),
                m.mode()
            );
            let gone = if m.is_dir() { std::fs::remove_dir_all(dir) } else { std::fs::remove_file(dir) };
            gone.map_err(|e| {
                pin_err(format!("{}: not agentmon's and cannot be removed: {e}", dir.display()))
            })?;
        }
        Err(_) => {}
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        // Another daemon starting at the same time made it first (the shared
        // parent of every daemon's pins): fine if it is agentmon's. Refused, the
        // daemon ran unpinned and its tasks were let go at its restart.
        Err(e)
            if e.kind() == std::io::ErrorKind::AlreadyExists
                && std::fs::symlink_metadata(dir).is_ok_and(|m| ours(&m)) =>
        {
            Ok(())
        }
        Err(e) => Err(pin_err(format!("{}: {e}", dir.display()))),
    }
}

/// Where the daemon keeping its state in `state_dir` pins its programs and maps.
pub fn root_of(state_dir: &Path) -> PathBuf {
    let state = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    Path::new(BPFFS).join("agentmon").join(short(state.as_os_str().as_encoded_bytes()))
}

/// A previous load's maps are there and it finished loading: it handed the ring to
/// its epoch (set only once all its programs were attached).
fn handed_over(dir: &Path) -> bool {
    let epoch = aya::maps::MapData::from_pin(dir.join("maps").join("EPOCH"))
        .ok()
        .and_then(|m| aya::maps::Array::<_, u32>::try_from(aya::maps::Map::Array(m)).ok())
        .and_then(|a| a.get(&0, 0).ok());
    dir.join("maps").join("TRACKED").exists() && epoch.is_some_and(|e| e != 0)
}

/// A short hex name for `bytes`.
fn short(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl Pins {
    /// The pins of the daemon keeping its state in `state_dir`, for a load whose
    /// programs and configuration hash to `build`; this load is `epoch`.
    pub fn open(state_dir: &Path, build: &[u8], epoch: u32) -> Result<Self, LoadError> {
        ensure_bpffs()?;
        // Named by its canonical path: it must exist first.
        use std::os::unix::fs::DirBuilderExt;
        let _ = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(state_dir);
        let root = root_of(state_dir);
        for d in [root.parent().unwrap_or(Path::new(BPFFS)), &root] {
            own_dir(d)?;
        }
        let dir = root.join(short(build));
        let reused = handed_over(&dir);
        if !reused && dir.exists() {
            // Maps of a load that never finished (no epoch was handed the ring):
            // nothing in them is a daemon's state, and they must not be reused.
            std::fs::remove_dir_all(&dir).map_err(|e| pin_err(format!("{}: {e}", dir.display())))?;
        }
        let links = dir.join("links").join(format!("{epoch:08x}"));
        for d in [dir.join("maps"), dir.join("guards"), links.clone()] {
            std::fs::create_dir_all(&d).map_err(|e| pin_err(format!("{}: {e}", d.display())))?;
        }
        Ok(Self { root, dir, links, reused })
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    pub fn link(&self, name: &str) -> PathBuf {
        self.links.join(name)
    }

    /// Where the guard program `prog` of cgroup `cg` is pinned.
    pub fn guard(&self, prog: &str, cg: u64) -> PathBuf {
        self.dir.join("guards").join(format!("{prog}-{cg}"))
    }

    /// Removes the guards of cgroups not in `live` (their tasks ended).
    pub fn keep_guards(&self, live: &std::collections::BTreeSet<u64>) {
        let Ok(rd) = std::fs::read_dir(self.dir.join("guards")) else { return };
        for e in rd.flatten() {
            let name = e.file_name();
            let cg = name.to_str().and_then(|n| n.rsplit_once('-')).and_then(|(_, c)| c.parse().ok());
            if cg.is_none_or(|c| !live.contains(&c)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Removes every other load's links and every other build's state: their
    /// programs detach (this load's are attached already).
    pub fn retire(&self) -> io::Result<usize> {
        let mut n = 0;
        for parent in [self.dir.join("links"), self.root.clone()] {
            for e in std::fs::read_dir(&parent)?.flatten() {
                let p = e.path();
                if p != self.links && p != self.dir {
                    std::fs::remove_dir_all(&p)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Removes all of this daemon's pins: when the daemon stops with no task left to
    /// watch, its programs go with it.
    pub fn remove(&self) -> io::Result<()> {
        std::fs::remove_dir_all(&self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_distinct() {
        assert_eq!(short(b"a"), short(b"a"));
        assert_ne!(short(b"a"), short(b"b"));
        assert_eq!(short(b"a").len(), 16);
    }

    #[test]
    fn daemons_starting_together_share_the_parent_directory() {
        // Two daemons (different state directories) create the same
        // /sys/fs/bpf/agentmon at once: the one that lost the race did not pin.
        for round in 0..40 {
            let t = tempfile::tempdir().unwrap();
            let dir = t.path().join("agentmon");
            let go = std::sync::Arc::new(std::sync::Barrier::new(8));
            let all: Vec<_> = (0..8)
                .map(|_| {
                    let (dir, go) = (dir.clone(), go.clone());
                    std::thread::spawn(move || {
                        go.wait();
                        own_dir_of(&dir, nix::unistd::geteuid().as_raw()).map_err(|e| e.to_string())
                    })
                })
                .collect();
            for h in all {
                assert_eq!(h.join().unwrap(), Ok(()), "round {round}");
            }
        }
    }
}
