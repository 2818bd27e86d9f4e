//! Issue 13, item 4, for Node.js workers: a drain loses no request of a kept-alive connection,
//! and the Socket.IO sessions of a draining worker end spread over half the grace.
//!
//! The workers are unmodified Node programs (`tests/node/workers`): clusterd's preload (see
//! README, "Drains and kept-alive connections") gives their idle kept-alive connections back to
//! clusterd at the drain and ends their WebSockets and long-polling Socket.IO sessions one by one.

mod support;

use std::io::Write;
use std::net::TcpStream;

use nix::sys::signal::Signal;
use support::keepalive_load::*;
use support::*;

/// `n` Node workers of `tests/node/workers/<script>` that listen themselves, all ready and
/// listening, and the port they share.
fn node_pool(script: &str, n: usize, extra: &[&str], env: &[(&str, &str)]) -> (Cluster, std::net::SocketAddr) {
    let script = node_dir().join("workers").join(script);
    let mut builder = Builder::new()
        .args(&["--protocol", "node", "--workers", &n.to_string(), "--grace", "20s"])
        .args(extra)
        .program(&["node", script.to_str().unwrap()])
        .env("NODE_PATH", node_dir().join("node_modules").to_str().unwrap());
    for (key, value) in env {
        builder = builder.env(key, value);
    }
    let mut c = builder.start();
    c.wait_ready(n);
    let line = c.output.wait_contains("listening on ");
    let port: u16 = line.rsplit(' ').next().unwrap().trim().parse().unwrap();
    (c, format!("127.0.0.1:{port}").parse().unwrap())
}

/// Keep-alive clients that never retry through 5 reloads and 5 scale-downs of 3 Node workers;
/// returns the requests served and the failures.
fn keep_alive_through_reloads(extra: &[&str], env: &[(&str, &str)]) -> (u64, Vec<String>) {
    let (mut c, addr) = node_pool("keepalive-worker.cjs", 3, extra, env);
    let load = Load::start(addr, "/", 1);
    load.wait_served("at the start");
    reloads_and_scale_downs(&mut c, &load);
    let (served, failures) = load.finish();
    if !failures.is_empty() {
        println!("clusterd's log:\n{}", c.stderr_dump());
    }
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
    (served, failures)
}

fn assert_none_failed(what: &str, served: u64, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{what}: {} of {} requests failed through 5 reloads and 5 scale-downs, e.g. {:#?}",
        failures.len(),
        served + failures.len() as u64,
        &failures[..failures.len().min(10)]
    );
    println!("{what}: {served} requests served through 5 reloads and 5 scale-downs, none failed");
}

/// Without the preload, the race is there: a plain `http` server under keep-alive clients loses
/// requests at the drains (Node closes its idle kept-alive connections as its server closes,
/// under the clients' next requests). The evidence the preload is needed, kept as a test.
#[test]
fn without_the_preload_a_node_http_worker_loses_kept_alive_requests_at_drains() {
    let (served, failures) = keep_alive_through_reloads(&["--node-preload", "off"], &[]);
    println!("without the preload: {} of {} requests failed", failures.len(), served + failures.len() as u64);
    assert!(!failures.is_empty(), "no request failed without the preload ({served} served): the race is gone?");
}

/// A plain `http.createServer` with keep-alive (Node's default) loses no request.
#[test]
fn a_node_http_worker_loses_no_kept_alive_request_through_reloads_and_scale_downs() {
    let (served, failures) = keep_alive_through_reloads(&[], &[]);
    assert_none_failed("node http", served, &failures);
}

/// The same with an Express app.
#[test]
fn an_express_worker_loses_no_kept_alive_request_through_reloads_and_scale_downs() {
    let (served, failures) = keep_alive_through_reloads(&[], &[("EXPRESS", "1")]);
    assert_none_failed("express", served, &failures);
}

