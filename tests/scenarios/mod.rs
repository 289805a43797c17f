//! Scenario agents: run inside the tracked task (this test binary re-executed), each
//! a precise sequence of syscalls whose events the tests then assert.

use std::{
    ffi::CString,
    fs,
    io::Write,
    net::{TcpListener, UdpSocket},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::PermissionsExt, net::UnixStream},
    },
    path::Path,
    time::Duration,
};

use nix::{
    fcntl::{AtFlags, OFlag, openat},
    sys::stat::Mode,
    unistd::{ForkResult, fork},
};

mod adversary;
mod contain;
mod fuse;
mod gated;
mod hosts;
mod iouring;
mod race;
mod steps;
mod storm;

/// Runs scenario `name`; the return value is the process exit status.
pub fn run(name: &str, args: &[String]) -> i32 {
    let dir = args.first().map(Path::new);
    let r = match (name, dir) {
        ("files", Some(d)) => files(d),
        // What each observation tier must see the same (tests/observe.rs).
        // Enforced, some of its calls are refused (seccomp's among them): whatever
        // each part's outcome, it must be seen the same on both tiers.
        ("tiers", Some(d)) => std::fs::write(d.join("ran"), b"").map_err(|e| e.to_string()).map(|()| {
            let _ = files(d);
            let _ = net(d);
            let _ = privilege();
            let _ = memfd();
        }),
        ("dirfd", Some(d)) => dirfd(d),
        ("double_fork", Some(d)) => double_fork(d),
        ("leave_behind", Some(d)) => leave_behind(d, ["repo/left_in.txt", "out.txt", "repo/left_done"]),
        ("net", Some(d)) => net(d),
        ("io_uring", _) => io_uring(),
        ("io_uring_files", Some(d)) => iouring::files(d),
        ("trunc_race", Some(d)) => trunc_race(d),
        ("privilege", _) => privilege(),
        ("memfd", _) => memfd(),
        ("sensitive", Some(d)) => sensitive(d),
        ("wait_for", Some(d)) => wait_for(&d.join("go")),
        ("stream", Some(d)) => stream(d, &args[1..]),
        ("task_agent", Some(d)) => task_agent(d),
        ("reverse_shell", _) => reverse_shell(),
        ("delegate", Some(d)) => delegate(d, args),
        ("sub_agent", Some(d)) => sub_agent(d),
        ("delegate_one", Some(d)) => delegate_one(d, args),
        ("hosts", Some(d)) => hosts::parent(d, args),
        // Serves a FUSE file system at ARG whose file `f` names d/repo/held.txt, each
        // read answered 3 s (or DELAY_MS) late (until it is unmounted).
        ("fuse_serve", Some(d)) => fuse_serve(d, args),
        ("slow_freeze", Some(d)) => contain::slow_freeze(d, args),
        ("hosts_sub", Some(d)) => hosts::sub(d),
        ("hosts_slow", Some(d)) => std::fs::write(d.join("repo/slow/ran"), b"").map_err(|e| e.to_string()),
        ("sub_waits", Some(d)) => sub_waits(d),
        ("nested_hold", Some(d)) => nested_hold(d),
        ("hold_pid", Some(d)) => hold_pid(d),
        // A sub-task's: inside its scope, outside it but inside its parent's.
        ("sub_leaves", Some(d)) => {
            leave_behind(d, ["repo/sub/left_in.txt", "repo/left_out.txt", "repo/sub/left_done"])
        }
        ("two_steps", Some(d)) => two_steps(d),
        ("storm", Some(d)) => storm::storm(d, &args[1..]),
        ("attempts", Some(d)) => attempts(d, &args[1..]),
        ("contain", Some(d)) => contain::contain(d, args),
        ("gated", Some(d)) => gated::gated(d, &args[1..]),
        ("steps", Some(d)) => steps::steps(d, &args[1..]),
        ("rights", Some(d)) => adversary::rights(d, args.get(1).map(String::as_str).unwrap_or("")),
        ("hold", Some(_)) => match args {
            [sock, n, d] => adversary::hold(sock, n.parse().unwrap_or(1), Path::new(d)),
            _ => Err("hold SOCKET N DIR".into()),
        },
        ("fake_agentmon", Some(sock)) => match args {
            [_, log] => adversary::fake_agentmon(sock, Path::new(log)),
            _ => Err("fake_agentmon SOCKET LOG".into()),
        },
        ("deep", Some(d)) => adversary::deep(d, &args[1..]),
        ("race_checks", Some(d)) => race::race_checks(d, &args[1..]),
        ("leave_cgroup", Some(d)) => {
            adversary::leave_cgroup(d, args.get(1).map(String::as_str).unwrap_or(""))
        }
        _ => Err(format!("unknown scenario {name} {args:?}")),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("scenario {name} failed: {e}");
            99
        }
    }
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn sys(r: libc::c_long, what: &str) -> Result<libc::c_long, String> {
    if r < 0 { Err(format!("{what}: {}", std::io::Error::last_os_error())) } else { Ok(r) }
}

/// Every file side effect once, with both path and fd forms.
fn files(d: &Path) -> Result<(), String> {
    let e = |x: std::io::Error| x.to_string();
    fs::write(d.join("a.txt"), b"hello").map_err(e)?; // create
    fs::OpenOptions::new().append(true).open(d.join("a.txt")).map_err(e)?.write_all(b"!").map_err(e)?; // write
    fs::rename(d.join("a.txt"), d.join("b.txt")).map_err(e)?;
    fs::hard_link(d.join("b.txt"), d.join("hard.txt")).map_err(e)?;
    std::os::unix::fs::symlink("b.txt", d.join("soft.txt")).map_err(e)?;
    fs::set_permissions(d.join("b.txt"), fs::Permissions::from_mode(0o600)).map_err(e)?;
    let uid = nix::unistd::getuid();
    nix::unistd::chown(&d.join("b.txt"), Some(uid), None).map_err(|x| x.to_string())?;
    unsafe {
        sys(libc::truncate(c(&d.join("b.txt")).as_ptr(), 2) as _, "truncate")?;
        let fd = sys(libc::open(c(&d.join("hard.txt")).as_ptr(), libc::O_WRONLY) as _, "open")? as i32;
        sys(libc::ftruncate(fd, 1) as _, "ftruncate")?;
        sys(libc::fchmod(fd, 0o640) as _, "fchmod")?;
        // Extended attributes: set through the fd, removed by path (a filesystem
        // without user xattrs fails them, and they are reported all the same).
        let (name, val) = (CString::new("user.agentmon").unwrap(), b"x");
        libc::fsetxattr(fd, name.as_ptr(), val.as_ptr().cast(), 1, 0);
        libc::removexattr(c(&d.join("b.txt")).as_ptr(), name.as_ptr());
        libc::close(fd);
        // fchmodat2 (6.6+): AT_SYMLINK_NOFOLLOW on a regular file works. Older kernels
        // lack it (ENOSYS): said in a marker file for the test.
        if libc::syscall(452, libc::AT_FDCWD, c(&d.join("b.txt")).as_ptr(), 0o644, 0x100) < 0 {
            if *libc::__errno_location() != libc::ENOSYS {
                return Err(format!("fchmodat2: {}", std::io::Error::last_os_error()));
            }
            fs::write(d.join("no-fchmodat2"), b"").map_err(|e| e.to_string())?;
        }
    }
    fs::create_dir(d.join("sub")).map_err(e)?;
    fs::remove_file(d.join("hard.txt")).map_err(e)?;
    fs::remove_dir(d.join("sub")).map_err(e)?;
    // An existing file opened with O_CREAT is a write, not a create.
    fs::OpenOptions::new().write(true).create(true).truncate(false).open(d.join("b.txt")).map_err(e)?;
    // A write through a symlink reports the target.
    fs::OpenOptions::new().write(true).open(d.join("soft.txt")).map_err(e)?.write_all(b"x").map_err(e)?;
    // `..` in the name: resolved.
    fs::create_dir(d.join("up")).map_err(e)?;
    fs::write(d.join("up/../dotdot.txt"), b"").map_err(e)?;
    // An exec that the kernel refuses (not executable) is reported with its error.
    let noexec = d.join("noexec.sh");
    fs::write(&noexec, b"#!/bin/sh\n").map_err(e)?;
    if std::process::Command::new(&noexec).status().is_ok() {
        return Err("exec of a non-executable file succeeded".into());
    }
    Ok(())
}

/// Relative names under a directory fd, and a relative name under the cwd.
fn dirfd(d: &Path) -> Result<(), String> {
    fs::create_dir(d.join("inner")).map_err(|x| x.to_string())?;
    let dfd = nix::fcntl::open(&d.join("inner"), OFlag::O_DIRECTORY | OFlag::O_RDONLY, Mode::empty())
        .map_err(|x| x.to_string())?;
    let f = openat(&dfd, "rel.txt", OFlag::O_CREAT | OFlag::O_WRONLY, Mode::from_bits_truncate(0o644))
        .map_err(|x| x.to_string())?;
    drop(f);
    nix::unistd::unlinkat(&dfd, "rel.txt", nix::unistd::UnlinkatFlags::NoRemoveDir)
        .map_err(|x| x.to_string())?;
    nix::fcntl::renameat(&dfd, "nope", &dfd, "nope2").ok(); // fails: ENOENT, still reported
    std::env::set_current_dir(d.join("inner")).map_err(|x| x.to_string())?;
    nix::unistd::mkdir("cwd-rel", Mode::from_bits_truncate(0o755)).map_err(|x| x.to_string())?;
    let _ = AtFlags::empty();
    Ok(())
}

