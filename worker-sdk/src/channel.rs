//! A `SOCK_SEQPACKET` IPC socket typed by direction, so that a side can only send its own frames.
//!
//! One frame is one datagram. The receive buffer is one byte larger than [`MAX_FRAME`], so an
//! oversized datagram shows up as a length over the limit (or `MSG_TRUNC`) instead of being cut
//! silently; stray file descriptors are closed when the ancillary reader drops.

use std::marker::PhantomData;
use std::os::fd::{BorrowedFd, OwnedFd};

use bincode::{Decode, Encode};
use tokio_seqpacket::UnixSeqpacket;
use tokio_seqpacket::ancillary::{AncillaryMessageWriter, OwnedAncillaryMessage};

use crate::codec::{self, CodecError};
use crate::protocol::{Frame, FromWorker, MAX_FRAME, ToWorker};

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
    /// The receive buffer, kept between calls: zeroing 64 KiB per frame costs more than the
    /// syscall. `None` while a `recv` holds it (a second, concurrent `recv` allocates its own).
    buffer: std::sync::Mutex<Option<Vec<u8>>>,
    _direction: PhantomData<fn(Tx) -> Rx>,
}

/// Gives the receive buffer back to its channel when a `recv` ends, however it ends.
struct Lease<'a> {
    slot: &'a std::sync::Mutex<Option<Vec<u8>>>,
    buffer: Option<Vec<u8>>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(buffer);
        }
    }
}

impl<Tx, Rx> std::fmt::Debug for Channel<Tx, Rx> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("socket", &self.socket).finish()
    }
}

impl<Tx: Encode + Frame, Rx: Decode<()> + Frame> Channel<Tx, Rx> {
    /// Wraps a connected seqpacket socket.
    pub fn new(socket: UnixSeqpacket) -> Self {
        Self { socket, buffer: std::sync::Mutex::new(None), _direction: PhantomData }
    }

    /// Sends one frame as one datagram. A frame that must carry an fd is refused here.
    pub async fn send(&self, frame: &Tx) -> Result<(), ChannelError> {
        if frame.fds() != 0 {
            return Err(ChannelError::Protocol("this frame must carry an fd: use send_with_fd"));
        }
        let bytes = codec::encode(frame)?;
        self.send_raw(&bytes).await
    }

    /// Sends one frame with one file descriptor attached (`SCM_RIGHTS`). The caller keeps its copy
    /// of the fd and should close it as soon as this returns `Ok`.
    pub async fn send_with_fd(&self, frame: &Tx, fd: BorrowedFd<'_>) -> Result<(), ChannelError> {
        if frame.fds() != 1 {
            return Err(ChannelError::Protocol("this frame carries no fd"));
        }
        let bytes = codec::encode(frame)?;
        let mut space = [0u8; ANCILLARY_SPACE];
        let mut ancillary = AncillaryMessageWriter::new(&mut space);
        ancillary.add_fds([fd]).map_err(|_| ChannelError::Protocol("no room for the fd"))?;
        let sent = self.socket.send_with_ancillary(&bytes, &mut ancillary).await?;
        if sent != bytes.len() {
            return Err(ChannelError::Protocol("datagram sent short"));
        }
        Ok(())
    }

    /// Sends pre-encoded bytes as one datagram (tests use it to send garbage on purpose).
    pub async fn send_raw(&self, bytes: &[u8]) -> Result<(), ChannelError> {
        let sent = self.socket.send(bytes).await?;
        if sent != bytes.len() {
            return Err(ChannelError::Protocol("datagram sent short"));
        }
        Ok(())
    }

    /// Receives the next frame of a kind that carries no fd; `Ok(None)` when the peer closed its end.
    pub async fn recv(&self) -> Result<Option<Rx>, ChannelError> {
        match self.recv_with_fd().await? {
            None => Ok(None),
            Some((frame, None)) => Ok(Some(frame)),
            // Dropping the fd closes it.
            Some((_, Some(_))) => Err(ChannelError::Protocol("unexpected fd on a frame")),
        }
    }

    /// Receives the next frame and the fd it carries, if its kind carries one; `Ok(None)` when the
    /// peer closed its end. The fd arrives close-on-exec. A frame with the wrong number of fds is
    /// an error, and any fd that came with it is closed.
    ///
    /// One exception: a frame that carries an fd comes back with `None` when the kernel could not
    /// install the fd in this process (`MSG_CTRUNC` with no fd: this process is at its fd limit).
    /// The fd is lost (closed by the kernel); the channel is fine.
    pub async fn recv_with_fd(&self) -> Result<Option<(Rx, Option<OwnedFd>)>, ChannelError> {
        let held = self.buffer.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut lease = Lease { slot: &self.buffer, buffer: Some(held.unwrap_or_else(|| vec![0u8; MAX_FRAME + 1])) };
        let buf = lease.buffer.as_mut().expect("set above");
        let mut ancillary = [0u8; ANCILLARY_SPACE];
        let (info, reader) = self.socket.recv_with_ancillary(buf, &mut ancillary).await?;
        let len = info.bytes_read();
        if len == 0 && !info.truncated() && reader.is_empty() {
            // A zero-length read on a seqpacket socket is the peer's orderly shutdown; the
            // protocol has no empty frames.
            return Ok(None);
        }
        if info.truncated() || len > MAX_FRAME {
            return Err(CodecError::Oversized { size: len }.into());
        }
        let control_truncated = info.ancillary_truncated();
        let mut fds = Vec::new();
        for message in reader.into_messages() {
            match message {
                OwnedAncillaryMessage::FileDescriptors(received) => fds.extend(received),
                // Anything else is dropped (and any fd in `fds` closed) on return.
                _ => return Err(ChannelError::Protocol("unexpected control data on a frame")),
            }
        }
        let frame: Rx = codec::decode(&buf[..len])?;
        if control_truncated {
            // The kernel sets MSG_CTRUNC without installing the fd when the receiver is at its
            // fd limit (EMFILE): the fd is closed, the frame is intact. That costs the one
            // connection, not the channel. Truncation with fds installed means the sender sent
            // more than the protocol allows.
            if fds.is_empty() && frame.fds() == 1 {
                return Ok(Some((frame, None)));
            }
            return Err(ChannelError::Protocol("control data truncated (too many fds)"));
        }
        if fds.len() != frame.fds() {
            return Err(ChannelError::Protocol("wrong number of fds for the frame"));
        }
        Ok(Some((frame, fds.pop())))
    }

    /// The underlying socket.
    pub fn socket(&self) -> &UnixSeqpacket {
        &self.socket
    }
}
