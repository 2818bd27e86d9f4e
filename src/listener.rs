//! The accept path: listening sockets, the accept loops, and one routing task per connection.
//!
//! ```text
//!   accept loop: accept4, recv without waiting ──(request settled)──┐
//!        └─(more to read)─spawn─► route task: read the request line  │
//!                                 (≤ sniff_bytes, ≤ sniff_timeout) ──┤
//!                      Deliver {handoff} ──► dispatcher (balancer) ◄─┘
//!                                  └──► worker's handoff queue ──► worker task:
//!                                       Connection frame + fd (SCM_RIGHTS), our copy closed
//! ```
//!
//! The accept loop never waits on a client (its one read takes what has arrived), so a slow or
//! silent client never holds it up. Transient
//! accept errors (EMFILE, ENFILE, ENOBUFS, ENOMEM, ECONNABORTED) back off, capped at one second,
//! and never end the loop.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clusterd_worker::protocol::Address;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::budget::{Budget, Share};
use crate::config::{ListenAddr, Sticky};
use crate::sniff::{Sniffed, response, sniff};

/// A listening socket could not be set up: clusterd exits 1 before starting any worker.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("listen socket {path} is in use by a running process; refusing to take it over")]
    InUse { path: PathBuf },
    #[error("listen path {path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("the sockets systemd passed (LISTEN_FDS, LISTEN_PID) are unusable: {0}")]
    Systemd(io::Error),
    #[error("systemd passed fd {fd} (LISTEN_FDS), which is not an open, listening TCP or Unix stream socket")]
    NotListening { fd: i32 },
}

/// A bound listening socket, before the runtime starts.
pub enum Bound {
    Tcp { addr: String, listener: std::net::TcpListener },
    Unix { addr: String, listener: std::os::unix::net::UnixListener, path: Option<PathBuf> },
}

impl Bound {
    pub fn addr(&self) -> &str {
        match self {
            Self::Tcp { addr, .. } | Self::Unix { addr, .. } => addr,
        }
    }

    /// The socket file clusterd created (and removes on exit); not one systemd passed.
    pub fn unix_path(&self) -> Option<std::path::PathBuf> {
        match self {
            Self::Unix { path, .. } => path.clone(),
            Self::Tcp { .. } => None,
        }
    }
}

/// Binds every `--listen` address.
pub fn bind_all(addrs: &[ListenAddr]) -> Result<Vec<Bound>, BindError> {
    addrs.iter().map(bind).collect()
}

fn bind(addr: &ListenAddr) -> Result<Bound, BindError> {
    let err = |source| BindError::Bind { addr: addr.to_string(), source };
    match addr {
        ListenAddr::Tcp(socket_addr) => {
            use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrStorage, setsockopt, socket, sockopt};
            let family = if socket_addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
            let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).map_err(|e| err(e.into()))?;
            setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| err(e.into()))?;
            if socket_addr.is_ipv6() {
                // `[::]:80` beside `0.0.0.0:80` must not collide: each family its own socket.
                setsockopt(&fd, sockopt::Ipv6V6Only, &true).map_err(|e| err(e.into()))?;
            }
            defer_accept(&fd);
            nix::sys::socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(*socket_addr)).map_err(|e| err(e.into()))?;
            nix::sys::socket::listen(
                &fd,
                nix::sys::socket::Backlog::new(1024).unwrap_or(nix::sys::socket::Backlog::MAXCONN),
            )
            .map_err(|e| err(e.into()))?;
            let listener = std::net::TcpListener::from(fd);
            let actual = listener.local_addr().map_err(err)?;
            Ok(Bound::Tcp { addr: actual.to_string(), listener })
        }
        ListenAddr::Unix(path) => {
            clear_stale_socket(path)?;
            let listener = std::os::unix::net::UnixListener::bind(path).map_err(err)?;
            Ok(Bound::Unix { addr: addr.to_string(), listener, path: Some(path.clone()) })
        }
    }
}

/// Asks the kernel to complete a connection's accept only once its first bytes arrived (nginx's
/// `deferred`), or after a few seconds: the request line is then usually readable at once, which
/// saves a wakeup and a failed read per connection. Clients that send nothing are still accepted
/// after the delay, then routed by the sniffing rules. Best effort: ignored where unsupported.
fn defer_accept(fd: &OwnedFd) {
    let seconds: libc::c_int = 3;
    // SAFETY: `fd` is a valid socket for the call's duration, and the option value is a c_int of
    // the size passed, as TCP_DEFER_ACCEPT takes.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const seconds).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "TCP_DEFER_ACCEPT not set");
    }
}

