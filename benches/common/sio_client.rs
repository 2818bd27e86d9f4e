//! A small Socket.IO client over WebSocket only (`EIO=4&transport=websocket`), for the benches
//! that drive the chat example with their own clients (`fanout`, `node_workers`): client frames,
//! the handshake (upgrade, Engine.IO open, namespace connect, `whoami`), and the [`Client`] that
//! receives until told to stop.

use std::rc::Rc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Connecting every client of a run may take this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// A handshake step without an answer within this time stalled: the client starts again, at most
/// [`MAX_STALLS`] times per run.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(1);
pub const MAX_STALLS: usize = 20;
/// The largest WebSocket message (frame, or fragments together) the clients accept.
pub const MAX_MESSAGE: usize = 1 << 20;

// WebSocket opcodes (RFC 6455).
pub const OP_CONTINUATION: u8 = 0;
pub const OP_TEXT: u8 = 1;
pub const OP_CLOSE: u8 = 8;
pub const OP_PING: u8 = 9;
pub const OP_PONG: u8 = 10;

/// Client frames must be masked; servers cannot tell one key from another, so a fixed one will do.
const MASK: [u8; 4] = [0x5a, 0x17, 0xc3, 0x81];

/// What a chat broadcast looks like when it arrives: the event and the start of the text.
pub const BROADCAST_PREFIX: &[u8] = br#"42["chat message",""#;

/// The Socket.IO event packet `42["chat message","<phase>:<seq>:<sent µs>:xxx…"]`, the text padded
/// with `x` to `size` bytes (longer only if the numbers need more).
pub fn chat_message(phase: u64, seq: u64, sent_us: u64, size: usize) -> Vec<u8> {
    let head = format!("{phase}:{seq}:{sent_us}:");
    let mut packet = Vec::with_capacity(BROADCAST_PREFIX.len() + size.max(head.len()) + 2);
    packet.extend_from_slice(BROADCAST_PREFIX);
    packet.extend_from_slice(head.as_bytes());
    packet.resize(packet.len() + size.saturating_sub(head.len()), b'x');
    packet.extend_from_slice(br#""]"#);
    packet
}

/// One final, masked client frame.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&MASK);
    frame.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
    frame
}

/// A complete server frame at the start of a buffer: FIN, opcode, and where its payload is.
struct Frame {
    fin: bool,
    opcode: u8,
    payload: std::ops::Range<usize>,
}

