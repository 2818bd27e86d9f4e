//! Which bus channels cross hosts, and the names of clusterd's own channels on Redis.
//!
//! The socketioxide adapter's channels cross hosts verbatim, under socketioxide-redis's own names
//! (any prefix): `{prefix}-request#{path}#` (a request to every server of a namespace),
//! `{prefix}-request#{path}#{uid}#` (to one server) and `{prefix}-response#{path}#{uid}#` (the
//! answers to one server). Every other bus channel stays on its host. clusterd's own channels
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

/// The Redis channel of a bridged bus channel.
pub fn redis_name(group: &str, channel: &str) -> String {
    if group == DEFAULT_GROUP { channel.to_owned() } else { format!("{group}:{channel}") }
}

/// The bus channel of a Redis channel, if it is a bridged channel of this group.
pub fn bus_name<'a>(group: &str, redis: &'a str) -> Option<&'a str> {
    let channel = if group == DEFAULT_GROUP {
        redis
    } else {
        redis.strip_prefix(group).and_then(|rest| rest.strip_prefix(':'))?
    };
    bridged(channel).then_some(channel)
}

/// Whether a bus channel crosses hosts.
pub fn bridged(channel: &str) -> bool {
    parts(channel).is_some()
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
        assert_eq!(redis_name("clusterd", chan), chan);
        assert_eq!(redis_name("blue", chan), "blue:socket.io-request#/#");
        assert_eq!(bus_name("blue", "blue:socket.io-request#/#"), Some(chan));
        assert_eq!(bus_name("blue", chan), None);
        assert_eq!(bus_name("blue", "bluex:socket.io-request#/#"), None);
        assert_eq!(bus_name("clusterd", chan), Some(chan));
        assert_eq!(bus_name("blue", "blue:hosts"), None);
    }
}
