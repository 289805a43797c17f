//! What a test needs to tell a hung agentmon from a slow one: its output read while it
//! runs, and where its threads wait when it does not end.

use std::{
    io::Read,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// A pipe read to its end on a thread of its own, so that a child that fills it never
/// blocks, and a reader never waits past a limit for a writer that keeps it open.
pub struct Drained {
    got: Arc<Mutex<(Vec<u8>, bool)>>,
}

impl Drained {
    pub fn of<R: Read + Send + 'static>(r: Option<R>) -> Drained {
        let got = Arc::new(Mutex::new((Vec::new(), r.is_none())));
        if let Some(mut r) = r {
            let into = got.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                loop {
                    let n = r.read(&mut buf).unwrap_or(0);
                    let mut g = into.lock().unwrap_or_else(|e| e.into_inner());
                    if n == 0 {
                        g.1 = true;
                        return;
                    }
                    g.0.extend_from_slice(&buf[..n]);
                }
            });
        }
        Drained { got }
    }

    /// What was read once the pipe's end came, or `limit` passed (then said).
    pub fn text(&self, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            let g = self.got.lock().unwrap_or_else(|e| e.into_inner());
            if g.1 || start.elapsed() >= limit {
                let mut t = String::from_utf8_lossy(&g.0).into_owned();
                if !g.1 {
                    t.push_str(&format!(
                        "\n(the pipe was still open after {} s: a process holds it)",
                        limit.as_secs()
                    ));
                }
                return t;
            }
            drop(g);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `pid` and its descendants, parents first.
fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                all.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
            }
        }
        i += 1;
    }
    all
}

/// One line per thread of `pid`'s tree: pid/tid, name, state, the kernel function it
/// waits in, and the top of its kernel stack (root reads it).
pub fn where_they_wait(pid: u32) -> String {
    let mut lines = Vec::new();
    for p in tree(pid) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else { continue };
        for t in tasks.flatten() {
            let dir = t.path();
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            let stat = read("stat");
            let state = stat.rsplit_once(") ").and_then(|(_, r)| r.split_whitespace().next()).unwrap_or("?");
            let stack: Vec<String> = read("stack")
                .lines()
                .take(4)
                .map(|l| l.split_whitespace().last().unwrap_or("").to_string())
                .collect();
            lines.push(format!(
                "  {p}/{} {} {state} wchan={} stack={}",
                t.file_name().to_string_lossy(),
                read("comm").trim(),
                read("wchan").trim(),
                stack.join("<")
            ));
        }
    }
    lines.join("\n")
}

/// SIGKILLs `pid` and its descendants (a frozen cgroup's processes die once thawed;
/// agentmon's tasks are its own to end).
pub fn kill_tree(pid: u32) {
    for p in tree(pid).into_iter().rev() {
        // SAFETY: kill(2) takes any pid; these were read from /proc an instant before
        // (one reused since is the race every kill by pid has).
        unsafe { libc::kill(p as i32, libc::SIGKILL) };
    }
}
