//! `@socket.io/cluster-adapter` 0.2.x across hosts: what its messages carry that is only unique on
//! one host, and how a host makes it unique for its own workers. Pure: the caller passes the time.
//!
//! A 0.2.x adapter counts the other servers by their `cluster.worker.id` (the `data` of its
//! `WORKER_INIT`, `WORKER_PING` and `WORKER_EXIT`): `serverCount()` is one more than the ids it
//! holds, and a `fetchSockets` or a `serverSideEmit` with acks waits for that many answers. Every
//! clusterd numbers its Node workers from 1, so two hosts' ids collide. A host therefore gives
//! each worker of another host an *alias*, an id no local worker has (from [`ALIAS_BASE`] up; the
//! local ids count processes from 1 and stay far below), and rewrites those three messages (which
//! carry nothing but the id) as they come in. The alias lives until that worker's `WORKER_EXIT`
//! or its host's departure, which the local workers hear as the alias's `WORKER_EXIT`.
//!
//! The requests (`FETCH_SOCKETS`, `SERVER_SIDE_EMIT` with an ack) carry the asker's id too, as
//! `data.workerId`, and the answers repeat it: Node's primary routes an answer by it. An answer to
//! another host's request is routed by the request's `data.requestId` instead (8 random bytes, the
//! key the asking adapter itself matches answers with), which this host noted when the request
//! came: [`RemoteRequests`]. The asking host then routes it by `data.workerId`, its own id.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The first alias. Local ids are the count of Node workers started (from 1), far below.
pub const ALIAS_BASE: u64 = 1 << 30;
/// Past the last alias: Node reads `cluster.worker.id` as `+NODE_UNIQUE_ID | 0`, an int32.
const ALIAS_END: u64 = 1 << 31;
/// The most workers of other hosts aliased at once; beyond, an announcement is dropped (a group
/// has a few hundred Node workers; more are forged).
pub const MAX_ALIASES: usize = 64 * 1024;
/// The most requests of other hosts remembered for routing their answers.
pub const MAX_REMOTE_REQUESTS: usize = 64 * 1024;
/// How long a request of another host is remembered: its answers come within the asker's
/// `requestsTimeout` (5 s by default), or are of no use.
pub const REMOTE_REQUEST_TTL: Duration = Duration::from_secs(60);

/// The aliases of other hosts' workers.
#[derive(Debug)]
pub struct Aliases {
    by_host: BTreeMap<u64, BTreeMap<u64, u64>>,
    count: usize,
    next: u64,
}

impl Default for Aliases {
    fn default() -> Self {
        Self { by_host: BTreeMap::new(), count: 0, next: ALIAS_BASE }
    }
}

impl Aliases {
    /// The alias of `host`'s worker `id`, given now if it has none; `None` when the table is full.
    pub fn alias(&mut self, host: u64, id: u64) -> Option<u64> {
        if let Some(alias) = self.by_host.get(&host).and_then(|ids| ids.get(&id)) {
            return Some(*alias);
        }
        if self.count >= MAX_ALIASES || self.next >= ALIAS_END {
            return None;
        }
        let alias = self.next;
        self.next += 1;
        self.count += 1;
        self.by_host.entry(host).or_default().insert(id, alias);
        Some(alias)
    }

    /// `host`'s worker `id` exited: its alias, forgotten.
    pub fn remove(&mut self, host: u64, id: u64) -> Option<u64> {
        let ids = self.by_host.get_mut(&host)?;
        let alias = ids.remove(&id)?;
        if ids.is_empty() {
            self.by_host.remove(&host);
        }
        self.count -= 1;
        Some(alias)
    }

    /// `host` is gone: the aliases of its workers, forgotten.
    pub fn host_gone(&mut self, host: u64) -> Vec<u64> {
        let aliases: Vec<u64> = self.by_host.remove(&host).map(|ids| ids.into_values().collect()).unwrap_or_default();
        self.count -= aliases.len();
        aliases
    }
}

/// The requests of other hosts' workers, by `data.requestId`: where their answers go.
#[derive(Debug, Default)]
pub struct RemoteRequests {
    hosts: HashMap<String, u64>,
    order: VecDeque<(String, Instant)>,
}

impl RemoteRequests {
    pub fn insert(&mut self, request: &str, host: u64, now: Instant) {
        self.expire(now);
        if self.hosts.len() >= MAX_REMOTE_REQUESTS
            && let Some((oldest, _)) = self.order.pop_front()
        {
            self.hosts.remove(&oldest);
        }
        if self.hosts.insert(request.to_owned(), host).is_none() {
            self.order.push_back((request.to_owned(), now));
        }
    }

    /// The host that asked `request`, if it was another host's.
    pub fn host_of(&mut self, request: &str, now: Instant) -> Option<u64> {
        self.expire(now);
        self.hosts.get(request).copied()
    }

    pub fn host_gone(&mut self, host: u64) {
        self.hosts.retain(|_, h| *h != host);
        let hosts = &self.hosts;
        self.order.retain(|(request, _)| hosts.contains_key(request));
    }

    fn expire(&mut self, now: Instant) {
        while let Some((request, at)) = self.order.front() {
            if now.duration_since(*at) < REMOTE_REQUEST_TTL {
                break;
            }
            self.hosts.remove(request);
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_id_on_two_hosts_gets_two_aliases_kept_until_exit_or_departure() {
        let mut aliases = Aliases::default();
        let a1 = aliases.alias(7, 1).expect("room");
        let b1 = aliases.alias(8, 1).expect("room");
        assert!(a1 >= ALIAS_BASE && b1 >= ALIAS_BASE && a1 != b1);
        assert_eq!(aliases.alias(7, 1), Some(a1), "a worker keeps its alias");
        let a2 = aliases.alias(7, 2).expect("room");
        assert_eq!(aliases.remove(7, 1), Some(a1));
        assert_eq!(aliases.remove(7, 1), None);
        assert_eq!(aliases.host_gone(7), vec![a2]);
        assert_eq!(aliases.host_gone(7), Vec::<u64>::new());
        assert_ne!(aliases.alias(7, 1), Some(a1), "an alias is never given twice");
    }

    #[test]
    fn the_alias_table_is_bounded() {
        let mut aliases = Aliases::default();
        for id in 0..MAX_ALIASES as u64 {
            assert!(aliases.alias(1, id).is_some());
        }
        assert_eq!(aliases.alias(2, 0), None);
        aliases.host_gone(1);
        assert!(aliases.alias(2, 0).is_some());
    }

    #[test]
    fn remote_requests_route_until_they_expire_or_their_host_goes() {
        let (mut requests, t0) = (RemoteRequests::default(), Instant::now());
        requests.insert("a", 7, t0);
        requests.insert("b", 8, t0 + Duration::from_secs(1));
        assert_eq!(requests.host_of("a", t0), Some(7));
        assert_eq!(requests.host_of("c", t0), None);
        assert_eq!(requests.host_of("a", t0 + REMOTE_REQUEST_TTL), None);
        assert_eq!(requests.host_of("b", t0 + REMOTE_REQUEST_TTL), Some(8));
        requests.host_gone(8);
        assert_eq!(requests.host_of("b", t0 + REMOTE_REQUEST_TTL), None);
    }
}
