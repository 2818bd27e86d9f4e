//! The task that owns one worker process: spawns it, reads its frames, keeps its timers (ready,
//! heartbeat, grace), signals its process group, and reports to the dispatcher until it is reaped.
//!
//! Only this task signals the worker, and only while it is not yet reaped, so a pid is never
//! signalled after the kernel could have given it to another process.

use std::sync::Arc;
use std::time::Duration;

use clusterd_worker::bus_protocol::{BUS_FD, ENV_BUS_FD};

use super::bus_reader::BusReader;
use clusterd_worker::channel::PrimaryChannel;
use clusterd_worker::protocol::{
    ENV_GENERATION, ENV_IPC_FD, ENV_WORKER_COUNT, ENV_WORKER_ID, FromWorker, Hello, IPC_FD, MAX_FRAME,
    PROTOCOL_VERSION, ToWorker,
};
use nix::sys::signal::{Signal, killpg};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::unistd::Pid;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_seqpacket::UnixSeqpacket;

use super::exit::{ExitInfo, KillReason, Status, oom_kill_count};
use super::spawn::{SpawnSpec, Spawner};
use crate::config::ReadyOn;
use crate::listener::Handoff;
use crate::logs::{LogSink, Output};

/// Connections queued for one worker's IPC socket; the route tasks wait when it is full.
const HANDOFF_QUEUE: usize = 256;

/// The longest a frame may wait for room in a worker's IPC socket. A worker that does not read
/// for this long (its 200 KiB socket buffer full) loses that frame; this task must stay free to
/// act on its timers and on kill orders.
const SEND_WAIT: Duration = Duration::from_secs(1);

/// Sends a frame (and an fd) within [`SEND_WAIT`]; `false` if it could not.
async fn send_bounded(channel: &PrimaryChannel, frame: &ToWorker, fd: Option<std::os::fd::BorrowedFd<'_>>) -> bool {
    let send = async {
        match fd {
            Some(fd) => channel.send_with_fd(frame, fd).await,
            None => channel.send(frame).await,
        }
    };
    matches!(tokio::time::timeout(SEND_WAIT, send).await, Ok(Ok(())))
}

/// What every worker of this clusterd shares.
pub struct Settings {
    pub program: std::ffi::OsString,
    pub args: Vec<std::ffi::OsString>,
    pub ready_on: ReadyOn,
    pub ready_timeout: Duration,
    pub heartbeat_timeout: Option<Duration>,
    pub spawner: Spawner,
    pub logs: LogSink,
    /// Where connections go that reach this worker after it started draining.
    pub routes: mpsc::Sender<crate::listener::RouteMsg>,
    /// The relay, for the worker's bus.
    pub relay: mpsc::Sender<crate::relay::Input>,
}

/// One worker to start.
pub struct Launch {
    pub slot: u32,
    pub incarnation: u64,
    pub generation: u64,
    pub count: u32,
    /// Bus messages the relay dropped for this worker (its queue was full).
    pub dropped: Arc<std::sync::atomic::AtomicU64>,
}

/// Orders from the dispatcher.
#[derive(Debug, Clone)]
pub enum Command {
    /// Drain frame and SIGTERM to the group now, SIGKILL after `grace`.
    Drain { grace: Duration },
    /// SIGKILL to the group now.
    Kill,
    /// clusterd recorded the session of the worker's `SessionOpen {seq}`.
    SessionAck { seq: u32 },
    /// The answer to the worker's `Listen {seq}`.
    Listening { seq: u32, result: clusterd_worker::protocol::ListenResult },
}

/// What a worker task reports.
#[derive(Debug)]
pub struct Event {
    pub slot: u32,
    pub incarnation: u64,
    pub kind: EventKind,
}

