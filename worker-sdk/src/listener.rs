//! Handed-off client connections, as ordinary Tokio streams.
//!
//! clusterd accepts every client connection, reads the first bytes to route it, and passes the
//! socket to one worker together with those bytes. A [`Connection`] yields exactly what the client
//! sent, in order: first the bytes clusterd read, then the socket's own. Dropping it closes the
//! socket and tells clusterd, which counts the connections each worker carries.

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

use crate::protocol::Address;
use crate::worker::Report;

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

enum Socket {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// One client connection handed to this worker by clusterd.
pub struct Connection {
    initial: Vec<u8>,
    consumed: usize,
    socket: Socket,
    peer: ClientAddr,
    local: ClientAddr,
    report: Option<(u64, mpsc::Sender<Report>)>,
    /// Counted until the application first reads: a drain waits for that (see `Worker::draining`).
    unread: Option<Arc<Unread>>,
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
        Ok(Self {
            initial: frame.initial,
            consumed: 0,
            socket,
            peer: (&frame.peer).into(),
            local: (&frame.local).into(),
            report: Some((frame.id, report)),
            unread: {
                unread.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Some(unread)
            },
        })
    }

    /// The application has started with this connection (or dropped it).
    fn mark_read(&mut self) {
        if let Some(unread) = self.unread.take() {
            unread.count.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            unread.changed.notify_one();
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

impl Drop for Connection {
    fn drop(&mut self) {
        self.mark_read();
        if let Some((id, report)) = self.report.take() {
            // A full queue means clusterd is not reading; its count heals when this worker exits.
            let _ = report.try_send(Report::Closed(id));
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.mark_read();
        if this.consumed < this.initial.len() {
            let rest = &this.initial[this.consumed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.consumed += n;
            if this.consumed == this.initial.len() {
                this.initial = Vec::new();
                this.consumed = 0;
            }
            return Poll::Ready(Ok(()));
        }
        match &mut this.socket {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.socket {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.socket {
            Socket::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Socket::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.socket {
            Socket::Tcp(s) => s.is_write_vectored(),
            Socket::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.socket {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.socket {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
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
