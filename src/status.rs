//! The cluster's observable state: phases, worker states, and the `status` document that the
//! control socket serves and `clusterd status` prints.

use serde::{Deserialize, Serialize};

/// clusterd's phase, published on a watch channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Initial workers are starting; systemd has not been told READY yet.
    Starting,
    /// Every initial worker was ready once; serving.
    Ready,
    /// Replacing workers with a new generation.
    Reloading,
    /// Graceful stop: workers were asked to drain.
    Draining,
    /// Immediate stop: workers were killed.
    Stopping,
}

/// A worker slot's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    Starting,
    Ready,
    Draining,
    Backoff,
    Exited,
}

/// The `status --json` document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub phase: Phase,
    pub generation: u64,
    /// The pool size as configured (`--workers`, `scale`): slots, not processes. During a reload
    /// a slot has two rows (its serving process and its successor), and a drained one more.
    #[serde(default)]
    pub pool: u32,
    /// Slots whose serving process is ready.
    #[serde(default)]
    pub ready: u32,
    /// `--grace`: how long a drain may take before SIGKILL.
    #[serde(default)]
    pub grace_ms: u64,
    /// What keeps the pool from serving although its workers run, in words.
    #[serde(default)]
    pub problems: Vec<String>,
    pub listen: Vec<String>,
    pub program: String,
    /// Sticky sessions clusterd knows, over all workers.
    pub sessions: usize,
    /// Workers replaced while they ran, by reason (`health`, `memory`, `lifetime`,
    /// `connections`), since clusterd started.
    #[serde(default)]
    pub replaced: std::collections::BTreeMap<String, u64>,
    /// Rolling reloads by result (`ok`, `aborted`, `interrupted`), since clusterd started.
    #[serde(default)]
    pub reloads: std::collections::BTreeMap<String, u64>,
    pub workers: Vec<WorkerStatus>,
    /// Connections closed on a `--proxy-protocol` listener for want of a valid header, since
    /// clusterd started.
    #[serde(default)]
    pub proxy_refused: u64,
    /// The bridge to other hosts (`--bridge`); `null` without one.
    #[serde(default)]
    pub bridge: Option<crate::bridge::BridgeStatus>,
}

/// One row of the worker table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub id: u32,
    /// `null` while the slot has no process (backoff, exited).
    pub pid: Option<u32>,
    pub state: WorkerState,
    pub generation: u64,
    /// Restarts of this slot since clusterd started.
    pub restarts: u32,
    /// The same restarts by the reason the slot's previous process ended (`signal`, `failed`,
    /// `exited`, `oom`, `ready_timeout`, `heartbeat`, `protocol`, `stopped`, `start_failed`);
    /// they add up to `restarts`.
    #[serde(default)]
    pub restart_reasons: std::collections::BTreeMap<String, u64>,
    pub connections: u64,
    pub sessions: u64,
    /// The worker said it is close to its fd limit: it gets no new connection until it has room.
    #[serde(default)]
    pub at_capacity: bool,
    /// Bus messages clusterd dropped for this worker because it did not read them.
    pub dropped: u64,
    /// Connections this process gave back to clusterd to be routed again: a kept-alive connection
    /// whose next request belongs to another worker, idle ones at a drain.
    #[serde(default)]
    pub given_back: u64,
    /// Milliseconds the current process has run.
    pub uptime_ms: Option<u64>,
    /// Consecutive failed starts of this slot.
    pub failures: u32,
    pub crash_loop: bool,
    /// How the slot's previous process ended.
    pub last_exit: Option<String>,
    /// Milliseconds since this process was asked to drain (`null` when it is not draining).
    #[serde(default)]
    pub draining_ms: Option<u64>,
    /// Connections routed to this process since it started (handed off, or on their way).
    #[serde(default)]
    pub handed_off: u64,
    /// The resident memory of the process's group (the worker and what it started), from /proc;
    /// `null` without a process or when /proc cannot be read.
    #[serde(default)]
    pub rss_bytes: Option<u64>,
    /// Why this process is being replaced while it runs (failed health checks, a recycling
    /// limit); `null` otherwise.
    #[serde(default)]
    pub replacing: Option<String>,
}

impl Status {
    /// The human table of `clusterd status`.
    pub fn to_table(&self) -> String {
        let mut out = format!(
            "clusterd pid {}  phase {}  generation {}  {}/{} workers ready\nprogram: {}\n",
            self.pid,
            format!("{:?}", self.phase).to_lowercase(),
            self.generation,
            self.ready,
            self.pool,
            self.program
        );
        if !self.listen.is_empty() {
            out.push_str(&format!("listen: {}\n", self.listen.join(", ")));
        }
        if let Some(b) = &self.bridge {
            let state = format!("{:?}", b.state).to_lowercase();
            out.push_str(&format!(
                "bridge: {} (group {}) {state}, {} host(s), published {}, received {}, dropped {}, malformed {}\n",
                b.url, b.group, b.hosts, b.published, b.received, b.dropped, b.malformed
            ));
        }
        out.push_str(&format!(
            "{:>3}  {:>8}  {:<9} {:>4} {:>8} {:>6} {:>8} {:>10} {:>12}  {}\n",
            "ID", "PID", "STATE", "GEN", "RESTARTS", "CONNS", "SESSIONS", "UPTIME", "DRAINING", "LAST EXIT"
        ));
        let grace = crate::duration::show(std::time::Duration::from_millis(self.grace_ms));
        for w in &self.workers {
            let state = format!("{:?}", w.state).to_lowercase()
                + if w.crash_loop { "!" } else { "" }
                + if w.at_capacity { "*" } else { "" };
            out.push_str(&format!(
                "{:>3}  {:>8}  {:<9} {:>4} {:>8} {:>6} {:>8} {:>10} {:>12}  {}\n",
                w.id,
                w.pid.map_or("-".into(), |p| p.to_string()),
                state,
                w.generation,
                w.restarts,
                w.connections,
                w.sessions,
                w.uptime_ms.map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
                w.draining_ms.map_or("-".into(), |ms| format!("{:.1}s/{grace}", ms as f64 / 1000.0)),
                w.last_exit.as_deref().unwrap_or("-"),
            ));
        }
        if self.workers.iter().any(|w| w.at_capacity) {
            out.push_str("* at capacity: close to its fd limit, the worker gets no new connection\n");
        }
        if self.workers.iter().any(|w| w.crash_loop) {
            out.push_str("! crash loop: the slot's worker keeps failing to start\n");
        }
        for w in &self.workers {
            if let Some(why) = &w.replacing {
                let pid = w.pid.map_or("-".into(), |p| p.to_string());
                out.push_str(&format!("~ worker {} pid {pid}: {why}\n", w.id));
            }
        }
        // A line, not a column: most processes give nothing back, and the table stays narrow.
        let given_back: Vec<String> = self
            .workers
            .iter()
            .filter(|w| w.given_back > 0)
            .map(|w| format!("worker {} pid {} {}", w.id, w.pid.map_or("-".into(), |p| p.to_string()), w.given_back))
            .collect();
        if !given_back.is_empty() {
            out.push_str(&format!("connections given back: {}\n", given_back.join(", ")));
        }
        if !self.replaced.is_empty() {
            let counts: Vec<String> = self.replaced.iter().map(|(why, n)| format!("{why} {n}")).collect();
            out.push_str(&format!("replaced while running: {}\n", counts.join(", ")));
        }
        for problem in &self.problems {
            out.push_str(&format!("! {problem}\n"));
        }
        out
    }
}
