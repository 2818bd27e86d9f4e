//! What Redis sends the subscribed connection, waiting for the connection task: bounded in bytes.
//!
//! redis-rs reads a connection in a task of its own and hands on every message it parsed at once;
//! its RESP2 pub/sub connection queues them in a channel without bound, so a flood on a channel
//! this host subscribes (anyone who can `PUBLISH`) would grow clusterd's memory as far as the
//! connection task falls behind. The subscribed connection therefore speaks RESP3, where messages
//! arrive as pushes handed to a sender of clusterd's choosing: this one. It keeps at most
//! [`MAX_READ_AHEAD`] bytes (or one message larger than that, alone) and drops, and counts, what
//! comes beyond: Redis pub/sub is at-most-once, and the oldest messages keep their order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redis::{Msg, PushInfo, PushKind};

/// The bytes of messages read from Redis and not yet taken by the connection task.
pub const MAX_READ_AHEAD: usize = 16 * 1024 * 1024;
/// Bytes counted for a message beside its channel and payload.
const OVERHEAD: usize = 64;

#[derive(Default)]
struct Inner {
    items: VecDeque<(Msg, usize)>,
    bytes: usize,
    /// The connection is gone (redis-rs says so with a `Disconnection` push).
    closed: bool,
}

/// One subscribed connection's messages.
pub struct Inbox {
    inner: Mutex<Inner>,
    ready: tokio::sync::Notify,
    limit: usize,
    stats: Arc<super::Stats>,
    /// Messages Redis sent (kept or dropped): a sign of life that needs no answer.
    heard: AtomicU64,
}

impl Inbox {
    pub fn new(limit: usize, stats: Arc<super::Stats>) -> Self {
        Self { inner: Mutex::default(), ready: tokio::sync::Notify::new(), limit, stats, heard: AtomicU64::new(0) }
    }

    /// How many messages Redis sent on this connection so far.
    pub fn heard(&self) -> u64 {
        self.heard.load(Ordering::Relaxed)
    }

    /// What redis-rs's reader hands on; it must not wait.
    pub fn push(&self, info: PushInfo) {
        match info.kind {
            PushKind::Disconnection => {
                super::lock(&self.inner).closed = true;
                self.ready.notify_one();
            }
            PushKind::Message => {
                self.heard.fetch_add(1, Ordering::Relaxed);
                let Some(message) = Msg::from_push_info(info) else { return };
                let size = OVERHEAD + message.get_channel_name().len() + message.get_payload_bytes().len();
                {
                    let mut inner = super::lock(&self.inner);
                    if !inner.items.is_empty() && inner.bytes + size > self.limit {
                        drop(inner);
                        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    inner.bytes += size;
                    inner.items.push_back((message, size));
                }
                self.ready.notify_one();
            }
            // Subscription confirmations are redis-rs's business; nothing else is subscribed.
            _ => {}
        }
    }

    /// The next message, in order; `None` once the connection is gone and everything before that
    /// was taken. Cancel-safe: a message is taken only by a call that returns it.
    pub async fn next(&self) -> Option<Msg> {
        loop {
            let notified = self.ready.notified();
            {
                let mut inner = super::lock(&self.inner);
                if let Some((message, size)) = inner.items.pop_front() {
                    inner.bytes -= size;
                    return Some(message);
                }
                if inner.closed {
                    return None;
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn message(payload: usize) -> PushInfo {
        PushInfo {
            kind: PushKind::Message,
            data: vec![Value::BulkString(b"c".to_vec()), Value::BulkString(vec![0; payload])],
        }
    }

    #[tokio::test]
    async fn messages_beyond_the_limit_are_dropped_and_counted_in_order_and_the_end_is_said() {
        let stats = Arc::new(super::super::Stats::new());
        let inbox = Inbox::new(1000, Arc::clone(&stats));
        inbox.push(message(2000)); // alone: taken however large
        inbox.push(message(10)); // dropped: over the limit
        assert_eq!(inbox.next().await.map(|m| m.get_payload_bytes().len()), Some(2000));
        inbox.push(message(400));
        inbox.push(message(400));
        inbox.push(message(400)); // 3 × 465 > 1000: dropped
        inbox.push(PushInfo { kind: PushKind::Disconnection, data: vec![] });
        assert_eq!(inbox.next().await.map(|m| m.get_payload_bytes().len()), Some(400));
        assert_eq!(inbox.next().await.map(|m| m.get_payload_bytes().len()), Some(400));
        assert!(inbox.next().await.is_none());
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 2);
    }
}
