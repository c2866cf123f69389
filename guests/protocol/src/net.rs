//! The wire format of hvlab's network workloads: Ethernet, ARP, IPv4 and UDP as far as they
//! need them (no fragments, no IP options), with the checks a receiver makes (lengths, IP
//! header checksum, UDP checksum). The guests build and check frames with it; a host-side
//! peer can use the same code. Plain functions over byte slices: no_std, no allocation.
//!
//! Checksums sum 32-bit big-endian words into a 64-bit accumulator and fold, which is the
//! Internet checksum (RFC 1071) in a quarter of the additions: every guest kernel instruction
//! may be emulated.

pub const ETH_HDR: usize = 14;
pub const IP_HDR: usize = 20;
pub const UDP_HDR: usize = 8;
/// Bytes before a UDP payload.
pub const HDRS: usize = ETH_HDR + IP_HDR + UDP_HDR;
/// Largest frame (1500-byte MTU), no FCS.
pub const MAX_FRAME: usize = 1514;
/// Shortest frame on the wire (padded), no FCS.
pub const MIN_FRAME: usize = 60;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// RFC 1071 sum of `data` added to `acc` (not folded, not inverted).
#[inline]
pub fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let r = words.remainder();
    let mut tail = [0u8; 4];
    tail[..r.len()].copy_from_slice(r);
    acc + u64::from(u32::from_be_bytes(tail))
}

/// Folds an accumulator to the 16-bit one's complement checksum (inverted).
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn pseudo(src: [u8; 4], dst: [u8; 4], udp_len: u16) -> u64 {
    u64::from(u32::from_be_bytes(src))
        + u64::from(u32::from_be_bytes(dst))
        + 17
        + u64::from(udp_len)
}

/// Addresses of one end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub mac: [u8; 6],
    pub ip: [u8; 4],
    pub port: u16,
}

/// Writes Ethernet, IPv4 and UDP headers (with checksums) in front of the `payload` bytes
/// already at `frame[HDRS..]`; returns the frame length. `frame` must hold HDRS + payload.
pub fn build_udp(frame: &mut [u8], from: Endpoint, to: Endpoint, payload: usize, id: u16) -> usize {
    let udp_len = (UDP_HDR + payload) as u16;
    let ip_len = IP_HDR as u16 + udp_len;
    frame[0..6].copy_from_slice(&to.mac);
    frame[6..12].copy_from_slice(&from.mac);
    put16(frame, 12, ETHERTYPE_IPV4);
    let ip = &mut frame[ETH_HDR..ETH_HDR + IP_HDR];
    ip[0] = 0x45;
    ip[1] = 0;
    put16(ip, 2, ip_len);
    put16(ip, 4, id);
    put16(ip, 6, 0x4000); // don't fragment
    ip[8] = 64;
    ip[9] = 17;
    put16(ip, 10, 0);
    ip[12..16].copy_from_slice(&from.ip);
    ip[16..20].copy_from_slice(&to.ip);
    let c = fold(sum(ip, 0));
    put16(ip, 10, c);
    let u = ETH_HDR + IP_HDR;
    put16(frame, u, from.port);
    put16(frame, u + 2, to.port);
    put16(frame, u + 4, udp_len);
    put16(frame, u + 6, 0);
    let end = u + usize::from(udp_len);
    let c = fold(sum(&frame[u..end], pseudo(from.ip, to.ip, udp_len)));
    // A computed 0 is sent as 0xffff (0 means "no checksum").
    put16(frame, u + 6, if c == 0 { 0xffff } else { c });
    end.max(MIN_FRAME)
}

/// Writes an ARP request (`op` 1) or reply (`op` 2); returns the frame length.
pub fn build_arp(
    frame: &mut [u8],
    op: u16,
    me: ([u8; 6], [u8; 4]),
    them: ([u8; 6], [u8; 4]),
) -> usize {
    let dst = if op == 1 { BROADCAST } else { them.0 };
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&me.0);
    put16(frame, 12, ETHERTYPE_ARP);
    let a = &mut frame[ETH_HDR..ETH_HDR + 28];
    put16(a, 0, 1);
    put16(a, 2, ETHERTYPE_IPV4);
    a[4] = 6;
    a[5] = 4;
    put16(a, 6, op);
    a[8..14].copy_from_slice(&me.0);
    a[14..18].copy_from_slice(&me.1);
    a[18..24].copy_from_slice(if op == 1 { &[0; 6] } else { &them.0 });
    a[24..28].copy_from_slice(&them.1);
    frame[ETH_HDR + 28..MIN_FRAME].fill(0);
    MIN_FRAME
}

/// What a received frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// ARP `op` from `sender` asking about / answering for `target_ip`.
    Arp {
        op: u16,
        sender: ([u8; 6], [u8; 4]),
        target_ip: [u8; 4],
    },
    /// A UDP datagram for us: its sender and where its payload lies in the frame.
    Udp {
        from: Endpoint,
        dst_port: u16,
        payload: (usize, usize),
    },
    /// Well-formed but not for us (another MAC or IP, another protocol).
    Foreign,
    /// Malformed: a length, a version or a checksum is wrong.
    Bad(&'static str),
}

