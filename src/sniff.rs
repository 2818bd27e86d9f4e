//! Routing a new connection from its first bytes: pure, no I/O, no clock.
//!
//! The primary reads just enough of a connection to pick a worker: the request line of the first HTTP/1.x
//! request, whose target carries the Engine.IO session id (`sid`) that pins a long-polling client (and the
//! WebSocket upgrade that follows it) to the worker that holds its session. Everything else is read by the
//! worker, so this module only classifies; the caller owns the socket, the byte limit and the timer.
//!
//! # Routing rules
//!
//! [`sniff`] reads the request line leniently after RFC 9112:
//!
//! ```text
//! request-line = method SP request-target SP "HTTP/1." DIGIT ( CRLF / LF )
//! method       = 1*20 tchar          ; RFC 9110 token characters; "get" is allowed
//! request-target = 1* %x21-7E        ; visible ASCII: origin-form, absolute-form, authority-form or "*"
//! ```
//!
//! - Separators are single spaces: a second space, a tab or a leading empty line is not this grammar (RFC 9112
//!   lets a server skip empty lines between requests; a connection's first request has none).
//! - It decides as early as possible: at the first byte that no such line can contain at that place the
//!   answer is [`Sniffed::NotHttp`] (a TLS ClientHello's `0x16`, the HTTP/2 preface at its `2`, a control
//!   byte in the target, `HTTP/3.0`, a PROXY protocol header), so a client that does not speak HTTP/1.x is
//!   never kept waiting for a line end it will not send.
//! - An empty buffer, or any proper prefix of such a line, is [`Sniffed::Incomplete`]: read more.
//! - A complete line (CRLF or a bare LF) within the first `limit` bytes is [`Sniffed::Http`], with the
//!   `sid` found by [`session_id`]. The headers and body that follow are not looked at.
//! - A valid prefix that fills `limit` bytes without a line end is [`Sniffed::TooLong`]; bytes beyond
//!   `limit` are never examined, even if the line ends there.
//!
//! Only the first `limit` bytes count, so every answer other than `Incomplete` is final: more bytes never
//! change it, which lets the caller stop reading at the first one.
//!
//! The `sid` is the first `sid` parameter of the target's query (after the first `?`, up to a `#`), split on
//! `&` only, with key and value percent-decoded and `+` kept as `+`. It counts only if it is 1 to 64 bytes of
//! the base64url alphabet `[A-Za-z0-9_-]` (socketioxide's ids are 16 characters, Node's 20); anything else
//! routes as if there were no `sid`, since a value no server could have issued pins nothing.

/// What the bytes read so far say about how to route the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// A complete HTTP/1.x request line. `sid` is the valid Engine.IO session id from its query, if any.
    Http { sid: Option<String> },
    /// The bytes so far are a proper prefix of an HTTP/1.x request line: read more.
    Incomplete,
    /// Not HTTP/1.x (e.g. a TLS ClientHello starting 0x16, an HTTP/2 preface "PRI * HTTP/2.0", garbage, empty
    /// method): route it without waiting for more.
    NotHttp,
    /// Looks like HTTP but no line end within `limit` bytes.
    TooLong,
}

/// The longest method accepted. Registered methods are at most 17 bytes (`VERSION-CONTROL`); the cap lets
/// a stream of token characters (which many binary protocols begin with) be refused early.
const MAX_METHOD: usize = 20;

/// The longest session id accepted: well above any real server's (16 or 20), and a bound on what a client
/// can make the routing table look up.
const MAX_SID: usize = 64;

/// Classifies the first bytes of a connection. `limit` is the most bytes a request line may take (incl. CRLF).
pub fn sniff(buf: &[u8], limit: usize) -> Sniffed {
    if buf.is_empty() {
        return Sniffed::Incomplete;
    }
    // Looking only at the window keeps the answer a function of bytes the caller was willing to wait for,
    // which is what makes every answer but `Incomplete` final.
    let window = &buf[..buf.len().min(limit)];
    match request_target(window) {
        Ok(target) => Sniffed::Http { sid: session_id(target) },
        Err(Stop::Impossible) => Sniffed::NotHttp,
        Err(Stop::NeedMore) if buf.len() >= limit => Sniffed::TooLong,
        Err(Stop::NeedMore) => Sniffed::Incomplete,
    }
}

/// Why a request line could not be read (yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Every byte so far fits the grammar, but the line has not ended.
    NeedMore,
    /// A byte that no request line can hold at its place.
    Impossible,
}

