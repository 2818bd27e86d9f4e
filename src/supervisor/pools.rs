//! The balancers of the dispatcher: one for the listeners clusterd was given (`--listen`,
//! systemd), where every worker takes connections, and one per address that workers asked
//! clusterd to listen on (`Worker::listen`), where only the workers that asked do.
//!
//! Readiness, sessions and deaths apply to every balancer that knows the worker (the others
//! ignore unknown workers); connection counts belong to the balancer whose listener accepted.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::balancer::{Balancer, Refused, WorkerKey};
use crate::config::{Balance, ListenAddr, Sticky};

/// A listener that workers asked for.
struct Group {
    /// What the workers asked for, and what was bound (port 0 resolved).
    asked: ListenAddr,
    /// Which listen of each worker on `asked` this is (see `Said::Listen`).
    index: u32,
    bound: String,
    unix_path: Option<PathBuf>,
    balancer: Balancer,
}

pub struct Pools {
    main: Balancer,
    groups: Vec<Group>,
    method: Balance,
    sticky: Sticky,
    ttl: Duration,
}

impl Pools {
    pub fn new(method: Balance, sticky: Sticky, ttl: Duration) -> Self {
        let seed = u64::from(std::process::id());
        Self { main: Balancer::new(method, sticky, seed, ttl), groups: Vec::new(), method, sticky, ttl }
    }

    fn all(&mut self) -> impl Iterator<Item = &mut Balancer> {
        std::iter::once(&mut self.main).chain(self.groups.iter_mut().map(|g| &mut g.balancer))
    }

    fn pool(&mut self, group: Option<u32>) -> Option<&mut Balancer> {
        match group {
            None => Some(&mut self.main),
            Some(id) => self.groups.get_mut(id as usize).map(|g| &mut g.balancer),
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
    pub fn session_open(&mut self, sid: &str, key: WorkerKey, now: Instant) -> Result<(), Refused> {
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
        self.main.connections(key) + self.groups.iter().map(|g| g.balancer.connections(key)).sum::<u64>()
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
            .position(|g| g.index == index && (&g.asked == asked || g.bound == asked.to_string()))
            .map(|i| (i as u32, self.groups[i].bound.clone()))
    }

    /// A new group for a bound listener; returns its id.
    pub fn add_group(&mut self, asked: ListenAddr, index: u32, bound: String, unix_path: Option<PathBuf>) -> u32 {
        let seed = u64::from(std::process::id()) ^ (self.groups.len() as u64 + 1);
        let balancer = Balancer::new(self.method, self.sticky, seed, self.ttl);
        self.groups.push(Group { asked, index, bound, unix_path, balancer });
        self.groups.len() as u32 - 1
    }

    /// The worker takes connections of this group from now on.
    pub fn join(&mut self, group: u32, key: WorkerKey, slot: u32, ready: bool) {
        if let Some(g) = self.groups.get_mut(group as usize) {
            g.balancer.add_worker(key, slot);
            g.balancer.set_ready(key, ready);
        }
    }

    /// The worker takes no more connections of this group; the group's address, if it was in it.
    pub fn leave(&mut self, group: u32, key: WorkerKey) -> Option<&str> {
        let g = self.groups.get_mut(group as usize)?;
        g.balancer.remove_worker(key);
        Some(g.bound.as_str())
    }

    /// The addresses of the groups' listeners.
    pub fn bound(&self) -> impl Iterator<Item = &str> {
        self.groups.iter().map(|g| g.bound.as_str())
    }

    /// Socket files the groups created, to remove at exit.
    pub fn unix_paths(&self) -> Vec<PathBuf> {
        self.groups.iter().filter_map(|g| g.unix_path.clone()).collect()
    }
}
