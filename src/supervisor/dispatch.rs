//! The dispatcher's handlers: events from worker tasks and timers, signals, control requests, the
//! stop sequence, readiness publication and the status document.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::exit::{ExitInfo, START_FAILED};
use super::policy::{CRASH_LOOP_AFTER, Decision, Ending};
use super::worker::{self, Command, Event, EventKind};
use super::{Dispatcher, Outcome, Process, REAP_MARGIN, Request, Stop};
use crate::balancer::{MAX_STICKY_ENTRIES, SessionRefused};
use crate::config::ListenAddr;
use crate::duration::show;
use crate::listener::{Route, RouteMsg};
use crate::signals::SignalEvent;
use crate::status::{Phase, Status, WorkerState, WorkerStatus};
use crate::worker_link::{Launch, StartError};
use clusterd_worker::protocol::ListenResult;

/// How long a request naming a session nobody reported waits for the report (Node workers).
const HOLD_UNKNOWN_SID: Duration = Duration::from_millis(500);
/// The most requests held at once; more are routed without waiting.
const MAX_HELD: usize = 4096;
/// How long a connection to a server that Node workers listen on waits for a worker while none
/// listens (a rolling reload of workers that call `listen()` a moment after they are ready, as an
/// Express app that loads its modules first; the last old one has closed its server by then).
const HOLD_EMPTY_GROUP: Duration = Duration::from_secs(5);

/// Where an event's process sits in its slot.
#[derive(Clone, Copy)]
enum Role {
    Current,
    Successor,
    Retiring(usize),
}

impl Dispatcher {
    /// Starts a new process of the current generation in the slot at `index`, as its current one.
    pub(super) fn start_worker(&mut self, index: usize) {
        let process = self.launch(index);
        let slot = &mut self.slots[index];
        slot.state = WorkerState::Starting;
        slot.current = Some(process);
    }

    /// Starts a process of the current generation for the slot at `index`.
    pub(super) fn launch(&mut self, index: usize) -> Process {
        let incarnation = self.next_incarnation;
        self.next_incarnation += 1;
        let count = self.slots.iter().filter(|s| !s.removing).count() as u32;
        let slot = &mut self.slots[index];
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let given_back = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let launch = Launch {
            slot: slot.id,
            incarnation,
            generation: self.generation,
            count,
            dropped: Arc::clone(&dropped),
            given_back: Arc::clone(&given_back),
        };
        let handle = worker::launch(Arc::clone(&self.settings), launch, self.events_tx.clone());
        Process {
            incarnation,
            handle,
            pid: None,
            started: Instant::now(),
            ready: false,
            greeted: false,
            dropped,
            given_back,
            generation: self.generation,
            draining_since: None,
            carried: 0,
            handed_off: 0,
            replacing: None,
            refused_a_session: false,
            capacity_changes: 0,
        }
    }

