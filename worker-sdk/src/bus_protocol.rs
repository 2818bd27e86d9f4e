//! The bus: messages between workers, relayed by clusterd, on a second socket.
//!
//! The IPC socket (fd 3, `SOCK_SEQPACKET`) carries one frame per datagram and the file
//! descriptors; messaging wants throughput instead, so it has its own `SOCK_STREAM` socket on the
//! fd named by `CLUSTERD_BUS_FD` (always 4). Each frame on it is a 4-byte little-endian body length
//! followed by the body, encoded like every frame (bincode `standard`); a body is at most
//! [`MAX_BUS_FRAME`] bytes, so a payload of 16 MiB travels whole. Writers batch frames: many
//! frames per syscall under load.

use bincode::{Decode, Encode};

/// Environment variable naming the inherited fd of the worker's bus socket.
pub const ENV_BUS_FD: &str = "CLUSTERD_BUS_FD";
/// The fd number on which clusterd places the bus socket in every worker.
pub const BUS_FD: i32 = 4;
/// The largest bus frame body, in bytes (payloads of 16 MiB and their headers fit).
pub const MAX_BUS_FRAME: usize = 32 * 1024 * 1024;

/// Bus frames that a worker sends.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[non_exhaustive]
pub enum BusFromWorker {
    /// Tag 0. Deliver the channel's messages to this worker from now on.
    Subscribe {
        /// The channel name.
        channel: String,
    },
    /// Tag 1. Stop delivering the channel's messages.
    Unsubscribe {
        /// The channel name.
        channel: String,
    },
    /// Tag 2. Deliver `payload` to every subscriber of `channel`; to the sender too only with
    /// `echo`.
    Publish {
        /// The channel name.
        channel: String,
        /// The message.
        payload: Vec<u8>,
        /// Whether the sender gets its own message (when it is a subscriber).
        echo: bool,
    },
    /// Tag 3. Deliver `payload` to the worker of slot `to`.
    Send {
        /// The destination's worker id.
        to: u32,
        /// The message.
        payload: Vec<u8>,
    },
    /// Tag 4. How many live workers subscribe to `channel`? Answered by
    /// [`BusToWorker::Subscribers`].
    Subscribers {
        /// Chosen by the worker; echoed by the answer.
        seq: u32,
        /// The channel name.
        channel: String,
    },
    /// Tag 5. Ask every other live worker (or, with `channel`, every other subscriber of it);
    /// clusterd gathers the replies into one [`BusToWorker::Answers`].
    Request {
        /// Chosen by the worker; echoed by the answers.
        id: u64,
        /// Ask only this channel's subscribers.
        channel: Option<String>,
        /// The question.
        payload: Vec<u8>,
        /// The deadline in milliseconds; 0 means clusterd's `--requests-timeout`.
        timeout_ms: u32,
    },
    /// Tag 6. The answer to a [`BusToWorker::Request`].
    Reply {
        /// The request's id, as clusterd gave it.
        id: u64,
        /// The answer.
        payload: Vec<u8>,
    },
}

/// Bus frames that clusterd sends to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[non_exhaustive]
pub enum BusToWorker {
    /// Tag 0. A message published on a channel this worker subscribes to.
    Message {
        /// The channel name.
        channel: String,
        /// The publisher's worker id.
        from: u32,
        /// The message.
        payload: Vec<u8>,
    },
    /// Tag 1. A message sent to this worker.
    Direct {
        /// The sender's worker id.
        from: u32,
        /// The message.
        payload: Vec<u8>,
    },
    /// Tag 2. The answer to [`BusFromWorker::Subscribers`].
    Subscribers {
        /// The `seq` of the question.
        seq: u32,
        /// Live workers subscribed to the channel, this one included if it is.
        count: u32,
    },
    /// Tag 3. A worker joined the bus (it is running and connected).
    Joined {
        /// Its worker id.
        worker: u32,
    },
    /// Tag 4. A worker left the bus (it exited): it subscribes to nothing any more.
    Left {
        /// Its worker id.
        worker: u32,
    },
    /// Tag 5. A [`BusFromWorker::Send`] could not be delivered: no live worker has that id.
    Undeliverable {
        /// The id it was sent to.
        to: u32,
    },
    /// Tag 6. Another worker asks; answer with [`BusFromWorker::Reply`] and this `id`.
    Request {
        /// clusterd's id for the request.
        id: u64,
        /// The asking worker.
        from: u32,
        /// The question.
        payload: Vec<u8>,
    },
    /// Tag 7. The gathered answers to this worker's [`BusFromWorker::Request`]: once every
    /// worker asked has answered or left, or at the deadline.
    Answers {
        /// The request's id, as the worker chose it.
        id: u64,
        /// Each answer, with the id of the worker that gave it.
        answers: Vec<(u32, Vec<u8>)>,
        /// The workers asked that did not answer (they left, or the deadline passed).
        missing: Vec<u32>,
    },
}

