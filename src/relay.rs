//! The relay: publish/subscribe, sends to one worker, and subscriber counts between workers.
//!
//! ```text
//!   worker task (reads its worker's bus) ──► Input::Frame ──► relay task (subscriptions)
//!                                                              │ one encoded copy per message
//!                                                              ▼
//!                             per-worker writer task ◄── bounded queue (bytes budget) ──► bus socket
//! ```
//!
//! The relay task alone owns who is on the bus and who subscribes to what. Each member has a
//! writer task that writes queued frames in batches (many per syscall).
//!
//! Overflow policy: when a member's queue is full (`--bus-queue` bytes waiting), the relay waits
//! for room: it stops taking frames, so the publishers' `publish` waits too (backpressure), and a
//! live worker that reads loses nothing. A member that makes no room for [`STUCK_AFTER`] is
//! *stuck*: from then on, messages to it are dropped and counted (`dropped` in `status`) without
//! waiting, until its queue has drained to half. The queue is full when it holds its budget's
//! bytes or [`QUEUE`] frames (many small messages reach the second first); either counts. A
//! stuck worker costs the others one pause of [`STUCK_AFTER`], and clusterd's memory for it
//! stays within its budget (twice its budget, counting the read chunks that the payloads it waits
//! for were sliced from; or one frame larger than its budget, which an empty queue takes).
//!
//! Memory: the frames read and not yet queued hold a share of the bus budget (`bus_memory.rs`),
//! which this task gives back once it has queued (or dropped) them; each member's queue is bounded
//! by its budget; the answers of requests being gathered are bounded by [`MAX_HELD_ANSWERS`].
//! What one worker's frames make the relay keep is bounded too: channel names by the bus
//! protocol's `MAX_CHANNEL_NAME` (checked as frames are read, `bus_reader.rs`), its subscriptions
//! by `MAX_SUBSCRIPTIONS` and [`MAX_SUBSCRIBED_BYTES`], its pending requests by
//! `MAX_PENDING_REQUESTS` (`relay/requests.rs`).
//! Whatever else joins the relay as a member (a bridge to other hosts) follows the same rules: it
//! charges what it reads to the bus budget before it hands it over here, and its queue is a
//! member's queue.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use clusterd_worker::bus_protocol::{BusFromWorker, BusToWorker, MAX_SUBSCRIPTIONS, encode_frame, message_head};
use tokio::sync::mpsc;

use crate::bus_memory::{BusMemory, Charge};

mod requests;
use requests::{MAX_PENDING_REQUESTS, Pending, Requests};

/// Frames that may wait for one member (a second bound, for many small messages).
const QUEUE: usize = 16 * 1024;
/// How long a member's full queue may stay full before the member counts as stuck.
pub const STUCK_AFTER: std::time::Duration = std::time::Duration::from_secs(2);
/// The bytes of answers held for requests still gathering them, all requests together. Also the
/// most one request's answers may add up to, so that its `Answers` frame stays within the frame
/// limit. An answer beyond it counts its worker as missing.
pub const MAX_HELD_ANSWERS: usize = clusterd_worker::bus_protocol::MAX_BUS_FRAME - 1024 * 1024;
/// The bytes of channel names one worker process may subscribe to, all together. The count bound
/// alone (`MAX_SUBSCRIPTIONS` names of up to `MAX_CHANNEL_NAME`) would let one worker make
/// clusterd hold 256 MiB of names.
pub const MAX_SUBSCRIBED_BYTES: usize = 16 * 1024 * 1024;
/// Messages from other hosts may fill a member's queue up to its budget / this much (bytes and
/// frames).
const REMOTE_SHARE: usize = 2;
/// Charges given back at once when they add up to this much (else when the input runs dry).
const RELEASE_BATCH: usize = 64 * 1024;

/// The key under which the other hosts (the bridge) are waited for in a request; no worker has it.
const BRIDGE: u64 = u64::MAX;
/// The worker id that messages and answers from other hosts carry.
pub const REMOTE: u32 = u32::MAX;

