//! Passing on what workers write: whole lines, prefixed with the worker's id, never blocking clusterd.
//!
//! Each pipe has its own reader task that cuts lines (at most [`MAX_LINE`] bytes: a longer run
//! without a newline is passed on in pieces) and queues them to one writer thread. The queue is
//! bounded: when clusterd's own stdout is slow, the reader stops reading, the worker's pipe fills
//! and the worker that floods waits, while clusterd's dispatcher, which never touches these pipes,
//! carries on. Lines of different workers never interleave inside a line.

use std::io::Write;
use std::os::fd::OwnedFd;

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

/// The longest line passed on in one piece.
pub const MAX_LINE: usize = 16 * 1024;
const QUEUE: usize = 1024;

/// Which of clusterd's outputs a line goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
}

enum Line {
    Text {
        output: Output,
        bytes: Vec<u8>,
    },
    /// Answered once every line queued before it has been written.
    Flushed(oneshot::Sender<()>),
}

/// The handle through which reader tasks queue lines to the writer thread.
#[derive(Clone)]
pub struct LogSink {
    lines: mpsc::Sender<Line>,
    prefix: bool,
    readers: TaskTracker,
}

impl LogSink {
    /// Starts the writer thread.
    pub fn start(prefix: bool) -> std::io::Result<Self> {
        let (lines, mut queue) = mpsc::channel::<Line>(QUEUE);
        std::thread::Builder::new().name("clusterd-logs".into()).spawn(move || {
            while let Some(line) = queue.blocking_recv() {
                // A closed stdout (EPIPE) must not stop clusterd: the line is dropped.
                let _ = match line {
                    Line::Text { output: Output::Stdout, bytes } => std::io::stdout().lock().write_all(&bytes),
                    Line::Text { output: Output::Stderr, bytes } => std::io::stderr().lock().write_all(&bytes),
                    Line::Flushed(done) => {
                        let _ = done.send(());
                        Ok(())
                    }
                };
            }
        })?;
        Ok(Self { lines, prefix, readers: TaskTracker::new() })
    }

    /// At exit: waits until every worker pipe has reached its end (the workers are gone) and
    /// every line is written, for at most `limit` (a grandchild that kept a pipe open, or a stuck
    /// stdout, must not hold clusterd forever).
    pub async fn finish(&self, limit: Duration) {
        self.readers.close();
        let drained = async {
            self.readers.wait().await;
            let (done, flushed) = oneshot::channel();
            if self.lines.send(Line::Flushed(done)).await.is_ok() {
                let _ = flushed.await;
            }
        };
        if tokio::time::timeout(limit, drained).await.is_err() {
            tracing::warn!("worker output not fully passed on within {}", crate::duration::show(limit));
        }
    }

    /// Forwards one pipe of worker `id` until it closes.
    pub fn forward(&self, id: u32, output: Output, fd: OwnedFd) {
        let sink = self.clone();
        self.readers.spawn(async move {
            let mut pipe = match pipe::Receiver::from_owned_fd(fd) {
                Ok(pipe) => pipe,
                Err(error) => {
                    tracing::warn!(worker = id, %error, "cannot read the worker's output");
                    return;
                }
            };
            let prefix = if sink.prefix { format!("[w{id}] ").into_bytes() } else { Vec::new() };
            let mut pending = Vec::with_capacity(4096);
            let mut chunk = vec![0u8; 8192];
            loop {
                let n = match pipe.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&chunk[..n]);
                for line in cut_lines(&mut pending) {
                    if sink.send(output, &prefix, &line).await.is_err() {
                        return;
                    }
                }
            }
            if !pending.is_empty() {
                let _ = sink.send(output, &prefix, &pending).await;
            }
        });
    }

    async fn send(&self, output: Output, prefix: &[u8], line: &[u8]) -> Result<(), ()> {
        let mut bytes = Vec::with_capacity(prefix.len() + line.len() + 1);
        bytes.extend_from_slice(prefix);
        bytes.extend_from_slice(line);
        bytes.push(b'\n');
        self.lines.send(Line::Text { output, bytes }).await.map_err(|_| ())
    }
}

/// Takes every complete line (without its newline) out of `pending`, and cuts a run of more than
/// [`MAX_LINE`] bytes without a newline into pieces of that size.
fn cut_lines(pending: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    let mut start = 0;
    loop {
        let rest = &pending[start..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(pos) if pos <= MAX_LINE => {
                let line = &rest[..pos];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                lines.push(line.to_vec());
                start += pos + 1;
            }
            _ if rest.len() > MAX_LINE => {
                lines.push(rest[..MAX_LINE].to_vec());
                start += MAX_LINE;
            }
            _ => break,
        }
    }
    pending.drain(..start);
    lines
}

/// Whether clusterd's stderr is connected to the systemd journal: `JOURNAL_STREAM` (set by
/// systemd for `StandardError=journal`) names the stream's `device:inode`, and stderr is that
/// very stream (not a pipe or file it was redirected to by a child's shell).
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else { return false };
    journal_stream_matches(&value.to_string_lossy(), stat.st_dev, stat.st_ino)
}

/// `JOURNAL_STREAM`'s `DEVICE:INODE` (decimal) against a stream's device and inode.
fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.split_once(':') else { return false };
    d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_is_device_colon_inode() {
        assert!(journal_stream_matches("8:12345", 8, 12345));
        assert!(!journal_stream_matches("8:12345", 8, 12346));
        assert!(!journal_stream_matches("9:12345", 8, 12345));
        for bad in ["", "8", "8:", ":1", "8:1:2", "x:1", " 8:1"] {
            assert!(!journal_stream_matches(bad, 8, 1), "{bad:?}");
        }
    }

    #[test]
    fn cuts_complete_lines_and_keeps_the_tail() {
        let mut pending = b"one\ntwo\r\nthr".to_vec();
        assert_eq!(cut_lines(&mut pending), vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(pending, b"thr");
        pending.extend_from_slice(b"ee\n\n");
        assert_eq!(cut_lines(&mut pending), vec![b"three".to_vec(), Vec::new()]);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_run_without_newline_is_cut_at_the_limit() {
        let mut pending = vec![b'x'; MAX_LINE * 2 + 10];
        let lines = cut_lines(&mut pending);
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l.len() == MAX_LINE));
        assert_eq!(pending.len(), 10);
    }
}
