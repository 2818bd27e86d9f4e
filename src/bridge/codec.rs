//! clusterd's own messages between hosts, on the group's channels. Anyone who can reach Redis can
//! publish anything anywhere, so parsing is strict: a magic start, a bounded size, every byte
//! accounted for, and sane field values. What fails is dropped and counted, never acted upon.

use bincode::{Decode, Encode};

/// The first bytes of every message: clusterd's bridge, format 1.
const MAGIC: &[u8; 4] = b"CDB1";
/// The largest message clusterd accepts on its own channels. Requests carry a worker's request
/// payload (the socketioxide trackers are about 50 bytes); 16 MiB leaves room for applications.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// The most channels a host may announce (a namespace costs three: the request channel and a
/// request and a response channel per worker).
pub const MAX_CHANNELS: usize = 64 * 1024;
/// The most answers or missing entries one answer message may carry.
pub const MAX_ENTRIES: usize = 64 * 1024;

/// A host's id: random, new each time clusterd starts.
pub type HostId = u64;

/// What hosts say to each other.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Wire {
    /// A host (re)connected: it announces itself, and every other host answers with a `Heartbeat`
    /// at once, so that it knows the cluster without waiting for a period.
    Hello { host: HostId, counts: Vec<(String, u32)>, shadowed: bool },
    /// A host is alive; `counts` are its live workers subscribed to each bridged channel, and
    /// `shadowed` says that it subscribes each request channel once per worker there (for plain
    /// socketioxide-redis servers, which count servers with `PUBSUB NUMSUB`), not once.
    Heartbeat { host: HostId, counts: Vec<(String, u32)>, shadowed: bool },
    /// A host stops: it is out of every count at once.
    Leave { host: HostId },
    /// A worker of `host` asks the subscribers of `channel` on every other host.
    Request { host: HostId, id: u64, channel: String, timeout_ms: u32, payload: Vec<u8> },
    /// `host`'s answers to the request `id` of the host whose channel this is on.
    Answers { host: HostId, id: u64, answers: Vec<(u32, Vec<u8>)>, missing: Vec<u32> },
    /// A Node worker's cluster-adapter message (`--protocol node`), as its channel framed it:
    /// `mode` 0 is `advanced`, 1 is `json`.
    Node { host: HostId, mode: u8, frame: Vec<u8> },
}

/// Why a message was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Malformed {
    #[error("not a clusterd bridge message")]
    Magic,
    #[error("{0} bytes is over the limit")]
    TooLarge(usize),
    #[error("undecodable: {0}")]
    Decode(String),
    #[error("{0} bytes after the message")]
    Trailing(usize),
    #[error("{0}")]
    Invalid(&'static str),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE>()
}

