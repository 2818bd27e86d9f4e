//! What synchronous code (a dropped connection, a closed session) queues for the worker's task
//! that writes to clusterd. Its own module so that the listener, which sends reports, and the
//! worker, which owns the queue and drains it, both import it without the listener reaching
//! back into `worker.rs`.

use crate::protocol::FromWorker;

/// What synchronous code queues for clusterd.
#[derive(Debug)]
pub(crate) enum Report {
    /// A connection was dropped.
    Closed(u64),
    /// Any other frame.
    Frame(FromWorker),
    /// The capacity state may have changed: tell clusterd if it did.
    Capacity,
    /// A connection given back to clusterd (its fd travels with the frame).
    Handback { id: u64, fd: std::os::fd::OwnedFd, initial: Vec<u8> },
}
