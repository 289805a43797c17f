//! Which file the kernel means: the identity (super block device, inode number) its
//! programs read from a dentry, found from userspace without a hook.
//!
//! stat's (st_dev, st_ino) is not always that identity: overlayfs reports the
//! layer's inode, btrfs a subvolume's device. The kernel's own report of an open
//! descriptor is: `/proc/self/fdinfo/N` has the inode number of the file's inode
//! (`ino:`, 5.14+) and its mount (`mnt_id:`), and `/proc/self/mountinfo` gives that
//! mount's super block device (`major:minor`, the kernel's `s_dev`).

use std::{
    io,
    os::{
        fd::AsRawFd,
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::Path,
};

use monitor_common::lsm::{FsKey, kernel_dev};

/// The kernel's identity of the file at `p` (symlinks followed), as a task-0 key.
/// The file is opened `O_PATH` (no read, no hook of ours); a kernel without `ino:`
/// in fdinfo (before 5.14) gets stat's.
pub fn of(p: &Path) -> io::Result<FsKey> {
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH | libc::O_CLOEXEC).open(p)?;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", f.as_raw_fd()))?;
    let field = |name: &str| {
        info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(str::trim).map(str::to_string)
    };
    let (Some(mnt), Some(ino)) = (field("mnt_id"), field("ino")) else {
        // Before 5.14: stat's, which is the kernel's except on overlayfs and btrfs.
        tracing::warn!(
            "{}: this kernel's fdinfo has no inode number; the file is known by stat's identity, which \
             overlayfs and btrfs report otherwise than the kernel",
            p.display()
        );
        return stat(&f);
    };
    let ino = ino.parse::<u64>().map_err(|e| bad(format!("fdinfo ino {ino:?}: {e}")))?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let dev = device(&mounts, &mnt).ok_or_else(|| bad(format!("mount {mnt} is not in mountinfo")))?;
    Ok(FsKey { ino, dev, task: 0 })
}

fn stat(f: &std::fs::File) -> io::Result<FsKey> {
    let m = f.metadata()?;
    Ok(FsKey { ino: m.ino(), dev: kernel_dev(libc::major(m.dev()), libc::minor(m.dev())), task: 0 })
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// The device (kernel encoding) of mount `id` in mountinfo text: its third field,
/// `major:minor`.
fn device(mountinfo: &str, id: &str) -> Option<u32> {
    let line = mountinfo.lines().find(|l| l.split(' ').next() == Some(id))?;
    let (major, minor) = line.split(' ').nth(2)?.split_once(':')?;
    Some(kernel_dev(major.parse().ok()?, minor.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mounts_device_is_its_third_field() {
        let m = "22 1 0:21 / /proc rw - proc proc rw\n36 35 259:3 /a /b rw - ext4 /dev/x rw\n";
        assert_eq!(device(m, "36"), Some(kernel_dev(259, 3)));
        assert_eq!(device(m, "22"), Some(kernel_dev(0, 21)));
        assert_eq!(device(m, "3"), None, "a prefix of an id is not the id");
    }

    #[test]
    fn a_files_identity_is_the_kernels() {
        // On the file systems where stat's is the kernel's (not overlayfs or a btrfs
        // subvolume), the two agree; a hard link is the same file.
        let d = std::env::temp_dir().join(format!("agentmon-ident-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let (a, b) = (d.join("a"), d.join("b"));
        std::fs::write(&a, "x").unwrap();
        let _ = std::fs::remove_file(&b);
        std::fs::hard_link(&a, &b).unwrap();
        let k = of(&a).unwrap();
        assert_eq!(k, of(&b).unwrap());
        let st = stat(&std::fs::File::open(&a).unwrap()).unwrap();
        let fs = nix::sys::statfs::statfs(&d).unwrap().filesystem_type();
        if fs != nix::sys::statfs::OVERLAYFS_SUPER_MAGIC && fs != nix::sys::statfs::BTRFS_SUPER_MAGIC {
            assert_eq!(k, st);
        }
        assert_ne!(k, of(&d).unwrap());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
