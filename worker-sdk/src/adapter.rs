//! The socketioxide cluster adapter over clusterd's bus: broadcasts, rooms, `fetch_sockets`,
//! acknowledgements and the server count across every worker of the pool.
//!
//! socketioxide-redis's adapter speaks a small pub/sub [`Driver`] interface; this is that driver
//! over the bus. socketioxide's own messages travel as opaque bytes, and the server count is the
//! exact number of live workers subscribed (clusterd knows who is alive).
//!
//! ```ignore
//! type Adapter = clusterd_worker::ClusterAdapter<socketioxide::adapter::Emitter>;
//! let (io_layer, io) = socketioxide::SocketIo::builder()
//!     .with_adapter::<Adapter>(clusterd_worker::cluster_adapter(&worker)?)
//!     .build_layer();
//! io.ns("/", on_connect).await?;
//! ```
//!
//! # A worker that dies during a request
//!
//! For `fetch_sockets`, `rooms` and broadcasts with acknowledgements, socketioxide-redis publishes
//! a request, counts the other servers (`num_serv`), and waits for that many answers until its
//! `request_timeout` (5 s): its answer stream is a `take(n)` that only the timeout ends early. A
//! worker that dies before answering would hold the caller for all of it. clusterd knows who
//! dies, so the driver completes such a request at once, with a *tracker* beside each request:
//!
//! ```text
//!  asking worker's driver            clusterd                  every other worker's driver
//!  publish(request) ──► tracker: bus request on the same channel ──► remembered (bus hook)
//!                   ──► the request, published after it ───────────► its adapter answers
//!                                                                    (published), then the
//!                                                                    driver replies to the tracker
//!  Answers { answers, missing } ◄── once all replied, or at once when one of them left
//! ```
//!
//! A worker replies after it published its answer (for acknowledgements: the count that comes
//! first), and the bus keeps each worker's order, so when the tracker's answers come, every answer
//! a live worker will give has already arrived. If a worker asked left (missing before the
//! deadline), or a worker counted was gone before it could be asked, the driver adds after them,
//! in the adapter's answer stream, an empty answer for each one still missing: no sockets, no
//! rooms, zero acknowledgements, which is the truth about a worker that is gone. The caller gets
//! the live workers' answers at once. When nobody left, nothing is added: the normal path is
//! socketioxide-redis's own.
//!
//! For acknowledgements, one more precaution: socketioxide-core's `AckStream` takes a count
//! without looking again whether it is done, so a count that comes last (after the local
//! acknowledgements) leaves it waiting until its timeout. While a server's count is missing, the
//! driver holds the last acknowledgement it knows until that count (or the completion) has gone
//! to the adapter; at worst until half the wait, so nothing is lost.
//!
//! What it cannot shorten: a worker that dies after it counted its acknowledgements leaves the
//! acknowledgements it had not relayed to the timeout (their socket ids are not known here).
//!
//! The trackers are requests whose payload starts with a reserved prefix; the bus hands them to
//! this driver, so [`Bus::requests`] stays the application's.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socketioxide_core::adapter::remote_packet::{RequestIn, Response, ResponseType, ResponseTypeId};
use socketioxide_core::{Sid, Uid};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use socketioxide_redis::{RedisAdapterConfig, RedisAdapterCtr, read_req_id};
use tokio::sync::mpsc;

use crate::bus::{IncomingRequest, RequestHook};
use crate::{Bus, Error, Subscription, Worker};

/// socketioxide's adapter running over clusterd's bus.
pub type ClusterAdapter<E> = socketioxide_redis::CustomRedisAdapter<E, BusDriver>;

/// The adapter's state for `SocketIo::builder().with_adapter::<ClusterAdapter<_>>(...)`, with
/// socketioxide-redis's default configuration. For another one, pass the same configuration to
/// [`BusDriver::with_config`] and to `RedisAdapterCtr::new_with_driver`.
pub fn cluster_adapter(worker: &Worker) -> Result<RedisAdapterCtr<BusDriver>, Error> {
    let config = RedisAdapterConfig::default();
    Ok(RedisAdapterCtr::new_with_driver(BusDriver::with_config(worker.bus()?, &config), config))
}

