//! An event's cgroup by name: the kernel stamps each event with the cgroup v2 id of
//! the process that made it (`bpf_get_current_cgroup_id`, when the call returned),
//! and the id is the kernfs node id of the cgroup's directory, which
//! `open_by_handle_at(2)` opens on the cgroup2 mount. The directory's path is the
//! cgroup's, and its container and pod are told from it ([`crate::container`]).
//! Each id is looked up once; ids are never reused.

use std::{
    collections::HashMap,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::Arc,
};

use crate::container::{self, Container, Pod};

/// `FILEID_KERNFS`: a kernfs file handle, whose 8 bytes are the node id.
const FILEID_KERNFS: i32 = 0xfe;

/// Ids kept at most (a host that makes and removes cgroups without end).
const MAX_CACHED: usize = 16384;

/// What an event says of its cgroup.
#[derive(Debug, Clone, PartialEq)]
pub struct Named {
    pub path: Arc<str>,
    pub container: Option<Arc<Container>>,
    pub pod: Option<Arc<Pod>>,
}

/// A cgroup's container and pod.
type Attribution = (Option<Arc<Container>>, Option<Arc<Pod>>);

#[repr(C)]
struct KernfsHandle {
    handle_bytes: u32,
    handle_type: i32,
    id: u64,
}

pub struct CgroupNames {
    /// The cgroup2 mount (`/sys/fs/cgroup`, or its `unified` mount in hybrid mode).
    root: std::path::PathBuf,
    mount: Option<OwnedFd>,
    cache: HashMap<u64, Option<Arc<Named>>>,
    /// agentmon's task cgroups by path: the container and pod their processes came
    /// from (for the cgroup and every cgroup below it).
    origins: Vec<(String, Attribution)>,
}

impl Default for CgroupNames {
    fn default() -> Self {
        Self::new()
    }
}

impl CgroupNames {
    pub fn new() -> Self {
        // Paths are as agentmon's cgroup namespace shows them: another's than the
        // host's (a container without the host's) names no container rightly.
        let ns = |p: &str| std::fs::read_link(p).ok();
        if ns("/proc/self/ns/cgroup") != ns("/proc/1/ns/cgroup") {
            tracing::warn!(
                "agentmon is not in the host's cgroup namespace: events' cgroups, containers and pods, and \
                 selectors by them, are as its own namespace shows them (run it with the host's: docs/deploy.md)"
            );
        }
        let root = crate::enforce::cgroup::v2_root().unwrap_or_default();
        let mount = std::fs::File::open(&root).ok().map(OwnedFd::from);
        Self { root, mount, cache: HashMap::new(), origins: Vec::new() }
    }

    /// Processes moved into agentmon's task cgroup `id` came from the cgroup at
    /// `origin` (a container's): their events keep its container and pod, beside
    /// the cgroup they are in now, and so do those of any cgroup made below it.
    pub fn origin(&mut self, id: u64, origin: &str) {
        let Ok(path) = self.path_of(id) else { return };
        let (c, p) = container::of_cgroup(origin);
        // Task cgroups that are gone are let go.
        let root = self.root.clone();
        self.origins.retain(|(o, _)| *o != path && root.join(o.trim_start_matches('/')).exists());
        self.origins.push((path, (c.map(Arc::new), p.map(Arc::new))));
        // What was named before is named again.
        self.cache.clear();
    }

    /// The cgroup of id `id` (None: 0, gone before it was looked up, or no cgroup2).
    pub fn get(&mut self, id: u64) -> Option<Arc<Named>> {
        if id == 0 {
            return None;
        }
        if let Some(n) = self.cache.get(&id) {
            return n.clone();
        }
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        let n = match self.path_of(id) {
            Ok(path) => {
                let below = |o: &str| path == o || path.strip_prefix(o).is_some_and(|r| r.starts_with('/'));
                let (c, p) = match self.origins.iter().find(|(o, _)| below(o)) {
                    Some((_, a)) => a.clone(),
                    None => {
                        let (c, p) = container::of_cgroup(&path);
                        (c.map(Arc::new), p.map(Arc::new))
                    }
                };
                Some(Arc::new(Named { path: path.into(), container: c, pod: p }))
            }
            // Gone: it stays unnamed. Any other failure (out of descriptors) is tried
            // again with the next event.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ESTALE | libc::ENOENT)) => None,
            Err(_) => return None,
        };
        self.cache.insert(id, n.clone());
        n
    }

    fn path_of(&self, id: u64) -> std::io::Result<String> {
        let mount = self.mount.as_ref().ok_or_else(|| std::io::Error::other("no cgroup2 mount"))?;
        let mut h = KernfsHandle { handle_bytes: 8, handle_type: FILEID_KERNFS, id };
        // SAFETY: a valid mount descriptor and a file handle of the size it says;
        // returns a new descriptor or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                mount.as_raw_fd(),
                &raw mut h,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_PATH,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        let rel = link.strip_prefix(&self.root).map_err(std::io::Error::other)?;
        Ok(format!("/{}", rel.to_string_lossy()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The id the kernel gives a cgroup is its directory's inode number in cgroupfs.
    #[test]
    fn a_cgroups_id_names_it() {
        let mut names = CgroupNames::new();
        let path = crate::enforce::cgroup::of_pid(std::process::id()).unwrap();
        use std::os::unix::fs::MetadataExt;
        let root = crate::enforce::cgroup::v2_root().unwrap();
        let id = std::fs::metadata(format!("{}{path}", root.display())).unwrap().ino();
        let n = names.get(id).expect("this process's cgroup by id");
        assert_eq!(&*n.path, path.as_str());
        assert!(names.get(0).is_none());
        assert!(names.get(u64::MAX - 7).is_none(), "no such cgroup");
    }
}
