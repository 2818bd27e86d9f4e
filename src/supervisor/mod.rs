//! The supervisor: one dispatcher task owns the worker table and the phase; a task per worker owns
//! its process; the reaper owns `waitpid`; timers come back to the dispatcher as events.
//!
//! ```text
//!   signals ──► SignalEvent ─┐
//!   control socket ─► Request ┼──► Dispatcher (slots, phase) ──► Command ──► worker task ──► process group
//!   restart timers ─────────┤                    ▲                                 ▲
//!   worker tasks ─► Event ───┘                    └──── Event (spawned, ready, exited) ◄── reaper (waitpid -1)
//! ```

pub mod exit;
pub mod policy;
pub mod spawn;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};

use self::exit::ExitInfo;
use self::policy::{CRASH_LOOP_AFTER, Decision, RestartPolicy};
use self::worker::{Command, Event, EventKind, Launch, Settings};
use crate::config::Config;
use crate::logs::LogSink;
use crate::notify::Notifier;
use crate::signals::SignalEvent;
use crate::status::{Phase, Status, WorkerState, WorkerStatus};

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

/// A request from the control socket.
#[derive(Debug)]
pub enum Request {
    Status(oneshot::Sender<Status>),
    Stop(oneshot::Sender<()>),
}

/// Where the dispatcher's inputs come from.
pub struct Inputs {
    pub signals: mpsc::Receiver<SignalEvent>,
    pub requests: mpsc::Receiver<Request>,
}

/// Everything the supervisor needs to start.
pub struct Parts {
    pub config: Config,
    pub spawner: spawn::Spawner,
    pub logs: LogSink,
    pub phase: watch::Sender<Phase>,
}

struct Current {
    incarnation: u64,
    handle: worker::Handle,
    pid: Option<u32>,
    started: Instant,
    ready: bool,
    generation: u64,
}

struct Slot {
    id: u32,
    state: WorkerState,
    current: Option<Current>,
    restarts: u32,
    failures: u32,
    /// Matches the pending restart timer; bumped to cancel it.
    restart_token: u64,
    last_exit: Option<ExitInfo>,
}

struct Stop {
    deadline: Instant,
    outcome: Outcome,
}

struct Dispatcher {
    config: Config,
    settings: Arc<Settings>,
    policy: RestartPolicy,
    slots: Vec<Slot>,
    generation: u64,
    next_incarnation: u64,
    phase: watch::Sender<Phase>,
    notifier: Notifier,
    events_tx: mpsc::Sender<Event>,
    stop: Option<Stop>,
}

/// Runs the cluster until it has stopped; every worker process has been reaped when this returns
/// (or the reap margin after the grace time ran out).
pub async fn run(parts: Parts, mut inputs: Inputs) -> Outcome {
    let Parts { config, spawner, logs, phase } = parts;
    let settings = Arc::new(Settings {
        program: config.program.clone(),
        args: config.args.clone(),
        ready_on: config.ready_on,
        ready_timeout: config.ready_timeout,
        heartbeat_timeout: config.heartbeat_timeout,
        spawner,
        logs,
    });
    let (events_tx, mut events) = mpsc::channel(256);
    let mut d = Dispatcher {
        policy: RestartPolicy::new(config.stable_after, config.crash_loop_limit),
        slots: Vec::new(),
        generation: 1,
        next_incarnation: 1,
        phase,
        notifier: Notifier::from_env(),
        events_tx,
        stop: None,
        settings,
        config,
    };
    for id in 0..d.config.workers {
        d.slots.push(Slot {
            id,
            state: WorkerState::Starting,
            current: None,
            restarts: 0,
            failures: 0,
            restart_token: 0,
            last_exit: None,
        });
        d.start_worker(id as usize);
    }
    let watchdog_every = d.notifier.watchdog_interval();
    let mut watchdog = tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
    loop {
        if let Some(stop) = &d.stop
            && d.slots.iter().all(|s| s.current.is_none())
        {
            return stop.outcome.clone();
        }
        let deadline = d.stop.as_ref().map(|s| s.deadline);
        tokio::select! {
            Some(event) = events.recv() => d.handle_event(event),
            Some(signal) = inputs.signals.recv() => d.handle_signal(signal),
            Some(request) = inputs.requests.recv() => d.handle_request(request),
            _ = watchdog.tick(), if watchdog_every.is_some() => d.notifier.watchdog(),
            () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                let left: Vec<_> = d.slots.iter().filter_map(|s| s.current.as_ref()?.pid).collect();
                tracing::error!(?left, "workers were not reaped {REAP_MARGIN:?} after SIGKILL; exiting anyway");
                return d.stop.take().map_or(Outcome::Graceful, |s| s.outcome);
            }
        }
    }
}

