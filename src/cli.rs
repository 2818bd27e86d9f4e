//! The raw command line, as clap parses it. Every run option is an `Option` so that
//! [`crate::config`] can layer it: command line > `CLUSTERD_*` variable > config file > default.
//! Its errors are [`explain`]ed in two lines, naming the variable when a variable was wrong.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, Parser, Subcommand};

use crate::duration::parse_duration;
use crate::values::{
    Balance, ByteSize, LogFormat, LogTimestamps, MAX_WORKERS, NodePreload, Percent, ProtocolChoice, ReadyOn,
    Serialization, Sticky, WorkerCount,
};

/// The values a boolean `CLUSTERD_*` variable accepts: `true` or `false`, nothing else (a typo
/// such as `ture` or `yes` is an error, not a silent choice).
pub fn env_bool() -> impl clap::builder::TypedValueParser<Value = bool> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["true", "false"]).map(|v| v == "true")
}

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
        /// Redraw every INTERVAL (100ms to 1h) until Ctrl-C, or until clusterd stops (exit 1);
        /// with --json, one object per line.
        #[arg(long, value_name = "INTERVAL", num_args = 0..=1, require_equals = false,
              default_missing_value = crate::values::DEFAULT_INTERVAL,
              value_parser = crate::values::parse_interval)]
        watch: Option<Duration>,
    },
    /// Replace every worker, one by one, with a new generation.
    Reload,
    /// Change the pool size at run time.
    Scale {
        /// The new number of workers, 1 to 1024.
        #[arg(value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_WORKERS)))]
        workers: u32,
    },
    /// Stop gracefully: drain every worker, then exit.
    Stop,
    /// Print the workers' own metrics (Prometheus text format 0.0.4), gathered now.
    ///
    /// What `--metrics` appends to clusterd's own families. Workers that do not answer within 2 s
    /// (or answer garbage) are left out and counted on stderr.
    Metrics,
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

    /// How workers talk to clusterd: the SDK (`native`), Node.js's IPC channel (`node`), or
    /// `auto`: `node` when the program is node or a script whose #! line runs node [default: auto].
    #[arg(long, env = "CLUSTERD_PROTOCOL", value_enum)]
    pub protocol: Option<ProtocolChoice>,

    /// Node channel format (node protocol only).
    #[arg(long, env = "CLUSTERD_SERIALIZATION", value_enum)]
    pub serialization: Option<Serialization>,

    /// Node workers: clusterd's preload (`--require`, in NODE_OPTIONS) gives idle kept-alive
    /// connections back at a drain and ends WebSockets spread out [default: on].
    #[arg(long, env = "CLUSTERD_NODE_PRELOAD", value_enum)]
    pub node_preload: Option<NodePreload>,

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

    /// The application's own bus channels that cross hosts too, comma-separated; `*` stands for
    /// any run of characters (`news,chat.*`). At most once to each subscriber, like everything
    /// through Redis [default: none: an application's channels stay on their host].
    #[arg(long, env = "CLUSTERD_BRIDGE_CHANNELS", value_name = "PATTERNS")]
    pub bridge_channels: Option<String>,

    /// Set TCP_NODELAY on accepted TCP connections (Nagle off) before they go to a worker; off by
    /// default: the application's own choice (variable: `true` or `false`).
    #[arg(long, env = "CLUSTERD_TCP_NODELAY", value_parser = env_bool())]
    pub tcp_nodelay: bool,

    /// Send `GET <PATH>` to each ready worker every --health-interval, through a connection
    /// handed to that worker; one that fails --health-failures checks in a row is replaced.
    #[arg(long, env = "CLUSTERD_HEALTH_CHECK", value_name = "PATH")]
    pub health_check: Option<String>,

    /// How often each ready worker is checked [default: 10s].
    #[arg(long, env = "CLUSTERD_HEALTH_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    pub health_interval: Option<Duration>,

    /// How long a health check may take, connection to status line [default: 2s].
    #[arg(long, env = "CLUSTERD_HEALTH_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub health_timeout: Option<Duration>,

    /// Consecutive failed health checks that get a worker replaced [default: 3].
    #[arg(long, env = "CLUSTERD_HEALTH_FAILURES", value_name = "N")]
    pub health_failures: Option<u32>,

    /// Recycle a worker whose process tree's resident memory exceeds this (e.g. 512MiB).
    #[arg(long, env = "CLUSTERD_MAX_MEMORY", value_name = "SIZE")]
    pub max_memory: Option<ByteSize>,

    /// Recycle a worker after it ran this long (less up to --lifetime-jitter).
    #[arg(long, env = "CLUSTERD_MAX_LIFETIME", value_name = "DURATION", value_parser = parse_duration)]
    pub max_lifetime: Option<Duration>,

    /// Recycle a worker after this many connections were handed to it (less up to
    /// --lifetime-jitter).
    #[arg(long, env = "CLUSTERD_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<u64>,

    /// How much earlier than --max-lifetime / --max-connections a worker may be recycled, drawn
    /// per worker, so that workers started together do not recycle together [default: 10%].
    #[arg(long, env = "CLUSTERD_LIFETIME_JITTER", value_name = "PERCENT")]
    pub lifetime_jitter: Option<Percent>,

    /// Do not prefix the lines that workers write with their id (variable: `true` or `false`).
    #[arg(long, env = "CLUSTERD_NO_LOG_PREFIX", value_parser = env_bool())]
    pub no_log_prefix: bool,

    /// Every connection on clusterd's own listeners starts with a PROXY protocol header (v1 or
    /// v2) from a load balancer: the client's address is taken from it, and a connection without
    /// one is closed. The config file can name the listeners it applies to [default: false].
    #[arg(long, env = "CLUSTERD_PROXY_PROTOCOL", value_name = "true|false", value_parser = env_bool(),
          num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub proxy_protocol: Option<bool>,

    /// When clusterd's own log lines carry a timestamp: `auto` leaves it to the journal when
    /// stderr is one (JOURNAL_STREAM), `always`, or `never`; JSON lines always have one
    /// [default: auto].
    #[arg(long, env = "CLUSTERD_LOG_TIMESTAMPS", value_enum)]
    pub log_timestamps: Option<LogTimestamps>,

    /// Serve Prometheus metrics (`GET /metrics`, text format 0.0.4) on this address: HOST:PORT,
    /// [V6]:PORT or unix:/path [default: none].
    #[arg(long, env = "CLUSTERD_METRICS", value_name = "ADDR")]
    pub metrics: Option<String>,

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

