//! Node's IPC framing (`internal/child_process/serialization.js`), without I/O.
//!
//! - **advanced**: a 4-byte big-endian payload length, then a V8 payload ([`super::v8`]).
//! - **json**: `JSON.stringify(message)` and `"\n"` ([`super::json`]); JSON escapes every newline
//!   inside strings, so a line is a message.
//!
//! [`FrameDecoder`] is fed whatever the socket gave and yields whole frames, keeping their raw bytes so
//! that a relay can forward them unchanged and decode only what it needs ([`Frame::select`]). A length
//! header split across reads is simply waited for (Node before nodejs/node#56106 hung there). A frame
//! longer than the decoder's limit is an error as soon as its length is known, before anything is
//! buffered for it; after any error the stream is out of sync and must be closed.

use super::value::Value;
use super::{json, v8};

/// The limit of [`FrameDecoder::new`]: 64 MiB per message.
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;

/// The channel's serialization, as `NODE_CHANNEL_SERIALIZATION_MODE` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `json`: one `JSON.stringify` text per line.
    Json,
    /// `advanced`: length-prefixed V8 payloads.
    Advanced,
}

impl From<crate::config::Serialization> for Mode {
    fn from(serialization: crate::config::Serialization) -> Self {
        match serialization {
            crate::config::Serialization::Advanced => Mode::Advanced,
            crate::config::Serialization::Json => Mode::Json,
        }
    }
}

impl Mode {
    /// The mode of a `NODE_CHANNEL_SERIALIZATION_MODE` value (`json` or `advanced`).
    pub fn from_env_value(value: &str) -> Option<Mode> {
        match value {
            "json" => Some(Mode::Json),
            "advanced" => Some(Mode::Advanced),
            _ => None,
        }
    }

    /// The `NODE_CHANNEL_SERIALIZATION_MODE` value of this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Json => "json",
            Mode::Advanced => "advanced",
        }
    }
}

/// Why a frame could not be built, split off or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A frame (its payload, or a JSON line without its newline) longer than the limit.
    #[error("IPC frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The frame's length, or for a JSON line still without newline, what is buffered of it.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("IPC stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the incomplete frame.
        buffered: usize,
    },
    /// The V8 payload is invalid.
    #[error(transparent)]
    V8(#[from] v8::Error),
    /// The JSON text is invalid, or the value has no JSON form.
    #[error(transparent)]
    Json(#[from] json::Error),
}

/// Appends `value` to `out` as one frame of `mode`.
pub fn encode_frame(mode: Mode, value: &Value, out: &mut Vec<u8>) -> Result<(), Error> {
    match mode {
        Mode::Advanced => {
            let header = out.len();
            out.extend_from_slice(&[0; 4]);
            v8::serialize_into(value, v8::Dialect::ChildProcess, out);
            let len = out.len() - header - 4;
            match u32::try_from(len) {
                Ok(n) => out[header..header + 4].copy_from_slice(&n.to_be_bytes()),
                Err(_) => {
                    out.truncate(header);
                    return Err(Error::TooLarge { len, max: u32::MAX as usize });
                }
            }
        }
        Mode::Json => {
            let mut text = String::new();
            json::to_json_into(value, &mut text)?;
            out.extend_from_slice(text.as_bytes());
            out.push(b'\n');
        }
    }
    Ok(())
}

/// One message as it was on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    mode: Mode,
    raw: Vec<u8>,
}

impl Frame {
    /// The frame of `value` in `mode`.
    pub fn encode(mode: Mode, value: &Value) -> Result<Frame, Error> {
        let mut raw = Vec::new();
        encode_frame(mode, value, &mut raw)?;
        Ok(Frame { mode, raw })
    }

    /// The mode it was framed in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The whole frame, length header or newline included: what to forward.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// [`Frame::raw`], by value.
    pub fn into_raw(self) -> Vec<u8> {
        self.raw
    }

    /// The V8 payload (after the length) or the JSON text (without the newline).
    pub fn payload(&self) -> &[u8] {
        match self.mode {
            Mode::Advanced => self.raw.get(4..).unwrap_or_default(),
            Mode::Json => self.raw.strip_suffix(b"\n").unwrap_or(&self.raw),
        }
    }

