//! The bus requests whose answers are being gathered, and their deadlines.
//!
//! One ordered set of deadlines, which the relay's loop waits on, instead of a timer task per
//! request: a pending request costs its entry here and one in the set (measured in
//! `tests/bus_limits.rs`), and a request answered early leaves nothing behind. A worker has at most
//! [`MAX_PENDING_REQUESTS`] of its own requests pending.

use std::collections::{BTreeSet, HashMap};

use tokio::time::Instant;

pub use clusterd_worker::bus_protocol::MAX_PENDING_REQUESTS;

/// The longest deadline a worker may give a request; a longer one is shortened to it. A bus
/// request gathers the answers of live workers on the same host (or, bridged, of other hosts):
/// answers that take longer than this are not answers but a worker that does not answer. With
/// [`MAX_PENDING_REQUESTS`], it bounds how long a worker's pending requests are held.
pub const MAX_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// A request whose answers are being gathered.
pub struct Pending {
    pub asker: u64,
    pub asker_id: u64,
    pub waiting: BTreeSet<u64>,
    pub answers: Vec<(u32, Vec<u8>)>,
    pub missing: Vec<u32>,
    /// Bytes of `answers`.
    pub held: usize,
    deadline: Instant,
}

impl Pending {
    pub fn new(asker: u64, asker_id: u64, waiting: BTreeSet<u64>, deadline: Instant) -> Self {
        Self { asker, asker_id, waiting, answers: Vec::new(), missing: Vec::new(), held: 0, deadline }
    }
}

/// The pending requests, by the relay's id.
#[derive(Default)]
pub struct Requests {
    pending: HashMap<u64, Pending>,
    deadlines: BTreeSet<(Instant, u64)>,
    /// Pending requests per asker (workers and the bridge alike).
    asking: HashMap<u64, usize>,
}

impl Requests {
    pub fn insert(&mut self, id: u64, pending: Pending) {
        self.deadlines.insert((pending.deadline, id));
        *self.asking.entry(pending.asker).or_default() += 1;
        self.pending.insert(id, pending);
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Pending> {
        self.pending.get_mut(&id)
    }

    pub fn remove(&mut self, id: u64) -> Option<Pending> {
        let pending = self.pending.remove(&id)?;
        self.deadlines.remove(&(pending.deadline, id));
        self.forget_one(pending.asker);
        Some(pending)
    }

    fn forget_one(&mut self, asker: u64) {
        if let Some(n) = self.asking.get_mut(&asker) {
            *n -= 1;
            if *n == 0 {
                self.asking.remove(&asker);
            }
        }
    }

    /// The requests of `asker` still pending.
    pub fn asking(&self, asker: u64) -> usize {
        self.asking.get(&asker).copied().unwrap_or(0)
    }

    /// The next deadline, and its request.
    pub fn next_deadline(&self) -> Option<(Instant, u64)> {
        self.deadlines.first().copied()
    }

    /// Drops the requests of `asker` (it is gone: nobody to answer); returns the bytes of answers
    /// they held.
    pub fn drop_asker(&mut self, asker: u64) -> usize {
        let mut held = 0;
        let deadlines = &mut self.deadlines;
        self.pending.retain(|id, p| {
            let keep = p.asker != asker;
            if !keep {
                held += p.held;
                deadlines.remove(&(p.deadline, *id));
            }
            keep
        });
        self.asking.remove(&asker);
        held
    }

    /// Every pending request, to update what each waits for.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&u64, &mut Pending)> {
        self.pending.iter_mut()
    }
}

/// The deadline of a request: `timeout_ms` (0: the default, `--requests-timeout`), at most
/// [`MAX_REQUEST_TIMEOUT`] or the default if the operator chose a longer one.
pub fn timeout(timeout_ms: u32, default: std::time::Duration) -> std::time::Duration {
    if timeout_ms == 0 {
        default
    } else {
        std::time::Duration::from_millis(u64::from(timeout_ms)).min(MAX_REQUEST_TIMEOUT.max(default))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_is_the_default_for_0_and_at_most_the_maximum() {
        let default = std::time::Duration::from_secs(5);
        assert_eq!(timeout(0, default), default);
        assert_eq!(timeout(250, default), std::time::Duration::from_millis(250));
        assert_eq!(timeout(u32::MAX, default), MAX_REQUEST_TIMEOUT);
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(timeout(u32::MAX, hour), hour, "an operator's longer default is the bound");
    }

    #[test]
    fn a_request_answered_early_leaves_no_deadline_and_no_count() {
        let mut requests = Requests::default();
        let at = Instant::now();
        requests.insert(1, Pending::new(7, 1, BTreeSet::from([8]), at));
        requests.insert(2, Pending::new(7, 2, BTreeSet::from([8]), at + std::time::Duration::from_secs(1)));
        assert_eq!(requests.asking(7), 2);
        assert_eq!(requests.next_deadline(), Some((at, 1)));
        assert!(requests.remove(1).is_some());
        assert_eq!(requests.asking(7), 1);
        assert_eq!(requests.drop_asker(7), 0);
        assert_eq!((requests.asking(7), requests.next_deadline()), (0, None));
    }
}
