//! The bus: messages between workers, relayed by clusterd, on a second socket.
//!
//! The IPC socket (fd 3, `SOCK_SEQPACKET`) carries one frame per datagram and the file
//! descriptors; messaging wants throughput instead, so it has its own `SOCK_STREAM` socket on the
//! fd named by `CLUSTERD_BUS_FD` (always 4). Each frame on it is a 4-byte little-endian body length
//! followed by the body, encoded like every frame (bincode `standard`); a body is at most
//! [`MAX_BUS_FRAME`] bytes, so a payload of 16 MiB travels whole. Writers batch frames: many
//! frames per syscall under load.

use bincode::{Decode, Encode};
use bytes::{Buf, Bytes, BytesMut};

/// Environment variable naming the inherited fd of the worker's bus socket.
pub const ENV_BUS_FD: &str = "CLUSTERD_BUS_FD";
/// The fd number on which clusterd places the bus socket in every worker.
pub const BUS_FD: i32 = 4;
/// The largest bus frame body, in bytes (payloads of 16 MiB and their headers fit).
pub const MAX_BUS_FRAME: usize = 32 * 1024 * 1024;
/// The longest channel name, in bytes, in any bus frame a worker sends (subscribe, unsubscribe,
/// publish, request, subscriber count). A channel is a name, not a payload: clusterd holds each
/// subscribed name and matches names against `--bridge-channels`, so it refuses longer ones (the
/// worker breaks the protocol and is replaced); the SDKs refuse them before sending.
pub const MAX_CHANNEL_NAME: usize = 4096;
/// The most channels one worker process may subscribe to at a time. clusterd ignores (and logs
/// once) a subscription beyond it; the SDKs refuse it before sending.
pub const MAX_SUBSCRIPTIONS: usize = 64 * 1024;
/// The most requests one worker process may have pending (asked, not answered yet). clusterd
/// answers one more at once, with no answers and every worker it would have asked missing (the
/// answer to a request none could take); it is the frame queue clusterd keeps for one worker, so
/// that the answers of all of them fit in it.
pub const MAX_PENDING_REQUESTS: usize = 16 * 1024;

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

/// Appends one frame (length prefix and body) to `out`, encoding the body in place.
pub fn encode_frame<T: Encode>(frame: &T, out: &mut Vec<u8>) -> Result<(), crate::codec::CodecError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let config = bincode::config::standard();
    if let Err(error) = bincode::encode_into_std_write(frame, out, config) {
        out.truncate(start);
        return Err(crate::codec::CodecError::Malformed(error.to_string()));
    }
    let length = out.len() - start - 4;
    if length > MAX_BUS_FRAME {
        out.truncate(start);
        return Err(crate::codec::CodecError::Oversized { size: length });
    }
    out[start..start + 4].copy_from_slice(&(length as u32).to_le_bytes());
    Ok(())
}

/// How much a [`FrameBuffer`] reads at a time (at least).
pub const READ_SIZE: usize = 64 * 1024;

/// The bytes read from a bus socket, from which whole frames are taken.
///
/// A frame's body is split off the read chunk without copying ([`FrameBuffer::next_body`]): it
/// shares the chunk, which lives as long as any body taken from it. Only the unfinished frame at
/// the end is moved, into the next chunk.
#[derive(Debug, Default)]
pub struct FrameBuffer {
    bytes: BytesMut,
}

