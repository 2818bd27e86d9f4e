//! The writing half of a Node worker's channel, owned by the worker's link (`link.rs`) and driven
//! by the worker's task: messages go out in the order they were queued. A connection is a
//! `NODE_HANDLE` message with the fd as `SCM_RIGHTS`; it is in flight until the worker's
//! `NODE_HANDLE_ACK`, and a `NODE_HANDLE_NACK` sends the same one again, up to three times.
//! clusterd's copy of a connection's fd is closed once the worker has acknowledged it.
//!
//! Node's own sender holds everything after a handle until its acknowledgement, because it
//! attaches the fd to the first bytes of the message: a second fd could then reach the receiver
//! before the rest of the first message, and Node's receiver gives a handle to the next
//! `NODE_HANDLE` message it completes. clusterd attaches the fd to the message's **last** byte,
//! written on its own: the kernel ends a read after the one segment that carries fds, so the read
//! that delivers an fd always completes its message too, and up to [`MAX_IN_FLIGHT`] handles can
//! be on their way at once. A worker busy with one connection finds the next ones already queued
//! instead of waiting a round trip through clusterd for each.
//!
//! Writes are tried at once, from the worker's task, without waiting: a handle goes out in the
//! same turn that picked the connection, and an acknowledgement closes its fd where it is read.
//! (A writer task of its own cost a task switch for each handle and each acknowledgement.) Only
//! what the socket does not take at once waits, and only then is the socket watched for room:
//! a socket registered for writability wakes clusterd every time the worker reads from it (a Unix
//! socket signals room after every read its peer makes), which was one wakeup more per
//! connection.
//!
//! The reading side's one system call is here too ([`recv_with_fds`]), beside the sending one:
//! the fds a worker sends (a connection its preload gives back at a drain) come with the bytes.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Buf, Bytes};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::budget::Share;

/// Messages queued for one worker, and relayed messages waiting to be queued
/// ([`RELAY_QUEUE`]).
pub const QUEUE: usize = 1024;
/// Relayed messages on their way from the relay to a worker's queue.
pub const RELAY_QUEUE: usize = 1024;
/// How often a refused handle is sent again before the connection is given up.
const MAX_RETRANSMISSIONS: u8 = 3;
/// Handles written and not yet acknowledged, per worker. It bounds the fds clusterd holds for a
/// worker that stopped reading, and how far a worker's share of new connections runs ahead of
/// what it has taken.
pub const MAX_IN_FLIGHT: usize = 8;
/// Buffers in one vectored write (well under the kernel's `IOV_MAX`, 1024).
const MAX_IOV: usize = 64;

/// Something to write to the worker.
pub enum Out {
    /// A message clusterd wrote for this worker.
    Frame(Bytes),
    /// A message relayed from another worker (its bytes count in [`Channel::queued`]).
    Relayed(Bytes),
    /// A connection: the message and the fd that goes with it, its listener group, and what of
    /// the message's request was read ahead (held until the worker acknowledges it).
    Handle { frame: Bytes, fd: OwnedFd, group: Option<u32>, held: Share },
    /// The last message of the channel (the `disconnect`): a handle refused after it was written
    /// is given up rather than sent to a worker that is closing its channel.
    Last(Bytes),
}

/// What the reading half heard about handles.
pub enum Control {
    Ack,
    Nack,
}

struct InFlight {
    frame: Bytes,
    /// Dropped (closed) when the worker acknowledges the handle.
    fd: OwnedFd,
    group: Option<u32>,
    sent: u8,
    /// Given back to the read-ahead budget with the frame it is part of.
    _held: Share,
}

/// Bytes on their way out, in order.
enum Piece {
    /// Message bytes, the front ones possibly written in part; `relayed`: how many count in
    /// [`Channel::queued`] until they are written.
    Bytes { bytes: Bytes, relayed: usize },
    /// The last byte of a handle's message, with the handle's fd (owned by its [`InFlight`],
    /// which stays until the worker answers, so after this byte was written).
    Fd { byte: u8, fd: RawFd },
}