    pub(super) fn handle_event(&mut self, event: Event) {
        let Some(index) = self.slots.iter().position(|s| s.id == event.slot) else { return };
        if let EventKind::RestartDue = event.kind {
            let slot = &self.slots[index];
            if slot.restart_token == event.incarnation && !slot.removing && self.stop.is_none() {
                if slot.current.is_none() {
                    self.start_worker(index);
                } else if slot.successor.is_none()
                    && (self.replacing() == Some(slot.id) || self.replacing_slot(slot.id))
                {
                    let successor = self.launch(index);
                    self.slots[index].successor = Some(successor);
                }
            }
            return;
        }
        if let EventKind::Exited(_) = event.kind {
            // Its sessions and connections go with it, whatever its place in the slot.
            self.pools.remove_worker(event.incarnation);
        }
        let slot = &mut self.slots[index];
        let role = if slot.current.as_ref().is_some_and(|p| p.incarnation == event.incarnation) {
            Role::Current
        } else if slot.successor.as_ref().is_some_and(|p| p.incarnation == event.incarnation) {
            Role::Successor
        } else if let Some(i) = slot.retiring.iter().position(|p| p.incarnation == event.incarnation) {
            Role::Retiring(i)
        } else {
            return;
        };
        let process = match role {
            Role::Current => slot.current.as_mut(),
            Role::Successor => slot.successor.as_mut(),
            Role::Retiring(i) => slot.retiring.get_mut(i),
        };
        let Some(process) = process else { return };
        match event.kind {
            EventKind::Spawned { pid } => {
                process.pid = u32::try_from(pid.as_raw()).ok();
                self.pools.add_worker(event.incarnation, slot.id);
                tracing::info!(worker = slot.id, pid = pid.as_raw(), generation = process.generation, "worker started");
            }
            EventKind::Ready => {
                process.ready = true;
                tracing::info!(worker = slot.id, pid = process.pid, generation = process.generation, "worker ready");
                match role {
                    Role::Current => {
                        if slot.state == WorkerState::Starting {
                            slot.state = WorkerState::Ready;
                        }
                        if self.stop.is_none() && !slot.removing && process.routable() {
                            self.pools.set_ready(event.incarnation, true);
                        }
                        self.on_current_ready(index);
                    }
                    Role::Successor => self.promote_successor(index),
                    Role::Retiring(_) => {}
                }
                self.update_readiness();
            }
            EventKind::SpawnFailed { error } => {
                self.pools.remove_worker(event.incarnation);
                match role {
                    Role::Current => slot.current = None,
                    Role::Successor => slot.successor = None,
                    Role::Retiring(i) => {
                        slot.retiring.remove(i);
                    }
                }
                self.start_failed(index, role, error);
            }
            EventKind::Draining => process.begin_drain(&mut self.pools),
            EventKind::Greeted => {
                process.greeted = true;
                // A worker counted ready at spawn (--ready-on spawn) takes connections from now.
                if matches!(role, Role::Current) && self.stop.is_none() && !slot.removing && process.routable() {
                    self.pools.set_ready(event.incarnation, true);
                }
            }
            EventKind::ConnectionsClosed(groups) => {
                if process.draining_since.is_some() {
                    process.carried = process.carried.saturating_sub(groups.len() as u64);
                }
                for group in groups {
                    self.pools.connection_closed(group, event.incarnation);
                }
            }
            EventKind::Unlisten(group) => {
                if let Some(addr) = self.pools.leave(group, event.incarnation) {
                    tracing::info!(worker = slot.id, pid = process.pid, %addr, "the worker closed its server");
                }
                // A process on its way out closes its servers too (Node's `disconnect` at a
                // drain): that is an exit, and the listener stays for the process that takes
                // over. Only a serving worker's close can be the last word on it.
                if process.draining_since.is_none()
                    && self.stop.is_none()
                    && let Some(addr) = self.pools.close_if_unused(group)
                {
                    tracing::info!(%addr, "no worker listens on it any more: listener closed");
                    // Connections held for a worker of it are closed, not held in vain.
                    self.release_group(group);
                }
            }
            EventKind::Listen { seq, addr, index } => {
                // A process that listens once its drain began (a Node worker that calls
                // `listen()` late, retired by a reload or a scale-down meanwhile) joins the group
                // as not ready: it would get connections while it leaves.
                let ready =
                    process.routable() && process.draining_since.is_none() && self.stop.is_none() && !slot.removing;
                let (key, slot_id, handle) = (event.incarnation, slot.id, process.handle.clone());
                let (result, group) = self.listen_for(key, slot_id, ready, &addr, index);
                handle.send(Command::Listening { seq, result, group });
                if ready && let Some(group) = group {
                    self.release_group(group);
                }
            }
            EventKind::SessionOpen { seq, sid } => {
                let refused = if crate::sniff::is_session_id(sid.as_bytes()) {
                    let opened = self.pools.session_open(&sid, event.incarnation, std::time::Instant::now());
                    opened.err().map(|refused| match refused {
                        SessionRefused::OwnedBy(_) => "a session another worker owns".to_owned(),
                        SessionRefused::Full => format!("a session beyond the {MAX_STICKY_ENTRIES} clusterd keeps"),
                    })
                } else {
                    Some(format!("a session id no client could send ({} bytes; 1 to 64 of [A-Za-z0-9_-])", sid.len()))
                };
                if let Some(why) = refused.filter(|_| !std::mem::replace(&mut process.refused_a_session, true)) {
                    tracing::warn!(
                        worker = slot.id,
                        pid = process.pid,
                        "the worker reported {why}: not recorded (further ones from this process are not logged)"
                    );
                }
                // Acknowledged all the same: the worker waits for it, and nothing was routed by it.
                if let Some(seq) = seq {
                    process.handle.send(Command::SessionAck { seq });
                }
                self.release_held(Some(&sid));
            }
            EventKind::SessionClose { sid } => self.pools.session_close(&sid, event.incarnation),
            EventKind::Capacity { full } => {
                process.capacity_changes += 1;
                let changes = process.capacity_changes;
                if !crate::proxy_protocol::worth_logging(changes) {
                    // A worker that toggles in a loop: the count in the next line logged says how often.
                } else if full {
                    tracing::warn!(
                        worker = slot.id,
                        pid = process.pid,
                        changes,
                        "worker at capacity: no new connections for it"
                    );
                } else {
                    tracing::info!(worker = slot.id, pid = process.pid, changes, "worker has room again");
                }
                self.pools.set_full(event.incarnation, full);
            }
            EventKind::Exited(info) => match role {
                Role::Current => self.handle_exit(index, info),
                Role::Successor => {
                    slot.successor = None;
                    // A reload's successor, or a replacement's (health checks, recycling).
                    let which = if self.rollout.is_some() { "new-generation worker" } else { "successor" };
                    tracing::warn!(worker = slot.id, "{which} {info}");
                    let uptime = info.uptime;
                    slot.last_exit = Some(info);
                    self.successor_failed(index, uptime);
                }
                Role::Retiring(i) => {
                    let process = slot.retiring.remove(i);
                    let drained = process.draining_since.map_or(Duration::ZERO, |at| at.elapsed());
                    tracing::info!(
                        worker = slot.id,
                        pid = process.pid,
                        generation = process.generation,
                        "retired worker {info}; its drain took {}",
                        show(drained)
                    );
                    self.after_retired(index);
                }
            },
            EventKind::Replace(reason) => {
                if matches!(role, Role::Current) {
                    self.request_replacement(index, event.incarnation, reason);
                }
            }
            EventKind::RestartDue => {}
        }
    }

