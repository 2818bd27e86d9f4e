//! Where HTTP/1.x requests begin and end in the bytes a client sends, and nothing more: pure, no
//! I/O.
//!
//! A handed-off [`Connection`](crate::Connection) follows the framing of the requests it carries
//! for two reasons: to time out a request head that never ends (slow-header clients would pin the
//! worker's fds forever), and to see the request line of every request after the first, which
//! clusterd never sees on a kept-alive connection (see `PROTOCOL.md`, "Handing a connection
//! back"). It only tracks lengths: the server parses the requests.
//!
//! The framing is RFC 9112's: a head ends with an empty line; a body is chunked if
//! `Transfer-Encoding` ends with `chunked`, else `Content-Length` long, else empty (a request
//! never reads to the end of the stream). Empty lines between requests are skipped. After a
//! request that asks for an upgrade (`Upgrade` header, or `CONNECT`), after anything that is not
//! HTTP/1.x, or after a head longer than [`MAX_HEAD`], the stream is opaque: nothing more is
//! tracked.

/// The longest request head followed; a longer one makes the stream opaque (servers refuse such
/// heads anyway: hyper's limit is about 400 KiB, nginx's 8 KiB per line).
pub(crate) const MAX_HEAD: usize = 64 * 1024;

/// Where the tracker is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Between requests.
    Idle,
    /// Inside a request head.
    Head,
    /// Inside a request body.
    Body,
    /// Not followed any more.
    Opaque,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// The hex size; `ext` once past it (extensions until the line ends).
    Size {
        size: u64,
        digits: u32,
        ext: bool,
    },
    /// The line feed after the size line's carriage return.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    /// The CRLF after a chunk's data.
    DataEnd {
        lf: bool,
    },
    /// Trailer lines after the last chunk; `len` of the current line.
    Trailer {
        len: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Idle,
    Head,
    Fixed { left: u64 },
    Chunked(Chunk),
    Opaque,
}

/// Follows the requests of one connection.
#[derive(Debug, Clone)]
pub(crate) struct Tracker {
    state: State,
    /// The current head's bytes so far.
    head: Vec<u8>,
    /// The last complete head lets the connection live on after its response: HTTP/1.1 without
    /// `Connection: close`. (HTTP/1.0 with `Connection: keep-alive` persists too, but a server may
    /// end its response with the close there, so it never counts.)
    keep_alive: bool,
    /// The stream became opaque because a request asked for another protocol (`Upgrade`, such as
    /// a WebSocket, or `CONNECT`): a long-lived stream, not a malformed one.
    upgraded: bool,
    /// Complete request heads so far.
    heads: u64,
    /// The last complete head was a `HEAD` request: its response has no body.
    head_method: bool,
    /// The last complete head was an Engine.IO long-polling `GET` of a session (see [`Poll`]).
    poll: Option<Poll>,
    /// The last complete head, when its request has no body: what a draining worker gives back
    /// of a safe request its server read and then dropped unanswered (see `PROTOCOL.md`).
    last: Vec<u8>,
    /// `last` is the whole last request.
    bodiless: bool,
}

/// An Engine.IO long-polling `GET` of a session: the server answers it when it has packets for
/// the client (or a ping), so it is usually pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Poll {
    /// Engine.IO protocol 3 (`EIO=3`), whose payloads prefix each packet with its length.
    pub(crate) v3: bool,
}

/// The Engine.IO long-poll a request line asks for, if it is one (`GET`, `transport=polling`,
/// with a session id).
pub(crate) fn long_poll(line: &[u8]) -> Option<Poll> {
    if !line.starts_with(b"GET ") {
        return None;
    }
    engineio_sid(line)?;
    let line = std::str::from_utf8(line).ok()?;
    let query = line.split(' ').nth(1)?.split_once('?')?.1;
    let mut polling = false;
    let mut v3 = false;
    for pair in query.split('&') {
        match pair {
            "transport=polling" => polling = true,
            "EIO=3" => v3 = true,
            _ => {}
        }
    }
    polling.then_some(Poll { v3 })
}

impl Tracker {
    /// A tracker for a stream whose first request has begun (clusterd read its request line).
    pub(crate) fn in_first_request() -> Self {
        Self {
            state: State::Head,
            head: Vec::new(),
            keep_alive: false,
            upgraded: false,
            heads: 0,
            head_method: false,
            poll: None,
            last: Vec::new(),
            bodiless: false,
        }
    }

