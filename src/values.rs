//! The values of options, as both the command line ([`crate::cli`]) and the config file
//! ([`crate::config`]) parse them: the pool size, the choices, a listen address. Neither of those
//! modules imports the other's internals; both import these.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The most workers a pool may have; far above any machine, low enough to catch a typo.
pub const MAX_WORKERS: u32 = 1024;

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
    /// How workers talk to clusterd, as given: `auto` picks by the program (see [`detect_protocol`]).
    ProtocolChoice { #[default] Auto, Native, Node }
);

/// How workers talk to clusterd, decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// clusterd's own (the SDK, `worker-sdk/PROTOCOL.md`).
    Native,
    /// Node.js's IPC channel.
    Node,
}
choice!(
    /// Node channel serialization.
    Serialization { #[default] Advanced, Json }
);
choice!(
    /// Whether Node workers get clusterd's preload (`--node-preload`), which gives their idle
    /// kept-alive connections back and spreads the end of their WebSockets at a drain.
    NodePreload { #[default] On, Off }
);
choice!(
    /// Format of clusterd's own log lines.
    LogFormat { #[default] Text, Json }
);
choice!(
    /// When clusterd's own text log lines carry a timestamp.
    LogTimestamps { #[default] Auto, Always, Never }
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

// `clusterd status --watch [INTERVAL]`: the refresh interval (the watch itself: control/watch.rs).

/// The shortest refresh interval: a status costs clusterd a little work per worker.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// The longest refresh interval.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// `--watch` without a value.
pub const DEFAULT_INTERVAL: &str = "1s";

/// `--watch`'s value: a duration within [`MIN_INTERVAL`] and [`MAX_INTERVAL`].
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = crate::duration::parse_duration(text)?;
    if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
        let show = crate::duration::show;
        return Err(format!("must be {} to {}, not {}", show(MIN_INTERVAL), show(MAX_INTERVAL), show(interval)));
    }
    Ok(interval)
}

/// A size in bytes, as options take it: `512MiB`, `1GiB`, `300M`, `64KiB`, or a bare number of
/// bytes (K, M, G, T and KiB, MiB, GiB, TiB are all powers of 1024, as in `ulimit` and systemd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let bad = || format!("invalid size {text:?} (use e.g. 512MiB, 1GiB, 300M, or a number of bytes)");
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            "t" | "tb" | "tib" => 40,
            _ => return Err(bad()),
        };
        n.checked_mul(1u64 << shift).map(Self).ok_or_else(|| format!("size {text:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Self(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A share in percent, as options take it: `10%` or `10` (0 to 100; the option bounds it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percent(pub f64);

impl FromStr for Percent {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let number = text.strip_suffix('%').unwrap_or(text).trim();
        match number.parse::<f64>() {
            Ok(p) if p.is_finite() && (0.0..=100.0).contains(&p) => Ok(Self(p)),
            _ => Err(format!("invalid percentage {text:?} (use e.g. 10% or 10, from 0 to 100)")),
        }
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => n.to_string().parse().map_err(serde::de::Error::custom),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
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
    fn watch_intervals_are_bounded() {
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("100ms"), Ok(MIN_INTERVAL));
        assert!(parse_interval("99ms").is_err());
        assert!(parse_interval("2h").is_err());
        assert!(parse_interval("soon").is_err());
    }

    #[test]
    fn sizes_and_percentages() {
        assert_eq!("512MiB".parse(), Ok(ByteSize(512 << 20)));
        assert_eq!("1G".parse(), Ok(ByteSize(1 << 30)));
        assert_eq!("64 kib".parse(), Ok(ByteSize(64 << 10)));
        assert_eq!("1000".parse(), Ok(ByteSize(1000)));
        assert!("".parse::<ByteSize>().is_err());
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert!("-1M".parse::<ByteSize>().is_err());
        assert!("99999999999T".parse::<ByteSize>().is_err());
        assert_eq!("10%".parse(), Ok(Percent(10.0)));
        assert_eq!("2.5".parse(), Ok(Percent(2.5)));
        assert!("101%".parse::<Percent>().is_err());
        assert!("-1%".parse::<Percent>().is_err());
        assert!("NaN".parse::<Percent>().is_err());
    }
}
