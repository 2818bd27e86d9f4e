//! One byte budget for the bus messages clusterd has read and not yet queued for their recipients.
//!
//! Every reader of bus traffic (a native worker's bus socket, a Node worker's channel, and any
//! other member of a relay) takes bytes from this budget *before* it reads them, and hands them to
//! its relay with the frame they became ([`Charge`]). The relay gives them back once it has queued
//! the frame for its recipients (where each recipient's `--bus-queue` bounds it) or dropped it. A
//! reader that finds the budget spent stops reading: the bytes stay in the kernel's socket buffers,
//! and the publishers' writes wait. So however many workers publish, whatever the message sizes,
//! the frames in flight between the readers and the queues stay within [`BUS_INPUT`] bytes, plus
//! at most one frame larger than that (it takes the whole budget, so it is alone in flight), plus
//! what a reader holds of a frame while it waits (at most two 64 KiB read chunks each: a reader
//! gives its charge back before it waits, so readers never wait on each other).
//!
//! The budget is a fair semaphore: a large frame that waits for the whole budget is not overtaken
//! by a stream of small ones.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::Semaphore;

/// The bytes of bus frames read and not yet queued for their recipients, all readers together.
pub const BUS_INPUT: usize = 8 * 1024 * 1024;

/// The budget (one per clusterd).
#[derive(Debug)]
pub struct BusMemory {
    permits: Arc<Semaphore>,
    limit: usize,
}

/// A place in the budget's queue that survives its owner's cancelled `select!` turns (a reader
/// that re-queued at every turn could wait forever behind smaller requests).
pub type Waiting = Pin<Box<dyn Future<Output = Charge> + Send>>;

/// Bytes taken from a [`BusMemory`]: hand them on with what they were read for, and give them
/// back with [`BusMemory::release`] (dropping a charge loses those bytes from the budget).
#[must_use = "a charge must be given back with BusMemory::release"]
#[derive(Debug, Default)]
pub struct Charge(usize);

impl Charge {
    /// The bytes this charge holds.
    pub fn bytes(&self) -> usize {
        self.0
    }

    /// Moves up to `bytes` of this charge into a new one.
    pub fn split(&mut self, bytes: usize) -> Charge {
        let taken = bytes.min(self.0);
        self.0 -= taken;
        Charge(taken)
    }

    /// Adds another charge to this one.
    pub fn absorb(&mut self, other: Charge) {
        self.0 += other.0;
    }
}

impl BusMemory {
    /// A budget of `limit` bytes (at most `u32::MAX`).
    pub fn new(limit: usize) -> Self {
        let limit = limit.clamp(1, u32::MAX as usize);
        Self { permits: Arc::new(Semaphore::new(limit)), limit }
    }

    /// Takes `bytes`, waiting (in turn) until they are free; a request larger than the whole
    /// budget takes the whole budget. The future owns its place in the queue; dropping it takes
    /// nothing.
    pub fn queue(&self, bytes: usize) -> Waiting {
        let wanted = self.clamp(bytes);
        let permits = Arc::clone(&self.permits);
        Box::pin(async move {
            if wanted == 0 {
                return Charge(0);
            }
            permits.acquire_many_owned(wanted).await.expect("the bus budget's semaphore is never closed").forget();
            Charge(wanted as usize)
        })
    }

    /// Takes `bytes` if they are free now (and nobody waits before this caller).
    pub fn try_acquire(&self, bytes: usize) -> Option<Charge> {
        let wanted = self.clamp(bytes);
        if wanted == 0 {
            return Some(Charge(0));
        }
        let permit = self.permits.try_acquire_many(wanted).ok()?;
        permit.forget();
        Some(Charge(wanted as usize))
    }

    /// Gives bytes back.
    pub fn release(&self, charge: Charge) {
        if charge.0 > 0 {
            self.permits.add_permits(charge.0);
        }
    }

    /// Bytes taken now.
    #[cfg(test)]
    pub fn in_use(&self) -> usize {
        self.limit - self.permits.available_permits()
    }

    fn clamp(&self, bytes: usize) -> u32 {
        // `limit` fits a u32 (see `new`).
        bytes.min(self.limit) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_larger_than_the_budget_takes_all_of_it_and_waits_for_all() {
        let memory = BusMemory::new(100);
        let small = memory.try_acquire(10).expect("free");
        assert!(memory.try_acquire(1000).is_none(), "the whole budget is not free");
        memory.release(small);
        let big = memory.try_acquire(1000).expect("alone");
        assert_eq!((big.bytes(), memory.in_use()), (100, 100));
        memory.release(big);
        assert_eq!(memory.in_use(), 0);
    }

    #[tokio::test]
    async fn a_waiting_large_request_is_not_overtaken_by_small_ones() {
        let memory = std::sync::Arc::new(BusMemory::new(100));
        let held = memory.try_acquire(60).expect("free");
        let waiter = {
            let memory = std::sync::Arc::clone(&memory);
            tokio::spawn(memory.queue(100))
        };
        tokio::task::yield_now().await;
        assert!(memory.try_acquire(10).is_none(), "the large request waits first");
        memory.release(held);
        let big = waiter.await.expect("task");
        assert_eq!(big.bytes(), 100);
        memory.release(big);
    }

    #[test]
    fn charges_split_and_merge_without_losing_bytes() {
        let mut a = Charge(10);
        let b = a.split(4);
        let c = a.split(100);
        assert_eq!((a.bytes(), b.bytes(), c.bytes()), (0, 4, 6));
        a.absorb(b);
        a.absorb(c);
        assert_eq!(a.bytes(), 10);
    }
}