    /// How many request heads were complete so far (the requests the server may have begun).
    pub(crate) fn heads(&self) -> u64 {
        self.heads
    }

    /// The whole last request, when it is a safe one (`GET`, `HEAD`, `OPTIONS`: a client may
    /// retry it, RFC 9110, 9.2.2) without a body, and its head is complete.
    pub(crate) fn last_safe_request(&self) -> Option<&[u8]> {
        let safe = [&b"GET "[..], b"HEAD ", b"OPTIONS "].iter().any(|m| self.last.starts_with(m));
        (self.bodiless && safe && self.state == State::Idle).then_some(&self.last[..])
    }

    /// The long-poll the last complete head asked for, if it was one.
    pub(crate) fn poll(&self) -> Option<Poll> {
        self.poll
    }

    /// Whether the last complete head was a `HEAD` request.
    pub(crate) fn head_method(&self) -> bool {
        self.head_method
    }

    /// Whether the last complete request head lets the connection carry another request.
    pub(crate) fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    /// Whether a request switched the stream to another protocol (see [`Phase::Opaque`]).
    pub(crate) fn upgraded(&self) -> bool {
        self.upgraded
    }

    pub(crate) fn phase(&self) -> Phase {
        match self.state {
            State::Idle => Phase::Idle,
            State::Head => Phase::Head,
            State::Fixed { .. } | State::Chunked(_) => Phase::Body,
            State::Opaque => Phase::Opaque,
        }
    }

    /// Follows `bytes`, the next ones the client sent. Returns how many it took: all of them,
    /// unless a request after the first begins in them. Then it stops *before* that request's
    /// first byte, in [`Phase::Head`], so the caller can look at the
    /// request before passing it on, and feeds the rest again afterwards.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> usize {
        let mut i = 0;
        while i < bytes.len() {
            match &mut self.state {
                State::Opaque => return bytes.len(),
                State::Idle => {
                    if matches!(bytes[i], b'\r' | b'\n') {
                        i += 1;
                        continue;
                    }
                    self.state = State::Head;
                    self.head.clear();
                    return i;
                }
                State::Head => {
                    // Up to the end of the head, or all of it.
                    let take = &bytes[i..];
                    let before = self.head.len();
                    let end = find_head_end(&self.head, take);
                    let used = end.unwrap_or(take.len());
                    if before + used > MAX_HEAD {
                        self.state = State::Opaque;
                        self.head = Vec::new();
                        return bytes.len();
                    }
                    self.head.extend_from_slice(&take[..used]);
                    i += used;
                    if end.is_some() {
                        let framing = body_of(&self.head);
                        (self.state, self.keep_alive, self.upgraded) =
                            (framing.state, framing.keep_alive, framing.upgraded);
                        self.heads += 1;
                        self.head_method = self.head.starts_with(b"HEAD ");
                        self.poll = request_line(&self.head).and_then(long_poll);
                        self.bodiless = self.state == State::Idle;
                        std::mem::swap(&mut self.head, &mut self.last);
                        self.head.clear();
                    }
                }
                State::Fixed { left } => {
                    let n = (*left).min((bytes.len() - i) as u64);
                    *left -= n;
                    i += n as usize;
                    if *left == 0 {
                        self.state = State::Idle;
                    }
                }
                State::Chunked(chunk) => {
                    let (used, next) = chunk_step(*chunk, &bytes[i..]);
                    i += used;
                    self.state = match next {
                        Some(chunk) => State::Chunked(chunk),
                        None if used == 0 => State::Opaque,
                        None => State::Idle,
                    };
                }
            }
        }
        bytes.len()
    }
}

/// Where the server is in the responses it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// Between responses.
    Idle,
    /// Inside a response head.
    Head,
    Fixed {
        left: u64,
    },
    Chunked(Chunk),
    /// A body without a length: the response ends with the connection.
    UntilClose,
    /// Not followed any more (a switch of protocols, or bytes that are not an HTTP/1.x response).
    Opaque,
}

/// Follows the responses a server writes on one connection, to know when the answer to a request
/// is complete (RFC 9112, 6.3: no body after `HEAD`, `1xx`, `204` and `304`; chunked, or
/// `Content-Length` long, or until the close). Interim `1xx` responses do not count; `101`
/// makes the stream opaque.
#[derive(Debug, Clone)]
pub(crate) struct Responses {
    state: Answer,
    head: Vec<u8>,
    answered: u64,
}

