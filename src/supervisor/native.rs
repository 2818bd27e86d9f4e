//! clusterd's own protocol with a worker: frames and connections on the IPC socket (fd 3), bus
//! messages on the bus socket (fd 4), relayed by `crate::relay`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clusterd_worker::bus_protocol::{BUS_FD, ENV_BUS_FD};
use clusterd_worker::channel::PrimaryChannel;
use std::os::fd::OwnedFd;

use clusterd_worker::protocol::{
    Address, ENV_GENERATION, ENV_IPC_FD, ENV_WORKER_COUNT, ENV_WORKER_ID, FromWorker, Hello, IPC_FD, ListenResult,
    MAX_FRAME, MetricsChunk, PROTOCOL_VERSION, ToWorker,
};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use tokio::sync::mpsc;
use tokio_seqpacket::UnixSeqpacket;

use super::bus_reader::BusReader;
use super::worker::{Settings, millis};
use crate::listener::Handoff;
use crate::relay::Input;
use crate::worker_link::{Asked, Handed, Heard, Launch, Said, SpawnSpec, Spawned, StartError, handback};

/// The longest a frame may wait for room in a worker's IPC socket. A worker that does not read
/// for this long (its 200 KiB socket buffer full) loses that frame; the worker task must stay
/// free to act on its timers and on kill orders.
const SEND_WAIT: Duration = Duration::from_secs(1);

/// The send buffer asked for on both ends of each bus socket, in bytes. Larger than the default
/// (about 200 KiB): fewer wake-ups per byte under load. Best effort: the kernel caps it at
/// net.core.wmem_max.
const BUS_SOCKET_BUFFER: usize = 1024 * 1024;

/// The most connections one worker is known to hold (handed over, not yet given back or reported
/// closed). Past it the oldest is forgotten: a worker that never reports its closes costs clusterd
/// a bounded table, not one entry per connection it was ever handed. A forgotten connection can no
/// longer be given back (refused, closed) and its close is not counted.
pub const HELD_MAX: usize = 262_144;

/// The most session acknowledgements waiting for room in one worker's IPC socket. Acks never
/// make the worker task wait (it must stay free for drains, kills and timers): they queue here
/// and go out as the worker reads. A worker that stops reading loses those past the bound (its
/// `session_open` times out); one that reads gets every ack.
pub const PENDING_ACKS_MAX: usize = 4096;

/// Handbacks refused since clusterd started: a connection given back that its worker did not hold.
static REFUSED_HANDBACKS: AtomicU64 = AtomicU64::new(0);

/// Session acknowledgements dropped since clusterd started: the worker did not read its socket.
static DROPPED_ACKS: AtomicU64 = AtomicU64::new(0);

/// A connection the worker holds: what clusterd must remember until it comes back or closes.
#[derive(Debug, Default)]
struct Held {
    /// The listener group, when it came through a listener a worker asked for: its close counts there.
    group: Option<u32>,
    /// The client a PROXY protocol header named: if the worker gives the connection back, the
    /// socket itself would only name the balancer.
    claimed: Option<Address>,
    /// A health-check connection: its close counts nowhere.
    probe: bool,
}

pub struct NativeLink {
    channel: PrimaryChannel,
    channel_open: bool,
    greeted: bool,
    bus: BusReader,
    relay: mpsc::Sender<Input>,
    /// Where the frames of a relay that is gone give their charge back.
    bus_memory: Arc<crate::bus_memory::BusMemory>,
    key: u64,
    slot: u32,
    next_connection: u64,
    /// The connections the worker holds, by id (oldest first), at most [`HELD_MAX`]: only these
    /// may come back or count as closed, each once.
    held: BTreeMap<u64, Held>,
    /// Session acknowledgements not yet sent, at most [`PENDING_ACKS_MAX`].
    acks: VecDeque<u32>,
    /// How a connection the worker gives back is routed again.
    limits: crate::listener::Limits,
    /// The worker said it has metrics (`MetricsAvailable`): scrapes ask it.
    metrics_offered: bool,
    /// The metrics answer being received, chunk by chunk.
    metrics: crate::metrics::workers::Assembly,
}