/// The writer's state: what waits to be written and what waits for the worker's answer.
pub struct Channel {
    /// Queued and not yet begun, in order.
    queue: VecDeque<Out>,
    /// Begun: the bytes of the messages taken from `queue`, not yet all written.
    wire: VecDeque<Piece>,
    /// Written handles, oldest first: the worker answers them in the order it reads them.
    in_flight: VecDeque<InFlight>,
    /// The `disconnect` has been written.
    closing: bool,
    /// A write failed: the worker is gone or stopped reading for good; its reading half sees
    /// the end. Nothing more is written.
    broken: bool,
    /// A second registration of the socket, for writability, while something waits for room.
    room: Option<AsyncFd<OwnedFd>>,
    /// Bytes of relayed messages queued and not yet written (the relay reads it).
    queued: Arc<AtomicUsize>,
}

impl Channel {
    pub fn new(queued: Arc<AtomicUsize>) -> Self {
        Self {
            queue: VecDeque::new(),
            wire: VecDeque::new(),
            in_flight: VecDeque::new(),
            closing: false,
            broken: false,
            room: None,
            queued,
        }
    }

    /// Whether more can be queued: below [`QUEUE`], and writing still works.
    pub fn has_room(&self) -> bool {
        !self.broken && self.queue.len() < QUEUE
    }

    /// Whether writing failed for good.
    pub fn broken(&self) -> bool {
        self.broken
    }

    /// Whether bytes wait for the socket to have room (see [`Channel::room`]).
    pub fn waiting(&self) -> bool {
        self.room.is_some()
    }

    /// Queues `out` and writes what the socket takes now. The listener groups of connections
    /// that cannot be handed over any more (writing failed) are added to `failed`.
    pub fn push(&mut self, socket: &UnixStream, out: Out, failed: &mut Vec<Option<u32>>) {
        self.extend(socket, std::iter::once(out), failed);
    }

    /// Queues every message of `outs`, then writes what the socket takes (together, in one
    /// vectored write when it takes them all).
    pub fn extend(&mut self, socket: &UnixStream, outs: impl Iterator<Item = Out>, failed: &mut Vec<Option<u32>>) {
        self.queue.extend(outs);
        if self.broken {
            let queue = std::mem::take(&mut self.queue);
            return self.drop_queued(queue, failed);
        }
        self.flush(socket, failed);
    }

    /// The worker's answer about the oldest handle in flight.
    pub fn answered(&mut self, socket: &UnixStream, control: Control, failed: &mut Vec<Option<u32>>) {
        // The fd of an acknowledged handle closes here.
        let Some(handle) = self.in_flight.pop_front() else { return };
        match control {
            Control::Ack => {}
            Control::Nack if handle.sent <= MAX_RETRANSMISSIONS && !self.closing && !self.broken => {
                self.begin_handle(handle);
            }
            Control::Nack => {
                tracing::warn!("a Node worker refused a connection {} times; closing it", handle.sent);
                failed.push(handle.group);
            }
        }
        // Room in flight: handles that waited for it can go.
        self.flush(socket, failed);
    }

    /// Waits until the socket has room for what waits (cancel-safe), then writes what it takes.
    /// Pending forever when nothing waits.
    pub async fn writable(&mut self, socket: &UnixStream, failed: &mut Vec<Option<u32>>) {
        let Some(room) = &self.room else { return std::future::pending().await };
        match room.writable().await {
            Ok(mut guard) => {
                // Cleared before writing: room made after this point signals again.
                guard.clear_ready();
            }
            Err(_) => return self.fail(failed),
        }
        self.flush(socket, failed);
    }

    /// Writes what waits and what the queue allows (handles only while fewer than
    /// [`MAX_IN_FLIGHT`] are in flight), until the socket takes no more.
    fn flush(&mut self, socket: &UnixStream, failed: &mut Vec<Option<u32>>) {
        loop {
            self.begin_queued();
            if self.wire.is_empty() {
                // Everything written: stop watching for room.
                self.room = None;
                return;
            }
            match self.write_some(socket) {
                Ok(true) => {}
                Ok(false) => {
                    if self.room.is_none() {
                        match watch_room(socket) {
                            Ok(room) => self.room = Some(room),
                            Err(error) => {
                                tracing::warn!(%error, "node channel: cannot watch the worker's socket for room");
                                return self.fail(failed);
                            }
                        }
                    }
                    return;
                }
                Err(_) => return self.fail(failed),
            }
        }
    }

