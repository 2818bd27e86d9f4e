//! Several hosts: clusterd's relays joined through Redis pub/sub (`--bridge redis://…`).
//!
//! ```text
//!  workers ─bus─► relay ──(publish on a bridged channel, request, answers)──► Sink ─► OutQueue
//!                   ▲                                                    (bytes-bounded, drops
//!                   │ Input::Bridge (messages, counts, requests, answers)  the oldest)
//!                   │                                                          │
//!                   └──────────── connection task ◄── SUBSCRIBE connection ◄── Redis ◄─ PUBLISH
//!                                 (membership, asks, echo filter) ──► PUBLISH connection (pipelined)
//! ```
//!
//! To the relay, the bridge is one more member: it publishes what other hosts' workers publish,
//! it stands for the other hosts' subscribers in every count (`Input::Bridge(Remote)`), and it
//! answers the relay's requests on behalf of the other hosts (one answer per remote worker asked,
//! or one missing entry per remote worker of a host that is gone). The relay never waits for it:
//! everything the relay hands over goes into [`queue::OutQueue`] without waiting.
//!
//! A host opens two Redis connections, whatever its number of workers: one subscribed to the
//! bridged channels its workers subscribe to and to the group's own channels, one to publish.
//!
//! What comes from Redis is bounded in bytes all the way: the subscribed connection speaks RESP3
//! and its messages wait in [`inbox::Inbox`] (16 MiB), each is charged to the bus budget
//! (`bus_memory.rs`) before a relay gets it, and it fills at most half of a worker's queue.
//!
//! Exact counts: every host announces, with each heartbeat and at once when they change, how many
//! of its live workers subscribe to each bridged channel. A host is out of every count when it
//! says goodbye, when it is not heard of for `--bridge-host-timeout`, and, for this host, as soon
//! as its own connection to Redis is lost (it reaches nobody then).

pub mod channels;
pub mod codec;
pub mod conn;
pub mod hosts;
pub mod inbox;
pub mod options;
pub mod queue;
pub mod status;

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use self::queue::{Out, OutQueue};
pub use self::status::{BridgeStatus, State};
use bytes::Bytes;

/// The bridge's counters, shared by the relay's side and the connection task.
#[derive(Debug)]
pub struct Stats {
    state: AtomicU8,
    /// Live hosts, this one included.
    hosts: AtomicUsize,
    published: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
    malformed: AtomicU64,
    /// Connections to Redis made again after it was lost (or unreachable at the start).
    reconnects: AtomicU64,
    /// Plain socketioxide-redis servers counted (the most on any channel).
    plain: AtomicUsize,
    /// Other hosts' heartbeats refused: over the bound on what their counts may weigh in all.
    refused: AtomicU64,
}

impl Stats {
    fn new() -> Self {
        Self {
            state: AtomicU8::new(State::Connecting as u8),
            hosts: AtomicUsize::new(1),
            published: AtomicU64::new(0),
            received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            plain: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        }
    }

    fn state(&self) -> State {
        match self.state.load(Ordering::Relaxed) {
            s if s == State::Connected as u8 => State::Connected,
            s if s == State::Down as u8 => State::Down,
            _ => State::Connecting,
        }
    }
}

/// What the dispatcher keeps of the bridge: its status, and the goodbye at a stop.
#[derive(Clone)]
pub struct Handle {
    url: String,
    group: String,
    stats: Arc<Stats>,
    leave: Arc<tokio::sync::Notify>,
    left: Arc<tokio::sync::Notify>,
    sink: Sink,
    /// The relay of Node workers (`--protocol node`), once the supervisor started it.
    node: Arc<std::sync::OnceLock<tokio::sync::mpsc::Sender<crate::node::relay::Input>>>,
}

impl Handle {
    /// Joins the relay of Node workers (`--protocol node`) to the other hosts.
    pub async fn attach_node(&self, relay: tokio::sync::mpsc::Sender<crate::node::relay::Input>) {
        let attach = crate::node::relay::Input::Bridge(crate::node::relay::BridgeInput::Attach(self.sink.clone()));
        if relay.send(attach).await.is_ok() {
            let _ = self.node.set(relay);
        }
    }

