//! Each task runs in its own cgroup v2: the network guard programs are attached to
//! an enforced task's, and containment freezes or kills it as a whole.

use std::{
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use monitor_common::{NetKeyData, NetPorts};

use crate::task::scope::{Endpoint, Ports};

/// The cgroup v2 hierarchy: unified mode, or the `unified` mount of hybrid mode.
pub fn v2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, at, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(at))
    })
}

/// The cgroup v2 path of process `pid` now (`/proc/PID/cgroup`'s `0::` line).
pub fn of_pid(pid: u32) -> Option<String> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    t.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_string)
}

/// The ids of the task cgroups that exist under agentmon's directory (whoever made
/// them: a task that failed to resume still has its own; nested ones are elsewhere,
/// asked by id with [`gone`]). None when they cannot be listed (out of
/// descriptors): nothing may be concluded from that.
pub fn ours() -> Option<std::collections::BTreeSet<u64>> {
    use std::os::unix::fs::MetadataExt;
    let rd = std::fs::read_dir(v2_root()?.join("agentmon")).ok()?;
    let mut ids = std::collections::BTreeSet::new();
    for e in rd {
        let m = e.ok()?.metadata().ok()?;
        if m.is_dir() {
            ids.insert(m.ino());
        }
    }
    Some(ids)
}

/// Cgroups opened by id (a file handle on cgroupfs, as name_to_handle_at gives
/// one): whatever cgroup namespace or mount this process sees.
struct ById {
    root: std::fs::File,
}

impl ById {
    /// None when ids cannot be asked: the hierarchy is not cgroup2 where it should
    /// be, or a cgroup known to exist (agentmon's own directory) does not open by
    /// its id.
    fn new() -> Option<Self> {
        const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
        let root_path = v2_root()?;
        let root = std::fs::File::open(&root_path).ok()?;
        let fs = nix::sys::statfs::fstatfs(&root).ok()?;
        if fs.filesystem_type().0 as i64 != CGROUP2_SUPER_MAGIC {
            return None;
        }
        let by = Self { root };
        let known = std::fs::metadata(root_path.join("agentmon")).ok()?.ino();
        by.open(known)?.map(drop)?;
        Some(by)
    }

    /// Some(Some(dir)): there; Some(None): gone (stale); None: no answer to trust
    /// (no CAP_DAC_READ_SEARCH, a container's seccomp profile).
    fn open(&self, id: u64) -> Option<Option<std::os::fd::OwnedFd>> {
        use std::os::fd::{AsRawFd, FromRawFd};
        /// struct file_handle with kernfs's 8-byte handle (include/linux/exportfs.h
        /// FILEID_KERNFS).
        #[repr(C)]
        struct Handle {
            bytes: u32,
            kind: i32,
            id: u64,
        }
        const FILEID_KERNFS: i32 = 0xfe;
        let mut h = Handle { bytes: 8, kind: FILEID_KERNFS, id };
        // SAFETY: a handle of the size it says.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                self.root.as_raw_fd(),
                &raw mut h,
                libc::O_RDONLY | libc::O_CLOEXEC | libc::O_DIRECTORY,
            )
        };
        if fd >= 0 {
            // SAFETY: the descriptor just opened, owned from here.
            return Some(Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }));
        }
        (io::Error::last_os_error().raw_os_error() == Some(libc::ESTALE)).then_some(None)
    }
}

/// Which of the cgroups `ids` are gone, asked of the kernel by id ([`ById`]). None
/// when that cannot be told.
pub fn gone(ids: impl IntoIterator<Item = u64>) -> Option<Vec<u64>> {
    let by = ById::new()?;
    let mut out = Vec::new();
    for id in ids {
        if by.open(id)?.is_none() {
            out.push(id);
        }
    }
    Some(out)
}

