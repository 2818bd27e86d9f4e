//! The connection task: the two Redis connections, reconnection, membership, asks across hosts,
//! and the filter that keeps a host from delivering its own messages twice.
//!
//! One task owns all of it, so nothing here is shared but the [`super::Sink`]'s queue and
//! counters. Every Redis operation has a deadline ([`Task::deadline`]), and a PING goes to both
//! connections every heartbeat: a Redis that stops answering (SIGSTOP, a partition) is found out
//! within two heartbeats, not when TCP gives up.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use tokio::sync::{Notify, mpsc};

use super::codec::{HostId, Wire};
use super::hosts::{Change, Heard, Hosts};
use super::inbox::{Inbox, MAX_READ_AHEAD};
use super::options::BridgeConfig;
use super::queue::Out;
use super::{Shared, State, channels};
use crate::bus_memory::{BusMemory, Charge};
use crate::relay::{BridgeInput, Input, MAX_HELD_ANSWERS, REMOTE};

/// The first wait before connecting again; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest wait between attempts: Redis back means the bridge back within about this.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The shortest deadline of a Redis operation.
const MIN_DEADLINE: Duration = Duration::from_millis(500);
/// Items taken off the queue for one pipeline of PUBLISHes.
const BATCH: usize = 512;
/// Pipelines of PUBLISHes sent and not answered yet, at most. The connection task goes on
/// receiving while Redis answers (it no longer waits for the answer in place); what the relay
/// hands over meanwhile waits in the bytes-bounded queue and leaves in the next pipeline, so a
/// busy host sends few large pipelines instead of many small ones (more in flight measured more
/// CPU per delivery, for no gain in latency: benches/bridge.rs, README's bridge table).
const MAX_IN_FLIGHT: usize = 1;
/// How long a published message's echo is awaited before it is forgotten.
const ECHO_TTL: Duration = Duration::from_secs(10);
/// The most echoes awaited on one channel.
const MAX_ECHOES: usize = 64 * 1024;
/// The most other hosts a host keeps track of; a group is a few dozen hosts at most, so more are
/// forged announcements.
const MAX_HOSTS: usize = 1024;
/// The most requests of other hosts being answered here at once.
const MAX_INBOUND: usize = 64 * 1024;
/// How long a message from Redis may wait for its share of the bus budget, and then for room in
/// its relay's input, before it is dropped. After one such wait ran out, messages that find no
/// room are dropped at once until one finds room again, so the connection task keeps taking from
/// the read-ahead ([`Inbox`], bounded in bytes; what overflows it is dropped there).
const INCOMING_WAIT: Duration = Duration::from_millis(500);
/// Room kept for the start of a bus frame (its channel, the sender, lengths) beside a message's
/// payload: a message from Redis that would not fit a bus frame with it is refused.
const FRAME_SLACK: usize = 64;
/// At most one log line of a kind (malformed messages, refused hosts) in this long: what anyone
/// who can `PUBLISH` sends must not fill the log.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// After the relay's copy of the remote counts was rebuilt in a time `t`, the next rebuild waits
/// at least `REMOTE_PAUSE × t`: with the drop of the copy it replaces (about as long), rebuilding
/// takes at most about a tenth of clusterd's one thread, however fast other hosts' counts change.
/// Real counts (a few thousand channels) take microseconds: no wait anyone notices.
const REMOTE_PAUSE: u32 = 19;

/// Builds the Redis client: with `--bridge-ca`, a `rediss://` client that trusts that CA (and only
/// it); otherwise the system's roots for `rediss://`.
///
/// RESP3 (Redis 6 or later): pub/sub messages arrive as pushes handed to [`Inbox`], which bounds
/// in bytes what waits for the connection task (redis-rs's RESP2 pub/sub queues without bound).
///
/// TCP_NODELAY: Nagle's algorithm would hold back a PUBLISH sent while an earlier write (a
/// heartbeat, a PING) is not acknowledged yet.
pub fn client(config: &BridgeConfig) -> Result<redis::Client, redis::RedisError> {
    let info = redis::IntoConnectionInfo::into_connection_info(config.url.secret())?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    let info = {
        let resp3 = info.redis_settings().clone().set_protocol(redis::ProtocolVersion::RESP3);
        info.set_redis_settings(resp3)
    };
    match &config.ca {
        Some(ca) => {
            let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(ca.clone()) };
            redis::Client::build_with_tls(info, certificates)
        }
        None => redis::Client::open(info),
    }
}

/// The answer to a pipeline of PUBLISHes, with its deadline inside.
type Reply = Pin<Box<dyn Future<Output = redis::RedisResult<()>> + Send>>;

/// A pipeline sent and not answered yet: its answer, and how many messages it published.
struct InFlight {
    reply: Reply,
    published: u64,
}

/// A local request waiting for other hosts.
struct Ask {
    waiting: BTreeMap<HostId, u32>,
    answers: Vec<(u32, Vec<u8>)>,
    missing: Vec<u32>,
    until: Instant,
    /// Bytes of `answers`.
    held: usize,
    /// Plain socketioxide-redis servers were asked too: their answers cannot be tracked, so the
    /// ask is never completed early (socketioxide's own count of answers ends it).
    foreign: bool,
}

/// One more subscription of the request channels, so that `PUBSUB NUMSUB` counts every worker of
/// this host (see `Task::count_foreign`). What it receives is dropped as redis-rs reads it.
struct Shadow {
    connection: MultiplexedConnection,
    subscribed: BTreeSet<String>,
}

