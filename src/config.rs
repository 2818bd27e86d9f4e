//! The validated configuration: the command line and the `CLUSTERD_*` variables (both read by
//! clap in [`crate::cli`]), layered over the TOML file, over the defaults. Everything that can be
//! wrong is found here, before anything starts, and reported as one line that names the option
//! the way the operator gave it: the flag, the variable, or the file's line and key (exit 2).
//!
//! Every bound of an option is a constant below, and the README's "Limits and guarantees" lists
//! them. The bounds are what keeps the run-time arithmetic on these values from overflowing
//! (`Instant + grace`, a deadline per connection), so nothing past [`Config::load`] checks again.
//!
//! Adding an option: a field in `RunArgs` (cli.rs), a field in [`FileConfig`] and in [`Config`],
//! one `pick` line in [`Config::load`], and its bound in [`Config::check`].

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Read;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::bridge::options::BridgeConfig;
use crate::cli::RunArgs;
use crate::duration::{parse_duration, show};
// The value types live in `values` so that the command line can parse them without importing
// this module; they are re-exported here, where the rest of clusterd looks for them.
pub use crate::values::{
    Balance, ByteSize, ListenAddr, LogFormat, LogTimestamps, MAX_WORKERS, NodePreload, Percent, Protocol,
    ProtocolChoice, ReadyOn, Serialization, Sticky, WorkerCount,
};

/// The smallest `--sniff-bytes`: a request line with a sid fits.
pub const MIN_SNIFF_BYTES: usize = 256;
/// The largest `--sniff-bytes`: the bytes read travel in one frame with the connection.
pub const MAX_SNIFF_BYTES: usize = 16 * 1024;

/// The longest duration of any option: far above any sensible setting, and small enough that
/// every deadline computed from one (`now + grace`) stays far from overflowing.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// The shortest `--heartbeat-timeout` other than 0 (off): the SDK beats every third of it.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(300);

/// The smallest `--bus-queue`: a sixteenth of the largest bus frame, so big messages still move.
pub const MIN_BUS_QUEUE: usize = clusterd_worker::bus_protocol::MAX_BUS_FRAME / 16;
/// The largest `--bus-queue` (1 GiB): clusterd's memory for one stuck worker stays countable.
pub const MAX_BUS_QUEUE: usize = 1 << 30;

/// `--health-check`: the longest path (it goes in one request line, read by the worker).
pub const MAX_HEALTH_PATH: usize = 1024;
/// `--health-interval`: the shortest (each check is a connection to every worker).
pub const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(100);
/// `--health-timeout`: the shortest.
pub const MIN_HEALTH_TIMEOUT: Duration = Duration::from_millis(10);
/// `--health-failures`: the most (more would only delay the replacement of a stuck worker).
pub const MAX_HEALTH_FAILURES: u32 = 100;
/// `--max-memory`: the smallest (below it, any worker program would recycle at once).
pub const MIN_MAX_MEMORY: u64 = 4 << 20;
/// `--max-memory`: the largest (1 TiB).
pub const MAX_MAX_MEMORY: u64 = 1 << 40;
/// `--max-lifetime`: the shortest (a worker must get ready and serve before it is recycled).
pub const MIN_MAX_LIFETIME: Duration = Duration::from_secs(1);
/// `--max-connections`: the largest.
pub const MAX_MAX_CONNECTIONS: u64 = 1 << 40;
/// `--lifetime-jitter`: the largest share, in percent (at 50% a worker recycles after half its
/// limit at the earliest).
pub const MAX_LIFETIME_JITTER: f64 = 50.0;

/// The largest config file read (1 MiB); the example file is 9 KiB.
pub const MAX_CONFIG_FILE: u64 = 1024 * 1024;

/// The longest path of a Unix socket (`sun_path` holds 108 bytes with the final NUL).
pub const MAX_UNIX_PATH: usize = 107;

/// The most bytes of a program read to find a `#!` line that runs node (`--protocol auto`).
pub const MAX_SHEBANG: usize = 256;

const DEFAULT_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_REQUESTS_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_STABLE_AFTER: Duration = Duration::from_secs(10);
const DEFAULT_CRASH_LOOP_LIMIT: u32 = 10;
const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(300);
const DEFAULT_SNIFF_BYTES: usize = 8 * 1024;
const DEFAULT_SNIFF_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_BUS_QUEUE: usize = 64 * 1024 * 1024;
/// Often enough that a stuck worker is replaced within half a minute (with 3 failures and 2s),
/// rarely enough that the checks cost nothing measurable (one connection per worker per 10s).
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);
/// A health endpoint answers in milliseconds; 2s allows for a GC pause or a burst of load.
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// One slow answer is not a failure of the worker; three in a row (30s) are.
const DEFAULT_HEALTH_FAILURES: u32 = 3;
/// gunicorn's common `max_requests_jitter` is a tenth of `max_requests`.
const DEFAULT_LIFETIME_JITTER: f64 = 10.0;

/// A bad option, variable or config file: clusterd exits 2 and starts nothing.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    ReadFile { path: PathBuf, reason: String },
    /// `at` names the file, the line and the key.
    #[error("{at}: {message}")]
    ParseFile { at: String, message: String },
    #[error(
        "no worker program: give one after `--` (clusterd [OPTIONS] -- PROGRAM [ARGS...]) or set `command` in the config file"
    )]
    NoProgram,
    /// `what` names the option as it was given: `--grace`, `CLUSTERD_GRACE`, or the file's line.
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
}

