//! [`Worker`]: the worker's handle on clusterd.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_seqpacket::UnixSeqpacket;
use tokio_util::sync::CancellationToken;

use crate::channel::WorkerChannel;
use crate::codec;
use crate::error::Error;
use crate::protocol::{
    ENV_GENERATION, ENV_IPC_FD, ENV_WORKER_COUNT, ENV_WORKER_ID, FromWorker, PROTOCOL_VERSION, ToWorker,
};

/// Set once the IPC fd has been claimed, so that a second `from_env` cannot claim it again.
static TAKEN: AtomicBool = AtomicBool::new(false);

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
    grace: Mutex<Option<Duration>>,
    ready_sent: AtomicBool,
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

        let inner = Arc::new(Inner {
            id,
            count,
            generation,
            channel: Arc::new(WorkerChannel::new(socket)),
            drain: CancellationToken::new(),
            grace: Mutex::new(None),
            ready_sent: AtomicBool::new(false),
        });
        let sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| Error::BadIpcFd { fd, reason: format!("cannot watch SIGTERM ({e})") })?;
        runtime.spawn(watch_sigterm(sigterm, inner.drain.clone()));
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
    pub async fn draining(&self) {
        self.inner.drain.cancelled().await
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

    async fn send(&self, frame: &FromWorker) -> Result<(), Error> {
        Ok(self.inner.channel.send(frame).await?)
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

async fn watch_sigterm(mut sigterm: tokio::signal::unix::Signal, drain: CancellationToken) {
    if sigterm.recv().await.is_some() {
        tracing::debug!("SIGTERM: draining");
        drain.cancel();
    }
}

/// Reads clusterd's frames until the channel closes; a drain frame or the close cancels the drain
/// token, and the first Hello starts the heartbeat.
async fn read_frames(inner: Arc<Inner>) {
    loop {
        match inner.channel.recv().await {
            Ok(Some(ToWorker::Hello(hello))) => {
                if hello.heartbeat_ms > 0 {
                    let every = Duration::from_millis(u64::from(hello.heartbeat_ms));
                    tokio::spawn(heartbeat(Arc::clone(&inner.channel), every, inner.drain.clone()));
                }
            }
            Ok(Some(ToWorker::Drain { grace_ms })) => {
                *inner.grace.lock().unwrap_or_else(|p| p.into_inner()) = Some(Duration::from_millis(grace_ms));
                inner.drain.cancel();
            }
            Ok(None) => {
                tracing::warn!("clusterd closed the IPC channel; draining");
                inner.drain.cancel();
                return;
            }
            Err(error) => {
                tracing::error!(%error, "IPC channel failed; draining");
                inner.drain.cancel();
                return;
            }
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