/// The start of a tracker's payload (see the module doc); the rest is its deadline in
/// milliseconds (4 bytes, big-endian) and the request's id.
const TRACKER: &[u8] = b"\0clusterd:socketioxide-redis:request\0";
/// socketioxide's default acknowledgement timeout, assumed for a broadcast that names none.
const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// socketioxide-redis's request types (`RequestTypeOut`) that wait for answers.
const BROADCAST_WITH_ACK: u8 = 1;
const ALL_ROOMS: u8 = 3;
const FETCH_SOCKETS: u8 = 6;
/// Completions waiting for one response channel's forwarder.
const SETTLE_QUEUE: usize = 64;

thread_local! {
    /// What `num_serv` just counted, for the publish that follows it. socketioxide-redis counts the
    /// servers and publishes its request in one go, with no await that could yield in between, so
    /// the count and its request meet on one thread.
    static COUNTED: RefCell<Option<(String, u16)>> = const { RefCell::new(None) };
}

/// socketioxide-redis's [`Driver`] over clusterd's bus.
///
/// Clones, and all the drivers of one worker's bus, share their state.
#[derive(Clone, Debug)]
pub struct BusDriver {
    bus: Bus,
    prefix: Arc<str>,
    request_timeout: Duration,
    shared: Arc<Shared>,
}

impl BusDriver {
    /// A driver over this worker's bus, for socketioxide-redis's default configuration.
    pub fn new(bus: Bus) -> Self {
        Self::with_config(bus, &RedisAdapterConfig::default())
    }

    /// A driver for an adapter with this configuration: it needs the channel prefix and the
    /// request timeout to complete the requests that a dying worker would hold up.
    pub fn with_config(bus: Bus, config: &RedisAdapterConfig) -> Self {
        let shared = bus.request_hook(TRACKER, Shared::default);
        Self { bus, prefix: Arc::from(&*config.prefix), request_timeout: config.request_timeout, shared }
    }

    /// Publishes a request that waits for answers, after its tracker, and completes it when the
    /// tracker's answers say that workers are gone.
    async fn ask(
        &self,
        chan: String,
        response_chan: String,
        head: RequestHead,
        expected: Option<usize>,
        request: Vec<u8>,
    ) -> Result<(), Error> {
        let settler = lock(&self.shared.settlers).get(&response_chan).cloned();
        let Some(settler) = settler else {
            // The adapter does not read its answers through this driver: nothing to complete.
            return self.bus.publish(&chan, request).await;
        };
        let timeout = head.deadline(self.request_timeout);
        // Measured before clusterd starts the tracker's deadline: answers that come sooner are not
        // the deadline's, so whoever is missing from them left.
        let started = Instant::now();
        let pending = Pending::new(head.kind, expected, started + timeout / 2);
        lock(&self.shared.pending).insert(head.id, pending);
        let queued = async {
            let answers = self.bus.queue_request(Some(chan.clone()), tracker(head.id, timeout), timeout).await?;
            self.bus.publish(&chan, request).await?;
            Ok::<_, Error>(answers)
        };
        let answers = match queued.await {
            Ok(answers) => answers,
            Err(error) => {
                lock(&self.shared.pending).remove(&head.id);
                return Err(error);
            }
        };
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            // clusterd answers by the deadline; the margin only covers a bus that closed meanwhile.
            let answers = tokio::time::timeout(timeout + Duration::from_secs(1), answers).await;
            let settle = match answers {
                Ok(Ok(answers)) if started.elapsed() < timeout => Settle {
                    id: head.id,
                    early: true,
                    asked: answers.answers.len() + answers.missing.len(),
                    left: answers.missing.len(),
                },
                _ => Settle { id: head.id, early: false, asked: 0, left: 0 },
            };
            if settler.send(settle).await.is_err() {
                lock(&shared.pending).remove(&head.id);
            }
        });
        Ok(())
    }
}

impl Driver for BusDriver {
    type Error = Error;

