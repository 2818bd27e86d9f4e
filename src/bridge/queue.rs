//! What waits for Redis: one ordered queue, bounded in bytes. The relay pushes without ever
//! waiting; on overflow the oldest items are dropped (and counted), so a slow or absent Redis
//! costs at most the budget in memory and never holds up the local relay.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;

/// Bytes counted for an item beside its channel and payload (its own bookkeeping).
const OVERHEAD: usize = 64;

/// What the relay hands the bridge, in the order it happened.
#[derive(Debug)]
pub enum Out {
    /// A local publish on a bridged channel.
    Publish { channel: String, payload: Bytes },
    /// A local request (the relay's id) that waits for the subscribers of `channel` on other hosts.
    Request { id: u64, channel: String, payload: Vec<u8>, timeout_ms: u32 },
    /// The local answers to another host's request (the bridge's id for it).
    Answers { id: u64, answers: Vec<(u32, Vec<u8>)>, missing: Vec<u32> },
    /// A Node worker's cluster-adapter message, framed in `mode` (`--protocol node`).
    Node { mode: u8, frame: Bytes },
    /// The same, for one host only (an answer to its request, a greeting when it joined).
    NodeTo { host: u64, mode: u8, frame: Bytes },
}

impl Out {
    fn size(&self) -> usize {
        OVERHEAD
            + match self {
                Self::Publish { channel, payload } => channel.len() + payload.len(),
                Self::Request { channel, payload, .. } => channel.len() + payload.len(),
                Self::Answers { answers, missing, .. } => {
                    answers.iter().map(|(_, a)| a.len() + 8).sum::<usize>() + missing.len() * 4
                }
                Self::Node { frame, .. } | Self::NodeTo { frame, .. } => frame.len(),
            }
    }
}

#[derive(Default)]
struct Inner {
    items: VecDeque<(Out, usize)>,
    bytes: usize,
}

/// The queue; its consumer is woken through `ready`.
pub struct OutQueue {
    inner: Mutex<Inner>,
    budget: usize,
    pub ready: tokio::sync::Notify,
}

impl OutQueue {
    pub fn new(budget: usize) -> Self {
        Self { inner: Mutex::default(), budget, ready: tokio::sync::Notify::new() }
    }

    /// Queues an item; returns how many older items were dropped to make room (an item larger
    /// than the whole budget is dropped itself).
    pub fn push(&self, item: Out) -> u64 {
        let size = item.size();
        if size > self.budget {
            return 1;
        }
        let mut dropped = 0;
        {
            let mut inner = lock(&self.inner);
            while inner.bytes + size > self.budget {
                let Some((_, old)) = inner.items.pop_front() else { break };
                inner.bytes -= old;
                dropped += 1;
            }
            inner.bytes += size;
            inner.items.push_back((item, size));
        }
        self.ready.notify_one();
        dropped
    }

    /// Whether nothing waits: an item pushed now is taken by the connection task's next turn.
    pub fn is_empty(&self) -> bool {
        lock(&self.inner).items.is_empty()
    }

    /// Takes up to `max` items, in order.
    pub fn take(&self, max: usize, into: &mut Vec<Out>) {
        let mut inner = lock(&self.inner);
        let n = inner.items.len().min(max);
        let mut taken = 0;
        for (item, size) in inner.items.drain(..n) {
            taken += size;
            into.push(item);
        }
        inner.bytes -= taken;
    }

    /// Empties the queue; returns what was in it, in order.
    pub fn take_all(&self) -> Vec<Out> {
        let mut inner = lock(&self.inner);
        inner.bytes = 0;
        std::mem::take(&mut inner.items).into_iter().map(|(item, _)| item).collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(n: usize) -> Out {
        Out::Publish { channel: "c".into(), payload: Bytes::from(vec![0; n]) }
    }

    #[test]
    fn the_oldest_items_make_room_and_memory_stays_within_the_budget() {
        let queue = OutQueue::new(1000);
        assert_eq!(queue.push(publish(300)), 0);
        assert_eq!(queue.push(publish(300)), 0);
        // 2 × 365 queued; one more does not fit: the oldest goes.
        assert_eq!(queue.push(publish(400)), 1);
        assert_eq!(queue.push(publish(2000)), 1, "larger than the budget: dropped itself");
        let mut out = Vec::new();
        queue.take(10, &mut out);
        let sizes: Vec<usize> = out
            .iter()
            .map(|o| match o {
                Out::Publish { payload, .. } => payload.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(sizes, [300, 400]);
        queue.push(publish(1));
        assert_eq!(queue.take_all().len(), 1);
        assert_eq!(queue.push(publish(900)), 0);
    }
}