impl FrameBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes read and not yet taken as frames.
    pub fn pending(&self) -> &[u8] {
        &self.bytes
    }

    /// Appends bytes as if they had been read (for tests and for readers of other sources).
    pub fn extend(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// Takes the next whole frame, if the buffer holds one. A declared length over
    /// [`MAX_BUS_FRAME`] is an error before anything is allocated for it.
    pub fn next_frame<T: Decode<()>>(&mut self) -> Result<Option<T>, crate::codec::CodecError> {
        let Some(body) = self.next_body()? else { return Ok(None) };
        decode_body(&body).map(Some)
    }

    /// Takes the next whole frame's body undecoded (see [`parse_publish`], [`parse_message`] and
    /// [`decode_body`]), sharing the chunk it was read into.
    pub fn next_body(&mut self) -> Result<Option<Bytes>, crate::codec::CodecError> {
        let Some(length) = self.declared_length()? else { return Ok(None) };
        if self.bytes.len() < 4 + length {
            return Ok(None);
        }
        let mut frame = self.bytes.split_to(4 + length).freeze();
        frame.advance(4);
        Ok(Some(frame))
    }

    /// The body length announced by the next frame's header, once the header is there.
    fn declared_length(&self) -> Result<Option<usize>, crate::codec::CodecError> {
        let Some(header) = self.pending().get(..4) else { return Ok(None) };
        let length = u32::from_le_bytes(header.try_into().expect("4 bytes")) as usize;
        if length > MAX_BUS_FRAME {
            return Err(crate::codec::CodecError::Oversized { size: length });
        }
        Ok(Some(length))
    }

    /// Reads what `reader` has (at least one byte, or 0 at its end) after the pending bytes.
    /// Cancel-safe: bytes read are kept. Make room first with [`FrameBuffer::next_frame`] taking
    /// every whole frame, or the buffer grows.
    pub async fn read_from<R: tokio::io::AsyncRead + Unpin>(&mut self, reader: &mut R) -> std::io::Result<usize> {
        use tokio::io::AsyncReadExt;
        // What the unfinished frame still needs, so that a large frame is read into one
        // allocation instead of growing it step by step.
        let missing = match self.declared_length() {
            Ok(Some(length)) => (4 + length).saturating_sub(self.pending().len()),
            _ => 0,
        };
        // A new chunk when this one is full (the unfinished frame moves into it), or this one
        // again once every body taken from it is gone.
        self.bytes.reserve(missing.max(READ_SIZE));
        reader.read_buf(&mut self.bytes).await
    }
}

/// Decodes one frame body, which must be used whole.
pub fn decode_body<T: Decode<()>>(body: &[u8]) -> Result<T, crate::codec::CodecError> {
    let config = bincode::config::standard().with_limit::<MAX_BUS_FRAME>();
    let (frame, used) =
        bincode::decode_from_slice(body, config).map_err(|e| crate::codec::CodecError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(crate::codec::CodecError::Trailing { used, trailing: body.len() - used });
    }
    Ok(frame)
}

/// A [`BusFromWorker::Publish`] frame read in place: its payload is not copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishRef<'a> {
    /// The channel name.
    pub channel: &'a str,
    /// The message.
    pub payload: &'a [u8],
    /// Whether the sender gets its own message.
    pub echo: bool,
}

/// Reads a frame body as a [`BusFromWorker::Publish`] without copying its payload: `None` when
/// the body is another frame, an error when it is a malformed publish (exactly when decoding it
/// as [`BusFromWorker`] would fail).
pub fn parse_publish(body: &[u8]) -> Option<Result<PublishRef<'_>, crate::codec::CodecError>> {
    const PUBLISH: u8 = 2;
    let mut cursor = Cursor::after_tag(body, PUBLISH, "publish")?;
    Some((|| {
        let channel = cursor.string()?;
        let payload = cursor.bytes()?;
        let echo = match cursor.take(1)?[0] {
            0 => false,
            1 => true,
            _ => return Err(cursor.malformed("echo is not a bool")),
        };
        cursor.finish(PublishRef { channel, payload, echo })
    })())
}

/// Reads a frame body in place, the way bincode's `standard()` configuration decodes it, for the
/// frames that are read without copying their payload ([`parse_publish`], [`parse_message`]).
struct Cursor<'a> {
    body: &'a [u8],
    rest: &'a [u8],
    /// The frame's name, for error messages.
    what: &'static str,
}

