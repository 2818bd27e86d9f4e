//! Which worker gets a new connection: pure, no clock, no I/O.
//!
//! # Theory of operation
//!
//! The caller tells the balancer what happens to the pool (a worker is added, becomes ready, drains, is
//! gone), to connections (one was handed off, one ended) and to Engine.IO sessions (a worker created one,
//! one ended), always passing the current [`Instant`] in; the balancer answers [`Balancer::pick`].
//!
//! A pick goes through two stages:
//!
//! 1. **Stickiness.** With [`Sticky::Sid`], a request that names a session known to be owned by a worker
//!    still present goes to that worker, even when it is draining: the session's state lives in that process
//!    and nowhere else, so sending it elsewhere would break the client. With [`Sticky::Ip`], a client IP
//!    remembers a *slot*, not a process, so that a restarted slot keeps its clients; it is used only while
//!    that slot has a ready worker, since an IP binding carries no in-process state worth a refusal.
//! 2. **Balancing** among the ready workers with the configured [`Balance`] method.
//!
//! The connection is counted on the chosen worker at once, not when the worker reports it: a burst of
//! connections that arrives before any worker answers must still spread out.
//!
//! Rotation (round-robin, and least-connection ties) remembers the *position* `(slot, key)` of the last
//! balanced pick rather than an index into the worker list, so that workers added or removed in between
//! never make it skip or repeat a worker. Sticky picks do not move it: they are not a balancing decision.
//!
//! Sticky entries are forgotten by [`Balancer::expire`] after the session ttl without use, and sid
//! sessions also as soon as their owner is removed, so the next request of such a session is balanced to a
//! live worker (where the client will be told to reconnect).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::config::{Balance, Sticky};

/// Identifies one worker process (clusterd's "incarnation" number: unique per process, never reused).
pub type WorkerKey = u64;

/// The most entries of each sticky table (sessions, client IPs) of one balancer: about 100 MiB
/// of a table at 100 bytes an entry, far above any single host's open sessions, and a bound on
/// what workers reporting sessions, or clients from many addresses (an IPv6 /64 holds 2^64), can
/// make clusterd keep for a session TTL. Beyond it a new entry is not recorded: that session is
/// refused ([`SessionRefused::Full`]), that IP is balanced without being remembered.
pub const MAX_STICKY_ENTRIES: usize = 1 << 20;

/// Why a worker's report of a session was not recorded ([`Balancer::session_open`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefused {
    /// Another worker of the balancer owns that session id.
    OwnedBy(WorkerKey),
    /// The table holds [`MAX_STICKY_ENTRIES`] sessions.
    Full,
}

/// One worker process as the balancer sees it.
#[derive(Debug, Clone)]
struct Worker {
    key: WorkerKey,
    slot: u32,
    ready: bool,
    /// It said it is at capacity (close to its fd limit): no new connection until it has room.
    full: bool,
    /// Handed off and not yet closed.
    connections: u64,
    /// Sid sessions owned, kept in step with `Balancer::sessions` so that reading it is O(1).
    sessions: u64,
}

impl Worker {
    /// The worker's place in rotation order.
    fn position(&self) -> (u32, WorkerKey) {
        (self.slot, self.key)
    }

    /// Whether it may get a new, non-sticky connection.
    fn takes_new(&self) -> bool {
        self.ready && !self.full
    }
}

/// A sid session: the process that holds its state.
#[derive(Debug, Clone, Copy)]
struct SidEntry {
    owner: WorkerKey,
    last_used: Instant,
}

/// A client IP bound to a slot (which survives the restarts of its process).
#[derive(Debug, Clone, Copy)]
struct IpEntry {
    slot: u32,
    last_used: Instant,
}