/// Removes a socket file nobody answers on; refuses a live one or a file that is not a socket.
fn clear_stale_socket(path: &Path) -> Result<(), BindError> {
    use crate::socketfile::Occupied;
    match crate::socketfile::clear_stale(path) {
        Ok(_) => Ok(()),
        Err(Occupied::InUse) => Err(BindError::InUse { path: path.to_owned() }),
        Err(Occupied::NotASocket) => Err(BindError::NotASocket { path: path.to_owned() }),
        Err(Occupied::Io(source)) => Err(BindError::Bind { addr: format!("unix:{}", path.display()), source }),
    }
}

/// The listening sockets systemd passed (`LISTEN_FDS`, checked against `LISTEN_PID`), if any.
pub fn from_systemd() -> Result<Vec<Bound>, BindError> {
    use nix::sys::socket::{AddressFamily, SockaddrLike, SockaddrStorage, getsockname, getsockopt, sockopt};
    let fds = sd_notify::listen_fds().map_err(BindError::Systemd)?;
    let mut bound = Vec::new();
    for raw in fds {
        // SAFETY: borrowed for one fcntl call, which only asks whether the fd is open.
        let open =
            nix::fcntl::fcntl(unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) }, nix::fcntl::FcntlArg::F_GETFD);
        if open.is_err() {
            // Claiming a closed fd would abort the process when it is dropped.
            return Err(BindError::NotListening { fd: raw });
        }
        // SAFETY: the fd is open (checked above), systemd passed it to this process (LISTEN_PID
        // matched), and nothing else in clusterd claims the fds from 3 to 3 + LISTEN_FDS.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if !getsockopt(&fd, sockopt::AcceptConn).unwrap_or(false) {
            return Err(BindError::NotListening { fd: raw });
        }
        let family = getsockname::<SockaddrStorage>(raw).ok().and_then(|a| a.family());
        match family {
            Some(AddressFamily::Inet | AddressFamily::Inet6) => {
                let listener = std::net::TcpListener::from(fd);
                let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| format!("fd:{raw}"));
                bound.push(Bound::Tcp { addr, listener });
            }
            Some(AddressFamily::Unix) => {
                let listener = std::os::unix::net::UnixListener::from(fd);
                let addr = listener
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
                    .unwrap_or_else(|| format!("fd:{raw}"));
                bound.push(Bound::Unix { addr, listener, path: None });
            }
            _ => return Err(BindError::NotListening { fd: raw }),
        }
    }
    Ok(bound)
}

/// How long a connection waits for room in a worker's handoff queue before another is tried.
const HANDOFF_WAIT: Duration = Duration::from_secs(2);

/// Routing limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The most bytes read to find the request line.
    pub sniff_bytes: usize,
    /// The longest a client may take to send its request line.
    pub sniff_timeout: Duration,
    pub sticky: Sticky,
    /// Node workers: on clusterd's own listeners, read the whole request (headers, and a body of
    /// known length up to [`WHOLE_REQUEST_MAX`]) before the handoff, for the `sticky:connection`
    /// message; on listeners workers asked for, read nothing (a `newconn` carries no bytes).
    pub node: bool,
    /// `--tcp-nodelay`: Nagle off on accepted TCP connections.
    pub tcp_nodelay: bool,
    /// Every connection starts with a PROXY protocol header (`--proxy-protocol`): its client
    /// address replaces the socket's peer; a connection without one is closed.
    pub proxy_protocol: bool,
}

/// The most bytes of one request clusterd reads for a Node worker; the rest reaches the worker
/// through the socket itself.
pub const WHOLE_REQUEST_MAX: usize = 1024 * 1024;

/// The request bytes read ahead for Node workers beyond the request line (which `--sniff-bytes`
/// bounds per connection), all connections together, held until each worker acknowledges its
/// handle: 64 requests of [`WHOLE_REQUEST_MAX`] at once. A worker that stops reading would
/// otherwise let clients park a megabyte each in clusterd for as long as it stalls. Once it is
/// spent, a connection is handed on with what was read, and the rest of its request reaches the
/// worker through the socket, as a request over [`WHOLE_REQUEST_MAX`] always did.
pub static READ_AHEAD: Budget = Budget::new(64 * 1024 * 1024);

/// A connection ready to go to a worker.
#[derive(Debug)]
pub struct Handoff {
    /// The listener group (a listener workers asked for), or `None` for clusterd's own.
    pub group: Option<u32>,
    pub fd: OwnedFd,
    pub peer: Address,
    pub local: Address,
    pub initial: Vec<u8>,
    /// How it was routed, to route it again if its worker started draining meanwhile.
    pub sid: Option<String>,
    pub ip: Option<IpAddr>,
    pub http: bool,
    pub unix: bool,
    /// `peer` (and `ip`) came from a PROXY protocol header, not from the socket: a worker that
    /// gives the connection back cannot tell them, so its link keeps them.
    pub claimed: bool,
    /// How many workers refused it (a Node worker over `server.maxConnections`, or whose
    /// server just closed); it is handed on at most `node::link::MAX_REFUSALS` times.
    pub refusals: u8,
    /// When clusterd accepted it, for `clusterd_handoff_seconds`: only with `--metrics`, and
    /// not for a connection a worker gave back (its accept was long before).
    pub accepted: Option<std::time::Instant>,
    /// What of `initial` was read ahead for a Node worker, held until the worker acknowledges
    /// the handle ([`READ_AHEAD`]).
    pub read_ahead: Share,
}

