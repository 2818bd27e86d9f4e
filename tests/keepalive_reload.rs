//! Issue 13, item 4: reloads and scale-downs lose no request, keep-alive included.
//!
//! Clients keep their HTTP/1.1 connections alive and never retry: a request that gets no response
//! (a reset, or an end of stream where the response should be) is a failure, as it is for `wrk`.
//! The classic race: the draining worker closes an idle kept-alive connection at the moment its
//! client sends the next request on it. The SDK gives such connections back to clusterd instead,
//! which routes them to a live worker.

mod support;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;

use nix::sys::signal::Signal;
use support::keepalive_load::*;
use support::*;

/// Requests a pipelining client writes at once.
const PIPELINE_DEPTH: usize = 4;
/// Connections a worker gives back at once, just before it exits: more than the IPC socket's
/// buffer holds in frames (about 120 with the default `net.core.wmem_default`), so that its
/// last frames are still unread when the worker exits.
const GIVEN_BACK: usize = 500;
/// Workers in a row that do so.
const BURST_ROUNDS: u64 = 20;

fn example(name: &str) -> PathBuf {
    let path = PathBuf::from(CLUSTERD).parent().unwrap().join("examples").join(name);
    assert!(path.exists(), "{} is missing: `cargo test` builds examples, run it from the workspace", path.display());
    path
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

/// Clients that send one request at a time (then wait for its answer) through the same reloads
/// and scale-downs of `hello_wait` workers whose answers take 20 ms: most drains begin while an
/// answer is awaited, and the worker exits right after it gave its last connections back.
#[test]
fn one_at_a_time_clients_of_awaiting_workers_through_reloads_and_scale_downs_lose_no_request() {
    through_reloads_and_scale_downs("hello_wait", "/?ms=20", 1);
}

/// Connections that a draining worker gives back all at once in the last moments of its life
/// (the test worker's `--burst-generations`: it holds each connection unanswered and, at the
/// drain, writes all the handbacks back to back and exits at once, as an SDK worker may right
/// after its last kept-alive connections went back) all go on to its successor: the frames still
/// unread in the IPC channel when clusterd sees the exit are read, not dropped with their fds.
/// The same connections go through `BURST_ROUNDS` such workers, then a serving one answers them.
#[test]
fn connections_given_back_just_before_a_worker_exits_are_all_served_after() {
    let rounds = BURST_ROUNDS.to_string();
    let mut c = Builder::new()
        .args(&["--workers", "1", "--listen", "127.0.0.1:0", "--grace", "20s", "--metrics", "127.0.0.1:0"])
        .worker_args(&["--serve", "--burst-generations", &rounds])
        .start();
    let addr = listen_addr(&c.wait_ready(1));
    let metrics_at = metrics_addr(&c);
    let mut connections: Vec<BufReader<TcpStream>> = (0..GIVEN_BACK)
        .map(|_| {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            stream.write_all(b"GET /given-back HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            BufReader::new(stream)
        })
        .collect();
    for generation in 1..=BURST_ROUNDS {
        let held = format!("holding {GIVEN_BACK} in generation {generation}");
        let what = format!("{held} (fewer: connections the generation before gave back were lost)");
        c.output.wait_for(&what, |l| l.ends_with(&held));
        cli(&c, &["reload"]);
        let next = generation + 1;
        let status =
            c.wait_status(&format!("generation {next} alone (the one before exited)"), |s| settled(s, 1, next));
        // Every connection went back through clusterd once per generation, counted in the
        // slot's series (the row of the process that gave them back went with it), whether
        // clusterd read the handbacks before or after it saw the exit.
        let m = scrape(&metrics_at);
        assert_eq!(
            m.value("clusterd_worker_connections_given_back_total", &[("worker", "0")]),
            Some((GIVEN_BACK as u64 * generation) as f64),
            "after generation {generation} exited:\n{}",
            m.text
        );
        assert_eq!(worker(&status, 0)["given_back"], 0, "the new process gave nothing back yet: {status:#}");
    }
    let failures: Vec<String> = connections
        .iter_mut()
        .enumerate()
        .filter_map(|(i, reader)| match response(reader) {
            Ok((200, _)) => None,
            other => Some(format!("connection {i}: {other:?}")),
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {GIVEN_BACK} connections given back were lost, e.g. {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
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
    reloads_and_scale_downs(&mut c, &load);
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
    reconnects_through_a_reload(c, &status, clients, transport)
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
    assert_spread(CLIENTS, ("at once", &at_once), ("spread", &spread));
}

/// Issue 13, item 4: the same with long-polling clients (`transports: ["polling"]`): the SDK
/// answers each session's pending poll with an Engine.IO `close` packet, one by one over half the
/// grace, and socket.io-client reconnects on it.
#[test]
fn socketio_polling_sessions_of_a_draining_worker_end_spread_over_the_grace() {
    const CLIENTS: usize = 40;
    let at_once = sessions_through_a_drain(CLIENTS, Some("0"), Transport::Polling);
    let spread = sessions_through_a_drain(CLIENTS, None, Transport::Polling);
    assert_spread(CLIENTS, ("at once", &at_once), ("spread", &spread));
}
