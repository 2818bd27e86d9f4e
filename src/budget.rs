//! A bound on something clusterd holds for its clients, counted in all: the request bytes read
//! ahead for Node workers (`listener::READ_AHEAD`), the given-back connections waiting idle
//! (`listener::IDLE_HANDBACKS`).
//!
//! Taking never waits: what finds the budget spent does without (a connection is handed on with
//! what was read, an idle one is closed), rather than queue behind the others. What a [`Share`]
//! took goes back when it is dropped, wherever it travelled meanwhile. (The bus's budget,
//! `bus_memory.rs`, is another kind: its readers wait for room.)

use std::sync::atomic::{AtomicUsize, Ordering};

/// Units (bytes, connections) of one bound, all holders together.
#[derive(Debug)]
pub struct Budget {
    held: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub const fn new(limit: usize) -> Self {
        Self { held: AtomicUsize::new(0), limit }
    }

    /// An empty share of this budget, to take from.
    pub fn share(&'static self) -> Share {
        Share { budget: Some(self), units: 0 }
    }

    /// The units all shares hold now.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// Units of a [`Budget`] one holder took; given back on drop. The default belongs to no budget
/// and holds nothing.
#[derive(Debug, Default)]
pub struct Share {
    budget: Option<&'static Budget>,
    units: usize,
}

impl Share {
    /// Takes up to `wanted` more units; returns how many it got (0 once the budget is spent).
    pub fn take(&mut self, wanted: usize) -> usize {
        let Some(budget) = self.budget else { return 0 };
        let mut held = budget.held.load(Ordering::Relaxed);
        loop {
            let taken = wanted.min(budget.limit.saturating_sub(held));
            if taken == 0 {
                return 0;
            }
            match budget.held.compare_exchange_weak(held, held + taken, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    self.units += taken;
                    return taken;
                }
                Err(now) => held = now,
            }
        }
    }

    /// Gives back up to `units` of what this holds (taken and not used).
    pub fn give_back(&mut self, units: usize) {
        let units = units.min(self.units);
        self.units -= units;
        if let Some(budget) = self.budget {
            budget.held.fetch_sub(units, Ordering::Relaxed);
        }
    }

    /// The units this holds.
    #[cfg(test)]
    pub fn units(&self) -> usize {
        self.units
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.give_back(self.units);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_is_shared_never_exceeded_and_given_back() {
        static BUDGET: Budget = Budget::new(100);
        let mut first = BUDGET.share();
        assert_eq!(first.take(90), 90);
        let mut second = BUDGET.share();
        assert_eq!(second.take(100), 10, "what is left");
        assert_eq!(second.take(1), 0, "spent");
        first.give_back(50);
        assert_eq!((first.units(), BUDGET.held()), (40, 50));
        assert_eq!(second.take(100), 50);
        drop(first);
        assert_eq!(BUDGET.held(), 60);
        drop(second);
        assert_eq!(BUDGET.held(), 0);
        assert_eq!(Share::default().take(1), 0, "no budget, nothing to take");
    }
}