    fn handle_exit(&mut self, index: usize, info: ExitInfo) {
        let slot = &mut self.slots[index];
        let current = slot.current.take();
        let pid = current.as_ref().and_then(|c| c.pid);
        if self.stop.is_some() {
            let drained = current.and_then(|c| c.draining_since).map_or(Duration::ZERO, |at| at.elapsed());
            tracing::info!(worker = slot.id, pid, "worker {info}; its drain took {}", show(drained));
        } else {
            tracing::warn!(worker = slot.id, pid, "worker {info}");
        }
        let ending = Ending::Exited { uptime: info.uptime, was_ready: info.was_ready };
        let reason = info.restart_reason();
        slot.last_exit = Some(info);
        if let Some(successor) = slot.successor.take().filter(|_| self.stop.is_none()) {
            // The old generation died while its successor starts: the successor takes over.
            slot.state = if successor.ready { WorkerState::Ready } else { WorkerState::Starting };
            slot.current = Some(successor);
            self.step_replacement();
            return;
        }
        self.after_exit(index, ending, reason);
        self.step_replacement();
    }

    /// A process of the slot could not be started (it has been taken out of the slot). clusterd's
    /// own shortages are retried without counting against the slot; a program that cannot be
    /// executed ends clusterd at once (or aborts the reload), since no retry can succeed.
    fn start_failed(&mut self, index: usize, role: Role, error: StartError) {
        let id = self.slots[index].id;
        match (&error, role) {
            (_, Role::Retiring(_)) => self.after_retired(index),
            (StartError::Unexecutable { .. }, Role::Current) => {
                if self.stop.is_some() || self.slots[index].removing {
                    let ending = Ending::Exited { uptime: Duration::ZERO, was_ready: false };
                    return self.after_exit(index, ending, START_FAILED);
                }
                self.slots[index].state = WorkerState::Exited;
                let reason = format!("worker {id}: {error}");
                tracing::error!("{reason}; stopping");
                self.begin_stop(Outcome::Fatal(reason));
                self.update_readiness();
            }
            (StartError::Unexecutable { .. }, Role::Successor) => self.abort_reload(index, &error.to_string()),
            (StartError::Resources { .. }, Role::Current) if self.stop.is_some() || self.slots[index].removing => {
                self.after_exit(index, Ending::Resources, START_FAILED);
            }
            (StartError::Resources { .. }, Role::Current) => {
                self.slots[index].state = WorkerState::Backoff;
                self.retry_start(index, &error);
                self.update_readiness();
            }
            (StartError::Resources { .. }, Role::Successor) => self.retry_start(index, &error),
            (StartError::Failed(_), Role::Current) => {
                tracing::error!(worker = id, "{error}");
                self.after_exit(index, Ending::Exited { uptime: Duration::ZERO, was_ready: false }, START_FAILED);
            }
            (StartError::Failed(_), Role::Successor) => {
                tracing::error!(worker = id, "{error}");
                self.successor_failed(index, Duration::ZERO);
            }
        }
    }

