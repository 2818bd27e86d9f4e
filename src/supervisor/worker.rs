//! The task that owns one worker process: spawns it, reads its frames, keeps its timers (ready,
//! heartbeat, grace), signals its process group, and reports to the dispatcher until it is reaped.
//!
//! Only this task signals the worker, and only while it is not yet reaped, so a pid is never
//! signalled after the kernel could have given it to another process.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};

use super::exit::{ExitInfo, KillReason, Status, oom_kill_count};
use super::link::Link;
use super::native::NativeLink;
use super::spawn::Spawner;
use super::upkeep::{HealthTracker, Reason};
use crate::config::{Protocol, ReadyOn};
use crate::duration::show;
use crate::listener::Handoff;
use crate::logs::{LogSink, Output};
use crate::node::link::NodeLink;
use crate::worker_link::{GivenBack, Handed, Heard, Launch, Said, StartError};

/// Connections queued for one worker; the route tasks wait when it is full.
const HANDOFF_QUEUE: usize = 256;

/// Commands other than Drain and Kill (session acks, listen answers, metrics asks) queued for one
/// worker task; past it they are dropped. Drain and Kill never queue (see [`Control`]).
const COMMAND_QUEUE: usize = 1024;

/// How long a live worker may stay silent before clusterd says that it does not seem to speak
/// the protocol: the SDK greets within milliseconds of its start, Node within its boot.
pub const NO_GREETING_HINT: Duration = Duration::from_secs(3);

/// The longest clusterd goes on reading a worker's IPC channel after the worker exited. A
/// draining SDK worker gives its last kept-alive connections back in frames (each with the
/// connection's fd) and may exit the moment they are written: they wait unread in the channel, and
/// dropping it would close the connections under requests their clients already sent. The frames
/// are there at once; the bound only covers a channel whose other end a leftover process holds.
pub const AFTER_EXIT_READ: Duration = Duration::from_secs(1);

/// What every worker of this clusterd shares.
pub struct Settings {
    pub program: std::ffi::OsString,
    pub args: Vec<std::ffi::OsString>,
    pub ready_on: ReadyOn,
    pub protocol: Protocol,
    /// How Node workers' channels are encoded (`--protocol node`).
    pub serialization: crate::config::Serialization,
    pub ready_timeout: Duration,
    pub heartbeat_timeout: Option<Duration>,
    /// `--grace`: also how long a worker that closed its channel by itself may take to exit.
    pub grace: Duration,
    pub spawner: Spawner,
    pub logs: LogSink,
    /// Where connections go that reach this worker after it started draining.
    pub routes: mpsc::Sender<crate::listener::RouteMsg>,
    /// The relay, for the worker's bus.
    pub relay: mpsc::Sender<crate::relay::Input>,
    /// The budget of bus frames read and not yet queued, shared by every reader and relay.
    pub bus_memory: Arc<crate::bus_memory::BusMemory>,
    /// The relay between Node workers (`--protocol node`).
    pub node_relay: Option<mpsc::Sender<crate::node::relay::Input>>,
    /// The preload Node workers get (`--node-preload on`, and it could be written).
    pub node_preload: Option<crate::node::preload::Preload>,
    /// clusterd has listeners of its own (`--listen`, systemd's): their clients need workers
    /// that speak the protocol, even with `--ready-on spawn`.
    pub main_listeners: bool,
    /// How connections are routed, for those a worker gives back.
    pub limits: crate::listener::Limits,
    /// `--health-check`, when on.
    pub health: Option<crate::config::Health>,
    /// `--max-memory`, `--max-lifetime`, `--max-connections`.
    pub recycle: crate::config::Recycle,
    /// Mixed with each worker's incarnation to draw its jittered limits.
    pub jitter_seed: u64,
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
    Listening { seq: u32, result: clusterd_worker::protocol::ListenResult, group: Option<u32> },
    /// A scrape asks for the worker's metrics; the answer goes to `reply` (`gather.rs`).
    Metrics { slot: u32, reply: mpsc::Sender<super::gather::Answer> },
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
        error: StartError,
    },
    Ready,
    Exited(ExitInfo),
    /// The worker closed connections (or a handoff to it failed): the listener group of each.
    ConnectionsClosed(Vec<Option<u32>>),
    Listen {
        seq: u32,
        addr: String,
        index: u32,
    },
    SessionOpen {
        /// To acknowledge, when the protocol has acknowledgements (native).
        seq: Option<u32>,
        sid: String,
    },
    SessionClose {
        sid: String,
    },
    /// The worker is at capacity (it takes no new connection), or has room again.
    Capacity {
        full: bool,
    },
    /// It closed its server of this listener group.
    Unlisten(u32),
    /// The worker should be replaced gracefully while it runs: it failed its health checks, or it
    /// reached a recycling limit.
    Replace(Reason),
    /// Not from a worker task: a restart timer of the dispatcher fired (`incarnation` is its token).
    RestartDue,
}

