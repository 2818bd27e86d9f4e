//! One Node.js worker's IPC channel (`--protocol node`): what `cluster.fork()` gives a worker,
//! spoken by clusterd.
//!
//! The worker inherits one end of a `SOCK_STREAM` socket pair as fd 3 (`NODE_CHANNEL_FD`), with
//! `NODE_CHANNEL_SERIALIZATION_MODE`, `NODE_UNIQUE_ID` (fresh for every process) and
//! `NODE_APP_INSTANCE` (its slot, as PM2 sets it). On the channel:
//!
//! - `{cmd: "NODE_CLUSTER", act: "online"}`: the worker runs (ready, see [`NodeLink::next`]);
//!   `queryServer` (a `server.listen()` in the worker) is answered with a round-robin reply, and
//!   its connections come as `newconn` handles; `exitedAfterDisconnect` is acknowledged; a drain
//!   is `act: "disconnect"`.
//! - connections go as `NODE_HANDLE` messages (`net.Socket`, `{type: "sticky:connection", data:
//!   <the request clusterd read>}`), several in flight, each until the worker's
//!   `NODE_HANDLE_ACK` (`writer.rs`);
//! - `{type: "sticky:connection" | "sticky:disconnection", data: <sid>}` feed the session table;
//! - `@socket.io/cluster-adapter` messages (`source: "_sio_adapter"`) go to the relay
//!   (`relay.rs`) as the bytes they came in.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use super::frame::{BufferTemplate, Frame, FrameDecoder, Mode};
use super::value::Value;
use super::writer::{Control, Out};
use crate::listener::Handoff;
use crate::supervisor::link::{Heard, Said};
use crate::supervisor::spawn::{SpawnSpec, Spawned};
use crate::supervisor::worker::{Launch, Settings};

/// The fd number of the channel in the worker (what `child_process.fork` uses too).
const CHANNEL_FD: u32 = 3;
/// The largest message a worker may send.
const MAX_MESSAGE: usize = 32 * 1024 * 1024;
/// How long a connection handed over without a session id counts as a handshake in progress
/// (for least-connection) if the worker reports no session for it.
const HANDSHAKE_WINDOW: Duration = Duration::from_secs(5);