#[derive(Debug)]
pub enum EventKind {
    Spawned {
        pid: Pid,
    },
    /// The worker greeted clusterd: it speaks the protocol, so it can take connections.
    Greeted,
    /// The task started draining the worker on its own (protocol violation, timeouts): route
    /// nothing more to it.
    Draining,
    SpawnFailed {
        error: String,
    },
    Ready,
    Exited(ExitInfo),
    /// The worker closed connections (or a handoff to it failed): the listener group of each.
    ConnectionsClosed(Vec<Option<u32>>),
    Listen {
        seq: u32,
        addr: String,
    },
    SessionOpen {
        seq: u32,
        sid: String,
    },
    SessionClose {
        sid: String,
    },
    /// Not from a worker task: a restart timer of the dispatcher fired (`incarnation` is its token).
    RestartDue,
}

/// The dispatcher's handle on a worker task.
#[derive(Debug, Clone)]
pub struct Handle {
    commands: mpsc::Sender<Command>,
    /// Where route tasks put connections for this worker.
    pub handoffs: mpsc::Sender<Handoff>,
}

impl Handle {
    /// Sends a command; a task that already ended has nothing left to act on.
    pub fn send(&self, command: Command) {
        // The queue is far larger than what a healthy task has pending; a full one means the task
        // is stuck, and a lost session ack only makes the worker's `session_open` time out.
        let _ = self.commands.try_send(command);
    }
}

/// Starts the task for one worker.
pub fn launch(settings: Arc<Settings>, launch: Launch, events: mpsc::Sender<Event>) -> Handle {
    let (commands, rx) = mpsc::channel(1024);
    let (handoffs, handoff_rx) = mpsc::channel(HANDOFF_QUEUE);
    tokio::spawn(run(settings, launch, rx, handoff_rx, events));
    Handle { commands, handoffs }
}