impl Handoff {
    /// A connection of which nothing was read (yet): routed by neither session nor IP, not HTTP
    /// as far as clusterd knows, holding nothing of the read-ahead budget. The others are this
    /// with what was read and learnt set (`Handoff { initial, sid, .. Handoff::unread(..) }`), and
    /// a connection of a listener a Node worker asked for is this as it is (its `newconn` carries
    /// no bytes).
    pub fn unread(
        group: Option<u32>,
        fd: OwnedFd,
        peer: Address,
        local: Address,
        unix: bool,
        accepted: Option<std::time::Instant>,
    ) -> Self {
        Self {
            group,
            fd,
            peer,
            local,
            initial: Vec::new(),
            sid: None,
            ip: None,
            http: false,
            unix,
            claimed: false,
            refusals: 0,
            accepted,
            read_ahead: Share::default(),
        }
    }
}

/// Where the dispatcher sends a connection.
pub struct Route {
    pub key: u64,
    pub group: Option<u32>,
    pub handoffs: mpsc::Sender<Handoff>,
}

/// What route tasks ask the dispatcher.
pub enum RouteMsg {
    /// Queue this connection for a worker picked for it (and count it on that worker); what
    /// cannot be queued at once goes on as [`deliver`] does.
    Deliver(Handoff),
    /// Pick a worker (and count the connection on it).
    Pick { group: Option<u32>, sid: Option<String>, ip: Option<IpAddr>, reply: oneshot::Sender<Option<Route>> },
    /// The handoff to this worker failed: uncount the connection.
    Failed { key: u64, group: Option<u32> },
}

/// Starts the accept loop of each of clusterd's own listeners; `proxied[i]`: the `i`th expects
/// PROXY protocol headers.
pub fn serve(bound: Vec<Bound>, limits: Limits, proxied: &[bool], routes: mpsc::Sender<RouteMsg>) -> io::Result<()> {
    for (i, listener) in bound.into_iter().enumerate() {
        let limits = Limits { proxy_protocol: proxied.get(i).copied().unwrap_or(false), ..limits };
        serve_one(listener, None, limits, routes.clone())?;
    }
    Ok(())
}

/// The most connections one listener accepts in a row before it lets the other tasks run.
const ACCEPT_BATCH: usize = 64;

/// The most bytes read at accept, without waiting (and `--sniff-bytes` at most), as the route
/// task's reads: a request line and its headers usually fit.
const FIRST_READ: usize = 4096;

/// A connection's local address, as the native protocol's `Connection` frame carries it.
#[derive(Clone)]
enum Local {
    /// The same for every connection: the listener's own (a Unix path, or an IP that is not a
    /// wildcard), or `Unknown` when no worker reads it (Node workers ask their socket).
    Known(Address),
    /// A wildcard listener (`0.0.0.0`, `[::]`): asked of each connection's socket.
    PerConnection,
}

/// What every connection of one listener shares.
struct Listening {
    group: Option<u32>,
    limits: Limits,
    routes: mpsc::Sender<RouteMsg>,
    local: Local,
    unix: bool,
}

/// Starts the accept loop of one listener; its connections go to the pool of `group`. It runs
/// as long as clusterd does.
pub fn serve_one(
    listener: Bound,
    group: Option<u32>,
    limits: Limits,
    routes: mpsc::Sender<RouteMsg>,
) -> io::Result<()> {
    // Never cancelled: dropping the token does not cancel it.
    start(listener, group, limits, routes, CancellationToken::new()).map(drop)
}

/// A listener that workers asked for (`Worker::listen`, Node's `server.listen`), whose accept
/// loop stops and whose socket closes when no worker wants it any more ([`Accepting::close`]).
pub struct Accepting {
    socket: Arc<tokio::io::unix::AsyncFd<OwnedFd>>,
    stop: CancellationToken,
}

impl Accepting {
    /// Stops accepting at once: new connections are refused from this call on (the socket is
    /// shut down here, not when the accept task next runs, so that an address closed and asked
    /// for again can be bound again straight away), and the accept task ends and closes the fd.
    /// Connections already accepted go on to be routed by the group id they carry.
    pub fn close(self) {
        self.stop.cancel();
        // A listening TCP socket shut down for reading leaves the LISTEN state: the kernel
        // refuses new connections (RST) and resets those not yet accepted. A Unix one refuses
        // them too. The fd itself is closed by the accept task, which holds the other reference.
        if let Err(error) =
            nix::sys::socket::shutdown(self.socket.get_ref().as_raw_fd(), nix::sys::socket::Shutdown::Read)
        {
            tracing::debug!(%error, "shutting a listener down failed; it closes when its accept task ends");
        }
    }
}