impl<'a> Cursor<'a> {
    /// A cursor past the one-byte `tag`, if the body starts with it.
    fn after_tag(body: &'a [u8], tag: u8, what: &'static str) -> Option<Self> {
        (body.first() == Some(&tag)).then(|| Self { body, rest: &body[1..], what })
    }

    fn malformed(&self, why: &str) -> crate::codec::CodecError {
        crate::codec::CodecError::Malformed(format!("{}: {why}", self.what))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], crate::codec::CodecError> {
        if self.rest.len() < n {
            return Err(self.malformed("truncated"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// A variable-length integer in its shortest form (bincode refuses others).
    fn varint(&mut self) -> Result<u64, crate::codec::CodecError> {
        let wide = |bytes: &[u8]| bytes.iter().rev().fold(0u64, |value, &byte| value << 8 | u64::from(byte));
        let (value, floor) = match self.take(1)?[0] {
            byte @ 0..=250 => return Ok(u64::from(byte)),
            251 => (wide(self.take(2)?), 251),
            252 => (wide(self.take(4)?), u64::from(u16::MAX) + 1),
            253 => (wide(self.take(8)?), u64::from(u32::MAX) + 1),
            _ => return Err(self.malformed("bad integer")),
        };
        if value < floor {
            return Err(self.malformed("integer not in its shortest form"));
        }
        Ok(value)
    }

    /// A length prefix, at most [`MAX_BUS_FRAME`], then that many bytes.
    fn bytes(&mut self) -> Result<&'a [u8], crate::codec::CodecError> {
        let value = self.varint()?;
        let length = usize::try_from(value)
            .ok()
            .filter(|&v| v <= MAX_BUS_FRAME)
            .ok_or(crate::codec::CodecError::Oversized { size: usize::try_from(value).unwrap_or(usize::MAX) })?;
        self.take(length)
    }

    fn string(&mut self) -> Result<&'a str, crate::codec::CodecError> {
        let bytes = self.bytes()?;
        std::str::from_utf8(bytes).map_err(|_| self.malformed("a string is not UTF-8"))
    }

    /// `value`, if the whole body was used.
    fn finish<T>(&self, value: T) -> Result<T, crate::codec::CodecError> {
        if self.rest.is_empty() {
            return Ok(value);
        }
        let used = self.body.len() - self.rest.len();
        Err(crate::codec::CodecError::Trailing { used, trailing: self.rest.len() })
    }
}

/// A [`BusToWorker::Message`] frame read in place: its payload is not copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageRef<'a> {
    /// The channel name.
    pub channel: &'a str,
    /// The publisher's worker id.
    pub from: u32,
    /// The message.
    pub payload: &'a [u8],
}

/// Reads a frame body as a [`BusToWorker::Message`] without copying its payload: `None` when the
/// body is another frame, an error when it is a malformed message (exactly when decoding it as
/// [`BusToWorker`] would fail).
pub fn parse_message(body: &[u8]) -> Option<Result<MessageRef<'_>, crate::codec::CodecError>> {
    const MESSAGE: u8 = 0;
    let mut cursor = Cursor::after_tag(body, MESSAGE, "message")?;
    Some((|| {
        let channel = cursor.string()?;
        let from = u32::try_from(cursor.varint()?).map_err(|_| cursor.malformed("sender id over u32"))?;
        let payload = cursor.bytes()?;
        cursor.finish(MessageRef { channel, from, payload })
    })())
}

/// The start of a [`BusToWorker::Message`] frame (length prefix, tag, channel, sender, payload
/// length) whose payload follows separately: writing this and then the payload puts on the wire
/// exactly what [`encode_frame`] of the whole message would, without copying the payload.
pub fn message_head(channel: &str, from: u32, payload_len: usize, out: &mut Vec<u8>) {
    const MESSAGE: u32 = 0;
    frame_head((MESSAGE, channel, from, payload_len as u64), payload_len, out);
}

