//! The families read from the dispatcher's `status` document (and clusterd's own `process_*`)
//! at each scrape: built afresh each time, so a worker slot that is gone has no series left, and `/metrics` says what
//! `clusterd status --json` says.

use std::collections::BTreeMap;

use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::status::{Status, WorkerState};

/// Every state a worker row can be in, each always present in `clusterd_workers{state}` (a
/// state with no worker is 0, not missing).
const STATES: [(WorkerState, &str); 5] = [
    (WorkerState::Starting, "starting"),
    (WorkerState::Ready, "ready"),
    (WorkerState::Draining, "draining"),
    (WorkerState::Backoff, "backoff"),
    (WorkerState::Exited, "exited"),
];

/// The results of a reload, each always present in `clusterd_reloads_total{result}`.
pub const RELOAD_RESULTS: [&str; 3] = ["ok", "aborted", "interrupted"];

/// The reasons of a replacement while running, each always present in
/// `clusterd_workers_replaced_total{reason}`.
const REPLACED_REASONS: [&str; 4] = ["health", "memory", "lifetime", "connections"];

/// What one worker slot adds up to over its rows (during a reload a slot has a serving process
/// and a successor, and maybe draining ones).
#[derive(Default)]
struct SlotFigures {
    connections: u64,
    rss: Option<u64>,
    at_capacity: bool,
    restarts: BTreeMap<String, u64>,
}

/// Builds the families of one scrape from `status` (whose `rss_bytes` the caller filled).
pub fn from_status(status: &Status) -> Vec<MetricFamily> {
    let families = Families::new();
    families.fill(status);
    super::process::register(&families.registry);
    families.registry.gather()
}

/// One scrape's metrics, registered once each.
struct Families {
    registry: Registry,
    workers: IntGaugeVec,
    restarts: IntCounterVec,
    connections: IntGaugeVec,
    at_capacity: IntGaugeVec,
    rss: IntGaugeVec,
    sessions: IntGauge,
    pool: IntGauge,
    generation: IntGauge,
    reloads: IntCounterVec,
    replaced: IntCounterVec,
    proxy_refused: IntCounter,
    info: IntGaugeVec,
}

/// Registers `metric` in `registry` and returns it; the names are this file's constants, so a
/// clash is a bug of this file.
fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry.register(Box::new(metric.clone())).expect("distinct metric names");
    metric
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(registry, IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid gauge"))
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels).expect("a valid counter"))
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).expect("a valid gauge"))
}

impl Families {
    fn new() -> Self {
        let r = Registry::new();
        Self {
            workers: gauge_vec(
                &r,
                "clusterd_workers",
                "Worker processes by state (as the rows of `status`).",
                &["state"],
            ),
            restarts: counter_vec(
                &r,
                "clusterd_worker_restarts_total",
                "Restarts of a worker slot since clusterd started, by the reason its previous process ended.",
                &["worker", "reason"],
            ),
            connections: gauge_vec(
                &r,
                "clusterd_worker_connections",
                "Connections a worker slot's processes carry now.",
                &["worker"],
            ),
            at_capacity: gauge_vec(
                &r,
                "clusterd_worker_at_capacity",
                "1 while the worker said it is close to its fd limit (it gets no new connection).",
                &["worker"],
            ),
            rss: gauge_vec(
                &r,
                "clusterd_worker_rss_bytes",
                "Resident memory of a worker slot's process groups (the worker and what it started).",
                &["worker"],
            ),
            sessions: gauge(&r, "clusterd_sessions", "Sticky sessions clusterd knows, over all workers."),
            pool: gauge(&r, "clusterd_pool_size", "The configured number of worker slots (--workers, scale)."),
            generation: gauge(&r, "clusterd_generation", "The reload generation the pool runs (from 1)."),
            reloads: counter_vec(
                &r,
                "clusterd_reloads_total",
                "Rolling reloads by result: ok, aborted (the new workers failed), interrupted (by a stop).",
                &["result"],
            ),
            replaced: counter_vec(
                &r,
                "clusterd_workers_replaced_total",
                "Workers replaced while they ran: failed health checks, or a recycling limit.",
                &["reason"],
            ),
            proxy_refused: register(
                &r,
                IntCounter::new(
                    "clusterd_proxy_refused_total",
                    "Connections closed on a --proxy-protocol listener for want of a valid header.",
                )
                .expect("a valid counter"),
            ),
            info: gauge_vec(&r, "clusterd_info", "clusterd's version; always 1.", &["version"]),
            registry: r,
        }
    }

