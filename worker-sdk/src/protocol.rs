//! The native protocol between clusterd and a worker, defined once and imported by both sides.
//!
//! Every frame is one `SOCK_SEQPACKET` datagram on the worker's IPC socket, at most
//! [`MAX_FRAME`] bytes, encoded by [`crate::codec`]. The enum variant order is the wire tag, so new
//! frames are only ever appended; `PROTOCOL.md` beside this crate documents every frame byte by byte.
//!
//! ```text
//!   clusterd                                   worker
//!      | -- ToWorker::Hello {id, count, gen} -->  |   queued before the worker even runs
//!      | <-- FromWorker::Hello {version, pid} --  |   Worker::from_env()
//!      | <-- FromWorker::Ready -----------------  |   Worker::ready()
//!      | <-- FromWorker::Heartbeat -------------  |   every Hello::heartbeat_ms
//!      | -- ToWorker::Connection + fd --------->  |   Worker::listener() yields it
//!      | <-- FromWorker::ConnectionsClosed -----  |   streams were dropped
//!      | <-- FromWorker::SessionOpen {seq,sid} -  |   Worker::session_open()
//!      | -- ToWorker::SessionAck {seq} -------->  |   ... which returns now
//!      | -- ToWorker::Drain {grace_ms} -------->  |   + SIGTERM to the worker's process group
//! ```

use bincode::{Decode, Encode};

/// The protocol version this crate speaks; clusterd replaces a worker that greets with another one.
pub const PROTOCOL_VERSION: u16 = 1;

/// The largest frame either side may send or will accept, in bytes.
///
/// It stays well below the default `SO_SNDBUF` (212 992 bytes), which caps a `SOCK_SEQPACKET`
/// datagram; bulk payloads are split by the sender.
pub const MAX_FRAME: usize = 64 * 1024;

/// The most connection ids in one [`FromWorker::ConnectionsClosed`] (well inside [`MAX_FRAME`]).
pub const MAX_CLOSED_PER_FRAME: usize = 4096;

/// Environment variable naming the inherited fd of the worker's IPC socket.
pub const ENV_IPC_FD: &str = "CLUSTERD_IPC_FD";
/// Environment variable holding the worker's slot, `0..count`, stable across restarts.
pub const ENV_WORKER_ID: &str = "CLUSTERD_WORKER_ID";
/// Environment variable holding the pool size.
pub const ENV_WORKER_COUNT: &str = "CLUSTERD_WORKER_COUNT";
/// Environment variable holding the reload generation, from 1.
pub const ENV_GENERATION: &str = "CLUSTERD_GENERATION";

/// The fd number on which clusterd places the IPC socket in every worker.
pub const IPC_FD: i32 = 3;

/// Frames that clusterd sends to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[non_exhaustive]
pub enum ToWorker {
    /// Tag 0. The first frame on every IPC socket, queued by clusterd right after the spawn.
    Hello(Hello),
    /// Tag 1. Stop taking new work, finish what is in flight and exit within `grace_ms`;
    /// clusterd sends SIGKILL to the worker's process group after that.
    Drain {
        /// Milliseconds the worker has before SIGKILL.
        grace_ms: u64,
    },
    /// Tag 2. A client connection handed to this worker. Exactly one file descriptor, the connected
    /// socket, travels with this frame (`SCM_RIGHTS`); no other frame carries one.
    Connection(Connection),
    /// Tag 3. clusterd has recorded the session of [`FromWorker::SessionOpen`] with this `seq`:
    /// from now on it routes requests carrying that session id to this worker. (A session id that
    /// another worker already owns stays with that worker; it is acknowledged all the same.)
    SessionAck {
        /// The `seq` of the acknowledged `SessionOpen`.
        seq: u32,
    },
    /// Tag 4. The answer to [`FromWorker::Listen`] with this `seq`.
    Listening {
        /// The `seq` of the request.
        seq: u32,
        /// What clusterd did.
        result: ListenResult,
    },
    /// Tag 5. A scrape asks for the worker's metrics: answer with [`FromWorker::Metrics`] frames
    /// carrying this `id`. Sent only to a worker that sent [`FromWorker::MetricsAvailable`].
    MetricsRequest {
        /// clusterd's number for the request, echoed by the answer.
        id: u32,
    },
}