pub struct NodeLink {
    read: tokio::net::unix::OwnedReadHalf,
    decoder: FrameDecoder,
    open: bool,
    mode: Mode,
    key: u64,
    out: mpsc::Sender<Out>,
    control: mpsc::UnboundedSender<Control>,
    /// Handoffs the writer could not deliver (the worker refused them).
    failed: mpsc::UnboundedReceiver<Option<u32>>,
    relay: Option<mpsc::Sender<super::relay::Input>>,
    /// Connections handed over without a session id, oldest first: each becomes a session when
    /// the worker reports one, or stops counting after [`HANDSHAKE_WINDOW`].
    handshakes: VecDeque<Instant>,
    /// Fires when the oldest handshake's window ends. Kept from one call of [`NodeLink::next`]
    /// to the next and reset only when the oldest handshake changes: a timer made afresh for
    /// every call cost a registration in the timer wheel per message heard.
    window: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// Sessions this worker reported that count as its connections.
    sessions: HashSet<String>,
    /// This side's `seq` of cluster messages.
    seq: u64,
    /// `queryServer` questions being answered, by the seq given to the dispatcher: the worker's seq
    /// and what it asked for.
    listens: HashMap<u32, Query>,
    next_listen: u32,
    /// The key of each listener group the worker asked for (newconn messages carry it).
    keys: HashMap<u32, String>,
    /// What the worker task has yet to hear.
    pending: VecDeque<Said>,
    /// Read buffer.
    chunk: Vec<u8>,
    /// The sticky connection message around its request, encoded once (advanced mode).
    sticky: Option<BufferTemplate>,
    slot: u32,
    /// Messages of this worker's that were dropped (`dropped` in `status`).
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// A `queryServer` being answered.
struct Query {
    seq: Value,
    key: String,
    address: Option<String>,
    port: u16,
    address_type: i64,
}

impl NodeLink {
    pub async fn start(settings: &Settings, launch: &Launch) -> Result<(Self, Spawned), String> {
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
            .map_err(|e| format!("cannot create the IPC socket pair: {e}"))?;
        let stream = std::os::unix::net::UnixStream::from(ours);
        stream.set_nonblocking(true).map_err(|e| format!("cannot make the IPC socket non-blocking: {e}"))?;
        let (read, write) = tokio::net::UnixStream::from_std(stream)
            .map_err(|e| format!("cannot register the IPC socket: {e}"))?
            .into_split();
        let mode = Mode::from(settings.serialization);
        let env = vec![
            ("NODE_CHANNEL_FD".to_owned(), CHANNEL_FD.to_string()),
            ("NODE_CHANNEL_SERIALIZATION_MODE".to_owned(), mode.as_str().to_owned()),
            // Node never reuses a worker id; neither does clusterd (one per process).
            ("NODE_UNIQUE_ID".to_owned(), launch.incarnation.to_string()),
            ("NODE_APP_INSTANCE".to_owned(), launch.slot.to_string()),
            (clusterd_worker::protocol::ENV_WORKER_ID.to_owned(), launch.slot.to_string()),
            (clusterd_worker::protocol::ENV_WORKER_COUNT.to_owned(), launch.count.to_string()),
            (clusterd_worker::protocol::ENV_GENERATION.to_owned(), launch.generation.to_string()),
        ];
        let spec =
            SpawnSpec { program: settings.program.clone(), args: settings.args.clone(), env, ipc: theirs, bus: None };
        let spawned = settings
            .spawner
            .spawn(spec)
            .await
            .map_err(|e| format!("cannot start {}: {e}", settings.program.to_string_lossy()))?;
        let super::writer::Writer { out, control, failed, queued } = super::writer::start(write);
        if let Some(relay) = &settings.node_relay {
            let join = super::relay::Input::Join {
                key: launch.incarnation,
                worker_id: launch.incarnation,
                out: out.clone(),
                queued,
                dropped: std::sync::Arc::clone(&launch.dropped),
            };
            let _ = relay.send(join).await;
        }
        let link = Self {
            read,
            decoder: FrameDecoder::with_max_frame(mode, MAX_MESSAGE),
            open: true,
            mode,
            key: launch.incarnation,
            out,
            control,
            failed,
            relay: settings.node_relay.clone(),
            handshakes: VecDeque::new(),
            window: Box::pin(sleep_until(Instant::now())),
            sessions: HashSet::new(),
            seq: 0,
            listens: HashMap::new(),
            next_listen: 1,
            keys: HashMap::new(),
            pending: VecDeque::new(),
            chunk: Vec::with_capacity(64 * 1024),
            sticky: BufferTemplate::new(mode, |request| sticky_connection(Value::buffer(request))),
            slot: launch.slot,
            dropped: std::sync::Arc::clone(&launch.dropped),
        };
        Ok((link, spawned))
    }

    pub fn open(&self) -> bool {
        self.open || !self.pending.is_empty()
    }

