//! The `gated` scenario: calls an approval gate holds, one after the other, each
//! result (errno, 0 for success) appended to `repo/results.txt` as `step errno`.
//!
//! Steps: `delete=REL`, `rename=FROM:TO`, `chmod=REL`, `race=REL:SWAP` — unlink
//! REL from a buffer that a second thread rewrites to SWAP once the test creates
//! `repo/swap` (after it has seen the request), before the test decides — and
//! `exec=REL`: run REL in a child, recorded as its exit code, or 100 + errno if the
//! exec failed; `write_on=REL`: a child that appends to REL every 5 ms until a write
//! fails, recorded as `writer errno` (0 if none failed in 3,000 tries); `wait=REL`:
//! wait (up to 10 minutes) for REL to exist, not recorded.

use std::{ffi::CString, fs, io::Write, path::Path, time::Duration};

fn record(d: &Path, step: &str, r: libc::c_int) {
    let errno = if r < 0 { std::io::Error::last_os_error().raw_os_error().unwrap_or(-1) } else { 0 };
    let mut f = fs::OpenOptions::new().create(true).append(true).open(d.join("repo/results.txt")).unwrap();
    let _ = writeln!(f, "{step} {errno}");
}

fn c(d: &Path, rel: &str) -> CString {
    CString::new(d.join(rel).to_str().unwrap()).unwrap()
}

pub fn gated(d: &Path, steps: &[String]) -> Result<(), String> {
    for s in steps {
        let (step, arg) = s.split_once('=').ok_or_else(|| format!("bad step {s}"))?;
        let r = match step {
            "delete" => unsafe { libc::unlink(c(d, arg).as_ptr()) },
            "rename" => {
                let (a, b) = arg.split_once(':').ok_or("rename=FROM:TO")?;
                unsafe { libc::rename(c(d, a).as_ptr(), c(d, b).as_ptr()) }
            }
            "chmod" => unsafe { libc::chmod(c(d, arg).as_ptr(), 0o600) },
            "race" => race(d, arg)?,
            "write_on" => {
                write_on(d, arg)?;
                continue;
            }
            "wait" => {
                for _ in 0..60_000 {
                    if d.join(arg).exists() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            "exec" => {
                let code = exec(&c(d, arg));
                let mut f = fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(d.join("repo/results.txt"))
                    .map_err(|e| e.to_string())?;
                let _ = writeln!(f, "exec {code}");
                continue;
            }
            other => return Err(format!("unknown step {other}")),
        };
        record(d, step, r);
    }
    Ok(())
}

/// See the `write_on` step. The writer runs beside the steps that follow.
fn write_on(d: &Path, rel: &str) -> Result<(), String> {
    match unsafe { nix::unistd::fork() }.map_err(|e| e.to_string())? {
        nix::unistd::ForkResult::Child => {
            let mut errno = 0;
            for _ in 0..3000 {
                let w = fs::OpenOptions::new()
                    .append(true)
                    .open(d.join(rel))
                    .and_then(|mut f| f.write_all(b"#\n"));
                if let Err(e) = w {
                    errno = e.raw_os_error().unwrap_or(-1);
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let mut f =
                fs::OpenOptions::new().create(true).append(true).open(d.join("repo/results.txt")).unwrap();
            let _ = writeln!(f, "writer {errno}");
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { .. } => {
            // A few writes go through before the next step.
            std::thread::sleep(Duration::from_millis(100));
            Ok(())
        }
    }
}

/// The exit code of `path` run in a child; 100 + errno if its exec failed.
fn exec(path: &CString) -> i32 {
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            let argv = [path.as_ptr(), std::ptr::null()];
            unsafe { libc::execv(path.as_ptr(), argv.as_ptr()) };
            let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            unsafe { libc::_exit(100 + e) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => match nix::sys::wait::waitpid(child, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => code,
            _ => -1,
        },
        Err(_) => -1,
    }
}

fn race(d: &Path, arg: &str) -> Result<libc::c_int, String> {
    let (first, swap) = arg.split_once(':').ok_or("race=REL:SWAP")?;
    let first = c(d, first);
    let swap = c(d, swap);
    // The path buffer both threads see; leaked so it outlives the swapping thread.
    let buf: &'static mut [u8; 4096] = Box::leak(Box::new([0u8; 4096]));
    buf[..first.as_bytes_with_nul().len()].copy_from_slice(first.as_bytes_with_nul());
    let addr = buf.as_mut_ptr() as usize;
    let dir = d.to_path_buf();
    std::thread::spawn(move || {
        for _ in 0..3000 {
            if dir.join("repo/swap").exists() {
                for (i, b) in swap.as_bytes_with_nul().iter().enumerate() {
                    // SAFETY: the buffer is leaked and 4096 bytes long; the other thread
                    // only hands its address to the kernel.
                    unsafe { std::ptr::write_volatile((addr as *mut u8).add(i), *b) };
                }
                let _ = fs::write(dir.join("repo/swapped"), b"1");
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    Ok(unsafe { libc::unlink(addr as *const libc::c_char) })
}