    /// The message. JSON text that is not UTF-8 is decoded as Node's `StringDecoder` does, with U+FFFD.
    pub fn decode(&self) -> Result<Value, Error> {
        Ok(match self.mode {
            Mode::Advanced => v8::deserialize(self.payload())?,
            Mode::Json => json::from_json(&String::from_utf8_lossy(self.payload()))?,
        })
    }

    /// The values at `paths` (see [`v8::select`]); in JSON mode the whole text is parsed.
    pub fn select<const N: usize>(&self, paths: &[&[&str]; N]) -> Result<[Option<Value>; N], Error> {
        match self.mode {
            Mode::Advanced => Ok(v8::select(self.payload(), paths)?),
            Mode::Json => {
                let value = self.decode()?;
                Ok(paths.map(|path| value.pointer(path).cloned()))
            }
        }
    }
}

/// The frames of one message shape whose only changing part is a `Buffer` (the request of each
/// sticky connection): the bytes around the buffer are encoded once, and a frame is those bytes,
/// the buffer's length and the buffer. Building and encoding a [`Value`] tree for every handed-off
/// connection cost about as much as the rest of clusterd's work on it (callgrind, `benches/primary_cost.rs`).
#[derive(Debug, Clone)]
pub struct BufferTemplate {
    /// The payload without the buffer's length and bytes (V8 header included)...
    bytes: Box<[u8]>,
    /// ...which go at this offset.
    at: usize,
}

impl BufferTemplate {
    /// The template of the messages `build(buffer)`, in advanced mode only (JSON has no buffer
    /// type); `None` where the encoding does not split around the buffer as expected.
    pub fn new(mode: Mode, build: impl Fn(Vec<u8>) -> Value) -> Option<Self> {
        if mode != Mode::Advanced {
            return None;
        }
        // The same message with an empty and a one-byte buffer: they differ only in the length
        // (`00` / `01`) and the byte after it.
        let empty = v8::serialize(&build(Vec::new()));
        let one = v8::serialize(&build(vec![0xa5]));
        let at = empty.iter().zip(&one).position(|(a, b)| a != b)?;
        let bytes = [empty.get(..at)?, empty.get(at + 1..)?].concat().into_boxed_slice();
        let template = BufferTemplate { bytes, at };
        let mut check = Vec::new();
        template.payload_into(&[0xa5], &mut check);
        (empty[at] == 0 && check == one).then_some(template)
    }

    /// Appends the payload around `bytes` (at most `u32::MAX` of them).
    fn payload_into(&self, bytes: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&self.bytes[..self.at]);
        // The buffer's length, a varint as V8 writes it.
        let mut n = bytes.len() as u32;
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out.extend_from_slice(bytes);
        out.extend_from_slice(&self.bytes[self.at..]);
    }

    /// The whole frame (length header included) of the message around `bytes`; `None` for a
    /// buffer of 4 GiB or more, which the format cannot state.
    pub fn frame(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        u32::try_from(bytes.len()).ok()?;
        let mut raw = Vec::with_capacity(4 + self.bytes.len() + 5 + bytes.len());
        raw.extend_from_slice(&[0; 4]);
        self.payload_into(bytes, &mut raw);
        let len = u32::try_from(raw.len() - 4).ok()?;
        raw[..4].copy_from_slice(&len.to_be_bytes());
        Some(raw)
    }
}

/// Splits a byte stream into [`Frame`]s.
#[derive(Debug)]
pub struct FrameDecoder {
    mode: Mode,
    max: usize,
    buf: Vec<u8>,
    /// Where the next frame starts in `buf`.
    start: usize,
    /// JSON: `buf` before this holds no newline.
    scanned: usize,
}

impl FrameDecoder {
    /// A decoder for `mode` with the [`DEFAULT_MAX_FRAME`] limit.
    pub fn new(mode: Mode) -> Self {
        Self::with_max_frame(mode, DEFAULT_MAX_FRAME)
    }

    /// A decoder whose frames (V8 payloads, JSON lines) may be at most `max` bytes.
    pub fn with_max_frame(mode: Mode, max: usize) -> Self {
        FrameDecoder { mode, max, buf: Vec::new(), start: 0, scanned: 0 }
    }

