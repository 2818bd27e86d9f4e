//! Which bus channels cross hosts, and the names of clusterd's own channels on Redis.
//!
//! The socketioxide adapter's channels cross hosts verbatim, under socketioxide-redis's own names
//! (any prefix): `{prefix}-request#{path}#` (a request to every server of a namespace),
//! `{prefix}-request#{path}#{uid}#` (to one server) and `{prefix}-response#{path}#{uid}#` (the
//! answers to one server). An application's own channels cross hosts when it names them
//! (`--bridge-channels`, [`AppChannels`]), as `{group}:app:{channel}` on Redis in every group.
//! Every other bus channel stays on its host. clusterd's own channels
//! are `{group}:hosts`, `{group}:requests` and `{group}:host:{id}`; a group name holds no `#`, so
//! they can never be taken for the adapter's.
//!
//! Groups keep clusters apart, the adapter's traffic too: in a group `G` other than the default
//! one, an adapter channel is `G:{channel}` on Redis (so a plain socketioxide-redis server joins
//! group `G` with the prefix `G:socket.io`). In the default group, `clusterd`, the adapter's
//! channels keep socketioxide-redis's own names, and a plain server with the default prefix is a
//! member without any configuration.

use super::codec::HostId;
use super::options::DEFAULT_GROUP;

/// The most patterns `--bridge-channels` takes.
pub const MAX_PATTERNS: usize = 64;
/// The longest pattern of `--bridge-channels`, in bytes.
pub const MAX_PATTERN: usize = 256;
/// The longest channel name a host may announce or ask on: the bus's own bound (a worker that
/// names a longer channel is replaced), so that every local name can cross.
pub const MAX_CHANNEL_NAME: usize = clusterd_worker::bus_protocol::MAX_CHANNEL_NAME;

/// The application's own bus channels that cross hosts (`--bridge-channels news,chat.*`): each
/// pattern is a channel name where `*` stands for any run of characters. None by default: an
/// application's channels stay on their host unless it says otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppChannels {
    patterns: Vec<String>,
}

impl AppChannels {
    /// Comma-separated patterns; an empty text is none.
    pub fn parse(text: &str) -> Result<Self, String> {
        let patterns: Vec<String> =
            text.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned).collect();
        if patterns.len() > MAX_PATTERNS {
            return Err(format!("at most {MAX_PATTERNS} patterns, not {}", patterns.len()));
        }
        for pattern in &patterns {
            if pattern.len() > MAX_PATTERN {
                return Err(format!("a pattern is at most {MAX_PATTERN} bytes, not {}", pattern.len()));
            }
            if pattern.contains('#') || pattern.chars().any(char::is_control) {
                return Err(format!(
                    "{pattern:?}: a pattern holds no '#' (the Socket.IO adapter's channels cross hosts anyway) \
                     and no control characters"
                ));
            }
        }
        Ok(Self { patterns })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether an application's channel crosses hosts.
    pub fn matches(&self, channel: &str) -> bool {
        self.patterns.iter().any(|p| glob(p.as_bytes(), channel.as_bytes()))
    }
}

/// `*` matches any run of bytes, every other byte itself; linear in the text (the last `*` seen
/// is the only place to go back to).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The Redis channel of a bridged bus channel.
pub fn redis_name(group: &str, app: &AppChannels, channel: &str) -> String {
    if app_channel(app, channel) {
        format!("{group}:app:{channel}")
    } else if group == DEFAULT_GROUP {
        channel.to_owned()
    } else {
        format!("{group}:{channel}")
    }
}

/// The bus channel of a Redis channel, if it is a bridged channel of this group.
pub fn bus_name<'a>(group: &str, app: &AppChannels, redis: &'a str) -> Option<&'a str> {
    if let Some(channel) = redis.strip_prefix(group).and_then(|rest| rest.strip_prefix(":app:"))
        && app_channel(app, channel)
    {
        return Some(channel);
    }
    let channel = if group == DEFAULT_GROUP {
        redis
    } else {
        redis.strip_prefix(group).and_then(|rest| rest.strip_prefix(':'))?
    };
    adapter(channel).then_some(channel)
}

/// Whether a bus channel crosses hosts: the adapter's, and the application's it names.
pub fn bridged(app: &AppChannels, channel: &str) -> bool {
    adapter(channel) || app_channel(app, channel)
}

/// Whether a bus channel is one of the socketioxide adapter's.
pub fn adapter(channel: &str) -> bool {
    parts(channel).is_some()
}

/// Whether a bus channel is an application's that crosses hosts (an adapter's channel never is,
/// whatever the patterns say: it crosses under its own name).
fn app_channel(app: &AppChannels, channel: &str) -> bool {
    !app.is_empty() && parts(channel).is_none() && app.matches(channel)
}

/// Whether a bridged channel names one server (its `uid` at the end): such a channel has one
/// subscriber in the whole cluster, so one that is subscribed on this host goes nowhere else.
pub fn single_server(channel: &str) -> bool {
    parts(channel).is_some_and(|(_, uid)| uid.is_some())
}