/// The root leaves a background process behind and exits at once (its task ends):
/// the process, in a session of its own, waits for `go` (up to 10 minutes), then
/// writes `inside`, `outside` (of the task's scope) and `done`, under `d`.
fn leave_behind(d: &Path, [inside, outside, done]: [&str; 3]) -> Result<(), String> {
    match unsafe { fork() }.map_err(|x| x.to_string())? {
        ForkResult::Child => {
            nix::unistd::setsid().ok();
            if let Ok(ForkResult::Child) = unsafe { fork() } {
                for _ in 0..60_000 {
                    if d.join("go").exists() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                for f in [inside, outside, done] {
                    let _ = fs::write(d.join(f), b"");
                }
                unsafe { libc::_exit(0) };
            }
            unsafe { libc::_exit(0) };
        }
        ForkResult::Parent { child } => {
            let _ = nix::sys::wait::waitpid(child, None);
            Ok(())
        }
    }
}

/// The tracked root forks a child that calls setsid and forks a grandchild, then
/// exits; the grandchild (reparented) writes a file after its parent is gone.
fn double_fork(d: &Path) -> Result<(), String> {
    let (r, w) = nix::unistd::pipe().map_err(|x| x.to_string())?;
    match unsafe { fork() }.map_err(|x| x.to_string())? {
        ForkResult::Child => {
            nix::unistd::setsid().ok();
            if let Ok(ForkResult::Child) = unsafe { fork() } {
                // Grandchild: wait until the middle process is gone.
                let ppid = nix::unistd::getppid();
                for _ in 0..200 {
                    if nix::sys::signal::kill(ppid, None).is_err() || nix::unistd::getppid() != ppid {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = fs::write(d.join("grandchild.txt"), b"escaped?");
                let _ = nix::unistd::write(&w, b"1");
                unsafe { libc::_exit(0) };
            }
            unsafe { libc::_exit(0) };
        }
        ForkResult::Parent { child } => {
            drop(w);
            let _ = nix::sys::wait::waitpid(child, None);
            let mut b = [0u8; 1];
            nix::unistd::read(&r, &mut b).map_err(|x| x.to_string())?;
            // Give the grandchild time to exit so its exit event is in the stream.
            std::thread::sleep(Duration::from_millis(100));
            Ok(())
        }
    }
}

fn net(d: &Path) -> Result<(), String> {
    use std::net::TcpStream;
    // A port nothing listens on: connect fails, and is still reported.
    let closed = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?;
    let _ = TcpStream::connect(closed);
    // IPv6 loopback, and v4-mapped on an AF_INET6 socket.
    let _ = TcpStream::connect(format!("[::1]:{}", closed.port()));
    let _ = TcpStream::connect(format!("[::ffff:127.0.0.1]:{}", closed.port()));
    // UDP with a destination (what a DNS query looks like).
    let u = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    u.send_to(b"q", "127.0.0.1:53").map_err(|e| e.to_string())?;
    // One sendmmsg: 18 messages to 127.0.0.1:53, then one each to two others (each
    // must be seen, not only the first); then one to 20 destinations in turn (past
    // what is recorded per call: the rest is said to be unread).
    let to =
        |last: u8, port: u16| std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(127, 0, 0, last), port);
    let mut first: Vec<_> = vec![to(1, 53); 18];
    first.extend([to(2, 5353), to(3, 5354)]);
    sendmmsg(&u, &first)?;
    sendmmsg(&u, &(0..20).map(|i| to(10 + i, 9000)).collect::<Vec<_>>())?;
    // Two destinations in turn, ten times: each is recorded once.
    sendmmsg(&u, &[to(5, 6000), to(6, 6000)].repeat(10))?;
    // Two unix datagram sockets whose paths share all but the last byte (more than
    // the 26 bytes of the sockaddr that an IPv6 address needs): two destinations.
    let (ua, ub) = (d.join("dgram-a.sock"), d.join("dgram-b.sock"));
    let _ra = std::os::unix::net::UnixDatagram::bind(&ua).map_err(|e| e.to_string())?;
    let _rb = std::os::unix::net::UnixDatagram::bind(&ub).map_err(|e| e.to_string())?;
    let us = std::os::unix::net::UnixDatagram::unbound().map_err(|e| e.to_string())?;
    let both = [sockaddr_un(&ua), sockaddr_un(&ub)];
    let n = sendmmsg_raw(us.as_raw_fd(), &both);
    if n != 2 {
        return Err(format!("unix sendmmsg sent {n} of 2: {}", std::io::Error::last_os_error()));
    }
    sendmmsg_into_its_vector(&u, to(7, 7000))?;
    // One IPv6 destination given with trailing bytes that change from message to
    // message (the kernel reads 28 bytes of a longer msg_namelen): one record.
    let u6 = UdpSocket::bind("[::1]:0").map_err(|e| e.to_string())?;
    let six: Vec<Vec<u8>> = (0..20u8)
        .map(|i| {
            let sa = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 6001u16.to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: std::net::Ipv6Addr::LOCALHOST.octets() },
                sin6_scope_id: 0,
            };
            let p: *const u8 = (&raw const sa).cast();
            let mut b =
                unsafe { std::slice::from_raw_parts(p, std::mem::size_of::<libc::sockaddr_in6>()) }.to_vec();
            b.extend([i; 12]);
            b
        })
        .collect();
    let n = sendmmsg_raw(u6.as_raw_fd(), &six);
    if n != 20 {
        return Err(format!("IPv6 sendmmsg sent {n} of 20: {}", std::io::Error::last_os_error()));
    }
    // A destination given as AF_UNSPEC, which an IPv4 UDP socket sends to as AF_INET.
    unsafe {
        use std::os::fd::AsRawFd;
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_UNSPEC as libc::sa_family_t,
            sin_port: 7u16.to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(std::net::Ipv4Addr::new(127, 0, 0, 4)).to_be() },
            sin_zero: [0; 8],
        };
        let sent = libc::sendto(
            u.as_raw_fd(),
            b"q".as_ptr().cast(),
            1,
            0,
            (&raw const sa).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        if sent != 1 {
            return Err(format!("sendto AF_UNSPEC: {}", std::io::Error::last_os_error()));
        }
    }
    // bind + listen.
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    fs::write(d.join("listen-port"), l.local_addr().unwrap().port().to_string())
        .map_err(|e| e.to_string())?;
    // Unix socket path (a listener we own, so connect succeeds).
    let sock = d.join("agent.sock");
    let _ul = std::os::unix::net::UnixListener::bind(&sock).map_err(|e| e.to_string())?;
    UnixStream::connect(&sock).map_err(|e| e.to_string())?;
    Ok(())
}

/// sendmmsg(2) of one byte to each of `to`, on `u`: all must be sent.
fn sendmmsg(u: &UdpSocket, to: &[std::net::SocketAddrV4]) -> Result<(), String> {
    let addrs: Vec<_> = to.iter().map(|a| sockaddr_in(*a)).collect();
    let n = sendmmsg_raw(u.as_raw_fd(), &addrs);
    if n != addrs.len() as i32 {
        return Err(format!("sendmmsg sent {n} of {}: {}", addrs.len(), std::io::Error::last_os_error()));
    }
    Ok(())
}

/// sendmmsg(2) of one message to `to` on `u`, whose sockaddr lies over the message's
/// own `msg_len`, which the kernel overwrites with the bytes sent after sending: read
/// at the exit, the destination would be family 1 (unix), not the one sent to.
fn sendmmsg_into_its_vector(u: &UdpSocket, to: std::net::SocketAddrV4) -> Result<(), String> {
    #[repr(C, align(8))]
    struct Vector([u8; 80]);
    const AT: usize = std::mem::size_of::<libc::msghdr>();
    let mut v = Vector([0; 80]);
    let sa = sockaddr_in(to);
    v.0[AT..AT + sa.len()].copy_from_slice(&sa);
    let mut byte = *b"q";
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let base = v.0.as_mut_ptr();
    let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
    m.msg_hdr.msg_name = unsafe { base.add(AT) }.cast();
    m.msg_hdr.msg_namelen = sa.len() as u32;
    m.msg_hdr.msg_iov = &raw mut iov;
    m.msg_hdr.msg_iovlen = 1;
    // The header without msg_len: msg_len and the padding are the address's first bytes.
    unsafe { std::ptr::copy_nonoverlapping((&raw const m.msg_hdr).cast::<u8>(), base, AT) };
    let n = unsafe { libc::sendmmsg(u.as_raw_fd(), base.cast(), 1, 0) };
    if n != 1 {
        return Err(format!("sendmmsg into its vector: {n}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Sends `bytes` from a connected TCP socket to a listener of this process on
/// `addr`: 0 once all arrived, 10000 + the MiB received when short, or the errno.
fn tcp_bulk(addr: &str, bytes: usize) -> std::io::Result<i32> {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind(addr)?;
    let at = l.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut c, _) = l.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        loop {
            match c.read(&mut buf)? {
                0 => return Ok(got),
                n => got += n,
            }
        }
    });
    let mut s = std::net::TcpStream::connect(at)?;
    s.write_all(&vec![b'x'; bytes])?;
    s.shutdown(std::net::Shutdown::Write)?;
    let got = reader.join().map_err(|_| std::io::Error::other("reader panicked"))??;
    Ok(if got == bytes { 0 } else { 10_000 + (got >> 20) as i32 })
}

/// sendmsg(2) of one UDP byte to `to` with a source route (or, `record`, an IPv4
/// record-route option) as ancillary data (see the `retopts_to` action): 0, or the errno.
fn send_with_cmsg(to: std::net::SocketAddr, record: bool) -> i32 {
    let bind = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
    let Ok(u) = UdpSocket::bind(bind) else { return -3 };
    let (mut name, level, ty, data): (Vec<u8>, i32, i32, Vec<u8>) = match to {
        std::net::SocketAddr::V4(a) => {
            // Loose source route via 127.0.0.2, or record route with one slot; then a no-op.
            let opt = if record { vec![7, 7, 4, 0, 0, 0, 0, 1] } else { vec![131, 7, 4, 127, 0, 0, 2, 1] };
            (sockaddr_in(a), libc::IPPROTO_IP, libc::IP_RETOPTS, opt)
        }
        std::net::SocketAddr::V6(a) => {
            let sa = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: 0,
            };
            let p: *const u8 = (&raw const sa).cast();
            let b = unsafe { std::slice::from_raw_parts(p, std::mem::size_of::<libc::sockaddr_in6>()) };
            // Type 2: next header, length 2, type 2, segments left 1, reserved; home
            // address ::1 (routed here, so that the packet reaches the guard's check).
            let mut rh = vec![0u8, 2, 2, 1, 0, 0, 0, 0];
            rh.extend(std::net::Ipv6Addr::LOCALHOST.octets());
            (b.to_vec(), libc::IPPROTO_IPV6, libc::IPV6_RTHDR, rh)
        }
    };
    let space = unsafe { libc::CMSG_SPACE(data.len() as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut byte = *b"q";
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_name = name.as_mut_ptr().cast();
    m.msg_namelen = name.len() as u32;
    m.msg_iov = &raw mut iov;
    m.msg_iovlen = 1;
    m.msg_control = control.as_mut_ptr().cast();
    m.msg_controllen = space;
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&m);
        (*c).cmsg_level = level;
        (*c).cmsg_type = ty;
        (*c).cmsg_len = libc::CMSG_LEN(data.len() as u32) as usize;
        std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(c), data.len());
    }
    if unsafe { libc::sendmsg(u.as_raw_fd(), &m, 0) } < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    } else {
        0
    }
}

