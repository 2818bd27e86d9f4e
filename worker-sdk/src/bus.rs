//! [`Bus`]: publish/subscribe, sends to one worker, and subscriber counts, relayed by clusterd.
//!
//! ```no_run
//! # async fn run(worker: clusterd_worker::Worker) -> Result<(), clusterd_worker::Error> {
//! let bus = worker.bus()?;
//! let mut news = bus.subscribe("news").await?;
//! bus.publish("news", b"hello, other workers".to_vec()).await?;
//! while let Some(message) = news.next().await {
//!     println!("worker {} says {:?}", message.from, message.payload);
//! }
//! # Ok(()) }
//! ```
//!
//! Guarantees (clusterd's relay, README "Messaging"): messages from one worker to another arrive
//! in the order sent; nothing is lost to a live worker that keeps reading; a publisher does not
//! get its own messages unless it asks (`publish_with_echo`). A worker that stops reading its bus
//! does not hold up the others: clusterd drops what it cannot queue for that worker and counts it.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::bus_protocol::{
    BusFromWorker, BusToWorker, FrameBuffer, MAX_BUS_FRAME, MAX_CHANNEL_NAME, MAX_SUBSCRIPTIONS, decode_body,
    encode_frame, parse_message, publish_head,
};
use crate::codec::CodecError;
use crate::error::Error;

/// Frames queued for clusterd; `publish` waits when it is full.
const OUT_QUEUE: usize = 1024;
/// Bytes of payload queued for clusterd before `publish` waits: little enough that a payload is
/// still in the CPU's cache when the writer sends it (measured: a fifth less CPU for a publisher
/// of 10 KiB messages than with 1024 of them queued).
const OUT_BYTES: usize = 512 * 1024;
/// Messages queued for one subscription (or the direct messages, or the events).
const IN_QUEUE: usize = 1024;
/// A message's payload at least this large shares the chunk it was read into instead of being
/// copied out of it (a fifth of a subscriber's CPU at 10 KiB). A chunk lives as long as a payload
/// taken from it, so a payload holds at most one chunk more than itself alive.
const SHARE_FROM: usize = crate::bus_protocol::READ_SIZE / 16;

/// A message from another worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    /// The channel it was published on; `None` for a message sent to this worker.
    pub channel: Option<String>,
    /// The sender's worker id.
    pub from: u32,
    /// The message. A payload of 4 KiB or more shares the memory it was read into instead of
    /// being copied, and keeps that read chunk (64 KiB, or the payload's own size when larger)
    /// alive while it lives: copy it (`payload.to_vec()`) to keep it for long.
    pub payload: Bytes,
}

/// The gathered answers to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answers {
    /// Each answer, with the id of the worker that gave it.
    pub answers: Vec<(u32, Vec<u8>)>,
    /// The workers asked that did not answer: they left, or the deadline passed.
    pub missing: Vec<u32>,
}

/// A question from another worker; answer it with [`IncomingRequest::reply`].
#[derive(Debug)]
pub struct IncomingRequest {
    id: u64,
    /// The asking worker's id.
    pub from: u32,
    /// The question.
    pub payload: Vec<u8>,
    out: mpsc::Sender<Outgoing>,
}

impl IncomingRequest {
    /// Sends the answer. A request never answered counts as missing at its deadline.
    pub async fn reply(self, payload: impl Into<Vec<u8>>) -> Result<(), Error> {
        let mut bytes = Vec::new();
        encode_frame(&BusFromWorker::Reply { id: self.id, payload: payload.into() }, &mut bytes)
            .map_err(crate::channel::ChannelError::from)?;
        self.out.send(bytes.into()).await.map_err(|_| Error::Disconnected)
    }
}

/// Something that happened on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusEvent {
    /// A worker joined the bus.
    Joined(u32),
    /// A worker left the bus (it exited).
    Left(u32),
    /// A message this worker sent could not be delivered: no live worker has that id.
    Undeliverable(u32),
}

/// This worker's handle on the bus. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Bus {
    inner: Arc<Inner>,
}