/// Classifies and checks a received frame for the host with `mac` and `ip`.
pub fn parse(f: &[u8], mac: [u8; 6], ip: [u8; 4]) -> Frame {
    if f.len() < ETH_HDR {
        return Frame::Bad("short frame");
    }
    if f[0..6] != mac && f[0..6] != BROADCAST {
        return Frame::Foreign;
    }
    let mut smac = [0u8; 6];
    smac.copy_from_slice(&f[6..12]);
    match be16(f, 12) {
        ETHERTYPE_ARP => {
            if f.len() < ETH_HDR + 28 {
                return Frame::Bad("short arp");
            }
            let a = &f[ETH_HDR..];
            if be16(a, 0) != 1 || be16(a, 2) != ETHERTYPE_IPV4 || a[4] != 6 || a[5] != 4 {
                return Frame::Bad("arp format");
            }
            let mut sm = [0u8; 6];
            sm.copy_from_slice(&a[8..14]);
            let mut si = [0u8; 4];
            si.copy_from_slice(&a[14..18]);
            let mut ti = [0u8; 4];
            ti.copy_from_slice(&a[24..28]);
            Frame::Arp {
                op: be16(a, 6),
                sender: (sm, si),
                target_ip: ti,
            }
        }
        ETHERTYPE_IPV4 => {
            if f.len() < ETH_HDR + IP_HDR {
                return Frame::Bad("short ip");
            }
            let h = &f[ETH_HDR..ETH_HDR + IP_HDR];
            if h[0] != 0x45 {
                return Frame::Bad("ip version or options");
            }
            if fold(sum(h, 0)) != 0 {
                return Frame::Bad("ip checksum");
            }
            let total = usize::from(be16(h, 2));
            if total < IP_HDR + UDP_HDR || ETH_HDR + total > f.len() {
                return Frame::Bad("ip length");
            }
            if be16(h, 6) & 0x3fff != 0 {
                return Frame::Bad("ip fragment");
            }
            if h[16..20] != ip {
                return Frame::Foreign;
            }
            if h[9] != 17 {
                return Frame::Foreign;
            }
            let mut sip = [0u8; 4];
            sip.copy_from_slice(&h[12..16]);
            let u = ETH_HDR + IP_HDR;
            let udp_len = be16(f, u + 4);
            if usize::from(udp_len) != total - IP_HDR {
                return Frame::Bad("udp length");
            }
            let end = u + usize::from(udp_len);
            if be16(f, u + 6) == 0 {
                return Frame::Bad("udp without checksum");
            }
            if fold(sum(&f[u..end], pseudo(sip, ip, udp_len))) != 0 {
                return Frame::Bad("udp checksum");
            }
            Frame::Udp {
                from: Endpoint {
                    mac: smac,
                    ip: sip,
                    port: be16(f, u),
                },
                dst_port: be16(f, u + 2),
                payload: (u + UDP_HDR, end),
            }
        }
        _ => Frame::Foreign,
    }
}

/// `net-io`'s own datagram payload, shared by the guest workload and the host's tap responder:
/// a 16-byte header (magic, kind, flags, sequence, aux) and data.
pub mod netio {
    /// `net-io`'s UDP port.
    pub const PORT: u16 = 7007;
    pub const MAGIC: u32 = 0x4856_4e49;
    pub const K_PING: u8 = 1;
    pub const K_PONG: u8 = 2;
    pub const K_DATA: u8 = 3;
    pub const K_ACK: u8 = 4;
    pub const K_DONE: u8 = 5;
    pub const K_DONE_ACK: u8 = 6;
    /// Flag: the last datagram of a burst.
    pub const F_LAST: u8 = 1;
    /// Payload header: magic, kind, flags, seq, aux.
    pub const PHDR: usize = 16;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_round_trip_and_corruption_is_caught() {
        let a = Endpoint {
            mac: [2, 0, 0, 0, 0, 1],
            ip: [10, 0, 0, 1],
            port: 7000,
        };
        let b = Endpoint {
            mac: [2, 0, 0, 0, 0, 2],
            ip: [10, 0, 0, 2],
            port: 7001,
        };
        let mut f = [0u8; MAX_FRAME];
        for (i, x) in f[HDRS..HDRS + 101].iter_mut().enumerate() {
            *x = i as u8;
        }
        let n = build_udp(&mut f, a, b, 101, 5);
        assert_eq!(n, HDRS + 101);
        match parse(&f[..n], b.mac, b.ip) {
            Frame::Udp {
                from,
                dst_port,
                payload,
            } => {
                assert_eq!((from, dst_port, payload), (a, 7001, (HDRS, HDRS + 101)));
            }
            other => panic!("{other:?}"),
        }
        f[HDRS + 50] ^= 1;
        assert_eq!(parse(&f[..n], b.mac, b.ip), Frame::Bad("udp checksum"));
        f[HDRS + 50] ^= 1;
        f[ETH_HDR + 8] = 1; // TTL: IP checksum
        assert_eq!(parse(&f[..n], b.mac, b.ip), Frame::Bad("ip checksum"));
        assert_eq!(parse(&f[..n], [9; 6], b.ip), Frame::Foreign);
        assert_eq!(parse(&f[..10], b.mac, b.ip), Frame::Bad("short frame"));
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3 example bytes: sum 0xddf2, checksum !0xddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&d, 0)), !0xddf2);
        assert_eq!(
            fold(sum(&d[..7], 0)),
            fold(sum(&[0, 1, 0xf2, 3, 0xf4, 0xf5, 0xf6, 0], 0))
        );
    }

    #[test]
    fn arp_request_parses() {
        let mut f = [0u8; 64];
        let n = build_arp(&mut f, 1, ([2; 6], [10, 0, 0, 1]), ([0; 6], [10, 0, 0, 2]));
        assert_eq!(
            parse(&f[..n], [3; 6], [10, 0, 0, 2]),
            Frame::Arp {
                op: 1,
                sender: ([2; 6], [10, 0, 0, 1]),
                target_ip: [10, 0, 0, 2]
            }
        );
    }
}