async fn run(
    settings: Arc<Settings>,
    launch: Launch,
    mut commands: mpsc::Receiver<Command>,
    mut handoffs: mpsc::Receiver<Handoff>,
    events: mpsc::Sender<Event>,
) {
    let report = |kind| {
        let events = events.clone();
        let (slot, incarnation) = (launch.slot, launch.incarnation);
        async move {
            let _ = events.send(Event { slot, incarnation, kind }).await;
        }
    };
    let started = Instant::now();
    let (channel, spawned, mut bus) = match start(&settings, &launch).await {
        Ok(parts) => parts,
        Err(error) => return report(EventKind::SpawnFailed { error }).await,
    };
    let pid = spawned.pid;
    let oom_before = oom_kill_count();
    settings.logs.forward(launch.slot, Output::Stdout, spawned.stdout);
    settings.logs.forward(launch.slot, Output::Stderr, spawned.stderr);
    report(EventKind::Spawned { pid }).await;

    let mut exit = spawned.exit;
    let mut ready = false;
    if settings.ready_on == ReadyOn::Spawn {
        ready = true;
        report(EventKind::Ready).await;
    }
    let mut channel_open = true;
    let mut greeted = false;
    let mut next_connection: u64 = 1;
    // Connections that came through a listener a worker asked for, by id: their closes count there.
    let mut grouped: std::collections::HashMap<u64, u32> = std::collections::HashMap::new();
    let mut killed: Option<KillReason> = None;
    let far = started + Duration::from_secs(86_400 * 365);
    let ready_deadline = started + settings.ready_timeout;
    let mut heartbeat_deadline: Option<Instant> = None;
    let mut kill_deadline: Option<Instant> = None;

    let status = loop {
        tokio::select! {
            status = &mut exit => break status.ok(),
            frame = channel.recv(), if channel_open => match frame {
                Ok(Some(frame)) => {
                    if let Some(hb) = settings.heartbeat_timeout {
                        heartbeat_deadline = Some(Instant::now() + hb);
                    }
                    let violation = match frame {
                        FromWorker::Hello { version, .. } if version != PROTOCOL_VERSION => {
                            Some(format!("speaks protocol {version}, clusterd speaks {PROTOCOL_VERSION}"))
                        }
                        FromWorker::Hello { .. } if greeted => Some("a second Hello".to_owned()),
                        FromWorker::Hello { .. } => {
                            greeted = true;
                            report(EventKind::Greeted).await;
                            None
                        }
                        _ if !greeted => Some("a frame before Hello".to_owned()),
                        FromWorker::Ready if !ready && killed.is_none() => {
                            ready = true;
                            report(EventKind::Ready).await;
                            None
                        }
                        FromWorker::ConnectionsClosed { ids } if ids.iter().all(|&id| id < next_connection) => {
                            let groups = ids.iter().map(|id| grouped.remove(id)).collect();
                            report(EventKind::ConnectionsClosed(groups)).await;
                            None
                        }
                        FromWorker::Listen { seq, addr } => {
                            report(EventKind::Listen { seq, addr }).await;
                            None
                        }
                        FromWorker::ConnectionsClosed { .. } => Some("closed a connection never handed over".to_owned()),
                        FromWorker::SessionOpen { seq, sid } => {
                            report(EventKind::SessionOpen { seq, sid }).await;
                            None
                        }
                        FromWorker::SessionClose { sid } => {
                            report(EventKind::SessionClose { sid }).await;
                            None
                        }
                        _ => None,
                    };
                    if let Some(why) = violation {
                        channel_open = false;
                        drain(&channel, pid, &settings, &mut killed, &mut kill_deadline, KillReason::Protocol(why)).await;
                        report(EventKind::Draining).await;
                    }
                }
                Ok(None) => channel_open = false,
                Err(error) => {
                    channel_open = false;
                    let reason = KillReason::Protocol(error.to_string());
                    drain(&channel, pid, &settings, &mut killed, &mut kill_deadline, reason).await;
                    report(EventKind::Draining).await;
                }
            },
            command = commands.recv() => match command {
                Some(Command::Drain { grace }) => {
                    if killed.is_none() {
                        killed = Some(KillReason::Stop);
                        // Connections queued before the drain go first: the worker takes everything
                        // it was handed before the drain frame.
                        while let Ok(handoff) = handoffs.try_recv() {
                            hand_over(&channel, channel_open, handoff, &mut next_connection, &mut grouped, &report).await;
                        }
                        send_bounded(&channel, &ToWorker::Drain { grace_ms: millis(grace) }, None).await;
                        signal_group(pid, Signal::SIGTERM);
                    }
                    let at = Instant::now() + grace;
                    kill_deadline = Some(kill_deadline.map_or(at, |d| d.min(at)));
                }
                Some(Command::SessionAck { seq }) => {
                    if channel_open {
                        send_bounded(&channel, &ToWorker::SessionAck { seq }, None).await;
                    }
                }
                Some(Command::Listening { seq, result }) => {
                    if channel_open {
                        send_bounded(&channel, &ToWorker::Listening { seq, result }, None).await;
                    }
                }
                Some(Command::Kill) | None => {
                    killed.get_or_insert(KillReason::Stop);
                    signal_group(pid, Signal::SIGKILL);
                    kill_deadline = None;
                }
            },
            frame = bus.next(), if bus.open => match frame {
                Ok(Some(frame)) => {
                    let _ = settings.relay.send(crate::relay::Input::Frame { key: launch.incarnation, frame }).await;
                }
                Ok(None) => bus.open = false,
                Err(error) => {
                    bus.open = false;
                    channel_open = false;
                    let reason = KillReason::Protocol(format!("bus: {error}"));
                    drain(&channel, pid, &settings, &mut killed, &mut kill_deadline, reason).await;
                    report(EventKind::Draining).await;
                }
            },
            Some(handoff) = handoffs.recv() => {
                if killed.is_some() {
                    // Picked before the drain began: it goes to a worker that takes connections.
                    report(EventKind::ConnectionsClosed(vec![handoff.group])).await;
                    crate::listener::reroute(handoff, settings.routes.clone());
                } else {
                    hand_over(&channel, channel_open, handoff, &mut next_connection, &mut grouped, &report).await;
                }
            }
            () = sleep_until(ready_deadline), if !ready && killed.is_none() => {
                tracing::warn!(worker = launch.slot, pid = pid.as_raw(), "not ready within {:?}: killing it", settings.ready_timeout);
                killed = Some(KillReason::ReadyTimeout);
                report(EventKind::Draining).await;
                signal_group(pid, Signal::SIGKILL);
            }
            () = sleep_until(heartbeat_deadline.unwrap_or(far)), if ready && killed.is_none() && heartbeat_deadline.is_some() => {
                tracing::warn!(worker = launch.slot, pid = pid.as_raw(), "no heartbeat within {:?}: killing it", settings.heartbeat_timeout.unwrap_or_default());
                killed = Some(KillReason::HeartbeatTimeout);
                report(EventKind::Draining).await;
                signal_group(pid, Signal::SIGKILL);
            }
            () = sleep_until(kill_deadline.unwrap_or(far)), if kill_deadline.is_some() => {
                tracing::warn!(worker = launch.slot, pid = pid.as_raw(), "still running after the grace time: SIGKILL");
                kill_deadline = None;
                signal_group(pid, Signal::SIGKILL);
            }
        }
    };
    // The leader is gone; whatever it left in its process group goes too, before its pid can be
    // reused (pids are handed out in sequence, so that takes a full wrap).
    sweep_group(pid);
    let _ = settings.relay.send(crate::relay::Input::Leave { key: launch.incarnation }).await;
    let Some(status) = status.and_then(Status::from_wait) else {
        tracing::error!(worker = launch.slot, "the reaper lost this worker's exit status");
        return;
    };
    let oom_evidence = killed.is_none()
        && status == (Status::Signal { signal: Signal::SIGKILL, core_dumped: false })
        && matches!((oom_before, oom_kill_count()), (Some(a), Some(b)) if b > a);
    let info =
        ExitInfo { status, uptime: started.elapsed(), was_ready: ready, killed_by_clusterd: killed, oom_evidence };
    report(EventKind::Exited(info)).await;
}

