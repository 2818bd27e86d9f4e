//! The balancers of the dispatcher: one for the listeners clusterd was given (`--listen`,
//! systemd), where every worker takes connections, and one per address that workers asked
//! clusterd to listen on (`Worker::listen`), where only the workers that asked do.
//!
//! Readiness, sessions and deaths apply to every balancer that knows the worker (the others
//! ignore unknown workers); connection counts belong to the balancer whose listener accepted.
//!
//! A listener that workers asked for is a *group*, owned here with its socket: bound at the
//! first listen, joined by the later ones, and closed when the last worker in it closes its
//! server ([`Pools::close_if_unused`]). A worker that exits only leaves it: its replacement
//! listens again and finds it. Group ids are never reused, so a connection accepted for a group
//! that has since closed can only find no group, never another one.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::balancer::{Balancer, SessionRefused, WorkerKey};
use crate::config::{Balance, ListenAddr, Sticky};
use crate::listener::Accepting;

/// The most listeners that workers asked for, open at once, over all workers: each costs an fd,
/// an accept task, and a balancer that mirrors every session report. clusterd runs with the soft
/// fd limit it was given, 1024 by default (a shell's, and systemd's `DefaultLimitNOFILE`): 256
/// listeners leave three quarters of that to the connections being routed, the workers'
/// channels and the control socket, and stay far above what applications listen on (a few
/// addresses, shared by every worker).
pub const MAX_GROUPS: usize = 256;

/// The most listeners one worker process is in at once. Node gives every worker's n-th
/// `listen(0)` a port of its own, so without it one worker could take all [`MAX_GROUPS`], and
/// the other workers' listens would fail.
pub const MAX_GROUPS_PER_WORKER: usize = 64;

/// Why a worker's listen is refused before anything is bound.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("too many listeners: clusterd listens on {MAX_GROUPS} addresses for the workers already, the most at once")]
    TooMany,
    #[error(
        "too many listeners for one worker: it is in {MAX_GROUPS_PER_WORKER} of clusterd's listeners already, the most at once"
    )]
    TooManyForWorker,
    #[error("too many listeners: clusterd has given out every listener id (2^32) since it started")]
    IdsExhausted,
}

/// A listener that workers asked for.
struct Group {
    /// What the workers asked for, and what was bound (port 0 resolved).
    asked: ListenAddr,
    /// Which listen of each worker on `asked` this is (see `Said::Listen`).
    index: u32,
    bound: String,
    unix_path: Option<PathBuf>,
    balancer: Balancer,
    accepting: Accepting,
}

pub struct Pools {
    main: Balancer,
    /// The open groups, by id (in the order they were bound).
    groups: BTreeMap<u32, Group>,
    /// The id of the next group: ids are never reused.
    next_group: u32,
    /// Listens refused for a bound since clusterd started (for the log's pace).
    refused: u64,
    method: Balance,
    sticky: Sticky,
    ttl: Duration,
}

impl Pools {
    pub fn new(method: Balance, sticky: Sticky, ttl: Duration) -> Self {
        let seed = u64::from(std::process::id());
        let main = Balancer::new(method, sticky, seed, ttl);
        Self { main, groups: BTreeMap::new(), next_group: 0, refused: 0, method, sticky, ttl }
    }

    fn all(&mut self) -> impl Iterator<Item = &mut Balancer> {
        std::iter::once(&mut self.main).chain(self.groups.values_mut().map(|g| &mut g.balancer))
    }

    fn pool(&mut self, group: Option<u32>) -> Option<&mut Balancer> {
        match group {
            None => Some(&mut self.main),
            Some(id) => self.groups.get_mut(&id).map(|g| &mut g.balancer),
        }
    }

    /// A new worker process takes connections of the main listeners.
    pub fn add_worker(&mut self, key: WorkerKey, slot: u32) {
        self.main.add_worker(key, slot);
    }

    pub fn set_ready(&mut self, key: WorkerKey, ready: bool) {
        self.all().for_each(|b| b.set_ready(key, ready));
    }

    /// The worker is at capacity (or has room again), on every listener.
    pub fn set_full(&mut self, key: WorkerKey, full: bool) {
        self.all().for_each(|b| b.set_full(key, full));
    }

    pub fn is_full(&self, key: WorkerKey) -> bool {
        self.main.is_full(key)
    }

    pub fn remove_worker(&mut self, key: WorkerKey) {
        self.all().for_each(|b| b.remove_worker(key));
    }

    /// The worker owns session `sid` (see [`Balancer::session_open`]); when the main balancer refuses
    /// it (another worker owns it, or its table is full), no balancer records it.
    pub fn session_open(&mut self, sid: &str, key: WorkerKey, now: Instant) -> Result<(), SessionRefused> {
        // The main balancer knows every worker and every session: it decides for all of them.
        self.main.session_open(sid, key, now)?;
        for group in self.all().skip(1) {
            // A group's balancer knows only its members, so it cannot see a conflict the main one missed.
            let _ = group.session_open(sid, key, now);
        }
        Ok(())
    }

