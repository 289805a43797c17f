//! The egress packet check of an enforced task's cgroup (monitor-ebpf/src/netguard.rs,
//! `guard_egress`). A packet whose header sends it somewhere other than the
//! destination the connect/sendmsg guards checked is dropped: an IPv4 header with
//! options (a source route goes to its first hop), an IPv6 header followed by a
//! routing header or by an option header that may precede one. Kept here, pure, so
//! that the kernel and the unit tests run the same code.

/// IPv6 next-header values (include/uapi/linux/in6.h).
const HOPOPTS: u8 = 0;
const TCP: u8 = 6;
const ROUTING: u8 = 43;
const DSTOPTS: u8 = 60;
/// The jumbo payload option (RFC 2675; include/net/ipv6.h IPV6_TLV_JUMBO).
const TLV_JUMBO: u8 = 0xc2;

/// Whether the packet may leave. `byte(i)` is byte `i` of the packet from its IP
/// header, `None` past its end (a packet too short to read is not judged).
#[inline(always)]
pub fn egress_allowed(byte: impl Fn(usize) -> Option<u8>) -> bool {
    let Some(b0) = byte(0) else { return true };
    match b0 >> 4 {
        4 => b0 & 0xf == 5,
        6 => match byte(6) {
            Some(HOPOPTS) => big_gso(&byte),
            Some(ROUTING | DSTOPTS) => false,
            _ => true,
        },
        _ => true,
    }
}

/// The hop-by-hop header the kernel itself puts before a BIG TCP packet over 64 KiB
/// (include/net/ipv6.h `struct hop_jumbo_hdr`: ip6_xmit on 5.19 to 6.x): payload
/// length 0, then next header TCP (the kernel puts it before nothing else), header
/// length 0 (8 bytes), and only the jumbo option (type 0xc2, length 4). What follows
/// is the TCP header, so no routing header. A caller cannot build one: user option
/// headers need CAP_NET_RAW, and no other packet is over 64 KiB.
#[inline(always)]
fn big_gso(byte: &impl Fn(usize) -> Option<u8>) -> bool {
    byte(4) == Some(0)
        && byte(5) == Some(0)
        && byte(40) == Some(TCP)
        && byte(41) == Some(0)
        && byte(42) == Some(TLV_JUMBO)
        && byte(43) == Some(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UDP: u8 = 17;

    fn judge(p: &[u8]) -> bool {
        egress_allowed(|i| p.get(i).copied())
    }

    fn v6(next: u8, payload_len: u16, ext: &[u8]) -> [u8; 64] {
        let mut p = [0u8; 64];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&payload_len.to_be_bytes());
        p[6] = next;
        p[40..40 + ext.len()].copy_from_slice(ext);
        p
    }

    #[test]
    fn ipv4_options_are_dropped() {
        assert!(judge(&[0x45, 0, 0, 20]));
        assert!(!judge(&[0x46, 0, 0, 24]));
        assert!(!judge(&[0x4f]));
    }

    #[test]
    fn ipv6_routing_and_option_headers_are_dropped() {
        assert!(judge(&v6(TCP, 20, &[])));
        assert!(judge(&v6(UDP, 8, &[])));
        assert!(!judge(&v6(ROUTING, 24, &[UDP, 2, 4, 1])));
        assert!(!judge(&v6(DSTOPTS, 16, &[ROUTING, 0, 1, 4])));
        // A hop-by-hop header of the caller's: routing next, or any other option.
        assert!(!judge(&v6(HOPOPTS, 32, &[ROUTING, 0, 1, 4, 0, 0, 0, 0])));
        assert!(!judge(&v6(HOPOPTS, 16, &[TCP, 0, 1, 4, 0, 0, 0, 0])));
    }

    #[test]
    fn the_kernels_own_big_tcp_jumbo_header_passes() {
        let jumbo = [TCP, 0, TLV_JUMBO, 4, 0, 1, 0, 0];
        assert!(judge(&v6(HOPOPTS, 0, &jumbo)));
        assert!(!judge(&v6(HOPOPTS, 0, &[UDP, 0, TLV_JUMBO, 4, 0, 1, 0, 0])));
        // The same option before a routing header, a longer header, or a payload
        // length the kernel would not write: the caller's, dropped.
        assert!(!judge(&v6(HOPOPTS, 0, &[ROUTING, 0, TLV_JUMBO, 4, 0, 1, 0, 0])));
        assert!(!judge(&v6(HOPOPTS, 0, &[TCP, 1, TLV_JUMBO, 4, 0, 1, 0, 0])));
        assert!(!judge(&v6(HOPOPTS, 8, &jumbo)));
        // Too short to hold it: dropped.
        assert!(!judge(&v6(HOPOPTS, 0, &jumbo)[..42]));
    }
}
