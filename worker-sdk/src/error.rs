//! Errors of the worker SDK.

use crate::channel::ChannelError;

/// An error from the worker SDK.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A variable that clusterd sets is missing: the program was not started by clusterd.
    #[error("{var} is not set: this program must be started by clusterd (`clusterd -- <program>`)")]
    NotUnderClusterd {
        /// The missing variable.
        var: &'static str,
    },
    /// A variable that clusterd sets has a value that cannot be parsed.
    #[error("{var}={value:?} is not a valid value")]
    BadEnv {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// The fd named by `CLUSTERD_IPC_FD` is not a usable IPC socket.
    #[error("CLUSTERD_IPC_FD={fd} is unusable: {reason}")]
    BadIpcFd {
        /// The fd number.
        fd: i32,
        /// Why it cannot be used.
        reason: String,
    },
    /// `Worker::from_env` or `Worker::listener` was called a second time in this process.
    #[error("already taken: Worker::from_env() and Worker::listener() work once per process")]
    AlreadyTaken,
    /// `Worker::from_env` was called outside a Tokio runtime.
    #[error("Worker::from_env() must be called inside a Tokio runtime")]
    NoRuntime,
    /// The IPC channel failed or clusterd closed it.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// A bus channel name longer than [`crate::bus_protocol::MAX_CHANNEL_NAME`] bytes: nothing was
    /// sent (clusterd would replace a worker that sends one).
    #[error("a bus channel name is at most {max} bytes, not {len}")]
    ChannelNameTooLong {
        /// The name's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// This worker subscribes to [`crate::bus_protocol::MAX_SUBSCRIPTIONS`] channels already:
    /// the subscription to one more was refused.
    #[error("this worker subscribes to {max} bus channels already (the most there may be)")]
    TooManySubscriptions {
        /// The limit.
        max: usize,
    },
    /// clusterd is gone: the IPC channel is closed.
    #[error("clusterd closed the IPC channel")]
    Disconnected,
    /// A session id that clusterd would not route: 1 to 64 characters of `[A-Za-z0-9_-]`.
    #[error("{sid:?} is not a valid session id (1 to 64 characters of A-Z a-z 0-9 - _)")]
    BadSessionId {
        /// The refused id.
        sid: String,
    },
    /// clusterd could not listen on an address the worker asked for.
    #[error("clusterd cannot listen on {addr}: {reason}")]
    Listen {
        /// The address asked for.
        addr: String,
        /// Why.
        reason: String,
    },
    /// clusterd did not acknowledge a session in time.
    #[error("clusterd did not acknowledge session {sid:?} in time")]
    SessionTimeout {
        /// The session id.
        sid: String,
    },
}