/// The request target of the request line at the start of `bytes`. Each part is checked before the next is
/// looked at, and a part that runs to the end of `bytes` is `NeedMore` only if all of it was valid, so the
/// first impossible byte is what decides.
fn request_target(bytes: &[u8]) -> Result<&[u8], Stop> {
    let method = bytes.iter().take_while(|&&b| is_tchar(b)).count();
    if method > MAX_METHOD {
        return Err(Stop::Impossible);
    }
    let rest = expect_space(bytes, method)?;

    let target_len = rest.iter().take_while(|&&b| is_vchar(b)).count();
    let target = &rest[..target_len];
    let rest = expect_space(rest, target_len)?;

    const VERSION: &[u8] = b"HTTP/1.";
    for (i, &b) in rest.iter().take(VERSION.len() + 1).enumerate() {
        let fits = if i < VERSION.len() { b == VERSION[i] } else { b.is_ascii_digit() };
        if !fits {
            return Err(Stop::Impossible);
        }
    }
    let end = rest.get(VERSION.len() + 1..).ok_or(Stop::NeedMore)?;
    match end {
        [] | [b'\r'] => Err(Stop::NeedMore),
        [b'\n', ..] | [b'\r', b'\n', ..] => Ok(target),
        _ => Err(Stop::Impossible),
    }
}

/// What follows the `len`-byte field at the start of `bytes` and its single SP separator. The field is
/// already known to be made of allowed bytes; it must be non-empty and end at a space.
fn expect_space(bytes: &[u8], len: usize) -> Result<&[u8], Stop> {
    match bytes.get(len) {
        None => Err(Stop::NeedMore),
        Some(b' ') if len > 0 => Ok(&bytes[len + 1..]),
        Some(_) => Err(Stop::Impossible),
    }
}

/// RFC 9110 `tchar`: the characters of a token, such as a method.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Visible ASCII, the bytes a request target may hold (RFC 3986 characters plus the ones browsers send
/// unencoded anyway, such as `|` or `"`); no space, no control byte, nothing above 0x7E.
fn is_vchar(b: u8) -> bool {
    (0x21..=0x7E).contains(&b)
}

/// The `sid` parameter of a request target's query (first occurrence), percent-decoded, if it is a valid
/// session id: 1..=64 bytes of [A-Za-z0-9_-] (base64url; socketioxide's ids are 16 chars, Node's 20).
/// Anything else (missing, empty, invalid percent escapes, other characters) -> None.
pub fn session_id(target: &[u8]) -> Option<String> {
    // The fragment goes first: a `?` after a `#` belongs to the fragment, not to a query (RFC 3986).
    let before_fragment = target.split(|&b| b == b'#').next().unwrap_or_default();
    let query_start = before_fragment.iter().position(|&b| b == b'?')? + 1;
    let query = &before_fragment[query_start..];
    // `;` is not a separator, as in WHATWG URLSearchParams and Node's `querystring`.
    let value = query.split(|&b| b == b'&').find_map(|param| {
        let (key, value) = match param.iter().position(|&b| b == b'=') {
            Some(eq) => (&param[..eq], &param[eq + 1..]),
            None => (param, &param[param.len()..]),
        };
        // A key with a broken escape is not `sid`, so it is skipped rather than spoiling the query.
        (percent_decode(key).as_deref() == Some(b"sid")).then_some(value)
    })?;
    let sid = percent_decode(value)?;
    if !is_session_id(&sid) {
        return None;
    }
    // Only ASCII passed the check above, so the conversion cannot fail.
    String::from_utf8(sid).ok()
}

/// Whether `sid` can be a session id: 1..=64 bytes of [A-Za-z0-9_-]. The same rule holds for the ids
/// workers report (`SessionOpen`), so that what a worker says costs no more than what a client can.
pub fn is_session_id(sid: &[u8]) -> bool {
    (1..=MAX_SID).contains(&sid.len()) && sid.iter().all(|&b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
}

/// `%XX` escapes decoded (either case of hex digit); `None` if a `%` is not followed by two hex digits.
/// `+` stays `+` rather than becoming a space as in form encoding: a session id holds neither, so such a
/// value is refused under either reading and the choice can never route a connection differently.
fn percent_decode(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let [high, low, ..] = *tail else { return None };
            out.push(hex(high)? << 4 | hex(low)?);
            rest = &tail[2..];
        } else {
            out.push(b);
            rest = tail;
        }
    }
    Some(out)
}

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

