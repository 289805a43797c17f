//! Network: connect, sendto/sendmsg/sendmmsg with a destination (unconnected UDP,
//! e.g. DNS), bind and listen. Addresses are read from the caller's sockaddr at
//! sys_exit (IPv4, IPv6 including v4-mapped, unix paths incl. abstract); the socket
//! type comes from the fd's `struct socket`.

use core::ffi::c_void;

use aya_ebpf::helpers::generated as h;
use monitor_common::{Tracked, kind, op, pflags};

use crate::{
    MMSG,
    kern::{Args, Ev, fd_file, is_tracked, kptr, kread, off, on_exit, sys, tracked},
};

const AF_UNSPEC: u64 = 0;
const AF_UNIX: u64 = 1;
const AF_INET: u64 = 2;
const AF_INET6: u64 = 10;
const EBADF: i64 = 9;
const ENOTSOCK: i64 = 88;
const UNIX_PATH_MAX: u64 = 108;

/// `struct socket`'s type (SOCK_STREAM, SOCK_DGRAM, ...) of descriptor `fd`, or 0.
#[inline(always)]
fn sock_type(fd: u64, ret: i64) -> u64 {
    if ret == -EBADF || ret == -ENOTSOCK {
        return 0;
    }
    unsafe {
        let sock = kptr(fd_file(fd as i32 as i64), off!(file_private));
        if sock == 0 { 0 } else { kread::<u16>(sock + off!(socket_type)) as u64 }
    }
}

/// The address family of descriptor `fd`'s socket (`sk->__sk_common.skc_family`), or 0.
#[inline(always)]
fn sock_family(fd: u64) -> u64 {
    unsafe {
        let sk = kptr(kptr(fd_file(fd as i32 as i64), off!(file_private)), off!(socket_sk));
        if sk == 0 { 0 } else { kread::<u16>(sk + off!(sk_family)) as u64 }
    }
}

/// Puts the sockaddr at user address `sa` (length `len`) into the event:
/// args[0] = family | port << 16 | type << 32, args[1..3] = address bytes; a unix
/// path goes into the extra bytes. `send`: a send's destination, where an IPv4
/// socket takes AF_UNSPEC as AF_INET (udp_sendmsg), so it is read as one.
#[inline(always)]
fn put_sockaddr(ev: &mut Ev, sa: u64, len: u64, fd: u64, ty: u64, send: bool) {
    let mut raw = [0u64; 4];
    let n = if len > 28 { 28 } else { len };
    if sa == 0 || n < 2 {
        return;
    }
    if unsafe { h::bpf_probe_read_user((&raw mut raw).cast(), n as u32, sa as *const _) } != 0 {
        return;
    }
    let family = raw[0] & 0xffff;
    let family = if family == AF_UNSPEC && send && sock_family(fd) == AF_INET { AF_INET } else { family };
    let port = u16::from_be(((raw[0] >> 16) & 0xffff) as u16) as u64;
    match family {
        AF_INET => {
            ev.arg(1, raw[0] >> 32);
        }
        AF_INET6 => {
            ev.arg(1, raw[1]);
            ev.arg(2, raw[2]);
        }
        AF_UNIX => {
            let plen = len.saturating_sub(2);
            let plen = if plen > UNIX_PATH_MAX { UNIX_PATH_MAX } else { plen };
            if plen > 0 && (raw[0] >> 16) & 0xff == 0 {
                ev.flag(pflags::UNIX_ABSTRACT);
            }
            ev.put_extra_user(sa + 2, plen);
        }
        _ => {}
    }
    let port = if family == AF_UNIX { 0 } else { port };
    ev.arg(0, family | port << 16 | ty << 32);
    ev.arg(3, fd);
}

sys!(sys_exit_connect, fx_connect, sk_connect, op::CONNECT, kind::CONNECT, |a, ev| {
    let ty = sock_type(a.get(0), ev.ret());
    put_sockaddr(&mut ev, a.get(1), a.get(2), a.get(0), ty, false);
});

sys!(sys_exit_bind, fx_bind, sk_bind, op::BIND, kind::BIND, |a, ev| {
    let ty = sock_type(a.get(0), ev.ret());
    put_sockaddr(&mut ev, a.get(1), a.get(2), a.get(0), ty, false);
});

/// A send that names a destination (a send on a connected socket is covered by its
/// connect): sendto's `addr`, or msg_name of a `struct msghdr`.
#[inline(always)]
fn send_exit(ret: i64, o: u16) -> Option<()> {
    if !is_tracked() {
        return None;
    }
    let a = Args::current();
    let fd = a.get(0);
    let (sa, len) = if o == op::SENDTO {
        (a.get(4), a.get(5))
    } else {
        let mut hdr = [0u64; 2];
        let msg = a.get(1);
        if unsafe { h::bpf_probe_read_user((&raw mut hdr).cast(), 16, msg as *const _) } != 0 {
            return None;
        }
        (hdr[0], hdr[1] & 0xffff_ffff)
    };
    if sa == 0 || len == 0 {
        return None;
    }
    let t = tracked()?;
    let mut ev = Ev::new(kind::SEND, o, &t, ret)?;
    let ty = sock_type(fd, ret);
    put_sockaddr(&mut ev, sa, len, fd, ty, true);
    ev.emit();
    Some(())
}