/// What the bridge to other hosts (`crate::bridge`) tells the relay.
pub enum BridgeInput {
    /// The bridge joins: from now on it gets the local traffic of bridged channels.
    Attach(crate::bridge::Sink),
    /// A message of another host's worker, for the local subscribers, with its charge to the bus
    /// budget (given back once it is queued, as for a worker's frame).
    Message { channel: String, payload: Bytes, charge: Charge },
    /// Live subscribers of each channel on the other hosts (replaces the previous counts).
    Remote(HashMap<String, u32>),
    /// A request of another host's worker to the local subscribers of `channel`; answered through
    /// the bridge's sink under `id`; `charge` as for a message.
    Request { id: u64, channel: String, payload: Vec<u8>, timeout: std::time::Duration, charge: Charge },
    /// The other hosts' answers to the relay's request `request`.
    Answers { request: u64, answers: Vec<(u32, Vec<u8>)>, missing: Vec<u32> },
}

/// What the relay hears.
pub enum Input {
    /// From the bridge to other hosts.
    Bridge(BridgeInput),
    /// A request's deadline passed.
    Deadline { request: u64 },
    /// A worker process is on the bus (its socket's write half is the relay's from now on).
    Join { key: u64, slot: u32, writer: tokio::net::unix::OwnedWriteHalf, dropped: Arc<AtomicU64> },
    /// It is gone.
    Leave { key: u64 },
    /// It sent a frame, read with this charge to the bus budget (given back once it is queued).
    Frame { key: u64, frame: Incoming, charge: Charge },
}

/// A frame from a worker, as its reader hands it over.
pub enum Incoming {
    /// A publish, parsed in place: its payload goes to every subscriber without another copy.
    Publish { channel: Arc<str>, payload: Bytes, echo: bool },
    /// Any other frame.
    Other(BusFromWorker),
}

/// A frame queued for a member: its start, then the payload it may share with other members'
/// queues, written one after the other (vectored).
#[derive(Clone)]
struct Outgoing {
    head: Head,
    payload: Bytes,
}

impl Outgoing {
    fn len(&self) -> usize {
        self.head.len() + self.payload.len()
    }
}

/// The longest frame start kept inline: a message's head on a channel of up to 30 bytes.
const INLINE_HEAD: usize = 46;

/// A frame's start. Short ones (the head of a message, on a channel of a usual name) are kept
/// inline, so that relaying a message allocates nothing for its head.
#[derive(Clone)]
enum Head {
    Inline { len: u8, bytes: [u8; INLINE_HEAD] },
    Shared(Bytes),
}

impl Head {
    fn new(head: &[u8]) -> Self {
        match u8::try_from(head.len()) {
            Ok(len) if head.len() <= INLINE_HEAD => {
                let mut bytes = [0; INLINE_HEAD];
                bytes[..head.len()].copy_from_slice(head);
                Self::Inline { len, bytes }
            }
            _ => Self::Shared(Bytes::copy_from_slice(head)),
        }
    }
}

impl std::ops::Deref for Head {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Shared(bytes) => bytes,
        }
    }
}

struct Member {
    slot: u32,
    budget: usize,
    queue: mpsc::Sender<Outgoing>,
    queued: Arc<AtomicUsize>,
    /// Signalled by the writer each time it wrote.
    room: Arc<tokio::sync::Notify>,
    stuck: bool,
    dropped: Arc<AtomicU64>,
    /// The channels it subscribes to (at most [`MAX_SUBSCRIPTIONS`]) and the bytes of their
    /// names (at most [`MAX_SUBSCRIBED_BYTES`]).
    subscribed: usize,
    subscribed_bytes: usize,
    /// Whether a subscription beyond the bound was logged (once per worker process).
    refused_logged: bool,
    /// Whether a request beyond [`MAX_PENDING_REQUESTS`] was logged (once per worker process).
    asks_logged: bool,
}

struct Relay {
    /// By key; a map without hashing, for the lookups of every relayed message.
    members: BTreeMap<u64, Member>,
    subscriptions: HashMap<String, BTreeSet<u64>>,
    budget: usize,
    requests: Requests,
    next_request: u64,
    default_timeout: std::time::Duration,
    /// Where each message's head is encoded (kept, so that it is allocated once).
    head: Vec<u8>,
    memory: Arc<BusMemory>,
    /// Charges of frames already queued, given back in batches.
    done: Charge,
    /// Bytes of the answers in `requests`.
    held_answers: usize,
    /// The bridge to other hosts, if any, and their subscribers per channel.
    bridge: Option<crate::bridge::Sink>,
    remote: HashMap<String, u32>,
}

