//! Changing the pool while it serves: rolling reload and scaling.
//!
//! A reload bumps the generation and replaces the slots one at a time, in id order: the slot's new
//! process (its *successor*) starts beside the current one, and only when the successor is ready
//! is the old process drained, so the slot never stops serving. A successor that fails
//! [`CRASH_LOOP_AFTER`] times in a row aborts the reload: the old processes keep serving, and a
//! bad release never takes the pool down. Scaling up starts new slots; scaling down drains the
//! highest slots and removes them once their processes are gone.

use tokio::time::Instant;

use super::policy::{CRASH_LOOP_AFTER, Decision, Ending, Streak};
use super::worker::Command;
use super::{Dispatcher, Rollout, Slot};
use crate::config::MAX_WORKERS;
use crate::status::{Phase, WorkerState};

impl Dispatcher {
    /// The slot whose successor is starting, during a reload.
    pub(super) fn replacing(&self) -> Option<u32> {
        self.rollout.as_ref().and_then(|r| r.replacing)
    }

    /// Starts a rolling reload; returns the new generation.
    pub(super) fn begin_reload(&mut self) -> Result<u64, String> {
        if self.stop.is_some() {
            return Err("already stopping".into());
        }
        if let Some(rollout) = &self.rollout {
            return Err(format!("a reload to generation {} is already in progress", rollout.generation));
        }
        if *self.phase.borrow() == Phase::Starting {
            return Err("the initial workers are not all ready yet".into());
        }
        let previous = self.generation;
        self.generation += 1;
        tracing::info!(generation = self.generation, "reloading: replacing workers one by one");
        self.rollout = Some(Rollout {
            generation: self.generation,
            previous,
            replacing: None,
            failures: 0,
            started: Instant::now(),
        });
        self.phase.send_replace(Phase::Reloading);
        self.step_rollout();
        Ok(self.generation)
    }

    /// Starts the successor of the next slot still on an old generation, or finishes the reload.
    fn step_rollout(&mut self) {
        let Some(rollout) = &mut self.rollout else { return };
        let target = rollout.generation;
        if self.slots.iter().any(|s| s.successor.is_some()) {
            return;
        }
        let next =
            self.slots.iter().position(|s| !s.removing && s.current.as_ref().is_some_and(|c| c.generation < target));
        match next {
            Some(index) => {
                let id = self.slots[index].id;
                rollout.replacing = Some(id);
                rollout.failures = 0;
                tracing::info!(worker = id, generation = target, "reload: starting the replacement");
                let successor = self.launch(index);
                self.slots[index].successor = Some(successor);
            }
            None => {
                tracing::info!(
                    generation = target,
                    "reload complete in {}",
                    crate::duration::show(rollout.started.elapsed())
                );
                self.rollout = None;
                *self.reloads.entry("ok").or_default() += 1;
                self.phase.send_replace(Phase::Ready);
                self.step_replacement();
            }
        }
        self.update_readiness();
    }

    /// The slot's successor is ready: it becomes current, the old process drains, the reload moves on.
    pub(super) fn promote_successor(&mut self, index: usize) {
        let grace = self.config.grace;
        let slot = &mut self.slots[index];
        let Some(successor) = slot.successor.take() else { return };
        self.pools.set_ready(successor.incarnation, successor.routable());
        if let Some(mut old) = slot.current.replace(successor) {
            old.begin_drain(&mut self.pools);
            old.handle.send(Command::Drain { grace });
            slot.retiring.push(old);
        }
        slot.state = WorkerState::Ready;
        slot.streak = super::policy::Streak::default();
        self.step_rollout();
        self.step_replacement();
    }

    /// The current process became ready; if it was a successor promoted early (its predecessor
    /// died), the reload moves on.
    pub(super) fn on_current_ready(&mut self, index: usize) {
        let slot = &self.slots[index];
        if self.replacing() == Some(slot.id) && slot.successor.is_none() {
            self.step_rollout();
        }
    }

    /// The successor exited before it was ready: retry with backoff, or abort the reload.
    pub(super) fn successor_failed(&mut self, index: usize, uptime: std::time::Duration) {
        if self.replacing() != Some(self.slots[index].id) && self.replacement_failed(index) {
            return;
        }
        let Some(rollout) = &mut self.rollout else {
            self.update_readiness();
            return;
        };
        let streak = Streak { failed_starts: rollout.failures, ..Streak::default() };
        let decision = self.policy.on_end(streak, Ending::Exited { uptime, was_ready: false });
        let failures = match decision {
            Decision::Restart { streak, .. } => streak.failed_starts,
            Decision::GiveUp { failures } => failures,
        };
        rollout.failures = failures;
        let slot = &self.slots[index];
        if failures >= CRASH_LOOP_AFTER || matches!(decision, Decision::GiveUp { .. }) {
            let last =
                slot.last_exit.as_ref().map_or_else(|| "it could not be started".to_owned(), ToString::to_string);
            self.abort_reload(index, &format!("the new worker failed {failures} times (last: {last})"));
            return;
        }
        if let Decision::Restart { after, .. } = decision {
            tracing::warn!(worker = slot.id, "reload: retrying the replacement in {}", crate::duration::show(after));
            self.schedule_restart(index, after);
        }
        self.update_readiness();
    }

    /// Ends the reload: the slots not yet replaced keep their old processes.
    pub(super) fn abort_reload(&mut self, index: usize, why: &str) {
        let Some(rollout) = self.rollout.take() else { return };
        *self.reloads.entry("aborted").or_default() += 1;
        tracing::error!(
            worker = self.slots[index].id,
            "reload to generation {} aborted: {why}; generation {} keeps serving",
            rollout.generation,
            rollout.previous,
        );
        self.generation = rollout.previous;
        self.phase.send_replace(Phase::Ready);
        self.step_replacement();
    }

    /// Sets the pool size.
    pub(super) fn scale(&mut self, workers: u32) -> Result<(), String> {
        if self.stop.is_some() {
            return Err("already stopping".into());
        }
        if workers == 0 || workers > MAX_WORKERS {
            return Err(format!("the pool size must be 1 to {MAX_WORKERS}, not {workers}"));
        }
        let active = self.active_slots() as u32;
        if workers == active {
            return Ok(());
        }
        tracing::info!("scaling from {active} to {workers} workers");
        self.config.workers = workers;
        if workers > active {
            for id in active..workers {
                match self.slots.iter().position(|s| s.id == id) {
                    Some(index) => {
                        // A slot still draining from an earlier scale-down comes back.
                        self.slots[index].removing = false;
                        if self.slots[index].current.is_none() {
                            self.start_worker(index);
                        }
                    }
                    None => {
                        self.slots.push(Slot::new(id));
                        let index = self.slots.len() - 1;
                        self.start_worker(index);
                    }
                }
            }
            self.slots.sort_by_key(|s| s.id);
        } else {
            let grace = self.config.grace;
            for slot in self.slots.iter_mut().filter(|s| s.id >= workers && !s.removing) {
                slot.removing = true;
                slot.restart_token += 1;
                slot.state = WorkerState::Draining;
                for mut process in slot.current.take().into_iter().chain(slot.successor.take()) {
                    process.begin_drain(&mut self.pools);
                    process.handle.send(Command::Drain { grace });
                    slot.retiring.push(process);
                }
            }
            self.slots.retain(|s| !(s.removing && s.is_empty()));
            if self.replacing().is_some_and(|id| id >= workers) {
                self.step_rollout();
            }
            // A replacement of a slot scaled away ends with it.
            self.step_replacement();
        }
        self.update_readiness();
        Ok(())
    }
}
