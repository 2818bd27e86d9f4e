//! Issue 13, item 4: reloads and scale-downs lose no request, keep-alive included.
//!
//! Clients keep their HTTP/1.1 connections alive and never retry: a request that gets no response
//! (a reset, or an end of stream where the response should be) is a failure, as it is for `wrk`.
//! The classic race: the draining worker closes an idle kept-alive connection at the moment its
//! client sends the next request on it. The SDK gives such connections back to clusterd instead,
//! which routes them to a live worker.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use support::*;

/// Clients, each with one kept-alive connection at a time.
const CLIENTS: usize = 8;
/// Requests a pipelining client writes at once.
const PIPELINE_DEPTH: usize = 4;
/// The most a load runs, whatever happens to the test (a failure bound, not a pace).
const LOAD_LIMIT: Duration = Duration::from_secs(300);

fn example(name: &str) -> PathBuf {
    let path = PathBuf::from(CLUSTERD).parent().unwrap().join("examples").join(name);
    assert!(path.exists(), "{} is missing: `cargo test` builds examples, run it from the workspace", path.display());
    path
}

fn cli(c: &Cluster, args: &[&str]) {
    let out = Command::new(CLUSTERD).args(args).arg("--control").arg(&c.control).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "clusterd {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn rows(status: &Value) -> Vec<Value> {
    status["workers"].as_array().unwrap().clone()
}

/// `n` workers of `generation`, all ready, and no other (the drained ones exited).
fn settled(s: &Value, n: usize, generation: u64) -> bool {
    s["phase"] == "ready"
        && rows(s).len() == n
        && rows(s).iter().all(|w| w["state"] == "ready" && w["generation"].as_u64() == Some(generation))
}

/// One HTTP/1.1 response read from a buffered connection: its status and whether the server said
/// `Connection: close`. `Err` says what went wrong (the failure a client would see).
fn response(reader: &mut BufReader<TcpStream>) -> Result<(u16, bool), String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => return Err("end of stream instead of a response".into()),
        Ok(_) => {}
        Err(e) => return Err(format!("reading the status line: {e}")),
    }
    let code: u16 =
        line.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("status line {line:?}"))?;
    let (mut length, mut close) = (0usize, false);
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) => return Err("end of stream inside a response head".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("reading a header: {e}")),
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap_or((header, ""));
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().map_err(|_| format!("bad length {header:?}"))?;
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.split(',').any(|v| v.trim().eq_ignore_ascii_case("close"));
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).map_err(|e| format!("reading the body: {e}"))?;
    Ok((code, close))
}

/// Clients that keep their connections alive and never retry, until `finish`.
struct Load {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    clients: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    /// `CLIENTS` clients sending `GET <path>`, `depth` at a time on each connection (1: each
    /// request after the previous answer; more: pipelined).
    fn start(addr: SocketAddr, path: &'static str, depth: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let clients = (0..CLIENTS)
            .map(|_| {
                let (stop, served) = (stop.clone(), served.clone());
                std::thread::spawn(move || client(addr, path, depth, &stop, &served))
            })
            .collect();
        Self { stop, served, clients }
    }

    /// Waits until the clients were served more requests than now: the pool serves after `what`.
    fn wait_served(&self, what: &str) {
        let before = self.served.load(Ordering::Relaxed);
        wait_until(&format!("requests served {what}"), || {
            (self.served.load(Ordering::Relaxed) > before + 50).then_some(())
        });
    }

    /// Stops the clients; returns how many requests were served and every failure.
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
        (self.served.load(Ordering::Relaxed), failures)
    }
}