/// The config file: the same keys as the long options, in snake_case. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    workers: Option<WorkerCount>,
    listen: Option<Vec<String>>,
    balance: Option<Balance>,
    sticky: Option<Sticky>,
    protocol: Option<ProtocolChoice>,
    serialization: Option<Serialization>,
    node_preload: Option<NodePreload>,
    #[serde(default, deserialize_with = "de_duration")]
    grace: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    ready_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    requests_timeout: Option<Duration>,
    ready_on: Option<ReadyOn>,
    #[serde(default, deserialize_with = "de_duration")]
    heartbeat_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    stable_after: Option<Duration>,
    crash_loop_limit: Option<u32>,
    log_prefix: Option<bool>,
    #[serde(default, deserialize_with = "de_duration")]
    session_ttl: Option<Duration>,
    sniff_bytes: Option<usize>,
    #[serde(default, deserialize_with = "de_duration")]
    sniff_timeout: Option<Duration>,
    bus_queue: Option<usize>,
    tcp_nodelay: Option<bool>,
    bridge: Option<String>,
    bridge_group: Option<String>,
    bridge_ca: Option<PathBuf>,
    bridge_queue: Option<usize>,
    #[serde(default, deserialize_with = "de_duration")]
    bridge_host_timeout: Option<Duration>,
    bridge_channels: Option<String>,
    health_check: Option<String>,
    #[serde(default, deserialize_with = "de_duration")]
    health_interval: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    health_timeout: Option<Duration>,
    health_failures: Option<u32>,
    max_memory: Option<ByteSize>,
    #[serde(default, deserialize_with = "de_duration")]
    max_lifetime: Option<Duration>,
    max_connections: Option<u64>,
    lifetime_jitter: Option<Percent>,
    control: Option<PathBuf>,
    log_format: Option<LogFormat>,
    log_timestamps: Option<LogTimestamps>,
    proxy_protocol: Option<ProxyProtocolFile>,
    metrics: Option<String>,
    command: Option<Vec<String>>,
}

/// `proxy_protocol` in the file: `true`/`false` for every listener of clusterd's own, or the
/// `listen` entries it applies to.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ProxyProtocolFile {
    All(bool),
    Only(Vec<String>),
}

/// Which of clusterd's own listeners expect a PROXY protocol header first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ProxyProtocol {
    #[default]
    Off,
    /// Every `--listen` address, or every socket systemd passed.
    All,
    /// These `--listen` addresses (resolved as `listen` resolves them).
    Only(Vec<ListenAddr>),
}

impl ProxyProtocol {
    /// Whether the listener of `addr` (`None`: a socket systemd passed) expects the header.
    pub fn applies_to(&self, addr: Option<&ListenAddr>) -> bool {
        match self {
            Self::Off => false,
            Self::All => true,
            Self::Only(addrs) => addr.is_some_and(|a| addrs.contains(a)),
        }
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Seconds(s) => Ok(Some(Duration::from_secs(s))),
        Raw::Text(t) => parse_duration(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

/// Everything the supervisor needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub workers: u32,
    pub workers_auto: bool,
    pub listen: Vec<ListenAddr>,
    pub balance: Balance,
    pub sticky: Sticky,
    pub protocol: Protocol,
    pub serialization: Serialization,
    /// `--node-preload`: Node workers get clusterd's preload.
    pub node_preload: NodePreload,
    pub grace: Duration,
    pub ready_timeout: Duration,
    pub requests_timeout: Duration,
    pub ready_on: ReadyOn,
    /// `None` when disabled.
    pub heartbeat_timeout: Option<Duration>,
    pub stable_after: Duration,
    /// 0 never gives up.
    pub crash_loop_limit: u32,
    pub log_prefix: bool,
    /// A sticky session not used for this long is forgotten.
    pub session_ttl: Duration,
    /// The most bytes read from a new connection to find its request line.
    pub sniff_bytes: usize,
    /// The longest a new connection may take to send its request line.
    pub sniff_timeout: Duration,
    /// Bytes of bus messages queued for one worker before messages to it are dropped.
    pub bus_queue: usize,
    /// Set TCP_NODELAY on accepted TCP connections.
    pub tcp_nodelay: bool,
    /// `--bridge` and its companions; `None` without a bridge.
    pub bridge: Option<BridgeConfig>,
    /// `--health-check` and its timing; `None` when off.
    pub health: Option<Health>,
    /// `--max-memory`, `--max-lifetime`, `--max-connections` and their jitter.
    pub recycle: Recycle,
    pub control: PathBuf,
    pub log_format: LogFormat,
    pub log_timestamps: LogTimestamps,
    pub proxy_protocol: ProxyProtocol,
    /// `--metrics`: where `GET /metrics` is served (one socket per address the option resolved
    /// to); empty when off.
    pub metrics: Vec<ListenAddr>,
    pub program: OsString,
    pub args: Vec<OsString>,
    /// What clusterd decided for the operator (the protocol, what a bare port listens on): logged
    /// at start.
    pub decisions: Vec<String>,
}

/// The health check of each ready worker (`--health-check`).
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub failures: u32,
}

/// When a worker is recycled; every limit `None` when off.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recycle {
    /// Bytes of resident memory of the worker's process tree.
    pub max_memory: Option<u64>,
    pub max_lifetime: Option<Duration>,
    /// Connections handed to the worker.
    pub max_connections: Option<u64>,
    /// The share (0 to 0.5) by which `max_lifetime` and `max_connections` are lowered, per worker.
    pub jitter: f64,
}

