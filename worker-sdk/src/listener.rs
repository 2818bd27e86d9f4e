//! Handed-off client connections, as ordinary Tokio streams.
//!
//! clusterd accepts every client connection, reads the first bytes to route it, and passes the
//! socket to one worker together with those bytes. A [`Connection`] yields exactly what the client
//! sent, in order: first the bytes clusterd read, then the socket's own. Dropping it closes the
//! socket and tells clusterd, which counts the connections each worker carries.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

use crate::protocol::Address;
use crate::report::Report;

/// A client's (or a listening socket's) address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClientAddr {
    /// A TCP peer.
    Tcp(std::net::SocketAddr),
    /// A Unix socket, with its path when it has one.
    Unix(Option<PathBuf>),
    /// Not known.
    Unknown,
}

impl From<&Address> for ClientAddr {
    fn from(address: &Address) -> Self {
        use std::os::unix::ffi::OsStrExt;
        match address {
            Address::Unix { path } if path.is_empty() => Self::Unix(None),
            Address::Unix { path } => Self::Unix(Some(std::ffi::OsStr::from_bytes(path).into())),
            Address::Unknown => Self::Unknown,
            other => other.socket_addr().map_or(Self::Unknown, Self::Tcp),
        }
    }
}

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(Some(path)) => write!(f, "unix:{}", path.display()),
            Self::Unix(None) => f.write_str("unix:(unnamed)"),
            Self::Unknown => f.write_str("(unknown)"),
        }
    }
}

/// How long a request head may take on a handed-off connection, unless
/// [`Worker::set_header_timeout`](crate::Worker::set_header_timeout) or
/// `CLUSTERD_HEADER_TIMEOUT_MS` says otherwise. hyper's own default, which `axum::serve` leaves off.
pub const DEFAULT_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The variable that sets the header timeout of every worker (milliseconds; `0`: no limit).
pub(crate) const ENV_HEADER_TIMEOUT_MS: &str = "CLUSTERD_HEADER_TIMEOUT_MS";

enum Socket {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
    /// Given back to clusterd.
    Gone,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the connection was given back to clusterd")
}

/// One client connection handed to this worker by clusterd.
///
/// When clusterd routed it by an HTTP/1.x request line, the connection follows the framing of
/// its requests (their lengths, no more): a request head that is not complete within the header
/// timeout ([`crate::Worker::set_header_timeout`], 30 s by default) fails the read with
/// `TimedOut`, so the server closes the connection and its fd is free again.
pub struct Connection {
    /// Bytes to yield before reading the socket again: clusterd's, or ones held back.
    initial: Vec<u8>,
    consumed: usize,
    socket: Socket,
    http: Option<Box<Http>>,
    peer: ClientAddr,
    local: ClientAddr,
    report: Option<(u64, mpsc::Sender<Report>)>,
    /// Counted until the application first reads: a drain waits for that (see `Worker::draining`).
    unread: Option<Arc<Unread>>,
    /// The worker's drain, as its connections see it (counted live in it until closed).
    drain: Arc<Drain>,
    /// Registered with the drain once a request switched the stream to another protocol, or
    /// once it carried an Engine.IO long-poll.
    spread: Option<Arc<SpreadSocket>>,
    /// Queued for clusterd: the report task counts it closed once the frame is sent.
    handed: bool,
}

/// The HTTP/1.x side of a connection: its framing, the header timer, and the check of each later
/// request's session.
///
/// A later request reaches the server only once the response to the one before is complete
/// (pipelined bytes wait here, not in the server's buffer): so when a drain begins, every request
/// the server has read is the one it is answering, which it finishes, and the requests behind it
/// go back to clusterd with their bytes, unread by this worker's application.
struct Http {
    tracker: crate::http1::Tracker,
    /// The server's responses, to know when the request in flight is answered.
    responses: crate::http1::Responses,
    /// The server's read waiting for that answer.
    reader: Option<std::task::Waker>,
    /// The sessions this worker holds, to tell a later request of another worker's session.
    sessions: Arc<Sessions>,
    /// A later request begins at the held-back bytes and is not checked yet.
    decide: bool,
    /// Given back to clusterd (decided): reads end, and the socket goes back on shutdown or drop.
    handing: bool,
    timeout: Option<std::time::Duration>,
    /// Runs while a request head is incomplete; created on first use, reset for each head.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The timer runs for the current head.
    armed: bool,
}

impl Http {
    /// A request the server has read is not answered yet (and the answers are followed).
    fn awaiting_answer(&self) -> bool {
        self.responses.followed() && self.responses.answered() < self.tracker.heads()
    }

    /// Follows what the server wrote; wakes a read held until this answer.
    fn wrote(&mut self, bytes: &[u8]) {
        let before = self.responses.answered();
        self.responses.feed(bytes, self.tracker.head_method());
        if self.responses.answered() != before
            && let Some(reader) = self.reader.take()
        {
            reader.wake();
        }
    }

    /// `Err(TimedOut)` once the current head took longer than the timeout; registers the
    /// timer's wakeup otherwise.
    fn poll_timeout(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(timeout) = self.timeout else { return Ok(()) };
        if self.tracker.phase() != crate::http1::Phase::Head {
            self.armed = false;
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            timer.as_mut().reset(deadline);
            self.armed = true;
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(io::ErrorKind::TimedOut, "request head not received in time")),
            Poll::Pending => Ok(()),
        }
    }
}