    /// The next thing worth reporting. Cancel-safe: bytes read stay in the decoder, and a frame
    /// is handled whole (without awaiting) before anything else.
    pub async fn next(&mut self) -> Heard {
        loop {
            if let Some(said) = self.pending.pop_front() {
                return Heard::Said(said);
            }
            if !self.open {
                return Heard::End;
            }
            // The worker acknowledges every connection: that message is recognised by its bytes,
            // neither copied out nor decoded.
            let mode = self.mode;
            if self.decoder.take_if(|payload| is_handle_ack(mode, payload)) {
                let _ = self.control.send(Control::Ack);
                continue;
            }
            match self.decoder.next_frame() {
                Ok(Some(frame)) => {
                    if let Err(why) = self.frame(frame) {
                        self.open = false;
                        return Heard::Violation(format!("node channel: {why}"));
                    }
                    continue;
                }
                Ok(None) => {}
                Err(error) => {
                    self.open = false;
                    return Heard::Violation(format!("node channel: {error}"));
                }
            }
            let expiry = self.handshakes.front().map(|at| *at + HANDSHAKE_WINDOW);
            // Every handshake at or before the deadline it fired for is gone by then (below), so
            // an unchanged deadline is a timer still to fire.
            if let Some(at) = expiry
                && self.window.deadline() != at
            {
                self.window.as_mut().reset(at);
            }
            tokio::select! {
                read = self.read.read_buf(&mut self.chunk) => match read {
                    Ok(0) | Err(_) => {
                        self.open = false;
                        return Heard::End;
                    }
                    Ok(_) => {
                        self.decoder.feed(&self.chunk);
                        self.chunk.clear();
                    }
                },
                Some(group) = self.failed.recv() => return Heard::Said(Said::Closed(vec![group])),
                () = self.window.as_mut(), if expiry.is_some() => {
                    // This one, and every other whose window is over by now, in one report.
                    self.handshakes.pop_front();
                    let now = Instant::now();
                    let mut closed = vec![None];
                    while self.handshakes.front().is_some_and(|at| *at + HANDSHAKE_WINDOW <= now) {
                        self.handshakes.pop_front();
                        closed.push(None);
                    }
                    return Heard::Said(Said::Closed(closed));
                }
            }
        }
    }

    /// Acts on one message, queueing what the worker task must hear.
    fn frame(&mut self, frame: Frame) -> Result<(), String> {
        let [cmd, source, kind] = frame.select(&[&["cmd"], &["source"], &["type"]]).map_err(|e| e.to_string())?;
        if source.as_ref().and_then(Value::as_str) == Some("_sio_adapter") {
            if let Some(relay) = &self.relay {
                // The relay's queue is deep; a full one means it is far behind, and the adapter's
                // own timeouts cover a lost message. Counted with the worker's drops; said once.
                if relay.try_send(super::relay::Input::Frame { key: self.key, frame }).is_err()
                    && self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0
                {
                    tracing::warn!(worker = self.slot, "node relay: queue full, adapter messages are dropped");
                }
            }
            return Ok(());
        }
        match cmd.as_ref().and_then(Value::as_str) {
            Some("NODE_HANDLE_ACK") => {
                let _ = self.control.send(Control::Ack);
                return Ok(());
            }
            Some("NODE_HANDLE_NACK") => {
                let _ = self.control.send(Control::Nack);
                return Ok(());
            }
            Some("NODE_CLUSTER") => return self.cluster(&frame.decode().map_err(|e| e.to_string())?),
            // NODE_SOCKET_* and other internal messages: nothing to do.
            Some(cmd) if cmd.starts_with("NODE_") => return Ok(()),
            _ => {}
        }
        let sid = || -> Option<String> {
            let [data] = frame.select(&[&["data"]]).ok()?;
            data.as_ref().and_then(Value::as_str).map(str::to_owned)
        };
        match kind.as_ref().and_then(Value::as_str) {
            Some("sticky:connection") => {
                let Some(sid) = sid() else { return Ok(()) };
                // The oldest handshake in progress became this session: it counts until it closes.
                if self.handshakes.pop_front().is_some() {
                    self.sessions.insert(sid.clone());
                }
                self.pending.push_back(Said::SessionOpen { seq: None, sid });
            }
            Some("sticky:disconnection") => {
                let Some(sid) = sid() else { return Ok(()) };
                if self.sessions.remove(&sid) {
                    self.pending.push_back(Said::Closed(vec![None]));
                }
                self.pending.push_back(Said::SessionClose { sid });
            }
            // Messages to the primary that clusterd has no use for.
            _ => {}
        }
        Ok(())
    }