/// Starts the accept loop of a listener workers asked for, for the pool of `group`.
pub fn serve_group(
    listener: Bound,
    group: u32,
    limits: Limits,
    routes: mpsc::Sender<RouteMsg>,
) -> io::Result<Accepting> {
    let stop = CancellationToken::new();
    let socket = start(listener, Some(group), limits, routes, stop.clone())?;
    Ok(Accepting { socket, stop })
}

fn start(
    listener: Bound,
    group: Option<u32>,
    limits: Limits,
    routes: mpsc::Sender<RouteMsg>,
    stop: CancellationToken,
) -> io::Result<Arc<tokio::io::unix::AsyncFd<OwnedFd>>> {
    let (addr, fd, local, unix) = match listener {
        Bound::Tcp { addr, listener } => {
            listener.set_nonblocking(true)?;
            // A socket option is the application's choice: clusterd changes none unless asked
            // (`--tcp-nodelay`). Accepted sockets inherit TCP_NODELAY from the listener (Linux),
            // and it travels with the fd to the worker. Best effort: a socket from systemd may
            // refuse.
            if limits.tcp_nodelay {
                let _ = nix::sys::socket::setsockopt(&listener, nix::sys::socket::sockopt::TcpNoDelay, &true);
            }
            let local = match listener.local_addr() {
                Ok(own) if !own.ip().is_unspecified() => Local::Known(Address::from(own)),
                _ => Local::PerConnection,
            };
            (addr, OwnedFd::from(listener), local, false)
        }
        Bound::Unix { addr, listener, .. } => {
            listener.set_nonblocking(true)?;
            // An accepted Unix socket's own address is its listener's.
            let own = listener.local_addr().ok();
            let local = Local::Known(unix_address(own.as_ref().and_then(|a| a.as_pathname())));
            (addr, OwnedFd::from(listener), local, true)
        }
    };
    // Node workers never see the local address: a `newconn` carries the fd alone.
    let local = if limits.node { Local::Known(Address::Unknown) } else { local };
    let listener = Arc::new(crate::accept::watch(fd)?);
    let listening = Listening { group, limits, routes, local, unix };
    let socket = Arc::clone(&listener);
    tokio::spawn(async move { accept_loop(&addr, &listener, listening, stop).await });
    Ok(socket)
}

fn unix_address(path: Option<&Path>) -> Address {
    use std::os::unix::ffi::OsStrExt;
    path.map_or(Address::Unknown, |p| Address::Unix { path: p.as_os_str().as_bytes().to_vec() })
}

