//! The validated configuration: the command line layered over `CLUSTERD_*` variables (both read by
//! clap), over the TOML file, over the defaults. Everything that can be wrong is found here, before
//! anything starts, and reported as one clear line (exit status 2).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::bridge::options::BridgeConfig;
use crate::cli::RunArgs;
use crate::duration::parse_duration;

/// The most workers a pool may have; far above any machine, low enough to catch a typo.
pub const MAX_WORKERS: u32 = 1024;

/// The largest `--sniff-bytes`: the bytes read travel in one frame with the connection.
pub const MAX_SNIFF_BYTES: usize = 16 * 1024;

/// A bad option, variable or config file: clusterd exits 2 and starts nothing.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error(
        "no worker program: give one after `--` (clusterd [OPTIONS] -- PROGRAM [ARGS...]) or set `command` in the config file"
    )]
    NoProgram,
    #[error("invalid {what}: {message}")]
    Invalid { what: &'static str, message: String },
}

/// The pool size as given: a number or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerCount {
    Auto,
    Fixed(u32),
}

impl FromStr for WorkerCount {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        let n: u32 = text.parse().map_err(|_| format!("expected a number or `auto`, got {text:?}"))?;
        if n == 0 {
            return Err("the pool needs at least 1 worker".into());
        }
        if n > MAX_WORKERS {
            return Err(format!("{n} workers is more than the limit of {MAX_WORKERS}"));
        }
        Ok(Self::Fixed(n))
    }
}

impl<'de> Deserialize<'de> for WorkerCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => n.to_string().parse().map_err(serde::de::Error::custom),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

macro_rules! choice {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize, serde::Serialize)]
        #[serde(rename_all = "kebab-case")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }
    };
}

