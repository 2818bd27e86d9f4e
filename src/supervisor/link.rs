//! The protocol a worker task speaks with its worker: clusterd's own (`native.rs`) or Node's IPC
//! channel (`crate::node::link`). The worker task (`worker.rs`) keeps the timers, signals and
//! reports; a link turns what the worker says into [`Said`](crate::worker_link::Said) and
//! carries connections, drains and answers to it. What both sides name (what a link heard, what
//! became of a connection, how a worker is launched) lives in `crate::worker_link`, so that the
//! Node link needs nothing from here.

use std::time::Duration;

use crate::listener::Handoff;
use crate::worker_link::{Asked, Handed, Heard};

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
    /// (or could not be). What closes later is heard as [`Said::Closed`](crate::worker_link::Said::Closed).
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

    /// clusterd recorded the session the worker announced with `seq`: the ack is queued, never
    /// waited for (the link sends it as the worker reads, while it listens to the worker).
    pub fn session_ack(&mut self, seq: u32) {
        if let Link::Native(link) = self {
            link.session_ack(seq);
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

    /// The answer to the worker's [`Said::Listen`](crate::worker_link::Said::Listen).
    /// `group` is the listener group that serves it, if any.
    pub async fn listening(&mut self, seq: u32, result: clusterd_worker::protocol::ListenResult, group: Option<u32>) {
        match self {
            Link::Native(link) => link.listening(seq, result).await,
            Link::Node(link) => link.listening(seq, result, group).await,
        }
    }
}
