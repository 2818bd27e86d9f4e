//! The control socket server: a Unix stream socket, mode 0600, one JSON request per connection.
//!
//! Each connection is served in its own task with a size and time bound, so a silent or
//! flooding client costs one task and never holds up the dispatcher or other clients.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::proto::{ControlReply, ControlRequest, MAX_REQUEST};
use crate::metrics::workers::{CONTROL_DEADLINE, GatherRequest};
use crate::socketfile::Occupied;
use crate::supervisor::Request;

/// How long a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause after a failed accept (out of fds without a reserve), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long the dispatcher has to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The control socket could not be set up: clusterd exits 1.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path} is in use by a running clusterd; stop it or pass --control with another path")]
    InUse { path: PathBuf },
    #[error("control socket path {path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("cannot create control socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
}

/// A bound control socket; the file is removed on drop if it is still this socket.
pub struct ControlSocket {
    listener: Option<StdUnixListener>,
    path: PathBuf,
    identity: (u64, u64),
}

impl ControlSocket {
    /// Binds `path` with mode 0600. A socket file left by a dead clusterd (connecting is refused)
    /// is replaced; a live one is not stolen. Call before the runtime starts: it sets the umask.
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        let bind_err = |source| ControlError::Bind { path: path.to_owned(), source };
        match crate::socketfile::clear_stale(path) {
            Ok(true) => tracing::info!(path = %path.display(), "replacing a stale control socket"),
            Ok(false) => {}
            Err(Occupied::InUse) => return Err(ControlError::InUse { path: path.to_owned() }),
            Err(Occupied::NotASocket) => return Err(ControlError::NotASocket { path: path.to_owned() }),
            Err(Occupied::Io(e)) => return Err(bind_err(e)),
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            std::fs::create_dir_all(dir).map_err(bind_err)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(bind_err)?;
        }
        // The socket file is created 0600 from the start: no window with looser permissions.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = StdUnixListener::bind(path);
        nix::sys::stat::umask(old);
        let listener = bound.map_err(bind_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
        let meta = std::fs::metadata(path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(Self { listener: Some(listener), path: path.to_owned(), identity: (meta.dev(), meta.ino()) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves requests until the dispatcher goes away.
    ///
    /// The control socket must answer when clusterd is out of fds (a flood of clients is exactly
    /// when an operator asks `status`): it keeps one fd in reserve, as nginx and haproxy do. At
    /// `EMFILE` it closes the reserve, accepts into the number that freed, serves that one request
    /// itself, and then turns the connection's fd back into the reserve with `dup3` (closing the
    /// connection and taking the number in one step, so no other accept can take it between).
    pub fn serve(&mut self, requests: mpsc::Sender<Request>, gather: mpsc::Sender<GatherRequest>) -> io::Result<()> {
        let requests = Senders { requests, gather };
        let std_listener = self.listener.take().ok_or_else(|| io::Error::other("served twice"))?;
        let mut reserve = Some(OwnedFd::from(std_listener.try_clone()?));
        let listener = UnixListener::from_std(std_listener)?;
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(serve_one(stream, requests.clone()));
                        if reserve.is_none() {
                            // Lost at an earlier EMFILE; there is room again now.
                            reserve = take_reserve(&listener);
                        }
                    }
                    Err(error) if is_out_of_fds(&error) && reserve.is_some() => {
                        drop(reserve.take());
                        match listener.accept().await {
                            Ok((mut stream, _)) => {
                                tracing::warn!("out of fds: answering a control request from the reserved fd");
                                serve_on(&mut stream, &requests).await;
                                reserve = reclaim(stream, &listener);
                            }
                            Err(error) => {
                                tracing::warn!(%error, "control socket accept failed even with the reserved fd");
                                reserve = take_reserve(&listener);
                                tokio::time::sleep(ACCEPT_BACKOFF).await;
                            }
                        }
                    }
                    Err(error) => {
                        // EMFILE without a reserve and friends: back off instead of spinning.
                        tracing::warn!(%error, "control socket accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                }
                if requests.requests.is_closed() {
                    return;
                }
            }
        });
        Ok(())
    }
}

/// Whether an accept failed for want of an fd.
fn is_out_of_fds(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// A new reserved fd: a duplicate of the listener, which costs nothing but the number.
fn take_reserve(listener: &UnixListener) -> Option<OwnedFd> {
    listener.as_fd().try_clone_to_owned().ok()
}

/// Closes a served connection by making its fd number the reserve again.
fn reclaim(stream: UnixStream, listener: &UnixListener) -> Option<OwnedFd> {
    // Out of the runtime's poller first; then the number is ours to overwrite.
    let mut fd = OwnedFd::from(stream.into_std().ok()?);
    nix::unistd::dup3(listener, &mut fd, nix::fcntl::OFlag::O_CLOEXEC).ok()?;
    Some(fd)
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        // Remove the file only if it is still ours (not replaced by another instance since).
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.identity
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Where the control socket's requests go.
#[derive(Clone)]
struct Senders {
    requests: mpsc::Sender<Request>,
    gather: mpsc::Sender<GatherRequest>,
}

async fn serve_one(mut stream: UnixStream, requests: Senders) {
    serve_on(&mut stream, &requests).await;
}

/// Reads one request from `stream` and writes the reply; the caller closes the stream.
async fn serve_on(stream: &mut UnixStream, requests: &Senders) {
    let (read, mut write) = stream.split();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64 + 1);
    let mut line = Vec::new();
    let reply = match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
        Err(_) => ControlReply::error(format!("no request within {}", crate::duration::show(REQUEST_TIMEOUT))),
        Ok(Err(e)) => ControlReply::error(format!("cannot read the request: {e}")),
        Ok(Ok(_)) if line.len() > MAX_REQUEST => ControlReply::error(format!("request over {MAX_REQUEST} bytes")),
        Ok(Ok(_)) => match serde_json::from_slice::<ControlRequest>(&line) {
            Err(e) => ControlReply::error(format!("malformed request: {e}")),
            Ok(request) => answer(request, requests).await,
        },
    };
    let mut bytes = serde_json::to_vec(&reply).unwrap_or_else(|_| br#"{"ok":false,"error":"internal"}"#.to_vec());
    bytes.push(b'\n');
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, write.write_all(&bytes)).await;
}

async fn answer(request: ControlRequest, senders: &Senders) -> ControlReply {
    let requests = &senders.requests;
    match request {
        ControlRequest::Metrics => {
            let (reply, answer) = oneshot::channel();
            let deadline = tokio::time::Instant::now() + CONTROL_DEADLINE;
            if senders.gather.send(GatherRequest { deadline, reply }).await.is_err() {
                return ControlReply::error("shutting down");
            }
            match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
                Ok(Ok(scrape)) => ControlReply::metrics(scrape.text, scrape.missed),
                Ok(Err(_)) => ControlReply::error("shutting down"),
                Err(_) => ControlReply::error(format!("no answer within {}", crate::duration::show(ANSWER_TIMEOUT))),
            }
        }
        ControlRequest::Status => match ask(requests, Request::Status).await {
            Ok(mut status) => {
                // /proc is read here, in the request's own task, not in the dispatcher.
                for worker in &mut status.workers {
                    worker.rss_bytes = worker.pid.and_then(crate::rss::group_rss);
                }
                ControlReply::status(status)
            }
            Err(error) => ControlReply::error(error),
        },
        ControlRequest::Stop => {
            ask(requests, Request::Stop).await.map_or_else(ControlReply::error, |()| ControlReply::ok())
        }
        ControlRequest::Reload => match ask(requests, Request::Reload).await.and_then(|r| r) {
            Ok(generation) => ControlReply::message(format!("reloading to generation {generation}")),
            Err(why) => ControlReply::error(why),
        },
        ControlRequest::Scale { workers } => {
            match ask(requests, |reply| Request::Scale(workers, reply)).await.and_then(|r| r) {
                Ok(()) => ControlReply::message(format!("scaling to {workers} workers")),
                Err(why) => ControlReply::error(why),
            }
        }
    }
}

async fn ask<T>(
    requests: &mpsc::Sender<Request>,
    make: impl FnOnce(oneshot::Sender<T>) -> Request,
) -> Result<T, String> {
    let (tx, rx) = oneshot::channel();
    requests.send(make(tx)).await.map_err(|_| "shutting down".to_owned())?;
    match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(_)) => Err("shutting down".into()),
        Err(_) => Err(format!("no answer within {}", crate::duration::show(ANSWER_TIMEOUT))),
    }
}