/// Which of the cgroups `ids` have processes in them or beneath (`populated 1` in
/// their cgroup.events), asked by id. None when that cannot be told.
pub fn populated(ids: impl IntoIterator<Item = u64>) -> Option<std::collections::BTreeSet<u64>> {
    use std::io::Read;
    let by = ById::new()?;
    let mut out = std::collections::BTreeSet::new();
    for id in ids {
        let Some(dir) = by.open(id)? else { continue };
        let mut events = String::new();
        let f = nix::fcntl::openat(
            &dir,
            "cgroup.events",
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()?;
        std::fs::File::from(f).read_to_string(&mut events).ok()?;
        if events.lines().any(|l| l == "populated 1") {
            out.insert(id);
        }
    }
    Some(out)
}

/// A task's cgroup; removed when dropped (if it is empty by then).
#[derive(Debug)]
pub struct TaskCgroup {
    pub path: PathBuf,
    /// The cgroup id (its directory's inode), as `bpf_get_current_cgroup_id` returns.
    pub id: u64,
    /// The cgroup the task's root was in before it was moved here (a container's,
    /// whose container and pod its events keep).
    pub origin: Option<String>,
    /// Where it goes if it still has processes when dropped, to be removed once it
    /// has none (a cgroup made before its task's root, whose start failed with the
    /// root in it: runner/prepared.rs). None: left in place (a task's, for a
    /// restarted daemon to adopt).
    pub grave: Option<Grave>,
}

/// Cgroups let go of while processes were in them, removed once empty ([`bury`]).
pub type Grave = std::sync::Arc<std::sync::Mutex<Vec<PathBuf>>>;

/// Removes the cgroups in `grave` that are empty now (gone ones are forgotten).
pub fn bury(grave: &Grave) {
    let mut g = grave.lock().unwrap_or_else(|e| e.into_inner());
    g.retain(|p| std::fs::remove_dir(p).is_err() && p.exists());
}

/// The name a nested task cgroup starts with (beside agentmon's own directory).
const NESTED: &str = "agentmon-";

/// A task cgroup's own name: `PID-N`, digits only.
fn task_name(n: &str) -> bool {
    n.split_once('-').is_some_and(|(a, b)| {
        [a, b].iter().all(|x| !x.is_empty() && x.len() <= 10 && x.bytes().all(|c| c.is_ascii_digit()))
    })
}

/// Whether cgroup path `at` (as /proc/PID/cgroup names it) is, or is beneath, a
/// cgroup made for a task: under agentmon's directory, or with a component named as
/// a nested one. A look-alike name only lowers what its processes may ask.
pub fn is_task_path(at: &str) -> bool {
    at.starts_with("/agentmon/") || at.split('/').any(|c| c.starts_with(NESTED))
}

/// Only root may change it: owned by uid 0 and writable by no group or other user
/// (kernfs has no ACLs: the mode is all there is).
fn root_only(f: &Path) -> Result<(), String> {
    let m = std::fs::metadata(f).map_err(|e| format!("{}: {e}", f.display()))?;
    if m.uid() != 0 {
        return Err(format!("{} is owned by uid {} (delegated)", f.display(), m.uid()));
    }
    if m.mode() & 0o022 != 0 {
        return Err(format!("{} is writable by others (mode {:o})", f.display(), m.mode() & 0o777));
    }
    Ok(())
}

/// Every cgroup from `dir` up to (not including) `root`, and its `cgroup.procs`, is
/// [`root_only`].
fn root_only_up(root: &Path, dir: &Path) -> Result<(), String> {
    let mut at = dir;
    while at != root {
        root_only(at)?;
        root_only(&at.join("cgroup.procs"))?;
        at = at.parent().ok_or("outside the hierarchy")?;
    }
    Ok(())
}

/// Where the cgroup of a task whose root is in cgroup `origin` goes: beneath
/// `origin`, so that the limits and accounting of that cgroup (a pod's container, a
/// service) still hold its processes; or, with the reason, under agentmon's own
/// directory where beneath would not do:
/// - the root cgroup, or one agentmon cannot name whole (another cgroup namespace's
///   `/..` paths) or that is not a plain domain;
/// - a cgroup, or one above it, that a user other than root may write (delegated, as
///   a user session's or a rootless container's, or made group-writable): from there
///   the task's processes could move themselves out of the task's cgroup, past its
///   network guard, with no privilege (moving needs write access to the common
///   ancestor only).
pub fn home_for(root: &Path, origin: &str) -> Result<PathBuf, String> {
    use std::path::Component;
    let rel = Path::new(origin);
    if !rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
    {
        return Err(format!("cgroup {origin:?} is not a plain path from the root"));
    }
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    if rel.as_os_str().is_empty() {
        return Err("the root cgroup".into());
    }
    if rel.starts_with("agentmon") || is_task_path(origin) {
        return Err(format!("{origin} is a task's cgroup"));
    }
    let dir = root.join(rel);
    let kind = std::fs::read_to_string(dir.join("cgroup.type")).map_err(|e| format!("{origin}: {e}"))?;
    if kind.trim() != "domain" {
        return Err(format!("{origin} is a {} cgroup", kind.trim()));
    }
    root_only_up(root, &dir)?;
    Ok(dir)
}

/// Whether `path` is where a task cgroup may be (a restarted daemon adopts only
/// those): `agentmon/PID-N`, or `agentmon-PID-N` beneath a cgroup it may nest in
/// (owned by root all the way up, as [`home_for`] asks).
pub fn is_task_cgroup(root: &Path, path: &Path) -> bool {
    use std::path::Component;
    let Ok(rel) = path.strip_prefix(root) else { return false };
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return false;
    }
    let Some(name) = rel.file_name().and_then(|n| n.to_str()) else { return false };
    match rel.parent() {
        Some(p) if p == Path::new("agentmon") => task_name(name),
        Some(p) if !p.as_os_str().is_empty() => {
            name.strip_prefix(NESTED).is_some_and(task_name)
                && !is_task_path(&format!("/{}", p.display()))
                && root_only_up(root, &root.join(p)).is_ok()
        }
        _ => false,
    }
}