impl NativeLink {
    /// Creates the worker's sockets, greets it (the Hello waits in its socket) and spawns it.
    pub async fn start(settings: &Settings, launch: &Launch) -> Result<(Self, Spawned), StartError> {
        // Both ends close-on-exec; the spawner dup2s the worker's end onto fd 3 in the child only.
        // The worker's end stays blocking (programs without the SDK may use it plainly).
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
            .map_err(|e| StartError::setup("cannot create the IPC socket pair", e))?;
        nix::fcntl::fcntl(&ours, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
            .map_err(|e| StartError::setup("cannot make the IPC socket non-blocking", e))?;
        let socket =
            UnixSeqpacket::try_from(ours).map_err(|e| StartError::setup("cannot register the IPC socket", e))?;
        let (bus_ours, bus_theirs) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
            .map_err(|e| StartError::setup("cannot create the bus socket pair", e))?;
        for end in [&bus_ours, &bus_theirs] {
            let _ = nix::sys::socket::setsockopt(end, nix::sys::socket::sockopt::SndBuf, &BUS_SOCKET_BUFFER);
        }
        let bus_stream = std::os::unix::net::UnixStream::from(bus_ours);
        bus_stream
            .set_nonblocking(true)
            .map_err(|e| StartError::setup("cannot make the bus socket non-blocking", e))?;
        let (bus_read, bus_write) = tokio::net::UnixStream::from_std(bus_stream)
            .map_err(|e| StartError::setup("cannot register the bus socket", e))?
            .into_split();
        let channel = PrimaryChannel::new(socket);
        let heartbeat_ms =
            settings.heartbeat_timeout.map_or(0, |t| u32::try_from(t.as_millis() / 3).unwrap_or(u32::MAX));
        let hello = Hello {
            version: PROTOCOL_VERSION,
            worker_id: launch.slot,
            worker_count: launch.count,
            generation: launch.generation,
            heartbeat_ms,
            max_frame: MAX_FRAME as u32,
        };
        // Queued in the socket buffer before the worker runs, so it is always the first frame.
        channel.send(&ToWorker::Hello(hello)).await.map_err(|e| match e {
            clusterd_worker::channel::ChannelError::Io(e) => StartError::setup("cannot greet the worker", e),
            e => StartError::Failed(format!("cannot greet the worker: {e}")),
        })?;
        let env = vec![
            (ENV_IPC_FD.to_owned(), IPC_FD.to_string()),
            (ENV_WORKER_ID.to_owned(), launch.slot.to_string()),
            (ENV_WORKER_COUNT.to_owned(), launch.count.to_string()),
            (ENV_GENERATION.to_owned(), launch.generation.to_string()),
            (ENV_BUS_FD.to_owned(), BUS_FD.to_string()),
        ];
        let spec = SpawnSpec {
            program: settings.program.clone(),
            args: settings.args.clone(),
            env,
            ipc: theirs,
            bus: Some(bus_theirs),
        };
        let spawned = settings.spawner.spawn(spec).await.map_err(|e| StartError::spawn(&settings.program, e))?;
        let join = Input::Join {
            key: launch.incarnation,
            slot: launch.slot,
            writer: bus_write,
            dropped: Arc::clone(&launch.dropped),
        };
        let _ = settings.relay.send(join).await;
        let link = Self {
            channel,
            channel_open: true,
            greeted: false,
            bus: BusReader::new(bus_read, Arc::clone(&settings.bus_memory)),
            relay: settings.relay.clone(),
            bus_memory: Arc::clone(&settings.bus_memory),
            key: launch.incarnation,
            slot: launch.slot,
            next_connection: 1,
            held: BTreeMap::new(),
            acks: VecDeque::new(),
            limits: settings.limits,
            metrics_offered: false,
            metrics: crate::metrics::workers::Assembly::default(),
        };
        Ok((link, spawned))
    }

    pub fn open(&self) -> bool {
        self.channel_open || self.bus.open
    }

    /// The next frame worth reporting; bus frames go to the relay on the way.
    pub async fn next(&mut self) -> Heard {
        loop {
            tokio::select! {
                frame = self.channel.recv_with_fd(), if self.channel_open => return self.frame(frame),
                // Acks go out as the worker reads, never holding up the worker task.
                sent = flush_acks(&self.channel, &mut self.acks), if self.channel_open && !self.acks.is_empty() => {
                    if !sent {
                        // The worker is gone or going: nobody waits for them any more.
                        self.acks.clear();
                    }
                }
                relayed = relay_frames(&mut self.bus, &self.relay, &self.bus_memory, self.key), if self.bus.open => {
                    if let Err(error) = relayed {
                        self.channel_open = false;
                        return Heard::Violation(format!("bus: {error}"));
                    }
                    if !self.open() {
                        return Heard::End;
                    }
                }
            }
        }
    }

    fn frame(
        &mut self,
        frame: Result<Option<(FromWorker, Option<OwnedFd>)>, clusterd_worker::channel::ChannelError>,
    ) -> Heard {
        let (frame, fd) = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                self.channel_open = false;
                return Heard::End;
            }
            Err(clusterd_worker::channel::ChannelError::Io(error))
                if matches!(error.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe) =>
            {
                // The worker's end closed with frames unread in it: the process died (its status
                // comes from the reaper), it broke nothing.
                self.channel_open = false;
                return Heard::End;
            }
            Err(error) => {
                self.channel_open = false;
                return Heard::Violation(error.to_string());
            }
        };
        let said = match frame {
            FromWorker::Hello { version, .. } if version != PROTOCOL_VERSION => {
                Err(format!("speaks protocol {version}, clusterd speaks {PROTOCOL_VERSION}"))
            }
            FromWorker::Hello { .. } if self.greeted => Err("a second Hello".to_owned()),
            FromWorker::Hello { .. } => {
                self.greeted = true;
                Ok(Said::Greeted)
            }
            _ if !self.greeted => Err("a frame before Hello".to_owned()),
            FromWorker::Ready => Ok(Said::Ready),
            FromWorker::ConnectionsClosed { ids } if ids.iter().all(|&id| id < self.next_connection) => {
                // Each held connection counts once: a repeated close (or one forgotten past
                // HELD_MAX) counts nothing.
                let closed = ids.iter().filter_map(|id| self.held.remove(id));
                Ok(Said::Closed(closed.filter(|held| !held.probe).map(|held| held.group).collect()))
            }
            FromWorker::ConnectionsClosed { .. } => Err("closed a connection never handed over".to_owned()),
            FromWorker::Listen { seq, addr } => Ok(Said::Listen { seq, addr, index: 0 }),
            FromWorker::SessionOpen { seq, sid } => Ok(Said::SessionOpen { seq: Some(seq), sid }),
            FromWorker::SessionClose { sid } => Ok(Said::SessionClose { sid }),
            FromWorker::Capacity { full } => Ok(Said::Capacity { full }),
            FromWorker::Handback(back) if (1..self.next_connection).contains(&back.id) => {
                let Some(Held { group, claimed, .. }) = self.held.remove(&back.id) else {
                    // Given back or closed already: taking it again would let one connection
                    // cost clusterd an fd (and an idle wait) per repeat. Its fd closes here.
                    drop(fd);
                    return Heard::Said(self.refused_handback(back.id));
                };
                match fd {
                    Some(fd) => {
                        handback(fd, back.initial, group, claimed, &self.limits).map(|h| Said::Handback(Box::new(h)))
                    }
                    // clusterd is at its own fd limit: the connection is lost, and closed.
                    None => Ok(Said::Closed(vec![group])),
                }
            }
            FromWorker::Handback(_) => Err("gave back a connection never handed over".to_owned()),
            FromWorker::MetricsAvailable => {
                self.metrics_offered = true;
                Ok(Said::Alive)
            }
            FromWorker::Metrics(chunk) => Ok(self.metrics_chunk(chunk)),
            _ => Ok(Said::Alive),
        };
        match said {
            Ok(said) => Heard::Said(said),
            Err(why) => {
                self.channel_open = false;
                Heard::Violation(why)
            }
        }
    }

    /// A handback of a connection the worker does not hold: refused (its fd is already closed),
    /// counted, and logged the first ten times and then at every power of two.
    fn refused_handback(&self, id: u64) -> Said {
        let refused = REFUSED_HANDBACKS.fetch_add(1, Ordering::Relaxed) + 1;
        if crate::proxy_protocol::worth_logging(refused) {
            tracing::warn!(
                worker = self.slot,
                id,
                refused,
                "the worker gave back a connection it does not hold (given back or closed already): closed"
            );
        }
        Said::Alive
    }

    /// Remembers a connection the worker now holds, forgetting the oldest past [`HELD_MAX`].
    fn hold(&mut self, id: u64, held: Held) {
        if self.held.len() >= HELD_MAX {
            self.held.pop_first();
        }
        self.held.insert(id, held);
    }

    /// Sends one connection (frame + fd); clusterd's copy of the fd closes either way. Returns the
    /// group of a connection that could not be sent (it counts as closed at once).
    pub async fn hand_over(&mut self, mut handoff: Handoff) -> Handed {
        use clusterd_worker::protocol::Address;
        let group = handoff.group;
        if !self.channel_open {
            return Handed::Back(Box::new(handoff));
        }
        let id = self.next_connection;
        let claimed = handoff.claimed.then(|| handoff.peer.clone());
        // Moved into the frame, and back if it could not be sent.
        let frame = ToWorker::Connection(clusterd_worker::protocol::Connection {
            id,
            peer: std::mem::replace(&mut handoff.peer, Address::Unknown),
            local: std::mem::replace(&mut handoff.local, Address::Unknown),
            initial: std::mem::take(&mut handoff.initial),
        });
        match send_within(&self.channel, &frame, Some(std::os::fd::AsFd::as_fd(&handoff.fd))).await {
            Sent::Yes => {}
            Sent::Broken => {
                // Nothing reached the worker: the connection goes on, its request with it.
                if let ToWorker::Connection(connection) = frame {
                    (handoff.peer, handoff.local, handoff.initial) =
                        (connection.peer, connection.local, connection.initial);
                }
                return Handed::Back(Box::new(handoff));
            }
            // A worker that has not read its channel for SEND_WAIT: the connection is closed.
            Sent::TimedOut => return Handed::Closed(group),
        }
        self.next_connection += 1;
        // The client sees FIN when the worker closes: clusterd keeps no copy.
        drop(handoff.fd);
        self.hold(id, Held { group, claimed, probe: false });
        Handed::Yes
    }

    /// Hands over a health-check connection as a client connection (the worker cannot tell them
    /// apart), with nothing read from it: clusterd wrote the request into it. Its close is not
    /// reported as a client connection's. `false` if it could not be sent.
    pub async fn probe(&mut self, fd: std::os::fd::OwnedFd) -> bool {
        let id = self.next_connection;
        self.next_connection += 1;
        let frame = ToWorker::Connection(clusterd_worker::protocol::Connection {
            id,
            peer: clusterd_worker::protocol::Address::Unknown,
            local: clusterd_worker::protocol::Address::Unknown,
            initial: Vec::new(),
        });
        let sent = self.channel_open && send_bounded(&self.channel, &frame, Some(std::os::fd::AsFd::as_fd(&fd))).await;
        if sent {
            self.hold(id, Held { probe: true, ..Held::default() });
        }
        sent
    }

    /// Asks for the worker's metrics, if it has any.
    pub async fn ask_metrics(&mut self, id: u32) -> Asked {
        if !self.metrics_offered {
            return Asked::Nothing;
        }
        if self.channel_open && send_bounded(&self.channel, &ToWorker::MetricsRequest { id }, None).await {
            Asked::Sent
        } else {
            Asked::Failed
        }
    }

    /// A chunk of a metrics answer: the answer once it is whole (or refused), else a sign of life.
    fn metrics_chunk(&mut self, chunk: MetricsChunk) -> Said {
        let id = chunk.id;
        match self.metrics.add(chunk) {
            Some(metrics) => Said::Metrics { id, metrics },
            None => Said::Alive,
        }
    }

    pub async fn drain(&mut self, grace: Duration) -> bool {
        send_bounded(&self.channel, &ToWorker::Drain { grace_ms: millis(grace) }, None).await;
        true
    }

    /// Queues the ack of the worker's `SessionOpen {seq}`; [`Self::next`] sends it. Never
    /// waits: the worker task must stay free to drain and kill a worker that does not read.
    pub fn session_ack(&mut self, seq: u32) {
        if !self.channel_open {
            return;
        }
        if self.acks.len() >= PENDING_ACKS_MAX {
            let dropped = DROPPED_ACKS.fetch_add(1, Ordering::Relaxed) + 1;
            if crate::proxy_protocol::worth_logging(dropped) {
                tracing::warn!(
                    worker = self.slot,
                    dropped,
                    "the worker does not read its IPC socket: {PENDING_ACKS_MAX} session acks wait already; this one \
                     is dropped (its session_open times out)"
                );
            }
            return;
        }
        self.acks.push_back(seq);
    }

    pub async fn listening(&mut self, seq: u32, result: ListenResult) {
        if self.channel_open {
            send_bounded(&self.channel, &ToWorker::Listening { seq, result }, None).await;
        }
    }
}