/// What a new connection needs from its worker.
#[derive(Debug, Clone)]
pub(crate) struct Serving {
    /// The longest a request head may take; `None`: no limit.
    pub(crate) header_timeout: Option<std::time::Duration>,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) drain: Arc<Drain>,
}

/// The worker's drain as its connections see it, shared by all of them.
///
/// Once the drain starts, a kept-alive connection between two requests is given back to clusterd
/// instead of closing (its client may be sending its next request at that very moment: a close
/// would lose it), and the Socket.IO sessions are ended one by one over a spread, so that their
/// clients do not all reconnect to the other workers in the same second: upgraded connections
/// (WebSockets) are shut down, pending long-polls answered with an Engine.IO `close` packet.
#[derive(Debug, Default)]
pub(crate) struct Drain {
    started: AtomicBool,
    /// Connections handed over and neither closed nor given back (a handback counts once its
    /// frame is sent: the process may exit after that, not before).
    live: AtomicUsize,
    /// Signalled when `live` comes down to 0.
    pub(crate) idle: tokio::sync::Notify,
    upgrades: Mutex<Upgrades>,
}

#[derive(Debug, Default)]
struct Upgrades {
    sockets: Vec<Weak<SpreadSocket>>,
    /// The list is compacted (ended connections dropped) when it reaches this length.
    compact_at: usize,
    /// The spread is over: a connection registered from now on is ended at once.
    swept: bool,
}

impl Drain {
    pub(crate) fn start(&self) {
        self.started.store(true, Ordering::SeqCst);
    }

    pub(crate) fn started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// One connection fewer: closed, or its handback sent.
    pub(crate) fn release(&self) {
        if self.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// The connections whose sessions the spread ends (upgraded ones, long-polling ones) still
    /// open, in the order they registered; with `last`, the spread ends: later ones are ended at
    /// once.
    pub(crate) fn sessions(&self, last: bool) -> Vec<Arc<SpreadSocket>> {
        let mut upgrades = self.upgrades.lock().unwrap_or_else(|p| p.into_inner());
        upgrades.swept |= last;
        std::mem::take(&mut upgrades.sockets).iter().filter_map(Weak::upgrade).collect()
    }

    fn register(&self, socket: Arc<SpreadSocket>) -> Arc<SpreadSocket> {
        let mut upgrades = self.upgrades.lock().unwrap_or_else(|p| p.into_inner());
        if upgrades.swept {
            drop(upgrades);
            socket.end();
            return socket;
        }
        upgrades.sockets.push(Arc::downgrade(&socket));
        if upgrades.sockets.len() >= upgrades.compact_at {
            upgrades.sockets.retain(|s| s.strong_count() > 0);
            upgrades.compact_at = (upgrades.sockets.len() * 2).max(64);
        }
        socket
    }
}

/// The answer a draining worker gives a request its server read and dropped unanswered, when the
/// request may not go to another worker (see `Connection::settle_unanswered`).
const UNAVAILABLE: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 0\r\nConnection: close\r\n\r\n";

/// The answer that ends a pending Engine.IO long-poll: one `close` packet. socket.io-client
/// reconnects on it ("transport close"), through clusterd, to a live worker; it would not on a
/// Socket.IO disconnect ("io server disconnect").
const CLOSE_POLL: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Length: 1\r\nConnection: close\r\n\r\n1";
/// The same in Engine.IO protocol 3, whose payload prefixes each packet with its length.
const CLOSE_POLL_V3: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Length: 3\r\nConnection: close\r\n\r\n1:1";

/// The socket of a connection that carries a Socket.IO session, for the drain's spread to end
/// while the connection lives (the fd number is forgotten, under the lock, before the fd closes
/// or goes back to clusterd).
#[derive(Debug)]
pub(crate) struct SpreadSocket {
    state: Mutex<SpreadState>,
}

#[derive(Debug)]
struct SpreadState {
    fd: Option<RawFd>,
    kind: SpreadKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpreadKind {
    /// A WebSocket (or another upgraded protocol).
    Upgraded,
    /// Carries long-polls: `pending`, one the server has not begun to answer.
    Polling { pending: Option<crate::http1::Poll>, ended: bool },
}

impl SpreadSocket {
    fn new(fd: RawFd, kind: SpreadKind) -> Arc<Self> {
        Arc::new(Self { state: Mutex::new(SpreadState { fd: Some(fd), kind }) })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SpreadState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the session on this connection. An upgraded stream is shut down both ways: the
    /// client sees the close now (a WebSocket client reconnects, through clusterd, to a live
    /// worker), and the server reads its end and lets go. A long-poll the server has not begun to
    /// answer is answered with an Engine.IO `close` packet, then the stream is shut down (the
    /// server's own answer, if it comes, fails). A connection between two polls is left alone:
    /// its next poll goes back to clusterd and finds the session gone, on which the client
    /// reconnects too.
    pub(crate) fn end(&self) {
        let mut state = self.state();
        let Some(fd) = state.fd else { return };
        match &mut state.kind {
            SpreadKind::Upgraded => {}
            SpreadKind::Polling { pending: None, .. } | SpreadKind::Polling { ended: true, .. } => return,
            SpreadKind::Polling { pending: Some(poll), ended } => {
                *ended = true;
                let answer = if poll.v3 { CLOSE_POLL_V3 } else { CLOSE_POLL };
                // The socket's buffer is empty while a poll waits for its answer: the few bytes
                // fit. If not, the client sees the stream end, an error it reconnects on as well.
                let flags = nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL;
                let _ = nix::sys::socket::send(fd, answer, flags);
            }
        }
        let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
    }

    fn forget(&self) {
        self.state().fd = None;
    }

    /// The spread answered this connection's long-poll itself and shut it down.
    fn ended(&self) -> bool {
        matches!(self.state().kind, SpreadKind::Polling { ended: true, .. })
    }

    /// A long-poll reached the server on this connection.
    fn poll_pending(&self, poll: crate::http1::Poll) {
        if let SpreadKind::Polling { pending, .. } = &mut self.state().kind {
            *pending = Some(poll);
        }
    }

    /// The server writes: `Err` once the spread answered the poll itself.
    fn server_writes(&self) -> io::Result<()> {
        match &mut self.state().kind {
            SpreadKind::Polling { ended: true, .. } => {
                Err(io::Error::new(io::ErrorKind::BrokenPipe, "the drain ended this Engine.IO session"))
            }
            SpreadKind::Polling { pending, .. } => {
                *pending = None;
                Ok(())
            }
            SpreadKind::Upgraded => Ok(()),
        }
    }

    fn upgrade(&self) {
        self.state().kind = SpreadKind::Upgraded;
    }
}

/// The Engine.IO sessions this worker process holds (it created them), so that a kept-alive
/// connection can tell a request of another worker's session and give the connection back.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    held: std::sync::Mutex<std::collections::HashSet<Box<str>>>,
    /// The application uses Engine.IO sessions (it installed `SessionLayer`, or opened one): only
    /// then is a request with an unknown sid given back (another application might use `sid` for
    /// something else). Set before the first session exists, so that the first worker to serve a
    /// page gives back a poll of a session another worker holds.
    used: std::sync::atomic::AtomicBool,
}

impl Sessions {
    pub(crate) fn insert(&self, sid: &str) {
        self.mark_used();
        self.held.lock().unwrap_or_else(|p| p.into_inner()).insert(sid.into());
    }