/// One client: `depth` requests `GET <path>` written at once on its kept-alive connection (a
/// pipeline when `depth` > 1), then their `depth` responses, again and again; a new connection
/// only when the server said `Connection: close` or the connection failed. A request whose
/// response does not come is a failure, one answered after a `Connection: close` too (a client
/// must not read on past it; RFC 9112, 9.6). Returns its failures.
fn client(addr: SocketAddr, path: &str, depth: usize, stop: &AtomicBool, served: &AtomicU64) -> Vec<String> {
    let batch = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").repeat(depth);
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut connection: Option<BufReader<TcpStream>> = None;
    // Requests on the current connection: a failure on a fresh one is not the race under test.
    let mut on_this = 0u32;
    while !stop.load(Ordering::Relaxed) && started.elapsed() < LOAD_LIMIT {
        let reader = match &mut connection {
            Some(reader) => reader,
            None => match TcpStream::connect(addr) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
                    on_this = 0;
                    connection.insert(BufReader::new(stream))
                }
                Err(e) => {
                    failures.push(format!("connect: {e}"));
                    continue;
                }
            },
        };
        if let Err(e) = reader.get_mut().write_all(batch.as_bytes()) {
            failures.extend((0..depth).map(|_| format!("write: {e}")));
            connection = None;
            continue;
        }
        for k in 0..depth {
            match response(reader) {
                Ok((200, close)) => {
                    served.fetch_add(1, Ordering::Relaxed);
                    on_this += 1;
                    if close {
                        let unanswered = depth - k - 1;
                        failures.extend((0..unanswered).map(|_| {
                            format!("unanswered after a Connection: close (request {} on its connection)", on_this + 1)
                        }));
                        connection = None;
                        break;
                    }
                }
                Ok((code, _)) => {
                    failures.extend((k..depth).map(|_| format!("status {code}")));
                    connection = None;
                    break;
                }
                Err(e) => {
                    failures.extend((k..depth).map(|_| format!("{e} (request {} on its connection)", on_this + 1)));
                    connection = None;
                    break;
                }
            }
        }
    }
    failures
}

/// 5 rolling reloads and 5 scale-downs (3 -> 2 -> 3) of `hello` workers (axum on the SDK) under
/// keep-alive load: not one request fails, and the pool serves after each change.
#[test]
fn keep_alive_load_through_reloads_and_scale_downs_loses_no_request() {
    through_reloads_and_scale_downs("hello", "/", 1);
}

/// Clients that pipeline (4 requests written at once, then their 4 responses) through 5 reloads
/// and 5 scale-downs of `hello_wait` workers, whose answers take 2 ms (as a handler that awaits a
/// database): a drain begins while a response is in flight and requests wait behind it. The
/// answer in flight is not cut off, and the requests behind it go on to a live worker.
#[test]
fn pipelining_clients_through_reloads_and_scale_downs_lose_no_request() {
    through_reloads_and_scale_downs("hello_wait", "/?ms=2", PIPELINE_DEPTH);
}

/// The same with the `chat` example (socketioxide, the SDK's `SessionLayer`), its page kept alive.
#[test]
fn keep_alive_load_on_a_socketio_worker_through_reloads_and_scale_downs_loses_no_request() {
    through_reloads_and_scale_downs("chat", "/", 1);
}