    /// Schedules the same start again after clusterd's own shortage, with the slot's resource
    /// backoff. A retry, not a restart: `restarts` stays, and so do the other streaks.
    fn retry_start(&mut self, index: usize, error: &StartError) {
        let slot = &mut self.slots[index];
        if let Decision::Restart { after, streak } = self.policy.on_end(slot.streak, Ending::Resources) {
            slot.streak = streak;
            let (id, attempts) = (slot.id, streak.resource_failures);
            tracing::error!(worker = id, attempts, "{error}; retrying in {after:?}");
            self.schedule_restart(index, after);
        }
    }

    /// The slot's current process is gone: restart it, or let it rest while stopping. `reason`:
    /// why it ended, in the words of [`ExitInfo::restart_reason`], counted with the restart.
    pub(super) fn after_exit(&mut self, index: usize, ending: Ending, reason: &'static str) {
        if self.stop.is_some() || self.slots[index].removing {
            self.slots[index].state = WorkerState::Exited;
            self.after_retired(index);
            return;
        }
        let slot = &mut self.slots[index];
        let decision = self.policy.on_end(slot.streak, ending);
        match decision {
            Decision::Restart { after, streak } => {
                slot.streak = streak;
                slot.restarts += 1;
                *slot.restart_reasons.entry(reason).or_default() += 1;
                slot.state = WorkerState::Backoff;
                let when = if after.is_zero() { "at once".to_owned() } else { format!("in {}", show(after)) };
                if decision.is_crash_loop() {
                    let failures = streak.failed_starts;
                    tracing::error!(worker = slot.id, failures, "crash loop: restarting {when}");
                } else {
                    tracing::info!(worker = slot.id, "restarting {when}");
                }
                if after.is_zero() {
                    // Straight away: a timer of zero would still wait for the timer wheel's next tick.
                    self.start_worker(index);
                } else {
                    self.schedule_restart(index, after);
                }
            }
            Decision::GiveUp { failures } => {
                slot.streak.failed_starts = failures;
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

    /// Sends `RestartDue` for the slot after `after`, unless cancelled by a newer token.
    pub(super) fn schedule_restart(&mut self, index: usize, after: Duration) {
        let slot = &mut self.slots[index];
        slot.restart_token += 1;
        let (events, id, token) = (self.events_tx.clone(), slot.id, slot.restart_token);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = events.send(Event { slot: id, incarnation: token, kind: EventKind::RestartDue }).await;
        });
    }

    /// A retiring process is gone; a removed slot without processes disappears.
    pub(super) fn after_retired(&mut self, index: usize) {
        if self.slots[index].removing && self.slots[index].is_empty() {
            let slot = self.slots.remove(index);
            crate::metrics::forget_slot(slot.id);
            tracing::info!(worker = slot.id, "slot removed");
        }
        self.update_readiness();
    }

    pub(super) fn handle_signal(&mut self, signal: SignalEvent) {
        match signal {
            SignalEvent::Stop(sig) if self.stop.is_some() => {
                tracing::warn!("second {}: stopping at once", sig.as_str());
                self.begin_stop(Outcome::Immediate(sig));
            }
            SignalEvent::Stop(sig) => {
                tracing::info!("{}: stopping gracefully (grace {})", sig.as_str(), show(self.config.grace));
                self.begin_stop(Outcome::Graceful);
            }
            SignalEvent::Quit => {
                tracing::warn!("SIGQUIT: stopping at once");
                self.begin_stop(Outcome::Immediate(nix::sys::signal::Signal::SIGQUIT));
            }
            SignalEvent::Reload => {
                if let Err(why) = self.begin_reload() {
                    tracing::warn!("SIGHUP: {why}");
                }
            }
            SignalEvent::ScaleUp | SignalEvent::ScaleDown => {
                let active = self.active_slots() as u32;
                let target = if signal == SignalEvent::ScaleUp { active + 1 } else { active.saturating_sub(1) };
                if let Err(why) = self.scale(target) {
                    tracing::warn!("{signal:?}: {why}");
                }
            }
        }
    }

    pub(super) fn handle_request(&mut self, request: Request) {
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
            Request::Reload(reply) => {
                let _ = reply.send(self.begin_reload());
            }
            Request::Scale(workers, reply) => {
                let _ = reply.send(self.scale(workers));
            }
        }
    }