    /// A `NODE_CLUSTER` message from the worker.
    fn cluster(&mut self, message: &Value) -> Result<(), String> {
        let act = message.get("act").and_then(Value::as_str);
        match act {
            Some("online") => {
                self.pending.push_back(Said::Greeted);
                self.pending.push_back(Said::Ready);
            }
            Some("queryServer") => {
                let seq = message.get("seq").cloned().unwrap_or(Value::Undefined);
                let address = message.get("address").and_then(Value::as_str).map(str::to_owned);
                let port = message.get("port").and_then(Value::as_f64).unwrap_or(0.0);
                let address_type = message.get("addressType").and_then(Value::as_i64).unwrap_or(4);
                let key = format!(
                    "{}:{}:{}:{}:{}",
                    address.as_deref().unwrap_or(""),
                    port,
                    address_type,
                    message.get("fd").and_then(Value::as_i64).map_or(String::new(), |fd| fd.to_string()),
                    message.get("index").and_then(Value::as_i64).unwrap_or(0),
                );
                if !(0.0..=65535.0).contains(&port) || port.fract() != 0.0 || !matches!(address_type, 4 | 6) {
                    // UDP, pipes and odd ports are not clusterd's to serve: refuse, not hang.
                    self.reply_query(&Query { seq, key, address, port: 0, address_type }, Err(-22));
                    return Ok(());
                }
                let query = Query { seq, key, address, port: port as u16, address_type };
                let addr = match (&query.address, address_type) {
                    (Some(host), 6) => format!("[{host}]:{}", query.port),
                    (Some(host), _) => format!("{host}:{}", query.port),
                    (None, 6) => format!("[::]:{}", query.port),
                    (None, _) => format!("0.0.0.0:{}", query.port),
                };
                let id = self.next_listen;
                self.next_listen = self.next_listen.wrapping_add(1);
                self.listens.insert(id, query);
                self.pending.push_back(Said::Listen { seq: id, addr });
            }
            Some("exitedAfterDisconnect") => {
                if let Some(seq) = message.get("seq").cloned() {
                    self.send_cluster(vec![("ack", seq)]);
                }
            }
            // listening, close, and acks of newconn (`accepted`): nothing to do.
            _ => {}
        }
        Ok(())
    }

    /// Sends `{cmd: "NODE_CLUSTER", ...fields, seq}` to the worker.
    fn send_cluster(&mut self, fields: Vec<(&str, Value)>) {
        let seq = self.next_seq();
        let mut entries = vec![("cmd", Value::from("NODE_CLUSTER"))];
        entries.extend(fields);
        entries.push(("seq", seq));
        self.send(&Value::object(entries));
    }

    fn next_seq(&mut self) -> Value {
        let seq = self.seq;
        self.seq += 1;
        Value::from(seq)
    }

    fn send(&mut self, message: &Value) {
        match Frame::encode(self.mode, message) {
            Ok(frame) => {
                if self.out.try_send(Out::Frame(frame.into_raw().into())).is_err() {
                    tracing::warn!(
                        worker = self.slot,
                        "node channel: the worker's queue is full; a message was dropped"
                    );
                }
            }
            Err(error) => tracing::error!(worker = self.slot, %error, "node channel: cannot encode a message"),
        }
    }

    /// Answers a `queryServer`: the round-robin reply (clusterd keeps the socket and sends each
    /// connection as `newconn`), or a bind error as a negative errno.
    fn reply_query(&mut self, query: &Query, result: Result<u16, i64>) {
        let mut fields = vec![
            ("errno", result.err().map_or(Value::Null, Value::from)),
            ("key", Value::from(query.key.as_str())),
            ("ack", query.seq.clone()),
            ("data", Value::Null),
        ];
        if let Ok(port) = result {
            let family = if query.address_type == 6 { "IPv6" } else { "IPv4" };
            let address = query
                .address
                .clone()
                .unwrap_or_else(|| if query.address_type == 6 { "::" } else { "0.0.0.0" }.to_owned());
            fields.push((
                "sockname",
                Value::object([
                    ("address", Value::from(address)),
                    ("family", Value::from(family)),
                    ("port", Value::from(u32::from(port))),
                ]),
            ));
        }
        self.send_cluster(fields);
    }

