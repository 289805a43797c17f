//! The `contain` scenario: a process tree for kill and freeze to act on.
//!
//! The root forks a sleeping child and, by double fork + setsid, a grandchild that
//! the root's death does not end; with `churn` 300 more children sleep and another
//! forks short-lived children from two threads without pause; with `spin` the grandchild burns CPU without a
//! syscall (so only cgroup.kill reaches it, never a syscall hook). Each writes its
//! pid to `repo/pids/`; then the root writes `repo/ready`, optionally creates `repo/<trigger>`
//! (the file a test rule reacts to), and rewrites `repo/heartbeat` every 20 ms for up to
//! a minute. Exiting on its own is the failure the tests look for.

use std::{fs, path::Path, time::Duration};

use nix::unistd::{ForkResult, fork};

fn write_pid(d: &Path, who: &str) {
    let _ = fs::write(d.join("repo/pids").join(who), std::process::id().to_string());
}

pub fn contain(d: &Path, args: &[String]) -> Result<(), String> {
    let trigger = args.get(1).map(String::as_str).unwrap_or("none");
    let spin = args.iter().any(|a| a == "spin");
    write_pid(d, "root");
    if let ForkResult::Child = unsafe { fork() }.map_err(|e| e.to_string())? {
        write_pid(d, "child");
        for _ in 0..3000 {
            std::thread::sleep(Duration::from_millis(20));
        }
        unsafe { libc::_exit(0) };
    }
    if let ForkResult::Child = unsafe { fork() }.map_err(|e| e.to_string())? {
        nix::unistd::setsid().ok();
        if let ForkResult::Child = unsafe { fork() }.map_err(|e| e.to_string())? {
            write_pid(d, "grandchild");
            if spin {
                let mut x: u64 = 0;
                // No syscalls from here on: a minute of arithmetic.
                for i in 0..u64::MAX {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
                }
            } else {
                for _ in 0..3000 {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            unsafe { libc::_exit(0) };
        }
        unsafe { libc::_exit(0) };
    }
    for _ in 0..500 {
        if ["child", "grandchild"].iter().all(|w| d.join("repo/pids").join(w).exists()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    fs::write(d.join("repo/ready"), b"1").map_err(|e| e.to_string())?;
    if args.iter().any(|a| a == "churn") {
        // Processes born and gone by the thousand while the kill comes, among a
        // crowd of sleeping ones (which make marking them all take a while): some
        // exit between agentmon reading the task's processes and marking them.
        for _ in 0..300 {
            if let ForkResult::Child = unsafe { fork() }.map_err(|e| e.to_string())? {
                loop {
                    unsafe { libc::pause() };
                }
            }
        }
        // In a process of their own: the kill takes the offender (the root) first.
        if let ForkResult::Child = unsafe { fork() }.map_err(|e| e.to_string())? {
            let churn = || {
                loop {
                    match unsafe { fork() } {
                        Ok(ForkResult::Child) => unsafe { libc::_exit(0) },
                        Ok(ForkResult::Parent { child }) => {
                            let _ = nix::sys::wait::waitpid(child, None);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
            };
            std::thread::spawn(churn);
            churn();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if trigger != "none" {
        fs::write(d.join("repo").join(trigger), b"").map_err(|e| e.to_string())?;
    }
    for i in 0..3000u32 {
        let _ = fs::write(d.join("repo/heartbeat"), i.to_string());
        std::thread::sleep(Duration::from_millis(20));
    }
    Err("the tree was neither killed nor frozen for a minute".into())
}

/// `slow_freeze DIR PATH`: a child looks PATH up again and again (a lookup on a
/// file system that answers late keeps it in the kernel); once the file system has
/// been asked (DIR/asked), the parent makes repo/FREEZE-ME, whose rule freezes the
/// task while the child waits in that lookup.
pub fn slow_freeze(d: &Path, args: &[String]) -> Result<(), String> {
    let path = args.get(1).ok_or("slow_freeze DIR PATH")?;
    // SAFETY: the child only loops on stat.
    if let ForkResult::Child = unsafe { fork() }.map_err(|e| e.to_string())? {
        loop {
            let _ = fs::metadata(path);
        }
    }
    for _ in 0..3000 {
        if d.join("asked").exists() {
            fs::write(d.join("repo/FREEZE-ME"), b"").map_err(|e| e.to_string())?;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Frozen here, until killed: the heartbeat stops.
    for i in 0..3000 {
        fs::write(d.join("repo/heartbeat"), i.to_string()).map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(20));
    }
    Err("neither killed nor frozen".into())
}