    /// A scrape asks for the workers' metrics: the current process of every slot that serves
    /// (ready, speaking the protocol, not draining) is asked, by a task of its own.
    pub(super) fn handle_gather(&mut self, request: crate::metrics::workers::GatherRequest) {
        let asked = self
            .slots
            .iter()
            .filter(|s| !s.removing)
            .filter_map(|s| s.current.as_ref().map(|p| (s.id, p)))
            .filter(|(_, p)| p.ready && p.greeted && p.draining_since.is_none())
            .map(|(id, p)| (id, p.handle.clone()))
            .collect();
        super::gather::start(asked, request);
    }

    /// A route task asks for a worker for a new connection, or reports a failed handoff.
    pub(super) fn handle_route(&mut self, message: RouteMsg) {
        match message {
            RouteMsg::Deliver(handoff) => self.deliver(handoff),
            RouteMsg::Pick { group, sid, ip, reply } => {
                if let Some(sid) = &sid
                    && self.holds(group, sid)
                {
                    // A Node worker reports a session after answering its handshake, so the
                    // session's next request can arrive first: wait for the report, briefly.
                    let until = Instant::now() + HOLD_UNKNOWN_SID;
                    self.held.push(super::HeldPick { sid: Some(sid.clone()), group, ip, reply, until });
                    return;
                }
                self.answer_pick(group, sid, ip, reply, true);
            }
            RouteMsg::Failed { key, group } => {
                self.pools.connection_closed(group, key);
                self.count_handoff(key, false);
            }
        }
    }

    /// Whether a request for `sid` waits for its session's report: a Node worker reports a
    /// session after answering its handshake, so the session's next request can arrive first.
    fn holds(&mut self, group: Option<u32>, sid: &str) -> bool {
        self.config.protocol == crate::config::Protocol::Node
            && self.held.len() < MAX_HELD
            && group.is_none_or(|g| self.pools.is_open(g))
            && !self.pools.knows_sid(group, sid)
    }

    /// Queues a routed connection for the worker picked for it, in this turn, when that worker's
    /// queue has room: no answer travels back to the listener. Anything else (a request to hold,
    /// a full queue, no worker) is left to a task that asks as a route task does
    /// ([`crate::listener::reroute`]), so the rules about waiting stay in one place.
    fn deliver(&mut self, handoff: crate::listener::Handoff) {
        use tokio::sync::mpsc::error::TrySendError;
        let (group, ip) = (handoff.group, handoff.ip);
        let held = handoff.sid.as_deref().is_some_and(|sid| self.holds(group, sid));
        let picked = if held { None } else { self.pick_open(group, handoff.sid.as_deref(), ip) };
        let Some(key) = picked else { return crate::listener::reroute(handoff, self.routes.clone()) };
        let Some(process) = self.slots.iter().flat_map(super::Slot::processes).find(|p| p.incarnation == key) else {
            // The balancer knows a process the table does not: heal the balancer.
            self.pools.remove_worker(key);
            return crate::listener::reroute(handoff, self.routes.clone());
        };
        match process.handle.handoffs.try_send(handoff) {
            Ok(()) => self.count_handoff(key, true),
            Err(TrySendError::Full(handoff) | TrySendError::Closed(handoff)) => {
                self.pools.connection_closed(group, key);
                crate::listener::reroute(handoff, self.routes.clone());
            }
        }
    }

    /// The balancer's pick, past any worker whose task closed its queue: that worker is gone
    /// (its exit is on its way here), and the connections it could not take are being routed
    /// again, which must not bring them back to it.
    fn pick_open(&mut self, group: Option<u32>, sid: Option<&str>, ip: Option<std::net::IpAddr>) -> Option<u64> {
        loop {
            let key = self.pools.pick(group, sid, ip, std::time::Instant::now())?;
            let closed = self
                .slots
                .iter()
                .flat_map(super::Slot::processes)
                .find(|p| p.incarnation == key)
                .is_some_and(|p| p.handle.handoffs.is_closed());
            if !closed {
                return Some(key);
            }
            self.pools.remove_worker(key);
        }
    }

    /// Answers the held picks of `sid` (its session was reported), or every held pick whose time
    /// is up (`sid` is `None`).
    pub(super) fn release_held(&mut self, sid: Option<&str>) {
        let now = Instant::now();
        let (release, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|held| sid.map_or(held.until <= now, |sid| held.sid.as_deref() == Some(sid)));
        self.held = keep;
        for held in release {
            self.answer_pick(held.group, held.sid, held.ip, held.reply, false);
        }
    }

    /// Answers the held picks of a listener group a worker just joined.
    fn release_group(&mut self, group: u32) {
        let (release, keep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.held).into_iter().partition(|held| held.group == Some(group));
        self.held = keep;
        for held in release {
            self.answer_pick(held.group, held.sid, held.ip, held.reply, false);
        }
    }

