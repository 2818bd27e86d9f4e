//! The relay between Node workers: `@socket.io/cluster-adapter`'s `setupPrimary`, both versions.
//!
//! Messages travel as the bytes they came in (every worker speaks the same serialization); only
//! the routing fields are read (`type`, `uid`, `nsp`, `requesterUid`, `data.workerId`).
//!
//! - **0.3.x** (messages carry a `uid`, one per adapter instance): responses (types 8 and 10) go to
//!   the worker that announced `requesterUid`; everything else to every other worker. When a
//!   worker exits, each survivor on 0.3.x gets an `ADAPTER_CLOSE` (type 13) for every (uid,
//!   namespace) the dead worker used, so pending `fetchSockets` and `serverSideEmit` answer at
//!   once instead of after the heartbeat timeout.
//! - **0.2.x** (no `uid`): responses (types 9 and 11) go to the worker whose id is
//!   `data.workerId`; everything else to every other worker; a worker's exit is announced to
//!   the survivors on 0.2.x as `WORKER_EXIT` (type 3) with its id. Type 13 means something else
//!   there (`BROADCAST_ACK`) and is never sent to them.
//!
//! Across hosts (`--bridge`), both dialects travel on the group's Node channel: 0.3.x as it is,
//! 0.2.x with the other hosts' worker ids made unique here (`aliases.rs`), its answers sent to
//! the asking host only. What comes from another host fills at most half of a worker's queue.
//!
//! A worker that has not said anything yet (it is starting) has an unknown dialect: the notices
//! for a worker that leaves meanwhile wait until it speaks, and it gets those of its dialect. It
//! may already hold messages of the one that left (a rolling reload starts each new worker while
//! the old ones still run), and a `BROADCAST_ACK` without data would crash a 0.2.x worker.
//!
//! A worker that does not read keeps its queue: messages over `--bus-queue` bytes queued for it,
//! or that wait over [`STUCK_AFTER`] for room, are dropped and counted (`dropped` in `status`).
//!
//! Each message arrives charged to the bus budget (`bus_memory.rs`, charged by the worker's link
//! before it reads on); the charge is given back once the message is queued or dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::aliases::{Aliases, RemoteRequests};
use super::frame::{Frame, Mode};
use super::value::Value;
use super::writer::Out;
use crate::bus_memory::{BusMemory, Charge};
use crate::relay::STUCK_AFTER;

const SOURCE: &str = "_sio_adapter";
/// Notices kept for a worker that has not spoken yet; beyond that its adapter's own heartbeat
/// timeout (0.3.x) has to do. Also the most adapters (uid, namespace) and namespaces remembered
/// for one worker or one other host: what a worker says costs the relay a bounded table, and an
/// answer to an adapter beyond it is not routed (its asker times out, as with a lost answer).
const MAX_DEFERRED: usize = 1024;
/// Messages from other hosts may fill a worker's queue up to `--bus-queue` / this much.
const REMOTE_SHARE: usize = 2;
/// What the relay reads of an adapter message: type, uid, nsp, requesterUid, data.workerId and
/// data.requestId.
const FIELDS: [&[&str]; 6] =
    [&["type"], &["uid"], &["nsp"], &["requesterUid"], &["data", "workerId"], &["data", "requestId"]];

/// What the bridge to other hosts (`crate::bridge`) tells the relay. Both dialects travel: 0.3.x's
/// messages name their adapter by `uid`, and 0.2.x's worker ids are made unique for the local
/// workers as they come in (`aliases.rs`).
pub enum BridgeInput {
    /// The bridge joins: from now on it gets the adapter messages of the local workers.
    Attach(crate::bridge::Sink),
    /// A message of a worker of another host, framed in that host's serialization, with its
    /// charge to the bus budget (given back once it is queued or dropped).
    Frame { host: u64, mode: Mode, frame: Vec<u8>, charge: Charge },
    /// A host is gone: the survivors here learn that its adapters are closed (0.3.x) and that its
    /// workers exited (0.2.x).
    HostGone { host: u64 },
    /// A host joined: the local adapters announce themselves to it at once (0.3.x: an
    /// `INITIAL_HEARTBEAT` from the adapter's "emitter", which no adapter counts as a server,
    /// makes each one publish a `HEARTBEAT`; 0.2.x: clusterd sends it each local worker's
    /// `WORKER_PING`), instead of after their heartbeat interval, or never (0.2.x).
    HostJoined { host: u64 },
}

