//! Exclusive file locks, waited for a while: a holder killed with SIGKILL keeps its
//! lock until its exit is complete, which takes seconds while the kernel detaches
//! its programs. One writer per audit chain, one daemon per state directory.

use std::{fs::File, io, time::Duration};

use nix::fcntl::{Flock, FlockArg};

/// `file`'s exclusive lock, waiting up to `limit` for a holder that is exiting
/// (`on_wait` is called once if it must wait). None: still held after that.
pub fn exclusive_waiting(
    file: &File,
    limit: Duration,
    on_wait: impl FnOnce(),
) -> io::Result<Option<Flock<File>>> {
    let start = std::time::Instant::now();
    let mut on_wait = Some(on_wait);
    loop {
        match Flock::lock(file.try_clone()?, FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(Some(l)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if start.elapsed() < limit => {
                if let Some(f) = on_wait.take() {
                    f();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => return Err(e.into()),
        }
    }
}
