//! The supervisor: one dispatcher task owns the worker table and the phase; a task per worker owns
//! its process; the reaper owns `waitpid`; timers come back to the dispatcher as events.
//!
//! ```text
//!   signals ──► SignalEvent ─┐
//!   control socket ─► Request ┼──► Dispatcher (slots, phase) ──► Command ──► worker task ──► process group
//!   restart timers ─────────┤                    ▲                                 ▲
//!   worker tasks ─► Event ───┘                    └──── Event (spawned, ready, exited) ◄── reaper (waitpid -1)
//! ```
//!
//! A *slot* is a worker position `0..N`; its id is the worker's `CLUSTERD_WORKER_ID`. A slot has at
//! most one *current* process (starting or serving), during a reload at most one *successor* (the
//! new generation starting while the current one still serves), and any number of *retiring*
//! processes (draining after their successor became ready, or after a scale-down).

pub(crate) mod bus_reader;
mod dispatch;
pub mod exit;
pub mod gather;
pub mod guard;
pub mod link;
mod memory;
pub(crate) mod native;
pub mod policy;
mod pools;
mod recycle;
mod rollout;
pub mod spawn;
pub mod upkeep;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};

use self::exit::ExitInfo;
use self::policy::RestartPolicy;
use self::pools::Pools;
use self::worker::{Event, Settings};
use crate::config::Config;
use crate::listener::{Limits, RouteMsg};
use crate::logs::LogSink;
use crate::notify::Notifier;
use crate::signals::SignalEvent;
use crate::status::{Phase, Status, WorkerState};

/// After the grace time, how long clusterd still waits for SIGKILLed workers to be reaped.
const REAP_MARGIN: Duration = Duration::from_secs(5);

/// How the run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every worker drained (or was killed at the end of its grace time): exit 0.
    Graceful,
    /// QUIT or a second TERM/INT: exit 128 + signal.
    Immediate(Signal),
    /// A fatal condition (crash loop given up): exit 1 with the reason.
    Fatal(String),
}

/// A request from the control socket; the reply says whether it was accepted.
#[derive(Debug)]
pub enum Request {
    Status(oneshot::Sender<Status>),
    Stop(oneshot::Sender<()>),
    Reload(oneshot::Sender<Result<u64, String>>),
    Scale(u32, oneshot::Sender<Result<(), String>>),
}

/// How often forgotten sticky sessions are expired.
const EXPIRE_EVERY: Duration = Duration::from_secs(10);

/// Where the dispatcher's inputs come from.
pub struct Inputs {
    pub signals: mpsc::Receiver<SignalEvent>,
    pub requests: mpsc::Receiver<Request>,
    pub routes: mpsc::Receiver<RouteMsg>,
    /// Scrapes asking for the workers' metrics (`--metrics`, `clusterd metrics`).
    pub metrics: mpsc::Receiver<crate::metrics::workers::GatherRequest>,
}

/// Everything the supervisor needs to start.
pub struct Parts {
    pub config: Config,
    pub spawner: spawn::Spawner,
    pub logs: LogSink,
    pub phase: watch::Sender<Phase>,
    /// What the listeners are bound to, for `status`.
    pub listening: Vec<String>,
    /// For listeners that workers ask for: their routing limits, and where their route tasks ask.
    pub limits: Limits,
    pub routes: mpsc::Sender<RouteMsg>,
    pub relay: mpsc::Sender<crate::relay::Input>,
    /// The budget of bus frames read and not yet queued (`bus_memory.rs`).
    pub bus_memory: Arc<crate::bus_memory::BusMemory>,
    /// The bridge to other hosts, for `status`.
    pub bridge: Option<crate::bridge::Handle>,
}

/// A worker process as the dispatcher knows it.
struct Process {
    incarnation: u64,
    handle: worker::Handle,
    pid: Option<u32>,
    started: Instant,
    ready: bool,
    /// It greeted clusterd (speaks the protocol): only such a worker can take connections.
    greeted: bool,
    /// Bus messages dropped for it.
    dropped: Arc<std::sync::atomic::AtomicU64>,
    /// Connections it gave back to be routed again (counted by its worker task).
    given_back: Arc<std::sync::atomic::AtomicU64>,
    generation: u64,
    /// When it was asked to drain (or began draining on its own): it takes no new connection.
    draining_since: Option<Instant>,
    /// While draining: the connections it still carries. The balancer forgets a draining worker
    /// (nothing may be routed to it), so they are counted here, for `status`.
    carried: u64,
    /// Connections routed to it since it started.
    handed_off: u64,
    /// Why it is being replaced while it runs (health checks, recycling), for the log and `status`.
    replacing: Option<String>,
    /// It reported a session id that cannot be one, or another worker's: logged once.
    refused_a_session: bool,
    /// Its capacity changes (full, room again), counted so that a worker toggling in a loop is
    /// logged the first ten times and then at every power of two.
    capacity_changes: u64,
}