    /// The application speaks Engine.IO: requests of sessions it does not hold belong elsewhere.
    pub(crate) fn mark_used(&self) {
        self.used.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn remove(&self, sid: &str) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(sid);
    }

    /// The sessions held now.
    #[cfg_attr(not(feature = "socketioxide"), allow(dead_code))]
    pub(crate) fn snapshot(&self) -> Vec<Box<str>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// Whether a request naming `sid` belongs elsewhere.
    fn foreign(&self, sid: &str) -> bool {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
            && !self.held.lock().unwrap_or_else(|p| p.into_inner()).contains(sid)
    }
}

/// What to do with a later request on a kept-alive connection, from its start.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Its request line is not complete yet.
    NeedMore,
    /// Serve it here.
    Keep,
    /// It names a session this worker does not hold: give the connection back.
    HandBack,
}

fn verdict(start: &[u8], sessions: &Sessions) -> Verdict {
    match crate::http1::request_line(start) {
        None if start.len() < crate::protocol::MAX_HANDBACK => Verdict::NeedMore,
        None => Verdict::Keep,
        Some(line) => match crate::http1::engineio_sid(line) {
            Some(sid) if sessions.foreign(sid) => Verdict::HandBack,
            _ => Verdict::Keep,
        },
    }
}

/// Handed-over connections the application has not read from yet.
#[derive(Debug, Default)]
pub(crate) struct Unread {
    count: std::sync::atomic::AtomicUsize,
    pub(crate) changed: tokio::sync::Notify,
}

impl Unread {
    pub(crate) fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("peer", &self.peer).field("local", &self.local).finish_non_exhaustive()
    }
}

impl Connection {
    /// Builds the stream from the frame's fields and fd. Needs a Tokio runtime.
    pub(crate) fn new(
        frame: crate::protocol::Connection,
        fd: OwnedFd,
        report: mpsc::Sender<Report>,
        unread: Arc<Unread>,
        serving: &Serving,
    ) -> io::Result<Self> {
        // The frame says what kind of socket it is. clusterd accepted it non-blocking (the flag
        // belongs to the open file, which this fd shares); setting it again costs one syscall
        // and keeps Tokio safe whatever sent the fd.
        let socket = match frame.local {
            Address::V4 { .. } | Address::V6 { .. } => {
                let std = std::net::TcpStream::from(fd);
                std.set_nonblocking(true)?;
                Socket::Tcp(tokio::net::TcpStream::from_std(std)?)
            }
            Address::Unix { .. } | Address::Unknown => {
                let std = std::os::unix::net::UnixStream::from(fd);
                std.set_nonblocking(true)?;
                Socket::Unix(tokio::net::UnixStream::from_std(std)?)
            }
        };
        // Only what clusterd routed as HTTP/1.x is followed: a connection that sent nothing may be
        // a protocol where the server speaks first.
        let http = crate::http1::starts_with_request_line(&frame.initial).then(|| {
            Box::new(Http {
                tracker: crate::http1::Tracker::in_first_request(),
                responses: crate::http1::Responses::new(),
                reader: None,
                sessions: Arc::clone(&serving.sessions),
                decide: false,
                handing: false,
                timeout: serving.header_timeout,
                timer: None,
                armed: false,
            })
        });
        Ok(Self {
            initial: frame.initial,
            consumed: 0,
            socket,
            http,
            peer: (&frame.peer).into(),
            local: (&frame.local).into(),
            report: Some((frame.id, report)),
            unread: {
                unread.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Some(unread)
            },
            drain: {
                serving.drain.live.fetch_add(1, Ordering::SeqCst);
                Arc::clone(&serving.drain)
            },
            spread: None,
            handed: false,
        })
    }