    /// clusterd's answer to a `queryServer`.
    pub async fn listening(&mut self, seq: u32, result: clusterd_worker::protocol::ListenResult, group: Option<u32>) {
        let Some(query) = self.listens.remove(&seq) else { return };
        match result {
            clusterd_worker::protocol::ListenResult::Bound { addr } => {
                let port = addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(query.port);
                if let Some(group) = group {
                    self.keys.insert(group, query.key.clone());
                }
                self.reply_query(&query, Ok(port));
            }
            clusterd_worker::protocol::ListenResult::Failed { reason } => {
                tracing::warn!(worker = self.slot, "a server.listen() of the worker failed: {reason}");
                // UV_EADDRINUSE is what Node reports for most bind failures a worker can act on.
                let errno = if reason.contains("in use") { -98 } else { -13 };
                self.reply_query(&query, Err(errno));
            }
        }
    }

    /// Hands a connection over: a sticky connection (with the request clusterd read) for the
    /// main listeners, a cluster `newconn` for a listener the worker asked for.
    pub async fn hand_over(&mut self, handoff: Handoff) -> Option<Option<u32>> {
        let group = handoff.group;
        let frame = match (group, &self.sticky) {
            (None, Some(template)) => template.frame(&handoff.initial).ok_or_else(|| "a request over 4 GiB".to_owned()),
            (None, None) => {
                let data = match self.mode {
                    Mode::Advanced => Value::buffer(handoff.initial),
                    // A string: `socket.unshift()` takes it, a `{type: "Buffer"}` object it does not.
                    Mode::Json => Value::from(String::from_utf8_lossy(&handoff.initial).into_owned()),
                };
                Frame::encode(self.mode, &sticky_connection(data)).map(Frame::into_raw).map_err(|e| e.to_string())
            }
            (Some(group), _) => {
                let key = self.keys.get(&group).cloned().unwrap_or_default();
                let seq = self.next_seq();
                let message = Value::object([
                    ("cmd", Value::from("NODE_HANDLE")),
                    ("type", Value::from("net.Native")),
                    (
                        "msg",
                        Value::object([
                            ("cmd", Value::from("NODE_CLUSTER")),
                            ("act", Value::from("newconn")),
                            ("key", Value::from(key)),
                            ("seq", seq),
                        ]),
                    ),
                ]);
                Frame::encode(self.mode, &message).map(Frame::into_raw).map_err(|e| e.to_string())
            }
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                tracing::error!(worker = self.slot, %error, "node channel: cannot encode a handle message");
                return Some(group);
            }
        };
        let handle = Out::Handle { frame: frame.into(), fd: handoff.fd, group };
        if !self.open || self.out.send(handle).await.is_err() {
            return Some(group);
        }
        if group.is_none() && handoff.sid.is_none() {
            // A handshake (or plain HTTP): counted until the worker reports its session.
            self.handshakes.push_back(Instant::now());
            None
        } else {
            // Routed by session, or a plain server connection: the worker does not report its
            // close, so it counts only while it is being handed over.
            self.pending.push_back(Said::Closed(vec![group]));
            None
        }
    }