/// A minimal complete response for the cases where clusterd answers itself, always with `Connection: close`,
/// a `Content-Length`, `Content-Type: text/plain; charset=utf-8` and a one-line body; e.g. 503 (with
/// `Retry-After: 1`), 408, 414, 400.
///
/// The body is sent with a final newline (so that `curl` output ends cleanly); line breaks inside `reason` or
/// `body` become spaces, so a careless caller can never split the response or inject a header. There is no
/// `Date`: this module reads no clock, and a client does not need one on a response that closes.
pub fn response(status: u16, reason: &str, body: &str) -> Vec<u8> {
    debug_assert!((100..=999).contains(&status), "status {status} is not a 3-digit code");
    let one_line = |text: &str| text.replace(['\r', '\n'], " ");
    let reason = one_line(reason);
    let body = format!("{}\n", one_line(body.strip_suffix('\n').unwrap_or(body)));
    // A client told to come back after a 503 should wait a little, not hammer a pool that has no worker yet.
    let retry = if status == 503 { "Retry-After: 1\r\n" } else { "" };
    format!(
        "HTTP/1.1 {status} {reason}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\
         {retry}\r\n\
         {body}",
        body.len()
    )
    .into_bytes()
}

/// The length of the HTTP/1.x request at the start of `buf` (headers, and the body a
/// `Content-Length` announces), once its headers are complete; `None` before. A chunked body is
/// not waited for (the headers' length).
pub fn request_length(buf: &[u8]) -> Option<usize> {
    RequestScan::default().length(buf)
}

/// [`request_length`] of a buffer that grows as a request arrives: each call reads only what was
/// added since the last, so a head that arrives a few bytes at a time costs one pass in all, not
/// one per read (the buffer may reach `WHOLE_REQUEST_MAX`).
#[derive(Debug, Default)]
pub struct RequestScan {
    /// Bytes already read (the buffer only grows).
    scanned: usize,
    line_start: usize,
    body: Option<usize>,
    length: Option<usize>,
}

impl RequestScan {
    /// The request's length once its head is complete in `buf` (which holds at least what the
    /// earlier calls saw).
    pub fn length(&mut self, buf: &[u8]) -> Option<usize> {
        // One pass over the lines (this runs for every connection handed to a Node worker): the
        // blank line that ends the head and the first valid `Content-Length` are found together.
        while self.length.is_none() && self.scanned < buf.len() {
            let at = match buf[self.scanned..].iter().position(|&b| b == b'\n') {
                Some(offset) => self.scanned + offset,
                None => {
                    self.scanned = buf.len();
                    break;
                }
            };
            self.scanned = at + 1;
            if self.body.is_none() {
                self.body = content_length(&buf[self.line_start..at]);
            }
            self.line_start = at + 1;
            if at >= 3 && buf[at - 3..=at] == *b"\r\n\r\n" {
                self.length = Some(self.line_start.saturating_add(self.body.unwrap_or(0)));
            }
        }
        self.length
    }
}