    /// Moves queued messages onto the wire, in order; a handle that finds no room in flight
    /// waits, with everything after it.
    fn begin_queued(&mut self) {
        while let Some(front) = self.queue.front() {
            if matches!(front, Out::Handle { .. }) && self.in_flight.len() >= MAX_IN_FLIGHT {
                return;
            }
            let Some(out) = self.queue.pop_front() else { return };
            match out {
                Out::Frame(bytes) => self.wire.push_back(Piece::Bytes { bytes, relayed: 0 }),
                Out::Relayed(bytes) => {
                    let relayed = bytes.len();
                    self.wire.push_back(Piece::Bytes { bytes, relayed });
                }
                Out::Last(bytes) => {
                    self.closing = true;
                    self.wire.push_back(Piece::Bytes { bytes, relayed: 0 });
                }
                Out::Handle { frame, fd, group, held } => {
                    self.begin_handle(InFlight { frame, fd, group, sent: 0, _held: held });
                }
            }
        }
    }

    /// Puts a handle's message on the wire, its last byte on its own with the fd; it is in
    /// flight from here on (if a write fails, [`Channel::fail`] reports it with the others).
    fn begin_handle(&mut self, mut handle: InFlight) {
        handle.sent += 1;
        let Some((&byte, _)) = handle.frame.split_last() else {
            // Encoded messages are never empty; nothing to send the fd with.
            return;
        };
        let last = handle.frame.len() - 1;
        self.wire.push_back(Piece::Bytes { bytes: handle.frame.slice(..last), relayed: 0 });
        self.wire.push_back(Piece::Fd { byte, fd: handle.fd.as_raw_fd() });
        self.in_flight.push_back(handle);
    }

    /// One write of the wire's front: `Ok(false)` when the socket has no room.
    fn write_some(&mut self, socket: &UnixStream) -> std::io::Result<bool> {
        let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
        let result = match self.wire.front() {
            Some(Piece::Fd { byte, fd }) => {
                let fds = [*fd];
                let cmsg = [ControlMessage::ScmRights(&fds)];
                let byte = [*byte];
                sendmsg::<()>(socket.as_raw_fd(), &[IoSlice::new(&byte)], &cmsg, flags, None)
            }
            Some(Piece::Bytes { .. }) => {
                let slices: Vec<IoSlice<'_>> = self
                    .wire
                    .iter()
                    .map_while(|piece| match piece {
                        Piece::Bytes { bytes, .. } => Some(IoSlice::new(bytes)),
                        Piece::Fd { .. } => None,
                    })
                    .take(MAX_IOV)
                    .collect();
                sendmsg::<()>(socket.as_raw_fd(), &slices, &[], flags, None)
            }
            None => return Ok(true),
        };
        let mut written = match result {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(written) => written,
            Err(nix::errno::Errno::EAGAIN) => return Ok(false),
            Err(nix::errno::Errno::EINTR) => return Ok(true),
            Err(errno) => return Err(errno.into()),
        };
        let mut relayed = 0;
        while written > 0 {
            let Some(front) = self.wire.front_mut() else { break };
            match front {
                Piece::Fd { .. } => {
                    written -= 1;
                    self.wire.pop_front();
                }
                Piece::Bytes { bytes, relayed: count } => {
                    if written < bytes.len() {
                        bytes.advance(written);
                        break;
                    }
                    written -= bytes.len();
                    relayed += *count;
                    self.wire.pop_front();
                }
            }
        }
        if relayed > 0 {
            self.queued.fetch_sub(relayed, Ordering::Relaxed);
        }
        Ok(true)
    }

    /// Writing failed: every connection not handed over (in flight, or still queued) is
    /// reported, and their fds close.
    fn fail(&mut self, failed: &mut Vec<Option<u32>>) {
        self.broken = true;
        self.room = None;
        let relayed: usize = self
            .wire
            .drain(..)
            .map(|piece| match piece {
                Piece::Bytes { relayed, .. } => relayed,
                Piece::Fd { .. } => 0,
            })
            .sum();
        self.queued.fetch_sub(relayed, Ordering::Relaxed);
        failed.extend(self.in_flight.drain(..).map(|handle| handle.group));
        let queue = std::mem::take(&mut self.queue);
        self.drop_queued(queue, failed);
    }

    /// Drops messages that will never be written: their relayed bytes no longer count, and the
    /// connections among them are reported.
    fn drop_queued(&self, queue: VecDeque<Out>, failed: &mut Vec<Option<u32>>) {
        for out in queue {
            match out {
                Out::Handle { group, .. } => failed.push(group),
                Out::Relayed(bytes) => {
                    self.queued.fetch_sub(bytes.len(), Ordering::Relaxed);
                }
                Out::Frame(_) | Out::Last(_) => {}
            }
        }
    }
}