/// Sends one connection to the worker (frame + fd); clusterd's copy of the fd closes either way.
async fn hand_over<F, Fut>(
    channel: &PrimaryChannel,
    channel_open: bool,
    handoff: Handoff,
    next_connection: &mut u64,
    grouped: &mut std::collections::HashMap<u64, u32>,
    report: &F,
) where
    F: Fn(EventKind) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let id = *next_connection;
    *next_connection += 1;
    let group = handoff.group;
    let frame = ToWorker::Connection(clusterd_worker::protocol::Connection {
        id,
        peer: handoff.peer,
        local: handoff.local,
        initial: handoff.initial,
    });
    let sent = channel_open && send_bounded(channel, &frame, Some(std::os::fd::AsFd::as_fd(&handoff.fd))).await;
    // The client sees FIN when the worker closes: clusterd keeps no copy.
    drop(handoff.fd);
    if !sent {
        report(EventKind::ConnectionsClosed(vec![group])).await;
    } else if let Some(group) = group {
        grouped.insert(id, group);
    }
}

/// Asks a misbehaving worker to go: drain frame (it may not understand it), SIGTERM, SIGKILL after
/// a short grace; its connections deserve the chance to finish.
async fn drain(
    channel: &PrimaryChannel,
    pid: Pid,
    settings: &Settings,
    killed: &mut Option<KillReason>,
    kill_deadline: &mut Option<Instant>,
    reason: KillReason,
) {
    if killed.is_some() {
        return;
    }
    tracing::warn!(pid = pid.as_raw(), "{reason}: replacing the worker");
    let grace = Duration::from_secs(5).min(settings.ready_timeout);
    send_bounded(channel, &ToWorker::Drain { grace_ms: millis(grace) }, None).await;
    signal_group(pid, Signal::SIGTERM);
    *killed = Some(reason);
    *kill_deadline = Some(Instant::now() + grace);
}

/// The send buffer asked for on both ends of each bus socket, in bytes.
const BUS_SOCKET_BUFFER: usize = 1024 * 1024;

