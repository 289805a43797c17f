//! The workload of `cargo xtask bench`: a tight loop of one syscall pattern, timed
//! inside the process so start-up (of agentmon, bpftrace, ...) is not counted.
//!
//! usage: bench-loop <open-ro|open-named|open-wr|connect|read|unlink|paced|spawn|storm> ITERATIONS [DIR]
//!
//! `open-named` opens DIR/config read-only: a name of the sensitive set's leaves,
//! outside it (`**/.kube/config`), so a task that denies sensitive reads matches it
//! whole on every open, and lets it through.
//! `unlink` creates and deletes a file; one untimed round first (under an approval
//! gate, the one an approver answers before the timed ones). `paced` writes a file
//! every 10 ms (events spaced out, for latency measurements); `spawn` runs /bin/true,
//! at most $BENCH_RATE times a second. `storm` creates and deletes a file for
//! ITERATIONS seconds and reports how many pairs it made (`cargo xtask storm`).
//! prints: ns_per_iter=<f64> iterations=<n>

use std::{ffi::CString, time::Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(w), Some(n)) = (args.get(1), args.get(2).and_then(|s| s.parse::<u64>().ok())) else {
        eprintln!(
            "usage: bench-loop <open-ro|open-named|open-wr|connect|read|unlink|paced|spawn|storm> ITERATIONS [DIR]"
        );
        std::process::exit(2);
    };
    let dir = args.get(3).cloned().unwrap_or_else(|| "/tmp".into());
    if w == "unlink"
        && let Err(e) = unlink(1, &dir)
    {
        eprintln!("bench-loop: warm-up: {e}");
        std::process::exit(1);
    }
    if w == "storm" {
        match storm(std::time::Duration::from_secs(n), &dir) {
            Ok(pairs) => {
                println!("ns_per_iter={:.1} iterations={pairs}", n as f64 * 1e9 / pairs.max(1) as f64)
            }
            Err(e) => {
                eprintln!("bench-loop: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let started = Instant::now();
    let r = match w.as_str() {
        "unlink" => unlink(n, &dir),
        "open-ro" => open_ro(n),
        "open-named" => open_named(n, &dir),
        "read" => read(n),
        "open-wr" => open_wr(n, &dir),
        "spawn" => spawn(n),
        "paced" => (0..n).try_for_each(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            open_wr(1, &dir)
        }),
        "connect" => connect(n),
        other => Err(format!("unknown workload {other}")),
    };
    if let Err(e) = r {
        eprintln!("bench-loop: {e}");
        std::process::exit(1);
    }
    let ns = started.elapsed().as_nanos() as f64 / n as f64;
    println!("ns_per_iter={ns:.1} iterations={n}");
}

/// Runs /bin/true `n` times, at most $BENCH_RATE a second (the soak's workload).
fn spawn(n: u64) -> Result<(), String> {
    let rate: f64 = std::env::var("BENCH_RATE").ok().and_then(|r| r.parse().ok()).unwrap_or(f64::INFINITY);
    let start = Instant::now();
    for i in 0..n {
        let st = std::process::Command::new("/bin/true").status().map_err(|e| format!("/bin/true: {e}"))?;
        if !st.success() {
            return Err(format!("/bin/true: {st}"));
        }
        let due = std::time::Duration::from_secs_f64((i + 1) as f64 / rate);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    Ok(())
}

/// `read` of one byte from /dev/zero: the commonest syscall of real programs, and
/// one agentmon does not hook (what every process pays for the hooks on others).
fn read(n: u64) -> Result<(), String> {
    let p = CString::new("/dev/zero").unwrap();
    let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY) };
    if fd < 0 {
        return Err("open /dev/zero".into());
    }
    let mut b = 0u8;
    for _ in 0..n {
        if unsafe { libc::read(fd, (&raw mut b).cast(), 1) } != 1 {
            return Err("read /dev/zero".into());
        }
    }
    unsafe { libc::close(fd) };
    Ok(())
}

fn open_ro(n: u64) -> Result<(), String> {
    open_ro_of("/dev/null", n)
}

fn open_named(n: u64, dir: &str) -> Result<(), String> {
    let p = format!("{dir}/config");
    std::fs::write(&p, b"x").map_err(|e| format!("{p}: {e}"))?;
    open_ro_of(&p, n)
}

fn open_ro_of(path: &str, n: u64) -> Result<(), String> {
    let p = CString::new(path).unwrap();
    for _ in 0..n {
        let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY) };
        if fd < 0 {
            return Err(format!("open {path}"));
        }
        unsafe { libc::close(fd) };
    }
    Ok(())
}

fn open_wr(n: u64, dir: &str) -> Result<(), String> {
    let p = CString::new(format!("{dir}/bench-loop-{}.dat", std::process::id())).unwrap();
    for _ in 0..n {
        let fd = unsafe { libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CREAT, 0o600) };
        if fd < 0 {
            return Err("open for writing".into());
        }
        unsafe {
            libc::write(fd, b"x".as_ptr().cast(), 1);
            libc::close(fd);
        }
    }
    unsafe { libc::unlink(p.as_ptr()) };
    Ok(())
}

fn unlink(n: u64, dir: &str) -> Result<(), String> {
    let p = CString::new(format!("{dir}/bench-unlink-{}.dat", std::process::id())).unwrap();
    for _ in 0..n {
        unsafe {
            let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CREAT, 0o600);
            if fd < 0 {
                return Err("create".into());
            }
            libc::close(fd);
            if libc::unlink(p.as_ptr()) != 0 {
                return Err(format!("unlink: {}", std::io::Error::last_os_error()));
            }
        }
    }
    Ok(())
}

/// Creates and deletes a file until `span` has passed; returns the pairs made.
fn storm(span: std::time::Duration, dir: &str) -> Result<u64, String> {
    let started = Instant::now();
    let mut pairs = 0;
    while started.elapsed() < span {
        unlink(256, dir)?;
        pairs += 256;
    }
    Ok(pairs)
}

/// Connects to a local port nothing listens on (refused at once).
fn connect(n: u64) -> Result<(), String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes([127, 0, 0, 1]) },
        sin_zero: [0; 8],
    };
    for _ in 0..n {
        unsafe {
            let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            if s < 0 {
                return Err("socket".into());
            }
            libc::connect(s, (&raw const addr).cast(), size_of::<libc::sockaddr_in>() as u32);
            libc::close(s);
        }
    }
    Ok(())
}