    fn answer_pick(
        &mut self,
        group: Option<u32>,
        sid: Option<String>,
        ip: Option<std::net::IpAddr>,
        reply: tokio::sync::oneshot::Sender<Option<Route>>,
        may_hold: bool,
    ) {
        let picked = self.pick_open(group, sid.as_deref(), ip);
        if picked.is_none()
            && may_hold
            && group.is_some_and(|g| self.pools.is_open(g))
            && self.config.protocol == crate::config::Protocol::Node
            && self.held.len() < MAX_HELD
        {
            let until = Instant::now() + HOLD_EMPTY_GROUP;
            self.held.push(super::HeldPick { sid, group, ip, reply, until });
            return;
        }
        let route = picked.and_then(|key| {
            let process = self.slots.iter().flat_map(super::Slot::processes).find(|p| p.incarnation == key);
            match process {
                Some(p) => Some(Route { key, group, handoffs: p.handle.handoffs.clone() }),
                None => {
                    // The balancer knows a process the table does not: heal the balancer.
                    self.pools.remove_worker(key);
                    None
                }
            }
        });
        let key = route.as_ref().map(|r| r.key);
        match reply.send(route) {
            Ok(()) => {
                if let Some(key) = key {
                    self.count_handoff(key, true);
                }
            }
            // The route task is gone (its client left): uncount.
            Err(Some(route)) => self.pools.connection_closed(route.group, route.key),
            Err(None) => {}
        }
    }

    /// Counts a connection routed to the process `key` (`status`'s `handed_off`), or takes back
    /// one whose handoff failed.
    fn count_handoff(&mut self, key: u64, routed: bool) {
        let process = self.slots.iter_mut().flat_map(super::Slot::processes_mut).find(|p| p.incarnation == key);
        if let Some(p) = process {
            p.handed_off = if routed { p.handed_off + 1 } else { p.handed_off.saturating_sub(1) };
        }
    }

    /// Graceful: drain frame + SIGTERM to every worker, SIGKILL after the grace time. Immediate:
    /// SIGKILL now. A fatal outcome keeps its reason even if an immediate stop follows.
    pub(super) fn begin_stop(&mut self, outcome: Outcome) {
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
        if self.rollout.take().is_some() {
            *self.reloads.entry("interrupted").or_default() += 1;
        }
        self.phase.send_replace(if immediate { Phase::Stopping } else { Phase::Draining });
        let command = if immediate { Command::Kill } else { Command::Drain { grace: self.config.grace } };
        for slot in &mut self.slots {
            slot.restart_token += 1;
            for process in slot.processes_mut() {
                process.handle.send(command.clone());
                // A draining worker takes no connection at all, sticky ones included: its
                // server stops accepting, and its sessions end with it.
                process.begin_drain(&mut self.pools);
            }
            slot.state = if slot.is_empty() { WorkerState::Exited } else { WorkerState::Draining };
        }
        let running = self.slots.iter().filter(|s| !s.is_empty()).count();
        self.notifier.stopping(&format!("stopping: {running} workers draining"));
    }

    /// Slots that are meant to exist (not being scaled away).
    pub(super) fn active_slots(&self) -> usize {
        self.slots.iter().filter(|s| !s.removing).count()
    }

    /// Publishes readiness: READY=1 the first time every slot has a ready worker, STATUS= after.
    pub(super) fn update_readiness(&mut self) {
        if self.stop.is_some() {
            let running = self.slots.iter().filter(|s| !s.is_empty()).count();
            self.notifier.status(&format!("stopping: {running} workers draining"));
            return;
        }
        let active = self.slots.iter().filter(|s| !s.removing);
        let ready = active.clone().filter(|s| s.current.as_ref().is_some_and(|c| c.ready)).count();
        let total = active.clone().count();
        let crash_looping = active.filter(|s| s.streak.failed_starts >= CRASH_LOOP_AFTER).count();
        let mut status = format!("{ready}/{total} workers ready");
        if crash_looping > 0 {
            status.push_str(&format!(", {crash_looping} crash-looping"));
        }
        if let Some(rollout) = &self.rollout {
            status.push_str(&format!(", reloading to generation {}", rollout.generation));
        }
        if *self.phase.borrow() == Phase::Starting && ready == total {
            tracing::info!("all {total} workers ready");
            self.phase.send_replace(Phase::Ready);
            self.notifier.ready(&status);
        } else {
            self.notifier.status(&status);
        }
    }

