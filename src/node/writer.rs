//! The writing half of a Node worker's channel: one task per worker that writes messages in the
//! order they were queued. A connection is a `NODE_HANDLE` message with the fd as `SCM_RIGHTS`;
//! it is in flight until the worker's `NODE_HANDLE_ACK`, and a `NODE_HANDLE_NACK` sends the same
//! one again, up to three times. clusterd's copy of a connection's fd is closed once the worker
//! has acknowledged it.
//!
//! Node's own sender holds everything after a handle until its acknowledgement, because it
//! attaches the fd to the first bytes of the message: a second fd could then reach the receiver
//! before the rest of the first message, and Node's receiver gives a handle to the next
//! `NODE_HANDLE` message it completes. clusterd attaches the fd to the message's **last** byte,
//! written on its own: the kernel ends a read after the one segment that carries fds, so the read
//! that delivers an fd always completes its message too, and up to [`MAX_IN_FLIGHT`] handles can
//! be on their way at once. A worker busy with one connection finds the next ones already queued
//! instead of waiting a round trip through clusterd for each.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use tokio::io::Interest;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;

/// Messages queued for one worker.
const QUEUE: usize = 1024;
/// How often a refused handle is sent again before the connection is given up.
const MAX_RETRANSMISSIONS: u8 = 3;
/// Handles written and not yet acknowledged, per worker. It bounds the fds clusterd holds for a
/// worker that stopped reading, and how far a worker's share of new connections runs ahead of
/// what it has taken.
pub const MAX_IN_FLIGHT: usize = 8;

/// Something to write to the worker.
pub enum Out {
    /// A message clusterd wrote for this worker.
    Frame(Bytes),
    /// A message relayed from another worker (its bytes count in [`Writer::queued`]).
    Relayed(Bytes),
    /// A connection: the message and the fd that goes with it, and its listener group.
    Handle { frame: Bytes, fd: OwnedFd, group: Option<u32> },
    /// The last message of the channel (the `disconnect`): a handle refused after it was written
    /// is given up rather than sent to a worker that is closing its channel.
    Last(Bytes),
}

/// What the reading half heard about handles.
pub enum Control {
    Ack,
    Nack,
}

/// The handles on a worker's writer task.
pub struct Writer {
    pub out: mpsc::Sender<Out>,
    pub control: mpsc::UnboundedSender<Control>,
    /// The listener group of each connection the worker refused for good.
    pub failed: mpsc::UnboundedReceiver<Option<u32>>,
    /// Bytes of relayed messages queued and not yet written.
    pub queued: Arc<AtomicUsize>,
}

pub fn start(socket: OwnedWriteHalf) -> Writer {
    let (out, outs) = mpsc::channel(QUEUE);
    let (control, controls) = mpsc::unbounded_channel();
    let (failed_tx, failed) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    tokio::spawn(run(socket, outs, controls, failed_tx, Arc::clone(&queued)));
    Writer { out, control, failed, queued }
}

struct InFlight {
    frame: Bytes,
    /// Dropped (closed) when the worker acknowledges the handle.
    fd: OwnedFd,
    group: Option<u32>,
    sent: u8,
}

/// The writer's state: what waits to be written and what waits for the worker's answer.
struct Channel {
    socket: OwnedWriteHalf,
    /// Queued and not yet written, in order.
    pending: VecDeque<Out>,
    /// Written handles, oldest first: the worker answers them in the order it reads them.
    in_flight: VecDeque<InFlight>,
    /// The `disconnect` has been written.
    closing: bool,
    failed: mpsc::UnboundedSender<Option<u32>>,
    queued: Arc<AtomicUsize>,
}

async fn run(
    socket: OwnedWriteHalf,
    mut outs: mpsc::Receiver<Out>,
    mut controls: mpsc::UnboundedReceiver<Control>,
    failed: mpsc::UnboundedSender<Option<u32>>,
    queued: Arc<AtomicUsize>,
) {
    let mut channel =
        Channel { socket, pending: VecDeque::new(), in_flight: VecDeque::new(), closing: false, failed, queued };
    let mut batch = Vec::new();
    loop {
        let result = tokio::select! {
            biased;
            control = controls.recv() => match control {
                Some(control) => channel.answered(control).await,
                None => return,
            },
            count = outs.recv_many(&mut batch, 256), if channel.pending.len() < QUEUE => {
                if count == 0 {
                    return;
                }
                channel.pending.extend(batch.drain(..));
                Ok(())
            }
        };
        let result = match result {
            Ok(()) => channel.write_pending().await,
            error => error,
        };
        if result.is_err() {
            // The worker is gone or stopped reading for good: its task sees the end on the other
            // half. What is still queued closes with this task (fds included).
            channel.give_up();
            return;
        }
    }
}

