//! Issue 13, item 4: reloads and scale-downs lose no request, keep-alive included.
//!
//! Clients keep their HTTP/1.1 connections alive and never retry: a request that gets no response
//! (a reset, or an end of stream where the response should be) is a failure, as it is for `wrk`.
//! The classic race: the draining worker closes an idle kept-alive connection at the moment its
//! client sends the next request on it. The SDK gives such connections back to clusterd instead,
//! which routes them to a live worker.

mod support;

use std::path::PathBuf;

use nix::sys::signal::Signal;
use support::keepalive_load::*;
use support::*;

fn example(name: &str) -> PathBuf {
    let path = PathBuf::from(CLUSTERD).parent().unwrap().join("examples").join(name);
    assert!(path.exists(), "{} is missing: `cargo test` builds examples, run it from the workspace", path.display());
    path
}

/// 5 rolling reloads and 5 scale-downs (3 -> 2 -> 3) of `hello` workers (axum on the SDK) under
/// keep-alive load: not one request fails, and the pool serves after each change.
#[test]
fn keep_alive_load_through_reloads_and_scale_downs_loses_no_request() {
    through_reloads_and_scale_downs("hello", "/");
}

/// The same with the `chat` example (socketioxide, the SDK's `SessionLayer`), its page kept alive.
#[test]
fn keep_alive_load_on_a_socketio_worker_through_reloads_and_scale_downs_loses_no_request() {
    through_reloads_and_scale_downs("chat", "/");
}

fn through_reloads_and_scale_downs(example_name: &str, path: &'static str) {
    let program = example(example_name);
    let mut c = Builder::new()
        .args(&["--workers", "3", "--listen", "127.0.0.1:0", "--grace", "20s"])
        .program(&[program.to_str().unwrap()])
        .start();
    let addr = listen_addr(&c.wait_ready(3));
    let load = Load::start(addr, path);
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
    println!("{example_name}: {served} requests served through 5 reloads and 5 scale-downs, none failed");
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

/// `clients` socket.io-clients on one `chat` worker (`--grace 8s`), then a reload: the worker
/// drains, and its clients reconnect to its successor.
fn sessions_through_a_drain(clients: usize, spread_ms: Option<&str>) -> Reconnects {
    let chat = example("chat");
    let mut builder = Builder::new()
        .args(&["--workers", "1", "--listen", "127.0.0.1:0", "--grace", "8s"])
        .program(&[chat.to_str().unwrap()]);
    if let Some(ms) = spread_ms {
        builder = builder.env("CLUSTERD_DRAIN_SPREAD_MS", ms);
    }
    let mut c = builder.start();
    let status = c.wait_ready(1);
    reconnects_through_a_reload(c, &status, clients)
}

/// Issue 13, item 4: the Socket.IO sessions of a draining worker end spread over half the grace
/// (the SDK shuts their WebSockets down one by one), not all at once: no reconnection storm on the
/// workers left. Compared in one run with a spread of 0 (every session ends at once, as when the
/// process exits with them).
#[test]
fn socketio_sessions_of_a_draining_worker_end_spread_over_the_grace() {
    const CLIENTS: usize = 40;
    let at_once = sessions_through_a_drain(CLIENTS, Some("0"));
    let spread = sessions_through_a_drain(CLIENTS, None);
    for (name, r) in [("at once", &at_once), ("spread", &spread)] {
        println!(
            "{name}: {CLIENTS} sessions ended over {} ms ({}), reconnected over {} ms, at most {} reconnections in one second",
            r.disconnects.last().unwrap(),
            r.reasons,
            r.span_ms(),
            r.peak_per_second()
        );
        assert_eq!(r.reconnects.len(), CLIENTS, "{name}: every client reconnected");
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
        spread.peak_per_second() <= CLIENTS / 2,
        "at most {} reconnections in one second, not {} (all at once: {})",
        CLIENTS / 2,
        spread.peak_per_second(),
        at_once.peak_per_second()
    );
}