/// setsockopt(LEVEL, OPT, value) on a UDP socket bound to `bind`: 0, or the errno.
fn udp_setsockopt(bind: &str, level: i32, opt: i32, value: &[u8]) -> i32 {
    match UdpSocket::bind(bind) {
        Ok(u) => {
            if unsafe {
                libc::setsockopt(u.as_raw_fd(), level, opt, value.as_ptr().cast(), value.len() as u32)
            } < 0
            {
                std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
            } else {
                0
            }
        }
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// `a` as the sockaddr bytes sendmmsg takes.
fn sockaddr_in(a: std::net::SocketAddrV4) -> Vec<u8> {
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    };
    let p: *const u8 = (&raw const sa).cast();
    unsafe { std::slice::from_raw_parts(p, std::mem::size_of::<libc::sockaddr_in>()) }.to_vec()
}

/// Unix socket path `p` as the sockaddr bytes sendmmsg takes (family, path, NUL).
fn sockaddr_un(p: &Path) -> Vec<u8> {
    let mut b = (libc::AF_UNIX as libc::sa_family_t).to_ne_bytes().to_vec();
    b.extend(p.as_os_str().as_bytes());
    b.push(0);
    b
}

/// sendmmsg(2) of one byte to each address in `to` (raw sockaddr bytes) on `fd`:
/// what it returns.
fn sendmmsg_raw(fd: i32, to: &[Vec<u8>]) -> i32 {
    let mut addrs: Vec<Vec<u8>> = to.to_vec();
    let mut byte = *b"q";
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut msgs: Vec<libc::mmsghdr> = addrs
        .iter_mut()
        .map(|a| {
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = a.as_mut_ptr().cast();
            m.msg_hdr.msg_namelen = a.len() as u32;
            m.msg_hdr.msg_iov = &raw mut iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), msgs.len() as u32, 0) }
}

/// openat2(O_RDONLY|O_TRUNC) of d/race.txt, over and over, while another thread flips
/// O_TRUNC in the `how` it passes on and off: the kernel truncates when it copied the
/// flag in, the exit may read the other value. Writes how many calls truncated (the
/// file had a byte before each) and how many were made to d/race-truncated. Then one openat2 O_TRUNC of
/// d/plain.txt with nothing racing.
fn trunc_race(d: &Path) -> Result<(), String> {
    use std::{
        os::unix::fs::FileExt,
        sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    };
    static HOW: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
    static STOP: AtomicBool = AtomicBool::new(false);
    let trunc = libc::O_RDONLY as u64 | libc::O_TRUNC as u64;
    let openat2 = |p: &Path| {
        let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        let fd =
            unsafe { libc::syscall(libc::SYS_openat2, libc::AT_FDCWD, c.as_ptr(), HOW.as_ptr(), 24usize) };
        if fd >= 0 {
            unsafe { libc::close(fd as i32) };
        }
    };
    let race = d.join("race.txt");
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&race)
        .map_err(|e| e.to_string())?;
    let flipper = std::thread::spawn(move || {
        let mut on = true;
        while !STOP.load(Relaxed) {
            HOW[0].store(if on { trunc } else { libc::O_RDONLY as u64 }, Relaxed);
            on = !on;
        }
    });
    // Until each outcome was seen a few times (a busy or emulated machine may not run
    // the flipper for a while: a fixed count could see one outcome only), at most 5000.
    let (mut calls, mut truncated) = (0, 0);
    while calls < 5000 && (truncated < 150 || calls - truncated < 150) {
        f.write_at(b"x", 0).map_err(|e| e.to_string())?;
        openat2(&race);
        if f.metadata().map_err(|e| e.to_string())?.len() == 0 {
            truncated += 1;
        }
        calls += 1;
    }
    STOP.store(true, Relaxed);
    let _ = flipper.join();
    fs::write(d.join("race-truncated"), format!("{truncated} {calls}")).map_err(|e| e.to_string())?;
    let plain = d.join("plain.txt");
    fs::write(&plain, b"x").map_err(|e| e.to_string())?;
    HOW[0].store(trunc, Relaxed);
    openat2(&plain);
    Ok(())
}

fn io_uring() -> Result<(), String> {
    let mut ring = io_uring::IoUring::new(8).map_err(|e| e.to_string())?;
    let nop = io_uring::opcode::Nop::new().build().user_data(7);
    unsafe { ring.submission().push(&nop).map_err(|e| e.to_string())? };
    ring.submit_and_wait(1).map_err(|e| e.to_string())?;
    Ok(())
}

fn privilege() -> Result<(), String> {
    // setuid to our own uid: allowed, and a privilege event.
    nix::unistd::setuid(nix::unistd::getuid()).map_err(|e| e.to_string())?;
    // bpf(BPF_PROG_LOAD) with an empty attr: EINVAL, still reported.
    unsafe {
        let attr = [0u8; 128];
        libc::syscall(libc::SYS_bpf, 5, attr.as_ptr(), attr.len());
    }
    // ptrace a child of ours.
    match unsafe { fork() }.map_err(|e| e.to_string())? {
        ForkResult::Child => {
            std::thread::sleep(Duration::from_secs(5));
            unsafe { libc::_exit(0) };
        }
        ForkResult::Parent { child } => {
            nix::sys::ptrace::seize(child, nix::sys::ptrace::Options::empty()).map_err(|e| e.to_string())?;
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(child, None);
        }
    }
    Ok(())
}

/// Fileless exec: copy /bin/true into a memfd and exec it.
/// Runs a program from a memfd (`payload`), then a script (`script-payload`), whose
/// interpreter reads it through the descriptor.
fn memfd() -> Result<(), String> {
    memfd_run("payload", &fs::read("/bin/true").map_err(|e| e.to_string())?)?;
    memfd_run("script-payload", b"#!/bin/sh\nexit 0\n")
}