/// `CLIENTS` socket.io-clients on one Node Socket.IO worker (sticky, cluster adapter, `--grace
/// 8s`) through a reload, with the preload `on` or `off`.
fn node_sessions_through_a_drain(clients: usize, preload: &str) -> Reconnects {
    node_sessions_through_a_drain_with(clients, preload, Transport::WebSocket, &[])
}

/// The same with the clients' `transport`, and more of clusterd's environment.
fn node_sessions_through_a_drain_with(
    clients: usize,
    preload: &str,
    transport: Transport,
    env: &[(&str, &str)],
) -> Reconnects {
    let script = node_dir().join("workers/socketio-worker.cjs");
    let mut builder = Builder::new()
        .args(&["--protocol", "node", "--workers", "1", "--listen", "127.0.0.1:0", "--grace", "8s"])
        .args(&["--node-preload", preload])
        .program(&["node", script.to_str().unwrap()])
        .env("NODE_PATH", node_dir().join("node_modules").to_str().unwrap());
    for (key, value) in env {
        builder = builder.env(key, value);
    }
    let mut c = builder.start();
    let status = c.wait_ready(1);
    reconnects_through_a_reload(c, &status, clients, transport)
}

/// The Socket.IO sessions (WebSockets) of a draining Node worker end spread over half the grace:
/// the preload ends them one by one, and their clients reconnect a few at a time. Without it,
/// they all end when the process exits.
#[test]
fn socketio_sessions_of_a_draining_node_worker_end_spread_over_the_grace() {
    const CLIENTS: usize = 40;
    let at_once = node_sessions_through_a_drain(CLIENTS, "off");
    let spread = node_sessions_through_a_drain(CLIENTS, "on");
    assert_spread(CLIENTS, ("without the preload", &at_once), ("with the preload", &spread));
}

/// The long-polling Socket.IO sessions of a draining Node worker end spread over half the grace
/// too: the preload closes each engine.io session in turn, its pending poll is answered with an
/// Engine.IO `close` packet, and its client reconnects ("transport close"). Compared with the
/// same drain with `CLUSTERD_DRAIN_SPREAD_MS=0`, where they all end at once.
#[test]
fn long_polling_sessions_of_a_draining_node_worker_end_spread_over_the_grace() {
    const CLIENTS: usize = 40;
    let at_once =
        node_sessions_through_a_drain_with(CLIENTS, "on", Transport::Polling, &[("CLUSTERD_DRAIN_SPREAD_MS", "0")]);
    let spread = node_sessions_through_a_drain_with(CLIENTS, "on", Transport::Polling, &[]);
    assert_spread(CLIENTS, ("long-polling, CLUSTERD_DRAIN_SPREAD_MS=0", &at_once), ("long-polling, spread", &spread));
    assert!(
        at_once.peak_per_second() > spread.peak_per_second(),
        "at once ({}) is a storm the spread ({}) avoids",
        at_once.peak_per_second(),
        spread.peak_per_second()
    );
}

/// WebSockets and long-polling sessions on the same draining worker end interleaved: each kind
/// over the whole spread, not one kind first.
#[test]
fn websocket_and_long_polling_sessions_of_a_draining_node_worker_end_interleaved() {
    const CLIENTS: usize = 40;
    let r = node_sessions_through_a_drain_with(CLIENTS, "on", Transport::Mixed, &[]);
    let polling = &r.polling_disconnects;
    let mut websocket = r.disconnects.clone();
    for t in polling {
        let at = websocket.iter().position(|w| w == t).expect("a polling disconnect among all");
        websocket.remove(at);
    }
    println!(
        "mixed: {} long-polling sessions ended from {} to {} ms, {} WebSockets from {} to {} ms ({}), at most {} reconnections in one second",
        polling.len(),
        polling[0],
        polling.last().unwrap(),
        websocket.len(),
        websocket[0],
        websocket.last().unwrap(),
        r.reasons,
        r.peak_per_second()
    );
    assert_eq!(r.reconnects.len(), CLIENTS, "every client reconnected");
    assert_eq!(polling.len(), CLIENTS / 2);
    // The spread is 4 s (half of --grace 8s); each kind starts within its first second and goes
    // on past 2 s. Generous bounds for 2 loaded cores.
    for (kind, times) in [("long-polling", polling), ("WebSocket", &websocket)] {
        assert!(times[0] <= 1_000, "{kind} sessions ended from the start of the spread: {times:?}");
        assert!(*times.last().unwrap() >= 2_000, "{kind} sessions ended over the spread: {times:?}");
    }
    assert!(
        r.peak_per_second() <= CLIENTS / 2,
        "at most {} reconnections in one second: {:?}",
        CLIENTS / 2,
        r.reconnects
    );
}