choice!(
    /// Pick for a connection with no sticky owner.
    Balance { #[default] LeastConnection, RoundRobin, Random }
);
choice!(
    /// The session key.
    Sticky { #[default] Sid, Ip, None }
);
choice!(
    /// How workers talk to clusterd.
    Protocol { #[default] Native, Node }
);
choice!(
    /// Node channel serialization.
    Serialization { #[default] Advanced, Json }
);
choice!(
    /// Format of clusterd's own log lines.
    LogFormat { #[default] Text, Json }
);
choice!(
    /// When a worker counts as ready.
    ReadyOn { #[default] Message, Spawn }
);

/// An address to listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a path, as in unix:/run/app.sock".into());
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        text.parse::<SocketAddr>()
            .map(Self::Tcp)
            .map_err(|_| format!("{text:?} is not HOST:PORT, [V6]:PORT or unix:/path (HOST is an IP address)"))
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The config file: the same keys as the long options, in snake_case. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    workers: Option<WorkerCount>,
    listen: Option<Vec<String>>,
    balance: Option<Balance>,
    sticky: Option<Sticky>,
    protocol: Option<Protocol>,
    serialization: Option<Serialization>,
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
    bridge: Option<String>,
    bridge_group: Option<String>,
    bridge_ca: Option<PathBuf>,
    bridge_queue: Option<usize>,
    #[serde(default, deserialize_with = "de_duration")]
    bridge_host_timeout: Option<Duration>,
    control: Option<PathBuf>,
    log_format: Option<LogFormat>,
    command: Option<Vec<String>>,
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
    /// `--bridge` and its companions; `None` without a bridge.
    pub bridge: Option<BridgeConfig>,
    pub control: PathBuf,
    pub log_format: LogFormat,
    pub program: OsString,
    pub args: Vec<OsString>,
}

impl Config {
    /// Layers the command line (and clap's `CLUSTERD_*` variables) over the file and the defaults.
    pub fn load(run: RunArgs, control: Option<PathBuf>) -> Result<Self, ConfigError> {
        let file = match &run.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let bridge = bridge_config(
            &run.bridge,
            &run.bridge_group,
            &run.bridge_ca,
            run.bridge_queue,
            run.bridge_host_timeout,
            &file,
        )?;
        let workers_given = run.workers.or(file.workers).unwrap_or(WorkerCount::Auto);
        let (workers, workers_auto) = match workers_given {
            WorkerCount::Fixed(n) => (n, false),
            WorkerCount::Auto => (auto_workers(), true),
        };
        let listen_text = if run.listen.is_empty() { file.listen.unwrap_or_default() } else { run.listen };
        let listen = listen_text
            .iter()
            .map(|a| a.parse())
            .collect::<Result<Vec<ListenAddr>, _>>()
            .map_err(|message| ConfigError::Invalid { what: "--listen", message })?;
        let mut command = run.program.into_iter();
        let (program, args) = match command.next() {
            Some(program) => (program, command.collect()),
            None => {
                let mut from_file = file.command.unwrap_or_default().into_iter().map(OsString::from);
                match from_file.next() {
                    Some(program) => (program, from_file.collect()),
                    None => return Err(ConfigError::NoProgram),
                }
            }
        };
        if program.is_empty() {
            return Err(ConfigError::NoProgram);
        }
        let config = Self {
            workers,
            workers_auto,
            listen,
            balance: run.balance.or(file.balance).unwrap_or_default(),
            sticky: run.sticky.or(file.sticky).unwrap_or_default(),
            protocol: run.protocol.or(file.protocol).unwrap_or_default(),
            serialization: run.serialization.or(file.serialization).unwrap_or_default(),
            grace: run.grace.or(file.grace).unwrap_or(Duration::from_secs(30)),
            ready_timeout: run.ready_timeout.or(file.ready_timeout).unwrap_or(Duration::from_secs(30)),
            requests_timeout: run.requests_timeout.or(file.requests_timeout).unwrap_or(Duration::from_secs(5)),
            ready_on: run.ready_on.or(file.ready_on).unwrap_or_default(),
            heartbeat_timeout: Some(
                run.heartbeat_timeout.or(file.heartbeat_timeout).unwrap_or(Duration::from_secs(30)),
            )
            .filter(|d| !d.is_zero()),
            stable_after: run.stable_after.or(file.stable_after).unwrap_or(Duration::from_secs(10)),
            crash_loop_limit: run.crash_loop_limit.or(file.crash_loop_limit).unwrap_or(10),
            log_prefix: !run.no_log_prefix && file.log_prefix.unwrap_or(true),
            session_ttl: run.session_ttl.or(file.session_ttl).unwrap_or(Duration::from_secs(300)),
            sniff_bytes: run.sniff_bytes.or(file.sniff_bytes).unwrap_or(8 * 1024),
            sniff_timeout: run.sniff_timeout.or(file.sniff_timeout).unwrap_or(Duration::from_secs(5)),
            bus_queue: run.bus_queue.or(file.bus_queue).unwrap_or(64 * 1024 * 1024),
            bridge,
            control: control.or(file.control).unwrap_or_else(default_control_path),
            log_format: run.log_format.or(file.log_format).unwrap_or_default(),
            program,
            args,
        };
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.ready_timeout.is_zero() {
            return Err(ConfigError::Invalid { what: "--ready-timeout", message: "must be more than 0".into() });
        }
        if self.requests_timeout.is_zero() {
            return Err(ConfigError::Invalid { what: "--requests-timeout", message: "must be more than 0".into() });
        }
        if let Some(hb) = self.heartbeat_timeout
            && hb < Duration::from_millis(300)
        {
            return Err(ConfigError::Invalid {
                what: "--heartbeat-timeout",
                message: "must be 0 (off) or at least 300ms".into(),
            });
        }
        if !(256..=MAX_SNIFF_BYTES).contains(&self.sniff_bytes) {
            return Err(ConfigError::Invalid {
                what: "--sniff-bytes",
                message: format!("must be 256 to {MAX_SNIFF_BYTES}, not {}", self.sniff_bytes),
            });
        }
        if self.bus_queue < clusterd_worker::bus_protocol::MAX_BUS_FRAME / 16 {
            return Err(ConfigError::Invalid {
                what: "--bus-queue",
                message: format!(
                    "must be at least {} bytes (2 MiB)",
                    clusterd_worker::bus_protocol::MAX_BUS_FRAME / 16
                ),
            });
        }
        if self.sniff_timeout.is_zero() {
            return Err(ConfigError::Invalid { what: "--sniff-timeout", message: "must be more than 0".into() });
        }
        if self.session_ttl.is_zero() {
            return Err(ConfigError::Invalid { what: "--session-ttl", message: "must be more than 0".into() });
        }
        resolve_program(&self.program).map_err(|message| ConfigError::Invalid { what: "program", message })?;
        Ok(())
    }
}

/// The bridge's options, layered as the others, checked (a bad URL, scheme or CA file: exit 2
/// naming the option; a password never appears in the message).
fn bridge_config(
    url: &Option<String>,
    group: &Option<String>,
    ca: &Option<PathBuf>,
    queue: Option<usize>,
    host_timeout: Option<Duration>,
    file: &FileConfig,
) -> Result<Option<BridgeConfig>, ConfigError> {
    use crate::bridge::options as o;
    let invalid = |what, message| ConfigError::Invalid { what, message };
    let Some(text) = url.clone().or_else(|| file.bridge.clone()) else {
        if ca.is_some() || file.bridge_ca.is_some() {
            return Err(invalid("--bridge-ca", "only with --bridge rediss://…".into()));
        }
        return Ok(None);
    };
    let url = o::BridgeUrl::parse(&text).map_err(|message| invalid("--bridge", message))?;
    let group = group.clone().or_else(|| file.bridge_group.clone()).unwrap_or_else(|| o::DEFAULT_GROUP.into());
    o::check_group(&group).map_err(|message| invalid("--bridge-group", message))?;
    let ca = match ca.as_ref().or(file.bridge_ca.as_ref()) {
        Some(_) if !url.tls() => return Err(invalid("--bridge-ca", "only with a rediss:// URL".into())),
        Some(path) => Some(o::read_ca(path).map_err(|message| invalid("--bridge-ca", message))?),
        None => None,
    };
    let queue = queue.or(file.bridge_queue).unwrap_or(o::DEFAULT_QUEUE);
    if queue < o::MIN_QUEUE {
        return Err(invalid("--bridge-queue", format!("must be at least {} bytes (64 KiB)", o::MIN_QUEUE)));
    }
    let host_timeout = host_timeout.or(file.bridge_host_timeout).unwrap_or(o::DEFAULT_HOST_TIMEOUT);
    if !(o::MIN_HOST_TIMEOUT..=o::MAX_HOST_TIMEOUT).contains(&host_timeout) {
        return Err(invalid("--bridge-host-timeout", "must be 300ms to 60s".into()));
    }
    Ok(Some(BridgeConfig { url, group, ca, queue, host_timeout }))
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

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile { path: path.to_owned(), source })?;
    toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
        path: path.to_owned(),
        // toml's message spans several lines with a source excerpt; keep the first, it names the key.
        message: e.message().lines().next().unwrap_or("invalid TOML").to_owned(),
    })
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
    fn worker_count_parses_numbers_and_auto() {
        assert_eq!("auto".parse(), Ok(WorkerCount::Auto));
        assert_eq!("4".parse(), Ok(WorkerCount::Fixed(4)));
        assert!("0".parse::<WorkerCount>().is_err());
        assert!("-1".parse::<WorkerCount>().is_err());
        assert!("5000".parse::<WorkerCount>().is_err());
        assert!("four".parse::<WorkerCount>().is_err());
    }

    #[test]
    fn listen_addresses() {
        assert_eq!("127.0.0.1:80".parse(), Ok(ListenAddr::Tcp("127.0.0.1:80".parse().unwrap())));
        assert_eq!("[::1]:80".parse(), Ok(ListenAddr::Tcp("[::1]:80".parse().unwrap())));
        assert_eq!("unix:/run/a.sock".parse(), Ok(ListenAddr::Unix("/run/a.sock".into())));
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("localhost".parse::<ListenAddr>().is_err());
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