/// Starts the relay task; `budget` is the bytes queued for one member before drops,
/// `default_timeout` the deadline of a request that names none, and `memory` the budget the
/// frames it is handed were charged to.
pub fn start(budget: usize, default_timeout: std::time::Duration, memory: Arc<BusMemory>) -> mpsc::Sender<Input> {
    let (tx, mut rx) = mpsc::channel::<Input>(1024);
    tokio::spawn(async move {
        let mut relay = Relay {
            members: BTreeMap::new(),
            subscriptions: HashMap::new(),
            budget,
            requests: Requests::default(),
            next_request: 1,
            default_timeout,
            head: Vec::new(),
            memory,
            done: Charge::default(),
            held_answers: 0,
            bridge: None,
            remote: HashMap::new(),
        };
        loop {
            let input = match relay.requests.next_deadline() {
                // A deadline that passed goes first: under a steady stream of frames the input
                // may never run dry, and the asker must not wait for it to.
                Some((at, request)) if at <= tokio::time::Instant::now() => Some(Input::Deadline { request }),
                // Else input first: a deadline waits for the frames already read (answers
                // among them).
                Some((at, request)) => tokio::select! {
                    biased;
                    input = rx.recv() => input,
                    () = tokio::time::sleep_until(at) => Some(Input::Deadline { request }),
                },
                None => rx.recv().await,
            };
            let Some(input) = input else { break };
            relay.handle(input).await;
            if relay.done.bytes() >= RELEASE_BATCH || rx.is_empty() {
                relay.memory.release(std::mem::take(&mut relay.done));
            }
        }
    });
    tx
}

fn encode(frame: &BusToWorker) -> Option<Outgoing> {
    let mut bytes = Vec::new();
    encode_frame(frame, &mut bytes).ok()?;
    Some(Outgoing { head: Head::Shared(Bytes::from(bytes)), payload: Bytes::new() })
}

impl Relay {
    async fn handle(&mut self, input: Input) {
        match input {
            Input::Join { key, slot, writer, dropped } => self.join(key, slot, writer, dropped).await,
            Input::Leave { key } => self.leave(key).await,
            Input::Frame { key, frame, charge } => {
                crate::metrics::bus_message();
                self.frame(key, frame).await;
                self.done.absorb(charge);
            }
            Input::Bridge(input) => self.bridge(input).await,
            Input::Deadline { request } => {
                if let Some(mut pending) = self.requests.remove(request) {
                    for key in std::mem::take(&mut pending.waiting) {
                        if let Some(member) = self.members.get(&key) {
                            pending.missing.push(member.slot);
                        } else if key == BRIDGE {
                            pending.missing.push(REMOTE);
                        }
                    }
                    self.answer(pending).await;
                }
            }
        }
    }

    /// Sends a finished request's answers to its asker.
    async fn answer(&mut self, pending: Pending) {
        self.held_answers -= pending.held;
        if pending.asker == BRIDGE {
            if let Some(bridge) = &self.bridge {
                bridge.answers(pending.asker_id, pending.answers, pending.missing);
            }
            return;
        }
        let frame = BusToWorker::Answers { id: pending.asker_id, answers: pending.answers, missing: pending.missing };
        if let Some(bytes) = encode(&frame) {
            self.send_to(&[pending.asker], bytes).await;
        }
    }

    /// A worker that is gone answers nothing: requests that wait only for it are answered now.
    async fn forget_in_requests(&mut self, key: u64, slot: u32) {
        self.held_answers -= self.requests.drop_asker(key);
        let done: Vec<u64> = self
            .requests
            .iter_mut()
            .filter_map(|(id, p)| {
                if p.waiting.remove(&key) {
                    p.missing.push(slot);
                }
                p.waiting.is_empty().then_some(*id)
            })
            .collect();
        for id in done {
            if let Some(pending) = self.requests.remove(id) {
                self.answer(pending).await;
            }
        }
    }