/// How the options given on the command line or in the environment were written there, by
/// option id (`grace` → `--grace` or `CLUSTERD_GRACE`), so that an error names what the operator
/// typed. Filled from clap's matches by [`crate::cli::given_as`].
pub type GivenAs = HashMap<String, String>;

/// The config file as read, to name a key's line in an error.
struct LoadedFile {
    path: PathBuf,
    text: String,
}

impl LoadedFile {
    /// `config file PATH, line N, key `KEY``: where `key` is set (a top-level key, one per line).
    fn at(&self, key: &str) -> String {
        let line = self
            .text
            .lines()
            .position(|l| l.trim_start().strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('=')));
        match line {
            Some(n) => format!("config file {}, line {}, key `{key}`", self.path.display(), n + 1),
            None => format!("config file {}, key `{key}`", self.path.display()),
        }
    }
}

/// The layers of one load, and where each value came from.
struct Layers<'a> {
    given: &'a GivenAs,
    file: Option<&'a LoadedFile>,
    from: HashMap<&'static str, String>,
}

impl Layers<'_> {
    /// The command line's (or variable's) value, else the file's; notes where it came from.
    fn pick<T>(&mut self, id: &'static str, given: Option<T>, file: Option<T>) -> Option<T> {
        let at = match (&given, &file, self.file) {
            (Some(_), _, _) => self.given.get(id).cloned().unwrap_or_else(|| flag(id)),
            (None, Some(_), Some(loaded)) => loaded.at(id),
            _ => flag(id),
        };
        self.from.insert(id, at);
        given.or(file)
    }

    /// How the value of `id` was given, for an error.
    fn at(&self, id: &str) -> String {
        self.from.get(id).cloned().unwrap_or_else(|| flag(id))
    }

    fn invalid(&self, id: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { what: self.at(id), message: message.into() }
    }

    /// `min ≤ value ≤ max`, or an error that states the bounds.
    fn within(&self, id: &str, value: Duration, min: Duration, max: Duration) -> Result<(), ConfigError> {
        if (min..=max).contains(&value) {
            return Ok(());
        }
        Err(self.invalid(id, format!("must be {} to {}, not {}", show(min), show(max), show(value))))
    }
}

/// The long flag of an option id: `ready_timeout` → `--ready-timeout`.
fn flag(id: &str) -> String {
    format!("--{}", id.replace('_', "-"))
}