impl Process {
    /// Whether the balancer may give it new connections (when its slot is serving).
    fn routable(&self) -> bool {
        self.ready && self.greeted
    }

    /// It takes no new connection from now on; what it carries is counted here until it closes.
    fn begin_drain(&mut self, pools: &mut Pools) {
        if self.draining_since.is_none() {
            self.carried = pools.connections(self.incarnation);
            self.draining_since = Some(Instant::now());
        }
        pools.remove_worker(self.incarnation);
    }
}

struct Slot {
    id: u32,
    state: WorkerState,
    current: Option<Process>,
    /// During a reload: the new generation's process, starting while `current` serves.
    successor: Option<Process>,
    /// Processes of this slot on their way out (drain requested).
    retiring: Vec<Process>,
    /// Scaled away: the slot disappears once its processes are gone.
    removing: bool,
    restarts: u32,
    /// The same restarts by the reason the previous process ended (`ExitInfo::restart_reason`):
    /// a fixed set of keys, for `status` and the metrics.
    restart_reasons: std::collections::BTreeMap<&'static str, u64>,
    /// Its consecutive failed starts, deaths and resource failures.
    streak: policy::Streak,
    /// Matches the pending restart timer; bumped to cancel it.
    restart_token: u64,
    last_exit: Option<ExitInfo>,
}

