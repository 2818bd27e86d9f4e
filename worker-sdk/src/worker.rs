//! [`Worker`]: the worker's handle on clusterd.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_seqpacket::UnixSeqpacket;
use tokio_util::sync::CancellationToken;

use crate::channel::WorkerChannel;
use crate::codec;
use crate::error::Error;
use crate::listener::{Connection, Listener};
use crate::protocol::ListenResult;
use crate::protocol::{
    ENV_GENERATION, ENV_IPC_FD, ENV_WORKER_COUNT, ENV_WORKER_ID, FromWorker, MAX_CLOSED_PER_FRAME, PROTOCOL_VERSION,
    ToWorker,
};
use crate::report::Report;

/// Set once the IPC fd has been claimed, so that a second `from_env` cannot claim it again.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Connections handed over before the program takes them with `listener()`.
const CONNECTION_QUEUE: usize = 1024;
/// Reports sent from synchronous contexts (a dropped connection, a closed session).
const REPORT_QUEUE: usize = 8192;
/// How long `session_open` waits for clusterd's acknowledgement.
const SESSION_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// After `SIGTERM`, how long the SDK waits for clusterd's drain frame (which follows every
/// connection clusterd handed over) before it signals the drain anyway.
const DRAIN_FRAME_WAIT: Duration = Duration::from_secs(1);
/// How long the application gets to accept the connections handed over before the drain request.
const DRAIN_ACCEPT_WAIT: Duration = Duration::from_secs(2);
/// While at capacity, how often the open fds are counted again besides when connections close
/// (fds the application closes on its own are seen this way).
const CAPACITY_RECHECK: Duration = Duration::from_secs(1);
/// A draining worker ends its Socket.IO sessions (WebSockets, pending long-polls) one by one over
/// the grace divided by this, so that their clients reconnect to the other workers gradually, and the rest
/// of the grace is left for the last ones to finish before `SIGKILL`.
pub const SPREAD_SHARE_OF_GRACE: u32 = 2;
/// The longest that spread lasts, whatever the grace.
pub const MAX_SPREAD: Duration = Duration::from_secs(60);
/// The variable that sets the spread of every worker, in milliseconds (`0`: all at once), in
/// place of the share of the grace.
pub(crate) const ENV_DRAIN_SPREAD_MS: &str = "CLUSTERD_DRAIN_SPREAD_MS";
/// `drain_spread_ms` when no spread was set: the share of the grace.
const SPREAD_OF_GRACE: u64 = u64::MAX;

/// A worker's connection to clusterd.
///
/// Cheap to clone; every clone talks over the same IPC channel.
///
/// ```no_run
/// # async fn run() -> Result<(), clusterd_worker::Error> {
/// let worker = clusterd_worker::Worker::from_env()?;
/// println!("worker {} of {}", worker.id(), worker.count());
/// // ... bind, warm caches ...
/// worker.ready().await?;
/// worker.draining().await; // clusterd asked this worker to stop
/// // ... finish in-flight work, then return from main ...
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Worker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    id: u32,
    count: u32,
    generation: u64,
    channel: Arc<WorkerChannel>,
    drain: CancellationToken,
    /// Set when clusterd's drain frame was read (or the channel ended): every connection handed
    /// over before it is in the listener queue.
    asked: CancellationToken,
    draining_started: AtomicBool,
    /// Signalled by the listener each time the application takes a connection.
    accepted: Arc<tokio::sync::Notify>,
    /// Connections taken but not read from yet.
    unread: Arc<crate::listener::Unread>,
    listener_taken: AtomicBool,
    grace: Mutex<Option<Duration>>,
    ready_sent: AtomicBool,
    reports: mpsc::Sender<Report>,
    connections: mpsc::Sender<Connection>,
    listener: Mutex<Option<mpsc::Receiver<Connection>>>,
    next_seq: AtomicU32,
    acks: Mutex<HashMap<u32, oneshot::Sender<()>>>,
    listens: Mutex<HashMap<u32, oneshot::Sender<ListenResult>>>,
    bus: Option<crate::bus::Bus>,
    capacity: Arc<crate::capacity::Capacity>,
    /// The sessions this process holds, for kept-alive connections to check their requests.
    sessions: Arc<crate::listener::Sessions>,
    /// Milliseconds a request head may take on a handed-off connection; 0: no limit.
    header_timeout_ms: std::sync::atomic::AtomicU64,
    /// The drain as the connections see it: the live ones, the upgraded ones.
    conns: Arc<crate::listener::Drain>,
    /// Milliseconds over which a drain shuts the upgraded connections down, or `SPREAD_OF_GRACE`.
    drain_spread_ms: std::sync::atomic::AtomicU64,
    /// What renders this worker's metrics for clusterd's scrapes ([`Worker::set_metrics`]).
    metrics: Mutex<Option<MetricsSource>>,
    /// Answers to metrics requests go out one at a time: the chunks of one are consecutive.
    metrics_answering: Arc<tokio::sync::Mutex<()>>,
}

