//! Prometheus metrics (`--metrics ADDR`): what clusterd measures, and the scrape server.
//!
//! # Theory of operation
//!
//! ```text
//!   accept loops ─► accepted{listener} ┐
//!   route tasks  ─► (accept instant)   │  hot counters: atomics, incremented where the event
//!   worker tasks ─► handed_off{worker},├─ happens; read by the scrape, never locked by the
//!                   given_back{worker},│  hot path
//!                   handoff_seconds    │
//!   relays       ─► bus messages/drops ┘
//!
//!   scrape task ──Request::Status──► dispatcher (the same document as `status --json`)
//!               ──GatherRequest────► supervisor (the workers' own metrics, with a deadline)
//!               ── /proc ──────────► worker RSS, process_* of clusterd itself
//! ```
//!
//! Two kinds of figures, each with one owner:
//! - **Hot counters** ([`Hot`]) are counted where the event happens, on the accept path, in the
//!   worker tasks and in the relays, with lock-free atomics (the `prometheus` crate's counters and
//!   its sharded histogram). They exist only with `--metrics`: without it [`hot`] is `None` and
//!   the hot path does nothing at all, not even read the clock.
//! - **The dispatcher's state** (workers and their states, connections, sessions, restarts,
//!   reloads, replacements) is not copied anywhere: each scrape asks the dispatcher for the
//!   `status` document, so `/metrics` and `clusterd status --json` agree by construction.
//!
//! Bounded series: every per-worker series is labelled by the worker's slot id, the `id` of
//! `status` (`0..N`, stable across restarts), so their number is bounded by the pool size; the
//! slot's series go with the slot when the pool is scaled down. Restart reasons, reload results,
//! replacement reasons and worker states are fixed sets; listeners are the addresses clusterd
//! listens on (a closed listener's series goes with it). A scrape allocates in proportion to the pool and the listeners, never to traffic.

pub mod exposition;
pub mod prom_client;
pub mod server;
pub mod workers;

mod families;
pub mod head;
mod process;

use std::sync::OnceLock;
use std::time::Instant;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

/// The buckets of `clusterd_handoff_seconds`, accept to fd sent: a handoff takes tens of
/// microseconds when the request line came with the connection, and up to `--sniff-timeout`
/// (5 s by default) for a client that is slow to send it.
pub const HANDOFF_BUCKETS: [f64; 16] =
    [50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0, 2.5, 5.0];

/// The counters of the hot paths, and the registry that holds them.
pub struct Hot {
    registry: Registry,
    handoff: Histogram,
    accepted: IntCounterVec,
    handed_off: IntCounterVec,
    given_back: IntCounterVec,
    bus_messages: IntCounter,
    bus_dropped: IntCounter,
    scrapes_missed: IntCounter,
}

static HOT: OnceLock<Hot> = OnceLock::new();

/// The hot counters, when `--metrics` is on.
pub fn hot() -> Option<&'static Hot> {
    HOT.get()
}

/// Turns the hot counters on (`--metrics` was given); call once, before any listener serves.
pub fn enable() -> &'static Hot {
    HOT.get_or_init(Hot::new)
}

impl Hot {
    fn new() -> Self {
        let registry = Registry::new();
        // The names and help texts are constants of this file: a failure here is a bug of it.
        let handoff = Histogram::with_opts(
            HistogramOpts::new(
                "clusterd_handoff_seconds",
                "Time from accepting a connection to handing its fd to a worker (request line read included).",
            )
            .buckets(HANDOFF_BUCKETS.to_vec()),
        )
        .expect("a valid histogram");
        let accepted = IntCounterVec::new(
            Opts::new("clusterd_connections_accepted_total", "Connections accepted, by listening address."),
            &["listener"],
        )
        .expect("a valid counter");
        let handed_off = IntCounterVec::new(
            Opts::new(
                "clusterd_connections_handed_off_total",
                "Connections whose fd was handed to a worker, by worker slot.",
            ),
            &["worker"],
        )
        .expect("a valid counter");
        let given_back = IntCounterVec::new(
            Opts::new(
                "clusterd_worker_connections_given_back_total",
                "Connections a worker slot's processes gave back to be routed again (kept-alive connections whose next request belongs to another worker, idle ones at a drain).",
            ),
            &["worker"],
        )
        .expect("a valid counter");
        let bus_messages = IntCounter::new(
            "clusterd_bus_messages_total",
            "Frames workers sent on the bus (publishes, sends, requests, answers) that the relay handled.",
        )
        .expect("a valid counter");
        let bus_dropped = IntCounter::new(
            "clusterd_bus_dropped_total",
            "Bus messages dropped for a worker that did not read them (its --bus-queue was full).",
        )
        .expect("a valid counter");
        let scrapes_missed = IntCounter::new(
            "clusterd_worker_scrapes_missed_total",
            "Workers whose own metrics were left out of a scrape (no answer by the deadline, or garbage).",
        )
        .expect("a valid counter");
        let collectors: [Box<dyn prometheus::core::Collector>; 7] = [
            Box::new(handoff.clone()),
            Box::new(accepted.clone()),
            Box::new(handed_off.clone()),
            Box::new(given_back.clone()),
            Box::new(bus_messages.clone()),
            Box::new(bus_dropped.clone()),
            Box::new(scrapes_missed.clone()),
        ];
        for collector in collectors {
            registry.register(collector).expect("distinct metric names");
        }
        Self { registry, handoff, accepted, handed_off, given_back, bus_messages, bus_dropped, scrapes_missed }
    }
}

/// The accept counter of the listener on `addr`, taken once by its accept loop.
pub fn accepted_counter(addr: &str) -> Option<IntCounter> {
    hot().map(|h| h.accepted.with_label_values(&[addr]))
}

/// The handoff counter of worker slot `slot`, taken once by each worker task.
pub fn handed_off_counter(slot: u32) -> Option<IntCounter> {
    hot().map(|h| h.handed_off.with_label_values(&[&slot.to_string()]))
}

/// The counter of connections worker slot `slot` gave back, taken once by each worker process.
pub fn given_back_counter(slot: u32) -> Option<IntCounter> {
    hot().map(|h| h.given_back.with_label_values(&[&slot.to_string()]))
}

/// The instant a connection was accepted, read only when the handoff histogram is on.
pub fn accept_instant() -> Option<Instant> {
    hot().map(|_| Instant::now())
}

/// A connection's fd reached its worker.
pub fn handed_off(counter: Option<&IntCounter>, accepted: Option<Instant>) {
    if let Some(counter) = counter {
        counter.inc();
    }
    if let (Some(hot), Some(at)) = (hot(), accepted) {
        hot.handoff.observe(at.elapsed().as_secs_f64());
    }
}

/// The slot was removed (scale-down): its series go with it.
pub fn forget_slot(slot: u32) {
    if let Some(hot) = hot() {
        let _ = hot.handed_off.remove_label_values(&[&slot.to_string()]);
        let _ = hot.given_back.remove_label_values(&[&slot.to_string()]);
    }
}

/// A listener closed (the workers that asked for it closed their servers): its series goes
/// with it, so that ports opened and closed over time do not pile up series.
pub fn forget_listener(addr: &str) {
    if let Some(hot) = hot() {
        let _ = hot.accepted.remove_label_values(&[addr]);
    }
}

/// The relay handled a frame from a worker.
pub fn bus_message() {
    if let Some(hot) = hot() {
        hot.bus_messages.inc();
    }
}

/// A bus message was dropped for a worker that does not read.
pub fn bus_dropped() {
    if let Some(hot) = hot() {
        hot.bus_dropped.inc();
    }
}
