//! The worker side of [clusterd](https://github.com/clusterd/clusterd).
//!
//! # Theory of operation
//!
//! clusterd spawns each worker with one `SOCK_SEQPACKET` socket on the fd named by
//! `CLUSTERD_IPC_FD` (always 3) and with `CLUSTERD_WORKER_ID`, `CLUSTERD_WORKER_COUNT` and
//! `CLUSTERD_GENERATION` in its environment. [`Worker::from_env`] claims that socket and greets
//! clusterd; [`Worker::ready`] tells clusterd the worker can take work (until then it counts as
//! starting, and one that never gets there is replaced after `--ready-timeout`); and
//! [`Worker::draining`] resolves when clusterd wants the worker to stop, by a drain frame or by
//! `SIGTERM` to the worker's process group. After the drain request the worker has `--grace` to
//! finish and exit before clusterd sends `SIGKILL`. Meanwhile the SDK gives kept-alive connections
//! back to clusterd rather than let the server close them under a client's next request (pipelined
//! requests included), and ends Socket.IO sessions (WebSockets, long-polls) spread over half the
//! grace; [`Worker::drained`] resolves once
//! every connection is closed or given back, the moment to exit.
//!
//! ```no_run
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let worker = clusterd_worker::Worker::from_env()?;
//!     worker.ready().await?;
//!     worker.draining().await;
//!     // ... the server stops taking work and finishes what it has ...
//!     worker.drained().await;
//!     Ok(())
//! }
//! ```
//!
//! The wire protocol lives in [`protocol`] and [`codec`], shared with clusterd itself, and is
//! documented byte by byte in `PROTOCOL.md`.

#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(feature = "socketioxide")]
mod adapter;
mod bus;
pub mod bus_protocol;
mod capacity;
pub mod channel;
pub mod codec;
#[cfg(feature = "socketioxide")]
mod engineio;
mod error;
mod fd;
mod http1;
mod listener;
pub mod protocol;
mod report;
mod worker;

#[cfg(feature = "socketioxide")]
pub use adapter::{BusDriver, ClusterAdapter, cluster_adapter};
pub use bus::{Answers, Bus, BusEvent, BusMessage, IncomingRequest, Subscription};
#[cfg(feature = "socketioxide")]
pub use engineio::{BoxError, NAMESPACE_GRACE, SESSION_SWEEP, SessionLayer, SessionService};
pub use error::Error;
pub use listener::{ClientAddr, Connection, DEFAULT_HEADER_TIMEOUT, Listener};
pub use worker::{MAX_SPREAD, SPREAD_SHARE_OF_GRACE, Worker};