    /// Queues one message for every subscriber of `channel`: one head and one payload, shared.
    async fn publish(&mut self, key: u64, from: u32, channel: &str, payload: Bytes, echo: bool) {
        let subscribed = self.subscriptions.contains_key(channel);
        let handed = match &self.bridge {
            Some(bridge) => bridge.publish(channel, &payload, || subscribed),
            None => crate::bridge::Handed::No,
        };
        if !subscribed {
            return;
        }
        if handed == crate::bridge::Handed::First {
            // The PUBLISH to the other hosts leaves before the local workers are woken (see
            // `Handed`).
            tokio::task::yield_now().await;
        }
        let Some(subscribers) = self.subscriptions.get(channel) else { return };
        self.head.clear();
        message_head(channel, from, payload.len(), &mut self.head);
        let message = Outgoing { head: Head::new(&self.head), payload };
        for target in subscribers.iter().filter(|&&k| echo || k != key) {
            if let Some(member) = self.members.get_mut(target) {
                enqueue(member, message.clone()).await;
            }
        }
    }

    /// Queues `bytes` for each of `keys` (see the overflow policy).
    async fn send_to(&mut self, keys: &[u64], bytes: Outgoing) {
        for key in keys {
            if let Some(member) = self.members.get_mut(key) {
                enqueue(member, bytes.clone()).await;
            }
        }
    }