/// The frame at the start of `buf`, `None` if it is not all there yet.
fn parse_frame(buf: &[u8]) -> Result<Option<Frame>, String> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b1 & 0x80 != 0 {
        return Err("the server sent a masked frame".into());
    }
    let (len, header) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(n) => (usize::from(u16::from_be_bytes([n[0], n[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(n) => (usize::try_from(u64::from_be_bytes(n.try_into().expect("8 bytes"))).unwrap_or(usize::MAX), 10),
            None => return Ok(None),
        },
        n => (usize::from(n), 2),
    };
    if len > MAX_MESSAGE {
        return Err(format!("a {len}-byte frame from the server (more than {MAX_MESSAGE})"));
    }
    if buf.len() < header + len {
        return Ok(None);
    }
    Ok(Some(Frame { fin: b0 & 0x80 != 0, opcode: b0 & 0x0f, payload: header..header + len }))
}

/// How a client's handshake failed.
pub enum Handshake {
    /// No answer within [`STEP_TIMEOUT`] to this step: worth starting again.
    Stalled(&'static str),
    Failed(String),
}

fn fail(error: String) -> Handshake {
    Handshake::Failed(error)
}

/// `Failed` unless `text` starts with `prefix`.
fn expect(text: &[u8], prefix: &[u8], what: &str) -> Result<(), Handshake> {
    if text.starts_with(prefix) {
        Ok(())
    } else {
        Err(fail(format!("expected {what}, got {:?}", String::from_utf8_lossy(text))))
    }
}

/// What a running [`Client`] hands every text message to (shared by all the clients of a run).
pub trait Receiver {
    /// The clock the receipts are stamped with, µs.
    fn now_us(&self) -> u64;
    /// A complete text message from the server, read at `now_us`; replies go to `out`.
    fn on_text(&self, text: &[u8], now_us: u64, out: &mut Vec<u8>);
}

/// One Socket.IO client over WebSocket, connected to the default namespace.
pub struct Client {
    stream: TcpStream,
    /// Bytes read and not yet parsed.
    buf: Vec<u8>,
    /// The fragments of a message not yet complete.
    partial: Vec<u8>,
    /// The worker that serves it (its `whoami` answer).
    pub worker: u64,
}

impl Client {
    /// WebSocket upgrade, Engine.IO open, Socket.IO connect, then `whoami` (ack 0), which must say
    /// the transport is "websocket". Each answer must come within [`STEP_TIMEOUT`].
    pub async fn connect(port: u16) -> Result<Self, Handshake> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| fail(format!("connect: {e}")))?;
        stream.set_nodelay(true).map_err(|e| fail(format!("TCP_NODELAY: {e}")))?;
        let mut client = Self { stream, buf: Vec::with_capacity(16 * 1024), partial: Vec::new(), worker: 0 };
        let request = format!(
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        client.stream.write_all(request.as_bytes()).await.map_err(|e| fail(format!("send the upgrade: {e}")))?;
        let head_end = loop {
            if let Some(i) = client.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if client.buf.len() > 8192 {
                return Err(fail("no end of the upgrade response within 8 KiB".into()));
            }
            client.read_within("to the upgrade request").await?;
        };
        if !client.buf.starts_with(b"HTTP/1.1 101") {
            let line = String::from_utf8_lossy(&client.buf[..head_end]).lines().next().unwrap_or("").to_owned();
            return Err(fail(format!("the upgrade was answered {line:?}")));
        }
        client.buf.drain(..head_end);
        let open = client.next_text("after the upgrade (the Engine.IO open packet)").await?;
        expect(&open, b"0{", "the Engine.IO open packet")?;
        client.send(b"40").await?;
        let connected = client.next_text("to the namespace connect (40)").await?;
        expect(&connected, b"40", "the namespace connect")?;
        client.send(br#"420["whoami"]"#).await?;
        let answer = client.next_text("to whoami").await?;
        expect(&answer, b"430", "the whoami ack")?;
        let me: Value = serde_json::from_slice(&answer[3..])
            .map_err(|e| fail(format!("a bad whoami ack ({e}): {}", String::from_utf8_lossy(&answer))))?;
        if me[0]["transport"] != "websocket" {
            return Err(fail(format!("whoami says the transport is {}", me[0]["transport"])));
        }
        client.worker = me[0]["worker"].as_u64().ok_or_else(|| fail(format!("no worker id in {me}")))?;
        Ok(client)
    }

    /// Reads more of the handshake, within [`STEP_TIMEOUT`]; `step` names what is awaited.
    async fn read_within(&mut self, step: &'static str) -> Result<(), Handshake> {
        self.buf.reserve(16 * 1024);
        match tokio::time::timeout(STEP_TIMEOUT, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => Err(Handshake::Stalled(step)),
            Ok(Ok(0)) => Err(fail(format!("the server closed the connection (awaiting an answer {step})"))),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(fail(format!("read: {e}"))),
        }
    }

    async fn send(&mut self, text: &[u8]) -> Result<(), Handshake> {
        self.stream.write_all(&client_frame(OP_TEXT, text)).await.map_err(|e| fail(format!("send: {e}")))
    }

    /// The next text message of the handshake, `step` (a ping is answered on the way).
    async fn next_text(&mut self, step: &'static str) -> Result<Vec<u8>, Handshake> {
        loop {
            let mut first = None;
            let mut out = Vec::new();
            self.parse(&mut out, |text, out| {
                if text == b"2" {
                    out.extend(client_frame(OP_TEXT, b"3"));
                } else if first.is_none() {
                    first = Some(text.to_vec());
                }
            })
            .map_err(Handshake::Failed)?;
            // Only the first message is wanted: the server sends nothing else before it is answered.
            if !out.is_empty() {
                self.stream.write_all(&out).await.map_err(|e| fail(format!("send: {e}")))?;
            }
            if let Some(text) = first {
                return Ok(text);
            }
            self.read_within(step).await?;
        }
    }

    /// Parses every complete frame buffered: text messages go to `on_text`, pings are answered and
    /// a close is an error. Replies are appended to `out`.
    fn parse(&mut self, out: &mut Vec<u8>, mut on_text: impl FnMut(&[u8], &mut Vec<u8>)) -> Result<(), String> {
        let mut at = 0;
        while let Some(frame) = parse_frame(&self.buf[at..])? {
            let payload = &self.buf[at + frame.payload.start..at + frame.payload.end];
            match frame.opcode {
                OP_TEXT | OP_CONTINUATION if frame.fin && self.partial.is_empty() => on_text(payload, out),
                OP_TEXT | OP_CONTINUATION => {
                    self.partial.extend_from_slice(payload);
                    if self.partial.len() > MAX_MESSAGE {
                        return Err("a fragmented message larger than the limit".into());
                    }
                    if frame.fin {
                        on_text(&self.partial, out);
                        self.partial.clear();
                    }
                }
                OP_PING => out.extend(client_frame(OP_PONG, payload)),
                OP_PONG => {}
                OP_CLOSE => {
                    return Err(format!("the server closed the WebSocket ({:?})", String::from_utf8_lossy(payload)));
                }
                other => return Err(format!("an unexpected frame (opcode {other})")),
            }
            at += frame.payload.end;
        }
        self.buf.drain(..at);
        Ok(())
    }

    /// Receives until `stop`: every text goes to `shared`; frames from `outgoing` (a sender's) are
    /// written as they come.
    pub async fn run(
        mut self,
        shared: Rc<impl Receiver>,
        mut outgoing: Option<mpsc::UnboundedReceiver<Vec<u8>>>,
        stop: CancellationToken,
    ) -> Result<(), String> {
        let mut out = Vec::new();
        loop {
            self.buf.reserve(16 * 1024);
            tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(()),
                Some(frame) = next_frame(&mut outgoing) => {
                    self.stream.write_all(&frame).await.map_err(|e| format!("send: {e}"))?;
                }
                read = self.stream.read_buf(&mut self.buf) => {
                    match read {
                        Ok(0) => return Err("the server closed the connection".into()),
                        Ok(_) => {}
                        Err(e) => return Err(format!("read: {e}")),
                    }
                    // Every message of this read arrived by now.
                    let now = shared.now_us();
                    self.parse(&mut out, |text, out| shared.on_text(text, now, out))?;
                    if !out.is_empty() {
                        self.stream.write_all(&out).await.map_err(|e| format!("send: {e}"))?;
                        out.clear();
                    }
                }
            }
        }
    }
}

/// The next frame a sender must write; pending for ever for the other clients.
async fn next_frame(outgoing: &mut Option<mpsc::UnboundedReceiver<Vec<u8>>>) -> Option<Vec<u8>> {
    match outgoing {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The clients of a run, connected.
pub struct Connected {
    pub clients: Vec<Client>,
    /// The handshake steps that stalled (those clients started again).
    pub stalls: Vec<&'static str>,
    /// Clients per worker id, in id order.
    pub spread: Vec<(u64, usize)>,
}

/// Connects `count` clients one after the other (so that the balancer spreads them), within
/// [`CONNECT_TIMEOUT`]; a stalled handshake is started again, at most [`MAX_STALLS`] times.
pub async fn connect_all(port: u16, count: usize) -> Result<Connected, String> {
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let mut clients = Vec::with_capacity(count);
    let mut stalls = Vec::new();
    while clients.len() < count {
        let i = clients.len();
        let attempt = tokio::time::timeout_at(deadline, Client::connect(port))
            .await
            .map_err(|_| format!("{i} of {count} clients connected within {CONNECT_TIMEOUT:?}"))?;
        match attempt {
            Ok(client) => clients.push(client),
            Err(Handshake::Stalled(step)) if stalls.len() < MAX_STALLS => stalls.push(step),
            Err(Handshake::Stalled(step)) => {
                return Err(format!("client {i}: no answer {step} within {STEP_TIMEOUT:?}, {MAX_STALLS} times"));
            }
            Err(Handshake::Failed(error)) => return Err(format!("client {i}: {error}")),
        }
    }
    let mut spread: Vec<(u64, usize)> = Vec::new();
    for client in &clients {
        match spread.iter_mut().find(|(id, _)| *id == client.worker) {
            Some((_, n)) => *n += 1,
            None => spread.push((client.worker, 1)),
        }
    }
    spread.sort_unstable();
    Ok(Connected { clients, stalls, spread })
}
