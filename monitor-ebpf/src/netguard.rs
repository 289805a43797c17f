//! Enforcement layer: each enforced task's own cgroup gets these programs for
//! connect and unconnected sends (IPv4 and IPv6). A destination outside the task's
//! allowlist (`NET_ALLOW`, longest-prefix match on task + address, then port) is
//! refused in the kernel: the call fails with EPERM, which the sys_exit handlers
//! report like any other result.

use aya_ebpf::{
    EbpfContext,
    helpers::generated as h,
    macros::{cgroup_skb, cgroup_sock_addr},
    maps::lpm_trie::Key,
    programs::{SkBuffContext, SockAddrContext},
};
use monitor_common::NetKeyData;

use crate::{NET_ALLOW, NET_DROPS, NET_TASK};

const ALLOW: i32 = 1;
/// bpf_map_update_elem: create only.
const BPF_NOEXIST: u64 = 1;
const DENY: i32 = 0;

/// Is `addr` (16 bytes; IPv4 v4-mapped), `port` allowed for the current cgroup's task?
#[inline(always)]
fn allowed(addr: [u8; 16], port: u16) -> i32 {
    let cg = unsafe { h::bpf_get_current_cgroup_id() };
    let Some(task) = (unsafe { NET_TASK.get(&cg) }) else {
        // Not a cgroup agentmon made: not ours to judge.
        return ALLOW;
    };
    let mut data: NetKeyData = [0; 20];
    data[..4].copy_from_slice(&task.to_be_bytes());
    data[4..].copy_from_slice(&addr);
    let Some(ports) = NET_ALLOW.get(&Key::new(160, data)) else { return DENY };
    let n = if ports.n > 8 { 8 } else { ports.n as usize };
    let mut i = 0;
    while i < n && i < 8 {
        let [lo, hi] = ports.ranges[i];
        if lo <= port && port <= hi {
            return ALLOW;
        }
        i += 1;
    }
    DENY
}

#[inline(always)]
fn v4(ctx: &SockAddrContext) -> i32 {
    // bpf_sock_addr: user_ip4 and user_port in network byte order.
    let (ip, port) = unsafe { ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port) };
    let mut a = [0u8; 16];
    a[10] = 0xff;
    a[11] = 0xff;
    a[12..].copy_from_slice(&ip.to_ne_bytes());
    allowed(a, u16::from_be(port as u16))
}

#[inline(always)]
fn v6(ctx: &SockAddrContext) -> i32 {
    let (w, port) = unsafe { ((*ctx.sock_addr).user_ip6, (*ctx.sock_addr).user_port) };
    let mut a = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        a[i * 4..i * 4 + 4].copy_from_slice(&w[i].to_ne_bytes());
        i += 1;
    }
    allowed(a, u16::from_be(port as u16))
}

/// cgroup/connect4: reads user_ip4, user_port.
#[cgroup_sock_addr(connect4)]
pub fn guard_connect4(ctx: SockAddrContext) -> i32 {
    v4(&ctx)
}

/// cgroup/connect6: reads user_ip6, user_port.
#[cgroup_sock_addr(connect6)]
pub fn guard_connect6(ctx: SockAddrContext) -> i32 {
    v6(&ctx)
}

/// cgroup/sendmsg4 (unconnected UDP): reads user_ip4, user_port.
#[cgroup_sock_addr(sendmsg4)]
pub fn guard_sendmsg4(ctx: SockAddrContext) -> i32 {
    v4(&ctx)
}

/// cgroup/sendmsg6: reads user_ip6, user_port.
#[cgroup_sock_addr(sendmsg6)]
pub fn guard_sendmsg6(ctx: SockAddrContext) -> i32 {
    v6(&ctx)
}

/// cgroup_skb/egress: every packet a socket of the task's cgroup sends, read from its
/// IP header (monitor_common::packet says which are dropped and why: IPv4 options, an
/// IPv6 routing header or an option header before one). Either way the packet's
/// destination is not the address connect4/6 or sendmsg4/6 checked. The socket
/// options are refused by the seccomp filter; given per message as ancillary data
/// (IP_RETOPTS, IPV6_RTHDR) only this sees them.
/// A dropped packet is counted under its socket's cgroup (NET_DROPS), for
/// userspace to record: the sender sees only EPERM, and a TCP retransmit not even that.
#[cgroup_skb(egress)]
pub fn guard_egress(ctx: SkBuffContext) -> i32 {
    if monitor_common::packet::egress_allowed(|i| ctx.load::<u8>(i).ok()) {
        return ALLOW;
    }
    let cg = unsafe { h::bpf_skb_cgroup_id(ctx.as_ptr().cast()) };
    if NET_DROPS.get_ptr_mut(&cg).is_none() {
        // BPF_NOEXIST: a count another packet began meanwhile is kept.
        let _ = NET_DROPS.insert(&cg, &0, BPF_NOEXIST);
    }
    if let Some(n) = NET_DROPS.get_ptr_mut(&cg) {
        // Atomic although per CPU: this program runs preemptible in process context
        // (another sender on this CPU could run between a read and a write) and a
        // softirq's packet (a retransmit) can interrupt it.
        unsafe { crate::kern::add(n, 1) };
    }
    DENY
}