    fn raw_fd(&self) -> Option<RawFd> {
        match &self.socket {
            Socket::Tcp(s) => Some(s.as_raw_fd()),
            Socket::Unix(s) => Some(s.as_raw_fd()),
            Socket::Gone => None,
        }
    }

    /// Registers an upgraded connection with the drain, once.
    fn note_upgrade(&mut self) {
        if !self.http.as_ref().is_some_and(|h| h.tracker.upgraded()) {
            return;
        }
        match &self.spread {
            Some(spread) => {
                if spread.state().kind != SpreadKind::Upgraded {
                    spread.upgrade();
                }
            }
            None => {
                let Some(fd) = self.raw_fd() else { return };
                self.spread = Some(self.drain.register(SpreadSocket::new(fd, SpreadKind::Upgraded)));
            }
        }
    }

    /// After request heads went to the server: when the last was an Engine.IO long-poll, the
    /// drain's spread may answer it.
    fn note_heads(&mut self, before: u64) {
        let Some(http) = &self.http else { return };
        if http.tracker.heads() == before {
            return;
        }
        let Some(poll) = http.tracker.poll() else { return };
        let spread = match &self.spread {
            Some(spread) => Arc::clone(spread),
            None => {
                let Some(fd) = self.raw_fd() else { return };
                let socket = SpreadSocket::new(fd, SpreadKind::Polling { pending: Some(poll), ended: false });
                self.spread = Some(Arc::clone(&socket));
                self.drain.register(socket)
            }
        };
        spread.poll_pending(poll);
    }

    /// The server ends the connection between two requests while the worker drains: give it
    /// back instead. Only a connection whose last request let it persist (HTTP/1.1 without
    /// `Connection: close`), whose last response is complete and was not delimited by the close,
    /// and whose next request the server has not begun to read: nothing of it, or only bytes held
    /// back.
    fn give_back_on_close(&self) -> bool {
        let Some(http) = &self.http else { return false };
        self.drain.started()
            && http.tracker.keep_alive()
            && http.responses.between()
            && !http.awaiting_answer()
            && (http.decide
                || (http.tracker.phase() == crate::http1::Phase::Idle && self.consumed == self.initial.len()))
    }

    /// The server ends the connection, while the worker drains, without a byte of the answer to a
    /// request it read (a server that drops what it had not begun; hyper finishes it). A safe
    /// request without a body (`GET`, `HEAD`, `OPTIONS`) goes back to clusterd with its bytes
    /// (and those held back behind it), as its client would retry it; any other is answered
    /// `503` with `Connection: close`, never dropped silently.
    fn settle_unanswered(&mut self) {
        let Some(http) = &mut self.http else { return };
        if http.handing || !self.drain.started() || !http.awaiting_answer() || !http.responses.between() {
            return;
        }
        if self.spread.as_ref().is_some_and(|s| s.ended()) {
            // The spread answered the poll itself.
            return;
        }
        let held = self.initial.len() - self.consumed;
        match http.tracker.last_safe_request() {
            Some(request) if request.len() + held <= crate::protocol::MAX_HANDBACK => {
                let mut initial = request.to_vec();
                initial.extend_from_slice(&self.initial[self.consumed..]);
                (self.initial, self.consumed) = (initial, 0);
                http.handing = true;
            }
            _ => {
                // The socket's buffer has room for a few bytes while the client awaits an answer
                // (straight to the fd: Tokio's `try_write` refuses until it saw the socket
                // writable).
                if let Some(fd) = self.raw_fd() {
                    let flags = nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL;
                    let _ = nix::sys::socket::send(fd, UNAVAILABLE, flags);
                }
            }
        }
    }

    /// The application has started with this connection (or dropped it).
    fn mark_read(&mut self) {
        if let Some(unread) = self.unread.take() {
            unread.count.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            unread.changed.notify_one();
        }
    }

    /// Sets `TCP_NODELAY` (Nagle's algorithm off) on a TCP connection; a Unix one has no such
    /// option (`Ok`, nothing done). clusterd leaves the option as the kernel made it unless run
    /// with `--tcp-nodelay`; a server that writes a response in several pieces (a head, then a
    /// body; a WebSocket frame per message) usually wants it, or its pieces wait for the client's
    /// delayed ACK. With axum: `worker.listener()?.tap_io(|c| { let _ = c.set_nodelay(true); })`
    /// (`axum::serve::ListenerExt`).
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        match &self.socket {
            Socket::Tcp(s) => s.set_nodelay(nodelay),
            Socket::Unix(_) => Ok(()),
            Socket::Gone => Err(gone()),
        }
    }

    /// Whether `TCP_NODELAY` is set (always `false` for a Unix connection).
    pub fn nodelay(&self) -> io::Result<bool> {
        match &self.socket {
            Socket::Tcp(s) => s.nodelay(),
            Socket::Unix(_) => Ok(false),
            Socket::Gone => Err(gone()),
        }
    }

    /// The client's address: behind a load balancer that sends a PROXY protocol header (clusterd
    /// `--proxy-protocol`), the client the header named, not the balancer.
    pub fn peer_addr(&self) -> &ClientAddr {
        &self.peer
    }

    /// The address the client connected to.
    pub fn local_addr(&self) -> &ClientAddr {
        &self.local
    }
}

