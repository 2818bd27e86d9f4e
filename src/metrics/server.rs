//! The scrape server: a small HTTP/1.1 server of its own on the `--metrics` address, one request
//! per connection (`Connection: close`).
//!
//! Every resource a scraper can hold is bounded: at most [`MAX_SCRAPERS`] connections are served
//! at once (more are closed at once, so a crowd of slow clients never queues up behind each
//! other), a request head is at most [`MAX_HEAD`] bytes and must arrive within [`HEAD_TIMEOUT`],
//! and the answer must be taken within [`WRITE_TIMEOUT`]. A scraper that sends nothing costs one
//! of the [`MAX_SCRAPERS`] places for [`HEAD_TIMEOUT`], and nothing of the dispatcher's.
//!
//! The body is the Prometheus text format 0.0.4, whatever the `Accept` header asks: the workers'
//! own metrics (prom-client's aggregation, the SDKs' registries) come as 0.0.4 text, which
//! cannot be appended to an OpenMetrics document as it is, and Prometheus takes 0.0.4 from any
//! target.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::head::{Asked, MAX_HEAD, parse_head};
use super::workers::{GatherRequest, WorkerScrape};
use crate::config::ListenAddr;
use crate::listener::{BindError, Bound};
use crate::supervisor::Request;

/// Scrapers served at once, over every `--metrics` socket; a connection beyond them is closed at
/// once. Prometheus scrapes a target with one connection at a time.
pub const MAX_SCRAPERS: usize = 8;
/// How long a scraper has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a scraper has to take the whole answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the workers have to send their own metrics for one scrape; one that has not answered
/// by then is left out of it and counted (`clusterd_worker_scrapes_missed_total`). Well under
/// Prometheus' default scrape timeout (10 s).
pub const GATHER_DEADLINE: Duration = Duration::from_secs(1);
/// How much longer than [`GATHER_DEADLINE`] the scrape waits for the supervisor's answer.
pub const GATHER_SLACK: Duration = Duration::from_millis(250);
/// How long the dispatcher has to answer the scrape's `status` request.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause after a failed accept (out of fds), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The content type of the answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics address could not be bound: clusterd exits 1 before any worker starts.
#[derive(Debug, thiserror::Error)]
#[error("--metrics: {0}")]
pub struct MetricsBindError(#[from] BindError);

/// Binds the `--metrics` address (one socket per address it resolved to).
pub fn bind(addrs: &[ListenAddr]) -> Result<Vec<Bound>, MetricsBindError> {
    Ok(crate::listener::bind_all(addrs)?)
}

/// What the scrape tasks share.
struct Scraper {
    requests: mpsc::Sender<Request>,
    gather: Option<mpsc::Sender<GatherRequest>>,
    places: Arc<Semaphore>,
}

/// Serves `GET /metrics` on every bound socket. `requests`: the dispatcher's control requests
/// (for the `status` document); `gather`: where the workers' own metrics are asked for (`None`:
/// no workers' metrics).
pub fn serve(
    bound: Vec<Bound>,
    requests: mpsc::Sender<Request>,
    gather: Option<mpsc::Sender<GatherRequest>>,
) -> io::Result<()> {
    super::enable();
    let scraper = Arc::new(Scraper { requests, gather, places: Arc::new(Semaphore::new(MAX_SCRAPERS)) });
    for socket in bound {
        let addr = socket.addr().to_owned();
        tracing::info!(addr, "serving Prometheus metrics: GET /metrics on {addr}");
        let socket = match socket {
            Bound::Tcp { listener, .. } => {
                listener.set_nonblocking(true)?;
                Socket::Tcp(tokio::net::TcpListener::from_std(listener)?)
            }
            Bound::Unix { listener, .. } => {
                listener.set_nonblocking(true)?;
                Socket::Unix(tokio::net::UnixListener::from_std(listener)?)
            }
        };
        tokio::spawn(accept_loop(addr, Arc::clone(&scraper), socket));
    }
    Ok(())
}

/// A listening metrics socket.
enum Socket {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

async fn accept_loop(addr: String, scraper: Arc<Scraper>, socket: Socket) {
    loop {
        let accepted = match &socket {
            Socket::Tcp(listener) => listener.accept().await.map(|(stream, _)| start(stream, &scraper)),
            Socket::Unix(listener) => listener.accept().await.map(|(stream, _)| start(stream, &scraper)),
        };
        match accepted {
            Ok(true) => {}
            // Closed at once: the places are taken by scrapers that are slow, or many.
            Ok(false) => tracing::debug!(addr, "metrics: {MAX_SCRAPERS} scrapers served already; closed another"),
            Err(error) => {
                tracing::warn!(addr, %error, "metrics: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
        if scraper.requests.is_closed() {
            return;
        }
    }
}

/// Serves `stream` in a task of its own if a place is free; `false` (and the stream closed) if
/// not.
fn start<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(stream: S, scraper: &Arc<Scraper>) -> bool {
    let Ok(place) = Arc::clone(&scraper.places).try_acquire_owned() else { return false };
    let scraper = Arc::clone(scraper);
    tokio::spawn(async move {
        serve_one(stream, &scraper).await;
        drop(place);
    });
    true
}

/// Reads one request head and answers it; the caller closes the connection.
async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, scraper: &Scraper) {
    let deadline = Instant::now() + HEAD_TIMEOUT;
    let mut head = Vec::with_capacity(1024);
    let asked = loop {
        let asked = parse_head(&head);
        if asked != Asked::Incomplete {
            break asked;
        }
        let mut chunk = [0u8; 1024];
        let want = (MAX_HEAD - head.len()).min(chunk.len());
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk[..want])).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => head.extend_from_slice(&chunk[..n]),
            // Silent, or too slow: closed without an answer, as a client that never asked.
            Err(_) => return,
        }
    };
    let answer = match asked {
        Asked::Metrics => match scrape(scraper).await {
            Ok(body) => response("200 OK", CONTENT_TYPE, &[], body.as_bytes()),
            Err(why) => response("503 Service Unavailable", "text/plain; charset=utf-8", &[], why.as_bytes()),
        },
        Asked::MethodNotAllowed => {
            response("405 Method Not Allowed", "text/plain; charset=utf-8", &["Allow: GET"], b"only GET /metrics\n")
        }
        Asked::NotFound => response("404 Not Found", "text/plain; charset=utf-8", &[], b"metrics are at /metrics\n"),
        Asked::TooLarge => response("431 Request Header Fields Too Large", "text/plain; charset=utf-8", &[], b""),
        Asked::Bad | Asked::Incomplete => response("400 Bad Request", "text/plain; charset=utf-8", &[], b""),
    };
    let write = async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, write).await;
}