/// The value of a `Content-Length` header line (without its `\n`), if it is one and valid.
fn content_length(line: &[u8]) -> Option<usize> {
    const NAME: &[u8] = b"content-length:";
    let value = line.get(NAME.len()..).filter(|_| line[..NAME.len()].eq_ignore_ascii_case(NAME))?;
    let value = value.strip_suffix(b"\r").unwrap_or(value);
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Large enough for every line in these tests: the limit is tested on its own.
    const LIMIT: usize = 8192;

    fn http(sid: Option<&str>) -> Sniffed {
        Sniffed::Http { sid: sid.map(String::from) }
    }

    fn concat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn session_id_of_targets() {
        let long64 = "a".repeat(64);
        let long65 = "a".repeat(65);
        let t64 = format!("/?sid={long64}");
        let t65 = format!("/?sid={long65}");
        let cases: &[(&str, Option<&str>)] = &[
            // Engine.IO handshakes and sessions.
            ("/socket.io/?EIO=4&transport=polling", None),
            ("/socket.io/?EIO=4&transport=polling&t=P1x2y3", None),
            ("/socket.io/?EIO=4&transport=polling&sid=CucdsEyTiqO-9vwA", Some("CucdsEyTiqO-9vwA")),
            ("/socket.io/?EIO=4&transport=websocket&sid=uOKvLkhAjSpgMRGjAAAB", Some("uOKvLkhAjSpgMRGjAAAB")),
            ("/socket.io/?EIO=3&transport=polling&sid=abc_DEF-123", Some("abc_DEF-123")),
            // Position of the parameter.
            ("/?sid=abc&EIO=4", Some("abc")),
            ("/?EIO=4&sid=abc&transport=polling", Some("abc")),
            ("/?EIO=4&transport=polling&sid=abc", Some("abc")),
            ("/?sid=abc", Some("abc")),
            ("/?&&sid=abc&", Some("abc")),
            ("/?=x&sid=abc", Some("abc")),
            // The first occurrence decides, even when it is invalid.
            ("/?sid=first&sid=second", Some("first")),
            ("/?sid=&sid=second", None),
            ("/?sid&sid=second", None),
            ("/?sid=a.b&sid=second", None),
            // Percent-decoding of value and key.
            ("/?sid=%41BC", Some("ABC")),
            ("/?sid=%61%62%63", Some("abc")),
            ("/?sid=a%2db", Some("a-b")),
            ("/?sid=a%2Db", Some("a-b")),
            ("/?sid=a%5Fb", Some("a_b")),
            ("/?s%69d=x", Some("x")),
            ("/?%73%69%64=x", Some("x")),
            ("/?S%49D=x", None),
            ("/?SID=x", None),
            // Invalid escapes.
            ("/?sid=%4", None),
            ("/?sid=%", None),
            ("/?sid=%zz", None),
            ("/?sid=a%4g", None),
            ("/?sid=%%41", None),
            // A key with a broken escape is not `sid` and does not spoil the rest.
            ("/?%zz=1&sid=ok", Some("ok")),
            ("/?s%6=1&sid=ok", Some("ok")),
            // Empty and missing values.
            ("/?sid=", None),
            ("/?sid", None),
            ("/?", None),
            ("/", None),
            ("", None),
            ("*", None),
            // Length.
            (&t64, Some(&long64)),
            (&t65, None),
            ("/?sid=a", Some("a")),
            // Bytes outside base64url, raw or encoded.
            ("/?sid=abc.def", None),
            ("/?sid=abc+def", None),
            ("/?sid=abc%2Bdef", None),
            ("/?sid=abc%20def", None),
            ("/?sid=abc%00", None),
            ("/?sid=abc%C3%A9", None),
            ("/?sid=ab/c", None),
            ("/?sid=abc=def", None),
            ("/?sid=abc~", None),
            ("/?sid=abc%3D", None),
            // Other keys that merely contain `sid`.
            ("/?sids=x", None),
            ("/?xsid=y", None),
            ("/?sids=x&xsid=y&sid=z", Some("z")),
            ("/?sid%3D=x", None),
            // `;` is no separator.
            ("/?a=1;sid=x", None),
            ("/?sid=x;y", None),
            // A `?` inside the query is data.
            ("/??sid=x", None),
            ("/?a=b?sid=x", None),
            // Fragments.
            ("/?#sid=x", None),
            ("/?a=1#sid=x", None),
            ("/?sid=abc#frag", Some("abc")),
            ("/?sid=abc#", Some("abc")),
            ("/p#x?sid=abc", None),
            // Absolute-form and a `sid` in the path.
            ("http://h/p?sid=x", Some("x")),
            ("http://example.com:8080/socket.io/?EIO=4&transport=polling&sid=abc", Some("abc")),
            ("/sid=x", None),
            ("/sid/?x=1", None),
        ];
        for (target, expected) in cases {
            assert_eq!(session_id(target.as_bytes()).as_deref(), *expected, "target {target:?}");
        }
    }

    #[test]
    fn session_id_accepts_exactly_base64url() {
        for b in 0..=u8::MAX {
            let target = format!("/?sid=a%{b:02X}");
            let valid = b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
            let expected = valid.then(|| format!("a{}", char::from(b)));
            assert_eq!(session_id(target.as_bytes()), expected, "byte {b:#04x}");
        }
    }

    #[test]
    fn http_request_lines() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n", None),
            (b"GET /socket.io/?EIO=4&transport=polling&sid=CucdsEyTiqO-9vwA HTTP/1.1\r\n", Some("CucdsEyTiqO-9vwA")),
            (
                b"POST /socket.io/?EIO=4&transport=polling&sid=uOKvLkhAjSpgMRGjAAAB HTTP/1.1\r\n",
                Some("uOKvLkhAjSpgMRGjAAAB"),
            ),
            (b"GET /socket.io/?EIO=4&transport=websocket&sid=abc HTTP/1.1\r\nUpgrade: websocket\r\n", Some("abc")),
            (b"GET /?sid=abc HTTP/1.1\n", Some("abc")),
            (b"GET /?sid=abc HTTP/1.0\r\n", Some("abc")),
            (b"GET / HTTP/1.9\r\n", None),
            (b"get /?sid=abc HTTP/1.1\r\n", Some("abc")),
            (b"OPTIONS * HTTP/1.1\r\n", None),
            (b"CONNECT example.com:443 HTTP/1.1\r\n", None),
            (b"GET http://h/socket.io/?sid=abc HTTP/1.1\r\n", Some("abc")),
            (b"M-SEARCH * HTTP/1.1\r\n", None),
            (b"ABCDEFGHIJKLMNOPQRST / HTTP/1.1\r\n", None),
            (b"!#$%&'*+-.^_`|~09az / HTTP/1.1\r\n", None),
            (b"GET /\"|{}<>\\^`[] HTTP/1.1\r\n", None),
            (b"G / HTTP/1.1\n", None),
            // What follows the line is not looked at.
            (b"GET /?sid=abc HTTP/1.1\r\n\x00\xff\x16garbage", Some("abc")),
            (b"GET /?sid=abc HTTP/1.1\n\r\n", Some("abc")),
        ];
        for (line, sid) in cases {
            assert_eq!(sniff(line, LIMIT), http(*sid), "line {:?}", line.escape_ascii().to_string());
        }
    }

    #[test]
    fn every_proper_prefix_is_incomplete_and_the_line_end_completes_it() {
        let lines: &[(&[u8], Option<&str>)] = &[
            (b"GET /socket.io/?EIO=4&transport=polling&sid=CucdsEyTiqO-9vwA HTTP/1.1", Some("CucdsEyTiqO-9vwA")),
            (b"POST /socket.io/?EIO=4&transport=polling HTTP/1.0", None),
            (b"OPTIONS * HTTP/1.1", None),
            (b"get http://h/p?sid=x HTTP/1.1", Some("x")),
            (b"ABCDEFGHIJKLMNOPQRST /?s%69d=%41 HTTP/1.1", Some("A")),
            (b"G / HTTP/1.1", None),
        ];
        for (line, sid) in lines {
            let shown = line.escape_ascii().to_string();
            let crlf = concat(&[line, b"\r\n"]);
            for len in 0..crlf.len() {
                assert_eq!(sniff(&crlf[..len], LIMIT), Sniffed::Incomplete, "{shown:?} cut at {len}");
            }
            assert_eq!(sniff(&crlf, LIMIT), http(*sid), "{shown:?} with CRLF");
            assert_eq!(sniff(&concat(&[line, b"\n"]), LIMIT), http(*sid), "{shown:?} with LF");
            assert_eq!(sniff(&concat(&[&crlf, b"Host: h\r\n\r\n"]), LIMIT), http(*sid), "{shown:?} with headers");
        }
    }

    /// Each input with the index of the first byte that makes it impossible.
    #[test]
    fn not_http_is_decided_at_the_first_impossible_byte() {
        let cases: &[(&str, &[u8], usize)] = &[
            ("TLS ClientHello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 0),
            ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 11),
            ("double space after method", b"GET  / HTTP/1.1\r\n", 4),
            ("double space after target", b"GET /  HTTP/1.1\r\n", 6),
            ("space in target", b"GET /a b HTTP/1.1\r\n", 7),
            ("NUL in target", b"GET /\x00 HTTP/1.1\r\n", 5),
            ("tab in target", b"GET /a\tb HTTP/1.1\r\n", 6),
            ("DEL in target", b"GET /\x7f HTTP/1.1\r\n", 5),
            ("non-ASCII in target", "GET /é HTTP/1.1\r\n".as_bytes(), 5),
            ("CR in target (HTTP/0.9)", b"GET /\r\n", 5),
            ("HTTP/3.0", b"GET / HTTP/3.0\r\n", 11),
            ("HTTP/2.0", b"GET / HTTP/2.0\r\n", 11),
            ("two-digit major", b"GET / HTTP/11.1\r\n", 12),
            ("letter as minor", b"GET / HTTP/1.x\r\n", 13),
            ("two-digit minor", b"GET / HTTP/1.10\r\n", 14),
            ("lowercase version", b"GET / http/1.1\r\n", 6),
            ("space after version", b"GET / HTTP/1.1 \r\n", 14),
            ("CR without LF", b"GET / HTTP/1.1\rX\n", 15),
            ("CR CR LF", b"GET / HTTP/1.1\r\r\n", 15),
            ("leading space", b" GET / HTTP/1.1\r\n", 0),
            ("leading empty line", b"\r\nGET / HTTP/1.1\r\n", 0),
            ("empty target", b"GET  HTTP/1.1\r\n", 4),
            ("21-byte method", b"ABCDEFGHIJKLMNOPQRSTU / HTTP/1.1\r\n", 20),
            ("separator in method", b"GE(T / HTTP/1.1\r\n", 2),
            ("tab after method", b"GET\t/ HTTP/1.1\r\n", 3),
            ("SSH banner", b"SSH-2.0-OpenSSH_9.6\r\n", 19),
            ("RESP (Redis)", b"*1\r\n$4\r\nPING\r\n", 2),
            ("PROXY protocol v1", b"PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\r\n", 11),
            ("PROXY protocol v2", b"\r\n\r\n\x00\r\nQUIT\n", 0),
            ("binary garbage", b"\xff\xfe\x00\x01", 0),
            ("NUL first", b"\x00", 0),
        ];
        for (name, bytes, bad) in cases {
            for len in 0..*bad {
                assert_eq!(sniff(&bytes[..len], LIMIT), Sniffed::Incomplete, "{name}: cut before byte {len}");
            }
            for len in bad + 1..=bytes.len() {
                assert_eq!(sniff(&bytes[..len], LIMIT), Sniffed::NotHttp, "{name}: cut after byte {len}");
            }
        }
    }

    #[test]
    fn first_byte_must_be_a_tchar() {
        for b in 0..=u8::MAX {
            let expected = if b"!#$%&'*+-.^_`|~".contains(&b) || b.is_ascii_alphanumeric() {
                Sniffed::Incomplete
            } else {
                Sniffed::NotHttp
            };
            assert_eq!(sniff(&[b], LIMIT), expected, "byte {b:#04x}");
        }
    }

    #[test]
    fn target_bytes_are_visible_ascii() {
        for b in 0..=u8::MAX {
            let expected = if (0x20..=0x7E).contains(&b) { Sniffed::Incomplete } else { Sniffed::NotHttp };
            assert_eq!(sniff(&[b"GET /", &[b][..]].concat(), LIMIT), expected, "byte {b:#04x}");
        }
    }

    #[test]
    fn version_and_line_end_accept_only_their_bytes() {
        let line = b"GET / HTTP/1.1\r\n";
        let start = b"GET / ".len();
        for at in start..line.len() {
            for b in 0..=u8::MAX {
                let fits = match at - start {
                    7 => b.is_ascii_digit(),
                    8 => b == b'\r' || b == b'\n',
                    _ => b == line[at],
                };
                let completes = (at - start == 8 && b == b'\n') || at == line.len() - 1;
                let expected = match (fits, completes) {
                    (false, _) => Sniffed::NotHttp,
                    (true, false) => Sniffed::Incomplete,
                    (true, true) => http(None),
                };
                let input = [&line[..at], &[b][..]].concat();
                assert_eq!(sniff(&input, LIMIT), expected, "byte {b:#04x} at {at}");
            }
        }
    }

    #[test]
    fn limit_counts_the_whole_line_with_its_end() {
        let line = b"GET /socket.io/?EIO=4&transport=polling&sid=abc HTTP/1.1\r\n";
        let full = line.len();
        // The whole line fits exactly, with either ending.
        assert_eq!(sniff(line, full), http(Some("abc")));
        assert_eq!(sniff(&line[..full - 1], full - 1), Sniffed::TooLong, "CR fits, LF does not");
        let lf = concat(&[&line[..full - 2], b"\n"]);
        assert_eq!(sniff(&lf, full - 1), http(Some("abc")));
        // A line that ends only beyond the limit is too long, however much was read.
        assert_eq!(sniff(line, full - 1), Sniffed::TooLong);
        assert_eq!(sniff(&concat(&[line, b"Host: h\r\n\r\n"]), full - 1), Sniffed::TooLong);
        // Every valid prefix: exactly `limit` bytes is too long, one fewer is incomplete.
        for limit in 1..full {
            assert_eq!(sniff(&line[..limit], limit), Sniffed::TooLong, "limit {limit}");
            assert_eq!(sniff(&line[..limit - 1], limit), Sniffed::Incomplete, "limit {limit}, one byte short");
        }
    }

    #[test]
    fn a_long_target_hits_the_limit() {
        let limit = 4096;
        let line = [b"GET /".as_slice(), &[b'a'; 5000]].concat();
        assert_eq!(sniff(&line[..limit - 1], limit), Sniffed::Incomplete);
        assert_eq!(sniff(&line[..limit], limit), Sniffed::TooLong);
        assert_eq!(sniff(&line, limit), Sniffed::TooLong);
    }

    #[test]
    fn not_http_within_the_limit_wins_and_bytes_beyond_it_are_not_read() {
        assert_eq!(sniff(b"GET /\x00", 6), Sniffed::NotHttp);
        assert_eq!(sniff(b"GET /\x00", 5), Sniffed::TooLong);
        assert_eq!(sniff(b"\x16\x03\x01", 1), Sniffed::NotHttp);
        assert_eq!(sniff(b"", 0), Sniffed::Incomplete);
        assert_eq!(sniff(b"G", 0), Sniffed::TooLong);
    }

    /// xorshift64*: deterministic and dependency-free, enough to spread inputs around the grammar.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn pick<'a>(rng: &mut Rng, pieces: &[&'a [u8]]) -> &'a [u8] {
        pieces[rng.below(pieces.len())]
    }

    /// A request line assembled from plausible parts (a third of them then damaged: a byte replaced,
    /// inserted or cut), or a string of random fragments, so that the inputs reach every state of the grammar
    /// and every answer.
    fn fuzz_input(rng: &mut Rng) -> Vec<u8> {
        const METHODS: &[&[u8]] =
            &[b"GET", b"GET", b"get", b"POST", b"M-SEARCH", b"PRI", b"ABCDEFGHIJKLMNOPQRSTU", b""];
        const TARGET: &[&[u8]] = &[
            b"/socket.io/?EIO=4",
            b"/",
            b"/socket.io/",
            b"?",
            b"sid",
            b"=",
            b"&",
            b"%",
            b"%4",
            b"%41",
            b"s%69d",
            b"abc",
            b"CucdsEyTiqO-9vwA",
            b"#",
            b"+",
            b";",
            b"*",
            b"http://h",
            b"sids",
            b"?EIO=4&transport=polling",
            b"?sid=abc",
            b"&sid=a%2Db",
            b"&sid=CucdsEyTiqO-9vwA",
            b"&s%69d=uOKvLkhAjSpgMRGjAAAB",
        ];
        const VERSIONS: &[&[u8]] = &[b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.", b"http/1.1"];
        const ENDS: &[&[u8]] = &[b"\r\n", b"\n", b"\r", b"", b"\r\nHost: h\r\n\r\n"];
        const SOUP: &[&[u8]] = &[b" ", b"GET", b"/", b"HTTP/1.1", b"\r", b"\n", b"\x16\x03\x01", b"PRI * HTTP/2.0"];
        let mut out = Vec::new();
        if rng.below(4) == 0 {
            for _ in 0..rng.below(10) {
                if rng.below(4) == 0 {
                    out.push(rng.next() as u8);
                } else {
                    out.extend_from_slice(pick(rng, SOUP));
                }
            }
            return out;
        }
        out.extend_from_slice(pick(rng, METHODS));
        out.push(b' ');
        for _ in 0..=rng.below(6) {
            out.extend_from_slice(pick(rng, TARGET));
        }
        out.push(b' ');
        out.extend_from_slice(pick(rng, VERSIONS));
        out.extend_from_slice(pick(rng, ENDS));
        if rng.below(3) == 0 {
            let at = rng.below(out.len() + 1);
            match rng.below(3) {
                0 if at < out.len() => out[at] = rng.next() as u8,
                1 => out.insert(at, rng.next() as u8),
                _ => out.truncate(at),
            }
        }
        out
    }

    #[test]
    fn fuzz_never_panics_and_every_answer_but_incomplete_is_final() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut seen = [0usize; 4];
        let mut sids = 0;
        for _ in 0..20_000 {
            let input = fuzz_input(&mut rng);
            let limit = if rng.below(4) == 0 { rng.below(40) } else { LIMIT };
            let result = sniff(&input, limit);
            let window = &input[..input.len().min(limit)];
            let shown = input.escape_ascii().to_string();
            match &result {
                Sniffed::Http { sid } => {
                    assert!(window.contains(&b'\n'), "Http without a line end in {shown:?}");
                    if let Some(sid) = sid {
                        sids += 1;
                        assert!((1..=MAX_SID).contains(&sid.len()), "{shown:?}");
                        assert!(sid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{shown:?}");
                    }
                    seen[0] += 1;
                }
                Sniffed::Incomplete => {
                    assert!(input.len() < limit || input.is_empty(), "Incomplete at the limit: {shown:?}");
                    seen[1] += 1;
                }
                Sniffed::NotHttp => seen[2] += 1,
                Sniffed::TooLong => {
                    assert!(input.len() >= limit, "TooLong under the limit: {shown:?}");
                    seen[3] += 1;
                }
            }
            // Decisions are final: a shorter read either waited or already gave this answer.
            for len in 0..input.len() {
                let earlier = sniff(&input[..len], limit);
                assert!(earlier == Sniffed::Incomplete || earlier == result, "{shown:?} cut at {len}: {earlier:?}");
            }
            let _ = session_id(&input);
        }
        assert!(seen.iter().all(|&n| n > 1000) && sids > 100, "fuzz inputs reach every answer: {seen:?}, {sids} sids");
    }

    #[test]
    fn response_503_exact_bytes() {
        let expected = b"HTTP/1.1 503 Service Unavailable\r\n\
            Content-Type: text/plain; charset=utf-8\r\n\
            Content-Length: 19\r\n\
            Connection: close\r\n\
            Retry-After: 1\r\n\
            \r\n\
            no worker is ready\n";
        assert_eq!(response(503, "Service Unavailable", "no worker is ready"), expected);
    }

    #[test]
    fn response_content_length_is_the_body_length() {
        let cases = [
            (503, "Service Unavailable", "no worker is ready"),
            (408, "Request Timeout", "request line not received in time"),
            (414, "URI Too Long", "request line too long"),
            (400, "Bad Request", "bad request"),
            (400, "Bad Request", "ends with a newline\n"),
            (400, "Bad\r\nX-Injected: 1", "two\r\nlines"),
            (400, "Bad Request", ""),
            (503, "Service Unavailable", "énorme ✓"),
        ];
        for (status, reason, body) in cases {
            let bytes = response(status, reason, body);
            let text = String::from_utf8(bytes).expect("UTF-8");
            let (head, sent) = text.split_once("\r\n\r\n").expect("head and body");
            let mut lines = head.split("\r\n");
            let status_line = lines.next().expect("status line");
            assert!(status_line.starts_with(&format!("HTTP/1.1 {status} ")), "{status_line:?}");
            let headers: Vec<_> = lines.map(|l| l.split_once(": ").expect("header")).collect();
            let length: usize =
                headers.iter().find(|(k, _)| *k == "Content-Length").expect("length").1.parse().unwrap();
            assert_eq!(length, sent.len(), "{text:?}");
            assert!(headers.contains(&("Connection", "close")), "{text:?}");
            assert!(headers.contains(&("Content-Type", "text/plain; charset=utf-8")), "{text:?}");
            assert_eq!(headers.iter().any(|(k, _)| *k == "Retry-After"), status == 503, "{text:?}");
            assert!(!headers.iter().any(|(k, _)| *k == "X-Injected"), "{text:?}");
            assert!(sent.ends_with('\n') && sent.matches('\n').count() == 1 && !sent.contains('\r'), "{sent:?}");
        }
    }

    #[test]
    fn a_request_scanned_as_it_arrives_has_the_length_of_one_scanned_whole() {
        let requests: [&[u8]; 4] = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /p HTTP/1.1\r\nHost: x\r\ncontent-length: 5\r\nX: y\r\n\r\nhello",
            b"POST /p HTTP/1.1\r\nContent-Length: nope\r\nContent-Length: 3\r\n\r\nabc",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r",
        ];
        for request in requests {
            for step in 1..=request.len() {
                let mut scan = RequestScan::default();
                let mut got = None;
                for end in (step..request.len()).step_by(step).chain([request.len()]) {
                    got = scan.length(&request[..end]);
                    assert_eq!(
                        got,
                        request_length(&request[..end]),
                        "{request:?} read {step} bytes at a time, at {end}"
                    );
                }
                assert_eq!(got, request_length(request));
            }
        }
    }

    #[test]
    fn request_length_waits_for_headers_and_the_announced_body() {
        assert_eq!(request_length(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(request_length(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Some(27));
        let post = b"POST /socket.io/?EIO=4&transport=polling&sid=abc HTTP/1.1\r\ncOnTeNt-LeNgTh: 5\r\n\r\n";
        assert_eq!(request_length(post), Some(post.len() + 5));
        let bad = b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n";
        assert_eq!(request_length(bad), Some(bad.len()), "an unparsable length counts as none");
        let huge = b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert_eq!(request_length(huge), Some(huge.len()), "so does one that does not fit");
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(request_length(&[&chunked[..], b"5\r\n"].concat()), Some(chunked.len()));
    }

    /// The one-pass `request_length` agrees with the first, plainer version on every prefix of
    /// heads with odd line ends, repeated, bad and spaced lengths and colons in odd places.
    #[test]
    fn request_length_matches_the_plain_version() {
        fn plain(buf: &[u8]) -> Option<usize> {
            let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
            let body = buf[..end]
                .split(|&b| b == b'\n')
                .filter_map(|line| {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let colon = line.iter().position(|&b| b == b':')?;
                    let (name, value) = line.split_at(colon);
                    name.eq_ignore_ascii_case(b"content-length").then(|| std::str::from_utf8(&value[1..]).ok())?
                })
                .find_map(|value| value.trim().parse::<usize>().ok())
                .unwrap_or(0);
            Some(end.saturating_add(body))
        }
        let heads: [&[u8]; 8] = [
            b"GET http://h:1/ HTTP/1.1\r\nHost: h:1\r\n\r\nbody",
            b"POST / HTTP/1.1\r\nContent-Length: x\r\ncontent-length:  7 \r\n\r\n1234567",
            b"POST / HTTP/1.1\nContent-Length: 3\n\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nContent-Length:3\r\nContent-Length: 9\r\n\r\n",
            b"POST / HTTP/1.1\r\nX-Content-Length: 4\r\nContent-Length : 5\r\n\r\n",
            b"\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: 1\r\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\n\r\n\r\n",
        ];
        for head in heads {
            for cut in 0..=head.len() {
                assert_eq!(
                    request_length(&head[..cut]),
                    plain(&head[..cut]),
                    "{:?}",
                    String::from_utf8_lossy(&head[..cut])
                );
            }
        }
    }
}