/// A socket address as the native protocol's frames carry it.
pub(crate) fn address_of(address: &nix::sys::socket::SockaddrStorage) -> Address {
    if let Some(v4) = address.as_sockaddr_in() {
        Address::from(SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
    } else if let Some(v6) = address.as_sockaddr_in6() {
        Address::from(SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
    } else {
        unix_address(address.as_unix_addr().and_then(|u| u.path()))
    }
}

/// The peer's address and IP (TCP only), from what `accept4` gave.
fn peer_address(peer: Option<&nix::sys::socket::SockaddrStorage>) -> (Address, Option<IpAddr>) {
    let address = peer.map_or(Address::Unknown, address_of);
    let ip = address.socket_addr().map(|a| a.ip());
    (address, ip)
}

/// A connection as accepted, before routing.
struct Incoming {
    group: Option<u32>,
    accepted: Option<std::time::Instant>,
    client: Client,
    peer: Address,
    local: Address,
    ip: Option<IpAddr>,
    /// Bytes of the request line already read (a connection given back before its end).
    initial: Vec<u8>,
    /// `peer` came from a PROXY protocol header.
    claimed: bool,
}

/// An accepted client socket while clusterd routes it.
enum Client {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Client {
    fn new(fd: OwnedFd, unix: bool) -> io::Result<Self> {
        // Tokio needs it non-blocking; a socket a worker gave back is, unless the worker changed it.
        Ok(if unix {
            let std = std::os::unix::net::UnixStream::from(fd);
            std.set_nonblocking(true)?;
            Self::Unix(tokio::net::UnixStream::from_std(std)?)
        } else {
            let std = std::net::TcpStream::from(fd);
            std.set_nonblocking(true)?;
            Self::Tcp(tokio::net::TcpStream::from_std(std)?)
        })
    }

    /// Registers a socket just accepted, already non-blocking, with the reactor.
    fn accepted(fd: OwnedFd, unix: bool) -> io::Result<Self> {
        Ok(if unix {
            Self::Unix(tokio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(fd))?)
        } else {
            Self::Tcp(tokio::net::TcpStream::from_std(std::net::TcpStream::from(fd))?)
        })
    }

    /// Resolves once the client sent something, or closed.
    async fn readable(&self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.readable().await,
            Self::Unix(s) => s.readable().await,
        }
    }

    /// Reads what has arrived into the spare capacity of `buf` (no zeroing), about `want` bytes.
    async fn read_some(&mut self, buf: &mut Vec<u8>, want: usize) -> io::Result<usize> {
        buf.reserve_exact(want);
        match self {
            Self::Tcp(s) => s.read_buf(buf).await,
            Self::Unix(s) => s.read_buf(buf).await,
        }
    }

    /// Writes a short answer and closes, never waiting long on a client that does not read.
    async fn reply(mut self, bytes: Vec<u8>) {
        let write = async {
            match &mut self {
                Self::Tcp(s) => {
                    s.write_all(&bytes).await?;
                    s.shutdown().await
                }
                Self::Unix(s) => {
                    s.write_all(&bytes).await?;
                    s.shutdown().await
                }
            }
        };
        let _: Result<io::Result<()>, _> = tokio::time::timeout(Duration::from_secs(5), write).await;
    }

    fn into_fd(self) -> io::Result<OwnedFd> {
        Ok(match self {
            Self::Tcp(s) => OwnedFd::from(s.into_std()?),
            Self::Unix(s) => OwnedFd::from(s.into_std()?),
        })
    }
}

async fn accept_loop(
    addr: &str,
    listener: &tokio::io::unix::AsyncFd<OwnedFd>,
    listening: Listening,
    stop: CancellationToken,
) {
    use std::os::fd::AsFd;
    let mut backoff = Duration::from_millis(5);
    let counter = crate::metrics::accepted_counter(addr);
    // The first read of every connection lands here, then only its bytes are copied out: a
    // buffer of this size allocated per connection costs malloc more than the copy (from 1 KiB
    // on, glibc merges its small free chunks first).
    let mut scratch = Vec::with_capacity(FIRST_READ);
    loop {
        // Stopped first: a socket shut down by `Accepting::close` reads as ready, and its
        // accept fails (EINVAL), which is no reason to log or retry.
        let ready = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            ready = listener.readable() => ready,
        };
        let mut guard = match ready {
            Ok(guard) => guard,
            Err(error) => {
                tracing::error!(addr, %error, "waiting for connections failed; retrying in 1s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // Accept what is waiting, a bounded batch per wakeup, so that one busy listener does not
        // starve the routing of what it accepted, nor the other listeners.
        let mut pause = None;
        let mut drained = false;
        for _ in 0..ACCEPT_BATCH {
            match crate::accept::accept(listener.get_ref().as_fd()) {
                Ok((fd, peer)) => {
                    let accepted = crate::metrics::accept_instant();
                    if let Some(counter) = &counter {
                        counter.inc();
                    }
                    backoff = Duration::from_millis(5);
                    admit(fd, peer.as_ref(), accepted, &listening, &mut scratch);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    drained = true;
                    break;
                }
                Err(error) if is_transient(&error) => {
                    tracing::warn!(addr, %error, "accept failed; retrying in {}", crate::duration::show(backoff));
                    pause = Some(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    break;
                }
                Err(_) if stop.is_cancelled() => return,
                Err(error) => {
                    // Not expected from a listening socket; keep serving rather than go deaf.
                    tracing::error!(addr, %error, "accept failed; retrying in 1s");
                    pause = Some(Duration::from_secs(1));
                    break;
                }
            }
        }
        drop(guard);
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        } else if !drained {
            tokio::task::yield_now().await;
        }
        if listening.routes.is_closed() || stop.is_cancelled() {
            return;
        }
    }
}

/// Routes a connection just accepted. Its first bytes are read at once, without waiting (the
/// listener's `TCP_DEFER_ACCEPT` means they are usually there): when they settle its route, it
/// goes to the dispatcher without ever being registered with the reactor; otherwise it is
/// registered and a route task waits for the rest, as [`route`] describes.
fn admit(
    fd: OwnedFd,
    peer: Option<&nix::sys::socket::SockaddrStorage>,
    accepted: Option<std::time::Instant>,
    listening: &Listening,
    scratch: &mut Vec<u8>,
) {
    use std::os::fd::AsFd;
    let Listening { group, limits, routes, local, unix } = listening;
    let (group, limits, unix) = (*group, *limits, *unix);
    let (peer, ip) = peer_address(peer);
    let local = match local {
        Local::Known(address) => address.clone(),
        Local::PerConnection => own_address(&fd),
    };
    if limits.node && group.is_some() {
        // A listener a Node worker asked for: its `newconn` carries no bytes, so nothing is read.
        return dispatch(Handoff::unread(group, fd, peer, local, unix, accepted), routes);
    }
    scratch.clear();
    match crate::accept::recv_now(fd.as_fd(), scratch, limits.sniff_bytes.min(FIRST_READ)) {
        Ok(0) => return, // the client left
        Ok(_) => {
            if let Some(settled) = settle(scratch, &limits) {
                let initial = scratch[settled.skip..].to_vec();
                let (peer, ip, claimed) = match settled.client {
                    Some(client) => (client.clone(), client.socket_addr().map(|a| a.ip()), true),
                    None => (peer, ip, false),
                };
                let (sid, ip) = sticky_keys(limits.sticky, settled.sid, ip);
                let http = settled.http;
                let handoff = Handoff {
                    initial,
                    sid,
                    ip,
                    http,
                    claimed,
                    ..Handoff::unread(group, fd, peer, local, unix, accepted)
                };
                return dispatch(handoff, routes);
            }
        }
        Err(error) if error.kind() == io::ErrorKind::WouldBlock || error.kind() == io::ErrorKind::Interrupted => {}
        Err(_) => return, // the client left
    }
    let Ok(client) = Client::accepted(fd, unix) else { return };
    let initial = scratch.to_vec();
    let incoming = Incoming { group, accepted, client, peer, local, ip, initial, claimed: false };
    tokio::spawn(route(incoming, limits, routes.clone()));
}

/// The local address of an accepted socket (`getsockname`), for a wildcard listener.
fn own_address(fd: &OwnedFd) -> Address {
    use nix::sys::socket::{SockaddrStorage, getsockname};
    match getsockname::<SockaddrStorage>(fd.as_raw_fd()) {
        Ok(own) => peer_address(Some(&own)).0,
        Err(_) => Address::Unknown,
    }
}

/// How the first bytes of a connection route it, when they alone decide.
struct Settled {
    /// The length of the PROXY protocol header they start with (0 without `--proxy-protocol`).
    skip: usize,
    /// The client the PROXY header named, if it named one.
    client: Option<Address>,
    http: bool,
    sid: Option<String>,
}

/// Whether `initial`, read at once at accept, settles the connection's route as [`route`] would
/// decide it; `None` when more bytes are needed or the client is to be answered or refused: the
/// route task then does both, from the same bytes, so that every rule lives there.
fn settle(initial: &[u8], limits: &Limits) -> Option<Settled> {
    let (skip, client) = if limits.proxy_protocol {
        match crate::proxy_protocol::parse(initial, limits.sniff_bytes) {
            crate::proxy_protocol::Parsed::Header { length, addresses } => {
                (length, addresses.map(|(source, _)| source))
            }
            _ => return None,
        }
    } else {
        (0, None)
    };
    let rest = &initial[skip..];
    let (http, sid) = match sniff(rest, limits.sniff_bytes) {
        Sniffed::Http { sid } => (true, sid),
        Sniffed::NotHttp => (false, None),
        Sniffed::Incomplete | Sniffed::TooLong => return None,
    };
    if http && limits.node && !enough_for_node(rest) {
        return None;
    }
    Some(Settled { skip, client, http, sid })
}

/// Whether clusterd has read what it reads of a Node worker's HTTP connection before handing it
/// over: the whole request, or [`WHOLE_REQUEST_MAX`] bytes of it.
fn enough_for_node(bytes: &[u8]) -> bool {
    bytes.len() >= WHOLE_REQUEST_MAX || crate::sniff::request_length(bytes).is_some_and(|length| bytes.len() >= length)
}

/// The keys `--sticky` routes by: the Socket.IO session id, the client's IP, or neither.
fn sticky_keys(sticky: Sticky, sid: Option<String>, ip: Option<IpAddr>) -> (Option<String>, Option<IpAddr>) {
    (if sticky == Sticky::Sid { sid } else { None }, if sticky == Sticky::Ip { ip } else { None })
}

fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::ECONNABORTED | libc::EINTR)
    )
}