/// How each option given on the command line or in the environment was written there, by id:
/// `--grace` or `CLUSTERD_GRACE` (for [`crate::config::Config::load`]'s errors).
pub fn given_as(matches: &ArgMatches) -> HashMap<String, String> {
    let command = Cli::command();
    let mut given = HashMap::new();
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        let name = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => arg.get_long().map(|l| format!("--{l}")),
            Some(ValueSource::EnvVariable) => arg.get_env().map(|e| e.to_string_lossy().into_owned()),
            _ => None,
        };
        if let Some(name) = name {
            given.insert(id.to_owned(), name);
        }
    }
    given
}

/// A clap error as two lines: what was wrong (naming the `CLUSTERD_*` variable when the value
/// came from one), and a tip or where to read more. A word where an option was expected is most
/// often the worker program without its `--`: the tip shows the corrected command.
pub fn explain(error: &clap::Error, argv: &[OsString]) -> String {
    let rendered = error.render().to_string();
    let mut what = rendered.lines().next().unwrap_or("invalid command line").trim_start_matches("error: ").to_owned();
    let mut tip = rendered.lines().map(str::trim).find(|l| l.starts_with("tip:")).map(str::to_owned);
    let command = Cli::command();
    let invalid = match error.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => Some(arg.clone()),
        _ => None,
    };
    if let Some(shown) = &invalid
        && let Some(long) = shown.strip_prefix("--").map(|l| l.split([' ', '=', '[']).next().unwrap_or(l))
        && let Some(arg) = command.get_arguments().find(|a| a.get_long() == Some(long))
        && let Some(env) = arg.get_env()
        && std::env::var_os(env).is_some()
        && !on_command_line(argv, long, arg.get_short())
    {
        what = what.replace(&format!("'{shown}'"), &env.to_string_lossy());
    }
    if let Some(ContextValue::Strings(valid)) = error.get(ContextKind::ValidValue)
        && !valid.is_empty()
        && !what.contains("possible values")
    {
        what.push_str(&format!(" (possible values: {})", valid.join(", ")));
    }
    let word_for_an_option = matches!(error.kind(), ErrorKind::UnknownArgument | ErrorKind::InvalidSubcommand);
    let word = invalid.filter(|w| word_for_an_option && !w.starts_with('-'));
    let subcommand = word.as_deref().and_then(|w| {
        command.get_subcommands().map(|c| c.get_name()).find(|name| w.len() > 2 && edit_distance(w, name) <= 2)
    });
    if let Some(name) = subcommand {
        tip = Some(format!("tip: the subcommand is `clusterd {name}`"));
    } else if let Some(word) = word
        && !tip.as_deref().is_some_and(|t| t.contains("similar"))
        && let Some(at) = program_start(&command, argv, &word)
    {
        let mut fixed: Vec<String> = vec!["clusterd".into()];
        fixed.extend(argv[1..at].iter().map(|a| quoted(a)));
        fixed.push("--".into());
        fixed.extend(argv[at..].iter().map(|a| quoted(a)));
        tip = Some(format!("tip: the worker program goes after `--`: {}", fixed.join(" ")));
    }
    let second = tip.unwrap_or_else(|| "usage: clusterd [OPTIONS] -- PROGRAM [ARGS]... (see clusterd --help)".into());
    format!("clusterd: {what}\n{second}")
}

/// Whether `--long` (or `-s`) was written on the command line.
fn on_command_line(argv: &[OsString], long: &str, short: Option<char>) -> bool {
    let long_eq = format!("--{long}=");
    argv.iter().skip(1).map(|a| a.to_string_lossy()).take_while(|a| a != "--").any(|a| {
        a == format!("--{long}")
            || a.starts_with(&long_eq)
            || short.is_some_and(|s| a.starts_with('-') && !a.starts_with("--") && a[1..].starts_with(s))
    })
}

/// The index in `argv` of `word` where it stands for itself (not as the value of an option).
fn program_start(command: &clap::Command, argv: &[OsString], word: &str) -> Option<usize> {
    let takes_value = |flag: &OsStr| {
        let flag = flag.to_string_lossy();
        if flag.contains('=') {
            return false;
        }
        command.get_arguments().any(|a| {
            let named = flag.strip_prefix("--").map_or_else(
                || flag.strip_prefix('-').is_some_and(|s| s.len() == 1 && a.get_short() == s.chars().next()),
                |long| a.get_long() == Some(long),
            );
            named && a.get_action().takes_values()
        })
    };
    (1..argv.len()).find(|&i| argv[i] == OsStr::new(word) && (i == 1 || !takes_value(&argv[i - 1])))
}

/// An argument as a shell would need it.
fn quoted(arg: &OsStr) -> String {
    let text = arg.to_string_lossy();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@%+".contains(&b)) {
        return text.into_owned();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Levenshtein distance, for a mistyped subcommand (`stauts`).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}
