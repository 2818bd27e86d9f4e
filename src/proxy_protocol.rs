//! The PROXY protocol header (HAProxy's, versions 1 and 2) that a load balancer puts in front of a
//! connection to say who the client is: pure, no I/O, no clock.
//!
//! On a listener with `--proxy-protocol`, every connection must start with one header; clusterd
//! reads it (within `--sniff-timeout` and `--sniff-bytes`, like the request line that follows),
//! takes the client's address from it, and hands the worker the bytes after it. A connection
//! without a valid header is closed and counted, and never reaches a worker: a client that could
//! reach such a listener directly must not be able to claim any address it likes.
//!
//! # What is accepted (<https://www.haproxy.org/download/3.0/doc/proxy-protocol.txt>)
//!
//! - **v1**: `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`, `PROXY TCP6 ...`, or `PROXY UNKNOWN`
//!   followed by anything up to `\r\n`; at most 107 bytes. Fields are separated by single spaces,
//!   addresses are in their canonical text forms (`Ipv4Addr`/`Ipv6Addr` syntax, of the family the
//!   protocol names), ports are decimal 0..=65535 without sign or leading zero.
//! - **v2**: the 12-byte signature, then version 2 with command `LOCAL` (the balancer's own
//!   connection, such as a health check: the socket's real addresses are kept) or `PROXY`, a
//!   family/transport byte and a big-endian length of what follows. `TCP over IPv4/IPv6` and
//!   `UNIX stream` carry addresses; `UNSPEC` and the datagram kinds fall back to the socket's
//!   real addresses, as the specification asks of a receiver that does not use them. The
//!   address block must fit in the length; the rest (TLVs) is skipped unread.
//! - Anything else is [`Parsed::Invalid`], decided at the first byte that cannot belong to a
//!   header, so garbage is refused without waiting for more.

use std::net::{Ipv4Addr, Ipv6Addr};

use clusterd_worker::protocol::Address;

/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The v1 start.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 header, `\r\n` included (the specification's bound).
pub const V1_MAX: usize = 107;
/// The fixed part of a v2 header: signature, version/command, family/transport, length.
const V2_FIXED: usize = 16;
/// The address block of a v2 `UNIX` header: two 108-byte paths.
const V2_UNIX_BLOCK: usize = 216;

/// What the first bytes of a connection say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A prefix of a header: read more.
    Incomplete,
    /// A whole header of `length` bytes (the bytes after it are the client's own).
    Header {
        length: usize,
        /// The client's address and the one it connected to, or `None` when the header does not
        /// give them (v1 `UNKNOWN`, v2 `LOCAL` or `UNSPEC`): the socket's own addresses stand.
        addresses: Option<(Address, Address)>,
    },
    /// Not a valid header; why, for the log.
    Invalid(&'static str),
}

/// Reads the header at the start of `buf`; a header (or what could still become one) longer
/// than `limit` bytes is invalid.
pub fn parse(buf: &[u8], limit: usize) -> Parsed {
    let v1_prefix = buf.len().min(V1_PREFIX.len());
    let v2_prefix = buf.len().min(V2_SIGNATURE.len());
    if buf.is_empty() {
        Parsed::Incomplete
    } else if buf[..v1_prefix] == V1_PREFIX[..v1_prefix] {
        if buf.len() < V1_PREFIX.len() { Parsed::Incomplete } else { v1(buf, limit.min(V1_MAX)) }
    } else if buf[..v2_prefix] == V2_SIGNATURE[..v2_prefix] {
        if buf.len() < V2_SIGNATURE.len() { Parsed::Incomplete } else { v2(buf, limit) }
    } else {
        Parsed::Invalid("no PROXY protocol header")
    }
}

fn v1(buf: &[u8], limit: usize) -> Parsed {
    // Only printable ASCII, then CR LF: an early verdict on binary garbage after "PROXY ".
    let window = &buf[..buf.len().min(limit)];
    let Some(end) = window.iter().position(|&b| !(0x20..=0x7E).contains(&b)) else {
        return if buf.len() >= limit {
            Parsed::Invalid("v1 header longer than 107 bytes")
        } else {
            Parsed::Incomplete
        };
    };
    match window.get(end..end + 2) {
        Some(b"\r\n") => {}
        Some(_) => return Parsed::Invalid("v1 header with a byte that is not printable ASCII"),
        None if window[end] == b'\r' && end + 1 < limit => return Parsed::Incomplete,
        None if window[end] == b'\r' => return Parsed::Invalid("v1 header longer than 107 bytes"),
        None => return Parsed::Invalid("v1 header with a byte that is not printable ASCII"),
    }
    let length = end + 2;
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..end]).unwrap_or_default();
    let mut fields = line.split(' ');
    match fields.next() {
        // "the receiver must ignore anything presented before the CRLF is found"
        Some("UNKNOWN") => Parsed::Header { length, addresses: None },
        Some(family @ ("TCP4" | "TCP6")) => {
            let parts: Vec<&str> = fields.collect();
            let [src, dst, sport, dport] = parts[..] else {
                return Parsed::Invalid("v1 header without exactly two addresses and two ports");
            };
            let (Some(sport), Some(dport)) = (port(sport), port(dport)) else {
                return Parsed::Invalid("v1 header with a bad port");
            };
            let addresses = if family == "TCP4" {
                src.parse::<Ipv4Addr>().ok().zip(dst.parse::<Ipv4Addr>().ok()).map(|(s, d)| {
                    (Address::V4 { ip: s.octets(), port: sport }, Address::V4 { ip: d.octets(), port: dport })
                })
            } else {
                src.parse::<Ipv6Addr>().ok().zip(dst.parse::<Ipv6Addr>().ok()).map(|(s, d)| {
                    (Address::V6 { ip: s.octets(), port: sport }, Address::V6 { ip: d.octets(), port: dport })
                })
            };
            match addresses {
                Some(addresses) => Parsed::Header { length, addresses: Some(addresses) },
                None => Parsed::Invalid("v1 header with an address that is not of its family"),
            }
        }
        _ => Parsed::Invalid("v1 header with a protocol other than TCP4, TCP6 or UNKNOWN"),
    }
}

