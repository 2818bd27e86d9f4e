//! What `status` shows of the bridge: plain data, also compiled into the library of pure parts
//! (`src/lib.rs`) with the status document.

use serde::{Deserialize, Serialize};

/// The bridge's connection state, as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// The first attempt is under way.
    Connecting,
    Connected,
    /// Lost, or never reached: retrying with capped backoff.
    Down,
}

/// The `bridge` object of `status --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BridgeStatus {
    /// Redacted: never a password.
    pub url: String,
    pub group: String,
    pub state: State,
    /// Live hosts of the group, this one included.
    pub hosts: usize,
    /// Messages published to Redis.
    pub published: u64,
    /// Messages received from Redis and handed to the relay or acted upon.
    pub received: u64,
    /// Cross-host messages dropped: queue overflow, or Redis down.
    pub dropped: u64,
    /// Messages on clusterd's own channels that did not parse.
    pub malformed: u64,
    /// Connections to Redis made again after it was lost (or unreachable at the start).
    #[serde(default)]
    pub reconnects: u64,
    /// Plain socketioxide-redis servers on the same Redis, counted as members.
    pub plain_servers: usize,
    /// Other hosts' hellos and heartbeats refused: their counts would take what all other hosts'
    /// counts may weigh over the bound (`MAX_REMOTE_COUNTS`); a new host is not counted, a known
    /// one keeps the counts it had.
    #[serde(default)]
    pub refused: u64,
}