/// Why a connection ended.
enum End {
    Lost(String),
    Stop,
}

/// The live connections.
struct Live {
    publisher: MultiplexedConnection,
    /// Subscribed (RESP3): what Redis sends it waits in `inbox`, bounded in bytes.
    subscriber: MultiplexedConnection,
    inbox: Arc<Inbox>,
    /// Bridged channels subscribed on Redis.
    subscribed: BTreeSet<String>,
    /// Per channel: the hashes of this host's messages whose echo has not come back yet.
    echoes: HashMap<String, VecDeque<(u64, Instant)>>,
    shadows: Vec<Shadow>,
    /// Pipelines sent, oldest first (Redis answers them in order).
    in_flight: VecDeque<InFlight>,
}

pub(super) struct Task {
    config: BridgeConfig,
    client: redis::Client,
    shared: Arc<Shared>,
    pub relay: mpsc::Sender<Input>,
    leave: Arc<Notify>,
    left: Arc<Notify>,
    node: Arc<std::sync::OnceLock<mpsc::Sender<crate::node::relay::Input>>>,
    me: HostId,
    channels: OwnChannels,
    hosts: Hosts,
    asks: HashMap<u64, Ask>,
    /// Bytes of the answers the asks hold, all together (at most [`MAX_HELD_ANSWERS`]).
    held_answers: usize,
    /// Other hosts' requests being answered here: the relay's id for it → (host, its id, until).
    inbound: HashMap<u64, (HostId, u64, Instant)>,
    next_inbound: u64,
    /// The relay's remote counts are out of date: sent at [`Task::remote_next`].
    remote_dirty: bool,
    /// The earliest time the relay's remote counts may be rebuilt again ([`REMOTE_PAUSE`]).
    remote_next: Option<Instant>,
    refused_log: PacedLog,
    state: State,
    /// Whether this host shadows its request channels (plain socketioxide-redis servers are
    /// around); once on, it stays on.
    shadowed: bool,
    /// Plain socketioxide-redis servers per channel, as counted, and the last sample.
    foreign: HashMap<String, u32>,
    foreign_sample: HashMap<String, u32>,
    malformed_log: PacedLog,
    /// What comes from Redis is charged to the bus budget before a relay gets it.
    memory: Arc<BusMemory>,
    /// A message from Redis waited [`INCOMING_WAIT`] in vain (for the bus budget, for the relay,
    /// for the Node relay), and none found room since: the next ones that find none are dropped
    /// without waiting.
    congested: Congested,
}

#[derive(Default)]
struct Congested {
    budget: bool,
    relay: bool,
    node: bool,
}

struct OwnChannels {
    hosts: String,
    requests: String,
    mine: String,
    node: String,
}

impl Task {
    pub(super) fn new(
        config: BridgeConfig,
        client: redis::Client,
        shared: Arc<Shared>,
        relay: mpsc::Sender<Input>,
        memory: Arc<BusMemory>,
        handle: &super::Handle,
    ) -> Self {
        let me = host_id();
        let channels = OwnChannels {
            hosts: channels::hosts(&config.group),
            requests: channels::requests(&config.group),
            mine: channels::host(&config.group, me),
            node: channels::node(&config.group),
        };
        Self {
            config,
            client,
            shared,
            relay,
            leave: Arc::clone(&handle.leave),
            left: Arc::clone(&handle.left),
            node: Arc::clone(&handle.node),
            me,
            channels,
            hosts: Hosts::default(),
            asks: HashMap::new(),
            held_answers: 0,
            inbound: HashMap::new(),
            next_inbound: 1,
            remote_dirty: false,
            remote_next: None,
            refused_log: PacedLog::default(),
            state: State::Connecting,
            shadowed: false,
            foreign: HashMap::new(),
            foreign_sample: HashMap::new(),
            malformed_log: PacedLog::default(),
            memory,
            congested: Congested::default(),
        }
    }

    /// A heartbeat's period: a third of the host timeout.
    fn tick(&self) -> Duration {
        self.config.host_timeout / 3
    }

    /// The deadline of one Redis operation (connecting, a pipeline, a PING).
    fn deadline(&self) -> Duration {
        self.tick().max(MIN_DEADLINE)
    }