/// Reads the request line, asks the dispatcher for a worker, and hands the connection over.
///
/// Rules (README "Routing"): a complete HTTP/1.x request line is routed by its `sid`, or balanced;
/// bytes that cannot be HTTP/1.x (TLS, HTTP/2, another protocol) are balanced at once; a client
/// that sends nothing within the timeout is balanced (protocols where the server speaks first);
/// a request line that is still incomplete at the timeout gets `408` and is closed, one longer than
/// the byte limit gets `414` and is closed. With no ready worker, HTTP gets `503`, anything else
/// is closed.
async fn route(accepted: Incoming, limits: Limits, routes: mpsc::Sender<RouteMsg>) {
    let Incoming { group, accepted, mut client, mut peer, local, mut ip, mut initial, mut claimed } = accepted;
    let unix = matches!(client, Client::Unix(_));
    if limits.node && group.is_some() {
        let Ok(fd) = client.into_fd() else { return };
        return dispatch(Handoff::unread(group, fd, peer, local, unix, accepted), &routes);
    }
    initial.reserve(1024);
    let deadline = tokio::time::Instant::now() + limits.sniff_timeout;
    if limits.proxy_protocol {
        match read_proxy_header(&mut client, &mut initial, deadline, limits.sniff_bytes).await {
            Ok(Some(client_addr)) => {
                ip = client_addr.socket_addr().map(|a| a.ip());
                peer = client_addr;
                claimed = true;
            }
            Ok(None) => {}
            Err(reason) => {
                let n = crate::proxy_protocol::count_refused();
                if crate::proxy_protocol::worth_logging(n) {
                    tracing::warn!(peer = ?peer.socket_addr(), refused = n, "PROXY protocol: closed a connection: {reason}");
                }
                return; // dropped: closed, and no worker hears of it
            }
        }
    }
    let sniffed = loop {
        let verdict = sniff(&initial, limits.sniff_bytes);
        if verdict != Sniffed::Incomplete {
            break verdict;
        }
        let want = limits.sniff_bytes.saturating_sub(initial.len()).clamp(1, 4096);
        match tokio::time::timeout_at(deadline, client.read_some(&mut initial, want)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return, // the client left
            Ok(Ok(_)) => {}
            Err(_) if initial.is_empty() => break Sniffed::NotHttp,
            Err(_) => return client.reply(response(408, "Request Timeout", "request line not received in time")).await,
        }
    };
    let (http, sid) = match sniffed {
        Sniffed::Http { sid } => (true, sid),
        Sniffed::NotHttp => (false, None),
        Sniffed::TooLong => return client.reply(response(414, "URI Too Long", "request line too long")).await,
        Sniffed::Incomplete => unreachable!("the loop only ends on a verdict"),
    };
    let mut read_ahead = READ_AHEAD.share();
    if http && limits.node {
        // Best effort within the same deadline and the read-ahead budget: what is not read by
        // then flows through the fd.
        let mut scan = crate::sniff::RequestScan::default();
        while initial.len() < WHOLE_REQUEST_MAX && scan.length(&initial).is_none_or(|length| initial.len() < length) {
            let want = read_ahead.take((WHOLE_REQUEST_MAX - initial.len()).min(64 * 1024));
            if want == 0 {
                break; // the budget is spent: handed on with what was read
            }
            match tokio::time::timeout_at(deadline, client.read_some(&mut initial, want)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => read_ahead.give_back(want - n.min(want)),
                Err(_) => {
                    read_ahead.give_back(want);
                    break;
                }
            }
        }
    }
    let (sid, ip) = sticky_keys(limits.sticky, sid, ip);
    let Ok(fd) = client.into_fd() else { return };
    let unread = Handoff::unread(group, fd, peer, local, unix, accepted);
    let handoff = Handoff { initial, sid, ip, http, claimed, read_ahead, ..unread };
    dispatch(handoff, &routes);
}