/// The outcome of a worker's listen request.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum ListenResult {
    /// Tag 0. clusterd listens on this address (the actual one: a port 0 is resolved) and hands its
    /// connections to the workers that asked for it.
    Bound {
        /// The address, in `--listen` syntax.
        addr: String,
    },
    /// Tag 1. clusterd could not listen.
    Failed {
        /// Why, for the worker's error message.
        reason: String,
    },
}

/// A handed-off client connection (the socket itself is the frame's file descriptor).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Connection {
    /// clusterd's id for this connection on this IPC channel; echoed by
    /// [`FromWorker::ConnectionsClosed`].
    pub id: u64,
    /// The client's address.
    pub peer: Address,
    /// The address the client connected to.
    pub local: Address,
    /// Bytes clusterd already read from the socket to route it; the worker reads them before
    /// anything else from the socket. At most 16 KiB.
    pub initial: Vec<u8>,
}

/// A socket address on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub enum Address {
    /// Tag 0. Not known (an unnamed Unix socket).
    Unknown,
    /// Tag 1. IPv4 address and port.
    V4 {
        /// The address, in network order.
        ip: [u8; 4],
        /// The port.
        port: u16,
    },
    /// Tag 2. IPv6 address and port.
    V6 {
        /// The address, in network order.
        ip: [u8; 16],
        /// The port.
        port: u16,
    },
    /// Tag 3. A Unix socket path (bytes, not necessarily UTF-8).
    Unix {
        /// The path.
        path: Vec<u8>,
    },
}

impl From<std::net::SocketAddr> for Address {
    fn from(addr: std::net::SocketAddr) -> Self {
        match addr {
            std::net::SocketAddr::V4(a) => Self::V4 { ip: a.ip().octets(), port: a.port() },
            std::net::SocketAddr::V6(a) => Self::V6 { ip: a.ip().octets(), port: a.port() },
        }
    }
}

impl Address {
    /// The IP socket address, if this is one.
    pub fn socket_addr(&self) -> Option<std::net::SocketAddr> {
        match *self {
            Self::V4 { ip, port } => Some((std::net::Ipv4Addr::from(ip), port).into()),
            Self::V6 { ip, port } => Some((std::net::Ipv6Addr::from(ip), port).into()),
            Self::Unknown | Self::Unix { .. } => None,
        }
    }
}

/// How many file descriptors travel with a frame.
pub trait Frame {
    /// The exact number of fds that must ride with this frame.
    fn fds(&self) -> usize;
}

impl Frame for ToWorker {
    fn fds(&self) -> usize {
        usize::from(matches!(self, Self::Connection(_)))
    }
}

impl Frame for FromWorker {
    fn fds(&self) -> usize {
        usize::from(matches!(self, Self::Handback(_)))
    }
}

/// The greeting clusterd sends to a freshly spawned worker.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Hello {
    /// clusterd's [`PROTOCOL_VERSION`].
    pub version: u16,
    /// The worker's slot, `0..worker_count`.
    pub worker_id: u32,
    /// The pool size when this worker was spawned.
    pub worker_count: u32,
    /// The reload generation, from 1.
    pub generation: u64,
    /// How often clusterd expects a [`FromWorker::Heartbeat`], in milliseconds; 0 means never.
    pub heartbeat_ms: u32,
    /// The largest frame clusterd accepts, in bytes.
    pub max_frame: u32,
}