    pub(super) async fn run(mut self) {
        let url = self.config.url.redacted().to_owned();
        tracing::info!(url, group = %self.config.group, host = %format!("{:016x}", self.me), "bridge: connecting");
        let mut backoff = BACKOFF_MIN;
        loop {
            let error = match tokio::time::timeout(self.deadline() * 2, self.connect()).await {
                Ok(Ok(live)) => {
                    if self.state == State::Down {
                        self.shared.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    self.set_state(State::Connected);
                    tracing::info!(url, "bridge: connected");
                    let since = Instant::now();
                    let end = self.serve(live).await;
                    // A connection that held for a heartbeat was a real one: the next attempt is
                    // quick again. One that fails at once keeps the backoff growing.
                    if since.elapsed() >= self.tick() {
                        backoff = BACKOFF_MIN;
                    }
                    match end {
                        End::Stop => break,
                        End::Lost(error) => error,
                    }
                }
                Ok(Err(error)) => error.to_string(),
                Err(_) => "no answer in time".to_owned(),
            };
            if self.state != State::Down {
                tracing::warn!(url, %error, "bridge: Redis unreachable; serving locally, dropping cross-host messages, retrying");
                self.set_state(State::Down);
            }
            self.down().await;
            let leave = self.leave.notified();
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = leave => break,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        self.left.notify_one();
    }

    fn set_state(&mut self, state: State) {
        self.state = state;
        self.shared.stats.state.store(state as u8, Ordering::Relaxed);
    }

    async fn connect(&mut self) -> redis::RedisResult<Live> {
        let settings = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.deadline()))
            .set_response_timeout(Some(self.deadline()));
        let publisher = self.client.get_multiplexed_async_connection_with_config(&settings).await?;
        let inbox = Arc::new(Inbox::new(MAX_READ_AHEAD, Arc::clone(&self.shared.stats)));
        let pushes = {
            let inbox = Arc::clone(&inbox);
            move |info: redis::PushInfo| {
                inbox.push(info);
                Ok::<(), std::convert::Infallible>(())
            }
        };
        // No response timeout of redis-rs's own here: every operation on it has a deadline of the
        // bridge's, and a PING's late answer may be no failure (see `periodic`).
        let subscribing =
            redis::AsyncConnectionConfig::new().set_connection_timeout(Some(self.deadline())).set_push_sender(pushes);
        let mut subscriber = self.client.get_multiplexed_async_connection_with_config(&subscribing).await?;
        let own = [&self.channels.hosts, &self.channels.requests, &self.channels.mine, &self.channels.node];
        subscriber.subscribe(&own).await?;
        let mut live = Live {
            publisher,
            subscriber,
            inbox,
            subscribed: BTreeSet::new(),
            echoes: HashMap::new(),
            shadows: Vec::new(),
            in_flight: VecDeque::new(),
        };
        self.sync_subscriptions(&mut live).await?;
        self.shared.connected.store(true, Ordering::Relaxed);
        let hello = Wire::Hello { host: self.me, counts: self.local_counts(), shadowed: self.shadowed };
        self.publish_now(&mut live, &self.channels.hosts.clone(), hello.encode()).await?;
        Ok(live)
    }

    /// Serves one connection until it is lost or clusterd stops.
    async fn serve(&mut self, mut live: Live) -> End {
        let mut heartbeat = tokio::time::interval(self.tick());
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shared = Arc::clone(&self.shared);
        let leave = Arc::clone(&self.leave);
        let inbox = Arc::clone(&live.inbox);
        loop {
            // The relay's counts changed while a rebuild had to wait ([`REMOTE_PAUSE`]).
            let remote_due = self.remote_dirty.then(|| self.remote_next.unwrap_or_else(Instant::now));
            let remote_at = remote_due.unwrap_or_else(Instant::now).into();
            let result = tokio::select! {
                () = leave.notified() => {
                    let goodbye = Wire::Leave { host: self.me }.encode();
                    let _ = self.publish_now(&mut live, &self.channels.hosts.clone(), goodbye).await;
                    return End::Stop;
                }
                message = inbox.next() => match message {
                    Some(message) => self.incoming(&mut live, &message).await,
                    None => Err(redis::RedisError::from(std::io::Error::other("the connection closed"))),
                },
                () = shared.out.ready.notified() => self.flush(&mut live).await,
                result = oldest_reply(&mut live.in_flight), if !live.in_flight.is_empty() => match result {
                    Ok(published) => {
                        self.shared.stats.published.fetch_add(published, Ordering::Relaxed);
                        // A pipeline fewer in flight: what waited for room goes now.
                        self.flush(&mut live).await
                    }
                    Err(error) => Err(error),
                },
                () = shared.local_changed.notified() => match self.sync_subscriptions(&mut live).await {
                    Ok(()) => self.heartbeat(&mut live).await,
                    Err(error) => Err(error),
                },
                _ = heartbeat.tick() => self.periodic(&mut live).await,
                () = tokio::time::sleep_until(remote_at), if remote_due.is_some() => {
                    self.send_remote().await;
                    Ok(())
                }
            };
            if let Err(error) = result {
                return End::Lost(error.to_string());
            }
        }
    }

    /// Every heartbeat: say this host is alive, check that Redis answers, and count out the hosts
    /// not heard of.
    async fn periodic(&mut self, live: &mut Live) -> redis::RedisResult<()> {
        self.heartbeat(live).await?;
        let deadline = self.deadline();
        let silent = || std::io::Error::other(format!("no answer to PING within {deadline:?}"));
        // Redis answers the subscribed connection's PING after the messages it queued for it
        // before: under a flood the answer is late, but the messages coming meanwhile show that
        // Redis is alive (a frozen Redis sends nothing).
        let heard = live.inbox.heard();
        let command = redis::cmd("PING");
        let ping = command.query_async::<redis::Value>(&mut live.subscriber);
        match tokio::time::timeout(deadline, ping).await {
            Ok(result) => {
                result?;
            }
            Err(_) if live.inbox.heard() != heard => {}
            Err(_) => return Err(silent().into()),
        }
        let ping = command.query_async::<redis::Value>(&mut live.publisher);
        match tokio::time::timeout(deadline, ping).await {
            Ok(result) => {
                result?;
            }
            Err(_) => return Err(silent().into()),
        }
        self.count_foreign(live).await?;
        let now = Instant::now();
        let changes = self.hosts.expire(now, self.config.host_timeout);
        self.hosts_changed(changes).await;
        self.asks.retain(|_, ask| ask.until > now);
        self.held_answers = self.asks.values().map(|ask| ask.held).sum();
        self.inbound.retain(|_, (_, _, until)| *until > now);
        Ok(())
    }