/// The extended attribute that marks a task cgroup paused ([`TaskCgroup::mark_paused`]).
const PAUSED_XATTR: &std::ffi::CStr = c"trusted.agentmon.paused";

impl TaskCgroup {
    /// A task cgroup named `name` (`PID-N`), under agentmon's own directory.
    pub fn create(name: &str) -> io::Result<Self> {
        let root = v2_root().ok_or_else(|| io::Error::other("no cgroup v2 hierarchy is mounted"))?;
        std::fs::create_dir_all(root.join("agentmon"))?;
        Self::make(root.join("agentmon").join(name))
    }

    /// A task cgroup for a root now in cgroup `origin`: beneath it where
    /// [`home_for`] allows, else (or where it cannot be made there: limits on
    /// descendants, the container gone meanwhile) under agentmon's directory, with
    /// the reason.
    pub fn create_for(name: &str, origin: Option<&str>) -> io::Result<(Self, Option<String>)> {
        let root = v2_root().ok_or_else(|| io::Error::other("no cgroup v2 hierarchy is mounted"))?;
        let home = origin.ok_or_else(|| "its cgroup is unknown".to_string()).and_then(|o| home_for(&root, o));
        let nested = home.and_then(|dir| {
            let cg = Self::make(dir.join(format!("{NESTED}{name}")))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            // Checked again once made: the cgroup it is in was not handed to a user
            // meanwhile (dropped, it is removed).
            root_only_up(&root, &dir).map(|()| cg)
        });
        match nested {
            Ok(cg) => Ok((cg, None)),
            Err(why) => Ok((Self::create(name)?, Some(why))),
        }
    }

