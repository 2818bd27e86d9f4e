//! One Node.js worker's IPC channel (`--protocol node`): what `cluster.fork()` gives a worker,
//! spoken by clusterd.
//!
//! The worker inherits one end of a `SOCK_STREAM` socket pair as fd 3 (`NODE_CHANNEL_FD`), with
//! `NODE_CHANNEL_SERIALIZATION_MODE`, `NODE_UNIQUE_ID` (fresh for every process) and
//! `NODE_APP_INSTANCE` (its slot, as PM2 sets it). On the channel:
//!
//! - `{cmd: "NODE_CLUSTER", act: "online"}`: the worker runs (ready, see [`NodeLink::next`]);
//!   `queryServer` (a `server.listen()` in the worker, TCP or a Unix path; UDP is refused) is
//!   answered with a round-robin reply, and its connections come as `newconn` handles until the
//!   worker's `close`; `exitedAfterDisconnect` is acknowledged; a drain is `act: "disconnect"`.
//! - a handle the worker sends (`NODE_HANDLE`) is refused with `NODE_HANDLE_NACK`, unless it is
//!   a connection given back by clusterd's preload (`{cmd: "NODE_CLUSTERD_HANDBACK"}`, see
//!   `preload.rs`): acknowledged and routed again, as an SDK worker's handback;
//! - with the preload, a drain is `NODE_CLUSTERD_DRAIN` first (the preload gives idle kept-alive
//!   connections back and ends WebSockets over the spread), then, once the preload says
//!   `NODE_CLUSTERD_DRAINED` (or the spread and a margin passed), Node's `disconnect`;
//! - connections go as `NODE_HANDLE` messages (`net.Socket`, `{type: "sticky:connection", data:
//!   <the request clusterd read>}`), several in flight, each until the worker's
//!   `NODE_HANDLE_ACK` (`writer.rs`);
//! - `{type: "sticky:connection" | "sticky:disconnection", data: <sid>}` feed the session table;
//! - `@socket.io/cluster-adapter` messages (`source: "_sio_adapter"`) go to the relay
//!   (`relay.rs`) as the bytes they came in.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use clusterd_worker::protocol::Address;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use super::frame::{BufferTemplate, Frame, FrameDecoder, Mode};
use super::value::Value;
use super::writer::{Channel, Control, Out, RELAY_QUEUE};
use crate::budget::Share;
use crate::listener::Handoff;
use crate::worker_link::{Asked, Handed, Heard, Launch, Said, SpawnSpec, Spawned, StartError, handback};