impl Wire {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        // Writing to a Vec fails only over the limit, which the senders' inputs stay within.
        if bincode::encode_into_std_write(self, &mut out, config()).is_err() {
            out.truncate(MAGIC.len());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, Malformed> {
        if bytes.len() > MAX_MESSAGE + MAGIC.len() {
            return Err(Malformed::TooLarge(bytes.len()));
        }
        let body = bytes.strip_prefix(MAGIC).ok_or(Malformed::Magic)?;
        let (wire, read): (Wire, usize) =
            bincode::decode_from_slice(body, config()).map_err(|e| Malformed::Decode(e.to_string()))?;
        if read != body.len() {
            return Err(Malformed::Trailing(body.len() - read));
        }
        wire.check()?;
        Ok(wire)
    }

    /// Field values that decode but that no clusterd sends.
    fn check(&self) -> Result<(), Malformed> {
        match self {
            Self::Hello { host, counts, .. } | Self::Heartbeat { host, counts, .. } => {
                if *host == 0 {
                    return Err(Malformed::Invalid("host id 0"));
                }
                if counts.len() > MAX_CHANNELS {
                    return Err(Malformed::Invalid("too many channels"));
                }
                // Whether a channel crosses hosts is each host's to say (`--bridge-channels`): a host
                // keeps the counts of the channels it bridges itself.
                if counts.iter().any(|(channel, n)| *n == 0 || !channel_name(channel)) {
                    return Err(Malformed::Invalid("a count of 0 or a channel name empty or too long"));
                }
                let mut names: Vec<&str> = counts.iter().map(|(c, _)| c.as_str()).collect();
                names.sort_unstable();
                if names.windows(2).any(|w| w[0] == w[1]) {
                    return Err(Malformed::Invalid("a channel counted twice"));
                }
            }
            Self::Leave { host } if *host == 0 => return Err(Malformed::Invalid("host id 0")),
            Self::Leave { .. } => {}
            Self::Request { host, channel, .. } => {
                if *host == 0 {
                    return Err(Malformed::Invalid("host id 0"));
                }
                if !channel_name(channel) {
                    return Err(Malformed::Invalid("a request on a channel name empty or too long"));
                }
            }
            Self::Node { host, mode, frame } => {
                if *host == 0 {
                    return Err(Malformed::Invalid("host id 0"));
                }
                if *mode > 1 || frame.is_empty() {
                    return Err(Malformed::Invalid("an unknown serialization or an empty frame"));
                }
            }
            Self::Answers { host, answers, missing, .. } => {
                if *host == 0 {
                    return Err(Malformed::Invalid("host id 0"));
                }
                if answers.len() + missing.len() > MAX_ENTRIES {
                    return Err(Malformed::Invalid("too many answers"));
                }
            }
        }
        Ok(())
    }
}

fn channel_name(channel: &str) -> bool {
    !channel.is_empty() && channel.len() <= super::channels::MAX_CHANNEL_NAME
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let all = [
            Wire::Hello { host: 7, counts: vec![("socket.io-request#/#".into(), 2)], shadowed: false },
            Wire::Heartbeat { host: 7, counts: vec![], shadowed: true },
            Wire::Leave { host: 7 },
            Wire::Request {
                host: 7,
                id: 9,
                channel: "socket.io-request#/#".into(),
                timeout_ms: 5000,
                payload: vec![1],
            },
            Wire::Answers { host: 8, id: 9, answers: vec![(0, vec![]), (1, vec![2])], missing: vec![3] },
            Wire::Node { host: 8, mode: 1, frame: b"{}\n".to_vec() },
        ];
        for wire in all {
            assert_eq!(Wire::decode(&wire.encode()), Ok(wire));
        }
    }

    #[test]
    fn garbage_is_refused() {
        let good = Wire::Leave { host: 7 }.encode();
        assert_eq!(Wire::decode(b"hello"), Err(Malformed::Magic));
        assert_eq!(Wire::decode(b""), Err(Malformed::Magic));
        assert!(matches!(Wire::decode(&good[..good.len() - 1]), Err(Malformed::Decode(_))));
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(Wire::decode(&trailing), Err(Malformed::Trailing(1)));
        assert!(matches!(Wire::decode(&Wire::Leave { host: 0 }.encode()), Err(Malformed::Invalid(_))));
        let bad_count = Wire::Heartbeat { host: 1, counts: vec![("socket.io-request#/#".into(), 0)], shadowed: false };
        assert!(matches!(Wire::decode(&bad_count.encode()), Err(Malformed::Invalid(_))));
        let unnamed = Wire::Heartbeat { host: 1, counts: vec![(String::new(), 1)], shadowed: false };
        assert!(matches!(Wire::decode(&unnamed.encode()), Err(Malformed::Invalid(_))));
        let twice = Wire::Heartbeat {
            host: 1,
            counts: vec![("socket.io-request#/#".into(), 1), ("socket.io-request#/#".into(), 1)],
            shadowed: false,
        };
        assert!(matches!(Wire::decode(&twice.encode()), Err(Malformed::Invalid(_))));
        // A declared length far over the limit is refused before anything is allocated.
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&[3, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(Wire::decode(&huge).is_err());
    }
}