/// A channel's local subscriptions: id and queue.
type Subscribers = Vec<(u64, mpsc::Sender<BusMessage>)>;
/// A queue whose receiving end can be taken once.
type Takeable<T> = Mutex<(Option<mpsc::Sender<T>>, Option<mpsc::Receiver<T>>)>;

#[derive(Debug)]
struct Inner {
    out: mpsc::Sender<Outgoing>,
    /// Room for payload bytes in `out` ([`OUT_BYTES`]).
    out_room: Arc<Semaphore>,
    subscriptions: Mutex<HashMap<String, Subscribers>>,
    next_subscription: AtomicU64,
    next_seq: AtomicU32,
    counts: Mutex<HashMap<u32, oneshot::Sender<u32>>>,
    direct: Takeable<BusMessage>,
    events: Takeable<BusEvent>,
    requests: Takeable<IncomingRequest>,
    next_ask: AtomicU64,
    asks: Mutex<HashMap<u64, oneshot::Sender<Answers>>>,
    hooks: Mutex<Vec<Hook>>,
    /// Set when clusterd's end of the bus is gone: nothing waits for an answer any more.
    closed: std::sync::atomic::AtomicBool,
}

impl Inner {
    /// clusterd is gone: every question still waiting fails with [`Error::Disconnected`].
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        lock(&self.counts).clear();
        lock(&self.asks).clear();
    }
}