/// The function that renders a worker's metrics.
#[derive(Clone)]
struct MetricsSource(Arc<dyn Fn() -> String + Send + Sync>);

impl std::fmt::Debug for MetricsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsSource")
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Worker {
    /// Connects to clusterd over the IPC socket this process inherited.
    ///
    /// Reads `CLUSTERD_IPC_FD`, `CLUSTERD_WORKER_ID`, `CLUSTERD_WORKER_COUNT` and
    /// `CLUSTERD_GENERATION`, claims the fd, greets clusterd and starts two background tasks: one
    /// that reads clusterd's frames and one that sends heartbeats. It also takes over `SIGTERM`:
    /// from now on that signal means "drain" (see [`Worker::draining`]) instead of ending the
    /// process, so the program must return from `main` once it has drained.
    ///
    /// Must be called inside a Tokio runtime, at most once per process.
    pub fn from_env() -> Result<Self, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let fd: i32 = env_parse(ENV_IPC_FD)?;
        let id: u32 = env_parse(ENV_WORKER_ID)?;
        let count: u32 = env_parse(ENV_WORKER_COUNT)?;
        let generation: u64 = env_parse(ENV_GENERATION)?;
        if TAKEN.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyTaken);
        }
        let owned = crate::fd::take_ipc_fd(fd)?;
        // Greet before anything else can be sent, so that Hello is always the first frame.
        let hello = codec::encode(&FromWorker::Hello { version: PROTOCOL_VERSION, pid: std::process::id() })
            .map_err(crate::channel::ChannelError::from)?;
        nix::sys::socket::send(owned.as_raw_fd(), &hello, nix::sys::socket::MsgFlags::MSG_NOSIGNAL)
            .map_err(|errno| Error::BadIpcFd { fd, reason: format!("cannot greet clusterd ({errno})") })?;
        set_nonblocking(&owned).map_err(|e| Error::BadIpcFd { fd, reason: e.to_string() })?;
        let socket = UnixSeqpacket::try_from(owned)
            .map_err(|e| Error::BadIpcFd { fd, reason: format!("cannot register with Tokio ({e})") })?;

        // The bus socket, when clusterd gave one (CLUSTERD_BUS_FD).
        let bus = match std::env::var(crate::bus_protocol::ENV_BUS_FD) {
            Ok(value) => {
                let bus_fd: i32 =
                    value.trim().parse().map_err(|_| Error::BadEnv { var: crate::bus_protocol::ENV_BUS_FD, value })?;
                let owned = crate::fd::take_socket_fd(bus_fd, nix::sys::socket::SockType::Stream)?;
                Some(crate::bus::Bus::start(owned).map_err(|e| Error::BadIpcFd { fd: bus_fd, reason: e.to_string() })?)
            }
            Err(_) => None,
        };
        let (reports, report_queue) = mpsc::channel(REPORT_QUEUE);
        let (connections, connection_queue) = mpsc::channel(CONNECTION_QUEUE);
        let inner = Arc::new(Inner {
            id,
            count,
            generation,
            channel: Arc::new(WorkerChannel::new(socket)),
            drain: CancellationToken::new(),
            asked: CancellationToken::new(),
            draining_started: AtomicBool::new(false),
            accepted: Arc::new(tokio::sync::Notify::new()),
            unread: Arc::default(),
            listener_taken: AtomicBool::new(false),
            grace: Mutex::new(None),
            ready_sent: AtomicBool::new(false),
            reports,
            connections,
            listener: Mutex::new(Some(connection_queue)),
            next_seq: AtomicU32::new(1),
            acks: Mutex::new(HashMap::new()),
            listens: Mutex::new(HashMap::new()),
            bus,
            capacity: Arc::new(crate::capacity::Capacity::from_rlimit()),
            sessions: Arc::default(),
            header_timeout_ms: std::sync::atomic::AtomicU64::new(header_timeout_from_env()?),
            conns: Arc::default(),
            drain_spread_ms: std::sync::atomic::AtomicU64::new(drain_spread_from_env()?),
            metrics: Mutex::new(None),
            metrics_answering: Arc::default(),
        });
        runtime.spawn(send_reports(
            Arc::clone(&inner.channel),
            report_queue,
            Arc::clone(&inner.capacity),
            Arc::clone(&inner.conns),
        ));
        let sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| Error::BadIpcFd { fd, reason: format!("cannot watch SIGTERM ({e})") })?;
        runtime.spawn(watch_sigterm(sigterm, Arc::clone(&inner)));
        runtime.spawn(read_frames(Arc::clone(&inner)));
        Ok(Self { inner })
    }

    /// The worker's slot, `0..count()`, stable across restarts of this slot.
    pub fn id(&self) -> u32 {
        self.inner.id
    }

    /// The pool size when this worker was started.
    pub fn count(&self) -> u32 {
        self.inner.count
    }

    /// The reload generation this worker belongs to, from 1.
    pub fn generation(&self) -> u64 {
        self.inner.generation
    }

    /// Tells clusterd that this worker is ready to take work. Calling it again does nothing.
    ///
    /// clusterd counts a worker as starting until this call, and replaces a worker that does not
    /// make it within `--ready-timeout`.
    pub async fn ready(&self) -> Result<(), Error> {
        if self.inner.ready_sent.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.send(&FromWorker::Ready).await
    }

    /// Resolves when clusterd asks this worker to drain: a drain frame, `SIGTERM`, or clusterd's
    /// end of the IPC channel closing (clusterd is gone, so nobody will route work here).
    ///
    /// It resolves only once the application has taken every connection clusterd handed over
    /// before the request (bounded: at most a few seconds), so a server that stops accepting when
    /// this resolves loses no client.
    pub async fn draining(&self) {
        self.inner.drain.cancelled().await
    }

    /// Resolves once the drain has begun and every connection handed to this worker is closed
    /// or given back to clusterd. Await it after the server returned and before `main` does:
    /// the process's exit would end the connections still open all at once.
    ///
    /// While a worker drains, the SDK ends its connections itself, for any server:
    ///
    /// - **Kept-alive HTTP/1.1 connections** between two requests go back to clusterd instead of
    ///   closing (a server that shuts down gracefully closes its idle connections, as axum's
    ///   `with_graceful_shutdown` does; a request that comes meanwhile goes back with its bytes),
    ///   and clusterd routes each to a live worker by its next request. A client never sees
    ///   its connection close under a request it already sent. A pipelining client's next
    ///   request reaches the server only once the answer before it is complete, so the requests
    ///   behind the one in flight go back with their bytes; a `Connection: close` in that answer
    ///   is renamed `X-Draining` so that the client reads on. A request the server read and drops
    ///   unanswered goes back if it is a `GET`, `HEAD` or `OPTIONS` without a body, else gets
    ///   `503` with `Connection: close`.
    /// - **Upgraded connections** (WebSockets, and so Socket.IO sessions over WebSocket) are shut
    ///   down one by one, evenly over the grace divided by [`SPREAD_SHARE_OF_GRACE`] (at most
    ///   [`MAX_SPREAD`]; at once when clusterd gave no grace), so that their clients do not all
    ///   reconnect to the other workers in the same second.
    /// - **Long-polling Engine.IO sessions** end over the same spread: a poll the server has read
    ///   and not begun to answer is answered by the SDK with an Engine.IO `close` packet (on
    ///   which socket.io-client reconnects), and its connection shut down.
    ///
    /// Other requests in flight are the server's to finish. A server that keeps
    /// its idle connections open after the drain keeps this pending until they close (clusterd's
    /// `SIGKILL` ends the wait at the end of the grace).
    pub async fn drained(&self) {
        self.draining().await;
        loop {
            let idle = self.inner.conns.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.inner.conns.live() == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Whether a drain has been requested.
    pub fn is_draining(&self) -> bool {
        self.inner.drain.is_cancelled()
    }

    /// A token cancelled when a drain is requested, for `with_graceful_shutdown` and `select!`.
    pub fn drain_token(&self) -> CancellationToken {
        self.inner.drain.clone()
    }

    /// The time clusterd gives this worker to finish after the drain request, once known.
    pub fn grace(&self) -> Option<Duration> {
        *self.inner.grace.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets how long a request head may take on the connections handed over from now on (`None`:
    /// no limit). The default is [`DEFAULT_HEADER_TIMEOUT`](crate::DEFAULT_HEADER_TIMEOUT), or
    /// `CLUSTERD_HEADER_TIMEOUT_MS` from the environment (milliseconds, `0` for no limit).
    ///
    /// The timer runs from the moment the server starts reading a request (the first one: when it
    /// first reads the connection; a later one: from its first byte) until the end of its head;
    /// then the read fails with `TimedOut` and the server closes the connection. It applies to
    /// connections that clusterd routed by an HTTP/1.x request line, and stops after an upgrade.
    /// Without it, clients that never finish their headers keep one of the worker's fds each,
    /// forever (axum's `serve` sets no such timeout).
    pub fn set_header_timeout(&self, timeout: Option<Duration>) {
        let ms = timeout.map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1));
        self.inner.header_timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// Sets the time over which a drain ends this worker's Socket.IO sessions (upgraded
    /// connections, pending long-polls), one by one and evenly (see [`Worker::drained`]); `Duration::ZERO` shuts them all
    /// down at once, when the drain begins; `None` restores the default: the grace divided by
    /// [`SPREAD_SHARE_OF_GRACE`], at most [`MAX_SPREAD`]. A spread is never longer than the grace.
    /// `CLUSTERD_DRAIN_SPREAD_MS` in clusterd's environment sets it for every worker.
    pub fn set_drain_spread(&self, spread: Option<Duration>) {
        let ms = spread.map_or(SPREAD_OF_GRACE, |s| u64::try_from(s.as_millis()).unwrap_or(u64::MAX - 1));
        self.inner.drain_spread_ms.store(ms, Ordering::Relaxed);
    }

    /// The connections clusterd hands to this worker. Can be taken once; later calls fail with
    /// [`Error::AlreadyTaken`]. Connections that arrive before this call wait in a queue.
    pub fn listener(&self) -> Result<Listener, Error> {
        let queue = lock(&self.inner.listener).take().ok_or(Error::AlreadyTaken)?;
        self.inner.listener_taken.store(true, Ordering::SeqCst);
        Ok(Listener::new(queue, Arc::clone(&self.inner.accepted)))
    }

    /// Reports that this worker created the session `sid` (an Engine.IO session id, 1 to 64
    /// characters of `[A-Za-z0-9_-]`), and returns once clusterd has recorded it. Send the session
    /// id to the client only after this returns: then the client's next request, whichever
    /// connection it comes on, is routed here. (An id another worker already owns stays with
    /// that worker: clusterd logs it and acknowledges all the same.)
    pub async fn session_open(&self, sid: &str) -> Result<(), Error> {
        if sid.is_empty() || sid.len() > 64 || !sid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::BadSessionId { sid: sid.to_owned() });
        }
        // Held here from now on, whatever clusterd answers: a request for it on a kept-alive
        // connection of this worker is served here.
        self.inner.sessions.insert(sid);
        let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.acks).insert(seq, tx);
        let sent = self.send(&FromWorker::SessionOpen { seq, sid: sid.to_owned() }).await;
        let acked = match sent {
            Ok(()) => tokio::time::timeout(SESSION_ACK_TIMEOUT, rx).await,
            Err(error) => {
                lock(&self.inner.acks).remove(&seq);
                return Err(error);
            }
        };
        lock(&self.inner.acks).remove(&seq);
        match acked {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::Disconnected),
            Err(_) => Err(Error::SessionTimeout { sid: sid.to_owned() }),
        }
    }

    /// Asks clusterd to listen on `addr` (`HOST:PORT`, `[V6]:PORT` or `unix:/path`) for this
    /// worker, as `server.listen` does in a Node.js `cluster` worker: clusterd binds the address
    /// once, and balances its connections over every worker that asked for it. They arrive through
    /// [`Worker::listener`] like all handed-off connections ([`Connection::local_addr`] tells which
    /// address a client used). Returns the address clusterd listens on (a port 0 is resolved).
    ///
    /// A worker that restarts asks again (its program runs anew); the socket stays bound in
    /// clusterd meanwhile, so no connection is refused while no worker is ready (they get a 503).
    /// A listen lasts as long as this process. clusterd bounds the listeners it keeps for the
    /// workers (see its README, "Limits and guarantees"): past them, the listen fails with
    /// [`Error::Listen`] and a reason that starts with `too many listeners`.
    pub async fn listen(&self, addr: &str) -> Result<String, Error> {
        let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.listens).insert(seq, tx);
        if let Err(error) = self.send(&FromWorker::Listen { seq, addr: addr.to_owned() }).await {
            lock(&self.inner.listens).remove(&seq);
            return Err(error);
        }
        match rx.await {
            Ok(ListenResult::Bound { addr }) => Ok(addr),
            Ok(ListenResult::Failed { reason }) => Err(Error::Listen { addr: addr.to_owned(), reason }),
            Err(_) => Err(Error::Disconnected),
        }
    }

    /// Registers this worker's metrics for clusterd's scrapes (`clusterd --metrics`, `clusterd
    /// metrics`): on each scrape clusterd asks every ready worker, and `render` gives this one's
    /// metrics in the Prometheus text format 0.0.4 (what `prometheus::TextEncoder`, or any
    /// Prometheus client's 0.0.4 encoder, writes). clusterd adds `worker="<id>"` to every sample
    /// and merges the families of all workers, each once with its HELP and TYPE; a family named
    /// `process_*` or `clusterd_*` is renamed `worker_process_*` / `worker_clusterd_*` (those
    /// names are clusterd's own).
    ///
    /// `render` runs on the runtime, once per scrape: keep it quick. A text over
    /// [`MAX_METRICS`](crate::protocol::MAX_METRICS) bytes, or one that is not valid 0.0.4, leaves
    /// this worker out of the scrape. Calling it again replaces the function. A worker that never
    /// calls it is never asked; one that calls it is asked from the first scrape after clusterd
    /// has read its announcement (sent in the background, a moment after this call).
    ///
    /// ```no_run
    /// # fn run(worker: &clusterd_worker::Worker) {
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// let served = Arc::new(AtomicU64::new(0));
    /// let counter = Arc::clone(&served);
    /// worker.set_metrics(move || {
    ///     format!(
    ///         "# HELP app_requests_total Requests served.\n# TYPE app_requests_total counter\napp_requests_total {}\n",
    ///         counter.load(Ordering::Relaxed)
    ///     )
    /// });
    /// # }
    /// ```
    pub fn set_metrics<F>(&self, render: F)
    where
        F: Fn() -> String + Send + Sync + 'static,
    {
        let first = lock(&self.inner.metrics).replace(MetricsSource(Arc::new(render))).is_none();
        if first {
            let _ = self.inner.reports.try_send(Report::Frame(FromWorker::MetricsAvailable));
        }
    }

    /// The bus: messages to and from the other workers, relayed by clusterd.
    pub fn bus(&self) -> Result<crate::bus::Bus, Error> {
        self.inner.bus.clone().ok_or(Error::NotUnderClusterd { var: crate::bus_protocol::ENV_BUS_FD })
    }

    /// Reports that the session `sid` ended. Never blocks; safe to call from `Drop`.
    pub fn session_close(&self, sid: &str) {
        self.inner.sessions.remove(sid);
        let _ = self.inner.reports.try_send(Report::Frame(FromWorker::SessionClose { sid: sid.to_owned() }));
    }

    /// The sessions this process holds (opened and not closed).
    #[cfg_attr(not(feature = "socketioxide"), allow(dead_code))]
    pub(crate) fn held_sessions(&self) -> Vec<Box<str>> {
        self.inner.sessions.snapshot()
    }

    /// Declares that this worker serves Engine.IO sessions (its `SessionLayer` exists), before any
    /// session is open.
    #[cfg_attr(not(feature = "socketioxide"), allow(dead_code))]
    pub(crate) fn uses_sessions(&self) {
        self.inner.sessions.mark_used();
    }

    /// Counts `sid` as held here at once, before its report reaches clusterd.
    #[cfg_attr(not(feature = "socketioxide"), allow(dead_code))]
    pub(crate) fn hold_session(&self, sid: &str) {
        self.inner.sessions.insert(sid);
    }

    async fn send(&self, frame: &FromWorker) -> Result<(), Error> {
        Ok(self.inner.channel.send(frame).await?)
    }
}