    fn fill(&self, status: &Status) {
        for (state, name) in STATES {
            let n = status.workers.iter().filter(|w| w.state == state).count();
            self.workers.with_label_values(&[name]).set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let mut slots: BTreeMap<u32, SlotFigures> = BTreeMap::new();
        for w in &status.workers {
            let slot = slots.entry(w.id).or_default();
            slot.connections += w.connections;
            slot.at_capacity |= w.at_capacity;
            if let Some(rss) = w.rss_bytes {
                slot.rss = Some(slot.rss.unwrap_or(0) + rss);
            }
            // The slot's figures, repeated on each of its rows.
            slot.restarts.clone_from(&w.restart_reasons);
        }
        for (id, slot) in &slots {
            let worker = id.to_string();
            let labels = [worker.as_str()];
            self.connections.with_label_values(&labels).set(gauge_value(slot.connections));
            self.at_capacity.with_label_values(&labels).set(i64::from(slot.at_capacity));
            if let Some(rss) = slot.rss {
                self.rss.with_label_values(&labels).set(gauge_value(rss));
            }
            for (reason, n) in &slot.restarts {
                self.restarts.with_label_values(&[worker.as_str(), reason]).inc_by(*n);
            }
        }
        self.sessions.set(gauge_value(status.sessions as u64));
        self.pool.set(i64::from(status.pool));
        self.generation.set(gauge_value(status.generation));
        for result in RELOAD_RESULTS {
            self.reloads.with_label_values(&[result]).inc_by(status.reloads.get(result).copied().unwrap_or(0));
        }
        for reason in REPLACED_REASONS {
            self.replaced.with_label_values(&[reason]).inc_by(status.replaced.get(reason).copied().unwrap_or(0));
        }
        self.proxy_refused.inc_by(status.proxy_refused);
        self.info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        if let Some(bridge) = &status.bridge {
            self.bridge(bridge);
        }
    }

    /// The bridge's counters (`--bridge`), under `clusterd_bridge_*`.
    fn bridge(&self, b: &crate::bridge::BridgeStatus) {
        let r = &self.registry;
        let counter = |name: &str, help: &str, value: u64| {
            register(r, IntCounter::new(name, help).expect("a valid counter")).inc_by(value);
        };
        counter("clusterd_bridge_published_total", "Messages published to Redis for the other hosts.", b.published);
        counter("clusterd_bridge_received_total", "Messages received from the other hosts through Redis.", b.received);
        counter(
            "clusterd_bridge_dropped_total",
            "Cross-host messages dropped: the bridge's queue overflowed, Redis was down, or a message from Redis found no room in the bus budget or a relay in time.",
            b.dropped,
        );
        counter(
            "clusterd_bridge_malformed_total",
            "Messages from Redis that did not parse (clusterd's own channels, Node frames), or too large for a bus frame.",
            b.malformed,
        );
        counter(
            "clusterd_bridge_refused_total",
            "Other hosts' heartbeats refused: their counts would take what all other hosts' counts may weigh over the bound.",
            b.refused,
        );
        counter(
            "clusterd_bridge_reconnects_total",
            "Times the bridge connected to Redis again after losing it.",
            b.reconnects,
        );
        gauge(r, "clusterd_bridge_hosts", "Live hosts of the bridge's group, this one included.")
            .set(gauge_value(b.hosts as u64));
        gauge(
            r,
            "clusterd_bridge_plain_servers",
            "Plain socketioxide-redis servers on the same Redis, counted as members.",
        )
        .set(gauge_value(b.plain_servers as u64));
        gauge(r, "clusterd_bridge_connected", "1 while the bridge is connected to Redis.")
            .set(i64::from(b.state == crate::bridge::State::Connected));
    }
}

/// A gauge holds an i64; a count beyond it (never in practice) shows as the largest.
fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