/// A [`RequestHook`] and the payload prefix of its requests.
type Hook = (&'static [u8], Arc<dyn RequestHook>);

/// A taker, inside the SDK, of the requests whose payload starts with a reserved prefix: such a
/// request goes to it instead of [`Bus::requests`], which stays the application's. Called on the
/// bus's reading task, so it must not block.
pub(crate) trait RequestHook: std::any::Any + Send + Sync + std::fmt::Debug {
    /// Takes one request.
    fn handle(&self, request: IncomingRequest);
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Bus {
    /// Starts the bus on the inherited stream socket. Needs a Tokio runtime.
    pub(crate) fn start(fd: OwnedFd) -> std::io::Result<Self> {
        let std = std::os::unix::net::UnixStream::from(fd);
        std.set_nonblocking(true)?;
        let (read, write) = tokio::net::UnixStream::from_std(std)?.into_split();
        let (out, queue) = mpsc::channel(OUT_QUEUE);
        let (direct_tx, direct_rx) = mpsc::channel(IN_QUEUE);
        let (events_tx, events_rx) = mpsc::channel(IN_QUEUE);
        let (requests_tx, requests_rx) = mpsc::channel(IN_QUEUE);
        let inner = Arc::new(Inner {
            out,
            out_room: Arc::new(Semaphore::new(OUT_BYTES)),
            subscriptions: Mutex::default(),
            next_subscription: AtomicU64::new(1),
            next_seq: AtomicU32::new(1),
            counts: Mutex::default(),
            direct: Mutex::new((Some(direct_tx), Some(direct_rx))),
            events: Mutex::new((Some(events_tx), Some(events_rx))),
            requests: Mutex::new((Some(requests_tx), Some(requests_rx))),
            next_ask: AtomicU64::new(1),
            asks: Mutex::default(),
            hooks: Mutex::default(),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(write_frames(write, queue));
        let reading = Arc::clone(&inner);
        tokio::spawn(async move {
            read_frames(read, &reading).await;
            reading.close();
        });
        Ok(Self { inner })
    }

    /// Publishes `payload` to every other worker subscribed to `channel`. Every method that
    /// names a channel fails with [`Error::ChannelNameTooLong`], sending nothing, for a name over
    /// [`MAX_CHANNEL_NAME`] bytes.
    pub async fn publish(&self, channel: &str, payload: impl Into<Vec<u8>>) -> Result<(), Error> {
        self.queue_publish(channel, payload.into(), false).await
    }

    /// Publishes `payload` to every worker subscribed to `channel`, this one included.
    pub async fn publish_with_echo(&self, channel: &str, payload: impl Into<Vec<u8>>) -> Result<(), Error> {
        self.queue_publish(channel, payload.into(), true).await
    }

    /// Sends `payload` to the worker with id `to`. If no live worker has that id, the
    /// [`events`](Bus::events) stream says [`BusEvent::Undeliverable`].
    pub async fn send(&self, to: u32, payload: impl Into<Vec<u8>>) -> Result<(), Error> {
        self.queue(&BusFromWorker::Send { to, payload: payload.into() }).await
    }

    /// Subscribes to `channel`; the subscription ends when the returned value is dropped.
    /// Fails with [`Error::ChannelNameTooLong`] or [`Error::TooManySubscriptions`] past
    /// clusterd's bounds.
    pub async fn subscribe(&self, channel: &str) -> Result<Subscription, Error> {
        check_channel(channel)?;
        let id = self.inner.next_subscription.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(IN_QUEUE);
        let first = {
            let mut subscriptions = lock(&self.inner.subscriptions);
            if subscriptions.len() >= MAX_SUBSCRIPTIONS && !subscriptions.contains_key(channel) {
                return Err(Error::TooManySubscriptions { max: MAX_SUBSCRIPTIONS });
            }
            let list = subscriptions.entry(channel.to_owned()).or_default();
            list.push((id, tx));
            list.len() == 1
        };
        if first {
            self.queue(&BusFromWorker::Subscribe { channel: channel.to_owned() }).await?;
        }
        Ok(Subscription { channel: channel.to_owned(), id, messages: rx, bus: self.clone() })
    }

    /// The number of live workers subscribed to `channel` (clusterd knows who is alive).
    pub async fn subscribers(&self, channel: &str) -> Result<u32, Error> {
        check_channel(channel)?;
        let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.counts).insert(seq, tx);
        if self.inner.closed.load(Ordering::SeqCst) {
            lock(&self.inner.counts).remove(&seq);
            return Err(Error::Disconnected);
        }
        self.queue(&BusFromWorker::Subscribers { seq, channel: channel.to_owned() }).await?;
        rx.await.map_err(|_| Error::Disconnected)
    }

    /// Asks every other live worker and returns their answers, gathered by clusterd: once all
    /// answered or left, or at clusterd's `--requests-timeout` with what arrived.
    pub async fn request(&self, payload: impl Into<Vec<u8>>) -> Result<Answers, Error> {
        self.ask(None, payload.into(), std::time::Duration::ZERO).await
    }

    /// As [`Bus::request`], asking only the other subscribers of `channel`.
    pub async fn request_channel(&self, channel: &str, payload: impl Into<Vec<u8>>) -> Result<Answers, Error> {
        self.ask(Some(channel.to_owned()), payload.into(), std::time::Duration::ZERO).await
    }

    /// As [`Bus::request`] (or [`Bus::request_channel`]), with this deadline.
    pub async fn request_with_timeout(
        &self,
        channel: Option<&str>,
        payload: impl Into<Vec<u8>>,
        timeout: std::time::Duration,
    ) -> Result<Answers, Error> {
        self.ask(channel.map(str::to_owned), payload.into(), timeout.max(std::time::Duration::from_millis(1))).await
    }

    async fn ask(
        &self,
        channel: Option<String>,
        payload: Vec<u8>,
        timeout: std::time::Duration,
    ) -> Result<Answers, Error> {
        self.queue_request(channel, payload, timeout).await?.await.map_err(|_| Error::Disconnected)
    }

    /// Queues a request (`timeout` zero: clusterd's default) and returns the receiver of its
    /// answers; whatever this worker queues afterwards reaches clusterd after the request.
    pub(crate) async fn queue_request(
        &self,
        channel: Option<String>,
        payload: Vec<u8>,
        timeout: std::time::Duration,
    ) -> Result<oneshot::Receiver<Answers>, Error> {
        if let Some(channel) = &channel {
            check_channel(channel)?;
        }
        let id = self.inner.next_ask.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.asks).insert(id, tx);
        if self.inner.closed.load(Ordering::SeqCst) {
            lock(&self.inner.asks).remove(&id);
            return Err(Error::Disconnected);
        }
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        if let Err(error) = self.queue(&BusFromWorker::Request { id, channel, payload, timeout_ms }).await {
            lock(&self.inner.asks).remove(&id);
            return Err(error);
        }
        Ok(rx)
    }

    /// The hook that takes the requests whose payload starts with `prefix`: the one installed
    /// already (every user of the prefix shares it), else the one `make` builds.
    #[cfg(feature = "socketioxide")]
    pub(crate) fn request_hook<H: RequestHook>(&self, prefix: &'static [u8], make: impl FnOnce() -> H) -> Arc<H> {
        let mut hooks = lock(&self.inner.hooks);
        if let Some((_, hook)) = hooks.iter().find(|(p, _)| *p == prefix) {
            let any: Arc<dyn std::any::Any + Send + Sync> = Arc::<dyn RequestHook>::clone(hook);
            if let Ok(hook) = any.downcast::<H>() {
                return hook;
            }
        }
        let hook = Arc::new(make());
        hooks.retain(|(p, _)| *p != prefix);
        hooks.push((prefix, Arc::clone(&hook) as Arc<dyn RequestHook>));
        hook
    }

    /// The questions other workers ask this one. Can be taken once; while nobody takes them, this
    /// worker counts as missing in their answers at the deadline.
    pub fn requests(&self) -> Result<mpsc::Receiver<IncomingRequest>, Error> {
        lock(&self.inner.requests).1.take().ok_or(Error::AlreadyTaken)
    }

    /// The messages sent to this worker with [`Bus::send`]. Can be taken once.
    pub fn direct_messages(&self) -> Result<mpsc::Receiver<BusMessage>, Error> {
        lock(&self.inner.direct).1.take().ok_or(Error::AlreadyTaken)
    }

    /// Workers joining and leaving, and undeliverable sends. Can be taken once.
    pub fn events(&self) -> Result<mpsc::Receiver<BusEvent>, Error> {
        lock(&self.inner.events).1.take().ok_or(Error::AlreadyTaken)
    }

    async fn queue(&self, frame: &BusFromWorker) -> Result<(), Error> {
        let mut bytes = Vec::new();
        encode_frame(frame, &mut bytes).map_err(crate::channel::ChannelError::from)?;
        self.inner.out.send(bytes.into()).await.map_err(|_| Error::Disconnected)
    }

    /// Queues a publish without copying its payload: the writer sends the frame's head, the
    /// payload and the echo byte together.
    async fn queue_publish(&self, channel: &str, payload: Vec<u8>, echo: bool) -> Result<(), Error> {
        check_channel(channel)?;
        let size = 4 + 16 + channel.len() + payload.len();
        if size > MAX_BUS_FRAME {
            return Err(crate::channel::ChannelError::from(CodecError::Oversized { size }).into());
        }
        let mut head = Vec::with_capacity(16 + channel.len());
        publish_head(channel, payload.len(), &mut head);
        let tail: &'static [u8] = if echo { &[1] } else { &[0] };
        // A payload larger than the room waits for all of it.
        let room = u32::try_from(payload.len().min(OUT_BYTES)).expect("OUT_BYTES fits in u32");
        let room = Arc::clone(&self.inner.out_room).acquire_many_owned(room).await.map_err(|_| Error::Disconnected)?;
        let frame = Outgoing { head, payload, tail, _room: Some(room) };
        self.inner.out.send(frame).await.map_err(|_| Error::Disconnected)
    }

    fn unsubscribe(&self, channel: &str, id: u64) {
        let last = {
            let mut subscriptions = lock(&self.inner.subscriptions);
            let Some(list) = subscriptions.get_mut(channel) else { return };
            list.retain(|(i, _)| *i != id);
            let last = list.is_empty();
            if last {
                subscriptions.remove(channel);
            }
            last
        };
        if last {
            let mut bytes = Vec::new();
            if encode_frame(&BusFromWorker::Unsubscribe { channel: channel.to_owned() }, &mut bytes).is_ok() {
                let _ = self.inner.out.try_send(bytes.into());
            }
        }
    }
}

/// Refuses a channel name that clusterd would take for a broken protocol.
fn check_channel(channel: &str) -> Result<(), Error> {
    if channel.len() > MAX_CHANNEL_NAME {
        return Err(Error::ChannelNameTooLong { len: channel.len(), max: MAX_CHANNEL_NAME });
    }
    Ok(())
}

/// The messages of one channel, in the order they were published. Unsubscribes when dropped.
#[derive(Debug)]
pub struct Subscription {
    channel: String,
    id: u64,
    messages: mpsc::Receiver<BusMessage>,
    bus: Bus,
}

impl Subscription {
    /// The next message; `None` once the bus is closed (clusterd is gone).
    pub async fn next(&mut self) -> Option<BusMessage> {
        self.messages.recv().await
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }
}

impl futures_core::Stream for Subscription {
    type Item = BusMessage;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<BusMessage>> {
        self.messages.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.bus.unsubscribe(&self.channel, self.id);
    }
}

/// A frame queued for clusterd: its start, then (for a publish) the payload and the echo byte,
/// written one after the other (vectored), so that a payload is never copied.
struct Outgoing {
    head: Vec<u8>,
    payload: Vec<u8>,
    tail: &'static [u8],
    /// A publish's room in [`OUT_BYTES`], given back once it is written.
    _room: Option<OwnedSemaphorePermit>,
}

impl From<Vec<u8>> for Outgoing {
    fn from(frame: Vec<u8>) -> Self {
        Self { head: frame, payload: Vec::new(), tail: &[], _room: None }
    }
}

/// Writes queued frames, as many per syscall as are queued.
async fn write_frames(mut socket: tokio::net::unix::OwnedWriteHalf, mut queue: mpsc::Receiver<Outgoing>) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, 256).await > 0 {
        let parts: Vec<&[u8]> = batch
            .iter()
            .flat_map(|f: &Outgoing| [&f.head[..], &f.payload[..], f.tail])
            .filter(|part| !part.is_empty())
            .collect();
        if crate::bus_protocol::write_frames(&mut socket, &parts).await.is_err() {
            return;
        }
        batch.clear();
    }
}