    pub fn status(&self) -> BridgeStatus {
        let s = &self.stats;
        BridgeStatus {
            url: self.url.clone(),
            group: self.group.clone(),
            state: s.state(),
            hosts: s.hosts.load(Ordering::Relaxed),
            published: s.published.load(Ordering::Relaxed),
            received: s.received.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            malformed: s.malformed.load(Ordering::Relaxed),
            reconnects: s.reconnects.load(Ordering::Relaxed),
            plain_servers: s.plain.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
        }
    }

    /// Tells the other hosts that this one stops (they count it out at once), waiting at most
    /// `within` for Redis to take the goodbye.
    pub async fn leave(&self, within: std::time::Duration) {
        let left = self.left.notified();
        self.leave.notify_one();
        let _ = tokio::time::timeout(within, left).await;
    }
}

/// What became of a message handed to the bridge.
///
/// `First`: it is the only one waiting, so the connection task takes it at its next turn. A relay
/// that then yields once before writing to its local workers lets that turn (and redis-rs's
/// writer) send the `PUBLISH` first. Otherwise the local writes come first, and on a busy machine
/// the worker that each one wakes may take the CPU from clusterd before the `PUBLISH` leaves:
/// measured on 2 shared cores, 50 to 700 µs between the local write and the `PUBLISH`, on the
/// cross-host path (the longer one). When messages are already waiting (a busy host), the relay
/// does not yield: the connection task is behind anyway, and throughput comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handed {
    /// Not for the other hosts (or dropped: the bridge is down).
    No,
    /// The only message waiting for the connection task.
    First,
    /// Queued behind others.
    Queued,
}

/// The most bridged channels a host announces: what the other hosts take in a heartbeat.
pub const MAX_ANNOUNCED: usize = codec::MAX_CHANNELS;
/// The bytes of the announced channels (see [`announced_cost`]): half of the largest message the
/// other hosts take, the rest left for the heartbeat's other fields.
pub const MAX_ANNOUNCED_BYTES: usize = codec::MAX_MESSAGE / 2;

/// What one channel adds to a heartbeat, at most: its name, and the varints of its length and
/// count.
fn announced_cost(channel: &str) -> usize {
    channel.len() + 16
}

/// The relay's side of the bridge: nothing here waits.
#[derive(Clone)]
pub struct Sink {
    shared: Arc<Shared>,
}

struct Shared {
    out: OutQueue,
    stats: Arc<Stats>,
    /// Whether the connection task can publish right now; when not, cross-host traffic is
    /// dropped at once (Redis pub/sub is at-most-once anyway).
    connected: AtomicBool,
    /// Live local subscribers of each bridged channel, as the relay counts them: at most
    /// [`MAX_ANNOUNCED`] channels, of [`MAX_ANNOUNCED_BYTES`] in all (what a heartbeat carries).
    local: Mutex<std::collections::BTreeMap<String, u32>>,
    /// The bytes `local` stands for in a heartbeat (changed under its lock).
    local_bytes: AtomicUsize,
    /// Whether a channel left out of `local` was logged.
    unannounced_logged: AtomicBool,
    /// Woken when `local` changed.
    local_changed: tokio::sync::Notify,
    /// The application's channels that cross hosts (`--bridge-channels`).
    app: channels::AppChannels,
}

impl Sink {
    /// A local worker published on `channel`; `local` tells whether a worker of this host
    /// subscribes to it (asked only for a channel that crosses hosts). Returns [`Handed::First`]
    /// when the message is the only one waiting for the connection task: see [`Handed`].
    pub fn publish(&self, channel: &str, payload: &Bytes, local: impl FnOnce() -> bool) -> Handed {
        if !channels::bridged(&self.shared.app, channel) || (channels::single_server(channel) && local()) {
            return Handed::No;
        }
        self.push(Out::Publish { channel: channel.to_owned(), payload: payload.clone() })
    }

