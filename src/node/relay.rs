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

use bytes::Bytes;
use tokio::sync::mpsc;

use super::frame::{Frame, Mode};
use super::value::Value;
use super::writer::Out;
use crate::bus_memory::{BusMemory, Charge};
use crate::relay::STUCK_AFTER;

const SOURCE: &str = "_sio_adapter";
/// Notices kept for a worker that has not spoken yet; beyond that its adapter's own heartbeat
/// timeout (0.3.x) has to do.
const MAX_DEFERRED: usize = 1024;

/// What the bridge to other hosts (`crate::bridge`) tells the relay. Across hosts only the 0.3.x
/// dialect travels (its messages name their adapter by `uid`; 0.2.x's worker ids are only unique
/// on one host).
pub enum BridgeInput {
    /// The bridge joins: from now on it gets the 0.3.x messages of the local workers.
    Attach(crate::bridge::Sink),
    /// A message of a worker of another host, framed in that host's serialization.
    Frame { host: u64, mode: Mode, frame: Vec<u8> },
    /// A host is gone: the survivors here learn that its adapters are closed.
    HostGone { host: u64 },
    /// A host joined: the local adapters announce themselves to it at once (an `INITIAL_HEARTBEAT`
    /// from the adapter's "emitter", which no adapter counts as a server, makes each one publish
    /// a `HEARTBEAT`), instead of after their heartbeat interval.
    HostJoined,
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
}

pub fn start(
    budget: usize,
    serialization: crate::config::Serialization,
    memory: std::sync::Arc<BusMemory>,
) -> mpsc::Sender<Input> {
    let (tx, mut rx) = mpsc::channel(4096);
    let mode = Mode::from(serialization);
    tokio::spawn(async move {
        let mut relay = Relay { members: BTreeMap::new(), budget, mode, bridge: None, remote: BTreeMap::new() };
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
        let fields = frame.select(&[&["type"], &["uid"], &["nsp"], &["requesterUid"], &["data", "workerId"]]);
        let Ok([kind, uid, nsp, requester, worker_id]) = fields else { return };
        let kind = kind.as_ref().and_then(Value::as_i64);
        let Some(member) = self.members.get_mut(&key) else { return };
        let version = if uid.is_some() { Version::V03 } else { Version::V02 };
        let deferred = match member.version.replace(version) {
            None => std::mem::take(&mut member.deferred),
            Some(_) => Vec::new(),
        };
        let targets: Vec<u64> = match uid.as_ref().and_then(Value::as_str) {
            Some(uid) => {
                let nsp = nsp.as_ref().and_then(Value::as_str).unwrap_or("/");
                member.adapters.insert((uid.to_owned(), nsp.to_owned()));
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
                if matches!(kind, Some(9 | 11)) {
                    let to = worker_id.as_ref().and_then(Value::as_f64);
                    self.members.iter().filter(|(_, m)| Some(m.worker_id as f64) == to).map(|(k, _)| *k).collect()
                } else {
                    self.others(key)
                }
            }
        };
        for (_, notice) in deferred.into_iter().filter(|(dialect, _)| *dialect == version) {
            self.deliver(key, notice).await;
        }
        // Other hosts get every 0.3.x message but a response whose asker is here.
        let response = matches!(kind, Some(8 | 10));
        let to_hosts = version == Version::V03 && (!response || targets.is_empty());
        let bytes = Bytes::from(frame.into_raw());
        if to_hosts
            && let Some(bridge) = &self.bridge
            && bridge.node(self.mode, &bytes) == crate::bridge::Handed::First
            && !targets.is_empty()
        {
            // The PUBLISH to the other hosts leaves before the local workers are woken (see
            // `crate::bridge::Handed`).
            tokio::task::yield_now().await;
        }
        for target in targets {
            self.deliver(target, bytes.clone()).await;
        }
    }

    /// What the bridge says: messages of other hosts' workers, and hosts that are gone.
    async fn bridge(&mut self, input: BridgeInput) {
        match input {
            BridgeInput::Attach(sink) => self.bridge = Some(sink),
            BridgeInput::Frame { host, mode, frame } => {
                if mode != self.mode {
                    return; // Every host of a group must use the same --serialization.
                }
                let mut decoder = super::frame::FrameDecoder::new(mode);
                decoder.feed(&frame);
                let Ok(Some(frame)) = decoder.next_frame() else { return };
                if decoder.buffered() != 0 {
                    return;
                }
                let fields = frame.select(&[&["type"], &["uid"], &["nsp"], &["requesterUid"]]);
                let Ok([kind, uid, nsp, requester]) = fields else { return };
                let Some(uid) = uid.as_ref().and_then(Value::as_str) else { return };
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
                    self.deliver(target, bytes.clone()).await;
                }
            }
            BridgeInput::HostJoined => {
                let v03 = self.members.iter().filter(|(_, m)| m.version == Some(Version::V03));
                let namespaces: BTreeSet<String> =
                    v03.flat_map(|(_, m)| m.adapters.iter().map(|(_, n)| n.clone())).collect();
                let survivors: Vec<u64> =
                    self.members.iter().filter(|(_, m)| m.version == Some(Version::V03)).map(|(k, _)| *k).collect();
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
                let Some(adapters) = self.remote.remove(&host) else { return };
                let survivors: Vec<u64> =
                    self.members.iter().filter(|(_, m)| m.version == Some(Version::V03)).map(|(k, _)| *k).collect();
                for (uid, nsp) in adapters {
                    let close = Value::object([
                        ("type", Value::from(13)),
                        ("uid", Value::from(uid.as_str())),
                        ("nsp", Value::from(nsp.as_str())),
                        ("source", Value::from(SOURCE)),
                    ]);
                    let Ok(frame) = Frame::encode(self.mode, &close) else { continue };
                    let bytes = Bytes::from(frame.into_raw());
                    for &survivor in &survivors {
                        self.deliver(survivor, bytes.clone()).await;
                    }
                }
            }
        }
    }

    fn others(&self, key: u64) -> Vec<u64> {
        self.members.keys().copied().filter(|&k| k != key).collect()
    }

    /// Tells the survivors that the worker's adapters are gone, in each one's dialect.
    async fn leave(&mut self, key: u64) {
        let Some(dead) = self.members.remove(&key) else { return };
        let mut notices: Vec<(Version, Bytes)> = Vec::new();
        for (uid, nsp) in &dead.adapters {
            let close = Value::object([
                ("type", Value::from(13)),
                ("uid", Value::from(uid.as_str())),
                ("nsp", Value::from(nsp.as_str())),
                ("source", Value::from(SOURCE)),
            ]);
            if let Ok(frame) = Frame::encode(self.mode, &close) {
                notices.push((Version::V03, frame.into_raw().into()));
            }
        }
        if dead.version != Some(Version::V03) {
            let exit = Value::object([
                ("source", Value::from(SOURCE)),
                ("type", Value::from(3)),
                ("data", Value::from(dead.worker_id)),
            ]);
            if let Ok(frame) = Frame::encode(self.mode, &exit) {
                notices.push((Version::V02, frame.into_raw().into()));
            }
        }
        // The workers of other hosts learn it too (their adapters speak 0.3.x across hosts).
        if let Some(bridge) = &self.bridge {
            for (_, bytes) in notices.iter().filter(|(dialect, _)| *dialect == Version::V03) {
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