    async fn heartbeat(&mut self, live: &mut Live) -> redis::RedisResult<()> {
        let beat = Wire::Heartbeat { host: self.me, counts: self.local_counts(), shadowed: self.shadowed };
        self.publish_now(live, &self.channels.hosts.clone(), beat.encode()).await
    }

    fn local_counts(&self) -> Vec<(String, u32)> {
        super::lock(&self.shared.local).iter().map(|(c, n)| (c.clone(), *n)).collect()
    }

    /// The local subscriber counts of the adapter channels whose asks wait for every server (not
    /// the single-server ones): those `PUBSUB NUMSUB` and the shadows count.
    fn shadowable_counts(&self) -> Vec<(String, u32)> {
        self.local_counts().into_iter().filter(|(c, _)| channels::adapter(c) && !channels::single_server(c)).collect()
    }

    /// Subscribes on Redis to the bridged channels local workers subscribe to, and only those.
    async fn sync_subscriptions(&mut self, live: &mut Live) -> redis::RedisResult<()> {
        let wanted: BTreeSet<String> = super::lock(&self.shared.local).keys().cloned().collect();
        let add: Vec<&String> = wanted.difference(&live.subscribed).collect();
        let remove: Vec<&String> = live.subscribed.difference(&wanted).collect();
        let group = &self.config.group;
        let add: Vec<String> = add.into_iter().map(|c| channels::redis_name(group, &self.config.app, c)).collect();
        let remove: Vec<String> =
            remove.into_iter().map(|c| channels::redis_name(group, &self.config.app, c)).collect();
        let deadline = self.deadline();
        let change = async {
            if !add.is_empty() {
                live.subscriber.subscribe(&add).await?;
            }
            if !remove.is_empty() {
                live.subscriber.unsubscribe(&remove).await?;
            }
            Ok::<_, redis::RedisError>(())
        };
        match tokio::time::timeout(deadline, change).await {
            Ok(result) => result?,
            Err(_) => return Err(std::io::Error::other("no answer to SUBSCRIBE in time").into()),
        }
        live.echoes.retain(|channel, _| wanted.contains(channel));
        live.subscribed = wanted;
        self.sync_shadows(live).await
    }

    /// Counts the plain socketioxide-redis servers on the request channels of this host's workers:
    /// what `PUBSUB NUMSUB` counts beyond the subscriptions of the clusterd hosts. A count is
    /// believed when two heartbeats in a row agree (a host that just subscribed is not heard of
    /// yet). Once there are such servers, this host shadows its request channels so that they
    /// count each of its workers too, and its asks on those channels are not completed early.
    async fn count_foreign(&mut self, live: &mut Live) -> redis::RedisResult<()> {
        let channels = self.shadowable_counts();
        if channels.is_empty() {
            return Ok(());
        }
        let mut numsub = redis::cmd("PUBSUB");
        numsub.arg("NUMSUB");
        for (channel, _) in &channels {
            numsub.arg(channels::redis_name(&self.config.group, &self.config.app, channel));
        }
        let query = numsub.query_async::<Vec<(String, u32)>>(&mut live.publisher);
        let counted = match tokio::time::timeout(self.deadline(), query).await {
            Ok(result) => result?,
            Err(_) => return Err(std::io::Error::other("no answer to PUBSUB NUMSUB in time").into()),
        };
        let mut sample = HashMap::new();
        for ((channel, _), (_, numsub)) in channels.iter().zip(counted) {
            let mine = 1 + live.shadows.iter().filter(|s| s.subscribed.contains(channel)).count() as u32;
            let others = self.hosts.subscriptions(channel);
            let foreign = numsub.saturating_sub(mine).saturating_sub(others);
            if foreign > 0 {
                sample.insert(channel.clone(), foreign);
            }
        }
        let believed: HashMap<String, u32> =
            sample.iter().filter_map(|(c, n)| self.foreign_sample.get(c).map(|m| (c.clone(), (*n).min(*m)))).collect();
        self.foreign_sample = sample;
        if believed != self.foreign {
            tracing::info!(servers = ?believed, "bridge: plain socketioxide-redis servers counted");
            let most = believed.values().max().copied().unwrap_or(0) as usize;
            self.shared.stats.plain.store(most, Ordering::Relaxed);
            self.foreign = believed;
            self.remote_dirty = true;
            if !self.foreign.is_empty() && !self.shadowed {
                self.shadowed = true;
                self.sync_shadows(live).await?;
                self.heartbeat(live).await?;
            }
            self.update_remote().await;
        }
        Ok(())
    }