    /// The number of local subscribers of `channel` changed.
    pub fn subscribers(&self, channel: &str, count: usize) {
        if !channels::bridged(&self.shared.app, channel) {
            return;
        }
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        let cost = announced_cost(channel);
        {
            let mut local = lock(&self.shared.local);
            let bytes = &self.shared.local_bytes;
            if count == 0 {
                if local.remove(channel).is_some() {
                    bytes.fetch_sub(cost, Ordering::Relaxed);
                }
            } else if let Some(known) = local.get_mut(channel) {
                *known = count;
            } else if local.len() < MAX_ANNOUNCED && bytes.load(Ordering::Relaxed) + cost <= MAX_ANNOUNCED_BYTES {
                local.insert(channel.to_owned(), count);
                bytes.fetch_add(cost, Ordering::Relaxed);
            } else {
                // A heartbeat over the other hosts' bounds would be dropped as malformed, and
                // this host counted out: the channels beyond stay on this host instead.
                if !self.shared.unannounced_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        channels = local.len(),
                        max = MAX_ANNOUNCED,
                        "bridge: more bridged channels have local subscribers than a heartbeat can announce; \
                         the others' messages stay on this host"
                    );
                }
                return;
            }
        }
        self.shared.local_changed.notify_one();
    }

    /// A local request waits for the other hosts' subscribers of `channel`: `false` if it cannot
    /// reach them now (the relay then does not wait for them).
    pub fn request(&self, id: u64, channel: &str, payload: &[u8], timeout: std::time::Duration) -> bool {
        if !self.shared.connected.load(Ordering::Relaxed) {
            return false;
        }
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        self.push(Out::Request { id, channel: channel.to_owned(), payload: payload.to_vec(), timeout_ms });
        true
    }

    /// A local Node worker's cluster-adapter message, for the Node workers of the other hosts
    /// (see [`Handed`] for what it returns).
    pub fn node(&self, mode: crate::node::frame::Mode, frame: &Bytes) -> Handed {
        self.push(Out::Node { mode: mode_byte(mode), frame: frame.clone() })
    }

    /// The same, for the Node workers of one other host only.
    pub fn node_to(&self, host: u64, mode: crate::node::frame::Mode, frame: &Bytes) -> Handed {
        self.push(Out::NodeTo { host, mode: mode_byte(mode), frame: frame.clone() })
    }

    /// The local answers to another host's request.
    pub fn answers(&self, id: u64, answers: Vec<(u32, Vec<u8>)>, missing: Vec<u32>) {
        self.push(Out::Answers { id, answers, missing });
    }

    /// A message from another host that failed a relay's stricter check (a Node frame that is not
    /// a cluster-adapter message): counted with the malformed ones.
    pub fn malformed(&self) {
        self.shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
    }

    fn push(&self, item: Out) -> Handed {
        let stats = &self.shared.stats;
        if !self.shared.connected.load(Ordering::Relaxed) {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            return Handed::No;
        }
        let first = self.shared.out.is_empty();
        let dropped = self.shared.out.push(item);
        if dropped > 0 {
            stats.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        if first { Handed::First } else { Handed::Queued }
    }
}