pub enum Input {
    /// From the bridge to other hosts.
    Bridge(BridgeInput),
    Join {
        key: u64,
        worker_id: u64,
        out: mpsc::Sender<Out>,
        queued: Arc<AtomicUsize>,
        dropped: Arc<AtomicU64>,
    },
    Leave {
        key: u64,
    },
    /// A message, with its charge to the bus budget.
    Frame {
        key: u64,
        frame: Frame,
        charge: Charge,
    },
}

/// Which adapter a worker speaks, once it has said something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V02,
    V03,
}

struct Member {
    worker_id: u64,
    out: mpsc::Sender<Out>,
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
    stuck: bool,
    version: Option<Version>,
    /// The adapter instances (uid, namespace) of this worker (0.3.x).
    adapters: BTreeSet<(String, String)>,
    /// The namespaces this worker's adapters spoke in (0.2.x).
    namespaces: BTreeSet<String>,
    /// Departure notices that came while this worker's dialect was unknown.
    deferred: Vec<(Version, Bytes)>,
}

struct Relay {
    members: BTreeMap<u64, Member>,
    budget: usize,
    mode: Mode,
    /// The bridge to other hosts, and the adapters (uid, namespace) seen from each of them.
    bridge: Option<crate::bridge::Sink>,
    remote: BTreeMap<u64, BTreeSet<(String, String)>>,
    /// 0.2.x across hosts: the other hosts' workers as the local ones know them, and the other
    /// hosts' requests that local workers answer.
    aliases: Aliases,
    remote_requests: RemoteRequests,
    memory: Arc<BusMemory>,
}

pub fn start(
    budget: usize,
    serialization: crate::config::Serialization,
    memory: std::sync::Arc<BusMemory>,
) -> mpsc::Sender<Input> {
    let (tx, mut rx) = mpsc::channel(4096);
    let mode = Mode::from(serialization);
    tokio::spawn(async move {
        let mut relay = Relay {
            members: BTreeMap::new(),
            budget,
            mode,
            bridge: None,
            remote: BTreeMap::new(),
            aliases: Aliases::default(),
            remote_requests: RemoteRequests::default(),
            memory: Arc::clone(&memory),
        };
        while let Some(input) = rx.recv().await {
            match input {
                Input::Join { key, worker_id, out, queued, dropped } => {
                    let member = Member {
                        worker_id,
                        out,
                        queued,
                        dropped,
                        stuck: false,
                        version: None,
                        adapters: BTreeSet::new(),
                        namespaces: BTreeSet::new(),
                        deferred: Vec::new(),
                    };
                    relay.members.insert(key, member);
                }
                Input::Leave { key } => relay.leave(key).await,
                Input::Frame { key, frame, charge } => {
                    crate::metrics::bus_message();
                    relay.frame(key, frame).await;
                    memory.release(charge);
                }
                Input::Bridge(input) => relay.bridge(input).await,
            }
        }
    });
    tx
}