/// Reads the PROXY protocol header at the start of `client` within `deadline` and `limit` bytes,
/// and leaves in `initial` only what the client sent after it. `Ok(None)`: a valid header that
/// names no client (the balancer's own connection), the socket's addresses stand.
async fn read_proxy_header(
    client: &mut Client,
    initial: &mut Vec<u8>,
    deadline: tokio::time::Instant,
    limit: usize,
) -> Result<Option<Address>, &'static str> {
    use crate::proxy_protocol::{Parsed, parse};
    loop {
        match parse(initial, limit) {
            Parsed::Header { length, addresses } => {
                initial.drain(..length);
                return Ok(addresses.map(|(source, _)| source));
            }
            Parsed::Invalid(reason) => return Err(reason),
            Parsed::Incomplete => {}
        }
        // What arrives after the header stays in `initial`: it is the start of the client's bytes.
        let want = limit.saturating_sub(initial.len()).clamp(1, 4096);
        match tokio::time::timeout_at(deadline, client.read_some(initial, want)).await {
            Ok(Ok(0)) => return Err("the client closed before a whole header"),
            Ok(Err(_)) => return Err("read error before a whole header"),
            Ok(Ok(_)) => {}
            Err(_) => return Err("no whole header within --sniff-timeout"),
        }
    }
}

/// Hands a connection that a draining worker did not take to another worker.
pub fn reroute(handoff: Handoff, routes: mpsc::Sender<RouteMsg>) {
    tokio::spawn(deliver(handoff, routes));
}

/// The longest clusterd keeps a kept-alive connection that a draining worker gave back between
/// two requests, waiting for the client's next request to route it by. An idle client past that
/// is closed, as a server's keep-alive timeout would close it.
pub const IDLE_HANDBACK_WAIT: Duration = Duration::from_secs(60);