/// How a Node frame's serialization is named on the wire (`codec::Wire::Node`).
fn mode_byte(mode: crate::node::frame::Mode) -> u8 {
    match mode {
        crate::node::frame::Mode::Advanced => 0,
        crate::node::frame::Mode::Json => 1,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts the bridge: it attaches itself to the relay and connects (and keeps reconnecting) in
/// the background; clusterd serves locally whatever Redis does.
/// What comes from Redis is charged to `memory`, the bus budget of local traffic, before it is
/// handed to a relay.
pub fn start(
    config: options::BridgeConfig,
    relay: tokio::sync::mpsc::Sender<crate::relay::Input>,
    memory: Arc<crate::bus_memory::BusMemory>,
) -> Result<Handle, redis::RedisError> {
    let stats = Arc::new(Stats::new());
    let shared = Arc::new(Shared {
        out: OutQueue::new(config.queue),
        stats: Arc::clone(&stats),
        connected: AtomicBool::new(false),
        local: Mutex::default(),
        local_bytes: AtomicUsize::new(0),
        unannounced_logged: AtomicBool::new(false),
        local_changed: tokio::sync::Notify::new(),
        app: config.app.clone(),
    });
    let sink = Sink { shared: Arc::clone(&shared) };
    let handle = Handle {
        url: config.url.redacted().to_owned(),
        group: config.group.clone(),
        stats,
        leave: Arc::new(tokio::sync::Notify::new()),
        left: Arc::new(tokio::sync::Notify::new()),
        sink: sink.clone(),
        node: Arc::default(),
    };
    let client = conn::client(&config)?;
    let task = conn::Task::new(config, client, shared, relay, memory, &handle);
    tokio::spawn(async move {
        // The relay learns of the bridge before anything can come from Redis.
        if task.relay.send(crate::relay::Input::Bridge(crate::relay::BridgeInput::Attach(sink))).await.is_ok() {
            task.run().await;
        }
    });
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(connected: bool) -> Sink {
        let shared = Arc::new(Shared {
            out: OutQueue::new(1 << 20),
            stats: Arc::new(Stats::new()),
            connected: AtomicBool::new(connected),
            local: Mutex::default(),
            local_bytes: AtomicUsize::new(0),
            unannounced_logged: AtomicBool::new(false),
            local_changed: tokio::sync::Notify::new(),
            app: channels::AppChannels::default(),
        });
        Sink { shared }
    }

    #[test]
    fn only_the_message_that_finds_the_bridge_idle_makes_the_relay_yield() {
        let sink = sink(true);
        let payload = Bytes::from_static(b"broadcast");
        let request = "socket.io-request#/#";
        assert_eq!(sink.publish("news", &payload, || false), Handed::No, "an application's channel stays local");
        assert_eq!(sink.publish(request, &payload, || false), Handed::First);
        // The connection task has not taken it yet: the next one queues behind it.
        assert_eq!(sink.publish(request, &payload, || false), Handed::Queued);
        sink.shared.out.take_all();
        assert_eq!(sink.publish(request, &payload, || false), Handed::First);
        // A channel of one server that is here goes nowhere else.
        assert_eq!(sink.publish("socket.io-request#/#q7Z_0a#", &payload, || true), Handed::No);
        let mode = crate::node::frame::Mode::Json;
        assert_eq!(sink.node(mode, &payload), Handed::Queued);

        // Down: dropped and counted, nothing to yield for.
        let down = super::tests::sink(false);
        assert_eq!(down.publish(request, &payload, || false), Handed::No);
        assert_eq!(down.shared.stats.dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_channels_announced_stay_within_what_a_heartbeat_may_carry() {
        let sink = sink(true);
        let name = |i: usize| format!("socket.io-request#/n{i}#");
        for i in 0..MAX_ANNOUNCED + 5 {
            sink.subscribers(&name(i), 1);
        }
        assert_eq!(lock(&sink.shared.local).len(), MAX_ANNOUNCED, "no more channels than a heartbeat takes");
        assert!(!lock(&sink.shared.local).contains_key(&name(MAX_ANNOUNCED)));
        // A channel that goes makes room for one more.
        sink.subscribers(&name(0), 0);
        sink.subscribers(&name(MAX_ANNOUNCED), 2);
        assert_eq!(lock(&sink.shared.local).get(&name(MAX_ANNOUNCED)), Some(&2));

        let sink = super::tests::sink(true);
        let long = |i: usize| format!("socket.io-request#/{i}{}#", "x".repeat(channels::MAX_CHANNEL_NAME - 40));
        for i in 0..MAX_ANNOUNCED_BYTES / channels::MAX_CHANNEL_NAME + 100 {
            sink.subscribers(&long(i), 1);
        }
        let local = lock(&sink.shared.local);
        let bytes: usize = local.keys().map(|c| announced_cost(c)).sum();
        assert!(bytes <= MAX_ANNOUNCED_BYTES && bytes + announced_cost(&long(0)) > MAX_ANNOUNCED_BYTES, "{bytes}");
        assert_eq!(bytes, sink.shared.local_bytes.load(Ordering::Relaxed));
    }
}
