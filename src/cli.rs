//! The raw command line, as clap parses it. Every run option is an `Option` so that
//! [`crate::config`] can layer it: command line > `CLUSTERD_*` variable > config file > default.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{Balance, LogFormat, Protocol, ReadyOn, Serialization, Sticky, WorkerCount};
use crate::duration::parse_duration;

/// The primary process of a multi-process network server.
///
/// Forks N workers, restarts them when they die, stops and drains them gracefully, and answers
/// `status` and `stop` on a control socket.
#[derive(Debug, Parser)]
#[command(name = "clusterd", version, subcommand_negates_reqs = true, max_term_width = 100)]
#[command(after_help = "Example: clusterd --workers auto -- ./my-server --its-own-flags")]
pub struct Cli {
    /// Control socket to create (when running) or to talk to (subcommands).
    #[arg(long, global = true, env = "CLUSTERD_CONTROL", value_name = "PATH")]
    pub control: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands that talk to a running clusterd over its control socket.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the phase and the worker table.
    Status {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Replace every worker, one by one, with a new generation.
    Reload,
    /// Change the pool size at run time.
    Scale {
        /// The new number of workers.
        workers: u32,
    },
    /// Stop gracefully: drain every worker, then exit.
    Stop,
}

/// Options of the supervisor itself.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Pool size: a number, or `auto` for the CPUs this process may use (affinity and cgroup quota).
    #[arg(short, long, env = "CLUSTERD_WORKERS", value_name = "N|auto")]
    pub workers: Option<WorkerCount>,

    /// Address to accept connections on: HOST:PORT, [V6]:PORT or unix:/path (repeatable).
    #[arg(short, long, env = "CLUSTERD_LISTEN", value_name = "ADDR", value_delimiter = ',')]
    pub listen: Vec<String>,

    /// How to pick a worker for a connection with no sticky owner.
    #[arg(long, env = "CLUSTERD_BALANCE", value_enum)]
    pub balance: Option<Balance>,

    /// Session key for stickiness.
    #[arg(long, env = "CLUSTERD_STICKY", value_enum)]
    pub sticky: Option<Sticky>,

    /// How workers talk to clusterd.
    #[arg(long, env = "CLUSTERD_PROTOCOL", value_enum)]
    pub protocol: Option<Protocol>,

    /// Node channel format (node protocol only).
    #[arg(long, env = "CLUSTERD_SERIALIZATION", value_enum)]
    pub serialization: Option<Serialization>,

    /// Drain time a worker gets before SIGKILL [default: 30s].
    #[arg(long, env = "CLUSTERD_GRACE", value_name = "DURATION", value_parser = parse_duration)]
    pub grace: Option<Duration>,

    /// A new worker must report ready within it, or it is replaced [default: 30s].
    #[arg(long, env = "CLUSTERD_READY_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub ready_timeout: Option<Duration>,

    /// Deadline of an inter-worker request [default: 5s].
    #[arg(long, env = "CLUSTERD_REQUESTS_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub requests_timeout: Option<Duration>,

    /// When a worker counts as ready: when it says so (`message`, the SDK's `ready()`), or as soon
    /// as its program started (`spawn`, for programs that do not use the SDK) [default: message].
    #[arg(long, env = "CLUSTERD_READY_ON", value_enum)]
    pub ready_on: Option<ReadyOn>,

    /// Replace a ready SDK worker that sends no heartbeat for this long; 0 disables [default: 30s].
    #[arg(long, env = "CLUSTERD_HEARTBEAT_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub heartbeat_timeout: Option<Duration>,

    /// A worker that ran at least this long is stable: its slot's backoff and crash count reset
    /// [default: 10s].
    #[arg(long, env = "CLUSTERD_STABLE_AFTER", value_name = "DURATION", value_parser = parse_duration)]
    pub stable_after: Option<Duration>,

    /// Give up (exit 1) after this many consecutive failed starts of one slot; 0 never gives up
    /// [default: 10].
    #[arg(long, env = "CLUSTERD_CRASH_LOOP_LIMIT", value_name = "N")]
    pub crash_loop_limit: Option<u32>,

    /// A sticky session that no request used for this long is forgotten [default: 5m].
    #[arg(long, env = "CLUSTERD_SESSION_TTL", value_name = "DURATION", value_parser = parse_duration)]
    pub session_ttl: Option<Duration>,

    /// The most bytes read from a new connection to find its request line, 256 to 16384
    /// [default: 8192].
    #[arg(long, env = "CLUSTERD_SNIFF_BYTES", value_name = "BYTES")]
    pub sniff_bytes: Option<usize>,

    /// How long a new connection may take to send its request line [default: 5s].
    #[arg(long, env = "CLUSTERD_SNIFF_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub sniff_timeout: Option<Duration>,

    /// Bytes of bus messages clusterd queues for one worker; a message that does not fit (the
    /// worker does not read) is dropped for that worker and counted [default: 64MiB as 67108864].
    #[arg(long, env = "CLUSTERD_BUS_QUEUE", value_name = "BYTES")]
    pub bus_queue: Option<usize>,

    /// Join other clusterd hosts through Redis pub/sub: redis://[user[:password]@]host[:port][/db],
    /// rediss://… (TLS) or redis+unix:///path. A password is better given in CLUSTERD_BRIDGE or
    /// the config file, out of the process list [default: none].
    #[arg(long, env = "CLUSTERD_BRIDGE", value_name = "URL", hide_env_values = true)]
    pub bridge: Option<String>,

    /// The hosts of one group on a Redis act as one cluster [default: clusterd].
    #[arg(long, env = "CLUSTERD_BRIDGE_GROUP", value_name = "NAME")]
    pub bridge_group: Option<String>,

    /// A private CA (PEM file) that signed the Redis server's certificate (rediss:// only).
    #[arg(long, env = "CLUSTERD_BRIDGE_CA", value_name = "FILE")]
    pub bridge_ca: Option<PathBuf>,

    /// Bytes of cross-host messages that may wait for Redis; beyond, the oldest are dropped and
    /// counted [default: 16MiB as 16777216].
    #[arg(long, env = "CLUSTERD_BRIDGE_QUEUE", value_name = "BYTES")]
    pub bridge_queue: Option<usize>,

    /// A host not heard of for this long is out of every count, 300ms to 60s [default: 3s].
    #[arg(long, env = "CLUSTERD_BRIDGE_HOST_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub bridge_host_timeout: Option<Duration>,

    /// Do not prefix the lines that workers write with their id.
    #[arg(long, env = "CLUSTERD_NO_LOG_PREFIX", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_log_prefix: bool,

    /// TOML config file (see config/clusterd.toml).
    #[arg(long, env = "CLUSTERD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Format of clusterd's own log lines (filter them with RUST_LOG).
    #[arg(long, env = "CLUSTERD_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// The worker program and its arguments, after `--`.
    #[arg(last = true, value_name = "PROGRAM")]
    pub program: Vec<OsString>,
}