impl Relay {
    async fn frame(&mut self, key: u64, frame: Frame) {
        let Ok([kind, uid, nsp, requester, worker_id, request]) = frame.select(&FIELDS) else { return };
        let kind = kind.as_ref().and_then(Value::as_i64);
        let Some(member) = self.members.get_mut(&key) else { return };
        let version = if uid.is_some() { Version::V03 } else { Version::V02 };
        let deferred = match member.version.replace(version) {
            None => std::mem::take(&mut member.deferred),
            Some(_) => Vec::new(),
        };
        let mut answer_to = None;
        let targets: Vec<u64> = match uid.as_ref().and_then(Value::as_str) {
            Some(uid) => {
                let nsp = nsp.as_ref().and_then(Value::as_str).unwrap_or("/");
                if member.adapters.len() < MAX_DEFERRED {
                    member.adapters.insert((uid.to_owned(), nsp.to_owned()));
                }
                if matches!(kind, Some(8 | 10)) {
                    // A response: to the worker that owns the requesting adapter, only.
                    let requester = requester.as_ref().and_then(Value::as_str).unwrap_or_default();
                    self.members
                        .iter()
                        .find(|(_, m)| m.adapters.iter().any(|(u, _)| u == requester))
                        .map(|(k, _)| *k)
                        .into_iter()
                        .collect()
                } else {
                    self.others(key)
                }
            }
            None => {
                if let Some(nsp) = nsp.as_ref().and_then(Value::as_str)
                    && member.namespaces.len() < MAX_DEFERRED
                {
                    member.namespaces.insert(nsp.to_owned());
                }
                let request = request.as_ref().and_then(Value::as_str);
                if matches!(kind, Some(9 | 11)) {
                    // An answer: to the asker, here or on the host whose request it answers.
                    answer_to = request.and_then(|r| self.remote_requests.host_of(r, Instant::now()));
                    let to = worker_id.as_ref().and_then(Value::as_f64);
                    match answer_to {
                        Some(_) => Vec::new(),
                        None => self
                            .members
                            .iter()
                            .filter(|(_, m)| Some(m.worker_id as f64) == to)
                            .map(|(k, _)| *k)
                            .collect(),
                    }
                } else {
                    self.others(key)
                }
            }
        };
        for (_, notice) in deferred.into_iter().filter(|(dialect, _)| *dialect == version) {
            self.deliver(key, notice).await;
        }
        // Other hosts get every message but an answer: a 0.3.x one whose asker is here stays
        // here; a 0.2.x one goes to the host whose request it answers, if not this one.
        let to_hosts = match version {
            Version::V03 => !matches!(kind, Some(8 | 10)) || targets.is_empty(),
            Version::V02 => !matches!(kind, Some(9 | 11)),
        };
        let bytes = Bytes::from(frame.into_raw());
        if let Some(bridge) = &self.bridge {
            let handed = match answer_to {
                Some(host) => bridge.node_to(host, self.mode, &bytes),
                None if to_hosts => bridge.node(self.mode, &bytes),
                None => crate::bridge::Handed::No,
            };
            if handed == crate::bridge::Handed::First && !targets.is_empty() {
                // The PUBLISH to the other hosts leaves before the local workers are woken (see
                // `crate::bridge::Handed`).
                tokio::task::yield_now().await;
            }
        }
        for target in targets {
            self.deliver(target, bytes.clone()).await;
        }
    }

    /// What the bridge says: messages of other hosts' workers, and hosts that are gone.
    async fn bridge(&mut self, input: BridgeInput) {
        match input {
            BridgeInput::Attach(sink) => self.bridge = Some(sink),
            BridgeInput::Frame { host, mode, frame, charge } => {
                self.remote_frame(host, mode, &frame).await;
                self.memory.release(charge);
            }
            BridgeInput::HostJoined { host } => {
                self.greet_v02(host);
                let v03 = self.members.iter().filter(|(_, m)| m.version == Some(Version::V03));
                let namespaces: BTreeSet<String> =
                    v03.flat_map(|(_, m)| m.adapters.iter().map(|(_, n)| n.clone())).collect();
                let survivors = self.speaking(Version::V03);
                for nsp in namespaces {
                    let hello = Value::object([
                        ("type", Value::from(1)),
                        ("uid", Value::from("emitter")),
                        ("nsp", Value::from(nsp.as_str())),
                        ("source", Value::from(SOURCE)),
                    ]);
                    let Ok(frame) = Frame::encode(self.mode, &hello) else { continue };
                    let bytes = Bytes::from(frame.into_raw());
                    for &member in &survivors {
                        self.deliver(member, bytes.clone()).await;
                    }
                }
            }
            BridgeInput::HostGone { host } => {
                self.remote_requests.host_gone(host);
                for alias in self.aliases.host_gone(host) {
                    self.worker_exit_v02(alias).await;
                }
                let Some(adapters) = self.remote.remove(&host) else { return };
                let survivors = self.speaking(Version::V03);
                for (uid, nsp) in adapters {
                    let Some(bytes) = self.close_notice(&uid, &nsp) else { continue };
                    for &survivor in &survivors {
                        self.deliver(survivor, bytes.clone()).await;
                    }
                }
            }
        }
    }

