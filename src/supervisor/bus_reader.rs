//! Reading a worker's bus socket: whole frames, and publishes whose payload is not copied.
//!
//! Reads land in chunks of [`READ_SIZE`] bytes. A publish of at least [`SHARE_FROM`] bytes keeps
//! its payload where it was read, as a slice of the chunk that every subscriber's queue shares,
//! so relaying it costs no copy in clusterd; smaller ones are copied out, so that a small message
//! never keeps a whole chunk alive. A shared payload keeps its chunk alive at most
//! `READ_SIZE / SHARE_FROM` times its own size; the relay copies payloads for a member that falls
//! behind (see `relay.rs`), which bounds that cost.
//!
//! Bytes are charged to the bus budget (`bus_memory.rs`) before they are read: a chunk's worth,
//! or a whole frame once its header announces one larger than a chunk (so that a large frame,
//! once started, is read to its end without waiting again). Each frame taken carries its share
//! to the relay. A reader that must wait for the budget gives back what it holds first, so
//! readers never wait on each other; it then holds at most two chunks uncharged.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use clusterd_worker::bus_protocol::{
    BusFromWorker, MAX_BUS_FRAME, MAX_CHANNEL_NAME, PublishRef, decode_body, parse_publish,
};

use crate::bus_memory::{BusMemory, Charge, Waiting};
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
    memory: Arc<BusMemory>,
    /// What this reader holds of the budget, for the bytes in `buffer` and the next read.
    held: Charge,
    /// The buffer length `held` stands for: more than `held` only when a frame larger than the
    /// whole budget took all of it.
    covers: usize,
    /// The wait for the budget (for this buffer length), kept across cancellations.
    waiting: Option<(usize, Waiting)>,
}

impl BusReader {
    pub fn new(read: tokio::net::unix::OwnedReadHalf, memory: Arc<BusMemory>) -> Self {
        Self {
            read,
            buffer: BytesMut::new(),
            channel: None,
            open: true,
            memory,
            held: Charge::default(),
            covers: 0,
            waiting: None,
        }
    }

    /// Waits until a whole frame is buffered (`true`; take it with [`BusReader::take`]) or the
    /// worker closed its end (`false`). Cancel-safe: what was read stays in the buffer, and the
    /// charge stays consistent with it.
    pub async fn fill(&mut self) -> Result<bool, String> {
        loop {
            // A large frame is read into one allocation instead of growing step by step, and its
            // whole length is charged at once; otherwise one chunk at a time.
            let target = match self.declared_length()? {
                Some(length) if self.buffer.len() >= 4 + length => return Ok(true),
                Some(length) if 4 + length > READ_SIZE => 4 + length,
                _ => self.buffer.len() + READ_SIZE,
            };
            if self.covers < target {
                // Nothing held for bytes not read yet while the worker sends nothing.
                self.trim();
                self.read.readable().await.map_err(|e| e.to_string())?;
                self.charge(target).await;
            }
            self.buffer.reserve(target - self.buffer.len());
            let room = target - self.buffer.len();
            match self.read.try_read_buf(&mut (&mut self.buffer).limit(room)) {
                Ok(0) => return Ok(false),
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    // Readiness can be stale: nothing is held for a chunk that may never come.
                    // Only a large frame under way keeps its charge while its sender goes on.
                    if 4 + self.declared_length()?.unwrap_or(0) <= READ_SIZE {
                        self.trim();
                    }
                    self.read.readable().await.map_err(|e| e.to_string())?;
                }
                // The worker died with bytes unread on its side: the end of the bus, not a fault.
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return Ok(false),
                Err(error) => return Err(error.to_string()),
            }
        }
    }

    /// Holds the budget for a buffer of `target` bytes: more now if it is free, else (giving back
    /// all it holds, so that no reader waits while holding) all of it, in turn.
    async fn charge(&mut self, target: usize) {
        if self.waiting.as_ref().is_some_and(|(wanted, _)| *wanted != target) {
            self.waiting = None;
        }
        if self.waiting.is_none() {
            if let Some(more) = self.memory.try_acquire(target - self.covers) {
                self.held.absorb(more);
                self.covers = target;
                return;
            }
            self.memory.release(std::mem::take(&mut self.held));
            self.covers = 0;
            self.waiting = Some((target, self.memory.queue(target)));
        }
        if let Some((_, waiting)) = &mut self.waiting {
            self.held = waiting.await;
            self.covers = target;
            self.waiting = None;
        }
    }

    /// Gives back what is held beyond the bytes buffered.
    fn trim(&mut self) {
        let buffered = self.buffer.len();
        if self.covers > buffered {
            let spare = self.held.bytes().saturating_sub(buffered);
            self.memory.release(self.held.split(spare));
            self.covers = buffered;
        }
    }

    /// Takes the frame [`BusReader::fill`] found, if there is one, with its share of the charge.
    pub fn take(&mut self) -> Result<Option<(Incoming, Charge)>, String> {
        match self.declared_length()? {
            Some(length) if self.buffer.len() >= 4 + length => {
                let charge = self.held.split(4 + length);
                self.covers = self.covers.saturating_sub(4 + length);
                let mut frame = self.buffer.split_to(4 + length).freeze();
                frame.advance(4);
                match self.parse(frame) {
                    Ok(incoming) => Ok(Some((incoming, charge))),
                    Err(error) => {
                        self.memory.release(charge);
                        Err(error)
                    }
                }
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
            let frame = decode_body(&body).map_err(|e| e.to_string())?;
            if let BusFromWorker::Subscribe { channel }
            | BusFromWorker::Unsubscribe { channel }
            | BusFromWorker::Publish { channel, .. }
            | BusFromWorker::Request { channel: Some(channel), .. }
            | BusFromWorker::Subscribers { channel, .. } = &frame
            {
                check_channel(channel)?;
            }
            return Ok(Incoming::Other(frame));
        };
        let PublishRef { channel, payload, echo } = publish.map_err(|e| e.to_string())?;
        check_channel(channel)?;
        let payload =
            if payload.len() >= SHARE_FROM { body.slice_ref(payload) } else { Bytes::copy_from_slice(payload) };
        let channel = match &self.channel {
            Some(last) if **last == *channel => Arc::clone(last),
            _ => Arc::clone(self.channel.insert(Arc::from(channel))),
        };
        Ok(Incoming::Publish { channel, payload, echo })
    }
}

/// A channel name longer than [`MAX_CHANNEL_NAME`] breaks the protocol (the SDKs never send one):
/// clusterd would hold it per subscription and match it against `--bridge-channels` per message.
fn check_channel(channel: &str) -> Result<(), String> {
    if channel.len() > MAX_CHANNEL_NAME {
        return Err(format!("a channel name of {} bytes exceeds the limit of {MAX_CHANNEL_NAME} bytes", channel.len()));
    }
    Ok(())
}

impl Drop for BusReader {
    fn drop(&mut self) {
        self.memory.release(std::mem::take(&mut self.held));
    }
}