/// Reads clusterd's frames and hands each to whoever waits for it.
async fn read_frames(mut socket: tokio::net::unix::OwnedReadHalf, inner: &Inner) {
    let mut buffer = FrameBuffer::new();
    // The subscriptions a message goes to, kept between messages so that it is allocated once.
    let mut targets = Vec::new();
    loop {
        loop {
            // A message (the bulk of the traffic) is read in place: a large payload stays where it
            // was read, a small one is copied once, without bincode zeroing a buffer for it first.
            let next = buffer.next_body().and_then(|body| {
                body.map(|body| match parse_message(&body) {
                    Some(message) => message.map(|m| {
                        let payload = if m.payload.len() >= SHARE_FROM {
                            body.slice_ref(m.payload)
                        } else {
                            Bytes::copy_from_slice(m.payload)
                        };
                        Incoming::Message(BusMessage { channel: Some(m.channel.to_owned()), from: m.from, payload })
                    }),
                    None => decode_body(&body).map(Incoming::Other),
                })
                .transpose()
            });
            let frame = match next {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => {
                    tracing::error!(%error, "bad frame on the bus; closing it");
                    return;
                }
            };
            deliver(inner, frame, &mut targets).await;
        }
        match buffer.read_from(&mut socket).await {
            Ok(0) | Err(_) => return, // clusterd is gone: subscriptions end.
            Ok(_) => {}
        }
    }
}