/// A v1 port: 1 to 5 decimal digits, no leading zero (but `0` itself), at most 65535.
fn port(text: &str) -> Option<u16> {
    let digits = !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
    if !digits || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    text.parse().ok()
}

fn v2(buf: &[u8], limit: usize) -> Parsed {
    let Some(&version_command) = buf.get(12) else { return Parsed::Incomplete };
    if version_command >> 4 != 2 {
        return Parsed::Invalid("v2 header with a version other than 2");
    }
    let local = match version_command & 0x0F {
        0 => true,
        1 => false,
        _ => return Parsed::Invalid("v2 header with a command other than LOCAL or PROXY"),
    };
    let Some(&family) = buf.get(13) else { return Parsed::Incomplete };
    // The specification's combinations; anything else "must be rejected as invalid".
    let block = match family {
        0x00 | 0x12 | 0x22 | 0x32 => 0,
        0x11 => 12,
        0x21 => 36,
        0x31 => V2_UNIX_BLOCK,
        _ if local => 0,
        _ => return Parsed::Invalid("v2 header with an unknown address family or transport"),
    };
    let Some(length) = buf.get(14..16) else { return Parsed::Incomplete };
    let length = V2_FIXED + usize::from(u16::from_be_bytes([length[0], length[1]]));
    if length > limit {
        return Parsed::Invalid("v2 header longer than --sniff-bytes");
    }
    if !local && length - V2_FIXED < block {
        return Parsed::Invalid("v2 header whose length cannot hold its addresses");
    }
    if buf.len() < length {
        return Parsed::Incomplete;
    }
    if local {
        return Parsed::Header { length, addresses: None };
    }
    let a = &buf[V2_FIXED..];
    let be16 = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
    let addresses = match family {
        0x11 => {
            let ip = |at: usize| [a[at], a[at + 1], a[at + 2], a[at + 3]];
            Some((Address::V4 { ip: ip(0), port: be16(8) }, Address::V4 { ip: ip(4), port: be16(10) }))
        }
        0x21 => {
            let ip = |at: usize| -> [u8; 16] { a[at..at + 16].try_into().expect("16 bytes sliced") };
            Some((Address::V6 { ip: ip(0), port: be16(32) }, Address::V6 { ip: ip(16), port: be16(34) }))
        }
        0x31 => {
            // A path is NUL-terminated in its 108 bytes (or fills them).
            let path = |at: usize| {
                let raw = &a[at..at + 108];
                Address::Unix { path: raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())].to_vec() }
            };
            Some((path(0), path(108)))
        }
        _ => None,
    };
    Parsed::Header { length, addresses }
}

/// Connections refused for want of a valid header, since clusterd started (`status`).
static REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts a refused connection; returns the count so far.
pub fn count_refused() -> u64 {
    REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
}