/// Bad input: a worker that sends NODE_CLUSTERD_HANDBACK without a handle, with a listening
/// server, with a UDP socket, and 200 connections clusterd never handed it. Each handle is
/// refused (NACK; clusterd keeps none of the fds), logged once; the worker goes on serving and
/// is not replaced, the other worker's client keeps its connection, and both still drain and
/// stop cleanly.
#[test]
fn bad_handbacks_are_refused_and_cost_nothing() {
    let env = [("FLOOD", "200"), ("GARBAGE_SLOT", "0")];
    let (mut c, addr) = node_pool("handback-garbage-worker.cjs", 2, &[], &env);
    let pid = worker_pid(&c.status().unwrap(), 0);
    // Both workers in the port's pool: a worker prints its line once clusterd answered its listen.
    wait_until("both workers listening", || {
        Some(()).filter(|()| c.output.snapshot().iter().filter(|l| l.contains("listening on ")).count() >= 2)
    });
    // Least-connection: two kept-alive connections, one on each worker.
    let mut kept: Vec<(TcpStream, String)> = (0..2)
        .map(|_| {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            let said = ask_alive(&mut stream);
            (stream, said)
        })
        .collect();
    kept.sort_by(|a, b| a.1.cmp(&b.1));
    assert!(kept[0].1.starts_with("worker 0 ") && kept[1].1.starts_with("worker 1 "), "one on each: {kept:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGUSR2).unwrap();
    c.output.wait_contains("garbage sent");
    for (stream, first) in &mut kept {
        // Node sends the next handle only once the previous one was answered: the last one
        // written means every earlier one was refused; the last is answered before a request
        // made after it.
        assert_eq!(&ask_alive(stream), first, "each worker's client keeps its connection");
    }
    let status = c.wait_status("the workers still ready", |s| (0..2).all(|w| worker(s, w)["state"] == "ready"));
    assert_eq!(worker_pid(&status, 0), pid, "the worker was not replaced");
    // It was handed one connection (the kept one), so one connection of its own may pass for it
    // (clusterd cannot tell them apart); every other one is refused and not counted.
    assert!(worker(&status, 0)["given_back"].as_u64().unwrap() <= 1, "at most what it was handed: {status}");
    let refused =
        c.output.snapshot().iter().filter(|l| l.contains("a connection the worker gave back was refused")).count();
    assert_eq!(refused, 1, "said once: {}", c.stderr_dump());
    let fds = fd_count(c.pid());
    assert!(fds < 100, "clusterd keeps none of the 200 connections: {fds} fds open");
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

/// One `GET /` on a kept-alive connection; the answer's body.
fn ask_alive(stream: &mut TcpStream) -> String {
    stream.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    read_response(stream).expect("an answer on the kept-alive connection").body
}

/// The environment of a process, from /proc.
fn environ(pid: i32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|&b| b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect()
}

/// The preload goes after the operator's own NODE_OPTIONS, which are kept; the file is private
/// and goes when clusterd stops.
#[test]
fn the_preload_is_added_to_the_operators_node_options_and_removed_at_exit() {
    let (mut c, addr) = node_pool("keepalive-worker.cjs", 1, &[], &[("NODE_OPTIONS", "--max-http-header-size=20000")]);
    assert_eq!(get(addr, "/").code, 200);
    let pid = worker_pid(&c.status().unwrap(), 0);
    let options = environ(pid).into_iter().find_map(|v| v.strip_prefix("NODE_OPTIONS=").map(str::to_owned)).unwrap();
    let file = options
        .strip_prefix("--max-http-header-size=20000 --require \"")
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("NODE_OPTIONS={options}"));
    let file = std::path::PathBuf::from(file);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(file.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
    assert!(!file.parent().unwrap().exists(), "{} removed at exit", file.display());
}

/// `--node-preload off`: no NODE_OPTIONS from clusterd. A preload that cannot be written is
/// said once, and the workers run without it. A bad value is refused before any worker starts.
#[test]
fn without_the_preload_workers_run_as_before() {
    let (mut c, addr) = node_pool("keepalive-worker.cjs", 1, &["--node-preload", "off"], &[]);
    assert_eq!(get(addr, "/").code, 200);
    let pid = worker_pid(&c.status().unwrap(), 0);
    assert!(!environ(pid).iter().any(|v| v.starts_with("NODE_OPTIONS=")));
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());

    let missing = tempfile::tempdir().unwrap().path().join("gone");
    let (mut c, addr) = node_pool("keepalive-worker.cjs", 2, &[], &[("TMPDIR", missing.to_str().unwrap())]);
    assert_eq!(get(addr, "/").code, 200);
    let said = c.output.snapshot().iter().filter(|l| l.contains("cannot write the Node preload")).count();
    assert_eq!(said, 1, "{}", c.stderr_dump());
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());

    let out = std::process::Command::new(CLUSTERD)
        .args(["--node-preload", "maybe", "--", "node", "-e", "0"])
        .env_remove("CLUSTERD_CONTROL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--node-preload"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One kept-alive connection across a reload: the draining worker gives it back between two
/// requests, and the next request on the same connection is answered by its successor.
fn a_kept_alive_connection_moves_to_the_next_worker(serialization: &str) {
    use std::io::Write;
    let (mut c, addr) =
        node_pool("keepalive-worker.cjs", 1, &["--serialization", serialization, "--metrics", "127.0.0.1:0"], &[]);
    let metrics_at = metrics_addr(&c);
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut ask = || {
        stream.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        read_response(&mut stream).expect("a response on the kept-alive connection")
    };
    let first = ask();
    assert!(!first.close, "{}", first.body);
    let old = worker_pid(&c.status().unwrap(), 0);
    assert!(first.body.contains(&format!("pid {old}")), "{}", first.body);
    cli(&c, &["reload"]);
    let status = c.wait_status("the new worker alone, the old one gone", |s| settled(s, 1, 2));
    let new = worker_pid(&status, 0);
    let second = ask();
    assert!(second.body.contains(&format!("pid {new}")), "answered by the new worker {new}: {}", second.body);
    // The one connection given back by the old worker's preload, counted in the slot's series
    // (the old worker's row of `status` went with it); the new worker gave nothing back.
    let m = scrape(&metrics_at);
    assert_eq!(m.value("clusterd_worker_connections_given_back_total", &[("worker", "0")]), Some(1.0), "{}", m.text);
    assert_eq!(worker(&c.status().unwrap(), 0)["given_back"], 0);
    assert!(c.output.snapshot().iter().all(|l| !l.contains("was refused")), "{}", c.stderr_dump());
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

#[test]
fn a_kept_alive_connection_moves_to_the_next_worker_with_advanced_serialization() {
    a_kept_alive_connection_moves_to_the_next_worker("advanced");
}

#[test]
fn a_kept_alive_connection_moves_to_the_next_worker_with_json_serialization() {
    a_kept_alive_connection_moves_to_the_next_worker("json");
}