fn through_reloads_and_scale_downs(example_name: &str, path: &'static str, depth: usize) {
    let program = example(example_name);
    let mut c = Builder::new()
        .args(&["--workers", "3", "--listen", "127.0.0.1:0", "--grace", "20s"])
        .program(&[program.to_str().unwrap()])
        .start();
    let addr = listen_addr(&c.wait_ready(3));
    let load = Load::start(addr, path, depth);
    load.wait_served("at the start");
    let mut generation = 1;
    for _ in 0..5 {
        cli(&c, &["reload"]);
        generation += 1;
        c.wait_status(&format!("generation {generation} alone serving"), |s| settled(s, 3, generation));
        load.wait_served(&format!("after the reload to generation {generation}"));
    }
    for round in 1..=5 {
        cli(&c, &["scale", "2"]);
        c.wait_status("the scale-down done, its worker exited", |s| settled(s, 2, generation));
        load.wait_served(&format!("after scale-down {round}"));
        cli(&c, &["scale", "3"]);
        c.wait_status("back to 3 workers", |s| settled(s, 3, generation));
    }
    let (served, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed through 5 reloads and 5 scale-downs, e.g. {:#?}",
        failures.len(),
        served + failures.len() as u64,
        &failures[..failures.len().min(10)]
    );
    println!(
        "{example_name}, {depth} at a time: {served} requests served through 5 reloads and 5 scale-downs, none failed"
    );
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

/// Socket.IO clients on a worker that drains, from `tests/node/drain_spread.mjs`: when their
/// sessions ended and when they were connected again (ms since the first end).
struct Reconnects {
    disconnects: Vec<u64>,
    reconnects: Vec<u64>,
    reasons: Value,
}

impl Reconnects {
    /// The most reconnections within one second.
    fn peak_per_second(&self) -> usize {
        let r = &self.reconnects;
        (0..r.len()).map(|i| r[i..].iter().take_while(|&&t| t < r[i] + 1000).count()).max().unwrap_or(0)
    }

    /// From the first reconnection to the last.
    fn span_ms(&self) -> u64 {
        self.reconnects.last().unwrap_or(&0) - self.reconnects.first().unwrap_or(&0)
    }
}

/// How the clients of `sessions_through_a_drain` talk to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// socket.io-client's default: long-polling, then the upgrade to a WebSocket.
    WebSocket,
    /// `transports: ["polling"]`: long-polling only.
    Polling,
}

/// `clients` socket.io-clients on one `chat` worker (`--grace 8s`), then a reload: the worker
/// drains, and its clients reconnect to its successor.
fn sessions_through_a_drain(clients: usize, spread_ms: Option<&str>, transport: Transport) -> Reconnects {
    let chat = example("chat");
    let mut builder = Builder::new()
        .args(&["--workers", "1", "--listen", "127.0.0.1:0", "--grace", "8s"])
        .program(&[chat.to_str().unwrap()]);
    if let Some(ms) = spread_ms {
        builder = builder.env("CLUSTERD_DRAIN_SPREAD_MS", ms);
    }
    let mut c = builder.start();
    let status = c.wait_ready(1);
    let url = format!("http://{}", listen_addr(&status));
    let mut node = Command::new("node")
        .arg(node_dir().join("drain_spread.mjs"))
        .args([&url, &clients.to_string(), "90000"])
        .args((transport == Transport::Polling).then_some("polling"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node");
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut next = || -> Value {
        let line = lines.next().expect("a line from drain_spread.mjs").expect("read");
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"))
    };
    let connected = next();
    assert_eq!(connected["phase"], "connected", "{connected}");
    let pid = worker_pid(&status, 0);
    assert!(connected["pids"].as_array().unwrap().iter().all(|p| p.as_i64() == Some(pid.into())), "{connected}");
    c.wait_status("every session counted", |s| s["sessions"].as_u64() == Some(clients as u64));
    cli(&c, &["reload"]);
    let done = next();
    assert_eq!(done["phase"], "done", "{done}\n{}", c.stderr_dump());
    assert!(node.wait().unwrap().success());
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
    let times = |key: &str| -> Vec<u64> { done[key].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect() };
    Reconnects { disconnects: times("disconnects"), reconnects: times("reconnects"), reasons: done["reasons"].clone() }
}

/// Issue 13, item 4: the Socket.IO sessions of a draining worker end spread over half the grace
/// (the SDK shuts their WebSockets down one by one), not all at once: no reconnection storm on the
/// workers left. Compared in one run with a spread of 0 (every session ends at once, as when the
/// process exits with them).
#[test]
fn socketio_sessions_of_a_draining_worker_end_spread_over_the_grace() {
    const CLIENTS: usize = 40;
    let at_once = sessions_through_a_drain(CLIENTS, Some("0"), Transport::WebSocket);
    let spread = sessions_through_a_drain(CLIENTS, None, Transport::WebSocket);
    assert_spread(CLIENTS, &at_once, &spread);
}

/// Issue 13, item 4: the same with long-polling clients (`transports: ["polling"]`): the SDK
/// answers each session's pending poll with an Engine.IO `close` packet, one by one over half the
/// grace, and socket.io-client reconnects on it.
#[test]
fn socketio_polling_sessions_of_a_draining_worker_end_spread_over_the_grace() {
    const CLIENTS: usize = 40;
    let at_once = sessions_through_a_drain(CLIENTS, Some("0"), Transport::Polling);
    let spread = sessions_through_a_drain(CLIENTS, None, Transport::Polling);
    assert_spread(CLIENTS, &at_once, &spread);
}

/// Every client reconnected, and with the spread over at least 2 s, at most half of them in any
/// one second.
fn assert_spread(clients: usize, at_once: &Reconnects, spread: &Reconnects) {
    for (name, r) in [("at once", at_once), ("spread", spread)] {
        println!(
            "{name}: {clients} sessions ended over {} ms ({}), reconnected over {} ms, at most {} reconnections in one second",
            r.disconnects.last().unwrap(),
            r.reasons,
            r.span_ms(),
            r.peak_per_second()
        );
        assert_eq!(r.reconnects.len(), clients, "{name}: every client reconnected");
    }
    // The spread is 4 s (half of --grace 8s): generous bounds for 2 loaded cores.
    assert!(
        *spread.disconnects.last().unwrap() >= 2_000,
        "the sessions ended over at least half the spread: {:?}",
        spread.disconnects
    );
    assert!(spread.span_ms() >= 2_000, "reconnections over at least 2 s: {:?}", spread.reconnects);
    // Evenly over 4 s, about a quarter of the clients a second (socket.io-client's own random
    // delay, 0.5 to 1.5 s, blurs it): at most half of them in any one second.
    assert!(
        spread.peak_per_second() <= clients / 2,
        "at most {} reconnections in one second, not {} (all at once: {})",
        clients / 2,
        spread.peak_per_second(),
        at_once.peak_per_second()
    );
}
