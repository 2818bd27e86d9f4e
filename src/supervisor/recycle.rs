//! Replacing a worker that still runs: one that failed its health checks, or reached a recycling
//! limit (`--max-memory`, `--max-lifetime`, `--max-connections`). The worker task reports the
//! reason (`upkeep.rs` decides it); the dispatcher applies it here, the way a reload replaces a
//! slot: the slot's successor starts beside the serving process, and only once it is ready does the
//! old one drain. One slot at a time, and never during a reload (which replaces every slot anyway),
//! so recycling never leaves fewer ready workers than the pool size. A worker that failed its
//! health checks is taken out of the balancer at once (it does not serve) and goes first.
//!
//! Nothing here touches the slot's restart streaks: a recycled worker retires, it does not fail,
//! so recycling never counts toward the crash-loop guard. A successor that fails to start is
//! retried with the failed-start backoff, [`CRASH_LOOP_AFTER`] times, then the old process keeps
//! serving (and a failing health check asks again later).

use std::collections::VecDeque;

use super::Dispatcher;
use super::policy::CRASH_LOOP_AFTER;
use super::upkeep::Reason;

/// A worker waiting for its replacement.
pub(super) struct Pending {
    slot: u32,
    incarnation: u64,
    reason: Reason,
}

/// The replacement in progress.
pub(super) struct Active {
    pub(super) slot: u32,
    incarnation: u64,
    /// Consecutive failed starts of its successor.
    failures: u32,
}

/// The queue and the one in progress.
#[derive(Default)]
pub(super) struct Replacements {
    queue: VecDeque<Pending>,
    pub(super) active: Option<Active>,
}

impl Dispatcher {
    /// A worker task asks for its worker to be replaced.
    pub(super) fn request_replacement(&mut self, index: usize, incarnation: u64, reason: Reason) {
        if self.stop.is_some() || self.slots[index].removing {
            return;
        }
        let slot = &mut self.slots[index];
        let Some(current) = slot.current.as_mut().filter(|c| c.incarnation == incarnation) else { return };
        if current.replacing.is_some() || current.draining_since.is_some() {
            return;
        }
        current.replacing = Some(reason.to_string());
        *self.replaced.entry(reason.kind().to_owned()).or_default() += 1;
        if reason.is_failure() {
            // It does not serve: no new connection goes to it while its successor starts.
            self.pools.set_ready(incarnation, false);
            tracing::warn!(worker = slot.id, pid = current.pid, "{reason}: replacing it");
            self.replacements.queue.push_front(Pending { slot: slot.id, incarnation, reason });
        } else {
            tracing::info!(worker = slot.id, pid = current.pid, "{reason}: replacing it once its successor is ready");
            self.replacements.queue.push_back(Pending { slot: slot.id, incarnation, reason });
        }
        self.step_replacement();
    }

    /// Whether the slot's successor is a replacement's (a restart timer then starts it again).
    pub(super) fn replacing_slot(&self, id: u32) -> bool {
        self.replacements.active.as_ref().is_some_and(|a| a.slot == id)
    }

    /// Ends the replacement in progress once its old process no longer serves its slot, and
    /// starts the next one when nothing else is changing the pool.
    pub(super) fn step_replacement(&mut self) {
        if let Some(active) = &self.replacements.active {
            let serving = self.slots.iter().find(|s| s.id == active.slot).is_some_and(|s| {
                !s.removing && s.current.as_ref().is_some_and(|c| c.incarnation == active.incarnation)
            });
            if serving {
                return;
            }
            self.replacements.active = None;
        }
        if self.stop.is_some() || self.rollout.is_some() {
            return;
        }
        while let Some(next) = self.replacements.queue.pop_front() {
            let Some(index) = self.slots.iter().position(|s| s.id == next.slot) else { continue };
            let slot = &self.slots[index];
            let current = slot.current.as_ref().filter(|c| c.incarnation == next.incarnation);
            if slot.removing || slot.successor.is_some() || current.is_none_or(|c| c.draining_since.is_some()) {
                continue; // gone, replaced meanwhile, or draining
            }
            tracing::info!(worker = slot.id, "starting the successor of the worker that {}", next.reason);
            let successor = self.launch(index);
            self.slots[index].successor = Some(successor);
            self.replacements.active = Some(Active { slot: next.slot, incarnation: next.incarnation, failures: 0 });
            break;
        }
        self.update_readiness();
    }

    /// The successor of the replacement in progress exited before it was ready; `false` if the
    /// successor was not a replacement's.
    pub(super) fn replacement_failed(&mut self, index: usize) -> bool {
        let id = self.slots[index].id;
        let Some(active) = self.replacements.active.as_mut().filter(|a| a.slot == id) else { return false };
        // The failed-start backoff, but not `--crash-loop-limit`: the old worker still serves, so a
        // successor that cannot start is no reason to stop clusterd.
        active.failures += 1;
        let failures = active.failures;
        if failures < CRASH_LOOP_AFTER {
            let after = self.policy.backoff(failures);
            tracing::warn!(worker = id, "the successor failed to start; retrying in {}", crate::duration::show(after));
            self.schedule_restart(index, after);
            return true;
        }
        tracing::error!(
            worker = id,
            failures,
            "the successor failed to start {failures} times; the worker keeps serving"
        );
        self.replacements.active = None;
        if let Some(current) = self.slots[index].current.as_mut() {
            current.replacing = None;
            if current.routable() && current.draining_since.is_none() {
                // It is all the slot has: better a slow worker than none.
                self.pools.set_ready(current.incarnation, true);
            }
        }
        self.step_replacement();
        true
    }
}