/// The name a draining connection gives a response's `Connection: close` header instead: as long,
/// so the bytes are changed in place, and ignored by clients (see [`Responses::keep_open`]).
pub(crate) const CLOSE_RENAMED: &[u8] = b"X-Draining";

impl Responses {
    pub(crate) fn new() -> Self {
        Self { state: Answer::Idle, head: Vec::new(), answered: 0 }
    }

    /// Final responses complete so far.
    pub(crate) fn answered(&self) -> u64 {
        self.answered
    }

    /// The responses are followed, so the end of each is known.
    pub(crate) fn followed(&self) -> bool {
        !matches!(self.state, Answer::Opaque | Answer::UntilClose)
    }

    /// Between two responses (none partly written), and following them.
    pub(crate) fn between(&self) -> bool {
        self.state == Answer::Idle
    }

    /// Follows `bytes`, the next ones the server wrote; `to_head`: the request they answer is a
    /// `HEAD`.
    pub(crate) fn feed(&mut self, bytes: &[u8], to_head: bool) {
        let mut i = 0;
        while i < bytes.len() {
            match &mut self.state {
                Answer::Opaque | Answer::UntilClose => return,
                Answer::Idle => {
                    self.state = Answer::Head;
                    self.head.clear();
                }
                Answer::Head => {
                    let take = &bytes[i..];
                    let end = find_head_end(&self.head, take);
                    let used = end.unwrap_or(take.len());
                    if self.head.len() + used > MAX_HEAD {
                        self.state = Answer::Opaque;
                        self.head = Vec::new();
                        return;
                    }
                    self.head.extend_from_slice(&take[..used]);
                    i += used;
                    if end.is_some() {
                        let (state, complete) = answer_of(&self.head, to_head);
                        self.state = state;
                        self.head.clear();
                        self.answered += u64::from(complete);
                    }
                }
                Answer::Fixed { left } => {
                    let n = (*left).min((bytes.len() - i) as u64);
                    *left -= n;
                    i += n as usize;
                    if *left == 0 {
                        self.state = Answer::Idle;
                        self.answered += 1;
                    }
                }
                Answer::Chunked(chunk) => {
                    let (used, next) = chunk_step(*chunk, &bytes[i..]);
                    i += used;
                    self.state = match next {
                        Some(chunk) => Answer::Chunked(chunk),
                        None if used == 0 => Answer::Opaque,
                        None => {
                            self.answered += 1;
                            Answer::Idle
                        }
                    };
                }
            }
        }
    }

    /// For a draining connection that will be given back after this response: `bytes` (the next
    /// ones the server writes) with the response head's `Connection: close` header lines renamed
    /// [`CLOSE_RENAMED`], and how many of them to write now (fewer when they end inside a line
    /// that may become such a header: the server writes the rest next). `None`: write them as
    /// they are. A client told `close` must not read on (RFC 9112, 9.6), so it would lose the
    /// requests it pipelined behind this one; the connection goes on, through clusterd, instead.
    pub(crate) fn keep_open(&self, bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
        if !matches!(self.state, Answer::Idle | Answer::Head) {
            return None;
        }
        let head = if self.state == Answer::Idle { &[][..] } else { &self.head[..] };
        // Where the next line starts in `bytes`: a line begun in what was written is past changing.
        let mut at = if head.is_empty() || head.ends_with(b"\n") {
            0
        } else {
            match bytes.iter().position(|&b| b == b'\n') {
                Some(end) => end + 1,
                None => return None,
            }
        };
        // The status line is no header.
        let mut status_line = head.is_empty();
        let mut copy: Option<Vec<u8>> = None;
        let mut limit = bytes.len();
        while at < bytes.len() {
            let line = &bytes[at..];
            let Some(end) = line.iter().position(|&b| b == b'\n') else {
                let name = b"connection:";
                let n = line.len().min(name.len());
                if at > 0 && !status_line && line[..n].eq_ignore_ascii_case(&name[..n]) {
                    limit = at;
                }
                break;
            };
            let text = &line[..end];
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            if text.is_empty() {
                break;
            }
            if !status_line && says_close(text) {
                copy.get_or_insert_with(|| bytes.to_vec())[at..at + CLOSE_RENAMED.len()].copy_from_slice(CLOSE_RENAMED);
            }
            status_line = false;
            at += end + 1;
        }
        if copy.is_none() && limit == bytes.len() {
            return None;
        }
        Some((copy.unwrap_or_else(|| bytes.to_vec()), limit))
    }
}