/// Connections refused for want of a valid header, since clusterd started.
pub fn refused() -> u64 {
    REFUSED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether the `n`th refusal is logged: the first ten, then every power of two, so a flood of
/// garbage (or a balancer configured without PROXY) is visible without drowning the log.
pub fn worth_logging(n: u64) -> bool {
    n <= 10 || n.is_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 8192;

    fn v4(ip: [u8; 4], port: u16) -> Address {
        Address::V4 { ip, port }
    }

    fn header(length: usize, addresses: Option<(Address, Address)>) -> Parsed {
        Parsed::Header { length, addresses }
    }

    /// Every proper prefix of a valid header asks for more; the whole gives `expected`.
    fn check_prefixes(bytes: &[u8], expected: &Parsed) {
        for cut in 0..bytes.len() {
            assert_eq!(parse(&bytes[..cut], LIMIT), Parsed::Incomplete, "prefix of {cut} bytes of {bytes:?}");
        }
        assert_eq!(&parse(bytes, LIMIT), expected);
        // Bytes after the header are the client's: they do not change the verdict.
        let mut more = bytes.to_vec();
        more.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(&parse(&more, LIMIT), expected);
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n";
        check_prefixes(line, &header(line.len(), Some((v4([192, 0, 2, 7], 56324), v4([198, 51, 100, 1], 443)))));
        let line = b"PROXY TCP6 2001:db8::1 ::1 0 65535\r\n";
        let src = Address::V6 { ip: "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets(), port: 0 };
        let dst = Address::V6 { ip: Ipv6Addr::LOCALHOST.octets(), port: 65535 };
        check_prefixes(line, &header(line.len(), Some((src, dst))));
        check_prefixes(b"PROXY UNKNOWN\r\n", &header(15, None));
        // UNKNOWN: what follows it up to CRLF is ignored.
        let line = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n";
        check_prefixes(line, &header(line.len(), None));
        // The longest header allowed: exactly 107 bytes.
        let mut longest = b"PROXY UNKNOWN ".to_vec();
        longest.resize(105, b'x');
        longest.extend_from_slice(b"\r\n");
        assert_eq!(parse(&longest, LIMIT), header(107, None));
    }

    #[test]
    fn v1_refusals() {
        let cases: &[&[u8]] = &[
            b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443 9\r\n",
            b"PROXY TCP4 192.0.2.7  198.51.100.1 56324 443\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP6 192.0.2.7 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.07 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 443\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 0443 443\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 +443 443\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2\r\r",
            b"PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n",
            b"PROXY tcp4 192.0.2.7 198.51.100.1 1 2\r\n",
            b"PROXY \r\n",
            b"PROXY TCP4 192.0.2.7\x00",
            b"PROXY TCP4 \xff",
        ];
        for case in cases {
            assert!(matches!(parse(case, LIMIT), Parsed::Invalid(_)), "{:?}", String::from_utf8_lossy(case));
        }
        // 107 printable bytes without a line end: no header can follow.
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(107, b'x');
        assert!(matches!(parse(&long, LIMIT), Parsed::Invalid(_)));
        long.truncate(106);
        assert_eq!(parse(&long, LIMIT), Parsed::Incomplete);
        long.push(b'\r');
        assert!(matches!(parse(&long, LIMIT), Parsed::Invalid(_)), "CR at byte 107 leaves no room for LF");
    }

    #[test]
    fn garbage_is_refused_at_its_first_byte() {
        for garbage in [&b"GET / HTTP/1.1\r\n"[..], b"\x16\x03\x01", b"P", b"PROXZ", b"\r\n\r\n\0\r\nQUIX", b"\0"] {
            let verdict = parse(garbage, LIMIT);
            if garbage == b"P" {
                assert_eq!(verdict, Parsed::Incomplete, "a prefix of PROXY");
            } else {
                assert!(matches!(verdict, Parsed::Invalid(_)), "{garbage:?}: {verdict:?}");
            }
        }
    }

    fn v2_header(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    #[test]
    fn v2_inet_inet6_unix() {
        let block = [192, 0, 2, 7, 198, 51, 100, 1, 0xDC, 0x04, 0x01, 0xBB];
        let bytes = v2_header(1, 0x11, &block);
        check_prefixes(&bytes, &header(28, Some((v4([192, 0, 2, 7], 56324), v4([198, 51, 100, 1], 443)))));

        let src: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let mut block = src.octets().to_vec();
        block.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        block.extend_from_slice(&[0x00, 0x50, 0x1F, 0x90]);
        let bytes = v2_header(1, 0x21, &block);
        let expected =
            (Address::V6 { ip: src.octets(), port: 80 }, Address::V6 { ip: Ipv6Addr::LOCALHOST.octets(), port: 8080 });
        check_prefixes(&bytes, &header(52, Some(expected)));

        let mut block = vec![0u8; 216];
        block[..5].copy_from_slice(b"/a/b\0");
        block[108..108 + 108].fill(b'c');
        let bytes = v2_header(1, 0x31, &block);
        let expected = (Address::Unix { path: b"/a/b".to_vec() }, Address::Unix { path: vec![b'c'; 108] });
        check_prefixes(&bytes, &header(232, Some(expected)));
    }

    #[test]
    fn v2_tlvs_are_skipped_and_local_unspec_keep_the_socket_addresses() {
        let mut block = vec![127, 0, 0, 1, 127, 0, 0, 2, 0, 1, 0, 2];
        block.extend_from_slice(&[0x04, 0x00, 0x03, b'x', b'y', b'z']); // a NOOP TLV
        let bytes = v2_header(1, 0x11, &block);
        check_prefixes(&bytes, &header(34, Some((v4([127, 0, 0, 1], 1), v4([127, 0, 0, 2], 2)))));
        // LOCAL: the balancer's own connection; whatever block it carries is skipped.
        check_prefixes(&v2_header(0, 0x00, &[]), &header(16, None));
        check_prefixes(&v2_header(0, 0x11, &[1, 2, 3]), &header(19, None));
        check_prefixes(&v2_header(0, 0x77, &[]), &header(16, None));
        // UNSPEC and datagram kinds fall back to the socket's addresses.
        check_prefixes(&v2_header(1, 0x00, &[9; 4]), &header(20, None));
        check_prefixes(&v2_header(1, 0x12, &[0; 12]), &header(28, None));
    }

    #[test]
    fn v2_refusals() {
        let bad_version = {
            let mut h = v2_header(1, 0x11, &[0; 12]);
            h[12] = 0x11;
            h
        };
        let cases = [
            bad_version,
            v2_header(2, 0x11, &[0; 12]),
            v2_header(1, 0x13, &[0; 12]),
            v2_header(1, 0x41, &[0; 12]),
            v2_header(1, 0x11, &[0; 11]),
            v2_header(1, 0x21, &[0; 35]),
            v2_header(1, 0x31, &[0; 215]),
        ];
        for case in cases {
            // Refused as soon as the fixed part is there, without waiting for the block.
            assert!(matches!(parse(&case[..16], LIMIT), Parsed::Invalid(_)), "{case:?}");
        }
        // A header longer than the byte bound is refused from its length field on.
        let big = v2_header(1, 0x11, &[0; 600]);
        assert!(matches!(parse(&big[..16], 512), Parsed::Invalid(_)));
        assert_eq!(parse(&big[..16], 616), Parsed::Incomplete);
        assert!(matches!(parse(&big, 616), Parsed::Header { length: 616, .. }));
    }

    #[test]
    fn refusals_are_logged_sparsely() {
        let logged: Vec<u64> = (1..=1000).filter(|&n| worth_logging(n)).collect();
        assert_eq!(logged, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 32, 64, 128, 256, 512]);
    }

    /// The handoff of a connection whose client a PROXY header named: the worker's `peer` is the
    /// claimed client, `local` stays the socket's own (it tells the worker the socket's kind).
    /// These bytes are the test vector in `worker-sdk/PROTOCOL.md`.
    #[test]
    fn handoff_frame_vector_with_a_claimed_peer() {
        use clusterd_worker::protocol::{Connection, ToWorker};
        let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n";
        let Parsed::Header { addresses: Some((peer, _)), .. } = parse(line, LIMIT) else { panic!("a header") };
        let local = Address::Unix { path: b"/run/lb.sock".to_vec() };
        let frame = ToWorker::Connection(Connection { id: 1, peer, local, initial: b"GET / HTTP/1.1\r\n".to_vec() });
        let bytes = clusterd_worker::codec::encode(&frame).unwrap();
        let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex.join(" "),
            "02 01 01 c0 00 02 07 fb 04 dc 03 0c 2f 72 75 6e 2f 6c 62 2e 73 6f 63 6b \
             10 47 45 54 20 2f 20 48 54 54 50 2f 31 2e 31 0d 0a"
        );
    }
}