    /// A message of a worker of another host.
    async fn remote_frame(&mut self, host: u64, mode: Mode, frame: &[u8]) {
        if mode != self.mode {
            return; // Every host of a group must use the same --serialization.
        }
        let mut decoder = super::frame::FrameDecoder::new(mode);
        decoder.feed(frame);
        let frame = match decoder.next_frame() {
            Ok(Some(frame)) if decoder.buffered() == 0 => frame,
            _ => return self.malformed(),
        };
        let Ok([kind, uid, nsp, requester, worker_id, request]) = frame.select(&FIELDS) else {
            return self.malformed();
        };
        let Some(uid) = uid.as_ref().and_then(Value::as_str) else {
            let kind = kind.as_ref().and_then(Value::as_i64);
            let nsp = nsp.as_ref().and_then(Value::as_str);
            let worker_id = worker_id.as_ref().and_then(Value::as_f64);
            let request = request.as_ref().and_then(Value::as_str);
            return self.remote_v02(host, frame, kind, nsp, worker_id, request).await;
        };
        let nsp = nsp.as_ref().and_then(Value::as_str).unwrap_or("/");
        let adapters = self.remote.entry(host).or_default();
        if adapters.len() < MAX_DEFERRED {
            adapters.insert((uid.to_owned(), nsp.to_owned()));
        }
        let kind = kind.as_ref().and_then(Value::as_i64);
        let targets: Vec<u64> = if matches!(kind, Some(8 | 10)) {
            let requester = requester.as_ref().and_then(Value::as_str).unwrap_or_default();
            self.members
                .iter()
                .filter(|(_, m)| m.adapters.iter().any(|(u, _)| u == requester))
                .map(|(k, _)| *k)
                .collect()
        } else {
            // Not to a 0.2.x worker: the dialects differ.
            self.members.iter().filter(|(_, m)| m.version != Some(Version::V02)).map(|(k, _)| *k).collect()
        };
        let bytes = Bytes::from(frame.into_raw());
        for target in targets {
            self.deliver_remote(target, bytes.clone()).await;
        }
    }