impl Dispatcher {
    fn start_worker(&mut self, index: usize) {
        let incarnation = self.next_incarnation;
        self.next_incarnation += 1;
        let slot = &mut self.slots[index];
        let launch = Launch { slot: slot.id, incarnation, generation: self.generation, count: self.config.workers };
        let handle = worker::launch(Arc::clone(&self.settings), launch, self.events_tx.clone());
        slot.state = WorkerState::Starting;
        slot.current =
            Some(Current { incarnation, handle, pid: None, started: Instant::now(), ready: false, generation: self.generation });
    }

    fn handle_event(&mut self, event: Event) {
        let Some(index) = self.slots.iter().position(|s| s.id == event.slot) else { return };
        if let EventKind::RestartDue = event.kind {
            let slot = &self.slots[index];
            if slot.restart_token == event.incarnation && slot.current.is_none() && self.stop.is_none() {
                self.start_worker(index);
            }
            return;
        }
        let slot = &mut self.slots[index];
        let Some(current) = slot.current.as_mut().filter(|c| c.incarnation == event.incarnation) else { return };
        match event.kind {
            EventKind::Spawned { pid } => {
                current.pid = u32::try_from(pid.as_raw()).ok();
                tracing::info!(worker = slot.id, pid = pid.as_raw(), generation = current.generation, "worker started");
            }
            EventKind::Ready => {
                current.ready = true;
                if slot.state == WorkerState::Starting {
                    slot.state = WorkerState::Ready;
                }
                tracing::info!(worker = slot.id, pid = current.pid, "worker ready");
                self.update_readiness();
            }
            EventKind::SpawnFailed { error } => {
                tracing::error!(worker = slot.id, "{error}");
                slot.current = None;
                self.after_exit(index, Duration::ZERO, false);
            }
            EventKind::Exited(info) => self.handle_exit(index, info),
            EventKind::RestartDue => {}
        }
    }

    fn handle_exit(&mut self, index: usize, info: ExitInfo) {
        let slot = &mut self.slots[index];
        let pid = slot.current.take().and_then(|c| c.pid);
        if self.stop.is_some() {
            tracing::info!(worker = slot.id, pid, "worker {info}");
        } else {
            tracing::warn!(worker = slot.id, pid, "worker {info}");
        }
        let (uptime, was_ready) = (info.uptime, info.was_ready);
        slot.last_exit = Some(info);
        self.after_exit(index, uptime, was_ready);
    }