impl Slot {
    fn new(id: u32) -> Self {
        Self {
            id,
            state: WorkerState::Starting,
            current: None,
            successor: None,
            retiring: Vec::new(),
            removing: false,
            restarts: 0,
            restart_reasons: std::collections::BTreeMap::new(),
            streak: policy::Streak::default(),
            restart_token: 0,
            last_exit: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.current.is_none() && self.successor.is_none() && self.retiring.is_empty()
    }

    fn processes(&self) -> impl Iterator<Item = &Process> {
        self.current.iter().chain(&self.successor).chain(&self.retiring)
    }

    fn processes_mut(&mut self) -> impl Iterator<Item = &mut Process> {
        self.current.iter_mut().chain(&mut self.successor).chain(&mut self.retiring)
    }
}

struct Stop {
    deadline: Instant,
    outcome: Outcome,
}

/// A rolling reload in progress: slots are replaced one at a time, in id order.
struct Rollout {
    generation: u64,
    previous: u64,
    /// The slot whose successor is starting.
    replacing: Option<u32>,
    /// Consecutive failures of the current successor.
    failures: u32,
    started: Instant,
}

struct Dispatcher {
    config: Config,
    bridge: Option<crate::bridge::Handle>,
    settings: Arc<Settings>,
    policy: RestartPolicy,
    slots: Vec<Slot>,
    generation: u64,
    next_incarnation: u64,
    phase: watch::Sender<Phase>,
    notifier: Notifier,
    events_tx: mpsc::Sender<Event>,
    stop: Option<Stop>,
    rollout: Option<Rollout>,
    pools: Pools,
    listening: Vec<String>,
    limits: Limits,
    routes: mpsc::Sender<RouteMsg>,
    /// Requests waiting for their session to be reported (Node workers).
    held: Vec<HeldPick>,
    /// Workers to replace while they run (health checks, recycling), one at a time.
    replacements: recycle::Replacements,
    /// Workers replaced while they ran, by reason (`health`, `memory`, `lifetime`, `connections`),
    /// since clusterd started: `status` shows them, the metrics will.
    replaced: std::collections::BTreeMap<String, u64>,
    /// Rolling reloads by result (`ok`, `aborted`, `interrupted`), since clusterd started.
    reloads: std::collections::BTreeMap<&'static str, u64>,
}

/// A request that names a session no worker reported yet.
struct HeldPick {
    /// The session it waits for, or none: it waits for a worker to listen on `group`.
    sid: Option<String>,
    group: Option<u32>,
    ip: Option<std::net::IpAddr>,
    reply: tokio::sync::oneshot::Sender<Option<crate::listener::Route>>,
    until: Instant,
}

/// Runs the cluster until it has stopped; every worker process has been reaped when this returns
/// (or the reap margin after the grace time ran out).
pub async fn run(parts: Parts, mut inputs: Inputs) -> Outcome {
    let Parts { config, spawner, logs, phase, listening, limits, routes, relay, bus_memory, bridge } = parts;
    let node_relay = (config.protocol == crate::config::Protocol::Node)
        .then(|| crate::node::relay::start(config.bus_queue, config.serialization, Arc::clone(&bus_memory)));
    if let (Some(bridge), Some(node_relay)) = (&bridge, &node_relay) {
        bridge.attach_node(node_relay.clone()).await;
    }
    let node_preload = (config.protocol == crate::config::Protocol::Node
        && config.node_preload == crate::config::NodePreload::On)
        .then(|| {
            crate::node::preload::Preload::write()
                .inspect_err(|error| {
                    tracing::warn!(
                        "{error}: Node workers run without it (their drains close kept-alive connections, and end WebSockets all at once)"
                    );
                })
                .ok()
        })
        .flatten();
    let settings = Arc::new(Settings {
        program: config.program.clone(),
        args: config.args.clone(),
        ready_on: config.ready_on,
        ready_timeout: config.ready_timeout,
        heartbeat_timeout: config.heartbeat_timeout,
        grace: config.grace,
        spawner,
        logs,
        routes: routes.clone(),
        relay,
        bus_memory,
        protocol: config.protocol,
        serialization: config.serialization,
        node_relay,
        node_preload,
        main_listeners: !listening.is_empty(),
        limits,
        health: config.health.clone(),
        recycle: config.recycle.clone(),
        jitter_seed: u64::from(std::process::id()),
    });
    let (events_tx, mut events) = mpsc::channel(256);
    let mut d = Dispatcher {
        policy: {
            let policy = RestartPolicy::new(config.stable_after, config.crash_loop_limit);
            if config.ready_on == crate::config::ReadyOn::Spawn { policy.ready_on_spawn() } else { policy }
        },
        slots: Vec::new(),
        generation: 1,
        next_incarnation: 1,
        phase,
        notifier: Notifier::from_env(),
        events_tx,
        stop: None,
        rollout: None,
        pools: Pools::new(config.balance, config.sticky, config.session_ttl),
        listening,
        limits,
        routes,
        held: Vec::new(),
        replacements: recycle::Replacements::default(),
        replaced: std::collections::BTreeMap::new(),
        reloads: std::collections::BTreeMap::new(),
        settings,
        config,
        bridge,
    };
    // The whole table first: every worker's CLUSTERD_WORKER_COUNT is the pool size.
    d.slots = (0..d.config.workers).map(Slot::new).collect();
    for index in 0..d.slots.len() {
        d.start_worker(index);
    }
    let watchdog_every = d.notifier.watchdog_interval();
    let mut watchdog = tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
    let mut expire = tokio::time::interval(EXPIRE_EVERY);
    loop {
        if let Some(stop) = &d.stop
            && d.slots.iter().all(Slot::is_empty)
        {
            d.remove_socket_files();
            return stop.outcome.clone();
        }
        let deadline = d.stop.as_ref().map(|s| s.deadline);
        let held_until = d.held.iter().map(|h| h.until).min();
        tokio::select! {
            Some(event) = events.recv() => d.handle_event(event),
            Some(signal) = inputs.signals.recv() => d.handle_signal(signal),
            Some(request) = inputs.requests.recv() => d.handle_request(request),
            Some(route) = inputs.routes.recv() => d.handle_route(route),
            Some(gather) = inputs.metrics.recv() => d.handle_gather(gather),
            _ = expire.tick() => {
                let dropped = d.pools.expire(std::time::Instant::now());
                if dropped > 0 {
                    tracing::debug!(dropped, "expired forgotten sticky sessions");
                }
            }
            _ = watchdog.tick(), if watchdog_every.is_some() => d.notifier.watchdog(),
            () = sleep_until(held_until.unwrap_or_else(Instant::now)), if held_until.is_some() => d.release_held(None),
            () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                let left: Vec<_> = d.slots.iter().flat_map(Slot::processes).filter_map(|p| p.pid).collect();
                tracing::error!(?left, "workers were not reaped {REAP_MARGIN:?} after SIGKILL; exiting anyway");
                d.remove_socket_files();
                return d.stop.take().map_or(Outcome::Graceful, |s| s.outcome);
            }
        }
    }
}

impl Dispatcher {
    /// Socket files of the listeners workers asked for go with clusterd.
    fn remove_socket_files(&self) {
        for path in self.pools.unix_paths() {
            let _ = std::fs::remove_file(path);
        }
    }
}
