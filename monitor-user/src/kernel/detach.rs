//! Detaching agentmon's programs after agentmon has gone, not before.
//!
//! The kernel detaches a program when the last descriptor of its link closes, and
//! some detaches wait: each fexit or BPF LSM trampoline's takes an RCU Tasks grace
//! period under ftrace's one lock (`unregister_ftrace_direct_multi`), about a tenth
//! of a second each even on an idle machine, one after another; a syscall
//! tracepoint's waits for a grace period under `event_mutex`. A daemon on fexit held
//! its exit 15 s for 204 programs in a Debian 12 guest, one CPU of two busy 12% of
//! that time; `agentmon exec` on the tracepoints, 7 s. Nothing waits on those
//! detaches: the programs keep doing what they did (a tracked process is still
//! checked, an event goes to a ring nobody reads) until they are gone.
//!
//! So at the end a child process takes over the descriptors of every BPF object and
//! perf event, closes everything else (a pipe a caller reads to its end, a lock a
//! restarted daemon takes), and exits: the kernel detaches in its exit, while
//! agentmon's own exit, with the child's copies still open, only drops references.

use std::os::fd::RawFd;

/// What the child is called (`ps`, `/proc/PID/comm`).
const NAME: &std::ffi::CStr = c"agentmon-detach";

/// Hands every BPF and perf event descriptor this process holds to a child that
/// exits at once, so that closing them here detaches nothing. False when there is
/// nothing to hand over or the fork failed: the caller detaches them itself.
pub fn hand_off() -> bool {
    let keep = held();
    if keep.is_empty() {
        return false;
    }
    // SAFETY: the child calls only async-signal-safe system calls (close_range,
    // prctl, _exit) before it exits: nothing another thread held at the fork (a
    // lock, the allocator) is touched.
    match unsafe { libc::fork() } {
        -1 => {
            tracing::debug!("fork for the detach: {}", std::io::Error::last_os_error());
            false
        }
        0 => child(&keep),
        _ => true,
    }
}

/// The BPF objects (programs, links, maps, BTF) and perf events among this
/// process's descriptors, ascending.
fn held() -> Vec<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return Vec::new() };
    let mut fds: Vec<RawFd> = dir
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|to| {
                let to = to.to_string_lossy();
                to.starts_with("anon_inode:bpf") || to == "anon_inode:[perf_event]"
            })
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    fds
}

fn child(keep: &[RawFd]) -> ! {
    let close = |from: u32, to: u32| {
        if from <= to {
            // SAFETY: a system call on plain integers.
            unsafe { libc::syscall(libc::SYS_close_range, from, to, 0u32) };
        }
    };
    let mut from = 0u32;
    for &fd in keep {
        let fd = fd as u32;
        if fd > from {
            close(from, fd - 1);
        }
        from = fd + 1;
    }
    close(from, u32::MAX);
    // SAFETY: system calls on a static string and integers; _exit runs no handler.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, NAME.as_ptr());
        libc::_exit(0)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    /// The list is of BPF objects and perf events only: a file, a pipe or a socket
    /// handed to the child would keep a reader waiting for its end.
    #[test]
    fn only_bpf_objects_and_perf_events_are_held() {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let (r, w) = std::io::pipe().unwrap();
        // A BPF map (as root, as the unit tests run): BPF_MAP_TYPE_ARRAY (2) of one u32.
        let mut attr = [0u32; 32];
        attr[..4].copy_from_slice(&[2, 4, 4, 1]);
        // SAFETY: BPF_MAP_CREATE reads the attribute (zeroed past the four fields).
        let map = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_ptr(), size_of_val(&attr)) } as i32;
        assert!(map >= 0, "BPF_MAP_CREATE: {}", std::io::Error::last_os_error());
        let held = super::held();
        assert!(held.contains(&map), "the map {map} is not held: {held:?}");
        // SAFETY: closes the map created above.
        unsafe { libc::close(map) };
        for fd in [file.as_raw_fd(), r.as_raw_fd(), w.as_raw_fd(), 0, 1, 2] {
            assert!(!held.contains(&fd), "descriptor {fd} would go to the child: {held:?}");
        }
    }
}
