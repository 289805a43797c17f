//! Room in agentmon's descriptor table, made ahead of need. The kernel grows a
//! process's table by copying it to one twice the size, and once the process has
//! threads it waits for an RCU grace period before it frees the old one
//! (fs/file.c `expand_fdtable`): 7-15 ms, traced in a daemon here, paid by whichever
//! call needed the next descriptor, which was an enforced task's start (its network
//! guard's link) every time the daemon's descriptors (its programs, links and maps,
//! then a few per task) crossed a power of two. Grown at the daemon's load and at its
//! sweeps instead, when fewer than half the slots are free.

/// The table's size and the highest descriptor open (None where /proc cannot say).
fn now() -> Option<(i32, i32)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let size = status.lines().find_map(|l| l.strip_prefix("FDSize:"))?.trim().parse().ok()?;
    let highest = std::fs::read_dir("/proc/self/fd")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .max()?;
    Some((size, highest))
}

/// RLIMIT_NOFILE's soft limit: no descriptor reaches it.
fn limit() -> Option<i32> {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut l) } == 0)
        .then(|| i32::try_from(l.rlim_cur).unwrap_or(i32::MAX))
}

/// Makes the table hold twice the highest descriptor open, within RLIMIT_NOFILE,
/// if it does not. Returns the table's size after (None where it cannot be told).
pub fn make_room() -> Option<i32> {
    let (size, highest) = now()?;
    let want = highest.saturating_mul(2).min(limit()? - 1);
    if want >= size && want > highest {
        // The lowest free descriptor from `want` up: the table grows to hold it.
        // SAFETY: duplicates descriptor 0 (or fails) and closes only the duplicate.
        unsafe {
            let fd = libc::fcntl(0, libc::F_DUPFD_CLOEXEC, want);
            if fd >= 0 {
                libc::close(fd);
            }
        }
    }
    now().map(|(size, _)| size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_holds_twice_the_highest_descriptor() {
        // Descriptors up to past the table's size now, so that it is too small.
        let (size, _) = now().unwrap();
        let held: Vec<std::fs::File> =
            (0..size).map_while(|_| std::fs::File::open("/dev/null").ok()).collect();
        let (_, highest) = now().unwrap();
        let soft = limit().unwrap();
        let after = make_room().unwrap();
        assert!(
            after > (highest * 2).min(soft - 1),
            "table of {after} for descriptors up to {highest} (limit {soft})"
        );
        drop(held);
    }
}