/// Appends one frame (length prefix and body) to `out`.
pub fn encode_frame<T: Encode>(frame: &T, out: &mut Vec<u8>) -> Result<(), crate::codec::CodecError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let config = bincode::config::standard();
    let body = bincode::encode_to_vec(frame, config).map_err(|e| crate::codec::CodecError::Malformed(e.to_string()))?;
    if body.len() > MAX_BUS_FRAME {
        out.truncate(start);
        return Err(crate::codec::CodecError::Oversized { size: body.len() });
    }
    out.extend_from_slice(&body);
    out[start..start + 4].copy_from_slice(&(body.len() as u32).to_le_bytes());
    Ok(())
}

/// Takes the next whole frame off the front of `buffer`, if it holds one. A declared length over
/// [`MAX_BUS_FRAME`] is an error before anything is allocated for it.
pub fn decode_frame<T: Decode<()>>(buffer: &mut Vec<u8>) -> Result<Option<T>, crate::codec::CodecError> {
    let Some(header) = buffer.get(..4) else { return Ok(None) };
    let length = u32::from_le_bytes(header.try_into().expect("4 bytes")) as usize;
    if length > MAX_BUS_FRAME {
        return Err(crate::codec::CodecError::Oversized { size: length });
    }
    if buffer.len() < 4 + length {
        return Ok(None);
    }
    let config = bincode::config::standard().with_limit::<MAX_BUS_FRAME>();
    let (frame, used) = bincode::decode_from_slice(&buffer[4..4 + length], config)
        .map_err(|e| crate::codec::CodecError::Malformed(e.to_string()))?;
    if used != length {
        return Err(crate::codec::CodecError::Trailing { used, trailing: length - used });
    }
    buffer.drain(..4 + length);
    Ok(Some(frame))
}

/// Writes every frame with as few syscalls as the socket allows (vectored), without copying
/// them into one buffer first. Both sides of the bus write their batches with it.
pub async fn write_frames<W, F>(writer: &mut W, frames: &[F]) -> std::io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
    F: AsRef<[u8]>,
{
    use tokio::io::AsyncWriteExt;
    let (mut index, mut offset) = (0, 0);
    while index < frames.len() {
        let slices: Vec<std::io::IoSlice<'_>> =
            std::iter::once(std::io::IoSlice::new(&frames[index].as_ref()[offset..]))
                .chain(frames[index + 1..].iter().map(|f| std::io::IoSlice::new(f.as_ref())))
                .take(64)
                .collect();
        let mut written = writer.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while index < frames.len() && written >= frames[index].as_ref().len() - offset {
            written -= frames[index].as_ref().len() - offset;
            index += 1;
            offset = 0;
        }
        offset += written;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_vectors() {
        let mut out = Vec::new();
        encode_frame(&BusFromWorker::Publish { channel: "ab".into(), payload: vec![1, 2], echo: false }, &mut out)
            .unwrap();
        assert_eq!(out, [8, 0, 0, 0, 0x02, 0x02, b'a', b'b', 0x02, 1, 2, 0x00]);
        let mut out = Vec::new();
        encode_frame(&BusToWorker::Message { channel: "ab".into(), from: 3, payload: vec![9] }, &mut out).unwrap();
        assert_eq!(out, [7, 0, 0, 0, 0x00, 0x02, b'a', b'b', 0x03, 0x01, 9]);
    }

    #[test]
    fn frames_split_anywhere_decode_once_whole() {
        let frames: Vec<BusToWorker> = (0..50)
            .map(|i| BusToWorker::Message { channel: format!("c{i}"), from: i, payload: vec![i as u8; i as usize * 7] })
            .collect();
        let mut wire = Vec::new();
        for f in &frames {
            encode_frame(f, &mut wire).unwrap();
        }
        for chunk in [1, 3, 7, 64, wire.len()] {
            let mut buffer = Vec::new();
            let mut decoded = Vec::new();
            for piece in wire.chunks(chunk) {
                buffer.extend_from_slice(piece);
                while let Some(frame) = decode_frame::<BusToWorker>(&mut buffer).unwrap() {
                    decoded.push(frame);
                }
            }
            assert_eq!(decoded, frames, "chunks of {chunk}");
            assert!(buffer.is_empty());
        }
    }

    #[test]
    fn an_oversized_declared_length_is_refused_before_allocation() {
        let mut buffer = ((MAX_BUS_FRAME + 1) as u32).to_le_bytes().to_vec();
        assert!(decode_frame::<BusToWorker>(&mut buffer).is_err());
    }

    #[test]
    fn garbage_bodies_are_errors() {
        let mut buffer = vec![2, 0, 0, 0, 0x7f, 0x00];
        assert!(decode_frame::<BusToWorker>(&mut buffer).is_err());
    }
}