    /// Shadow subscriptions: the `i`-th shadow connection subscribes the request channels that have
    /// more than `i + 1` local workers, so that each is subscribed once per worker.
    async fn sync_shadows(&mut self, live: &mut Live) -> redis::RedisResult<()> {
        if !self.shadowed {
            return Ok(());
        }
        let counts = self.shadowable_counts();
        let needed = counts.iter().map(|(_, n)| n.saturating_sub(1) as usize).max().unwrap_or(0);
        live.shadows.truncate(needed);
        let deadline = self.deadline();
        while live.shadows.len() < needed {
            let settings = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(deadline))
                .set_response_timeout(Some(deadline))
                .set_push_sender(|_: redis::PushInfo| Ok::<(), std::convert::Infallible>(()));
            let connection = match tokio::time::timeout(
                deadline,
                self.client.get_multiplexed_async_connection_with_config(&settings),
            )
            .await
            {
                Ok(result) => result?,
                Err(_) => return Err(std::io::Error::other("no answer in time (shadow connection)").into()),
            };
            live.shadows.push(Shadow { connection, subscribed: BTreeSet::new() });
        }
        let group = self.config.group.clone();
        let app = self.config.app.clone();
        for (i, shadow) in live.shadows.iter_mut().enumerate() {
            let wanted: BTreeSet<String> =
                counts.iter().filter(|(_, n)| *n as usize > i + 1).map(|(c, _)| c.clone()).collect();
            let add: Vec<String> =
                wanted.difference(&shadow.subscribed).map(|c| channels::redis_name(&group, &app, c)).collect();
            let remove: Vec<String> =
                shadow.subscribed.difference(&wanted).map(|c| channels::redis_name(&group, &app, c)).collect();
            let change = async {
                if !add.is_empty() {
                    shadow.connection.subscribe(&add).await?;
                }
                if !remove.is_empty() {
                    shadow.connection.unsubscribe(&remove).await?;
                }
                Ok::<_, redis::RedisError>(())
            };
            match tokio::time::timeout(deadline, change).await {
                Ok(result) => result?,
                Err(_) => return Err(std::io::Error::other("no answer to SUBSCRIBE in time (shadow)").into()),
            }
            shadow.subscribed = wanted;
        }
        Ok(())
    }

    /// One PUBLISH, now (clusterd's own control messages).
    async fn publish_now(&self, live: &mut Live, channel: &str, payload: Vec<u8>) -> redis::RedisResult<()> {
        let mut command = redis::cmd("PUBLISH");
        command.arg(channel).arg(payload);
        let publish = command.query_async::<i64>(&mut live.publisher);
        match tokio::time::timeout(self.deadline(), publish).await {
            Ok(result) => {
                result?;
                self.shared.stats.published.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(_) => Err(std::io::Error::other("no answer to PUBLISH in time").into()),
        }
    }

    /// Publishes what the relay queued, in order, in pipelines, without waiting for their answers
    /// (the serving loop collects them): at most [`MAX_IN_FLIGHT`] pipelines are unanswered, and
    /// what does not fit waits in the queue.
    async fn flush(&mut self, live: &mut Live) -> redis::RedisResult<()> {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            if live.in_flight.len() >= MAX_IN_FLIGHT {
                return Ok(());
            }
            self.shared.out.take(BATCH, &mut batch);
            if batch.is_empty() {
                return Ok(());
            }
            let mut pipe = redis::pipe();
            let mut published = 0;
            let mut answered = Vec::new();
            let now = Instant::now();
            for item in batch.drain(..) {
                match item {
                    Out::Publish { channel, payload } => {
                        if live.subscribed.contains(&channel) {
                            let echoes = live.echoes.entry(channel.clone()).or_default();
                            if echoes.len() >= MAX_ECHOES {
                                echoes.pop_front();
                            }
                            echoes.push_back((hash(&payload), now));
                        }
                        pipe.cmd("PUBLISH")
                            .arg(channels::redis_name(&self.config.group, &self.config.app, &channel))
                            .arg(&payload[..])
                            .ignore();
                        published += 1;
                    }
                    Out::Request { id, channel, payload, timeout_ms } => {
                        let waiting = self.hosts.subscribed(&channel);
                        let foreign = self.foreign.contains_key(&channel);
                        if waiting.is_empty() && !foreign {
                            answered.push(BridgeInput::Answers {
                                request: id,
                                answers: Vec::new(),
                                missing: Vec::new(),
                            });
                            continue;
                        }
                        let until = now + Duration::from_millis(u64::from(timeout_ms)) + Duration::from_secs(1);
                        let empty = waiting.is_empty();
                        let ask = Ask { waiting, answers: Vec::new(), missing: Vec::new(), until, held: 0, foreign };
                        self.asks.insert(id, ask);
                        if empty {
                            continue;
                        }
                        let wire = Wire::Request { host: self.me, id, channel, timeout_ms, payload };
                        pipe.cmd("PUBLISH").arg(&self.channels.requests).arg(wire.encode()).ignore();
                        published += 1;
                    }
                    Out::Node { mode, frame } => {
                        let wire = Wire::Node { host: self.me, mode, frame: frame.to_vec() };
                        pipe.cmd("PUBLISH").arg(&self.channels.node).arg(wire.encode()).ignore();
                        published += 1;
                    }
                    Out::NodeTo { host, mode, frame } => {
                        // On the host's own channel, which it reads like the Node channel.
                        let wire = Wire::Node { host: self.me, mode, frame: frame.to_vec() };
                        pipe.cmd("PUBLISH").arg(channels::host(&self.config.group, host)).arg(wire.encode()).ignore();
                        published += 1;
                    }
                    Out::Answers { id, answers, missing } => {
                        let Some((host, their_id, _)) = self.inbound.remove(&id) else { continue };
                        let wire = Wire::Answers { host: self.me, id: their_id, answers, missing };
                        pipe.cmd("PUBLISH").arg(channels::host(&self.config.group, host)).arg(wire.encode()).ignore();
                        published += 1;
                    }
                }
            }
            if published > 0 {
                let mut publisher = live.publisher.clone();
                let deadline = self.deadline();
                let mut reply: Reply = Box::pin(async move {
                    match tokio::time::timeout(deadline, pipe.query_async::<()>(&mut publisher)).await {
                        Ok(result) => result,
                        Err(_) => Err(std::io::Error::other("no answer to PUBLISH in time").into()),
                    }
                });
                // redis-rs queues a request for the socket at its first poll: polled here, so that
                // pipelines leave in the order they were made (and the order of each worker's
                // messages holds).
                match std::future::poll_fn(|cx| Poll::Ready(reply.as_mut().poll(cx))).await {
                    Poll::Ready(result) => {
                        result?;
                        self.shared.stats.published.fetch_add(published, Ordering::Relaxed);
                    }
                    Poll::Pending => live.in_flight.push_back(InFlight { reply, published }),
                }
            }
            for input in answered {
                let _ = self.relay.send(Input::Bridge(input)).await;
            }
        }
    }

    /// A message from Redis.
    async fn incoming(&mut self, live: &mut Live, message: &redis::Msg) -> redis::RedisResult<()> {
        let channel = message.get_channel_name();
        let payload = message.get_payload_bytes();
        let own = [&self.channels.hosts, &self.channels.requests, &self.channels.mine, &self.channels.node];
        if own.iter().any(|own| own.as_str() == channel) {
            match Wire::decode(payload) {
                Ok(wire) => {
                    self.shared.stats.received.fetch_add(1, Ordering::Relaxed);
                    self.own(live, wire).await?;
                }
                Err(error) => self.malformed(channel, &error),
            }
            return Ok(());
        }
        let Some(channel) = channels::bus_name(&self.config.group, &self.config.app, channel) else { return Ok(()) };
        if !live.subscribed.contains(channel) {
            return Ok(());
        }
        if let Some(echoes) = live.echoes.get_mut(channel) {
            let now = Instant::now();
            while echoes.front().is_some_and(|(_, at)| now.duration_since(*at) > ECHO_TTL) {
                echoes.pop_front();
            }
            let hash = hash(payload);
            // This host's own message: the echoes before it will not come any more.
            if let Some(at) = echoes.iter().position(|(h, _)| *h == hash) {
                echoes.drain(..=at);
                return Ok(());
            }
        }
        self.shared.stats.received.fetch_add(1, Ordering::Relaxed);
        // A message that no bus frame can carry would break the workers' bus: garbage.
        if channel.len() + payload.len() + FRAME_SLACK > clusterd_worker::bus_protocol::MAX_BUS_FRAME {
            self.malformed(channel, &super::codec::Malformed::TooLarge(payload.len()));
            return Ok(());
        }
        let channel = channel.to_owned();
        let payload = Bytes::copy_from_slice(payload);
        let bytes = channel.len() + payload.len();
        let make = |charge| Input::Bridge(BridgeInput::Message { channel, payload, charge });
        if !admit(&self.memory, &mut self.congested.budget, &self.relay, &mut self.congested.relay, bytes, make).await {
            self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// One of clusterd's own messages.
    async fn own(&mut self, live: &mut Live, wire: Wire) -> redis::RedisResult<()> {
        match wire {
            Wire::Hello { host, .. } | Wire::Heartbeat { host, .. }
                if !self.hosts.contains(host) && self.hosts.len() >= MAX_HOSTS =>
            {
                self.malformed("hosts", &super::codec::Malformed::Invalid("more hosts than the limit"));
            }
            Wire::Request { .. } if self.inbound.len() >= MAX_INBOUND => {
                self.malformed("requests", &super::codec::Malformed::Invalid("more requests waiting than the limit"));
            }
            Wire::Hello { host, counts, shadowed } if host != self.me => {
                self.heard(host, counts, shadowed).await;
                // The newcomer learns of this host at once.
                self.heartbeat(live).await?;
            }
            Wire::Heartbeat { host, counts, shadowed } if host != self.me => {
                self.heard(host, counts, shadowed).await;
            }
            Wire::Leave { host } if host != self.me => {
                let change = self.hosts.left(host);
                self.hosts_changed(change.into_iter().collect()).await;
            }
            Wire::Request { host, id, channel, timeout_ms, payload } if host != self.me => {
                let local = self.inbound_id();
                let timeout = Duration::from_millis(u64::from(timeout_ms.max(1)));
                self.inbound.insert(local, (host, id, Instant::now() + timeout + Duration::from_secs(1)));
                if super::lock(&self.shared.local).contains_key(&channel) {
                    let bytes = channel.len() + payload.len();
                    let make =
                        |charge| Input::Bridge(BridgeInput::Request { id: local, channel, payload, timeout, charge });
                    let relay = &self.relay;
                    if !admit(&self.memory, &mut self.congested.budget, relay, &mut self.congested.relay, bytes, make)
                        .await
                    {
                        // Its asker waits for its deadline, as for any request lost on the way.
                        self.inbound.remove(&local);
                        self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    // Nobody here listens (any more): answer at once, so the asker does not wait.
                    self.shared.out.push(Out::Answers { id: local, answers: Vec::new(), missing: Vec::new() });
                }
            }
            Wire::Node { host, mode, frame } if host != self.me => {
                if let Some(node) = self.node.get() {
                    let mode =
                        if mode == 0 { crate::node::frame::Mode::Advanced } else { crate::node::frame::Mode::Json };
                    let bytes = frame.len();
                    let make = |charge| {
                        crate::node::relay::Input::Bridge(crate::node::relay::BridgeInput::Frame {
                            host,
                            mode,
                            frame,
                            charge,
                        })
                    };
                    if !admit(&self.memory, &mut self.congested.budget, node, &mut self.congested.node, bytes, make)
                        .await
                    {
                        self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Wire::Answers { host, id, answers, missing } => {
                let Some(ask) = self.asks.get_mut(&id) else { return Ok(()) };
                if ask.waiting.remove(&host).is_some() {
                    // Held within the relay's bound for answers being gathered, all asks together
                    // (anyone who can PUBLISH can answer); beyond it, an answer counts as missing.
                    for (from, answer) in answers {
                        if self.held_answers + answer.len() <= MAX_HELD_ANSWERS {
                            self.held_answers += answer.len();
                            ask.held += answer.len();
                            ask.answers.push((from, answer));
                        } else {
                            ask.missing.push(from);
                        }
                    }
                    ask.missing.extend(missing);
                }
                if ask.waiting.is_empty() && !ask.foreign {
                    self.complete(id).await;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Another host's hello or heartbeat: costs what it carries, whatever the other hosts hold
    /// (see [`Hosts`]).
    async fn heard(&mut self, host: HostId, counts: Vec<(String, u32)>, shadowed: bool) {
        let counts = self.bridged_only(counts);
        match self.hosts.heard(host, counts, shadowed, Instant::now()) {
            Heard::Joined => self.hosts_changed(vec![Change::Joined(host)]).await,
            Heard::Changed => self.update_remote().await,
            Heard::Same => {}
            Heard::Refused => self.refused(host),
        }
    }

    /// A host's counts did not fit [`super::hosts::MAX_REMOTE_COUNTS`]: counted, and logged at
    /// most once a minute (forged hosts would otherwise fill the log).
    fn refused(&mut self, host: HostId) {
        self.shared.stats.refused.fetch_add(1, Ordering::Relaxed);
        let Some(earlier) = self.refused_log.due() else { return };
        tracing::warn!(
            host = %format!("{host:016x}"),
            known = self.hosts.len(),
            held = self.hosts.weight(),
            earlier,
            "bridge: refused a host's counts: the other hosts' counts would weigh more than {} bytes \
             (a new host is not counted, a known one keeps its counts; at most one such line a minute; \
             `refused` in status counts them all)",
            super::hosts::MAX_REMOTE_COUNTS
        );
    }

    /// The counts of the channels this host bridges too: another host may name more of an
    /// application's channels (`--bridge-channels`); their traffic does not cross here.
    fn bridged_only(&self, mut counts: Vec<(String, u32)>) -> Vec<(String, u32)> {
        counts.retain(|(channel, _)| channels::bridged(&self.config.app, channel));
        counts
    }

    fn inbound_id(&mut self) -> u64 {
        let id = self.next_inbound;
        self.next_inbound += 1;
        id
    }

    /// Hands a finished ask's answers to the relay.
    async fn complete(&mut self, id: u64) {
        if let Some(ask) = self.asks.remove(&id) {
            self.held_answers -= ask.held;
            let input = BridgeInput::Answers { request: id, answers: ask.answers, missing: ask.missing };
            let _ = self.relay.send(Input::Bridge(input)).await;
        }
    }

    /// Hosts came or went: logs, asks that waited for a host that is gone, and the relay's counts.
    async fn hosts_changed(&mut self, changes: Vec<Change>) {
        for change in &changes {
            match change {
                Change::Joined(host) => tracing::info!(host = %format!("{host:016x}"), "bridge: a host joined"),
                Change::Left(host) => tracing::info!(host = %format!("{host:016x}"), "bridge: a host left"),
                Change::TimedOut(host) => {
                    tracing::warn!(host = %format!("{host:016x}"), "bridge: a host timed out; counted out");
                }
            }
            if let (Change::Joined(host), Some(node)) = (change, self.node.get()) {
                let joined = crate::node::relay::BridgeInput::HostJoined { host: *host };
                let _ = node.send(crate::node::relay::Input::Bridge(joined)).await;
            }
            let (Change::Left(host) | Change::TimedOut(host)) = change else { continue };
            if let Some(node) = self.node.get() {
                let gone = crate::node::relay::BridgeInput::HostGone { host: *host };
                let _ = node.send(crate::node::relay::Input::Bridge(gone)).await;
            }
            let done: Vec<u64> = self
                .asks
                .iter_mut()
                .filter_map(|(id, ask)| {
                    let n = ask.waiting.remove(host)?;
                    ask.missing.extend(std::iter::repeat_n(REMOTE, n as usize));
                    (ask.waiting.is_empty() && !ask.foreign).then_some(*id)
                })
                .collect();
            for id in done {
                self.complete(id).await;
            }
        }
        self.shared.stats.hosts.store(self.hosts.len() + 1, Ordering::Relaxed);
        self.update_remote().await;
    }

    /// Tells the relay how many subscribers each channel has elsewhere, if that changed: at once,
    /// or (right after a rebuild) when [`REMOTE_PAUSE`] allows.
    async fn update_remote(&mut self) {
        self.remote_dirty |= self.hosts.take_changed();
        if self.remote_dirty && self.remote_next.is_none_or(|at| Instant::now() >= at) {
            self.send_remote().await;
        }
    }

    /// The relay's copy of the remote counts, rebuilt: the other hosts' workers and the plain
    /// socketioxide-redis servers.
    async fn send_remote(&mut self) {
        let started = Instant::now();
        let mut totals = self.hosts.totals();
        for (channel, n) in &self.foreign {
            let total = totals.entry(channel.clone()).or_default();
            *total = total.saturating_add(*n);
        }
        let now = Instant::now();
        self.remote_next = Some(now + (now - started) * REMOTE_PAUSE);
        self.remote_dirty = false;
        let _ = self.relay.send(Input::Bridge(BridgeInput::Remote(totals))).await;
    }

    /// The connection is gone: nobody else is reachable, so nobody else counts or is waited for.
    async fn down(&mut self) {
        self.shared.connected.store(false, Ordering::Relaxed);
        // What never reached Redis is dropped; a request among it is answered now (nobody else
        // can be asked), so that its asker does not wait for the deadline.
        let unsent = self.shared.out.take_all();
        self.shared.stats.dropped.fetch_add(unsent.len() as u64, Ordering::Relaxed);
        for item in unsent {
            if let Out::Request { id, .. } = item {
                let input = BridgeInput::Answers { request: id, answers: Vec::new(), missing: Vec::new() };
                let _ = self.relay.send(Input::Bridge(input)).await;
            }
        }
        let changes = self.hosts.clear();
        self.foreign.clear();
        self.foreign_sample.clear();
        self.shared.stats.plain.store(0, Ordering::Relaxed);
        self.hosts_changed(changes).await;
        // Nobody else counts now: the relay learns it at once (outside `serve`, nothing would
        // send it later).
        if self.remote_dirty {
            self.send_remote().await;
        }
        let ids: Vec<u64> = self.asks.keys().copied().collect();
        for id in ids {
            if let Some(ask) = self.asks.get_mut(&id) {
                for (_, n) in std::mem::take(&mut ask.waiting) {
                    ask.missing.extend(std::iter::repeat_n(REMOTE, n as usize));
                }
            }
            self.complete(id).await;
        }
        self.inbound.clear();
    }

    fn malformed(&mut self, channel: &str, error: &super::codec::Malformed) {
        self.shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
        let Some(earlier) = self.malformed_log.due() else { return };
        tracing::warn!(
            channel,
            %error,
            earlier,
            "bridge: dropped a malformed message (at most one such line a minute; `malformed` in status counts them all)"
        );
    }
}

/// One kind of log line, at most once every [`LOG_EVERY`].
#[derive(Debug, Default)]
struct PacedLog {
    logged: Option<Instant>,
    unlogged: u64,
}

impl PacedLog {
    /// `Some(lines not logged since the last one)` when a line may be logged now; else counts
    /// this one as not logged.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.logged.is_some_and(|at| now.duration_since(at) < LOG_EVERY) {
            self.unlogged += 1;
            return None;
        }
        self.logged = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// Hands a message from Redis to a relay, charged to the bus budget first, as a worker's frame is:
/// what comes from other hosts (or from anyone who can `PUBLISH`) shares the bounded memory of
/// local traffic, and never waits more than [`INCOMING_WAIT`] for the budget, then as long for
/// room in the relay's input (nothing while that kind of wait is known to be in vain). `false`:
/// dropped (the caller counts it).
async fn admit<T>(
    memory: &BusMemory,
    budget_congested: &mut bool,
    relay: &mpsc::Sender<T>,
    relay_congested: &mut bool,
    bytes: usize,
    make: impl FnOnce(Charge) -> T,
) -> bool {
    let charge = match memory.try_acquire(bytes) {
        Some(charge) => Some(charge),
        None if *budget_congested => None,
        None => tokio::time::timeout(INCOMING_WAIT, memory.queue(bytes)).await.ok(),
    };
    *budget_congested = charge.is_none();
    let Some(charge) = charge else { return false };
    // Most messages find room at once: no timer is armed for them.
    let permit = match relay.try_reserve() {
        Ok(permit) => Some(permit),
        Err(mpsc::error::TrySendError::Closed(())) => None,
        Err(mpsc::error::TrySendError::Full(())) if *relay_congested => None,
        Err(mpsc::error::TrySendError::Full(())) => {
            tokio::time::timeout(INCOMING_WAIT, relay.reserve()).await.ok().and_then(Result::ok)
        }
    };
    *relay_congested = permit.is_none();
    match permit {
        Some(permit) => {
            permit.send(make(charge));
            true
        }
        None => {
            memory.release(charge);
            false
        }
    }
}

/// The answer to the oldest pipeline in flight, once it came: how many messages it published. Only
/// the oldest is polled: Redis answers in order, and each pipeline's deadline is later than the
/// one before it.
async fn oldest_reply(in_flight: &mut VecDeque<InFlight>) -> redis::RedisResult<u64> {
    let result = std::future::poll_fn(|cx| match in_flight.front_mut() {
        Some(oldest) => oldest.reply.as_mut().poll(cx).map(|result| result.map(|()| oldest.published)),
        None => Poll::Pending,
    })
    .await;
    in_flight.pop_front();
    result
}

fn hash(payload: &[u8]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    payload.hash(&mut hasher);
    hasher.finish()
}

/// A random, non-zero host id (new at every start, so a restarted host is a new host).
fn host_id() -> HostId {
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes)).is_err() {
        // Without /dev/urandom: the pid and the clock, mixed.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (std::process::id(), now.as_nanos()).hash(&mut hasher);
        bytes = hasher.finish().to_le_bytes();
    }
    u64::from_le_bytes(bytes).max(1)
}