    /// The slot has no process any more: restart it, or let it rest while stopping.
    fn after_exit(&mut self, index: usize, uptime: Duration, was_ready: bool) {
        let slot = &mut self.slots[index];
        if self.stop.is_some() {
            slot.state = WorkerState::Exited;
            self.update_readiness();
            return;
        }
        let decision = self.policy.on_exit(slot.failures, uptime, was_ready);
        match decision {
            Decision::Restart { after, failures } => {
                slot.failures = failures;
                slot.restarts += 1;
                slot.state = WorkerState::Backoff;
                slot.restart_token += 1;
                if decision.is_crash_loop() {
                    tracing::error!(worker = slot.id, failures, "crash loop: restarting in {after:?}");
                } else {
                    tracing::info!(worker = slot.id, "restarting in {after:?}");
                }
                let (events, id, token) = (self.events_tx.clone(), slot.id, slot.restart_token);
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = events.send(Event { slot: id, incarnation: token, kind: EventKind::RestartDue }).await;
                });
            }
            Decision::GiveUp { failures } => {
                slot.failures = failures;
                slot.state = WorkerState::Exited;
                let reason = format!(
                    "worker {} failed {failures} times in a row (crash loop limit {}); last: {}",
                    slot.id,
                    self.config.crash_loop_limit,
                    slot.last_exit.as_ref().map_or_else(|| "it could not be started".to_owned(), ToString::to_string),
                );
                tracing::error!("{reason}; stopping");
                self.begin_stop(Outcome::Fatal(reason));
            }
        }
        self.update_readiness();
    }

    fn handle_signal(&mut self, signal: SignalEvent) {
        match signal {
            SignalEvent::Stop(sig) if self.stop.is_some() => {
                tracing::warn!("second {}: stopping at once", sig.as_str());
                self.begin_stop(Outcome::Immediate(sig));
            }
            SignalEvent::Stop(sig) => {
                tracing::info!("{}: stopping gracefully (grace {:?})", sig.as_str(), self.config.grace);
                self.begin_stop(Outcome::Graceful);
            }
            SignalEvent::Quit => {
                tracing::warn!("SIGQUIT: stopping at once");
                self.begin_stop(Outcome::Immediate(Signal::SIGQUIT));
            }
            SignalEvent::Reload | SignalEvent::ScaleUp | SignalEvent::ScaleDown => {
                tracing::warn!(?signal, "reload and scaling are not supported by this version; signal ignored");
            }
        }
    }

    fn handle_request(&mut self, request: Request) {
        match request {
            Request::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Request::Stop(reply) => {
                if self.stop.is_none() {
                    tracing::info!("stop requested on the control socket");
                    self.begin_stop(Outcome::Graceful);
                }
                let _ = reply.send(());
            }
        }
    }

    /// Graceful: drain frame + SIGTERM to every worker, SIGKILL after the grace time. Immediate:
    /// SIGKILL now. A fatal outcome keeps its reason even if an immediate stop follows.
    fn begin_stop(&mut self, outcome: Outcome) {
        let immediate = matches!(outcome, Outcome::Immediate(_));
        let wait = if immediate { REAP_MARGIN } else { self.config.grace + REAP_MARGIN };
        let deadline = Instant::now() + wait;
        match &mut self.stop {
            Some(stop) => {
                stop.deadline = stop.deadline.min(deadline);
                if !matches!(stop.outcome, Outcome::Fatal(_)) {
                    stop.outcome = outcome;
                }
            }
            None => self.stop = Some(Stop { deadline, outcome }),
        }
        let phase = if immediate { Phase::Stopping } else { Phase::Draining };
        self.phase.send_replace(phase);
        let grace = self.config.grace;
        for slot in &mut self.slots {
            slot.restart_token += 1;
            match &slot.current {
                Some(current) => {
                    current.handle.send(if immediate { Command::Kill } else { Command::Drain { grace } });
                    slot.state = WorkerState::Draining;
                }
                None => slot.state = WorkerState::Exited,
            }
        }
        let running = self.slots.iter().filter(|s| s.current.is_some()).count();
        self.notifier.stopping(&format!("stopping: {running} workers draining"));
    }

    /// Publishes readiness: READY=1 the first time every slot has a ready worker, STATUS= after.
    fn update_readiness(&mut self) {
        if self.stop.is_some() {
            let running = self.slots.iter().filter(|s| s.current.is_some()).count();
            self.notifier.status(&format!("stopping: {running} workers draining"));
            return;
        }
        let ready = self.slots.iter().filter(|s| s.current.as_ref().is_some_and(|c| c.ready)).count();
        let total = self.slots.len();
        let crash_looping = self.slots.iter().filter(|s| s.failures >= CRASH_LOOP_AFTER).count();
        let mut status = format!("{ready}/{total} workers ready");
        if crash_looping > 0 {
            status.push_str(&format!(", {crash_looping} crash-looping"));
        }
        if *self.phase.borrow() == Phase::Starting && ready == total {
            tracing::info!("all {total} workers ready");
            self.phase.send_replace(Phase::Ready);
            self.notifier.ready(&status);
        } else {
            self.notifier.status(&status);
        }
    }

    fn status(&self) -> Status {
        let now = Instant::now();
        Status {
            pid: std::process::id(),
            phase: *self.phase.borrow(),
            generation: self.generation,
            listen: self.config.listen.iter().map(ToString::to_string).collect(),
            program: std::iter::once(&self.config.program)
                .chain(&self.config.args)
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            workers: self
                .slots
                .iter()
                .map(|s| {
                    let current = s.current.as_ref();
                    let uptime = current.map(|c| now - c.started);
                    let stable =
                        current.is_some_and(|c| self.policy.is_stable(now - c.started, c.ready));
                    WorkerStatus {
                        id: s.id,
                        pid: current.and_then(|c| c.pid),
                        state: s.state,
                        generation: current.map_or(self.generation, |c| c.generation),
                        restarts: s.restarts,
                        connections: 0,
                        sessions: 0,
                        uptime_ms: uptime.map(|u| u64::try_from(u.as_millis()).unwrap_or(u64::MAX)),
                        failures: if stable { 0 } else { s.failures },
                        crash_loop: !stable && s.failures >= CRASH_LOOP_AFTER,
                        last_exit: s.last_exit.as_ref().map(ToString::to_string),
                    }
                })
                .collect(),
        }
    }
}