impl Config {
    /// Layers the command line (and clap's `CLUSTERD_*` variables) over the file and the defaults.
    pub fn load(run: RunArgs, control: Option<PathBuf>, given: &GivenAs) -> Result<Self, ConfigError> {
        let loaded = match &run.config {
            Some(path) => Some(read_file(path)?),
            None => None,
        };
        let file = match &loaded {
            Some(loaded) => parse_file(loaded)?,
            None => FileConfig::default(),
        };
        let mut o = Layers { given, file: loaded.as_ref(), from: HashMap::new() };
        let mut decisions = Vec::new();
        let bridge = bridge_config(&mut o, &run, &file)?;
        let (workers, workers_auto) = match o.pick("workers", run.workers, file.workers).unwrap_or(WorkerCount::Auto) {
            WorkerCount::Fixed(n) => (n, false),
            WorkerCount::Auto => (auto_workers(), true),
        };
        let run_listen = (!run.listen.is_empty()).then_some(run.listen);
        let listen_text = o.pick("listen", run_listen, file.listen).unwrap_or_default();
        // Probed only when there is something to listen on (it opens and closes a socket).
        let ipv6 = !listen_text.is_empty() && ipv6_available();
        let mut listen = Vec::new();
        for text in &listen_text {
            let (addrs, decision) = resolve_listen(text, ipv6).map_err(|message| o.invalid("listen", message))?;
            for addr in addrs {
                if !listen.contains(&addr) {
                    listen.push(addr);
                }
            }
            decisions.extend(decision);
        }
        let given_program = (!run.program.is_empty()).then_some(run.program);
        let file_program = file.command.map(|c| c.into_iter().map(OsString::from).collect());
        let mut command = o.pick("command", given_program, file_program).unwrap_or_default().into_iter();
        let (program, args) = match command.next() {
            Some(program) if !program.is_empty() => (program, command.collect()),
            _ => return Err(ConfigError::NoProgram),
        };
        let resolved = resolve_program(&program).map_err(|message| {
            // After `--` it is the program; from the file, the file's `command` line.
            let at = o.at("command");
            ConfigError::Invalid { what: if at == flag("command") { "program".into() } else { at }, message }
        })?;
        let choice = o.pick("protocol", run.protocol, file.protocol).unwrap_or_default();
        let protocol = match choice {
            ProtocolChoice::Native => Protocol::Native,
            ProtocolChoice::Node => Protocol::Node,
            ProtocolChoice::Auto => {
                let (protocol, why) = detect_protocol(&program, &resolved);
                decisions.push(why);
                protocol
            }
        };
        let heartbeat = o.pick("heartbeat_timeout", run.heartbeat_timeout, file.heartbeat_timeout);
        let proxy_given = run.proxy_protocol.map(ProxyProtocolFile::All);
        let proxy_protocol = match o.pick("proxy_protocol", proxy_given, file.proxy_protocol) {
            None | Some(ProxyProtocolFile::All(false)) => ProxyProtocol::Off,
            Some(ProxyProtocolFile::All(true)) => ProxyProtocol::All,
            Some(ProxyProtocolFile::Only(texts)) => {
                let mut only = Vec::new();
                for text in &texts {
                    let (addrs, _) = resolve_listen(text, ipv6).map_err(|m| o.invalid("proxy_protocol", m))?;
                    if let Some(missing) = addrs.iter().find(|a| !listen.contains(a)) {
                        let message = format!("{text:?} ({missing}) is not one of the `listen` addresses");
                        return Err(o.invalid("proxy_protocol", message));
                    }
                    only.extend(addrs);
                }
                ProxyProtocol::Only(only)
            }
        };
        let metrics = match o.pick("metrics", run.metrics, file.metrics) {
            Some(text) => {
                let (addrs, decision) = resolve_listen(&text, ipv6_available()).map_err(|m| o.invalid("metrics", m))?;
                decisions.extend(decision.map(|d| d.replacen("--listen", "--metrics", 1)));
                addrs
            }
            None => Vec::new(),
        };
        let control_given = o.pick("control", control, file.control);
        let health_path = o.pick("health_check", run.health_check, file.health_check);
        let health_interval = o.pick("health_interval", run.health_interval, file.health_interval);
        let health_timeout = o.pick("health_timeout", run.health_timeout, file.health_timeout);
        let health_failures = o.pick("health_failures", run.health_failures, file.health_failures);
        let health = health_path.map(|path| Health {
            path,
            interval: health_interval.unwrap_or(DEFAULT_HEALTH_INTERVAL),
            timeout: health_timeout.unwrap_or(DEFAULT_HEALTH_TIMEOUT),
            failures: health_failures.unwrap_or(DEFAULT_HEALTH_FAILURES),
        });
        let jitter = o.pick("lifetime_jitter", run.lifetime_jitter, file.lifetime_jitter);
        let recycle = Recycle {
            max_memory: o.pick("max_memory", run.max_memory, file.max_memory).map(|s| s.0),
            max_lifetime: o.pick("max_lifetime", run.max_lifetime, file.max_lifetime),
            max_connections: o.pick("max_connections", run.max_connections, file.max_connections),
            jitter: jitter.map_or(DEFAULT_LIFETIME_JITTER, |p| p.0) / 100.0,
        };
        let config = Self {
            workers,
            workers_auto,
            listen,
            balance: o.pick("balance", run.balance, file.balance).unwrap_or_default(),
            sticky: o.pick("sticky", run.sticky, file.sticky).unwrap_or_default(),
            protocol,
            serialization: o.pick("serialization", run.serialization, file.serialization).unwrap_or_default(),
            node_preload: o.pick("node_preload", run.node_preload, file.node_preload).unwrap_or_default(),
            grace: o.pick("grace", run.grace, file.grace).unwrap_or(DEFAULT_GRACE),
            ready_timeout: o
                .pick("ready_timeout", run.ready_timeout, file.ready_timeout)
                .unwrap_or(DEFAULT_READY_TIMEOUT),
            requests_timeout: o
                .pick("requests_timeout", run.requests_timeout, file.requests_timeout)
                .unwrap_or(DEFAULT_REQUESTS_TIMEOUT),
            ready_on: o.pick("ready_on", run.ready_on, file.ready_on).unwrap_or_default(),
            heartbeat_timeout: Some(heartbeat.unwrap_or(DEFAULT_HEARTBEAT_TIMEOUT)).filter(|d| !d.is_zero()),
            stable_after: o.pick("stable_after", run.stable_after, file.stable_after).unwrap_or(DEFAULT_STABLE_AFTER),
            crash_loop_limit: o
                .pick("crash_loop_limit", run.crash_loop_limit, file.crash_loop_limit)
                .unwrap_or(DEFAULT_CRASH_LOOP_LIMIT),
            log_prefix: !run.no_log_prefix && file.log_prefix.unwrap_or(true),
            session_ttl: o.pick("session_ttl", run.session_ttl, file.session_ttl).unwrap_or(DEFAULT_SESSION_TTL),
            sniff_bytes: o.pick("sniff_bytes", run.sniff_bytes, file.sniff_bytes).unwrap_or(DEFAULT_SNIFF_BYTES),
            sniff_timeout: o
                .pick("sniff_timeout", run.sniff_timeout, file.sniff_timeout)
                .unwrap_or(DEFAULT_SNIFF_TIMEOUT),
            bus_queue: o.pick("bus_queue", run.bus_queue, file.bus_queue).unwrap_or(DEFAULT_BUS_QUEUE),
            tcp_nodelay: run.tcp_nodelay || file.tcp_nodelay.unwrap_or(false),
            bridge,
            health,
            recycle,
            control: control_given.unwrap_or_else(default_control_path),
            log_format: o.pick("log_format", run.log_format, file.log_format).unwrap_or_default(),
            log_timestamps: o.pick("log_timestamps", run.log_timestamps, file.log_timestamps).unwrap_or_default(),
            proxy_protocol,
            metrics,
            program,
            args,
            decisions,
        };
        config.check(&o)?;
        Ok(config)
    }