/// splitmix64: tiny, fast, statistically good enough for spreading load, and fine with any seed (0
/// included). Not for anything an attacker must not predict.
#[derive(Debug, Clone)]
struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`). The multiply-shift maps 2⁶⁴ values onto `n` buckets with a bias
    /// below n/2⁶⁴: immeasurable for a pool of at most a few thousand workers, and without a division.
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// The balancer's whole state: the pool, the sticky tables, the rotation position and the generator.
#[derive(Debug)]
pub struct Balancer {
    method: Balance,
    sticky: Sticky,
    session_ttl: Duration,
    /// Sorted by `(slot, key)`, the rotation order. A pool has at most `MAX_WORKERS`, so the linear scans
    /// by key are cheaper than keeping an index in step.
    workers: Vec<Worker>,
    /// Position of the last balanced pick; `None` until the first one.
    last: Option<(u32, WorkerKey)>,
    sessions: HashMap<Box<str>, SidEntry>,
    ips: HashMap<IpAddr, IpEntry>,
    rng: SplitMix64,
}

impl Balancer {
    /// `seed` seeds the random method's generator; `session_ttl`: a sticky entry unused for this long is
    /// forgotten by [`Balancer::expire`].
    pub fn new(method: Balance, sticky: Sticky, seed: u64, session_ttl: Duration) -> Self {
        Self {
            method,
            sticky,
            session_ttl,
            workers: Vec::new(),
            last: None,
            sessions: HashMap::new(),
            ips: HashMap::new(),
            rng: SplitMix64 { state: seed },
        }
    }

    /// A new worker process of slot `slot`; starts NOT ready (it cannot serve before it said so), with 0
    /// connections and no sessions. Adding an existing key is a no-op.
    pub fn add_worker(&mut self, key: WorkerKey, slot: u32) {
        if self.index(key).is_some() {
            return;
        }
        let at = self.workers.partition_point(|w| w.position() < (slot, key));
        self.workers.insert(at, Worker { key, slot, ready: false, full: false, connections: 0, sessions: 0 });
    }

    /// Ready workers may be picked for new, non-sticky connections. A draining worker is set not ready: it
    /// gets no new connections but keeps serving the sticky sessions it owns. Unknown key: no-op.
    pub fn set_ready(&mut self, key: WorkerKey, ready: bool) {
        if let Some(i) = self.index(key) {
            self.workers[i].ready = ready;
        }
    }

    /// A worker at capacity gets no new, non-sticky connection until it has room again; the
    /// sessions it owns still reach it (their state is there, and a request that may fail there
    /// would certainly fail elsewhere). Unknown key: no-op.
    pub fn set_full(&mut self, key: WorkerKey, full: bool) {
        if let Some(i) = self.index(key) {
            self.workers[i].full = full;
        }
    }

    /// Whether the worker said it is at capacity (false if unknown).
    pub fn is_full(&self, key: WorkerKey) -> bool {
        self.index(key).is_some_and(|i| self.workers[i].full)
    }

    /// The process is gone: it and every sid session it owned disappear at once, so that the next request
    /// of such a session is balanced to a live worker instead of waiting for the ttl. IP entries name slots
    /// and stay. Unknown key: no-op.
    pub fn remove_worker(&mut self, key: WorkerKey) {
        let Some(i) = self.index(key) else { return };
        let removed = self.workers.remove(i);
        if removed.sessions > 0 {
            self.sessions.retain(|_, entry| entry.owner != key);
        }
    }

    /// Chooses the worker for a new connection and counts the connection on it (+1) right away, so that a
    /// burst before any close spreads out. See the module docs for the order of the rules. Returns `None`
    /// when no worker is ready with room (every one is starting, draining or at capacity) and no present
    /// sticky owner applies.
    pub fn pick(&mut self, sid: Option<&str>, ip: Option<IpAddr>, now: Instant) -> Option<WorkerKey> {
        let i = match self.sticky {
            Sticky::Sid => match self.sid_owner(sid, now) {
                Some(i) => Some(i),
                None => self.balance(),
            },
            Sticky::Ip => self.by_ip(ip, now),
            Sticky::None => self.balance(),
        }?;
        let worker = &mut self.workers[i];
        worker.connections = worker.connections.saturating_add(1);
        Some(worker.key)
    }

    /// Whether some worker owns session `sid`.
    pub fn knows_sid(&self, sid: &str) -> bool {
        self.sessions.contains_key(sid)
    }

    /// A connection of `key` ended (or its handoff failed): -1, saturating at 0 so that a late or duplicate
    /// report cannot wrap. Unknown key: no-op.
    pub fn connection_closed(&mut self, key: WorkerKey) {
        if let Some(i) = self.index(key) {
            let worker = &mut self.workers[i];
            worker.connections = worker.connections.saturating_sub(1);
        }
    }

    /// The worker owns session `sid` from now on (it created it). Ignored if `key` is unknown (a
    /// session of a process already gone must not resurrect it), and unless sticky is `Sid` (nobody
    /// would read it).
    ///
    /// A sid another worker of this balancer owns stays that worker's ([`SessionRefused::OwnedBy`]). Session
    /// ids are random and made by the worker that serves them, so only a worker that read another's
    /// ids (a bug, or a hostile worker) can report one, and taking it over would cost that worker's
    /// client its session. (Workers that left the balancer have no sessions left in it.)
    pub fn session_open(&mut self, sid: &str, key: WorkerKey, now: Instant) -> Result<(), SessionRefused> {
        if self.sticky != Sticky::Sid {
            return Ok(());
        }
        let Some(i) = self.index(key) else { return Ok(()) };
        let full = self.sessions.len() >= MAX_STICKY_ENTRIES;
        match self.sessions.get_mut(sid) {
            Some(existing) if existing.owner != key => Err(SessionRefused::OwnedBy(existing.owner)),
            Some(existing) => {
                existing.last_used = now;
                Ok(())
            }
            None if full => Err(SessionRefused::Full),
            None => {
                self.sessions.insert(sid.into(), SidEntry { owner: key, last_used: now });
                self.workers[i].sessions += 1;
                Ok(())
            }
        }
    }

    /// The session ended; removed only if `key` is its owner (a late close from a former owner must not
    /// drop the session its new owner serves).
    pub fn session_close(&mut self, sid: &str, key: WorkerKey) {
        if self.sessions.get(sid).is_some_and(|entry| entry.owner == key) {
            self.sessions.remove(sid);
            self.forget_sessions(key, 1);
        }
    }

    /// Forgets sid sessions and IP entries unused for longer than the ttl; returns how many were dropped.
    /// O(entries + workers).
    pub fn expire(&mut self, now: Instant) -> usize {
        let ttl = self.session_ttl;
        let stale = |last_used: Instant| now.saturating_duration_since(last_used) > ttl;
        let before = self.sessions.len() + self.ips.len();
        // Counted per owner first, so that the per-worker counters are fixed with one pass over the pool
        // rather than one scan per dropped session.
        let mut dropped: HashMap<WorkerKey, u64> = HashMap::new();
        self.sessions.retain(|_, entry| {
            let keep = !stale(entry.last_used);
            if !keep {
                *dropped.entry(entry.owner).or_default() += 1;
            }
            keep
        });
        self.ips.retain(|_, entry| !stale(entry.last_used));
        if !dropped.is_empty() {
            for worker in &mut self.workers {
                if let Some(n) = dropped.get(&worker.key) {
                    worker.sessions = worker.sessions.saturating_sub(*n);
                }
            }
        }
        before - (self.sessions.len() + self.ips.len())
    }

    /// Counted connections of a worker (0 if unknown).
    pub fn connections(&self, key: WorkerKey) -> u64 {
        self.index(key).map_or(0, |i| self.workers[i].connections)
    }

    /// Sid sessions owned by a worker (0 if unknown).
    pub fn sessions(&self, key: WorkerKey) -> u64 {
        self.index(key).map_or(0, |i| self.workers[i].sessions)
    }

    /// Whether the process is in this pool (ready or not).
    pub fn contains(&self, key: WorkerKey) -> bool {
        self.index(key).is_some()
    }

    /// Whether the pool has no process at all.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// All sid sessions known.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    #[cfg(test)]
    /// Whether any worker is ready.
    pub fn any_ready(&self) -> bool {
        self.workers.iter().any(|w| w.ready)
    }

    fn index(&self, key: WorkerKey) -> Option<usize> {
        self.workers.iter().position(|w| w.key == key)
    }

    fn forget_sessions(&mut self, key: WorkerKey, n: u64) {
        if let Some(i) = self.index(key) {
            let worker = &mut self.workers[i];
            worker.sessions = worker.sessions.saturating_sub(n);
        }
    }

    /// The index of the present owner of `sid`, refreshing the session; ready or not, since only the owner
    /// holds the session's state.
    fn sid_owner(&mut self, sid: Option<&str>, now: Instant) -> Option<usize> {
        let entry = self.sessions.get_mut(sid?)?;
        let i = self.workers.iter().position(|w| w.key == entry.owner)?;
        entry.last_used = now;
        Some(i)
    }

    /// Sticky IP: the slot remembered for `ip` while it has a ready worker, else a balanced pick whose slot
    /// is remembered from now on.
    fn by_ip(&mut self, ip: Option<IpAddr>, now: Instant) -> Option<usize> {
        let Some(ip) = ip else { return self.balance() };
        if let Some(entry) = self.ips.get_mut(&ip) {
            // A slot has two ready processes only during a handover; the less loaded one, and of equals the
            // newer incarnation (keys grow), which is the one that stays.
            let in_slot = (0..self.workers.len())
                .filter(|&i| self.workers[i].slot == entry.slot && self.workers[i].takes_new())
                .min_by_key(|&i| (self.workers[i].connections, std::cmp::Reverse(self.workers[i].key)));
            if let Some(i) = in_slot {
                entry.last_used = now;
                return Some(i);
            }
        }
        let i = self.balance()?;
        if self.ips.len() < MAX_STICKY_ENTRIES || self.ips.contains_key(&ip) {
            self.ips.insert(ip, IpEntry { slot: self.workers[i].slot, last_used: now });
        }
        Some(i)
    }

    /// A pick among the ready workers with the configured method; moves the rotation position.
    fn balance(&mut self) -> Option<usize> {
        let n = self.workers.len();
        // Rotation starts just after the last pick's position, wrapping; that position may belong to a
        // worker removed since, which is why it is a position and not an index.
        let start = match self.last {
            Some(last) => self.workers.partition_point(|w| w.position() <= last),
            None => 0,
        };
        let mut rotation = (0..n).map(|step| (start + step) % n);
        let chosen = match self.method {
            // `min_by_key` keeps the first of equal minima: the first in rotation order, as HAProxy's leastconn.
            Balance::LeastConnection => {
                rotation.filter(|&i| self.workers[i].takes_new()).min_by_key(|&i| self.workers[i].connections)
            }
            Balance::RoundRobin => rotation.find(|&i| self.workers[i].takes_new()),
            Balance::Random => {
                let ready = self.workers.iter().filter(|w| w.takes_new()).count();
                if ready == 0 {
                    None
                } else {
                    let nth = self.rng.below(ready);
                    (0..n).filter(|&i| self.workers[i].takes_new()).nth(nth)
                }
            }
        }?;
        self.last = Some(self.workers[chosen].position());
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const TTL: Duration = Duration::from_secs(60);
    const METHODS: [Balance; 3] = [Balance::LeastConnection, Balance::RoundRobin, Balance::Random];
    const STICKIES: [Sticky; 3] = [Sticky::Sid, Sticky::Ip, Sticky::None];

    /// A balancer with `n` ready workers, keys 10, 11, … in slots 0, 1, …
    fn pool(method: Balance, sticky: Sticky, n: u32) -> Balancer {
        let mut b = Balancer::new(method, sticky, 42, TTL);
        for slot in 0..n {
            b.add_worker(key(slot), slot);
            b.set_ready(key(slot), true);
        }
        b
    }

    fn key(slot: u32) -> WorkerKey {
        10 + u64::from(slot)
    }

    fn ip(n: u8) -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, n)))
    }

    /// Picks `count` times with no sid and no IP, closing each connection at once.
    fn picks_closed(b: &mut Balancer, count: usize, now: Instant) -> Vec<Option<WorkerKey>> {
        (0..count)
            .map(|_| {
                let k = b.pick(None, None, now);
                if let Some(k) = k {
                    b.connection_closed(k);
                }
                k
            })
            .collect()
    }

    #[test]
    fn least_connection_spreads_a_burst_over_all_ready_workers_once_each() {
        let now = Instant::now();
        for n in 1..=8u32 {
            let mut b = pool(Balance::LeastConnection, Sticky::None, n);
            let mut picked: Vec<WorkerKey> = (0..n).map(|_| b.pick(None, None, now).unwrap()).collect();
            picked.sort_unstable();
            assert_eq!(picked, (0..n).map(key).collect::<Vec<_>>(), "burst of {n}");
            for slot in 0..n {
                assert_eq!(b.connections(key(slot)), 1, "n={n} slot={slot}");
            }
        }
    }

    #[test]
    fn least_connection_picks_the_least_loaded_after_closes() {
        let now = Instant::now();
        let mut b = pool(Balance::LeastConnection, Sticky::None, 3);
        for _ in 0..9 {
            b.pick(None, None, now);
        }
        assert_eq!([b.connections(10), b.connections(11), b.connections(12)], [3, 3, 3]);
        b.connection_closed(11);
        b.connection_closed(11);
        b.connection_closed(12);
        assert_eq!(b.pick(None, None, now), Some(11), "11 has 1, the others 3 and 2");
        assert_eq!(b.pick(None, None, now), Some(12), "11 and 12 tied at 2: 12 comes first after 11");
        assert_eq!(b.pick(None, None, now), Some(11), "11 has 2, the others 3");
    }

    #[test]
    fn least_connection_breaks_ties_in_rotation() {
        let now = Instant::now();
        let mut b = pool(Balance::LeastConnection, Sticky::None, 3);
        let expected: Vec<_> = [10, 11, 12, 10, 11, 12, 10].into_iter().map(Some).collect();
        assert_eq!(picks_closed(&mut b, 7, now), expected);
        // Ties are broken after the last pick, not from the start: 11 and 12 tied at 0 after 10 was picked.
        let mut b = pool(Balance::LeastConnection, Sticky::None, 3);
        b.pick(None, None, now); // 10 → 1
        b.pick(None, None, now); // 11 → 1
        b.connection_closed(10); // 10 → 0, 12 at 0: tied, 12 comes first after 11
        assert_eq!(b.pick(None, None, now), Some(12));
        assert_eq!(b.pick(None, None, now), Some(10));
    }

    #[test]
    fn rotation_neither_skips_nor_repeats_when_the_last_picked_worker_is_removed() {
        let now = Instant::now();
        for method in [Balance::LeastConnection, Balance::RoundRobin] {
            let mut b = pool(method, Sticky::None, 4);
            assert_eq!(picks_closed(&mut b, 2, now), [Some(10), Some(11)]);
            b.remove_worker(11);
            assert_eq!(picks_closed(&mut b, 3, now), [Some(12), Some(13), Some(10)], "{method:?}");
            b.add_worker(20, 1); // the restarted slot 1 comes back between 10 and 12
            b.set_ready(20, true);
            assert_eq!(picks_closed(&mut b, 4, now), [Some(20), Some(12), Some(13), Some(10)], "{method:?}");
        }
    }

    #[test]
    fn round_robin_cycles_in_slot_order_and_skips_non_ready_workers() {
        let now = Instant::now();
        let mut b = Balancer::new(Balance::RoundRobin, Sticky::None, 0, TTL);
        // Added out of order; rotation follows slots, then keys within a slot.
        for (k, slot) in [(7, 2), (5, 0), (9, 1), (3, 1)] {
            b.add_worker(k, slot);
            b.set_ready(k, true);
        }
        let expected: Vec<_> = [5, 3, 9, 7, 5, 3].into_iter().map(Some).collect();
        assert_eq!(picks_closed(&mut b, 6, now), expected);
        b.set_ready(9, false);
        b.set_ready(5, false);
        let expected: Vec<_> = [7, 3, 7, 3].into_iter().map(Some).collect();
        assert_eq!(picks_closed(&mut b, 4, now), expected);
        // Round-robin ignores load: the busier worker still gets its turn.
        assert_eq!(b.pick(None, None, now), Some(7), "held open");
        assert_eq!(picks_closed(&mut b, 1, now), [Some(3)]);
        assert_eq!(b.pick(None, None, now), Some(7), "1 connection against 0, but its turn");
    }

    #[test]
    fn random_picks_only_ready_workers_and_all_of_them_eventually() {
        let now = Instant::now();
        let mut b = pool(Balance::Random, Sticky::None, 5);
        b.set_ready(11, false);
        b.set_ready(13, false);
        let picked = picks_closed(&mut b, 200, now);
        for k in [10, 12, 14] {
            assert!(picked.contains(&Some(k)), "{k} never picked");
        }
        assert!(picked.iter().all(|k| matches!(k, Some(10 | 12 | 14))), "{picked:?}");
    }

    #[test]
    fn random_is_deterministic_for_a_seed() {
        let now = Instant::now();
        let run = |seed| {
            let mut b = Balancer::new(Balance::Random, Sticky::None, seed, TTL);
            for slot in 0..4 {
                b.add_worker(key(slot), slot);
                b.set_ready(key(slot), true);
            }
            picks_closed(&mut b, 50, now)
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        assert_eq!(run(0).len(), 50, "seed 0 is valid for splitmix64");
    }

    #[test]
    fn random_is_uniform_within_15_percent() {
        let now = Instant::now();
        for seed in [0, 1, 42, u64::MAX] {
            let mut b = Balancer::new(Balance::Random, Sticky::None, seed, TTL);
            for slot in 0..3 {
                b.add_worker(key(slot), slot);
                b.set_ready(key(slot), true);
            }
            let picked = picks_closed(&mut b, 3000, now);
            for slot in 0..3 {
                let hits = picked.iter().filter(|&&k| k == Some(key(slot))).count();
                assert!((850..=1150).contains(&hits), "seed {seed}: slot {slot} got {hits} of 3000");
            }
        }
    }

    #[test]
    fn only_ready_workers_get_non_sticky_connections() {
        let now = Instant::now();
        for method in METHODS {
            for sticky in STICKIES {
                let mut b = pool(method, sticky, 4);
                b.set_ready(10, false);
                b.set_ready(12, false);
                for round in 0..40u8 {
                    let k = b.pick(Some("unknown"), ip(round), now);
                    assert!(matches!(k, Some(11 | 13)), "{method:?} {sticky:?}: {k:?}");
                }
                assert_eq!(b.connections(10) + b.connections(12), 0);
            }
        }
    }

    #[test]
    fn a_full_worker_gets_no_new_connection_until_it_has_room() {
        let now = Instant::now();
        for method in METHODS {
            for sticky in STICKIES {
                let mut b = pool(method, sticky, 3);
                b.set_full(11, true);
                assert!(b.is_full(11) && !b.is_full(10) && !b.is_full(99));
                for round in 0..30u8 {
                    let k = b.pick(Some("unknown"), ip(round), now);
                    assert!(matches!(k, Some(10 | 12)), "{method:?} {sticky:?}: {k:?}");
                }
                assert_eq!(b.connections(11), 0);
                // Every ready worker full: nothing, so clusterd answers 503.
                b.set_full(10, true);
                b.set_full(12, true);
                assert_eq!(b.pick(None, ip(1), now), None, "{method:?} {sticky:?}");
                b.set_full(11, false);
                assert_eq!(b.pick(None, ip(200), now), Some(11), "{method:?} {sticky:?}: room again");
            }
        }
    }

    #[test]
    fn a_full_owner_still_gets_its_sticky_sid_and_an_ip_moves_off_a_full_slot() {
        let now = Instant::now();
        let mut b = pool(Balance::LeastConnection, Sticky::Sid, 2);
        b.session_open("s1", 10, now).expect("a free sid of a worker in the pool");
        b.set_full(10, true);
        assert_eq!(b.pick(Some("s1"), None, now), Some(10), "the session's state is there");
        assert_eq!(b.pick(None, None, now), Some(11));
        let mut b = pool(Balance::LeastConnection, Sticky::Ip, 2);
        let first = b.pick(None, ip(7), now).unwrap();
        b.set_full(first, true);
        let second = b.pick(None, ip(7), now).unwrap();
        assert_ne!(first, second, "an IP binding carries no state: it moves to a worker with room");
    }

    #[test]
    fn no_ready_worker_gives_none_and_counts_nothing() {
        let now = Instant::now();
        for method in METHODS {
            for sticky in STICKIES {
                let mut b = Balancer::new(method, sticky, 1, TTL);
                assert_eq!(b.pick(None, None, now), None, "empty pool");
                assert!(!b.any_ready());
                b.add_worker(1, 0);
                b.add_worker(2, 1);
                assert_eq!(b.pick(Some("s"), ip(1), now), None, "added but not ready yet");
                b.set_ready(1, true);
                assert!(b.any_ready());
                b.set_ready(1, false);
                assert_eq!(b.pick(Some("s"), ip(1), now), None, "drained");
                assert_eq!(b.connections(1) + b.connections(2), 0);
            }
        }
    }

    #[test]
    fn a_draining_owner_still_gets_its_sticky_sid() {
        let now = Instant::now();
        let later = now + Duration::from_secs(30);
        let mut b = pool(Balance::LeastConnection, Sticky::Sid, 2);
        b.session_open("abc", 10, now).expect("a free sid of a worker in the pool");
        b.set_ready(10, false);
        assert_eq!(b.pick(Some("abc"), None, later), Some(10));
        assert_eq!(b.connections(10), 1);
        assert_eq!(b.pick(None, None, later), Some(11), "no new sessionless connections");
        assert_eq!(b.pick(Some("other"), None, later), Some(11), "nor unknown sids");
        b.set_ready(11, false);
        assert_eq!(b.pick(Some("abc"), None, later), Some(10), "even with nobody ready");
        assert_eq!(b.pick(None, None, later), None);
        // The pick refreshed the session: at now + 80s it has been unused for 50s only.
        assert_eq!(b.expire(now + Duration::from_secs(80)), 0);
        assert_eq!(b.session_count(), 1);
    }

    #[test]
    fn a_removed_owners_sid_is_balanced_elsewhere_and_its_sessions_are_gone() {
        let now = Instant::now();
        let mut b = pool(Balance::RoundRobin, Sticky::Sid, 3);
        b.session_open("a", 10, now).expect("a free sid of a worker in the pool");
        b.session_open("b", 10, now).expect("a free sid of a worker in the pool");
        b.session_open("c", 11, now).expect("a free sid of a worker in the pool");
        assert_eq!((b.session_count(), b.sessions(10), b.sessions(11)), (3, 2, 1));
        b.remove_worker(10);
        assert_eq!((b.session_count(), b.sessions(10), b.sessions(11)), (1, 0, 1));
        let k = b.pick(Some("a"), None, now);
        assert!(matches!(k, Some(11 | 12)), "{k:?}");
        assert_eq!(b.connections(10), 0);
        assert_eq!(b.pick(Some("c"), None, now), Some(11), "other owners' sessions stay");
        // A session reported by the dead process afterwards is ignored.
        b.session_open("d", 10, now).expect("a free sid of a worker in the pool");
        assert_eq!(b.session_count(), 1);
    }

    #[test]
    fn sticky_none_and_ip_ignore_the_sid() {
        let now = Instant::now();
        for sticky in [Sticky::None, Sticky::Ip] {
            let mut b = pool(Balance::RoundRobin, sticky, 3);
            b.session_open("abc", 12, now).expect("a free sid of a worker in the pool");
            assert_eq!(b.session_count(), 0, "{sticky:?}: not recorded");
            assert_eq!(b.sessions(12), 0);
            let picked: Vec<_> = (0..3).map(|_| b.pick(Some("abc"), None, now)).collect();
            assert_eq!(picked, [Some(10), Some(11), Some(12)], "{sticky:?}");
        }
    }

    #[test]
    fn sticky_none_ignores_the_ip() {
        let now = Instant::now();
        let mut b = pool(Balance::RoundRobin, Sticky::None, 3);
        let picked: Vec<_> = (0..3).map(|_| b.pick(None, ip(1), now)).collect();
        assert_eq!(picked, [Some(10), Some(11), Some(12)]);
    }

    #[test]
    fn sticky_ip_keeps_an_ip_on_its_slot_across_a_restart_of_the_slot() {
        let now = Instant::now();
        let mut b = pool(Balance::RoundRobin, Sticky::Ip, 3);
        assert_eq!(b.pick(None, ip(1), now), Some(10));
        assert_eq!(b.pick(None, ip(2), now), Some(11));
        for _ in 0..5 {
            assert_eq!(b.pick(None, ip(2), now), Some(11));
        }
        // Slot 1 restarts: key 11 is gone, key 21 takes its place.
        b.remove_worker(11);
        b.add_worker(21, 1);
        assert_eq!(b.pick(None, ip(2), now), Some(12), "the new process is not ready yet");
        // That balanced pick moved the IP to slot 2; it stays there.
        b.set_ready(21, true);
        assert_eq!(b.pick(None, ip(2), now), Some(12));

        // A restart with the replacement ready before the IP returns keeps it on its slot.
        b.remove_worker(10);
        b.add_worker(20, 0);
        b.set_ready(20, true);
        assert_eq!(b.pick(None, ip(1), now), Some(20));
        assert_eq!(b.connections(20), 1);
    }

    #[test]
    fn sticky_ip_follows_the_ready_process_of_its_slot_during_a_handover() {
        let now = Instant::now();
        let mut b = pool(Balance::LeastConnection, Sticky::Ip, 2);
        assert_eq!(b.pick(None, ip(9), now), Some(10));
        b.add_worker(30, 0); // successor of 10 in slot 0
        b.set_ready(30, true);
        assert_eq!(b.pick(None, ip(9), now), Some(30), "the less loaded process of the slot");
        assert_eq!(b.pick(None, ip(9), now), Some(30), "of equals (1 and 1), the newer incarnation");
        b.set_ready(30, false);
        assert_eq!(b.pick(None, ip(9), now), Some(10));
    }

    #[test]
    fn sticky_ip_moves_when_its_slot_has_no_ready_worker() {
        let now = Instant::now();
        let mut b = pool(Balance::RoundRobin, Sticky::Ip, 3);
        assert_eq!(b.pick(None, ip(1), now), Some(10));
        b.set_ready(10, false);
        assert_eq!(b.pick(None, ip(1), now), Some(11));
        b.set_ready(10, true);
        assert_eq!(b.pick(None, ip(1), now), Some(11), "now bound to slot 1");
        b.remove_worker(11);
        assert_eq!(b.pick(None, ip(1), now), Some(12));
    }

    #[test]
    fn sticky_ip_spreads_different_ips_and_balances_without_an_ip() {
        let now = Instant::now();
        let mut b = pool(Balance::LeastConnection, Sticky::Ip, 4);
        let v6 = Some(IpAddr::V6(Ipv6Addr::LOCALHOST));
        let first: Vec<_> = [ip(1), ip(2), ip(3), v6].into_iter().map(|a| b.pick(None, a, now)).collect();
        assert_eq!(first, [Some(10), Some(11), Some(12), Some(13)]);
        let again: Vec<_> = [ip(1), ip(2), ip(3), v6].into_iter().map(|a| b.pick(None, a, now)).collect();
        assert_eq!(again, first);
        assert_eq!(b.pick(None, None, now), Some(10), "no IP: balanced, nothing recorded");
        assert_eq!(b.expire(now + TTL * 2), 4, "only the four IPs were recorded");
    }

    #[test]
    fn a_session_stays_with_its_owner_whoever_else_reports_it() {
        let now = Instant::now();
        let mut b = pool(Balance::LeastConnection, Sticky::Sid, 2);
        assert_eq!(b.session_open("s", 10, now), Ok(()));
        assert_eq!((b.sessions(10), b.sessions(11), b.session_count()), (1, 0, 1));
        assert_eq!(b.session_open("s", 10, now), Ok(()));
        assert_eq!((b.sessions(10), b.sessions(11), b.session_count()), (1, 0, 1), "same owner again");
        assert_eq!(
            b.session_open("s", 11, now),
            Err(SessionRefused::OwnedBy(10)),
            "another live worker's sid is refused"
        );
        assert_eq!((b.sessions(10), b.sessions(11), b.session_count()), (1, 0, 1));
        assert_eq!(b.pick(Some("s"), None, now), Some(10));
        assert_eq!(b.session_open("s", 99, now), Ok(()), "unknown key ignored");
        assert_eq!((b.sessions(10), b.session_count()), (1, 1));
        // Once its owner is gone, a sid is free again.
        b.remove_worker(10);
        assert_eq!(b.session_open("s", 11, now), Ok(()));
        assert_eq!(b.pick(Some("s"), None, now), Some(11));
    }

    #[test]
    fn the_sticky_tables_stop_growing_at_their_bound() {
        let now = Instant::now();
        let mut b = pool(Balance::RoundRobin, Sticky::Sid, 2);
        for n in 0..MAX_STICKY_ENTRIES {
            b.session_open(&n.to_string(), 10, now).expect("a free sid of a worker in the pool");
        }
        assert_eq!(b.session_open("one-more", 11, now), Err(SessionRefused::Full));
        assert_eq!(b.session_open("0", 10, now), Ok(()), "a known session is still refreshed");
        assert_eq!(
            (b.session_count(), b.sessions(10), b.sessions(11)),
            (MAX_STICKY_ENTRIES, MAX_STICKY_ENTRIES as u64, 0)
        );
        b.session_close("0", 10);
        assert_eq!(b.session_open("one-more", 11, now), Ok(()), "room again");

        let mut b = pool(Balance::RoundRobin, Sticky::Ip, 2);
        for n in 0..MAX_STICKY_ENTRIES as u128 {
            b.pick(None, Some(IpAddr::V6((0x2001_0db8_u128 << 96 | n).into())), now);
        }
        let unseen = Some(IpAddr::V6((0x2001_0db9_u128 << 96).into()));
        let picks: Vec<_> = (0..4).map(|_| b.pick(None, unseen, now)).collect();
        assert_eq!(picks, [Some(10), Some(11), Some(10), Some(11)], "a new IP is balanced, not remembered");
        assert_eq!(b.expire(now + TTL * 2), MAX_STICKY_ENTRIES);
    }

    #[test]
    fn session_close_by_a_non_owner_does_nothing() {
        let now = Instant::now();
        let mut b = pool(Balance::LeastConnection, Sticky::Sid, 2);
        assert_eq!(b.session_open("s", 11, now), Ok(()));
        b.session_close("s", 10);
        b.session_close("s", 99);
        b.session_close("nope", 11);
        assert_eq!((b.sessions(10), b.sessions(11), b.session_count()), (0, 1, 1));
        b.session_close("s", 11);
        assert_eq!((b.sessions(10), b.sessions(11), b.session_count()), (0, 0, 0));
        b.session_close("s", 11);
        assert_eq!(b.sessions(11), 0, "a second close is harmless");
    }

    #[test]
    fn expire_drops_exactly_the_stale_entries() {
        let base = Instant::now();
        let at = |secs| base + Duration::from_secs(secs);
        let mut b = pool(Balance::RoundRobin, Sticky::Sid, 2);
        b.session_open("old", 10, at(0)).expect("a free sid of a worker in the pool");
        b.session_open("edge", 10, at(40)).expect("a free sid of a worker in the pool");
        b.session_open("new", 11, at(90)).expect("a free sid of a worker in the pool");
        assert_eq!(b.expire(at(100)), 1, "old: 100s > 60s");
        assert_eq!((b.session_count(), b.sessions(10), b.sessions(11)), (2, 1, 1));
        assert_eq!(b.expire(at(100)), 0, "idempotent");
        assert_eq!(b.expire(at(40) + TTL), 0, "unused for exactly the ttl is kept");
        assert_eq!(b.expire(at(40) + TTL + Duration::from_nanos(1)), 1);
        assert_eq!((b.session_count(), b.sessions(10), b.sessions(11)), (1, 0, 1));
        assert_eq!(b.expire(base), 0, "a clock before the entries drops nothing and does not panic");
        assert_eq!(b.pick(Some("old"), None, at(100)), Some(10), "expired: balanced (rotation starts at 10)");

        let mut b = pool(Balance::RoundRobin, Sticky::Ip, 2);
        b.pick(None, ip(1), at(0));
        b.pick(None, ip(2), at(0));
        b.pick(None, ip(1), at(50)); // refreshed by the pick
        assert_eq!(b.expire(at(100)), 1, "ip 2 only");
        assert_eq!(b.expire(at(111)), 1, "ip 1, 61s after its last use");
    }

    #[test]
    fn expire_keeps_a_session_refreshed_by_pick() {
        let base = Instant::now();
        let at = |secs| base + Duration::from_secs(secs);
        let mut b = pool(Balance::LeastConnection, Sticky::Sid, 2);
        b.session_open("a", 11, at(0)).expect("a free sid of a worker in the pool");
        b.session_open("b", 11, at(0)).expect("a free sid of a worker in the pool");
        assert_eq!(b.pick(Some("a"), None, at(50)), Some(11));
        assert_eq!(b.expire(at(100)), 1);
        assert_eq!(b.pick(Some("a"), None, at(100)), Some(11), "a kept its owner");
        assert_eq!(b.sessions(11), 1);
    }

    #[test]
    fn connection_closed_saturates_at_zero() {
        let now = Instant::now();
        let mut b = pool(Balance::LeastConnection, Sticky::None, 1);
        b.connection_closed(10);
        assert_eq!(b.connections(10), 0);
        b.pick(None, None, now);
        b.pick(None, None, now);
        for _ in 0..5 {
            b.connection_closed(10);
        }
        assert_eq!(b.connections(10), 0);
        assert_eq!(b.pick(None, None, now), Some(10));
        assert_eq!(b.connections(10), 1);
    }

    #[test]
    fn unknown_keys_never_panic_anywhere() {
        let now = Instant::now();
        for sticky in STICKIES {
            let mut b = pool(Balance::LeastConnection, sticky, 1);
            b.set_ready(99, true);
            b.connection_closed(99);
            b.remove_worker(99);
            b.session_open("s", 99, now).expect("a free sid of a worker in the pool");
            b.session_close("s", 99);
            assert_eq!((b.connections(99), b.sessions(99), b.session_count()), (0, 0, 0));
            assert_eq!(b.expire(now), 0);
            assert_eq!(b.pick(None, None, now), Some(10), "the real worker is untouched");
            b.remove_worker(10);
            b.remove_worker(10);
            assert_eq!(b.pick(Some("s"), ip(1), now), None);
            assert!(!b.any_ready());
        }
    }

    #[test]
    fn a_new_worker_starts_not_ready_and_adding_it_twice_is_a_no_op() {
        let now = Instant::now();
        let mut b = Balancer::new(Balance::RoundRobin, Sticky::Sid, 0, TTL);
        b.add_worker(1, 0);
        assert!(!b.any_ready());
        b.set_ready(1, true);
        b.session_open("s", 1, now).expect("a free sid of a worker in the pool");
        b.pick(None, None, now);
        b.add_worker(1, 5);
        assert!(b.any_ready(), "readiness kept");
        assert_eq!((b.connections(1), b.sessions(1)), (1, 1), "counters kept");
        b.add_worker(2, 0);
        assert_eq!(picks_closed(&mut b, 2, now), [Some(1), Some(1)], "one entry for key 1, and 2 not ready");
    }

    /// Every pool of up to 4 workers × ready flags × method × sticky × where the sid's owner is: the pick
    /// succeeds iff some worker is ready or the sid has a present owner, goes to that owner if it has one,
    /// and otherwise to a ready worker; exactly that worker's count grows by 1.
    #[test]
    fn pick_outcome_over_all_small_configurations() {
        let now = Instant::now();
        /// Where the session "s" is owned.
        #[derive(Debug, Clone, Copy)]
        enum Owner {
            Nobody,
            Present(u32),
            Removed,
        }
        let mut cases = 0;
        for n in 0..=4u32 {
            let owners =
                [Owner::Nobody, Owner::Removed].into_iter().chain((0..n).map(Owner::Present)).collect::<Vec<_>>();
            for ready_mask in 0..(1u32 << n) {
                for method in METHODS {
                    for sticky in STICKIES {
                        for owner in owners.iter().copied() {
                            for ip_slot in [None].into_iter().chain((0..n).map(Some)) {
                                let mut b = Balancer::new(method, sticky, u64::from(ready_mask), TTL);
                                for slot in 0..n {
                                    b.add_worker(key(slot), slot);
                                }
                                // Bind the IP to a slot by making it the only ready one, then forget the pick.
                                if let Some(slot) = ip_slot {
                                    b.set_ready(key(slot), true);
                                    assert_eq!(b.pick(None, ip(1), now), Some(key(slot)));
                                    b.connection_closed(key(slot));
                                }
                                match owner {
                                    Owner::Nobody => {}
                                    Owner::Present(slot) => {
                                        b.session_open("s", key(slot), now).expect("a free sid of a worker in the pool")
                                    }
                                    Owner::Removed => {
                                        b.add_worker(99, 9);
                                        b.session_open("s", 99, now).expect("a free sid of a worker in the pool");
                                        b.remove_worker(99);
                                    }
                                }
                                for slot in 0..n {
                                    b.set_ready(key(slot), ready_mask & (1 << slot) != 0);
                                }
                                let is_ready = |k: WorkerKey| ready_mask & (1 << (k - 10)) != 0;
                                let sid_owner = match (sticky, owner) {
                                    (Sticky::Sid, Owner::Present(slot)) => Some(key(slot)),
                                    _ => None,
                                };
                                let ctx = format!(
                                    "n={n} ready={ready_mask:04b} {method:?} {sticky:?} {owner:?} ip_slot={ip_slot:?}"
                                );

                                assert_eq!(b.any_ready(), ready_mask != 0, "{ctx}");
                                let picked = b.pick(Some("s"), ip(1), now);
                                assert_eq!(picked.is_some(), ready_mask != 0 || sid_owner.is_some(), "{ctx}");
                                if let Some(k) = picked {
                                    match sid_owner {
                                        Some(owner) => assert_eq!(k, owner, "{ctx}"),
                                        None => assert!(is_ready(k), "{ctx}: {k} not ready"),
                                    }
                                    if let (Sticky::Ip, Some(slot)) = (sticky, ip_slot)
                                        && is_ready(key(slot))
                                    {
                                        assert_eq!(k, key(slot), "{ctx}: left its ready slot");
                                    }
                                }
                                for slot in 0..n {
                                    let expected = u64::from(picked == Some(key(slot)));
                                    assert_eq!(b.connections(key(slot)), expected, "{ctx} slot {slot}");
                                }
                                cases += 1;
                            }
                        }
                    }
                }
            }
        }
        assert!(cases > 5000, "{cases} cases");
    }
}
