//! A `SOCK_SEQPACKET` IPC socket typed by direction, so that a side can only send its own frames.
//!
//! One frame is one datagram. The receive buffer is one byte larger than [`MAX_FRAME`], so an
//! oversized datagram shows up as a length over the limit (or `MSG_TRUNC`) instead of being cut
//! silently; stray file descriptors are closed when the ancillary reader drops.

use std::marker::PhantomData;

use bincode::{Decode, Encode};
use tokio_seqpacket::UnixSeqpacket;

use crate::codec::{self, CodecError};
use crate::protocol::{FromWorker, MAX_FRAME, ToWorker};

/// Room for the control message of one passed fd, with alignment to spare.
const ANCILLARY_SPACE: usize = 64;

/// The IPC socket as seen by a worker: it sends [`FromWorker`] and receives [`ToWorker`].
pub type WorkerChannel = Channel<FromWorker, ToWorker>;
/// The IPC socket as seen by clusterd: it sends [`ToWorker`] and receives [`FromWorker`].
pub type PrimaryChannel = Channel<ToWorker, FromWorker>;

/// An error on the IPC channel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The socket failed.
    #[error("IPC socket: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent bytes that are not a frame, or a frame over the size limit.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The peer sent control data that does not fit the protocol (for example unexpected fds).
    #[error("IPC protocol violation: {0}")]
    Protocol(&'static str),
}

/// A connected IPC socket that sends `Tx` frames and receives `Rx` frames.
pub struct Channel<Tx, Rx> {
    socket: UnixSeqpacket,
    _direction: PhantomData<fn(Tx) -> Rx>,
}

impl<Tx, Rx> std::fmt::Debug for Channel<Tx, Rx> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("socket", &self.socket).finish()
    }
}

impl<Tx: Encode, Rx: Decode<()>> Channel<Tx, Rx> {
    /// Wraps a connected seqpacket socket.
    pub fn new(socket: UnixSeqpacket) -> Self {
        Self { socket, _direction: PhantomData }
    }

    /// Sends one frame as one datagram.
    pub async fn send(&self, frame: &Tx) -> Result<(), ChannelError> {
        let bytes = codec::encode(frame)?;
        self.send_raw(&bytes).await
    }

    /// Sends pre-encoded bytes as one datagram (tests use it to send garbage on purpose).
    pub async fn send_raw(&self, bytes: &[u8]) -> Result<(), ChannelError> {
        let sent = self.socket.send(bytes).await?;
        if sent != bytes.len() {
            return Err(ChannelError::Protocol("datagram sent short"));
        }
        Ok(())
    }

    /// Receives the next frame; `Ok(None)` when the peer closed its end.
    pub async fn recv(&self) -> Result<Option<Rx>, ChannelError> {
        let mut buf = vec![0u8; MAX_FRAME + 1];
        let mut ancillary = [0u8; ANCILLARY_SPACE];
        let (info, reader) = self.socket.recv_with_ancillary(&mut buf, &mut ancillary).await?;
        let len = info.bytes_read();
        if len == 0 && !info.truncated() && reader.is_empty() {
            // A zero-length read on a seqpacket socket is the peer's orderly shutdown; the
            // protocol has no empty frames.
            return Ok(None);
        }
        if info.truncated() || len > MAX_FRAME {
            return Err(CodecError::Oversized { size: len }.into());
        }
        if info.ancillary_truncated() {
            return Err(ChannelError::Protocol("control data truncated (too many fds)"));
        }
        if !reader.is_empty() {
            // No frame of this version carries an fd; the reader closes any on drop.
            return Err(ChannelError::Protocol("unexpected control data on a frame"));
        }
        Ok(Some(codec::decode(&buf[..len])?))
    }

    /// The underlying socket.
    pub fn socket(&self) -> &UnixSeqpacket {
        &self.socket
    }
}