    fn publish(&self, chan: String, val: Vec<u8>) -> impl Future<Output = Result<(), Self::Error>> + Send {
        // Taken now, in the poll that made the count (see `COUNTED`), not when the future runs.
        let counted = COUNTED.with(|c| c.borrow_mut().take()).filter(|(c, _)| *c == chan).map(|(_, n)| n);
        let driver = self.clone();
        async move {
            match channel(&driver.prefix, &chan) {
                Channel::Request { path, one_server } => {
                    if let Some(head) = waiting_request(&val) {
                        let response_chan = format!("{}-response#{path}#{}#", driver.prefix, head.node_id);
                        // As socketioxide-redis counts: the other servers, or the one it names.
                        let expected =
                            if one_server { Some(1) } else { counted.map(|n| usize::from(n.saturating_sub(1))) };
                        return driver.ask(chan, response_chan, head, expected, val).await;
                    }
                    driver.bus.publish(&chan, val).await
                }
                Channel::Response => {
                    // An answer of this worker's adapter: once it is on its way, the asker's
                    // tracker gets its reply (after it, in the bus's order).
                    let id = read_req_id(&val);
                    driver.bus.publish(&chan, val).await?;
                    if let Some(tracker) = id.and_then(|id| driver.shared.take_tracker(id)) {
                        let _ = tracker.reply(Vec::new()).await;
                    }
                    Ok(())
                }
                Channel::Other => driver.bus.publish(&chan, val).await,
            }
        }
    }

    fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> impl Future<Output = Result<MessageStream<ChanItem>, Self::Error>> + Send {
        let driver = self.clone();
        async move {
            let subscription = driver.bus.subscribe(&chan).await?;
            let (tx, rx) = mpsc::channel(size.max(1));
            // Dropping the subscription (the task's end) unsubscribes from the bus.
            let task = if matches!(channel(&driver.prefix, &chan), Channel::Response) {
                let (settle_tx, settle_rx) = mpsc::channel(SETTLE_QUEUE);
                lock(&driver.shared.settlers).insert(chan.clone(), settle_tx);
                tokio::spawn(forward_answers(subscription, settle_rx, tx, Arc::clone(&driver.shared)))
            } else {
                tokio::spawn(forward(subscription, tx))
            };
            if let Some(previous) = lock(&driver.shared.forwarders).insert(chan, task.abort_handle()) {
                previous.abort();
            }
            Ok(MessageStream::new(rx))
        }
    }

    fn unsubscribe(&self, pat: String) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let shared = Arc::clone(&self.shared);
        async move {
            lock(&shared.settlers).remove(&pat);
            if let Some(task) = lock(&shared.forwarders).remove(&pat) {
                task.abort();
            }
            Ok(())
        }
    }

    fn num_serv(&self, chan: &str) -> impl Future<Output = Result<u16, Self::Error>> + Send {
        let (bus, chan) = (self.bus.clone(), chan.to_owned());
        async move {
            let count = u16::try_from(bus.subscribers(&chan).await?).unwrap_or(u16::MAX);
            COUNTED.with(|c| *c.borrow_mut() = Some((chan, count)));
            Ok(count)
        }
    }
}

/// What a channel is to socketioxide-redis.
#[derive(Debug, PartialEq)]
enum Channel<'a> {
    /// Requests to the servers of the namespace at `path`: all of them, or one.
    Request { path: &'a str, one_server: bool },
    /// Answers to one server's requests.
    Response,
    /// Anything else.
    Other,
}

/// What socketioxide-redis uses `chan` for: `{prefix}-request#{path}#` (to all servers),
/// `{prefix}-request#{path}#{uid}#` (to one) or `{prefix}-response#{path}#{uid}#`.
fn channel<'a>(prefix: &str, chan: &'a str) -> Channel<'a> {
    let Some(rest) = chan.strip_prefix(prefix) else { return Channel::Other };
    if rest.starts_with("-response#") {
        return Channel::Response;
    }
    // A namespace's path holds no `#` (socketioxide-redis refuses it), nor does a server id.
    let Some((path, tail)) = rest.strip_prefix("-request#").and_then(|rest| rest.split_once('#')) else {
        return Channel::Other;
    };
    match tail.strip_suffix('#') {
        None if tail.is_empty() => Channel::Request { path, one_server: false },
        Some(uid) if !uid.is_empty() && !uid.contains('#') => Channel::Request { path, one_server: true },
        _ => Channel::Other,
    }
}