/// The path and the server's uid of an adapter channel.
fn parts(channel: &str) -> Option<(&str, Option<&str>)> {
    // The relay asks this for every publish: a channel without a `#` (most of an application's
    // own) is answered by one byte scan, before the substring searches, whose set-up alone
    // cost the local relay about a tenth of its CPU per message.
    if !channel.as_bytes().contains(&b'#') {
        return None;
    }
    let (prefix, rest) = channel
        .split_once("-request#")
        .or_else(|| channel.split_once("-response#").filter(|(_, rest)| rest.matches('#').count() == 2))?;
    if prefix.is_empty() || prefix.contains('#') {
        return None;
    }
    let rest = rest.strip_suffix('#')?;
    match rest.split_once('#') {
        None => Some((rest, None)),
        Some((path, uid)) if !uid.is_empty() && !uid.contains('#') => Some((path, Some(uid))),
        Some(_) => None,
    }
}

/// Where hosts announce themselves (hello, heartbeat, leave).
pub fn hosts(group: &str) -> String {
    format!("{group}:hosts")
}

/// Where hosts ask each other.
pub fn requests(group: &str) -> String {
    format!("{group}:requests")
}

/// Where the Node workers' cluster-adapter messages go (`--protocol node`).
pub fn node(group: &str) -> String {
    format!("{group}:node")
}

/// Where one host gets the answers to its requests.
pub fn host(group: &str, id: HostId) -> String {
    format!("{group}:host:{id:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> AppChannels {
        AppChannels::default()
    }

    fn bridged(channel: &str) -> bool {
        super::bridged(&none(), channel)
    }

    #[test]
    fn the_adapters_channels_cross_hosts_and_nothing_else() {
        assert!(bridged("socket.io-request#/#"));
        assert!(bridged("socket.io-request#/chat#"));
        assert!(bridged("app-request#/#AbC_d-1#"));
        assert!(bridged("socket.io-response#/#AbC_d-1#"));
        assert!(!single_server("socket.io-request#/#"));
        assert!(single_server("socket.io-request#/#AbC#"));
        assert!(single_server("socket.io-response#/#AbC#"));
        for local in [
            "news",
            "socket.io-request#/",
            "socket.io-response#/#",
            "socket.io-request#/#a#b#",
            "-request#/#",
            "clusterd:hosts",
            "socket.io-request#/##",
        ] {
            assert!(!bridged(local), "{local}");
        }
    }

    #[test]
    fn own_channels_are_never_bridged() {
        for name in [hosts("g"), requests("g"), host("g", 5), node("g")] {
            assert!(!bridged(&name), "{name}");
        }
        assert_eq!(host("g", 255), "g:host:00000000000000ff");
    }

    #[test]
    fn groups_namespace_the_adapters_channels_except_the_default_one() {
        let chan = "socket.io-request#/#";
        let none = none();
        assert_eq!(redis_name("clusterd", &none, chan), chan);
        assert_eq!(redis_name("blue", &none, chan), "blue:socket.io-request#/#");
        assert_eq!(bus_name("blue", &none, "blue:socket.io-request#/#"), Some(chan));
        assert_eq!(bus_name("blue", &none, chan), None);
        assert_eq!(bus_name("blue", &none, "bluex:socket.io-request#/#"), None);
        assert_eq!(bus_name("clusterd", &none, chan), Some(chan));
        assert_eq!(bus_name("blue", &none, "blue:hosts"), None);
    }

    #[test]
    fn an_applications_channels_cross_hosts_only_when_named_and_always_namespaced() {
        let app = AppChannels::parse(" news , chat.* ,").expect("valid");
        assert!(super::bridged(&app, "news") && super::bridged(&app, "chat.room1") && super::bridged(&app, "chat."));
        assert!(!super::bridged(&app, "newsx") && !super::bridged(&app, "weather") && !bridged("news"));
        assert_eq!(redis_name("clusterd", &app, "news"), "clusterd:app:news");
        assert_eq!(redis_name("blue", &app, "chat.a"), "blue:app:chat.a");
        assert_eq!(bus_name("clusterd", &app, "clusterd:app:news"), Some("news"));
        assert_eq!(bus_name("blue", &app, "blue:app:chat.a"), Some("chat.a"));
        assert_eq!(bus_name("blue", &app, "clusterd:app:news"), None, "another group's");
        assert_eq!(bus_name("clusterd", &app, "clusterd:app:weather"), None, "not named here");
        assert_eq!(bus_name("clusterd", &app, "news"), None);
        // An adapter's channel is the adapter's, whatever the patterns say.
        let all = AppChannels::parse("*").expect("valid");
        assert_eq!(redis_name("clusterd", &all, "socket.io-request#/#"), "socket.io-request#/#");
        assert!(AppChannels::parse("a#b").is_err());
        assert!(AppChannels::parse(&"x,".repeat(MAX_PATTERNS + 1)).is_err());
        assert!(AppChannels::parse(&"x".repeat(MAX_PATTERN + 1)).is_err());
        assert!(AppChannels::parse("").expect("none").is_empty());
    }

    #[test]
    fn glob_stars_match_any_run() {
        for (pattern, text, matches) in [
            ("*", "", true),
            ("a*", "a", true),
            ("a*c", "abbbc", true),
            ("a*c", "abbbcd", false),
            ("*a*b*", "xxaxxbxx", true),
            ("*a*b", "xxaxxbxxb", true),
            ("a**b", "ab", true),
            ("ab", "a", false),
            ("a", "ab", false),
        ] {
            assert_eq!(glob(pattern.as_bytes(), text.as_bytes()), matches, "{pattern} {text}");
        }
    }
}
