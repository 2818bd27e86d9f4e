//! The protocol a worker task speaks with its worker: clusterd's own (`native.rs`) or Node's IPC
//! channel (`crate::node::link`). The worker task (`worker.rs`) keeps the timers, signals and
//! reports; a link turns what the worker says into [`Said`] and carries connections, drains and
//! answers to it.

use std::time::Duration;

use crate::listener::Handoff;

/// What a worker said, in the terms the worker task acts on.
#[derive(Debug)]
pub enum Said {
    /// It speaks the protocol: it can take connections.
    Greeted,
    Ready,
    /// A sign of life (resets the heartbeat deadline, like everything it says).
    Alive,
    /// Connections it was handed closed (or could not be handed over): the listener group of each.
    Closed(Vec<Option<u32>>),
    /// It asks clusterd to listen on `addr` for it; answered with [`Link::listening`].
    Listen {
        seq: u32,
        addr: String,
        /// Which of the worker's listens on this same address it is (0 for the first): Node
        /// gives the n-th `listen(0)` of every worker one shared port, distinct from the others'.
        index: u32,
    },
    /// It opened a session; `seq` is answered with [`Link::session_ack`] when the protocol has acks.
    SessionOpen {
        seq: Option<u32>,
        sid: String,
    },
    SessionClose {
        sid: String,
    },
    /// It is at capacity (close to its fd limit), or has room again.
    Capacity {
        full: bool,
    },
    /// It gave a connection back (a later request on it belongs to another worker's session):
    /// that connection closed for this worker, and goes to be routed again.
    Handback(Box<Handoff>),
    /// It closed its server of a listener group it asked for (Node's `server.close()`): route
    /// that group's connections to it no more.
    Unlisten {
        group: u32,
    },
    /// Its answer to the metrics question `id` ([`Link::ask_metrics`]).
    Metrics {
        id: u32,
        metrics: crate::metrics::workers::WorkerMetrics,
    },
}

/// What asking a worker for its metrics did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// The question is on its way; the answer comes as [`Said::Metrics`].
    Sent,
    /// The worker has no metrics to give (an SDK worker that registered none): not asked.
    Nothing,
    /// The question could not be sent.
    Failed,
}

/// What reading a link gave.
#[derive(Debug)]
pub enum Heard {
    Said(Said),
    /// The worker broke the protocol: it is drained and replaced.
    Violation(String),
    /// Nothing more will come (the worker closed its end).
    End,
}

/// What became of a connection offered to a worker.
pub enum Handed {
    /// The worker has it, or will have it in order.
    Yes,
    /// It could not be handed over and is closed: it counts as closed at once.
    Closed(Option<u32>),
    /// The worker's channel is broken (the worker died or is dying): the connection was not
    /// handed over and is intact, for another worker. It counts as closed on this one.
    Back(Box<Handoff>),
}

/// One worker's link, in either protocol.
// Both boxed: the links differ in size, and a worker task holds one for its whole life.
pub enum Link {
    Native(Box<super::native::NativeLink>),
    Node(Box<crate::node::link::NodeLink>),
}

impl Link {
    /// Whether anything more can be heard.
    pub fn open(&self) -> bool {
        match self {
            Link::Native(link) => link.open(),
            Link::Node(link) => link.open(),
        }
    }

    /// The next thing the worker said. Cancel-safe.
    pub async fn next(&mut self) -> Heard {
        match self {
            Link::Native(link) => link.next().await,
            Link::Node(link) => link.next().await,
        }
    }

    /// Whether the worker takes another connection now; while it does not, connections wait in
    /// the worker task's queue (and go to another worker after a while).
    pub fn takes_connections(&self) -> bool {
        match self {
            Link::Native(_) => true,
            Link::Node(link) => link.takes_connections(),
        }
    }

    /// Sends one connection to the worker; clusterd's copy of the fd closes once it is handed over
    /// (or could not be). What closes later is heard as [`Said::Closed`].
    pub async fn hand_over(&mut self, handoff: Handoff) -> Handed {
        match self {
            Link::Native(link) => link.hand_over(handoff).await,
            Link::Node(link) => link.hand_over(handoff).await,
        }
    }

    /// Hands over a health-check connection (not a client connection: not counted, no session).
    /// `Some(false)` if it could not be sent, `None` if the worker has no way to receive one (a
    /// Node worker with no listener). `main`: clusterd has listeners of its own.
    pub async fn probe(&mut self, fd: std::os::fd::OwnedFd, main: bool) -> Option<bool> {
        match self {
            Link::Native(link) => Some(link.probe(fd).await),
            Link::Node(link) => link.probe(fd, main).await,
        }
    }