    /// Every bound, in one place (README "Limits and guarantees").
    fn check(&self, o: &Layers) -> Result<(), ConfigError> {
        let one_ms = Duration::from_millis(1);
        o.within("grace", self.grace, Duration::ZERO, MAX_DURATION)?;
        o.within("ready_timeout", self.ready_timeout, one_ms, MAX_DURATION)?;
        o.within("requests_timeout", self.requests_timeout, one_ms, MAX_DURATION)?;
        if let Some(hb) = self.heartbeat_timeout
            && !(MIN_HEARTBEAT..=MAX_DURATION).contains(&hb)
        {
            let message =
                format!("must be 0 (off) or {} to {}, not {}", show(MIN_HEARTBEAT), show(MAX_DURATION), show(hb));
            return Err(o.invalid("heartbeat_timeout", message));
        }
        o.within("stable_after", self.stable_after, Duration::ZERO, MAX_DURATION)?;
        o.within("session_ttl", self.session_ttl, one_ms, MAX_DURATION)?;
        o.within("sniff_timeout", self.sniff_timeout, one_ms, MAX_DURATION)?;
        if !(MIN_SNIFF_BYTES..=MAX_SNIFF_BYTES).contains(&self.sniff_bytes) {
            let message = format!("must be {MIN_SNIFF_BYTES} to {MAX_SNIFF_BYTES}, not {}", self.sniff_bytes);
            return Err(o.invalid("sniff_bytes", message));
        }
        if !(MIN_BUS_QUEUE..=MAX_BUS_QUEUE).contains(&self.bus_queue) {
            let message =
                format!("must be {MIN_BUS_QUEUE} (2 MiB) to {MAX_BUS_QUEUE} (1 GiB) bytes, not {}", self.bus_queue);
            return Err(o.invalid("bus_queue", message));
        }
        self.check_upkeep(o)?;
        unix_path_fits(&self.control).map_err(|message| o.invalid("control", message))?;
        for addr in &self.listen {
            if let ListenAddr::Unix(path) = addr {
                unix_path_fits(path).map_err(|message| o.invalid("listen", message))?;
            }
        }
        for addr in &self.metrics {
            if let ListenAddr::Unix(path) = addr {
                unix_path_fits(path).map_err(|message| o.invalid("metrics", message))?;
            }
            if self.listen.contains(addr) && !matches!(addr, ListenAddr::Tcp(a) if a.port() == 0) {
                let message = format!("{addr} is also a `listen` address; give the metrics an address of their own");
                return Err(o.invalid("metrics", message));
            }
        }
        Ok(())
    }
}

/// The bridge's options, layered as the others, checked (a bad URL, scheme or CA file: exit 2
/// naming the option as it was given; a password never appears in the message).
fn bridge_config(o: &mut Layers, run: &RunArgs, file: &FileConfig) -> Result<Option<BridgeConfig>, ConfigError> {
    use crate::bridge::options as b;
    let url = o.pick("bridge", run.bridge.clone(), file.bridge.clone());
    let ca = o.pick("bridge_ca", run.bridge_ca.clone(), file.bridge_ca.clone());
    let Some(text) = url else {
        if ca.is_some() {
            return Err(o.invalid("bridge_ca", "only with --bridge rediss://…"));
        }
        return Ok(None);
    };
    let url = b::BridgeUrl::parse(&text).map_err(|message| o.invalid("bridge", message))?;
    let group = o.pick("bridge_group", run.bridge_group.clone(), file.bridge_group.clone());
    let group = group.unwrap_or_else(|| b::DEFAULT_GROUP.into());
    b::check_group(&group).map_err(|message| o.invalid("bridge_group", message))?;
    let ca = match ca {
        Some(_) if !url.tls() => return Err(o.invalid("bridge_ca", "only with a rediss:// URL")),
        Some(path) => Some(b::read_ca(&path).map_err(|message| o.invalid("bridge_ca", message))?),
        None => None,
    };
    let queue = o.pick("bridge_queue", run.bridge_queue, file.bridge_queue).unwrap_or(b::DEFAULT_QUEUE);
    if !(b::MIN_QUEUE..=b::MAX_QUEUE).contains(&queue) {
        let message = format!("must be {} to {} bytes (64 KiB to 1 GiB), not {queue}", b::MIN_QUEUE, b::MAX_QUEUE);
        return Err(o.invalid("bridge_queue", message));
    }
    let host_timeout = o.pick("bridge_host_timeout", run.bridge_host_timeout, file.bridge_host_timeout);
    let host_timeout = host_timeout.unwrap_or(b::DEFAULT_HOST_TIMEOUT);
    o.within("bridge_host_timeout", host_timeout, b::MIN_HOST_TIMEOUT, b::MAX_HOST_TIMEOUT)?;
    let app = o.pick("bridge_channels", run.bridge_channels.clone(), file.bridge_channels.clone());
    let app = crate::bridge::channels::AppChannels::parse(app.as_deref().unwrap_or_default())
        .map_err(|message| o.invalid("bridge_channels", message))?;
    Ok(Some(BridgeConfig { url, group, ca, queue, host_timeout, app }))
}