    pub(super) fn status(&self) -> Status {
        let now = Instant::now();
        let row = |id: u32, state: WorkerState, p: Option<&Process>, slot: &super::Slot| {
            let stable = p.is_some_and(|c| self.policy.is_stable(now - c.started, c.ready));
            WorkerStatus {
                id,
                pid: p.and_then(|c| c.pid),
                state,
                generation: p.map_or(self.generation, |c| c.generation),
                restarts: slot.restarts,
                restart_reasons: slot.restart_reasons.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect(),
                connections: p.map_or(0, |c| {
                    if c.draining_since.is_some() { c.carried } else { self.pools.connections(c.incarnation) }
                }),
                sessions: p.map_or(0, |c| self.pools.sessions(c.incarnation)),
                at_capacity: p.is_some_and(|c| self.pools.is_full(c.incarnation)),
                dropped: p.map_or(0, |c| c.dropped.load(std::sync::atomic::Ordering::Relaxed)),
                given_back: p.map_or(0, |c| c.given_back.load(std::sync::atomic::Ordering::Relaxed)),
                uptime_ms: p.map(|c| u64::try_from((now - c.started).as_millis()).unwrap_or(u64::MAX)),
                failures: if stable { 0 } else { slot.streak.failed_starts },
                crash_loop: !stable && slot.streak.failed_starts >= CRASH_LOOP_AFTER,
                last_exit: slot.last_exit.as_ref().map(ToString::to_string),
                draining_ms: p.and_then(|c| c.draining_since).map(|at| worker::millis(now - at)),
                handed_off: p.map_or(0, |c| c.handed_off),
                // Filled by the control server, off the dispatcher (it reads /proc).
                rss_bytes: None,
                replacing: p.and_then(|c| c.replacing.clone()),
            }
        };
        let mut workers = Vec::new();
        for slot in &self.slots {
            let state = if slot.removing { WorkerState::Draining } else { slot.state };
            if slot.current.is_some() || (slot.successor.is_none() && slot.retiring.is_empty()) {
                workers.push(row(slot.id, state, slot.current.as_ref(), slot));
            }
            if let Some(new) = &slot.successor {
                let state = match (new.draining_since, new.ready) {
                    (Some(_), _) => WorkerState::Draining,
                    (None, true) => WorkerState::Ready,
                    (None, false) => WorkerState::Starting,
                };
                workers.push(row(slot.id, state, Some(new), slot));
            }
            for old in &slot.retiring {
                workers.push(row(slot.id, WorkerState::Draining, Some(old), slot));
            }
        }
        let active = self.slots.iter().filter(|s| !s.removing);
        // Ready and serving: a draining process takes no connection.
        let ready = active
            .clone()
            .filter(|s| s.current.as_ref().is_some_and(|c| c.ready && c.draining_since.is_none()))
            .count();
        let mut problems = Vec::new();
        if self.config.protocol == crate::config::Protocol::Node
            && self.listening.is_empty()
            && self.pools.bound().next().is_none()
            && ready > 0
        {
            problems.push(
                "no connection can reach the workers: no --listen was given and no worker has called \
                 server.listen()"
                    .to_owned(),
            );
        }
        let serving: Vec<&Process> =
            self.slots.iter().filter(|s| !s.removing).filter_map(|s| s.current.as_ref()).filter(|p| p.ready).collect();
        if !self.listening.is_empty()
            && !serving.is_empty()
            && serving.iter().all(|p| !p.greeted && now - p.started >= worker::NO_GREETING_HINT)
        {
            problems.push(
                "connections on the listening sockets get 503: the ready workers do not speak clusterd's \
                 protocol (they never greeted it), so they cannot be handed connections; a program without the \
                 SDK must bind its own port, without --listen"
                    .to_owned(),
            );
        }
        Status {
            pid: std::process::id(),
            phase: *self.phase.borrow(),
            generation: self.generation,
            pool: active.count() as u32,
            ready: ready as u32,
            grace_ms: worker::millis(self.config.grace),
            problems,
            listen: self.listening.iter().map(String::as_str).chain(self.pools.bound()).map(str::to_owned).collect(),
            sessions: self.pools.session_count(),
            replaced: self.replaced.clone(),
            reloads: self.reloads.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect(),
            program: std::iter::once(&self.config.program)
                .chain(&self.config.args)
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            workers,
            proxy_refused: crate::proxy_protocol::refused(),
            bridge: self.bridge.as_ref().map(crate::bridge::Handle::status),
        }
    }
}