/// Whether a header line is `Connection` with the `close` option.
fn says_close(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else { return false };
    line[..colon].eq_ignore_ascii_case(b"connection")
        && String::from_utf8_lossy(&line[colon + 1..]).split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))
}

/// The state after a complete response head, and whether that head completed a final response.
fn answer_of(head: &[u8], to_head: bool) -> (Answer, bool) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let version = parts.next().unwrap_or_default();
    let Some(code) = parts.next().and_then(|c| c.parse::<u16>().ok()) else { return (Answer::Opaque, false) };
    if !(version == "HTTP/1.1" || version == "HTTP/1.0") {
        return (Answer::Opaque, false);
    }
    match code {
        101 => return (Answer::Opaque, false),
        // Interim: the final response follows.
        100..=199 => return (Answer::Idle, false),
        204 | 304 => return (Answer::Idle, true),
        _ if to_head => return (Answer::Idle, true),
        _ => {}
    }
    let mut length: Option<u64> = None;
    for header in lines {
        let Some((name, value)) = header.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            let chunked = value.rsplit(',').next().is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            let state = if chunked {
                Answer::Chunked(Chunk::Size { size: 0, digits: 0, ext: false })
            } else {
                Answer::UntilClose
            };
            return (state, false);
        } else if name.eq_ignore_ascii_case("content-length") {
            match value.parse::<u64>() {
                Ok(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ => return (Answer::Opaque, false),
            }
        }
    }
    match length {
        Some(0) => (Answer::Idle, true),
        Some(left) => (Answer::Fixed { left }, false),
        None => (Answer::UntilClose, false),
    }
}

/// Where the head ends in `more` (the index after its empty line), given the `head` so far: a
/// rolling window of the last four bytes, which may start in `head`.
fn find_head_end(head: &[u8], more: &[u8]) -> Option<usize> {
    let mut window = head[head.len().saturating_sub(3)..].iter().fold(0u32, |w, &b| (w << 8) | u32::from(b));
    for (k, &b) in more.iter().enumerate() {
        window = (window << 8) | u32::from(b);
        // CR LF CR LF, or LF LF (a bare LF ends a line too).
        if window == 0x0d0a_0d0a || window & 0xffff == 0x0a0a {
            return Some(k + 1);
        }
    }
    None
}

/// What a complete head says about the stream after it.
struct Framing {
    state: State,
    keep_alive: bool,
    upgraded: bool,
}

impl Framing {
    fn opaque(upgraded: bool) -> Self {
        Self { state: State::Opaque, keep_alive: false, upgraded }
    }
}