on_exit!(
    /// syscalls:sys_exit_sendto(ret); arguments (fd, buff, len, flags, addr, addr_len).
    sys_exit_sendto,
    fx_sendto,
    sk_sendto,
    |ret| {
        let _ = send_exit(ret, op::SENDTO);
    }
);

on_exit!(
    /// syscalls:sys_exit_sendmsg(ret); arguments (fd, msg, flags).
    sys_exit_sendmsg,
    fx_sendmsg,
    sk_sendmsg,
    |ret| {
        let _ = send_exit(ret, op::SENDMSG);
    }
);

/// Messages of one sendmmsg read for their destinations: the kernel's own bound on
/// `vlen` (UIO_MAXIOV).
const MMSG_MAX: u64 = 1024;
/// Destinations recorded per sendmmsg; one more is a record that says the rest went
/// unread (judged as unknown, never as the first ones).
const MMSG_RECORDED: usize = 16;
/// sizeof(struct mmsghdr) on 64-bit: a msghdr (56 bytes), msg_len, padding.
const MMSGHDR_SIZE: u64 = 64;
/// Bytes of a destination compared, in words: a whole `sockaddr_un` (110 bytes), so
/// two unix paths that share a long prefix are two destinations.
const SA_WORDS: usize = 14;
/// SOCK_STREAM: sendmmsg stops on a stream socket's short send without trying the
/// next message.
const SOCK_STREAM: u64 = 1;

/// State of the walk over one sendmmsg's messages. It lives in a per-CPU map, not on
/// the stack: verifiers before 6.8 check a bpf_loop callback once, with the caller's
/// constants, and then drop as dead the branches that only later rounds take (the
/// cap on records, the truncation record): values loaded from a map are unknown.
#[repr(C)]
pub struct Mmsg {
    vec: u64,
    /// Messages walked.
    n: u64,
    fd: u64,
    ty: u64,
    ret: i64,
    /// The index of the message the call failed on (it returned how many were sent,
    /// fewer than asked), or u64::MAX.
    unsent: u64,
    recorded: u64,
    /// 1 when a destination went unrecorded: past MMSG_RECORDED, or not readable as
    /// it was sent.
    more: u64,
    t: Tracked,
    /// The destinations recorded (sockaddr bytes as compared, and their lengths):
    /// each is recorded once per call however the messages interleave.
    seen_len: [u64; MMSG_RECORDED],
    seen: [[u64; SA_WORDS]; MMSG_RECORDED],
}

/// Whether destination `raw` (length `len`) is one of the `m.recorded` recorded.
#[inline(always)]
fn mmsg_seen(m: &Mmsg, raw: &[u64; SA_WORDS], len: u64) -> bool {
    for j in 0..MMSG_RECORDED {
        if j as u64 >= m.recorded {
            return false;
        }
        if m.seen_len[j] != len {
            continue;
        }
        // Word by word: an array's `==` may become a memcmp call, which BPF has not.
        let mut same = true;
        for w in 0..SA_WORDS {
            if m.seen[j][w] != raw[w] {
                same = false;
                break;
            }
        }
        if same {
            return true;
        }
    }
    false
}

/// One message: recorded when its destination is not one already recorded for this
/// call (a burst to one DNS server is one record; so is A, B, A, B); the message the
/// call failed on always is, flagged UNSENT. Returns 1 to stop.
extern "C" fn mmsg_step(i: u64, _ctx: *mut c_void) -> i64 {
    let Some(m) = MMSG.get_ptr_mut(0) else { return 1 };
    let m = unsafe { &mut *m };
    let mut hdr = [0u64; 2];
    let at = m.vec + i * MMSGHDR_SIZE;
    if unsafe { h::bpf_probe_read_user((&raw mut hdr).cast(), 16, at as *const _) } != 0 {
        // Unreadable now (another thread unmapped it): the rest is unknown.
        m.more = 1;
        return 1;
    }
    let (sa, len) = (hdr[0], hdr[1] & 0xffff_ffff);
    if sa == 0 || len < 2 {
        // No destination: the socket's own (connected), covered by its connect.
        return 0;
    }
    if sa < m.vec + m.n * MMSGHDR_SIZE && sa + len > m.vec {
        // An address inside the vector itself, whose msg_len fields the kernel
        // overwrote after sending: what is read now is not what was sent to.
        m.more = 1;
        return 1;
    }
    let mut raw = [0u64; SA_WORDS];
    let n = if len > (SA_WORDS * 8) as u64 { (SA_WORDS * 8) as u64 } else { len };
    if unsafe { h::bpf_probe_read_user((&raw mut raw).cast(), n as u32, sa as *const _) } != 0 {
        m.more = 1;
        return 1;
    }
    // Compared by what names the destination: family, port and address (IPv4's
    // padding, IPv6's flow label would make one destination look like many).
    let family = raw[0] & 0xffff;
    let unsent = i == m.unsent;
    if family == AF_INET || family == AF_UNSPEC {
        // Family, port and address are the first 8 bytes; AF_UNSPEC is sent as
        // AF_INET (put_sockaddr reads it so).
        let w0 = raw[0];
        raw = [0; SA_WORDS];
        raw[0] = (w0 & !0xffff) | AF_INET;
    } else if family == AF_INET6 {
        // Family and port; then the flow label, then the address; then the scope id,
        // and bytes past the 28 of a sockaddr_in6, which the kernel ignores.
        raw[0] &= 0xffff_ffff;
        raw[3] &= 0xffff_ffff;
        let mut w = 4;
        while w < SA_WORDS {
            raw[w] = 0;
            w += 1;
        }
    }
    let len = if family == AF_UNIX { len } else { 0 };
    if !unsent && mmsg_seen(m, &raw, len) {
        return 0;
    }
    let slot = m.recorded as usize;
    if !unsent {
        if slot >= MMSG_RECORDED {
            m.more = 1;
            return 1;
        }
        for w in 0..SA_WORDS {
            m.seen[slot][w] = raw[w];
        }
        m.seen_len[slot] = len;
        m.recorded += 1;
    }
    if let Some(mut ev) = Ev::new(kind::SEND, op::SENDMMSG, &m.t, m.ret) {
        put_sockaddr(&mut ev, sa, hdr[1] & 0xffff_ffff, m.fd, m.ty, true);
        ev.arg(4, i);
        if unsent {
            ev.flag(pflags::UNSENT);
        }
        ev.emit();
    }
    0
}