/// Hands a message to every subscription of its channel. A subscription that is slow to read
/// holds the others up (backpressure, nothing lost).
async fn to_subscribers(inner: &Inner, message: BusMessage, targets: &mut Vec<mpsc::Sender<BusMessage>>) {
    targets.clear();
    if let Some(channel) = message.channel.as_deref()
        && let Some(list) = lock(&inner.subscriptions).get(channel)
    {
        targets.extend(list.iter().map(|(_, tx)| tx.clone()));
    }
    // The last one gets the message itself, the others a clone (sharing the payload).
    if let Some((last, others)) = targets.split_last() {
        for target in others {
            let _ = target.send(message.clone()).await;
        }
        let _ = last.send(message).await;
    }
}

/// A frame from clusterd, as the reader takes it.
enum Incoming {
    /// A message on a channel, parsed in place.
    Message(BusMessage),
    Other(BusToWorker),
}

/// Hands a frame to whoever waits for it; `targets` is room for a message's subscriptions (kept
/// between messages so that it is allocated once).
async fn deliver(inner: &Inner, frame: Incoming, targets: &mut Vec<mpsc::Sender<BusMessage>>) {
    let frame = match frame {
        Incoming::Message(message) => return to_subscribers(inner, message, targets).await,
        Incoming::Other(frame) => frame,
    };
    match frame {
        // The reader parses messages in place; a decoded one goes the same way.
        BusToWorker::Message { channel, from, payload } => {
            let message = BusMessage { channel: Some(channel), from, payload: payload.into() };
            to_subscribers(inner, message, targets).await;
        }
        BusToWorker::Direct { from, payload } => {
            let target = lock(&inner.direct).0.clone();
            if let Some(target) = target {
                let _ = target.send(BusMessage { channel: None, from, payload: payload.into() }).await;
            }
        }
        BusToWorker::Subscribers { seq, count } => {
            if let Some(answer) = lock(&inner.counts).remove(&seq) {
                let _ = answer.send(count);
            }
        }
        BusToWorker::Request { id, from, payload } => {
            let hook = lock(&inner.hooks).iter().find(|(p, _)| payload.starts_with(p)).map(|(_, h)| Arc::clone(h));
            if let Some(hook) = hook {
                return hook.handle(IncomingRequest { id, from, payload, out: inner.out.clone() });
            }
            let target = lock(&inner.requests).0.clone();
            if let Some(target) = target {
                let _ = target.send(IncomingRequest { id, from, payload, out: inner.out.clone() }).await;
            }
        }
        BusToWorker::Answers { id, answers, missing } => {
            if let Some(waiter) = lock(&inner.asks).remove(&id) {
                let _ = waiter.send(Answers { answers, missing });
            }
        }
        BusToWorker::Joined { worker } => event(inner, BusEvent::Joined(worker)),
        BusToWorker::Left { worker } => event(inner, BusEvent::Left(worker)),
        BusToWorker::Undeliverable { to } => event(inner, BusEvent::Undeliverable(to)),
    }
}