/// The dispatcher's handle on a worker task.
#[derive(Debug, Clone)]
pub struct Handle {
    commands: mpsc::Sender<Command>,
    /// Drain and Kill: state the task always sees, however full `commands` is (a worker that
    /// floods frames keeps that queue full; its drain and kill must still reach the task).
    control: Arc<watch::Sender<Control>>,
    /// Where route tasks put connections for this worker.
    pub handoffs: mpsc::Sender<Handoff>,
}

/// What the dispatcher asked of a worker's life, as state rather than as queued orders: a later
/// Drain only shortens the grace, Kill stays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Control {
    /// The shortest grace a Drain asked for.
    drain: Option<Duration>,
    kill: bool,
}

impl Handle {
    /// Sends a command; a task that already ended has nothing left to act on. Drain and Kill are
    /// never dropped; the others are dropped when the task's queue is full (the task is stuck on
    /// a worker that does not read, and a lost session ack only makes its `session_open` time out).
    pub fn send(&self, command: Command) {
        let _ = self.try_send(command);
    }

    /// Sends a command; `false` if the task is gone or its queue is full (never for Drain and Kill
    /// to a live task).
    pub fn try_send(&self, command: Command) -> bool {
        match command {
            Command::Drain { grace } => {
                self.control.send_modify(|c| c.drain = Some(c.drain.map_or(grace, |g| g.min(grace))));
                !self.control.is_closed()
            }
            Command::Kill => {
                self.control.send_modify(|c| c.kill = true);
                !self.control.is_closed()
            }
            command => self.commands.try_send(command).is_ok(),
        }
    }
}

/// Starts the task for one worker.
pub fn launch(settings: Arc<Settings>, launch: Launch, events: mpsc::Sender<Event>) -> Handle {
    let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
    let (control, control_rx) = watch::channel(Control::default());
    let (handoffs, handoff_rx) = mpsc::channel(HANDOFF_QUEUE);
    let orders = Orders { commands: rx, control: control_rx, applied: Control::default(), control_open: true };
    tokio::spawn(run(settings, launch, orders, handoff_rx, events));
    Handle { commands, control: Arc::new(control), handoffs }
}

/// What the task receives from its [`Handle`]: Drain and Kill from the control state first, then
/// queued commands.
struct Orders {
    commands: mpsc::Receiver<Command>,
    control: watch::Receiver<Control>,
    /// What of the control state the task acted on already.
    applied: Control,
    control_open: bool,
}

impl Orders {
    /// The next order. Cancel-safe. `None` once the handle is gone (the task then kills its worker).
    async fn next(&mut self) -> Option<Command> {
        loop {
            let wanted = *self.control.borrow_and_update();
            if wanted.kill && !self.applied.kill {
                self.applied.kill = true;
                return Some(Command::Kill);
            }
            if let Some(grace) = wanted.drain
                && self.applied.drain.is_none_or(|applied| grace < applied)
            {
                self.applied.drain = Some(grace);
                return Some(Command::Drain { grace });
            }
            tokio::select! {
                biased;
                changed = self.control.changed(), if self.control_open => {
                    if changed.is_err() {
                        self.control_open = false;
                        return None;
                    }
                }
                command = self.commands.recv() => return command,
            }
        }
    }
}