    pub fn session_close(&mut self, sid: &str, key: WorkerKey) {
        self.all().for_each(|b| b.session_close(sid, key));
    }

    pub fn pick(
        &mut self,
        group: Option<u32>,
        sid: Option<&str>,
        ip: Option<IpAddr>,
        now: Instant,
    ) -> Option<WorkerKey> {
        self.pool(group)?.pick(sid, ip, now)
    }

    /// Whether a worker of the group's pool owns session `sid`.
    pub fn knows_sid(&mut self, group: Option<u32>, sid: &str) -> bool {
        self.pool(group).is_some_and(|pool| pool.knows_sid(sid))
    }

    pub fn connection_closed(&mut self, group: Option<u32>, key: WorkerKey) {
        if let Some(pool) = self.pool(group) {
            pool.connection_closed(key);
        }
    }

    pub fn expire(&mut self, now: Instant) -> usize {
        self.all().map(|b| b.expire(now)).sum()
    }

    /// Connections a worker carries, over every listener.
    pub fn connections(&self, key: WorkerKey) -> u64 {
        self.main.connections(key) + self.groups.values().map(|g| g.balancer.connections(key)).sum::<u64>()
    }

    /// Sessions are mirrored in every balancer: the main one has them all.
    pub fn sessions(&self, key: WorkerKey) -> u64 {
        self.main.sessions(key)
    }

    pub fn session_count(&self) -> usize {
        self.main.session_count()
    }

    /// The group already serving `asked` as a worker's `index`-th listen on it (same address
    /// asked, or the same address bound).
    pub fn find_group(&self, asked: &ListenAddr, index: u32) -> Option<(u32, String)> {
        self.groups
            .iter()
            .find(|(_, g)| g.index == index && (&g.asked == asked || g.bound == asked.to_string()))
            .map(|(id, g)| (*id, g.bound.clone()))
    }

    /// Whether the worker `key` may join `group` (`None`: a group yet to be bound), within
    /// [`MAX_GROUPS_PER_WORKER`] and [`MAX_GROUPS`]. Joining a group it is in already is free.
    pub fn admit(&self, key: WorkerKey, group: Option<u32>) -> Result<(), Refused> {
        let member = |g: &Group| g.balancer.contains(key);
        if group.and_then(|id| self.groups.get(&id)).is_some_and(member) {
            return Ok(());
        }
        if self.groups.values().filter(|g| member(g)).count() >= MAX_GROUPS_PER_WORKER {
            return Err(Refused::TooManyForWorker);
        }
        if group.is_none() {
            if self.groups.len() >= MAX_GROUPS {
                return Err(Refused::TooMany);
            }
            if self.next_group == u32::MAX {
                return Err(Refused::IdsExhausted);
            }
        }
        Ok(())
    }

    /// Counts a listen refused by [`Pools::admit`]; returns the count so far.
    pub fn count_refused(&mut self) -> u64 {
        self.refused += 1;
        self.refused
    }

    /// The id the next [`Pools::add_group`] gives, for its listener's connections to carry.
    pub fn next_group(&self) -> u32 {
        self.next_group
    }

    /// A new group for a bound listener whose accept loop runs (for [`Pools::next_group`]'s
    /// id); returns its id.
    pub fn add_group(
        &mut self,
        asked: ListenAddr,
        index: u32,
        bound: String,
        unix_path: Option<PathBuf>,
        accepting: Accepting,
    ) -> u32 {
        let id = self.next_group;
        // `admit` refuses a new group once the ids run out.
        self.next_group = self.next_group.saturating_add(1);
        let seed = u64::from(std::process::id()) ^ (u64::from(id) + 1);
        let balancer = Balancer::new(self.method, self.sticky, seed, self.ttl);
        self.groups.insert(id, Group { asked, index, bound, unix_path, balancer, accepting });
        id
    }

    /// The worker takes connections of this group from now on.
    pub fn join(&mut self, group: u32, key: WorkerKey, slot: u32, ready: bool) {
        if let Some(g) = self.groups.get_mut(&group) {
            g.balancer.add_worker(key, slot);
            g.balancer.set_ready(key, ready);
        }
    }

    /// The worker takes no more connections of this group; the group's address, if it is open.
    pub fn leave(&mut self, group: u32, key: WorkerKey) -> Option<&str> {
        let g = self.groups.get_mut(&group)?;
        g.balancer.remove_worker(key);
        Some(g.bound.as_str())
    }

    /// Closes the group if no worker is in it (the last one closed its server): its listener
    /// refuses connections from now on, its socket file (if clusterd made one) is removed, and
    /// its id is never given again. Returns its address when it closed.
    pub fn close_if_unused(&mut self, group: u32) -> Option<String> {
        if !self.groups.get(&group)?.balancer.is_empty() {
            return None;
        }
        let g = self.groups.remove(&group)?;
        g.accepting.close();
        if let Some(path) = &g.unix_path
            && let Err(error) = std::fs::remove_file(path)
        {
            tracing::warn!(path = %path.display(), %error, "could not remove the socket file of a closed listener");
        }
        crate::metrics::forget_listener(&g.bound);
        Some(g.bound)
    }