fn response(status: &str, content_type: &str, extra: &[&str], body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// The body of one scrape: clusterd's own families, then the workers'.
async fn scrape(scraper: &Scraper) -> Result<String, String> {
    let (status, workers) = tokio::join!(ask_status(&scraper.requests), gather(scraper.gather.as_ref()));
    let mut status = status?;
    // /proc is read here, in the scrape's own task, not in the dispatcher.
    for worker in &mut status.workers {
        worker.rss_bytes = worker.pid.and_then(crate::rss::group_rss);
    }
    let hot = super::enable();
    if workers.missed > 0 {
        hot.scrapes_missed.inc_by(u64::from(workers.missed));
    }
    let mut families = hot.registry.gather();
    families.extend(super::families::from_status(&status));
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut body = String::with_capacity(16 * 1024 + workers.text.len());
    prometheus::TextEncoder::new().encode_utf8(&families, &mut body).map_err(|e| format!("cannot encode: {e}\n"))?;
    if !workers.text.is_empty() {
        body.push_str(&workers.text);
        if !body.ends_with('\n') {
            body.push('\n');
        }
    }
    Ok(body)
}

/// The dispatcher's `status` document, as `clusterd status --json` gets it.
async fn ask_status(requests: &mpsc::Sender<Request>) -> Result<crate::status::Status, String> {
    let (reply, answer) = oneshot::channel();
    let ask = async {
        requests.send(Request::Status(reply)).await.ok()?;
        answer.await.ok()
    };
    match tokio::time::timeout(STATUS_TIMEOUT, ask).await {
        Ok(Some(status)) => Ok(status),
        Ok(None) => Err("clusterd is stopping\n".to_owned()),
        Err(_) => Err(format!("clusterd did not answer within {}\n", crate::duration::show(STATUS_TIMEOUT))),
    }
}

/// The workers' own metrics, by [`GATHER_DEADLINE`] (plus [`GATHER_SLACK`] for the supervisor's
/// answer). A supervisor that takes the request and does not answer in time counts as one miss;
/// one that no longer takes requests (it stopped, or gathers nothing) adds nothing.
async fn gather(gather: Option<&mpsc::Sender<GatherRequest>>) -> WorkerScrape {
    let Some(gather) = gather else { return WorkerScrape::default() };
    let deadline = Instant::now() + GATHER_DEADLINE;
    let (reply, answer) = oneshot::channel();
    let asked = tokio::time::timeout_at(deadline, gather.send(GatherRequest { deadline, reply })).await;
    match asked {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return WorkerScrape::default(),
        Err(_) => return WorkerScrape { text: String::new(), missed: 1 },
    }
    match tokio::time::timeout_at(deadline + GATHER_SLACK, answer).await {
        Ok(Ok(scrape)) => scrape,
        Ok(Err(_)) | Err(_) => WorkerScrape { text: String::new(), missed: 1 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seam with the gathering of the workers' metrics: an answer is appended and its misses
    /// counted; a supervisor that takes the request and never answers costs the deadline (plus
    /// the slack) and one miss; one that takes no requests costs nothing.
    #[tokio::test]
    async fn the_workers_metrics_are_waited_for_until_the_deadline_only() {
        let (tx, mut rx) = mpsc::channel::<GatherRequest>(1);
        tokio::spawn(async move {
            let request = rx.recv().await.expect("a request");
            assert!(request.deadline <= Instant::now() + GATHER_DEADLINE);
            let _ = request.reply.send(WorkerScrape { text: "w_total 1\n".into(), missed: 2 });
            let silent = rx.recv().await.expect("a second request");
            tokio::time::sleep(GATHER_DEADLINE * 3).await;
            drop(silent);
        });
        let answered = gather(Some(&tx)).await;
        assert_eq!((answered.text.as_str(), answered.missed), ("w_total 1\n", 2));
        let started = Instant::now();
        let silent = gather(Some(&tx)).await;
        assert_eq!((silent.text.as_str(), silent.missed), ("", 1));
        assert!(started.elapsed() < GATHER_DEADLINE + GATHER_SLACK + Duration::from_secs(1));
        let (closed, rx) = mpsc::channel::<GatherRequest>(1);
        drop(rx);
        let none = gather(Some(&closed)).await;
        assert_eq!((none.text.as_str(), none.missed), ("", 0));
        let none = gather(None).await;
        assert_eq!((none.text.as_str(), none.missed), ("", 0));
    }
}
