//! io_uring requests that name paths (tests/iouring.rs): each side effect the
//! syscalls make, asked of a ring instead, from the submitting thread and from a
//! SQPOLL thread (no syscall at all).

use std::{ffi::CString, os::fd::AsRawFd, path::Path};

use io_uring::{IoUring, opcode, squeue::Entry, types};

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

/// Submits `e` and waits for its completion; its result (the call's).
fn one(ring: &mut IoUring, e: Entry) -> Result<i32, String> {
    unsafe { ring.submission().push(&e).map_err(|e| e.to_string())? };
    ring.submit_and_wait(1).map_err(|e| e.to_string())?;
    let cqe = ring.completion().next().ok_or("no completion")?;
    Ok(cqe.result())
}

/// In `d`: repo/ holds old.txt, keep.txt, build/x.o, .env, plain.txt (the test made
/// them). Writes `d/results` (one `name result` per line).
pub fn files(d: &Path) -> Result<(), String> {
    let repo = d.join("repo");
    let cwd = types::Fd(libc::AT_FDCWD);
    let dir = std::fs::File::open(&repo).map_err(|e| e.to_string())?;
    let at = types::Fd(dir.as_raw_fd());
    let mut ring = IoUring::new(8).map_err(|e| e.to_string())?;
    let mut out = String::new();
    let mut note = |name: &str, r: Result<i32, String>| -> Result<(), String> {
        out.push_str(&format!("{name} {}\n", r?));
        Ok(())
    };
    let (new, outside) = (c(&repo.join("new.txt")), c(&d.join("outside.txt")));
    let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC;
    note(
        "create_in",
        one(&mut ring, opcode::OpenAt::new(cwd, new.as_ptr()).flags(flags).mode(0o640).build()),
    )?;
    let how = types::OpenHow::new().flags((flags | libc::O_TRUNC) as u64).mode(0o600);
    note("create_out", one(&mut ring, opcode::OpenAt2::new(cwd, outside.as_ptr(), &how).build()))?;
    // Relative to a directory descriptor. The name is rewritten in the agent's
    // memory once the request is submitted: the kernel acts on the copy it took
    // then (the test checks keep.txt is gone and no record names the decoy; the
    // record is made within the same submission, so this cannot tell a copy read
    // from the agent's memory apart).
    let mut keep = *b"keep.txt\0";
    unsafe { ring.submission().push(&opcode::UnlinkAt::new(at, keep.as_ptr().cast()).build()) }
        .map_err(|e| e.to_string())?;
    ring.submit().map_err(|e| e.to_string())?;
    keep.copy_from_slice(b"decoy.tx\0");
    std::hint::black_box(&keep);
    ring.submit_and_wait(1).map_err(|e| e.to_string())?;
    let r = ring.completion().next().ok_or("no completion")?.result();
    note("delete_out", Ok(r))?;
    let xo = c(&repo.join("build/x.o"));
    note("delete_in", one(&mut ring, opcode::UnlinkAt::new(cwd, xo.as_ptr()).build()))?;
    let (old, renamed) = (c(&repo.join("old.txt")), c(&repo.join("renamed.txt")));
    note("rename", one(&mut ring, opcode::RenameAt::new(cwd, old.as_ptr(), cwd, renamed.as_ptr()).build()))?;
    let newdir = c(&d.join("newdir"));
    note("mkdir_out", one(&mut ring, opcode::MkDirAt::new(cwd, newdir.as_ptr()).mode(0o750).build()))?;
    let (target, link) = (c(Path::new("/etc/passwd")), c(Path::new("link")));
    note("symlink", one(&mut ring, opcode::SymlinkAt::new(at, target.as_ptr(), link.as_ptr()).build()))?;
    let hard = c(&repo.join("hard"));
    note("link", one(&mut ring, opcode::LinkAt::new(cwd, renamed.as_ptr(), cwd, hard.as_ptr()).build()))?;
    let (env, plain) = (c(&repo.join(".env")), c(&repo.join("plain.txt")));
    note("read_env", one(&mut ring, opcode::OpenAt::new(cwd, env.as_ptr()).flags(libc::O_RDONLY).build()))?;
    note(
        "read_plain",
        one(&mut ring, opcode::OpenAt::new(cwd, plain.as_ptr()).flags(libc::O_RDONLY).build()),
    )?;
    // agentmon's own /proc files (the agent's parent): its environment, which no
    // name in the sensitive set tells, and what any process list reads.
    let ppid = std::os::unix::process::parent_id();
    note("ppid", Ok(ppid as i32))?;
    let (environ, status) =
        (c(Path::new(&format!("/proc/{ppid}/environ"))), c(Path::new(&format!("/proc/{ppid}/status"))));
    note(
        "agentmon_environ",
        one(&mut ring, opcode::OpenAt::new(cwd, environ.as_ptr()).flags(libc::O_RDONLY).build()),
    )?;
    note(
        "agentmon_status",
        one(&mut ring, opcode::OpenAt::new(cwd, status.as_ptr()).flags(libc::O_RDONLY).build()),
    )?;
    // A ring whose kernel thread submits: the agent makes no syscall for it.
    let mut sq = IoUring::builder().setup_sqpoll(2_000).build(8).map_err(|e| e.to_string())?;
    let sqf = c(&repo.join("sq.txt"));
    note("delete_sqpoll", one(&mut sq, opcode::UnlinkAt::new(cwd, sqf.as_ptr()).build()))?;
    std::fs::write(d.join("results"), out).map_err(|e| e.to_string())
}