async fn start(
    settings: &Settings,
    launch: &Launch,
) -> Result<(PrimaryChannel, super::spawn::Spawned, BusReader), String> {
    // Both ends close-on-exec; the spawner dup2s the worker's end onto fd 3 in the child only.
    // The worker's end stays blocking (programs without the SDK may use it plainly).
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| format!("cannot create the IPC socket pair: {e}"))?;
    nix::fcntl::fcntl(&ours, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
        .map_err(|e| format!("cannot make the IPC socket non-blocking: {e}"))?;
    let socket = UnixSeqpacket::try_from(ours).map_err(|e| format!("cannot register the IPC socket: {e}"))?;
    let (bus_ours, bus_theirs) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| format!("cannot create the bus socket pair: {e}"))?;
    // Larger socket buffers than the default (about 200 KiB) mean fewer wake-ups per byte under
    // load. Best effort: the kernel caps them at net.core.wmem_max.
    for end in [&bus_ours, &bus_theirs] {
        let _ = nix::sys::socket::setsockopt(end, nix::sys::socket::sockopt::SndBuf, &BUS_SOCKET_BUFFER);
    }
    let bus_stream = std::os::unix::net::UnixStream::from(bus_ours);
    bus_stream.set_nonblocking(true).map_err(|e| format!("cannot make the bus socket non-blocking: {e}"))?;
    let (bus_read, bus_write) = tokio::net::UnixStream::from_std(bus_stream)
        .map_err(|e| format!("cannot register the bus socket: {e}"))?
        .into_split();
    let channel = PrimaryChannel::new(socket);
    let heartbeat_ms = settings.heartbeat_timeout.map_or(0, |t| u32::try_from(t.as_millis() / 3).unwrap_or(u32::MAX));
    let hello = Hello {
        version: PROTOCOL_VERSION,
        worker_id: launch.slot,
        worker_count: launch.count,
        generation: launch.generation,
        heartbeat_ms,
        max_frame: MAX_FRAME as u32,
    };
    // Queued in the socket buffer before the worker runs, so it is always the first frame.
    channel.send(&ToWorker::Hello(hello)).await.map_err(|e| format!("cannot greet the worker: {e}"))?;
    let env = vec![
        (ENV_IPC_FD.to_owned(), IPC_FD.to_string()),
        (ENV_WORKER_ID.to_owned(), launch.slot.to_string()),
        (ENV_WORKER_COUNT.to_owned(), launch.count.to_string()),
        (ENV_GENERATION.to_owned(), launch.generation.to_string()),
        (ENV_BUS_FD.to_owned(), BUS_FD.to_string()),
    ];
    let spec =
        SpawnSpec { program: settings.program.clone(), args: settings.args.clone(), env, ipc: theirs, bus: bus_theirs };
    let spawned = settings
        .spawner
        .spawn(spec)
        .await
        .map_err(|e| format!("cannot start {}: {e}", settings.program.to_string_lossy()))?;
    let join = crate::relay::Input::Join {
        key: launch.incarnation,
        slot: launch.slot,
        writer: bus_write,
        dropped: Arc::clone(&launch.dropped),
    };
    let _ = settings.relay.send(join).await;
    Ok((channel, spawned, BusReader::new(bus_read)))
}

/// Signals the worker's process group; if the worker left its group (its own `setpgid`), the
/// leader itself, which is safe because this is only called before the leader is reaped.
fn signal_group(pid: Pid, signal: Signal) {
    match killpg(pid, signal) {
        Ok(()) => {}
        Err(nix::errno::Errno::ESRCH) => {
            let _ = nix::sys::signal::kill(pid, signal);
        }
        Err(errno) => {
            tracing::warn!(pid = pid.as_raw(), %errno, "cannot send {} to the worker's group", signal.as_str())
        }
    }
}

/// After the leader was reaped: only the group, never the pid alone.
fn sweep_group(pid: Pid) {
    let _ = killpg(pid, Signal::SIGKILL);
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
