//! How close this process is to its fd limit, so that clusterd stops handing it connections before
//! the kernel starts dropping them.
//!
//! A worker receives every client socket as a new fd. At its `RLIMIT_NOFILE` the kernel cannot
//! install the next one: the connection is lost, and nothing else the worker needs an fd for (a
//! file, a socket of its own) works either. So the SDK reports itself full a little before that,
//! with [`FromWorker::Capacity`](crate::protocol::FromWorker::Capacity), and reports room again
//! once enough fds were closed (hysteresis: one reserve below the threshold, so a worker at the
//! edge does not flap).
//!
//! Counting open fds means reading `/proc/self/fd`, which costs in proportion to their number, so
//! it is only done when the fd number of a received connection says the table may be nearly full
//! (fds are allocated lowest first: fd `n` means fds `0..n` were all open), after a lost fd, and,
//! while full, when connections close and once a second.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// Fds kept free for everything but client connections: a fraction of the limit, within bounds.
pub(crate) fn reserve(limit: usize) -> usize {
    (limit / 8).clamp(MIN_RESERVE, MAX_RESERVE)
}

/// The smallest reserve, for small limits (a limit of 256 keeps 32).
pub(crate) const MIN_RESERVE: usize = 16;
/// The largest reserve, for large limits.
pub(crate) const MAX_RESERVE: usize = 1024;

/// Whether `open` fds of `limit` make the process full, given whether it was full already.
pub(crate) fn full(open: usize, limit: usize, was_full: bool) -> bool {
    let reserve = reserve(limit);
    if was_full { open > limit.saturating_sub(2 * reserve) } else { open >= limit.saturating_sub(reserve) }
}

/// The capacity state of this process.
#[derive(Debug)]
pub(crate) struct Capacity {
    /// The soft `RLIMIT_NOFILE`; `usize::MAX` when unlimited or unknown.
    limit: usize,
    full: AtomicBool,
}

impl Capacity {
    /// Reads the process's fd limit.
    pub(crate) fn from_rlimit() -> Self {
        let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .ok()
            .and_then(|(soft, _)| usize::try_from(soft).ok())
            .unwrap_or(usize::MAX);
        Self { limit, full: AtomicBool::new(false) }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.full.load(Ordering::SeqCst)
    }

    /// A connection arrived as fd `fd`. Returns `true` when this made the process full.
    pub(crate) fn on_fd(&self, fd: RawFd) -> bool {
        let lowest = usize::try_from(fd).unwrap_or(0).saturating_add(1);
        // Below half the threshold by the cheap estimate, a count is not worth its cost.
        if self.is_full() || lowest.saturating_add(reserve(self.limit)).saturating_mul(2) < self.limit {
            return false;
        }
        let open = open_fds().unwrap_or(lowest);
        self.set(full(open, self.limit, false))
    }

    /// The kernel could not install a received fd: the process is at its limit.
    pub(crate) fn on_lost(&self) -> bool {
        self.set(true)
    }

    /// Counts again while full. Returns `true` when the process has room again.
    pub(crate) fn recheck(&self) -> bool {
        if !self.is_full() {
            return false;
        }
        // Counting needs an fd itself: no fd, no room.
        let Some(open) = open_fds() else { return false };
        if full(open, self.limit, true) {
            return false;
        }
        self.full.store(false, Ordering::SeqCst);
        true
    }

    /// Sets the state to full if `now_full`; `true` if that was a change.
    fn set(&self, now_full: bool) -> bool {
        now_full && !self.full.swap(true, Ordering::SeqCst)
    }
}

/// The number of open fds of this process, not counting the one used to count them.
fn open_fds() -> Option<usize> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(entries.count().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_is_an_eighth_within_bounds() {
        assert_eq!(reserve(64), MIN_RESERVE);
        assert_eq!(reserve(256), 32);
        assert_eq!(reserve(1024), 128);
        assert_eq!(reserve(1 << 20), MAX_RESERVE);
        assert_eq!(reserve(usize::MAX), MAX_RESERVE);
    }

    #[test]
    fn full_with_one_reserve_left_and_room_again_with_two() {
        // Limit 256, reserve 32: full from 224 open; once full, room again at 192 or fewer.
        assert!(!full(223, 256, false));
        assert!(full(224, 256, false));
        assert!(full(193, 256, true));
        assert!(!full(192, 256, true));
        assert!(!full(100_000, usize::MAX, false), "no overflow");
        assert!(!full(100_000, usize::MAX, true));
    }

    #[test]
    fn a_lost_fd_makes_the_process_full_once() {
        let capacity = Capacity { limit: 256, full: AtomicBool::new(false) };
        assert!(capacity.on_lost());
        assert!(!capacity.on_lost(), "already full: no second report");
        assert!(capacity.is_full());
    }

    #[test]
    fn low_fd_numbers_are_not_counted() {
        let capacity = Capacity { limit: 1 << 20, full: AtomicBool::new(false) };
        assert!(!capacity.on_fd(10));
        assert!(!capacity.is_full());
    }

    #[test]
    fn this_test_process_has_room() {
        let capacity = Capacity { limit: 1 << 20, full: AtomicBool::new(true) };
        assert!(capacity.recheck(), "a test process has far fewer than a million fds open");
        assert!(!capacity.is_full());
    }
}