on_exit!(
    /// syscalls:sys_exit_sendmmsg(ret); arguments (fd, mmsg, vlen, flags): each message
    /// sent (the first only, when the call failed) whose destination is not one recorded
    /// already for the call, `args[4]` its index; when it sent fewer than `vlen`, the
    /// message it failed on, flagged UNSENT (an enforced task's refused destination);
    /// past MMSG_RECORDED destinations, or for one that cannot be read as it was sent,
    /// one record flagged TRUNCATED with no destination. The first alone would let one
    /// allowed destination first hide any other after it.
    sys_exit_sendmmsg,
    fx_sendmmsg,
    sk_sendmmsg,
    |ret| {
        let _ = sendmmsg_exit(ret);
    }
);

#[inline(always)]
fn sendmmsg_exit(ret: i64) -> Option<()> {
    let t = tracked()?;
    let mp = MMSG.get_ptr_mut(0)?;
    let a = Args::current();
    let fd = a.get(0);
    let vlen = a.get(2) & 0xffff_ffff;
    let ty = sock_type(fd, ret);
    let (n, unsent) = if ret < 0 {
        (1, u64::MAX)
    } else if ret as u64 >= MMSG_MAX {
        (MMSG_MAX, u64::MAX)
    } else if (ret as u64) < vlen && ty != SOCK_STREAM {
        (ret as u64 + 1, ret as u64)
    } else {
        (ret as u64, u64::MAX)
    };
    // Field by field: the whole state is too large for the stack.
    let m = unsafe { &mut *mp };
    m.vec = a.get(1);
    m.n = n;
    m.fd = fd;
    m.ty = ty;
    m.ret = ret;
    m.unsent = unsent;
    m.recorded = 0;
    m.more = 0;
    m.t = t;
    unsafe { h::bpf_loop(n as u32, mmsg_step as *mut c_void, core::ptr::null_mut(), 0) };
    let mp = MMSG.get_ptr_mut(0)?;
    let m = unsafe { &*mp };
    if unsafe { core::ptr::read_volatile(&raw const m.more) } != 0
        && let Some(mut ev) = Ev::new(kind::SEND, op::SENDMMSG, &t, ret)
    {
        ev.flag(pflags::TRUNCATED);
        ev.arg(3, fd);
        ev.emit();
    }
    Some(())
}

// listen(fd, backlog): the address is the socket's own (sk->__sk_common).
sys!(sys_exit_listen, fx_listen, sk_listen, op::LISTEN, kind::LISTEN, |a, ev| {
    unsafe {
        let sock = kptr(fd_file(a.get(0) as i32 as i64), off!(file_private));
        let sk = kptr(sock, off!(socket_sk));
        if sk != 0 {
            let family = kread::<u16>(sk + off!(sk_family)) as u64;
            let port = kread::<u16>(sk + off!(sk_num)) as u64;
            let ty = kread::<u16>(sock + off!(socket_type)) as u64;
            if family == AF_INET6 {
                ev.arg(1, kread::<u64>(sk + off!(sk_v6_rcv_saddr)));
                ev.arg(2, kread::<u64>(sk + off!(sk_v6_rcv_saddr) + 8));
            } else {
                ev.arg(1, kread::<u32>(sk + off!(sk_rcv_saddr)) as u64);
            }
            ev.arg(0, family | port << 16 | ty << 32);
        }
        ev.arg(3, a.get(0));
        ev.arg(4, a.get(1));
    }
});