impl Connection {
    /// Gives the socket back to clusterd with the bytes held back (once; the socket is gone after).
    fn hand_back(&mut self) {
        let Some((id, report)) = self.report.take() else { return };
        if let Some(spread) = self.spread.take() {
            spread.forget();
        }
        let socket = std::mem::replace(&mut self.socket, Socket::Gone);
        let fd: Option<OwnedFd> = match socket {
            Socket::Tcp(s) => s.into_std().ok().map(OwnedFd::from),
            Socket::Unix(s) => s.into_std().ok().map(OwnedFd::from),
            Socket::Gone => None,
        };
        let initial = self.initial.split_off(self.consumed);
        let sent = match fd {
            Some(fd) => report.try_send(Report::Handback { id, fd, initial }).is_ok(),
            None => false,
        };
        if sent {
            self.handed = true;
        } else {
            // The connection is lost (the fd closed with the failed report): count it closed.
            let _ = report.try_send(Report::Closed(id));
        }
    }

    fn handing(&self) -> bool {
        self.http.as_ref().is_some_and(|h| h.handing)
    }

    /// Reads more of a later request's start into the held-back bytes.
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut chunk = [0u8; 4096];
        let mut buf = ReadBuf::new(&mut chunk);
        let read = match &mut self.socket {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, &mut buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, &mut buf),
            Socket::Gone => return Poll::Ready(Ok(0)),
        };
        match read {
            Poll::Ready(Ok(())) => {
                self.initial.drain(..self.consumed);
                self.consumed = 0;
                self.initial.extend_from_slice(buf.filled());
                Poll::Ready(Ok(buf.filled().len()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.mark_read();
        self.settle_unanswered();
        if self.handing() {
            self.hand_back();
        }
        if let Some((id, report)) = self.report.take() {
            // A full queue means clusterd is not reading; its count heals when this worker exits.
            let _ = report.try_send(Report::Closed(id));
        }
        if let Some(spread) = self.spread.take() {
            spread.forget();
        }
        if !self.handed {
            self.drain.release();
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let heads = this.http.as_ref().map_or(0, |h| h.tracker.heads());
        let read = this.read_for_server(cx, buf);
        this.note_heads(heads);
        read
    }
}

impl Connection {
    /// What the server reads: the bytes the client sent, held back at the start of each later
    /// request until it is decided (and the answer before it complete).
    fn read_for_server(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self;
        this.mark_read();
        this.note_upgrade();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if let Some(http) = &mut this.http {
                if http.handing {
                    // The end of this connection for the server; clusterd gets the socket.
                    return Poll::Ready(Ok(()));
                }
                if http.decide && http.awaiting_answer() {
                    // A pipelined request waits for the answer to the one before; its head timer
                    // starts once it goes on.
                    http.armed = false;
                    http.reader = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                if let Err(error) = http.poll_timeout(cx) {
                    return Poll::Ready(Err(error));
                }
                if http.decide {
                    let start = &this.initial[this.consumed..];
                    let verdict = match verdict(start, &http.sessions) {
                        // A draining worker gives back every later request it can: once the
                        // server has its bytes, it may close the connection with them unserved.
                        Verdict::Keep if this.drain.started() && crate::http1::request_line(start).is_some() => {
                            Verdict::HandBack
                        }
                        verdict => verdict,
                    };
                    match verdict {
                        Verdict::Keep => http.decide = false,
                        Verdict::HandBack => {
                            http.handing = true;
                            return Poll::Ready(Ok(()));
                        }
                        Verdict::NeedMore => match this.poll_read_more(cx) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(Ok(n)) => {
                                if n == 0
                                    && let Some(http) = &mut this.http
                                {
                                    // The client stopped mid-line: the server sees what came.
                                    http.decide = false;
                                }
                                continue;
                            }
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        },
                    }
                }
            }
            if this.consumed < this.initial.len() {
                let rest = &this.initial[this.consumed..];
                let want = rest.len().min(buf.remaining());
                let mut n = want;
                if let Some(http) = &mut this.http {
                    n = http.tracker.feed(&rest[..want]);
                    // A later request begins after the `n` bytes: check it before it goes on.
                    http.decide = n < want;
                }
                buf.put_slice(&rest[..n]);
                this.consumed += n;
                if this.consumed == this.initial.len() {
                    this.initial = Vec::new();
                    this.consumed = 0;
                }
                if n == 0 {
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            let read = match &mut this.socket {
                Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
                Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
                Socket::Gone => return Poll::Ready(Ok(())),
            };
            if let (Poll::Ready(Ok(())), Some(http)) = (&read, &mut this.http) {
                let fresh = &buf.filled()[before..];
                let used = http.tracker.feed(fresh);
                if used < fresh.len() {
                    // A later request begins in what was read: hold it back, so that it goes
                    // through the tracker (and the timer) as a request of its own.
                    this.initial = fresh[used..].to_vec();
                    this.consumed = 0;
                    http.decide = true;
                    buf.set_filled(before + used);
                    if used == 0 {
                        continue;
                    }
                }
            }
            return read;
        }
    }
}

fn write_socket(socket: &mut Socket, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
    match socket {
        Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        Socket::Gone => Poll::Ready(Err(gone())),
    }
}

impl Connection {
    /// A draining connection whose client may go on after this response (on another worker, once
    /// the connection is given back): a response head's `Connection: close` is hidden from it.
    fn keeps_open(&self) -> bool {
        self.drain.started() && self.http.as_ref().is_some_and(|h| h.tracker.keep_alive())
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let keeps_open = self.keeps_open();
        let this = &mut *self;
        let Some(http) = &mut this.http else { return write_socket(&mut this.socket, cx, buf) };
        if let Some(spread) = &this.spread {
            spread.server_writes()?;
        }
        let renamed = if keeps_open { http.responses.keep_open(buf) } else { None };
        let data = match &renamed {
            Some((bytes, limit)) => &bytes[..*limit],
            None => buf,
        };
        let written = std::task::ready!(write_socket(&mut this.socket, cx, data))?;
        http.wrote(&data[..written]);
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.http.is_some() {
            if self.keeps_open() {
                // A head may need renaming: one slice at a time (a shorter write is allowed).
                let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &**b);
                return self.poll_write(cx, first);
            }
            let this = &mut *self;
            if let Some(spread) = &this.spread {
                spread.server_writes()?;
            }
            let written = std::task::ready!(match &mut this.socket {
                Socket::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                Socket::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                Socket::Gone => Poll::Ready(Err(gone())),
            })?;
            if let Some(http) = &mut this.http {
                let mut left = written;
                for b in bufs {
                    let n = left.min(b.len());
                    http.wrote(&b[..n]);
                    left -= n;
                    if left == 0 {
                        break;
                    }
                }
            }
            return Poll::Ready(Ok(written));
        }
        match &mut self.socket {
            Socket::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Socket::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Socket::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.socket {
            Socket::Tcp(s) => s.is_write_vectored(),
            Socket::Unix(s) => s.is_write_vectored(),
            Socket::Gone => false,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.socket {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
            Socket::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.settle_unanswered();
        if !self.handing()
            && self.give_back_on_close()
            && let Some(http) = &mut self.http
        {
            http.handing = true;
        }
        if self.handing() {
            // Everything the server wrote is flushed: the client's connection goes on elsewhere.
            self.hand_back();
            return Poll::Ready(Ok(()));
        }
        match &mut self.socket {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Gone => Poll::Ready(Ok(())),
        }
    }
}

/// The connections clusterd hands to this worker, from [`crate::Worker::listener`].
///
/// With the `axum` feature it is an `axum::serve::Listener`, with the client's [`ClientAddr`]
/// available to handlers through `ConnectInfo`:
///
/// ```ignore
/// axum::serve(worker.listener()?, app.into_make_service_with_connect_info::<ClientAddr>())
///     .with_graceful_shutdown(worker.drain_token().cancelled_owned())
///     .await?;
/// ```
#[derive(Debug)]
pub struct Listener {
    connections: mpsc::Receiver<Connection>,
    local: ClientAddr,
    accepted: std::sync::Arc<tokio::sync::Notify>,
}

impl Listener {
    pub(crate) fn new(connections: mpsc::Receiver<Connection>, accepted: std::sync::Arc<tokio::sync::Notify>) -> Self {
        Self { connections, local: ClientAddr::Unknown, accepted }
    }

    /// The next connection; `None` once clusterd has closed the IPC channel (no more will come).
    pub async fn accept(&mut self) -> Option<Connection> {
        let connection = self.connections.recv().await?;
        self.local = connection.local.clone();
        self.accepted.notify_one();
        Some(connection)
    }
}

/// The connections as a stream, for servers that take one (hyper's accept loops, tonic's
/// `serve_with_incoming`); it ends when clusterd closes the IPC channel.
impl futures_core::Stream for Listener {
    type Item = io::Result<Connection>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.connections.poll_recv(cx);
        if let Poll::Ready(Some(_)) = &next {
            self.accepted.notify_one();
        }
        next.map(|next| next.map(Ok))
    }
}

#[cfg(feature = "axum")]
mod axum_support {
    use super::{ClientAddr, Connection, Listener};

    impl axum::serve::Listener for Listener {
        type Io = Connection;
        type Addr = ClientAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            match Listener::accept(self).await {
                Some(connection) => {
                    let peer = connection.peer_addr().clone();
                    (connection, peer)
                }
                // No connection will ever come; axum's graceful shutdown ends the server.
                None => std::future::pending().await,
            }
        }

        fn local_addr(&self) -> std::io::Result<Self::Addr> {
            Ok(self.local.clone())
        }
    }

    impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Listener>> for ClientAddr {
        fn connect_info(stream: axum::serve::IncomingStream<'_, Listener>) -> Self {
            stream.remote_addr().clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A connection over a Unix socket pair whose first bytes (clusterd's) are `initial`; returns
    /// it, the client's end and the reports it makes.
    fn connection(
        initial: &[u8],
        sessions: Arc<Sessions>,
    ) -> (Connection, std::os::unix::net::UnixStream, mpsc::Receiver<Report>) {
        connection_draining(initial, sessions, Arc::default())
    }

    /// As `connection`, with the worker's drain state.
    fn connection_draining(
        initial: &[u8],
        sessions: Arc<Sessions>,
        drain: Arc<Drain>,
    ) -> (Connection, std::os::unix::net::UnixStream, mpsc::Receiver<Report>) {
        let (ours, client) = std::os::unix::net::UnixStream::pair().unwrap();
        let frame = crate::protocol::Connection {
            id: 7,
            peer: Address::Unknown,
            local: Address::Unknown,
            initial: initial.to_vec(),
        };
        let (tx, rx) = mpsc::channel(8);
        let serving = Serving { header_timeout: None, sessions, drain };
        let c = Connection::new(frame, OwnedFd::from(ours), tx, Arc::default(), &serving).unwrap();
        (c, client, rx)
    }

    #[tokio::test]
    async fn a_pipelined_request_of_another_session_is_given_back_with_its_bytes() {
        let sessions = Arc::new(Sessions::default());
        sessions.insert("mine");
        let first = b"GET /?EIO=4&sid=mine HTTP/1.1\r\nHost: x\r\n\r\n";
        let second = b"GET /?EIO=4&transport=polling&sid=theirs HTTP/1.1\r\nHost: x\r\n\r\n";
        let (mut c, _client, mut reports) = connection(&[&first[..], second].concat(), sessions);
        serve_first(&mut c, first).await;
        let mut served = Vec::new();
        c.read_to_end(&mut served).await.unwrap();
        assert!(served.is_empty(), "the server sees the first request, then the end");
        drop(c);
        match reports.recv().await {
            Some(Report::Handback { id, initial, .. }) => assert_eq!((id, initial.as_slice()), (7, &second[..])),
            other => panic!("{other:?}"),
        }
        assert!(reports.try_recv().is_err(), "no close report besides the handback");
    }

    #[tokio::test]
    async fn a_later_request_of_a_held_session_is_served_and_the_connection_closes_normally() {
        let sessions = Arc::new(Sessions::default());
        sessions.insert("mine");
        let first = b"GET / HTTP/1.1\r\n\r\n";
        let second = b"GET /?EIO=4&sid=mine HTTP/1.1\r\n\r\n";
        let (mut c, client, mut reports) = connection(&[&first[..], second].concat(), sessions);
        serve_first(&mut c, first).await;
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut served = Vec::new();
        c.read_to_end(&mut served).await.unwrap();
        assert_eq!(served, second);
        drop(c);
        assert!(matches!(reports.recv().await, Some(Report::Closed(7))));
    }

    /// Reads the first request of `c` (its initial bytes) as a server would, and answers it.
    async fn serve_first(c: &mut Connection, request: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let mut got = vec![0u8; request.len()];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(got, request);
        c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await.unwrap();
    }

    #[tokio::test]
    async fn a_draining_worker_gives_back_the_kept_alive_connection_its_server_closes_between_requests() {
        use tokio::io::AsyncWriteExt;
        let drain = Arc::new(Drain::default());
        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let (mut c, _client, mut reports) = connection_draining(request, Arc::default(), drain.clone());
        assert_eq!(drain.live(), 1);
        serve_first(&mut c, request).await;
        drain.start();
        c.shutdown().await.unwrap();
        drop(c);
        match reports.recv().await {
            Some(Report::Handback { id, initial, .. }) => assert_eq!((id, initial.len()), (7, 0)),
            other => panic!("{other:?}"),
        }
        assert!(reports.try_recv().is_err(), "no close report besides the handback");
        assert_eq!(drain.live(), 1, "live until the report task sent the handback");
    }

    #[tokio::test]
    async fn a_connection_whose_last_request_said_close_or_that_is_not_draining_closes() {
        use tokio::io::AsyncWriteExt;
        for (request, draining) in [
            (&b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"[..], true),
            (&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], false),
        ] {
            let drain = Arc::new(Drain::default());
            let (mut c, _client, mut reports) = connection_draining(request, Arc::default(), drain.clone());
            serve_first(&mut c, request).await;
            if draining {
                drain.start();
            }
            c.shutdown().await.unwrap();
            drop(c);
            assert!(matches!(reports.recv().await, Some(Report::Closed(7))), "{request:?}");
            assert_eq!(drain.live(), 0);
        }
    }

    #[tokio::test]
    async fn a_request_arriving_on_a_draining_worker_goes_back_with_its_bytes() {
        let drain = Arc::new(Drain::default());
        let first = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let (mut c, mut client, mut reports) = connection_draining(first, Arc::default(), drain.clone());
        serve_first(&mut c, first).await;
        drain.start();
        let second = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        std::io::Write::write_all(&mut client, second).unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the server sees the end instead of the request");
        drop(c);
        match reports.recv().await {
            Some(Report::Handback { initial, .. }) => assert_eq!(initial, second),
            other => panic!("{other:?}"),
        }
    }

    /// Issue 13: a pipelining client's next request waits for the answer in flight; when the
    /// drain begins meanwhile, the answer is written whole, without hyper's `Connection: close`,
    /// and the next request goes back to clusterd with its bytes instead of to the server.
    #[tokio::test]
    async fn a_pipelined_request_waits_for_the_answer_in_flight_and_goes_back_when_the_drain_begins() {
        use tokio::io::AsyncWriteExt;
        let drain = Arc::new(Drain::default());
        let first = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let second = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        let (mut c, mut client, mut reports) =
            connection_draining(&[&first[..], second].concat(), Arc::default(), drain.clone());
        let mut got = vec![0u8; first.len()];
        c.read_exact(&mut got).await.unwrap();
        let mut chunk = [0u8; 64];
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(
            Pin::new(&mut c).poll_read(&mut cx, &mut ReadBuf::new(&mut chunk)).is_pending(),
            "the second request waits for the first answer"
        );
        drain.start();
        let answer = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok";
        c.write_all(answer).await.unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the server sees the end once it answered");
        c.shutdown().await.unwrap();
        drop(c);
        match reports.recv().await {
            Some(Report::Handback { initial, .. }) => assert_eq!(initial, second),
            other => panic!("{other:?}"),
        }
        let mut seen = vec![0u8; answer.len()];
        std::io::Read::read_exact(&mut client, &mut seen).unwrap();
        assert_eq!(seen, b"HTTP/1.1 200 OK\r\nX-Draining: close\r\ncontent-length: 2\r\n\r\nok");
    }

    /// Issue 13: the drain's spread answers a pending long-poll with an Engine.IO `close` packet
    /// (socket.io-client reconnects on it); the server's own answer, if it comes later, fails.
    #[tokio::test]
    async fn the_spread_answers_a_pending_long_poll_with_a_close_packet() {
        use tokio::io::AsyncWriteExt;
        let drain = Arc::new(Drain::default());
        let poll = b"GET /socket.io/?EIO=4&transport=polling&sid=Ab HTTP/1.1\r\nHost: x\r\n\r\n";
        let (mut c, mut client, mut reports) = connection_draining(poll, Arc::default(), drain.clone());
        let mut got = vec![0u8; poll.len()];
        c.read_exact(&mut got).await.unwrap();
        drain.start();
        let sessions = drain.sessions(false);
        assert_eq!(sessions.len(), 1, "the connection with a pending poll is in the spread");
        sessions[0].end();
        let mut seen = Vec::new();
        std::io::Read::read_to_end(&mut client, &mut seen).unwrap();
        assert_eq!(seen, CLOSE_POLL, "one close packet, then the end");
        let late = c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n2").await;
        assert_eq!(late.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        drop(c);
        assert!(matches!(reports.recv().await, Some(Report::Closed(7))), "closed, not given back");
    }

    /// A connection between two polls (its last one answered) is left to its next poll.
    #[tokio::test]
    async fn the_spread_leaves_an_answered_long_poll_alone() {
        use tokio::io::AsyncWriteExt;
        let drain = Arc::new(Drain::default());
        let poll = b"GET /socket.io/?EIO=4&transport=polling&sid=Ab HTTP/1.1\r\nHost: x\r\n\r\n";
        let (mut c, mut client, _reports) = connection_draining(poll, Arc::default(), drain.clone());
        let mut got = vec![0u8; poll.len()];
        c.read_exact(&mut got).await.unwrap();
        c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n2").await.unwrap();
        drain.start();
        for socket in drain.sessions(true) {
            socket.end();
        }
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n2";
        c.write_all(answer).await.expect("the connection is still open");
        let mut seen = vec![0u8; 2 * answer.len()];
        std::io::Read::read_exact(&mut client, &mut seen).unwrap();
        assert_eq!(seen, [&answer[..], answer].concat(), "no close packet");
    }

    /// Issue 13: a server that drops a request it read, unanswered, while the worker drains: a
    /// `GET` goes back with its bytes; a `POST` is answered `503`, never dropped silently.
    #[tokio::test]
    async fn a_request_the_server_drops_unanswered_at_the_drain_goes_back_or_gets_503() {
        let get = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let drain = Arc::new(Drain::default());
        let (mut c, _client, mut reports) = connection_draining(get, Arc::default(), drain.clone());
        let mut got = vec![0u8; get.len()];
        c.read_exact(&mut got).await.unwrap();
        drain.start();
        drop(c);
        match reports.recv().await {
            Some(Report::Handback { initial, .. }) => assert_eq!(initial, get),
            other => panic!("{other:?}"),
        }

        let post = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi";
        let drain = Arc::new(Drain::default());
        let (mut c, mut client, mut reports) = connection_draining(post, Arc::default(), drain.clone());
        let mut got = vec![0u8; post.len()];
        c.read_exact(&mut got).await.unwrap();
        drain.start();
        drop(c);
        assert!(matches!(reports.recv().await, Some(Report::Closed(7))));
        let mut seen = Vec::new();
        std::io::Read::read_to_end(&mut client, &mut seen).unwrap();
        assert_eq!(seen, UNAVAILABLE);
    }

    /// A response that ends with the connection (no length) is never followed by a handback.
    #[tokio::test]
    async fn a_response_delimited_by_the_close_closes() {
        use tokio::io::AsyncWriteExt;
        let drain = Arc::new(Drain::default());
        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let (mut c, _client, mut reports) = connection_draining(request, Arc::default(), drain.clone());
        let mut got = vec![0u8; request.len()];
        c.read_exact(&mut got).await.unwrap();
        drain.start();
        c.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the end").await.unwrap();
        c.shutdown().await.unwrap();
        drop(c);
        assert!(matches!(reports.recv().await, Some(Report::Closed(7))));
    }

    #[test]
    fn a_later_request_is_given_back_only_for_a_session_held_elsewhere() {
        let sessions = Sessions::default();
        let poll = b"GET /socket.io/?EIO=4&transport=polling&sid=theirs HTTP/1.1\r\nHost: x\r\n";
        assert_eq!(verdict(poll, &sessions), Verdict::Keep, "a worker without sessions gives nothing back");
        sessions.insert("mine");
        assert_eq!(verdict(poll, &sessions), Verdict::HandBack);
        assert_eq!(verdict(b"GET /socket.io/?EIO=4&transport=polling&sid=mine HTTP/1.1\r\n", &sessions), Verdict::Keep);
        assert_eq!(verdict(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\n", &sessions), Verdict::Keep);
        assert_eq!(verdict(b"GET / HTTP/1.1\r\n", &sessions), Verdict::Keep);
        assert_eq!(verdict(b"GET /socket.io/?EIO=4&sid=theirs", &sessions), Verdict::NeedMore);
        assert_eq!(
            verdict(&vec![b'a'; crate::protocol::MAX_HANDBACK], &sessions),
            Verdict::Keep,
            "too long to look at"
        );
        sessions.remove("mine");
        assert_eq!(verdict(b"GET /?EIO=4&sid=mine HTTP/1.1\r\n", &sessions), Verdict::HandBack);
    }
}