    /// Adds bytes read from the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.scanned -= self.start.min(self.scanned);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Takes the next complete frame without copying it out if `wanted` holds for its payload
    /// (see [`Frame::payload`]): `true` if it was taken. A frame that is not there yet, or not
    /// wanted, stays for [`FrameDecoder::next_frame`], as do errors.
    pub fn take_if(&mut self, wanted: impl FnOnce(&[u8]) -> bool) -> bool {
        let pending = &self.buf[self.start..];
        let (payload, end) = match self.mode {
            Mode::Advanced => {
                let Some(header) = pending.first_chunk::<4>() else { return false };
                let len = u32::from_be_bytes(*header) as usize;
                match pending.get(4..4 + len) {
                    Some(payload) if len <= self.max => (payload, 4 + len),
                    _ => return false,
                }
            }
            Mode::Json => {
                // Only the bytes already known to hold no newline are skipped in the search.
                let from = self.scanned.max(self.start) - self.start;
                match pending[from..].iter().position(|&b| b == b'\n') {
                    Some(at) if from + at <= self.max => (&pending[..from + at], from + at + 1),
                    _ => return false,
                }
            }
        };
        if !wanted(payload) {
            return false;
        }
        self.start += end;
        self.scanned = self.start;
        true
    }

    /// The next complete frame, `None` until more bytes are fed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, Error> {
        let pending = &self.buf[self.start..];
        let end = match self.mode {
            Mode::Advanced => {
                let Some(header) = pending.first_chunk::<4>() else { return Ok(None) };
                let len = u32::from_be_bytes(*header) as usize;
                if len > self.max {
                    return Err(Error::TooLarge { len, max: self.max });
                }
                if pending.len() < 4 + len {
                    self.buf.reserve(4 + len - pending.len());
                    return Ok(None);
                }
                4 + len
            }
            Mode::Json => {
                let from = self.scanned.max(self.start);
                match self.buf[from..].iter().position(|&b| b == b'\n') {
                    Some(at) if from + at - self.start > self.max => {
                        return Err(Error::TooLarge { len: from + at - self.start, max: self.max });
                    }
                    Some(at) => from + at + 1 - self.start,
                    None => {
                        self.scanned = self.buf.len();
                        if self.buffered() > self.max {
                            return Err(Error::TooLarge { len: self.buffered(), max: self.max });
                        }
                        return Ok(None);
                    }
                }
            }
        };
        let raw = self.buf[self.start..self.start + end].to_vec();
        self.start += end;
        self.scanned = self.start;
        Ok(Some(Frame { mode: self.mode, raw }))
    }

    /// Bytes received but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Call at end of stream: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), Error> {
        match self.buffered() {
            0 => Ok(()),
            buffered => Err(Error::Truncated { buffered }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Value {
        Value::object([("cmd", "NODE_HANDLE_ACK".into()), ("n", 1.into()), ("s", "é\n€".into())])
    }

    #[test]
    fn frames_split_anywhere() {
        for mode in [Mode::Advanced, Mode::Json] {
            let mut stream = Vec::new();
            for _ in 0..3 {
                encode_frame(mode, &message(), &mut stream).expect("encodable");
            }
            // Every split point, including inside the 4-byte length header.
            for cut in 0..=stream.len() {
                let mut decoder = FrameDecoder::new(mode);
                let mut frames = Vec::new();
                for chunk in [&stream[..cut], &stream[cut..]] {
                    decoder.feed(chunk);
                    while let Some(frame) = decoder.next_frame().expect("valid stream") {
                        frames.push(frame);
                    }
                }
                assert_eq!(decoder.finish(), Ok(()));
                assert_eq!(frames.len(), 3, "{mode:?} cut at {cut}");
                let raw: Vec<u8> = frames.iter().flat_map(|f| f.raw().to_vec()).collect();
                assert_eq!(raw, stream);
                for frame in &frames {
                    assert_eq!(frame.mode(), mode);
                    assert_eq!(frame.decode(), Ok(message()));
                    let [cmd, s] = frame.select(&[&["cmd"], &["s"]]).expect("valid frame");
                    assert_eq!(cmd, Some("NODE_HANDLE_ACK".into()));
                    assert_eq!(s, Some("é\n€".into()));
                }
            }
            // Byte by byte.
            let mut decoder = FrameDecoder::new(mode);
            let mut count = 0;
            for b in &stream {
                decoder.feed(std::slice::from_ref(b));
                while decoder.next_frame().expect("valid stream").is_some() {
                    count += 1;
                }
            }
            assert_eq!(count, 3);
        }
    }

    #[test]
    fn limits_and_truncation() {
        let mut decoder = FrameDecoder::with_max_frame(Mode::Advanced, 16);
        decoder.feed(&[0, 0, 0, 17]);
        assert_eq!(decoder.next_frame(), Err(Error::TooLarge { len: 17, max: 16 }));
        let mut decoder = FrameDecoder::with_max_frame(Mode::Advanced, 16);
        decoder.feed(&[0, 0, 0, 2, 0xff]);
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!(decoder.finish(), Err(Error::Truncated { buffered: 5 }));
        let mut decoder = FrameDecoder::with_max_frame(Mode::Json, 4);
        decoder.feed(b"1234\n12345");
        assert!(decoder.next_frame().expect("a 4-byte line").is_some());
        assert_eq!(decoder.next_frame(), Err(Error::TooLarge { len: 5, max: 4 }));
        let mut decoder = FrameDecoder::with_max_frame(Mode::Json, 4);
        decoder.feed(b"12345\n");
        assert_eq!(decoder.next_frame(), Err(Error::TooLarge { len: 5, max: 4 }));
        // An empty payload or line is a frame that does not decode, as in Node.
        let mut decoder = FrameDecoder::new(Mode::Advanced);
        decoder.feed(&[0, 0, 0, 0]);
        let frame = decoder.next_frame().expect("complete").expect("a frame");
        assert!(frame.decode().is_err());
        let mut decoder = FrameDecoder::new(Mode::Json);
        decoder.feed(b"\n");
        let frame = decoder.next_frame().expect("complete").expect("a frame");
        assert!(matches!(frame.decode(), Err(Error::Json(_))));
        assert!(matches!(Frame::encode(Mode::Json, &Value::Undefined), Err(Error::Json(json::Error::Undefined))));
    }

    /// A wanted frame is taken without a copy; an unwanted or incomplete one stays, whole, for
    /// `next_frame`, in both modes and wherever the stream was cut.
    #[test]
    fn take_if_takes_only_whole_wanted_frames() {
        for mode in [Mode::Advanced, Mode::Json] {
            let message = |n: i32| Value::object([("n", Value::from(n))]);
            let mut stream = Vec::new();
            for n in [1, 2, 3] {
                encode_frame(mode, &message(n), &mut stream).expect("encodable");
            }
            let second = Frame::encode(mode, &message(2)).expect("encodable");
            // What the link does: the wanted frame by its bytes, anything else decoded.
            let drain = |decoder: &mut FrameDecoder, seen: &mut Vec<i64>| loop {
                if decoder.take_if(|payload| payload == second.payload()) {
                    seen.push(2);
                    continue;
                }
                match decoder.next_frame().expect("valid stream") {
                    Some(frame) => seen.push(frame.decode().ok().and_then(|v| v.get("n")?.as_i64()).unwrap_or(0)),
                    None => break,
                }
            };
            for cut in 0..=stream.len() {
                let mut decoder = FrameDecoder::new(mode);
                let mut seen = Vec::new();
                decoder.feed(&stream[..cut]);
                drain(&mut decoder, &mut seen);
                decoder.feed(&stream[cut..]);
                drain(&mut decoder, &mut seen);
                assert_eq!(seen, [1, 2, 3], "{mode:?} cut at {cut}");
                assert_eq!(decoder.finish(), Ok(()));
            }
        }
    }

    #[test]
    fn modes_from_env() {
        assert_eq!(Mode::from_env_value("advanced"), Some(Mode::Advanced));
        assert_eq!(Mode::from_env_value(Mode::Json.as_str()), Some(Mode::Json));
        assert_eq!(Mode::from_env_value("JSON"), None);
    }
}