/// Sends the queued session acks as the worker's socket takes them; `false` if the socket broke.
/// Cancel-safe: a seqpacket send either sent the whole frame or nothing, and an ack leaves the
/// queue only once sent.
async fn flush_acks(channel: &PrimaryChannel, acks: &mut VecDeque<u32>) -> bool {
    while let Some(&seq) = acks.front() {
        if channel.send(&ToWorker::SessionAck { seq }).await.is_err() {
            return false;
        }
        acks.pop_front();
    }
    true
}

/// Reads bus frames and hands them to the relay: every whole frame buffered, as long as the
/// relay's queue has room, so that one turn of the link's `select!` passes on a whole read, not
/// one frame. Cancel-safe: room in the relay's queue is reserved once a whole frame is buffered,
/// and only then is the frame taken; an idle bus costs no reservation.
async fn relay_frames(
    bus: &mut BusReader,
    relay: &mpsc::Sender<Input>,
    memory: &crate::bus_memory::BusMemory,
    key: u64,
) -> Result<(), String> {
    let result = async {
        if !bus.fill().await? {
            bus.open = false;
            return Ok(());
        }
        let mut permit = relay.reserve().await.ok();
        // Without a relay (clusterd is stopping), frames are taken and dropped.
        while let Some((frame, charge)) = bus.take()? {
            match permit {
                Some(permit) => permit.send(Input::Frame { key, frame, charge }),
                None => memory.release(charge),
            }
            permit = match relay.try_reserve() {
                Ok(permit) => Some(permit),
                Err(mpsc::error::TrySendError::Full(())) => break,
                Err(mpsc::error::TrySendError::Closed(())) => None,
            };
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        bus.open = false;
    }
    result
}

/// How a send to the worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Yes,
    /// The socket failed (the worker is gone or going): nothing was sent.
    Broken,
    /// The worker did not take it within [`SEND_WAIT`].
    TimedOut,
}

/// Sends a frame (and an fd) within [`SEND_WAIT`]; `false` if it could not.
async fn send_bounded(channel: &PrimaryChannel, frame: &ToWorker, fd: Option<std::os::fd::BorrowedFd<'_>>) -> bool {
    send_within(channel, frame, fd).await == Sent::Yes
}

/// Sends a frame (and an fd) within [`SEND_WAIT`], telling a broken channel from a slow worker.
async fn send_within(channel: &PrimaryChannel, frame: &ToWorker, fd: Option<std::os::fd::BorrowedFd<'_>>) -> Sent {
    let send = async {
        match fd {
            Some(fd) => channel.send_with_fd(frame, fd).await,
            None => channel.send(frame).await,
        }
    };
    match tokio::time::timeout(SEND_WAIT, send).await {
        Ok(Ok(())) => Sent::Yes,
        Ok(Err(_)) => Sent::Broken,
        Err(_) => Sent::TimedOut,
    }
}