impl Config {
    /// The bounds of the health check and recycling options.
    fn check_upkeep(&self, o: &Layers) -> Result<(), ConfigError> {
        if let Some(health) = &self.health {
            let path = &health.path;
            if !path.starts_with('/') || path.len() > MAX_HEALTH_PATH || !path.bytes().all(|b| b.is_ascii_graphic()) {
                let message = format!(
                    "must be a path starting with / of at most {MAX_HEALTH_PATH} printable ASCII characters without \
                     spaces (percent-encode the rest), not {path:?}"
                );
                return Err(o.invalid("health_check", message));
            }
            o.within("health_interval", health.interval, MIN_HEALTH_INTERVAL, MAX_DURATION)?;
            // A check ends before the next one starts: at most one per worker at a time.
            o.within("health_timeout", health.timeout, MIN_HEALTH_TIMEOUT, health.interval)?;
            if !(1..=MAX_HEALTH_FAILURES).contains(&health.failures) {
                let message = format!("must be 1 to {MAX_HEALTH_FAILURES}, not {}", health.failures);
                return Err(o.invalid("health_failures", message));
            }
        }
        let r = &self.recycle;
        if let Some(bytes) = r.max_memory
            && !(MIN_MAX_MEMORY..=MAX_MAX_MEMORY).contains(&bytes)
        {
            let message = format!("must be 4MiB to 1TiB, not {bytes} bytes");
            return Err(o.invalid("max_memory", message));
        }
        if let Some(lifetime) = r.max_lifetime {
            o.within("max_lifetime", lifetime, MIN_MAX_LIFETIME, MAX_DURATION)?;
        }
        if let Some(n) = r.max_connections
            && !(1..=MAX_MAX_CONNECTIONS).contains(&n)
        {
            return Err(o.invalid("max_connections", format!("must be 1 to {MAX_MAX_CONNECTIONS}, not {n}")));
        }
        if r.jitter * 100.0 > MAX_LIFETIME_JITTER {
            let message = format!("must be 0% to {MAX_LIFETIME_JITTER}%, not {}%", r.jitter * 100.0);
            return Err(o.invalid("lifetime_jitter", message));
        }
        Ok(())
    }
}

/// A Unix socket path must be given and fit in `sun_path`.
fn unix_path_fits(path: &Path) -> Result<(), String> {
    let length = path.as_os_str().len();
    if length == 0 {
        return Err("an empty path; give a socket path or leave the option out".into());
    }
    if length > MAX_UNIX_PATH {
        return Err(format!(
            "{} is {length} bytes long; a Unix socket path holds at most {MAX_UNIX_PATH}",
            path.display()
        ));
    }
    Ok(())
}

/// Reads the config file: a regular file (never a device or a pipe that would be read forever)
/// of at most [`MAX_CONFIG_FILE`] bytes.
fn read_file(path: &Path) -> Result<LoadedFile, ConfigError> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |reason: String| ConfigError::ReadFile { path: path.to_owned(), reason };
    // Non-blocking: opening a FIFO for reading would otherwise wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| fail(e.to_string()))?;
    let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_FILE + 1).read_to_end(&mut bytes).map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > MAX_CONFIG_FILE {
        return Err(fail(format!("larger than the limit of {MAX_CONFIG_FILE} bytes")));
    }
    let text = String::from_utf8(bytes).map_err(|_| fail("not UTF-8 text".into()))?;
    Ok(LoadedFile { path: path.to_owned(), text })
}

/// Parses the text of a config file named `path`, as `--config` does after reading it: the
/// public entry point for the fuzzer (any text gives `Ok` or an error, never a panic).
#[allow(dead_code, reason = "the config loader's fuzz target calls it; clusterd itself reads files")]
pub fn parse_file_text(path: &Path, text: &str) -> Result<(), ConfigError> {
    parse_file(&LoadedFile { path: path.to_owned(), text: text.to_owned() }).map(drop)
}

/// Parses the file; an error names the file, the line and the key.
fn parse_file(loaded: &LoadedFile) -> Result<FileConfig, ConfigError> {
    toml::from_str(&loaded.text).map_err(|e| {
        let first = e.message().lines().next().unwrap_or("invalid TOML");
        // toml spans an unknown key as the whole table, but names it: find its line by name.
        if let Some(rest) = first.strip_prefix("unknown field `")
            && let Some((key, _)) = rest.split_once('`')
        {
            let message = format!("unknown field `{key}` (config/clusterd.toml lists every key)");
            return ConfigError::ParseFile { at: loaded.at(key), message };
        }
        let line = e
            .span()
            .and_then(|span| loaded.text.get(..span.start))
            .map(|before| before.bytes().filter(|&b| b == b'\n').count() + 1);
        // Every key is top-level: the key is what starts the line of the bad value.
        let key = line
            .and_then(|n| loaded.text.lines().nth(n - 1))
            .and_then(|l| l.split_once('='))
            .map(|(key, _)| key.trim().to_owned())
            .filter(|key| !key.is_empty() && !key.starts_with('['));
        let mut at = format!("config file {}", loaded.path.display());
        if let Some(n) = line {
            at.push_str(&format!(", line {n}"));
        }
        if let Some(key) = key {
            at.push_str(&format!(", key `{key}`"));
        }
        ConfigError::ParseFile { at, message: first.to_owned() }
    })
}