fn memfd_run(name: &str, content: &[u8]) -> Result<(), String> {
    let cname = CString::new(name).unwrap();
    // Not close-on-exec: a script's interpreter opens it as /dev/fd/N.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), 0) };
    if fd < 0 {
        return Err("memfd_create".into());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut f = fs::File::from(fd);
    f.write_all(content).map_err(|e| e.to_string())?;
    match unsafe { fork() }.map_err(|e| e.to_string())? {
        ForkResult::Child => {
            let argv = [cname];
            let env: [CString; 0] = [];
            let _ = nix::unistd::fexecve(&f, &argv, &env);
            unsafe { libc::_exit(98) };
        }
        ForkResult::Parent { child } => {
            let st = nix::sys::wait::waitpid(child, None).map_err(|e| e.to_string())?;
            match st {
                nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(()),
                other => Err(format!("memfd child {name}: {other:?}")),
            }
        }
    }
}

/// Reads a sensitive file and an ordinary one.
fn sensitive(d: &Path) -> Result<(), String> {
    fs::read(d.join(".env")).map_err(|e| e.to_string())?;
    fs::read(d.join("notes.txt")).map_err(|e| e.to_string())?;
    fs::read(d.join("config")).map_err(|e| e.to_string())?; // prefilter hit, glob miss
    // Probing for a credential file that is not there is still a signal.
    let _ = fs::read(d.join(".git-credentials"));
    Ok(())
}

/// Waits (up to 30 s) for `flag` to exist.
fn wait_for(flag: &Path) -> Result<(), String> {
    // 30 s, as long again on a slower (emulated) kernel.
    for _ in 0..3000 * crate::support::slowdown() {
        if flag.exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!("{} never appeared", flag.display()))
}

/// `fuse_serve DIR MOUNTPOINT [when]`: `when` answers lookups of `slow` only once
/// DIR/go exists (and makes DIR/asked when one comes), not 3 s late.
fn fuse_serve(d: &Path, args: &[String]) -> Result<(), String> {
    let delay = Duration::from_secs(3);
    let (at, slow) = match args {
        [_, at] => (at, fuse::Slow::After(delay)),
        [_, at, when] if when == "when" => {
            (at, fuse::Slow::When { asked: d.join("asked"), go: d.join("go") })
        }
        [_, at, when] if when == "after-first" => {
            (at, fuse::Slow::AfterFirst { asked: d.join("asked"), go: d.join("go") })
        }
        [_, at, when] if when == "open-when" => {
            (at, fuse::Slow::OpenWhen { asked: d.join("asked"), go: d.join("go") })
        }
        _ => return Err("fuse_serve DIR MOUNTPOINT [when|after-first|open-when]".into()),
    };
    let mut data = d.join("repo/held.txt").into_os_string().into_encoded_bytes();
    data.resize(4096, 0);
    fuse::mount(Path::new(at), data, delay, slow)
}

/// A steady stream of file creations: `count` files under d/out, `gap_ms` apart;
/// d/out/progress holds how many were made. With `hold_at`, it waits after that
/// many until d/go-on exists (a test's faults fall in the middle, however long
/// it takes to ready them).
fn stream(d: &Path, args: &[String]) -> Result<(), String> {
    let n = |i: usize| args.get(i).and_then(|s| s.parse::<u64>().ok()).ok_or("stream COUNT GAP_MS [HOLD_AT]");
    let (count, gap) = (n(0)?, n(1)?);
    let hold_at = args.get(2).map(|_| n(2)).transpose()?;
    let out = d.join("out");
    fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    for i in 0..count {
        if Some(i) == hold_at {
            for _ in 0..6000 {
                if d.join("go-on").exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        fs::write(out.join(format!("f{i}")), b"x").map_err(|e| e.to_string())?;
        fs::write(out.join("progress"), (i + 1).to_string()).map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(gap));
    }
    Ok(())
}

/// An agent doing in-scope and out-of-scope things under the task of
/// `task_verdicts_and_alerts` (write/delete/read scope under d/repo).
fn task_agent(d: &Path) -> Result<(), String> {
    let e = |x: std::io::Error| x.to_string();
    let repo = d.join("repo");
    fs::write(repo.join("in.txt"), b"ok").map_err(e)?; // in scope
    fs::write(d.join("outside.txt"), b"no").map_err(e)?; // outside scope.write
    fs::rename(repo.join("in.txt"), repo.join("moved.txt")).map_err(e)?; // needs approval
    fs::remove_file(repo.join("build/x.o")).map_err(e)?; // in scope.delete
    fs::remove_file(repo.join("keep.txt")).map_err(e)?; // outside scope.delete
    fs::read(repo.join(".env")).map_err(e)?; // in scope.read, but the dotenv rule fires
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(e)?.port();
    fs::write(d.join("closed-port"), port.to_string()).map_err(e)?;
    let _ = std::net::TcpStream::connect(("127.0.0.1", port)); // outside scope.connect
    Ok(())
}

/// A shell whose stdin and stdout are a socket: what a reverse shell looks like.
fn reverse_shell() -> Result<(), String> {
    let (a, b) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
    match unsafe { fork() }.map_err(|e| e.to_string())? {
        ForkResult::Child => unsafe {
            libc::dup2(b.as_raw_fd(), 0);
            libc::dup2(b.as_raw_fd(), 1);
            let sh = CString::new("/bin/sh").unwrap();
            let arg = [sh.as_ptr(), c"-c".as_ptr(), c"exit 0".as_ptr(), std::ptr::null()];
            libc::execv(sh.as_ptr(), arg.as_ptr());
            libc::_exit(97);
        },
        ForkResult::Parent { child } => {
            drop(a);
            nix::sys::wait::waitpid(child, None).map_err(|e| e.to_string())?;
            Ok(())
        }
    }
}

/// Runs two nested `agentmon exec --task` (args: dir, agentmon, good, bad):
/// a sub-task within the parent's scope, and one that is not.
fn delegate(d: &Path, args: &[String]) -> Result<(), String> {
    let (agentmon, good, bad) = match args {
        [_, a, g, b] => (a, g, b),
        _ => return Err("delegate needs: dir agentmon good.yaml bad.yaml".into()),
    };
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let nested = |manifest: &str| {
        std::process::Command::new(agentmon)
            .args(["exec", "--quiet", "--task", manifest, "--"])
            .arg(&me)
            .arg(d)
            .env("AGENTMON_SCENARIO", "sub_agent")
            .output()
    };
    let ok = nested(good).map_err(|e| e.to_string())?;
    fs::write(d.join("repo/good-rc"), format!("{:?}", ok.status.code())).map_err(|e| e.to_string())?;
    let refused = nested(bad).map_err(|e| e.to_string())?;
    fs::write(d.join("repo/bad-rc"), format!("{:?}", refused.status.code())).map_err(|e| e.to_string())?;
    fs::write(d.join("repo/bad-stderr"), &refused.stderr).map_err(|e| e.to_string())?;
    Ok(())
}

/// The sub-task's agent: one write inside its scope, one outside.
fn sub_agent(d: &Path) -> Result<(), String> {
    fs::write(d.join("repo/sub/inside.txt"), b"").map_err(|e| e.to_string())?;
    // Outside the sub-task's scope: refused when it is enforced.
    let _ = fs::write(d.join("repo/notsub.txt"), b"");
    Ok(())
}

/// Runs one nested `agentmon exec --task` (args: dir, agentmon, child.yaml[, its
/// scenario, `sub_waits` if none]); writes its exit status to repo/sub-rc.
fn delegate_one(d: &Path, args: &[String]) -> Result<(), String> {
    let (agentmon, child, scenario) = match args {
        [_, a, c] => (a, c, "sub_waits"),
        [_, a, c, s] => (a, c, s.as_str()),
        _ => return Err("delegate_one needs: dir agentmon child.yaml [scenario]".into()),
    };
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let st = std::process::Command::new(agentmon)
        .args(["exec", "--quiet", "--task", child, "--"])
        .arg(&me)
        .arg(d)
        .env("AGENTMON_SCENARIO", scenario)
        .status()
        .map_err(|e| e.to_string())?;
    fs::write(d.join("repo/sub-rc"), format!("{:?}", st.code())).map_err(|e| e.to_string())
}

/// A sub-task's agent that delegates a sub-task of its own (d/grand.yaml) whose
/// agent is [`hold_pid`].
fn nested_hold(d: &Path) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    std::process::Command::new(crate::support::agentmon())
        .args(["exec", "--quiet", "--task"])
        .arg(d.join("grand.yaml"))
        .arg("--")
        .arg(&me)
        .arg(d)
        .env("AGENTMON_SCENARIO", "hold_pid")
        .status()
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Writes its pid to repo/sub/held.pid, then waits (two minutes at most).
fn hold_pid(d: &Path) -> Result<(), String> {
    fs::write(d.join("repo/sub/held.pid"), std::process::id().to_string()).map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(120));
    Err("not killed".into())
}

/// A sub-task's agent across restarts of its daemon: writes repo/sub/ready; then
/// twice, on `go1` and `go2`, writes inside its scope (repo/sub/afterN.txt) and
/// outside it but inside its parent's (repo/notsub_afterN.txt), then repo/sub/doneN.
fn sub_waits(d: &Path) -> Result<(), String> {
    fs::write(d.join("repo/sub/ready"), b"").map_err(|e| e.to_string())?;
    for n in 1..=2 {
        wait_for(&d.join(format!("go{n}")))?;
        fs::write(d.join(format!("repo/sub/after{n}.txt")), b"").map_err(|e| e.to_string())?;
        let _ = fs::write(d.join(format!("repo/notsub_after{n}.txt")), b"");
        fs::write(d.join(format!("repo/sub/done{n}")), b"").map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Waits for `go1`, writes x1; waits for `go2`, writes x2 (rule hot reload).
fn two_steps(d: &Path) -> Result<(), String> {
    wait_for(&d.join("go1"))?;
    fs::write(d.join("x1"), b"").map_err(|e| e.to_string())?;
    wait_for(&d.join("go2"))?;
    fs::write(d.join("x2"), b"").map_err(|e| e.to_string())?;
    Ok(())
}

/// Sends `{"op": OP, "task": TASK}` (`arg` is `OP:TASK`) to the watching agentmon.
fn ctl_request(arg: &str) -> Result<(), std::io::Error> {
    use std::io::{BufRead, BufReader};
    let (op, task) = arg.split_once(':').unwrap_or((arg, ""));
    let path = std::env::var("AGENTMON_CTL").map_err(std::io::Error::other)?;
    let mut s = UnixStream::connect(path)?;
    writeln!(s, "{}", serde_json::json!({"op": op, "task": task}))?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    let reply: serde_json::Value = serde_json::from_str(&line).map_err(std::io::Error::other)?;
    if reply["ok"] == true { Ok(()) } else { Err(std::io::Error::from_raw_os_error(libc::EPERM)) }
}

/// `call` in a child: its errno (0: it worked), 1000 + signal if it was killed.
/// An `attempts` result that is no errno: what was changed was not put back.
pub const NOT_BACK: i32 = 1000;

/// Where a PREEMPT_DYNAMIC kernel says and takes its preemption model.
const PREEMPT_MODEL: &str = "/sys/kernel/debug/sched/preempt";

/// The running model in `model`'s line (the word in parentheses).
fn running_model(model: &Path) -> std::io::Result<String> {
    fs::read_to_string(model).map(|l| {
        l.split_whitespace()
            .find_map(|w| Some(w.strip_prefix('(')?.strip_suffix(')')?.to_string()))
            .unwrap_or_default()
    })
}

/// The `switch_preemption` action through the file `model`.
fn switch_preemption(model: &Path) -> i32 {
    let was = match running_model(model) {
        Ok(was) => was,
        Err(e) => return e.raw_os_error().unwrap_or(-1),
    };
    if let Err(e) = fs::write(model, if was == "full" { "voluntary" } else { "full" }) {
        return e.raw_os_error().unwrap_or(-1);
    }
    (0..200)
        .find(|_| {
            std::thread::sleep(Duration::from_millis(100));
            running_model(model).is_ok_and(|m| m == was)
        })
        .map_or_else(
            || {
                let r = fs::write(model, &was).map_or(-1, |_| NOT_BACK);
                // Long enough for agentmon's tick to see it back: a switch right after
                // is then a new one, said again.
                std::thread::sleep(Duration::from_secs(3));
                r
            },
            |_| 0,
        )
}

/// `switch_preemption_hidden`: `line` is what the kernel's file said before.
fn hidden_switch(dir: &Path, line: &str) -> Result<i32, i32> {
    use nix::mount::{MsFlags, mount, umount};
    let no = |e: nix::Error| e as i32;
    fs::create_dir_all(dir).map_err(|e| e.raw_os_error().unwrap_or(-1))?;
    mount(Some("debugfs"), dir, Some("debugfs"), MsFlags::empty(), None::<&str>).map_err(no)?;
    let debug = Path::new("/sys/kernel/debug");
    let r = mount(Some("tmpfs"), debug, Some("tmpfs"), MsFlags::empty(), None::<&str>).map_err(no).and_then(
        |()| {
            let fake = fs::create_dir_all(debug.join("sched")).and_then(|()| fs::write(PREEMPT_MODEL, line));
            let r = fake
                .map_err(|e| e.raw_os_error().unwrap_or(-1))
                .map(|()| switch_preemption(&dir.join("sched/preempt")));
            let _ = umount(debug);
            r
        },
    );
    let _ = umount(dir);
    r
}

fn in_child(call: impl FnOnce() -> libc::c_long) -> i32 {
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let r = call();
            let e = if r < 0 { std::io::Error::last_os_error().raw_os_error().unwrap_or(255) } else { 0 };
            unsafe { libc::_exit(e) }
        }
        Ok(ForkResult::Parent { child }) => child_status(child),
        Err(_) => -1,
    }
}

/// creat(2) of `path` through the 32-bit syscall entry (`int 0x80`, i386 numbering)
/// from this 64-bit process, in a child. Syscall tracepoints do not report compat
/// syscalls, so this is how an agent would slip past them. 0 if the file was
/// created, the child's exit code otherwise, 1000 + signal if it was killed.
fn compat_creat(path: &Path, page: Page) -> i32 {
    let name = CString::new(path.as_os_str().as_bytes()).unwrap();
    match unsafe { fork() } {
        Ok(ForkResult::Child) => unsafe {
            // The i386 ABI passes 32-bit pointers: the name must live below 4 GiB.
            let bytes = name.as_bytes_with_nul();
            // A page below 4 GiB: anonymous and writable, or the file `fd`'s.
            let low = |fd: i32| {
                let (prot, anon) = if fd < 0 { (libc::PROT_WRITE, libc::MAP_ANONYMOUS) } else { (0, 0) };
                let flags = libc::MAP_PRIVATE | libc::MAP_32BIT | anon;
                libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ | prot, flags, fd, 0)
            };
            let page = match page {
                Page::Own => {
                    let p = low(-1);
                    if p != libc::MAP_FAILED {
                        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p.cast::<u8>(), bytes.len().min(4096));
                    }
                    p
                }
                Page::Userfault(after) => {
                    let p = low(-1);
                    if p == libc::MAP_FAILED || userfault_serve(p as u64, bytes.to_vec(), after).is_err() {
                        libc::_exit(4);
                    }
                    p
                }
                Page::Fuse(at, after) => {
                    let mut data = bytes.to_vec();
                    data.resize(4096, 0);
                    if let Err(e) = fuse::mount(&at, data, after, fuse::Slow::After(after)) {
                        eprintln!("{e}");
                        libc::_exit(5);
                    }
                    let Ok(f) = fs::File::open(at.join("f")) else { libc::_exit(6) };
                    let p = low(std::os::fd::AsRawFd::as_raw_fd(&f));
                    std::mem::forget(f);
                    p
                }
            };
            if page == libc::MAP_FAILED {
                libc::_exit(2);
            }
            let mut ret: u32 = 8; // __NR_creat (i386)
            // rbx cannot be an asm operand: swap the pointer in and out around the call.
            std::arch::asm!(
                "xchg {p}, rbx",
                "int 0x80",
                "xchg {p}, rbx",
                p = inout(reg) page as u64 => _,
                inout("eax") ret,
                in("ecx") 0o644u32,
                out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            );
            libc::_exit(if (ret as i32) >= 0 { 0 } else { 3 })
        },
        Ok(ForkResult::Parent { child }) => child_status(child),
        Err(_) => -1,
    }
}

