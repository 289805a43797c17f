//! Detaching agentmon's programs after agentmon has gone, not before.
//!
//! The kernel detaches a program when the last descriptor of its link closes, and
//! some detaches wait: each fexit or BPF LSM trampoline's takes an RCU Tasks grace
//! period under ftrace's one lock (`unregister_ftrace_direct_multi`), about a tenth
//! of a second each even on an idle machine, one after another; a syscall
//! tracepoint's waits for a grace period under `event_mutex`. A daemon on fexit held
//! its exit 15 s for 204 programs in a Debian 12 guest, one CPU of two busy 12% of
//! that time; `agentmon exec` on the tracepoints, 7 s. Nothing waits on those
//! detaches: the programs stay attached (a tracked process is still checked, an
//! event goes to a ring nobody reads) until they are gone.
//!
//! So at the end a child process takes over the descriptors of every BPF object and
//! perf event, closes everything else (a pipe a caller reads to its end, a lock a
//! restarted daemon takes), waits for agentmon to have exited and exits: the kernel
//! detaches in its exit, while agentmon's own closes, with the child's copies still
//! open, only drop references. It waits because the last close is the one that
//! detaches: a child gone first would leave that to agentmon after all.

use std::os::fd::{AsRawFd, RawFd};

/// What the child is called (`ps`, `/proc/PID/comm`).
const NAME: &std::ffi::CStr = c"agentmon-detach";

/// This process's descriptors, ascending: those the child keeps (BPF programs,
/// links and maps, perf events) and the others, which it closes.
struct Fds {
    keep: Vec<RawFd>,
    other: Vec<RawFd>,
}

/// Hands every BPF and perf event descriptor this process holds to a child that
/// exits once this process has, so that closing them here detaches nothing. False
/// when there is nothing to hand over or the child could not be made: the caller
/// detaches them itself.
pub fn hand_off() -> bool {
    let fds = listed();
    if fds.keep.is_empty() {
        return false;
    }
    // The child reads this pipe to its end: the write end, left open here, closes
    // as this process exits (and in nothing else: close-on-exec, and the child
    // closes its copy).
    let (read, write) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!("pipe for the detach: {e}");
            return false;
        }
    };
    // What the child keeps, ascending, listed now: it may not allocate.
    let mut keep = fds.keep.clone();
    keep.push(read.as_raw_fd());
    keep.sort_unstable();
    // Signals blocked across the fork and, in the child, for good: a terminal's
    // stop or an interrupt must not stop it or run a handler of agentmon's in it.
    // SAFETY: sigset and sigmask calls on local values.
    let mut all = unsafe { std::mem::zeroed::<libc::sigset_t>() };
    let mut was = unsafe { std::mem::zeroed::<libc::sigset_t>() };
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut was);
    }
    // SAFETY: the child calls only async-signal-safe system calls (close_range or
    // close, prctl, read, _exit): nothing another thread held at the fork (a lock,
    // the allocator) is touched.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        child(&keep, &fds.other, read.as_raw_fd(), write.as_raw_fd());
    }
    // SAFETY: puts back the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &was, std::ptr::null_mut()) };
    if pid < 0 {
        tracing::debug!("fork for the detach: {}", std::io::Error::last_os_error());
        return false;
    }
    std::mem::forget(write);
    true
}

/// This process's descriptors, told apart by what they are.
fn listed() -> Fds {
    let mut fds = Fds { keep: Vec::new(), other: Vec::new() };
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return fds };
    for e in dir.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|n| n.parse().ok()) else { continue };
        let bpf = std::fs::read_link(e.path()).is_ok_and(|to| {
            let to = to.to_string_lossy();
            to.starts_with("anon_inode:bpf") || to == "anon_inode:[perf_event]"
        });
        match bpf {
            true => fds.keep.push(fd),
            false => fds.other.push(fd),
        }
    }
    fds.keep.sort_unstable();
    fds.other.sort_unstable();
    fds
}

fn child(keep: &[RawFd], other: &[RawFd], parent_gone: RawFd, write_end: RawFd) -> ! {
    close_others(keep, other, true);
    // SAFETY: system calls on a static string, integers and a local byte; _exit
    // runs no handler.
    unsafe {
        // Listed before the pipe was made, so perhaps not among `other`.
        libc::close(write_end);
        libc::prctl(libc::PR_SET_NAME, NAME.as_ptr());
        let mut byte = 0u8;
        loop {
            let n = libc::read(parent_gone, (&raw mut byte).cast(), 1);
            if n == 0 || (n < 0 && *libc::__errno_location() != libc::EINTR) {
                break;
            }
        }
        libc::_exit(0)
    }
}

/// Closes every descriptor but `keep` (ascending): with close_range (Linux 5.9),
/// which closes what was opened since the lists were taken too, unless `range` is
/// false or it is refused (an older kernel, a container's seccomp profile); then
/// each of `other` that is not kept (a number listed as another file may since have
/// been reused for one kept: the pipe's read end). Only system calls: safe after a
/// fork. (A descriptor another thread opened, or a kept number it closed and
/// reused, between the listing and the fork stays open until the child exits: a
/// window of microseconds.)
fn close_others(keep: &[RawFd], other: &[RawFd], range: bool) {
    if range && close_range_but(keep) {
        return;
    }
    for &fd in other.iter().filter(|fd| keep.binary_search(fd).is_err()) {
        // SAFETY: closes a descriptor of this (forked) process.
        unsafe { libc::close(fd) };
    }
}

