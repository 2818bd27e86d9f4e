//! The writing half of a Node worker's channel: one task per worker that writes messages in the
//! order they were queued. A connection (`NODE_HANDLE` with the fd as `SCM_RIGHTS`) is in flight
//! until the worker's `NODE_HANDLE_ACK`, and everything queued after it waits until then, as
//! Node's own sender does; a `NODE_HANDLE_NACK` sends the same one again, up to three times.
//! clusterd's copy of a connection's fd is closed once the worker has acknowledged it.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;

/// Messages queued for one worker.
const QUEUE: usize = 1024;
/// How often a refused handle is sent again before the connection is given up.
const MAX_RETRANSMISSIONS: u8 = 3;

/// Something to write to the worker.
pub enum Out {
    /// A message clusterd wrote for this worker.
    Frame(Bytes),
    /// A message relayed from another worker (its bytes count in [`Writer::queued`]).
    Relayed(Bytes),
    /// A connection: the message and the fd that goes with it, and its listener group.
    Handle { frame: Bytes, fd: OwnedFd, group: Option<u32> },
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

async fn run(
    mut socket: OwnedWriteHalf,
    mut outs: mpsc::Receiver<Out>,
    mut controls: mpsc::UnboundedReceiver<Control>,
    failed: mpsc::UnboundedSender<Option<u32>>,
    queued: Arc<AtomicUsize>,
) {
    let mut in_flight: Option<InFlight> = None;
    // Everything queued after the handle in flight, in order: it waits for the ACK, as in Node
    // (a disconnect written before a held handle would make the worker acknowledge on a closed
    // channel, which Node treats as an internal error).
    let mut pending: VecDeque<Out> = VecDeque::new();
    let mut batch = Vec::new();
    loop {
        let result = tokio::select! {
            biased;
            control = controls.recv() => {
                let Some(control) = control else { return };
                match (control, in_flight.take()) {
                    // The fd of the acknowledged handle closes here.
                    (Control::Ack, _) | (Control::Nack, None) => Ok(()),
                    (Control::Nack, Some(refused)) if refused.sent <= MAX_RETRANSMISSIONS => {
                        send_handle(&mut socket, refused, &mut in_flight).await
                    }
                    (Control::Nack, Some(refused)) => {
                        tracing::warn!("a Node worker refused a connection {} times; closing it", refused.sent);
                        let _ = failed.send(refused.group);
                        Ok(())
                    }
                }
            }
            count = outs.recv_many(&mut batch, 256), if pending.len() < QUEUE => {
                if count == 0 {
                    return;
                }
                pending.extend(batch.drain(..));
                Ok(())
            }
        };
        let result = match result {
            Ok(()) if in_flight.is_none() => write_in_order(&mut socket, &mut pending, &mut in_flight, &queued).await,
            other => other,
        };
        if result.is_err() {
            // The worker is gone or stopped reading for good: its task sees the end on the other
            // half. What is still queued closes with this task (fds included).
            let held = pending.into_iter().filter_map(|out| match out {
                Out::Handle { group, .. } => Some(group),
                _ => None,
            });
            for group in in_flight.map(|h| h.group).into_iter().chain(held) {
                let _ = failed.send(group);
            }
            return;
        }
    }
}

/// Writes pending messages in order (vectored, in runs) up to and including the next handle,
/// which then waits in flight for its acknowledgement with everything after it.
async fn write_in_order(
    socket: &mut OwnedWriteHalf,
    pending: &mut VecDeque<Out>,
    in_flight: &mut Option<InFlight>,
    queued: &AtomicUsize,
) -> std::io::Result<()> {
    let mut run: Vec<Bytes> = Vec::new();
    let mut relayed = 0;
    let mut handle = None;
    while let Some(out) = pending.pop_front() {
        match out {
            Out::Frame(bytes) => run.push(bytes),
            Out::Relayed(bytes) => {
                relayed += bytes.len();
                run.push(bytes);
            }
            Out::Handle { frame, fd, group } => {
                handle = Some(InFlight { frame, fd, group, sent: 0 });
                break;
            }
        }
    }
    clusterd_worker::bus_protocol::write_frames(socket, &run).await?;
    queued.fetch_sub(relayed, Ordering::Relaxed);
    match handle {
        Some(handle) => send_handle(socket, handle, in_flight).await,
        None => Ok(()),
    }
}

/// Writes a handle message with its fd attached to the first bytes, and keeps it in flight.
async fn send_handle(
    socket: &mut OwnedWriteHalf,
    mut handle: InFlight,
    in_flight: &mut Option<InFlight>,
) -> std::io::Result<()> {
    let stream = socket.as_ref();
    let fd = handle.fd.as_raw_fd();
    let first = loop {
        stream.writable().await?;
        let sent = stream.try_io(Interest::WRITABLE, || {
            let fds = [fd];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            sendmsg::<()>(stream.as_raw_fd(), &[IoSlice::new(&handle.frame)], &cmsg, MsgFlags::MSG_NOSIGNAL, None)
                .map_err(std::io::Error::from)
        });
        match sent {
            Ok(sent) => break sent,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error),
        }
    };
    socket.write_all(&handle.frame[first..]).await?;
    handle.sent += 1;
    *in_flight = Some(handle);
    Ok(())
}