/// Whether this host can listen on IPv6 at all (a kernel without IPv6 cannot).
fn ipv6_available() -> bool {
    can_listen_on(std::net::Ipv6Addr::UNSPECIFIED.into())
}

/// Whether a socket can be bound to `ip` here: a name such as `localhost` may resolve to `::1` on a
/// host (a container) where that address is not configured. Probed with port 0, closed at once.
fn can_listen_on(ip: std::net::IpAddr) -> bool {
    std::net::TcpListener::bind((ip, 0)).is_ok()
}

/// One `--listen` value as addresses to bind, and what was decided for the operator, if anything:
/// - `3000`: every interface, IPv4 (`0.0.0.0:3000`) and IPv6 (`[::]:3000`, an IPv6-only socket),
///   IPv4 only when the host has no IPv6 or for port 0 (the two would get different ports);
/// - `localhost:3000`: every address the name resolves to (`/etc/hosts`, DNS) that this host can
///   listen on;
/// - `127.0.0.1:3000`, `[::1]:3000`, `unix:/path`: as written.
pub fn resolve_listen(text: &str, ipv6: bool) -> Result<(Vec<ListenAddr>, Option<String>), String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<ListenAddr>() {
        return Ok((vec![addr], None));
    }
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let port: u16 = text.parse().map_err(|_| format!("port {text} is more than 65535"))?;
        let v4 = ListenAddr::Tcp(SocketAddr::from(([0, 0, 0, 0], port)));
        if !ipv6 || port == 0 {
            let why = if port == 0 { "port 0" } else { "this host has no IPv6" };
            return Ok((vec![v4], Some(format!("--listen {text}: all IPv4 interfaces, 0.0.0.0:{port} ({why})"))));
        }
        let v6 = ListenAddr::Tcp(SocketAddr::from(([0u16; 8], port)));
        let decision = format!("--listen {text}: all interfaces, 0.0.0.0:{port} (IPv4) and [::]:{port} (IPv6)");
        return Ok((vec![v4, v6], Some(decision)));
    }
    let shape = || format!("{text:?} is not PORT, HOST:PORT, [V6]:PORT or unix:/path");
    let (host, port) = text.rsplit_once(':').ok_or_else(shape)?;
    if host.is_empty() || host.contains(':') || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(shape());
    }
    let port: u16 = port.parse().map_err(|_| format!("port {port} is more than 65535"))?;
    let resolved = (host, port).to_socket_addrs().map_err(|e| format!("cannot resolve {host:?}: {e}"))?;
    let mut addrs = Vec::new();
    for addr in resolved.filter(|a| (ipv6 || a.is_ipv4()) && can_listen_on(a.ip())).map(ListenAddr::Tcp) {
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    if addrs.is_empty() {
        return Err(format!("{host:?} resolves to no address this host can listen on"));
    }
    let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    Ok((addrs, Some(format!("--listen {text}: {}", shown.join(" and ")))))
}

/// `--protocol auto`: Node's IPC channel for a Node.js program (`node`, `nodejs`, or a script
/// whose `#!` line runs one of them, read from at most [`MAX_SHEBANG`] bytes), clusterd's own
/// otherwise. Returns the choice and a line that says why.
pub fn detect_protocol(program: &std::ffi::OsStr, resolved: &Path) -> (Protocol, String) {
    let is_node = |name: &str| {
        let base = name.rsplit('/').next().unwrap_or(name);
        base == "node" || base == "nodejs"
    };
    let shown = program.to_string_lossy();
    if is_node(&shown) {
        return (Protocol::Node, format!("protocol node (auto: the program is {shown})"));
    }
    let mut head = Vec::with_capacity(MAX_SHEBANG);
    if let Ok(file) = std::fs::File::open(resolved) {
        let _ = file.take(MAX_SHEBANG as u64).read_to_end(&mut head);
    }
    if let Some(line) = head.strip_prefix(b"#!") {
        let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let mut words = line.split_whitespace();
        let mut interpreter = words.next().unwrap_or_default();
        if interpreter.rsplit('/').next() == Some("env") {
            // `#!/usr/bin/env node`, `#!/usr/bin/env -S node --flag`: the first word that is not a flag.
            interpreter = words.find(|w| !w.starts_with('-') && !w.contains('=')).unwrap_or_default();
        }
        if is_node(interpreter) {
            return (Protocol::Node, format!("protocol node (auto: {shown} starts with #!{})", line.trim()));
        }
    }
    (
        Protocol::Native,
        format!("protocol native (auto: {shown} is not a Node.js program; --protocol node if it is one)"),
    )
}

/// Finds the program as `exec` will (a path with a slash as is, else through `PATH`) and checks
/// that it is an executable file, so that a typo is a usage error and not a crash loop.
fn resolve_program(program: &std::ffi::OsStr) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let executable =
        |path: &Path| std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    let shown = program.to_string_lossy();
    if program.as_encoded_bytes().contains(&b'/') {
        let path = PathBuf::from(program);
        return if executable(&path) { Ok(path) } else { Err(format!("{shown} is not an executable file")) };
    }
    let search = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&search)
        .map(|dir| dir.join(program))
        .find(|path| executable(path))
        .ok_or_else(|| format!("{shown} not found in PATH"))
}