/// close_range over every gap around the kept descriptors (ascending): false once
/// one is refused.
fn close_range_but(keep: &[RawFd]) -> bool {
    // SAFETY: a system call on plain integers.
    let close_range = |from: u32, to: u32| {
        from > to || unsafe { libc::syscall(libc::SYS_close_range, from, to, 0u32) } == 0
    };
    let mut from = 0u32;
    for &fd in keep {
        let fd = fd as u32;
        if fd > from && !close_range(from, fd - 1) {
            return false;
        }
        from = fd + 1;
    }
    close_range(from, u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::{
        io::Read,
        os::fd::{AsRawFd, FromRawFd, OwnedFd},
    };

    /// A BPF array map of one u32 (as root, as the unit tests run).
    fn bpf_map() -> OwnedFd {
        // BPF_MAP_TYPE_ARRAY (2), key and value of 4 bytes, one entry.
        let mut attr = [0u32; 32];
        attr[..4].copy_from_slice(&[2, 4, 4, 1]);
        // SAFETY: BPF_MAP_CREATE (0) reads the attribute (zeroed past the four fields).
        let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_ptr(), size_of_val(&attr)) } as i32;
        assert!(fd >= 0, "BPF_MAP_CREATE (the unit tests run as root): {}", std::io::Error::last_os_error());
        // SAFETY: a descriptor just returned, owned here.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    /// The map's id, from its descriptor's fdinfo.
    fn map_id(fd: &OwnedFd) -> u32 {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap();
        info.lines().find_map(|l| l.strip_prefix("map_id:")?.trim().parse().ok()).unwrap()
    }

    /// Whether the kernel still has the map `id` (BPF_MAP_GET_FD_BY_ID, 14).
    fn map_exists(id: u32) -> bool {
        let attr = [id, 0, 0, 0];
        // SAFETY: the command reads the id from the attribute.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, 14, attr.as_ptr(), size_of_val(&attr)) } as i32;
        if fd >= 0 {
            // SAFETY: a descriptor just returned, ours to close.
            unsafe { libc::close(fd) };
        }
        fd >= 0
    }

    /// The list is of BPF objects and perf events only: a file, a pipe or a socket
    /// handed to the child would keep a reader waiting for its end.
    #[test]
    fn only_bpf_objects_and_perf_events_are_kept() {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let (r, w) = std::io::pipe().unwrap();
        let map = bpf_map();
        let fds = super::listed();
        assert!(fds.keep.contains(&map.as_raw_fd()), "the map is not kept: {:?}", fds.keep);
        for fd in [file.as_raw_fd(), r.as_raw_fd(), w.as_raw_fd(), 0, 1, 2] {
            assert!(!fds.keep.contains(&fd), "descriptor {fd} would stay open in the child: {:?}", fds.keep);
        }
    }

    /// Where close_range is refused, each listed descriptor is closed but those
    /// kept, even when a kept one's number is also listed as another file (the
    /// pipe's read end, made after the listing, can take a listed number).
    #[test]
    fn closing_one_by_one_spares_what_is_kept() {
        let (kept_r, _kept_w) = std::io::pipe().unwrap();
        let (other_r, other_w) = std::io::pipe().unwrap();
        let (kept, other) = (kept_r.as_raw_fd(), super::listed().other);
        assert!(other.contains(&kept) && other.contains(&other_r.as_raw_fd()));
        // SAFETY: the child makes system calls only, then _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            super::close_others(&[kept], &other, false);
            let open = |fd: i32| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
            let code = open(kept) as i32
                | (!open(other_r.as_raw_fd()) as i32) << 1
                | (!open(other_w.as_raw_fd()) as i32) << 2;
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0b111, "bit 0: kept open; bits 1, 2: the others closed");
    }

    /// Once handed off, a BPF object outlives this process's last descriptor of it
    /// (the child holds it until this process exits), and the child holds nothing
    /// else: a pipe's reader here gets its end as soon as this process closes the
    /// write end.
    #[test]
    fn the_child_keeps_bpf_objects_and_nothing_else() {
        let map = bpf_map();
        let id = map_id(&map);
        let (mut r, w) = std::io::pipe().unwrap();
        assert!(super::hand_off(), "no child was made");
        drop(map);
        // Time for a child that did not wait for this process to be gone already.
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(map_exists(id), "the map went with this process's descriptor: the child does not hold it");
        drop(w);
        let mut poll = libc::pollfd { fd: r.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd, on the stack.
        let ready = unsafe { libc::poll(&mut poll, 1, 10_000) };
        assert_eq!(ready, 1, "the pipe's end did not come in 10 s: the child holds its write end");
        assert_eq!(r.read(&mut [0u8; 1]).unwrap(), 0);
    }
}
