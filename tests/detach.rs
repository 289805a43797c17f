//! agentmon leaves the detach of its programs (seconds of the kernel's grace
//! periods) to a child that exits after it (kernel::detach): that child must let
//! every one of them go. A child that never exited, or that agentmon never made
//! while the descriptors were kept, would leave programs attached for good.

use std::time::{Duration, Instant};

use crate::{
    R,
    enforce::{run_attempts, setup},
    support::{self, ensure, eq},
};

/// Whether the kernel still has the program `id` (BPF_PROG_GET_FD_BY_ID).
fn program_exists(id: u32) -> Result<bool, String> {
    let mut attr = [0u32; 4];
    attr[0] = id;
    // SAFETY: BPF_PROG_GET_FD_BY_ID (13) reads the id from the attribute.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 13, attr.as_mut_ptr(), size_of_val(&attr)) };
    if fd >= 0 {
        // SAFETY: the descriptor just returned, ours to close.
        unsafe { libc::close(fd as i32) };
        return Ok(true);
    }
    match std::io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        e => Err(format!("BPF_PROG_GET_FD_BY_ID {id}: {e}")),
    }
}

/// Every program agentmon held while its task ran is gone once agentmon has
/// ended and its detach child has exited.
pub fn agentmons_programs_are_detached_after_it_ends() -> R {
    let (d, task) = setup("detached", false)?;
    let (run, res) = run_attempts(&d, &task, &["agentmon_programs=programs.txt".to_string()])?;
    eq("agentmon's programs listed", res.get("agentmon_programs").copied(), Some(0))?;
    let ids: Vec<u32> = std::fs::read_to_string(d.join("programs.txt"))
        .map_err(|e| e.to_string())?
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    ensure(ids.len() >= 10, || format!("only {} programs listed:\n{}", ids.len(), run.summary()))?;
    // Seconds under emulation (a daemon's 204 trampolines: 15 s in a guest).
    let limit = Duration::from_secs(60 * support::slowdown() as u64);
    let start = Instant::now();
    loop {
        let mut left = Vec::new();
        for &id in &ids {
            if program_exists(id)? {
                left.push(id);
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        if start.elapsed() > limit {
            let children: Vec<String> = std::fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "agentmon-detach")
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            return Err(format!(
                "{} of agentmon's {} programs still loaded {limit:?} after it ended (ids {left:?}); \
                 agentmon-detach processes: {children:?}",
                left.len(),
                ids.len()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