    async fn join(&mut self, key: u64, slot: u32, writer: tokio::net::unix::OwnedWriteHalf, dropped: Arc<AtomicU64>) {
        let (queue, frames) = mpsc::channel(QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        let room = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(write_frames(writer, frames, Arc::clone(&queued), Arc::clone(&room)));
        let mut member = Member {
            slot,
            queue,
            queued,
            room,
            stuck: false,
            dropped,
            budget: self.budget,
            subscribed: 0,
            subscribed_bytes: 0,
            refused_logged: false,
            asks_logged: false,
        };
        // The newcomer learns who is there; the others learn of it.
        let present: Vec<u32> = self.members.values().map(|m| m.slot).collect();
        for other in present {
            if let Some(bytes) = encode(&BusToWorker::Joined { worker: other }) {
                enqueue(&mut member, bytes).await;
            }
        }
        if let Some(bytes) = encode(&BusToWorker::Joined { worker: slot }) {
            let keys: Vec<u64> = self.members.keys().copied().collect();
            self.send_to(&keys, bytes).await;
        }
        self.members.insert(key, member);
    }

    async fn leave(&mut self, key: u64) {
        let Some(member) = self.members.remove(&key) else { return };
        let bridge = self.bridge.as_ref();
        self.subscriptions.retain(|channel, keys| {
            if keys.remove(&key)
                && let Some(bridge) = bridge
            {
                bridge.subscribers(channel, keys.len());
            }
            !keys.is_empty()
        });
        self.forget_in_requests(key, member.slot).await;
        if let Some(bytes) = encode(&BusToWorker::Left { worker: member.slot }) {
            let keys: Vec<u64> = self.members.keys().copied().collect();
            self.send_to(&keys, bytes).await;
        }
    }

    /// Starts gathering answers for `asker` (a worker, or [`BRIDGE`] for another host) from
    /// `waiting`, and from the other hosts' subscribers of `channel` when it asks a channel that
    /// has some.
    #[allow(clippy::too_many_arguments, reason = "one request's parts, from two kinds of asker")]
    async fn request(
        &mut self,
        asker: u64,
        asker_id: u64,
        from: u32,
        channel: Option<&str>,
        mut waiting: BTreeSet<u64>,
        payload: Vec<u8>,
        timeout: std::time::Duration,
    ) {
        // The bridge has its own bound on the requests of other hosts (`bridge::conn`).
        if asker != BRIDGE && self.requests.asking(asker) >= MAX_PENDING_REQUESTS {
            // Answered at once, as a request none could take: every worker it would have asked
            // is missing.
            let missing = waiting.iter().filter_map(|k| self.members.get(k)).map(|m| m.slot).collect();
            if let Some(member) = self.members.get_mut(&asker)
                && !std::mem::replace(&mut member.asks_logged, true)
            {
                tracing::warn!(
                    worker = member.slot,
                    max = MAX_PENDING_REQUESTS,
                    "bus: the worker has too many requests pending; more are answered at once, all missing"
                );
            }
            let mut pending = Pending::new(asker, asker_id, BTreeSet::new(), tokio::time::Instant::now());
            pending.missing = missing;
            return self.answer(pending).await;
        }
        let request = self.next_request;
        self.next_request += 1;
        if asker != BRIDGE
            && let (Some(bridge), Some(channel)) = (&self.bridge, channel)
            && self.remote.get(channel).is_some_and(|&n| n > 0)
            && bridge.request(request, channel, &payload, timeout)
        {
            waiting.insert(BRIDGE);
        }
        let pending = Pending::new(asker, asker_id, waiting.clone(), tokio::time::Instant::now() + timeout);
        if waiting.is_empty() {
            return self.answer(pending).await;
        }
        self.requests.insert(request, pending);
        if let Some(bytes) = encode(&BusToWorker::Request { id: request, from, payload }) {
            let targets: Vec<u64> = waiting.into_iter().collect();
            self.send_to(&targets, bytes).await;
        }
    }

    /// What the bridge to other hosts says.
    async fn bridge(&mut self, input: BridgeInput) {
        match input {
            BridgeInput::Attach(sink) => self.bridge = Some(sink),
            BridgeInput::Remote(counts) => self.remote = counts,
            BridgeInput::Message { channel, payload, charge } => {
                // Only to the local subscribers: it came from another host, and goes back to none.
                if let Some(subscribers) = self.subscriptions.get(&channel) {
                    self.head.clear();
                    message_head(&channel, REMOTE, payload.len(), &mut self.head);
                    let message = Outgoing { head: Head::new(&self.head), payload };
                    let targets: Vec<u64> = subscribers.iter().copied().collect();
                    for key in targets {
                        if let Some(member) = self.members.get_mut(&key) {
                            enqueue_remote(member, message.clone()).await;
                        }
                    }
                }
                self.done.absorb(charge);
            }
            BridgeInput::Request { id, channel, payload, timeout, charge } => {
                let waiting = self.subscriptions.get(&channel).cloned().unwrap_or_default();
                self.request(BRIDGE, id, REMOTE, Some(&channel), waiting, payload, timeout).await;
                self.done.absorb(charge);
            }
            BridgeInput::Answers { request, answers, missing } => {
                let Some(pending) = self.requests.get_mut(request) else { return };
                if pending.waiting.remove(&BRIDGE) {
                    // Held within the same bound as local answers; over it, an answer counts as
                    // missing.
                    for (from, answer) in answers {
                        if self.held_answers + answer.len() <= MAX_HELD_ANSWERS
                            && pending.held + answer.len() <= MAX_HELD_ANSWERS
                        {
                            self.held_answers += answer.len();
                            pending.held += answer.len();
                            pending.answers.push((from, answer));
                        } else {
                            pending.missing.push(from);
                        }
                    }
                    pending.missing.extend(missing);
                }
                if pending.waiting.is_empty()
                    && let Some(pending) = self.requests.remove(request)
                {
                    self.answer(pending).await;
                }
            }
        }
    }

    /// Subscribes the member `key` to `channel`, within [`MAX_SUBSCRIPTIONS`] and
    /// [`MAX_SUBSCRIBED_BYTES`]: beyond, the subscription is ignored (the worker keeps the others,
    /// and its traffic) and logged once.
    fn subscribe(&mut self, key: u64, channel: String) {
        let Some(member) = self.members.get_mut(&key) else { return };
        if self.subscriptions.get(&channel).is_some_and(|keys| keys.contains(&key)) {
            return;
        }
        if member.subscribed >= MAX_SUBSCRIPTIONS || member.subscribed_bytes + channel.len() > MAX_SUBSCRIBED_BYTES {
            if !std::mem::replace(&mut member.refused_logged, true) {
                tracing::warn!(
                    worker = member.slot,
                    channels = member.subscribed,
                    bytes = member.subscribed_bytes,
                    "bus: the worker subscribes to too many channels; its further subscriptions are ignored"
                );
            }
            return;
        }
        let keys = self.subscriptions.entry(channel.clone()).or_default();
        keys.insert(key);
        member.subscribed += 1;
        member.subscribed_bytes += channel.len();
        if let Some(bridge) = &self.bridge {
            bridge.subscribers(&channel, keys.len());
        }
    }

    async fn frame(&mut self, key: u64, frame: Incoming) {
        let Some(from) = self.members.get(&key).map(|m| m.slot) else { return };
        let frame = match frame {
            Incoming::Publish { channel, payload, echo } => {
                return self.publish(key, from, &channel, payload, echo).await;
            }
            Incoming::Other(frame) => frame,
        };
        match frame {
            BusFromWorker::Subscribe { channel } => self.subscribe(key, channel),
            BusFromWorker::Unsubscribe { channel } => {
                if let Some(keys) = self.subscriptions.get_mut(&channel) {
                    if keys.remove(&key)
                        && let Some(member) = self.members.get_mut(&key)
                    {
                        member.subscribed -= 1;
                        member.subscribed_bytes -= channel.len();
                    }
                    if let Some(bridge) = &self.bridge {
                        bridge.subscribers(&channel, keys.len());
                    }
                    if keys.is_empty() {
                        self.subscriptions.remove(&channel);
                    }
                }
            }
            BusFromWorker::Publish { channel, payload, echo } => {
                self.publish(key, from, &channel, Bytes::from(payload), echo).await;
            }
            BusFromWorker::Send { to, payload } => {
                // The newest process of the slot (during a reload, the one taking over).
                let target = self.members.iter().filter(|(_, m)| m.slot == to).map(|(k, _)| *k).max();
                let (frame, recipient) = match target {
                    Some(target) => (BusToWorker::Direct { from, payload }, target),
                    None => (BusToWorker::Undeliverable { to }, key),
                };
                if let Some(bytes) = encode(&frame) {
                    self.send_to(&[recipient], bytes).await;
                }
            }
            BusFromWorker::Request { id, channel, payload, timeout_ms } => {
                let waiting: BTreeSet<u64> = match &channel {
                    Some(channel) => self.subscriptions.get(channel).cloned().unwrap_or_default(),
                    None => self.members.keys().copied().collect(),
                }
                .into_iter()
                .filter(|&k| k != key)
                .collect();
                let timeout = requests::timeout(timeout_ms, self.default_timeout);
                self.request(key, id, from, channel.as_deref(), waiting, payload, timeout).await;
            }
            BusFromWorker::Reply { id, payload } => {
                let Some(pending) = self.requests.get_mut(id) else { return };
                if pending.waiting.remove(&key) {
                    if self.held_answers + payload.len() <= MAX_HELD_ANSWERS
                        && pending.held + payload.len() <= MAX_HELD_ANSWERS
                    {
                        self.held_answers += payload.len();
                        pending.held += payload.len();
                        pending.answers.push((from, payload));
                    } else {
                        tracing::warn!(
                            worker = from,
                            bytes = payload.len(),
                            "bus: an answer over the limit of held answers counts as missing"
                        );
                        pending.missing.push(from);
                    }
                }
                if pending.waiting.is_empty()
                    && let Some(pending) = self.requests.remove(id)
                {
                    self.answer(pending).await;
                }
            }
            BusFromWorker::Subscribers { seq, channel } => {
                let count = self.subscriptions.get(&channel).map_or(0, |keys| keys.len() as u32);
                // The other hosts' workers count as the local ones do.
                let count = count.saturating_add(self.remote.get(&channel).copied().unwrap_or(0));
                if let Some(bytes) = encode(&BusToWorker::Subscribers { seq, count }) {
                    self.send_to(&[key], bytes).await;
                }
            }
            _ => {}
        }
    }
}

/// Queues a message of another host without waiting: within half of the member's queue (bytes
/// and frames), else it is dropped and counted. A flood from Redis (anyone who can `PUBLISH`)
/// never makes the relay wait, and never takes the room that local messages need.
async fn enqueue_remote(member: &mut Member, bytes: Outgoing) {
    let size = bytes.len();
    if member.queued.load(Ordering::Relaxed) + size > (member.budget / REMOTE_SHARE).max(size)
        || member.queue.capacity() < QUEUE / REMOTE_SHARE
    {
        member.dropped.fetch_add(1, Ordering::Relaxed);
        crate::metrics::bus_dropped();
        return;
    }
    enqueue(member, bytes).await;
}

/// Queues a frame for a member: waits for room while the member makes progress, drops (and
/// counts) once it is stuck.
async fn enqueue(member: &mut Member, mut bytes: Outgoing) {
    let size = bytes.len();
    if member.queued.load(Ordering::Relaxed) > member.budget / 32 && !bytes.payload.is_empty() {
        // A payload shared with the chunk it was read into keeps that chunk alive (up to 32
        // times its size: a chunk is at most two reads, `bus_reader.rs`). A member that falls
        // behind gets its own copy, so what it holds stays within twice its budget.
        bytes.payload = Bytes::copy_from_slice(&bytes.payload);
    }
    let fits = |m: &Member| m.queued.load(Ordering::Relaxed) + size <= m.budget.max(size);
    if member.stuck {
        // Over half of either bound (bytes or frames) it has not read yet: still stuck.
        if member.queued.load(Ordering::Relaxed) > member.budget / 2 || member.queue.capacity() < QUEUE / 2 {
            member.dropped.fetch_add(1, Ordering::Relaxed);
            crate::metrics::bus_dropped();
            return;
        }
        member.stuck = false;
        tracing::info!(worker = member.slot, "bus: the worker reads again");
    }
    // The clock is read only when the member's queue is full: most frames find room at once.
    let mut first_wait = None;
    let mut deadline = || *first_wait.get_or_insert_with(|| tokio::time::Instant::now() + STUCK_AFTER);
    while !fits(member) {
        // Register before checking again, so that a write in between is not missed.
        let room = Arc::clone(&member.room);
        let notified = room.notified();
        if fits(member) {
            break;
        }
        if tokio::time::timeout_at(deadline(), notified).await.is_err() {
            return become_stuck(member);
        }
    }
    // Counted before the writer can see it, so that the writer never subtracts first.
    member.queued.fetch_add(size, Ordering::Relaxed);
    let sent = match member.queue.try_send(bytes) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(bytes)) => {
            match tokio::time::timeout_at(deadline(), member.queue.send(bytes)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(false),
                // Many small messages fill the frame queue before the bytes budget: a member that
                // makes no room in it is as stuck as one over its bytes, and is treated alike, so
                // that it costs the others one pause, not one per message.
                Err(_) => Err(true),
            }
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Err(false),
    };
    if let Err(timed_out) = sent {
        member.queued.fetch_sub(size, Ordering::Relaxed);
        if timed_out {
            return become_stuck(member);
        }
        // The writer is gone (the worker left): count it.
        member.dropped.fetch_add(1, Ordering::Relaxed);
        crate::metrics::bus_dropped();
    }
}

