//! Kernel interfaces that are files: a write scope that reaches a mount of one of
//! these lets a task leave its cgroup (cgroupfs), unload agentmon's programs or
//! maps (bpffs), rewrite other processes or kernel settings (procfs, sysfs), or
//! blind the sensors (tracefs, debugfs). Found by filesystem type, wherever it is
//! mounted: under the scope's directory, or as the filesystem the directory is on.

use std::path::{Path, PathBuf};

/// Filesystem types no enforced task may write into.
pub const KERNEL_FS: &[&str] = &[
    "cgroup",
    "cgroup2",
    "bpf",
    "proc",
    "sysfs",
    "tracefs",
    "debugfs",
    "securityfs",
    "configfs",
    "efivarfs",
    "pstore",
    "fusectl",
    "binfmt_misc",
    // /dev: raw disks, /dev/mem, /dev/kmsg (the harmless devices are allowed apart).
    "devtmpfs",
];

/// One line of /proc/self/mountinfo: which, where, and what type.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    id: u64,
    at: PathBuf,
    fstype: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            // id parent major:minor root mount-point options [optional...] - fstype source super
            let mut f = l.split(' ');
            let id = f.next()?.parse().ok()?;
            let at = f.nth(3)?;
            let rest = l.split(" - ").nth(1)?;
            let fstype = rest.split(' ').next()?;
            Some(Mount { id, at: PathBuf::from(unescape(at)), fstype: fstype.to_string() })
        })
        .collect()
}

/// A kernel filesystem that writing beneath `dir` would reach: mounted at or below
/// it, or the filesystem `dir` itself is on. (mount point, type).
pub fn kernel_fs_reached(dir: &Path) -> Option<(PathBuf, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    reached(&parse(&text), dir)
}

fn reached(mounts: &[Mount], dir: &Path) -> Option<(PathBuf, String)> {
    let kernel = |m: &Mount| KERNEL_FS.contains(&m.fstype.as_str());
    if let Some(m) = mounts.iter().find(|m| m.at.starts_with(dir) && kernel(m)) {
        return Some((m.at.clone(), m.fstype.clone()));
    }
    // The mount dir is on: the longest mount point above it (the last one mounted
    // there, when several are stacked).
    let on = mounts.iter().filter(|m| dir.starts_with(&m.at)).max_by_key(|m| m.at.components().count())?;
    kernel(on).then(|| (on.at.clone(), on.fstype.clone()))
}

/// Whether open file `f` is on a FUSE file system (`fuse`, `fuse.*`, `fuseblk`):
/// served by a process, which may stop answering. Found by its mount's type in
/// mountinfo (statx's mount id), not by asking the file system (fstatfs is a
/// request its server answers, or not).
pub fn on_fuse(f: std::os::fd::BorrowedFd<'_>) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: statx is plain data; zero is a valid value.
    let mut x: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: an open descriptor, an empty path with AT_EMPTY_PATH, a buffer of the
    // right type. (AT_STATX_DONT_SYNC: the mount id needs no attributes.)
    let r = unsafe {
        libc::statx(
            f.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC,
            libc::STATX_MNT_ID,
            &mut x,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if x.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(std::io::Error::other("the kernel does not give the file's mount id"));
    }
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let m = parse(&text).into_iter().find(|m| m.id == x.stx_mnt_id);
    let m = m.ok_or_else(|| std::io::Error::other(format!("mount {} is not listed", x.stx_mnt_id)))?;
    Ok(m.fstype == "fuse" || m.fstype == "fuseblk" || m.fstype.starts_with("fuse."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_on_a_local_file_system_is_not_on_fuse() {
        use std::os::fd::AsFd;
        let f = tempfile::tempfile().unwrap();
        assert!(!on_fuse(f.as_fd()).unwrap());
    }

    const INFO: &str = "\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 22 0:21 / /proc rw,nosuid shared:2 - proc proc rw
24 22 0:22 / /sys rw shared:3 - sysfs sysfs rw
25 24 0:23 / /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw
26 22 0:24 / /srv/my\\040data rw shared:5 - tmpfs tmpfs rw
27 26 0:25 / /srv/my\\040data/cg rw shared:6 - cgroup2 none rw
";

    #[test]
    fn kernel_filesystems_under_or_around_a_scope() {
        let m = parse(INFO);
        assert_eq!(m[4].at, PathBuf::from("/srv/my data"));
        let r = |p: &str| reached(&m, Path::new(p)).map(|(at, t)| (at.display().to_string(), t));
        assert_eq!(r("/srv/my data"), Some(("/srv/my data/cg".into(), "cgroup2".into())));
        assert_eq!(r("/sys/fs/cgroup/agentmon"), Some(("/sys/fs/cgroup".into(), "cgroup2".into())));
        assert_eq!(r("/"), Some(("/proc".into(), "proc".into())));
        assert_eq!(r("/home/agent/repo"), None);
        assert_eq!(r("/srv/my data/work"), None);
    }
}
