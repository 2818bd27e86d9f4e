//! Reading a worker's bus socket: whole frames, and publishes whose payload is not copied.
//!
//! Reads land in chunks of [`READ_SIZE`] bytes. A publish of at least [`SHARE_FROM`] bytes keeps
//! its payload where it was read, as a slice of the chunk that every subscriber's queue shares,
//! so relaying it costs no copy in clusterd; smaller ones are copied out, so that a small message
//! never keeps a whole chunk alive. A shared payload keeps its chunk alive at most
//! `READ_SIZE / SHARE_FROM` times its own size; the relay copies payloads for a member that falls
//! behind (see `relay.rs`), which bounds that cost.

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use clusterd_worker::bus_protocol::{MAX_BUS_FRAME, PublishRef, decode_body, parse_publish};
use tokio::io::AsyncReadExt;

use crate::relay::Incoming;

/// How much one read asks for, at least. Below glibc's mmap threshold (128 KiB): chunks that
/// are sliced and freed often must come from the heap, not from mmap and munmap with page faults
/// (measured: 10.4 against 8.3 µs of clusterd CPU per 10 KiB message relayed to two workers).
pub const READ_SIZE: usize = 64 * 1024;
/// Publishes with payloads this large or larger are relayed from the chunk they were read into.
pub const SHARE_FROM: usize = READ_SIZE / 16;

/// The bus socket's read half, with what was read of an incomplete frame.
pub struct BusReader {
    read: tokio::net::unix::OwnedReadHalf,
    buffer: BytesMut,
    /// The channel of the last publish: a worker mostly publishes on the same few channels, so
    /// the next publish usually shares it instead of allocating its own.
    channel: Option<Arc<str>>,
    /// False once the worker closed its end (or broke the protocol).
    pub open: bool,
}

impl BusReader {
    pub fn new(read: tokio::net::unix::OwnedReadHalf) -> Self {
        Self { read, buffer: BytesMut::new(), channel: None, open: true }
    }

    /// Waits until a whole frame is buffered (`true`; take it with [`BusReader::take`]) or the
    /// worker closed its end (`false`). Cancel-safe: what was read stays in the buffer.
    pub async fn fill(&mut self) -> Result<bool, String> {
        loop {
            let mut wanted = READ_SIZE;
            if let Some(length) = self.declared_length()? {
                if self.buffer.len() >= 4 + length {
                    return Ok(true);
                }
                // A large frame is read into one allocation instead of growing step by step.
                wanted = wanted.max(4 + length - self.buffer.len());
            }
            self.buffer.reserve(wanted);
            match self.read.read_buf(&mut self.buffer).await {
                Ok(0) => return Ok(false),
                Ok(_) => {}
                // The worker died with bytes unread on its side: the end of the bus, not a fault.
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return Ok(false),
                Err(error) => return Err(error.to_string()),
            }
        }
    }

    /// Takes the frame [`BusReader::fill`] found, if there is one.
    pub fn take(&mut self) -> Result<Option<Incoming>, String> {
        match self.declared_length()? {
            Some(length) if self.buffer.len() >= 4 + length => {
                let mut frame = self.buffer.split_to(4 + length).freeze();
                frame.advance(4);
                self.parse(frame).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// The body length the next frame's header announces, once the header is there.
    fn declared_length(&self) -> Result<Option<usize>, String> {
        let Some(header) = self.buffer.get(..4) else { return Ok(None) };
        let length = u32::from_le_bytes(header.try_into().expect("4 bytes")) as usize;
        if length > MAX_BUS_FRAME {
            return Err(format!("frame of {length} bytes exceeds the limit of {MAX_BUS_FRAME} bytes"));
        }
        Ok(Some(length))
    }

    /// One frame's body: a publish keeps (or copies, when small) its payload; others are decoded.
    fn parse(&mut self, body: Bytes) -> Result<Incoming, String> {
        let Some(publish) = parse_publish(&body) else {
            return decode_body(&body).map(Incoming::Other).map_err(|e| e.to_string());
        };
        let PublishRef { channel, payload, echo } = publish.map_err(|e| e.to_string())?;
        let payload =
            if payload.len() >= SHARE_FROM { body.slice_ref(payload) } else { Bytes::copy_from_slice(payload) };
        let channel = match &self.channel {
            Some(last) if **last == *channel => Arc::clone(last),
            _ => Arc::clone(self.channel.insert(Arc::from(channel))),
        };
        Ok(Incoming::Publish { channel, payload, echo })
    }
}