/// Sends the reports queued by synchronous code until the channel fails. Connection closes queued
/// together go out as one frame: under load, one datagram reports many. While the worker is at
/// capacity, closes (and a timer) make it count its fds again, and it reports when it has room.
async fn send_reports(
    channel: Arc<WorkerChannel>,
    mut queue: mpsc::Receiver<Report>,
    capacity: Arc<crate::capacity::Capacity>,
    conns: Arc<crate::listener::Drain>,
) {
    let mut batch = Vec::new();
    let mut recheck = tokio::time::interval(CAPACITY_RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What clusterd was last told. Only this task tells it, from the current state, so the
    // reports can never arrive out of order.
    let mut told_full = false;
    loop {
        let received = tokio::select! {
            n = queue.recv_many(&mut batch, MAX_CLOSED_PER_FRAME) => n,
            _ = recheck.tick(), if capacity.is_full() => usize::MAX,
        };
        if received == 0 {
            return;
        }
        let mut ids = Vec::new();
        for report in batch.drain(..) {
            match report {
                Report::Closed(id) => ids.push(id),
                Report::Capacity => {}
                Report::Handback { id, fd, initial } => {
                    let frame = FromWorker::Handback(crate::protocol::Handback { id, initial });
                    if let Err(error) = channel.send_with_fd(&frame, std::os::fd::AsFd::as_fd(&fd)).await {
                        // Lost with our fd (the client sees the close): count it closed.
                        tracing::warn!(id, %error, "cannot give a connection back to clusterd");
                        ids.push(id);
                    }
                    // clusterd holds the socket now (or it is lost): our copy may close.
                    drop(fd);
                    conns.release();
                }
                Report::Frame(frame) => {
                    if channel.send(&frame).await.is_err() {
                        return;
                    }
                }
            }
        }
        if !ids.is_empty() && channel.send(&FromWorker::ConnectionsClosed { ids }).await.is_err() {
            return;
        }
        capacity.recheck();
        let full = capacity.is_full();
        if full != told_full {
            if channel.send(&FromWorker::Capacity { full }).await.is_err() {
                return;
            }
            told_full = full;
        }
    }
}

/// The header timeout in milliseconds: `CLUSTERD_HEADER_TIMEOUT_MS`, or the default.
fn header_timeout_from_env() -> Result<u64, Error> {
    match std::env::var(crate::listener::ENV_HEADER_TIMEOUT_MS) {
        Ok(value) => {
            value.trim().parse().map_err(|_| Error::BadEnv { var: crate::listener::ENV_HEADER_TIMEOUT_MS, value })
        }
        Err(_) => Ok(u64::try_from(crate::DEFAULT_HEADER_TIMEOUT.as_millis()).unwrap_or(u64::MAX)),
    }
}

/// The spread set by `CLUSTERD_DRAIN_SPREAD_MS`, or `SPREAD_OF_GRACE`.
fn drain_spread_from_env() -> Result<u64, Error> {
    match std::env::var(ENV_DRAIN_SPREAD_MS) {
        Ok(value) => match value.trim().parse::<u64>() {
            Ok(ms) if ms < SPREAD_OF_GRACE => Ok(ms),
            _ => Err(Error::BadEnv { var: ENV_DRAIN_SPREAD_MS, value }),
        },
        Err(_) => Ok(SPREAD_OF_GRACE),
    }
}

fn env_parse<T: std::str::FromStr>(var: &'static str) -> Result<T, Error> {
    let value = std::env::var(var).map_err(|_| Error::NotUnderClusterd { var })?;
    value.trim().parse().map_err(|_| Error::BadEnv { var, value })
}

fn set_nonblocking(fd: &std::os::fd::OwnedFd) -> nix::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

async fn watch_sigterm(mut sigterm: tokio::signal::unix::Signal, inner: Arc<Inner>) {
    if sigterm.recv().await.is_some() {
        tracing::debug!("SIGTERM: draining");
        start_drain(&inner);
    }
}

/// Starts the drain sequence once: wait for clusterd's drain frame (the connections it handed
/// over come before it on the socket), let the application take them, then signal the drain.
fn start_drain(inner: &Arc<Inner>) {
    if inner.draining_started.swap(true, Ordering::SeqCst) {
        return;
    }
    let inner = Arc::clone(inner);
    tokio::spawn(async move {
        let _ = tokio::time::timeout(DRAIN_FRAME_WAIT, inner.asked.cancelled()).await;
        if inner.listener_taken.load(Ordering::SeqCst) {
            let deadline = tokio::time::Instant::now() + DRAIN_ACCEPT_WAIT;
            while inner.connections.max_capacity() > inner.connections.capacity() {
                if tokio::time::timeout_at(deadline, inner.accepted.notified()).await.is_err() {
                    tracing::warn!("the application did not take every handed-over connection before draining");
                    break;
                }
            }
            // A server that shuts down gracefully closes connections it sees as idle: one it took
            // but has not read from yet would lose its request. Wait until it has read from each.
            while inner.unread.count() > 0 {
                if tokio::time::timeout_at(deadline, inner.unread.changed.notified()).await.is_err() {
                    tracing::warn!("the application did not read every handed-over connection before draining");
                    break;
                }
            }
        }
        // The connections first: a server that closes its idle ones when told gives them back.
        inner.conns.start();
        inner.drain.cancel();
        let spread = spread_of(*lock(&inner.grace), inner.drain_spread_ms.load(Ordering::Relaxed));
        spread_sessions(&inner.conns, spread).await;
    });
}

/// How long a drain spreads the ends of its upgraded connections: as set (`ms`), or a share of
/// the grace; never longer than the grace, and at once without one (no drain frame came).
fn spread_of(grace: Option<Duration>, ms: u64) -> Duration {
    let Some(grace) = grace else { return Duration::ZERO };
    match ms {
        SPREAD_OF_GRACE => (grace / SPREAD_SHARE_OF_GRACE).min(MAX_SPREAD),
        ms => Duration::from_millis(ms).min(grace),
    }
}

/// Ends the Socket.IO sessions (upgraded connections, pending long-polls) one by one, evenly
/// over `spread`; then any left, and any registered later, at once.
async fn spread_sessions(conns: &crate::listener::Drain, spread: Duration) {
    let start = tokio::time::Instant::now();
    let sockets = conns.sessions(false);
    let n = u32::try_from(sockets.len()).unwrap_or(u32::MAX);
    for (i, socket) in (0..n).zip(sockets) {
        tokio::time::sleep_until(start + spread * i / n).await;
        socket.end();
    }
    for socket in conns.sessions(true) {
        socket.end();
    }
}

/// Reads clusterd's frames until the channel closes; a drain frame or the close cancels the drain
/// token, and the first Hello starts the heartbeat.
async fn read_frames(inner: Arc<Inner>) {
    loop {
        match inner.channel.recv_with_fd().await {
            Ok(Some((ToWorker::Hello(hello), _))) => {
                if hello.heartbeat_ms > 0 {
                    let every = Duration::from_millis(u64::from(hello.heartbeat_ms));
                    tokio::spawn(heartbeat(Arc::clone(&inner.channel), every, inner.drain.clone()));
                }
            }
            Ok(Some((ToWorker::Drain { grace_ms }, _))) => {
                *lock(&inner.grace) = Some(Duration::from_millis(grace_ms));
                inner.asked.cancel();
                start_drain(&inner);
            }
            Ok(Some((ToWorker::Connection(frame), Some(fd)))) => {
                let id = frame.id;
                if inner.capacity.on_fd(std::os::fd::AsRawFd::as_raw_fd(&fd)) {
                    tracing::warn!("close to the fd limit: telling clusterd this worker is full");
                    let _ = inner.reports.try_send(Report::Capacity);
                }
                let ms = inner.header_timeout_ms.load(Ordering::Relaxed);
                let serving = crate::listener::Serving {
                    header_timeout: (ms > 0).then(|| Duration::from_millis(ms)),
                    sessions: Arc::clone(&inner.sessions),
                    drain: Arc::clone(&inner.conns),
                };
                match Connection::new(frame, fd, inner.reports.clone(), Arc::clone(&inner.unread), &serving) {
                    // A full queue (nobody accepts) drops the connection, which reports it closed.
                    Ok(connection) => {
                        if inner.connections.try_send(connection).is_err() {
                            tracing::warn!(id, "connection queue full or listener dropped: closing a connection");
                        }
                    }
                    Err(error) => {
                        tracing::warn!(id, %error, "cannot use a handed-off connection");
                        let _ = inner.reports.try_send(Report::Closed(id));
                    }
                }
            }
            Ok(Some((ToWorker::Listening { seq, result }, _))) => {
                if let Some(answer) = lock(&inner.listens).remove(&seq) {
                    let _ = answer.send(result);
                }
            }
            Ok(Some((ToWorker::SessionAck { seq }, _))) => {
                if let Some(ack) = lock(&inner.acks).remove(&seq) {
                    let _ = ack.send(());
                }
            }
            Ok(Some((ToWorker::MetricsRequest { id }, _))) => {
                let source = lock(&inner.metrics).clone();
                tokio::spawn(answer_metrics(
                    Arc::clone(&inner.channel),
                    Arc::clone(&inner.metrics_answering),
                    id,
                    source,
                ));
            }
            Ok(Some((ToWorker::Connection(frame), None))) => {
                // At the fd limit the kernel drops the fd (the client sees the connection close).
                // It costs this connection: report it closed, and full, and read on.
                if inner.capacity.on_lost() {
                    tracing::warn!(id = frame.id, "at the fd limit, a connection was lost: this worker is full");
                    let _ = inner.reports.try_send(Report::Capacity);
                }
                let _ = inner.reports.try_send(Report::Closed(frame.id));
            }
            Ok(None) => {
                tracing::warn!("clusterd closed the IPC channel; draining");
                inner.asked.cancel();
                start_drain(&inner);
                return;
            }
            Err(error) => {
                tracing::error!(%error, "IPC channel failed; draining");
                inner.asked.cancel();
                start_drain(&inner);
                return;
            }
        }
    }
}

/// Answers clusterd's metrics request `id` with the text `source` renders (empty without one), in
/// chunks; a text over the limit is announced by its length alone, and clusterd leaves it out.
async fn answer_metrics(
    channel: Arc<WorkerChannel>,
    answering: Arc<tokio::sync::Mutex<()>>,
    id: u32,
    source: Option<MetricsSource>,
) {
    use crate::protocol::{MAX_METRICS, MAX_METRICS_CHUNK, MetricsChunk};
    let text = source.map(|render| (render.0)()).unwrap_or_default();
    let _turn = answering.lock().await;
    let total = u32::try_from(text.len()).unwrap_or(u32::MAX);
    if text.len() > MAX_METRICS {
        tracing::warn!(bytes = text.len(), max = MAX_METRICS, "the metrics are too large for clusterd: not sent");
        let _ = channel.send(&FromWorker::Metrics(MetricsChunk { id, total, chunk: Vec::new() })).await;
        return;
    }
    let bytes = text.as_bytes();
    let mut chunks = bytes.chunks(MAX_METRICS_CHUNK).peekable();
    if chunks.peek().is_none() {
        let _ = channel.send(&FromWorker::Metrics(MetricsChunk { id, total, chunk: Vec::new() })).await;
        return;
    }
    for chunk in chunks {
        let frame = FromWorker::Metrics(MetricsChunk { id, total, chunk: chunk.to_vec() });
        if channel.send(&frame).await.is_err() {
            return;
        }
    }
}

/// Heartbeats keep going while draining: a worker finishing long requests is still alive.
async fn heartbeat(channel: Arc<WorkerChannel>, every: Duration, _drain: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if channel.send(&FromWorker::Heartbeat).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spread_is_half_the_grace_by_default_and_never_longer_than_it() {
        let s = Duration::from_secs;
        assert_eq!(spread_of(Some(s(30)), SPREAD_OF_GRACE), s(15));
        assert_eq!(spread_of(Some(s(3600)), SPREAD_OF_GRACE), MAX_SPREAD);
        assert_eq!(spread_of(None, SPREAD_OF_GRACE), Duration::ZERO, "no drain frame, no grace known");
        assert_eq!(spread_of(Some(s(30)), 0), Duration::ZERO);
        assert_eq!(spread_of(Some(s(30)), 5_000), s(5));
        assert_eq!(spread_of(Some(s(30)), 90_000), s(30));
    }
}