/// The state after a complete head.
fn body_of(head: &[u8]) -> Framing {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let method = parts.next().unwrap_or_default();
    let _target = parts.next();
    let version = parts.next().unwrap_or_default();
    if !(version == "HTTP/1.1" || version == "HTTP/1.0") {
        return Framing::opaque(false);
    }
    if method == "CONNECT" {
        return Framing::opaque(true);
    }
    let mut length: Option<u64> = None;
    let mut chunked = false;
    // RFC 9112, 9.3: HTTP/1.1 persists unless told to close.
    let mut keep_alive = version == "HTTP/1.1";
    for header in lines {
        let Some((name, value)) = header.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("upgrade") {
            return Framing::opaque(true);
        } else if name.eq_ignore_ascii_case("connection") {
            if value.split(',').any(|token| token.trim().eq_ignore_ascii_case("close")) {
                keep_alive = false;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.rsplit(',').next().is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            if !chunked {
                // A request body without a length: the server refuses it; nothing to follow.
                return Framing::opaque(false);
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            match value.parse::<u64>() {
                Ok(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ => return Framing::opaque(false),
            }
        }
    }
    let state = if chunked {
        State::Chunked(Chunk::Size { size: 0, digits: 0, ext: false })
    } else {
        match length {
            Some(left) if left > 0 => State::Fixed { left },
            _ => State::Idle,
        }
    };
    Framing { state, keep_alive, upgraded: false }
}

/// One step of a chunked body over `bytes`: how many it took, and the next chunk state (`None`
/// at the end of the body, or, with nothing taken, when the body is malformed).
fn chunk_step(mut chunk: Chunk, bytes: &[u8]) -> (usize, Option<Chunk>) {
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        chunk = match chunk {
            Chunk::Size { size, digits, ext } => match b {
                b'\r' => Chunk::SizeLf { size },
                b'\n' => after_size(size),
                _ if ext => Chunk::Size { size, digits, ext },
                b';' | b' ' | b'\t' => Chunk::Size { size, digits, ext: true },
                _ => match (b as char).to_digit(16) {
                    Some(d) if digits < 15 => Chunk::Size { size: size * 16 + u64::from(d), digits: digits + 1, ext },
                    _ => return (0, None),
                },
            },
            Chunk::SizeLf { size } => match b {
                b'\n' => after_size(size),
                _ => return (0, None),
            },
            Chunk::Data { left } => {
                let n = left.min((bytes.len() - i) as u64);
                i += n as usize;
                let left = left - n;
                if left == 0 {
                    chunk = Chunk::DataEnd { lf: false };
                } else {
                    chunk = Chunk::Data { left };
                }
                continue;
            }
            Chunk::DataEnd { lf: false } if b == b'\r' => Chunk::DataEnd { lf: true },
            Chunk::DataEnd { .. } if b == b'\n' => Chunk::Size { size: 0, digits: 0, ext: false },
            Chunk::DataEnd { .. } => return (0, None),
            Chunk::Trailer { len } => match b {
                b'\n' if len == 0 => return (i + 1, None),
                b'\n' => Chunk::Trailer { len: 0 },
                b'\r' => Chunk::Trailer { len },
                _ => Chunk::Trailer { len: len + 1 },
            },
        };
        i += 1;
    }
    (i, Some(chunk))
}

fn after_size(size: u64) -> Chunk {
    if size == 0 { Chunk::Trailer { len: 0 } } else { Chunk::Data { left: size } }
}

/// Whether `bytes` start with a complete HTTP/1.x request line.
pub(crate) fn starts_with_request_line(bytes: &[u8]) -> bool {
    request_line(bytes).is_some_and(|line| line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0"))
}

/// The first line of `bytes` without its line end, once it is complete.
pub(crate) fn request_line(bytes: &[u8]) -> Option<&[u8]> {
    let end = bytes.iter().position(|&b| b == b'\n')?;
    let line = &bytes[..end];
    Some(line.strip_suffix(b"\r").unwrap_or(line))
}

/// The Engine.IO session a request line names: the `sid` query parameter of a request that also
/// has `EIO` (1 to 64 characters of `[A-Za-z0-9_-]`, as clusterd accepts).
pub(crate) fn engineio_sid(line: &[u8]) -> Option<&str> {
    let line = std::str::from_utf8(line).ok()?;
    let target = line.split(' ').nth(1)?;
    let query = target.split_once('?')?.1;
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    let mut engine_io = false;
    let mut sid = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "EIO" => engine_io = true,
            "sid" => sid = Some(value),
            _ => {}
        }
    }
    let sid = sid.filter(|s| {
        (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })?;
    engine_io.then_some(sid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engineio_sids() {
        assert_eq!(engineio_sid(b"GET /socket.io/?EIO=4&transport=polling&sid=Ab_-1 HTTP/1.1"), Some("Ab_-1"));
        assert_eq!(engineio_sid(b"POST /socket.io/?sid=x&EIO=4 HTTP/1.1"), Some("x"));
        assert_eq!(engineio_sid(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1"), None, "a handshake");
        assert_eq!(engineio_sid(b"GET /app?sid=x HTTP/1.1"), None, "not Engine.IO");
        assert_eq!(engineio_sid(b"GET /?EIO=4&sid=a%20b HTTP/1.1"), None);
        assert_eq!(engineio_sid(b"GET /?EIO=4&sid= HTTP/1.1"), None);
        assert_eq!(engineio_sid(b"\xff\xfe"), None);
    }

    /// Feeds `stream` in pieces of `step` bytes; returns the offsets where later requests began.
    fn starts(stream: &[u8], step: usize) -> (Vec<usize>, Phase) {
        let mut t = Tracker::in_first_request();
        let mut at = 0;
        let mut found = Vec::new();
        while at < stream.len() {
            let end = (at + step).min(stream.len());
            let used = t.feed(&stream[at..end]);
            if used < end - at {
                found.push(at + used);
                assert_eq!(t.phase(), Phase::Head);
                // Feed the rest of the piece after the stop.
                let rest = t.feed(&stream[at + used..end]);
                assert_eq!(rest, end - at - used, "no second stop right at the start");
            }
            at = end;
        }
        (found, t.phase())
    }

    fn check(stream: &[u8], expected: &[usize], phase: Phase) {
        for step in [1, 2, 3, 7, stream.len().max(1)] {
            assert_eq!(
                starts(stream, step),
                (expected.to_vec(), phase),
                "step {step}: {:?}",
                String::from_utf8_lossy(stream)
            );
        }
    }

    #[test]
    fn requests_without_bodies() {
        let a = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let b = b"GET /b?sid=x HTTP/1.1\r\nHost: x\r\n\r\n";
        check(a, &[], Phase::Idle);
        check(&[&a[..], b].concat(), &[a.len()], Phase::Idle);
        check(&[&a[..], b"\r\n", b].concat(), &[a.len() + 2], Phase::Idle);
        check(&a[..10], &[], Phase::Head);
    }

    #[test]
    fn content_length_bodies() {
        let a = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        let b = b"GET /b HTTP/1.1\r\n\r\n";
        check(&[&a[..], b].concat(), &[a.len()], Phase::Idle);
        check(&a[..a.len() - 1], &[], Phase::Body);
        // A body that looks like a request is still body.
        let tricky = b"POST / HTTP/1.1\r\ncontent-length: 18\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        check(tricky, &[], Phase::Idle);
    }

    #[test]
    fn chunked_bodies_with_extensions_and_trailers() {
        let a = b"POST /a HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5;x=y\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
        let b = b"GET /b HTTP/1.1\r\n\r\n";
        check(&[&a[..], b].concat(), &[a.len()], Phase::Idle);
        check(&a[..a.len() - 3], &[], Phase::Body);
    }

    #[test]
    fn upgrades_connect_and_other_protocols_are_opaque() {
        check(
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            &[],
            Phase::Opaque,
        );
        check(b"CONNECT a:1 HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n", &[], Phase::Opaque);
        check(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &[], Phase::Opaque);
        check(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nxx", &[], Phase::Opaque);
        check(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx", &[], Phase::Opaque);
        check(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", &[], Phase::Opaque);
    }

    #[test]
    fn a_head_over_the_limit_is_opaque() {
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD + 10, b'a');
        let mut t = Tracker::in_first_request();
        assert_eq!(t.feed(&long), long.len());
        assert_eq!(t.phase(), Phase::Opaque);
    }

    #[test]
    fn a_stop_is_before_the_next_request() {
        let mut t = Tracker::in_first_request();
        let two = b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        let used = t.feed(two);
        assert_eq!((used, t.phase()), (18, Phase::Head));
        assert_eq!(t.feed(&two[used..]), 18);
        assert_eq!(t.phase(), Phase::Idle);
    }

    /// Whether a draining worker may give a connection back after each request, or must let it end.
    #[test]
    fn keep_alive_and_upgrades_of_the_last_head() {
        let after = |stream: &[u8]| {
            let mut t = Tracker::in_first_request();
            t.feed(stream);
            (t.keep_alive(), t.upgraded())
        };
        assert_eq!(after(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), (true, false));
        assert_eq!(after(b"GET / HTTP/1.1\r\nconnection: Keep-Alive, CLOSE\r\n\r\n"), (false, false));
        assert_eq!(after(b"GET / HTTP/1.0\r\n\r\n"), (false, false));
        assert_eq!(
            after(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
            (false, false),
            "its end may be the close"
        );
        assert_eq!(after(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"), (false, true));
        assert_eq!(after(b"CONNECT a:1 HTTP/1.1\r\n\r\n"), (false, true));
        assert_eq!(after(b"PRI * HTTP/2.0\r\n\r\n"), (false, false), "opaque, not upgraded");
        assert_eq!(after(b"GET / HTTP/1.1\r\n"), (false, false), "no complete head yet");
    }

    /// Feeds `stream` to a response tracker in pieces of `step`; returns the answers counted and
    /// whether it is between responses.
    fn answers(stream: &[u8], to_head: bool) -> Vec<(u64, bool)> {
        [1, 2, 5, stream.len().max(1)]
            .iter()
            .map(|&step| {
                let mut r = Responses::new();
                for piece in stream.chunks(step) {
                    r.feed(piece, to_head);
                }
                (r.answered(), r.between())
            })
            .collect()
    }

    #[test]
    fn responses_end_by_their_framing() {
        let all = |stream: &[u8], to_head: bool, expected: (u64, bool)| {
            for got in answers(stream, to_head) {
                assert_eq!(got, expected, "{:?}", String::from_utf8_lossy(stream));
            }
        };
        all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", false, (1, true));
        all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhell", false, (0, false));
        all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true, (1, true));
        all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", false, (1, true));
        all(b"HTTP/1.1 100 Continue\r\n\r\n", false, (0, true));
        all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nHTTP/1.1 304 Not Modified\r\n\r\n", false, (2, true));
        all(
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\n\r\nbody until the close",
            false,
            (1, false),
        );
        all(b"HTTP/1.1 101 Switching Protocols\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", false, (0, false));
        all(b"SSH-2.0-x\r\n\r\n", false, (0, false));
        let mut r = Responses::new();
        r.feed(b"HTTP/1.1 200 OK\r\n\r\n", false);
        assert!(!r.followed(), "delimited by the close");
    }

    #[test]
    fn a_draining_connection_hides_a_responses_close() {
        let r = Responses::new();
        let hyper = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok";
        let (bytes, limit) = r.keep_open(hyper).expect("renamed");
        assert_eq!(limit, hyper.len());
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nX-Draining: close\r\ncontent-length: 2\r\n\r\nok"
        );
        assert_eq!(r.keep_open(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n"), None);
        assert_eq!(r.keep_open(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nconnection: close\r\n"), None, "body");
        // A line that may become the header is written with the rest of it.
        let (_, limit) = r.keep_open(b"HTTP/1.1 200 OK\r\nConn").expect("held");
        assert_eq!(limit, 17);
        let mut r = Responses::new();
        r.feed(b"HTTP/1.1 200 OK\r\n", false);
        let (bytes, limit) = r.keep_open(b"Connection: Close\r\n\r\n").expect("renamed");
        assert_eq!((&bytes[..limit], limit), (&b"X-Draining: Close\r\n\r\n"[..], 21));
        r.feed(b"Connection", false);
        assert_eq!(r.keep_open(b": close\r\n\r\n"), None, "begun: past changing");
    }

    #[test]
    fn long_polls() {
        assert_eq!(long_poll(b"GET /socket.io/?EIO=4&transport=polling&t=x&sid=Ab HTTP/1.1"), Some(Poll { v3: false }));
        assert_eq!(long_poll(b"GET /socket.io/?EIO=3&transport=polling&sid=Ab HTTP/1.1"), Some(Poll { v3: true }));
        assert_eq!(long_poll(b"POST /socket.io/?EIO=4&transport=polling&sid=Ab HTTP/1.1"), None, "a send");
        assert_eq!(long_poll(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1"), None, "a handshake");
        assert_eq!(long_poll(b"GET /socket.io/?EIO=4&transport=websocket&sid=Ab HTTP/1.1"), None);
        let mut t = Tracker::in_first_request();
        t.feed(b"GET /socket.io/?EIO=4&transport=polling&sid=Ab HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(t.poll(), Some(Poll { v3: false }));
    }

    #[test]
    fn request_heads_are_counted_with_their_method() {
        let mut t = Tracker::in_first_request();
        let two = b"GET / HTTP/1.1\r\n\r\nHEAD / HTTP/1.1\r\n\r\n";
        let used = t.feed(two);
        assert_eq!((t.heads(), t.head_method()), (1, false));
        t.feed(&two[used..]);
        assert_eq!((t.heads(), t.head_method()), (2, true));
    }

    #[test]
    fn request_lines() {
        assert!(starts_with_request_line(b"GET / HTTP/1.1\r\nHost"));
        assert!(starts_with_request_line(b"GET / HTTP/1.0\n"));
        assert!(!starts_with_request_line(b"GET / HTTP/1.1"));
        assert!(!starts_with_request_line(b"\x16\x03\x01\x02\x00\n"));
        assert_eq!(request_line(b"GET /x HTTP/1.1\r\n"), Some(&b"GET /x HTTP/1.1"[..]));
    }
}