/// Frames that a worker sends to clusterd.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[non_exhaustive]
pub enum FromWorker {
    /// Tag 0. The worker's first frame: the SDK's version and the pid of the process that speaks.
    Hello {
        /// The SDK's [`PROTOCOL_VERSION`].
        version: u16,
        /// The pid of the worker process.
        pid: u32,
    },
    /// Tag 1. The worker is ready to take work; until then it counts as starting.
    Ready,
    /// Tag 2. The worker is alive; sent every [`Hello::heartbeat_ms`].
    Heartbeat,
    /// Tag 3. The worker is done with these connections of [`ToWorker::Connection`]: it closed
    /// them (clusterd counts the connections each worker carries for least-connection balancing).
    /// The SDK sends one frame for all the closes queued at that moment.
    ConnectionsClosed {
        /// The connections' ids, at most [`MAX_CLOSED_PER_FRAME`].
        ids: Vec<u64>,
    },
    /// Tag 4. The worker created session `sid` (the Engine.IO session id): route requests carrying
    /// it here. clusterd answers with [`ToWorker::SessionAck`] once it has recorded it, and the
    /// worker sends the session id to its client only after that ack.
    SessionOpen {
        /// Chosen by the worker; echoed by the ack.
        seq: u32,
        /// The session id: 1 to 64 bytes of `[A-Za-z0-9_-]`.
        sid: String,
    },
    /// Tag 5. The session ended.
    SessionClose {
        /// The session id.
        sid: String,
    },
    /// Tag 6. Listen on `addr` (`HOST:PORT`, `[V6]:PORT` or `unix:/path`) for this worker, as
    /// Node's `server.listen` does in a `cluster` worker: clusterd binds the address once and
    /// balances its connections over every worker that asked. clusterd answers with
    /// [`ToWorker::Listening`].
    Listen {
        /// Chosen by the worker; echoed by the answer.
        seq: u32,
        /// The address.
        addr: String,
    },
    /// Tag 7. Whether the worker is at capacity: `true` when it is close to its fd limit (or
    /// could not receive a connection's fd), `false` when it has room again. clusterd gives a
    /// full worker no new connection (sticky requests of its own sessions excepted) and answers
    /// 503 only when every ready worker is full. Optional: a worker that never sends it always
    /// has room.
    Capacity {
        /// At capacity (`true`) or with room again (`false`).
        full: bool,
    },
    /// Tag 8. The worker gives back connection `id` (its socket is the frame's one fd): a request
    /// on it, after the first, belongs to a session the worker does not hold. clusterd routes
    /// it again as a new connection whose first bytes are `initial` (that request's start, which
    /// the worker read), and counts connection `id` closed for this worker. Optional.
    Handback(Handback),
    /// Tag 9. The worker has metrics to be asked for ([`ToWorker::MetricsRequest`]); a worker
    /// that never sends it is never asked. Optional; sent once.
    MetricsAvailable,
    /// Tag 10. A piece of the answer to [`ToWorker::MetricsRequest`] `id`: the worker's metrics
    /// in the Prometheus text format 0.0.4, `total` bytes of UTF-8 in all, sent as consecutive
    /// frames whose `chunk`s (each at most [`MAX_METRICS_CHUNK`] bytes, empty only when `total`
    /// is 0) add up to `total`. A `total` over [`MAX_METRICS`] makes clusterd leave the worker out
    /// of that scrape; the worker then sends just one frame, with an empty chunk.
    Metrics(MetricsChunk),
}

/// A piece of a worker's metrics text (see [`FromWorker::Metrics`]).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct MetricsChunk {
    /// The `id` of the [`ToWorker::MetricsRequest`] it answers.
    pub id: u32,
    /// The length of the whole text in bytes, the same in every chunk of the answer.
    pub total: u32,
    /// The next bytes of the text.
    pub chunk: Vec<u8>,
}

/// The largest metrics text a worker may send in answer to one [`ToWorker::MetricsRequest`], in
/// bytes.
pub const MAX_METRICS: usize = 1024 * 1024;

/// The most text bytes in one [`FromWorker::Metrics`] frame (the frame stays inside [`MAX_FRAME`]).
pub const MAX_METRICS_CHUNK: usize = 60 * 1024;

/// A connection a worker gives back to clusterd (the socket is the frame's file descriptor).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Handback {
    /// The id of the [`ToWorker::Connection`] that brought it.
    pub id: u64,
    /// Bytes the worker read from the socket and did not serve: the start of the next request,
    /// its request line complete. At most [`MAX_HANDBACK`] bytes.
    pub initial: Vec<u8>,
}

/// The most bytes a [`Handback`] carries (as clusterd's own `--sniff-bytes` at most).
pub const MAX_HANDBACK: usize = 16 * 1024;