/// The start of a [`BusFromWorker::Publish`] frame whose payload, then the `echo` byte (0 or 1),
/// follow separately: together exactly what [`encode_frame`] of the whole publish writes.
pub fn publish_head(channel: &str, payload_len: usize, out: &mut Vec<u8>) {
    const PUBLISH: u32 = 2;
    frame_head((PUBLISH, channel, payload_len as u64), payload_len + 1, out);
}

/// Length prefix and `fields` (a frame's tag and its fields up to its payload's length), for a
/// frame whose remaining `rest` bytes follow separately.
fn frame_head(fields: impl Encode, rest: usize, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    bincode::encode_into_std_write(fields, out, bincode::config::standard()).expect("writing to a Vec cannot fail");
    let length = out.len() - start - 4 + rest;
    out[start..start + 4].copy_from_slice(&(length as u32).to_le_bytes());
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
            let mut buffer = FrameBuffer::new();
            let mut decoded = Vec::new();
            for piece in wire.chunks(chunk) {
                buffer.extend(piece);
                while let Some(frame) = buffer.next_frame::<BusToWorker>().unwrap() {
                    decoded.push(frame);
                }
            }
            assert_eq!(decoded, frames, "chunks of {chunk}");
            assert!(buffer.pending().is_empty());
        }
    }

    #[test]
    fn publishes_parse_in_place_exactly_as_bincode_decodes_them() {
        let cases = [
            BusFromWorker::Publish { channel: String::new(), payload: vec![], echo: false },
            BusFromWorker::Publish { channel: "ab".into(), payload: vec![7; 250], echo: true },
            BusFromWorker::Publish { channel: "é".repeat(200), payload: vec![1; 251], echo: false },
            BusFromWorker::Publish { channel: "c".into(), payload: vec![2; 70_000], echo: true },
        ];
        for case in &cases {
            let mut wire = Vec::new();
            encode_frame(case, &mut wire).unwrap();
            let parsed = parse_publish(&wire[4..]).unwrap().unwrap();
            let BusFromWorker::Publish { channel, payload, echo } = case else { unreachable!() };
            assert_eq!((parsed.channel, parsed.payload, parsed.echo), (channel.as_str(), &payload[..], *echo));
        }
        let mut other = Vec::new();
        encode_frame(&BusFromWorker::Subscribe { channel: "x".into() }, &mut other).unwrap();
        assert!(parse_publish(&other[4..]).is_none());
    }

    #[test]
    fn parse_publish_agrees_with_bincode_on_mangled_bodies() {
        let mut wire = Vec::new();
        encode_frame(&BusFromWorker::Publish { channel: "chan".into(), payload: vec![5; 300], echo: true }, &mut wire)
            .unwrap();
        let body = wire[4..].to_vec();
        // Cuts, and each byte replaced by a few telling values.
        let mut bodies: Vec<Vec<u8>> = (1..body.len()).map(|n| body[..n].to_vec()).collect();
        for i in 1..body.len().min(12) {
            for value in [0, 1, 2, 0x80, 0xff, 250, 251, 252, 253, 254] {
                let mut mangled = body.clone();
                mangled[i] = value;
                bodies.push(mangled);
            }
        }
        let mut trailing = body.clone();
        trailing.push(0);
        bodies.push(trailing);
        for mangled in bodies {
            let ours =
                parse_publish(&mangled).expect("tag 2").map(|p| (p.channel.to_owned(), p.payload.to_vec(), p.echo));
            let theirs = decode_body::<BusFromWorker>(&mangled).map(|frame| match frame {
                BusFromWorker::Publish { channel, payload, echo } => (channel, payload, echo),
                other => panic!("decoded as {other:?}"),
            });
            assert_eq!(ours.is_ok(), theirs.is_ok(), "{mangled:?}: {ours:?} vs {theirs:?}");
            if let (Ok(ours), Ok(theirs)) = (ours, theirs) {
                assert_eq!(ours, theirs);
            }
        }
    }

    #[test]
    fn messages_parse_in_place_exactly_as_bincode_decodes_them() {
        let cases = [
            BusToWorker::Message { channel: String::new(), from: 0, payload: vec![] },
            BusToWorker::Message { channel: "é".repeat(200), from: 251, payload: vec![1; 251] },
            BusToWorker::Message { channel: "c".into(), from: u32::MAX, payload: vec![2; 70_000] },
        ];
        for case in &cases {
            let mut wire = Vec::new();
            encode_frame(case, &mut wire).unwrap();
            let parsed = parse_message(&wire[4..]).unwrap().unwrap();
            let BusToWorker::Message { channel, from, payload } = case else { unreachable!() };
            assert_eq!((parsed.channel, parsed.from, parsed.payload), (channel.as_str(), *from, &payload[..]));
            // Cuts and a few telling bytes: both readers agree on what is malformed.
            let body = wire[4..].to_vec();
            let mut bodies: Vec<Vec<u8>> = (1..body.len().min(300)).map(|n| body[..n].to_vec()).collect();
            for i in 1..body.len().min(12) {
                for value in [0, 1, 0x80, 0xff, 250, 251, 252, 253, 254] {
                    let mut mangled = body.clone();
                    mangled[i] = value;
                    bodies.push(mangled);
                }
            }
            bodies.push([&body[..], &[0]].concat());
            for mangled in bodies {
                let ours =
                    parse_message(&mangled).expect("tag 0").map(|m| (m.channel.to_owned(), m.from, m.payload.to_vec()));
                let theirs = decode_body::<BusToWorker>(&mangled).map(|frame| match frame {
                    BusToWorker::Message { channel, from, payload } => (channel, from, payload),
                    other => panic!("decoded as {other:?}"),
                });
                assert_eq!(ours.is_ok(), theirs.is_ok(), "{mangled:?}: {ours:?} vs {theirs:?}");
                if let (Ok(ours), Ok(theirs)) = (ours, theirs) {
                    assert_eq!(ours, theirs);
                }
            }
        }
        let mut other = Vec::new();
        encode_frame(&BusToWorker::Joined { worker: 1 }, &mut other).unwrap();
        assert!(parse_message(&other[4..]).is_none());
    }

    #[test]
    fn heads_and_their_payloads_are_the_whole_frames() {
        for (channel, size) in [("", 0), ("room", 250), ("é", 251), ("c", 70_000), ("x", 5_000_000)] {
            let payload = vec![3u8; size];
            let mut whole = Vec::new();
            encode_frame(
                &BusToWorker::Message { channel: channel.into(), from: 300, payload: payload.clone() },
                &mut whole,
            )
            .unwrap();
            let mut split = Vec::new();
            message_head(channel, 300, size, &mut split);
            split.extend_from_slice(&payload);
            assert_eq!(split, whole, "{channel:?} {size}");
            for echo in [false, true] {
                let mut whole = Vec::new();
                let publish = BusFromWorker::Publish { channel: channel.into(), payload: payload.clone(), echo };
                encode_frame(&publish, &mut whole).unwrap();
                let mut split = Vec::new();
                publish_head(channel, size, &mut split);
                split.extend_from_slice(&payload);
                split.push(u8::from(echo));
                assert_eq!(split, whole, "publish {channel:?} {size} {echo}");
            }
        }
    }

    #[test]
    fn an_oversized_declared_length_is_refused_before_allocation() {
        let mut buffer = FrameBuffer::new();
        buffer.extend(&((MAX_BUS_FRAME + 1) as u32).to_le_bytes());
        assert!(buffer.next_frame::<BusToWorker>().is_err());
    }

    #[test]
    fn garbage_bodies_are_errors() {
        let mut buffer = FrameBuffer::new();
        buffer.extend(&[2, 0, 0, 0, 0x7f, 0x00]);
        assert!(buffer.next_frame::<BusToWorker>().is_err());
    }
}