/// The most given-back connections clusterd holds at once, in all, while they wait idle for
/// their client's next request (each is an fd of clusterd's). In all rather than per worker:
/// the fds are clusterd's, and a bound per worker would grow with `--workers`. Past it an idle
/// connection given back is closed at once, as a server's keep-alive timeout would close it.
pub const IDLE_HANDBACKS_MAX: usize = 4096;

/// The given-back connections waiting idle now, at most [`IDLE_HANDBACKS_MAX`].
static IDLE_HANDBACKS: Budget = Budget::new(IDLE_HANDBACKS_MAX);

/// Idle given-back connections closed at once for want of room, since clusterd started.
static IDLE_HANDBACKS_CLOSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A place among [`IDLE_HANDBACKS_MAX`] for a given-back connection that waits idle (given up
/// when dropped: the wait ended, or its task did); `None`, logged at a pace, when all are taken.
fn idle_place() -> Option<Share> {
    let mut place = IDLE_HANDBACKS.share();
    if place.take(1) == 1 {
        return Some(place);
    }
    let closed = IDLE_HANDBACKS_CLOSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    if crate::proxy_protocol::worth_logging(closed) {
        tracing::warn!(
            closed,
            "{IDLE_HANDBACKS_MAX} connections given back wait idle already: closed an idle one at once"
        );
    }
    None
}

/// Routes a connection a worker gave back: at once by the request line the worker read; or,
/// when the worker gave it back before a complete request line (a draining worker ends its idle
/// kept-alive connections that way), once the client sent its next request line, as for a new
/// connection (within [`IDLE_HANDBACK_WAIT`] for its first byte, then `--sniff-timeout`). So the
/// next worker gets the request line and follows the connection's requests as the first did.
pub fn reroute_handback(handoff: Handoff, limits: Limits, routes: mpsc::Sender<RouteMsg>) {
    if sniff(&handoff.initial, limits.sniff_bytes) != Sniffed::Incomplete {
        return reroute(handoff, routes);
    }
    tokio::spawn(async move {
        let Handoff { group, fd, peer, local, initial, ip, unix, claimed, .. } = handoff;
        // At most IDLE_HANDBACKS_MAX wait at once; past it, dropped, so closed.
        let idle = if initial.is_empty() {
            let Some(place) = idle_place() else { return };
            Some(place)
        } else {
            None
        };
        let Ok(client) = Client::new(fd, unix) else { return };
        if idle.is_some() && tokio::time::timeout(IDLE_HANDBACK_WAIT, client.readable()).await.is_err() {
            return; // idle too long: dropped, so closed
        }
        // No longer idle: what follows is bounded by --sniff-timeout.
        drop(idle);
        // Its PROXY header, if any, was read at its accept.
        let limits = Limits { proxy_protocol: false, ..limits };
        // Not a new accept: the handoff histogram measures only first handoffs.
        let accepted = None;
        route(Incoming { group, accepted, client, peer, local, ip, initial, claimed }, limits, routes).await;
    });
}

/// Gives a routed connection to the dispatcher without waiting for its answer
/// ([`RouteMsg::Deliver`]); when the dispatcher's queue is full, a task waits for room and asks.
fn dispatch(handoff: Handoff, routes: &mpsc::Sender<RouteMsg>) {
    use tokio::sync::mpsc::error::TrySendError;
    // Closed: clusterd is stopping; the connection is dropped, so closed.
    if let Err(TrySendError::Full(RouteMsg::Deliver(handoff))) = routes.try_send(RouteMsg::Deliver(handoff)) {
        reroute(handoff, routes.clone());
    }
}

/// Asks the dispatcher for a worker and queues the connection for it; `503` or a close when none
/// takes it.
async fn deliver(handoff: Handoff, routes: mpsc::Sender<RouteMsg>) {
    let (group, sid, ip, http, unix) = (handoff.group, handoff.sid.clone(), handoff.ip, handoff.http, handoff.unix);
    // A worker that dies (or starts draining) between the pick and the handoff costs only that
    // attempt.
    for _ in 0..3 {
        let (reply_tx, reply_rx) = oneshot::channel();
        if routes.send(RouteMsg::Pick { group, sid: sid.clone(), ip, reply: reply_tx }).await.is_err() {
            return;
        }
        let Ok(Some(route)) = reply_rx.await else { break };
        // A worker whose queue stays full is not taking connections: try another one.
        match tokio::time::timeout(HANDOFF_WAIT, route.handoffs.reserve()).await {
            Ok(Ok(permit)) => {
                permit.send(handoff);
                return;
            }
            Ok(Err(_)) | Err(_) => {
                let _ = routes.send(RouteMsg::Failed { key: route.key, group }).await;
            }
        }
    }
    // No ready worker: HTTP hears why at once; anything else is closed (dropping the fd).
    if http && let Ok(client) = Client::new(handoff.fd, unix) {
        client.reply(response(503, "Service Unavailable", "no worker is ready with room")).await;
    }
}