impl Channel {
    /// The worker's answer about the oldest handle in flight.
    async fn answered(&mut self, control: Control) -> std::io::Result<()> {
        // The fd of an acknowledged handle closes here.
        let Some(handle) = self.in_flight.pop_front() else { return Ok(()) };
        match control {
            Control::Ack => Ok(()),
            Control::Nack if handle.sent <= MAX_RETRANSMISSIONS && !self.closing => {
                self.write(Vec::new(), Some(handle)).await
            }
            Control::Nack => {
                tracing::warn!("a Node worker refused a connection {} times; closing it", handle.sent);
                let _ = self.failed.send(handle.group);
                Ok(())
            }
        }
    }

    /// Writes what is pending, in order and in vectored runs, while there is room for handles in
    /// flight; a handle that finds no room waits, with everything after it.
    async fn write_pending(&mut self) -> std::io::Result<()> {
        let mut run: Vec<Bytes> = Vec::new();
        let mut relayed = 0;
        while self.in_flight.len() < MAX_IN_FLIGHT {
            let Some(out) = self.pending.pop_front() else { break };
            match out {
                Out::Frame(bytes) => run.push(bytes),
                Out::Relayed(bytes) => {
                    relayed += bytes.len();
                    run.push(bytes);
                }
                Out::Last(bytes) => {
                    self.closing = true;
                    run.push(bytes);
                }
                Out::Handle { frame, fd, group } => {
                    self.write(std::mem::take(&mut run), Some(InFlight { frame, fd, group, sent: 0 })).await?;
                }
            }
        }
        self.write(run, None).await?;
        self.queued.fetch_sub(relayed, Ordering::Relaxed);
        Ok(())
    }

    /// Writes `run`, then the handle: all of its message but the last byte with the run, then
    /// the last byte with the fd attached. The handle then waits in flight for its answer.
    async fn write(&mut self, mut run: Vec<Bytes>, handle: Option<InFlight>) -> std::io::Result<()> {
        let Some(mut handle) = handle else {
            return clusterd_worker::bus_protocol::write_frames(&mut self.socket, &run).await;
        };
        // In flight from here on: if a write fails, `give_up` reports it with the others.
        handle.sent += 1;
        let (frame, fd) = (handle.frame.clone(), handle.fd.as_raw_fd());
        self.in_flight.push_back(handle);
        let last = frame.len() - 1;
        run.push(frame.slice(..last));
        clusterd_worker::bus_protocol::write_frames(&mut self.socket, &run).await?;
        let stream = self.socket.as_ref();
        loop {
            stream.writable().await?;
            let sent = stream.try_io(Interest::WRITABLE, || {
                let fds = [fd];
                let cmsg = [ControlMessage::ScmRights(&fds)];
                let byte = [IoSlice::new(&frame[last..])];
                sendmsg::<()>(stream.as_raw_fd(), &byte, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(std::io::Error::from)
            });
            match sent {
                Ok(_) => return Ok(()),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(error) => return Err(error),
            }
        }
    }

    /// Reports every connection not handed over: in flight, or still queued.
    fn give_up(self) {
        let queued = self.pending.into_iter().filter_map(|out| match out {
            Out::Handle { group, .. } => Some(group),
            _ => None,
        });
        for group in self.in_flight.into_iter().map(|h| h.group).chain(queued) {
            let _ = self.failed.send(group);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{IoSlice, IoSliceMut, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

    /// Reads once (as libuv does) into a 64 KiB buffer: the bytes and the fds that came with them.
    fn read_once(socket: &UnixStream) -> (usize, usize) {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
        let mut iov = [IoSliceMut::new(&mut buffer)];
        let message = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty()).unwrap();
        let mut fds = 0;
        for cmsg in message.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                fds += received.len();
                for fd in received {
                    nix::unistd::close(fd).unwrap();
                }
            }
        }
        (message.bytes, fds)
    }

    fn send_with_fd(socket: &UnixStream, bytes: &[u8], fd: &impl AsRawFd) {
        let fds = [fd.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(socket.as_raw_fd(), &[IoSlice::new(bytes)], &cmsg, MsgFlags::empty(), None).unwrap();
    }

    /// What the pipelined handles rest on: a read stops right after the segment that carries an
    /// fd, so the fd written with a message's last byte comes with the end of its message and
    /// never with bytes of the next one; two fds never share a read.
    #[test]
    fn a_read_ends_with_the_segment_that_carries_an_fd() {
        let (mut sender, receiver) = UnixStream::pair().unwrap();
        let (one, two) = UnixStream::pair().unwrap();
        // Message 1: 300 bytes, the last with an fd; message 2 likewise; then a plain message.
        sender.write_all(&[1; 299]).unwrap();
        send_with_fd(&sender, &[1], &one);
        sender.write_all(&[2; 299]).unwrap();
        send_with_fd(&sender, &[2], &two);
        sender.write_all(&[3; 100]).unwrap();
        assert_eq!(read_once(&receiver), (300, 1), "message 1 and its fd, nothing of message 2");
        assert_eq!(read_once(&receiver), (300, 1), "message 2 and its fd");
        assert_eq!(read_once(&receiver), (100, 0));
    }
}
