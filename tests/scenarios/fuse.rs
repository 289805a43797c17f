//! A file system the agent serves itself (FUSE, spoken directly on /dev/fuse): one
//! file, `f`, whose contents it answers only after a delay. A page of it mapped
//! into the agent's memory makes any reader of that memory — agentmon, reading a
//! held call's path through /proc/PID/mem — wait for the agent. The same file is
//! also `slow`, whose lookup is answered after the delay: whoever resolves a path
//! through it (agentmon, resolving a held call's target) waits too. Or `slow` is
//! answered only when told ([`Slow::When`]): a process looking it up is held in
//! the kernel for as long as a test needs. Or its first lookup is answered and
//! every later one only when told ([`Slow::AfterFirst`]): the server that lets the
//! agent through and stops whoever looks after it (agentmon).

use std::{
    ffi::CString,
    fs::File,
    io::{Read, Write},
    os::{fd::AsRawFd, unix::ffi::OsStrExt},
    path::{Path, PathBuf},
    time::Duration,
};

/// When a lookup of `slow` is answered.
pub enum Slow {
    /// After this long.
    After(Duration),
    /// Once the file `go` exists; the file `asked` is made when a lookup comes.
    When { asked: PathBuf, go: PathBuf },
    /// The first at once, the later ones as [`Slow::When`].
    AfterFirst { asked: PathBuf, go: PathBuf },
    /// Lookups at once; every open of `f` as [`Slow::When`] (whoever opens the
    /// file, to learn its identity, waits).
    OpenWhen { asked: PathBuf, go: PathBuf },
}

// include/uapi/linux/fuse.h
const LOOKUP: u32 = 1;
const GETATTR: u32 = 3;
const OPEN: u32 = 14;
const READ: u32 = 15;
const RELEASE: u32 = 18;
const FLUSH: u32 = 25;
const INIT: u32 = 26;
const IN_HEADER: usize = 40;
const FILE_NODE: u64 = 2;

/// `fuse_attr` of the root directory or of the file (`size` bytes).
fn attr(node: u64, size: u64) -> Vec<u8> {
    let mut a = Vec::with_capacity(88);
    let mode: u32 = if node == 1 { libc::S_IFDIR | 0o755 } else { libc::S_IFREG | 0o755 };
    for v in [node, size, 1, 0, 0, 0] {
        a.extend_from_slice(&v.to_ne_bytes());
    }
    for v in [0u32, 0, 0, mode, 1, 0, 0, 0, 4096, 0] {
        a.extend_from_slice(&v.to_ne_bytes());
    }
    a
}

/// Mounts the file system at `at` and serves it from a child process (a thread
/// of ours would deadlock: a fault on the file holds our memory map's lock, which
/// the server's own allocations need): `f` holds `data`, each read of it answered
/// `delay` late, and `slow` answered as `slow` says. The server ends when the
/// mount goes.
pub fn mount(at: &Path, data: Vec<u8>, delay: Duration, slow: Slow) -> Result<(), String> {
    let dev =
        std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").map_err(|e| e.to_string())?;
    let opts = CString::new(format!("fd={},rootmode=40000,user_id=0,group_id=0", dev.as_raw_fd())).unwrap();
    let target = CString::new(at.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid NUL-terminated strings.
    let r = unsafe {
        libc::mount(c"agentfs".as_ptr(), target.as_ptr(), c"fuse".as_ptr(), 0, opts.as_ptr().cast())
    };
    if r != 0 {
        return Err(format!("mount fuse: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the child only serves and exits.
    match unsafe { nix::unistd::fork() }.map_err(|e| e.to_string())? {
        nix::unistd::ForkResult::Child => {
            // Not holding the agent's output open after it is done (whoever reads
            // that waits for its end).
            // SAFETY: plain descriptor calls.
            unsafe {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                for fd in 0..3 {
                    libc::dup2(null, fd);
                }
            }
            serve(dev, data, delay, slow);
            // SAFETY: leaving the forked child.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { .. } => Ok(()),
    }
}

fn serve(mut dev: File, data: Vec<u8>, delay: Duration, slow: Slow) {
    let mut buf = vec![0u8; (1 << 20) + 4096];
    let mut looked_up = false;
    loop {
        let Ok(n) = dev.read(&mut buf) else { return };
        if n < IN_HEADER {
            return;
        }
        let u32_at = |o: usize| u32::from_ne_bytes(buf[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_ne_bytes(buf[o..o + 8].try_into().unwrap());
        let (opcode, unique, node) = (u32_at(4), u64_at(8), u64_at(16));
        let body: Result<Vec<u8>, i32> = match opcode {
            INIT => {
                // fuse_init_out: 7.31, no flags, max_write 64 KiB.
                let mut o = Vec::new();
                for v in [7u32, 31, 0, 0] {
                    o.extend_from_slice(&v.to_ne_bytes());
                }
                o.extend_from_slice(&[0u8; 4]); // max_background, congestion_threshold
                o.extend_from_slice(&(64u32 << 10).to_ne_bytes()); // max_write
                o.extend_from_slice(&1u32.to_ne_bytes()); // time_gran
                o.extend_from_slice(&[0u8; 64 - 28]);
                Ok(o)
            }
            LOOKUP if matches!(&buf[IN_HEADER..n], b"f\0" | b"slow\0") => {
                if &buf[IN_HEADER..n] == b"slow\0" {
                    let looked = std::mem::replace(&mut looked_up, true);
                    match &slow {
                        Slow::After(d) => std::thread::sleep(*d),
                        Slow::AfterFirst { .. } if !looked => {}
                        Slow::OpenWhen { .. } => {}
                        Slow::When { asked, go } | Slow::AfterFirst { asked, go } => {
                            let _ = std::fs::write(asked, b"");
                            while !go.exists() {
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                    }
                }
                let mut o = Vec::new();
                for v in [FILE_NODE, 0, 0, 0] {
                    o.extend_from_slice(&v.to_ne_bytes());
                }
                o.extend_from_slice(&[0u8; 8]);
                o.extend_from_slice(&attr(FILE_NODE, data.len() as u64));
                Ok(o)
            }
            LOOKUP => Err(libc::ENOENT),
            GETATTR => {
                let mut o = vec![0u8; 16];
                o.extend_from_slice(&attr(node, if node == FILE_NODE { data.len() as u64 } else { 0 }));
                Ok(o)
            }
            OPEN => {
                if let Slow::OpenWhen { asked, go } = &slow {
                    let _ = std::fs::write(asked, b"");
                    while !go.exists() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                Ok(vec![0u8; 16])
            }
            READ => {
                std::thread::sleep(delay);
                let (off, size) = (u64_at(IN_HEADER + 8) as usize, u32_at(IN_HEADER + 16) as usize);
                Ok(data.get(off.min(data.len())..(off + size).min(data.len())).unwrap_or_default().to_vec())
            }
            RELEASE | FLUSH => Ok(Vec::new()),
            _ => Err(libc::ENOSYS),
        };
        let (err, body) = match body {
            Ok(b) => (0i32, b),
            Err(e) => (-e, Vec::new()),
        };
        let mut out = Vec::with_capacity(16 + body.len());
        out.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&err.to_ne_bytes());
        out.extend_from_slice(&unique.to_ne_bytes());
        out.extend_from_slice(&body);
        let _ = dev.write(&out);
    }
}
