//! The control socket: the server inside a running clusterd and the client subcommands.

pub mod client;
pub mod proto;
pub mod server;
pub mod watch;