impl Dispatcher {
    /// A worker asks for the port of a `--listen` address (`server.listen(3000)` beside
    /// `--listen 127.0.0.1:3000`), which binding again would refuse with EADDRINUSE. An SDK
    /// worker already gets that listener's connections: its listen is granted as it is. A Node
    /// worker gets them as sticky connections, which only `setupWorker(io)` takes: a server that
    /// listens itself would never see them, so its listen fails with the fix in words.
    fn listen_taken(&self, asked: &ListenAddr) -> Option<ListenResult> {
        let ListenAddr::Tcp(want) = asked else { return None };
        let taken = self.listening.iter().filter_map(|l| l.parse::<std::net::SocketAddr>().ok()).find(|have| {
            want.port() != 0
                && have.port() == want.port()
                && (want.ip().is_unspecified() || have.ip().is_unspecified() || want.ip() == have.ip())
        })?;
        Some(match self.config.protocol {
            crate::config::Protocol::Native => ListenResult::Bound { addr: taken.to_string() },
            crate::config::Protocol::Node => ListenResult::Failed {
                reason: format!(
                    "port {} is in use by --listen {taken}, whose connections go to Socket.IO workers (setupWorker(io)); \
                     a server that calls listen() itself needs no --listen: clusterd listens for it",
                    want.port()
                ),
            },
        })
    }

    /// A worker asks clusterd to listen on `addr`: join the listener already serving it, or bind
    /// it and start its accept loop.
    fn listen_for(&mut self, key: u64, slot: u32, ready: bool, addr: &str, index: u32) -> (ListenResult, Option<u32>) {
        let asked: ListenAddr = match addr.parse() {
            Ok(asked) => asked,
            Err(reason) => return (ListenResult::Failed { reason }, None),
        };
        // Only port 0 gives a worker's second listen a port of its own (as Node's primary does);
        // a second listen on a fixed port or path joins the first.
        let index = if matches!(&asked, ListenAddr::Tcp(a) if a.port() == 0) { index } else { 0 };
        if let Some(answer) = self.listen_taken(&asked) {
            return (answer, None);
        }
        if let Some((group, bound)) = self.pools.find_group(&asked, index) {
            if let Err(refused) = self.pools.admit(key, Some(group)) {
                return (self.refuse(slot, addr, &refused), None);
            }
            self.pools.join(group, key, slot, ready);
            return (ListenResult::Bound { addr: bound }, Some(group));
        }
        if self.listening.iter().any(|l| *l == asked.to_string()) {
            // clusterd already serves it to every worker (--listen).
            return (ListenResult::Bound { addr: asked.to_string() }, None);
        }
        if let Err(refused) = self.pools.admit(key, None) {
            return (self.refuse(slot, addr, &refused), None);
        }
        let bound = match crate::listener::bind_all(std::slice::from_ref(&asked)) {
            Ok(mut bound) => bound.remove(0),
            Err(error) => {
                tracing::warn!(worker = slot, "{error}");
                return (ListenResult::Failed { reason: error.to_string() }, None);
            }
        };
        let (addr, unix_path) = (bound.addr().to_owned(), bound.unix_path());
        let group = self.pools.next_group();
        let accepting = match crate::listener::serve_group(bound, group, self.limits, self.routes.clone()) {
            Ok(accepting) => accepting,
            Err(error) => {
                // The socket is closed with `bound`; the file it made goes too.
                if let Some(path) = &unix_path {
                    let _ = std::fs::remove_file(path);
                }
                tracing::warn!(worker = slot, %addr, %error, "cannot accept on a listener a worker asked for");
                return (ListenResult::Failed { reason: error.to_string() }, None);
            }
        };
        self.pools.add_group(asked, index, addr.clone(), unix_path, accepting);
        tracing::info!(worker = slot, %addr, "listening for the workers that ask");
        self.pools.join(group, key, slot, ready);
        (ListenResult::Bound { addr }, Some(group))
    }

    /// A listen refused for a bound ([`super::pools::Refused`]): the worker hears why (a Node
    /// worker's `server.listen` emits `error` with EMFILE), and the operator reads it: the
    /// first ten, then every power of two, so that a worker that retries in a loop does not
    /// drown the log.
    fn refuse(&mut self, slot: u32, addr: &str, refused: &super::pools::Refused) -> ListenResult {
        let n = self.pools.count_refused();
        if crate::proxy_protocol::worth_logging(n) {
            tracing::warn!(worker = slot, addr, refused = n, "refused a listen: {refused}");
        }
        ListenResult::Failed { reason: refused.to_string() }
    }
}
