//! One byte budget for the request bytes clusterd reads ahead for Node workers.
//!
//! A Node worker gets a connection of clusterd's own listeners as `sticky:connection` with the
//! request's bytes, so clusterd reads the whole request first (up to
//! [`crate::listener::WHOLE_REQUEST_MAX`] of it). Those bytes stay in clusterd until the worker
//! acknowledges the handle: in the connection's route, in its worker's queue, in flight. A worker
//! that stops reading (its event loop blocked) would let clients park a megabyte each in clusterd
//! for as long as it stalls. So what is read beyond the request line (which `--sniff-bytes`
//! bounds per connection) is taken from this budget, all connections together: once it is spent,
//! a connection is handed on with what was read, and the rest of its request reaches the worker
//! through the socket, as a request over the per-request bound always did.
//!
//! Taking never waits (a connection does not queue behind others for memory it can do without),
//! and every byte goes back when the [`ReadAhead`] holding it is dropped.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The request bytes read ahead for Node workers and not yet acknowledged by them, all
/// connections together: 64 requests of the whole per-request bound at once.
pub const READ_AHEAD: usize = 64 * 1024 * 1024;

static HELD: AtomicUsize = AtomicUsize::new(0);

/// Bytes of [`READ_AHEAD`] one connection holds; given back on drop.
#[derive(Debug, Default)]
pub struct ReadAhead(usize);

impl ReadAhead {
    /// Takes up to `wanted` more bytes; returns how many it got (0 once the budget is spent).
    pub fn take(&mut self, wanted: usize) -> usize {
        let mut held = HELD.load(Ordering::Relaxed);
        loop {
            let taken = wanted.min(READ_AHEAD.saturating_sub(held));
            if taken == 0 {
                return 0;
            }
            match HELD.compare_exchange_weak(held, held + taken, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    self.0 += taken;
                    return taken;
                }
                Err(now) => held = now,
            }
        }
    }

    /// Gives back up to `bytes` of what this holds (taken and not used).
    pub fn give_back(&mut self, bytes: usize) {
        let bytes = bytes.min(self.0);
        self.0 -= bytes;
        HELD.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// The bytes this holds.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.0
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        HELD.fetch_sub(self.0, Ordering::Relaxed);
    }
}

/// The bytes all connections hold now.
#[cfg(test)]
pub fn held() -> usize {
    HELD.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_shared_never_exceeded_and_given_back() {
        // The only test that takes from the process-wide budget.
        let mut first = ReadAhead::default();
        assert_eq!(first.take(READ_AHEAD - 10), READ_AHEAD - 10);
        let mut second = ReadAhead::default();
        assert_eq!(second.take(100), 10, "what is left");
        assert_eq!(second.take(1), 0, "spent");
        first.give_back(50);
        assert_eq!((first.bytes(), held()), (READ_AHEAD - 60, READ_AHEAD - 50));
        assert_eq!(second.take(100), 50);
        drop(first);
        assert_eq!(held(), 60);
        drop(second);
        assert_eq!(held(), 0);
    }
}