/// The state shared by the drivers of one bus; it is also the bus's hook for the trackers.
#[derive(Debug, Default)]
struct Shared {
    /// The task forwarding each subscribed channel.
    forwarders: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    /// Asking side: the forwarder of each response channel takes the completions.
    settlers: Mutex<HashMap<String, mpsc::Sender<Settle>>>,
    /// Asking side: this worker's requests whose trackers have not answered yet.
    pending: Mutex<HashMap<Sid, Pending>>,
    /// Answering side: the trackers of the requests this worker has not answered yet, with their
    /// deadlines.
    trackers: Mutex<HashMap<Sid, (IncomingRequest, Instant)>>,
}

impl RequestHook for Shared {
    fn handle(&self, request: IncomingRequest) {
        // A tracker comes before its request (the asker sends it first and the bus keeps order),
        // so it is here when the adapter answers. One that is never answered (its request did not
        // come) is forgotten at its deadline, when the asker has stopped waiting for it.
        let Some((id, timeout)) = parse_tracker(&request.payload) else { return };
        tracing::debug!(from = request.from, request = %id, "socket.io request to answer");
        let now = Instant::now();
        let mut trackers = lock(&self.trackers);
        trackers.retain(|_, (_, until)| *until > now);
        trackers.insert(id, (request, now + timeout));
    }
}

impl Shared {
    fn take_tracker(&self, id: Sid) -> Option<IncomingRequest> {
        lock(&self.trackers).remove(&id).map(|(request, _)| request)
    }

    /// Counts an answer to one of this worker's requests as the adapter will, and says what the
    /// forwarder does with it.
    fn route(&self, payload: &[u8]) -> Route {
        let Some(id) = read_req_id(payload) else { return Route::Forward };
        let mut pending = lock(&self.pending);
        let Some(request) = pending.get_mut(&id) else { return Route::Forward };
        let Some((kind, count)) = answer_head(payload) else { return Route::Forward };
        if kind == request.answer_type() as u8 {
            request.received += 1;
            request.announced += u64::from(count.unwrap_or(0));
            // For acknowledgements, a held one is not the last any more.
            return Route::ForwardAndRelease(id);
        }
        if request.kind == BROADCAST_WITH_ACK && kind == ResponseTypeId::BroadcastAck as u8 {
            request.acks += 1;
            // socketioxide-core's `AckStream` consumes a count without looking again whether it
            // is done: a count that comes last, after the local acknowledgements, leaves it waiting
            // until its timeout. So the last acknowledgement known waits for the missing counts.
            let counts_missing = request.expected.is_none_or(|expected| request.received < expected);
            if counts_missing && request.acks >= request.announced {
                return Route::Hold(id, request.hold_until);
            }
        }
        Route::Forward
    }

    /// The empty answers that complete a request whose tracker answered before its deadline.
    fn complete(&self, settle: &Settle) -> Vec<Vec<u8>> {
        let Some(request) = lock(&self.pending).remove(&settle.id) else { return Vec::new() };
        let expected = request.expected.unwrap_or(settle.asked);
        // The deadline's answers (who is missing then may be alive), or everyone asked answered and
        // only they were counted.
        if !settle.early || (settle.left == 0 && expected <= settle.asked) {
            return Vec::new();
        }
        let missing = expected.saturating_sub(request.received);
        if missing == 0 {
            return Vec::new();
        }
        tracing::debug!(
            request = %settle.id,
            left = settle.left,
            missing,
            "workers left before answering a socket.io request: completing it with what arrived"
        );
        // Nobody reads the id of the answering server; `Uid::ZERO` would not even decode.
        let empty = Response::<()> { node_id: Uid::new(), r#type: request.empty_answer() };
        match rmp_serde::to_vec(&(settle.id, empty)) {
            Ok(bytes) => vec![bytes; missing],
            Err(error) => {
                tracing::warn!(%error, "cannot encode an empty socket.io answer");
                Vec::new()
            }
        }
    }
}

/// What the forwarder of a response channel does with an answer.
#[derive(Debug, PartialEq)]
enum Route {
    /// Forwards it.
    Forward,
    /// Forwards it, then the acknowledgement held for this request, if any.
    ForwardAndRelease(Sid),
    /// Holds it (an acknowledgement) until this request's next count, its completion, or then.
    Hold(Sid, Instant),
}

/// One of this worker's requests, while its tracker has not answered.
#[derive(Debug)]
struct Pending {
    /// Its type (socketioxide-redis's `RequestTypeOut` number).
    kind: u8,
    /// How many answers the adapter waits for, when known (see `COUNTED`).
    expected: Option<usize>,
    /// The answers that arrived, of the type the adapter counts (for acknowledgements: counts).
    received: usize,
    /// Acknowledgements: how many the counts announced, and how many arrived.
    announced: u64,
    acks: u64,
    /// An acknowledgement is held no later than this, well before the adapter stops waiting.
    hold_until: Instant,
}

impl Pending {
    fn new(kind: u8, expected: Option<usize>, hold_until: Instant) -> Self {
        Self { kind, expected, received: 0, announced: 0, acks: 0, hold_until }
    }

