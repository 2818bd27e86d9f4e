//! Who else is in the cluster: the other hosts of the group, what each counts, and when each was
//! last heard of. Pure: the caller passes the time.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::codec::HostId;

/// A change in the cluster worth a log line.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Joined(HostId),
    Left(HostId),
    TimedOut(HostId),
}

#[derive(Debug)]
struct Host {
    seen: Instant,
    counts: BTreeMap<String, u32>,
    shadowed: bool,
}

/// The other hosts of the group.
#[derive(Debug, Default)]
pub struct Hosts {
    hosts: BTreeMap<HostId, Host>,
}

impl Hosts {
    /// A host said it is alive, with its counts; `Some(Joined)` if it is new.
    pub fn heard(&mut self, host: HostId, counts: Vec<(String, u32)>, shadowed: bool, now: Instant) -> Option<Change> {
        let counts = counts.into_iter().collect();
        match self.hosts.insert(host, Host { seen: now, counts, shadowed }) {
            None => Some(Change::Joined(host)),
            Some(_) => None,
        }
    }

    /// A host said goodbye.
    pub fn left(&mut self, host: HostId) -> Option<Change> {
        self.hosts.remove(&host).map(|_| Change::Left(host))
    }

    /// Hosts not heard of for `timeout` are gone.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<Change> {
        let dead: Vec<HostId> =
            self.hosts.iter().filter(|(_, h)| now.duration_since(h.seen) >= timeout).map(|(id, _)| *id).collect();
        for id in &dead {
            self.hosts.remove(id);
        }
        dead.into_iter().map(Change::TimedOut).collect()
    }

    /// Forgets every host (this host lost Redis: it reaches none of them).
    pub fn clear(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.hosts).into_keys().map(Change::Left).collect()
    }

    pub fn contains(&self, host: HostId) -> bool {
        self.hosts.contains_key(&host)
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// The hosts with subscribers of `channel`, and how many each.
    pub fn subscribed(&self, channel: &str) -> BTreeMap<HostId, u32> {
        self.hosts.iter().filter_map(|(id, h)| h.counts.get(channel).map(|n| (*id, *n))).collect()
    }

    /// The Redis subscriptions the other hosts hold on a channel (what `PUBSUB NUMSUB` counts of
    /// them): one per host, or one per worker of a shadowed host.
    pub fn subscriptions(&self, channel: &str) -> u32 {
        self.hosts
            .values()
            .filter_map(|h| h.counts.get(channel).map(|n| if h.shadowed { *n } else { 1 }))
            .fold(0, u32::saturating_add)
    }

    /// The live subscribers of every channel, over all the other hosts.
    pub fn totals(&self) -> HashMap<String, u32> {
        let mut totals: HashMap<String, u32> = HashMap::new();
        for host in self.hosts.values() {
            for (channel, n) in &host.counts {
                let total = totals.entry(channel.clone()).or_default();
                *total = total.saturating_add(*n);
            }
        }
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAN: &str = "socket.io-request#/#";

    #[test]
    fn hosts_join_count_and_time_out() {
        let (mut hosts, t0) = (Hosts::default(), Instant::now());
        let timeout = Duration::from_secs(3);
        assert_eq!(hosts.heard(1, vec![(CHAN.into(), 2)], false, t0), Some(Change::Joined(1)));
        assert_eq!(hosts.heard(2, vec![(CHAN.into(), 3)], true, t0), Some(Change::Joined(2)));
        assert_eq!(hosts.totals().get(CHAN), Some(&5));
        // A heartbeat replaces the counts and keeps the host alive.
        assert_eq!(hosts.heard(1, vec![(CHAN.into(), 1)], false, t0 + Duration::from_secs(2)), None);
        assert_eq!(hosts.subscribed(CHAN), BTreeMap::from([(1, 1), (2, 3)]));
        // Host 1 subscribes once; host 2, shadowed, once per worker.
        assert_eq!(hosts.subscriptions(CHAN), 4);
        assert!(hosts.expire(t0 + Duration::from_millis(2999), timeout).is_empty());
        assert_eq!(hosts.expire(t0 + timeout, timeout), vec![Change::TimedOut(2)]);
        assert_eq!(hosts.totals().get(CHAN), Some(&1));
        assert_eq!(hosts.left(1), Some(Change::Left(1)));
        assert_eq!(hosts.left(1), None);
        assert!(hosts.totals().is_empty());
        hosts.heard(3, vec![], false, t0);
        assert_eq!(hosts.clear(), vec![Change::Left(3)]);
        assert_eq!(hosts.len(), 0);
    }
}
