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
}