/// The member made no room for [`STUCK_AFTER`]: its messages are dropped from now on, without
/// waiting, until it has read half of what waits for it (see `enqueue`).
fn become_stuck(member: &mut Member) {
    tracing::warn!(worker = member.slot, "bus: the worker does not read; dropping its messages until it does");
    member.stuck = true;
    member.dropped.fetch_add(1, Ordering::Relaxed);
    crate::metrics::bus_dropped();
}

/// Writes a member's frames, as many per syscall as are queued.
async fn write_frames(
    mut socket: tokio::net::unix::OwnedWriteHalf,
    mut frames: mpsc::Receiver<Outgoing>,
    queued: Arc<AtomicUsize>,
    room: Arc<tokio::sync::Notify>,
) {
    let mut batch: Vec<Outgoing> = Vec::new();
    while frames.recv_many(&mut batch, 256).await > 0 {
        // The shared frames go out as they are (vectored), without copying them into one buffer.
        let written: usize = batch.iter().map(Outgoing::len).sum();
        let parts: Vec<&[u8]> =
            batch.iter().flat_map(|f| [&f.head[..], &f.payload[..]]).filter(|part| !part.is_empty()).collect();
        if clusterd_worker::bus_protocol::write_frames(&mut socket, &parts).await.is_err() {
            return;
        }
        batch.clear();
        queued.fetch_sub(written, Ordering::Relaxed);
        room.notify_one();
    }
}