/// The fd number of the channel in the worker (what `child_process.fork` uses too).
const CHANNEL_FD: u32 = 3;
/// The largest message a worker may send.
const MAX_MESSAGE: usize = 32 * 1024 * 1024;
/// How many times a connection refused by a worker (`accepted: false`: over its
/// `server.maxConnections`, or its server just closed) is handed to another one before it is closed.
pub const MAX_REFUSALS: u8 = 3;
/// Connections handed to a worker's `server.listen()` whose `accepted` answer is awaited, per
/// worker; clusterd keeps its copy of each until then, to hand a refused one on. Node answers
/// at once; past this many, connections are handed without a copy (a refusal then closes them).
const MAX_REFUSABLE: usize = 1024;
/// How long a connection handed over without a session id counts as a handshake in progress
/// (for least-connection) if the worker reports no session for it.
const HANDSHAKE_WINDOW: Duration = Duration::from_secs(5);
/// Bytes read from the channel at once.
const READ_CHUNK: usize = 64 * 1024;
/// Relayed messages taken from the relay's queue at once.
const RELAY_BATCH: usize = 256;
/// fds received from a worker and not yet matched with their `NODE_HANDLE` message (they wait
/// while the message's bytes arrive); past this, the oldest is closed. Node sends one handle at a
/// time, each waiting for its acknowledgement.
const MAX_PENDING_FDS: usize = 4;
/// After `NODE_CLUSTERD_DRAIN`, how long past the spread clusterd waits for the preload's
/// `NODE_CLUSTERD_DRAINED` before it sends Node's `disconnect` anyway (a worker whose event loop
/// is busy; `--grace` still ends it with SIGKILL).
const PRELOAD_DRAIN_MARGIN: Duration = Duration::from_secs(5);
/// The message of the preload that gives a connection back, and the version of the preload's
/// messages that clusterd speaks.
const HANDBACK: &str = "NODE_CLUSTERD_HANDBACK";
/// The most listeners the worker closed whose address the link still remembers, to tell which
/// listener a connection the worker gives back came from (a draining worker closes its servers
/// first, then gives back its idle connections); past it, only those still open are kept.
const CLOSED_KEPT: usize = 64;
const PRELOAD_VERSION: i64 = 1;
/// A Node worker whose preload found a Node older than it supports is logged once per clusterd.
static OLD_NODE_LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub struct NodeLink {
    /// The channel, registered for reading only (see `writer.rs` on why not for room).
    socket: AsyncFd<UnixStream>,
    decoder: FrameDecoder,
    open: bool,
    mode: Mode,
    key: u64,
    /// The writing half: what goes to the worker, and the handles it has yet to acknowledge.
    channel: Channel,
    /// Messages the relay sends this worker, and whether the relay still can.
    relayed: mpsc::Receiver<Out>,
    relay_open: bool,
    batch: Vec<Out>,
    /// The listener groups of connections that could not be handed over (the worker refused
    /// them, or writing failed), to report.
    failed: Vec<Option<u32>>,
    relay: Option<mpsc::Sender<super::relay::Input>>,
    /// The bus budget that relayed messages are charged to before the channel is read on.
    memory: std::sync::Arc<crate::bus_memory::BusMemory>,
    /// A message for the relay that waits for the budget; nothing more is read meanwhile. Its
    /// place in the budget's queue is kept across turns of `next`.
    parked: Option<(Frame, crate::bus_memory::Waiting)>,
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
    /// The `queryServer`s on port 0 the worker sent: Node numbers a worker's listens on one
    /// address from 0 (`index`), so a genuine index is below this count.
    zero_listens: u32,
    /// `queryServer`s refused for their index (for the log's pace).
    refused_listens: u64,
    /// The key of each listener group the worker asked for (newconn messages carry it).
    keys: HashMap<u32, String>,
    /// What the worker task has yet to hear.
    pending: VecDeque<Said>,
    /// Read buffer ([`READ_CHUNK`] bytes).
    chunk: Vec<u8>,
    /// The sticky connection message around its request, encoded once (advanced mode).
    sticky: Option<BufferTemplate>,
    slot: u32,
    /// Messages of this worker's that were dropped (`dropped` in `status`).
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// A handle from the worker was refused (logged once).
    refused_handle: bool,
    /// `newconn` connections awaiting the worker's `accepted`, by the message's seq, with
    /// clusterd's copy of the fd.
    refusable: HashMap<u64, Handoff>,
    /// Where a refused connection goes to be routed again.
    routes: mpsc::Sender<crate::listener::RouteMsg>,
    /// How a connection the worker gives back is routed again.
    limits: crate::listener::Limits,
    /// Bytes read from the channel so far: a frame's position, to match it with its fd.
    fed: u64,
    /// fds that came from the worker, waiting for their `NODE_HANDLE` frame.
    fds: PendingFds,
    /// Connections handed to this worker, and given back: it may give back no more than it got.
    handed: u64,
    given_back: u64,
    /// Counts them for `status` and `/metrics`.
    given_back_counter: crate::worker_link::GivenBack,
    /// The address clusterd bound for each listener group the worker listens on, to tell which a
    /// connection given back belongs to.
    bound: HashMap<u32, String>,
    /// A handback was refused (logged once).
    refused_handback: bool,
    /// The worker runs clusterd's preload (it said so): a drain goes through it first.
    preload: bool,
    /// When Node's `disconnect` goes if the preload has not said it is done; `None` once sent.
    disconnect_at: Option<Instant>,
    disconnect_sent: bool,
    disconnect_timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

/// What starting a Node worker's link takes, handed over by the worker task that starts it: the
/// link reads nothing of the supervisor's own.
pub struct Start<'a> {
    pub program: &'a std::ffi::OsStr,
    pub args: &'a [std::ffi::OsString],
    /// How the channel is encoded (`--serialization`).
    pub serialization: crate::config::Serialization,
    /// The preload the worker gets, if any.
    pub preload: Option<&'a super::preload::Preload>,
    /// The relay between Node workers.
    pub relay: Option<&'a mpsc::Sender<super::relay::Input>>,
    /// The budget of bus frames read and not yet queued, shared by every reader and relay.
    pub bus_memory: &'a std::sync::Arc<crate::bus_memory::BusMemory>,
    /// Where connections the worker gives back are routed again.
    pub routes: &'a mpsc::Sender<crate::listener::RouteMsg>,
    /// How those connections are routed.
    pub limits: crate::listener::Limits,
    /// Where those connections are counted.
    pub given_back: crate::worker_link::GivenBack,
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
    /// Creates the worker's channel and starts the worker with `spawn` (the supervisor's spawner).
    pub async fn start<F, S>(settings: Start<'_>, launch: &Launch, spawn: F) -> Result<(Self, Spawned), StartError>
    where
        F: FnOnce(SpawnSpec) -> S,
        S: std::future::Future<Output = std::io::Result<Spawned>>,
    {
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
            .map_err(|e| StartError::setup("cannot create the IPC socket pair", e))?;
        let stream = UnixStream::from(ours);
        stream.set_nonblocking(true).map_err(|e| StartError::setup("cannot make the IPC socket non-blocking", e))?;
        let socket = super::writer::register(stream, Interest::READABLE)
            .map_err(|e| StartError::setup("cannot register the IPC socket", e))?;
        let mode = Mode::from(settings.serialization);
        let mut env = vec![
            ("NODE_CHANNEL_FD".to_owned(), CHANNEL_FD.to_string()),
            ("NODE_CHANNEL_SERIALIZATION_MODE".to_owned(), mode.as_str().to_owned()),
            // Node never reuses a worker id; neither does clusterd (one per process).
            ("NODE_UNIQUE_ID".to_owned(), launch.incarnation.to_string()),
            ("NODE_APP_INSTANCE".to_owned(), launch.slot.to_string()),
            (clusterd_worker::protocol::ENV_WORKER_ID.to_owned(), launch.slot.to_string()),
            (clusterd_worker::protocol::ENV_WORKER_COUNT.to_owned(), launch.count.to_string()),
            (clusterd_worker::protocol::ENV_GENERATION.to_owned(), launch.generation.to_string()),
        ];
        if let Some(preload) = settings.preload {
            env.push(("NODE_OPTIONS".to_owned(), preload.node_options().to_string_lossy().into_owned()));
        }
        let spec = SpawnSpec {
            program: settings.program.to_owned(),
            args: settings.args.to_vec(),
            env,
            ipc: theirs,
            bus: None,
        };
        let spawned = spawn(spec).await.map_err(|e| StartError::spawn(settings.program, e))?;
        let queued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (out, relayed) = mpsc::channel(RELAY_QUEUE);
        let channel = Channel::new(std::sync::Arc::clone(&queued));
        if let Some(relay) = settings.relay {
            let join = super::relay::Input::Join {
                key: launch.incarnation,
                worker_id: launch.incarnation,
                out,
                queued,
                dropped: std::sync::Arc::clone(&launch.dropped),
            };
            let _ = relay.send(join).await;
        }
        let link = Self {
            socket,
            decoder: FrameDecoder::with_max_frame(mode, MAX_MESSAGE),
            open: true,
            mode,
            key: launch.incarnation,
            channel,
            relayed,
            relay_open: true,
            batch: Vec::with_capacity(RELAY_BATCH),
            failed: Vec::new(),
            relay: settings.relay.cloned(),
            memory: std::sync::Arc::clone(settings.bus_memory),
            parked: None,
            handshakes: VecDeque::new(),
            window: Box::pin(sleep_until(Instant::now())),
            sessions: HashSet::new(),
            seq: 0,
            listens: HashMap::new(),
            next_listen: 1,
            zero_listens: 0,
            refused_listens: 0,
            keys: HashMap::new(),
            pending: VecDeque::new(),
            chunk: vec![0; READ_CHUNK],
            sticky: BufferTemplate::new(mode, |request| sticky_connection(Value::buffer(request))),
            slot: launch.slot,
            dropped: std::sync::Arc::clone(&launch.dropped),
            refused_handle: false,
            refusable: HashMap::new(),
            routes: settings.routes.clone(),
            limits: settings.limits,
            fed: 0,
            fds: PendingFds::default(),
            handed: 0,
            given_back: 0,
            given_back_counter: settings.given_back,
            bound: HashMap::new(),
            refused_handback: false,
            preload: false,
            disconnect_at: None,
            disconnect_sent: false,
            disconnect_timer: Box::pin(sleep_until(Instant::now())),
        };
        Ok((link, spawned))
    }

    pub fn open(&self) -> bool {
        self.open || !self.pending.is_empty() || !self.failed.is_empty()
    }

    /// Whether the worker's queue takes another connection now (a full one: the worker does
    /// not read; connections wait in the worker task's queue, then go elsewhere). A channel that
    /// failed takes them, to report them closed at once.
    pub fn takes_connections(&self) -> bool {
        self.channel.broken() || self.channel.has_room()
    }

    /// The next thing worth reporting. Cancel-safe: bytes read stay in the decoder, and a frame
    /// is handled whole (without awaiting) before anything else.
    pub async fn next(&mut self) -> Heard {
        loop {
            if let Some(said) = self.pending.pop_front() {
                return Heard::Said(said);
            }
            if !self.failed.is_empty() {
                return Heard::Said(Said::Closed(std::mem::take(&mut self.failed)));
            }
            if !self.open {
                return Heard::End;
            }
            let parked = self.parked.is_some();
            // The worker acknowledges every connection: that message is recognised by its bytes,
            // neither copied out nor decoded.
            let mode = self.mode;
            if !parked && self.decoder.take_if(|payload| is_handle_ack(mode, payload)) {
                self.channel.answered(self.socket.get_ref(), Control::Ack, &mut self.failed);
                continue;
            }
            let at = self.fed - self.decoder.buffered() as u64;
            let next = if parked { Ok(None) } else { self.decoder.next_frame() };
            match next {
                Ok(Some(frame)) => {
                    if let Err(why) = self.frame(frame, at) {
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
            let waiting = async {
                match &mut self.parked {
                    Some((_, waiting)) => waiting.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                charge = waiting, if parked => {
                    if let Some((frame, _)) = self.parked.take() {
                        self.relay_frame(frame, charge);
                    }
                }
                read = read_some(&self.socket, &mut self.chunk), if !parked => match read {
                    Ok((0, ..)) | Err(_) => {
                        self.open = false;
                        return Heard::End;
                    }
                    Ok((read, fds)) => {
                        let start = self.fed;
                        self.fed += read as u64;
                        for fd in fds {
                            self.fds.received(start, self.fed, fd);
                        }
                        self.decoder.feed(&self.chunk[..read]);
                    }
                },
                () = self.disconnect_timer.as_mut(), if self.disconnect_at.is_some() => self.send_disconnect(),
                count = self.relayed.recv_many(&mut self.batch, RELAY_BATCH),
                    if self.relay_open && self.channel.has_room() =>
                {
                    if count == 0 {
                        self.relay_open = false;
                    }
                    // Queued together, written together (one vectored write when they fit).
                    self.channel.extend(self.socket.get_ref(), self.batch.drain(..), &mut self.failed);
                }
                () = self.channel.writable(self.socket.get_ref(), &mut self.failed), if self.channel.waiting() => {}
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

    /// Hands a charged adapter message to the relay.
    fn relay_frame(&mut self, frame: Frame, charge: crate::bus_memory::Charge) {
        let Some(relay) = &self.relay else { return self.memory.release(charge) };
        // The relay's queue is deep; a full one means it is far behind, and the adapter's own
        // timeouts cover a lost message. Counted with the worker's drops; said once.
        if let Err(refused) = relay.try_send(super::relay::Input::Frame { key: self.key, frame, charge }) {
            if let super::relay::Input::Frame { charge, .. } = refused.into_inner() {
                self.memory.release(charge);
            }
            crate::metrics::bus_dropped();
            if self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                tracing::warn!(worker = self.slot, "node relay: queue full, adapter messages are dropped");
            }
        }
    }

    /// Acts on one message, queueing what the worker task must hear.
    fn frame(&mut self, frame: Frame, at: u64) -> Result<(), String> {
        let [cmd, source, kind] = frame.select(&[&["cmd"], &["source"], &["type"]]).map_err(|e| e.to_string())?;
        if source.as_ref().and_then(Value::as_str) == Some("_sio_adapter") {
            if self.relay.is_some() {
                // Charged before anything more is read: when the budget is spent, the channel
                // waits (in `next`), and so does the worker's `process.send`.
                match self.memory.try_acquire(frame.raw().len()) {
                    Some(charge) => self.relay_frame(frame, charge),
                    None => {
                        let waiting = self.memory.queue(frame.raw().len());
                        self.parked = Some((frame, waiting));
                    }
                }
            }
            return Ok(());
        }
        match cmd.as_ref().and_then(Value::as_str) {
            Some("NODE_HANDLE_ACK") => {
                self.channel.answered(self.socket.get_ref(), Control::Ack, &mut self.failed);
                return Ok(());
            }
            Some("NODE_HANDLE_NACK") => {
                self.channel.answered(self.socket.get_ref(), Control::Nack, &mut self.failed);
                return Ok(());
            }
            Some("NODE_CLUSTER") => return self.cluster(&frame.decode().map_err(|e| e.to_string())?),
            Some("NODE_HANDLE") => {
                self.handle_from_worker(&frame, at);
                return Ok(());
            }
            Some("NODE_CLUSTERD_PRELOAD") => {
                self.preload_said(&frame);
                return Ok(());
            }
            Some("NODE_CLUSTERD_DRAINED") => {
                if self.disconnect_at.is_some() {
                    self.send_disconnect();
                }
                return Ok(());
            }
            // NODE_SOCKET_* and other internal messages: nothing to do.
            Some(cmd) if cmd.starts_with("NODE_") => return Ok(()),
            _ => {}
        }
        let sid = || -> Option<String> {
            let [data] = frame.select(&[&["data"]]).ok()?;
            data.as_ref().and_then(Value::as_str).map(str::to_owned)
        };
        match kind.as_ref().and_then(Value::as_str) {
            Some(crate::metrics::prom_client::ANSWER_TYPE) => self.metrics_answer(&frame),
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

    /// prom-client's answer to a metrics request ([`NodeLink::ask_metrics`]), for the worker task.
    fn metrics_answer(&mut self, frame: &Frame) {
        use crate::metrics::prom_client::{parse_answer, request_id};
        use crate::metrics::workers::{MAX_NODE_METRICS_MESSAGE, WorkerMetrics};
        let message = if frame.raw().len() > MAX_NODE_METRICS_MESSAGE {
            // Only its id is read.
            let Ok([id]) = frame.select(&[&["requestId"]]) else { return };
            let Some(id) = id.as_ref().and_then(Value::as_i64).and_then(|id| u32::try_from(id).ok()) else { return };
            let why = format!(
                "its metrics answer is {} bytes, over the limit of {MAX_NODE_METRICS_MESSAGE}",
                frame.raw().len()
            );
            self.pending.push_back(Said::Metrics { id, metrics: WorkerMetrics::Failed(why) });
            return;
        } else {
            match frame.decode() {
                Ok(message) => message,
                Err(_) => return,
            }
        };
        let Some(id) = request_id(&message) else { return };
        let metrics = match parse_answer(&message) {
            Ok(metrics) => WorkerMetrics::PromClient(metrics),
            Err(error) => WorkerMetrics::Failed(error.to_string()),
        };
        self.pending.push_back(Said::Metrics { id, metrics });
    }

    /// Asks the worker for its metrics the way prom-client's `AggregatorRegistry` in a Node
    /// primary does; a worker that uses it answers with `prom-client:getMetricsRes`.
    pub fn ask_metrics(&mut self, id: u32) -> Asked {
        let message = Value::object([
            ("type", Value::from(crate::metrics::prom_client::REQUEST_TYPE)),
            ("requestId", Value::from(id)),
        ]);
        if self.open && self.send(&message) { Asked::Sent } else { Asked::Failed }
    }

    /// A handle the worker sent: a connection its preload gives back, routed again as a new
    /// connection (as an SDK worker's handback); anything else is refused.
    fn handle_from_worker(&mut self, frame: &Frame, at: u64) {
        let fd = self.fds.take(at);
        let kind = frame.select(&[&["msg", "cmd"]]).ok().and_then(|[cmd]| cmd);
        if kind.as_ref().and_then(Value::as_str) != Some(HANDBACK) {
            return self.refuse_handle();
        }
        let refused = match fd {
            None => "its fd did not arrive (clusterd at its fd limit?)".to_owned(),
            Some(_) if self.given_back >= self.handed => {
                format!("more than the {} connections it was handed", self.handed)
            }
            Some(fd) => match handback(fd, Vec::new(), None, None, &self.limits) {
                Ok(mut handoff) => {
                    handoff.group = self.group_of(&handoff.local);
                    self.given_back += 1;
                    self.given_back_counter.count();
                    self.acknowledge(Control::Ack);
                    crate::listener::reroute_handback(handoff, self.limits, self.routes.clone());
                    return;
                }
                Err(why) => why,
            },
        };
        if !self.refused_handback {
            self.refused_handback = true;
            tracing::warn!(worker = self.slot, "a connection the worker gave back was refused: {refused} (said once)");
        }
        self.acknowledge(Control::Nack);
    }

    /// Answers a handle from the worker. Queued past the queue's bound: Node holds every later
    /// message of the worker, its `disconnect` included, until the answer; one answer per handle,
    /// and the worker sends the next handle only after it.
    fn acknowledge(&mut self, answer: Control) {
        let cmd = if matches!(answer, Control::Ack) { "NODE_HANDLE_ACK" } else { "NODE_HANDLE_NACK" };
        if let Ok(frame) = Frame::encode(self.mode, &Value::object([("cmd", Value::from(cmd))])) {
            self.channel.push(self.socket.get_ref(), Out::Frame(frame.into_raw().into()), &mut self.failed);
        }
    }

    /// The listener group a connection given back came from, by its local address: one the worker
    /// listens on, else clusterd's own listeners (`None`).
    fn group_of(&self, local: &Address) -> Option<u32> {
        let matches = |bound: &str| -> bool {
            if let Some(path) = bound.strip_prefix("unix:") {
                use std::os::unix::ffi::OsStrExt;
                return matches!(local, Address::Unix { path: own }
                    if std::path::Path::new(std::ffi::OsStr::from_bytes(own)) == std::path::Path::new(path));
            }
            let (Ok(bound), Some(local)) = (bound.parse::<std::net::SocketAddr>(), local.socket_addr()) else {
                return false;
            };
            local.port() == bound.port() && (bound.ip().is_unspecified() || bound.ip() == local.ip())
        };
        self.bound.iter().find(|(_, addr)| matches(addr)).map(|(group, _)| *group)
    }

    /// The preload's greeting: it runs (its drains go through it), or it found a Node too old.
    fn preload_said(&mut self, frame: &Frame) {
        let Ok([version, unsupported]) = frame.select(&[&["version"], &["unsupported"]]) else { return };
        if let Some(node) = unsupported.as_ref().and_then(Value::as_str) {
            if !OLD_NODE_LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(
                    worker = self.slot,
                    "the worker runs Node {node}, older than clusterd's preload supports (20): it runs without it (said once)"
                );
            }
            return;
        }
        self.preload = version.as_ref().and_then(Value::as_i64) == Some(PRELOAD_VERSION);
    }

    /// Node's `disconnect` (`worker.kill()`'s first step), once.
    fn send_disconnect(&mut self) {
        self.disconnect_at = None;
        if self.disconnect_sent {
            return;
        }
        self.disconnect_sent = true;
        let seq = self.next_seq();
        let message =
            Value::object([("cmd", Value::from("NODE_CLUSTER")), ("act", Value::from("disconnect")), ("seq", seq)]);
        // Queued even past the queue's bound rather than lose the one message that makes the
        // worker go; if it cannot be written, the grace time's SIGKILL still ends the worker.
        if let Ok(frame) = Frame::encode(self.mode, &message) {
            if self.channel.broken() {
                tracing::warn!(worker = self.slot, "node channel: could not send the disconnect");
            }
            self.channel.push(self.socket.get_ref(), Out::Last(frame.into_raw().into()), &mut self.failed);
        }
    }

    /// A handle the worker sent (`process.send(message, handle)`). clusterd takes none (it reads
    /// the channel without room for ancillary data, so the kernel closes the fds), but it must
    /// answer: Node holds every later message of the worker until the handle is acknowledged.
    /// A `NACK` makes Node send it again (three times at most), then close its copy and warn
    /// `SentHandleNotReceivedWarning` in the worker: the sender learns that nobody took it.
    fn refuse_handle(&mut self) {
        if !self.refused_handle {
            self.refused_handle = true;
            tracing::warn!(
                worker = self.slot,
                "the worker sent a handle with process.send(); clusterd takes none: refused (NODE_HANDLE_NACK)"
            );
        }
        // Through `acknowledge`, past the queue's bound: a refusal dropped on a full queue would
        // leave Node holding every later message of this worker.
        self.acknowledge(Control::Nack);
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
                // A message that only looks like Node's (a worker's own `process.send`) has no
                // numeric port: refused below, never taken for port 0.
                let port = message.get("port").and_then(Value::as_f64).unwrap_or(f64::NAN);
                // 4, 6, -1 (a Unix path), or "udp4"/"udp6" for a dgram socket's bind: UDP is not
                // shared through clusterd, so anything but a number is refused below.
                let address_type = match message.get("addressType") {
                    None => 4,
                    Some(kind) => kind.as_i64().unwrap_or(0),
                };
                let key = format!(
                    "{}:{}:{}:{}:{}",
                    address.as_deref().unwrap_or(""),
                    port,
                    address_type,
                    message.get("fd").and_then(Value::as_i64).map_or(String::new(), |fd| fd.to_string()),
                    message.get("index").and_then(Value::as_i64).unwrap_or(0),
                );
                // A Unix socket path (`server.listen("/run/app.sock")`): Node sends port and
                // addressType -1 with the path as the address.
                if address_type == -1
                    && port == -1.0
                    && let Some(path) = address.clone().filter(|p| !p.is_empty())
                {
                    let query = Query { seq, key, address, port: 0, address_type };
                    let id = self.next_listen;
                    self.next_listen = self.next_listen.wrapping_add(1);
                    self.listens.insert(id, query);
                    self.pending.push_back(Said::Listen { seq: id, addr: format!("unix:{path}"), index: 0 });
                    return Ok(());
                }
                if !(0.0..=65535.0).contains(&port) || port.fract() != 0.0 || !matches!(address_type, 4 | 6) {
                    // UDP and odd ports are not clusterd's to serve: refuse (EINVAL), not hang.
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
                // The index tells a worker's n-th `listen(0)` on an address (its own port, shared
                // with the other workers' n-th) and only port 0 reads it. One no Node can have
                // sent (never listened that often) would bind a port per value: refused.
                let index = message.get("index").map_or(Some(0), |i| i.as_i64().and_then(|i| u32::try_from(i).ok()));
                let index = if query.port == 0 {
                    self.zero_listens = self.zero_listens.saturating_add(1);
                    index.filter(|i| *i < self.zero_listens)
                } else {
                    Some(0)
                };
                let Some(index) = index else {
                    self.refused_listens += 1;
                    if crate::proxy_protocol::worth_logging(self.refused_listens) {
                        tracing::warn!(
                            worker = self.slot,
                            %addr,
                            index = ?message.get("index"),
                            refused = self.refused_listens,
                            "refused a listen: its index is out of range (the worker made only {} listens on port 0)",
                            self.zero_listens
                        );
                    }
                    self.reply_query(&query, Err(-22));
                    return Ok(());
                };
                let id = self.next_listen;
                self.next_listen = self.next_listen.wrapping_add(1);
                self.listens.insert(id, query);
                self.pending.push_back(Said::Listen { seq: id, addr, index });
            }
            Some("close") => {
                // `server.close()` of a server clusterd listens for: its connections go to the
                // other workers of the group from now on.
                let key = message.get("key").and_then(Value::as_str);
                if let Some(group) = self.keys.iter().find(|(_, k)| Some(k.as_str()) == key).map(|(g, _)| *g) {
                    self.keys.remove(&group);
                    self.pending.push_back(Said::Unlisten { group });
                }
            }
            Some("exitedAfterDisconnect") => {
                if let Some(seq) = message.get("seq").cloned() {
                    self.send_cluster(vec![("ack", seq)]);
                }
            }
            // The answer to a `newconn`: a refused connection goes to another worker.
            None => {
                let seq = message.get("ack").and_then(Value::as_f64);
                let accepted = message.get("accepted").and_then(Value::as_bool);
                if let (Some(seq), Some(accepted)) = (seq, accepted)
                    && let Some(mut handoff) = self.refusable.remove(&(seq as u64))
                    && !accepted
                {
                    handoff.refusals += 1;
                    tracing::debug!(worker = self.slot, refusals = handoff.refusals, "the worker refused a connection");
                    crate::listener::reroute(handoff, self.routes.clone());
                }
            }
            // listening: nothing to do.
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

    /// Queues a message for the worker; `false` if it was dropped.
    fn send(&mut self, message: &Value) -> bool {
        match Frame::encode(self.mode, message) {
            Ok(frame) => {
                if self.channel.has_room() {
                    self.channel.push(self.socket.get_ref(), Out::Frame(frame.into_raw().into()), &mut self.failed);
                } else {
                    tracing::warn!(
                        worker = self.slot,
                        "node channel: the worker's queue is full; a message was dropped"
                    );
                    return false;
                }
                true
            }
            Err(error) => {
                tracing::error!(worker = self.slot, %error, "node channel: cannot encode a message");
                false
            }
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
        // A Unix socket has no sockname in Node's reply either (its round-robin handle has no
        // getsockname).
        if let (Ok(port), false) = (result, query.address_type == -1) {
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
                    // A listener closed since may have had this address (a port the kernel gave
                    // again): a connection given back on it belongs to the new one.
                    self.bound.retain(|_, old| *old != addr);
                    if self.bound.len() >= CLOSED_KEPT + self.keys.len() {
                        self.bound.retain(|g, _| self.keys.contains_key(g));
                    }
                    self.bound.insert(group, addr.clone());
                }
                self.reply_query(&query, Ok(port));
            }
            clusterd_worker::protocol::ListenResult::Failed { reason } => {
                // A refusal for clusterd's bounds was logged where it was decided, at its pace.
                if !reason.starts_with("too many listeners") {
                    tracing::warn!(worker = self.slot, "a server.listen() of the worker failed: {reason}");
                }
                // UV_EADDRINUSE is what Node reports for most bind failures a worker can act on;
                // UV_EMFILE for clusterd's bounds on listeners (`too many listeners`).
                let errno = if reason.contains("in use") {
                    -98
                } else if reason.starts_with("too many listeners") {
                    -24
                } else {
                    -13
                };
                self.reply_query(&query, Err(errno));
            }
        }
    }

    /// Hands a connection over: a sticky connection (with the request clusterd read) for the
    /// main listeners, a cluster `newconn` for a listener the worker asked for.
    pub async fn hand_over(&mut self, mut handoff: Handoff) -> Handed {
        if !self.open || self.channel.broken() {
            // Nothing of it reached the worker: it goes on to another.
            return Handed::Back(Box::new(handoff));
        }
        let group = handoff.group;
        self.handed += 1;
        // The seq of a `newconn`, whose `accepted` answer may hand the connection on.
        let mut newconn = None;
        let frame = match (group, &self.sticky) {
            (None, Some(template)) => template.frame(&handoff.initial).ok_or_else(|| "a request over 4 GiB".to_owned()),
            (None, None) => {
                let data = match self.mode {
                    Mode::Advanced => Value::buffer(std::mem::take(&mut handoff.initial)),
                    // A string: `socket.unshift()` takes it, a `{type: "Buffer"}` object it does not.
                    Mode::Json => Value::from(String::from_utf8_lossy(&handoff.initial).into_owned()),
                };
                Frame::encode(self.mode, &sticky_connection(data)).map(Frame::into_raw).map_err(|e| e.to_string())
            }
            (Some(group), _) => {
                let key = self.keys.get(&group).cloned().unwrap_or_default();
                newconn = Some(self.seq);
                let seq = self.next_seq();
                Frame::encode(self.mode, &newconn_message(key, seq)).map(Frame::into_raw).map_err(|e| e.to_string())
            }
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                tracing::error!(worker = self.slot, %error, "node channel: cannot encode a handle message");
                return Handed::Closed(group);
            }
        };
        let no_sid = handoff.sid.is_none();
        // The request bytes read ahead stay counted while the frame that carries them waits.
        let held = std::mem::take(&mut handoff.read_ahead);
        // For a `newconn`, clusterd keeps its own copy of the connection until the worker says
        // whether it accepted it, to hand a refused one to another worker (as Node's primary).
        let fd = match newconn {
            Some(seq) if handoff.refusals < MAX_REFUSALS && self.refusable.len() < MAX_REFUSABLE => {
                match handoff.fd.try_clone() {
                    Ok(copy) => {
                        self.refusable.insert(seq, handoff);
                        copy
                    }
                    Err(_) => handoff.fd,
                }
            }
            _ => handoff.fd,
        };
        if !self.open || self.channel.broken() {
            if let Some(seq) = newconn {
                self.refusable.remove(&seq);
            }
            return Handed::Closed(group);
        }
        // Written now if the socket takes it; the worker task offers no more than the queue
        // takes (`takes_connections`), but a drain hands over what was already picked.
        self.channel.push(
            self.socket.get_ref(),
            Out::Handle { frame: frame.into(), fd, group, held },
            &mut self.failed,
        );
        if group.is_none() && no_sid {
            // A handshake (or plain HTTP): counted until the worker reports its session.
            self.handshakes.push_back(Instant::now());
            Handed::Yes
        } else {
            // Routed by session, or a plain server connection: the worker does not report its
            // close, so it counts only while it is being handed over.
            self.pending.push_back(Said::Closed(vec![group]));
            Handed::Yes
        }
    }

    /// Hands over a health-check connection the way client connections reach this worker: as a
    /// sticky connection when clusterd has listeners of its own (`main`; `setupWorker(io)` takes
    /// it), else as a `newconn` of the first listener the worker asked for. It carries no bytes:
    /// clusterd wrote the request into the socket. Not counted as a client connection. `None`
    /// when the worker has no way to receive it (no listener at all).
    pub async fn probe(&mut self, fd: std::os::fd::OwnedFd, main: bool) -> Option<bool> {
        let group = if main { None } else { Some(self.keys.keys().min().copied()?) };
        let message = match group {
            None => {
                let data = match self.mode {
                    Mode::Advanced => Value::buffer(Vec::new()),
                    Mode::Json => Value::from(String::new()),
                };
                sticky_connection(data)
            }
            Some(group) => {
                let key = self.keys.get(&group).cloned().unwrap_or_default();
                let seq = self.next_seq();
                newconn_message(key, seq)
            }
        };
        let Ok(frame) = Frame::encode(self.mode, &message) else { return Some(false) };
        if !self.open || self.channel.broken() {
            return Some(false);
        }
        // Its server may give it back at a drain like any connection.
        self.handed += 1;
        self.channel.push(
            self.socket.get_ref(),
            Out::Handle { frame: frame.into_raw().into(), fd, group, held: Share::default() },
            &mut self.failed,
        );
        Some(true)
    }

    /// Graceful stop, as Node's `worker.kill()`: `act: "disconnect"` (the worker closes its
    /// servers and its channel), SIGTERM once the channel is closed, SIGKILL at the end of the
    /// grace time. With the preload, `NODE_CLUSTERD_DRAIN` (with the spread of its WebSockets'
    /// ends) goes first, and the `disconnect` once the preload is done.
    pub async fn drain(&mut self, grace: Duration) -> bool {
        if self.preload && !self.disconnect_sent && self.disconnect_at.is_none() {
            let spread = drain_spread(grace);
            let message = Value::object([
                ("cmd", Value::from("NODE_CLUSTERD_DRAIN")),
                ("spread", Value::from(u64::try_from(spread.as_millis()).unwrap_or(u64::MAX) as f64)),
            ]);
            if let Ok(frame) = Frame::encode(self.mode, &message) {
                self.channel.push(self.socket.get_ref(), Out::Frame(frame.into_raw().into()), &mut self.failed);
                let at = Instant::now() + spread + PRELOAD_DRAIN_MARGIN;
                self.disconnect_at = Some(at);
                self.disconnect_timer.as_mut().reset(at);
                return false;
            }
        }
        self.send_disconnect();
        false
    }

    /// The process is gone: the relay forgets it and tells the others.
    pub async fn gone(&mut self) {
        if let Some(relay) = &self.relay {
            let _ = relay.send(super::relay::Input::Leave { key: self.key }).await;
        }
    }
}

/// fds a worker sent, each with the stream positions of the read that brought it.
#[derive(Default)]
struct PendingFds(VecDeque<(u64, u64, OwnedFd)>);

impl PendingFds {
    /// An fd that came with the bytes from `start` to `end`; past [`MAX_PENDING_FDS`], the oldest
    /// waiting one is closed.
    fn received(&mut self, start: u64, end: u64, fd: OwnedFd) {
        if self.0.len() == MAX_PENDING_FDS {
            self.0.pop_front();
        }
        self.0.push_back((start, end, fd));
    }

    /// The fd of the `NODE_HANDLE` frame that starts at `at`: the kernel ends a read after the
    /// bytes an fd came with, and Node attaches it to its message's first bytes, so that frame
    /// starts within the read that brought the fd. fds of reads that ended before `at` had no
    /// such frame: closed.
    fn take(&mut self, at: u64) -> Option<OwnedFd> {
        while self.0.front().is_some_and(|(_, end, _)| *end <= at) {
            self.0.pop_front();
        }
        match self.0.front() {
            Some((start, _, _)) if *start <= at => self.0.pop_front().map(|(_, _, fd)| fd),
            _ => None,
        }
    }
}

/// Reads what the channel has, with the fds that came with it (cancel-safe: nothing is read until
/// the socket is readable, and then without waiting).
async fn read_some(socket: &AsyncFd<UnixStream>, chunk: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    loop {
        let mut guard = socket.readable().await?;
        match super::writer::recv_with_fds(guard.get_inner(), chunk) {
            Ok((read, fds, _)) => {
                // A read that did not fill the buffer emptied the socket (as tokio's own streams
                // assume on epoll), unless it ended early at an fd: the next one waits for news
                // instead of failing with EAGAIN.
                if read < chunk.len() && fds.is_empty() {
                    guard.clear_ready();
                }
                return Ok((read, fds));
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => guard.clear_ready(),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
}

/// The spread over which a draining worker's preload ends its WebSockets: as for SDK workers,
/// `CLUSTERD_DRAIN_SPREAD_MS`, else the grace divided by `SPREAD_SHARE_OF_GRACE`, at most
/// `MAX_SPREAD`, never longer than the grace.
fn drain_spread(grace: Duration) -> Duration {
    let set = std::env::var("CLUSTERD_DRAIN_SPREAD_MS").ok().and_then(|ms| ms.trim().parse::<u64>().ok());
    let spread = match set {
        Some(ms) => Duration::from_millis(ms),
        None => (grace / clusterd_worker::SPREAD_SHARE_OF_GRACE).min(clusterd_worker::MAX_SPREAD),
    };
    spread.min(grace)
}

/// The message that hands a connection of clusterd's own listeners to a worker, as
/// `@socket.io/sticky`'s primary sends it: the worker's `setupWorker` puts `data` (the request
/// clusterd read) back in front of the socket.
/// A cluster `newconn` of the listener `key`: the handle message of a connection to a server the
/// worker listens on itself.
fn newconn_message(key: String, seq: Value) -> Value {
    Value::object([
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
    ])
}

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

    fn fd() -> OwnedFd {
        OwnedFd::from(std::fs::File::open("/dev/null").expect("/dev/null"))
    }

    fn raw(fd: &OwnedFd) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(fd)
    }

    /// An fd goes to the handle frame that starts within the read that brought it; one whose read
    /// ended before the frame is closed; a frame before it gets none; the oldest of too many goes.
    #[test]
    fn fds_are_matched_to_their_frame_by_position() {
        let mut fds = PendingFds::default();
        let b = fd();
        let rb = raw(&b);
        fds.received(10, 20, fd());
        fds.received(20, 30, b);
        assert!(fds.take(5).is_none(), "a frame before the fd's read");
        assert_eq!(fds.take(25).as_ref().map(raw), Some(rb), "the fd of [10, 20) had no frame: dropped");
        assert!(fds.take(30).is_none());
        for start in 30..30 + 2 * MAX_PENDING_FDS as u64 {
            fds.received(start, start + 1, fd());
        }
        let waiting: Vec<u64> = fds.0.iter().map(|(start, _, _)| *start).collect();
        let newest: Vec<u64> = (30 + MAX_PENDING_FDS as u64..30 + 2 * MAX_PENDING_FDS as u64).collect();
        assert_eq!(waiting, newest, "the oldest were closed");
    }

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