    /// Graceful stop, as Node's `worker.kill()`: `act: "disconnect"` (the worker closes its
    /// servers and its channel), SIGTERM once the channel is closed, SIGKILL at the end of the
    /// grace time.
    pub async fn drain(&mut self, _grace: Duration) -> bool {
        let seq = self.next_seq();
        let message =
            Value::object([("cmd", Value::from("NODE_CLUSTER")), ("act", Value::from("disconnect")), ("seq", seq)]);
        // Waits (bounded) for room rather than lose the one message that makes the worker go;
        // without it, the grace time's SIGKILL still ends the worker.
        if let Ok(frame) = Frame::encode(self.mode, &message) {
            let out = Out::Last(frame.into_raw().into());
            if self.out.send_timeout(out, Duration::from_secs(1)).await.is_err() {
                tracing::warn!(worker = self.slot, "node channel: could not send the disconnect");
            }
        }
        false
    }

    /// The process is gone: the relay forgets it and tells the others.
    pub async fn gone(&mut self) {
        if let Some(relay) = &self.relay {
            let _ = relay.send(super::relay::Input::Leave { key: self.key }).await;
        }
    }
}

/// The message that hands a connection of clusterd's own listeners to a worker, as
/// `@socket.io/sticky`'s primary sends it: the worker's `setupWorker` puts `data` (the request
/// clusterd read) back in front of the socket.
fn sticky_connection(data: Value) -> Value {
    Value::object([
        ("cmd", Value::from("NODE_HANDLE")),
        ("type", Value::from("net.Socket")),
        ("msg", Value::object([("type", Value::from("sticky:connection")), ("data", data)])),
    ])
}

/// Whether a payload is Node's `{cmd: "NODE_HANDLE_ACK"}`, byte for byte as its channel writes it
/// (any V8 format version; JSON). Anything else, even the same message written differently, goes
/// the general way.
fn is_handle_ack(mode: Mode, payload: &[u8]) -> bool {
    const V8: &[u8] = b"o\"\x03cmd\"\x0fNODE_HANDLE_ACK{\x01";
    const JSON: &[u8] = br#"{"cmd":"NODE_HANDLE_ACK"}"#;
    match mode {
        Mode::Advanced => matches!(payload, [0xff, version, rest @ ..] if *version < 0x80 && rest == V8),
        Mode::Json => payload == JSON,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes Node 20 writes: `v8.serialize({cmd: "NODE_HANDLE_ACK"})` and `JSON.stringify`.
    #[test]
    fn handle_acks_are_recognised_by_their_bytes() {
        let node = b"\xff\x0fo\"\x03cmd\"\x0fNODE_HANDLE_ACK{\x01";
        assert!(is_handle_ack(Mode::Advanced, node));
        assert!(is_handle_ack(Mode::Json, br#"{"cmd":"NODE_HANDLE_ACK"}"#));
        let ours = Frame::encode(Mode::Advanced, &Value::object([("cmd", Value::from("NODE_HANDLE_ACK"))]))
            .expect("encodable");
        assert!(is_handle_ack(Mode::Advanced, ours.payload()));
        for other in [&b"\xff\x0fo\"\x03cmd\"\x10NODE_HANDLE_NACK{\x01"[..], &node[..node.len() - 1], b""] {
            assert!(!is_handle_ack(Mode::Advanced, other));
        }
        assert!(!is_handle_ack(Mode::Json, br#"{"cmd":"NODE_HANDLE_NACK"}"#));
    }

    /// The template gives the very bytes the general encoder gives, whatever the request's length
    /// (its varint takes 1 to 3 bytes here).
    #[test]
    fn sticky_frames_from_the_template_match_the_encoder() {
        let template = BufferTemplate::new(Mode::Advanced, |request| sticky_connection(Value::buffer(request)))
            .expect("a template");
        for len in [0, 1, 127, 128, 300, 16_383, 16_384, 70_000] {
            let request: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let expected = Frame::encode(Mode::Advanced, &sticky_connection(Value::buffer(request.clone())))
                .expect("encodable")
                .into_raw();
            assert_eq!(template.frame(&request), Some(expected), "{len} bytes");
        }
        assert!(BufferTemplate::new(Mode::Json, |request| sticky_connection(Value::buffer(request))).is_none());
    }
}