    /// Whether the group is open (connections may still carry the id of one that closed).
    pub fn is_open(&self, group: u32) -> bool {
        self.groups.contains_key(&group)
    }

    /// The addresses of the groups' listeners.
    pub fn bound(&self) -> impl Iterator<Item = &str> {
        self.groups.values().map(|g| g.bound.as_str())
    }

    /// Socket files the groups created, to remove at exit.
    pub fn unix_paths(&self) -> Vec<PathBuf> {
        self.groups.values().filter_map(|g| g.unix_path.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::{Limits, RouteMsg};
    use tokio::sync::mpsc;

    fn pools() -> Pools {
        Pools::new(Balance::LeastConnection, Sticky::None, Duration::from_secs(60))
    }

    fn limits() -> Limits {
        Limits {
            sniff_bytes: 1024,
            sniff_timeout: Duration::from_secs(1),
            sticky: Sticky::None,
            node: true,
            tcp_nodelay: false,
            proxy_protocol: false,
        }
    }

    /// Binds `asked` and adds its group, as the dispatcher's `listen_for` does.
    fn bind(pools: &mut Pools, asked: &str, routes: &mpsc::Sender<RouteMsg>) -> (u32, String) {
        let asked: ListenAddr = asked.parse().expect("an address");
        let bound = crate::listener::bind_all(std::slice::from_ref(&asked)).expect("bind").remove(0);
        let (addr, unix_path) = (bound.addr().to_owned(), bound.unix_path());
        let id = pools.next_group();
        let accepting = crate::listener::serve_group(bound, id, limits(), routes.clone()).expect("serve");
        assert_eq!(pools.add_group(asked, 0, addr.clone(), unix_path, accepting), id);
        (id, addr)
    }

    #[tokio::test]
    async fn the_last_member_closes_a_group_whose_id_is_never_given_again() {
        let (routes, _heard) = mpsc::channel(16);
        let mut pools = pools();
        let (group, addr) = bind(&mut pools, "127.0.0.1:0", &routes);
        pools.join(group, 1, 0, true);
        pools.join(group, 2, 1, true);
        pools.leave(group, 1);
        assert_eq!(pools.close_if_unused(group), None, "worker 2 is still in it");
        assert!(std::net::TcpStream::connect(&addr).is_ok());
        // A worker that exits leaves no member behind either, yet only a close closes.
        pools.remove_worker(2);
        assert!(pools.is_open(group));
        assert_eq!(pools.close_if_unused(group).as_deref(), Some(addr.as_str()));
        assert!(!pools.is_open(group));
        assert_eq!(pools.bound().count(), 0);
        // Refused from the close on, not once the accept task has run.
        let refused = std::net::TcpStream::connect(&addr).expect_err("the port is closed");
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        // A connection that carries the closed id finds no pool, and no other group's.
        assert_eq!(pools.pick(Some(group), None, None, Instant::now()), None);
        pools.connection_closed(Some(group), 1);
        // The same address can be bound again at once; it is a new group.
        let (again, _) = bind(&mut pools, &addr, &routes);
        assert_ne!(again, group);
        pools.join(again, 3, 0, true);
        assert_eq!(pools.pick(Some(again), None, None, Instant::now()), Some(3));
        assert_eq!(pools.pick(Some(group), None, None, Instant::now()), None);
    }

    #[tokio::test]
    async fn a_closed_unix_group_removes_its_socket_file() {
        let (routes, _heard) = mpsc::channel(16);
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("app.sock");
        let mut pools = pools();
        let (group, _) = bind(&mut pools, &format!("unix:{}", path.display()), &routes);
        assert!(path.exists());
        assert!(pools.close_if_unused(group).is_some());
        assert!(!path.exists());
        assert!(pools.unix_paths().is_empty());
    }

    #[tokio::test]
    async fn one_worker_is_in_at_most_max_groups_per_worker() {
        let (routes, _heard) = mpsc::channel(16);
        let mut pools = pools();
        let mut groups = Vec::new();
        for _ in 0..MAX_GROUPS_PER_WORKER {
            assert!(pools.admit(1, None).is_ok());
            let (group, _) = bind(&mut pools, "127.0.0.1:0", &routes);
            pools.join(group, 1, 0, true);
            groups.push(group);
        }
        assert!(matches!(pools.admit(1, None), Err(Refused::TooManyForWorker)));
        // Joining one it is in already costs nothing; another worker is not affected.
        assert!(pools.admit(1, Some(groups[0])).is_ok());
        assert!(pools.admit(2, Some(groups[0])).is_ok());
        assert!(pools.admit(2, None).is_ok());
        pools.leave(groups[0], 1);
        assert!(pools.close_if_unused(groups[0]).is_some());
        assert!(pools.admit(1, None).is_ok());
    }
}
