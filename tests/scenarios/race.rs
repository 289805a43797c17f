//! Two threads of one enforced agent on one CPU, one acting inside its scope and one
//! outside it, so that the kernel preempts each in the middle of its checks: every
//! refusal must hold whatever the other thread's checks left behind (the BPF LSM
//! hooks keep a check's state per thread, monitor-ebpf lsm/state.rs).

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::Path,
    sync::atomic::{AtomicBool, Ordering::Relaxed},
    time::{Duration, Instant},
};

/// Opens `p` with `flags` (and closes it): 0, or the errno.
fn open(p: &CString, flags: i32) -> i32 {
    let fd = unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
    if fd < 0 {
        return std::io::Error::last_os_error().raw_os_error().unwrap_or(-1);
    }
    unsafe { libc::close(fd) };
    0
}

/// The first CPU this process may run on.
fn first_cpu() -> Result<usize, String> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).map_err(|e| e.to_string())?;
    (0..nix::sched::CpuSet::count()).find(|&c| set.is_set(c).unwrap_or(false)).ok_or("no CPU".into())
}

/// Pins the calling thread to `cpu`, or says why not (a race spread over CPUs proves
/// nothing).
fn pin(cpu: usize) -> Result<(), String> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(|e| e.to_string())?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| format!("pinning to CPU {cpu}: {e}"))?;
    // SAFETY: no arguments.
    let on = unsafe { libc::sched_getcpu() };
    if on != cpu as i32 {
        return Err(format!("pinned to CPU {cpu}, running on {on}"));
    }
    Ok(())
}

/// `race_checks SECONDS IN OUT [READ SENSITIVE]`: for SECONDS, one thread opens IN to
/// write (inside the write scope) and another OUT (outside it), both on one CPU; with
/// READ and SENSITIVE, a third reads READ (inside the read scope) and a fourth
/// SENSITIVE (in the sensitive set, which the task may not read). Writes to
/// `d/repo/race.txt`: `KIND attempts escaped` per refused thread (an escape: an open
/// that got anything but EACCES) and `KIND attempts failed` per allowed one (or
/// `KIND not pinned: why`).
pub fn race_checks(d: &Path, args: &[String]) -> Result<(), String> {
    let secs: u64 =
        args.first().and_then(|s| s.parse().ok()).ok_or("race_checks SECONDS IN OUT [READ SENS]")?;
    let path = |i: usize| args.get(i).map(|s| CString::new(Path::new(s).as_os_str().as_bytes()).unwrap());
    let (Some(inside), Some(outside)) = (path(1), path(2)) else {
        return Err("race_checks SECONDS IN OUT [READ SENS]".into());
    };
    let mut workers: Vec<(&str, CString, i32, bool)> = vec![
        ("write_in", inside, libc::O_WRONLY | libc::O_CREAT, true),
        ("write_out", outside, libc::O_WRONLY | libc::O_CREAT, false),
    ];
    if let (Some(read), Some(sens)) = (path(3), path(4)) {
        workers.push(("read_in", read, libc::O_RDONLY, true));
        workers.push(("read_sensitive", sens, libc::O_RDONLY, false));
    }
    let cpu = first_cpu()?;
    let stop = AtomicBool::new(false);
    let lines: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = workers
            .iter()
            .map(|(kind, p, flags, allowed)| {
                let stop = &stop;
                s.spawn(move || {
                    if let Err(e) = pin(cpu) {
                        return format!("{kind} not pinned: {e}");
                    }
                    let (mut tries, mut odd) = (0u64, 0u64);
                    while !stop.load(Relaxed) {
                        let r = open(p, *flags);
                        tries += 1;
                        // Refused means EACCES: another error is not the check's.
                        if r != if *allowed { 0 } else { libc::EACCES } {
                            odd += 1;
                        }
                    }
                    let what = if *allowed { "failed" } else { "escaped" };
                    format!("{kind} {tries} {what} {odd}")
                })
            })
            .collect();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(secs) {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Relaxed);
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| "panicked".into())).collect()
    });
    std::fs::write(d.join("repo/race.txt"), lines.join("\n") + "\n").map_err(|e| e.to_string())
}