    /// Makes the leaf itself (never an ancestor: a cgroup gone meanwhile is not made
    /// again as agentmon's; one already there is not taken over).
    fn make(path: PathBuf) -> io::Result<Self> {
        std::fs::create_dir(&path)?;
        let id = std::fs::metadata(&path)?.ino();
        Ok(Self { path, id, origin: None, grave: None })
    }

    /// A task cgroup that already exists (a restarted daemon resuming its tasks).
    pub fn adopt(path: PathBuf) -> io::Result<Self> {
        let id = std::fs::metadata(&path)?.ino();
        Ok(Self { path, id, origin: None, grave: None })
    }

    /// Moves process `pid` (and so its future children) into the cgroup.
    pub fn add(&self, pid: u32) -> io::Result<()> {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
    }

    pub fn open(&self) -> io::Result<std::fs::File> {
        std::fs::File::open(&self.path)
    }

    /// Kills every process in the cgroup at once (cgroup.kill).
    pub fn kill(&self) -> io::Result<()> {
        std::fs::write(self.path.join("cgroup.kill"), "1")
    }

    /// Freezes (or thaws) every process in the cgroup and waits, at most `wait`,
    /// until the kernel reports it done (cgroup.events `frozen`): whether it did.
    /// An error only when cgroup.freeze could not be written.
    pub fn freeze(&self, on: bool, wait: std::time::Duration) -> io::Result<bool> {
        self.request_freeze(on)?;
        let want = if on { "frozen 1" } else { "frozen 0" };
        let until = std::time::Instant::now() + wait;
        loop {
            // Unreadable counts as not yet: the freeze was asked all the same.
            let events = std::fs::read_to_string(self.path.join("cgroup.events")).unwrap_or_default();
            if events.lines().any(|l| l == want) {
                return Ok(true);
            }
            if std::time::Instant::now() >= until {
                return Ok(false);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Asks the freezer to freeze (or thaw) without waiting for it.
    pub fn request_freeze(&self, on: bool) -> io::Result<()> {
        std::fs::write(self.path.join("cgroup.freeze"), if on { "1" } else { "0" })
    }

    /// Marks (or unmarks) the cgroup as paused by agentmon's backpressure, in a
    /// `trusted.` extended attribute of the cgroup: the kernel keeps it while no
    /// agentmon runs, and only a process with CAP_SYS_ADMIN can set or read it. A
    /// daemon killed mid-pause leaves the freeze behind; the next one thaws what is
    /// so marked, and only that (a rule's or an operator's freeze stays).
    pub fn mark_paused(&self, on: bool) -> io::Result<()> {
        let path = self.c_path()?;
        // SAFETY: both strings are NUL-terminated and outlive the calls; the value
        // is one byte long, as given.
        let r = unsafe {
            if on {
                libc::setxattr(path.as_ptr(), PAUSED_XATTR.as_ptr(), b"1".as_ptr().cast(), 1, 0)
            } else {
                libc::removexattr(path.as_ptr(), PAUSED_XATTR.as_ptr())
            }
        };
        match r {
            0 => Ok(()),
            _ if !on && io::Error::last_os_error().raw_os_error() == Some(libc::ENODATA) => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// Whether [`Self::mark_paused`] marked the cgroup.
    pub fn marked_paused(&self) -> bool {
        let Ok(path) = self.c_path() else { return false };
        let mut v = [0u8; 1];
        // SAFETY: NUL-terminated strings; the buffer is as long as said.
        unsafe { libc::getxattr(path.as_ptr(), PAUSED_XATTR.as_ptr(), v.as_mut_ptr().cast(), v.len()) == 1 }
    }

    /// The cgroup's path for a libc call.
    fn c_path(&self) -> io::Result<std::ffi::CString> {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::CString::new(self.path.as_os_str().as_bytes()).map_err(io::Error::other)
    }

    /// Whether a freeze was asked for (done or not yet).
    pub fn freeze_requested(&self) -> bool {
        self.freeze_asked().unwrap_or(false)
    }

    /// Whether a freeze was asked for, or why that could not be read.
    pub fn freeze_asked(&self) -> io::Result<bool> {
        std::fs::read_to_string(self.path.join("cgroup.freeze")).map(|t| t.trim() == "1")
    }

    /// Whether the kernel reports the cgroup frozen, or why that could not be read.
    pub fn frozen_now(&self) -> io::Result<bool> {
        std::fs::read_to_string(self.path.join("cgroup.events")).map(|t| t.lines().any(|l| l == "frozen 1"))
    }

    /// Every thread in the cgroup (cgroup.threads; cgroup.procs has only leaders).
    pub fn threads(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path.join("cgroup.threads"))
            .map(|t| t.lines().filter_map(|l| l.parse().ok()).collect())
            .unwrap_or_default()
    }

    pub fn frozen(&self) -> bool {
        self.frozen_now().unwrap_or(false)
    }

    /// Where `pid` is when it is not in this cgroup or below it (its cgroup v2 path),
    /// None when it is (or is gone).
    pub fn outside(&self, pid: u32) -> Option<String> {
        let mine = self.named()?;
        let at = of_pid(pid)?;
        (!Path::new(&at).starts_with(&mine)).then_some(at)
    }

    /// Whether process `pid` is in this cgroup itself (not beneath it).
    pub fn holds(&self, pid: u32) -> bool {
        self.named().zip(of_pid(pid)).is_some_and(|(mine, at)| mine == Path::new(&at))
    }

    /// This cgroup's path as /proc/PID/cgroup names it (from the hierarchy's root).
    fn named(&self) -> Option<PathBuf> {
        Some(Path::new("/").join(self.path.strip_prefix(v2_root()?).ok()?))
    }

    /// Pids still in the cgroup.
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.parse().ok()).collect())
            .unwrap_or_default()
    }
}

impl Drop for TaskCgroup {
    fn drop(&mut self) {
        if std::fs::remove_dir(&self.path).is_err()
            && self.path.exists()
            && let Some(g) = &self.grave
        {
            g.lock().unwrap_or_else(|e| e.into_inner()).push(self.path.clone());
        }
    }
}

fn mapped(net: &IpNet) -> ([u8; 16], u32) {
    match net {
        IpNet::V4(n) => (n.addr().to_ipv6_mapped().octets(), 96 + n.prefix_len() as u32),
        IpNet::V6(n) => (n.addr().octets(), n.prefix_len() as u32),
    }
}

/// NET_ALLOW entries that refuse `nets` to task `task` whatever its scope allows
/// (deny rules): no port range, and a longer or equal prefix than any allow entry
/// they fall in (inserted after the allow entries, they win a tie).
pub fn deny_entries(task: u32, nets: &[IpNet]) -> Vec<(u32, NetKeyData, NetPorts)> {
    nets.iter()
        .map(|net| {
            let (addr, bits) = mapped(net);
            let mut data: NetKeyData = [0; 20];
            data[..4].copy_from_slice(&task.to_be_bytes());
            data[4..].copy_from_slice(&addr);
            (32 + bits, data, NetPorts::default())
        })
        .collect()
}

/// The NET_ALLOW entries of a task's connect scope: (prefix length, key data, ports).
pub fn allow_entries(task: u32, eps: &[Endpoint]) -> Result<Vec<(u32, NetKeyData, NetPorts)>, String> {
    let mut by_net: Vec<(IpNet, Vec<Ports>)> = Vec::new();
    let mut add = |net: IpNet, p: Ports| match by_net.iter_mut().find(|(n, _)| *n == net) {
        Some((_, v)) => v.push(p),
        None => by_net.push((net, vec![p])),
    };
    for ep in eps {
        match ep {
            Endpoint::Net { net, ports } => add(*net, *ports),
            Endpoint::Host { addrs, ports, .. } => {
                for a in addrs {
                    add(IpNet::from(*a), *ports);
                }
            }
            Endpoint::Unix { .. } => {}
        }
    }
    // The guard takes the longest prefix only: a net inside another (a name's
    // address in an allowed range) carries the wider one's ports too, as the judge
    // allows either.
    let wider: Vec<Vec<Ports>> = by_net
        .iter()
        .map(|(net, _)| {
            by_net
                .iter()
                .filter(|(n, _)| n.prefix_len() < net.prefix_len() && n.contains(net))
                .flat_map(|(_, p)| p.iter().copied())
                .collect()
        })
        .collect();
    let mut out = Vec::new();
    for ((net, mut ports), more) in by_net.into_iter().zip(wider) {
        for p in more {
            if !ports.iter().any(|q| q.covers(&p)) {
                ports.push(p);
            }
        }
        if ports.len() > 8 {
            return Err(format!("{net}: more than 8 port ranges for one address"));
        }
        let mut p = NetPorts { n: ports.len() as u32, ..Default::default() };
        for (i, r) in ports.iter().enumerate() {
            p.ranges[i] = [r.lo, r.hi];
        }
        let (addr, bits) = mapped(&net);
        let mut data: NetKeyData = [0; 20];
        data[..4].copy_from_slice(&task.to_be_bytes());
        data[4..].copy_from_slice(&addr);
        out.push((32 + bits, data, p));
    }
    Ok(out)
}

/// Whether this host can give tasks their own cgroups: root, cgroup v2 mounted, and
/// a kernel with cgroup.kill (5.14) and cgroup.freeze (5.2) — checked on agentmon's
/// own directory (the files are the same in every cgroup but the root).
pub fn available() -> bool {
    let Some(root) = v2_root() else { return false };
    let parent = root.join("agentmon");
    nix::unistd::geteuid().is_root()
        && (parent.is_dir() || std::fs::create_dir_all(&parent).is_ok())
        && ["cgroup.procs", "cgroup.kill", "cgroup.freeze"]
            .iter()
            .all(|f| Path::new(&parent).join(f).exists())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::scope::parse_endpoint;

    #[test]
    fn a_task_cgroup_nests_only_where_its_processes_cannot_leave_it() {
        let d = std::env::temp_dir().join(format!("agentmon-cg-{}", std::process::id()));
        let pod = d.join("kubepods/besteffort/pod1/c1");
        std::fs::create_dir_all(&pod).unwrap();
        std::fs::write(pod.join("cgroup.type"), "domain\n").unwrap();
        for dir in
            ["kubepods/besteffort/pod1/c1", "kubepods/besteffort/pod1", "kubepods/besteffort", "kubepods"]
        {
            std::fs::write(d.join(dir).join("cgroup.procs"), "").unwrap();
        }
        let root = nix::unistd::geteuid().is_root();
        let home = home_for(&d, "/kubepods/besteffort/pod1/c1");
        if root {
            assert_eq!(home, Ok(pod.clone()));
            std::fs::create_dir(pod.join("agentmon-12-3")).unwrap();
            std::fs::write(pod.join("agentmon-12-3/cgroup.procs"), "").unwrap();
            assert!(is_task_cgroup(&d, &pod.join("agentmon-12-3")));
            // Group-writable, as libcgroup's fperm can make it: not nested beneath.
            let procs = d.join("kubepods/besteffort/cgroup.procs");
            std::fs::set_permissions(&procs, std::os::unix::fs::PermissionsExt::from_mode(0o664)).unwrap();
            assert!(home_for(&d, "/kubepods/besteffort/pod1/c1").unwrap_err().contains("writable by others"));
            assert!(!is_task_cgroup(&d, &pod.join("agentmon-12-3")));
            std::fs::set_permissions(&procs, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        }
        for (origin, why) in [
            ("/", "the root cgroup"),
            ("/../../kubepods", "not a plain path"),
            ("kubepods", "not a plain path"),
            ("/agentmon/1-2", "a task's cgroup"),
            ("/kubepods/agentmon-1-2", "a task's cgroup"),
        ] {
            let got = home_for(&d, origin).unwrap_err();
            assert!(got.contains(why), "{origin}: {got}");
        }
        std::fs::write(pod.join("cgroup.type"), "threaded\n").unwrap();
        assert!(home_for(&d, "/kubepods/besteffort/pod1/c1").unwrap_err().contains("threaded"));
        std::fs::write(pod.join("cgroup.type"), "domain\n").unwrap();
        if root {
            // Delegated above: a user owns the pod's cgroup.procs.
            nix::unistd::chown(&d.join("kubepods/besteffort/pod1/cgroup.procs"), Some(1000.into()), None)
                .unwrap();
            assert!(home_for(&d, "/kubepods/besteffort/pod1/c1").unwrap_err().contains("uid 1000"));
        }
        assert!(is_task_cgroup(&d, &d.join("agentmon/1-2")));
        // agentmon's directory itself, deeper, a look-alike, a name not PID-N.
        assert!(!is_task_cgroup(&d, &d.join("agentmon")));
        assert!(!is_task_cgroup(&d, &d.join("agentmon/1-2/x")));
        assert!(!is_task_cgroup(&d, &d.join("agentmon/x")));
        assert!(!is_task_cgroup(&d, &pod.join("agentmon-x")));
        assert!(!is_task_cgroup(&d, &pod));
        assert!(is_task_path("/agentmon/1-2") && is_task_path("/kubepods/c1/agentmon-1-2/sub"));
        assert!(!is_task_path("/kubepods/c1") && !is_task_path("/agentmon"));
        assert!(!is_task_cgroup(&d, &d.join("kubepods/../agentmon-1")));
        assert!(!is_task_cgroup(Path::new("/sys/fs/cgroup"), &d.join("agentmon/1")));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn entries_merge_ports_and_map_v4() {
        let eps: Vec<Endpoint> = ["10.0.0.0/8:443", "10.0.0.0/8:80", "[fd00::/8]:*"]
            .iter()
            .map(|s| parse_endpoint(s).unwrap())
            .collect();
        let e = allow_entries(7, &eps).unwrap();
        assert_eq!(e.len(), 2);
        let (bits, data, ports) = e[0];
        assert_eq!(bits, 32 + 96 + 8);
        assert_eq!(&data[..4], &7u32.to_be_bytes());
        assert_eq!(&data[4..20], &"::ffff:10.0.0.0".parse::<std::net::Ipv6Addr>().unwrap().octets());
        assert_eq!((ports.n, ports.ranges[0], ports.ranges[1]), (2, [443, 443], [80, 80]));
        assert_eq!((e[1].0, e[1].2.ranges[0]), (32 + 8, [0, 65535]));
    }

    #[test]
    fn an_address_inside_an_allowed_net_keeps_the_nets_ports() {
        // A name's address (its own port) inside an allowed range (another port): the
        // guard's longest match is the address, which must allow both, as the judge does.
        let mut eps =
            vec![parse_endpoint("10.0.0.0/8:22").unwrap(), parse_endpoint("api.example:443").unwrap()];
        if let Endpoint::Host { addrs, .. } = &mut eps[1] {
            addrs.push("10.1.2.3".parse().unwrap());
        }
        let e = allow_entries(7, &eps).unwrap();
        let host = e.iter().find(|(bits, ..)| *bits == 32 + 128).expect("the address's entry");
        let mut got: Vec<[u16; 2]> = host.2.ranges[..host.2.n as usize].to_vec();
        got.sort();
        assert_eq!(got, vec![[22, 22], [443, 443]]);
        let net = e.iter().find(|(bits, ..)| *bits == 32 + 96 + 8).expect("the net's entry");
        assert_eq!((net.2.n, net.2.ranges[0]), (1, [22, 22]));
    }
}
