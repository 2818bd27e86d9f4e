//! Plain HTTP requests with `Connection: close`, and a Socket.IO session over HTTP long-polling
//! written out request by request: the same bytes every time, so that the primary does exactly
//! the same work per session whatever the workers are (a `socket.io-client` session varies with
//! timing: how many polls it sends depends on when the answers come).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};

use super::IO_TIMEOUT;

/// Requests of one [`session`], each on a new connection through the primary.
pub const REQUESTS_PER_SESSION: usize = 6;

/// The largest response the client reads.
const MAX_RESPONSE: u64 = 1 << 20;

/// One request on a new connection with `Connection: close`; the status code and the body.
pub fn request(port: u16, method: &str, target: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    let mut message = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    if method != "GET" {
        message.push_str(&format!("Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n", body.len()));
    }
    message.push_str("\r\n");
    let mut bytes = message.into_bytes();
    bytes.extend_from_slice(body);
    // One write: the primary gets the whole request in its first read, as from a browser.
    stream.write_all(&bytes).map_err(|e| format!("{method} {target}: send: {e}"))?;
    let mut raw = Vec::new();
    stream.take(MAX_RESPONSE).read_to_end(&mut raw).map_err(|e| format!("{method} {target}: read: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{method} {target}: no complete response: {:?}", String::from_utf8_lossy(&raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let code = super::status_code(&head).ok_or_else(|| format!("{method} {target}: no status line: {head:?}"))?;
    let body = raw[split + 4..].to_vec();
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    Ok((code, if chunked { dechunk(&body)? } else { body }))
}

/// The body of a chunked response.
fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line = raw.windows(2).position(|w| w == b"\r\n").ok_or("a chunk without its size line")?;
        let size = std::str::from_utf8(&raw[..line]).ok().and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let size = size.ok_or("a chunk size that is not hexadecimal")?;
        raw = &raw[line + 2..];
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(raw.get(..size).ok_or("a chunk cut short")?);
        raw = raw.get(size + 2..).ok_or("a chunk cut short")?;
    }
}

/// `GET /` answered 200.
pub fn get_root(port: u16) -> Result<(), String> {
    match request(port, "GET", "/", b"")? {
        (200, _) => Ok(()),
        (code, body) => Err(format!("GET / answered {code}: {:?}", String::from_utf8_lossy(&body))),
    }
}

/// One Socket.IO session over polling, [`REQUESTS_PER_SESSION`] requests: the Engine.IO handshake,
/// the namespace connect and its answer, a `whoami` event with an ack and the ack, and the close
/// packet, after which the worker drops the session.
pub fn session(port: u16) -> Result<(), String> {
    const PATH: &str = "/socket.io/?EIO=4&transport=polling";
    let (code, open) = request(port, "GET", PATH, b"")?;
    let open = String::from_utf8_lossy(&open).into_owned();
    let sid = (code == 200)
        .then(|| open.strip_prefix('0'))
        .flatten()
        .and_then(|json| serde_json::from_str::<serde_json::Value>(json).ok())
        .and_then(|v| v["sid"].as_str().map(str::to_owned))
        .ok_or_else(|| format!("handshake answered {code} {open:?}"))?;
    let target = format!("{PATH}&sid={sid}");
    let step = |method: &str, body: &[u8], expect: &str| -> Result<(), String> {
        let (code, answer) = request(port, method, &target, body)?;
        let answer = String::from_utf8_lossy(&answer);
        // A poll may bring other packets with the one expected (socketioxide sends its first
        // ping at once): Engine.IO separates them with U+001E.
        if code == 200 && answer.split('\u{1e}').any(|packet| packet.starts_with(expect)) {
            Ok(())
        } else {
            Err(format!("{method} {:?} in session {sid} answered {code} {answer:?}", String::from_utf8_lossy(body)))
        }
    };
    step("POST", b"40", "ok")?;
    step("GET", b"", "40")?;
    step("POST", br#"420["whoami"]"#, "ok")?;
    step("GET", b"", "430")?;
    step("POST", b"1", "ok")
}