/// A second registration of the channel's socket, for writability only (a `dup`: epoll takes
/// one registration per fd, and the first one, for reading, must not hear of room).
fn watch_room(socket: &UnixStream) -> std::io::Result<AsyncFd<OwnedFd>> {
    register(socket.as_fd().try_clone_to_owned()?, Interest::WRITABLE)
}

/// The most fds taken from one read of a worker's channel. Node attaches one fd to a message,
/// and the kernel ends a read after the bytes that carried fds; more than this in one read is not
/// Node's doing, and the kernel closes the rest (`MSG_CTRUNC`).
pub const MAX_FDS_PER_READ: usize = 2;

/// One read of the channel, with the fds that came with it: the bytes read, the fds, and whether
/// the kernel dropped fds for want of room (`MSG_CTRUNC`: more than [`MAX_FDS_PER_READ`], or
/// clusterd at its fd limit), so that a handle's message may arrive without its fd.
pub fn recv_with_fds(socket: &UnixStream, chunk: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>, bool)> {
    use std::os::fd::FromRawFd;
    // Room for the control header and MAX_FDS_PER_READ ints, 8-byte aligned as cmsghdr wants.
    let mut space = [0u64; 2 + MAX_FDS_PER_READ];
    let mut iov = libc::iovec { iov_base: chunk.as_mut_ptr().cast(), iov_len: chunk.len() };
    // SAFETY: msghdr is plain data; all-zero is its empty value.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &raw mut iov;
    header.msg_iovlen = 1;
    header.msg_control = space.as_mut_ptr().cast();
    header.msg_controllen = std::mem::size_of_val(&space) as _;
    // SAFETY: `header` points at `iov` (into `chunk`) and at `space`, both alive and of the sizes
    // given, for the call's duration; the socket is open.
    let read =
        unsafe { libc::recvmsg(socket.as_raw_fd(), &raw mut header, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
    let read = usize::try_from(read).map_err(|_| std::io::Error::last_os_error())?;
    let truncated = header.msg_flags & libc::MSG_CTRUNC != 0;
    let mut fds = Vec::new();
    // Not nix's iterator: it refuses a truncated message, and the fds the kernel did install
    // would then leak. The kernel's `cmsg_len` counts only those it installed.
    // SAFETY: `header` is the one recvmsg filled; CMSG_FIRSTHDR/NXTHDR stay within
    // `msg_controllen`, and each SCM_RIGHTS header is followed by `cmsg_len` bytes of ints.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let bytes = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..bytes / std::mem::size_of::<libc::c_int>() {
                    let fd = std::ptr::read_unaligned(data.cast::<libc::c_int>().add(i));
                    // The kernel installed it in this process for this message; owned once here.
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&raw const header, cmsg);
        }
    }
    Ok((read, fds, truncated))
}

/// Registers a socket that the returned `AsyncFd` owns with the runtime, for `interest` only.
pub fn register<T: AsRawFd>(socket: T, interest: Interest) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: the `AsyncFd` owns `socket` (an `OwnedFd` or a std socket) for its whole life, so
    // the fd stays open and names the same socket until the registration is dropped.
    Ok(unsafe { AsyncFd::register_with_interest(socket, interest) }?)
}

#[cfg(test)]
mod tests {
    use std::io::{IoSlice, IoSliceMut, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

    use super::*;
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

    fn pair() -> (UnixStream, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        theirs.set_nonblocking(true).unwrap();
        (ours, theirs)
    }

    /// Everything the peer can read now: the bytes, and how many fds came with them.
    fn drain(socket: &UnixStream) -> (Vec<u8>, usize) {
        let (mut bytes, mut fds) = (Vec::new(), 0);
        loop {
            let mut buffer = vec![0u8; 64 * 1024];
            let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
            let mut iov = [IoSliceMut::new(&mut buffer)];
            let message = match recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_DONTWAIT) {
                Ok(message) => message,
                Err(nix::errno::Errno::EAGAIN) => return (bytes, fds),
                Err(error) => panic!("recvmsg: {error}"),
            };
            let read = message.bytes;
            for cmsg in message.cmsgs().unwrap() {
                if let ControlMessageOwned::ScmRights(received) = cmsg {
                    fds += received.len();
                    for fd in received {
                        nix::unistd::close(fd).unwrap();
                    }
                }
            }
            if read == 0 {
                return (bytes, fds);
            }
            bytes.extend_from_slice(&buffer[..read]);
        }
    }