/// CPUs this process may really use: its affinity mask, clamped by the cgroup CPU quota.
pub fn auto_workers() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(MAX_WORKERS).min(MAX_WORKERS))
}

/// `$RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=`), else `/run/clusterd` for root (the same
/// place as `RuntimeDirectory=clusterd`, so `clusterd status` in a root shell finds a service's
/// socket), else `$XDG_RUNTIME_DIR`, else the temp dir; the file is `clusterd.sock` there.
pub fn default_control_path() -> PathBuf {
    let dir = std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|v| std::env::split_paths(&v).next())
        .or_else(|| nix::unistd::geteuid().is_root().then(|| PathBuf::from("/run/clusterd")))
        .or_else(|| std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from))
        .unwrap_or_else(std::env::temp_dir);
    dir.join("clusterd.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_resolves_ports_and_names() {
        let v4 = |p: u16| ListenAddr::Tcp(SocketAddr::from(([0, 0, 0, 0], p)));
        let v6 = |p: u16| ListenAddr::Tcp(SocketAddr::from(([0u16; 8], p)));
        assert_eq!(resolve_listen("3000", true).unwrap().0, vec![v4(3000), v6(3000)]);
        assert_eq!(resolve_listen("3000", false).unwrap().0, vec![v4(3000)]);
        assert_eq!(resolve_listen("0", true).unwrap().0, vec![v4(0)], "port 0: one family, one port");
        assert_eq!(resolve_listen("127.0.0.1:80", true).unwrap(), (vec!["127.0.0.1:80".parse().unwrap()], None));
        let (local, said) = resolve_listen("localhost:80", true).unwrap();
        assert!(local.contains(&"127.0.0.1:80".parse().unwrap()), "{local:?}");
        assert!(said.unwrap().starts_with("--listen localhost:80: 127.0.0.1:80"));
        assert!(resolve_listen("70000", true).unwrap_err().contains("more than 65535"));
        assert!(resolve_listen("nowhere", true).unwrap_err().contains("is not PORT, HOST:PORT"));
        assert!(resolve_listen("a:b:80", true).is_err());
        assert!(resolve_listen(":80", true).is_err());
    }

    #[test]
    fn protocol_auto_reads_the_program_and_its_shebang() {
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let detect = |path: &Path| detect_protocol(path.as_os_str(), path).0;
        assert_eq!(detect_protocol("node".as_ref(), Path::new("/usr/bin/node")).0, Protocol::Node);
        assert_eq!(detect_protocol("/opt/node/bin/nodejs".as_ref(), Path::new("/x")).0, Protocol::Node);
        assert_eq!(detect(&script("a", "#!/usr/bin/env node\n")), Protocol::Node);
        assert_eq!(detect(&script("b", "#!/usr/bin/env -S node --max-old-space-size=100\n")), Protocol::Node);
        assert_eq!(detect(&script("c", "#!/usr/local/bin/node\nconsole.log(1)")), Protocol::Node);
        assert_eq!(detect(&script("d", "#!/bin/sh\nexec node x.js\n")), Protocol::Native);
        assert_eq!(detect(&script("e", "\x7fELF binary")), Protocol::Native);
        assert_eq!(detect(&script("f", "#!/usr/bin/env nodemon\n")), Protocol::Native);
        // A #! line past the bytes read is not read.
        let long = format!("#!/usr/bin/env {}node\n", " ".repeat(MAX_SHEBANG));
        assert_eq!(detect(&script("g", &long)), Protocol::Native);
    }

    #[test]
    fn file_errors_name_the_line_and_key() {
        let error = |text: &str| parse_file_text(Path::new("c.toml"), text).unwrap_err().to_string();
        assert!(error("workers = 2\n\ngrace = \"soon\"\n").starts_with("config file c.toml, line 3, key `grace`: "));
        assert!(
            error("# é\nworkers = 2\nbalance = \"fastest\"").starts_with("config file c.toml, line 3, key `balance`")
        );
        assert!(
            error("workers = 2\n= 3\n").starts_with("config file c.toml, line 2"),
            "{}",
            error("workers = 2\n= 3\n")
        );
        assert!(error("[table]\nx = 1\n").starts_with("config file c.toml"));
        assert!(error("é = \"ü\"").starts_with("config file c.toml, line 1"));
        assert!(parse_file_text(Path::new("c.toml"), "").is_ok());
    }

    #[test]
    fn file_rejects_unknown_keys_and_bad_values() {
        assert!(toml::from_str::<FileConfig>("workerz = 3").is_err());
        assert!(toml::from_str::<FileConfig>("grace = \"5x\"").is_err());
        assert!(toml::from_str::<FileConfig>("workers = 0").is_err());
        let ok: FileConfig = toml::from_str("workers = \"auto\"\ngrace = \"1m\"\nready_timeout = 5").unwrap();
        assert_eq!(ok.workers, Some(WorkerCount::Auto));
        assert_eq!(ok.grace, Some(Duration::from_secs(60)));
        assert_eq!(ok.ready_timeout, Some(Duration::from_secs(5)));
    }
}