async fn run(
    settings: Arc<Settings>,
    launch: Launch,
    mut orders: Orders,
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
    // Connections the worker gives back, counted where they are routed again (here, or in the
    // Node link for its preload's handbacks).
    let given_back = GivenBack::new(&launch);
    let started_link = match settings.protocol {
        Protocol::Native => {
            NativeLink::start(&settings, &launch).await.map(|(link, s)| (Link::Native(Box::new(link)), s))
        }
        Protocol::Node => {
            let start = crate::node::link::Start {
                program: &settings.program,
                args: &settings.args,
                serialization: settings.serialization,
                preload: settings.node_preload.as_ref(),
                relay: settings.node_relay.as_ref(),
                bus_memory: &settings.bus_memory,
                routes: &settings.routes,
                limits: settings.limits,
                given_back: given_back.clone(),
            };
            NodeLink::start(start, &launch, |spec| settings.spawner.spawn(spec))
                .await
                .map(|(link, s)| (Link::Node(Box::new(link)), s))
        }
    };
    let (mut link, spawned) = match started_link {
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
    let mut killed: Option<KillReason> = None;
    let far = started + Duration::from_secs(86_400 * 365);
    let ready_deadline = started + settings.ready_timeout;
    let mut heartbeat_deadline: Option<Instant> = None;
    let mut kill_deadline: Option<Instant> = None;
    // A Node worker closed its channel by itself: when it gets SIGTERM if it still runs.
    let mut disconnected: Option<Instant> = None;
    // Connections its broken channel could not take (it died or is dying, and clusterd has not
    // seen the exit yet): they wait, intact, and go to other workers once it is gone, rather
    // than back to the dispatcher, which would pick this worker again until then.
    let mut stranded: Vec<Handoff> = Vec::new();
    // Only a worker that must say it is ready can be stuck for want of the protocol.
    let mut greeted = false;
    let mut hinted = settings.ready_on == ReadyOn::Spawn && !settings.main_listeners;
    let mut upkeep = Upkeep::new(&settings, launch.incarnation, started);
    // `clusterd_connections_handed_off_total{worker}`: the slot's series, taken once.
    let handed_off = crate::metrics::handed_off_counter(launch.slot);
    let mut asks = super::gather::Asks::default();
    if ready {
        upkeep.on_ready();
    }

    let status = loop {
        // Read before the select!, whose futures borrow parts of `upkeep`.
        let (next_check, probing) = (upkeep.next_check, upkeep.probe.is_some());
        let (lifetime_end, watch_memory) = (upkeep.lifetime_end(), upkeep.watch_memory());
        tokio::select! {
            status = &mut exit => break status.ok(),
            heard = link.next(), if link.open() => match heard {
                Heard::Said(said) => {
                    if let Some(hb) = settings.heartbeat_timeout.filter(|_| link.heartbeats()) {
                        heartbeat_deadline = Some(Instant::now() + hb);
                    }
                    let kind = match said {
                        Said::Greeted => {
                            greeted = true;
                            Some(EventKind::Greeted)
                        }
                        Said::Ready if !ready && killed.is_none() => {
                            ready = true;
                            upkeep.on_ready();
                            Some(EventKind::Ready)
                        }
                        Said::Closed(groups) => Some(EventKind::ConnectionsClosed(groups)),
                        Said::Listen { seq, addr, index } => Some(EventKind::Listen { seq, addr, index }),
                        Said::SessionOpen { seq, sid } => Some(EventKind::SessionOpen { seq, sid }),
                        Said::SessionClose { sid } => Some(EventKind::SessionClose { sid }),
                        Said::Capacity { full } => Some(EventKind::Capacity { full }),
                        Said::Handback(handoff) => {
                            // Counted closed here, and routed again as a new connection.
                            let group = handoff.group;
                            given_back.count();
                            crate::listener::reroute_handback(*handoff, settings.limits, settings.routes.clone());
                            Some(EventKind::ConnectionsClosed(vec![group]))
                        }
                        Said::Unlisten { group } => Some(EventKind::Unlisten(group)),
                        Said::Metrics { id, metrics } => {
                            asks.answered(id, metrics);
                            None
                        }
                        Said::Ready | Said::Alive => None,
                    };
                    if let Some(kind) = kind {
                        report(kind).await;
                    }
                }
                Heard::Violation(why) => {
                    if killed.is_none() {
                        tracing::warn!(worker = launch.slot, pid = pid.as_raw(), "{why}: replacing the worker");
                        let grace = Duration::from_secs(5).min(settings.ready_timeout);
                        if link.drain(grace).await {
                            signal_group(pid, Signal::SIGTERM);
                        }
                        killed = Some(KillReason::Protocol(why));
                        kill_deadline = Some(Instant::now() + grace);
                        report(EventKind::Draining).await;
                    }
                }
                Heard::End => {
                    if killed.is_some() && link.term_after_close() {
                        // Node's `worker.kill()`: the disconnect is done, now the signal.
                        signal_group(pid, Signal::SIGTERM);
                    } else if killed.is_none() && link.term_after_close() && disconnected.is_none() {
                        // The worker closed its channel itself (`cluster.worker.disconnect()`,
                        // `process.disconnect()`, or it is exiting): nothing can reach it any
                        // more, so it leaves the pool as in a drain; its slot is filled once it
                        // exits. Said only if it does not (most are gone a moment later).
                        disconnected = Some(Instant::now() + settings.grace);
                        report(EventKind::Draining).await;
                    }
                }
            },
            command = orders.next() => match command {
                Some(Command::Drain { grace }) => {
                    if killed.is_none() && disconnected.is_some() {
                        // Its channel is closed: the signal is the only way left to ask.
                        killed = Some(KillReason::Stop);
                        signal_group(pid, Signal::SIGTERM);
                    }
                    if killed.is_none() {
                        killed = Some(KillReason::Stop);
                        // Connections queued before the drain go first: the worker takes everything
                        // it was handed before the drain frame.
                        // Once one was not taken (a worker that does not read costs SEND_WAIT per
                        // connection), the rest go elsewhere at once: the grace must start now.
                        let mut taking = true;
                        while let Ok(handoff) = handoffs.try_recv() {
                            if !taking {
                                report(EventKind::ConnectionsClosed(vec![handoff.group])).await;
                                crate::listener::reroute(handoff, settings.routes.clone());
                                continue;
                            }
                            let accepted = handoff.accepted;
                            taking = took(link.hand_over(handoff).await, &mut stranded, &report).await;
                            if taking {
                                crate::metrics::handed_off(handed_off.as_ref(), accepted);
                            }
                        }
                        if link.drain(grace).await {
                            signal_group(pid, Signal::SIGTERM);
                        }
                    }
                    let at = Instant::now() + grace;
                    kill_deadline = Some(kill_deadline.map_or(at, |d| d.min(at)));
                }
                Some(Command::SessionAck { seq }) => link.session_ack(seq),
                Some(Command::Listening { seq, result, group }) => link.listening(seq, result, group).await,
                Some(Command::Metrics { slot, reply }) => asks.ask(&mut link, slot, reply).await,
                Some(Command::Kill) | None => {
                    killed.get_or_insert(KillReason::Stop);
                    signal_group(pid, Signal::SIGKILL);
                    kill_deadline = None;
                }
            },
            Some(handoff) = handoffs.recv(), if link.takes_connections() && stranded.is_empty() => {
                if killed.is_some() || disconnected.is_some() {
                    // Picked before the drain began: it goes to a worker that takes connections.
                    report(EventKind::ConnectionsClosed(vec![handoff.group])).await;
                    crate::listener::reroute(handoff, settings.routes.clone());
                } else {
                    let accepted = handoff.accepted;
                    if took(link.hand_over(handoff).await, &mut stranded, &report).await {
                        crate::metrics::handed_off(handed_off.as_ref(), accepted);
                        if let Some(reason) = upkeep.handed_over() {
                            report(EventKind::Replace(reason)).await;
                        }
                    }
                }
            }
            () = sleep_until(next_check.unwrap_or(far)), if next_check.is_some() && !probing && killed.is_none() => {
                upkeep.start_probe(&mut link, greeted, settings.main_listeners, launch.slot).await;
            }
            checked = probe_result(&mut upkeep.probe), if probing => {
                upkeep.probe = None;
                // The dispatcher logs the replacement, with what it does about it.
                if let Some(reason) = upkeep.checked(checked, launch.slot, pid.as_raw()) {
                    report(EventKind::Replace(reason)).await;
                }
            }
            () = memory_tick(&mut upkeep.memory), if watch_memory && killed.is_none() => {
                if let Some(reason) = upkeep.check_memory(pid.as_raw()) {
                    report(EventKind::Replace(reason)).await;
                }
            }
            () = sleep_until(lifetime_end.unwrap_or(far)), if lifetime_end.is_some() && killed.is_none() => {
                if let Some(reason) = upkeep.lifetime_over() {
                    report(EventKind::Replace(reason)).await;
                }
            }
            () = sleep_until(started + NO_GREETING_HINT), if !greeted && !hinted && killed.is_none() => {
                hinted = true;
                if settings.ready_on == ReadyOn::Spawn {
                    tracing::warn!(
                        worker = launch.slot,
                        pid = pid.as_raw(),
                        "the worker has said nothing on its IPC channel within {}: it cannot be handed connections, \
                         so the clients of clusterd's listening sockets get 503; a program without the SDK serves \
                         the port it binds itself (run it without --listen)",
                        show(NO_GREETING_HINT)
                    );
                } else {
                    tracing::warn!(worker = launch.slot, pid = pid.as_raw(), "{}", no_greeting(settings.protocol, "has said nothing", NO_GREETING_HINT));
                }
            }
            () = sleep_until(ready_deadline), if !ready && killed.is_none() => {
                if greeted {
                    tracing::warn!(worker = launch.slot, pid = pid.as_raw(), "not ready within {}: killing it", show(settings.ready_timeout));
                } else {
                    let why = no_greeting(settings.protocol, "said nothing", settings.ready_timeout);
                    tracing::warn!(worker = launch.slot, pid = pid.as_raw(), "killing it: {why}");
                }
                killed = Some(KillReason::ReadyTimeout);
                report(EventKind::Draining).await;
                signal_group(pid, Signal::SIGKILL);
            }
            () = sleep_until(heartbeat_deadline.unwrap_or(far)), if ready && killed.is_none() && heartbeat_deadline.is_some() => {
                tracing::warn!(worker = launch.slot, pid = pid.as_raw(), "no heartbeat within {}: killing it", show(settings.heartbeat_timeout.unwrap_or_default()));
                killed = Some(KillReason::HeartbeatTimeout);
                report(EventKind::Draining).await;
                signal_group(pid, Signal::SIGKILL);
            }
            () = sleep_until(disconnected.unwrap_or(far)), if disconnected.is_some() && killed.is_none() => {
                // It was never asked to go: the signal a drain sends, then SIGKILL after --grace.
                tracing::warn!(
                    worker = launch.slot,
                    pid = pid.as_raw(),
                    "the worker closed its IPC channel (worker.disconnect() or process.disconnect()) {} ago and \
                     still runs: SIGTERM",
                    show(settings.grace)
                );
                killed = Some(KillReason::Stop);
                kill_deadline = Some(Instant::now() + settings.grace);
                signal_group(pid, Signal::SIGTERM);
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
    settings.spawner.swept(pid);
    read_after_exit(&mut link, &settings, &report, launch.slot, &given_back).await;
    // What it was picked for and never got goes to the workers left (the dispatcher counted the
    // queued ones on this worker until now).
    handoffs.close();
    let mut queued = Vec::new();
    while let Ok(handoff) = handoffs.try_recv() {
        queued.push(handoff.group);
        stranded.push(handoff);
    }
    if !queued.is_empty() {
        report(EventKind::ConnectionsClosed(queued)).await;
    }
    for handoff in stranded {
        crate::listener::reroute(handoff, settings.routes.clone());
    }
    link.gone(&settings, launch.incarnation).await;
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

/// Whether the worker took a connection handed over; one it did not take counts as closed on it,
/// and one its broken channel gave back intact waits in `stranded` for the workers left.
async fn took<F, R>(handed: Handed, stranded: &mut Vec<Handoff>, report: &R) -> bool
where
    R: Fn(EventKind) -> F,
    F: std::future::Future<Output = ()>,
{
    let group = match handed {
        Handed::Yes => return true,
        Handed::Closed(group) => group,
        Handed::Back(handoff) => {
            let group = handoff.group;
            stranded.push(*handoff);
            group
        }
    };
    report(EventKind::ConnectionsClosed(vec![group])).await;
    false
}

/// Reads what the worker said before it exited and the exit was seen first (the `select!` picks
/// either when both are ready): connections it gave back are routed again, closes are counted;
/// the rest no longer matters. Within [`AFTER_EXIT_READ`].
async fn read_after_exit<F, R>(link: &mut Link, settings: &Settings, report: &R, slot: u32, counter: &GivenBack)
where
    R: Fn(EventKind) -> F,
    F: std::future::Future<Output = ()>,
{
    let deadline = Instant::now() + AFTER_EXIT_READ;
    let mut given_back = 0usize;
    while link.open() {
        match tokio::time::timeout_at(deadline, link.next()).await {
            Ok(Heard::Said(Said::Handback(handoff))) => {
                given_back += 1;
                counter.count();
                let group = handoff.group;
                crate::listener::reroute_handback(*handoff, settings.limits, settings.routes.clone());
                report(EventKind::ConnectionsClosed(vec![group])).await;
            }
            Ok(Heard::Said(Said::Closed(groups))) => report(EventKind::ConnectionsClosed(groups)).await,
            Ok(Heard::Said(_)) => {}
            Ok(Heard::Violation(_) | Heard::End) | Err(_) => break,
        }
    }
    if given_back > 0 {
        tracing::debug!(worker = slot, given_back, "connections given back, read after the worker exited");
    }
}

/// One worker's health checks and recycling limits (`upkeep.rs` decides, this does the I/O).
struct Upkeep {
    health: Option<crate::config::Health>,
    request: Vec<u8>,
    tracker: HealthTracker,
    /// When the next health check starts (from the worker's readiness on).
    next_check: Option<Instant>,
    /// The health check in progress: its result, `None` inside when it could not be made.
    probe: Option<tokio::sync::oneshot::Receiver<Option<Result<(), String>>>>,
    /// A check that could not be made was logged once.
    skipped: bool,
    max_memory: Option<u64>,
    memory: Option<tokio::time::Interval>,
    /// The jittered lifetime's end, and the jittered number of connections.
    lifetime: Option<(Instant, Duration)>,
    max_connections: Option<u64>,
    handed: u64,
    /// A recycling reason was reported: one is enough (the dispatcher sees it through).
    recycling: bool,
    /// The worker was ready: limits count from then on.
    ready_seen: bool,
}

impl Upkeep {
    fn new(settings: &Settings, incarnation: u64, started: Instant) -> Self {
        let recycle = &settings.recycle;
        let seed = settings.jitter_seed ^ incarnation.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let lifetime = recycle.max_lifetime.map(|limit| {
            let limit = super::upkeep::jittered_duration(limit, recycle.jitter, seed);
            (started + limit, limit)
        });
        Self {
            request: settings.health.as_ref().map(|h| super::upkeep::health_request(&h.path)).unwrap_or_default(),
            health: settings.health.clone(),
            tracker: HealthTracker::default(),
            next_check: None,
            probe: None,
            skipped: false,
            max_memory: recycle.max_memory,
            memory: None,
            lifetime,
            // Another draw for the connections, so that they do not recycle in step with the lifetime.
            max_connections: recycle.max_connections.map(|n| super::upkeep::jittered(n, recycle.jitter, !seed)),
            handed: 0,
            recycling: false,
            ready_seen: false,
        }
    }

    /// Checks and limits apply to a ready worker.
    fn on_ready(&mut self) {
        self.ready_seen = true;
        if let Some(health) = &self.health {
            self.next_check = Some(Instant::now() + health.interval);
        }
        if self.max_memory.is_some() {
            let mut tick = tokio::time::interval(super::upkeep::MEMORY_CHECK_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            self.memory = Some(tick);
        }
    }

    /// Hands the worker a connection with the health check's request in it, and reads the answer
    /// in a task of its own, within the timeout (the handoff included).
    async fn start_probe(&mut self, link: &mut Link, greeted: bool, main_listeners: bool, slot: u32) {
        let Some(health) = &self.health else { return };
        self.next_check = Some(Instant::now() + health.interval);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.probe = Some(rx);
        let deadline = Instant::now() + health.timeout;
        if !greeted {
            // A program without the SDK cannot be handed a connection: nothing to check.
            if !self.skipped {
                self.skipped = true;
                tracing::warn!(
                    worker = slot,
                    "health check: the worker does not speak clusterd's protocol, so it cannot be handed the \
                     check's connection; not checked"
                );
            }
            let _ = tx.send(None);
            return;
        }
        let (ours, theirs) = match std::os::unix::net::UnixStream::pair() {
            Ok(pair) => pair,
            Err(error) => {
                // clusterd's own shortage (fds): not the worker's failure.
                tracing::warn!(%error, "health check: cannot create a socket pair; check skipped");
                let _ = tx.send(None);
                return;
            }
        };
        // An empty socket's buffer takes the request whole: this never blocks.
        if let Err(error) = std::io::Write::write_all(&mut &ours, &self.request) {
            tracing::warn!(%error, "health check: cannot write the request; check skipped");
            let _ = tx.send(None);
            return;
        }
        let timeout = health.timeout;
        let handed = tokio::time::timeout_at(deadline, link.probe(theirs.into(), main_listeners)).await;
        let result = match handed {
            Ok(Some(true)) => None,
            Ok(Some(false)) => Some(Err("the connection could not be handed to the worker".to_owned())),
            Ok(None) => {
                if !self.skipped {
                    self.skipped = true;
                    tracing::warn!(
                        worker = slot,
                        "health check: the worker has no listener to receive the check on (no --listen, and no \
                         server.listen() yet); skipped until it has one"
                    );
                }
                let _ = tx.send(None);
                return;
            }
            Err(_) => Some(Err(format!("not handed to the worker within {}", show(timeout)))),
        };
        if let Some(result) = result {
            let _ = tx.send(Some(result));
            return;
        }
        tokio::spawn(async move {
            let _ = tx.send(Some(exchange(ours, deadline, timeout).await));
        });
    }

    /// A check ended; returns the reason to replace the worker after enough failures.
    fn checked(&mut self, result: Option<Result<(), String>>, slot: u32, pid: i32) -> Option<Reason> {
        let health = self.health.as_ref()?;
        let result = result?;
        if let Err(why) = &result {
            let failures = self.tracker.consecutive + 1;
            tracing::info!(worker = slot, pid, failures, of = health.failures, "health check failed: {why}");
        }
        self.tracker.record(result, health.failures)
    }

    fn watch_memory(&self) -> bool {
        self.memory.is_some() && !self.recycling
    }

    fn check_memory(&mut self, pid: i32) -> Option<Reason> {
        let limit = self.max_memory?;
        let rss = super::memory::tree_rss(u32::try_from(pid).ok()?)?;
        (rss > limit).then(|| self.recycle(Reason::Memory { rss, limit }))?
    }

    /// When the worker's lifetime ends, while it is ready and not yet recycling.
    fn lifetime_end(&self) -> Option<Instant> {
        self.lifetime.filter(|_| !self.recycling && self.ready_seen).map(|(end, _)| end)
    }

    fn lifetime_over(&mut self) -> Option<Reason> {
        let (_, limit) = self.lifetime?;
        self.recycle(Reason::Lifetime { limit })
    }

    /// A client connection was handed over.
    fn handed_over(&mut self) -> Option<Reason> {
        self.handed += 1;
        let limit = self.max_connections?;
        (self.handed >= limit).then(|| self.recycle(Reason::Connections { limit }))?
    }

    /// The first recycling reason is reported; later ones are not (one replacement is enough).
    fn recycle(&mut self, reason: Reason) -> Option<Reason> {
        if self.recycling {
            return None;
        }
        self.recycling = true;
        Some(reason)
    }
}

/// The result of the health check in progress; pending when there is none.
async fn probe_result(
    probe: &mut Option<tokio::sync::oneshot::Receiver<Option<Result<(), String>>>>,
) -> Option<Result<(), String>> {
    match probe {
        // A lost sender (the task panicked) counts as a check not made.
        Some(rx) => rx.await.ok().flatten(),
        None => std::future::pending().await,
    }
}

/// Waits for the next memory reading; pending when `--max-memory` is off or not armed yet.
async fn memory_tick(memory: &mut Option<tokio::time::Interval>) {
    match memory {
        Some(tick) => {
            tick.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Reads a health check's answer on clusterd's end of the connection: at most
/// [`super::upkeep::MAX_HEALTH_ANSWER`] bytes, until `deadline`.
async fn exchange(ours: std::os::unix::net::UnixStream, deadline: Instant, timeout: Duration) -> Result<(), String> {
    use super::upkeep::{Answer, MAX_HEALTH_ANSWER, read_answer};
    use tokio::io::AsyncReadExt;
    ours.set_nonblocking(true).map_err(|e| format!("cannot set up the connection: {e}"))?;
    let mut stream =
        tokio::net::UnixStream::from_std(ours).map_err(|e| format!("cannot set up the connection: {e}"))?;
    let mut answer = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        let room = (MAX_HEALTH_ANSWER - answer.len()).min(chunk.len());
        let read = match tokio::time::timeout_at(deadline, stream.read(&mut chunk[..room])).await {
            Err(_) if answer.is_empty() => return Err(format!("no answer within {}", show(timeout))),
            Err(_) => return Err(format!("an incomplete status line within {}", show(timeout))),
            Ok(Err(error)) => return Err(format!("connection error: {error}")),
            Ok(Ok(0)) if answer.is_empty() => return Err("the worker closed the connection without answering".into()),
            Ok(Ok(0)) => return Err("the worker closed the connection in the middle of its status line".into()),
            Ok(Ok(n)) => n,
        };
        answer.extend_from_slice(&chunk[..read]);
        match read_answer(&answer) {
            Answer::Incomplete => {}
            Answer::Healthy => return Ok(()),
            Answer::Status(code) => return Err(format!("answered {code}")),
            Answer::Garbage => {
                let shown: String = String::from_utf8_lossy(&answer[..answer.len().min(32)]).escape_debug().collect();
                return Err(format!("answered something that is not HTTP/1.x: \"{shown}\""));
            }
        }
    }
}

/// What to do about a worker that never spoke the protocol, in one line.
fn no_greeting(protocol: Protocol, said: &str, within: Duration) -> String {
    match protocol {
        Protocol::Native => format!(
            "the worker {said} on its IPC socket within {}: this program does not speak clusterd's protocol \
             (the clusterd-worker SDK). For a program without the SDK, run clusterd with --ready-on spawn \
             (it then serves the ports it binds itself); for a Node.js program, --protocol node",
            show(within)
        ),
        Protocol::Node => format!(
            "the worker {said} on Node's IPC channel within {} (no `online`): this program does not seem to be \
             Node.js. For a program without the SDK, run clusterd with --ready-on spawn; for an SDK worker, \
             --protocol native",
            show(within)
        ),
    }
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

pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