/// How child `child` ended: its exit code, or 1000 + the signal that killed it.
fn child_status(child: nix::unistd::Pid) -> i32 {
    match nix::sys::wait::waitpid(child, None) {
        Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => code,
        Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => 1000 + sig as i32,
        _ => -1,
    }
}

/// dup(0) through the 32-bit entry (`int 0x80`), in a child, after a 64-bit
/// socket(): i386's 41 is dup, x86_64's is socket, hooked. 0 if it succeeded, the
/// child's exit code otherwise, 1000 + signal if it was killed.
fn compat_dup() -> i32 {
    match unsafe { fork() } {
        Ok(ForkResult::Child) => unsafe {
            let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            if s >= 0 {
                libc::close(s);
            }
            let mut ret: u32 = 41; // __NR_dup (i386)
            std::arch::asm!(
                "xchg {p}, rbx",
                "int 0x80",
                "xchg {p}, rbx",
                p = inout(reg) 0u64 => _,
                inout("eax") ret,
                out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            );
            libc::_exit(if (ret as i32) >= 0 { 0 } else { 3 })
        },
        Ok(ForkResult::Parent { child }) => child_status(child),
        Err(_) => -1,
    }
}

/// Runs `path` by its descriptor (execveat, AT_EMPTY_PATH) in a child: 0 if it
/// ran and succeeded, else the exec's errno (or 2000 + the program's exit code).
/// execveat of NAME under the directory `path`, or with no NAME of the program
/// `path` itself (AT_EMPTY_PATH); `keep`: its descriptor is not closed on exec (a
/// script's interpreter reads it).
fn execveat_by(path: &Path, name: Option<&std::ffi::CStr>, keep: bool) -> i32 {
    let p = c(path);
    let cloexec = if keep { 0 } else { libc::O_CLOEXEC };
    // SAFETY: the child only opens, calls execveat and _exit.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => unsafe {
            let (flags, at) = match name {
                Some(_) => (libc::O_PATH | libc::O_DIRECTORY | cloexec, 0),
                None => (libc::O_RDONLY | cloexec, libc::AT_EMPTY_PATH),
            };
            let fd = libc::open(p.as_ptr(), flags);
            let name = name.unwrap_or(c"");
            let argv = [name.as_ptr(), std::ptr::null()];
            let envp: [*const libc::c_char; 1] = [std::ptr::null()];
            libc::syscall(libc::SYS_execveat, fd, name.as_ptr(), argv.as_ptr(), envp.as_ptr(), at);
            libc::_exit(std::io::Error::last_os_error().raw_os_error().unwrap_or(250))
        },
        Ok(ForkResult::Parent { child }) => match nix::sys::wait::waitpid(child, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => 0,
            Ok(nix::sys::wait::WaitStatus::Exited(_, code)) if code < 200 => code,
            Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => 2000 + code,
            _ => -1,
        },
        Err(_) => -1,
    }
}

fn execveat_fd(path: &Path) -> i32 {
    execveat_by(path, None, true)
}

/// Writes "x" to `path` through a file handle: the errno of the first step that
/// fails (0: written).
fn handle_write(path: &Path) -> i32 {
    let last = || std::io::Error::last_os_error().raw_os_error().unwrap_or(-1);
    // struct file_handle { u32 handle_bytes; int handle_type; u8 f_handle[]; }
    let mut h = [0u8; 8 + 128];
    h[..4].copy_from_slice(&128u32.to_ne_bytes());
    let mut mount_id = 0i32;
    let p = c(path);
    // SAFETY: a buffer of the size it says, valid paths and descriptors.
    unsafe {
        if libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            p.as_ptr(),
            h.as_mut_ptr(),
            &mut mount_id,
            0,
        ) != 0
        {
            return last();
        }
        let dir = c(path.parent().unwrap_or(Path::new("/")));
        let mfd = libc::open(dir.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
        if mfd < 0 {
            return last();
        }
        let fd = libc::syscall(libc::SYS_open_by_handle_at, mfd, h.as_ptr(), libc::O_WRONLY) as i32;
        libc::close(mfd);
        if fd < 0 {
            return last();
        }
        let r = libc::write(fd, b"x".as_ptr().cast(), 1);
        libc::close(fd);
        if r == 1 { 0 } else { last() }
    }
}

/// unlink() of the name at the start of `file`'s first page (mapped): its errno.
fn unlink_mapped(file: &Path) -> i32 {
    let Ok(f) = fs::File::open(file) else { return -2 };
    // SAFETY: a private read-only mapping of an open file, unmapped after the call.
    unsafe {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        let p = libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ, libc::MAP_PRIVATE, fd, 0);
        if p == libc::MAP_FAILED {
            return -3;
        }
        let r = libc::unlink(p.cast());
        let e = if r == 0 { 0 } else { std::io::Error::last_os_error().raw_os_error().unwrap_or(-1) };
        libc::munmap(p, 4096);
        e
    }
}

/// Where the i386 creat's path lives.
enum Page {
    /// A page of our own.
    Own,
    /// A page we serve (userfaultfd) this long after the call.
    Userfault(std::time::Duration),
    /// A file's page on a FUSE mount (there) we serve, each read this late.
    Fuse(std::path::PathBuf, std::time::Duration),
}

/// Makes the page at `page` one this process serves itself (userfaultfd): it is
/// empty until, `after` from now, a thread of ours fills it with `bytes`. Whoever
/// reads it meanwhile (agentmon, through /proc/PID/mem) waits.
fn userfault_serve(page: u64, bytes: Vec<u8>, after: std::time::Duration) -> Result<(), ()> {
    // include/uapi/linux/userfaultfd.h
    #[repr(C)]
    struct Api {
        api: u64,
        features: u64,
        ioctls: u64,
    }
    #[repr(C)]
    struct Register {
        start: u64,
        len: u64,
        mode: u64,
        ioctls: u64,
    }
    #[repr(C)]
    struct Copy {
        dst: u64,
        src: u64,
        len: u64,
        mode: u64,
        copy: i64,
    }
    const UFFDIO_API: u64 = 0xc018_aa3f;
    const UFFDIO_REGISTER: u64 = 0xc020_aa00;
    const UFFDIO_COPY: u64 = 0xc028_aa03;
    // SAFETY: plain syscalls on structs of the kernel's layout.
    unsafe {
        let fd = libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) as i32;
        let mut api = Api { api: 0xaa, features: 0, ioctls: 0 };
        let mut reg = Register { start: page, len: 4096, mode: 1 /* MISSING */, ioctls: 0 };
        if fd < 0
            || libc::ioctl(fd, UFFDIO_API, &raw mut api) < 0
            || libc::ioctl(fd, UFFDIO_REGISTER, &raw mut reg) < 0
        {
            return Err(());
        }
        std::thread::spawn(move || {
            std::thread::sleep(after);
            let mut src = vec![0u8; 4096];
            src[..bytes.len()].copy_from_slice(&bytes);
            let mut c = Copy { dst: page, src: src.as_ptr() as u64, len: 4096, mode: 0, copy: 0 };
            libc::ioctl(fd, UFFDIO_COPY, &raw mut c);
        });
    }
    Ok(())
}

/// See the `escaped_write_out` action: the errno the last child's write got; with
/// `signal`, the errno of the parent's SIGTERM to that child instead (it is the
/// task's own: the signal must reach it).
/// `n` sleeping children, each holding its TRACKED entry until [`Sleepers::end`].
struct Sleepers {
    pipe: [i32; 2],
    kids: Vec<nix::unistd::Pid>,
}

impl Sleepers {
    fn fork(n: usize) -> Result<Self, String> {
        let mut pipe = [0; 2];
        if unsafe { libc::pipe(pipe.as_mut_ptr()) } != 0 {
            return Err("pipe".into());
        }
        let mut kids = Vec::new();
        for _ in 0..n {
            match unsafe { fork() }.map_err(|e| e.to_string())? {
                ForkResult::Child => unsafe {
                    // Until the parent closes the pipe.
                    libc::close(pipe[1]);
                    let mut b = 0u8;
                    libc::read(pipe[0], (&raw mut b).cast(), 1);
                    libc::_exit(0)
                },
                ForkResult::Parent { child } => kids.push(child),
            }
        }
        Ok(Self { pipe, kids })
    }

    fn end(self) {
        unsafe {
            libc::close(self.pipe[1]);
            libc::close(self.pipe[0]);
        }
        for k in self.kids {
            let _ = nix::sys::wait::waitpid(k, None);
        }
    }
}

fn escaped_write_out(d: &Path, n: usize, signal: bool) -> Result<i32, String> {
    let sleepers = Sleepers::fork(n)?;
    let code = match unsafe { fork() }.map_err(|e| e.to_string())? {
        ForkResult::Child if signal => unsafe {
            // Waits to be signalled; gone in 5 s if the signal never comes.
            libc::alarm(5);
            libc::pause();
            libc::_exit(0)
        },
        ForkResult::Parent { child } if signal => {
            std::thread::sleep(Duration::from_millis(200));
            let r = unsafe { libc::kill(child.as_raw(), libc::SIGTERM) };
            let e = if r == 0 { 0 } else { std::io::Error::last_os_error().raw_os_error().unwrap_or(-1) };
            let _ = nix::sys::wait::waitpid(child, None);
            e
        }
        ForkResult::Child => {
            let c = match fs::write(d.join("outside.txt"), b"no") {
                Ok(()) => 0,
                Err(e) => e.raw_os_error().unwrap_or(255),
            };
            unsafe { libc::_exit(c) }
        }
        ForkResult::Parent { child } => match nix::sys::wait::waitpid(child, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => c,
            other => return Err(format!("escaped child: {other:?}")),
        },
    };
    sleepers.end();
    Ok(code)
}

/// A fork that escaped tracking (N sleeping children fill TRACKED first) and
/// outlives every tracked process of its task: it waits, in a session of its own,
/// for `d/late-cue` (up to 120 s, times the slowdown), then writes out of scope
/// and records the errno it got in `d/repo/late.txt`. The task's processes end
/// meanwhile. 0: the escaped child was made.
fn escaped_outlives(d: &Path, n: usize) -> Result<i32, String> {
    let sleepers = Sleepers::fork(n)?;
    if let ForkResult::Child = unsafe { fork() }.map_err(|e| e.to_string())? {
        unsafe {
            libc::close(sleepers.pipe[0]);
            libc::close(sleepers.pipe[1]);
            libc::setsid();
            // Whoever reads the task's output to its end is not held by this child.
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
        }
        let cue = d.join("late-cue");
        let mut waited = 0;
        while !cue.exists() && waited < 12_000 * crate::support::slowdown() {
            std::thread::sleep(Duration::from_millis(10));
            waited += 1;
        }
        let c = match fs::write(d.join("outside-late.txt"), b"no") {
            Ok(()) => 0,
            Err(e) => e.raw_os_error().unwrap_or(255),
        };
        let _ = fs::write(d.join("repo/late.txt"), c.to_string());
        unsafe { libc::_exit(0) }
    }
    sleepers.end();
    Ok(0)
}