    /// A 0.2.x message of a worker of another host (see `aliases.rs`).
    async fn remote_v02(
        &mut self,
        host: u64,
        frame: Frame,
        kind: Option<i64>,
        nsp: Option<&str>,
        worker_id: Option<f64>,
        request: Option<&str>,
    ) {
        let v02 = self.speaking(Version::V02);
        let bytes = match kind {
            // WORKER_INIT, WORKER_PING: the worker's id becomes its alias here.
            Some(kind @ (1 | 2)) => {
                let (Some(nsp), Some(id)) = (nsp, worker_id_of(&frame)) else { return self.malformed() };
                let Some(alias) = self.aliases.alias(host, id) else { return self.malformed() };
                let hello = Value::object([
                    ("type", Value::from(kind)),
                    ("data", Value::from(alias)),
                    ("source", Value::from(SOURCE)),
                    ("nsp", Value::from(nsp)),
                ]);
                let Ok(frame) = Frame::encode(self.mode, &hello) else { return };
                Bytes::from(frame.into_raw())
            }
            // WORKER_EXIT
            Some(3) => {
                let Some(id) = worker_id_of(&frame) else { return self.malformed() };
                if let Some(alias) = self.aliases.remove(host, id) {
                    self.worker_exit_v02(alias).await;
                }
                return;
            }
            // An answer to a request of this host: to the asker, by its own id.
            Some(9 | 11) => {
                let bytes = Bytes::from(frame.into_raw());
                let asker = self
                    .members
                    .iter()
                    .find(|(_, m)| m.version == Some(Version::V02) && Some(m.worker_id as f64) == worker_id)
                    .map(|(k, _)| *k);
                if let Some(asker) = asker {
                    self.deliver_remote(asker, bytes).await;
                }
                return;
            }
            Some(kind) => {
                if matches!(kind, 8 | 10)
                    && let Some(request) = request
                {
                    self.remote_requests.insert(request, host, Instant::now());
                }
                Bytes::from(frame.into_raw())
            }
            None => return self.malformed(),
        };
        for target in v02 {
            self.deliver_remote(target, bytes.clone()).await;
        }
    }

    /// Tells the local 0.2.x workers that the worker they know as `id` exited.
    async fn worker_exit_v02(&mut self, id: u64) {
        let Some(bytes) = self.exit_notice(id) else { return };
        let v02 = self.speaking(Version::V02);
        for target in v02 {
            self.deliver(target, bytes.clone()).await;
        }
    }

    /// Introduces the local 0.2.x workers to a host that joined: a `WORKER_PING` of each, in each
    /// namespace it spoke in, as the worker itself would answer a `WORKER_INIT` (its adapters
    /// announced themselves when they started, maybe before that host was there).
    fn greet_v02(&self, host: u64) {
        let Some(bridge) = &self.bridge else { return };
        for member in self.members.values().filter(|m| m.version == Some(Version::V02)) {
            for nsp in &member.namespaces {
                let ping = Value::object([
                    ("type", Value::from(2)),
                    ("data", Value::from(member.worker_id)),
                    ("source", Value::from(SOURCE)),
                    ("nsp", Value::from(nsp.as_str())),
                ]);
                if let Ok(frame) = Frame::encode(self.mode, &ping) {
                    bridge.node_to(host, self.mode, &Bytes::from(frame.into_raw()));
                }
            }
        }
    }

    /// Queues a message of another host for a worker, within half of its queue: a flood from Redis
    /// (anyone who can `PUBLISH`) never takes the room the local workers' messages need.
    async fn deliver_remote(&mut self, key: u64, bytes: Bytes) {
        let Some(member) = self.members.get(&key) else { return };
        // As locally, an empty queue takes one message however large.
        if member.queued.load(Ordering::Relaxed) + bytes.len() > (self.budget / REMOTE_SHARE).max(bytes.len()) {
            member.dropped.fetch_add(1, Ordering::Relaxed);
            crate::metrics::bus_dropped();
            return;
        }
        self.deliver(key, bytes).await;
    }

    /// A message from another host that is not a cluster-adapter message: counted, never relayed.
    fn malformed(&self) {
        if let Some(bridge) = &self.bridge {
            bridge.malformed();
        }
    }

    fn others(&self, key: u64) -> Vec<u64> {
        self.members.keys().copied().filter(|&k| k != key).collect()
    }

    /// The workers known to speak `version`.
    fn speaking(&self, version: Version) -> Vec<u64> {
        self.members.iter().filter(|(_, m)| m.version == Some(version)).map(|(k, _)| *k).collect()
    }

    /// 0.3.x: the adapter `uid` of namespace `nsp` is closed (`ADAPTER_CLOSE`).
    fn close_notice(&self, uid: &str, nsp: &str) -> Option<Bytes> {
        let close = Value::object([
            ("type", Value::from(13)),
            ("uid", Value::from(uid)),
            ("nsp", Value::from(nsp)),
            ("source", Value::from(SOURCE)),
        ]);
        Frame::encode(self.mode, &close).ok().map(|frame| Bytes::from(frame.into_raw()))
    }