    fn handle(n: u8) -> Out {
        let (fd, _) = UnixStream::pair().unwrap();
        Out::Handle {
            frame: Bytes::from(vec![n; 300]),
            fd: fd.into(),
            group: Some(u32::from(n)),
            held: Share::default(),
        }
    }

    /// Handles go out at once, up to [`MAX_IN_FLIGHT`]; the next ones wait, with everything
    /// queued after them, until the worker acknowledges; each message arrives whole with its fd.
    #[tokio::test]
    async fn handles_wait_for_room_in_flight_and_acknowledgements_release_them() {
        let (ours, theirs) = pair();
        let queued = Arc::new(AtomicUsize::new(0));
        let mut channel = Channel::new(Arc::clone(&queued));
        let mut failed = Vec::new();
        for n in 0..MAX_IN_FLIGHT as u8 + 2 {
            channel.push(&ours, handle(n), &mut failed);
        }
        channel.push(&ours, Out::Frame(Bytes::from_static(b"after")), &mut failed);
        let (bytes, fds) = drain(&theirs);
        assert_eq!((bytes.len(), fds), (300 * MAX_IN_FLIGHT, MAX_IN_FLIGHT), "only the handles in flight");
        channel.answered(&ours, Control::Ack, &mut failed);
        let (bytes, fds) = drain(&theirs);
        assert_eq!((bytes, fds), (vec![MAX_IN_FLIGHT as u8; 300], 1), "the next handle, once one was acknowledged");
        // A refusal sends the oldest one in flight again.
        channel.answered(&ours, Control::Nack, &mut failed);
        let (bytes, fds) = drain(&theirs);
        assert_eq!((bytes, fds), (vec![1; 300], 1), "the refused handle again");
        channel.answered(&ours, Control::Ack, &mut failed);
        let (bytes, fds) = drain(&theirs);
        let mut expected = vec![MAX_IN_FLIGHT as u8 + 1; 300];
        expected.extend_from_slice(b"after");
        assert_eq!((bytes, fds), (expected, 1), "the last handle, then what was queued after it");
        assert!(failed.is_empty() && !channel.waiting());
    }

    /// What the socket does not take waits, is written in order once the worker reads, and
    /// counts in `queued` until then; then the socket is no longer watched for room.
    #[tokio::test]
    async fn what_the_socket_does_not_take_waits_and_goes_out_in_order() {
        let (ours, theirs) = pair();
        nix::sys::socket::setsockopt(&ours, nix::sys::socket::sockopt::SndBuf, &4096).unwrap();
        let queued = Arc::new(AtomicUsize::new(0));
        let mut channel = Channel::new(Arc::clone(&queued));
        let mut failed = Vec::new();
        let messages: Vec<Bytes> = (0..64u8).map(|n| Bytes::from(vec![n; 4000])).collect();
        let total: usize = messages.iter().map(Bytes::len).sum();
        queued.fetch_add(total, Ordering::Relaxed);
        channel.extend(&ours, messages.iter().cloned().map(Out::Relayed), &mut failed);
        assert!(channel.waiting(), "64 × 4000 bytes do not fit a 4 KiB send buffer");
        assert!(queued.load(Ordering::Relaxed) > 0);
        let mut received = Vec::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while received.len() < total {
            received.extend(drain(&theirs).0);
            if channel.waiting() {
                tokio::time::timeout_at(deadline, channel.writable(&ours, &mut failed))
                    .await
                    .expect("the channel wrote on within 30 s of the peer reading");
            }
        }
        assert_eq!(received, messages.concat(), "every message, whole and in order");
        assert_eq!(queued.load(Ordering::Relaxed), 0);
        assert!(failed.is_empty() && !channel.waiting());
    }

    /// A worker that is gone: the connections queued and in flight are reported, and later
    /// ones at once.
    #[tokio::test]
    async fn connections_of_a_worker_that_is_gone_are_reported() {
        let (ours, theirs) = pair();
        drop(theirs);
        let mut channel = Channel::new(Arc::new(AtomicUsize::new(0)));
        let mut failed = Vec::new();
        channel.push(&ours, handle(1), &mut failed);
        channel.push(&ours, handle(2), &mut failed);
        assert!(channel.broken());
        assert_eq!(failed, [Some(1), Some(2)]);
    }
}
