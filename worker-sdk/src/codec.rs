//! The one place that turns frames into bytes and back.
//!
//! Frames are encoded with bincode 2's `standard` configuration (little endian, variable-length
//! integers). Swapping the codec means changing this file and the test vectors, nothing else.

use bincode::config::{self, Configuration, Limit, LittleEndian, Varint};
use bincode::{Decode, Encode};

use crate::protocol::MAX_FRAME;

type Config = Configuration<LittleEndian, Varint, Limit<MAX_FRAME>>;

const CONFIG: Config = config::standard().with_limit::<MAX_FRAME>();

/// A frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The frame would exceed [`MAX_FRAME`] bytes.
    #[error("frame of {size} bytes exceeds the limit of {MAX_FRAME} bytes")]
    Oversized {
        /// The size of the frame, or at least the size seen before giving up.
        size: usize,
    },
    /// The bytes are not a valid frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The frame decoded, but bytes were left over after it.
    #[error("malformed frame: {trailing} trailing bytes after a {used}-byte frame")]
    Trailing {
        /// Bytes the frame used.
        used: usize,
        /// Bytes left over.
        trailing: usize,
    },
}

/// Encodes one frame.
pub fn encode<T: Encode>(frame: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = bincode::encode_to_vec(frame, CONFIG).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if bytes.len() > MAX_FRAME {
        return Err(CodecError::Oversized { size: bytes.len() });
    }
    Ok(bytes)
}

/// Decodes exactly one frame from `bytes`; trailing bytes are an error.
pub fn decode<T: Decode<()>>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > MAX_FRAME {
        return Err(CodecError::Oversized { size: bytes.len() });
    }
    let (frame, used) = bincode::decode_from_slice(bytes, CONFIG).map_err(|e| match e {
        bincode::error::DecodeError::LimitExceeded => CodecError::Oversized { size: bytes.len() },
        other => CodecError::Malformed(other.to_string()),
    })?;
    if used != bytes.len() {
        return Err(CodecError::Trailing { used, trailing: bytes.len() - used });
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    //! Byte-level test vectors; `PROTOCOL.md` shows the same bytes. A change here is a protocol change.
    use super::*;
    use crate::protocol::{Address, Connection, FromWorker, Handback, Hello, ListenResult, MetricsChunk, ToWorker};

    /// A frame and its exact encoding.
    type Vector<T> = (T, Vec<u8>);

    fn vectors() -> (Vec<Vector<ToWorker>>, Vec<Vector<FromWorker>>) {
        let to = vec![
            (
                ToWorker::Hello(Hello {
                    version: 1,
                    worker_id: 2,
                    worker_count: 4,
                    generation: 1,
                    heartbeat_ms: 1000,
                    max_frame: 65536,
                }),
                vec![0x00, 0x01, 0x02, 0x04, 0x01, 0xfb, 0xe8, 0x03, 0xfc, 0x00, 0x00, 0x01, 0x00],
            ),
            (ToWorker::Drain { grace_ms: 30_000 }, vec![0x01, 0xfb, 0x30, 0x75]),
            (
                ToWorker::Connection(Connection {
                    id: 7,
                    peer: Address::V4 { ip: [127, 0, 0, 1], port: 50_000 },
                    local: Address::V6 { ip: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], port: 3000 },
                    initial: b"GET / HTTP/1.1\r\n".to_vec(),
                }),
                [
                    &[0x02, 0x07][..],
                    &[0x01, 0x7f, 0x00, 0x00, 0x01, 0xfb, 0x50, 0xc3],
                    &[0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xfb, 0xb8, 0x0b],
                    &[0x10],
                    b"GET / HTTP/1.1\r\n",
                ]
                .concat(),
            ),
            (ToWorker::SessionAck { seq: 5 }, vec![0x03, 0x05]),
            (
                ToWorker::Listening { seq: 2, result: ListenResult::Bound { addr: "127.0.0.1:3000".into() } },
                [&[0x04, 0x02, 0x00, 0x0e][..], b"127.0.0.1:3000"].concat(),
            ),
            (
                ToWorker::Listening { seq: 3, result: ListenResult::Failed { reason: "in use".into() } },
                [&[0x04, 0x03, 0x01, 0x06][..], b"in use"].concat(),
            ),
            (ToWorker::MetricsRequest { id: 300 }, vec![0x05, 0xfb, 0x2c, 0x01]),
        ];
        let from = vec![
            (FromWorker::Hello { version: 1, pid: 4242 }, vec![0x00, 0x01, 0xfb, 0x92, 0x10]),
            (FromWorker::Ready, vec![0x01]),
            (FromWorker::Heartbeat, vec![0x02]),
            (FromWorker::ConnectionsClosed { ids: vec![1, 300] }, vec![0x03, 0x02, 0x01, 0xfb, 0x2c, 0x01]),
            (FromWorker::SessionOpen { seq: 1, sid: "abc".into() }, vec![0x04, 0x01, 0x03, b'a', b'b', b'c']),
            (FromWorker::SessionClose { sid: "abc".into() }, vec![0x05, 0x03, b'a', b'b', b'c']),
            (
                FromWorker::Listen { seq: 2, addr: "127.0.0.1:0".into() },
                [&[0x06, 0x02, 0x0b][..], b"127.0.0.1:0"].concat(),
            ),
            (FromWorker::Capacity { full: true }, vec![0x07, 0x01]),
            (FromWorker::Capacity { full: false }, vec![0x07, 0x00]),
            (
                FromWorker::Handback(Handback { id: 300, initial: b"GET /?sid=a HTTP/1.1\r\n".to_vec() }),
                [&[0x08, 0xfb, 0x2c, 0x01, 0x16][..], b"GET /?sid=a HTTP/1.1\r\n"].concat(),
            ),
            (FromWorker::MetricsAvailable, vec![0x09]),
            (
                FromWorker::Metrics(MetricsChunk { id: 300, total: 7, chunk: b"hits 1\n".to_vec() }),
                [&[0x0a, 0xfb, 0x2c, 0x01, 0x07, 0x07][..], b"hits 1\n"].concat(),
            ),
        ];
        (to, from)
    }

    #[test]
    fn test_vectors_encode_and_decode_exactly() {
        let (to, from) = vectors();
        for (frame, bytes) in to {
            assert_eq!(encode(&frame).unwrap(), bytes, "encoding {frame:?}");
            assert_eq!(decode::<ToWorker>(&bytes).unwrap(), frame);
        }
        for (frame, bytes) in from {
            assert_eq!(encode(&frame).unwrap(), bytes, "encoding {frame:?}");
            assert_eq!(decode::<FromWorker>(&bytes).unwrap(), frame);
        }
    }

    #[test]
    fn unknown_tag_is_malformed() {
        assert!(matches!(decode::<FromWorker>(&[0x7f]), Err(CodecError::Malformed(_))));
    }

    #[test]
    fn empty_and_truncated_frames_are_malformed() {
        assert!(matches!(decode::<FromWorker>(&[]), Err(CodecError::Malformed(_))));
        assert!(matches!(decode::<FromWorker>(&[0x00, 0x01]), Err(CodecError::Malformed(_))));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        assert!(matches!(decode::<FromWorker>(&[0x01, 0x00]), Err(CodecError::Trailing { used: 1, trailing: 1 })));
    }

    #[test]
    fn oversized_input_is_rejected_before_decoding() {
        let big = vec![0u8; MAX_FRAME + 1];
        assert!(matches!(decode::<FromWorker>(&big), Err(CodecError::Oversized { .. })));
    }
}
