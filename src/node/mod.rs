//! `--protocol node`: clusterd as the primary of unmodified Node.js workers (`cluster`,
//! `@socket.io/sticky`, `@socket.io/cluster-adapter`).
//!
//! - `value`, `v8`, `json`, `frame`: the channel's messages (V8 serialization or JSON lines);
//! - `link`: one worker's channel (what it says, connections, drains);
//! - `writer`: the channel's writing half (written from the worker's task, without waiting;
//!   handles in flight until acknowledged);
//! - `relay`: the cluster adapter's messages between workers;
//! - `aliases`: the 0.2.x adapter's worker ids across hosts;
//! - `preload`: the `--require` that gives kept-alive connections back at a drain.

pub mod aliases;
#[cfg_attr(not(test), allow(dead_code, reason = "a whole codec: the relay uses part of it, the tests all of it"))]
pub mod frame;
#[cfg_attr(not(test), allow(dead_code, reason = "a whole codec: the relay uses part of it, the tests all of it"))]
pub mod json;
pub mod link;
pub mod preload;
pub mod relay;
#[cfg_attr(not(test), allow(dead_code, reason = "a whole codec: the relay uses part of it, the tests all of it"))]
pub mod v8;
#[cfg_attr(not(test), allow(dead_code, reason = "a whole codec: the relay uses part of it, the tests all of it"))]
pub mod value;
pub mod writer;