    /// Tells the worker to drain within `grace`; `true` if it should get SIGTERM as well.
    pub async fn drain(&mut self, grace: Duration) -> bool {
        match self {
            Link::Native(link) => link.drain(grace).await,
            Link::Node(link) => link.drain(grace).await,
        }
    }

    /// Asks the worker for its metrics, as question `id`.
    pub async fn ask_metrics(&mut self, id: u32) -> Asked {
        match self {
            Link::Native(link) => link.ask_metrics(id).await,
            Link::Node(link) => link.ask_metrics(id),
        }
    }

    /// Whether the worker says that it has metrics before it is asked (SDK workers do; Node
    /// workers are asked with prom-client's request, which a worker without it never answers).
    pub fn declares_metrics(&self) -> bool {
        matches!(self, Link::Native(_))
    }

    /// Whether the worker sends heartbeats (Node workers do not: `--heartbeat-timeout` does not
    /// apply to them).
    pub fn heartbeats(&self) -> bool {
        matches!(self, Link::Native(_))
    }

    /// Whether a draining worker gets SIGTERM once it has closed its channel (rather than when
    /// the drain begins).
    pub fn term_after_close(&self) -> bool {
        matches!(self, Link::Node(_))
    }

    /// clusterd recorded the session the worker announced with `seq`.
    pub async fn session_ack(&mut self, seq: u32) {
        if let Link::Native(link) = self {
            link.session_ack(seq).await;
        }
    }

    /// The worker process is gone: it leaves its relay.
    pub async fn gone(&mut self, settings: &super::worker::Settings, key: u64) {
        match self {
            Link::Native(_) => {
                let _ = settings.relay.send(crate::relay::Input::Leave { key }).await;
            }
            Link::Node(link) => link.gone().await,
        }
    }

    /// The answer to the worker's [`Said::Listen`].
    /// `group` is the listener group that serves it, if any.
    pub async fn listening(&mut self, seq: u32, result: clusterd_worker::protocol::ListenResult, group: Option<u32>) {
        match self {
            Link::Native(link) => link.listening(seq, result).await,
            Link::Node(link) => link.listening(seq, result, group).await,
        }
    }
}

/// Why a worker process could not be started. The kind decides who is to blame: the dispatcher
/// retries clusterd's own shortages without counting them against the slot, ends clusterd at once
/// for a program that cannot be executed, and counts anything else as a failed start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// clusterd ran out of something a start needs (fds, memory, processes): its own failure.
    #[error("{what}: {errno} (clusterd's own resources, not the worker's fault)")]
    Resources { what: String, errno: nix::errno::Errno },
    /// The program cannot be executed (missing, not permitted, not a binary or a `#!` script).
    #[error("cannot execute {program}: {errno}{hint}")]
    Unexecutable { program: String, errno: nix::errno::Errno, hint: &'static str },
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

impl StartError {
    /// A failure of clusterd's own setup for a start (`what` failed with `error`).
    pub fn setup(what: &str, error: impl Into<std::io::Error>) -> Self {
        let error = error.into();
        match error.raw_os_error().map(nix::errno::Errno::from_raw) {
            Some(errno) if is_shortage(errno) => Self::Resources { what: what.to_owned(), errno },
            _ => Self::Failed(format!("{what}: {error}")),
        }
    }

    /// The failure of the spawn itself (the fork, the worker's setup before `exec`, or `exec`).
    pub fn spawn(program: &std::ffi::OsStr, error: std::io::Error) -> Self {
        use nix::errno::Errno;
        let program = program.to_string_lossy().into_owned();
        match error.raw_os_error().map(Errno::from_raw) {
            Some(errno) if is_shortage(errno) => Self::Resources { what: format!("cannot start {program}"), errno },
            Some(
                errno @ (Errno::ENOENT
                | Errno::EACCES
                | Errno::EPERM
                | Errno::ENOEXEC
                | Errno::ENOTDIR
                | Errno::EISDIR
                | Errno::ELOOP
                | Errno::ENAMETOOLONG
                | Errno::ELIBBAD),
            ) => {
                let hint = if errno == Errno::ENOEXEC { " (neither an ELF binary nor a script with #!)" } else { "" };
                Self::Unexecutable { program, errno, hint }
            }
            _ => Self::Failed(format!("cannot start {program}: {error}")),
        }
    }
}

/// Errors that mean the system or clusterd ran short, not that the worker did anything wrong.
fn is_shortage(errno: nix::errno::Errno) -> bool {
    use nix::errno::Errno;
    matches!(errno, Errno::EMFILE | Errno::ENFILE | Errno::ENOMEM | Errno::ENOBUFS | Errno::EAGAIN)
}