    /// 0.2.x: the worker the others know as `id` exited (`WORKER_EXIT`).
    fn exit_notice(&self, id: u64) -> Option<Bytes> {
        let exit =
            Value::object([("source", Value::from(SOURCE)), ("type", Value::from(3)), ("data", Value::from(id))]);
        Frame::encode(self.mode, &exit).ok().map(|frame| Bytes::from(frame.into_raw()))
    }

    /// Tells the survivors that the worker's adapters are gone, in each one's dialect.
    async fn leave(&mut self, key: u64) {
        let Some(dead) = self.members.remove(&key) else { return };
        let mut notices: Vec<(Version, Bytes)> = Vec::new();
        for (uid, nsp) in &dead.adapters {
            notices.extend(self.close_notice(uid, nsp).map(|bytes| (Version::V03, bytes)));
        }
        if dead.version != Some(Version::V03) {
            notices.extend(self.exit_notice(dead.worker_id).map(|bytes| (Version::V02, bytes)));
        }
        // The workers of other hosts learn it too, in the dialect the worker spoke (one that never
        // spoke is known to no other host).
        if let (Some(bridge), Some(version)) = (&self.bridge, dead.version) {
            for (_, bytes) in notices.iter().filter(|(dialect, _)| *dialect == version) {
                let _ = bridge.node(self.mode, bytes);
            }
        }
        let survivors: Vec<(u64, Option<Version>)> = self.members.iter().map(|(k, m)| (*k, m.version)).collect();
        for (survivor, version) in survivors {
            for (dialect, bytes) in &notices {
                match version {
                    Some(version) if version == *dialect => self.deliver(survivor, bytes.clone()).await,
                    Some(_) => {}
                    None => {
                        let Some(member) = self.members.get_mut(&survivor) else { continue };
                        if member.deferred.len() < MAX_DEFERRED {
                            member.deferred.push((*dialect, bytes.clone()));
                        }
                    }
                }
            }
        }
    }

    /// Queues a message for a worker, or drops and counts it (see the module's overflow policy).
    async fn deliver(&mut self, key: u64, bytes: Bytes) {
        let Some(member) = self.members.get_mut(&key) else { return };
        let size = bytes.len();
        let queued = member.queued.load(Ordering::Relaxed);
        if queued + size > self.budget.max(size)
            || (member.stuck && member.out.capacity() < member.out.max_capacity() / 2)
        {
            member.dropped.fetch_add(1, Ordering::Relaxed);
            crate::metrics::bus_dropped();
            return;
        }
        member.queued.fetch_add(size, Ordering::Relaxed);
        match tokio::time::timeout(STUCK_AFTER, member.out.send(Out::Relayed(bytes))).await {
            Ok(Ok(())) => member.stuck = false,
            _ => {
                member.queued.fetch_sub(size, Ordering::Relaxed);
                member.dropped.fetch_add(1, Ordering::Relaxed);
                crate::metrics::bus_dropped();
                if !member.stuck {
                    tracing::warn!(
                        worker = member.worker_id,
                        "node relay: the worker does not read; dropping its messages until it does"
                    );
                }
                member.stuck = true;
            }
        }
    }
}

/// The worker id a 0.2.x `WORKER_INIT`, `WORKER_PING` or `WORKER_EXIT` carries (`data`): a whole
/// number that Node's `cluster.worker.id` can be.
fn worker_id_of(frame: &Frame) -> Option<u64> {
    let [data] = frame.select(&[&["data"]]).ok()?;
    let id = data.as_ref().and_then(Value::as_f64)?;
    (id >= 1.0 && id < 2f64.powi(31) && id.fract() == 0.0).then_some(id as u64)
}
