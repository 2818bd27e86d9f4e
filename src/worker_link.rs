//! The contract between the supervisor and a worker link: what a link heard from its worker
//! ([`Heard`], [`Said`]), what became of what it was asked to carry ([`Handed`], [`Asked`]), and
//! how a worker is launched ([`Launch`], [`SpawnSpec`], [`Spawned`], [`StartError`]); and how a
//! connection a worker gave back becomes a [`Handoff`] again ([`handback`]), which both links do.
//!
//! It exists so that the supervisor (`crate::supervisor`: the worker task, the native link, the
//! spawner) and the Node link (`crate::node::link`) both import one neutral definition, and
//! neither imports the other's internals: no import circle. Only types, their own logic and the one
//! step both links share ([`handback`], which reads the connection's addresses) live here; the machinery (the spawner thread, the worker task) stays in the
//! supervisor, which hands a link what it needs to start.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use clusterd_worker::protocol::{Address, MAX_HANDBACK};
use nix::sys::socket::{AddressFamily, SockType};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use tokio::sync::oneshot;

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
    /// It asks clusterd to listen on `addr` for it; answered through the link's `listening`.
    Listen {
        seq: u32,
        addr: String,
        /// Which of the worker's listens on this same address it is (0 for the first): Node
        /// gives the n-th `listen(0)` of every worker one shared port, distinct from the others'.
        index: u32,
    },
    /// It opened a session; `seq` is answered through the link's `session_ack` when the protocol has
    /// acks.
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
    /// Its answer to the metrics question `id` (the link's `ask_metrics`).
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

/// One worker to start.
pub struct Launch {
    pub slot: u32,
    pub incarnation: u64,
    pub generation: u64,
    pub count: u32,
    /// Bus messages the relay dropped for this worker (its queue was full).
    pub dropped: Arc<std::sync::atomic::AtomicU64>,
    /// Connections this worker gave back to be routed again (`given_back` in `status`).
    pub given_back: Arc<std::sync::atomic::AtomicU64>,
}

/// Counts the connections one worker process gives back, where they are routed again: on the
/// process's row of `status` (which goes with the process) and in its slot's series of
/// `/metrics` (which stays, so a reload's handbacks can be read after the old workers exited).
#[derive(Clone)]
pub struct GivenBack {
    process: Arc<std::sync::atomic::AtomicU64>,
    slot: Option<prometheus::IntCounter>,
}

impl GivenBack {
    /// The counters of the process `launch` starts (its slot's series only with `--metrics`).
    pub fn new(launch: &Launch) -> Self {
        Self { process: Arc::clone(&launch.given_back), slot: crate::metrics::given_back_counter(launch.slot) }
    }

    /// One more connection given back.
    pub fn count(&self) {
        self.process.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(slot) = &self.slot {
            slot.inc();
        }
    }
}

/// What to start.
pub struct SpawnSpec {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    /// The worker's end of the IPC socket; it becomes fd 3 in the worker and is closed here.
    pub ipc: OwnedFd,
    /// The worker's end of the bus socket, if it has one; it becomes fd 4 in the worker and is
    /// closed here.
    pub bus: Option<OwnedFd>,
}

/// A started worker process.
pub struct Spawned {
    pub pid: Pid,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// Resolves with the status once the reaper has reaped the process.
    pub exit: oneshot::Receiver<WaitStatus>,
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

/// A connection a worker gave back, ready to be routed again: the fd must be a connected stream
/// socket (anything else is a protocol violation), its addresses are read from it (the peer is
/// `claimed`, the client a PROXY header named, when there was one), and its sticky key from the
/// request line the worker read.
pub(crate) fn handback(
    fd: OwnedFd,
    initial: Vec<u8>,
    group: Option<u32>,
    claimed: Option<Address>,
    limits: &crate::listener::Limits,
) -> Result<Handoff, String> {
    use nix::sys::socket::{SockaddrLike, SockaddrStorage, getpeername, getsockname, getsockopt, sockopt};
    if initial.len() > MAX_HANDBACK {
        return Err(format!("gave back a connection with {} bytes (at most {MAX_HANDBACK})", initial.len()));
    }
    if getsockopt(&fd, sockopt::SockType).ok() != Some(SockType::Stream) {
        return Err("gave back an fd that is not a stream socket".to_owned());
    }
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let peer: SockaddrStorage = getpeername(raw).map_err(|e| format!("gave back a socket with no peer ({e})"))?;
    let local: Option<SockaddrStorage> = getsockname(raw).ok();
    let address = crate::listener::address_of;
    let unix = peer.family() == Some(AddressFamily::Unix);
    let (peer, local) =
        (claimed.clone().unwrap_or_else(|| address(&peer)), local.as_ref().map_or(Address::Unknown, address));
    let sid = match crate::sniff::sniff(&initial, limits.sniff_bytes) {
        crate::sniff::Sniffed::Http { sid } if limits.sticky == crate::config::Sticky::Sid => sid,
        _ => None,
    };
    let ip = peer.socket_addr().map(|a| a.ip()).filter(|_| limits.sticky == crate::config::Sticky::Ip);
    let claimed = claimed.is_some();
    // A connection a worker gave back: its bytes were read by that worker, not ahead by clusterd.
    Ok(Handoff { initial, sid, ip, http: true, claimed, ..Handoff::unread(group, fd, peer, local, unix, None) })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A connection whose client a PROXY header named keeps that client when its worker gives it
    /// back: the socket itself names only the balancer (here an unnamed socket pair: no address).
    #[test]
    fn a_connection_given_back_keeps_the_client_its_proxy_header_named() {
        let limits = crate::listener::Limits {
            sniff_bytes: 8192,
            sniff_timeout: Duration::from_secs(5),
            sticky: crate::config::Sticky::Ip,
            node: false,
            tcp_nodelay: false,
            proxy_protocol: true,
        };
        let pair = || {
            let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
            (OwnedFd::from(a), b)
        };
        let claimed = Address::V4 { ip: [192, 0, 2, 7], port: 56324 };
        let (fd, _client) = pair();
        let back = handback(fd, b"GET / HTTP/1.1\r\n".to_vec(), None, Some(claimed.clone()), &limits).unwrap();
        assert_eq!(back.peer, claimed);
        assert_eq!(back.ip, Some(std::net::Ipv4Addr::new(192, 0, 2, 7).into()), "sticky by the claimed client");
        assert!(back.claimed, "still claimed if it is given back again");
        let (fd, _client) = pair();
        let back = handback(fd, b"GET / HTTP/1.1\r\n".to_vec(), None, None, &limits).unwrap();
        assert_eq!((back.peer, back.ip, back.claimed), (Address::Unknown, None, false));
    }
}
