//! Who else is in the cluster: the other hosts of the group, what each counts, and when each was
//! last heard of. Pure: the caller passes the time.
//!
//! Anyone who can `PUBLISH` on Redis can announce hosts, so what they announce is bounded in all
//! ([`MAX_REMOTE_COUNTS`]), and each heartbeat costs what it carries, not what the other hosts
//! hold: an unchanged one is compared with its host's counts and nothing else, a changed one
//! updates the running totals by its difference.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::codec::HostId;

/// What the counts of all the other hosts together may weigh ([`weight`]): 16 MiB. A host
/// announces at most [`super::codec::MAX_CHANNELS`] channels; a real one has two per worker and
/// namespace and one per namespace (a few thousand, ~100 bytes each with [`ENTRY_COST`]), so this
/// admits dozens of real hosts, or two that each announce the most channels with names of ~40
/// bytes. Held in memory, the counts take about one to three times their weight (a host's map,
/// the totals sharing its names, the relay's copy): tens of MiB at most, instead of ~7 MiB per
/// forged host of 65 536 channels without a bound.
pub const MAX_REMOTE_COUNTS: usize = 16 * 1024 * 1024;
/// What an announced channel weighs besides its name's bytes: its entries in the maps that hold it.
pub const ENTRY_COST: usize = 64;

/// A change in the cluster worth a log line.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Joined(HostId),
    Left(HostId),
    TimedOut(HostId),
}

/// What became of a host's heartbeat (or hello).
#[derive(Debug, PartialEq, Eq)]
pub enum Heard {
    /// A new host, counted.
    Joined,
    /// A known host; its counts changed, and so did the totals.
    Changed,
    /// A known host; its counts are as they were (only its liveness was noted).
    Same,
    /// Its counts would take what all hosts' counts may weigh over [`MAX_REMOTE_COUNTS`]: a new
    /// host is not counted; a known one is kept alive with the counts it had.
    Refused,
}

#[derive(Debug)]
struct Host {
    seen: Instant,
    /// The channel names are shared with [`Hosts::totals`].
    counts: HashMap<Arc<str>, u32>,
    shadowed: bool,
    /// [`weight`] of `counts`.
    weight: usize,
}

/// The other hosts of the group.
#[derive(Debug)]
pub struct Hosts {
    hosts: BTreeMap<HostId, Host>,
    /// The live subscribers of every channel over all hosts, kept as the hosts change (u64: the
    /// sum of any number of u32 counts, so that a difference is exact).
    totals: HashMap<Arc<str>, u64>,
    /// What all the hosts' counts weigh.
    weight: usize,
    limit: usize,
    /// `totals` changed since [`Hosts::take_changed`].
    changed: bool,
}

impl Default for Hosts {
    fn default() -> Self {
        Self::with_limit(MAX_REMOTE_COUNTS)
    }
}

/// What announced counts weigh against [`MAX_REMOTE_COUNTS`].
pub fn weight(counts: &[(String, u32)]) -> usize {
    counts.iter().map(|(channel, _)| channel.len() + ENTRY_COST).sum()
}

impl Hosts {
    /// With another bound than [`MAX_REMOTE_COUNTS`] on what the counts weigh.
    pub fn with_limit(limit: usize) -> Self {
        Self { hosts: BTreeMap::new(), totals: HashMap::new(), weight: 0, limit, changed: false }
    }

    /// A host said it is alive, with its counts (each channel once, as the codec checks).
    pub fn heard(&mut self, host: HostId, counts: Vec<(String, u32)>, shadowed: bool, now: Instant) -> Heard {
        let weight = weight(&counts);
        let Self { hosts, totals, weight: total, limit, changed } = self;
        if let Some(known) = hosts.get_mut(&host) {
            known.seen = now;
            known.shadowed = shadowed;
            if counts.len() == known.counts.len()
                && counts.iter().all(|(channel, n)| known.counts.get(channel.as_str()) == Some(n))
            {
                return Heard::Same;
            }
            if *total - known.weight + weight > *limit {
                return Heard::Refused;
            }
            // The new counts first, so that the names both hold keep their shared copy.
            let new = add(totals, counts);
            subtract(totals, &known.counts);
            known.counts = new;
            *total = *total - known.weight + weight;
            known.weight = weight;
            *changed = true;
            return Heard::Changed;
        }
        if *total + weight > *limit {
            return Heard::Refused;
        }
        *changed |= !counts.is_empty();
        let counts = add(totals, counts);
        *total += weight;
        hosts.insert(host, Host { seen: now, counts, shadowed, weight });
        Heard::Joined
    }

    /// A host said goodbye.
    pub fn left(&mut self, host: HostId) -> Option<Change> {
        let gone = self.hosts.remove(&host)?;
        self.forget(&gone);
        Some(Change::Left(host))
    }

    /// Hosts not heard of for `timeout` are gone.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<Change> {
        let dead: Vec<HostId> =
            self.hosts.iter().filter(|(_, h)| now.duration_since(h.seen) >= timeout).map(|(id, _)| *id).collect();
        for id in &dead {
            if let Some(gone) = self.hosts.remove(id) {
                self.forget(&gone);
            }
        }
        dead.into_iter().map(Change::TimedOut).collect()
    }

    /// Forgets every host (this host lost Redis: it reaches none of them).
    pub fn clear(&mut self) -> Vec<Change> {
        self.changed |= !self.totals.is_empty();
        self.totals.clear();
        self.weight = 0;
        std::mem::take(&mut self.hosts).into_keys().map(Change::Left).collect()
    }

    fn forget(&mut self, gone: &Host) {
        subtract(&mut self.totals, &gone.counts);
        self.weight -= gone.weight;
        self.changed |= !gone.counts.is_empty();
    }

    pub fn contains(&self, host: HostId) -> bool {
        self.hosts.contains_key(&host)
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// What all the hosts' counts weigh now (at most the bound).
    pub fn weight(&self) -> usize {
        self.weight
    }

    /// Whether the totals changed since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
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

    /// The live subscribers of every channel, over all the other hosts: a copy of the running
    /// totals (one entry per channel, whatever the number of hosts).
    pub fn totals(&self) -> HashMap<String, u32> {
        self.totals.iter().map(|(channel, n)| (channel.to_string(), u32::try_from(*n).unwrap_or(u32::MAX))).collect()
    }
}