    /// The type of the first (for acknowledgements: the only counted) answer of each server.
    fn answer_type(&self) -> ResponseTypeId {
        match self.kind {
            BROADCAST_WITH_ACK => ResponseTypeId::BroadcastAckCount,
            ALL_ROOMS => ResponseTypeId::AllRooms,
            _ => ResponseTypeId::FetchSockets,
        }
    }

    /// The answer of a server that is gone.
    fn empty_answer(&self) -> ResponseType<()> {
        match self.kind {
            BROADCAST_WITH_ACK => ResponseType::BroadcastAckCount(0),
            ALL_ROOMS => ResponseType::AllRooms(HashSet::new()),
            _ => ResponseType::FetchSockets(Vec::new()),
        }
    }
}

/// A tracker answered: before its deadline (`early`), `asked` workers were asked and `left` of
/// them left; otherwise it is only over.
#[derive(Debug)]
struct Settle {
    id: Sid,
    early: bool,
    asked: usize,
    left: usize,
}

/// The start of a socketioxide-redis request: `[node_id, id, type, packet, rooms, opts,
/// ack_timeout_ms?]` in msgpack.
#[derive(Debug)]
struct RequestHead {
    node_id: Uid,
    id: Sid,
    kind: u8,
    /// For a broadcast with acknowledgements: its acknowledgement timeout, if it names one.
    ack_timeout: Option<Duration>,
}

impl RequestHead {
    /// How long the adapter waits for the answers.
    fn deadline(&self, request_timeout: Duration) -> Duration {
        match self.kind {
            BROADCAST_WITH_ACK => request_timeout.saturating_add(self.ack_timeout.unwrap_or(DEFAULT_ACK_TIMEOUT)),
            _ => request_timeout,
        }
    }
}

/// The head of a request that waits for answers; `None` for the others (broadcasts, room
/// changes), found without decoding their packet.
fn waiting_request(bytes: &[u8]) -> Option<RequestHead> {
    let mut rd = bytes;
    if rmp::decode::read_array_len(&mut rd).ok()? < 3 {
        return None;
    }
    let (node_id, rd) = rmp::decode::read_str_from_slice(rd).ok()?;
    let (id, mut rd) = rmp::decode::read_str_from_slice(rd).ok()?;
    let kind: u8 = rmp::decode::read_int(&mut rd).ok()?;
    if !matches!(kind, BROADCAST_WITH_ACK | ALL_ROOMS | FETCH_SOCKETS) {
        return None;
    }
    let ack_timeout =
        if kind == BROADCAST_WITH_ACK { rmp_serde::from_slice::<RequestIn>(bytes).ok()?.ack_timeout } else { None };
    Some(RequestHead { node_id: node_id.parse().ok()?, id: id.parse().ok()?, kind, ack_timeout })
}

/// The type of an answer, `(id, Response { node_id, type: (type, data) })` in msgpack, and for
/// a count of acknowledgements, the count.
fn answer_head(mut rd: &[u8]) -> Option<(u8, Option<u32>)> {
    for _ in 0..2 {
        if rmp::decode::read_array_len(&mut rd).ok()? != 2 {
            return None;
        }
        read_id::<Uid>(&mut rd)?; // The request's id, then the answering server's.
    }
    if rmp::decode::read_array_len(&mut rd).ok()? != 2 {
        return None;
    }
    let kind: u8 = rmp::decode::read_int(&mut rd).ok()?;
    let count =
        if kind == ResponseTypeId::BroadcastAckCount as u8 { Some(rmp::decode::read_int(&mut rd).ok()?) } else { None };
    Some((kind, count))
}

/// An id (a short msgpack string).
fn read_id<T: std::str::FromStr>(rd: &mut &[u8]) -> Option<T> {
    let mut buffer = [0u8; 64];
    rmp::decode::read_str(rd, &mut buffer).ok()?.parse().ok()
}

fn tracker(id: Sid, timeout: Duration) -> Vec<u8> {
    let millis = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    let mut payload = TRACKER.to_vec();
    payload.extend_from_slice(&millis.to_be_bytes());
    payload.extend_from_slice(id.as_str().as_bytes());
    payload
}

fn parse_tracker(payload: &[u8]) -> Option<(Sid, Duration)> {
    let rest = payload.strip_prefix(TRACKER)?;
    let (millis, id) = rest.split_first_chunk::<4>()?;
    let id = std::str::from_utf8(id).ok()?.parse().ok()?;
    Some((id, Duration::from_millis(u64::from(u32::from_be_bytes(*millis)))))
}

/// Forwards a channel's messages to the adapter.
async fn forward(mut subscription: Subscription, tx: mpsc::Sender<ChanItem>) {
    let name = subscription.channel().to_owned();
    while let Some(message) = subscription.next().await {
        if tx.send((name.clone(), message.payload.into())).await.is_err() {
            return;
        }
    }
}

/// Forwards the answers to this worker's requests to the adapter, counting them, and adds the
/// empty answers that complete a request. A completion is taken only when no message is waiting:
/// the answers that came before its tracker's answers are forwarded (and counted) first.
async fn forward_answers(
    mut subscription: Subscription,
    mut settles: mpsc::Receiver<Settle>,
    tx: mpsc::Sender<ChanItem>,
    shared: Arc<Shared>,
) {
    let name = subscription.channel().to_owned();
    let send = |answer: Vec<u8>| tx.send((name.clone(), answer));
    // The acknowledgement held for a request (see `Shared::route`), and until when.
    let mut held: HashMap<Sid, (Vec<u8>, Instant)> = HashMap::new();
    loop {
        let next_release = held.values().map(|(_, until)| *until).min();
        let release_at = tokio::time::Instant::from_std(next_release.unwrap_or_else(Instant::now));
        let sent = tokio::select! {
            biased;
            message = subscription.next() => {
                let Some(message) = message else { return };
                let mut out = Vec::with_capacity(2);
                let payload: Vec<u8> = message.payload.into();
                match shared.route(&payload) {
                    Route::Forward => out.push(payload),
                    Route::ForwardAndRelease(id) => {
                        out.push(payload);
                        out.extend(held.remove(&id).map(|(ack, _)| ack));
                    }
                    Route::Hold(id, until) => out.extend(held.insert(id, (payload, until)).map(|(ack, _)| ack)),
                }
                out
            }
            Some(settle) = settles.recv() => {
                let mut out = shared.complete(&settle);
                out.extend(held.remove(&settle.id).map(|(ack, _)| ack));
                out
            }
            () = tokio::time::sleep_until(release_at), if next_release.is_some() => {
                let now = Instant::now();
                let due: Vec<Sid> = held.iter().filter(|(_, (_, until))| *until <= now).map(|(id, _)| *id).collect();
                due.into_iter().filter_map(|id| held.remove(&id)).map(|(ack, _)| ack).collect()
            }
        };
        for answer in sent {
            if send(answer).await.is_err() {
                return;
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use socketioxide_core::adapter::remote_packet::{RequestOut, RequestTypeOut};
    use socketioxide_core::adapter::{BroadcastOptions, Room};
    use socketioxide_core::packet::Packet;
    use socketioxide_core::{Str, Value};

    use super::*;

    #[test]
    fn the_head_of_socketioxide_redis_requests_is_read_without_the_packet() {
        let (node, opts) = (Uid::new(), BroadcastOptions::default());
        let fetch = RequestOut::new(node, RequestTypeOut::FetchSockets, &opts);
        let head = waiting_request(&rmp_serde::to_vec(&fetch).unwrap()).unwrap();
        assert_eq!((head.node_id, head.id, head.kind), (node, fetch.id, FETCH_SOCKETS));
        let rooms = RequestOut::new(node, RequestTypeOut::AllRooms, &opts);
        assert_eq!(waiting_request(&rmp_serde::to_vec(&rooms).unwrap()).unwrap().kind, ALL_ROOMS);
        assert_eq!(head.deadline(Duration::from_secs(5)), Duration::from_secs(5));

        let packet = Packet::event(Str::from("/"), Value::Str(Str::from("[\"question\"]"), None));
        let ask = RequestOut::new(node, RequestTypeOut::BroadcastWithAck(&packet), &opts)
            .with_ack_timeout(Some(Duration::from_millis(1500)));
        let head = waiting_request(&rmp_serde::to_vec(&ask).unwrap()).unwrap();
        assert_eq!((head.kind, head.ack_timeout), (BROADCAST_WITH_ACK, Some(Duration::from_millis(1500))));
        assert_eq!(head.deadline(Duration::from_secs(5)), Duration::from_millis(6500));

        // Requests that wait for nothing, and garbage, are not tracked.
        let broadcast = RequestOut::new(node, RequestTypeOut::Broadcast(&packet), &opts);
        assert!(waiting_request(&rmp_serde::to_vec(&broadcast).unwrap()).is_none());
        let rooms = vec![Room::from("a")];
        let join = RequestOut::new(node, RequestTypeOut::AddSockets(&rooms), &opts);
        assert!(waiting_request(&rmp_serde::to_vec(&join).unwrap()).is_none());
        assert!(waiting_request(b"\x93not msgpack").is_none());
    }

    #[test]
    fn channels_are_told_apart_as_socketioxide_redis_names_them() {
        let chan = |name| channel("socket.io", name);
        assert_eq!(chan("socket.io-request#/#"), Channel::Request { path: "/", one_server: false });
        assert_eq!(chan("socket.io-request#/chat#q7Z_0a#"), Channel::Request { path: "/chat", one_server: true });
        assert_eq!(chan("socket.io-response#/#q7Z_0a#"), Channel::Response);
        for other in
            ["socket.io-request#/", "socket.io-request#/#a#b#", "socket.io-request#/##", "news", "app-request#/#"]
        {
            assert_eq!(chan(other), Channel::Other, "{other}");
        }
    }

    #[test]
    fn empty_answers_read_as_socketioxide_redis_reads_answers() {
        let shared = Shared::default();
        for (kind, answer) in [
            (FETCH_SOCKETS, ResponseTypeId::FetchSockets),
            (ALL_ROOMS, ResponseTypeId::AllRooms),
            (BROADCAST_WITH_ACK, ResponseTypeId::BroadcastAckCount),
        ] {
            let id = Sid::new();
            lock(&shared.pending).insert(id, Pending::new(kind, None, Instant::now()));
            let added = shared.complete(&Settle { id, early: true, asked: 1, left: 1 });
            assert_eq!(added.len(), 1);
            // As socketioxide-redis routes and decodes them.
            assert_eq!(read_req_id(&added[0]), Some(id));
            assert_eq!(answer_head(&added[0]).map(|(kind, _)| kind), Some(answer as u8));
            let (_, decoded): (Sid, Response<socketioxide_core::adapter::RemoteSocketData>) =
                rmp_serde::from_slice(&added[0]).unwrap();
            assert_eq!(ResponseTypeId::from(&decoded.r#type), answer);
            match decoded.r#type {
                ResponseType::FetchSockets(sockets) => assert!(sockets.is_empty()),
                ResponseType::AllRooms(rooms) => assert!(rooms.is_empty()),
                ResponseType::BroadcastAckCount(count) => assert_eq!(count, 0),
                ResponseType::BroadcastAck(_) => unreachable!(),
            }
        }
    }

    #[test]
    fn trackers_carry_their_request_and_deadline() {
        let id = Sid::new();
        let payload = tracker(id, Duration::from_millis(6500));
        assert_eq!(parse_tracker(&payload), Some((id, Duration::from_millis(6500))));
        assert_eq!(parse_tracker(b"an application's request"), None);
        assert_eq!(parse_tracker(&payload[..TRACKER.len() + 2]), None);
    }

    fn answer(id: Sid, r#type: ResponseType<()>) -> Vec<u8> {
        rmp_serde::to_vec(&(id, Response { node_id: Uid::new(), r#type })).unwrap()
    }

    #[test]
    fn completion_adds_an_empty_answer_for_each_one_missing_and_only_when_workers_are_gone() {
        let shared = Shared::default();
        let pend = |expected| Pending::new(FETCH_SOCKETS, expected, Instant::now());

        // Three asked, one left: the two answers arrived, one empty answer completes it.
        let id = Sid::new();
        lock(&shared.pending).insert(id, pend(Some(3)));
        assert_eq!(shared.route(&answer(id, ResponseType::FetchSockets(Vec::new()))), Route::ForwardAndRelease(id));
        assert_eq!(shared.route(&answer(id, ResponseType::AllRooms(HashSet::new()))), Route::Forward); // not counted
        shared.route(&answer(id, ResponseType::FetchSockets(Vec::new())));
        let added = shared.complete(&Settle { id, early: true, asked: 3, left: 1 });
        assert_eq!(added.len(), 1);
        assert_eq!(answer_head(&added[0]), Some((ResponseTypeId::FetchSockets as u8, None)));
        assert!(lock(&shared.pending).is_empty());

        // Nobody left and everyone counted was asked: nothing is added, whatever arrived.
        let id = Sid::new();
        lock(&shared.pending).insert(id, pend(Some(2)));
        assert!(shared.complete(&Settle { id, early: true, asked: 2, left: 0 }).is_empty());

        // Answers at the deadline: nothing is added (a worker missing then may be alive).
        let id = Sid::new();
        lock(&shared.pending).insert(id, pend(Some(2)));
        assert!(shared.complete(&Settle { id, early: false, asked: 0, left: 0 }).is_empty());
        assert!(lock(&shared.pending).is_empty());

        // A worker counted was gone before it was asked: its answer is added.
        let id = Sid::new();
        lock(&shared.pending).insert(id, pend(Some(2)));
        shared.route(&answer(id, ResponseType::FetchSockets(Vec::new())));
        assert_eq!(shared.complete(&Settle { id, early: true, asked: 1, left: 0 }).len(), 1);

        // Without the count, the workers asked are the ones expected.
        let id = Sid::new();
        lock(&shared.pending).insert(id, pend(None));
        assert_eq!(shared.complete(&Settle { id, early: true, asked: 2, left: 2 }).len(), 2);
    }

    #[test]
    fn the_last_acknowledgement_known_waits_for_the_missing_counts() {
        let shared = Shared::default();
        let (id, until) = (Sid::new(), Instant::now());
        lock(&shared.pending).insert(id, Pending::new(BROADCAST_WITH_ACK, Some(2), until));
        let ack = |text: &str| {
            answer(id, ResponseType::BroadcastAck((Sid::new(), Ok(Value::Str(Str::from(text.to_owned()), None)))))
        };
        // One server counts two acknowledgements; the other has not counted yet.
        assert_eq!(shared.route(&answer(id, ResponseType::BroadcastAckCount(2))), Route::ForwardAndRelease(id));
        assert_eq!(shared.route(&ack("first")), Route::Forward);
        assert_eq!(shared.route(&ack("second")), Route::Hold(id, until));
        // The other count (real, or added for a worker that left) comes before it.
        assert_eq!(shared.route(&answer(id, ResponseType::BroadcastAckCount(0))), Route::ForwardAndRelease(id));

        // Once every server counted, nothing waits.
        let id = Sid::new();
        lock(&shared.pending).insert(id, Pending::new(BROADCAST_WITH_ACK, Some(1), until));
        shared.route(&answer(id, ResponseType::BroadcastAckCount(1)));
        let last = answer(id, ResponseType::BroadcastAck((Sid::new(), Ok(Value::Str(Str::from("only"), None)))));
        assert_eq!(shared.route(&last), Route::Forward);
        // Answers to requests this worker does not track go through.
        assert_eq!(shared.route(&answer(Sid::new(), ResponseType::BroadcastAckCount(1))), Route::Forward);
    }
}