/// Tries each named action and records the errno it got (0: it worked) in
/// `d/repo/results.txt`, one `name errno` per line. Extra args: `name` or
/// `name=PATH` for actions that take a path.
fn attempts(d: &Path, actions: &[String]) -> Result<(), String> {
    use std::io::ErrorKind;
    let errno =
        |r: Result<(), std::io::Error>| r.map(|_| 0).unwrap_or_else(|e| e.raw_os_error().unwrap_or(-1));
    let sys = |r: libc::c_long| {
        if r < 0 { std::io::Error::last_os_error().raw_os_error().unwrap_or(-1) } else { 0 }
    };
    let agentmon = nix::unistd::getppid().as_raw();
    let mut out = String::new();
    for a in actions {
        let (name, arg) = a.split_once('=').unwrap_or((a, ""));
        let code = match name {
            "write_in" => errno(fs::write(d.join("repo/ok.txt"), b"ok")),
            "write_out" => errno(fs::write(d.join("outside.txt"), b"no")),
            "delete_out" => errno(fs::remove_file(d.join("victim.txt"))),
            "delete" => errno(fs::remove_file(arg)),
            "chmod_in" => {
                errno(fs::set_permissions(d.join("repo/ok.txt"), fs::Permissions::from_mode(0o600)))
            }
            "chmod" => errno(fs::set_permissions(arg, fs::Permissions::from_mode(0o600))),
            "chmod_out" => {
                errno(fs::set_permissions(d.join("victim.txt"), fs::Permissions::from_mode(0o666)))
            }
            "xattr_in" => {
                let (p, n) = (c(&d.join("repo/ok.txt")), CString::new("user.agentmon").unwrap());
                sys(unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), b"x".as_ptr().cast(), 1, 0) }
                    as libc::c_long)
            }
            // A file's flags (FS_IOC_SETFLAGS, FS_IOC_FSSETXATTR; file_setattr) through a
            // read-only descriptor or a path: no write access is needed, and a root agent could make
            // agentmon's own files immutable or append-only.
            "file_flags" => match fs::File::open(d.join("repo/ok.txt")) {
                Ok(f) => {
                    let flags: libc::c_long = 0x40; // FS_NODUMP_FL
                    let set =
                        sys(unsafe { libc::syscall(libc::SYS_ioctl, f.as_raw_fd(), 0x4008_6602u64, &flags) });
                    let attr = [0u8; 28]; // struct fsxattr
                    let fs =
                        sys(unsafe { libc::syscall(libc::SYS_ioctl, f.as_raw_fd(), 0x401c_5820u64, &attr) });
                    // file_setattr(AT_FDCWD, path, struct file_attr (24 bytes), 24, 0):
                    // the same by path (6.17; ENOSYS before, unless refused first).
                    let p = c(&d.join("repo/ok.txt"));
                    let by_path =
                        sys(unsafe { libc::syscall(469, libc::AT_FDCWD, p.as_ptr(), attr.as_ptr(), 24, 0) });
                    if set == fs && fs == by_path {
                        set
                    } else {
                        10_000_000 + set * 10_000 + fs * 100 + by_path
                    }
                }
                Err(e) => e.raw_os_error().unwrap_or(-1),
            },
            // The file-system ioctls past every layer (fs-verity, fscrypt, btrfs
            // subvolumes) on a directory opened to read, and a lease on a file: the
            // errno if all were alike, else the first errno * 1000 + the odd one's.
            "fs_ioctls" => match (fs::File::open(d.join("repo")), fs::File::open(d.join("repo/ok.txt"))) {
                (Ok(dir), Ok(file)) => {
                    let buf = vec![0u8; 4096];
                    let cmds: [u64; 9] = [
                        0x4080_6685,
                        0x800c_6613,
                        0x5000_9401,
                        0x5000_940e,
                        0x5000_940f,
                        0x5000_9417,
                        0x5000_9418,
                        0x4008_941a,
                        0x5000_943f,
                    ];
                    let mut got: Vec<i32> = cmds
                        .iter()
                        .map(|&c| {
                            sys(unsafe { libc::syscall(libc::SYS_ioctl, dir.as_raw_fd(), c, buf.as_ptr()) })
                        })
                        .collect();
                    got.push(sys(unsafe {
                        libc::syscall(libc::SYS_fcntl, file.as_raw_fd(), 1024, libc::F_RDLCK)
                    }));
                    match got.iter().find(|&&e| e != got[0]) {
                        None => got[0],
                        Some(odd) => got[0] * 1000 + odd,
                    }
                }
                _ => -2,
            },
            // Another process's priority, I/O class, scheduling policy and limits
            // (agentmon's: the agent's parent), each set to what it already is: 0 if
            // allowed, else the errno. `_self`: the caller's own, which stays allowed.
            "renice_parent" | "renice_pgrp" | "renice_self" => {
                let (which, who) = match name {
                    "renice_parent" => (libc::PRIO_PROCESS, agentmon as libc::id_t),
                    "renice_pgrp" => (libc::PRIO_PGRP, 0),
                    _ => (libc::PRIO_PROCESS, 0),
                };
                let cur = unsafe { libc::getpriority(which, who) };
                sys(unsafe { libc::syscall(libc::SYS_setpriority, which, who, cur) })
            }
            "ioprio_parent" => {
                let ppid = agentmon as libc::c_long;
                let cur = unsafe { libc::syscall(libc::SYS_ioprio_get, 1, ppid) };
                sys(unsafe { libc::syscall(libc::SYS_ioprio_set, 1, ppid, cur.max(0)) })
            }
            "sched_parent" => {
                let ppid = agentmon;
                let mut prm = libc::sched_param { sched_priority: 0 };
                let policy = unsafe { libc::sched_getscheduler(ppid) };
                unsafe { libc::sched_getparam(ppid, &mut prm) };
                sys(unsafe { libc::syscall(libc::SYS_sched_setscheduler, ppid, policy, &prm) })
            }
            "prlimit_parent" | "prlimit_self" => {
                let pid = if name == "prlimit_self" { 0 } else { agentmon };
                let mut cur = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                let none = std::ptr::null::<libc::rlimit>();
                let read = sys(unsafe {
                    libc::syscall(libc::SYS_prlimit64, pid, libc::RLIMIT_CORE, none, &mut cur)
                });
                let set =
                    sys(unsafe { libc::syscall(libc::SYS_prlimit64, pid, libc::RLIMIT_CORE, &cur, none) });
                if read == 0 { set } else { 20_000 + read }
            }
            "read" => errno(fs::read(arg).map(drop)),
            // Opened to read and write (a read all the same).
            "read_write" => errno(fs::OpenOptions::new().read(true).write(true).open(arg).map(drop)),
            // The scope's own directory (delete: repo/** covers what is beneath it).
            "rmdir_scope" => errno(fs::remove_dir(d.join("repo"))),
            // A detached copy of a tree: its own root, above which nothing is seen.
            "open_tree" => {
                let p = c(d);
                sys(unsafe {
                    libc::syscall(428, libc::AT_FDCWD, p.as_ptr(), 1u32 /* OPEN_TREE_CLONE */)
                })
            }
            // A write to PATH through a file handle (name_to_handle_at, then
            // open_by_handle_at on its directory): no path is passed to the open.
            "handle_write" => handle_write(Path::new(arg)),
            // Calls no task needs, each refused to an enforced task.
            "perf_event_open" => {
                // struct perf_event_attr with only its size: the call is refused
                // before the kernel reads the rest.
                let attr = [0u64; 16];
                let mut a = attr;
                a[0] = (128u64) << 32; // type 0 (hardware), size 128
                sys(unsafe { libc::syscall(libc::SYS_perf_event_open, a.as_ptr(), 0, -1, -1, 0) })
            }
            "mount" => {
                let p = c(&d.join("repo"));
                sys(unsafe {
                    libc::mount(c"none".as_ptr(), p.as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null())
                } as libc::c_long)
            }
            "process_vm_writev" => {
                let mut b = [0u8; 1];
                let local = libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: 1 };
                let remote = libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: 1 };
                sys(unsafe { libc::process_vm_writev(agentmon, &local, 1, &remote, 1, 0) } as libc::c_long)
            }
            "setns" => {
                let f = fs::File::open("/proc/self/ns/net");
                match f {
                    Ok(f) => {
                        sys(unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), 0) } as libc::c_long)
                    }
                    Err(e) => e.raw_os_error().unwrap_or(-1),
                }
            }
            "userfaultfd" => sys(unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) }),
            "socketpair_dgram" => {
                let mut sv = [0; 2];
                sys(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM, 0, sv.as_mut_ptr()) }
                    as libc::c_long)
            }
            "unshare_ns" => {
                sys(unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) } as libc::c_long)
            }
            // A child in a new user namespace through clone3, whose flags a seccomp
            // filter cannot read (the new child, if there is one, leaves at once).
            "clone3_ns" => in_child(|| unsafe {
                let mut args = [0u64; 11];
                args[0] = libc::CLONE_NEWUSER as u64;
                args[4] = libc::SIGCHLD as u64; // exit_signal
                let r = libc::syscall(libc::SYS_clone3, args.as_mut_ptr(), 88usize);
                if r == 0 {
                    libc::_exit(0);
                }
                r
            }),
            // A seccomp filter with a listener of its own (allowing everything).
            "seccomp_listener" => {
                let allow = [libc::sock_filter {
                    code: (libc::BPF_RET | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ALLOW,
                }];
                let prog = libc::sock_fprog { len: 1, filter: allow.as_ptr() as *mut _ };
                sys(unsafe {
                    libc::syscall(
                        libc::SYS_seccomp,
                        libc::SECCOMP_SET_MODE_FILTER,
                        libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                        &raw const prog,
                    )
                })
            }
            // SIGIO aimed at agentmon by owning a file (no signal hook sees that route).
            "sigio_agentmon" => {
                let mut fds = [0; 2];
                unsafe { libc::pipe(fds.as_mut_ptr()) };
                sys(unsafe { libc::fcntl(fds[0], libc::F_SETOWN, agentmon) } as libc::c_long)
            }
            // N refused requests in a row (F_SETOWN at agentmon): EPERM if each was.
            "sigio_flood" => {
                let mut fds = [0; 2];
                unsafe { libc::pipe(fds.as_mut_ptr()) };
                let n: usize = arg.parse().unwrap_or(0);
                (0..n)
                    .map(|_| sys(unsafe { libc::fcntl(fds[0], libc::F_SETOWN, agentmon) } as libc::c_long))
                    .find(|e| *e != libc::EPERM)
                    .unwrap_or(libc::EPERM)
            }
            // N opens to write a file outside the write scope, in a row: EACCES if
            // each was refused (by the kernel: Landlock or the BPF LSM hook).
            "write_out_flood" | "write_out_flood_again" => {
                let p = c(&d.join("victim.txt"));
                let n: usize = arg.parse().unwrap_or(0);
                (0..n)
                    .map(|_| {
                        let fd = unsafe { libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
                        if fd >= 0 {
                            unsafe { libc::close(fd) };
                        }
                        sys(fd as libc::c_long)
                    })
                    .find(|e| *e != libc::EACCES)
                    .unwrap_or(libc::EACCES)
            }
            // An open to write the file ARG of the work directory (outside the scope).
            "write_out_at" => {
                let p = c(&d.join(arg));
                let fd = unsafe { libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
                if fd >= 0 {
                    unsafe { libc::close(fd) };
                }
                sys(fd as libc::c_long)
            }
            // A block device node inside the scope (a door to the raw disk).
            "mknod_blk" => {
                let p = c(&d.join("repo/disk"));
                sys(unsafe { libc::mknod(p.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(7, 0)) }
                    as libc::c_long)
            }
            "chown_out" => errno(std::os::unix::fs::chown(d.join("victim.txt"), Some(0), Some(0))),
            // A write out of scope by a process whose fork escaped tracking: N
            // sleeping children fill TRACKED first (a daemon with a small
            // max_tracked), then one more child tries.
            "escaped_write_out" => escaped_write_out(d, arg.parse().unwrap_or(32), false)?,
            "escaped_signal" => escaped_write_out(d, arg.parse().unwrap_or(32), true)?,
            "escaped_outlives" => escaped_outlives(d, arg.parse().unwrap_or(32))?,
            // Waits until the file PATH exists (a test's cue), then goes on.
            "wait" => {
                wait_for(Path::new(arg))?;
                0
            }
            // A file outside the write scope given a second name inside it: writes
            // through that name would change the outside file.
            "link_out_in" => errno(fs::hard_link(d.join("victim.txt"), d.join("repo/victim-link"))),
            "xattr_out" => {
                let (p, n) = (c(&d.join("victim.txt")), CString::new("user.agentmon").unwrap());
                sys(unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), b"x".as_ptr().cast(), 1, 0) }
                    as libc::c_long)
            }
            "exec_out" => errno(std::process::Command::new(d.join("tool.sh")).status().map(|_| ())),
            // The same program run from a descriptor (execveat with AT_EMPTY_PATH):
            // no path is passed to the exec.
            "execveat_out" => execveat_fd(&d.join("tool.sh")),
            // By descriptor too: a program's own (close-on-exec: gone by the time the
            // exec is reported), and a script named under a directory's descriptor.
            "execveat_elf" => execveat_by(Path::new("/usr/bin/true"), None, false),
            "execveat_dir" => execveat_by(d, Some(c"tool.sh"), true),
            // Runs the program PATH (no arguments, no input): 0 if it ran and
            // succeeded, 2000 + its exit code if it failed, else the errno.
            "run" => match std::process::Command::new(arg).stdin(std::process::Stdio::null()).status() {
                Ok(st) if st.success() => 0,
                Ok(st) => 2000 + st.code().unwrap_or(-1),
                Err(e) => e.raw_os_error().unwrap_or(-1),
            },
            // An executable outside scope.exec run by the ELF loader, which every
            // dynamic program's exec needs (`ld.so FILE` maps and runs FILE).
            "exec_ldso" => {
                let ldso = fs::canonicalize("/lib64/ld-linux-x86-64.so.2");
                match ldso {
                    Ok(l) => match std::process::Command::new(l).arg(arg).status() {
                        Ok(st) if st.success() => 0,
                        Ok(st) => 2000 + st.code().unwrap_or(-1),
                        Err(e) => e.raw_os_error().unwrap_or(-1),
                    },
                    Err(_) => -2,
                }
            }
            "tcp" => match std::net::TcpStream::connect("127.0.0.1:1") {
                Ok(_) => 0,
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => 0, // reached the network
                Err(e) => e.raw_os_error().unwrap_or(-1),
            },
            "udp" => errno(UdpSocket::bind("127.0.0.1:0").map(|_| ())),
            "tcp_to" => match std::net::TcpStream::connect(arg) {
                Ok(_) => 0,
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => 0,
                Err(e) => e.raw_os_error().unwrap_or(-1),
            },
            // N MiB over TCP to this process itself on ADDR (`N/ADDR`, port 0): the
            // sender's retransmissions (tcp_info), or 10000 + the MiB received if not
            // all, or the errno.
            "tcp_bulk" => {
                let (n, addr) = arg.split_once('/').unwrap_or(("1", arg));
                let bytes = n.parse::<usize>().unwrap_or(1) << 20;
                tcp_bulk(addr, bytes).unwrap_or_else(|e| e.raw_os_error().unwrap_or(-1))
            }
            "udp_to" => errno(UdpSocket::bind("0.0.0.0:0").and_then(|s| s.send_to(b"x", arg)).map(|_| ())),
            // fd_sendto=FD@ADDR: one datagram to ADDR on descriptor FD (one the agent
            // was given, not made): the errno of sendto. fd_write=FD: one byte written
            // to descriptor FD: the errno of write.
            "fd_sendto" => match arg.split_once('@') {
                Some((fd, to)) => {
                    let to = to.parse::<std::net::SocketAddrV4>().map(sockaddr_in).unwrap_or_default();
                    sys(unsafe {
                        libc::sendto(
                            fd.parse().unwrap_or(-1),
                            b"x".as_ptr().cast(),
                            1,
                            0,
                            to.as_ptr().cast(),
                            to.len() as u32,
                        )
                    } as libc::c_long)
                }
                None => -2,
            },
            // Sleeps MS milliseconds (times the test slowdown): 0.
            "sleep_ms" => {
                let ms: u64 = arg.parse().unwrap_or(0);
                std::thread::sleep(Duration::from_millis(ms) * crate::support::slowdown());
                0
            }
            "fd_write" => {
                sys(unsafe { libc::write(arg.parse().unwrap_or(-1), b"x".as_ptr().cast(), 1) }
                    as libc::c_long)
            }
            // An ICMP echo to ADDR on an unprivileged "ping" socket (SOCK_DGRAM,
            // IPPROTO_ICMP): the errno of socket() or sendto().
            "ping_to" => {
                let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP) };
                if fd < 0 {
                    sys(fd as libc::c_long)
                } else {
                    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                    // type 8 (echo request), code 0, checksum (the kernel fills it), id, seq.
                    let echo = [8u8, 0, 0, 0, 0, 0, 0, 1, b'x'];
                    let to = arg.parse::<std::net::SocketAddrV4>().map(sockaddr_in).unwrap_or_default();
                    sys(unsafe {
                        libc::sendto(
                            fd.as_raw_fd(),
                            echo.as_ptr().cast(),
                            echo.len(),
                            0,
                            to.as_ptr().cast(),
                            to.len() as u32,
                        )
                    } as libc::c_long)
                }
            }
            // A segment routing header on a UDP/IPv6 socket (setsockopt IPV6_RTHDR, no
            // privilege needed): its sends would go to the segment it names, not to
            // the address the cgroup guard checks. The errno of setsockopt.
            "ipv6_rthdr" => {
                // type 4 (SRH): next header, length 4 (two segments), type, segments
                // left 1, last entry 1, flags, tag; then segments [::, fd00::2].
                let mut srh = vec![0u8, 4, 4, 1, 1, 0, 0, 0];
                srh.extend([0u8; 16]);
                srh.extend("fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
                udp_setsockopt("[::]:0", libc::IPPROTO_IPV6, libc::IPV6_RTHDR, &srh)
            }
            // IPv4 options on a UDP socket (setsockopt IP_OPTIONS: a loose source route
            // with one hop, 127.0.0.2). The errno of setsockopt.
            "ip_options" => {
                udp_setsockopt("0.0.0.0:0", libc::IPPROTO_IP, libc::IP_OPTIONS, &[131, 7, 4, 127, 0, 0, 2, 1])
            }
            // One UDP datagram to ADDR whose sendmsg carries a source route as ancillary
            // data: IPv4, IP_RETOPTS with a loose source route via 127.0.0.2; IPv6,
            // IPV6_RTHDR type 2 via ::1 (where the kernel has CONFIG_IPV6_MIP6). The
            // errno of sendmsg.
            // recroute_to: IPv4 with a record-route option instead, which asks for no
            // capability (a source route needs CAP_NET_RAW): only the egress check
            // stops it.
            "retopts_to" | "rthdr2_to" | "recroute_to" => {
                let to: Result<std::net::SocketAddr, _> = arg.parse();
                match to {
                    Ok(to) => send_with_cmsg(to, name == "recroute_to"),
                    Err(_) => -2,
                }
            }
            // has_cap: 1 if capability N is in any of this process's sets (effective,
            // permitted, inheritable, bounding; /proc/self/status), else 0. holds_cap:
            // the same without the bounding set, which with no_new_privs grants nothing.
            "has_cap" | "holds_cap" => {
                let n: u32 = arg.parse().unwrap_or(0);
                let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
                let set = |k: &str| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix(k))
                        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                        .unwrap_or(u64::MAX)
                };
                let mut sets = set("CapEff:") | set("CapPrm:") | set("CapInh:");
                if name == "has_cap" {
                    sets |= set("CapBnd:");
                }
                i32::from(sets & (1 << n) != 0)
            }
            // A real-time priority (which could starve agentmon of CPU): 0 if taken
            // (and given back at once), else the errno.
            "rt_sched" => {
                let p = libc::sched_param { sched_priority: 1 };
                if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) } == 0 {
                    let p = libc::sched_param { sched_priority: 0 };
                    unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &p) };
                    0
                } else {
                    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
                }
            }
            // socket(FAMILY, SOCK_STREAM or, where the family has none, SOCK_SEQPACKET
            // or SOCK_DGRAM): the last errno, or 0 once one is made.
            "socket_family" => {
                let family = arg.parse().unwrap_or(-1);
                let mut code = -1;
                for ty in [libc::SOCK_STREAM, libc::SOCK_SEQPACKET, libc::SOCK_DGRAM] {
                    let fd = unsafe { libc::socket(family, ty, 0) };
                    code = sys(fd as libc::c_long);
                    if fd >= 0 {
                        unsafe { libc::close(fd) };
                        break;
                    }
                }
                code
            }
            // One sendmmsg to each of the comma-separated ADDRs in turn: how many it
            // sent, or the errno.
            "udp_mmsg" => {
                let to: Result<Vec<std::net::SocketAddrV4>, _> = arg.split(',').map(str::parse).collect();
                match (UdpSocket::bind("0.0.0.0:0"), to) {
                    (Ok(u), Ok(to)) => {
                        let addrs: Vec<_> = to.into_iter().map(sockaddr_in).collect();
                        let n = sendmmsg_raw(u.as_raw_fd(), &addrs);
                        if n < 0 { -std::io::Error::last_os_error().raw_os_error().unwrap_or(1) } else { n }
                    }
                    _ => -2,
                }
            }
            "unix" => errno(UnixStream::connect(arg).map(|_| ())),
            // write_bound: the same, named apart (a file bind-mounted by the test).
            "write_file" | "write_bound" => errno(fs::OpenOptions::new().append(true).open(arg).map(|_| ())),
            "create_in" => errno(fs::write(Path::new(arg).join("evil.yaml"), b"rules: []")),
            "ptrace_agentmon" => sys(unsafe { libc::ptrace(libc::PTRACE_ATTACH, agentmon, 0, 0) }),
            "getfd_agentmon" => {
                let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, agentmon, 0) };
                if pidfd < 0 {
                    sys(pidfd)
                } else {
                    sys(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, 1, 0) })
                }
            }
            "signal_pid" => {
                sys(unsafe { libc::kill(arg.parse().unwrap_or(0), libc::SIGWINCH) } as libc::c_long)
            }
            "signal_agentmon" => sys(unsafe { libc::kill(agentmon, libc::SIGWINCH) } as libc::c_long),
            // One of agentmon's other threads (a signal to a thread id, not its pid).
            "signal_agentmon_thread" => {
                let tid = fs::read_dir(format!("/proc/{agentmon}/task"))
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                    .find(|&t| t != agentmon);
                match tid {
                    Some(t) => sys(unsafe { libc::syscall(libc::SYS_tkill, t, libc::SIGWINCH) }),
                    None => -2,
                }
            }
            // The caller's process group, which agentmon (its parent) is in.
            "signal_group" => sys(unsafe { libc::kill(0, libc::SIGWINCH) } as libc::c_long),
            "bpf" => {
                let attr = [0u8; 128];
                sys(unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_ptr(), attr.len()) })
            }
            "io_uring" => errno(io_uring::IoUring::new(4).map(|_| ())),
            "compat_creat" => compat_creat(&d.join("repo/compat.txt"), Page::Own),
            "compat_dup" => compat_dup(),
            // The same, its path in a page the agent serves only 3 s later.
            "compat_creat_stalled" => {
                compat_creat(&d.join("repo/stalled.txt"), Page::Userfault(std::time::Duration::from_secs(3)))
            }
            // ... in a file's page on the agent's own FUSE mount at PATH, read 3 s late.
            // A delete whose path lies in a page of the file ARG (a file on a FUSE
            // mount served late: the held call's name cannot be read in time).
            "unlink_mapped" => unlink_mapped(Path::new(arg)),
            "compat_creat_fuse" => compat_creat(
                &d.join("repo/fuse.txt"),
                Page::Fuse(std::path::PathBuf::from(arg), std::time::Duration::from_secs(3)),
            ),
            // The terminal made the agent's own: its process group in the foreground,
            // TOSTOP set, so a write by anyone else there stops the writer.
            "take_tty" => unsafe {
                libc::signal(libc::SIGTTOU, libc::SIG_IGN);
                let mut t: libc::termios = std::mem::zeroed();
                let r = if libc::setpgid(0, 0) != 0
                    || libc::tcsetpgrp(0, libc::getpgrp()) != 0
                    || libc::tcgetattr(0, &mut t) != 0
                {
                    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
                } else {
                    t.c_lflag |= libc::TOSTOP;
                    errno(if libc::tcsetattr(0, libc::TCSANOW, &t) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    })
                };
                libc::signal(libc::SIGTTOU, libc::SIG_DFL);
                r
            },
            // Typing into the terminal agentmon and the operator share (TIOCSTI), with
            // the command word as is and with bits set above its 32 (the kernel takes
            // an unsigned int).
            // N refused TIOCSTI in a row: EPERM if each was.
            // N refused TIOCSTI requests, MS milliseconds apart (`N/MS`): a flood slow
            // enough to span agentmon's ticks.
            "tiocsti_flood" => {
                let c = b'x';
                let (n, pace) = arg.split_once('/').unwrap_or((arg, "0"));
                let pace = std::time::Duration::from_millis(pace.parse().unwrap_or(0));
                (0..n.parse::<usize>().unwrap_or(0))
                    .map(|_| {
                        std::thread::sleep(pace);
                        sys(unsafe { libc::syscall(libc::SYS_ioctl, 0, libc::TIOCSTI, &raw const c) })
                    })
                    .find(|e| *e != libc::EPERM)
                    .unwrap_or(libc::EPERM)
            }
            "tiocsti" => {
                let c = b'x';
                sys(unsafe { libc::syscall(libc::SYS_ioctl, 0, libc::TIOCSTI, &raw const c) })
            }
            "tiocsti_high" => {
                let c = b'x';
                sys(unsafe {
                    libc::syscall(libc::SYS_ioctl, 0, 0xdead_0000_0000u64 | libc::TIOCSTI, &raw const c)
                })
            }
            // An x32 call (the x32 bit on a native syscall number): unseen by syscall
            // tracepoints like i386 ones; in a child, as the filter kills for it.
            // ENOSYS where neither the filter nor the kernel's x32 ABI takes it.
            "x32_getpid" => in_child(|| unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) }),
            // Fileless exec: /bin/true copied into a memfd and run from it (fexecve).
            "memfd_exec" => in_child(|| {
                let name = CString::new("payload").unwrap();
                let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
                let bin = fs::read("/bin/true").unwrap_or_default();
                if fd < 0 || unsafe { libc::write(fd, bin.as_ptr().cast(), bin.len()) } < 0 {
                    return -1;
                }
                let argv = [name.as_ptr(), std::ptr::null()];
                let envp = [std::ptr::null::<libc::c_char>()];
                unsafe { libc::fexecve(fd, argv.as_ptr(), envp.as_ptr()) as libc::c_long }
            }),
            // The ids of the BPF programs agentmon holds (its descriptors' fdinfo:
            // programs, and links with the program they attach), written to the file
            // ARG of the work directory, one a line: 0 once written, -1 for none.
            "agentmon_programs" => {
                let ids: std::collections::BTreeSet<u32> = fs::read_dir(format!("/proc/{agentmon}/fdinfo"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|e| fs::read_to_string(e.path()).ok())
                    .flat_map(|info| {
                        info.lines()
                            .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse().ok())
                            .collect::<Vec<u32>>()
                    })
                    .collect();
                let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
                match !ids.is_empty() && fs::write(d.join(arg), text).is_ok() {
                    true => 0,
                    false => -1,
                }
            }
            "stop_agentmon" => {
                // Stops agentmon's event loop for 3 s (observe mode: nothing forbids it).
                let r = unsafe { libc::ptrace(libc::PTRACE_ATTACH, agentmon, 0, 0) };
                if r == 0 {
                    std::thread::sleep(Duration::from_secs(3));
                    unsafe { libc::ptrace(libc::PTRACE_DETACH, agentmon, 0, 0) };
                }
                sys(r)
            }
            // Changes the priority of every agentmon thread (nice + 5) and its file
            // size limit (observe mode: nothing forbids it), then waits up to 20 s
            // for agentmon to have put both back: 0 once it has, 1 if not, or the
            // errno of the change.
            "demote_agentmon" => {
                let tids: Vec<libc::id_t> = fs::read_dir(format!("/proc/{agentmon}/task"))
                    .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
                    .unwrap_or_default();
                let nice = |t: libc::id_t| unsafe { libc::getpriority(libc::PRIO_PROCESS, t) };
                let was: Vec<i32> = tids.iter().map(|&t| nice(t)).collect();
                let mut fsize = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                let none = std::ptr::null::<libc::rlimit>();
                unsafe { libc::syscall(libc::SYS_prlimit64, agentmon, libc::RLIMIT_FSIZE, none, &mut fsize) };
                let lower = libc::rlimit { rlim_cur: 1 << 30, rlim_max: fsize.rlim_max };
                let mut r = sys(unsafe {
                    libc::syscall(libc::SYS_prlimit64, agentmon, libc::RLIMIT_FSIZE, &lower, none)
                });
                for (&t, &n) in tids.iter().zip(&was) {
                    if r == 0 {
                        let other = if n <= 14 { n + 5 } else { n - 1 };
                        r = sys(unsafe { libc::setpriority(libc::PRIO_PROCESS, t, other) } as libc::c_long);
                        // A thread gone meanwhile (tokio lets idle ones go): not ours to change.
                        if r == libc::ESRCH {
                            r = 0;
                        }
                    }
                }
                if r == 0 {
                    r = 1;
                    for _ in 0..200 {
                        std::thread::sleep(Duration::from_millis(100));
                        let mut now = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                        unsafe {
                            libc::syscall(libc::SYS_prlimit64, agentmon, libc::RLIMIT_FSIZE, none, &mut now)
                        };
                        // A thread gone meanwhile reads -1 (ESRCH): not a change.
                        let kept =
                            tids.iter().zip(&was).all(|(&t, &n)| matches!(nice(t), v if v == n || v == -1));
                        if kept && now.rlim_cur == fsize.rlim_cur {
                            r = 0;
                            break;
                        }
                    }
                }
                r
            }
            // Switches the kernel's preemption model (root, observe mode: nothing
            // forbids it) to another, then waits up to 20 s for the model to be back:
            // 0 once it is, NOT_BACK if not (no errno: EPERM is 1; the model is then
            // put back here, for the tests after), or the errno of the read or the
            // switch (where the kernel does not let its model be read or switched).
            "switch_preemption" => switch_preemption(Path::new(PREEMPT_MODEL)),
            // The same, hidden: debugfs mounted again at ARG, a tmpfs over
            // /sys/kernel/debug whose sched/preempt says the model is unchanged, the
            // switch made through ARG (both mounts taken down after).
            "switch_preemption_hidden" => match fs::read_to_string(PREEMPT_MODEL) {
                Err(e) => e.raw_os_error().unwrap_or(-1),
                Ok(line) => hidden_switch(Path::new(arg), &line).unwrap_or_else(|e| e),
            },
            "leave_cgroup" => errno(fs::write(arg, std::process::id().to_string())),
            // A containment request on the control socket: EPERM when refused.
            "ctl" => errno(ctl_request(arg)),
            other => return Err(format!("unknown action {other}")),
        };
        // Reads name their file in the result: a test makes several.
        let key =
            if matches!(name, "read" | "read_write") { format!("{name}:{arg}") } else { name.to_string() };
        out.push_str(&format!("{key} {code}\n"));
    }
    fs::write(d.join("repo/results.txt"), out).map_err(|e| e.to_string())
}
