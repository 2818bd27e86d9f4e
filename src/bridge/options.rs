//! The bridge's options (`--bridge <URL>` and its companions), checked before anything starts; the
//! URL is shown only redacted.

use std::path::Path;
use std::time::Duration;

/// The longest `--bridge-group` name; it is part of every channel name clusterd uses on Redis.
pub const MAX_GROUP: usize = 64;
/// `--bridge-group` when none is given.
pub const DEFAULT_GROUP: &str = "clusterd";
/// `--bridge-queue` when none is given: bytes of cross-host messages waiting for Redis.
pub const DEFAULT_QUEUE: usize = 16 * 1024 * 1024;
/// The smallest `--bridge-queue`: room for a few large Socket.IO messages.
pub const MIN_QUEUE: usize = 64 * 1024;
/// The most `--bridge-queue` may be: cross-host messages waiting for Redis are memory of clusterd.
pub const MAX_QUEUE: usize = 1024 * 1024 * 1024;
/// `--bridge-host-timeout` when none is given: a host not heard of for this long is gone.
pub const DEFAULT_HOST_TIMEOUT: Duration = Duration::from_secs(3);
/// The bounds of `--bridge-host-timeout`.
pub const MIN_HOST_TIMEOUT: Duration = Duration::from_millis(300);
pub const MAX_HOST_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything the bridge needs, validated.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    pub url: BridgeUrl,
    /// Hosts of one group act as one cluster; the group names clusterd's own channels on Redis.
    pub group: String,
    /// A private CA (PEM) for `rediss://`.
    pub ca: Option<Vec<u8>>,
    /// Bytes of outgoing cross-host messages that may wait; beyond, the oldest are dropped.
    pub queue: usize,
    /// A host not heard of for this long is out of every count.
    pub host_timeout: Duration,
    /// The application's own bus channels that cross hosts (`--bridge-channels`).
    pub app: super::channels::AppChannels,
}

/// Where the bridge connects: `redis://`, `rediss://` (TLS) or `redis+unix://`.
///
/// The full text (with any password) is only ever handed to the Redis client; everything shown to
/// a person (logs, `status`, errors, `Debug`) is [`BridgeUrl::redacted`].
#[derive(Clone, PartialEq, Eq)]
pub struct BridgeUrl {
    full: String,
    redacted: String,
    tls: bool,
}

impl BridgeUrl {
    /// Parses and checks the URL; the error never repeats a password.
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text.trim()).map_err(|error| {
            format!("{error} (expected redis://[user[:password]@]host[:port][/db], rediss://… or redis+unix:///path)")
        })?;
        let redacted = redact(&url);
        let tls = match url.scheme() {
            "redis" => false,
            "rediss" => true,
            "redis+unix" => {
                if url.path().is_empty() || url.path() == "/" {
                    return Err(format!(
                        "{redacted}: redis+unix:// needs a socket path, as in redis+unix:///run/redis.sock"
                    ));
                }
                if url.host_str().is_some_and(|h| !h.is_empty()) {
                    return Err(format!("{redacted}: redis+unix:// takes a path, not a host (three slashes)"));
                }
                false
            }
            other => {
                return Err(format!(
                    "unknown scheme {other:?} in {redacted}: use redis://, rediss:// (TLS) or redis+unix://"
                ));
            }
        };
        if url.scheme() != "redis+unix" {
            if url.host_str().is_none_or(str::is_empty) {
                return Err(format!("{redacted}: no host"));
            }
            let db = url.path().trim_start_matches('/');
            if !db.is_empty() && db.parse::<u32>().is_err() {
                return Err(format!("{redacted}: the path must be a database number, not {db:?}"));
            }
        }
        // The Redis client must accept it too (it reads the same URL), so that no error of its own
        // comes up only when it first connects.
        redis::Client::open(url.as_str()).map_err(|error| format!("{redacted}: {error}"))?;
        Ok(Self { full: url.to_string(), redacted, tls })
    }

    /// As a person may see it: `redis://user:***@host:port/db`.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The whole URL, password included: for the Redis client only.
    pub fn secret(&self) -> &str {
        &self.full
    }

    /// Whether it is `rediss://`.
    pub fn tls(&self) -> bool {
        self.tls
    }
}

impl std::fmt::Debug for BridgeUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl std::fmt::Display for BridgeUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// The URL with its password (in the authority or as a `pass`/`password` query parameter)
/// replaced by `***`.
fn redact(url: &url::Url) -> String {
    let mut shown = url.clone();
    if url.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let secret = matches!(&*k, "pass" | "password");
                (k.into_owned(), if secret { "***".to_owned() } else { v.into_owned() })
            })
            .collect();
        shown.query_pairs_mut().clear().extend_pairs(pairs);
    }
    shown.to_string()
}

/// Checks a bridge group name: it is part of channel names, so it is kept plain.
pub fn check_group(group: &str) -> Result<(), String> {
    if group.is_empty() || group.len() > MAX_GROUP {
        return Err(format!("must be 1 to {MAX_GROUP} characters"));
    }
    if !group.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) {
        return Err(format!("{group:?} may hold only letters, digits, `_`, `-` and `.`"));
    }
    Ok(())
}

/// Reads a private CA file for `rediss://`: it must be readable and hold a PEM certificate.
pub fn read_ca(path: &Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(format!("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display()));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_the_three_schemes_parse_and_passwords_are_redacted() {
        let url = BridgeUrl::parse("redis://app:s3cret@127.0.0.1:6390/2").unwrap();
        assert_eq!(url.redacted(), "redis://app:***@127.0.0.1:6390/2");
        assert_eq!(format!("{url:?} {url}"), "redis://app:***@127.0.0.1:6390/2 redis://app:***@127.0.0.1:6390/2");
        assert!(url.secret().contains("s3cret"));
        assert!(!url.tls());
        assert!(BridgeUrl::parse("rediss://redis.internal:6380").unwrap().tls());
        assert_eq!(BridgeUrl::parse("redis://:pw@h").unwrap().redacted(), "redis://:***@h");
        let unix = BridgeUrl::parse("redis+unix:///run/redis.sock?db=1&pass=xyz").unwrap();
        assert!(!unix.redacted().contains("xyz"), "{}", unix.redacted());
    }

    #[test]
    fn bad_urls_are_refused_without_showing_the_password() {
        for bad in [
            "http://u:pw@host:1",
            "redis://u:pw@:6379",
            "redis://u:pw@host/notadb",
            "redis+unix://",
            "redis+unix://u:pw@host/x",
            "localhost:6379",
            "",
        ] {
            let error = BridgeUrl::parse(bad).unwrap_err();
            assert!(!error.contains("pw@") && !error.contains(":pw"), "{bad}: {error}");
        }
        assert!(BridgeUrl::parse("http://h").unwrap_err().contains("unknown scheme"));
    }

    #[test]
    fn group_names() {
        assert!(check_group("clusterd").is_ok());
        assert!(check_group("app.prod-eu_1").is_ok());
        for bad in ["", "a b", "a:b", "a#b", &"x".repeat(MAX_GROUP + 1)] {
            assert!(check_group(bad).is_err(), "{bad}");
        }
    }
}