/// Events nobody reads are dropped: they are news, not data.
fn event(inner: &Inner, event: BusEvent) {
    if let Some(events) = &lock(&inner.events).0 {
        let _ = events.try_send(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bus whose clusterd end is `peer`.
    fn bus() -> (Bus, std::os::unix::net::UnixStream) {
        let (ours, peer) = std::os::unix::net::UnixStream::pair().unwrap();
        (Bus::start(OwnedFd::from(ours)).unwrap(), peer)
    }

    #[tokio::test]
    async fn questions_fail_instead_of_waiting_forever_when_clusterd_is_gone() {
        let (bus, peer) = bus();
        // Asked while clusterd is there (it never answers), then clusterd goes away.
        let pending = tokio::spawn({
            let bus = bus.clone();
            async move { bus.request(b"anyone?".to_vec()).await }
        });
        let counting = tokio::spawn({
            let bus = bus.clone();
            async move { bus.subscribers("news").await }
        });
        tokio::task::yield_now().await;
        drop(peer);
        let wait = std::time::Duration::from_secs(5);
        let answer = tokio::time::timeout(wait, pending).await.expect("the pending request ends").unwrap();
        assert!(matches!(answer, Err(Error::Disconnected)), "{answer:?}");
        let count = tokio::time::timeout(wait, counting).await.expect("the pending count ends").unwrap();
        assert!(matches!(count, Err(Error::Disconnected)), "{count:?}");
        // Asked after: fails at once.
        let late = tokio::time::timeout(wait, bus.request(b"still there?".to_vec())).await.expect("no wait");
        assert!(matches!(late, Err(Error::Disconnected)), "{late:?}");
    }
}