/// Adds a host's counts to the totals; returns them keyed by the totals' shared names.
fn add(totals: &mut HashMap<Arc<str>, u64>, counts: Vec<(String, u32)>) -> HashMap<Arc<str>, u32> {
    let mut mine = HashMap::with_capacity(counts.len());
    for (channel, n) in counts {
        let name = match totals.get_key_value(channel.as_str()) {
            Some((name, _)) => Arc::clone(name),
            None => Arc::from(channel),
        };
        *totals.entry(Arc::clone(&name)).or_default() += u64::from(n);
        mine.insert(name, n);
    }
    mine
}

/// Takes a host's counts (added before) out of the totals.
fn subtract(totals: &mut HashMap<Arc<str>, u64>, counts: &HashMap<Arc<str>, u32>) {
    for (channel, n) in counts {
        if let Some(total) = totals.get_mut(channel) {
            *total -= u64::from(*n);
            if *total == 0 {
                totals.remove(channel);
            }
        }
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
        assert_eq!(hosts.heard(1, vec![(CHAN.into(), 2)], false, t0), Heard::Joined);
        assert_eq!(hosts.heard(2, vec![(CHAN.into(), 3)], true, t0), Heard::Joined);
        assert_eq!(hosts.totals().get(CHAN), Some(&5));
        // A heartbeat replaces the counts and keeps the host alive.
        assert_eq!(hosts.heard(1, vec![(CHAN.into(), 1)], false, t0 + Duration::from_secs(2)), Heard::Changed);
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

    fn counts(names: &[&str], n: u32) -> Vec<(String, u32)> {
        names.iter().map(|c| ((*c).to_owned(), n)).collect()
    }

    #[test]
    fn totals_follow_each_change_by_its_difference() {
        let (mut hosts, t0) = (Hosts::default(), Instant::now());
        assert_eq!(hosts.heard(1, counts(&["a", "b"], 1), false, t0), Heard::Joined);
        assert_eq!(hosts.heard(2, counts(&["b", "c"], 2), false, t0), Heard::Joined);
        assert!(hosts.take_changed());
        // The same counts in another order: nothing changed, nothing to tell the relay.
        assert_eq!(hosts.heard(2, counts(&["c", "b"], 2), false, t0), Heard::Same);
        assert!(!hosts.take_changed());
        assert_eq!(hosts.heard(1, counts(&["b", "d"], 4), false, t0), Heard::Changed);
        assert!(hosts.take_changed());
        let expect = |pairs: &[(&str, u32)]| pairs.iter().map(|(c, n)| ((*c).to_owned(), *n)).collect();
        assert_eq!(hosts.totals(), expect(&[("b", 6), ("c", 2), ("d", 4)]));
        assert_eq!(hosts.weight(), weight(&counts(&["b", "d"], 0)) + weight(&counts(&["b", "c"], 0)));
        assert_eq!(hosts.left(2), Some(Change::Left(2)));
        assert_eq!(hosts.totals(), expect(&[("b", 4), ("d", 4)]));
        assert_eq!(hosts.expire(t0 + Duration::from_secs(9), Duration::from_secs(3)), vec![Change::TimedOut(1)]);
        assert!(hosts.totals().is_empty());
        assert_eq!(hosts.weight(), 0);
        // Counts over u32 in all stay exact once a host leaves again.
        hosts.heard(3, counts(&["a"], u32::MAX), false, t0);
        hosts.heard(4, counts(&["a"], 5), false, t0);
        assert_eq!(hosts.totals().get("a"), Some(&u32::MAX));
        hosts.left(3);
        assert_eq!(hosts.totals().get("a"), Some(&5));
    }

    #[test]
    fn over_the_bound_new_hosts_are_refused_and_known_ones_keep_their_counts() {
        let one = weight(&counts(&["aaaa"], 1));
        let (mut hosts, t0) = (Hosts::with_limit(3 * one), Instant::now());
        assert_eq!(hosts.heard(1, counts(&["aaaa", "bbbb"], 1), false, t0), Heard::Joined);
        assert_eq!(hosts.heard(2, counts(&["cccc", "dddd"], 1), false, t0), Heard::Refused);
        assert!(!hosts.contains(2));
        assert_eq!(hosts.heard(2, counts(&["cccc"], 1), false, t0), Heard::Joined);
        // Host 1 grows over the bound: refused, alive, with its counts as they were.
        let later = t0 + Duration::from_secs(2);
        assert_eq!(hosts.heard(1, counts(&["aaaa", "bbbb", "eeee"], 1), false, later), Heard::Refused);
        assert_eq!(hosts.totals().len(), 3);
        assert_eq!(hosts.expire(t0 + Duration::from_secs(3), Duration::from_secs(3)), vec![Change::TimedOut(2)]);
        // Room again: the change is taken.
        assert_eq!(hosts.heard(1, counts(&["aaaa", "bbbb", "eeee"], 1), false, later), Heard::Changed);
        assert_eq!(hosts.weight(), 3 * one);
    }
}
